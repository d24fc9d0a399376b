"""The ``cpu`` backend: this machine's CPU, measured (device ``host``) and priced by a
roofline calibrated on it (device ``host-analytic``); see ``docs/backends/cpu.md``."""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.backend import Backend
from xpusim.plugins.cpu.backend import CpuBackend

__all__ = ["CpuBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``cpu`` backend."""
    register(CpuBackend())
