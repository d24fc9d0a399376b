"""The LLM serving world: arrivals, a router, replicas with schedulers and KV caches.

:func:`simulate_serving` replays a request frame (:data:`xpusim.engine.traces.REQUEST_SCHEMA`)
on one system and returns its frames (``requests``, ``steps``, ``devices``, ``tbt``; see
:mod:`xpusim.engine.frames`). One SimPy process feeds arrivals through the router; one
process per replica runs its scheduler (:mod:`xpusim.plugins.workloads.serving.schedulers`), one SimPy event
per iteration. Requests whose KV cache need (prompt + output − 1 tokens) exceeds a
replica's whole cache are dropped up front with a reason and never routed.

Fast path: under a router whose choices are known before the run (``round-robin``, the
prefix cache's cache-aware assignment: :meth:`~xpusim.engine.policies.Router.planned`)
every request's replica is decided up front, so the built-in ``continuous`` and ``chunked-prefill`` schedulers read their own
arrivals (at the instants :func:`arrival_instants` gives, those the arrival process would
deliver them at) and run many iterations per SimPy event, fast-forwarding runs of
decode-only iterations (:mod:`~xpusim.plugins.workloads.serving.schedulers.iteration`). A
light process keeps the arrival process's periodic work (progress, spilling). The frames
are identical to the plain loop's (``fast=False``), bit for bit.

Token-gap exactness: ``tbt_mean_s`` is ``(last token − first token) / (output − 1)``;
``tbt_max_s`` is the maximum of the iteration durations over the request's decode
iterations (a sparse-table range maximum per replica) and of the gaps around any
preemption; the ``tbt`` frame is the exact multiset of all gaps (iteration durations
weighted by the decode tokens of the iteration, plus each post-preemption gap). A
scheduler that streams several steps' tokens at once (``prefill-first`` with ``steps``)
clears its log's ``row_gaps`` and records every gap itself.

Bounded memory: past ``spill_rows`` rows (:func:`xpusim.engine.frames.spill_rows`), step rows
are flushed to Parquet parts while the world runs, and the ``requests``, ``steps`` and
``devices`` frames are built in chunks into a :class:`~xpusim.engine.frames.Spill` folder and
returned lazy (a :class:`~xpusim.engine.frames.SpilledFrames` mapping owns the folder). The
rows, their order and every metric are the same as in memory.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from array import array
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
import simpy

from xpusim.engine.backend import Compiled
from xpusim.engine.errors import DoesNotFitError
from xpusim.engine.frames import (
    DEVICES_SCHEMA,
    REQUEST_OK,
    Frame,
    FrameBuffer,
    Packing,
    Spill,
    SpilledFrames,
    concat_frames,
    device_timeline,
    empty,
    scan_parts,
)
from xpusim.engine.policies import Route, Router, SchedulerSpec, check_options
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.plugins.workloads.serving.clients import ClientRequestTable, ClientSlots
from xpusim.plugins.workloads.serving.cluster import (
    DONE,
    DROPPED,
    CostTable,
    Feed,
    Replica,
    RequestTable,
)
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.routers import builtin_router
from xpusim.plugins.workloads.serving.routers.round_robin import RoundRobinRouter
from xpusim.plugins.workloads.serving.schedulers import SCHEDULERS, builtin_scheduler
from xpusim.plugins.workloads.serving.schedulers.chunked_prefill import ChunkedPrefillScheduler
from xpusim.plugins.workloads.serving.schedulers.continuous import ContinuousScheduler
from xpusim.plugins.workloads.serving.schemas import REQUESTS_SCHEMA, STEPS_SCHEMA, TBT_SCHEMA
from xpusim.plugins.workloads.serving.steplog import steps_packing

REQUEST_CHUNK = 1 << 18
"""Rows of the ``requests`` frame built at a time once it spills."""


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc's
    ``malloc_trim``; nothing elsewhere).

    The step columns are emptied at every spill and grow again, and a replica's step
    times are freed once its rows are out; glibc keeps such freed heap memory mapped, so
    without this a large run's resident size keeps the high-water mark of every column
    it ever held.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` when the C library has it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


@dataclass
class ServingResult:
    """Frames of one simulated system and its simulated span in seconds.

    ``frames`` hold DataFrames, or LazyFrames over spilled parts past the spill threshold
    (then the mapping is a :class:`~xpusim.engine.frames.SpilledFrames` owning the folder).
    """

    frames: dict[str, Frame]
    simulated_s: float
    replicas: int
    kv_blocks: int
    cost_misses: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _flat(code: str, column: pl.Series) -> array:
    """``column`` (no nulls, of the dtype matching ``code``) as an :class:`array.array` of
    type ``code``, copied once from the column's own buffer."""
    out = array(code)
    out.frombytes(np.ascontiguousarray(column.to_numpy()).data.cast("B"))
    return out


def _tokens(column: pl.Series) -> array:
    """Token counts as a 32-bit :class:`array.array` when they all fit, else 64-bit."""
    lo, hi = column.min(), column.max()
    if column.len() and (int(lo) < -(2**31) or int(hi) >= 2**31):  # type: ignore[arg-type]
        return _flat("q", column.cast(pl.Int64))
    return _flat("i", column.cast(pl.Int32))


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max(values[lo[i]:hi[i] + 1])`` for every ``i`` (all ranges non-empty).

    A sparse table (level ``k`` holds the maxima of windows of ``2**k`` values) built one
    level at a time, the queries of each level answered before the next is built, so no
    more than two levels are held at once. The queries are sorted by level once (one
    stable sort, not a mask over all of them per level); a range of ``w`` values is
    answered on level ``floor(log2(w))``, the exponent ``frexp`` gives exactly.
    """
    out = np.empty(lo.size)
    if lo.size == 0:
        return out
    k = np.frexp((hi - lo + 1).astype(np.float64))[1] - 1
    order = np.argsort(k, kind="stable")
    ks = k[order]
    # the runs of equal levels in the sorted queries
    ends = np.append(np.flatnonzero(np.diff(ks)) + 1, ks.size)
    tab = values
    level = 0
    first = 0
    for last in ends.tolist():
        lvl = int(ks[first])
        while level < lvl:
            span = 1 << level
            tab = np.maximum(tab[:-span], tab[span:])
            level += 1
        sel = order[first:last]
        out[sel] = np.maximum(tab[lo[sel]], tab[hi[sel] - (1 << lvl) + 1])
        first = last
    return out


def simulate_serving(
    requests: pl.DataFrame,
    compiled: Compiled,
    *,
    system: str,
    replicas: int,
    devices_per_replica: int,
    scheduler: SchedulerSpec | None = None,
    router: str | Router = "round-robin",
    kv_block_tokens: int = 16,
    kv_capacity_tokens: int | None = None,
    progress: Callable[[float, float], None] | None = None,
    spill_rows: int | None = None,
    spill_dir: str | None = None,
    seed: int = 0,
    fast: bool = True,
    kv_layout: KVLayout | None = None,
    concurrency: int | None = None,
) -> ServingResult:
    """Replay ``requests`` on ``replicas`` replicas of ``compiled`` and return the frames.

    ``kv_capacity_tokens`` defaults to ``compiled.kv_capacity_tokens()``; it is rounded
    down to whole blocks of ``kv_block_tokens``. Raises
    :class:`~xpusim.engine.errors.DoesNotFitError` when not one block fits. ``spill_rows`` is the
    row threshold past which frames spill to part files under ``spill_dir``
    (defaults: :func:`xpusim.engine.frames.spill_rows` and ``$XPUSIM_SPILL_DIR``).

    The scheduler is the one ``scheduler`` was resolved to in a scenario
    (:meth:`~xpusim.engine.policies.SchedulerSpec.policy`), else the built-in one of its
    ``kind``; ``router`` is a :class:`~xpusim.engine.policies.Router` or the name of a
    built-in one, and ``seed`` seeds its routing function.

    ``fast`` (the default) lets the built-in ``continuous`` and ``chunked-prefill``
    schedulers take the fast path when the router's choices do not depend on the replicas'
    state (:meth:`~xpusim.engine.policies.Router.planned`: ``round-robin``, the prefix
    cache's cache-aware assignment): every request's replica is decided before the run and
    each replica reads its own arrivals (:class:`~.cluster.Feed`), running many iterations
    per SimPy event. ``fast=False`` routes every request at its arrival and runs one SimPy
    event per iteration; both give identical frames.

    ``kv_layout`` is the model's KV layout (:class:`~.kvcache.KVLayout`), by default
    ``KVLayout.of(compiled.model.info)``: with sliding-window layers each replica's cache
    counts layer pages and frees those behind the window. Pass ``KVLayout(layers)`` to
    count every layer as full attention.

    ``concurrency`` keeps at most that many requests in flight, as a benchmark client with
    a concurrency limit does (:mod:`.clients`): a request whose arrival comes while that
    many are sent and not finished is sent when one finishes, those waiting in arrival
    order, and its ``arrival_s`` becomes the instant it was sent. Such a run routes every
    request at its sending (no fast path), and ``extra["client_waits"]`` holds how long
    each request sent waited for a slot (0 for most), in sending order.
    """
    spec = scheduler or SchedulerSpec()
    policy = spec.policy() or builtin_scheduler(spec.kind)
    check_options(spec, policy)
    router_obj = router if isinstance(router, Router) else builtin_router(router)
    missing = [c for c in REQUEST_SCHEMA if c not in requests.columns]
    if missing:
        raise ValueError(f"request frame lacks column(s) {missing}")
    short = requests["output_tokens"] < 1
    if short.any():
        row = int(short.arg_true()[0])
        raise ValueError(
            f"request {row} asks for {requests['output_tokens'][row]} output tokens; every "
            "request produces at least one (its first token ends the prefill)"
        )
    if kv_block_tokens < 1:
        raise ValueError(f"kv_block_tokens must be >= 1, got {kv_block_tokens}")
    cap = compiled.kv_capacity_tokens() if kv_capacity_tokens is None else kv_capacity_tokens
    blocks = int(cap) // kv_block_tokens
    if blocks < 1:
        raise DoesNotFitError(
            f"system {system!r}: the model's weights leave no room for a KV cache "
            f"({cap} tokens, less than one block of {kv_block_tokens}); use more devices per "
            "replica (tensor parallelism) or a device with more memory."
        )
    layout = KVLayout.of(compiled.model.info) if kv_layout is None else kv_layout
    if not requests["arrival_s"].is_sorted():
        requests = requests.sort("arrival_s", maintain_order=True)
    # flat typed arrays, not lists of Python numbers: 8 bytes a request for the times, 4
    # for the token counts (8 where one does not fit in 32 bits)
    arrival = _flat("d", requests["arrival_s"].cast(pl.Float64))
    prompt = _tokens(requests["prompt_tokens"])
    output = _tokens(requests["output_tokens"])
    n = len(arrival)
    env = simpy.Environment()
    slots = ClientSlots(env, concurrency) if concurrency is not None else None
    req = (
        RequestTable(arrival, prompt, output, replicas)
        if slots is None
        else ClientRequestTable(arrival, prompt, output, slots, replicas)
    )

    del requests  # the table holds what is needed

    # drop requests that cannot fit even alone (in chunks: no column-sized temporaries):
    # those whose KV at some length up to prompt + output - 1 tokens exceeds the cache
    reasons: dict[int, str] = {}
    kv = PagedKVCache(blocks, kv_block_tokens, layout)
    p_all, o_all = np.asarray(prompt), np.asarray(output)
    for a in range(0, n, REQUEST_CHUNK):
        need_tok = p_all[a : a + REQUEST_CHUNK].astype(np.int64) + o_all[a : a + REQUEST_CHUNK]
        need_tok -= 1
        need = kv.peak_blocks_of(need_tok)
        for i in np.flatnonzero(need > kv.total_blocks).tolist():
            req.state[a + i] = DROPPED
            reasons[a + i] = (
                f"needs {int(need_tok[i])} KV tokens, a replica holds {blocks * kv_block_tokens}"
                if kv.layout is None
                else f"needs {int(need_tok[i])} KV tokens ({int(need[i])} layer blocks of "
                f"{kv_block_tokens} tokens), a replica holds {kv.total_blocks}"
            )
    del p_all, o_all, kv

    costs = CostTable(compiled, spec.shape_bits, spec.grid_bits)
    reps = [Replica(i, blocks, kv_block_tokens, layout) for i in range(replicas)]
    route = router_obj.start(reps, seed)
    # exactly the built-in scheduler classes: a subclass may not read its feed
    # (a client's limit makes the sending instants depend on the run: no feed ahead)
    fed = fast and slots is None and type(policy) in (ContinuousScheduler, ChunkedPrefillScheduler)
    plan: Sequence[int] | None = None
    if fed:
        owner = _plan_owner(router_obj)
        if owner is None:
            fed = False  # no plan, or one a subclass's own routing may not follow
        elif owner is not RoundRobinRouter:
            # round-robin's plan is i mod R, computed in place (no list of a Python int
            # per request); any other router's is read from it
            plan = router_obj.planned(n - len(reasons), replicas)
            fed = plan is not None
    originals = _feed_planned(req, reps, plan) if fed else {}
    for r in reps:
        env.process(policy.process(env, r, req, costs, spec))
    spill = Spill(spill_rows, spill_dir)
    steps = _StepSpill(spill, system, reps, costs)
    if type(policy) in SCHEDULERS:  # they read step times through max_gap only
        for r in reps:
            r.log.keep_times = False
    try:
        if fed:
            env.process(_ticks(env, req, progress, steps))
        else:
            env.process(_arrivals(env, req, reps, route, progress, steps, slots))
        env.run()
        for r in reps:
            r.feed = None  # the replicas' own arrivals (fast path): all taken
        _restore_arrivals(req, originals)
        if progress is not None:
            progress(n, n)

        # every routed request must be done
        # counted first (one byte a request at a time, the run's high-water mark is near)
        st = np.frombuffer(req.state, dtype=np.uint8)
        if np.count_nonzero(st == DONE) + np.count_nonzero(st == DROPPED) != n:
            stuck = np.flatnonzero((st != DONE) & (st != DROPPED))
            raise AssertionError(f"{stuck.size} requests never finished (first: {int(stuck[0])})")
        del st

        frames, horizon = _frames(system, req, reps, costs, devices_per_replica, reasons, steps)
    except BaseException:
        spill.close()
        raise
    if spill.used:
        frames = SpilledFrames(frames, spill)
        # a large run's request table and step logs go back to the system before the
        # frames are read: nothing else refers to them (the finished processes released
        # their frames; the environment's own cycle holds only its empty queue), so no
        # full collection, which would walk every object of the process (0.1 s with numba)
        del env, reps, req, steps
        release_freed_memory()
    return ServingResult(
        frames=frames,
        simulated_s=horizon,
        replicas=replicas,
        kv_blocks=blocks,
        cost_misses=costs.misses,
        extra={} if slots is None else {"client_waits": slots.waits},
    )


class _StepSpill:
    """The ``steps`` rows of every replica, flushed to Parquet parts while the world runs.

    :meth:`check` (called from the arrival process every :attr:`every` arrivals) hands
    every replica's pending rows to its :class:`FrameBuffer` as one part once the pending
    rows of all replicas reach the threshold, so the step log holds at most about one
    threshold of full rows (plus ``start``/``end``, 16 bytes per step).
    """

    def __init__(self, spill: Spill, system: str, reps: list[Replica], costs: CostTable) -> None:
        self.spill = spill
        self.system = system
        self.reps = reps
        self.costs = costs
        self.buffers = [
            FrameBuffer(
                spill,
                f"steps-r{r.index}",
                STEPS_SCHEMA,
                steps_packing(system, r.index, costs.states),
            )
            for r in reps
        ]
        self.every = max(1, min(1024, spill.rows // 64))
        for r, buf in zip(reps, self.buffers, strict=True):
            r.log.spilled_gap = functools.partial(_spilled_gap, buf)

    def check(self) -> None:
        """Flush every replica's pending rows when they reach the threshold in all."""
        if sum(r.log.pending for r in self.reps) >= self.spill.rows:
            self.flush()

    def flush(self) -> None:
        """Write every replica's pending rows as one part file each."""
        for r, buf in zip(self.reps, self.buffers, strict=True):
            if r.log.pending:
                buf.add(r.log.take())
                buf.flush()
        release_freed_memory()

    def release(self, index: int) -> None:
        """Move replica ``index``'s pending rows to its buffer, and on to a part file of
        their own once its earlier rows spilled (so a spilled run holds no step rows in
        memory), and free its step times (the world is over; nothing indexes them any
        more)."""
        r = self.reps[index]
        buf = self.buffers[index]
        if r.log.pending:
            buf.add(r.log.take())
        if buf.parts:
            buf.flush()
        # Rebind rather than resize: a numpy view of the old column may still be alive, and
        # resizing an array.array that exports its buffer raises BufferError.
        r.log.start = array("d")
        r.log.end = array("d")

    def spilled(self, index: int) -> list[Path]:
        """Part files of replica ``index``, in order."""
        return self.buffers[index].parts

    def frame(self) -> Frame:
        """The ``steps`` frame: every replica's parts and pending rows, replica by replica."""
        out: list[Frame] = []
        for r, buf in zip(self.reps, self.buffers, strict=True):
            if r.log.pending:
                buf.add(r.log.take())
            out.append(buf.frame())
        return concat_frames(out, STEPS_SCHEMA)


def _spilled_gap(buf: FrameBuffer, a: int, b: int) -> float:
    """The largest ``end_s - start_s`` of the spilled steps ``a`` to ``b - 1`` of one
    replica (``buf``'s parts), for a preemption whose segment began before its log's
    times (:meth:`~.steplog.StepLog.max_gap`)."""
    got = (
        scan_parts(buf.parts)
        .filter(pl.col("step").is_between(a, b - 1))
        .select((pl.col("end_s") - pl.col("start_s")).max())
        .collect()
        .item()
    )
    if got is None:
        raise AssertionError(f"steps {a} .. {b - 1} are neither held nor spilled")
    return float(got)


def _arrivals(
    env: simpy.Environment,
    req: RequestTable,
    reps: list[Replica],
    route: Route,
    progress: Callable[[float, float], None] | None,
    steps: _StepSpill,
    slots: ClientSlots | None = None,
) -> Generator[simpy.Event, Any, None]:
    """Feed each request to its replica at its arrival instant (and spill step rows past
    the threshold as the log grows). With client ``slots``, a request is sent once a slot
    is free, at or after its arrival, and its arrival becomes that sending instant."""
    arrival = req.arrival
    state = req.state
    replica_of = req.replica
    n = req.n
    every = max(1, n // 100)
    check_every = steps.every
    timeout = env.timeout
    # the instant the process would deliver the request without a client limit: env.now,
    # unless waits for a slot have put the process behind it
    due = env.now
    for rid in range(n):
        t = arrival[rid]
        if due < env.now:  # behind: this request came due at its arrival, or already
            if t > due:
                due = t
            if due > env.now:
                yield timeout(due - env.now)
                due = env.now
        elif t > env.now:
            yield timeout(t - env.now)
            due = env.now
        if progress is not None and rid % every == 0:
            progress(rid, n)
        if rid % check_every == 0:
            steps.check()
        if state[rid] == DROPPED:
            continue
        if slots is not None:
            while not slots.free:
                yield slots.wait()
            slots.take(env.now - due)
            if env.now > due:  # it waited for a slot: it was sent now
                cast(array, arrival)[rid] = env.now  # the world's own table
        rep = route(reps)
        replica_of[rid] = rep.index
        rep.waiting.append(rid)
        rep.outstanding += 1
        ev = rep.wake
        if ev is not None:
            rep.wake = None
            ev.succeed()


def arrival_instants(arrival: np.ndarray) -> np.ndarray:
    """The SimPy instants at which the arrival process delivers each request.

    The process waits ``t - now`` from the previous delivery instant ``now`` (not at all
    when ``t <= now``), and ``now + (t - now)`` is ``t`` itself except where the
    subtraction rounds (a gap much longer than the time elapsed), after which the
    deliveries follow the rounded instant until one is exact again. This gives those
    instants with the same float operations, so a replica that reads its own arrivals
    sees each request at the very instant the arrival process would deliver it.
    """
    out = np.array(arrival, dtype=np.float64)
    moved = moved_instants(out)
    if moved:
        out[list(moved)] = list(moved.values())
    return out


def moved_instants(arrival: np.ndarray) -> dict[int, float]:
    """The instants of :func:`arrival_instants` that differ from the arrival times, by
    request index (usually none), found a chunk at a time so that no temporary is as
    long as the arrivals."""
    t = np.asarray(arrival, dtype=np.float64)
    n = t.size
    moved: dict[int, float] = {}
    i_next = 0
    for a in range(0, n, REQUEST_CHUNK):
        cur = t[a : a + REQUEST_CHUNK]
        prev = t[a - 1 : a - 1 + cur.size] if a else np.concatenate(([0.0], cur[:-1]))
        with np.errstate(invalid="ignore"):
            step = np.where(cur > prev, prev + (cur - prev), prev)
        for b in (np.flatnonzero(step != cur) + a).tolist():
            if b < i_next:
                continue
            now = moved.get(b - 1, float(t[b - 1])) if b else 0.0
            i = b
            while i < n:
                ti = float(t[i])
                got = now + (ti - now) if ti > now else now
                if got == ti and i > b:
                    break  # back in step: the rest follows the exact instants
                if got != ti:
                    moved[i] = got
                now = got
                i += 1
            i_next = i
    return moved


def _plan_owner(router: Router) -> type | None:
    """The class whose :meth:`~xpusim.engine.policies.Router.planned` the world may trust
    for ``router``: the one that defines it, when that class also defines the routing
    function (:meth:`~xpusim.engine.policies.Router.start`) its plan stands for; ``None``
    when the router plans nothing (the base class's default) or a subclass routes by a
    rule of its own beside an inherited plan."""

    def defining(name: str) -> type:
        return next(c for c in type(router).__mro__ if name in vars(c))

    owner = defining("planned")
    if owner is Router or owner is not defining("start"):
        return None
    return owner


def _feed_planned(
    req: RequestTable, reps: list[Replica], plan: Sequence[int] | None
) -> dict[int, float]:
    """Decide every routed request's replica as the router would at its arrival and give
    each replica its feed (:class:`~.cluster.Feed`): the ``k``-th routed request (in
    arrival order, the dropped ones left out) goes to replica ``plan[k]``, or with no
    ``plan`` (``round-robin``) to replica ``k mod R``; each replica takes the routed
    requests planned for it, in arrival order.

    The feeds' arrival instants are ``req.arrival`` itself, overwritten in place where an
    instant differs from the arrival time (a rounded subtraction, rare): no second table
    of eight bytes a request. Returns the overwritten arrival times by request id, for
    :func:`_restore_arrivals` once the world has run.
    """
    arrival = np.asarray(req.arrival, dtype=np.float64)
    moved = moved_instants(arrival)
    originals = {i: float(arrival[i]) for i in moved}
    if moved:
        arrival[list(moved)] = list(moved.values())  # a view of req.arrival: in place
    r = len(reps)
    replica_of = np.asarray(req.replica)
    st = np.frombuffer(req.state, dtype=np.uint8)
    instants = req.arrival
    assert isinstance(instants, array)  # the world's own table (simulate_serving)
    if plan is not None:
        planned_ids = np.flatnonzero(st != DROPPED).astype(np.int32)
        del st
        to = np.asarray(plan, dtype=np.int64)
        if to.shape != planned_ids.shape:
            raise ValueError(
                f"the router planned {to.size} choices for {planned_ids.size} routed requests"
            )
        if to.size and (int(to.min()) < 0 or int(to.max()) >= r):
            raise ValueError(f"the router planned a replica outside 0 .. {r - 1}")
        replica_of[planned_ids] = to
        for k, rep in enumerate(reps):
            ids = planned_ids[to == k]
            rep.feed = Feed(array("i", np.ascontiguousarray(ids).tobytes()), instants)
        return originals
    if not st.any():  # nothing dropped: request i goes to replica i mod R
        replica_of[:] = np.arange(req.n, dtype=np.int32) % np.int32(r)
        routed = None
    else:
        routed = np.flatnonzero(st != DROPPED).astype(np.int32)
        replica_of[routed] = np.arange(routed.size, dtype=np.int32) % np.int32(r)
    del st
    for k, rep in enumerate(reps):
        if routed is None:
            rep.feed = Feed(range(k, req.n, r), instants)
        else:
            rep.feed = Feed(array("i", np.ascontiguousarray(routed[k::r]).tobytes()), instants)
    return originals


def _restore_arrivals(req: RequestTable, originals: dict[int, float]) -> None:
    """Put back the arrival times :func:`_feed_planned` overwrote with instants."""
    if originals:
        arrival = np.asarray(req.arrival)
        arrival[list(originals)] = list(originals.values())


def _ticks(
    env: simpy.Environment,
    req: RequestTable,
    progress: Callable[[float, float], None] | None,
    steps: _StepSpill,
) -> Generator[simpy.Event, Any, None]:
    """The arrival process's periodic work when replicas read their own arrivals: report
    progress and spill step rows at the arrival instants of the same requests."""
    n = req.n
    every = max(1, n // 100)
    check_every = steps.every
    marks = np.union1d(np.arange(0, n, every), np.arange(0, n, check_every))
    arrival = req.arrival
    for rid in marks.tolist():
        t = arrival[rid]
        if t > env.now:
            yield env.timeout(t - env.now)
        if progress is not None and rid % every == 0:
            progress(rid, n)
        if rid % check_every == 0:
            steps.check()


def _replica_columns(
    log: Any, parts: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start, end, decode tokens, state indices and joules of every step of one replica:
    the spilled parts read back (in one scan) followed by the rows still in the log. The
    times of the spilled steps come from the parts only where the log dropped them
    (:attr:`~.steplog.StepLog.base`); otherwise the log holds every step's."""
    start = np.asarray(log.start)
    end = np.asarray(log.end)
    dec = np.array(log.decode, dtype=np.int64)
    st = np.array(log.state, dtype=np.int64)
    joules = np.array(log.joules, dtype=np.float64)
    if parts:
        times = ["start_s", "end_s"] if log.base else []
        back = scan_parts(parts).select(*times, "decode_tokens", "state", "joules").collect()
        if log.base:  # the log holds the times of steps base onwards; the parts 0 .. taken
            held = log.taken - log.base
            start = np.concatenate((back["start_s"].to_numpy(), start[held:]))
            end = np.concatenate((back["end_s"].to_numpy(), end[held:]))
        dec = np.concatenate((back["decode_tokens"].to_numpy(), dec))
        st = np.concatenate((back["state"].to_numpy(), st))
        joules = np.concatenate((back["joules"].to_numpy(), joules))
    return start, end, dec, st, joules


def _frames(
    system: str,
    req: RequestTable,
    reps: list[Replica],
    costs: CostTable,
    devices_per_replica: int,
    reasons: dict[int, str],
    steps: _StepSpill,
) -> tuple[dict[str, Frame], float]:
    """The frames of the run and its horizon; built replica by replica and, for requests,
    in chunks of the spill threshold, so that no frame is materialized whole past it.

    The world is over, so the working state it no longer needs is freed on the way: the
    requests' scheduling arrays first, each replica's step times once its rows are out.
    """
    spill = steps.spill
    n = req.n
    req.cur_prompt, req.cur_output, req.entry = array("i"), array("i"), array("i")
    arrival = np.asarray(req.arrival, dtype=np.float64)
    first_tok = np.asarray(req.first_token)
    finish = np.asarray(req.finish)
    replica = np.asarray(req.replica)
    fin_iter = np.asarray(req.fin_iter)
    seg_start = np.asarray(req.seg_start)
    # the largest gap before each request's last segment becomes its largest gap in all,
    # in place: no second table of eight bytes a request
    tbt_max = np.asarray(req.seg_max)
    ok = np.frombuffer(bytes(req.state), dtype=np.uint8) == DONE
    # columns only the request rows need, after the pass over the replicas: on disk while
    # that pass holds every replica's step times, when the run spills already (ten
    # million requests hold 200 MB less at its peak)
    later = {
        "first_scheduled": np.asarray(req.first_scheduled),
        "prompt": np.asarray(req.prompt),
        "output": np.asarray(req.output),
        "preemptions": np.asarray(req.preemptions, dtype=np.int32),
    }
    if spill.used:
        later = {name: spill.park(col, name) for name, col in later.items()}
        req.first_scheduled, req.preemptions = array("d"), array("i")
        req.prompt, req.output = array("i"), array("i")

    # a request's last token is its finish for the built-in schedulers; any other is kept
    # apart (no table of eight bytes a request for the exception)
    late_ids: list[np.ndarray] = []
    late_at: list[np.ndarray] = []
    devices = FrameBuffer(spill, "devices", DEVICES_SCHEMA)
    gap_parts: list[pl.DataFrame] = []
    horizon = float(arrival.max()) if n else 0.0
    ends_all = []
    for r in reps:
        if len(r.log):
            ends_all.append(r.log.end[-1])
    if ends_all:
        horizon = max(horizon, max(ends_all))
    for r in reps:
        log = r.log
        start, end, dec, st_idx, joules = _replica_columns(log, steps.spilled(r.index))
        dur = end - start
        mine = np.flatnonzero(ok & (replica == r.index))
        if mine.size:
            last = end[fin_iter[mine]]
            off = last != finish[mine]
            if off.any():
                late_ids.append(mine[off])
                late_at.append(last[off])
            del last, off
            lo = seg_start[mine]
            hi = fin_iter[mine]
            has = lo <= hi
            seg = np.zeros(mine.size)
            seg[has] = _range_max(dur, lo[has], hi[has])
            tbt_max[mine] = np.maximum(seg, tbt_max[mine])
            del lo, hi, has, seg
        if len(log) and log.row_gaps:  # else the scheduler recorded every gap itself
            w = dec > 0
            gap_parts.append(
                pl.DataFrame({"gap_s": dur[w], "tokens": dec[w]})
                .group_by("gap_s")
                .agg(pl.col("tokens").sum())
            )
        if log.gap_counts:
            gap_parts.append(
                pl.DataFrame(
                    {
                        "gap_s": np.fromiter(log.gap_counts, np.float64, len(log.gap_counts)),
                        "tokens": np.fromiter(
                            log.gap_counts.values(), np.int64, len(log.gap_counts)
                        ),
                    }
                )
            )
            log.gap_counts = {}
        devs = list(range(r.index * devices_per_replica, (r.index + 1) * devices_per_replica))
        devices.add(
            device_timeline(
                system,
                r.index,
                devs,
                start,
                end,
                st_idx,
                joules,
                costs.states,
                horizon,
            )
        )
        del start, end, dur, dec, st_idx, joules
        steps.release(r.index)
        if spill.used:
            devices.flush()  # a spilling run holds no device rows in memory either
    tbt_max[~ok] = np.nan
    late_id = np.concatenate(late_ids) if late_ids else np.zeros(0, np.int64)
    late_val = np.concatenate(late_at) if late_at else np.zeros(0)
    del late_ids, late_at
    del fin_iter, seg_start
    req.fin_iter, req.seg_start = array("i"), array("i")
    if req.extra_gaps:
        gap_parts.append(
            pl.DataFrame(
                {
                    "gap_s": np.asarray(req.extra_gaps),
                    "tokens": np.ones(len(req.extra_gaps), np.int64),
                }
            )
        )
    first_sched, prompt, output, preempt = (
        later["first_scheduled"],
        later["prompt"],
        later["output"],
        later["preemptions"],
    )
    # the rows leave out the system and hold each status as a code (0 dropped, 1 ok)
    packing = Packing(fixed={"system": system}, coded={"status": ["dropped", REQUEST_OK]})
    packed = packing.packed_schema(REQUESTS_SCHEMA)
    reason_ids = (
        np.fromiter(reasons, dtype=np.int64, count=len(reasons))
        if reasons
        else np.zeros(0, dtype=np.int64)
    )
    requests = FrameBuffer(spill, "requests", REQUESTS_SCHEMA, packing)
    # past the threshold each chunk goes to its own part at once, so no more than one chunk
    # of request rows is held beside the request table
    spilling = n > spill.rows
    chunk = min(spill.rows, REQUEST_CHUNK) if spilling else spill.rows
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        k = b - a
        out_c = output[a:b].astype(np.int64)
        last_tok = finish[a:b].copy()
        inside = (late_id >= a) & (late_id < b)
        last_tok[late_id[inside] - a] = late_val[inside]
        one_tok = out_c <= 1
        tbt_max[a:b][one_tok] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            tbt_mean = np.where(one_tok, np.nan, (last_tok - first_tok[a:b]) / (out_c - 1))
        reason = pl.repeat(None, k, dtype=pl.String, eager=True).alias("reason")
        sel = reason_ids[(reason_ids >= a) & (reason_ids < b)]
        if sel.size:
            reason = reason.scatter(sel - a, [reasons[int(i)] for i in sel])
        requests.add(
            pl.DataFrame(
                {
                    "replica": pl.Series(replica[a:b], dtype=pl.Int32),
                    "request_id": np.arange(a, b, dtype=np.int64),
                    "arrival_s": arrival[a:b],
                    "first_scheduled_s": first_sched[a:b],
                    "first_token_s": first_tok[a:b],
                    "finish_s": finish[a:b],
                    "prompt_tokens": prompt[a:b].astype(np.int64),
                    "output_tokens": out_c,
                    "preemptions": preempt[a:b],
                    "status": ok[a:b].astype(np.int32),
                    "reason": reason,
                    "ttft_s": first_tok[a:b] - arrival[a:b],
                    "e2e_s": finish[a:b] - arrival[a:b],
                    "tbt_mean_s": tbt_mean,
                    "tbt_max_s": tbt_max[a:b],
                },
                schema=packed,
            ).with_columns(
                # NaN marks "not applicable" inside the simulation; frames use null
                pl.col(pl.Float64).fill_nan(None),
                pl.when(pl.col("status") == 0)
                .then(None)
                .otherwise(pl.col("replica"))
                .alias("replica"),
            )
        )
        if spilling:
            requests.flush()
    tbt = (
        pl.concat(gap_parts)
        .group_by("gap_s")
        .agg(pl.col("tokens").sum())
        .sort("gap_s")
        .with_columns(pl.lit(system, pl.String).alias("system"))
        .select(list(TBT_SCHEMA))
        .cast(TBT_SCHEMA)  # type: ignore[arg-type]
        if gap_parts
        else empty(TBT_SCHEMA)
    )
    return {
        "requests": requests.frame(),
        "steps": steps.frame(),
        "devices": devices.frame() if reps else empty(DEVICES_SCHEMA),
        "tbt": tbt,
    }, horizon
