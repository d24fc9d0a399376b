"""The columnar step log of one serving replica.

The SimPy loop never builds a Python object per event: each replica appends primitives to
one :class:`array.array` per column (:class:`StepLog`), and the ``steps`` frame is built
once at the end (or in parts past the spill threshold) with polars.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import numpy as np
import polars as pl

from xpusim.engine.frames import Packing
from xpusim.plugins.workloads.serving.schemas import STEPS_SCHEMA

KEEP_TIMES = 1 << 16
"""Steps whose times a log that drops them keeps after a spill (a preemption reads the
spilled rows only when the segment it ends is longer): 1 MiB a replica."""


def steps_packing(system: str, replica: int, states: list[str]) -> Packing:
    """How one replica's step rows are held while the world runs and in its spilled parts:
    ``system`` and ``replica`` fixed, ``state`` coded by ``states`` (the cost table's list,
    which grows as the run meets new states)."""
    return Packing(fixed={"system": system, "replica": replica}, coded={"state": states})


PACKED_STEPS_SCHEMA: dict[str, pl.DataType] = steps_packing("", 0, []).packed_schema(STEPS_SCHEMA)
"""Columns of packed step rows (:func:`steps_packing`)."""


class StepLog:
    """Columns of one replica's steps, appended as primitives during the simulation.

    The hot loop binds the ``append`` methods of each column once and calls them per
    step; :meth:`frame` builds the ``steps`` rows of the replica at the end.

    Spilling: :meth:`take` returns the rows not yet taken, packed, and empties every
    column but ``start`` and ``end``, which keep one entry per step of the whole run
    (schedulers index them by iteration number, and the token-gap statistics need them)
    until the frames are built. :attr:`taken` counts the rows handed out; ``len(log)`` is
    the number of steps while the world runs.

    A scheduler that reads step times only through :meth:`max_gap` may let the log drop
    them too (``keep_times = False``; the world sets it for the built-in schedulers): then
    :meth:`take` keeps the times of the last :data:`KEEP_TIMES` steps only, ``start[0]``
    is step :attr:`base`, and the times of earlier steps are read back from the spilled
    rows (``spilled_gap``, which the world sets) when a preemption asks for them. Ten
    million requests' 14.8 M steps hold 236 MB of times otherwise.

    ``row_gaps`` (a scheduler's to clear, :class:`~xpusim.engine.policies.StepColumns`)
    says whether each step's duration is the token gap of its decode tokens;
    ``gap_counts`` holds the gaps a scheduler counts itself.

    ``kv`` holds the units of the replica's KV cache in use; ``unit_layers`` is how many of
    them make a block of every layer (1 but for a cache of layer blocks, one with
    sliding-window layers), and the frame's ``kv_blocks_used`` is ``kv`` in blocks of every
    layer, rounded up.
    """

    __slots__ = (
        "base",
        "batch",
        "decode",
        "end",
        "gap_counts",
        "joules",
        "keep_times",
        "kv",
        "prefill",
        "row_gaps",
        "spilled_gap",
        "start",
        "state",
        "taken",
        "unit_layers",
    )

    def __init__(self, unit_layers: int = 1) -> None:
        self.unit_layers = unit_layers
        self.start = array("d")
        self.end = array("d")
        self.batch = array("i")
        self.prefill = array("q")
        self.decode = array("q")
        self.kv = array("q")
        self.state = array("i")
        self.joules = array("d")
        self.taken = 0
        self.base = 0
        self.keep_times = True
        self.row_gaps = True
        self.gap_counts: dict[float, int] = {}
        self.spilled_gap: Callable[[int, int], float] | None = None

    def __len__(self) -> int:
        return self.base + len(self.start)

    def max_gap(self, a: int, b: int) -> float:
        """The largest ``end - start`` of steps ``a`` to ``b - 1`` (``a < b``), from the
        times held and, for steps before :attr:`base`, from the spilled rows."""
        best = -float("inf")
        lo = max(a, self.base)
        if lo < b:
            i, k = lo - self.base, b - self.base
            best = max(e - s for s, e in zip(self.start[i:k], self.end[i:k], strict=True))
        if a < self.base:
            if self.spilled_gap is None:
                raise AssertionError(f"step times before {self.base} were dropped unread")
            best = max(best, self.spilled_gap(a, min(b, self.base)))
        return best

    @property
    def pending(self) -> int:
        """Steps logged and not yet handed out by :meth:`take`."""
        return len(self.batch)

    def numpy(self, name: str) -> np.ndarray:
        """A column as a numpy array (a copy, so the log may be freed); ``start`` and
        ``end`` cover every step from :attr:`base`, the other columns the pending ones."""
        return np.array(getattr(self, name))

    def frame(self, system: str, replica: int, states: list[str]) -> pl.DataFrame:
        """The pending ``steps`` rows of this replica (:data:`STEPS_SCHEMA`); every row
        when nothing was taken."""
        return self.packed().select(steps_packing(system, replica, states).unpack(STEPS_SCHEMA))

    def packed(self) -> pl.DataFrame:
        """The pending rows packed (:func:`steps_packing`): without ``system`` and
        ``replica``, ``state`` as indices into the cost table's state names."""
        lo = self.taken
        n = len(self.batch)
        i = lo - self.base  # the first pending step's place in start and end
        start = np.array(self.start[i:] if i else self.start, dtype=np.float64)
        end = np.array(self.end[i:] if i else self.end, dtype=np.float64)
        return pl.DataFrame(
            {
                "step": np.arange(lo, lo + n, dtype=np.int64),
                "start_s": start,
                "end_s": end,
                "batch": np.array(self.batch, dtype=np.int32),
                "prefill_tokens": np.array(self.prefill, dtype=np.int64),
                "decode_tokens": np.array(self.decode, dtype=np.int64),
                "kv_blocks_used": self._kv_blocks(),
                "state": np.array(self.state, dtype=np.int32),
                "joules": np.array(self.joules, dtype=np.float64),
            },
            schema=PACKED_STEPS_SCHEMA,
        )

    def _kv_blocks(self) -> np.ndarray:
        """The pending ``kv`` column in blocks of every layer, rounded up."""
        units = np.array(self.kv, dtype=np.int64)
        if self.unit_layers == 1:
            return units
        return -(-units // self.unit_layers)

    def take(self) -> pl.DataFrame:
        """The pending rows packed (:meth:`packed`), after which they are no longer held
        here."""
        out = self.packed()
        self.taken += len(self.batch)
        # emptied in place: the running world appends through bound methods of these
        # very arrays (packed() copied them, so no view of them is exported)
        for col in (self.batch, self.prefill, self.decode, self.kv, self.state, self.joules):
            del col[:]
        drop = self.taken - KEEP_TIMES - self.base
        if not self.keep_times and drop > 0:
            del self.start[:drop]
            del self.end[:drop]
            self.base += drop
        return out
