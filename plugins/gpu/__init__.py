"""The GPU backend: NVIDIA and AMD data-centre GPUs priced by an analytic roofline with
tile and wave quantization (see ``docs/backends/gpu.md``)."""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.backend import Backend
from xpusim.plugins.gpu.backend import GpuBackend

__all__ = ["GpuBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``gpu`` backend."""
    register(GpuBackend())
