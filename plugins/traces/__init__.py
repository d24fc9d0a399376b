"""Built-in trace formats: ``azure-llm``, ``csv``, ``jsonl`` and ``alibaba-gpu``.

Registered through the ``xpusim`` entry point like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.traces import TraceFormat
from xpusim.plugins.traces.readers import TRACE_FORMATS


@hookimpl
def register_trace_formats(register: Callable[[TraceFormat], None]) -> None:
    """Register every reader in :data:`xpusim.plugins.traces.readers.TRACE_FORMATS`."""
    for cls in TRACE_FORMATS:
        register(cls())
