"""Executors: where the points of a sweep run.

An executor (registered through ``register_executors``) maps a picklable function over
sweep points and yields ``(index, result)`` pairs as points finish, in any order. A point
whose function raises yields an :class:`PointFailure` instead of stopping the sweep.

Two optional capabilities have defaults built on :meth:`Executor.map`: :meth:`~Executor.
map_more` lets the caller add points as results come in (``xpusim plan`` submits a
search's next simulation as soon as its verdict is known), and :meth:`~Executor.start`
lets an executor start its workers in the background while the caller is still
preparing the first points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
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

    def map_more(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        more: Callable[[int, Any], Iterable[Any]],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """:meth:`map`, where ``more(index, result)`` is called in the caller's process as
        each result is taken and returns further points to run; they get the next indices
        (in the order returned) and are yielded like the first ones, until every point
        has ended.

        The default runs :meth:`map` in waves (the points ``more`` returns during one
        wave run in the next); an executor that can take points while others run
        overrides it so that a new point starts as soon as a worker is free."""
        pending = list(points)
        base = 0
        while pending:
            wave, pending = pending, []
            for j, out in self.map(fn, wave, workers=workers, address=address, retries=retries):
                yield base + j, out
                pending.extend(more(base + j, out))
            base += len(wave)

    def slots(self, workers: int | None = None, address: str | None = None) -> int:
        """How many points run at once for this ``workers`` and ``address`` (a caller that
        speculates fills up to it). The default: ``workers``, else 1."""
        return max(1, workers or 1)

    def prepare(self) -> None:
        """Begin, without waiting, what every later :meth:`start` or :meth:`map` needs
        whatever its points and worker count (for a local pool: the fork server's imports),
        so that a caller can call it first and do its own loading meanwhile. Optional: the
        default does nothing."""
        return None

    def start(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        warmup: Callable[[], Any] | None = None,
    ) -> None:
        """Start getting ready to run points on ``workers`` workers without waiting (for a
        local pool: its processes and their imports), so that the first :meth:`map` or
        :meth:`map_more` with the same arguments finds them ready; each worker runs the
        picklable ``warmup`` once, where given (loading what the first points need while
        the caller prepares them; its errors are ignored). Optional: the default does
        nothing, and a caller that never maps loses nothing but the start."""
        return None
