"""A serving engine's runtime memory besides weights and KV cache: the parts and their
sources, the cache an engine's limits leave, overrides and the figure a run reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.errors import DoesNotFitError
from xpusim.engine.host import Host
from xpusim.engine.model import ModelInfo
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.engine_memory import (
    FIELDS,
    EngineLimits,
    EngineMemory,
    EngineMemoryOverride,
)
from xpusim.plugins.workloads.serving.stacks import (
    StackCompiled,
    StackOverride,
    load_profile,
    load_runtime_memory,
    resolve_stack,
    stack_names,
)

Writer = Callable[..., Path]
GIB, MIB = 2.0**30, 2.0**20

SCENARIO = """\
name: engine-memory
model: {family: llama, preset: llama-3-70b}
workload:
  kind: offline
  count: 64
  prompt_tokens: {dist: constant, value: 2048}
  output_tokens: {dist: constant, value: 2048}
  stack: STACK
  scheduler: {kind: guaranteed-no-evict, max_batch: BATCH, max_batch_tokens: 1024}
systems:
  - {name: a100, backend: gpu, device: a100, count: 2, parallelism: {tensor: 2}}
"""


def info(hidden: int, vocab: int) -> ModelInfo:
    return ModelInfo(
        name="m",
        family="f",
        kind="decoder",
        dtype="bf16",
        params=1e9,
        active_params=1e9,
        param_bytes=2e9,
        config={"hidden": hidden, "vocab": vocab},
    )


def test_parts_follow_the_limits_and_pad_the_vocabulary() -> None:
    """Activations grow with the token budget and the hidden size, the slots' buffers with
    the batch, the vocabulary (padded to a multiple of the tensor group) and the longest
    sequence; the context is fixed."""
    mem = EngineMemory(1e9, 15.0, 30.0, 24.0, 65536.0, {})
    lim = EngineLimits(max_batch=256, max_tokens=8192, max_seq_len=4096)
    parts = mem.parts(lim, info(4096, 32001), tensor=2)
    assert parts["engine_context"] == 1e9
    assert parts["engine_activations"] == 15.0 * 8192 * 4096
    assert parts["engine_slots"] == 256 * (30.0 * 32002 + 24.0 * 4096 + 65536.0)
    doubled = mem.parts(EngineLimits(512, 8192, 4096), info(4096, 32001), tensor=2)
    assert doubled["engine_slots"] == 2 * parts["engine_slots"]


def test_the_in_flight_profile_states_its_memory_with_sources() -> None:
    """TensorRT-LLM's executor profile states every figure with its source; the context
    is what the perf-benchmarking log's memory lines leave; the profiles whose runtime
    was not read state none."""
    mem = load_profile("tensorrt-llm").runtime_memory
    assert mem is not None
    assert all(mem.sources[k] for k in FIELDS)
    left = 79.10 * GIB - 63.62 * GIB - 6214 * MIB - 928.77 * MIB - 1.14 * GIB - 4.35 * GIB
    assert mem.context_bytes == pytest.approx(left, rel=1e-3)
    assert mem.token_hidden_bytes == pytest.approx(480.04 * MIB / (8192 * 4096), rel=1e-3)
    for name in stack_names():
        if name != "tensorrt-llm":
            assert load_profile(name).runtime_memory is None, name


def test_a_block_missing_a_figure_is_refused() -> None:
    """A profile's runtime_memory block must state every figure."""
    with pytest.raises(ValueError, match="slot_bytes"):
        load_runtime_memory({k: 1.0 for k in FIELDS if k != "slot_bytes"})


def test_a_scenario_overrides_a_figure_and_says_so() -> None:
    """``stack: {runtime_memory: {...}}`` replaces the figures it names and keeps the
    others with their sources; an unknown figure is refused."""
    spec = StackOverride.model_validate(
        {"name": "tensorrt-llm", "runtime_memory": {"context_bytes": 1e9}}
    )
    prof = resolve_stack(spec)
    assert prof.runtime_memory is not None
    assert prof.runtime_memory.context_bytes == 1e9
    assert prof.runtime_memory.sources["context_bytes"].startswith("scenario override")
    base = load_profile("tensorrt-llm").runtime_memory
    assert base is not None
    assert prof.runtime_memory.slot_vocab_bytes == base.slot_vocab_bytes
    with pytest.raises(ValueError, match="slots"):
        EngineMemoryOverride.model_validate({"slots": 1})


def test_a_larger_build_batch_leaves_a_smaller_cache(host: Host, write_yaml: Writer) -> None:
    """Under TensorRT-LLM the cache is 0.9 of what the weights and the engine's runtime
    memory for its limits leave, exactly; more slots leave less; without limits (or under
    a profile that states no runtime memory) the backend's reserve stands."""
    text = SCENARIO.replace("STACK", "tensorrt-llm").replace("BATCH", "2048")
    sc = load_scenario(write_yaml(text), host)
    system = sc.systems[0]
    inner = host.backends.get("gpu").compile(sc.model_for(system), system)
    prof = load_profile("tensorrt-llm")
    small = StackCompiled(inner, prof, limits=EngineLimits(256, 1024, 4096))
    big = StackCompiled(inner, prof, limits=EngineLimits(2048, 1024, 4096))
    have = system.device.memory_bytes.value
    weights = inner.fit(kv_tokens=0).breakdown["weights"]
    per_tok = inner.model.kv_bytes_per_token_per_device(system.parallelism)
    want = 0.9 * (have - weights - sum(big.engine_memory_parts().values())) / per_tok
    assert big.kv_capacity_tokens(0.9) == pytest.approx(want, abs=2)
    assert big.kv_capacity_tokens(0.9) < small.kv_capacity_tokens(0.9)
    plain = StackCompiled(inner, prof).kv_capacity_tokens(0.9)
    assert plain == StackCompiled(inner, prof, limits=None).kv_capacity_tokens(0.9)
    assert not StackCompiled(
        inner, load_profile("vllm-0.6"), limits=big.limits
    ).engine_memory_parts()


def test_an_offline_run_reports_the_memory_its_limits_hold(host: Host, write_yaml: Writer) -> None:
    """The run's figures give the engine's runtime memory for the limits it ran, with the
    parts and their sources; dropping the slots' buffers by override runs a larger cache
    and a faster run of the same requests."""
    text = SCENARIO.replace("STACK", "tensorrt-llm").replace("BATCH", "2048")
    run = simulate(load_scenario(write_yaml(text), host), host).systems[0]
    assert run.status == "ok", run.reason
    fig = run.figures["stack.runtime_memory_bytes"]
    assert "max_batch 2048" in (fig.assumption or "")
    assert "perf-benchmarking.md" in (fig.assumption or "")
    lean = text.replace(
        "stack: tensorrt-llm",
        "stack: {name: tensorrt-llm, runtime_memory: {slot_vocab_bytes: 0}}",
    )
    leaner = simulate(load_scenario(write_yaml(lean, "lean.yaml"), host), host).systems[0]
    assert leaner.figures["stack.runtime_memory_bytes"].value < fig.value
    assert leaner.metrics["throughput_tokens_per_s"] > run.metrics["throughput_tokens_per_s"]


def test_slots_that_leave_no_cache_name_their_size_and_the_fix(
    host: Host, write_yaml: Writer
) -> None:
    """An engine built for more slots than its device's memory leaves cache for does not
    run: the reason gives the engine's runtime memory and the slot's, and names lowering
    the scheduler's max_batch as a fix."""
    text = (
        SCENARIO.replace("STACK", "tensorrt-llm")
        .replace("BATCH", "16384")
        .replace("llama-3-70b", "llama-3-8b")
        .replace("device: a100, count: 2, parallelism: {tensor: 2}", "device: l40s, count: 1")
    )
    with pytest.raises(
        DoesNotFitError, match=r"MB a sequence slot.*workload\.scheduler\.max_batch"
    ):
        simulate(load_scenario(write_yaml(text), host), host)
