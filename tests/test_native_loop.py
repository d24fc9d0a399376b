"""The compiled fast path of the iteration loop against the Python loop it transliterates.

Both loops run the same world; every frame (requests, steps, device timeline, token
gaps) must come out identical, float for float, on the settings the compiled loop
serves: whole-prompt and chunked prefills, a KV cache small enough to preempt, a batch
cap that queues, several replicas under planned routers.
"""

from __future__ import annotations

import traceback
from array import array

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.test_serving import compiled, load, run
from xpusim.engine.frames import collect
from xpusim.engine.policies import SchedulerSpec
from xpusim.plugins.workloads.serving import steplog, world
from xpusim.plugins.workloads.serving.cluster import CostTable, Feed, Replica, RequestTable
from xpusim.plugins.workloads.serving.kvcache import KVLayout
from xpusim.plugins.workloads.serving.schedulers import iteration, native
from xpusim.plugins.workloads.serving.world import simulate_serving

CASES = {
    "continuous": {"kind": "continuous"},
    "continuous-preempting": {"kind": "continuous", "kv": 3_000},
    "continuous-batch-cap": {"kind": "continuous", "max_batch": 4},
    "chunked": {"kind": "chunked-prefill", "chunk": 256},
    "chunked-preempting": {"kind": "chunked-prefill", "chunk": 128, "kv": 2_500},
    "chunked-3-replicas": {"kind": "chunked-prefill", "chunk": 512, "replicas": 3},
    "continuous-2-replicas-preempting": {"kind": "continuous", "replicas": 2, "kv": 3_000},
    # requests too long for the cache are dropped: the feeds are id tables, not strides
    "chunked-2-replicas-dropping": {"kind": "chunked-prefill", "replicas": 2, "kv": 1_000},
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per replica process the compiled loop ran, in this test."""
    ran: list[int] = []
    real = native.iterative_native

    def counted(*a: object, **k: object):  # type: ignore[no-untyped-def]
        ran.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(native, "iterative_native", counted)
    return ran


def frames_of(loop: str, monkeypatch: pytest.MonkeyPatch, frame: pl.DataFrame, **args: object):
    monkeypatch.setenv(iteration.LOOP_ENV, loop)
    res = run(frame, **args)  # type: ignore[arg-type]
    return {name: collect(f) for name, f in res.frames.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_loop_gives_the_python_loops_frames(
    case: str, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    args = CASES[case]
    frame = load(400, rate="60/s", prompt=300, out=80, seed=11)
    got = frames_of("native", monkeypatch, frame, **args)
    assert calls, "the compiled loop did not run"
    calls.clear()
    want = frames_of("python", monkeypatch, frame, **args)
    assert not calls, "the Python loop was asked for and the compiled one ran"
    assert want.keys() == got.keys()
    for name in want:
        assert_frame_equal(want[name], got[name], check_exact=True)
    req = want["requests"]
    # the case exercises what its name says
    assert (req["status"] == "dropped").any() == ("dropping" in case)
    if "preempting" in case:
        assert int(req["preemptions"].sum()) > 0


def test_small_worlds_stay_in_python_and_large_ones_compile(
    monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    monkeypatch.delenv(iteration.LOOP_ENV, raising=False)
    frame = load(120, rate="30/s")
    monkeypatch.setattr(native, "warm", False)
    monkeypatch.setattr(iteration, "NATIVE_MIN_REQUESTS", 121)
    run(frame)
    assert not calls
    monkeypatch.setattr(iteration, "NATIVE_MIN_REQUESTS", 120)
    run(frame)
    assert calls == [1]
    # once it has run here, a smaller world than the cold threshold compiles too
    monkeypatch.setattr(iteration, "NATIVE_MIN_REQUESTS", 10_000)
    monkeypatch.setattr(iteration, "NATIVE_MIN_REQUESTS_WARM", 121)
    run(frame)
    assert calls == [1]
    monkeypatch.setattr(iteration, "NATIVE_MIN_REQUESTS_WARM", 120)
    run(frame)
    assert calls == [1, 1]


def test_windowed_layouts_and_plain_paths_are_not_served() -> None:
    """The compiled loop serves a replica with its own feed and no window only."""
    req = RequestTable(array("d", [0.0]), [10], [5])
    fed = Replica(0, 100, 16)
    assert not native.serves(fed, req)  # no feed: routed one by one
    fed.feed = Feed(array("i", [0]), req.arrival)  # type: ignore[arg-type]
    assert native.serves(fed, req)
    windowed = Replica(0, 100, 16, KVLayout(full_layers=2, window_layers=2, window=64))
    windowed.feed = fed.feed
    assert not native.serves(windowed, req)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 150),
    rate=st.sampled_from(["5/s", "40/s", "400/s"]),
    prompt=st.sampled_from([20.0, 300.0, 1500.0]),
    out=st.sampled_from([2.0, 40.0, 200.0]),
    kind=st.sampled_from(["continuous", "chunked-prefill"]),
    kv=st.sampled_from([4_500, 20_000, 200_000]),
    max_batch=st.sampled_from([1, 3, 64]),
    chunk=st.sampled_from([16, 200, 2048]),
    replicas=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_any_load_gives_the_same_frames_on_both_loops(
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    rate: str,
    prompt: float,
    out: float,
    kind: str,
    kv: int,
    max_batch: int,
    chunk: int,
    replicas: int,
    seed: int,
) -> None:
    frame = load(n, rate=rate, prompt=prompt, out=out, seed=seed)
    args: dict[str, object] = {"kind": kind, "kv": kv, "replicas": replicas}
    args["max_batch"] = max_batch
    if kind == "chunked-prefill":
        args["chunk"] = chunk
    want = frames_of("python", monkeypatch, frame, **args)
    got = frames_of("native", monkeypatch, frame, **args)
    for name in want:
        assert_frame_equal(want[name], got[name], check_exact=True)


@pytest.mark.parametrize("loop", ["python", "native"])
def test_step_times_dropped_after_a_spill_are_read_back(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the step rows spilled every 20 rows and only the last 3 steps' times kept,
    preemptions whose segments began earlier read the spilled times back, and every frame
    equals the run that kept everything in memory."""
    monkeypatch.setenv(iteration.LOOP_ENV, loop)
    frame = load(300, rate="60/s", prompt=300, out=80, seed=5)

    def frames(**args: object):  # type: ignore[no-untyped-def]
        res = simulate_serving(
            frame,
            compiled(2),
            system="s",
            replicas=2,
            devices_per_replica=1,
            scheduler=SchedulerSpec(kind="continuous"),
            kv_block_tokens=16,
            kv_capacity_tokens=3_000,
            **args,  # type: ignore[arg-type]
        )
        return {name: collect(f) for name, f in res.frames.items()}

    whole = frames()
    assert int(whole["requests"]["preemptions"].sum()) > 0
    reads: list[tuple[int, int]] = []
    real = world._spilled_gap

    def counted(buf, a: int, b: int) -> float:  # type: ignore[no-untyped-def]
        reads.append((a, b))
        return real(buf, a, b)

    monkeypatch.setattr(world, "_spilled_gap", counted)
    monkeypatch.setattr(steplog, "KEEP_TIMES", 3)
    # the compiled loop hands its rows to the log (which spills them) every few steps
    monkeypatch.setattr(native, "SYNC_ITERATIONS", 8)
    monkeypatch.setattr(native, "SYNC_IDLES", 1)
    spilled = frames(spill_rows=20)
    assert reads, "no preemption reached back past the times held"
    for name in whole:
        assert_frame_equal(whole[name], spilled[name], check_exact=True)


class _OwnTable(CostTable):
    """Step prices that are not exactly a :class:`CostTable`: the compiled loop calls
    back into Python for every step shape new to the run."""


@pytest.mark.parametrize("pricing", ["grid", "direct", "called-back"])
def test_every_way_of_pricing_a_new_shape_gives_the_python_loops_frames(
    pricing: str, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    """Shapes new to the run priced between grid corners, on a grid as fine as the keys,
    and by the world's step prices called back from the compiled loop."""
    sched: dict[str, object] = {"kind": "continuous", "kv": 3_000}
    if pricing == "direct":
        sched.update(shape_bits=4, grid_bits=4)
    if pricing == "called-back":
        monkeypatch.setattr(world, "CostTable", _OwnTable)
    frame = load(300, rate="60/s", prompt=300, out=80, seed=7)
    got = frames_of("native", monkeypatch, frame, **sched)
    assert calls, "the compiled loop did not run"
    want = frames_of("python", monkeypatch, frame, **sched)
    for name in want:
        assert_frame_equal(want[name], got[name], check_exact=True)


@pytest.mark.parametrize("pricing", ["grid", "called-back"])
def test_a_pricing_error_inside_the_compiled_loop_is_raised_as_itself(
    pricing: str, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    """An exception the backend raises while the compiled loop prices a step reaches the
    world's caller as it does from the Python loop (its type and message, the backend's
    frame in its traceback), and the loop's registry of calls is left empty."""
    if pricing == "called-back":
        monkeypatch.setattr(world, "CostTable", _OwnTable)
    priced: list[int] = []

    def refuse(self: object, shape: object) -> None:
        priced.append(1)
        if len(priced) > 5:
            raise ValueError(f"no price for {shape}")

    real = type(compiled()).cost

    def cost(self, shape):  # type: ignore[no-untyped-def]
        refuse(self, shape)
        return real(self, shape)

    monkeypatch.setattr(type(compiled()), "cost", cost)
    frame = load(300, rate="60/s", prompt=300, out=80, seed=7)
    with pytest.raises(ValueError, match="no price for") as info:
        frames_of("native", monkeypatch, frame)
    assert calls, "the compiled loop did not run"
    # SimPy raises a copy of a process's exception, caused by the original
    chain = [info.value, *([info.value.__cause__] if info.value.__cause__ else [])]
    frames = [f.name for exc in chain for f in traceback.extract_tb(exc.__traceback__)]
    assert "refuse" in frames
    assert not native._CALLS
