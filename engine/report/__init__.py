"""Reports a person reads: ``report.html``, ``report.md`` and ``timeline.json``.

This package holds what the formats share: the summary metrics a run's vocabulary
(:mod:`xpusim.engine.metrics`) says to show (:func:`shown_metrics`), the pick of the best
system per metric (:func:`best_systems`), number and figure formatting, and the "Assumptions and sources"
rows. :mod:`xpusim.engine.report.charts` draws the charts (matplotlib to SVG),
:mod:`xpusim.engine.report.html` and :mod:`xpusim.engine.report.markdown` lay out the documents,
:mod:`xpusim.engine.report.timeline` writes the Chrome trace, and :mod:`xpusim.engine.report.compare`
merges run folders into one report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpusim.engine.device import DATE_NOT_STATED, Figure
from xpusim.engine.metrics import Metric, Vocabulary
from xpusim.engine.report.verdict import candidates, tie_tolerance

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult, SystemResult


def fmt(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits and thousands separators (a count,
    an ``int``, in all its digits); ``-`` for none."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):  # a count: whole, however few its digits
        return f"{x:,}"
    v = float(x)
    if math.isnan(v) or math.isinf(v):
        return "-"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag >= digits - 1:
        return f"{v:,.0f}"
    if mag < -4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{max(digits - 1 - mag, 0)}f}"


def metric_value(system: SystemResult, metric: Metric) -> float | None:
    """The metric's value of an ``ok`` system in the shown unit, or ``None``; a count (an
    ``int`` shown in its own unit) stays an ``int``."""
    if system.status != "ok":
        return None
    v = system.metrics.get(metric.name)
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, int) and metric.scale == 1:
        return v
    if math.isnan(float(v)):
        return None
    return metric.shown(float(v))


def shown_metrics(systems: Sequence[SystemResult], vocabulary: Vocabulary) -> list[Metric]:
    """The report metrics of ``vocabulary`` (in its order) that at least one system has a
    number or a not-known note for."""
    out = []
    for m in vocabulary:
        if not m.report:
            continue
        for s in systems:
            if metric_value(s, m) is not None or m.name in not_known(s):
                out.append(m)
                break
    return out


def best_systems(systems: Sequence[SystemResult], metric: Metric) -> set[str]:
    """The name of the one system with the best value of ``metric`` among those that meet
    the scenario's SLOs (every ok system where there are none): empty when the metric has
    no direction, fewer than two systems have a value, or the best value is shared (values
    within :func:`~xpusim.engine.report.verdict.tie_tolerance` of it are ties, and ties get
    no ★)."""
    if metric.better == "none":
        return set()
    pool = candidates(systems)
    vals = {s.name: v for s in pool if (v := metric_value(s, metric)) is not None}
    if len(vals) < 2 and len(pool) == len([s for s in systems if s.status == "ok"]):
        return set()
    if not vals:
        return set()
    target = min(vals.values()) if metric.better == "lower" else max(vals.values())
    tol = tie_tolerance([s for s in pool if s.name in vals], metric.name) * abs(target)
    best = {n for n, v in vals.items() if abs(v - target) <= tol}
    return best if len(best) == 1 else set()


def not_known(system: SystemResult) -> dict[str, str]:
    """Metric name to the sentence that says why the metric is not known."""
    nk = system.details.get("not_known", {})
    return {str(k): str(v) for k, v in nk.items()} if isinstance(nk, dict) else {}


def not_known_notes(system: SystemResult) -> list[tuple[list[str], str]]:
    """The not-known notes of ``system`` with the metrics that share a reason grouped."""
    groups: dict[str, list[str]] = {}
    for metric, reason in sorted(not_known(system).items()):
        groups.setdefault(reason, []).append(metric)
    return [(metrics, reason) for reason, metrics in groups.items()]


# --- figures ("Assumptions and sources") ----------------------------------------------

_YEAR_S = 365.25 * 86400.0


def figure_value(name: str, value: float) -> str:
    """A catalog or economics figure (SI ``value``) with the unit a person reads; a figure
    named with its device (``price.on_demand@h200-sxm``) reads as its plain name."""
    name = name.split("@", 1)[0]
    leaf = name.rsplit(".", 1)[-1]
    if name.startswith("peak_flops."):
        return f"{fmt(value / 1e12, 4)} TFLOP/s"
    if name == "memory_bytes":
        return f"{fmt(value / 1e9, 4)} GB"
    if name == "memory_bw" or leaf == "bandwidth":
        return f"{fmt(value / 1e9, 4)} GB/s"
    if leaf == "latency":
        return f"{fmt(value * 1e6, 3)} µs"
    if name in ("price.on_demand", "price.spot", "price.reserved"):
        return f"{fmt(value * 3600.0, 4)} USD/h"
    if leaf == "list_price":
        return f"{fmt(value, 4)} USD"
    if name.startswith("power.") or leaf.endswith("_w"):
        return f"{fmt(value, 4)} W"
    if name == "economics.electricity":
        return f"{fmt(value * 3.6e6, 3)} USD/kWh"
    if name == "economics.carbon_intensity":
        return f"{fmt(value * 3.6e9, 3)} gCO2e/kWh"
    if name == "economics.lifetime":
        return f"{fmt(value / _YEAR_S, 3)} years"
    if name == "economics.hosting_usd_per_kw_month":
        return f"{fmt(value, 4)} USD/kW-month"
    if name == "economics.embodied_kg_per_device":
        return f"{fmt(value, 4)} kg CO2e"
    return fmt(value, 4)


@dataclass(frozen=True)
class SourceRow:
    """One "Assumptions and sources" row: which systems, the figure, its value, its
    provenance, and whether it is an assumption rather than a published figure."""

    systems: str
    name: str
    value: str
    cited: str
    assumption: bool
    date: str = ""
    """The date the figure's source states (ISO), empty where it states none."""

    @property
    def date_note(self) -> str:
        """How old the figure is, for the provenance cell: ``"as of 2024-10"`` when its
        date is known, ``"date not stated"`` for an undated price, else empty."""
        if self.date:
            return f"as of {self.date}"
        return DATE_NOT_STATED if self.name.startswith("price.") else ""


def source_rows(systems: Iterable[SystemResult]) -> list[SourceRow]:
    """Every figure the systems relied on, identical rows merged across systems."""
    merged: dict[tuple[str, str, str, bool, str], list[str]] = {}
    for s in systems:
        for name in sorted(s.figures):
            fig: Figure = s.figures[name]
            key = (name, figure_value(name, fig.value), fig.cited, not fig.source, fig.date)
            merged.setdefault(key, []).append(s.name)
    rows = [SourceRow(", ".join(who), *key) for key, who in merged.items()]
    return sorted(rows, key=lambda r: (r.name.split(".")[0] == "economics", r.name, r.systems))


def title_of(run: RunResult) -> str:
    """The report's title."""
    return f"xpusim report: {run.scenario}" if run.scenario else "xpusim report"
