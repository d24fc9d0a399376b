"""The serving engines' own peer-to-peer all-reduce kernels: the one-shot/two-shot
formula, the fitted profiles and where they apply, and the stacks that run them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.scripts import benchmark_module
from xpusim.engine.collectives import P2PAllReduce, p2p_allreduce_seconds
from xpusim.engine.graph import Collective, Phase, Shape
from xpusim.engine.host import Host, build_host
from xpusim.engine.run import simulate
from xpusim.engine.scenario import Scenario, load_scenario
from xpusim.plugins.gpu.fabrics import PROFILES_PATH, p2p_kernel_for
from xpusim.plugins.workloads.serving.speculative import SpeculativeCompiled
from xpusim.plugins.workloads.serving.stacks import (
    KERNEL_MAX_BYTES,
    StackCompiled,
    StackOverride,
    load_profile,
    resolve_stack,
)

Writer = Callable[..., Path]

FIT = benchmark_module("fit_collectives")
AR = Collective.ALL_REDUCE
KERNEL = P2PAllReduce("k", one_shot_s=5e-6, two_shot_s=10e-6, efficiency=0.5)

SCENARIO = """\
name: p2p
model: {family: llama, preset: llama-3-70b}
workload:
  kind: offline
  count: 4
  prompt_tokens: {dist: constant, value: 512}
  output_tokens: {dist: constant, value: 4}
systems:
  - {name: h100, backend: gpu, device: h100, count: 4, parallelism: {tensor: 4}}
  - {name: a100, backend: gpu, device: a100, count: 4, parallelism: {tensor: 4}}
  - {name: mi300x, backend: gpu, device: mi300x, count: 4, parallelism: {tensor: 4}}
  - {name: h100-tp1, backend: gpu, device: h100, count: 1}
"""

DECODE = Shape(Phase.DECODE, batch=16, tokens=1, context=512)


def test_one_shot_for_small_buffers_two_shot_for_large() -> None:
    """Small buffers take the one-shot schedule (every peer's buffer read once), large
    ones the two-shot (2(p-1)/p of the buffer moved, a larger fixed cost); a group of one
    costs nothing and two GPUs move the same bytes either way."""
    bw, p = 400e9, 8
    small, large = 4096.0, 64 * 2**20
    rate = 0.5 * bw
    assert p2p_allreduce_seconds(small, p, bw, KERNEL) == pytest.approx(5e-6 + 7 * small / rate)
    two = 10e-6 + 2 * 7 / 8 * large / rate
    assert p2p_allreduce_seconds(large, p, bw, KERNEL) == pytest.approx(two)
    assert p2p_allreduce_seconds(large, 1, bw, KERNEL) == 0.0
    assert p2p_allreduce_seconds(large, 2, bw, KERNEL) == pytest.approx(5e-6 + large / rate)


def test_one_shot_schedule_keeps_one_shot_where_two_shot_is_cheaper() -> None:
    """An engine that runs one-shot alone pays every peer's whole buffer even where the
    two-shot schedule would move less; an unknown schedule is refused by name."""
    bw, p, large = 400e9, 8, 64 * 2**20
    one = 5e-6 + 7 * large / (0.5 * bw)
    assert p2p_allreduce_seconds(large, p, bw, KERNEL, "one-shot") == pytest.approx(one)
    assert p2p_allreduce_seconds(large, p, bw, KERNEL) < one
    with pytest.raises(ValueError, match="three-shot"):
        p2p_allreduce_seconds(large, p, bw, KERNEL, "three-shot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="efficiency"):
        P2PAllReduce("bad", 1e-6, 1e-6, 1.5)


def test_fitted_profiles_reproduce_and_hold_out() -> None:
    """The shipped profiles are what the fit gives on the public table, and each kernel
    predicts its held-out 4-GPU rows within 10%."""
    rows = yaml.safe_load(FIT.EXTRA.read_text(encoding="utf-8"))
    entry = next(e for e in rows if e["id"] == FIT.P2P_ENTRY)
    shipped = yaml.safe_load(PROFILES_PATH.read_text(encoding="utf-8"))["p2p_allreduce"]
    for name in ("vllm", "trtllm"):
        kern, report = FIT.fit_p2p(name, entry["rows"])
        assert kern.one_shot_s == pytest.approx(shipped[name]["one_shot_s"], rel=1e-4)
        assert kern.two_shot_s == pytest.approx(shipped[name]["two_shot_s"], rel=1e-4)
        assert kern.efficiency == pytest.approx(shipped[name]["efficiency"], rel=1e-4)
        assert report["held_out"]["rows"] == 3
        assert report["held_out"]["max_abs_error"] < 0.10


def test_profiles_apply_on_nvlink_only(host: Host, write_yaml: Writer) -> None:
    """H100 (NVLink 4) has the fitted kernels, A100 (NVLink 3) inherits them and says
    so, MI300X (Infinity Fabric) has none and says its all-reduces stay on RCCL."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    h100, a100, mi300x, _ = (s.device for s in sc.systems)
    prof, how = p2p_kernel_for(h100, "vllm")
    assert prof is not None and "held-out" in how and "inherited" not in how
    prof, how = p2p_kernel_for(a100, "vllm")
    assert prof is not None and "inherited on nvlink 3" in how
    prof, how = p2p_kernel_for(mi300x, "trtllm")
    assert prof is None and "collective library" in how
    with pytest.raises(ValueError, match="known: vllm, trtllm"):
        p2p_kernel_for(h100, "nccl-symm")


def compile_all(host: Host, sc: Scenario) -> list:
    gpu = host.backends.get("gpu")
    return [gpu.compile(sc.model_for(s), s) for s in sc.systems]


def test_kernel_replaces_only_small_in_node_all_reduces(host: Host, write_yaml: Writer) -> None:
    """On 4 H100s the vLLM kernel prices a decode's all-reduces below NCCL's and leaves
    larger ones, other collectives and groups beyond a node to NCCL; a TP-1 system has
    none to replace; MI300X keeps RCCL and says so."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    h100, _a100, mi300x, tp1 = compile_all(host, sc)
    fast, how = h100.with_allreduce_kernel("vllm", 8 * 2**20)
    assert fast is not h100 and "vllm peer-to-peer all-reduce" in how
    n = 16 * 8192 * 2.0
    assert fast.collective_seconds(AR, n, 4) < h100.collective_seconds(AR, n, 4)
    big = 16 * 2**20
    assert fast.collective_seconds(AR, big, 4) == h100.collective_seconds(AR, big, 4)
    gather = Collective.ALL_GATHER
    assert fast.collective_seconds(gather, n, 4) == h100.collective_seconds(gather, n, 4)
    assert fast.collective_seconds(AR, n, 16) == h100.collective_seconds(AR, n, 16)
    assert fast.cost(DECODE).seconds < h100.cost(DECODE).seconds
    same, _ = tp1.with_allreduce_kernel("vllm", 8 * 2**20)
    assert same.cost(DECODE).seconds == tp1.cost(DECODE).seconds
    kept, how = mi300x.with_allreduce_kernel("vllm", 8 * 2**20)
    assert kept is mi300x and "Infinity Fabric".lower() in how.lower()


def test_stacks_run_their_engine_kernel(host: Host, write_yaml: Writer) -> None:
    """vLLM and SGLang profiles run vLLM's kernel, TensorRT-LLM's its own, the releases
    whose build commands name no custom all-reduce the library; a stack step on 4 H100s
    is cheaper with the kernel than with ``allreduce: library``, and the run's figures
    say how it was priced. Naming a kernel alone takes that kernel's buffer size."""
    assert load_profile("vllm-0.6").allreduce == "vllm"
    assert load_profile("sglang-0.3").allreduce == "vllm"
    assert load_profile("tensorrt-llm").allreduce == "trtllm"
    assert load_profile("tensorrt-llm-0.6").allreduce == "library"
    sc = load_scenario(write_yaml(SCENARIO), host)
    h100 = compile_all(host, sc)[0]
    vllm = StackCompiled(h100, load_profile("vllm-0.6"))
    library = StackCompiled(
        h100, resolve_stack(StackOverride(name="vllm-0.6", allreduce="library"))
    )
    assert vllm.cost(DECODE).seconds < library.cost(DECODE).seconds
    fig = vllm.figures_used()["stack.allreduce_max_bytes"]
    assert fig.value == 8 * 2**20 and "held-out" in (fig.assumption or "")
    trt = resolve_stack(StackOverride(name="vllm-0.6", allreduce="trtllm"))
    assert trt.allreduce_max_bytes == KERNEL_MAX_BYTES["trtllm"]
    assert trt.sources["allreduce"] == "scenario override (workload.stack)"


AB = benchmark_module("allreduce_ab")


def test_published_before_after_runs_cite_and_isolate_the_kernel() -> None:
    """Each published A/B run cites its source and quote; its two replays differ only in
    the all-reduce kernel, so the kernel's run is shorter, by communication time alone."""
    runs = AB.load_runs()
    assert len(runs) == 2
    for run in runs:
        assert run["source"]["url"].startswith("https://") and run["quote"]
        assert run["before_s"] > run["after_s"] > 0
        lib, ker = AB.scenario(run, "library"), AB.scenario(run, "vllm")
        assert lib["workload"]["stack"] == {"name": AB.STACK, "allreduce": "library"}
        lib["workload"]["stack"] = ker["workload"]["stack"]
        assert {k: v for k, v in lib.items() if k != "name"} == {
            k: v for k, v in ker.items() if k != "name"
        }
    host = build_host()
    run = runs[0]
    assert AB.batch_seconds(host, run, "vllm") < AB.batch_seconds(host, run, "library")


SERVING = """\
name: p2p-serving
model: {family: llama, preset: llama-3-70b}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 2/s, count: 8,
             prompt_tokens: {dist: constant, value: 64}, output_tokens: {dist: constant, value: 4}}
  stack: sglang-0.3
systems:
  - {name: h100, backend: gpu, device: h100, count: 4, parallelism: {tensor: 4}}
  - {name: mi300x, backend: gpu, device: mi300x, count: 4, parallelism: {tensor: 4}}
"""


def test_the_run_reports_the_stack_and_its_all_reduce(host: Host, write_yaml: Writer) -> None:
    """A serving run's figures carry the stack's own (host time, KV fraction, all-reduce
    kernel), the kernel's with how each system's fabric priced it."""
    sc = load_scenario(write_yaml(SERVING), host)
    h100, mi300x = simulate(sc, host).systems
    for res in (h100, mi300x):
        assert {"stack.host_step_s", "stack.kv_memory_fraction"} <= set(res.figures)
    assert "held-out" in (h100.figures["stack.allreduce_max_bytes"].assumption or "")
    assert "collective library" in (mi300x.figures["stack.allreduce_max_bytes"].assumption or "")


def test_technique_wrappers_pass_the_kernel_to_the_models_they_wrap(
    host: Host, write_yaml: Writer
) -> None:
    """A serving technique's wrapper (speculative decoding here, over the same model as
    target and draft) switches the models it prices to the stack's kernel: its step is
    cheaper under ``vllm-0.6`` than with ``allreduce: library``, and the figures say the
    kernel was priced, not that the backend lacks it."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    h100 = compile_all(host, sc)[0]
    spec = SpeculativeCompiled(h100, h100, k=2)
    vllm = StackCompiled(spec, load_profile("vllm-0.6"))
    library = StackCompiled(
        spec, resolve_stack(StackOverride(name="vllm-0.6", allreduce="library"))
    )
    assert vllm.cost(DECODE).seconds < library.cost(DECODE).seconds
    assert "held-out" in vllm.allreduce_how


def test_tensorrt_llm_kernel_takes_twice_the_bytes_on_two_gpus(
    host: Host, write_yaml: Writer
) -> None:
    """TensorRT-LLM sizes its custom all-reduce workspace at 16 MB for two GPUs and 8 MB
    for more (``max_workspace_size_auto``): a 12 MB all-reduce runs on the kernel at TP 2
    and on NCCL at TP 4; a size the scenario gives holds on both."""
    prof = load_profile("tensorrt-llm")
    assert (prof.allreduce_limit(2), prof.allreduce_limit(4)) == (16e6, 8e6)
    assert prof.allreduce_limit(8) == KERNEL_MAX_BYTES["trtllm"]
    tp2 = SCENARIO.replace(
        "count: 4, parallelism: {tensor: 4}", "count: 2, parallelism: {tensor: 2}"
    )
    sc2, sc4 = (load_scenario(write_yaml(text), host) for text in (tp2, SCENARIO))
    h100_2, h100_4 = compile_all(host, sc2)[0], compile_all(host, sc4)[0]
    n = 12e6
    on2, on4 = StackCompiled(h100_2, prof), StackCompiled(h100_4, prof)
    assert on2.collective_seconds(AR, n, 2) < h100_2.collective_seconds(AR, n, 2)
    assert on4.collective_seconds(AR, n, 4) == h100_4.collective_seconds(AR, n, 4)
    assert on2.figures_used()["stack.allreduce_max_bytes"].value == 16e6
    assert on4.figures_used()["stack.allreduce_max_bytes"].value == 1e6  # one-shot's limit
    fixed = resolve_stack(StackOverride(name="tensorrt-llm", allreduce_max_bytes=4_000_000))
    assert fixed.allreduce_limit(2) == fixed.allreduce_limit(4) == 4e6
    named = resolve_stack(StackOverride(name="vllm-0.6", allreduce="trtllm"))
    assert (named.allreduce_limit(2), named.allreduce_limit(4)) == (16e6, 8e6)


def test_tensorrt_llm_012_runs_one_shot_alone_and_nccl_above_its_limit(
    host: Host, write_yaml: Writer
) -> None:
    """TensorRT-LLM 0.12's AUTO strategy disabled two-shot: one-shot on two GPUs up to the
    workspace, below 1,000,000 bytes on 3-4 GPUs, below 500,000 on more; every larger
    all-reduce goes to NCCL. So at TP 4 a 2 MB all-reduce costs what NCCL's does and a
    0.5 MB one the kernel's one-shot, while vLLM's kernel keeps the cheaper schedule."""
    prof = load_profile("tensorrt-llm")
    assert prof.allreduce_plan(2) == (16e6, "one-shot")
    assert prof.allreduce_plan(4) == (1e6, "one-shot")
    assert prof.allreduce_plan(8) == (5e5, "one-shot")
    assert load_profile("vllm-0.6").allreduce_plan(4) == (8 * 2**20, "cheaper")
    h100 = compile_all(host, load_scenario(write_yaml(SCENARIO), host))[0]
    trt = StackCompiled(h100, prof)
    assert trt.collective_seconds(AR, 2e6, 4) == h100.collective_seconds(AR, 2e6, 4)
    one_shot, _ = h100.with_allreduce_kernel("trtllm", 1e6, schedule="one-shot")
    assert trt.collective_seconds(AR, 5e5, 4) == one_shot.collective_seconds(AR, 5e5, 4)
    assert trt.collective_seconds(AR, 5e5, 4) < h100.collective_seconds(AR, 5e5, 4)
    assert "one-shot only" in trt.allreduce_how


def test_scenario_may_restate_the_one_shot_rule() -> None:
    """``allreduce_one_shot_below: {}`` gives the kernel back its cheaper schedule over
    the whole workspace; naming another kernel drops the profile's rule (it was its own
    kernel's); a table with a group under two or no bytes is refused."""
    free = resolve_stack(StackOverride(name="tensorrt-llm", allreduce_one_shot_below={}))
    assert free.allreduce_plan(4) == (8e6, "cheaper")
    assert free.sources["allreduce_one_shot_below"] == "scenario override (workload.stack)"
    tight = resolve_stack(StackOverride(name="tensorrt-llm", allreduce_one_shot_below={8: 250_000}))
    assert tight.allreduce_plan(4) == (250_000, "one-shot")
    both = resolve_stack(
        StackOverride(
            name="tensorrt-llm", allreduce_max_bytes=4_000_000, allreduce_one_shot_below={}
        )
    )
    assert both.allreduce_plan(2) == both.allreduce_plan(4) == (4e6, "cheaper")
    vllm = resolve_stack(StackOverride(name="tensorrt-llm", allreduce="vllm"))
    assert vllm.allreduce_plan(4) == (KERNEL_MAX_BYTES["vllm"], "cheaper")
    with pytest.raises(ValueError, match="at least 2 devices"):
        resolve_stack(StackOverride(name="tensorrt-llm", allreduce_one_shot_below={1: 1e6}))


def test_the_memory_fit_follows_the_stacks_nvls_setting(host: Host, write_yaml: Writer) -> None:
    """The run's memory fit holds NCCL's NVLS buffers where the stack's engine leaves NVLS
    on (vLLM) and not where it turns it off (SGLang), offline and serving alike; a system
    that sets ``nccl_nvls`` keeps its own setting."""
    from xpusim.engine.run import prepare

    def parts(stack: str, kind: str, options: str = "") -> dict[str, float]:
        text = SERVING.replace("stack: sglang-0.3", f"stack: {stack}")
        text = text.replace(
            "count: 4, parallelism: {tensor: 4}}",
            "count: 8, parallelism: {tensor: 8}" + options + "}",
            1,
        )
        if kind == "offline":
            text = text.replace(
                "  kind: serving\n  arrivals: {process: poisson, rate: 2/s, count: 8,\n"
                "             prompt_tokens: {dist: constant, value: 64}, output_tokens: "
                "{dist: constant, value: 4}}\n",
                "  kind: offline\n  count: 8\n  prompt_tokens: {dist: constant, value: 64}\n"
                "  output_tokens: {dist: constant, value: 4}\n",
            )
        assert f"kind: {kind}" in text and "tensor: 8" in text
        sc = load_scenario(write_yaml(text), host)
        return prepare(sc, host)[0].result.details["memory"]

    for kind in ("serving", "offline"):
        assert parts("vllm-0.6", kind)["collective_buffers_bytes"] > 2e9
        assert "collective_buffers_bytes" not in parts("sglang-0.3", kind)
    kept = parts("sglang-0.3", "serving", ", options: {nccl_nvls: true}")
    assert kept["collective_buffers_bytes"] > 2e9
