"""vLLM V0's default scheduler with multi-step rounds (``prefill-first``, ``steps``) and
asynchronous output processing (``async_output``): the fast world against its plain
reference, the shape of a round, the token gaps a streaming client sees, outputs a step
late and the extra run of a finished request, the host time a round pays once, and the
refusal of ``steps`` and ``async_output`` elsewhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeModel, fake_device
from tests.test_serving_reference import (
    LAYOUTS,
    WORLDS,
    ShapeCompiled,
    assert_same,
    both_worlds,
    close,
    from_gaps,
    ordered,
    requests,
)
from xpusim.engine.backend import Compiled, Cost, Fit
from xpusim.engine.errors import ScenarioError
from xpusim.engine.frames import collect
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import build_host
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.scenario import resolve
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.yamlsrc import Source
from xpusim.plugins.workloads.serving.kvcache import KVLayout
from xpusim.plugins.workloads.serving.reference import ReferenceResult
from xpusim.plugins.workloads.serving.schedulers import builtin_scheduler
from xpusim.plugins.workloads.serving.schedulers.prefill_first import PrefillFirstScheduler
from xpusim.plugins.workloads.serving.stacks import StackCompiled, load_profile
from xpusim.plugins.workloads.serving.world import simulate_serving

KIND = "prefill-first"


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    """The reference tests' shape-priced fake, for one device."""
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    system = System("ref", "fake", fake_device("chip-b", 80), 1, Parallelism(), topo)
    return ShapeCompiled(system, FakeModel(1e9))


def gaps_of(ref: ReferenceResult) -> Counter[float]:
    """Every gap between two emissions of a request in the reference, rounded for
    comparison as a multiset."""
    out: Counter[float] = Counter()
    for r in ref.requests:
        for a, b in zip(r.emissions, r.emissions[1:], strict=False):
            out[round(b - a, 12)] += 1
    return out


def assert_gaps(fast: dict[str, pl.DataFrame], ref: ReferenceResult) -> None:
    """The fast world's ``tbt`` frame (frames collected) is the reference's gaps between
    emissions, each request's largest gap its ``tbt_max_s``."""
    tbt = fast["tbt"]
    got: Counter[float] = Counter()
    for gap, n in zip(tbt["gap_s"].to_list(), tbt["tokens"].to_list(), strict=True):
        got[round(gap, 12)] += n
    assert got == gaps_of(ref)
    reqs = fast["requests"].sort("request_id")
    for row, want in zip(reqs.iter_rows(named=True), ref.requests, strict=True):
        if len(want.emissions) > 1:
            big = max(b - a for a, b in zip(want.emissions, want.emissions[1:], strict=False))
            assert close(row["tbt_max_s"], big), (row["request_id"], row["tbt_max_s"], big)


def run(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    spec: SchedulerSpec,
    **kw: object,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """The fast world's frames, requests by id and steps in order."""
    res = simulate_serving(
        requests(rows),
        compiled,
        system="s",
        replicas=1,
        devices_per_replica=1,
        scheduler=spec,
        kv_capacity_tokens=100_000,
        **kw,  # type: ignore[arg-type]
    )
    frames = {k: collect(v) for k, v in res.frames.items()}
    return (frames, *ordered(frames))


@settings(max_examples=60, deadline=None)
@given(
    **WORLDS,
    steps=st.sampled_from([1, 2, 3, 8]),
    lag=st.booleans(),
    layout=st.one_of(st.none(), LAYOUTS),
)
def test_fast_world_matches_reference(
    compiled: Compiled,
    rows: list[tuple[float, int, int]],
    block: int,
    blocks: int,
    max_batch: int,
    max_batch_tokens: int,
    replicas: int,
    router: str,
    steps: int,
    lag: bool,
    layout: KVLayout | None,
) -> None:
    """On any small workload (tight caches that preempt and drop, sliding windows or
    none, one to eight steps a round, outputs streamed at once or a step late) the scheduler gives every request the reference's
    replica, times and preemptions, runs the same iterations, and reports the gaps
    between the reference's emissions as its token gaps."""
    frame = from_gaps(rows)
    spec = SchedulerSpec(
        kind=KIND,
        max_batch=max_batch,
        max_batch_tokens=max_batch_tokens,
        steps=steps,
        async_output=lag,
    )
    frames, ref = both_worlds(
        compiled,
        frame,
        spec,
        replicas=replicas,
        router=router,
        block=block,
        capacity=blocks * block,
        layout=layout,
    )
    reqs, steps_f = ordered(frames)
    assume(not set(frame["arrival_s"].to_list()) & set(steps_f["end_s"].to_list()))
    assert_same(reqs, steps_f, ref)
    assert_gaps(frames, ref)


def test_a_rounds_lookahead_preempts_the_newest(compiled: Compiled) -> None:
    """In a 12-block cache of 4-token blocks, rounds of 4 steps take their blocks ahead:
    the newest running request is preempted (recompute) when they do not fit, never more
    blocks are held than the cache has, and the reference agrees on every time."""
    rows = [(0.0, 8, 20), (0.001, 8, 3), (0.002, 30, 12), (0.05, 5, 9), (0.0501, 16, 25)]
    spec = SchedulerSpec(kind=KIND, steps=4, max_batch=8)
    frames, ref = both_worlds(compiled, requests(rows), spec, block=4, capacity=48)
    reqs, steps = ordered(frames)
    assert_same(reqs, steps, ref)
    assert_gaps(frames, ref)
    assert reqs["preemptions"].to_list()[0] == 0  # the oldest is never the victim
    assert int(reqs["preemptions"].sum()) > 0
    assert max(steps["kv_blocks_used"].to_list()) <= 12


def test_a_round_streams_its_tokens_at_its_end(compiled: Compiled) -> None:
    """One request of 9 output tokens under rounds of 4 steps: its first token ends the
    prefill, then two rounds of 4 steps bring 4 tokens each; the client sees two gaps,
    each a whole round, and TPOT is their sum over the 8 tokens after the first."""
    frames, reqs, steps = run(compiled, [(0.0, 8, 9)], SchedulerSpec(kind=KIND, steps=4))
    assert steps["decode_tokens"].to_list() == [0] + [1] * 8
    ends = steps["end_s"].to_list()
    row = reqs.row(0, named=True)
    assert row["first_token_s"] == ends[0]
    assert row["finish_s"] == ends[8]
    rounds = [ends[4] - ends[0], ends[8] - ends[4]]
    assert sorted(collect(frames["tbt"])["gap_s"].to_list()) == pytest.approx(sorted(rounds))
    assert row["tbt_max_s"] == pytest.approx(max(rounds))
    assert row["tbt_mean_s"] == pytest.approx(sum(rounds) / 8)


def test_a_request_ending_inside_a_round_runs_it_to_its_end(compiled: Compiled) -> None:
    """Outputs of 2 and 9 tokens in one round of 8: the short request computes all 8
    steps (the batch is fixed until the scheduler runs again), keeps one token of them,
    and finishes at the round's end with the long one's first chunk."""
    _, reqs, steps = run(compiled, [(0.0, 8, 2), (0.0, 8, 9)], SchedulerSpec(kind=KIND, steps=8))
    assert steps["batch"].to_list() == [2] + [2] * 8
    assert steps["decode_tokens"].to_list() == [0, 2] + [1] * 7
    short, long_ = reqs.row(0, named=True), reqs.row(1, named=True)
    assert short["finish_s"] == steps["end_s"][8]
    assert long_["finish_s"] == steps["end_s"][8]  # 1 + 8 tokens: done in the first round


def test_a_prompt_arriving_mid_round_waits_for_the_round(compiled: Compiled) -> None:
    """A request arriving during another's decode round is prefilled only when the round
    ends: its first token comes after the rest of the round plus its prefill, and the
    running request's next chunk after that prefill too."""
    rows = [(0.0, 8, 30), (0.01, 8, 4)]
    _, reqs, steps = run(compiled, rows, SchedulerSpec(kind=KIND, steps=8))
    ends = steps["end_s"].to_list()
    first = reqs.row(1, named=True)["first_token_s"]
    round_end = ends[8]  # the prefill, then the first round's 8 steps
    assert ends[0] < 0.01 < round_end
    assert steps["prefill_tokens"][9] == 8 and steps["decode_tokens"][9] == 0
    assert first == ends[9]


def test_one_step_is_vllm_v0s_scheduler_with_prompts_alone(compiled: Compiled) -> None:
    """With ``steps: 1`` a prompt never shares an iteration with decodes: the running
    request gets no token in the iteration that prefills the newcomer, so its gap across
    it is that iteration plus the next decode."""
    rows = [(0.0, 8, 6), (0.008, 8, 3)]
    frames, _, steps = run(compiled, rows, SchedulerSpec(kind=KIND))
    pf, dec = steps["prefill_tokens"].to_list(), steps["decode_tokens"].to_list()
    assert all(p == 0 or d == 0 for p, d in zip(pf, dec, strict=True))
    second = next(i for i in range(1, len(pf)) if pf[i])  # the newcomer's prefill
    starts, ends = steps["start_s"].to_list(), steps["end_s"].to_list()
    gap = ends[second + 1] - starts[second]
    assert round(gap, 12) in {round(g, 12) for g in collect(frames["tbt"])["gap_s"].to_list()}


def test_async_output_streams_each_iteration_at_the_next_ones_end(compiled: Compiled) -> None:
    """With ``async_output`` one request of 9 tokens under rounds of 4 steps receives its
    first token at the end of the first decode step, each round's chunk at the end of the
    next round's first step, and, its last token made at a round's last step, runs one
    more round that keeps no token: 13 iterations where streaming at once takes 9."""
    spec = SchedulerSpec(kind=KIND, steps=4, async_output=True)
    frames, reqs, steps = run(compiled, [(0.0, 8, 9)], spec)
    assert steps["decode_tokens"].to_list() == [0] + [1] * 8 + [0] * 4
    assert steps["batch"].to_list() == [1] * 13
    ends = steps["end_s"].to_list()
    row = reqs.row(0, named=True)
    assert row["first_token_s"] == ends[1]
    assert row["finish_s"] == ends[9]
    chunks = [ends[5] - ends[1], ends[9] - ends[5]]
    assert sorted(collect(frames["tbt"])["gap_s"].to_list()) == pytest.approx(sorted(chunks))


def test_async_output_one_step_runs_a_finished_request_once_more(compiled: Compiled) -> None:
    """With one step a round, a request of 3 tokens gets each a step late and decodes
    once more after its last (vLLM's extra decode run), which keeps no token."""
    spec = SchedulerSpec(kind=KIND, async_output=True)
    _, reqs, steps = run(compiled, [(0.0, 8, 3)], spec)
    assert steps["decode_tokens"].to_list() == [0, 1, 1, 0]
    ends = steps["end_s"].to_list()
    row = reqs.row(0, named=True)
    assert (row["first_token_s"], row["finish_s"]) == (ends[1], ends[3])


def test_async_output_a_request_done_inside_a_round_runs_no_more(compiled: Compiled) -> None:
    """Outputs of 2 and 9 tokens in rounds of 8: the short one, done inside the first
    round, leaves the batch at its end; the long one, done at its last step, runs one
    more round alone. Both receive their tokens at the end of that round's first step."""
    spec = SchedulerSpec(kind=KIND, steps=8, async_output=True)
    _, reqs, steps = run(compiled, [(0.0, 8, 2), (0.0, 8, 9)], spec)
    assert steps["batch"].to_list() == [2] * 9 + [1] * 8
    assert steps["decode_tokens"].to_list() == [0, 2] + [1] * 7 + [0] * 8
    ends = steps["end_s"].to_list()
    assert reqs["finish_s"].to_list() == [ends[9], ends[9]]
    assert reqs["first_token_s"].to_list() == [ends[1], ends[1]]


def test_async_output_a_prefill_carries_the_previous_outputs(compiled: Compiled) -> None:
    """A request arriving during another's prefill is prefilled next: the first request's
    first token streams at the end of that second prefill, the iteration after its own."""
    spec = SchedulerSpec(kind=KIND, async_output=True)
    _, reqs, steps = run(compiled, [(0.0, 8, 4), (0.001, 8, 4)], spec)
    assert steps["prefill_tokens"].to_list()[:2] == [8, 8]
    ends = steps["end_s"].to_list()
    assert reqs["first_token_s"].to_list() == [ends[1], ends[2]]


class HostlessCompiled(Compiled):
    """A fake whose every step takes 10 ms of GPU time."""

    def _cost(self, shape: Shape) -> Cost:
        return Cost(0.01, 1.0, {"compute": 0.01})

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        return Fit(True, 0.0, 1.0)


def test_a_round_pays_the_host_time_once(compiled: Compiled) -> None:
    """Under a stack with 4 ms of host time on the critical path, a decode step of a
    10-step round carries 0.4 ms of it and a prefill all 4 ms."""
    prof = load_profile("vllm-0.6")
    inner = HostlessCompiled(compiled.system, compiled.model)
    host = prof.host_seconds(4)
    decode = Shape(Phase.DECODE, batch=4, tokens=1, context=100)
    prefill = Shape(Phase.PREFILL, batch=1, tokens=100)
    one, ten = StackCompiled(inner, prof), StackCompiled(inner, prof, steps=10)
    assert one.cost(decode).seconds == pytest.approx(0.01 + host)
    assert ten.cost(decode).seconds == pytest.approx(0.01 + host / 10)
    assert ten.cost(prefill).seconds == pytest.approx(one.cost(prefill).seconds)


def test_the_scheduler_is_registered() -> None:
    """The built-in lookup finds it, and it says it runs multi-step rounds and models
    asynchronous output processing."""
    sched = builtin_scheduler(KIND)
    assert isinstance(sched, PrefillFirstScheduler) and sched.multi_step and sched.async_output


def scenario(scheduler: dict[str, object]) -> dict[str, object]:
    """A small serving scenario with the given scheduler block."""
    return {
        "name": "steps",
        "model": {"family": "llama", "preset": "llama-3-8b"},
        "workload": {
            "kind": "serving",
            "arrivals": {
                "process": "poisson",
                "rate": "2/s",
                "count": 20,
                "prompt_tokens": {"dist": "constant", "value": 64},
                "output_tokens": {"dist": "constant", "value": 16},
            },
            "scheduler": scheduler,
        },
        "systems": [{"name": "h", "backend": "gpu", "device": "h100-sxm", "count": 1}],
    }


@pytest.mark.parametrize(
    ("field", "block", "match"),
    [
        ("steps", {"steps": 4}, "prefill-first"),
        ("async_output", {"async_output": True}, "async_output"),
    ],
)
def test_a_field_continuous_does_not_model_is_refused(
    field: str, block: dict[str, object], match: str
) -> None:
    """``steps`` or ``async_output`` on ``continuous`` would be accepted and ignored: the
    scenario is refused at its place, naming what takes it, and so is a spec in code;
    ``prefill-first`` takes either."""
    host = build_host()
    with pytest.raises(ScenarioError, match=rf"workload\.scheduler.*{match}"):
        resolve(scenario({"kind": "continuous", **block}), Source("t"), host, Path("."))
    sc = resolve(scenario({"kind": KIND, **block}), Source("t"), host, Path("."))
    assert getattr(sc.workload_config.scheduler, field) == block[field]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=match):
        simulate_serving(
            requests([(0.0, 4, 4)]),
            HostlessCompiled(*_system_model()),
            system="s",
            replicas=1,
            devices_per_replica=1,
            scheduler=SchedulerSpec(kind="continuous", **block),  # type: ignore[arg-type]
            kv_capacity_tokens=1024,
        )


def _system_model() -> tuple[System, FakeModel]:
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    return System("ref", "fake", fake_device("chip-b", 80), 1, Parallelism(), topo), FakeModel(1e9)
