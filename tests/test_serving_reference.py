"""The fast serving world against its plain reference on SimPy resources.

:mod:`~xpusim.plugins.workloads.serving.reference` restates the serving schedulers
(continuous, chunked prefill, guaranteed-no-evict with and without chunked context,
static) with a SimPy process per request, a ``PriorityStore`` queue and a ``Container`` of
KV blocks per replica. On generated small workloads (several replicas, bursts and gaps,
caches small enough to preempt and to drop, tight batch and token limits, block sizes
from 1 to 16 tokens) the fast world (:func:`simulate_serving`) must give every request
the same replica, first-scheduled, first-token and finish times (to float rounding) and
preemption count, drop the same requests, and run the same iterations (batch, prefill
and decode tokens, KV blocks held, start and end).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import polars as pl
import pytest
import simpy
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.fakes import FakeModel, fake_device
from xpusim.engine.backend import Compiled, Cost, Fit
from xpusim.engine.frames import collect
from xpusim.engine.graph import Shape
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.plugins.workloads.serving.kvcache import KVLayout
from xpusim.plugins.workloads.serving.reference import ReferenceResult, simulate_reference
from xpusim.plugins.workloads.serving.world import arrival_instants, simulate_serving

TIMES = ("first_scheduled_s", "first_token_s", "finish_s")


class ShapeCompiled(Compiled):
    """A step costs 3.1 ms, plus 0.41 ms per sequence, 17 us per new token and 23 ns per
    (new token, cached token) pair: every size of the step shows in its time, and the
    constants make step ends unlikely to meet round arrival times."""

    def _cost(self, shape: Shape) -> Cost:
        sec = 3.1e-3 + _extra(shape)
        return Cost(sec, 250.0 * sec, {"compute": sec})

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        return Fit(True, 0.0, 1.0)


def _extra(shape: Shape) -> float:
    """The size-dependent seconds of a shape, its parts summed."""
    if shape.parts:
        return sum(_extra(p) for p in shape.parts)
    new = shape.batch * shape.tokens
    pairs = new * (shape.context + (shape.tokens + 1) / 2)
    return 4.1e-4 * shape.batch + 1.7e-5 * new + 2.3e-8 * pairs


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    """The shape-priced fake compiled for one device."""
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    system = System("ref", "fake", fake_device("chip-b", 80), 1, Parallelism(), topo)
    return ShapeCompiled(system, FakeModel(1e9))


def requests(rows: list[tuple[float, int, int]]) -> pl.DataFrame:
    """A request frame from ``(arrival_s, prompt_tokens, output_tokens)`` rows."""
    return pl.DataFrame(
        {
            "arrival_s": [r[0] for r in rows],
            "prompt_tokens": [r[1] for r in rows],
            "output_tokens": [r[2] for r in rows],
        },
        schema=REQUEST_SCHEMA,
    )


def close(a: float, b: float) -> bool:
    """Equal up to float rounding."""
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def from_gaps(rows: list[tuple[float, int, int]], start: float = 0.0) -> pl.DataFrame:
    """Requests of ``(gap, prompt, output)`` rows, each arriving ``gap`` seconds after the
    one before it, the first ``start`` seconds plus its gap after zero."""
    arrivals = np.cumsum([r[0] for r in rows]) + start
    return requests([(float(a), p, o) for a, (_, p, o) in zip(arrivals, rows, strict=True)])


def ordered(frames: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A run's ``requests`` by id and ``steps`` in replica order."""
    return frames["requests"].sort("request_id"), frames["steps"].sort("replica", "step")


def run_both(
    compiled: Compiled, frame: pl.DataFrame, spec: SchedulerSpec, **kw: Any
) -> tuple[pl.DataFrame, pl.DataFrame, ReferenceResult]:
    """Run the fast world and the reference on the same input (:func:`both_worlds`'s
    keywords); return the fast world's ``requests`` and ``steps`` frames (steps in
    replica order) and the reference's result."""
    frames, ref = both_worlds(compiled, frame, spec, **kw)
    return (*ordered(frames), ref)


def both_worlds(
    compiled: Compiled,
    frame: pl.DataFrame,
    spec: SchedulerSpec,
    *,
    replicas: int = 1,
    router: str = "round-robin",
    block: int = 16,
    capacity: int = 100_000,
    layout: KVLayout | None = None,
) -> tuple[dict[str, pl.DataFrame], ReferenceResult]:
    """Run the fast world and the reference on the same input (with the KV ``layout``
    given, else the model's); return every frame of the fast world, collected, and the
    reference's result."""
    args = {
        "replicas": replicas,
        "scheduler": spec,
        "router": router,
        "kv_block_tokens": block,
        "kv_capacity_tokens": capacity,
        "kv_layout": layout,
    }
    fast = simulate_serving(frame, compiled, system="s", devices_per_replica=1, **args)
    ref = simulate_reference(frame, compiled, **args)
    return {k: collect(v) for k, v in fast.frames.items()}, ref


def assert_same(reqs: pl.DataFrame, steps: pl.DataFrame, ref: ReferenceResult) -> None:
    """Every request and every iteration of the fast world is the reference's."""
    dropped = set(reqs.filter(pl.col("status") == "dropped")["request_id"].to_list())
    assert dropped == set(ref.dropped)
    assert reqs.height == len(ref.requests)
    for row, want in zip(reqs.iter_rows(named=True), ref.requests, strict=True):
        rid = row["request_id"]
        if rid in dropped:
            assert want.replica is None and want.finish_s is None
            continue
        assert row["replica"] == want.replica, rid
        assert row["preemptions"] == want.preemptions, rid
        for col in TIMES:
            got = getattr(want, col)
            assert got is not None and close(row[col], got), (rid, col, row[col], got)
    counts = ("replica", "batch", "prefill_tokens", "decode_tokens", "kv_blocks_used")
    fast_rows = list(zip(*(steps[c].to_list() for c in counts), strict=True))
    ref_rows = [
        (s.replica, s.batch, s.prefill_tokens, s.decode_tokens, s.kv_blocks_used) for s in ref.steps
    ]
    assert fast_rows == ref_rows
    for col in ("start_s", "end_s"):
        want = [getattr(s, col) for s in ref.steps]
        for got, want_t in zip(steps[col].to_list(), want, strict=True):
            assert close(got, want_t), (col, got, want_t)


# --- the property --------------------------------------------------------------------


def drawn_spec(
    kind: str, max_batch: int, max_batch_tokens: int, chunk: int = 512, max_wait: float = 0.0
) -> SchedulerSpec:
    """The spec of a drawn ``kind``: a scheduler's name, or ``chunked-context`` for
    guaranteed-no-evict with chunked context; ``chunk`` is ``chunked-prefill``'s,
    ``max_wait`` ``static``'s."""
    chunked = kind == "chunked-context"
    return SchedulerSpec(
        kind="guaranteed-no-evict" if chunked else kind,
        max_batch=max_batch,
        max_batch_tokens=max_batch_tokens,
        chunked_context=chunked,
        chunk=chunk,
        max_wait=f"{max_wait if kind == 'static' else 0.0} s",
    )


KINDS = st.sampled_from(
    ["continuous", "chunked-prefill", "guaranteed-no-evict", "chunked-context", "static"]
)
"""The schedulers the drawn worlds run (``chunked-context``: no-evict with chunked
context; ``prefill-first`` has its own property in ``tests/test_prefill_first.py``)."""
CHUNKS = st.integers(1, 128)
"""``chunked-prefill``'s chunk sizes."""
WAITS = st.sampled_from([0.0, 1e-4, 0.01])
"""``static``'s waits for a batch to fill: none, shorter and longer than the drawn gaps."""


ROWS = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.05)),
        st.integers(1, 200),
        st.integers(1, 60),
    ),
    min_size=1,
    max_size=40,
)

WORLDS: dict[str, st.SearchStrategy[Any]] = {
    "rows": ROWS,
    "block": st.sampled_from([1, 2, 3, 4, 8, 16]),
    "blocks": st.integers(2, 300),
    "max_batch": st.integers(1, 16),
    "max_batch_tokens": st.integers(1, 512),
    "replicas": st.integers(1, 3),
    "router": st.sampled_from(["round-robin", "least-outstanding"]),
}
"""Small worlds for the property tests against the reference: workloads, caches of
``blocks`` blocks of ``block`` tokens, the scheduler's limits, replicas and routers."""


@settings(max_examples=60, deadline=None)
@given(
    **WORLDS,
    spare=st.integers(0, 15),
    kind=KINDS,
    chunk=CHUNKS,
    max_wait=WAITS,
)
def test_fast_world_matches_reference(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    block: int,
    blocks: int,
    spare: int,
    max_batch: int,
    max_batch_tokens: int,
    replicas: int,
    router: str,
    chunk: int,
    max_wait: float,
    kind: str,
) -> None:
    """On any small workload the fast world (continuous batching, chunked prefill with
    drawn chunks, TensorRT-LLM's guaranteed-no-evict admission on the plain loop with or
    without chunked context, or static batches with drawn waits to fill) gives every
    request the reference's replica, times and preemptions, drops the same
    requests and runs the same iterations. Arrival gaps are drawn, so bursts of equal
    arrival times occur; workloads where an arrival falls exactly on an iteration's end
    are skipped, since the fast world leaves that order open."""
    frame = from_gaps(rows)
    spec = drawn_spec(kind, max_batch, max_batch_tokens, chunk, max_wait)
    capacity = blocks * block + spare % block  # not always whole blocks
    reqs, steps, ref = run_both(
        compiled, frame, spec, replicas=replicas, router=router, block=block, capacity=capacity
    )
    assume(not set(frame["arrival_s"].to_list()) & set(steps["end_s"].to_list()))
    assert_same(reqs, steps, ref)


GAPS = st.lists(
    st.one_of(
        st.just(0.0),
        st.floats(min_value=0.0, max_value=1e-3),
        st.floats(min_value=0.0, max_value=1e4),
    ),
    min_size=1,
    max_size=60,
)
"""Gaps between arrivals: ties (0), sub-millisecond and up to hours apart."""
STARTS = st.floats(min_value=0.0, max_value=1e3)
"""The instant the first arrival comes after."""

LAYOUTS = st.builds(
    KVLayout,
    st.integers(0, 2),
    st.integers(1, 3),
    st.integers(1, 64),
)
"""Sliding-window layouts small enough for the drawn prompts to cross their window."""


@settings(max_examples=60, deadline=None)
@given(
    **WORLDS,
    layout=LAYOUTS,
    kind=KINDS,
    chunk=CHUNKS,
    max_wait=WAITS,
)
def test_windowed_fast_world_matches_reference(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    layout: KVLayout,
    block: int,
    blocks: int,
    max_batch: int,
    max_batch_tokens: int,
    replicas: int,
    router: str,
    chunk: int,
    max_wait: float,
    kind: str,
) -> None:
    """With sliding-window layers (full and window layers, windows of 1 to 64 tokens that
    the drawn sequences cross, pages given back as windows move) the fast world still
    gives every request the reference's replica, times and preemptions, drops the same
    requests and runs the same iterations with the same blocks in use."""
    frame = from_gaps(rows)
    spec = drawn_spec(kind, max_batch, max_batch_tokens, chunk, max_wait)
    reqs, steps, ref = run_both(
        compiled,
        frame,
        spec,
        replicas=replicas,
        router=router,
        block=block,
        capacity=blocks * block,
        layout=layout,
    )
    assume(not set(frame["arrival_s"].to_list()) & set(steps["end_s"].to_list()))
    assert_same(reqs, steps, ref)


# --- examples that show each rule at work -----------------------------------------------


def test_preemption_recomputes_the_newest_request(compiled: Compiled) -> None:
    """When decodes outgrow a small cache, both worlds preempt the request that arrived
    last, requeue it at the front and finish it later, identically; a request that can
    never fit is dropped by both."""
    rows = [(0.0, 8, 20), (0.0, 8, 20), (0.0, 8, 20), (0.0, 8, 20), (0.001, 60, 10)]
    spec = SchedulerSpec(kind="continuous", max_batch=8)
    reqs, steps, ref = run_both(compiled, requests(rows), spec, block=4, capacity=48)
    assert_same(reqs, steps, ref)
    assert ref.dropped == {4}  # 69 tokens of KV, the cache holds 48
    assert ref.requests[3].preemptions >= 1  # the newest of the four goes first
    assert ref.requests[0].preemptions == 0  # the oldest is never the victim
    assert sum(r.preemptions for r in ref.requests) == int(reqs["preemptions"].sum())


def test_several_replicas_route_alike(compiled: Compiled) -> None:
    """With three replicas, both routers send every request to the same replica in both
    worlds, and every replica serves."""
    rows = [(0.004 * i, 20 + 7 * i, 5 + (i * 3) % 11) for i in range(12)]
    spec = SchedulerSpec(kind="continuous", max_batch=2)
    for router in ("round-robin", "least-outstanding"):
        reqs, steps, ref = run_both(
            compiled, requests(rows), spec, replicas=3, router=router, capacity=4096
        )
        assert_same(reqs, steps, ref)
        assert {r.replica for r in ref.requests} == {0, 1, 2}


def test_watermark_holds_back_admission(compiled: Compiled) -> None:
    """With 100 one-token blocks, admission into a busy replica leaves one block free:
    a 49-token prompt that would exactly fill the cache waits until the running request
    finishes, in both worlds."""
    rows = [(0.0, 50, 10), (0.001, 49, 2)]
    spec = SchedulerSpec(kind="continuous")
    reqs, steps, ref = run_both(compiled, requests(rows), spec, block=1, capacity=100)
    assert_same(reqs, steps, ref)
    first, second = ref.requests
    assert second.first_scheduled_s == first.finish_s


def test_first_prompt_of_an_iteration_passes_the_token_budget(compiled: Compiled) -> None:
    """The token budget holds back only the second and later prompts of an iteration: a
    7-token prompt joins three decodes under a budget of 8 tokens, in both worlds."""
    rows = [(0.0, 2, 30), (0.0, 2, 30), (0.0, 2, 30), (0.001, 7, 3)]
    spec = SchedulerSpec(kind="continuous", max_batch_tokens=8)
    reqs, steps, ref = run_both(compiled, requests(rows), spec)
    assert_same(reqs, steps, ref)
    assert ref.steps[1].prefill_tokens == 7 and ref.steps[1].decode_tokens == 3
    assert ref.requests[3].first_scheduled_s == ref.steps[0].end_s


def test_windows_give_pages_back_and_admit_more(compiled: Compiled) -> None:
    """One full and three window layers with a 32-token window: long sequences hold far
    fewer pages than with four full layers, so more run at once, with fewer preemptions,
    and both worlds agree on every iteration, each step's blocks being the sequences'
    pages (windows past their oldest pages given back) in blocks of every layer."""
    rows = [(0.0005 * i, 60 + (7 * i) % 30, 80 + (11 * i) % 40) for i in range(16)]
    spec = SchedulerSpec(kind="continuous", max_batch=16, max_batch_tokens=4096)
    args = {"block": 4, "capacity": 4 * 160}
    windowed = run_both(compiled, requests(rows), spec, layout=KVLayout(1, 3, 32), **args)
    full = run_both(compiled, requests(rows), spec, layout=KVLayout(4), **args)
    for reqs, steps, ref in (windowed, full):
        assert_same(reqs, steps, ref)
    assert windowed[1]["batch"].max() > full[1]["batch"].max()
    assert windowed[0]["preemptions"].sum() < full[0]["preemptions"].sum()
    # a lone sequence: every step holds its pages in blocks of every layer, rounded up
    lay = KVLayout(1, 3, 32)
    reqs, steps, ref = run_both(
        compiled, requests([(0.0, 50, 40)]), spec, layout=lay, block=4, capacity=400
    )
    assert_same(reqs, steps, ref)
    held = [50] + [50 + i for i in range(1, 40)]
    assert steps["kv_blocks_used"].to_list() == [-(-lay.layer_blocks(c, 4) // 4) for c in held]


def test_reference_refuses_a_scheduler_it_does_not_restate(compiled: Compiled) -> None:
    """The reference refuses a scheduler kind it does not restate (a plugin's), naming
    it and the kinds it runs."""
    with pytest.raises(ValueError, match=r"static schedulers, not 'fifo-plugin'"):
        simulate_reference(
            requests([(0.0, 4, 4)]),
            compiled,
            replicas=1,
            scheduler=SchedulerSpec(kind="fifo-plugin"),
            kv_capacity_tokens=1024,
        )


# --- the fast path against the plain loop -------------------------------------------------


def run_paths(
    compiled: Compiled, frame: pl.DataFrame, spec: SchedulerSpec, **args: object
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """The frames of the fast path (replicas read their own arrivals, decode runs
    fast-forwarded) and of the plain loop (one SimPy event per arrival and per
    iteration), on the same input."""
    out = []
    for fast in (True, False):
        res = simulate_serving(
            frame, compiled, system="s", devices_per_replica=1, scheduler=spec, fast=fast, **args
        )
        out.append({k: collect(v) for k, v in res.frames.items()})
    return out[0], out[1]


@settings(max_examples=60, deadline=None)
@given(
    rows=ROWS,
    kind=st.sampled_from(["continuous", "chunked-prefill"]),
    block=st.sampled_from([1, 2, 4, 16]),
    blocks=st.integers(2, 300),
    max_batch=st.integers(1, 16),
    max_batch_tokens=st.integers(1, 512),
    chunk=st.integers(1, 128),
    replicas=st.integers(1, 3),
    scale=st.sampled_from([1.0, 1e3, 1e6]),
)
def test_fast_path_equals_the_plain_loop(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    kind: str,
    block: int,
    blocks: int,
    max_batch: int,
    max_batch_tokens: int,
    chunk: int,
    replicas: int,
    scale: float,
) -> None:
    """On any workload, both built-in iteration-level schedulers give exactly the same
    frames on the fast path as on the plain loop: every request's replica, times and
    preemptions, every iteration (so every token gap), the device timeline and the gap
    distribution, bit for bit. Arrival times are drawn with bursts of equal times and,
    scaled far from zero, with gaps whose float rounding the arrival process carries."""
    assert_fast_path_is_plain(
        compiled, rows, kind, block, blocks, max_batch, max_batch_tokens, chunk, replicas, scale
    )


def assert_fast_path_is_plain(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    kind: str,
    block: int,
    blocks: int,
    max_batch: int,
    max_batch_tokens: int,
    chunk: int,
    replicas: int,
    scale: float,
    layout: KVLayout | None = None,
) -> None:
    """The fast path's frames are the plain loop's, bit for bit, for ``rows`` (gaps,
    prompt and output tokens) shifted to start at ``scale - 1`` seconds."""
    frame = from_gaps(rows, scale - 1.0)
    spec = SchedulerSpec(
        kind=kind, max_batch=max_batch, max_batch_tokens=max_batch_tokens, chunk=chunk
    )
    fast, plain = run_paths(
        compiled,
        frame,
        spec,
        replicas=replicas,
        kv_block_tokens=block,
        kv_capacity_tokens=blocks * block,
        kv_layout=layout,
    )
    # the plain loop leaves open the order of an arrival and an iteration ending at the
    # same instant; the fast path takes the arrival first
    assume(not set(frame["arrival_s"].to_list()) & set(plain["steps"]["end_s"].to_list()))
    assert fast.keys() == plain.keys()
    for name in fast:
        assert_frame_equal(fast[name], plain[name])


@settings(max_examples=60, deadline=None)
@given(
    rows=ROWS,
    layout=LAYOUTS,
    kind=st.sampled_from(["continuous", "chunked-prefill"]),
    block=st.sampled_from([1, 2, 4, 16]),
    blocks=st.integers(2, 300),
    max_batch=st.integers(1, 16),
    max_batch_tokens=st.integers(1, 512),
    chunk=st.integers(1, 128),
    replicas=st.integers(1, 3),
    scale=st.sampled_from([1.0, 1e3, 1e6]),
)
def test_windowed_fast_path_equals_the_plain_loop(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    layout: KVLayout,
    kind: str,
    block: int,
    blocks: int,
    max_batch: int,
    max_batch_tokens: int,
    chunk: int,
    replicas: int,
    scale: float,
) -> None:
    """With sliding-window layers, whose pages come back as windows move (so a decode run
    may free blocks, and a queued head that did not fit may fit later), the fast path
    still gives exactly the plain loop's frames, bit for bit, under both schedulers."""
    assert_fast_path_is_plain(
        compiled,
        rows,
        kind,
        block,
        blocks,
        max_batch,
        max_batch_tokens,
        chunk,
        replicas,
        scale,
        layout,
    )


def test_fast_path_runs_decodes_through_finishes_and_block_growth(compiled: Compiled) -> None:
    """Long outputs in a tight cache: decode runs cross block boundaries, meet finishes,
    preemptions and admissions, and still equal the plain loop and the reference."""
    rows = [(0.002 * i, 5 + (13 * i) % 40, 30 + (7 * i) % 90) for i in range(40)]
    spec = SchedulerSpec(kind="continuous", max_batch=6)
    fast, plain = run_paths(
        compiled, requests(rows), spec, replicas=2, kv_block_tokens=4, kv_capacity_tokens=400
    )
    for name in fast:
        assert_frame_equal(fast[name], plain[name])
    assert int(fast["requests"]["preemptions"].sum()) > 0
    reqs, steps, ref = run_both(compiled, requests(rows), spec, replicas=2, block=4, capacity=400)
    assert_same(reqs, steps, ref)


@settings(max_examples=50, deadline=None)
@given(
    gaps=GAPS,
    start=STARTS,
)
def test_arrival_instants_are_the_arrival_process_instants(gaps: list[float], start: float) -> None:
    """The instants computed up front are those at which a SimPy process waiting ``t -
    now`` per arrival is woken, bit for bit, rounding included."""
    arrival = start + np.cumsum(gaps)
    assert arrival_instants(arrival).tolist() == delivered(arrival)


def delivered(arrival: np.ndarray) -> list[float]:
    """The instants at which a SimPy process waiting ``t - now`` per arrival is woken."""
    env = simpy.Environment()
    seen: list[float] = []

    def deliver() -> Generator[simpy.Event, None, None]:
        for t in arrival.tolist():
            if t > env.now:
                yield env.timeout(t - env.now)
            seen.append(env.now)

    env.process(deliver())
    env.run()
    return seen


def test_long_runs_with_preemption_match_the_reference(compiled: Compiled) -> None:
    """Thousands of requests through one small cache (the running request that arrived
    last is looked up at every preemption among many finished ones) still preempt the
    same requests at the same times as the reference, and the fast path equals the plain
    loop."""
    rows = [(0.003 * i, 3 + (11 * i) % 50, 2 + (17 * i) % 70) for i in range(2500)]
    spec = SchedulerSpec(kind="continuous", max_batch=24)
    reqs, steps, ref = run_both(compiled, requests(rows), spec, block=4, capacity=700)
    assert_same(reqs, steps, ref)
    assert int(reqs["preemptions"].sum()) > 10
    fast, plain = run_paths(
        compiled, requests(rows), spec, replicas=1, kv_block_tokens=4, kv_capacity_tokens=700
    )
    for name in fast:
        assert_frame_equal(fast[name], plain[name])
