"""Built-in reporters: ``html`` (report.html), ``markdown`` (report.md) and ``timeline``
(timeline.json in Chrome trace event format, for Perfetto).

Registered by name; :mod:`xpusim.plugins.reporters.writers` (and the report renderers) is
imported when a run first writes its folder.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__version__ = "0.1.0"

__all__ = ["register_reporters"]

WRITERS = "xpusim.plugins.reporters.writers"
"""The module holding the reporter classes."""


@hookimpl
def register_reporters(register: Callable[[Lazy], None]) -> None:
    """Register the html, markdown and timeline reporters (imported on first use)."""
    register(Lazy("html", f"{WRITERS}:HtmlReporter"))
    register(Lazy("markdown", f"{WRITERS}:MarkdownReporter"))
    register(Lazy("timeline", f"{WRITERS}:TimelineReporter"))
