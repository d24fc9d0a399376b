"""A compiled twin of the iteration loop's fast path, for large runs.

:func:`~.iteration.iterative` is the reference: this module runs the same policy, for a
replica that reads its own arrivals (``replica.feed``) without sliding-window layers,
as machine code (numba), so that a replica costs a fraction of a microsecond per
iteration instead of several. It is a line-by-line transliteration of that loop, the
fast-forwarded decode runs included, with the same integer and float operations in the
same order: every per-request time, every step row and every token gap comes out
identical, which ``tests/test_native_loop.py`` checks against the reference on every
scheduler setting it serves.

Only the containers differ. The queue of preempted requests is a stack (the reference's
deque is only ever pushed and popped at its front on this path), the finishing
iterations are one binary heap of ``iteration << 32 | request`` and the partly
prefilled prompts are two arrays; every structure a single iteration can grow by at
most the batch size is checked for room before the iteration starts, so the compiled
loop never allocates. Step rows are written to a buffer and handed to the replica's
:class:`~.steplog.StepLog` each time the loop returns to Python, before the replica
yields to SimPy, so the world's spill checks see the rows they would see with the
reference. A step shape new to the run is priced through the world's
:class:`~.cluster.CostTable` (the same ``memo`` and ``step``) from the compiled code,
which calls back into Python through a C function pointer (:data:`_HOST`) whose address
it is given at run time, so that the cached machine code is all the loop needs: no part
of it is compiled again in a new process.

The loop returns to Python (and yields to SimPy if its clock is ahead) every
:data:`SYNC_ITERATIONS` iterations and every :data:`SYNC_IDLES` idle gaps, where the
reference yields every 512 iterations and at each idle gap: results do not depend on
where a replica yields (the world's other process only reports progress and spills step
rows), and a lightly loaded replica would otherwise pay a call per request.

:func:`~.iteration.iterative` decides which loop runs (see its
:data:`~.iteration.NATIVE_MIN_REQUESTS`); this module is imported only when the compiled
one does. The first run on a machine compiles the loop (a few seconds) and caches it
beside this file (or in numba's user cache where this folder is read-only).
"""

# B, L and friends are the block size and prompt length of the reference's formulas.
# ruff: noqa: N803, N806

from __future__ import annotations

import ctypes
import math
import weakref
from array import array
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import simpy
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from xpusim.engine.policies import (
    DECODING,
    DONE,
    PREFILLING,
    WAITING,
    Proc,
    RequestState,
    SchedulerSpec,
    StepPrices,
)
from xpusim.plugins.workloads.serving.cluster import CostTable, Replica
from xpusim.plugins.workloads.serving.steplog import StepLog

SYNC_ITERATIONS = 16384
"""Iterations the compiled loop runs before it returns to Python: 32 times the
reference's :data:`~.iteration.SYNC_ITERATIONS`, since each return hands the step rows
over, and appending them grows the log's columns (a reallocation of each, its cost
growing with the rows held: at 4,096 iterations the hand-overs of a million requests over
16 replicas took 0.22 s, at 16,384 0.12 s). The step rows a replica buffers between
returns are this many plus its longest output (about 1 MiB)."""

SYNC_IDLES = 64
"""Idle gaps the compiled loop crosses before it returns to Python."""

# Outcomes of one call of the compiled loop.
_FINISHED = 0  # the feed is served: nothing runs, waits or will come
_YIELD = 1  # return to SimPy: sync point or idle gaps crossed
_AGAIN = 2  # a buffer needs emptying or growing before the next iteration
_OVERFLOW = 3  # KV cache overflow with nothing to preempt
_STUCK = 4  # nothing can run and nothing can be preempted

# Slots of the integer state vector.
_K_FEED, _K_ADM, _SYNCED, _N_DEC, _SUM_CTX, _USED, _J = 0, 1, 2, 3, 4, 5, 6
_D_OUT, _D_DONE, _N_LOG, _N_PRE, _N_WAIT, _N_HEAP, _N_GAP, _N_LTT, _IDLES = range(7, 16)
_BASE = 16  # the log's first step with times held (set before each call)
_N_STATE = 17
# Slots of the float state vector: the replica's clock and the next arrival instant.
_T, _NXT = 0, 1
# Slots of the parameter vector.
_P_B, _P_TOTAL, _P_ADMIT, _P_MAXB, _P_BUDGET, _P_SPLIT, _P_BITS = 0, 1, 2, 3, 4, 5, 6
_P_SYNC, _P_IDLES, _P_MAXOUT, _P_TOKEN, _P_MODE, _P_GRID_BITS = 7, 8, 9, 10, 11, 12
_P_NEW_KEYS, _P_NEW_CORNERS = 13, 14  # what one iteration may add to the price tables
_P_N_FEED, _P_FEED_START, _P_FEED_STEP = 15, 16, 17  # a strided feed: no id table
_P_HOST = 18  # the address of the C function that calls back into Python (_HOST)
_N_PARAMS = 19
# The calls back into Python (_Calls.run), and their mailboxes: the integer one holds a
# step's bucketed key (or a grid point) at 0..4, its totals at 5..9 and the price's state
# index, returned, at _M_STATE; the float one returns its seconds and joules. _MAX_GAP
# takes a range of steps at 0 and 1 and returns its largest gap at floats[0].
_PRICE, _CORNER, _MAX_GAP = 0, 1, 2
_M_STATE = 10
_N_MAIL_INTS, _N_MAIL_FLOATS = 11, 2
# How a step shape new to the run is priced (_P_MODE).
_CALLBACK = 0  # by the world's step prices, called back (any StepPrices)
_INTERPOLATE = 1  # between the grid's corners, compiled (a CostTable, the usual case)
_DIRECT = 2  # the grid point itself (a CostTable whose grid is as fine as its keys)

_RID = (1 << 32) - 1  # a heap entry's request id bits
_INF = math.inf

_EMPTY = -(1 << 62)  # the first key field of a free slot of a price table
_MIX = np.uint64(0x9E3779B97F4A7C15)  # the hash's multiplier (2**64 over the golden ratio)

warm = False
"""Whether the compiled loop has run in this process (numba's set-up is paid): the
dispatcher then uses it for smaller worlds too."""

_CALLS: dict[int, _Calls] = {}
"""The calls back into Python of each running compiled loop, by token: the compiled
code reaches Python objects only by a number."""


def _host(token: int, which: int) -> int:
    """Run call ``which`` of the compiled loop ``token`` (:class:`_Calls`): 0 when it
    returned, 1 when it raised (the exception is kept for the loop's caller to raise)."""
    calls = _CALLS[token]
    try:
        calls.run[which]()
    except BaseException as exc:  # re-raised by the caller once the loop has returned
        calls.failed = exc
        return 1
    return 0


_HOST = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(_host)
""":func:`_host` as a C function, which the compiled code calls through its address
(:func:`_call`): an address passed at run time keeps the cached machine code free of
this process's pointers, where an object-mode block is compiled anew in every process
(a quarter of a second on the first run of a process)."""

_HOST_ADDRESS = ctypes.cast(_HOST, ctypes.c_void_p).value or 0
"""The address of :data:`_HOST`."""


@intrinsic
def _call(typingctx: Any, address: Any, token: Any, which: Any) -> Any:
    """Call the C function ``int64 f(int64, int64)`` at ``address`` with ``token`` and
    ``which``; its result."""
    del typingctx
    sig = types.int64(address, token, which)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        del context, signature
        i64 = ir.IntType(64)
        fn = builder.inttoptr(args[0], ir.FunctionType(i64, [i64, i64]).as_pointer())
        return builder.call(fn, [args[1], args[2]])

    return sig, codegen


@numba.njit(cache=True)
def _ask(host: Any, which: int) -> None:
    """Run call ``which`` back in Python for the compiled loop of ``host`` (``(address,
    token, ints, floats)``: the arguments and results travel in its two arrays); a call
    that raised ends the loop, and its caller raises the call's exception."""
    # an intrinsic is called without the typing context its definition takes first
    if _call(host[0], host[1], which) != 0:  # type: ignore[call-arg]
        raise RuntimeError("a call back into Python from the compiled serving loop raised")


_TABLES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""The compiled price table and grid of each world's step prices, shared by its
replicas."""


@numba.njit(cache=True, inline="always")
def _bucket(x: int, bits: int, top: int) -> int:
    """``x`` to ``bits`` significant bits, rounded to nearest (exact below ``top``)."""
    if x < top:
        return x
    e = math.frexp(float(x))[1] - bits  # bit_length, exact below 2**53
    return ((x + (1 << (e - 1))) >> e) << e


@numba.njit(cache=True, inline="always")
def _fed(feed_ids: np.ndarray, start: int, step: int, k: int) -> int:
    """The ``k``-th request of the feed: ``start + k * step`` for a strided feed (``step``
    above 0), else ``feed_ids[k]``."""
    return start + k * step if step else feed_ids[k]


@numba.njit(cache=True, inline="always")
def _slot(keys: np.ndarray, k: tuple[int, int, int, int, int]) -> int:
    """The slot of key ``k`` in an open-addressing table's ``keys`` (a power of two of
    rows of five): the row holding ``k``, else the free row where it goes."""
    h = np.uint64(k[0])
    for x in k[1:]:
        h = (h ^ np.uint64(x)) * _MIX
    h ^= h >> np.uint64(29)
    mask = keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while True:
        head = keys[i, 0]
        if head == _EMPTY or (
            head == k[0]
            and keys[i, 1] == k[1]
            and keys[i, 2] == k[2]
            and keys[i, 3] == k[3]
            and keys[i, 4] == k[4]
        ):
            return int(i)
        i = (i + 1) & mask


@numba.njit(cache=True)
def _put(
    tab: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    i: int,
    k: tuple[int, int, int, int, int],
    v: tuple[float, float, int],
) -> None:
    """Store price ``v`` of key ``k`` in free slot ``i`` of table ``tab``."""
    keys, vals, sts, n = tab
    for c in range(5):
        keys[i, c] = k[c]
    vals[i, 0] = v[0]
    vals[i, 1] = v[1]
    sts[i] = v[2]
    n[0] += 1


@numba.njit(cache=True)
def _rehash(
    old: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Move every entry of table ``old`` into the empty, larger table ``new``."""
    keys, vals, sts, _ = old
    for r in range(keys.shape[0]):
        if keys[r, 0] != _EMPTY:
            k = (keys[r, 0], keys[r, 1], keys[r, 2], keys[r, 3], keys[r, 4])
            _put(new, _slot(new[0], k), k, (vals[r, 0], vals[r, 1], sts[r]))


class _Table:
    """An open-addressing hash table of step prices in numpy arrays, which the compiled
    loop reads and fills: bucketed key (five ints) to ``(seconds, joules, state)``. It
    never allocates there: before each iteration the loop checks that the table holds
    what one iteration may add at half load, and returns so that :meth:`reserve` grows
    it."""

    def __init__(self) -> None:
        self.arrays = self._empty(1 << 10)

    @staticmethod
    def _empty(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.full((rows, 5), _EMPTY, dtype=np.int64),
            np.zeros((rows, 2), dtype=np.float64),
            np.zeros(rows, dtype=np.int64),
            np.zeros(1, dtype=np.int64),
        )

    def reserve(self, more: int) -> None:
        """Grow (doubling) until ``more`` entries fit at half load."""
        rows = self.arrays[0].shape[0]
        want = 2 * (int(self.arrays[3][0]) + more)
        if want <= rows:
            return
        while rows < want:
            rows *= 2
        new = self._empty(rows)
        _rehash(self.arrays, new)
        self.arrays = new


@numba.njit(cache=True)
def _corner(grid: Any, host: Any, pts: tuple[int, int, int, int, int]) -> tuple[float, float, int]:
    """Grid point ``pts``'s price: from the compiled grid, else from the world's
    :meth:`~.cluster.CostTable.corner` (which prices it through the backend once)."""
    i = _slot(grid[0], pts)
    if grid[0][i, 0] != _EMPTY:
        return grid[1][i, 0], grid[1][i, 1], grid[2][i]
    ints, floats = host[2], host[3]
    for q in range(5):
        ints[q] = pts[q]
    _ask(host, _CORNER)
    dur, joules, st = floats[0], floats[1], ints[_M_STATE]
    _put(grid, i, pts, (dur, joules, st))
    return dur, joules, st


@numba.njit(cache=True)
def _axis(x: int, grid_bits: int) -> tuple[int, int, float, float]:
    """:func:`~.cluster.grid_neighbours` with the weights :meth:`CostTable._axis` gives
    them: ``(lo, hi, w_lo, w_hi)``, ``hi == lo`` and ``w_lo == 1`` on the grid."""
    if x < (1 << grid_bits):
        return x, x, 1.0, 0.0
    e = math.frexp(float(x))[1] - grid_bits
    lo = (x >> e) << e
    if lo == x:
        return x, x, 1.0, 0.0
    hi = lo + (1 << e)
    w = (x - lo) / (hi - lo)
    return lo, hi, 1.0 - w, w


@numba.njit(cache=True)
def _interpolate(
    grid: Any, host: Any, k: tuple[int, int, int, int, int], grid_bits: int
) -> tuple[float, float, int]:
    """:meth:`~.cluster.CostTable._interpolate`, compiled: the multilinear interpolation of
    key ``k`` between its grid corners, visited in the same (lexicographic) order with
    the weights multiplied in the same order, so the sums are the same floats."""
    pf_n = k[0]
    lo1, hi1, u1, v1 = _axis(k[1], grid_bits)
    lo2, hi2, u2, v2 = _axis(k[2], grid_bits)
    lo3, hi3, u3, v3 = _axis(k[3], grid_bits)
    lo4, hi4, u4, v4 = _axis(k[4], grid_bits)
    sec = 0.0
    joules = 0.0
    best_w = -1.0
    state = 0
    for a in range(1 if hi1 == lo1 else 2):
        p1 = hi1 if a else lo1
        w1 = v1 if a else u1
        for b in range(1 if hi2 == lo2 else 2):
            p2 = hi2 if b else lo2
            w12 = w1 * (v2 if b else u2)
            for c in range(1 if hi3 == lo3 else 2):
                p3 = hi3 if c else lo3
                w123 = w12 * (v3 if c else u3)
                for d in range(1 if hi4 == lo4 else 2):
                    p4 = hi4 if d else lo4
                    wt = w123 * (v4 if d else u4)
                    s_, j_, st_ = _corner(grid, host, (pf_n, p1, p2, p3, p4))
                    sec += wt * s_
                    joules += wt * j_
                    if wt > best_w:
                        best_w = wt
                        state = st_
    return sec, joules, state


@numba.njit(cache=True, inline="always")
def _price(
    keys: np.ndarray,
    vals: np.ndarray,
    sts: np.ndarray,
    table: Any,
    grid: Any,
    host: Any,
    mode: int,
    grid_bits: int,
    k: tuple[int, int, int, int, int],
    totals: tuple[int, int, int, int, int],
) -> tuple[float, float, int]:
    """The price of bucketed key ``k``: from the table (whose arrays ``keys``, ``vals`` and
    ``sts`` the caller unpacked once: taking them out of the tuple on every step would
    count references), else :func:`_price_new`. Inlined where it is called."""
    i = _slot(keys, k)
    if keys[i, 0] != _EMPTY:
        return vals[i, 0], vals[i, 1], sts[i]
    return _price_new(table, grid, host, mode, grid_bits, i, k, totals)


@numba.njit(cache=True)
def _price_new(
    table: Any,
    grid: Any,
    host: Any,
    mode: int,
    grid_bits: int,
    i: int,
    k: tuple[int, int, int, int, int],
    totals: tuple[int, int, int, int, int],
) -> tuple[float, float, int]:
    """Price key ``k``, new to the table, and store it in free slot ``i``: interpolated on
    the grid (``mode`` ``_INTERPOLATE``), the grid point itself (``_DIRECT``), or the
    world's own pricing of the step's ``totals`` (``_CALLBACK``, for step prices other
    than a :class:`~.cluster.CostTable`)."""
    if mode == _INTERPOLATE:
        got = _interpolate(grid, host, k, grid_bits)
    elif mode == _DIRECT:
        got = _corner(grid, host, k)
    else:
        ints, floats = host[2], host[3]
        for q in range(5):
            ints[q] = k[q]
            ints[5 + q] = totals[q]
        _ask(host, _PRICE)
        got = (floats[0], floats[1], ints[_M_STATE])
    _put(table, i, k, got)
    return got


@numba.njit(cache=True, inline="always")
def _heap_push(heap: np.ndarray, n: int, v: int) -> None:
    """Push ``v`` on the min-heap ``heap[:n]`` (room checked by the caller)."""
    heap[n] = v
    while n > 0:
        p = (n - 1) >> 1
        if heap[p] <= v:
            break
        heap[n] = heap[p]
        n = p
    heap[n] = v


@numba.njit(cache=True, inline="always")
def _heap_pop(heap: np.ndarray, n: int) -> int:
    """Pop the least entry of the min-heap ``heap[:n]``."""
    top = heap[0]
    n -= 1
    v = heap[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= v:
            break
        heap[i] = heap[c]
        i = c
    if n > 0:
        heap[i] = v
    return top


@numba.njit(cache=True)
def _preempt(
    si: np.ndarray,
    j: int,
    now: float,
    B: int,
    state: np.ndarray,
    cur_L: np.ndarray,
    cur_m: np.ndarray,
    entry: np.ndarray,
    seg_start: np.ndarray,
    seg_max: np.ndarray,
    preemptions: np.ndarray,
    growth: np.ndarray,
    heap: np.ndarray,
    pre_rid: np.ndarray,
    pre_done: np.ndarray,
    wait: np.ndarray,
    ltt_rid: np.ndarray,
    ltt_t: np.ndarray,
    hist_start: np.ndarray,
    hist_end: np.ndarray,
    l_start: np.ndarray,
    l_end: np.ndarray,
    host: Any,
) -> bool:
    """The reference's ``preempt_newest`` on the state vector: preempt the running
    request that arrived last (the largest id); False when none runs."""
    best = -1
    for x in range(si[_N_HEAP]):
        rid = heap[x] & _RID
        if rid > best and state[rid] == DECODING:
            best = rid
    n_pre = si[_N_PRE]
    for x in range(n_pre):
        if pre_rid[x] > best:
            best = pre_rid[x]
    if best < 0:
        return False
    rid = best
    st = state[rid]
    if st == DECODING:
        k = entry[rid]
        L = cur_L[rid]
        ctx = L + j - k - 1
        si[_USED] -= -(-ctx // B)
        growth[(L - k - 1) % B] -= 1
        si[_N_DEC] -= 1
        si[_SUM_CTX] -= ctx
        g = j - k
        a = seg_start[rid]
        if a < j:  # largest gap of the segment that ends here
            # the log holds the times of steps base .. base + hist_n - 1, the buffer the
            # later ones; earlier ones were spilled and are read back from Python
            base = si[_BASE]
            hist_n = hist_start.shape[0]
            big = -_INF
            for idx in range(max(a, base), j):
                k = idx - base
                if k < hist_n:
                    gap = hist_end[k] - hist_start[k]
                else:
                    gap = l_end[k - hist_n] - l_start[k - hist_n]
                if gap > big:
                    big = gap
            if a < base:
                ints = host[2]
                ints[0] = a
                ints[1] = min(j, base)
                _ask(host, _MAX_GAP)
                old = host[3][0]
                if old > big:
                    big = old
            if big > seg_max[rid]:
                seg_max[rid] = big
        n_ltt = si[_N_LTT]
        for z in range(n_ltt + 1):
            if z == n_ltt or ltt_rid[z] == rid:
                ltt_rid[z] = rid
                ltt_t[z] = now
                if z == n_ltt:
                    si[_N_LTT] = n_ltt + 1
                break
        cur_L[rid] = L + g
        cur_m[rid] -= g
    elif st == PREFILLING:
        for x in range(n_pre):
            if pre_rid[x] == rid:
                si[_USED] -= -(-pre_done[x] // B)
                for y in range(x, n_pre - 1):
                    pre_rid[y] = pre_rid[y + 1]
                    pre_done[y] = pre_done[y + 1]
                si[_N_PRE] = n_pre - 1
                break
    state[rid] = WAITING
    preemptions[rid] += 1
    wait[si[_N_WAIT]] = rid  # the stack's top is the queue's front
    si[_N_WAIT] += 1
    return True


@numba.njit(cache=True, inline="always")
def _log_row(
    rows: tuple[np.ndarray, ...],
    n: int,
    start: float,
    end: float,
    batch: int,
    prefill: int,
    decode: int,
    kv: int,
    state: int,
    joules: float,
) -> None:
    """Write step row ``n`` into the buffer columns ``rows`` (start, end, batch, prefill,
    decode, KV held, state, joules: the step log's columns, in its order)."""
    l_start, l_end, l_batch, l_pf, l_dec, l_kv, l_state, l_j = rows
    l_start[n] = start
    l_end[n] = end
    l_batch[n] = batch
    l_pf[n] = prefill
    l_dec[n] = decode
    l_kv[n] = kv
    l_state[n] = state
    l_j[n] = joules


@numba.njit(cache=True)
def _advance(
    si: np.ndarray,
    sf: np.ndarray,
    prm: np.ndarray,
    feed_ids: np.ndarray,
    feed_at: np.ndarray,
    cur_L: np.ndarray,
    cur_m: np.ndarray,
    entry: np.ndarray,
    fin_iter: np.ndarray,
    seg_start: np.ndarray,
    preemptions: np.ndarray,
    state: np.ndarray,
    seg_max: np.ndarray,
    first_sched: np.ndarray,
    first_tok: np.ndarray,
    finish: np.ndarray,
    growth: np.ndarray,
    heap: np.ndarray,
    pre_rid: np.ndarray,
    pre_done: np.ndarray,
    wait: np.ndarray,
    ltt_rid: np.ndarray,
    ltt_t: np.ndarray,
    done_pf: np.ndarray,
    gaps: np.ndarray,
    hist_start: np.ndarray,
    hist_end: np.ndarray,
    l_start: np.ndarray,
    l_end: np.ndarray,
    l_batch: np.ndarray,
    l_pf: np.ndarray,
    l_dec: np.ndarray,
    l_kv: np.ndarray,
    l_state: np.ndarray,
    l_j: np.ndarray,
    table: Any,
    grid: Any,
    mail_ints: np.ndarray,
    mail_floats: np.ndarray,
) -> int:
    """Run the replica from the state vectors until it must return to Python; the
    outcome is one of ``_FINISHED`` .. ``_STUCK``. The body is the reference loop's,
    step for step (its comments name the steps). The calls back into Python take their
    arguments and give their results in ``mail_ints`` and ``mail_floats``."""
    B = prm[_P_B]
    total = prm[_P_TOTAL]
    admit_limit = prm[_P_ADMIT]
    max_batch = prm[_P_MAXB]
    budget = prm[_P_BUDGET]
    split = prm[_P_SPLIT] != 0
    bits = prm[_P_BITS]
    top = 1 << bits
    sync_iters = prm[_P_SYNC]
    sync_idles = prm[_P_IDLES]
    max_out = prm[_P_MAXOUT]
    host = (prm[_P_HOST], prm[_P_TOKEN], mail_ints, mail_floats)
    mode = prm[_P_MODE]
    grid_bits = prm[_P_GRID_BITS]
    new_keys = prm[_P_NEW_KEYS]
    new_corners = prm[_P_NEW_CORNERS]
    t_keys, t_vals, t_sts, t_n = table
    rows = (l_start, l_end, l_batch, l_pf, l_dec, l_kv, l_state, l_j)
    g_keys, _, _, g_n = grid
    room_each = done_pf.shape[0]  # what one iteration may add to a per-request buffer
    cap_log = l_start.shape[0]
    n_feed = prm[_P_N_FEED]
    f_start = prm[_P_FEED_START]
    f_step = prm[_P_FEED_STEP]

    k_feed = si[_K_FEED]
    k_adm = si[_K_ADM]
    synced = si[_SYNCED]
    n_dec = si[_N_DEC]
    sum_ctx = si[_SUM_CTX]
    used = si[_USED]
    j = si[_J]
    d_out = si[_D_OUT]
    d_done = si[_D_DONE]
    n_log = si[_N_LOG]
    n_heap = si[_N_HEAP]
    n_gap = si[_N_GAP]
    idles = si[_IDLES]
    t = sf[_T]
    nxt = sf[_NXT]
    dur = 0.0
    joules = 0.0
    st_i = 0
    outcome = _FINISHED

    while True:
        # queue every request of the feed that has arrived by now
        if nxt <= t:
            k0 = k_feed
            while nxt <= t:
                k_feed += 1
                nxt = feed_at[_fed(feed_ids, f_start, f_step, k_feed)] if k_feed < n_feed else _INF
            d_out += k_feed - k0
        if j - synced >= sync_iters or idles >= sync_idles:
            synced = j
            idles = 0
            outcome = _YIELD
            break
        if (
            n_log + max_out + 2 > cap_log
            or n_heap + room_each > heap.shape[0]
            or n_gap + room_each > gaps.shape[0]
            or 2 * (t_n[0] + new_keys) > t_keys.shape[0]
            or 2 * (g_n[0] + new_corners) > g_keys.shape[0]
        ):
            outcome = _AGAIN
            break
        n_pre = si[_N_PRE]
        n_wait = si[_N_WAIT]
        if not n_dec and not n_pre and not n_wait and k_adm == k_feed:
            if k_feed == n_feed:
                outcome = _FINISHED
                break
            t = nxt
            idles += 1
            continue
        now = t
        # 1. blocks for this iteration's decode tokens; preempt until they fit
        need = growth[(-j) % B] if n_dec else 0
        while used + need > total:
            si[_USED] = used
            si[_N_DEC] = n_dec
            si[_SUM_CTX] = sum_ctx
            si[_N_HEAP] = n_heap
            if not _preempt(
                si, j, now, B, state, cur_L, cur_m, entry, seg_start, seg_max,
                preemptions, growth, heap, pre_rid, pre_done, wait, ltt_rid, ltt_t,
                hist_start, hist_end, l_start, l_end, host,
            ):  # fmt: skip
                outcome = _OVERFLOW
                break
            used = si[_USED]
            n_dec = si[_N_DEC]
            sum_ctx = si[_SUM_CTX]
            need = growth[(-j) % B] if n_dec else 0
        if outcome == _OVERFLOW:
            break
        n_pre = si[_N_PRE]
        n_wait = si[_N_WAIT]
        used += need
        # 2. prefill work within the token budget
        pf_n = 0
        pf_tok = 0
        pf_ctx = 0
        room = budget - n_dec
        n_done = 0
        for x in range(n_pre):
            if room <= 0:
                break
            rid = pre_rid[x]
            d = pre_done[x]
            c = min(room, cur_L[rid] - d)
            held = -(-d // B)
            extra = -(-(d + c) // B) - held
            if used + extra > total:
                c = min(c, (total - used + held) * B - d)
                if c <= 0:
                    break
                extra = -(-(d + c) // B) - held
            used += extra
            pre_done[x] = d + c
            pf_n += 1
            pf_tok += c
            pf_ctx += d
            room -= c
            if d + c == cur_L[rid]:
                done_pf[n_done] = rid
                n_done += 1
        n_run = n_dec + n_pre
        while n_run < max_batch:
            if n_wait:
                rid = wait[n_wait - 1]
            elif k_adm < k_feed:
                rid = _fed(feed_ids, f_start, f_step, k_adm)
            else:
                break
            L = cur_L[rid]
            if split:
                if room <= 0:
                    break
                c = L if room > L else room
            else:
                c = L
                if pf_n and c > room:
                    break
            nb = -(-c // B)
            if used + nb > (admit_limit if n_run else total):
                break
            if n_wait:
                n_wait -= 1
                if first_sched[rid] != first_sched[rid]:  # NaN: never scheduled before
                    first_sched[rid] = now
            else:  # a request of the feed is scheduled for the first time
                k_adm += 1
                first_sched[rid] = now
            used += nb
            n_run += 1
            pf_n += 1
            pf_tok += c
            room -= c
            state[rid] = PREFILLING
            if c == L:
                done_pf[n_done] = rid
                n_done += 1
            else:
                pre_rid[n_pre] = rid
                pre_done[n_pre] = c
                n_pre += 1
        si[_N_PRE] = n_pre
        si[_N_WAIT] = n_wait
        if not pf_n and not n_dec:
            # partly prefilled prompts hold the blocks the oldest one needs: free some
            if n_pre > 1:
                si[_USED] = used
                si[_N_DEC] = n_dec
                si[_SUM_CTX] = sum_ctx
                si[_N_HEAP] = n_heap
                if _preempt(
                    si, j, now, B, state, cur_L, cur_m, entry, seg_start, seg_max,
                    preemptions, growth, heap, pre_rid, pre_done, wait, ltt_rid, ltt_t,
                    hist_start, hist_end, l_start, l_end, host,
                ):  # fmt: skip
                    used = si[_USED] - need
                    n_dec = si[_N_DEC]
                    sum_ctx = si[_SUM_CTX]
                    continue
            outcome = _STUCK
            break
        # 3. price and run the iteration
        if pf_n:
            pt = (pf_tok + pf_n // 2) // pf_n
            pt = _bucket(pt if pt else 1, bits, top)
            pc = _bucket((pf_ctx + pf_n // 2) // pf_n, bits, top)
        else:
            pt = 0
            pc = 0
        if n_dec:
            nb_ = _bucket(n_dec, bits, top)
            dc = _bucket((sum_ctx + n_dec // 2) // n_dec, bits, top)
        else:
            nb_ = 0
            dc = 0
        dur, joules, st_i = _price(
            t_keys,
            t_vals,
            t_sts,
            table,
            grid,
            host,
            mode,
            grid_bits,
            (pf_n, pt, pc, nb_, dc),
            (pf_n, pf_tok, pf_ctx, n_dec, sum_ctx),
        )
        end = now + dur
        _log_row(rows, n_log, now, end, pf_n + n_dec, pf_tok, n_dec, used, st_i, joules)
        n_log += 1
        # 4. decodes got their token (the ones that are done retire below)
        sum_ctx += n_dec
        # 5. completed prefills emit their first token and start decoding
        if n_done:
            if split and n_pre:
                kept = 0
                for x in range(n_pre):
                    if pre_done[x] < cur_L[pre_rid[x]]:
                        pre_rid[kept] = pre_rid[x]
                        pre_done[kept] = pre_done[x]
                        kept += 1
                n_pre = kept
                si[_N_PRE] = n_pre
            for y in range(n_done):
                rid = done_pf[y]
                n_ltt = si[_N_LTT]
                pos = -1
                for z in range(n_ltt):
                    if ltt_rid[z] == rid:
                        pos = z
                        break
                if pos < 0:
                    first_tok[rid] = end
                else:  # resumed after preemption: one explicit gap
                    gap = end - ltt_t[pos]
                    ltt_rid[pos] = ltt_rid[n_ltt - 1]
                    ltt_t[pos] = ltt_t[n_ltt - 1]
                    si[_N_LTT] = n_ltt - 1
                    gaps[n_gap] = gap
                    n_gap += 1
                    if gap > seg_max[rid]:
                        seg_max[rid] = gap
                L = cur_L[rid]
                m = cur_m[rid]
                if m == 1:
                    used -= -(-L // B)
                    fin_iter[rid] = j
                    seg_start[rid] = j + 1
                    state[rid] = DONE
                    finish[rid] = end
                    d_done += 1
                    d_out -= 1
                    continue
                state[rid] = DECODING
                entry[rid] = j
                f = j + m - 1
                fin_iter[rid] = f
                seg_start[rid] = j + 1
                _heap_push(heap, n_heap, (f << 32) | rid)
                n_heap += 1
                growth[(L - j - 1) % B] += 1
                n_dec += 1
                sum_ctx += L
        t = end
        i = j  # the iteration that ran last, ending at t
        run = n_pre == 0  # decode runs (6.) with no prefill in progress
        while True:
            # 4. (continued) retire the requests whose last token came in iteration i
            gone = 0
            while n_heap and (heap[0] >> 32) == i:
                rid = _heap_pop(heap, n_heap) & _RID
                n_heap -= 1
                if state[rid] != DECODING or fin_iter[rid] != i:
                    continue  # preempted since, or finishing another time
                L = cur_L[rid]
                k = entry[rid]
                ctx = L + i - k
                used -= -(-ctx // B)
                growth[(L - k - 1) % B] -= 1
                sum_ctx -= ctx
                state[rid] = DONE
                finish[rid] = t
                gone += 1
            if gone:
                n_dec -= gone
                d_done += gone
                d_out -= gone
            i += 1
            if not run or not n_dec:
                break
            # 6. a decode run from iteration i up to the next one where something can
            # happen, at most to `stop`, whose requests retire above
            stop = heap[0] >> 32
            room = budget - n_dec
            open_ = n_dec < max_batch and (room > 0 or not split)
            head_nb = -1  # blocks the queue's head needs (-1: the queue is empty)
            if open_:
                if n_wait or k_adm < k_feed:
                    head = wait[n_wait - 1] if n_wait else _fed(feed_ids, f_start, f_step, k_adm)
                    L = cur_L[head]
                    c = L if not split or room > L else room
                    head_nb = -(-c // B)
                elif nxt <= t:
                    break  # an arrival to queue and maybe admit: the plain step's turn
            nb_ = _bucket(n_dec, bits, top)
            dcr = (sum_ctx + n_dec // 2) // n_dec
            dc_next = dcr
            cut = False
            while True:
                u = used + growth[(-i) % B]
                if u > total:
                    cut = True  # a preemption: the plain step decides it
                    break
                if open_:
                    if head_nb >= 0:
                        if u + head_nb <= admit_limit:
                            cut = True  # the head fits: the plain step admits it
                            break
                        open_ = False  # and it never will while the run only takes blocks
                    elif nxt <= t:
                        cut = True  # an arrival to queue and maybe admit
                        break
                if dcr >= dc_next:
                    if dcr >= top:
                        e_ = math.frexp(float(dcr))[1] - bits
                        h_ = 1 << (e_ - 1)
                        dc = ((dcr + h_) >> e_) << e_
                        dc_next = dc + h_
                    else:
                        dc = dcr
                        dc_next = dcr + 1
                    dur, joules, st_i = _price(
                        t_keys,
                        t_vals,
                        t_sts,
                        table,
                        grid,
                        host,
                        mode,
                        grid_bits,
                        (0, 0, 0, nb_, dc),
                        (0, 0, 0, n_dec, sum_ctx),
                    )
                end = t + dur
                _log_row(rows, n_log, t, end, n_dec, 0, n_dec, u, st_i, joules)
                n_log += 1
                used = u
                sum_ctx += n_dec
                dcr += 1
                t = end
                if i == stop:
                    break
                i += 1
            if cut:
                break
        j = i

    si[_K_FEED] = k_feed
    si[_K_ADM] = k_adm
    si[_SYNCED] = synced
    si[_N_DEC] = n_dec
    si[_SUM_CTX] = sum_ctx
    si[_USED] = used
    si[_J] = j
    si[_D_OUT] = d_out
    si[_D_DONE] = d_done
    si[_N_LOG] = n_log
    si[_N_HEAP] = n_heap
    si[_N_GAP] = n_gap
    si[_IDLES] = idles
    sf[_T] = t
    sf[_NXT] = nxt
    return outcome


def _view(buf: Any, dtype: type, code: str) -> np.ndarray:
    """A writable numpy view of an :class:`array.array` of typecode ``code`` (or of a
    bytearray, ``code`` ``"B"``)."""
    got = buf.typecode if isinstance(buf, array) else ("B" if isinstance(buf, bytearray) else "")
    if got != code:
        raise TypeError(f"expected a buffer of typecode {code!r}, got {type(buf).__name__}")
    return np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype=dtype)


def serves(rep: Any, req: RequestState) -> bool:
    """Whether the compiled loop can run replica ``rep`` on ``req``: a replica reading its
    own feed, with no sliding-window layers, over a request table of flat arrays of the
    reference's typecodes."""
    if not isinstance(rep, Replica) or rep.feed is None or rep.kv.layout is not None:
        return False
    if rep.waiting:
        return False
    ints = (req.cur_prompt, req.cur_output, req.entry, req.fin_iter, req.seg_start)
    floats = (req.seg_max, req.first_scheduled, req.first_token, req.finish)
    return (
        all(isinstance(a, array) and a.typecode == "i" for a in (*ints, req.preemptions))
        and all(isinstance(a, array) and a.typecode == "d" for a in floats)
        and isinstance(req.state, bytearray)
        and isinstance(rep.feed.at, array)
        and rep.feed.at.typecode == "d"
        and (
            (isinstance(rep.feed.ids, range) and rep.feed.ids.step > 0)
            or (isinstance(rep.feed.ids, array) and rep.feed.ids.typecode == "i")
        )
    )


class _Buffers:
    """The arrays of one replica's compiled loop: state vectors, work structures and the
    step rows since the last hand-over."""

    def __init__(self, rows: int, each: int, heap: int, block_tokens: int) -> None:
        self.si = np.zeros(_N_STATE, dtype=np.int64)
        self.sf = np.zeros(2, dtype=np.float64)
        self.growth = np.zeros(block_tokens, dtype=np.int64)
        self.heap = np.zeros(heap, dtype=np.int64)
        self.pre_rid = np.zeros(each, dtype=np.int64)
        self.pre_done = np.zeros(each, dtype=np.int64)
        self.wait = np.zeros(each, dtype=np.int64)
        self.ltt_rid = np.zeros(each, dtype=np.int64)
        self.ltt_t = np.zeros(each, dtype=np.float64)
        self.done_pf = np.zeros(each, dtype=np.int64)
        self.gaps = np.zeros(4 * each, dtype=np.float64)
        self.start = np.zeros(rows, dtype=np.float64)
        self.end = np.zeros(rows, dtype=np.float64)
        self.batch = np.zeros(rows, dtype=np.int32)
        self.prefill = np.zeros(rows, dtype=np.int64)
        self.decode = np.zeros(rows, dtype=np.int64)
        self.kv = np.zeros(rows, dtype=np.int64)
        self.state = np.zeros(rows, dtype=np.int32)
        self.joules = np.zeros(rows, dtype=np.float64)
        self.mail_ints = np.zeros(_N_MAIL_INTS, dtype=np.int64)
        self.mail_floats = np.zeros(_N_MAIL_FLOATS, dtype=np.float64)


class _Calls:
    """What one replica's compiled loop calls back in Python (by index, ``run``): the
    reference's pricing of a step (``_PRICE``: the memo's entry for the bucketed key, else
    :meth:`StepPrices.step` of the totals), the price of one grid point of a
    :class:`~.cluster.CostTable` (``_CORNER``) and the step log's
    :meth:`~.steplog.StepLog.max_gap` over steps whose times were spilled (``_MAX_GAP``).
    Each reads its arguments from the mailboxes and writes its results there;
    ``failed`` keeps the exception of a call that raised."""

    def __init__(self, costs: StepPrices, log: StepLog, ints: np.ndarray, floats: np.ndarray):
        memo = costs.memo
        step = costs.step

        def price() -> None:
            got = memo.get(tuple(ints[:5].tolist()))
            dur, joules, st = got if got is not None else step(*ints[5:10].tolist())
            floats[0], floats[1], ints[_M_STATE] = dur, joules, st

        def corner() -> None:
            assert isinstance(costs, CostTable)
            pts = ints[:5].tolist()
            floats[0], floats[1], ints[_M_STATE] = costs.corner((*pts,))

        def max_gap() -> None:
            floats[0] = log.max_gap(int(ints[0]), int(ints[1]))

        self.run: tuple[Callable[[], None], ...] = (price, corner, max_gap)
        self.failed: BaseException | None = None


def _tables(costs: StepPrices) -> tuple[_Table, _Table]:
    """The compiled price table and grid of ``costs``, made on first use and shared by the
    world's replicas."""
    try:
        got = _TABLES.get(costs)
    except TypeError:  # not weakly referable: tables per replica
        return _Table(), _Table()
    if got is None:
        got = _TABLES[costs] = (_Table(), _Table())
    return got


def new_keys_bound(max_out: int, bits: int) -> int:
    """Keys one iteration may add to the price table: its own step, and one per decode
    iteration of the run after it whose mean context enters a new bucket (exact values
    below ``2**bits``, then ``2**(bits - 1)`` buckets an octave up to 63 bits), at most one
    per token of the longest output."""
    top = 1 << bits
    return min(max_out, top + (top // 2) * (63 - bits)) + 2


def iterative_native(
    env: simpy.Environment,
    rep: Replica,
    req: RequestState,
    costs: StepPrices,
    spec: SchedulerSpec,
    split: bool,
) -> Proc:
    """The replica's SimPy process on the compiled loop (see the module docstring); the
    caller checked :func:`serves`."""
    global warm
    feed = rep.feed
    assert feed is not None
    kv = rep.kv
    log = rep.log
    B = kv.block_tokens
    total = kv.total_blocks
    strided = isinstance(feed.ids, range)
    ids = np.zeros(0, dtype=np.int32) if strided else _view(feed.ids, np.int32, "i")
    n_feed = len(feed.ids)
    at = _view(feed.at, np.float64, "d")
    cur_m = _view(req.cur_output, np.int32, "i")
    f = feed.ids
    mine = cur_m[f.start : f.stop : f.step] if isinstance(f, range) else cur_m[ids]
    max_out = int(mine.max()) if n_feed else 1
    del mine
    each = min(spec.max_batch, n_feed) + 1
    buf = _Buffers(SYNC_ITERATIONS + max_out + 2, each, 4 * each, B)
    buf.growth[:] = kv.growth
    si, sf = buf.si, buf.sf
    sf[_T] = env.now
    sf[_NXT] = at[feed.ids[0]] if n_feed else _INF
    prm = np.zeros(_N_PARAMS, dtype=np.int64)
    prm[_P_B] = B
    prm[_P_TOTAL] = total
    prm[_P_ADMIT] = total - int(total * 0.01)  # the reference's WATERMARK
    prm[_P_MAXB] = spec.max_batch
    prm[_P_BUDGET] = min(spec.chunk, spec.max_batch_tokens) if split else spec.max_batch_tokens
    prm[_P_SPLIT] = int(split)
    prm[_P_BITS] = costs.bits
    prm[_P_SYNC] = SYNC_ITERATIONS
    prm[_P_IDLES] = SYNC_IDLES
    prm[_P_MAXOUT] = max_out
    prm[_P_N_FEED] = n_feed
    if isinstance(feed.ids, range):
        prm[_P_FEED_START] = feed.ids.start
        prm[_P_FEED_STEP] = feed.ids.step
    token = id(buf)
    prm[_P_TOKEN] = token
    if type(costs) is CostTable:
        prm[_P_MODE] = _DIRECT if costs.grid_bits >= costs.bits else _INTERPOLATE
        prm[_P_GRID_BITS] = costs.grid_bits
    else:
        prm[_P_MODE] = _CALLBACK
    prm[_P_HOST] = _HOST_ADDRESS
    calls = _CALLS[token] = _Calls(costs, log, buf.mail_ints, buf.mail_floats)
    table, grid = _tables(costs)
    prm[_P_NEW_KEYS] = new_keys_bound(max_out, costs.bits)
    prm[_P_NEW_CORNERS] = 16 * int(prm[_P_NEW_KEYS])  # a key's corners: two an axis, four axes
    table.reserve(int(prm[_P_NEW_KEYS]))
    grid.reserve(int(prm[_P_NEW_CORNERS]))
    request_views = (
        _view(req.cur_prompt, np.int32, "i"),
        cur_m,
        _view(req.entry, np.int32, "i"),
        _view(req.fin_iter, np.int32, "i"),
        _view(req.seg_start, np.int32, "i"),
        _view(req.preemptions, np.int32, "i"),
        _view(req.state, np.uint8, "B"),
        _view(req.seg_max, np.float64, "d"),
        _view(req.first_scheduled, np.float64, "d"),
        _view(req.first_token, np.float64, "d"),
        _view(req.finish, np.float64, "d"),
    )
    try:
        while True:
            # the log's whole-run start and end, for a preempted request's largest gap;
            # viewed for the call only (a view would keep the arrays from growing)
            si[_BASE] = log.base
            hist_start = _view(log.start, np.float64, "d")
            hist_end = _view(log.end, np.float64, "d")
            try:
                outcome = _advance(
                    si, sf, prm, ids, at, *request_views,
                    buf.growth, buf.heap, buf.pre_rid, buf.pre_done, buf.wait, buf.ltt_rid,
                    buf.ltt_t, buf.done_pf, buf.gaps, hist_start, hist_end,
                    buf.start, buf.end, buf.batch, buf.prefill, buf.decode, buf.kv,
                    buf.state, buf.joules, table.arrays, grid.arrays,
                    buf.mail_ints, buf.mail_floats,
                )  # fmt: skip
            except RuntimeError:
                if calls.failed is None:
                    raise
                raise calls.failed from None  # the pricing's own error, as the reference's
            del hist_start, hist_end
            warm = True
            _hand_over(buf, rep, req)
            if outcome == _FINISHED:
                return
            if outcome == _OVERFLOW:
                raise AssertionError("KV cache overflow with nothing to preempt")
            if outcome == _STUCK:
                raise AssertionError(
                    f"replica {rep.index} cannot make progress: {int(si[_USED])} of {total} "
                    f"KV blocks held, {int(si[_N_WAIT] + si[_K_FEED] - si[_K_ADM])} waiting"
                )
            if outcome == _AGAIN:
                if int(si[_N_HEAP]) + each > buf.heap.size:
                    buf.heap = np.concatenate((buf.heap, np.zeros_like(buf.heap)))
                table.reserve(int(prm[_P_NEW_KEYS]))
                grid.reserve(int(prm[_P_NEW_CORNERS]))
                continue
            t = float(sf[_T])
            if t > env.now:
                yield env.timeout(t - env.now)
    finally:
        kv.growth[:] = buf.growth.tolist()
        del _CALLS[token]


def _raw(values: np.ndarray, n: int) -> memoryview:
    """The bytes of the first ``n`` items of the 1-D array ``values``, not copied."""
    return values[:n].data.cast("B")


def _hand_over(buf: _Buffers, rep: Replica, req: RequestState) -> None:
    """Move the loop's step rows to the replica's log and its token gaps and counts to
    the request table and the replica (in the order the reference makes them)."""
    si = buf.si
    n = int(si[_N_LOG])
    if n:
        log = rep.log
        # the rows' bytes appended straight from the buffers (no bytes object between)
        log.start.frombytes(_raw(buf.start, n))
        log.end.frombytes(_raw(buf.end, n))
        log.batch.frombytes(_raw(buf.batch, n))
        log.prefill.frombytes(_raw(buf.prefill, n))
        log.decode.frombytes(_raw(buf.decode, n))
        log.kv.frombytes(_raw(buf.kv, n))
        log.state.frombytes(_raw(buf.state, n))
        log.joules.frombytes(_raw(buf.joules, n))
        si[_N_LOG] = 0
    g = int(si[_N_GAP])
    if g:
        req.extra_gaps.extend(buf.gaps[:g].tolist())
        si[_N_GAP] = 0
    req.done += int(si[_D_DONE])
    rep.outstanding += int(si[_D_OUT])
    si[_D_DONE] = 0
    si[_D_OUT] = 0
