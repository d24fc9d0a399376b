"""Executors: where the points of a sweep run.

An executor (registered through ``register_executors``) maps a picklable function over
sweep points and yields ``(index, result)`` pairs as points finish, in any order. A point
whose function raises yields an :class:`PointFailure` instead of stopping the sweep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PointFailure:
    """A sweep point that raised: the error type and message, and the attempts made."""

    error: str
    attempts: int = 1


class Executor(ABC):
    """A place to run sweep points.

    Contract: ``name`` is the key for ``--executor``; :meth:`map` runs ``fn(point)`` for
    each point with at most ``workers`` in parallel, retries a point whose worker died at
    most ``retries`` times, and yields ``(index, result_or_PointFailure)`` as each ends.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"

    @abstractmethod
    def map(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn`` over ``points`` and yield results as they finish."""
        raise NotImplementedError(self)
