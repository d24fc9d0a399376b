"""Multi-LoRA serving: adapter sizes, the extra work per step, slot swapping, and a run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from xpusim.engine.backend import Compiled
from xpusim.engine.errors import ScenarioError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.lora import Lora, LoraCompiled, adapter_params, replay

from .technique_runs import run_text
from .test_serving import compiled


def lora(**kw: object) -> Lora:
    return Lora.model_validate(
        {"adapters": 4, "rank": 8, "gpu_slots": 2, "host_link": "1 GB/s", **kw}
    )


def test_adapter_parameters_follow_the_adapted_matrices(host: Host) -> None:
    """Llama-2-7B, rank 16 on q, k, v, o: 32 layers x 16 x 4 x (4096 + 4096); with the MLP
    the gate, up and down projections add 3 x (4096 + 11008) a rank."""
    model = host.models.get("llama").configure({"preset": "llama-2-7b"})
    assert adapter_params(model, 16, "attention") == 32 * 16 * 4 * 8192
    assert adapter_params(model, 16, "all") == 32 * 16 * (4 * 8192 + 3 * (4096 + 11008))


def test_expected_distinct_adapters_in_a_batch() -> None:
    """One request uses one adapter; a large batch over 4 equally popular adapters uses
    nearly all 4; a skewed law uses fewer."""
    lc = LoraCompiled(compiled(), 1e6, lora())
    assert lc.distinct(1) == pytest.approx(1.0)
    assert lc.distinct(200) == pytest.approx(4.0)
    skew = LoraCompiled(compiled(), 1e6, lora(adapters=50, zipf=1.5))
    assert skew.distinct(20) < LoraCompiled(compiled(), 1e6, lora(adapters=50)).distinct(20)


def test_a_step_pays_the_adapter_work_at_the_roofline() -> None:
    """A decode step of 8 sequences adds max(2 n P / peak, E(8) x bytes / bandwidth)."""
    base = compiled()
    lc = LoraCompiled(base, 2e7, lora())
    shape = Shape(Phase.DECODE, batch=8, tokens=1, context=50)
    dev = base.system.device
    t_flops = 2 * 8 * 2e7 / dev.flops(base.model.info.dtype)
    t_bytes = lc.distinct(8) * 2e7 * 2 / dev.memory_bw.value
    assert lc.cost(shape).seconds == pytest.approx(base.cost(shape).seconds + max(t_flops, t_bytes))
    assert lc.kv_capacity_tokens(0.9) < base.kv_capacity_tokens(0.9)


def test_on_a_backend_that_prices_ops_the_adapter_kernels_are_priced_by_it(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """On the GPU backend a step pays a shrink and an expand GEMM per adapted projection
    and layer (8 x 32 for Llama-2-7B's q, k, v, o), each priced by the backend with its
    launch: more than the peak-rate bound, and by the launches about as much at batch 1
    as at batch 64."""
    from xpusim.engine.run import prepare

    text = (
        "name: l\nmodel: {family: llama, preset: llama-2-7b, dtype: bf16}\n"
        "workload: {kind: serving, arrivals: {process: poisson, rate: 1/s, count: 2, "
        "prompt_tokens: {dist: constant, value: 8}, output_tokens: {dist: constant, value: 2}}}\n"
        "systems: [{name: h, backend: gpu, device: h100-sxm}]\n"
    )
    sc = load_scenario(write_yaml(text, "l.yaml"), host)
    base = prepare(sc, host)[0].compiled
    assert base is not None
    spec = lora(rank=16)
    lc = LoraCompiled(base, adapter_params(base.model, 16, "attention"), spec)
    assert len(lc.kernels(8, 1.0)) == 8 and {op.count for op in lc.kernels(8, 1.0)} == {32}
    dev = base.system.device
    extra = []
    for b in (1, 64):
        shape = Shape(Phase.DECODE, batch=b, tokens=1, context=100)
        add = lc.cost(shape).seconds - base.cost(shape).seconds
        t_flops = 2 * b * lc.params / dev.flops("bf16")
        t_bytes = lc.distinct(b) * lc.bytes / dev.memory_bw.value
        assert add > max(t_flops, t_bytes)
        extra.append(add)
    assert extra[1] < 2 * extra[0]  # launches dominate a thin-rank GEMM


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "arrival_s": [float(i) for i in range(n)],
            "prompt_tokens": [10] * n,
            "output_tokens": [2] * n,
        }
    )


def test_a_request_waits_for_its_adapter_only_when_it_is_not_resident() -> None:
    """With two slots and least-recently-used eviction, each miss moves its request's
    arrival by adapter bytes / host link; hits do not move; the frame's order follows."""
    spec = lora(adapters=3, gpu_slots=1)
    lc = LoraCompiled(compiled(), 5e8, spec)  # 1 GB of adapter at 1 GB/s: one second a load
    run = replay(
        spec, _frame(40), lc, replicas=1, kv_capacity_tokens=10_000, kv_block_tokens=16, seed=2
    )
    moved = run.frame["arrival_s"].to_numpy()
    assert sorted(moved.tolist()) == moved.tolist()
    delays = sorted((moved[j] - run.arrival[run.order[j]]) for j in range(40))
    assert set(round(d, 9) for d in delays) <= {0.0, 1.0}
    assert run.metrics["lora_adapter_loads"] == sum(1 for d in delays if d > 0.5)
    assert run.assignment == [0] * 40


SCENARIO = """
name: lora
seed: 1
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 4/s, count: 200, prompt_tokens: {dist: constant, value: 256},
             output_tokens: {dist: constant, value: 32}}
  router: ROUTER
  LORA
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 2}
"""


def _run(
    host: Host, write_yaml: Callable[[str, str], Path], lora_line: str
) -> tuple[dict[str, float], pl.DataFrame]:
    text = SCENARIO.replace("ROUTER", "round-robin").replace("LORA", lora_line)
    return run_text(host, write_yaml, text)


def test_adapter_loads_over_a_slow_link_raise_ttft_and_keep_real_arrivals(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Many adapters, few slots and a slow host link: TTFT rises by about the mean load
    wait; every request keeps its real arrival time in the frame."""
    on, req_on = _run(
        host,
        write_yaml,
        "lora: {adapters: 50, rank: 64, gpu_slots: 2, host_link: 2 GB/s}",
    )
    off, req_off = _run(host, write_yaml, "slo: {}")
    assert on["lora_adapter_loads"] > 100
    assert on["ttft_mean_s"] > off["ttft_mean_s"] + 0.5 * on["lora_load_wait_mean_s"]
    assert sorted(req_on["arrival_s"].to_list()) == sorted(req_off["arrival_s"].to_list())
    assert (req_on["ttft_s"] == req_on["first_token_s"] - req_on["arrival_s"]).all()


@pytest.mark.parametrize(
    ("router", "line", "message"),
    [
        (
            "least-outstanding",
            "lora: {adapters: 4, rank: 8, gpu_slots: 2, host_link: 25 GB/s}",
            "round-robin",
        ),
        (
            "round-robin",
            "lora: {adapters: 0, rank: 8, gpu_slots: 2, host_link: 25 GB/s}",
            "adapters",
        ),
        ("round-robin", "lora: {adapters: 4, rank: 8, gpu_slots: 2, host_link: 25}", "host_link"),
        (
            "round-robin",
            "lora: {adapters: 4, rank: 8, gpu_slots: 2, host_link: 25 GB/s}\n  prefix_caching: {memory_fraction: 0.2}",
            "prefix_caching",
        ),
    ],
)
def test_bad_lora_blocks_are_refused_at_load(
    host: Host, write_yaml: Callable[[str, str], Path], router: str, line: str, message: str
) -> None:
    """A state-dependent router, no adapters, a link without a unit, or LoRA beside prefix
    caching: a ScenarioError at load."""
    text = SCENARIO.replace("ROUTER", router).replace("LORA", line)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write_yaml(text, "bad.yaml"), host)


def _gpu_compiled(host: Host, write_yaml: Callable[[str, str], Path]) -> Compiled:
    """Llama-2-7B bf16 on one H100 on the op-priced GPU backend."""
    from xpusim.engine.run import prepare

    text = (
        "name: l\nmodel: {family: llama, preset: llama-2-7b, dtype: bf16}\n"
        "workload: {kind: serving, arrivals: {process: poisson, rate: 1/s, count: 2, "
        "prompt_tokens: {dist: constant, value: 8}, output_tokens: {dist: constant, value: 2}}}\n"
        "systems: [{name: h, backend: gpu, device: h100-sxm}]\n"
    )
    sc = load_scenario(write_yaml(text, "g.yaml"), host)
    base = prepare(sc, host)[0].compiled
    assert base is not None
    return base


def test_gathered_kernels_read_each_sequences_adapter(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """S-LoRA's MBGMV reads the adapter rows once per decoding sequence and MBGMM once per
    32-token block of a prompt: with one adapter shared by 64 sequences the gathered
    kernels read 64 copies where the shared ones read one, so the step costs more; at one
    sequence the two are the same."""
    base = _gpu_compiled(host, write_yaml)
    params = adapter_params(base.model, 64, "attention")
    shared = LoraCompiled(base, params, lora(adapters=1, rank=64, gpu_slots=1))
    gathered = LoraCompiled(
        base, params, lora(adapters=1, rank=64, gpu_slots=1, kernels="gathered")
    )
    dec = Shape(Phase.DECODE, batch=64, tokens=1, context=200)
    pre = Shape(Phase.PREFILL, batch=2, tokens=100, context=0)
    assert gathered.reads((dec,)) == 64
    assert gathered.reads((pre,)) == 2 * 4  # ceil(100 / 32) blocks a prompt
    assert gathered.cost(dec).seconds > shared.cost(dec).seconds
    one = Shape(Phase.DECODE, batch=1, tokens=1, context=200)
    assert gathered.cost(one).seconds == pytest.approx(shared.cost(one).seconds)


def test_a_unified_pool_gives_up_the_batchs_distinct_adapters(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """With ``pool: unified`` the KV cache loses E(B) adapters' worth of tokens, B the whole
    sequences the rest holds: B * s + E(B) * a = cap; more adapters take more of it, and
    no gpu_slots is needed. Without a count, ``pool: slots`` is refused."""
    base = _gpu_compiled(host, write_yaml)
    params = adapter_params(base.model, 16, "attention")
    cap = base.kv_capacity_tokens(0.9)
    caps = []
    for n in (1, 100, 400):
        spec = Lora.model_validate(
            {"adapters": n, "rank": 16, "pool": "unified", "host_link": "25 GB/s"}
        )
        lc = LoraCompiled(base, params, spec, sequence_tokens=500)
        a, res = lc.adapter_tokens(), lc.resident(cap)
        batch = lc.running_batch(cap - int(res * a))
        assert batch * 500 + lc.distinct(batch) * a == pytest.approx(cap, rel=1e-3)
        assert res == pytest.approx(lc.distinct(batch), rel=1e-4)
        caps.append(lc.kv_capacity_tokens(0.9))
    assert caps[0] > caps[1] > caps[2]
    with pytest.raises(ValueError, match="gpu_slots"):
        Lora.model_validate({"adapters": 4, "rank": 8, "host_link": "25 GB/s"})


def test_a_unified_pool_loads_missing_adapters_in_the_prefill_step() -> None:
    """A prefill of k new requests beside b - k running ones waits for the distinct new
    adapters no running request uses, sum over i of (1 - p_i)^(b-k) (1 - (1 - p_i)^k),
    each adapter bytes / host link; one adapter already running costs no load, and k new
    requests of one adapter on an idle replica one load; decode steps load nothing;
    requests are not delayed in the replay."""
    base = compiled()
    spec = Lora.model_validate(
        {"adapters": 50, "rank": 8, "pool": "unified", "host_link": "1 GB/s"}
    )
    lc = LoraCompiled(base, 5e7, spec, sequence_tokens=100)  # 0.1 GB: 0.1 s a load
    pre = Shape(Phase.PREFILL, batch=4, tokens=20, context=0)
    dec = Shape(Phase.DECODE, batch=16, tokens=1, context=50)
    mixed = Shape(Phase.MIXED, parts=(pre, dec))
    q = 1.0 - lc.p
    expect = float((q**16 * (1.0 - q**4)).sum()) * 0.1
    assert lc.missing(4, 16) == pytest.approx(expect / 0.1)
    assert lc.load_seconds((pre, dec), 20) == pytest.approx(expect)
    assert lc.load_seconds((dec,), 16) == 0.0
    no_pool = LoraCompiled(base, 5e7, lora(adapters=50, rank=8, host_link="1 GB/s"))
    add = lc.cost(mixed).seconds - no_pool.cost(mixed).seconds
    assert add == pytest.approx(expect)
    one = LoraCompiled(
        base,
        5e7,
        Lora.model_validate({"adapters": 1, "rank": 8, "pool": "unified", "host_link": "1 GB/s"}),
    )
    assert one.load_seconds((pre, dec), 20) == 0.0
    assert one.load_seconds((pre,), 4) == pytest.approx(0.1)
    run = replay(
        spec, _frame(40), lc, replicas=1, kv_capacity_tokens=10_000, kv_block_tokens=16, seed=2
    )
    assert run.frame["arrival_s"].to_list() == [float(i) for i in range(40)]
    assert run.metrics["lora_load_wait_mean_s"] == 0.0


WINDOWED = """\
name: gemma-lora
model: {family: hf, preset: gemma-3-27b}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 1/s, count: 3,
             prompt_tokens: {dist: constant, value: 100000},
             output_tokens: {dist: constant, value: 8}}
  lora: {adapters: 4, rank: 8, gpu_slots: 2, host_link: 25 GB/s}
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 2}
"""


def test_adapter_replay_admits_what_the_windowed_world_admits(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """A 100,000-token Gemma 3 prompt fits an H100 only because its sliding layers keep
    their window: the adapter replay, which routes ahead of the run, leaves unrouted
    exactly what the world drops (here nothing), or the world's routing plan is short of
    the requests it serves."""
    m, _ = run_text(host, write_yaml, WINDOWED)
    assert m["requests_dropped"] == 0
