"""``report.md``: the summary for terminals and pull requests.

The summary table (best system per metric in bold with a ★), what is not known and why,
cost parts with rent versus buy, and the figures used with their sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.engine.economics import describe_break_even
from xpusim.engine.report import (
    best_systems,
    escape,
    fmt,
    metric_value,
    not_known,
    not_known_notes,
    shown_metrics,
    source_rows,
    spiking,
    title_of,
)
from xpusim.engine.report.verdict import headline, mixed_tiers, ok_label, price_notes

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(run: RunResult) -> str:
    """The whole ``report.md`` document for ``run``."""
    systems = run.systems
    metrics = shown_metrics(systems, run.vocabulary)
    out = [f"# {escape.markdown(title_of(run))}", ""]
    meta = [
        f"workload {escape.markdown(run.workload)}" if run.workload else "",
        f"model {escape.markdown(run.model)}" if run.model else "",
        f"seed {run.seed}",
    ]
    out += [" · ".join(x for x in meta if x), ""]
    out += [f"**Verdict:** {escape.markdown(headline(systems))}", "", "## Summary", ""]
    out.append("| Metric | " + " | ".join(escape.markdown(s.name) for s in systems) + " |")
    out.append("|:---|" + "---:|" * len(systems))
    out.append("| Devices | " + " | ".join(escape.markdown(s.hardware) for s in systems) + " |")
    out.append(
        "| Status | "
        + " | ".join(
            ok_label(s) if s.status == "ok" else escape.markdown(f"{s.status}: {s.reason}")
            for s in systems
        )
        + " |"
    )
    for m in metrics:
        best = best_systems(systems, m)
        cells = [_cell(m.heading)]
        for s in systems:
            v = metric_value(s, m)
            if v is None:
                cells.append("not known" if s.status == "ok" and m.name in not_known(s) else "-")
            elif s.name in best:
                cells.append(f"**★ {fmt(v)}**")
            else:
                cells.append(fmt(v))
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "★ marks the best system for a metric (lowest latency, cost and energy; "
        "highest throughput and SLO attainment) among those that meet the SLOs; a shared "
        "best value is a tie and gets no ★.",
        "",
    ]
    out += spiking.markdown_section(run)

    notes = [
        f"- **{escape.markdown(s.name)}**, {', '.join(metrics)}: {escape.markdown(reason)}"
        for s in systems
        for metrics, reason in not_known_notes(s)
    ]
    if notes:
        out += ["## Not known", "", *notes, ""]

    costs = []
    for s in systems:
        if s.status != "ok":
            continue
        b = s.details.get("cost_breakdown_usd") or {}
        if b:
            parts = ", ".join(f"{k} {fmt(v)} USD" for k, v in b.items())
            used = price_notes(s.details)
            costs.append(f"- **{escape.markdown(s.name)}**: {parts}. {escape.markdown(used)}")
        be = s.details.get("break_even")
        if isinstance(be, dict):
            costs.append(f"- **{escape.markdown(s.name)}**, rent or buy: {describe_break_even(be)}")
    mixed = mixed_tiers(systems)
    if mixed:
        costs.append(f"- {escape.markdown(mixed)}")
    if costs:
        out += ["## Cost", "", *costs, ""]

    rows = source_rows(systems)
    if rows:
        out += [
            "## Assumptions and sources",
            "",
            "| Figure | Value | Source or assumption | Systems |",
            "|:---|---:|:---|:---|",
        ]
        out += [
            f"| {_cell(r.name)} | {_cell(r.value)} "
            f"| {_cell(r.cited + (f'; {r.date_note}' if r.date_note else ''))} "
            f"| {escape.markdown(r.systems)} |"
            for r in rows
        ]
        out.append("")
    return "\n".join(out)
