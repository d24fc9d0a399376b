"""The built-in reporters' writers: ``html``, ``markdown`` and ``timeline``.

The plugin registers them by name in :mod:`xpusim.plugins.reporters`; a run may load
them before it simulates (to refuse a broken reporter early), so each renderer
(matplotlib for the charts, polars for the tables) is imported by :meth:`write`, when a
run folder is actually written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xpusim.engine.reporter import Reporter

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult

__all__ = ["HtmlReporter", "MarkdownReporter", "TimelineReporter"]


class HtmlReporter(Reporter):
    """``report.html``: one self-contained page with tables and inline SVG charts, and
    ``report-data.json`` so ``xpusim compare`` can rebuild it from the run folder."""

    name = "html"
    description = "report.html: self-contained comparison page with charts"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write report.html and report-data.json into ``folder``."""
        from xpusim.engine.report.compare import write_report_data
        from xpusim.engine.report.html import render_html

        (folder / "report.html").write_text(render_html(run), encoding="utf-8")
        return ["report.html", write_report_data(run, folder)]


class MarkdownReporter(Reporter):
    """``report.md``: the summary table and notes for terminals and pull requests."""

    name = "markdown"
    description = "report.md: summary table, not-known notes and sources in Markdown"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write report.md into ``folder``."""
        from xpusim.engine.report.markdown import render_markdown

        (folder / "report.md").write_text(render_markdown(run), encoding="utf-8")
        return ["report.md"]


class TimelineReporter(Reporter):
    """``timeline.json``: the simulated device and step timeline as Chrome trace events."""

    name = "timeline"
    description = "timeline.json: simulated timeline in Chrome trace format (Perfetto)"

    def write(self, run: RunResult, folder: Path) -> list[str]:
        """Write timeline.json into ``folder``."""
        from xpusim.engine.report.timeline import write_timeline

        write_timeline(run, folder / "timeline.json")
        return ["timeline.json"]
