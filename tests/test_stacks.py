"""Serving-engine profiles: host time, CUDA-graph padding, defaults a scenario inherits."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import FakeCompiled, FakeModel, fake_device
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.plugins.workloads.offline.workload import OfflineConfig, fill_memory_limits
from xpusim.plugins.workloads.serving.stacks import (
    DEFAULT_STACK,
    StackCompiled,
    StackOverride,
    load_profile,
    resolve_stack,
    stack_for,
    stack_names,
)
from xpusim.plugins.workloads.serving.workload import ServingConfig


def compiled() -> FakeCompiled:
    dev = fake_device("chip-b", 80)
    system = System("s", "fake", dev, 1, Parallelism(), Topology(1, 1.0, 0.0, 1.0, 0.0))
    return FakeCompiled(system, FakeModel(1e9))


def test_every_shipped_profile_loads_with_sources() -> None:
    """Each profile in stacks.yaml loads, every figure names its source, and the default
    is one of them."""
    assert DEFAULT_STACK in stack_names()
    for name in stack_names():
        p = load_profile(name)
        assert p.host_step_s >= 0 and 0 < p.kv_memory_fraction <= 1
        assert list(p.cuda_graph_batches) == sorted(p.cuda_graph_batches)
        assert all(p.sources[k] for k in ("host_step_s", "cuda_graph_batches", "scheduler"))


def test_unknown_stack_lists_the_valid_ones() -> None:
    """An unknown profile name raises and names every valid one."""
    with pytest.raises(ValueError, match=r"valid: .*vllm-0\.6"):
        load_profile("vllm-9")


def test_host_time_serial_or_overlapped() -> None:
    """Serial host work adds to the GPU step; overlapped host work hides behind it and
    only shows when it is the longer of the two."""
    serial = resolve_stack(StackOverride.model_validate({"name": "none", "host_step_s": "4 ms"}))
    overlap = resolve_stack(
        StackOverride.model_validate({"name": "none", "host_step_s": "4 ms", "host_overlap": True})
    )
    assert serial.step_seconds(0.010) == pytest.approx(0.014)
    assert overlap.step_seconds(0.010) == pytest.approx(0.010)
    assert overlap.step_seconds(0.001) == pytest.approx(0.004)
    assert serial.sources["host_step_s"].startswith("scenario override")


def test_decode_batches_pad_to_the_captured_graph() -> None:
    """A decode of 3 sequences runs vLLM's batch-4 graph and costs what 4 cost; a batch
    above the largest capture runs eagerly at its own size; prefills are never padded."""
    inner = compiled()
    st = StackCompiled(inner, load_profile("vllm-0.6"))
    d3 = Shape(Phase.DECODE, batch=3, tokens=1, context=100)
    d4 = Shape(Phase.DECODE, batch=4, tokens=1, context=100)
    assert st.padded(d3) == d4
    big = Shape(Phase.DECODE, batch=300, tokens=1, context=100)
    assert st.padded(big) == big
    pre = Shape(Phase.PREFILL, batch=3, tokens=64)
    assert st.padded(pre) == pre
    host = load_profile("vllm-0.6").host_step_s
    assert st.cost(d3).seconds == pytest.approx(inner.cost(d4).seconds + host)
    assert st.cost(d3).breakdown["overhead"] == pytest.approx(host)


def test_scenario_inherits_scheduler_and_kv_fraction_from_its_stack() -> None:
    """Unset scheduler and KV fraction come from the stack; values the scenario sets win."""
    one = {"dist": "constant", "value": 8}
    arrivals = {
        "process": "poisson",
        "rate": "1/s",
        "count": 10,
        "prompt_tokens": one,
        "output_tokens": one,
    }
    cfg = ServingConfig.model_validate({"arrivals": arrivals, "stack": "sglang-0.4"})
    assert cfg.scheduler.kind == "prefill-first"
    assert cfg.kv_memory_fraction == pytest.approx(0.88)
    own = ServingConfig.model_validate(
        {
            "arrivals": arrivals,
            "stack": "sglang-0.4",
            "scheduler": {"kind": "continuous", "max_batch": 8},
            "kv_memory_fraction": 0.5,
        }
    )
    assert own.scheduler.max_batch == 8 and own.kv_memory_fraction == 0.5
    with pytest.raises(ValueError, match="unknown serving stack"):
        ServingConfig.model_validate({"arrivals": arrivals, "stack": "nope"})


def test_tensorrt_llm_brings_its_block_size_and_chunked_context() -> None:
    """TensorRT-LLM's profile states its 64-token KV blocks and chunked context, which a
    scenario inherits unless it sets its own; a profile that states no block size leaves
    the workload's, and an inline override changes it."""
    one = {"dist": "constant", "value": 8}
    base = {"count": 10, "prompt_tokens": one, "output_tokens": one}
    cfg = OfflineConfig.model_validate({**base, "stack": "tensorrt-llm"})
    assert cfg.kv_block_tokens == 64 and cfg.scheduler.chunked_context
    own = OfflineConfig.model_validate({**base, "stack": "tensorrt-llm", "kv_block_tokens": 32})
    assert own.kv_block_tokens == 32
    assert OfflineConfig.model_validate({**base, "stack": "vllm-0.6"}).kv_block_tokens == 16
    inline = {"name": "tensorrt-llm", "kv_block_tokens": 128}
    assert OfflineConfig.model_validate({**base, "stack": inline}).kv_block_tokens == 128
    assert "64" in load_profile("tensorrt-llm").sources["kv_block_tokens"]


def test_offline_picks_the_largest_batch_memory_holds() -> None:
    """With no scheduler given, an offline run allows as many sequences as the KV cache
    holds at the mean length, and trtllm-bench's token budget for them (at least 2,048),
    raised to the longest prompt."""
    cfg = OfflineConfig.model_validate({"count": 4})
    prompts = np.array([1000, 1000, 3000, 1000])
    outputs = np.array([1000, 1000, 1000, 1000])
    spec = fill_memory_limits(cfg.scheduler, 10_000, prompts, outputs)
    assert spec.max_batch == 4  # 10,000 // 2,500 = 4, at most the 4 requests
    assert spec.max_batch_tokens == 3000  # 4 x (1 + 1.5) is below 2,048; the longest prompt
    spec = fill_memory_limits(cfg.scheduler, 10_000, np.array([9000] * 8), np.array([1000] * 8))
    assert spec.max_batch == 1 and spec.max_batch_tokens == 9000


def test_offline_sizing_follows_trtllm_bench_rules() -> None:
    """trtllm-bench's engine sizing (tuning.py ``finetune_setting``): at most 4,096
    sequences; a token budget of ``batch × (1 + input / output)``, at most 32,768, rounded
    up to 256 below 4,096 (at least 2,048), 512 below 8,192 and 1,024 above. The token
    budget is the sized batch's even when there are fewer requests."""
    cfg = OfflineConfig.model_validate({"count": 4})
    ones = np.ones(30_000, dtype=np.int64)
    spec = fill_memory_limits(cfg.scheduler, 10**9, 128 * ones, 128 * ones)
    assert spec.max_batch == 4096 and spec.max_batch_tokens == 8192
    spec = fill_memory_limits(cfg.scheduler, 1000 * 2176, 2048 * ones, 128 * ones)
    assert spec.max_batch == 1000 and spec.max_batch_tokens == 17 * 1024  # 17,000 up
    spec = fill_memory_limits(cfg.scheduler, 10**9, 2048 * ones, 128 * ones)
    assert spec.max_batch_tokens == 32768
    spec = fill_memory_limits(cfg.scheduler, 300 * 2176, 128 * ones, 2048 * ones)
    assert spec.max_batch == 300 and spec.max_batch_tokens == 2048  # 318.75 -> at least 2,048
    spec = fill_memory_limits(cfg.scheduler, 3000 * 256, 128 * ones[:3], 128 * ones[:3])
    assert spec.max_batch == 3 and spec.max_batch_tokens == 6144  # 3,000 x 2 = 6,000 -> 512s


def test_non_gpu_systems_run_bare_unless_a_stack_is_named() -> None:
    """The shipped profiles are GPU serving engines: a TPU system runs under ``none``
    when the scenario names no stack, a GPU system under the default; a named stack
    applies to every system."""
    one = {"dist": "constant", "value": 8}
    arrivals = {"process": "poisson", "rate": "1/s", "count": 4}
    arrivals.update(prompt_tokens=one, output_tokens=one)
    cfg = ServingConfig.model_validate({"arrivals": arrivals})
    assert stack_for(cfg, "gpu").name == DEFAULT_STACK
    assert stack_for(cfg, "tpu").name == "none"
    named = ServingConfig.model_validate({"arrivals": arrivals, "stack": "vllm-v1"})
    assert stack_for(named, "tpu").name == "vllm-v1"


def test_free_memory_kv_fraction_gives_a_larger_cache() -> None:
    """TensorRT-LLM's KV fraction is of the memory left after the weights: the same 0.9
    holds more cache than vLLM's 0.9 of all memory, by exactly (1 - 0.9) of that left."""
    inner = compiled()
    total = load_profile("vllm-0.6")
    free = load_profile("tensorrt-llm")
    assert free.kv_fraction_of == "free" and total.kv_fraction_of == "total"
    have = inner.system.device.memory_bytes.value
    need = inner.fit(kv_tokens=0).need_bytes
    per_tok = inner.model.kv_bytes_per_token
    got = StackCompiled(inner, free).kv_capacity_tokens(0.9)
    assert got == pytest.approx(0.9 * (have - need) / per_tok, rel=1e-6, abs=2)
    assert got > StackCompiled(inner, total).kv_capacity_tokens(0.9)


@pytest.mark.parametrize("name", ["tensorrt-llm-0.5", "tensorrt-llm-0.6"])
def test_static_batch_cache_may_fill_the_memory_the_weights_leave(name: str) -> None:
    """GptSession's contiguous KV cache is sized for exactly the static batch, so the
    static-batch profiles let the cache hold every byte the weights, activations and
    runtime leave (the 0.90 free fraction is the paged in-flight runtime's): a batch
    fits when its cache does."""
    inner = compiled()
    prof = load_profile(name)
    assert prof.scheduler["kind"] == "static"
    assert prof.kv_fraction_of == "free" and prof.kv_memory_fraction == 1.0
    assert "runtimeBuffers.cpp" in prof.sources["kv_memory_fraction"]
    have = inner.system.device.memory_bytes.value
    need = inner.fit(kv_tokens=0).need_bytes
    per_tok = inner.model.kv_bytes_per_token
    got = StackCompiled(inner, prof).kv_capacity_tokens(prof.kv_memory_fraction)
    assert got == pytest.approx((have - need) / per_tok, rel=1e-6, abs=2)
    assert got > StackCompiled(inner, load_profile("tensorrt-llm")).kv_capacity_tokens(0.9)
