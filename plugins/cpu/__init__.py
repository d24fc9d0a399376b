"""The ``cpu`` backend: this machine's CPU, measured (device ``host``) and priced by a
roofline calibrated on it (device ``host-analytic``); see ``docs/backends/cpu.md``.

This entry-point module registers the backend by name only; :mod:`xpusim.plugins.cpu.backend`
is imported the first time a scenario or command uses it.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["register_backends"]


@hookimpl
def register_backends(register: Callable[[Lazy], None]) -> None:
    """Register the ``cpu`` backend (imported on first use)."""
    register(Lazy("cpu", "xpusim.plugins.cpu.backend:CpuBackend"))
