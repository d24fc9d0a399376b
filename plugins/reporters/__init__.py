"""Built-in reporters: ``html`` (report.html), ``markdown`` (report.md) and ``timeline``
(timeline.json in Chrome trace event format, for Perfetto)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xpusim import hookimpl
from xpusim.engine.report.compare import write_report_data
from xpusim.engine.report.html import render_html
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.report.timeline import write_timeline
from xpusim.engine.reporter import Reporter
from xpusim.engine.results import RunResult

__version__ = "0.1.0"


class HtmlReporter(Reporter):
    """``report.html``: one self-contained page with tables and inline SVG charts, and
    ``report-data.json`` so ``xpusim compare`` can rebuild it from the run folder."""

    name = "html"
    description = "report.html: self-contained comparison page with charts"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write report.html and report-data.json into ``folder``."""
        (folder / "report.html").write_text(render_html(run), encoding="utf-8")
        return ["report.html", write_report_data(run, folder)]


class MarkdownReporter(Reporter):
    """``report.md``: the summary table and notes for terminals and pull requests."""

    name = "markdown"
    description = "report.md: summary table, not-known notes and sources in Markdown"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write report.md into ``folder``."""
        (folder / "report.md").write_text(render_markdown(run), encoding="utf-8")
        return ["report.md"]


class TimelineReporter(Reporter):
    """``timeline.json``: the simulated device and step timeline as Chrome trace events."""

    name = "timeline"
    description = "timeline.json: simulated timeline in Chrome trace format (Perfetto)"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write timeline.json into ``folder``."""
        write_timeline(run, folder / "timeline.json")
        return ["timeline.json"]


@hookimpl
def register_reporters(register: Callable[[Reporter], None]) -> None:
    """Register the html, markdown and timeline reporters."""
    register(HtmlReporter())
    register(MarkdownReporter())
    register(TimelineReporter())
