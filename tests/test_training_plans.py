"""Training plans as frontier runs write them: uneven pipeline stages, context and expert
parallelism, FP8, distributed optimizer / FSDP, activation offloading, and the
per-device timeline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from xpusim.engine.collectives import topology_from_device
from xpusim.engine.device import DerivedDevice
from xpusim.engine.graph import Collective, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.host import build_host
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.workloads.training.comms import Comms
from xpusim.plugins.workloads.training.failures import FailureRun
from xpusim.plugins.workloads.training.frames import devices_frame
from xpusim.plugins.workloads.training.memory import param_bytes, stage_param_split
from xpusim.plugins.workloads.training.partition import default_partition, make_partition
from xpusim.plugins.workloads.training.pipeline import (
    exact_pipeline_time,
    in_flight_microbatches,
    pipeline_time,
    simulate_schedule,
)
from xpusim.plugins.workloads.training.plan import (
    TrainingPlan,
    check_plan,
    plan_memory,
    plan_partition,
    stage_memory_list,
)
from xpusim.plugins.workloads.training.stagecost import Fp8Casts, stage_cost_model
from xpusim.plugins.workloads.training.steps import (
    CP_ATTENTION_EFFICIENCY_BWD,
    CP_ATTENTION_EFFICIENCY_FWD,
    StepTime,
    grad_accumulation_seconds,
    step_time,
)
from xpusim.plugins.workloads.training.workload import TrainingConfig, make_plan


@pytest.fixture(scope="module")
def host() -> Any:
    return build_host()


def _model(host: Any, family: str, **arch: Any) -> ModelGraph:
    model: ModelGraph = host.models.get(family).configure(arch)
    return model


def _compile(host: Any, model: ModelGraph, par: Parallelism, device: str = "h100-sxm") -> Any:
    gpu = host.backends.get("gpu")
    dev = gpu.devices()[device]
    system = System("s", "gpu", dev, par.devices, par, topology_from_device(dev))
    return gpu.compile(model, system)


SMALL = {"layers": 14, "hidden": 1024, "heads": 16, "kv_heads": 4, "vocab": 32000}
MOE = {**SMALL, "experts": 8, "top_k": 2, "ffn_hidden": 1024}


def _plan(**kw: Any) -> TrainingPlan:
    base: dict[str, Any] = {"global_batch": 64, "micro_batch": 1, "seq_len": 2048}
    base.update(kw)
    return TrainingPlan(**base)


# --- partition ------------------------------------------------------------------------


def test_default_partition_puts_the_short_stages_at_the_ends() -> None:
    """126 layers on 16 stages is Llama 3 405B's layout (first and last one layer fewer);
    70 on 12 gives the ends 5 and the middle 6; a divisible count stays even."""
    assert default_partition(126, 16).layers == (7,) + (8,) * 14 + (7,)
    assert default_partition(70, 12).layers == (5,) + (6,) * 10 + (5,)
    assert make_partition(96, 8).layers == (12,) * 8
    assert make_partition(126, 16).describe() == "7, 8×14, 7"


def test_first_and_last_stage_sizes_and_explicit_lists() -> None:
    """Megatron's first/last-stage layer counts split the rest evenly; an explicit list
    must have one entry per stage and add up; bad input names the fix."""
    assert make_partition(126, 16, first_stage_layers=7, last_stage_layers=7).layers == (
        (7,) + (8,) * 14 + (7,)
    )
    assert make_partition(30, 4, first_stage_layers=6).layers == (6, 8, 8, 8)
    assert make_partition(10, 3, layers_per_stage=[3, 4, 3]).layers == (3, 4, 3)
    with pytest.raises(ValueError, match="split them evenly"):
        make_partition(126, 16, first_stage_layers=5)
    with pytest.raises(ValueError, match="adds up to 9"):
        make_partition(10, 3, layers_per_stage=[3, 3, 3])
    with pytest.raises(ValueError, match="at least 2 layers"):
        make_partition(9, 4, virtual=2, layers_per_stage=[1, 3, 3, 2])


def test_llama3_and_bloom_plans_are_accepted(host: Any) -> None:
    """Llama 3 405B's and BLOOM-176B's plans divide: 126 layers over 16 stages, 70 over 12."""
    llama = _model(host, "llama", preset="llama-3-405b")
    par = Parallelism(data=128, tensor=8, pipeline=16)
    assert check_plan(llama, par, _plan(global_batch=2048, seq_len=8192), 16384) == []
    bloom = _model(host, "gpt", layers=70, hidden=14336, heads=112, vocab=250880)
    par = Parallelism(data=8, tensor=4, pipeline=12)
    assert check_plan(bloom, par, _plan(global_batch=2048), 384) == []


def test_exact_pipeline_time_is_the_schedule_and_bounded_by_the_closed_form() -> None:
    """Unequal stages: the exact makespan is the list schedule's, never above the closed
    form; equal stages: both agree."""
    f, b = [1.0, 1.2, 1.2, 1.5], [2.0, 2.4, 2.4, 3.0]
    exact = exact_pipeline_time(f, b, 8)
    assert exact.seconds == pytest.approx(simulate_schedule(4, 8, f, b))
    closed = pipeline_time([x + y for x, y in zip(f, b, strict=True)], 8, 4)
    assert exact.seconds <= closed.seconds + 1e-9
    same = exact_pipeline_time([1.0] * 4, [2.0] * 4, 8, p2p_s=0.1)
    assert same.seconds == pytest.approx(pipeline_time(3.0, 8, 4, p2p_s=0.1).seconds)


def test_stages_hold_fewer_micro_batches_down_the_pipeline() -> None:
    """1F1B stage s holds min(m, p − s) micro-batches; interleaving adds to stage 0 the
    Korthikanti et al. factor."""
    assert [in_flight_microbatches(4, 16, 1, s) for s in range(4)] == [4, 3, 2, 1]
    assert in_flight_microbatches(4, 16, 2, 0) == pytest.approx(4 * (1 + 3 / 8))


def test_memory_is_per_stage_and_the_message_names_the_fullest(host: Any) -> None:
    """Stage 0 holds the embedding and the most micro-batches; with uneven stages the
    fullest device is reported with its stage, layers and micro-batches in flight."""
    llama = _model(host, "llama", preset="llama-3-405b")
    par = Parallelism(data=128, tensor=8, pipeline=16, sequence=True, zero=1)
    plan = _plan(global_batch=2048, seq_len=8192, recompute="selective")
    stages = stage_memory_list(llama, par, plan, 80e9)
    assert [s.layers for s in stages] == [7] + [8] * 14 + [7]
    assert stages[0].in_flight == 16 and stages[-1].in_flight == 1
    peak = plan_memory(llama, par, plan, 80e9)
    assert peak.activations == max(s.activations for s in stages)
    assert peak.where().startswith(f"pipeline stage {peak.stage} of 16")
    # Meta trained Llama 3 405B on this mesh of 80 GB H100s (arXiv:2407.21783, §3.3.2:
    # tensor 8, pipeline 16, data 128 at 8K tokens): counted tensor by tensor, the plan fits
    # with the GPU backend's 1.5 GB runtime reserve (Korthikanti et al.'s GPT-3 constant,
    # which charges full-width K/V and dropout masks, gave 83.0 GB with the reserve)
    assert peak.total + 1.5e9 < 80e9


# --- context, expert, FP8, FSDP, offload ------------------------------------------------


def test_context_parallel_splits_work_and_memory_and_adds_kv_exchange(host: Any) -> None:
    """context = 2 halves each device's share of the sequence (its activations and
    compute) and exchanges keys and values; a sequence not a multiple of 2c is refused."""
    model = _model(host, "llama", **SMALL, seq_len=8192)
    base = Parallelism(data=2, tensor=2)
    cp = replace(base, data=1, context=2)
    plan = _plan(global_batch=16, seq_len=8192, recompute="none")
    a = step_time(_compile(host, model, base), model, plan)
    b = step_time(_compile(host, model, cp), model, plan)
    assert b.cp_comm_s > 0 and a.cp_comm_s == 0
    assert b.microbatches == 2 * a.microbatches
    # half the work, plus the chunked attention core's measured slowdown
    compiled = _compile(host, model, cp)
    shape = Shape(Phase.TRAIN, batch=1, tokens=8192, recompute="none")
    attn = stage_cost_model(compiled, model, shape, cp).forward.layer_attention_compute_s
    extra = SMALL["layers"] * attn / 2 * (1 / CP_ATTENTION_EFFICIENCY_FWD - 1)
    assert extra > 0
    assert b.fwd_s == pytest.approx(a.fwd_s / 2 + extra, rel=1e-6)
    mem_a = plan_memory(model, base, plan, 80e9)
    mem_b = plan_memory(model, cp, plan, 80e9)
    assert mem_b.activations == pytest.approx(mem_a.activations / 2)
    gather = step_time(_compile(host, model, cp), model, replace(plan, context_comm="all_gather"))
    assert gather.cp_exposed_s == pytest.approx(gather.cp_comm_s)
    assert any("multiple of 4" in p for p in check_plan(model, cp, replace(plan, seq_len=8190), 4))


def test_expert_parallel_shards_experts_and_reduces_them_over_fewer_ranks(host: Any) -> None:
    """expert = 4 holds a quarter of the routed experts per device (weights, gradients,
    optimizer states), and must divide data x context."""
    model = _model(host, "mixtral", **MOE)
    plan = _plan(global_batch=32, seq_len=2048)
    one = plan_memory(model, Parallelism(data=4), plan, 80e9)
    four = plan_memory(model, Parallelism(data=4, expert=4), plan, 80e9)
    assert four.weights < one.weights
    assert four.optimizer < one.optimizer
    assert check_plan(model, Parallelism(data=4, expert=4), plan, 4) == []
    probs = check_plan(model, Parallelism(data=2, expert=4), plan, 2)
    assert any("must divide data x context" in p for p in probs)
    st = step_time(_compile(host, model, Parallelism(data=4, expert=4)), model, plan)
    assert st.dp_comm_s > 0 and st.seconds > 0


def test_fp8_speeds_up_gemms_and_keeps_bf16_weights(host: Any) -> None:
    """FP8 runs the layer GEMMs faster on an FP8 part; its weights stay bf16 plus an FP8
    copy; a device without FP8 peak refuses it."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8)
    bf16 = step_time(_compile(host, model, par), model, _plan(precision="bf16"))
    fp8 = step_time(_compile(host, model, par), model, _plan(precision="fp8"))
    assert fp8.seconds < bf16.seconds
    m16 = plan_memory(model, par, _plan(precision="bf16"), 80e9)
    m8 = plan_memory(model, par, _plan(precision="fp8"), 80e9)
    assert m16.weights < m8.weights < 1.5 * m16.weights
    assert m8.optimizer == pytest.approx(m16.optimizer)


def test_fp8_casts_each_gemm_operand_as_memory_bound_work(host: Any) -> None:
    """FP8 adds the cast-and-transpose of every layer GEMM's input (forward) and output
    gradient (backward) per micro-batch (the inputs again under full recomputation) and of
    the weights once a step, as memory-bound seconds: 2 bytes read and 2 written per
    element, so the pass with more elements (here the outputs: fused QKV and the MLP's up
    projections) casts for longer."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8)
    compiled = _compile(host, model, par)
    shape = Shape(Phase.TRAIN, batch=1, tokens=2048, recompute="selective")
    none = stage_cost_model(compiled, model, shape, par)
    casts = stage_cost_model(compiled, model, shape, par, fp8=True).fp8
    assert none.fp8 == Fp8Casts()
    assert casts.forward_s > 0 and casts.backward_s > 0 and casts.weights_s > 0
    ops = [
        o
        for o in model.training_stages(model.build(shape, par)).forward.ops
        if o.layer == "layer" and o.kind is OpKind.MATMUL and len(o.dims) == 3
    ]
    ins = sum(o.dims[0] * o.dims[2] * o.batch * o.count for o in ops)
    outs = sum(o.dims[0] * o.dims[1] * o.batch * o.count for o in ops)
    assert outs > ins and casts.backward_s > casts.forward_s
    bf16 = step_time(compiled, model, _plan(precision="bf16"))
    fp8 = step_time(compiled, model, _plan(precision="fp8"))
    layers = SMALL["layers"]
    added = layers * (casts.forward_s + casts.backward_s) * fp8.microbatches
    assert fp8.device_s["memory"] - bf16.device_s["memory"] == pytest.approx(
        added + layers * casts.weights_s, rel=1e-6
    )
    # a fully recomputed forward casts its GEMM inputs a second time
    full = {"recompute": "full"}
    bf16_full = step_time(compiled, model, _plan(precision="bf16", **full))
    fp8_full = step_time(compiled, model, _plan(precision="fp8", **full))
    again = layers * casts.forward_s * fp8.microbatches
    assert fp8_full.device_s["memory"] - bf16_full.device_s["memory"] == pytest.approx(
        added + again + layers * casts.weights_s, rel=1e-6
    )


def test_layer_gemm_and_attention_seconds_are_their_priced_time(host: Any) -> None:
    """A layer's compute seconds are split between its weight GEMMs and its attention
    core by each op's priced time, not by FLOPs: at a long sequence the flash-attention
    core runs well under a GEMM's rate, so its share of the time exceeds its share of the
    FLOPs, and FP8 speeds up only the GEMMs' own seconds."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8)
    compiled = _compile(host, model, par)
    shape = Shape(Phase.TRAIN, batch=1, tokens=16384, recompute="full")
    scm = stage_cost_model(compiled, model, shape, par)
    fwd = [o for o in model.training_stages(model.build(shape, par)).forward.ops]
    layer = [o for o in fwd if o.layer == "layer"]

    def secs(ops: list[Any]) -> float:
        out = 0.0
        for o in ops:
            t = compiled.op_time(o)
            out += t.compute_s * o.count if t.compute_s >= t.memory_s else 0.0
        return out / SMALL["layers"]

    gemms = [o for o in layer if o.kind is OpKind.MATMUL]
    attn = [o for o in layer if o.kind is OpKind.ATTENTION]
    assert attn and gemms
    assert scm.forward.layer_gemm_compute_s == pytest.approx(secs(gemms), rel=1e-9)
    assert scm.forward.layer_attention_compute_s == pytest.approx(secs(attn), rel=1e-9)
    flops = {k: sum(o.flops * o.count for o in v) for k, v in (("g", gemms), ("a", attn))}
    time_share = secs(attn) / (secs(attn) + secs(gemms))
    assert time_share > flops["a"] / (flops["a"] + flops["g"])


def test_torch_sdpa_slows_only_the_attention_backward(host: Any) -> None:
    """``options.attention_kernel: torch-sdpa`` (PyTorch's SDPA flash backend) prices the
    backward's attention core at ``sdpa_backward_ratio`` of the flash-attn package's rate;
    the forward and every GEMM are unchanged, so a long-sequence step gets slower."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8)
    gpu = host.backends.get("gpu")
    dev = gpu.devices()["h100-sxm"]
    shape = Shape(Phase.TRAIN, batch=1, tokens=16384, recompute="none")

    def compiled(kernel: str) -> Any:
        opts = {"attention_kernel": kernel}
        return gpu.compile(model, System("s", "gpu", dev, 8, par, topology_from_device(dev), opts))

    package, sdpa = compiled("flash-attn"), compiled("torch-sdpa")
    a = stage_cost_model(package, model, shape, par)
    b = stage_cost_model(sdpa, model, shape, par)
    ratio = gpu.efficiency(sdpa.system)[0].sdpa_backward_ratio
    assert 0 < ratio < 1
    assert b.forward.layer_attention_compute_s == a.forward.layer_attention_compute_s
    assert b.backward.layer_gemm_compute_s == pytest.approx(a.backward.layer_gemm_compute_s)
    assert b.backward.layer_attention_compute_s == pytest.approx(
        a.backward.layer_attention_compute_s / ratio, rel=1e-9
    )
    plan = _plan(global_batch=8, seq_len=16384, recompute="full")
    assert step_time(sdpa, model, plan).seconds > step_time(package, model, plan).seconds


def test_torchao_float8_pays_amax_reductions_and_backward_recasts(host: Any) -> None:
    """PyTorch Float8 (``fp8_recipe: torchao``, tensorwise dynamic scaling) reads each
    tensor once for its absolute maximum before casting it, casts the GEMM inputs again in
    the backward and transposes the FP8 weights each backward: more memory-bound seconds
    than Transformer Engine's one fused cast-and-transpose, in both passes; under FSDP
    the layer weights are gathered in FP8, so less is communicated. An unknown recipe is
    refused naming the valid ones."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8, zero=3)
    compiled = _compile(host, model, par)
    shape = Shape(Phase.TRAIN, batch=64, tokens=2048, recompute="selective")
    te = stage_cost_model(compiled, model, shape, par, fp8=True).fp8
    ao = stage_cost_model(compiled, model, shape, par, fp8=True, fp8_recipe="torchao").fp8
    assert te.backward_weights_s == 0.0 < ao.backward_weights_s
    assert ao.forward_s > te.forward_s and ao.backward_s > te.backward_s
    # forward: amax (2 bytes) + cast (2 + 1) against 2 + 2, memory-bound either way (a
    # large micro-batch, so the launches of the extra kernels are negligible)
    assert ao.forward_s / te.forward_s == pytest.approx(5 / 4, rel=0.05)
    plan = _plan(
        precision="fp8", global_batch=64, overlap_grad_reduce=False, overlap_param_gather=False
    )
    a = step_time(compiled, model, plan)
    b = step_time(compiled, model, replace(plan, fp8_recipe="torchao"))
    assert b.zero3_exposed_s < a.zero3_exposed_s
    assert b.device_s["memory"] > a.device_s["memory"]
    with pytest.raises(ValueError, match="te, torchao"):
        stage_cost_model(compiled, model, shape, par, fp8=True, fp8_recipe="apex")
    cfg = TrainingConfig(global_batch=8, steps=1, precision="fp8", fp8_recipe="torchao")
    assert make_plan(cfg, model).fp8_recipe == "torchao"


def test_fsdp_without_resharding_gathers_once_and_holds_the_weights(host: Any) -> None:
    """zero: 3 with fsdp_reshard false keeps the gathered stage weights (more memory)
    and skips the backward gather (less communication)."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=16, zero=3)
    plan = _plan(global_batch=64, overlap_grad_reduce=False, overlap_param_gather=False)
    keep = replace(plan, fsdp_reshard=False)
    assert plan_memory(model, par, keep, 80e9).weights > plan_memory(model, par, plan, 80e9).weights
    a = step_time(_compile(host, model, par), model, plan)
    b = step_time(_compile(host, model, par), model, keep)
    assert b.zero3_exposed_s < a.zero3_exposed_s


def test_distributed_optimizer_shards_only_optimizer_states(host: Any) -> None:
    """zero: 1 (Megatron's distributed optimizer) divides the optimizer states by the
    data-parallel group (context ranks included), not weights or gradients."""
    model = _model(host, "llama", **SMALL)
    plan = _plan(global_batch=64)
    z0 = plan_memory(model, Parallelism(data=8), plan, 80e9)
    z1 = plan_memory(model, Parallelism(data=8, zero=1), plan, 80e9)
    assert z1.optimizer == pytest.approx(z0.optimizer / 8)
    assert (z1.weights, z1.gradients) == (z0.weights, z0.gradients)


def test_activation_offloading_caps_device_activations(host: Any) -> None:
    """Offloading keeps two micro-batches of activations on the device; the transfer is
    priced at the offload bandwidth."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=1, pipeline=7)
    plan = _plan(global_batch=32, recompute="none")
    off = replace(plan, offload_activations=True, offload_bandwidth=1e9)
    assert (
        plan_memory(model, par, off, 80e9).activations
        < plan_memory(model, par, plan, 80e9).activations
    )
    st = step_time(_compile(host, model, par), model, off)
    assert st.offload_exposed_s > 0


# --- timeline ------------------------------------------------------------------------------


def _timeline(host: Any, max_rows: int) -> tuple[pl.DataFrame, StepTime, FailureRun]:
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=2, tensor=2, pipeline=2)
    comp = _compile(host, model, par)
    st = step_time(comp, model, _plan(global_batch=16))
    run = FailureRun(
        wall_s=30 * st.seconds + 5.0,
        failures=0,
        checkpoints=1,
        lost_s=0.0,
        checkpoint_s=5.0,
        restart_s=0.0,
        segments=[
            ("train", 0.0, 20 * st.seconds, 0, 20.0),
            ("checkpoint", 20 * st.seconds, 20 * st.seconds + 5.0, 19, 0.0),
            ("train", 20 * st.seconds + 5.0, 30 * st.seconds + 5.0, 20, 10.0),
        ],
    )
    return devices_frame(comp.system, st, run, comp.power_model(), max_rows), st, run


def test_timeline_is_per_device_over_simulated_time(host: Any) -> None:
    """Each device's busy rows follow its stage's schedule step after step: the last
    stage idles while the pipeline fills, the checkpoint sits where it happened, and busy
    seconds per device add up to the step's busy time per step."""
    dev, st, _run = _timeline(host, 10**7)
    assert dev.select(pl.struct("replica", "device").n_unique()).item() == 8
    first = dev.filter((pl.col("replica") == 0) & (pl.col("device") == 0))
    last = dev.filter((pl.col("replica") == 0) & (pl.col("device") == 2))
    busy = ("compute", "memory", "overhead", "comm")
    assert first.filter(pl.col("state").is_in(busy))["start_s"].min() == 0.0
    fill = last.filter(pl.col("state").is_in(busy))["start_s"].min()
    assert isinstance(fill, float) and fill > 0.0  # pipeline fill
    ck = first.filter(pl.col("state") == "checkpoint")
    assert ck["start_s"].to_list() == [pytest.approx(20 * st.seconds)]
    busy_s = first.filter(pl.col("state").is_in(busy)).select(
        (pl.col("end_s") - pl.col("start_s")).sum()
    )
    want = 30 * sum(st.stage_state_s[0][k] for k in busy)
    assert busy_s.item() == pytest.approx(want, rel=1e-9)


def test_big_timelines_are_sampled_within_the_row_budget(host: Any) -> None:
    """Past the row budget every device keeps its busy seconds by state, in windows."""
    exact, _, _ = _timeline(host, 10**7)
    small, _, _ = _timeline(host, 400)
    assert small.height <= 400 < exact.height

    def per_state(f: pl.DataFrame) -> dict[str, float]:
        g = f.group_by("state").agg((pl.col("end_s") - pl.col("start_s")).sum().alias("s"))
        return {k: v for k, v in g.iter_rows() if k not in ("checkpoint", "restart")}

    a, b = per_state(exact), per_state(small)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9)


def test_dualpipe_hides_communication_and_doubles_parameters(host: Any) -> None:
    """DualPipe (DeepSeek-V3) runs a micro-batch in max(compute, communication) instead of
    their sum, keeps two copies of the parameters, and needs an even pipeline."""
    model = _model(host, "mixtral", **MOE)
    par = Parallelism(data=8, pipeline=2, expert=8)
    plan = _plan(global_batch=64)
    dual = replace(plan, schedule="dualpipe")
    a = step_time(_compile(host, model, par), model, plan)
    b = step_time(_compile(host, model, par), model, dual)
    assert b.seconds < a.seconds
    ma, mb = plan_memory(model, par, plan, 80e9), plan_memory(model, par, dual, 80e9)
    assert mb.weights == pytest.approx(2 * ma.weights)
    odd = Parallelism(data=4, pipeline=3, expert=4)
    assert any("even pipeline" in p for p in check_plan(model, odd, dual, 12))


def test_a_scenario_writes_the_plan_end_to_end(tmp_path: Any, host: Any) -> None:
    """A scenario with uneven stages and context parallelism loads, fits and runs: the
    summary reports the partition and the key/value exchange, and the device count is
    data x tensor x pipeline x context."""
    from xpusim.engine.run import simulate
    from xpusim.engine.scenario import load_scenario

    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: plan\n"
        "model: {family: llama, layers: 14, hidden: 1024, heads: 16, kv_heads: 4, "
        "vocab: 32000, seq_len: 8192}\n"
        "workload: {kind: training, global_batch: 8, seq_len: 8192, steps: 20, "
        "first_stage_layers: 2, failures: null, seeds: 1}\n"
        "systems:\n"
        "  - {name: h100, backend: gpu, device: h100-sxm, count: 16,\n"
        "     parallelism: {tensor: 2, pipeline: 4, context: 2}}\n",
        encoding="utf-8",
    )
    sc = load_scenario(path, host)
    assert sc.systems[0].parallelism.data == 1
    res = simulate(sc, host)
    (s,) = res.systems
    assert s.status == "ok", s.reason
    assert s.metrics["pipeline_layers"] == "2, 4×3"
    assert s.metrics["cp_comm_s"] > 0
    # the fullest device's memory by part, as the plan check found it
    parts = ("weights", "gradients", "optimizer", "activations", "reserve")
    total = sum(float(s.metrics[f"memory_{p}_bytes"]) for p in parts)  # type: ignore[arg-type]
    assert total == pytest.approx(float(s.metrics["memory_per_device_bytes"]))  # type: ignore[arg-type]
    # stage 0 holds 2 layers x 4 micro-batches, stage 1 4 layers x 3: stage 1 is fuller
    assert s.metrics["memory_fullest_device"] == (
        "pipeline stage 1 of 4 (4 layers, 3 micro-batches in flight)"
    )
    assert s.metrics["recompute"] == "selective"


def test_trace_of_a_big_cluster_shows_a_sample_of_whole_lanes(host: Any) -> None:
    """timeline.json keeps at most max_lanes device lanes a system, evenly spaced over
    replicas and devices, each with all its intervals, and says so."""
    from xpusim.engine.report.timeline import build_trace
    from xpusim.engine.results import RunResult, SystemResult

    dev, _st, run = _timeline(host, 10**7)
    system = SystemResult(
        name="s",
        backend="gpu",
        device="h100-sxm",
        count=8,
        metrics={"simulated_s": run.wall_s},
        frames={"devices": dev},
    )
    doc = build_trace(RunResult(scenario="t", seed=0, version="test", systems=[system]), 10**6, 4)
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    lanes = {e["tid"] for e in complete}
    assert len(lanes) == 4
    assert doc["otherData"]["lanes"].startswith("4 of 8 device lanes shown")
    busy = dev.filter(pl.col("state").is_in(["compute", "memory", "overhead", "comm"]))
    per_lane = busy.group_by("replica", "device").len()["len"].to_list()
    assert len(complete) == 4 * per_lane[0]


def test_bf16_adam_moments_take_eight_bytes_a_parameter(host: Any) -> None:
    """adam_bf16 keeps the fp32 master and bf16 moments: 8 bytes a parameter against
    Adam's 12."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=8)
    full = plan_memory(model, par, _plan(), 80e9)
    half = plan_memory(model, par, _plan(optimizer="adam_bf16"), 80e9)
    assert half.optimizer == pytest.approx(full.optimizer * 8 / 12)


def test_context_parallel_attention_efficiencies_follow_the_ring_benchmark() -> None:
    """The chunked attention core's forward and backward speeds are the means over H800 and
    A100 of the zigzag-ring benchmark against one flash call on 1/8 of the work (iter/s:
    forward 283.0 / 302.3 and 179.0 / 193.2; forward + backward 75.7 / 88.2 and 49.5 / 58.8)."""
    fwd = ((283.0 / 302.3) + (179.0 / 193.2)) / 2
    bwd_h800 = (1 / 88.2 - 1 / 302.3) / (1 / 75.7 - 1 / 283.0)
    bwd_a100 = (1 / 58.8 - 1 / 193.2) / (1 / 49.5 - 1 / 179.0)
    assert pytest.approx(fwd, abs=1e-3) == CP_ATTENTION_EFFICIENCY_FWD
    assert pytest.approx((bwd_h800 + bwd_a100) / 2, abs=1e-3) == CP_ATTENTION_EFFICIENCY_BWD


# --- fp32 gradient accumulation ----------------------------------------------------------


def test_unfused_fp32_grad_accumulation_is_memory_work_every_microbatch(host: Any) -> None:
    """Megatron-LM 2021's backward hook adds each micro-batch's 16-bit gradient into the
    fp32 buffer: 10 bytes per parameter of memory-bound work, paid once per micro-batch
    (so the step grows by ``m`` times it); fused accumulation adds nothing."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=2)
    compiled = _compile(host, model, par)
    one = grad_accumulation_seconds(compiled, 1e9, "hook")
    bw = compiled.system.device.memory_bw.value
    assert 10e9 / bw <= one < 2 * 10e9 / bw
    assert grad_accumulation_seconds(compiled, 1e9, "fused") == 0.0
    with pytest.raises(ValueError, match="grad_accumulation"):
        grad_accumulation_seconds(compiled, 1e9, "sometimes")
    fused = step_time(compiled, model, _plan(global_batch=16))
    hook = step_time(compiled, model, _plan(global_batch=16, grad_accumulation="hook"))
    params = model.info.params
    per_mb = grad_accumulation_seconds(compiled, params, "hook")
    m = fused.microbatches
    assert hook.seconds - fused.seconds == pytest.approx(m * per_mb, rel=0.05)
    assert hook.device_s["memory"] > fused.device_s["memory"]
    cfg = TrainingConfig.model_validate(
        {"global_batch": 16, "steps": 1, "grad_accumulation": "hook"}
    )
    assert make_plan(cfg, model).grad_accumulation == "hook"
    with pytest.raises(ValueError):
        TrainingConfig.model_validate({"global_batch": 16, "steps": 1, "grad_accumulation": "x"})


# --- the public validation table ------------------------------------------------------


def test_every_public_validation_row_has_a_source_and_a_plan_that_divides(host: Any) -> None:
    """Each row of ``benchmarks/training_rows.yaml`` names its source (title, URL, quote),
    says what it assumes, uses exactly its device count, has a workload a scenario would
    accept and passes the plan checks."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "training_rows.yaml"
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["rows"]
    kinds = {r["kind"] for r in rows}
    assert {"dense", "moe", "long-context", "tpu"} <= kinds
    assert len(rows) >= 15
    for row in rows:
        src = row["source"]
        assert src["title"] and src["url"] and src["quote"], row["id"]
        assert row["metric"] in ("iteration_s", "tokens_per_gpu_s", "tflops_per_gpu")
        if row["metric"] == "tflops_per_gpu":
            assert row["flops"] in ("model", "hardware"), row["id"]
        spec = dict(row["model"])
        model = host.models.get(spec.pop("family")).configure(spec)
        backend = host.backends.get(row.get("backend", "gpu"))
        device = row["device"]
        if isinstance(device, dict):  # a derived device: its base and the figures it changes
            assert device["base"] in backend.devices(), row["id"]
            DerivedDevice.model_validate(device)
        else:
            assert device in backend.devices(), row["id"]
        par = Parallelism(**row["parallelism"])
        # the workload is a scenario's training workload: validated and planned as one
        plan = make_plan(TrainingConfig.model_validate({**row["workload"], "steps": 1}), model)
        assert check_plan(model, par, plan, int(row["gpus"])) == [], row["id"]


def test_fsdp_gathers_and_reduce_scatters_overlap_apart(host: Any) -> None:
    """ZeRO-3: with asynchronous all-gathers but synchronous reduce-scatters (EasyLM's XLA
    flags), only the reduce-scatters are exposed; with neither overlapped both are; the
    gathers of a plan that overlaps everything hide behind a long enough pass."""
    model = _model(host, "llama", **SMALL)
    par = Parallelism(data=16, zero=3)
    compiled = _compile(host, model, par)
    both = _plan(global_batch=64)
    rs_sync = replace(both, overlap_grad_reduce=False)
    none = replace(rs_sync, overlap_param_gather=False)
    a, b, c = (step_time(compiled, model, p) for p in (both, rs_sync, none))
    comms = Comms(compiled, compiled.system)
    sp = stage_param_split(model, par, plan_partition(model, par, both), 0)
    rs = comms.dp(Collective.REDUCE_SCATTER, sp.dense * dtype_bytes(both.grad_dtype))
    ag = comms.dp(Collective.ALL_GATHER, sp.dense * param_bytes(both.precision))
    m = both.microbatches(par.data)
    assert a.zero3_exposed_s < b.zero3_exposed_s < c.zero3_exposed_s
    assert b.zero3_exposed_s - a.zero3_exposed_s == pytest.approx(
        m * (max(0.0, ag - b.bwd_s) + rs - max(0.0, ag + rs - b.bwd_s)), rel=1e-6
    )
    assert c.zero3_exposed_s == pytest.approx(m * (2 * ag + rs), rel=1e-6)
    cfg = TrainingConfig(global_batch=8, steps=1, overlap_param_gather=False)
    assert make_plan(cfg, model).overlap_param_gather is False


def test_fp8_te_keeps_the_linear_inputs_in_one_byte(host: Any) -> None:
    """Under FP8 with Transformer Engine's recipe the linear layers' saved inputs take one
    byte an element: a layer's activations drop by half of its linear-input bytes
    (4 + 10/t of Korthikanti's 10 + 24/t sbh, 14/t of 34/t with sequence parallelism);
    torchao's recipe and full recomputation keep what bf16 keeps."""
    model = _model(host, "llama", **SMALL)
    shape = Shape(Phase.TRAIN, batch=1, tokens=2048)
    sbh = 2048 * SMALL["hidden"]
    layers = SMALL["layers"]
    e = dtype_bytes(model.cfg.dtype) / 2
    for par, per in (
        (Parallelism(tensor=2), sbh * (4 + 10 / 2)),
        (Parallelism(tensor=2, sequence=True), 14 * sbh / 2),
    ):
        assert model.linear_input_bytes(shape, par, "selective") == pytest.approx(per * layers * e)
    assert model.linear_input_bytes(shape, Parallelism(), "full") == 0.0
    par = Parallelism(data=8)

    def act(**kw: Any) -> float:
        return min(m.activations for m in stage_memory_list(model, par, _plan(**kw), 80e9))

    bf16 = act(precision="bf16", recompute="selective")
    lin = model.linear_input_bytes(shape, Parallelism(data=8), "selective")
    assert act(precision="fp8", recompute="selective") == pytest.approx(bf16 - lin / 2)
    assert act(precision="fp8", fp8_recipe="torchao", recompute="selective") == pytest.approx(bf16)
    full = act(precision="bf16", recompute="full")
    assert act(precision="fp8", recompute="full") == pytest.approx(full)


def test_the_last_stage_keeps_one_micro_batch_of_the_loss(host: Any) -> None:
    """Only the last pipeline stage holds the head's activations, for one micro-batch."""
    model = _model(host, "llama", **SMALL)
    shape = Shape(Phase.TRAIN, batch=1, tokens=2048, recompute="selective")
    par = Parallelism(data=2, pipeline=2)
    plan = _plan(recompute="selective")
    stages = stage_memory_list(model, par, plan, 80e9)
    per_layer = model.activation_bytes(shape, Parallelism(pipeline=2), "selective") / 7
    head = model.head_activation_bytes(shape, Parallelism(pipeline=2))
    assert head > 0
    assert stages[0].activations == pytest.approx(per_layer * 7 * stages[0].in_flight)
    assert stages[1].activations == pytest.approx(per_layer * 7 * stages[1].in_flight + head)
