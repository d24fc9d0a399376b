"""The report's charts, drawn by matplotlib as SVG text ready to inline.

Each function takes the systems (or the run) and returns one ``<svg>`` element as a
string, or ``None`` when there is nothing to draw (a training run has no latency CDF).
Output is deterministic: the same run gives the same bytes (a fixed ``svg.hashsalt``, no
date, no metadata block), and element ids carry a per-chart prefix so several charts can
share one HTML page. No pyplot state is touched; every chart is its own ``Figure``.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from xpusim.engine.economics import BUSY_STATES
from xpusim.engine.report import escape
from xpusim.engine.report.verdict import candidates

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from xpusim.engine.results import RunResult, SystemResult

_RC: dict[Any, Any] = {
    "svg.hashsalt": "xpusim",
    "text.parse_math": False,  # user names are shown as written: "$" never starts TeX
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
STATE_COLORS = {
    "compute": "#2ca02c",
    "memory": "#1f77b4",
    "comm": "#ff7f0e",
    "overhead": "#9467bd",
}
MAX_PANELS = 8
"""At most this many systems get a utilization panel; the rest are named in a note."""
CDF_POINTS = 400
"""A latency CDF is drawn through at most this many quantiles, however many requests."""
TIME_BINS = 200
"""Time bins of the utilization timeline."""


def colors(systems: Sequence[SystemResult]) -> dict[str, str]:
    """One colour per system, in run order, shared by every chart."""
    return {s.name: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}


def _svg(fig: Figure, chart: str, label: str) -> str:
    """``fig`` as an inline ``<svg>`` element with ids prefixed by ``chart``."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = escape.svg(text[text.index("<svg") :])
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'(id="|url\(#|href="#)([A-Za-z_][\w.-]*)', rf"\g<1>{chart}-\g<2>", text)
    return text.replace(
        "<svg ", f'<svg class="chart" data-chart="{chart}" role="img" aria-label="{label}" ', 1
    ).strip()


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _metric(s: SystemResult, key: str) -> float | None:
    v = s.metrics.get(key) if s.status == "ok" else None
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(float(v)) else None


def pareto(systems: Sequence[SystemResult]) -> str | None:
    """Throughput against cost per million tokens (per sample-run cost when no tokens), each
    system a point, and the Pareto front (more throughput for less money) as a line over
    the systems that meet the SLOs; a system that misses them is a hollow point."""
    ykey, ylab = "throughput_tokens_per_s", "throughput (tokens/s)"
    xkey, xlab = "cost_per_million_tokens_usd", "cost per million tokens (USD)"
    if not any(_metric(s, xkey) is not None for s in systems):
        ykey, ylab = "throughput_samples_per_s", "throughput (samples/s)"
        xkey, xlab = "cost_usd", "cost of the run (USD)"
    pts = [
        (s.name, x, y)
        for s in systems
        if (x := _metric(s, xkey)) is not None and (y := _metric(s, ykey)) is not None
    ]
    if not pts:
        return None
    col = colors(systems)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        # the front joins only systems that meet the SLOs; the others are drawn hollow
        pool = {s.name for s in candidates(systems)}
        front: list[tuple[float, float]] = []
        for _, x, y in sorted((p for p in pts if p[0] in pool), key=lambda p: (p[1], -p[2])):
            if not front or y > front[-1][1]:
                front.append((x, y))
        if len(front) > 1:
            fx, fy = zip(*front, strict=True)
            ax.step(
                fx,
                fy,
                where="post",
                color="#555555",
                linestyle="--",
                linewidth=1,
                label="Pareto front",
            )
        for name, x, y in pts:
            if name in pool:
                ax.scatter([x], [y], s=60, color=col[name], zorder=3)
                label = name
            else:
                ax.scatter([x], [y], s=60, facecolors="none", edgecolors=col[name], zorder=3)
                label = f"{name} (misses SLO)"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel(xlab + " (lower is better)")
        ax.set_ylabel(ylab + " (higher is better)")
        ax.set_xlim(0, max(p[1] for p in pts) * 1.2 or 1.0)
        ax.set_ylim(0, max(p[2] for p in pts) * 1.15 or 1.0)
        if len(front) > 1:
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        return _svg(fig, "pareto", f"{ylab} versus {xlab}")


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values[np.isfinite(values)])
    if v.size <= CDF_POINTS:
        return v, np.arange(1, v.size + 1) / v.size
    q = np.linspace(0.0, 1.0, CDF_POINTS)
    return np.quantile(v, q), q


def latency_cdfs(run: RunResult) -> str | None:
    """Empirical CDFs of time to first token and mean time between tokens per request,
    one line per system (requests frame); ``None`` when no system served requests."""
    frame = run.frame("requests")
    if frame is None:
        return None
    # a spilled (lazy) frame stays lazy: only one float column per system is collected
    req = frame.lazy()
    cols = req.collect_schema().names()
    present = [c for c in ("ttft_s", "tbt_mean_s") if c in cols]
    counts = (
        req.select(pl.col(c).drop_nulls().len() for c in present).collect().row(0)
        if present
        else ()
    )
    nonempty = {c for c, k in zip(present, counts, strict=True) if k > 0}
    panels = [
        (c, lab)
        for c, lab in (
            ("ttft_s", "time to first token (ms)"),
            ("tbt_mean_s", "time between tokens, request mean (ms)"),
        )
        if c in nonempty
    ]
    if not panels:
        return None
    col = colors(run.systems)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4 if len(panels) == 1 else 9.6, 3.6)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (c, lab) in zip(axes, panels, strict=True):
            lo, hi = math.inf, 0.0
            for s in run.systems:
                part = (
                    req.filter(pl.col("system") == s.name)
                    .select(pl.col(c).drop_nulls())
                    .collect()
                    .to_series()
                )
                if part.len() == 0:
                    continue
                x, y = _cdf(part.cast(pl.Float64).to_numpy() * 1e3)
                if x.size == 0:
                    continue
                ax.step(x, y, where="post", color=col[s.name], label=s.name, linewidth=1.5)
                pos = x[x > 0]
                if pos.size:
                    lo, hi = min(lo, float(pos.min())), max(hi, float(pos.max()))
            if hi > 0 and lo < math.inf and hi / lo > 100:
                ax.set_xscale("log")
            ax.set_xlabel(lab)
            ax.set_ylabel("fraction of requests")
            ax.set_ylim(0, 1.02)
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        return _svg(fig, "latency", "latency CDFs: time to first token and time between tokens")


def energy(systems: Sequence[SystemResult]) -> str | None:
    """Energy per token (per sample, or per step, when no system has tokens) as bars;
    a system whose energy is not known gets a "not known" label instead of a bar."""
    candidates = (
        ("energy_per_token_j", "energy per token (J)"),
        ("energy_per_sample_j", "energy per sample (J)"),
        ("energy_per_step_j", "energy per step (J)"),
    )
    pick = next(
        ((k, lab) for k, lab in candidates if any(_metric(s, k) is not None for s in systems)), None
    )
    if pick is None:
        return None
    key, lab = pick
    ok = [s for s in systems if s.status == "ok"]
    col = colors(systems)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 0.9 + 0.45 * len(ok))
        ax = fig.add_subplot()
        names = [s.name for s in ok][::-1]
        vals = [_metric(s, key) for s in ok][::-1]
        ax.barh(names, [v or 0.0 for v in vals], color=[col[n] for n in names])
        top = max(v for v in vals if v is not None)
        for i, v in enumerate(vals):
            ax.text(
                (v or 0.0) + top * 0.01,
                i,
                "not known" if v is None else f"{v:.3g}",
                va="center",
                fontsize=8,
            )
        ax.set_xlim(0, top * 1.2)
        ax.set_xlabel(lab + " (lower is better)")
        ax.grid(axis="y", visible=False)
        return _svg(fig, "energy", lab)


def _occupancy(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Device-seconds of the intervals [start, end) falling in each bin between ``edges``.

    The integral of the count of open intervals up to time T is
    ``sum_{a<T} (T - a) - sum_{b<T} (T - b)``; with sorted ends and cumulative sums it is
    evaluated at every edge in O(n log n), however many intervals there are.
    """

    def integral(points: np.ndarray) -> np.ndarray:
        p = np.sort(points)
        csum = np.concatenate(([0.0], np.cumsum(p)))
        k = np.searchsorted(p, edges, side="left")
        return edges * k - csum[k]

    total = integral(starts) - integral(ends)
    return np.diff(total)


def utilization(run: RunResult) -> str | None:
    """Per system, the share of its devices in each busy state over simulated time, as a
    stacked area (idle is the gap to 100 %), from the devices frame."""
    frame = run.frame("devices")
    if frame is None:
        return None
    # a spilled (lazy) frame stays lazy: per state, only two float columns are collected
    dev = frame.lazy()
    dev_cols = dev.collect_schema().names()
    names = set(dev.select(pl.col("system").unique()).collect().to_series().to_list())
    shown = [s for s in run.systems if s.name in names]
    shown = shown[:MAX_PANELS]
    if not shown:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(9.6, 0.6 + 1.5 * len(shown))
        axes = fig.subplots(len(shown), 1, squeeze=False, sharex=False)[:, 0]
        for ax, s in zip(axes, shown, strict=True):
            part = dev.filter(pl.col("system") == s.name)
            span = _metric(s, "simulated_s") or float(
                part.select(pl.col("end_s").max()).collect().item() or 0.0
            )
            if span <= 0:
                continue
            lane_cols = [c for c in ("replica", "device") if c in dev_cols]
            lanes = (
                int(part.select(pl.struct(lane_cols).n_unique()).collect().item())
                if lane_cols
                else 1
            )
            n = max(int(s.details.get("devices_counted") or 0), lanes, 1)
            edges = np.linspace(0.0, span, TIME_BINS + 1)
            width = span / TIME_BINS
            layers, labels, cols = [], [], []
            for state in BUSY_STATES:
                iv = (
                    part.filter(pl.col("state") == state)
                    .select(
                        pl.col("start_s").cast(pl.Float64).clip(0.0, span),
                        pl.col("end_s").cast(pl.Float64).clip(0.0, span),
                    )
                    .collect()
                )
                if iv.height == 0:
                    continue
                a = iv["start_s"].to_numpy()
                b = iv["end_s"].to_numpy()
                layers.append(_occupancy(a, b, edges) / (n * width) * 100.0)
                labels.append(state)
                cols.append(STATE_COLORS[state])
            mids = (edges[:-1] + edges[1:]) / 2
            if layers:
                ax.stackplot(mids, *layers, labels=labels, colors=cols, step="mid", linewidth=0)
            ax.set_xlim(0, span)
            ax.set_ylim(0, 100)
            ax.set_ylabel("% of devices")
            ax.set_title(f"{s.name} ({n} device{'s' if n != 1 else ''})", fontsize=9, loc="left")
            if layers:
                ax.legend(
                    loc="lower right",
                    bbox_to_anchor=(1.0, 1.0),
                    fontsize=7,
                    frameon=False,
                    ncol=4,
                    borderaxespad=0.1,
                )
        axes[-1].set_xlabel("simulated time (s)")
        return _svg(fig, "utilization", "device utilization timeline by power state")


def cost_breakdown(systems: Sequence[SystemResult]) -> str | None:
    """Each system's cost split into its parts (rental; or amortization, electricity and
    hosting) as stacked horizontal bars."""
    rows = [
        (s.name, dict(s.details.get("cost_breakdown_usd") or {}))
        for s in systems
        if s.status == "ok" and s.details.get("cost_breakdown_usd")
    ]
    if not rows:
        return None
    parts: list[str] = []
    for _, b in rows:
        parts.extend(k for k in b if k not in parts)
    palette = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 0.9 + 0.45 * len(rows))
        ax: Axes = fig.add_subplot()
        names = [n for n, _ in rows][::-1]
        left = np.zeros(len(rows))
        for j, part in enumerate(parts):
            vals = np.array([float(b.get(part, 0.0)) for _, b in rows][::-1])
            ax.barh(names, vals, left=left, label=part, color=palette[j % len(palette)])
            left += vals
        top = float(left.max()) or 1.0
        for i, tot in enumerate(left):
            ax.text(tot + top * 0.01, i, f"{tot:.3g} USD", va="center", fontsize=8)
        ax.set_xlim(0, top * 1.25)
        ax.set_xlabel("cost of the simulated run (USD)")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower right", fontsize=7, frameon=False)
        return _svg(fig, "cost", "cost breakdown per system")


def load_curve(systems: Sequence[SystemResult]) -> str | None:
    """Latency against offered load: each system's p99 time to first token at the rates its
    capacity search simulated (``details["capacity"]["probes"]``), or at the numbers of
    closed-loop clients, filled where the SLOs held and hollow where they did not; ``None``
    when no system was searched."""
    curves = []
    clients = False
    for s in systems:
        cap = s.details.get("capacity")
        probes = cap.get("probes") if isinstance(cap, dict) else None
        pts = []
        for p in probes or []:
            if p.get("ttft_p99_s") is None:
                continue
            clients = clients or "concurrency" in p
            load = p["concurrency"] if "concurrency" in p else p["rate_per_s"]
            pts.append((float(load), float(p["ttft_p99_s"]), bool(p["met"])))
        if pts:
            curves.append((s.name, sorted(pts)))
    if not curves:
        return None
    col = colors(systems)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        for name, pts in curves:
            xs, ys, _met = zip(*pts, strict=True)
            ax.plot(xs, ys, color=col[name], linewidth=1, label=name)
            for x, y, ok in pts:
                face = col[name] if ok else "none"
                ax.scatter([x], [y], s=30, facecolors=face, edgecolors=col[name], zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("closed-loop clients" if clients else "offered load (requests/s)")
        ax.set_ylabel("TTFT p99 (s)")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        return _svg(fig, "load", "latency versus offered load")


def all_charts(run: RunResult) -> dict[str, Any]:
    """Every chart by section key (``None`` where there is nothing to draw)."""
    return {
        "pareto": pareto(run.systems),
        "load": load_curve(run.systems),
        "latency": latency_cdfs(run),
        "energy": energy(run.systems),
        "utilization": utilization(run),
        "cost": cost_breakdown(run.systems),
    }
