"""The frames of a training run: ``steps`` and the per-device ``devices`` timeline.

``steps`` (:data:`STEPS_SCHEMA`) has one row per optimizer step executed and one per
checkpoint and restart of the recorded (median) run.

``devices`` (:data:`~xpusim.engine.frames.DEVICES_SCHEMA`) is every device's timeline
over simulated time: ``replica`` is the device's data-parallel index (context ranks
included), ``device`` its index in the replica (tensor rank fastest, then pipeline
stage). Within one step a stage's device runs the exact schedule of its forward and
backward units (:func:`~xpusim.plugins.workloads.training.pipeline.schedule_intervals`),
then the exposed gradient reduction, parameter gather and optimizer; each unit is one
row per busy state it contains (laid end to end within the unit). Time that no busy row
covers is idle: pipeline bubbles, waits, and the ``checkpoint`` and ``restart`` rows
of the failure world. Busy rows carry ``watts(state) × seconds``; checkpoint and restart
rows 0 J (the economics model charges idle power for them).

Frames stay small: when the exact timeline of every device would exceed ``max_rows``
rows, each stage's busy time is **sampled** into equal windows instead (one row per busy
state per window, laid end to end from the window's start, holding exactly the busy
seconds of that state in the window), the window chosen so that every device fits the
row budget, with at least :data:`MIN_WINDOWS` windows. Busy seconds and joules per device are the same either way; checkpoints
and failures show as the windows' lower utilisation.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from xpusim.engine.frames import DEVICES_SCHEMA
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System
from xpusim.plugins.workloads.training.failures import FailureRun
from xpusim.plugins.workloads.training.pipeline import schedule_intervals
from xpusim.plugins.workloads.training.steps import BUSY_KEYS, StepTime

__all__ = [
    "MAX_DEVICE_ROWS",
    "MIN_WINDOWS",
    "STEPS_SCHEMA",
    "devices_frame",
    "step_patterns",
    "steps_frame",
]

MAX_DEVICE_ROWS = 250_000
"""Rows a ``devices`` frame of one system holds before it is sampled into windows."""

MIN_WINDOWS = 12
"""Fewest windows a sampled timeline has per device, however many devices (so a cluster
of tens of thousands of devices may exceed :data:`MAX_DEVICE_ROWS`)."""

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "step": pl.Int64(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "compute_s": pl.Float64(),
    "comm_s": pl.Float64(),
    "bubble_s": pl.Float64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the training ``steps`` frame: one row per optimizer step executed (state
``train``, or ``lost`` when a failure later threw it away), plus one row per checkpoint
write (``checkpoint``, ``step`` = last step it covers) and per restart (``restart``,
``step`` = the step training resumes from). ``compute_s``/``comm_s``/``bubble_s`` are
one device's seconds in that row; ``joules`` the busy energy of all devices."""


def steps_frame(system: str, st: StepTime, run: FailureRun) -> pl.DataFrame:
    """The ``steps`` frame of a recorded run (:data:`STEPS_SCHEMA`)."""
    starts: list[np.ndarray] = []
    steps_col: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    comp: list[np.ndarray] = []
    comm: list[np.ndarray] = []
    bub: list[np.ndarray] = []
    state: list[np.ndarray] = []
    joules: list[np.ndarray] = []
    step_s = st.seconds
    per_step_j = st.busy_joules
    for kind, a, b, first, n in run.segments:
        if kind in ("train", "lost"):
            whole = math.floor(n + 1e-9) if kind == "lost" else round(n)
            frac = n - whole if kind == "lost" else 0.0
            cnt = whole + (1 if frac > 1e-9 else 0)
            if cnt == 0:
                continue
            idx = np.arange(cnt)
            s = a + idx * step_s
            e = np.minimum(s + step_s, b)
            f = (e - s) / step_s if step_s > 0 else np.ones(cnt)
            starts.append(s)
            ends.append(e)
            steps_col.append(first + idx)
            comp.append(f * st.compute_s)
            comm.append(f * st.comm_s)
            bub.append(f * st.bubble_s)
            state.append(np.full(cnt, kind, dtype=object))
            joules.append(f * per_step_j)
        else:
            starts.append(np.array([a]))
            ends.append(np.array([b]))
            steps_col.append(np.array([first]))
            comp.append(np.zeros(1))
            comm.append(np.zeros(1))
            bub.append(np.zeros(1))
            state.append(np.array([kind], dtype=object))
            joules.append(np.zeros(1))
    if not starts:
        return pl.DataFrame(schema=STEPS_SCHEMA)
    n_rows = sum(len(x) for x in starts)
    return pl.DataFrame(
        {
            "system": [system] * n_rows,
            "step": np.concatenate(steps_col).astype(np.int64),
            "start_s": np.concatenate(starts),
            "end_s": np.concatenate(ends),
            "compute_s": np.concatenate(comp),
            "comm_s": np.concatenate(comm),
            "bubble_s": np.concatenate(bub),
            "state": [str(x) for x in np.concatenate(state)],
            "joules": np.concatenate(joules),
        },
        schema=STEPS_SCHEMA,
    )


def _split_states(state_s: dict[str, float]) -> list[tuple[str, float]]:
    """A stage's busy states as shares of its busy time (non-zero ones, in BUSY_KEYS order)."""
    busy = sum(state_s.get(k, 0.0) for k in BUSY_KEYS)
    if busy <= 0:
        return []
    return [(k, state_s[k] / busy) for k in BUSY_KEYS if state_s.get(k, 0.0) > 0]


def step_patterns(st: StepTime) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One step of every pipeline stage's device as (offsets, durations, state indices
    into BUSY_KEYS): each forward/backward unit of the exact schedule and the after-flush
    tail, split into its busy states. A stage's durations add up to its busy seconds per
    step."""
    p = max(1, len(st.stage_fwd_s))
    sched: list[list[tuple[str, float, float]]] = [[] for _ in range(p)]
    if st.stage_fwd_s:
        m = st.microbatches
        v = st.virtual if m % p == 0 else 1
        # transfers block the sender, as in the closed form the step time comes from
        hop = st.p2p_s * v if p > 1 else 0.0
        fwd = [f + hop for f in st.stage_fwd_s]
        bwd = [b + hop for b in st.stage_bwd_s]
        sched = schedule_intervals(p, m, fwd, bwd, v, 0.0)
    out = []
    for stage in range(p):
        state_s = dict(st.stage_state_s[stage]) if st.stage_state_s else dict(st.device_s)
        shares = _split_states(state_s)
        busy = sum(state_s.get(k, 0.0) for k in BUSY_KEYS)
        units = [(a, b - a) for _, a, b in sched[stage] if b > a]
        flush = max([st.pipeline.seconds, *(a + d for a, d in units)])
        if st.tail_s > 0:
            units.append((flush, st.tail_s))
        end = max((a + d for a, d in units), default=0.0)
        if end > st.seconds > 0:  # keep the step inside its own time
            squeeze = st.seconds / end
            units = [(a * squeeze, d * squeeze) for a, d in units]
        total = sum(d for _, d in units)
        if not units or total <= 0:
            units = [(0.0, busy)] if busy > 0 else []
            total = busy
        scale = busy / total if total > 0 else 0.0
        offs: list[float] = []
        durs: list[float] = []
        idx: list[int] = []
        for a, dur in units:
            t0 = a
            for k, share in shares:
                dd = dur * scale * share
                offs.append(t0)
                durs.append(dd)
                idx.append(BUSY_KEYS.index(k))
                t0 += dd
        out.append((np.asarray(offs), np.asarray(durs), np.asarray(idx, dtype=np.int64)))
    return out


def _train_spans(run: FailureRun, step_s: float) -> list[tuple[float, float]]:
    """(start, steps) of every training stretch of the run (lost work included)."""
    out: list[tuple[float, float]] = []
    for kind, a, _b, _first, n in run.segments:
        if kind in ("train", "lost") and n > 0:
            out.append((a, n))
    return out


def _exact_rows(
    st: StepTime,
    pattern: tuple[np.ndarray, np.ndarray, np.ndarray],
    spans: list[tuple[float, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every busy row of one stage's device (its step ``pattern``) over the run's
    training stretches."""
    offs, durs, idx = pattern
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    states: list[np.ndarray] = []
    for a, n in spans:
        whole = math.floor(n + 1e-9)
        frac = n - whole
        k = whole + (1 if frac > 1e-9 else 0)
        base = a + np.arange(k) * st.seconds
        s = (base[:, None] + offs[None, :]).ravel()
        e = s + np.tile(durs, k)
        limit = a + n * st.seconds  # a lost stretch stops part-way through a step
        keep = s < limit - 1e-12
        starts.append(s[keep])
        ends.append(np.minimum(e[keep], limit))
        states.append(np.tile(idx, k)[keep])
    if not starts:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(states)


def _window_rows(
    st: StepTime, stage: int, spans: list[tuple[float, float]], wall: float, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stage's busy seconds per state sampled into windows of ``width`` seconds."""
    state_s = dict(st.stage_state_s[stage]) if st.stage_state_s else dict(st.device_s)
    n_w = max(1, math.ceil(wall / width))
    edges = np.arange(n_w + 1) * width
    train = np.zeros(n_w)  # training seconds in each window
    for a, n in spans:
        b = a + n * st.seconds
        lo, hi = np.clip(a, edges[:-1], edges[1:]), np.clip(b, edges[:-1], edges[1:])
        train += np.maximum(0.0, hi - lo)
    frac = train / st.seconds if st.seconds > 0 else train * 0.0  # steps per window
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    states: list[np.ndarray] = []
    t0 = edges[:-1].copy()
    for k in BUSY_KEYS:
        secs = frac * state_s.get(k, 0.0)
        keep = secs > 0
        starts.append(t0[keep])
        ends.append(t0[keep] + secs[keep])
        states.append(np.full(int(keep.sum()), BUSY_KEYS.index(k), dtype=np.int64))
        t0 = t0 + secs
    s, e, i = np.concatenate(starts), np.concatenate(ends), np.concatenate(states)
    order = np.argsort(s, kind="stable")
    return s[order], e[order], i[order]


def devices_frame(
    system: System,
    st: StepTime,
    run: FailureRun,
    power: PowerModel | None,
    max_rows: int = MAX_DEVICE_ROWS,
) -> pl.DataFrame:
    """The ``devices`` frame of a recorded run (module docstring)."""
    par = system.parallelism
    p = max(1, par.pipeline)
    t = max(1, par.tensor)
    replicas = max(1, par.data * max(1, par.context))
    lanes = replicas * t * p
    spans = _train_spans(run, st.seconds)
    other = [(k, a, b) for k, a, b, _f, _n in run.segments if k in ("checkpoint", "restart")]
    patterns = step_patterns(st)
    steps_run = sum(n for _, n in spans)
    exact = max(len(x[0]) for x in patterns) * math.ceil(steps_run + len(spans)) + len(other)
    if exact * lanes <= max_rows:
        rows = [_exact_rows(st, patterns[s], spans) for s in range(p)]
        how_other = other
    else:
        n_w = max(MIN_WINDOWS, max_rows // lanes // len(BUSY_KEYS))
        width = max(st.seconds, run.wall_s / n_w) if run.wall_s > 0 else st.seconds
        rows = [_window_rows(st, s, spans, run.wall_s, width) for s in range(p)]
        how_other = []
    watts = np.array(
        [power.state_watts(k) if power is not None else 0.0 for k in BUSY_KEYS], dtype=float
    )
    names = np.array([*BUSY_KEYS, "checkpoint", "restart"], dtype=object)
    frames: list[pl.DataFrame] = []
    o_s = np.array([a for _, a, _ in how_other], dtype=float)
    o_e = np.array([b for _, _, b in how_other], dtype=float)
    o_i = np.array([len(BUSY_KEYS) + (0 if k == "checkpoint" else 1) for k, _, _ in how_other])
    for s in range(p):
        a, b, i = rows[s]
        a = np.concatenate((a, o_s))
        b = np.concatenate((b, o_e))
        i = np.concatenate((i, o_i)).astype(np.int64)
        order = np.argsort(a, kind="stable")
        a, b, i = a[order], b[order], i[order]
        busy = i < len(BUSY_KEYS)
        j = np.where(busy, watts[np.minimum(i, len(BUSY_KEYS) - 1)] * (b - a), 0.0)
        dev_ids = np.arange(t) + s * t  # the stage's tensor ranks within a replica
        one = pl.DataFrame(
            {
                "start_s": a,
                "end_s": b,
                "state": pl.Series(names[i].tolist(), dtype=pl.String),
                "joules": j,
            }
        )
        lane = pl.DataFrame(
            {
                "replica": pl.Series(np.repeat(np.arange(replicas), t), dtype=pl.Int32),
                "device": pl.Series(np.tile(dev_ids, replicas), dtype=pl.Int32),
            }
        )
        frames.append(
            lane.join(one, how="cross")
            .with_columns(pl.lit(system.name, pl.String).alias("system"))
            .select(list(DEVICES_SCHEMA))
        )
    if not frames:
        return pl.DataFrame(schema=DEVICES_SCHEMA)
    return pl.concat(frames)
