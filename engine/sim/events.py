"""The columnar event log and the declared schemas of the serving frames.

The SimPy loop never builds a Python object per event: each replica appends primitives to
one :class:`array.array` per column (:class:`StepLog`), and the frames are built once at
the end with polars. Units live in column names.

Frames (every one carries a ``system`` column so runs of several systems concatenate):

``requests`` (:data:`REQUESTS_SCHEMA`) — one row per request. ``status`` is ``ok`` or
``dropped`` (``reason`` says why; ``replica`` and the times are null). ``ttft_s`` is
``first_token_s - arrival_s``; ``e2e_s`` is ``finish_s - arrival_s``; ``tbt_mean_s`` and
``tbt_max_s`` are the mean and largest gap between consecutive output tokens of that
request (null for a one-token output).

``steps`` (:data:`STEPS_SCHEMA`) — one row per iteration of a replica: sequences in the
batch, prompt tokens prefilled, decode tokens produced, KV blocks held after the step,
the busy power state (``Cost.state``) and the backend's joules for the step.

``devices`` (:data:`DEVICES_SCHEMA`) — the power-state timeline of every device: busy
intervals (consecutive steps of one state merged) and ``idle`` intervals covering the
rest of ``[0, simulated_s]``. Busy rows carry the step joules split evenly over the
replica's devices; idle rows carry 0 J (the economics model applies idle power).

``tbt`` (:data:`TBT_SCHEMA`) — the exact multiset of time-between-token gaps: one row
per distinct gap value with the number of tokens that waited that long.
"""

from __future__ import annotations

from array import array

import numpy as np
import polars as pl

REQUESTS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "request_id": pl.Int64(),
    "arrival_s": pl.Float64(),
    "first_scheduled_s": pl.Float64(),
    "first_token_s": pl.Float64(),
    "finish_s": pl.Float64(),
    "prompt_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "preemptions": pl.Int32(),
    "status": pl.String(),
    "reason": pl.String(),
    "ttft_s": pl.Float64(),
    "e2e_s": pl.Float64(),
    "tbt_mean_s": pl.Float64(),
    "tbt_max_s": pl.Float64(),
}
"""Columns of the ``requests`` frame."""

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "step": pl.Int64(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "batch": pl.Int32(),
    "prefill_tokens": pl.Int64(),
    "decode_tokens": pl.Int64(),
    "kv_blocks_used": pl.Int64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the ``steps`` frame."""

DEVICES_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "device": pl.Int32(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the ``devices`` frame."""

TBT_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "gap_s": pl.Float64(),
    "tokens": pl.Int64(),
}
"""Columns of the ``tbt`` frame (a weighted, exact sample of token gaps)."""

IDLE = "idle"
"""The device state outside any step."""


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame of ``schema``."""
    return pl.DataFrame(schema=schema)


class StepLog:
    """Columns of one replica's steps, appended as primitives during the simulation.

    The hot loop binds the ``append`` methods of each column once and calls them per
    step; :meth:`frame` builds the ``steps`` rows of the replica at the end.
    """

    __slots__ = ("batch", "decode", "end", "joules", "kv", "prefill", "start", "state")

    def __init__(self) -> None:
        self.start = array("d")
        self.end = array("d")
        self.batch = array("i")
        self.prefill = array("q")
        self.decode = array("q")
        self.kv = array("q")
        self.state = array("i")
        self.joules = array("d")

    def __len__(self) -> int:
        return len(self.start)

    def numpy(self, name: str) -> np.ndarray:
        """A column as a numpy array (a copy, so the log may be freed)."""
        return np.array(getattr(self, name))

    def frame(self, system: str, replica: int, states: list[str]) -> pl.DataFrame:
        """The ``steps`` rows of this replica (:data:`STEPS_SCHEMA`)."""
        n = len(self.start)
        state_names = np.array(states, dtype=object)[np.asarray(self.state, dtype=np.int64)] if n \
            else np.array([], dtype=object)
        return pl.DataFrame(
            {
                "system": pl.Series([system], dtype=pl.String).new_from_index(0, n) if n
                else pl.Series([], dtype=pl.String),
                "replica": np.full(n, replica, dtype=np.int32),
                "step": np.arange(n, dtype=np.int64),
                "start_s": np.asarray(self.start),
                "end_s": np.asarray(self.end),
                "batch": np.asarray(self.batch, dtype=np.int32),
                "prefill_tokens": np.asarray(self.prefill, dtype=np.int64),
                "decode_tokens": np.asarray(self.decode, dtype=np.int64),
                "kv_blocks_used": np.asarray(self.kv, dtype=np.int64),
                "state": pl.Series(state_names.tolist(), dtype=pl.String),
                "joules": np.asarray(self.joules),
            },
            schema=STEPS_SCHEMA,
        )


def device_timeline(
    system: str, replica: int, devices: list[int], start: np.ndarray, end: np.ndarray,
    state: np.ndarray, joules: np.ndarray, states: list[str], horizon: float,
) -> pl.DataFrame:
    """The ``devices`` rows of one replica from its steps.

    Consecutive steps of one state that touch (``start == previous end``) merge into one
    busy interval; gaps, the lead-in from 0 and the tail up to ``horizon`` are ``idle``.
    Every device of the replica gets the same intervals; busy joules are split evenly.
    """
    n = start.size
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    names: list[np.ndarray] = []
    js: list[np.ndarray] = []
    if n:
        new = np.ones(n, dtype=bool)
        new[1:] = (state[1:] != state[:-1]) | (start[1:] != end[:-1])
        first = np.flatnonzero(new)
        last = np.append(first[1:] - 1, n - 1)
        b_start, b_end = start[first], end[last]
        b_state = np.array(states, dtype=object)[state[first]]
        b_j = np.add.reduceat(joules, first) / len(devices)
        # idle gaps: before the first run, between runs and after the last one
        i_start = np.concatenate(([0.0], b_end))
        i_end = np.concatenate((b_start, [max(horizon, float(b_end[-1]))]))
        keep = i_end > i_start
        starts += [b_start, i_start[keep]]
        ends += [b_end, i_end[keep]]
        names += [b_state, np.full(int(keep.sum()), IDLE, dtype=object)]
        js += [b_j, np.zeros(int(keep.sum()))]
    elif horizon > 0:
        starts.append(np.array([0.0]))
        ends.append(np.array([horizon]))
        names.append(np.array([IDLE], dtype=object))
        js.append(np.zeros(1))
    if not starts:
        return empty(DEVICES_SCHEMA)
    s = np.concatenate(starts)
    order = np.argsort(s, kind="stable")
    one = pl.DataFrame(
        {
            "start_s": s[order],
            "end_s": np.concatenate(ends)[order],
            "state": pl.Series(np.concatenate(names)[order].tolist(), dtype=pl.String),
            "joules": np.concatenate(js)[order],
        }
    )
    dev = pl.DataFrame({"device": pl.Series(devices, dtype=pl.Int32)})
    return (
        dev.join(one, how="cross")
        .with_columns(pl.lit(system, pl.String).alias("system"),
                      pl.lit(replica, pl.Int32).alias("replica"))
        .select(list(DEVICES_SCHEMA))
    )
