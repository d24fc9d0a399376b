"""The ``training`` workload: pre-training and fine-tuning runs at cluster scale.

The scenario's ``workload:`` block (:class:`TrainingConfig`) gives the batch, sequence
length, length of the run (``steps`` or ``tokens``), activation recomputation, precision
and the failure/checkpoint model; each system gives its parallel plan
(``parallelism: {data, tensor, pipeline, virtual, sequence, zero}``) and topology. The
step model and the failure world are :mod:`xpusim.plugins.workloads.training.steps`; the memory model is
:mod:`xpusim.plugins.workloads.training.memory`; ``docs/workloads/training.md`` is the reference.

Export: ``WORKLOADS``, which ``xpusim.plugins.workloads`` registers through ``register_workloads``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.budget import PASS_EVENTS, REPLAY_EVENTS, Work, check_work
from xpusim.engine.errors import DoesNotFitError, ScenarioError
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.qty import Bandwidth, Bytes, Duration, DurationOrZero
from xpusim.engine.recompute import RecomputeModule, selective_recompute
from xpusim.engine.system import System
from xpusim.engine.workload import SystemRun, Workload, WorkloadContext
from xpusim.plugins.workloads.training.failures import (
    MAX_EVENTS,
    FailureSpec,
    percentile,
    replay_events,
    simulate_failures,
)
from xpusim.plugins.workloads.training.frames import devices_frame, steps_frame
from xpusim.plugins.workloads.training.memory import MemoryNeed, checkpoint_bytes
from xpusim.plugins.workloads.training.metrics import TRAINING_METRICS
from xpusim.plugins.workloads.training.plan import (
    TrainingPlan,
    check_plan,
    missing_modules,
    nearest_plans,
    plan_memory,
)
from xpusim.plugins.workloads.training.steps import step_time

__all__ = ["WORKLOADS", "FailuresConfig", "TrainingConfig", "TrainingWorkload"]

HOUR = 3600.0

PCIE5_X16_BYTES_PER_S = 16 * 32e9 * 128 / 130 / 8
"""One direction of a PCIe 5.0 x16 link, the host link of H100/H200/B200 boards: 16 lanes
at 32 GT/s with 128b/130b encoding (PCI-SIG, PCI Express Base Specification 5.0), about
63 GB/s — the default rate of activation offloading to host memory."""

LLAMA3_MTBF_H = 16384 * 54 * 24 / 419
"""Per-GPU mean time between failures implied by Llama Team 2024, 'The Llama 3 Herd of
Models' (arXiv:2407.21783) §3.3.4: 419 unexpected interruptions in a 54-day snapshot of
pre-training on 16,384 H100 GPUs, about 50,700 GPU-hours per interruption."""


class FailuresConfig(BaseModel):
    """``workload.failures``: independent device failures and periodic checkpoints.

    ``mtbf_per_device`` is one device's mean time between failures (a job on ``n``
    devices fails every ``mtbf/n`` on average); ``restart`` the time from a failure to
    training again, besides reading the checkpoint back; ``checkpoint_interval`` the
    training time between checkpoints; ``storage_bandwidth`` the aggregate rate at which
    the whole job writes and reads a checkpoint (weights plus optimizer states).
    """

    model_config = ConfigDict(extra="forbid")

    mtbf_per_device: Duration = Field(default=50_000 * HOUR)
    restart: DurationOrZero = Field(default=600.0)
    checkpoint_interval: Duration = Field(default=HOUR)
    storage_bandwidth: Bandwidth = Field(default=10e9)


MAX_STEPS = 10_000_000
"""Most optimizer steps a run may have, given or derived from ``tokens``: ten times the
largest published runs (about a million), and the bound that keeps the one-row-per-step
frame within a few GB and seconds."""

MAX_TRAINING_TOKENS = 1e16
"""Most tokens a run may train on (about a thousand times the largest published runs)."""


class TrainingConfig(BaseModel):
    """``workload:`` of kind ``training`` (see docs/workloads/training.md).

    Give the run's length as ``steps`` or as ``tokens`` (not both). ``seq_len`` defaults
    to the model's. ``failures: null`` turns failures and checkpoints off.
    """

    model_config = ConfigDict(extra="forbid")

    global_batch: int = Field(ge=1, description="sequences per optimizer step")
    micro_batch: int = Field(default=1, ge=1, description="sequences per micro-batch")
    seq_len: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    tokens: float | None = Field(default=None, gt=0, le=MAX_TRAINING_TOKENS)
    recompute: Literal["none", "selective", "full"] = "selective"
    recompute_modules: list[RecomputeModule] | None = Field(
        default=None,
        description=(
            "with recompute: selective, the modules recomputed (Megatron-Core's "
            "--recompute-modules; default the attention core alone)"
        ),
    )
    precision: Literal["bf16", "fp16", "fp32", "fp8"] = "bf16"
    optimizer: Literal["adam", "adam_bf16", "sgd"] = "adam"
    grad_reduce_dtype: Literal["bf16", "fp16", "fp32"] | None = None
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = Field(
        default=True,
        description="ZeRO-3/FSDP parameter all-gathers overlapped with the computation",
    )
    bucket_size: Bytes = Field(default=25e6)
    failures: FailuresConfig | None = Field(default_factory=FailuresConfig)
    seeds: int = Field(default=5, ge=1, le=1001)
    layers_per_stage: list[int] | None = Field(
        default=None, description="transformer layers of each pipeline stage, first to last"
    )
    first_stage_layers: int | None = Field(default=None, ge=1)
    last_stage_layers: int | None = Field(default=None, ge=1)
    context_comm: Literal["ring", "all_gather"] = "ring"
    fsdp_reshard: bool = True
    offload_activations: bool = False
    offload_bandwidth: Bandwidth = Field(default=PCIE5_X16_BYTES_PER_S)
    schedule: Literal["1f1b", "dualpipe"] = "1f1b"
    grad_accumulation: Literal["fused", "hook", "none"] = Field(
        default="fused",
        description="how micro-batch weight gradients reach the fp32 gradient buffer",
    )
    fp8_recipe: Literal["te", "torchao"] = Field(
        default="te",
        description="the FP8 training stack whose quantization kernels precision fp8 pays",
    )

    @model_validator(mode="after")
    def _modules(self) -> TrainingConfig:
        if self.recompute_modules is not None:
            if self.recompute != "selective":
                raise ValueError(
                    f"recompute_modules names what a selective recomputation reruns, and "
                    f"recompute is {self.recompute!r}; set recompute: selective or drop "
                    f"recompute_modules"
                )
            if not self.recompute_modules:
                raise ValueError(
                    "recompute_modules is empty; name at least one module (for example "
                    "[core_attn]) or set recompute: none"
                )
        return self

    @model_validator(mode="after")
    def _length(self) -> TrainingConfig:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError(
                "give the run's length as exactly one of `steps` or `tokens` "
                "(for example steps: 1000, or tokens: 3.0e11)"
            )
        return self


def make_plan(config: TrainingConfig, model: ModelGraph) -> TrainingPlan:
    """The engine-side plan of ``config`` for ``model``; raises :class:`ScenarioError`
    when ``recompute_modules`` names a part the model does not have."""
    lacking = missing_modules(model, config.recompute_modules or ())
    if lacking is not None:
        raise ScenarioError(
            f"workload.recompute_modules: {lacking[0]} not in {model.name}, whose parts a "
            f"selective recomputation can name are {lacking[1]}; drop the others."
        )
    seq = config.seq_len or int(model.info.max_seq_len or 0) or 2048
    grad = config.grad_reduce_dtype or (
        "fp32"
        if config.precision == "fp32"
        else "bf16"
        if config.precision == "fp8"
        else config.precision
    )
    return TrainingPlan(
        global_batch=config.global_batch,
        micro_batch=config.micro_batch,
        seq_len=seq,
        recompute=(
            selective_recompute(config.recompute_modules)
            if config.recompute_modules
            else config.recompute
        ),
        precision=config.precision,
        optimizer=config.optimizer,
        grad_dtype=grad,
        overlap_grad_reduce=config.overlap_grad_reduce,
        overlap_param_gather=config.overlap_param_gather,
        bucket_bytes=float(config.bucket_size),
        layers_per_stage=tuple(config.layers_per_stage) if config.layers_per_stage else None,
        first_stage_layers=config.first_stage_layers,
        last_stage_layers=config.last_stage_layers,
        context_comm=config.context_comm,
        fsdp_reshard=config.fsdp_reshard,
        offload_activations=config.offload_activations,
        offload_bandwidth=float(config.offload_bandwidth),
        schedule=config.schedule,
        grad_accumulation=config.grad_accumulation,
        fp8_recipe=config.fp8_recipe,
    )


def total_steps(config: TrainingConfig, plan: TrainingPlan) -> int:
    """Optimizer steps of the run (``steps``, or ``tokens`` over tokens per step)."""
    if config.steps is not None:
        return config.steps
    assert config.tokens is not None
    steps = max(1, math.ceil(config.tokens / plan.tokens_per_step))
    if steps > MAX_STEPS:
        raise ScenarioError(
            f"workload.tokens: {config.tokens:.3g} tokens at {plan.tokens_per_step:,} tokens a "
            f"step are {steps:,} optimizer steps, more than {MAX_STEPS:,}; train on fewer "
            f"tokens or raise global_batch or seq_len."
        )
    return steps


def _reserve(compiled: Compiled) -> float:
    return float(compiled.reserve_bytes)


def _power(compiled: Compiled, system: System) -> PowerModel | None:
    del system  # the compilation's power model already describes its device
    return compiled.power_model()


def memory_metrics(need: MemoryNeed) -> dict[str, object]:
    """The summary's memory keys: each part on the fullest device, and which it is."""
    return {
        "memory_weights_bytes": need.weights,
        "memory_gradients_bytes": need.gradients,
        "memory_optimizer_bytes": need.optimizer,
        "memory_activations_bytes": need.activations,
        "memory_reserve_bytes": need.reserve,
        "memory_fullest_device": need.where() or "every device alike (no pipeline)",
    }


def training_fit(config: TrainingConfig, system: System, compiled: Compiled) -> Fit:
    """Whether ``config`` under ``system``'s plan divides and fits, with the nearest
    plans that would when it does not."""
    return _fit_and_need(config, system, compiled)[0]


def _fit_and_need(
    config: TrainingConfig, system: System, compiled: Compiled
) -> tuple[Fit, MemoryNeed | None]:
    """:func:`training_fit` and the memory of the plan's fullest device (``None`` for a
    plan that does not divide)."""
    model = compiled.model
    plan = make_plan(config, model)
    par = system.parallelism
    have = system.device.memory_bytes.value
    reserve = _reserve(compiled)

    def nearest() -> str:
        plans = nearest_plans(
            model,
            par,
            plan,
            system.count,
            have,
            reserve,
            max_tensor=max(par.tensor, system.topology.devices_per_node),
        )
        if not plans:
            return (
                f"No plan of tensor, pipeline, ZeRO stage, recomputation and micro-batch "
                f"on {system.count}×{system.device.name} holds {model.name}; use more "
                f"devices or devices with more memory."
            )
        return "Nearest plans that divide and fit: " + "; ".join(plans) + "."

    problems = check_plan(model, par, plan, system.count)
    if plan.precision == "fp8" and "fp8" not in system.device.peak_flops:
        problems.append(
            f"precision fp8 needs FP8 matrix units, and {system.device.name} lists no FP8 "
            f"peak (use bf16, or a device with FP8)"
        )
    if problems:
        return Fit(
            False,
            0.0,
            have,
            {},
            reason=f"The plan of system {system.name!r} is invalid: " + "; ".join(problems) + ".",
            suggestion=nearest(),
        ), None
    need = plan_memory(model, par, plan, have, reserve)
    if need.fits:
        return Fit(True, need.total, have, need.breakdown()), need
    desc = (
        f"data={par.data}, tensor={par.tensor}, pipeline={par.pipeline}"
        + (f", virtual={par.virtual}" if par.virtual > 1 else "")
        + (f", context={par.context}" if par.context > 1 else "")
        + (f", expert={par.expert}" if par.expert > 1 else "")
        + f", zero={par.zero}, recompute={plan.recompute}, micro_batch={plan.micro_batch}"
    )
    where = need.where()
    return Fit(
        False,
        need.total,
        have,
        need.breakdown(),
        reason=(
            f"Training {model.name} with {desc} needs {need.total / 1e9:.1f} GB per device"
            + (f" on {where}" if where else "")
            + f" ({need.describe()}) but one {system.device.name} has {have / 1e9:.1f} GB: "
            f"short by {(need.total - have) / 1e9:.1f} GB."
        ),
        suggestion=nearest(),
    ), need


class TrainingWorkload(Workload):
    """Kind ``training``: step time from the backend's costs and the parallel plan, then
    time-to-train, goodput and their spread over seeds with failures and checkpoints."""

    name = "training"
    description = (
        "pre-training / fine-tuning: data, tensor, pipeline (1F1B, interleaved, uneven "
        "stages), context, expert and ZeRO/FSDP parallelism, FP8, recomputation, "
        "activation offloading, failures and checkpoints"
    )
    schema = TrainingConfig
    metrics = TRAINING_METRICS

    def shape_hint(self, config: BaseModel) -> dict[str, object]:
        """``batch`` (the micro-batch) and ``training``."""
        assert isinstance(config, TrainingConfig)
        return {"batch": config.micro_batch, "training": True}

    def work(self, config: BaseModel, system: System, model: ModelGraph) -> Work | None:
        """One step's pipeline: stages x virtual stages x micro-batches, forward and
        backward, :data:`~xpusim.engine.budget.PASS_EVENTS` each (the failure replay has its own limit,
        :data:`~xpusim.plugins.workloads.training.failures.MAX_EVENTS`)."""
        assert isinstance(config, TrainingConfig)
        par = system.parallelism
        p, v = par.pipeline, max(1, par.virtual)
        m = make_plan(config, model).microbatches(par.data)
        return Work(
            events=PASS_EVENTS * 2.0 * p * v * m,
            how=(
                f"{PASS_EVENTS} x 2 passes x {p:,} stages x {v:,} virtual stages x {m:,} micro-batches "
                f"(global_batch / (micro_batch x data))"
            ),
            shrink="workload.global_batch, raise workload.micro_batch, or fewer stages",
        )

    def fit(self, config: BaseModel, system: System, compiled: Compiled) -> Fit:
        """Training memory per device (weights, gradients, Adam states per ZeRO stage,
        activations in flight) and the plan's divisibility; see :func:`training_fit`."""
        assert isinstance(config, TrainingConfig)
        return training_fit(config, system, compiled)

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Price one step, replay the run with failures for ``seeds`` seeds, and report the
        median run's frames and the spread of time-to-train."""
        assert isinstance(config, TrainingConfig)
        system, compiled, model = ctx.system, ctx.compiled, ctx.compiled.model
        fit, need = _fit_and_need(config, system, compiled)
        if not fit.fits or need is None:
            raise DoesNotFitError(" ".join(x for x in (fit.reason, fit.suggestion) if x))
        plan = make_plan(config, model)
        power = _power(compiled, system)
        st = step_time(compiled, model, plan, power)
        steps = total_steps(config, plan)

        f = config.failures
        if f is None:
            spec = FailureSpec()
            ckpt_b = 0.0
            write_s = read_s = 0.0
        else:
            spec = FailureSpec(
                f.mtbf_per_device, f.restart, f.checkpoint_interval, f.storage_bandwidth
            )
            ckpt_b = checkpoint_bytes(model, plan.precision, plan.optimizer)
            write_s = read_s = ckpt_b / f.storage_bandwidth
        seeds = [ctx.seed * 1_000_003 + i for i in range(config.seeds)]
        per = replay_events(st.seconds, steps, system.count, spec, write_s) if f else 0.0
        if per <= MAX_EVENTS:  # above it, the replay's own check names the fix
            # each seed's replay, and the median's again with its frames
            check_work(
                Work(
                    events=REPLAY_EVENTS * (len(seeds) + 1) * per,
                    how=(
                        f"{REPLAY_EVENTS} x {len(seeds) + 1} replays x {per:,.0f} checkpoint "
                        f"segments and failures"
                    ),
                    shrink="workload.seeds, a longer failures.checkpoint_interval, fewer steps",
                ),
                "workload.failures",
                system.name,
            )
        walls = []
        for i, s in enumerate(seeds):
            walls.append(
                simulate_failures(st.seconds, steps, system.count, spec, write_s, read_s, s).wall_s
            )
            ctx.progress(i + 1, len(seeds) + 1)
        order = sorted(range(len(walls)), key=lambda i: (walls[i], i))
        median_seed = seeds[order[(len(order) - 1) // 2]]
        run = simulate_failures(
            st.seconds, steps, system.count, spec, write_s, read_s, median_seed, record=True
        )
        ctx.progress(len(seeds) + 1, len(seeds) + 1)

        n = system.count
        try:
            peak = system.device.flops(plan.precision)
        except Exception:
            peak = system.device.flops("bf16")
        useful = steps * st.seconds
        tokens = steps * plan.tokens_per_step
        wall = run.wall_s
        metrics: dict[str, object] = {
            "step_time_s": st.seconds,
            "throughput_tokens_per_s": tokens / wall if wall else 0.0,
            "throughput_samples_per_s": steps * plan.global_batch / wall if wall else 0.0,
            "throughput_tokens_per_s_no_failures": plan.tokens_per_step / st.seconds,
            "mfu": st.model_flops / (n * peak * st.seconds),
            "hfu": st.hardware_flops / (n * peak * st.seconds),
            "model_tflops_per_device": st.model_flops / (n * st.seconds) / 1e12,
            "hardware_tflops_per_device": st.hardware_flops / (n * st.seconds) / 1e12,
            "time_to_train_s": wall,
            "time_to_train_p10_s": percentile(walls, 10),
            "time_to_train_p50_s": percentile(walls, 50),
            "time_to_train_p90_s": percentile(walls, 90),
            "goodput": useful / wall if wall else 1.0,
            "goodput_p10": useful / percentile(walls, 90) if walls else 1.0,
            "goodput_p90": useful / percentile(walls, 10) if walls else 1.0,
            "device_hours": n * wall / HOUR,
            "steps": steps,
            "tokens": tokens,
            "microbatches": st.microbatches,
            "pipeline_bubble_fraction": st.pipeline.bubble_fraction,
            "bubble_s": st.bubble_s,
            "tp_comm_s": st.stage_breakdown.get("comm", 0.0) * st.microbatches,
            "pp_comm_s": st.pipeline.p2p_s,
            "dp_comm_s": st.dp_comm_s,
            "dp_comm_exposed_s": st.dp_exposed_s + st.param_gather_s + st.zero3_exposed_s,
            "cp_comm_s": st.cp_comm_s,
            "cp_comm_exposed_s": st.cp_exposed_s,
            "offload_exposed_s": st.offload_exposed_s,
            "pipeline_layers": st.partition.describe() if st.partition is not None else "",
            "optimizer_s": st.optimizer_s,
            "failures": run.failures,
            "checkpoints": run.checkpoints,
            "checkpoint_bytes": ckpt_b,
            "checkpoint_write_s": write_s,
            "lost_work_s": run.lost_s,
            "seeds": len(seeds),
            "memory_per_device_bytes": fit.need_bytes,
            **memory_metrics(need),
            "recompute": plan.recompute,
            "flops_definition": (
                "mfu: model FLOPs 3*F + 12*L*heads*head_dim*s per token "
                "(Narayanan et al. 2021 eq. 3 without recomputation); hfu: "
                "plus the recomputed forward"
            ),
        }
        frames = {
            "steps": steps_frame(system.name, st, run),
            "devices": devices_frame(system, st, run, power),
        }
        return SystemRun(metrics=metrics, frames=frames, simulated_s=wall)


WORKLOADS: list[Workload] = [TrainingWorkload()]
"""The workload kinds this module provides."""
