"""Built-in trace formats: ``azure-llm``, ``csv``, ``jsonl`` and ``alibaba-gpu``.

Registered through the ``xpusim`` entry point like any third-party plugin, by name:
:mod:`xpusim.plugins.traces.readers` (and polars) is imported when a trace is first read.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["FORMATS", "register_trace_formats"]

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
