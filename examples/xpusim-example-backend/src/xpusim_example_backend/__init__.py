"""xpusim-example-backend: wafer-scale engines (Cerebras CS-2/CS-3) as an xpusim backend.

Installed, it registers backend ``wafer`` with devices ``wse-2`` and ``wse-3`` through
the ``xpusim`` entry-point group; see the package README for the cost model.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.backend import Backend
from xpusim_example_backend.backend import WaferBackend
from xpusim_example_backend.costmodel import WaferParams

__version__ = "0.1.0"
__all__ = ["WaferBackend", "WaferParams", "register_backends"]


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``wafer`` backend."""
    register(WaferBackend())
