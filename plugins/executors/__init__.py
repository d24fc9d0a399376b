"""Built-in sweep executors: ``local`` (a process pool) and ``dask`` (a Dask cluster).

Registered by name; each executor's module is imported when a sweep first uses it.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["register_executors"]


@hookimpl
def register_executors(register: Callable[[Lazy], None]) -> None:
    """Register the local process pool and the Dask executor (imported on first use)."""
    register(Lazy("local", "xpusim.plugins.executors.local:LocalExecutor"))
    register(Lazy("dask", "xpusim.plugins.executors.dask:DaskExecutor"))
