"""Built-in sweep executors: ``local`` (a process pool) and ``dask`` (a Dask cluster)."""

from __future__ import annotations

from typing import Any

from xpusim import hookimpl
from xpusim.plugins.executors.dask import DaskExecutor
from xpusim.plugins.executors.local import LocalExecutor


@hookimpl
def register_executors(register: Any) -> None:
    """Register the local process pool and the Dask executor."""
    register(LocalExecutor())
    register(DaskExecutor())
