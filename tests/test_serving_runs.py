"""The serving world's bounded-memory machinery gives the frames it gave before.

The fast path keeps less per request than the plain loop's first version did: the arrival
instants of the replicas' feeds are the arrival table itself (rewritten in place where an
instant rounds, and restored), an arrived request is a counter until it is admitted, token
counts are 32-bit where they fit, the instants, drops and requests are computed a chunk
at a time, and each request's largest token gap is built by a range-maximum table that
holds two levels at a time. Each rule below pins one of those to the plain computation.
"""

from __future__ import annotations

from contextlib import nullcontext
from unittest.mock import patch

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.fakes import FakeModel, fake_device
from tests.test_serving_reference import (
    GAPS,
    STARTS,
    ShapeCompiled,
    delivered,
    requests,
    run_paths,
)
from xpusim.engine.backend import Compiled
from xpusim.engine.frames import collect
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.plugins.workloads.serving import world
from xpusim.plugins.workloads.serving.prefix_cache import AssignedRouter
from xpusim.plugins.workloads.serving.world import _range_max, arrival_instants, simulate_serving


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    """The shape-priced fake compiled of the reference tests, for one device."""
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    system = System("runs", "fake", fake_device("chip-r", 80), 1, Parallelism(), topo)
    return ShapeCompiled(system, FakeModel(1e9))


@settings(max_examples=60, deadline=None)
@given(
    gaps=GAPS,
    start=STARTS,
    chunk=st.integers(1, 7),
)
def test_instants_found_chunk_by_chunk_are_the_arrival_process_instants(
    gaps: list[float], start: float, chunk: int
) -> None:
    """However the arrivals are cut into chunks, the rounded instants (and the runs of
    instants that follow a rounded one across a chunk's end) are those of the process."""
    arrival = start + np.cumsum(gaps)
    saved = world.REQUEST_CHUNK
    world.REQUEST_CHUNK = chunk
    try:
        got = arrival_instants(arrival).tolist()
    finally:
        world.REQUEST_CHUNK = saved
    assert got == delivered(arrival)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
    data=st.data(),
)
def test_range_maximum_is_the_maximum_of_the_range(
    values: list[float], data: st.DataObject
) -> None:
    """Every query of the two-level sparse table is the maximum of its window."""
    n = len(values)
    pairs = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40)
    )
    lo = np.array([min(p) for p in pairs], dtype=np.int64)
    hi = np.array([max(p) for p in pairs], dtype=np.int64)
    v = np.array(values)
    got = _range_max(v, lo, hi)
    want = [max(values[a : b + 1]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    assert got.tolist() == want


def test_token_counts_past_32_bits_are_kept_exactly(compiled: Compiled) -> None:
    """A prompt of three billion tokens does not fit a 32-bit count: the table keeps 64-bit
    counts, the request is dropped with its exact need, and the frame shows its exact
    prompt."""
    frame = requests([(0.0, 10, 5), (0.01, 3_000_000_000, 4), (0.02, 20, 3)])
    res = simulate_serving(
        frame, compiled, system="s", replicas=1, devices_per_replica=1, kv_capacity_tokens=4096
    )
    req = collect(res.frames["requests"]).sort("request_id")
    assert req["prompt_tokens"].to_list() == [10, 3_000_000_000, 20]
    assert req["status"].to_list() == ["ok", "dropped", "ok"]
    assert "3000000003 KV tokens" in req["reason"][1]


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill"])
def test_chunked_and_spilled_frames_equal_the_whole_ones(
    compiled: Compiled, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With requests built three at a time, frames spilled every 17 rows and a small
    cache that preempts, the fast path and the plain loop give the frames of a run built
    whole in memory."""
    rows = [(0.004 * i, 3 + (13 * i) % 90, 1 + (7 * i) % 40) for i in range(300)]
    rows.append((1.3, 5000, 4))  # dropped: needs more than the cache holds
    spec = SchedulerSpec(kind=kind, max_batch=12)
    args = {"replicas": 2, "kv_block_tokens": 4, "kv_capacity_tokens": 600}
    whole, _ = run_paths(compiled, requests(rows), spec, **args)
    assert int(whole["requests"]["preemptions"].sum()) > 0
    monkeypatch.setattr(world, "REQUEST_CHUNK", 3)
    fast, plain = run_paths(compiled, requests(rows), spec, spill_rows=17, **args)
    for name in whole:
        assert_frame_equal(fast[name], whole[name])
        assert_frame_equal(plain[name], whole[name])


def test_replicas_past_16_bits_are_indexed(compiled: Compiled) -> None:
    """A world of more replicas than a 16-bit index holds still names each request's
    replica (round-robin: the i-th request on replica i)."""
    rows = [(0.001 * i, 4, 2) for i in range(5)]
    res = simulate_serving(
        requests(rows), compiled, system="s", replicas=(1 << 15) + 1, devices_per_replica=1
    )
    req = collect(res.frames["requests"]).sort("request_id")
    assert req["replica"].to_list() == [0, 1, 2, 3, 4]
    assert req.schema["replica"] == pl.Int32


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.05)),
            st.integers(1, 200),
            st.integers(1, 60),
        ),
        min_size=1,
        max_size=40,
    ),
    picks=st.lists(st.integers(0, 2), min_size=40, max_size=40),
    kind=st.sampled_from(["continuous", "chunked-prefill"]),
    blocks=st.integers(8, 200),
)
def test_cache_aware_assignment_takes_the_fast_path(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    picks: list[int],
    kind: str,
    blocks: int,
) -> None:
    """A router whose choices are planned before the run (the prefix cache's cache-aware
    assignment: any replica for each routed request, some replicas given none, requests
    too long for the cache dropped and left out of the plan) feeds each replica its
    planned requests, and every frame equals the plain loop's, which asks the router at
    each arrival."""
    arrivals = np.cumsum([r[0] for r in rows])
    frame = requests([(float(a), p, o) for a, (_, p, o) in zip(arrivals, rows, strict=True)])
    routed = sum(1 for _, p, o in rows if -(-(p + o - 1) // 4) <= blocks)
    router = AssignedRouter(picks[:routed])
    spec = SchedulerSpec(kind=kind, max_batch=6, max_batch_tokens=256, chunk=64)
    args = {"replicas": 3, "kv_block_tokens": 4, "kv_capacity_tokens": blocks * 4}
    out = {}
    for fast in (True, False):
        # the fast path routes ahead: no arrival process may ask the router
        with patch.object(world, "_arrivals", None) if fast else nullcontext():
            res = simulate_serving(
                frame,
                compiled,
                system="s",
                devices_per_replica=1,
                scheduler=spec,
                router=router,
                fast=fast,
                **args,
            )
        out[fast] = {k: collect(v) for k, v in res.frames.items()}
    assume(not set(frame["arrival_s"].to_list()) & set(out[False]["steps"]["end_s"].to_list()))
    for name in out[True]:
        assert_frame_equal(out[True][name], out[False][name])
    got = out[True]["requests"].filter(pl.col("status") == "ok")["replica"].to_list()
    assert got == picks[:routed]


def test_a_plan_of_the_wrong_length_is_refused(compiled: Compiled) -> None:
    """A plan that does not give one replica per routed request is a router's error,
    said as such rather than followed."""
    with pytest.raises(ValueError, match="planned 1 choices for 3 routed"):
        simulate_serving(
            requests([(0.0, 4, 4)] * 3),
            compiled,
            system="s",
            replicas=2,
            devices_per_replica=1,
            router=AssignedRouter([0]),
            kv_capacity_tokens=4096,
        )
