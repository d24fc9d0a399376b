"""``report.html``: one self-contained page (inline CSS and inline SVG charts, no script,
nothing fetched from the network) that compares the systems of a run.

Sections: a summary table with the best system per metric marked, notes on what is not
known and why, throughput versus cost (Pareto), latency CDFs, energy per unit of work,
the device utilization timeline, the cost breakdown with rent versus buy, and every
catalog figure used with its source under "Assumptions and sources".
"""

from __future__ import annotations

from string import Template
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
from xpusim.engine.report import charts as ch
from xpusim.engine.report.verdict import headline, mixed_tiers, ok_label, price_notes

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="xpusim $version">
<title>$title</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2330; margin: 0 auto; max-width: 1100px; padding: 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d8dce3; padding-bottom: .2em; }
.meta { color: #5a6270; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dce3; padding: .3em .6em; text-align: right; vertical-align: top; }
th { background: #f2f4f7; }
td.name, th.name, td.text { text-align: left; }
td.best { background: #e3f4e6; font-weight: 600; }
td.nk { color: #9a6a00; }
.status { color: #b3261e; }
.legend { color: #5a6270; font-size: .9em; }
figure { margin: 1em 0; }
svg.chart { max-width: 100%; height: auto; display: block; }
p.missing { color: #5a6270; font-style: italic; }
ul.notes li { margin: .2em 0; }
.scroll { overflow-x: auto; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="meta">$meta</p>
$body
</body>
</html>
""")


def _e(x: object) -> str:
    return escape.html(x)


def _summary(run: RunResult) -> str:
    """The summary table: one column per system, one row per metric, the best marked."""
    systems = run.systems
    metrics = shown_metrics(systems, run.vocabulary)
    head = "".join(f"<th>{_e(s.name)}<br><small>{_e(s.hardware)}</small></th>" for s in systems)
    status = "".join(
        f'<td class="text">{_e(ok_label(s))}</td>'
        if s.status == "ok"
        else f'<td class="text status">{_e(s.status)}: {_e(s.reason)}</td>'
        for s in systems
    )
    rows = [f'<tr><th class="name">Status</th>{status}</tr>']
    for m in metrics:
        best = best_systems(systems, m)
        better = f"<br><small>{m.better} is better</small>" if m.better != "none" else ""
        cells = []
        for s in systems:
            v = metric_value(s, m)
            nk = not_known(s)
            if v is None:
                if s.status == "ok" and m.name in nk:
                    cells.append(f'<td class="nk" title="{_e(nk[m.name])}">not known</td>')
                else:
                    cells.append("<td>-</td>")
            elif s.name in best:
                cells.append(f'<td class="best">★ {fmt(v)}</td>')
            else:
                cells.append(f"<td>{fmt(v)}</td>")
        rows.append(
            f'<tr data-metric="{_e(m.name)}"><th class="name">{_e(m.heading)}{better}'
            f"</th>{''.join(cells)}</tr>"
        )
    return (
        '<h2 id="summary">Summary</h2>\n<div class="scroll"><table class="summary">\n'
        f'<tr><th class="name">Metric</th>{head}</tr>\n'
        + "\n".join(rows)
        + '\n</table></div>\n<p class="legend">★ marks the best system for a metric '
        "(lowest latency, cost and energy; highest throughput and SLO attainment) among "
        "those that meet the SLOs; a shared best value is a tie and gets no ★. "
        '"not known" means a figure it needs is not published; see the notes below.</p>'
    )


def _notes(run: RunResult) -> str:
    items = [
        f"<li><b>{_e(s.name)}</b>, {_e(', '.join(metrics))}: {_e(reason)}</li>"
        for s in run.systems
        for metrics, reason in not_known_notes(s)
    ]
    if not items:
        return ""
    return (
        '<h2 id="not-known">What is not known, and why</h2>\n<ul class="notes">\n'
        + "\n".join(items)
        + "\n</ul>"
    )


def _chart(section: str, title: str, svg: str | None, why: str, intro: str = "") -> str:
    body = f"<figure>{svg}</figure>" if svg else f'<p class="missing">{_e(why)}</p>'
    lead = f"<p>{_e(intro)}</p>\n" if intro else ""
    return f'<h2 id="{section}">{_e(title)}</h2>\n{lead}{body}'


def _costs(run: RunResult) -> str:
    rows = []
    for s in run.systems:
        if s.status != "ok":
            continue
        b = s.details.get("cost_breakdown_usd") or {}
        parts = ", ".join(f"{_e(k)} {fmt(v)} USD" for k, v in b.items()) or "not known"
        used = price_notes(s.details)
        if used:
            parts += f'<br><span class="price">{_e(used)}</span>'
        be = s.details.get("break_even")
        if isinstance(be, dict):
            verdict = _e(describe_break_even(be))
        else:
            verdict = _e(not_known(s).get("break_even", "-"))
        rows.append(
            f'<tr><td class="name">{_e(s.name)}</td><td class="text">{parts}</td>'
            f'<td class="text">{verdict}</td></tr>'
        )
    if not rows:
        return ""
    mixed = mixed_tiers(run.systems)
    warn = f'\n<p class="missing">{_e(mixed)}</p>' if mixed else ""
    return (
        '<table class="costs"><tr><th class="name">System</th><th class="name">Cost parts'
        '</th><th class="name">Rent or buy</th></tr>\n' + "\n".join(rows) + "\n</table>" + warn
    )


def _sources(run: RunResult) -> str:
    rows = [
        f'<tr><td class="name">{_e(r.name)}</td><td>{_e(r.value)}</td>'
        f'<td class="text">{"<i>assumption:</i> " if r.assumption else ""}'
        f"{_e(r.cited.removeprefix('assumption: '))}"
        f"{'; ' + _e(r.date_note) if r.date_note else ''}"
        f'</td><td class="text">{_e(r.systems)}</td></tr>'
        for r in source_rows(run.systems)
    ]
    if not rows:
        return (
            '<h2 id="sources">Assumptions and sources</h2>\n<p class="missing">'
            "No catalog figures were recorded for this run.</p>"
        )
    return (
        '<h2 id="sources">Assumptions and sources</h2>\n<p>Every catalog and scenario figure '
        "the numbers above rest on, with the source it was read from, or the assumption that "
        'stands in where no source publishes one.</p>\n<div class="scroll">'
        '<table class="sources"><tr><th class="name">Figure</th><th>Value</th>'
        '<th class="name">Source or assumption</th><th class="name">Systems</th></tr>\n'
        + "\n".join(rows)
        + "\n</table></div>"
    )


def render_html(run: RunResult) -> str:
    """The whole ``report.html`` document for ``run`` as a string."""
    charts = ch.all_charts(run)
    meta = " · ".join(
        _e(x)
        for x in (
            f"workload {run.workload}" if run.workload else "",
            f"model {run.model}" if run.model else "",
            f"seed {run.seed}",
            f"{len(run.systems)} system{'s' if len(run.systems) != 1 else ''}",
        )
        if x
    )
    body = "\n".join(
        part
        for part in (
            f'<p class="verdict" id="verdict"><b>Verdict:</b> {_e(headline(run.systems))}</p>',
            _summary(run),
            _notes(run),
            _chart(
                "pareto",
                "Throughput versus cost",
                charts["pareto"],
                "No system has both a throughput and a known cost, so there is no trade-off "
                "to draw.",
                "Up and to the left is better; the dashed line joins the systems "
                "no other system beats on both.",
            ),
            _chart(
                "load",
                "Latency versus load",
                charts["load"],
                "No capacity search ran; set capacity: {search: true} in the scenario to find "
                "each system's highest rate within its SLOs.",
                "Each system's p99 time to first token at the offered rates (or numbers of "
                "closed-loop clients) its capacity search simulated: filled where the SLOs "
                "held, hollow where they did not.",
            ),
            _chart(
                "latency",
                "Latency CDFs (TTFT, TBT)",
                charts["latency"],
                "This run served no requests (a training, offline or spiking workload), so it "
                "has no time to first token or time between tokens.",
            ),
            _chart(
                "energy",
                "Energy per unit of work",
                charts["energy"],
                "No system's energy per token, sample or step is known.",
            ),
            spiking.html_section(run),
            _chart(
                "utilization",
                "Device utilization timeline",
                charts["utilization"],
                "This run recorded no device power-state timeline.",
                "The share of each system's devices busy in each power state over simulated "
                "time; the gap to 100 % is idle.",
            ),
            _chart("cost", "Cost breakdown", charts["cost"], "No system's cost is known.")
            + "\n"
            + _costs(run),
            _sources(run),
        )
        if part
    )
    return _PAGE.substitute(
        title=_e(title_of(run)),
        meta=meta,
        body=body,
        version=_e(run.version),
    )
