"""The TPU backend (Cloud TPU v4, v5e, v5p, v6e) and the ``xpusim tpu`` systolic-array
commands. See ``docs/backends/tpu.md``.

This entry-point module registers the backend by name only; :mod:`xpusim.plugins.tpu.backend`
is imported the first time a scenario or command uses it, and the array model when an
``xpusim tpu`` command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["register_backends", "register_commands"]


@hookimpl
def register_backends(register: Callable[[Lazy], None]) -> None:
    """Register the ``tpu`` backend (imported on first use)."""
    register(Lazy("tpu", "xpusim.plugins.tpu.backend:TpuBackend"))


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``xpusim tpu gemm|conv`` (the group imports only typer until a command runs)."""
    from xpusim.plugins.tpu.cli import tpu_app

    cli.add_typer(tpu_app, name="tpu")
