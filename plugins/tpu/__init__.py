"""The TPU backend (Cloud TPU v4, v5e, v5p, v6e) and the ``xpusim tpu`` systolic-array
commands. See ``docs/backends/tpu.md``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpusim import hookimpl
from xpusim.engine.backend import Backend
from xpusim.plugins.tpu.backend import TpuBackend

__all__ = ["TpuBackend", "register_backends", "register_commands"]


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``tpu`` backend."""
    register(TpuBackend())


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``xpusim tpu gemm|conv``."""
    from xpusim.plugins.tpu.cli import tpu_app

    cli.add_typer(tpu_app, name="tpu")
