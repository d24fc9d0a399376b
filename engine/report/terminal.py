"""The terminal table ``xpusim run`` prints: one row per system, one column per metric.

Columns come from the run's metric vocabulary (:mod:`xpusim.engine.metrics`): every metric
marked ``table`` that some system has, in the vocabulary's order, headed by its short
label and formatted with its ``table_format``; a metric with ``instead_of`` is left out
when any system has that other metric. The title carries the run's verdict (the cheapest
system that meets the SLOs, overloaded systems and what they sustain,
:func:`~xpusim.engine.report.verdict.headline`) and the caption the rent-or-buy break-even
of each system whose prices are known, and a warning when the systems were priced from
different price tiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xpusim.engine.metrics import Metric, Vocabulary
from xpusim.engine.report import escape
from xpusim.engine.report.verdict import (
    headline,
    mixed_tiers,
    ok_label,
    rent_or_buy_notes,
    summary_systems,
)

if TYPE_CHECKING:
    from rich.table import Table


def table_metrics(systems: Sequence[dict[str, Any]], vocabulary: Vocabulary) -> list[Metric]:
    """The metrics the terminal table shows for ``systems`` (``summary.json`` objects)."""

    def present(name: str) -> bool:
        return any(s.get(name) is not None for s in systems)

    return [
        m
        for m in vocabulary
        if m.table and present(m.name) and not (m.instead_of and present(m.instead_of))
    ]


def table_cell(metric: Metric, value: Any) -> str:
    """One cell: the value scaled and formatted as ``metric`` says; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return metric.table_format.format(metric.shown(float(value)))


def summary_table(summary: dict[str, Any], vocabulary: Vocabulary) -> Table:
    """A rich table of a run's ``summary.json`` document, one row per system."""
    from rich.table import Table

    systems = summary["systems"]
    cols = table_metrics(systems, vocabulary)
    rows = summary_systems(summary)
    t = Table(
        title=escape.terminal(
            f"{summary['scenario']} ({summary.get('workload', '')}, {summary.get('model', '')})"
        )
        + "\n"
        + escape.terminal(headline(rows)),
        caption="\n".join(
            escape.terminal(line)
            for line in [*rent_or_buy_notes(rows).splitlines(), mixed_tiers(rows)]
            if line
        )
        or None,
    )
    t.add_column("system", style="bold")
    t.add_column("device")
    t.add_column("n", justify="right")
    t.add_column("status")
    for m in cols:
        t.add_column(m.column, justify="right")
    for s, seen in zip(systems, rows, strict=True):
        row = [
            escape.terminal(s["name"]),
            escape.terminal(s.get("hardware") or s["device"]),
            str(s["count"]),
            ok_label(seen, short=True) if s["status"] == "ok" else s["status"],
        ]
        row += [table_cell(m, s.get(m.name)) for m in cols]
        t.add_row(*row)
    return t
