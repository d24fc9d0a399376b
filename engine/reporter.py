"""Reporters: output formats written into a run folder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult


class Reporter(ABC):
    """An output format.

    Contract: ``name`` is the registered key; :meth:`write` writes its files into
    ``folder`` (a temporary folder the run moves into place whole) and returns the names
    it wrote. A reporter never writes outside ``folder``.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"

    @abstractmethod
    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write this format for ``run`` into ``folder``."""
        raise NotImplementedError(self)
