"""TensorRT-LLM's guaranteed-no-evict admission (``guaranteed-no-evict``) against vLLM's
recompute preemption (``continuous``), in the fast world and its plain reference."""

from __future__ import annotations

import pytest

from tests.fakes import FakeModel, fake_device
from tests.test_serving_reference import ShapeCompiled, assert_same, requests, run_both
from xpusim.engine.backend import Compiled
from xpusim.engine.policies import SchedulerSpec, check_options
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.plugins.workloads.serving.schedulers import builtin_scheduler
from xpusim.plugins.workloads.serving.schedulers.no_evict import (
    GuaranteedNoEvictScheduler,
    chunk_tokens,
    reserved_blocks,
)
from xpusim.plugins.workloads.serving.stacks import load_profile

NO_EVICT = "guaranteed-no-evict"


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    """The reference tests' shape-priced fake, for one device."""
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    system = System("ref", "fake", fake_device("chip-b", 80), 1, Parallelism(), topo)
    return ShapeCompiled(system, FakeModel(1e9))


def test_reservation_is_the_whole_sequence() -> None:
    """A request reserves the blocks of its prompt plus output minus one tokens."""
    assert reserved_blocks(8, 20, 4) == 7  # 27 tokens
    assert reserved_blocks(16, 1, 16) == 1
    assert reserved_blocks(16, 2, 16) == 2


def test_where_continuous_preempts_no_evict_does_not(compiled: Compiled) -> None:
    """Four requests whose decodes outgrow a 12-block cache: vLLM's policy admits all four
    and preempts; guaranteed-no-evict admits two (7 blocks each reserved would be 28),
    runs them to the end and never preempts; both worlds agree on every time."""
    rows = [(0.0, 8, 20), (0.0, 8, 20), (0.0, 8, 20), (0.0, 8, 20)]
    out = {}
    for kind in ("continuous", NO_EVICT):
        spec = SchedulerSpec(kind=kind, max_batch=8)
        reqs, steps, ref = run_both(compiled, requests(rows), spec, block=4, capacity=48)
        assert_same(reqs, steps, ref)
        out[kind] = (reqs, steps, ref)
    assert sum(r.preemptions for r in out["continuous"][2].requests) > 0
    reqs, steps, ref = out[NO_EVICT]
    assert all(r.preemptions == 0 for r in ref.requests)
    assert int(reqs["preemptions"].sum()) == 0
    assert steps["batch"][0] == 1  # 7 reserved of 12: the second (7 more) waits
    assert max(steps["kv_blocks_used"].to_list()) <= 12
    first, second = ref.requests[0], ref.requests[1]
    assert first.finish_s is not None and second.first_scheduled_s == first.finish_s


def test_admission_waits_for_a_reservation_not_a_watermark(compiled: Compiled) -> None:
    """With 100 one-token blocks, a 50+10 request reserves 59 blocks: a 41+1 request (41)
    fits beside it and joins at once (no watermark), a 42+1 one waits for the first to
    finish."""
    spec = SchedulerSpec(kind=NO_EVICT)
    for prompt, joins in ((41, True), (42, False)):
        rows = [(0.0, 50, 10), (0.001, prompt, 1)]
        reqs, steps, ref = run_both(compiled, requests(rows), spec, block=1, capacity=100)
        assert_same(reqs, steps, ref)
        first, second = ref.requests
        assert (second.first_scheduled_s == first.finish_s) is not joins


def test_the_scheduler_is_registered_and_tensorrt_llm_selects_it() -> None:
    """The built-in lookup finds it by name, and the in-flight-batching TensorRT-LLM
    profile runs it by default."""
    assert isinstance(builtin_scheduler(NO_EVICT), GuaranteedNoEvictScheduler)
    assert load_profile("tensorrt-llm").scheduler["kind"] == NO_EVICT


@pytest.mark.parametrize("replicas", [1, 3])
def test_long_bursts_match_the_reference(compiled: Compiled, replicas: int) -> None:
    """A burst of varied requests over a tight cache on several replicas: no preemption,
    and both worlds give the same times and iterations."""
    rows = [(0.0005 * (i % 7), 5 + (i * 37) % 90, 1 + (i * 13) % 40) for i in range(60)]
    spec = SchedulerSpec(kind=NO_EVICT, max_batch=12, max_batch_tokens=256)
    reqs, steps, ref = run_both(
        compiled, requests(rows), spec, replicas=replicas, block=8, capacity=8 * 40
    )
    assert_same(reqs, steps, ref)
    assert int(reqs["preemptions"].sum()) == 0


def test_chunk_sizes_fill_the_budget_in_whole_blocks() -> None:
    """A prompt that fits the budget left is prefilled whole; one that does not takes the
    budget rounded down to whole blocks, which may be none, unless it would be the
    iteration's only work."""
    assert chunk_tokens(100, 300, 64) == 100
    assert chunk_tokens(2048, 1000, 64) == 960
    assert chunk_tokens(2048, 63, 64) == 0
    assert chunk_tokens(2048, -5, 64) == 0
    assert chunk_tokens(2048, 63, 64, alone=True) == 63
    assert chunk_tokens(2048, -5, 64, alone=True) == 0


def test_chunked_context_keeps_the_budget_and_splits_the_prompt(compiled: Compiled) -> None:
    """A 100-token prompt under a 40-token budget with 8-token blocks: chunked, it is
    prefilled as 40, 40 and 20 tokens over three iterations (each priced over the tokens
    already cached) and its first token comes at the end of the third; unchunked, it runs
    whole in one iteration above the budget. A second request admitted behind it takes
    its budget left in whole blocks. Both worlds agree on every time and iteration."""
    rows = [(0.0, 100, 3), (0.0, 30, 2)]
    chunked = SchedulerSpec(kind=NO_EVICT, max_batch=4, max_batch_tokens=40, chunked_context=True)
    reqs, steps, ref = run_both(compiled, requests(rows), chunked, block=8, capacity=8 * 40)
    assert_same(reqs, steps, ref)
    assert steps["prefill_tokens"].to_list()[:4] == [40, 40, 20 + 16, 14]
    assert steps["decode_tokens"].to_list()[:4] == [0, 0, 0, 1]
    first, second = ref.requests
    assert first.first_token_s == steps["end_s"][2]
    assert second.first_scheduled_s == steps["start_s"][2]  # its first 16 tokens beside
    assert second.first_token_s == steps["end_s"][3]
    plain = SchedulerSpec(kind=NO_EVICT, max_batch=4, max_batch_tokens=40)
    reqs, steps, ref = run_both(compiled, requests(rows), plain, block=8, capacity=8 * 40)
    assert_same(reqs, steps, ref)
    assert steps["prefill_tokens"][0] == 100  # the first prompt of an iteration may exceed


def test_a_budget_below_one_block_still_progresses(compiled: Compiled) -> None:
    """With a 5-token budget and 8-token blocks no chunk rounds to a whole block; an
    iteration that would run nothing takes the budget as it is, so a 12-token prompt is
    prefilled as 5, 5 and 2 tokens rather than waiting for ever."""
    spec = SchedulerSpec(kind=NO_EVICT, max_batch=2, max_batch_tokens=5, chunked_context=True)
    reqs, steps, ref = run_both(compiled, requests([(0.0, 12, 2)]), spec, block=8, capacity=64)
    assert_same(reqs, steps, ref)
    assert steps["prefill_tokens"].to_list() == [5, 5, 2, 0]


def test_only_no_evict_takes_chunked_context() -> None:
    """Another scheduler asked for chunked context refuses it, naming the field and the
    kinds that chunk, rather than ignoring it."""
    spec = SchedulerSpec(kind="continuous", chunked_context=True)
    with pytest.raises(ValueError, match="chunked_context"):
        check_options(spec, builtin_scheduler("continuous"))
    check_options(SchedulerSpec(kind=NO_EVICT, chunked_context=True), builtin_scheduler(NO_EVICT))
