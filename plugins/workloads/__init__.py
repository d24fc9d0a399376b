"""Built-in workload kinds, registered through the ``xpusim`` entry point.

Each module listed in :data:`MODULES` exports ``WORKLOADS``, a list of
:class:`~xpusim.engine.workload.Workload` instances; adding a kind is one line here (its module
name in :data:`MODULES`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.workload import Workload

MODULES: tuple[str, ...] = (
    "xpusim.plugins.workloads.serving.workload",
    "xpusim.plugins.workloads.offline.workload",
    "xpusim.plugins.workloads.training.workload",
    "xpusim.plugins.workloads.spiking",
)
"""Modules whose ``WORKLOADS`` this plugin registers, in order."""

WORKLOADS: list[Workload] = [w for name in MODULES for w in importlib.import_module(name).WORKLOADS]
"""Every workload instance this plugin registers."""


@hookimpl
def register_workloads(register: Callable[[Workload], None]) -> None:
    """Register every workload in :data:`WORKLOADS`."""
    for w in WORKLOADS:
        register(w)
