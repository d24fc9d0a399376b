"""The reports' section for spiking runs: what an inference costs and where each
platform wins.

Three parts, read from what the run recorded (nothing is simulated here):

* **Energy split.** Per inference and per synaptic event, the static part (idle power of
  the devices over the span, what the hardware draws standing still), the active part
  (busy energy above idle: cores running, packets, synaptic events on a neuromorphic
  chip; busy power states on a GPU or TPU) and the total at the scenario's load, from the
  engine's ``energy_per_sample_static_j`` / ``energy_per_sample_active_j`` and the
  workload's ``synaptic_events_per_sample``.
* **Where each platform wins.** The workload's ``operating_points`` frame (energy per
  inference and latency over offered load and input firing rate,
  :mod:`xpusim.plugins.workloads.spiking_sweep`, device energy before PUE; the system's
  PUE is applied here), with the loads and rates at which two systems' energy per
  inference cross, found between grid points by interpolating in log-log space; and, from
  the static power and active energy at the scenario's load, the load
  ``λ* = (P_a - P_b) / (e_b - e_a)`` above which the system with the higher static power
  but the lower active energy per inference would win, with whether both can sustain it
  (their ``capacity_samples_per_s``).
* **Mapping facts.** Boards, chips and cores used, neurons per core, routing entries,
  real-time factor and whether the network keeps up (for a placing backend), and the
  dense and sparse op counts per timestep every system is given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib
import polars as pl
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from xpusim.engine.report import escape, fmt
from xpusim.engine.report.charts import _RC, _figure, _svg, colors

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult, SystemResult

__all__ = [
    "Crossover",
    "SplitRow",
    "StaticCrossover",
    "applies",
    "chart",
    "crossovers",
    "html_section",
    "markdown_section",
    "split_rows",
    "static_crossovers",
]

STAR_NOTE = (
    "The summary's ★ for energy per sample uses the total (static plus active) at the "
    "scenario's load; the active row marks its own best. Equal figures get no ★: figures "
    "within a billionth of each other are equal, and so are throughputs within 5% of each "
    "other when every system was offered the same load (each one that keeps up delivers it)."
)
"""What the report says about which energy figure the summary's best mark uses."""

AXES = {"load": "offered load (samples/s)", "input_rate": "input firing rate (Hz)"}
"""The operating-point axes and how the charts label them."""


def _num(s: SystemResult, key: str) -> float | None:
    v = s.metrics.get(key) if s.status == "ok" else None
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _pue(s: SystemResult) -> float:
    fig = s.figures.get("economics.pue")
    return float(fig.value) if fig is not None else 1.0


def applies(run: RunResult) -> bool:
    """Whether the run is a spiking one with something for this section."""
    return run.workload == "spiking" and any(
        _num(s, "synaptic_events_per_sample") is not None for s in run.systems
    )


@dataclass(frozen=True)
class SplitRow:
    """One system's energy per inference and per synaptic event, static, active and
    total, in joules (``None`` where not known)."""

    system: str
    static_j: float | None
    active_j: float | None
    total_j: float | None
    events: float | None

    def per_event(self, part: float | None) -> float | None:
        """``part`` joules per inference divided by the synaptic events of an inference."""
        if part is None or not self.events:
            return None
        return part / self.events


def split_rows(systems: Sequence[SystemResult]) -> list[SplitRow]:
    """The energy split of every ``ok`` system at the scenario's load."""
    return [
        SplitRow(
            s.name,
            _num(s, "energy_per_sample_static_j"),
            _num(s, "energy_per_sample_active_j"),
            _num(s, "energy_per_sample_j"),
            _num(s, "synaptic_events_per_sample"),
        )
        for s in systems
        if s.status == "ok"
    ]


@dataclass(frozen=True)
class Crossover:
    """Two systems' energy per inference cross on ``axis`` at ``at`` (samples/s or Hz):
    ``below`` is the cheaper one below that point, ``above`` above it."""

    axis: str
    at: float
    energy_j: float
    below: str
    above: str


def _points(run: RunResult) -> pl.DataFrame | None:
    frame = run.frame("operating_points")
    if frame is None:
        return None
    df = frame.lazy().collect() if isinstance(frame, pl.LazyFrame) else frame
    pue = {s.name: _pue(s) for s in run.systems}
    return df.with_columns(
        (pl.col("total_j") * pl.col("system").replace_strict(pue, default=1.0)).alias("e_j")
    )


def _curve(points: pl.DataFrame, axis: str, system: str) -> dict[float, float]:
    x = "load_per_s" if axis == "load" else "input_rate_hz"
    part = points.filter(
        (pl.col("axis") == axis)
        & (pl.col("system") == system)
        & ~pl.col("saturated")
        & pl.col("e_j").is_not_null()
    )
    return {float(a): float(e) for a, e in zip(part[x], part["e_j"], strict=True) if e > 0}


def crossovers(run: RunResult) -> list[Crossover]:
    """Where two systems' energy per inference cross along each sweep axis."""
    points = _points(run)
    if points is None:
        return []
    names = list(dict.fromkeys(points["system"].to_list()))
    out: list[Crossover] = []
    for axis in AXES:
        curves = {n: _curve(points, axis, n) for n in names}
        for a, b in itertools.combinations(names, 2):
            xs = sorted(set(curves[a]) & set(curves[b]))
            for x0, x1 in itertools.pairwise(xs):
                d0 = math.log(curves[a][x0] / curves[b][x0])
                d1 = math.log(curves[a][x1] / curves[b][x1])
                if d0 == 0 or d0 * d1 >= 0:
                    continue
                t = d0 / (d0 - d1)
                at = math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
                e = math.exp(math.log(curves[a][x0]) + t * math.log(curves[a][x1] / curves[a][x0]))
                below, above = (b, a) if d0 > 0 else (a, b)
                out.append(Crossover(axis, at, e, below, above))
    return out


@dataclass(frozen=True)
class StaticCrossover:
    """``lean`` draws more static power but less active energy per inference than
    ``light``; above ``load`` samples/s ``lean`` needs less energy per inference.
    ``sustained`` says whether both systems can carry that load (their capacity)."""

    lean: str
    light: str
    load: float
    sustained: bool


def static_crossovers(run: RunResult) -> list[StaticCrossover]:
    """The load at which a system with higher static power but lower active energy per
    inference overtakes another (from the scenario's load: static power is the static
    energy per sample times the throughput; whether the load can be carried, from each
    system's ``capacity_samples_per_s``)."""
    cap = {s.name: c for s in run.systems if (c := _num(s, "capacity_samples_per_s"))}
    facts = {}
    for s in run.systems:
        static, active = (
            _num(s, "energy_per_sample_static_j"),
            _num(s, "energy_per_sample_active_j"),
        )
        rate = _num(s, "throughput_samples_per_s")
        if static is not None and active is not None and rate:
            facts[s.name] = (static * rate, active)
    out = []
    for a, b in itertools.permutations(facts, 2):
        (pa, ea), (pb, eb) = facts[a], facts[b]
        if pa > pb and ea < eb:
            load = (pa - pb) / (eb - ea)
            sustained = load < min(cap.get(a, math.inf), cap.get(b, math.inf))
            out.append(StaticCrossover(a, b, load, sustained))
    return out


def chart(run: RunResult) -> str | None:
    """Energy per inference and p99 latency against offered load and input rate, one
    line per system; crossovers are black rings, points where a placing backend does not
    keep up with real time are hollow, saturated loads are left out."""
    points = _points(run)
    if points is None or points.height == 0:
        return None
    col = colors(run.systems)
    names = list(dict.fromkeys(points["system"].to_list()))
    cross = crossovers(run)
    with matplotlib.rc_context(_RC):
        fig = _figure(9.6, 6.4)
        axes = fig.subplots(2, 2, squeeze=False)
        for row, (axis, xlabel) in enumerate(AXES.items()):
            x = "load_per_s" if axis == "load" else "input_rate_hz"
            for k, (ycol, ylabel, scale) in enumerate(
                (
                    ("e_j", "energy per inference (J)", 1.0),
                    ("latency_p99_s", "p99 latency (ms)", 1e3),
                )
            ):
                ax = axes[row][k]
                for n in names:
                    part = points.filter(
                        (pl.col("axis") == axis)
                        & (pl.col("system") == n)
                        & ~pl.col("saturated")
                        & pl.col(ycol).is_not_null()
                    ).sort(x)
                    if part.height == 0:
                        continue
                    xs = part[x].to_numpy()
                    ys = part[ycol].to_numpy() * scale
                    ax.plot(xs, ys, color=col.get(n, "#555555"), label=n, linewidth=1.5)
                    late = part["fits_real_time"].fill_null(True).to_numpy()
                    face = [col.get(n, "#555555") if ok else "white" for ok in late]
                    ax.scatter(xs, ys, s=18, c=face, edgecolors=col.get(n, "#555555"), zorder=3)
                if ycol == "e_j":
                    for c in (c for c in cross if c.axis == axis):
                        ax.scatter(
                            [c.at],
                            [c.energy_j],
                            s=90,
                            facecolors="none",
                            edgecolors="black",
                            linewidths=1.2,
                            zorder=4,
                        )
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                for a in (ax.xaxis, ax.yaxis):  # plain numbers: the report shows no TeX
                    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    a.set_minor_formatter(NullFormatter())
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
        axes[0][0].legend(loc="upper right", fontsize=7, frameon=False)
        return _svg(fig, "spiking", "energy per inference and latency against load and input rate")


def _split_table(rows: list[SplitRow]) -> tuple[list[str], list[list[str]]]:
    head = [
        "System",
        "Static J/inference",
        "Active J/inference",
        "Total J/inference",
        "Synaptic events/inference",
        "Static µJ/event",
        "Active µJ/event",
        "Total µJ/event",
    ]

    def uj(v: float | None) -> str:
        return fmt(None if v is None else v * 1e6)

    body = [
        [
            r.system,
            fmt(r.static_j),
            fmt(r.active_j),
            fmt(r.total_j),
            fmt(r.events),
            uj(r.per_event(r.static_j)),
            uj(r.per_event(r.active_j)),
            uj(r.per_event(r.total_j)),
        ]
        for r in rows
    ]
    return head, body


FACTS = (
    ("boards", "Boards"),
    ("network_copies", "Network copies"),
    ("chips_used", "Chips used"),
    ("cores_used", "Cores used"),
    ("neurons_per_core", "Neurons per core"),
    ("routing_entries", "Routing entries"),
    ("real_time_factor", "Real-time factor"),
    ("required_time_scale_factor", "Slow-down needed"),
    ("fits_real_time", "Fits in real time"),
    ("dense_ops_per_timestep", "Dense ops per timestep"),
    ("synaptic_events_per_timestep", "Synaptic events per timestep"),
)
"""The mapping facts and op counts the section tabulates, with their headings."""


def _fact_cell(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float) and float(v).is_integer():
        return f"{int(v):,}"
    return fmt(v)


def _facts_table(systems: Sequence[SystemResult]) -> tuple[list[str], list[list[str]]]:
    ok = [s for s in systems if s.status == "ok"]
    head = ["Fact", *(s.name for s in ok)]
    body = []
    for key, label in FACTS:
        vals = [s.metrics.get(key) for s in ok]
        if all(v is None for v in vals):
            continue
        cells = [_fact_cell(v) for v in vals]
        body.append([label, *cells])
    return head, body


def _sentences(run: RunResult) -> list[str]:
    """Plain statements of the crossovers, for both documents."""
    out = []
    for c in crossovers(run):
        unit = "samples/s" if c.axis == "load" else "Hz input rate"
        out.append(
            f"{c.below} needs less energy per inference below {fmt(c.at)} {unit}, "
            f"{c.above} above it ({fmt(c.energy_j)} J per inference at the crossing)."
        )
    for x in static_crossovers(run):
        verdict = (
            "both can carry that load"
            if x.sustained
            else "but at least one of them cannot carry that load, so it does not happen"
        )
        out.append(
            f"{x.lean} draws more static power than {x.light} but less active energy per "
            f"inference: it would need less energy per inference above {fmt(x.load)} "
            f"samples/s; {verdict}."
        )
    if not out:
        out.append("No two systems' energy per inference cross over the swept range.")
    return out


POINTS_FILE = "operating_points.parquet"
"""The run folder's file of every operating point (one row per system, axis and point, in
the schema the spiking workload declares), which the crossover sentences rest on."""


def _points_note(run: RunResult) -> str | None:
    """Where the operating points behind the crossovers are kept, when the run has them."""
    if run.frame("operating_points") is None:
        return None
    return (
        f"Every operating point (energy per inference split static/active before PUE, p50 "
        f"and p99 latency, synaptic events, capacity and real-time fit, per system, axis and "
        f"point) is in {POINTS_FILE} in the run folder."
    )


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    cell = escape.markdown
    lines = ["| " + " | ".join(cell(h) for h in head) + " |"]
    lines.append("|:---|" + "---:|" * (len(head) - 1))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return lines


def markdown_section(run: RunResult) -> list[str]:
    """The section as Markdown lines (none for a run it does not apply to)."""
    if not applies(run):
        return []
    out = ["## Spiking: energy per inference and where each platform wins", ""]
    out += [
        "Energy per inference split into static (idle power over the span) and active "
        "(busy energy above idle) parts at the scenario's load, PUE included. " + STAR_NOTE,
        "",
    ]
    out += _md_table(*_split_table(split_rows(run.systems)))
    out += ["", "### Where each platform wins", ""]
    out += [f"- {escape.markdown(x)}" for x in _sentences(run)]
    note = _points_note(run)
    if note:  # fixed text, no scenario content: the file name shown as code
        out += ["", note.replace(POINTS_FILE, f"`{POINTS_FILE}`")]
    out += ["", "### Mapping facts and op counts", ""]
    out += _md_table(*_facts_table(run.systems))
    out.append("")
    return out


def _html_table(head: list[str], body: list[list[str]], cls: str) -> str:
    e = escape.html
    rows = "".join(
        "<tr>"
        + "".join(f'<td class="{"name" if i == 0 else ""}">{e(c)}</td>' for i, c in enumerate(row))
        + "</tr>\n"
        for row in body
    )
    th = "".join(f'<th class="{"name" if i == 0 else ""}">{e(h)}</th>' for i, h in enumerate(head))
    return f'<div class="scroll"><table class="{cls}"><tr>{th}</tr>\n{rows}</table></div>'


def html_section(run: RunResult) -> str:
    """The section as HTML (empty for a run it does not apply to)."""
    if not applies(run):
        return ""
    e = escape.html
    svg = chart(run)
    figure = (
        f"<figure>{svg}</figure>"
        if svg
        else '<p class="missing">No operating points are at hand: workload.sweep was '
        f"disabled, or the report was built from run folders (their {POINTS_FILE} is not "
        "read back).</p>"
    )
    items = "".join(f"<li>{e(x)}</li>" for x in _sentences(run))
    note = _points_note(run)
    if note:
        code = f"<code>{e(POINTS_FILE)}</code>"
        items += "<li>" + e(note).replace(e(POINTS_FILE), code) + "</li>"
    return (
        '<h2 id="spiking">Spiking: energy per inference and where each platform wins</h2>\n'
        "<p>Energy per inference split into static (idle power over the span) and active "
        f"(busy energy above idle) parts at the scenario's load, PUE included. {e(STAR_NOTE)}"
        "</p>\n"
        + _html_table(*_split_table(split_rows(run.systems)), "spiking-split")
        + "\n<h3>Where each platform wins</h3>\n<p>Energy per inference and p99 latency over "
        "offered load (at the scenario's input rate) and over input firing rate (at the "
        "scenario's load), same network and weights; black rings mark crossovers, hollow "
        "points a network that does not keep up with real time, saturated loads are left "
        f'out.</p>\n{figure}\n<ul class="notes">{items}</ul>\n'
        "<h3>Mapping facts and op counts</h3>\n"
        + _html_table(*_facts_table(run.systems), "spiking-facts")
    )
