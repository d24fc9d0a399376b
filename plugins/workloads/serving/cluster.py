"""What every workload's SimPy world shares: replicas, step pricing and shape buckets.

A system of ``count`` devices split ``tensor × pipeline`` ways holds
``System.replicas`` independent model replicas. Each :class:`Replica` is one SimPy
process (its scheduler loop) with its own queue, paged KV cache and columnar step log;
nothing in the world is a process per request or per token.

:class:`CostTable` prices steps through :meth:`xpusim.engine.backend.Compiled.cost`. To keep the
memo effective, sizes that vary continuously are bucketed (:func:`bucket`): a value keeps
its ``bits`` most significant bits, rounded to nearest, so values below ``2**bits`` are
exact and larger ones are within ``2**-bits`` (1.6 % for the default 6 bits). Prefill
lengths, prefill contexts, decode batch sizes and decode contexts are bucketed this way;
the number of prefilling sequences is exact. New keys are priced by interpolation on a
coarser grid (see :class:`CostTable`).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import simpy

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Phase, Shape
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.steplog import StepLog


def bucket(x: int, bits: int) -> int:
    """Round ``x >= 0`` to ``bits`` significant bits (exact below ``2**bits``)."""
    if x < (1 << bits):
        return x
    e = x.bit_length() - bits
    return ((x + (1 << (e - 1))) >> e) << e


class Feed:
    """The requests routed to one replica, known before the run: ``ids`` in arrival order,
    and ``at``, the instant each request arrives (``world.arrival_instants``) indexed by
    request id (one table the feeds of all replicas share). ``ids`` is a ``range`` where
    the replica takes every ``R``-th request (round-robin with nothing dropped: no table
    of four bytes a request), else a 32-bit array."""

    __slots__ = ("at", "ids")

    def __init__(self, ids: array[int] | range, at: array[float]) -> None:
        self.ids = ids
        self.at = at


class Replica:
    """One model replica: a queue of request ids, a KV cache, a step log.

    ``outstanding`` counts requests routed here and not finished (the least-outstanding
    router reads it). ``wake`` is the event the replica's process waits on while idle; the
    arrival process triggers it.

    ``feed`` is set when the world knows every request's replica before the run (a router
    whose choices do not depend on the replicas' state): the ids routed here in arrival
    order and the instants they arrive at. A scheduler that reads it takes its arrivals
    itself and needs no arrival process, so it can run many iterations per SimPy event;
    it is ``None`` when requests are routed one by one at their arrival.

    ``layout`` is the model's :class:`~.kvcache.KVLayout`: with sliding-window layers the
    cache counts layer blocks (``kv_blocks`` blocks of every layer, times its layers) and
    the step log reports them back as blocks of every layer.
    """

    __slots__ = ("feed", "index", "kv", "log", "outstanding", "waiting", "wake")

    def __init__(
        self, index: int, kv_blocks: int, block_tokens: int, layout: KVLayout | None = None
    ) -> None:
        self.index = index
        self.waiting: deque[int] = deque()
        self.outstanding = 0
        self.wake: simpy.Event | None = None
        self.kv = PagedKVCache(kv_blocks, block_tokens, layout)
        self.log = StepLog(self.kv.unit_layers)
        self.feed: Feed | None = None

    def notify(self) -> None:
        """Wake the replica's process if it is waiting for work."""
        ev = self.wake
        if ev is not None:
            self.wake = None
            ev.succeed()


def grid_neighbours(x: int, bits: int) -> tuple[int, int, float]:
    """The grid points of ``bits`` significant bits around ``x`` and the weight of the
    upper one for linear interpolation: ``(lo, hi, w)`` with ``x = lo + w (hi - lo)``."""
    if x < (1 << bits):
        return x, x, 0.0
    e = x.bit_length() - bits
    lo = (x >> e) << e
    if lo == x:
        return x, x, 0.0
    hi = lo + (1 << e)
    return lo, hi, (x - lo) / (hi - lo)


class CostTable:
    """Step prices for one compiled model, memoized on bucketed integer keys.

    Resolution, in two stages:

    1. the sizes of a step (mean prefill chunk, mean prefill context, decode batch, mean
       decode context) are rounded to ``bits`` significant bits (:func:`bucket`); the
       result is the key of a fast memo, so the hot loop does one dict lookup per step;
    2. a key seen for the first time is priced by multilinear interpolation (seconds and
       joules) between the shapes on a coarser grid of ``grid_bits`` significant bits
       around it (4 points per octave by default), each priced once through
       ``compiled.cost``. The number of prefilling sequences is never interpolated. The
       state is the one of the corner with the largest weight. With ``grid_bits >=
       bits`` every key is priced directly.

    A backend is asked for a few hundred to a few thousand shapes per run, not one per
    distinct iteration; interpolation is exact wherever a cost is linear between grid
    points (decode attention in context, GEMMs in tokens) and within a few per cent
    around a roofline knee. Entries are ``(seconds, joules, state_index)``;
    :attr:`states` lists the state names (``Cost.state``) the indices refer to.
    """

    def __init__(self, compiled: Compiled, bits: int = 6, grid_bits: int = 2) -> None:
        self.compiled = compiled
        self.bits = bits
        self.grid_bits = grid_bits
        self.memo: dict[tuple[int, ...], tuple[float, float, int]] = {}
        self.grid: dict[tuple[int, ...], tuple[float, float, int]] = {}
        self._axes: dict[int, tuple[tuple[int, float], ...]] = {}
        self.states: list[str] = []
        self._state_index: dict[str, int] = {}
        self.misses = 0

    def _price(self, shape: Shape) -> tuple[float, float, int]:
        c = self.compiled.cost(shape)
        if not c.seconds > 0:
            raise ValueError(f"backend priced step {shape} at {c.seconds} s; steps take time")
        self.misses += 1
        return (c.seconds, c.joules, self.state_index(c.state))

    def state_index(self, name: str) -> int:
        """Index of state ``name`` (added when new)."""
        i = self._state_index.get(name)
        if i is None:
            i = self._state_index[name] = len(self.states)
            self.states.append(name)
        return i

    @staticmethod
    def shape(pf_n: int, pf_tok: int, pf_ctx: int, n_dec: int, dec_ctx: int) -> Shape:
        """The step shape for a key (per-sequence sizes): prefill part, decode part or both.

        A fused iteration is ``Shape(MIXED, batch=pf_n + n_dec, tokens=1, parts=(PREFILL,
        DECODE))``; the PREFILL part has ``pf_n`` sequences of ``pf_tok`` new tokens over
        ``pf_ctx`` cached ones, the DECODE part ``n_dec`` sequences of one token over
        ``dec_ctx`` cached ones.
        """
        pre = Shape(Phase.PREFILL, batch=pf_n, tokens=pf_tok, context=pf_ctx) if pf_n else None
        dec = Shape(Phase.DECODE, batch=n_dec, tokens=1, context=dec_ctx) if n_dec else None
        if pre is not None and dec is not None:
            return Shape(Phase.MIXED, batch=pf_n + n_dec, tokens=1, parts=(pre, dec))
        if pre is not None:
            return pre
        assert dec is not None
        return dec

    def corner(self, key: tuple[int, int, int, int, int]) -> tuple[float, float, int]:
        """The price of grid point ``key`` (priced through the backend on first use)."""
        hit = self.grid.get(key)
        if hit is None:
            hit = self.grid[key] = self._price(self.shape(*key))
        return hit

    def _axis(self, x: int) -> tuple[tuple[int, float], ...]:
        """The grid points around ``x`` with their interpolation weights (one point of
        weight 1.0 when ``x`` is on the grid), memoized per value."""
        hit = self._axes.get(x)
        if hit is None:
            lo, hi, w = grid_neighbours(x, self.grid_bits)
            hit = self._axes[x] = ((lo, 1.0),) if w == 0.0 else ((lo, 1.0 - w), (hi, w))
        return hit

    def _interpolate(self, key: tuple[int, int, int, int, int]) -> tuple[float, float, int]:
        if self.grid_bits >= self.bits:
            return self.corner(key)
        pf_n, x1, x2, x3, x4 = key
        # the axes' points, read from their memo here (a miss per key is the common case,
        # and most of its values were seen before)
        axes = self._axes
        a1 = axes.get(x1) or self._axis(x1)
        a2 = axes.get(x2) or self._axis(x2)
        a3 = axes.get(x3) or self._axis(x3)
        a4 = axes.get(x4) or self._axis(x4)
        grid = self.grid
        sec = joules = 0.0
        best_w = -1.0
        state = 0
        # corners in lexicographic order, lower point first, the weight a product along
        # the axes in order
        for p1, w1 in a1:
            for p2, w2 in a2:
                w12 = w1 * w2
                for p3, w3 in a3:
                    w123 = w12 * w3
                    for p4, w4 in a4:
                        wt = w123 * w4
                        hit = grid.get((pf_n, p1, p2, p3, p4))
                        if hit is None:
                            pts = (pf_n, p1, p2, p3, p4)
                            hit = grid[pts] = self._price(self.shape(*pts))
                        s_, j_, st_ = hit
                        sec += wt * s_
                        joules += wt * j_
                        if wt > best_w:
                            best_w = wt
                            state = st_
        return (sec, joules, state)

    def step(
        self, pf_n: int, pf_tok: int, pf_ctx: int, n_dec: int, dec_ctx: int
    ) -> tuple[float, float, int]:
        """Price one iteration: ``pf_n`` prefills of ``pf_tok`` tokens in all over
        ``pf_ctx`` cached tokens in all, plus ``n_dec`` decodes over ``dec_ctx`` cached
        tokens in all (totals; the key uses bucketed means)."""
        b = self.bits
        top = 1 << b
        # bucket() inlined: this runs once per iteration with a prefill
        if pf_n:
            t = max(1, (pf_tok + pf_n // 2) // pf_n)
            if t >= top:
                e = t.bit_length() - b
                t = ((t + (1 << (e - 1))) >> e) << e
            c = (pf_ctx + pf_n // 2) // pf_n
            if c >= top:
                e = c.bit_length() - b
                c = ((c + (1 << (e - 1))) >> e) << e
        else:
            t = c = 0
        if n_dec:
            nb = n_dec
            if nb >= top:
                e = nb.bit_length() - b
                nb = ((nb + (1 << (e - 1))) >> e) << e
            dc = (dec_ctx + n_dec // 2) // n_dec
            if dc >= top:
                e = dc.bit_length() - b
                dc = ((dc + (1 << (e - 1))) >> e) << e
        else:
            nb = dc = 0
        key = (pf_n, t, c, nb, dc)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._interpolate(key)
        return hit

    def forward(self, batch: int, tokens: int) -> tuple[float, float, int]:
        """Price one forward pass of ``batch`` samples of ``tokens`` tokens (exact key)."""
        key = (-1, batch, tokens, 0, 0)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._price(Shape(Phase.FORWARD, batch=batch, tokens=tokens))
        return hit


Progress = Callable[[float, float], None]
"""``progress(done, total)`` callback of a workload context."""


WAITING, PREFILLING, DECODING, DONE, DROPPED = 0, 1, 2, 3, 4
"""Request states held in :attr:`RequestTable.state`."""


class RequestTable:
    """Per-request state of one system's run, one flat array per field.

    Inputs: ``arrival``, ``prompt``, ``output``. Working state: ``cur_prompt`` (tokens to
    prefill: the prompt, or prompt plus generated tokens after a recompute preemption),
    ``cur_output`` (tokens still to generate), ``entry`` (iteration its current decode
    began), ``fin_iter`` (iteration of its last token), ``seg_start`` (first decode
    iteration of its last uninterrupted segment), ``seg_max`` (largest token gap before
    that segment). Results: ``replica``, ``first_scheduled``, ``first_token``, ``finish``,
    ``preemptions``.

    The working token counts and iteration numbers are 32-bit (4 bytes a request and field,
    not 8: ten million requests hold 200 MB less). A request whose KV need exceeds the
    cache is dropped before it is scheduled, so the working count of a scheduled request
    always fits; a count past 2**31 - 1, which only a dropped request can have, is held
    clipped. ``replica`` is 16-bit when ``replicas`` (the world's replica count, when
    given) is at most 2**15.
    """

    def __init__(
        self,
        arrival: Sequence[float],
        prompt: Sequence[int],
        output: Sequence[int],
        replicas: int | None = None,
    ) -> None:
        n = len(arrival)
        nan = float("nan")
        self.n = n
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.cur_prompt = _int32(prompt)
        self.cur_output = _int32(output)
        self.state = bytearray(n)
        # 16-bit replica indices where the world says they fit
        short = replicas is not None and replicas <= 1 << 15
        self.replica = array("h" if short else "i", [-1]) * n
        self.entry = array("i", [0]) * n
        self.fin_iter = array("i", [-1]) * n
        self.seg_start = array("i", [0]) * n
        self.seg_max = array("d", [0.0]) * n
        self.first_scheduled = array("d", [nan]) * n
        self.first_token = array("d", [nan]) * n
        self.finish = array("d", [nan]) * n
        self.preemptions = array("i", [0]) * n
        self.extra_gaps: list[float] = []
        self.done = 0


def _int32(values: Sequence[int]) -> array[int]:
    """``values`` as a 32-bit :class:`array.array`, clipped to ``2**31 - 1`` (a copy)."""
    if isinstance(values, array) and values.typecode == "i":
        return values[:]
    clipped = np.minimum(np.asarray(values, dtype=np.int64), np.iinfo(np.int32).max)
    out = array("i")
    out.frombytes(clipped.astype(np.int32).tobytes())
    return out
