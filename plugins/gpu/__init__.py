"""The GPU backend: NVIDIA and AMD data-centre GPUs priced by an analytic roofline with
tile and wave quantization (see ``docs/backends/gpu.md``).

This entry-point module registers the backend by name only; :mod:`xpusim.plugins.gpu.backend`
is imported the first time a scenario or command uses it.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["register_backends"]


@hookimpl
def register_backends(register: Callable[[Lazy], None]) -> None:
    """Register the ``gpu`` backend (imported on first use)."""
    register(Lazy("gpu", "xpusim.plugins.gpu.backend:GpuBackend"))
