"""``timeline.json``: the simulated timeline in Chrome trace event format.

Open it in Perfetto (ui.perfetto.dev) or ``chrome://tracing``. Each system is a process
(``pid``), each device of each replica a thread (``tid``) whose complete events (``ph:
"X"``, ``ts``/``dur`` in microseconds of simulated time) are its busy intervals named by
power state; each replica's steps form one more thread. Idle is the gaps.

A system with more than :data:`MAX_LANES` device lanes (a training cluster of thousands of
devices) shows an evenly spaced sample of them — every device index of the replica up to
that many, then evenly spaced replicas (and their step threads) — with each shown lane's
intervals whole; ``otherData.lanes`` says how many were shown of how many. The
utilisation chart and the energy still read every device from the frames.

A trace holds at most :data:`MAX_EVENTS` complete events. Beyond that, back-to-back
intervals of the same state on one thread are merged; if that is not enough, each thread
gets one event per time window, named by the state busy longest in it (its
``merged_intervals`` arg counts what went in); ``otherData.reduction`` says what was done.
A run whose frames spilled (lazy frames) goes straight to the per-window aggregation as a
streaming polars query, so the intervals are never held in memory all at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from xpusim.engine.economics import BUSY_STATES
from xpusim.engine.frames import frame_columns

if TYPE_CHECKING:
    from xpusim.engine.results import RunResult

MAX_EVENTS = 200_000
"""Most complete events one timeline.json holds."""

MAX_LANES = 64
"""Most device lanes (threads) one system shows; past it, an evenly spaced sample."""

_STEP_TID_BASE = 1_000_000
_JOULES = (
    pl.when(pl.col("joules").is_null().all())
    .then(None)
    .otherwise(pl.col("joules").sum())
    .alias("joules")
)


def _lanes(run: RunResult) -> pl.DataFrame | pl.LazyFrame | None:
    """Busy intervals of every lane: pid, tid, thread name, name, start and end (s), joules
    (lazy and unsorted when any input frame is lazy; sorted by pid, tid, start otherwise)."""
    pids = {s.name: i + 1 for i, s in enumerate(run.systems)}
    parts = []
    dev = run.frame("devices")
    if dev is not None:
        d = dev.filter(pl.col("state").is_in(list(BUSY_STATES)))
        d_cols = frame_columns(d)
        rep = pl.col("replica") if "replica" in d_cols else pl.lit(0)
        dv = pl.col("device") if "device" in d_cols else pl.lit(0)
        d = d.with_columns(rep.cast(pl.Int64).alias("_r"), dv.cast(pl.Int64).alias("_d"))
        parts.append(
            d.select(
                pl.col("system"),
                (pl.col("_r") * 10_000 + pl.col("_d") + 1).alias("tid"),
                pl.format("replica {} device {}", "_r", "_d").alias("thread"),
                pl.col("state").cast(pl.Utf8).alias("name"),
                pl.col("start_s").cast(pl.Float64),
                pl.col("end_s").cast(pl.Float64),
                (
                    pl.col("joules").cast(pl.Float64)
                    if "joules" in d_cols
                    else pl.lit(None, pl.Float64)
                ).alias("joules"),
            )
        )
    st = run.frame("steps")
    st_cols = frame_columns(st) if st is not None else []
    if st is not None and {"start_s", "end_s"} <= set(st_cols):
        rep = pl.col("replica") if "replica" in st_cols else pl.lit(0)
        st = st.with_columns(rep.cast(pl.Int64).alias("_r"))
        name = (
            pl.format("step ({})", pl.col("state").cast(pl.Utf8))
            if "state" in st_cols
            else pl.lit("step")
        )
        parts.append(
            st.select(
                pl.col("system"),
                (pl.col("_r") + _STEP_TID_BASE).alias("tid"),
                pl.format("replica {} steps", "_r").alias("thread"),
                name.alias("name"),
                pl.col("start_s").cast(pl.Float64),
                pl.col("end_s").cast(pl.Float64),
                (
                    pl.col("joules").cast(pl.Float64)
                    if "joules" in st_cols
                    else pl.lit(None, pl.Float64)
                ).alias("joules"),
            )
        )
    if not parts:
        return None
    if any(isinstance(p, pl.LazyFrame) for p in parts):
        lazy = pl.concat([p.lazy() for p in parts], how="vertical_relaxed")
        return lazy.with_columns(pl.col("system").replace_strict(pids, default=0).alias("pid"))
    out = pl.concat([p for p in parts if isinstance(p, pl.DataFrame)], how="vertical_relaxed")
    out = out.with_columns(pl.col("system").replace_strict(pids, default=0).alias("pid"))
    return out.sort("pid", "tid", "start_s")


def _spread(values: list[int], k: int) -> list[int]:
    """Up to ``k`` of the sorted ``values``, evenly spaced, first and last included."""
    if len(values) <= k:
        return values
    if k <= 1:
        return values[:1]
    n = len(values)
    return sorted({values[round(i * (n - 1) / (k - 1))] for i in range(k)})


def _lane_sample(
    lanes: pl.DataFrame | pl.LazyFrame, max_lanes: int
) -> tuple[pl.DataFrame | None, str]:
    """The (pid, tid) pairs to show when some system has more than ``max_lanes`` device
    lanes (``None`` when every lane is shown), and a sentence saying what was kept."""
    pairs = lanes.lazy().select("pid", "tid").unique().collect()
    keep: list[tuple[int, int]] = []
    shown = total = 0
    sampled = False
    for (pid,), part in pairs.group_by("pid", maintain_order=True):
        tids = sorted(int(t) for t in part["tid"].to_list())
        dev = [t for t in tids if t < _STEP_TID_BASE]
        step = [t for t in tids if t >= _STEP_TID_BASE]
        total += len(dev)
        if len(dev) <= max_lanes:
            keep += [(int(pid), t) for t in tids]
            shown += len(dev)
            continue
        sampled = True
        devices = _spread(sorted({(t - 1) % 10_000 for t in dev}), max_lanes)
        replicas = _spread(
            sorted({(t - 1) // 10_000 for t in dev}), max(1, max_lanes // len(devices))
        )
        chosen = {r * 10_000 + d + 1 for r in replicas for d in devices} & set(dev)
        keep += [(int(pid), t) for t in sorted(chosen)]
        keep += [(int(pid), t) for t in step if t - _STEP_TID_BASE in replicas]
        shown += len(chosen)
    if not sampled:
        return None, ""
    frame = pl.DataFrame(
        {"pid": [p for p, _ in keep], "tid": [t for _, t in keep]},
        schema={"pid": pl.Int64, "tid": pl.Int64},
    )
    return frame, (
        f"{shown} of {total} device lanes shown (at most {max_lanes} a system: evenly "
        f"spaced replicas and devices, each lane whole)"
    )


def _lean_lanes(run: RunResult) -> pl.LazyFrame | None:
    """Busy intervals of every lane as numbers and the state: pid, tid, step (whether the
    lane is a replica's steps), state, start and end (s), joules; no per-row strings, so a
    streaming query over spilled frames stays small."""
    parts: list[pl.LazyFrame] = []
    for i, s in enumerate(run.systems):
        for name, step in (("devices", False), ("steps", True)):
            frame = s.frames.get(name)
            if frame is None:
                continue
            cols = frame_columns(frame)
            if not {"start_s", "end_s"} <= set(cols):
                continue
            q = frame.lazy()
            if not step:
                q = q.filter(pl.col("state").is_in(list(BUSY_STATES)))
            rep = (pl.col("replica") if "replica" in cols else pl.lit(0)).cast(pl.Int64)
            dev = (pl.col("device") if "device" in cols else pl.lit(0)).cast(pl.Int64)
            tid = rep + _STEP_TID_BASE if step else rep * 10_000 + dev + 1
            state = pl.col("state").cast(pl.Utf8) if "state" in cols else pl.lit("")
            parts.append(
                q.select(
                    pl.lit(i + 1, pl.Int64).alias("pid"),
                    tid.alias("tid"),
                    pl.lit(step).alias("step"),
                    state.alias("state"),
                    pl.col("start_s").cast(pl.Float64),
                    pl.col("end_s").cast(pl.Float64),
                    (
                        pl.col("joules").cast(pl.Float64)
                        if "joules" in cols
                        else pl.lit(None, pl.Float64)
                    ).alias("joules"),
                )
            )
    return pl.concat(parts) if parts else None


def _windows_lazy(
    run: RunResult, max_events: int, keep: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, int, str]:
    """:func:`_windows` for spilled runs as streaming aggregations over :func:`_lean_lanes`
    (only the ``keep`` lanes when given): busy time per thread, window and state first,
    then the dominant state per thread and window; names and threads are spelled out on
    the aggregated rows only. Returns the events, the intervals that went in and the
    reduction's description."""
    lanes = _lean_lanes(run)
    if lanes is None:
        return pl.DataFrame(), 0, "none"
    if keep is not None:
        lanes = lanes.join(keep.lazy(), on=["pid", "tid"], how="semi")
    stats = (
        lanes.select(
            pl.len().alias("n"),
            pl.struct("pid", "tid").n_unique().alias("threads"),
            pl.col("start_s").min().alias("a"),
            pl.col("end_s").max().alias("b"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    n, n_threads = int(stats["n"]), int(stats["threads"])
    span = (float(stats["b"] or 0.0) - float(stats["a"] or 0.0)) or 1.0
    width = span * n_threads / max(max_events - n_threads, 1)
    windowed = lanes.with_columns(
        (pl.col("start_s") / width).floor().cast(pl.Int64).alias("_w"),
        (pl.col("end_s") - pl.col("start_s")).alias("_d"),
    )
    per_state = (
        windowed.group_by("pid", "tid", "_w", "state")
        .agg(
            pl.col("_d").sum().alias("_sd"),
            pl.col("start_s").min().alias("_first"),
        )
        .collect(engine="streaming")
    )
    dominant = (
        per_state.sort(
            ["pid", "tid", "_w", "_sd", "_first"], descending=[False, False, False, True, False]
        )
        .group_by("pid", "tid", "_w", maintain_order=True)
        .agg(pl.col("state").first())
    )
    spans = (
        windowed.group_by("pid", "tid", "_w")
        .agg(
            pl.col("step").first(),
            pl.col("start_s").min(),
            pl.col("end_s").max(),
            _JOULES,
            pl.len().cast(pl.UInt32).alias("merged"),
        )
        .collect(engine="streaming")
    )
    systems = {i + 1: s.name for i, s in enumerate(run.systems)}
    rep = (
        pl.when(pl.col("step"))
        .then(pl.col("tid") - _STEP_TID_BASE)
        .otherwise((pl.col("tid") - 1) // 10_000)
    )
    out = (
        spans.join(dominant, on=["pid", "tid", "_w"], how="left")
        .sort("pid", "tid", "_w")
        .with_columns(
            pl.col("pid").replace_strict(systems, return_dtype=pl.Utf8).alias("system"),
            pl.when(pl.col("step"))
            .then(pl.format("replica {} steps", rep))
            .otherwise(pl.format("replica {} device {}", rep, (pl.col("tid") - 1) % 10_000))
            .alias("thread"),
            pl.when(pl.col("step"))
            .then(pl.format("step ({})", pl.col("state")))
            .otherwise(pl.col("state"))
            .alias("name"),
        )
        .select("system", "pid", "tid", "thread", "name", "start_s", "end_s", "joules", "merged")
    )
    how = (
        f"{n} intervals (spilled run); aggregated into one event per thread per "
        f"{width:.3g} s window, named by its dominant state (per-event args give "
        f"merged_intervals)"
    )
    return out, n, how


def _merge_touching(lanes: pl.DataFrame, gap_s: float) -> pl.DataFrame:
    """Merge neighbouring intervals of one thread with the same name at most ``gap_s`` apart."""
    return (
        lanes.lazy()
        # a new group starts at a new thread, a new state, or a gap wider than gap_s
        .with_columns(
            (
                (pl.col("tid") != pl.col("tid").shift(1))
                | (pl.col("pid") != pl.col("pid").shift(1))
                | (pl.col("name") != pl.col("name").shift(1))
                | (pl.col("start_s") - pl.col("end_s").shift(1) > gap_s)
            )
            .fill_null(True)
            .cum_sum()
            .alias("_g")
        )
        # one interval per group, spanning it, with the group's joules and count
        .group_by("_g", maintain_order=True)
        .agg(
            pl.col("system", "pid", "tid", "thread", "name").first(),
            pl.col("start_s").min(),
            pl.col("end_s").max(),
            _JOULES,
            pl.col("merged").sum(),
        )
        .drop("_g")
        .collect()
    )


def _windows(lanes: pl.DataFrame, width_s: float) -> pl.DataFrame:
    """One event per thread and time window of ``width_s``, named by the state that was
    busy longest in it and spanning its first start to its last end."""
    return (
        lanes.lazy()
        # the window each interval starts in, and its duration
        .with_columns(
            (pl.col("start_s") / width_s).floor().cast(pl.Int64).alias("_w"),
            (pl.col("end_s") - pl.col("start_s")).alias("_d"),
        )
        # busy time per state within a window, to pick the dominant one
        .with_columns(pl.col("_d").sum().over("pid", "tid", "_w", "name").alias("_sd"))
        .sort("pid", "tid", "_w", "start_s")
        .group_by("pid", "tid", "_w", maintain_order=True)
        .agg(
            pl.col("system", "thread").first(),
            pl.col("name").sort_by("_sd", descending=True, maintain_order=True).first(),
            pl.col("start_s").min(),
            pl.col("end_s").max(),
            _JOULES,
            pl.col("merged").sum(),
        )
        .drop("_w")
        .select("system", "pid", "tid", "thread", "name", "start_s", "end_s", "joules", "merged")
        .collect()
    )


def build_trace(
    run: RunResult, max_events: int = MAX_EVENTS, max_lanes: int = MAX_LANES
) -> dict[str, Any]:
    """The Chrome trace document (``traceEvents`` and ``otherData``) for ``run``."""
    lanes = _lanes(run)
    keep: pl.DataFrame | None = None
    sample = ""
    if lanes is not None:
        keep, sample = _lane_sample(lanes, max_lanes)
        if isinstance(lanes, pl.LazyFrame) and keep is not None:
            lanes = lanes.join(keep.lazy(), on=["pid", "tid"], how="semi")
        elif isinstance(lanes, pl.DataFrame) and keep is not None:
            lanes = lanes.join(keep, on=["pid", "tid"], how="semi").sort("pid", "tid", "start_s")
    other: dict[str, Any] = {
        "scenario": run.scenario,
        "seed": run.seed,
        "xpusim_version": run.version,
        "time": "simulated seconds shown as microseconds",
        "reduction": "none",
    }
    if sample:
        other["lanes"] = sample
    events: list[dict[str, Any]] = []
    for i, s in enumerate(run.systems):
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": i + 1,
                "tid": 0,
                "args": {"name": f"{s.name} ({s.hardware})"},
            }
        )
    if isinstance(lanes, pl.LazyFrame):
        n = int(lanes.select(pl.len()).collect(engine="streaming").item())
        if n <= max_events:
            lanes = lanes.collect(engine="streaming").sort("pid", "tid", "start_s")
        else:
            reduced, other["intervals"], how = _windows_lazy(run, max_events, keep)
            if reduced.height > max_events:
                stride = -(-reduced.height // max_events)
                reduced = reduced.gather_every(stride)
                how += f"; then one event in {stride} kept"
            other["reduction"] = f"{how}: {reduced.height} events"
            return _document(events, reduced, other)
    if lanes is None or lanes.height == 0:
        other["intervals"] = 0
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}
    other["intervals"] = lanes.height
    lanes = lanes.with_columns(pl.lit(1, pl.UInt32).alias("merged"))
    if lanes.height > max_events:
        # first merge back-to-back intervals of the same state (lossless for busy time)
        reduced = _merge_touching(lanes, 1e-9)
        how = f"{lanes.height} intervals; back-to-back intervals of one state merged"
        if reduced.height > max_events:
            # then one event per thread and time window, named by its dominant state
            n_threads = reduced.select("pid", "tid").unique().height
            span = (
                cast(float, reduced["end_s"].max()) - cast(float, reduced["start_s"].min())
            ) or 1.0
            width = span * n_threads / max(max_events - n_threads, 1)
            reduced = _windows(reduced, width)
            how += (
                f"; then aggregated into one event per thread per {width:.3g} s window, "
                f"named by its dominant state (per-event args give merged_intervals)"
            )
        if reduced.height > max_events:
            stride = -(-reduced.height // max_events)
            reduced = reduced.gather_every(stride)
            how += f"; then one event in {stride} kept"
        other["reduction"] = f"{how}: {reduced.height} events"
        lanes = reduced
    return _document(events, lanes, other)


def _document(
    events: list[dict[str, Any]], lanes: pl.DataFrame, other: dict[str, Any]
) -> dict[str, Any]:
    """The trace document: ``events`` (process names) plus thread names and one complete
    event per row of ``lanes`` (with a ``merged`` column)."""
    for pid, tid, thread in (
        lanes.select("pid", "tid", "thread").unique(maintain_order=True).iter_rows()
    ):
        events.append(
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": thread}}
        )
    for _system, pid, tid, _thread, name, a, b, j, merged in lanes.select(
        "system", "pid", "tid", "thread", "name", "start_s", "end_s", "joules", "merged"
    ).iter_rows():
        args: dict[str, Any] = {}
        if j is not None:
            args["joules"] = round(float(j), 9)
        if merged > 1:
            args["merged_intervals"] = int(merged)
        events.append(
            {
                "ph": "X",
                "name": name,
                "cat": name.split(" ")[0],
                "pid": pid,
                "tid": tid,
                "ts": round(a * 1e6, 3),
                "dur": round(max(b - a, 0.0) * 1e6, 3),
                "args": args,
            }
        )
    other["events"] = sum(1 for e in events if e["ph"] == "X")
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_timeline(run: RunResult, path: Path, max_events: int = MAX_EVENTS) -> Path:
    """Write ``timeline.json`` for ``run`` to ``path``."""
    doc = build_trace(run, max_events)
    path.write_text(
        json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n", encoding="utf-8"
    )
    return path
