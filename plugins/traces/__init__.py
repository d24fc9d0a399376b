"""Built-in trace formats (``azure-llm``, ``csv``, ``jsonl``, ``alibaba-gpu``, ``mooncake``)
and the ``xpusim traces`` command (the registry of public traces).

Registered through the ``xpusim`` entry point like any third-party plugin, by name:
:mod:`xpusim.plugins.traces.readers` (and polars) is imported when a trace is first read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["FORMATS", "register_commands", "register_trace_formats"]

FORMATS: dict[str, str] = {
    "azure-llm": "AzureLLMTrace",
    "csv": "CsvTrace",
    "jsonl": "JsonlTrace",
    "alibaba-gpu": "AlibabaGpuTrace",
}
"""Each format's name and its reader class in :mod:`xpusim.plugins.traces.readers` (whose
``TRACE_FORMATS`` lists the same classes; ``tests/test_host.py`` loads every built-in
registration and checks each object carries its registered name)."""


@hookimpl
def register_trace_formats(register: Callable[[Lazy], None]) -> None:
    """Register every reader of :data:`FORMATS` (imported on first use)."""
    for name, cls in FORMATS.items():
        register(Lazy(name, f"xpusim.plugins.traces.readers:{cls}"))
    register(Lazy("mooncake", "xpusim.plugins.traces.mooncake:MooncakeTrace"))


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``xpusim traces list|fetch`` (the group imports only typer until it runs)."""
    from xpusim.plugins.traces.commands import traces_app

    cli.add_typer(traces_app, name="traces")
