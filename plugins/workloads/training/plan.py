"""The workload side of a training plan: what it is, whether it divides, what it needs.

A :class:`TrainingPlan` is the scenario's ``workload:`` block made concrete (batch,
sequence, recomputation, precision, optimizer, gradient reduction, pipeline partition,
context-parallel communication, FSDP resharding, activation offloading); the system side
is its :class:`~xpusim.engine.system.Parallelism` (``data``, ``tensor``, ``pipeline``,
``virtual``, ``context``, ``expert``, ``sequence``, ``zero``). :func:`check_plan` names
what does not divide, :func:`plan_memory` the memory of the fullest device,
:func:`nearest_plans` the plans on the same devices that divide and fit, and
:func:`flops_per_token` the model and hardware FLOPs behind MFU and HFU.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from xpusim.engine.graph import Phase, Shape
from xpusim.engine.model import RECOMPUTE, ModelGraph
from xpusim.engine.recompute import (
    LIGHT_RECOMPUTE_MODULES,
    RECOMPUTE_MODULES,
    recomputed_modules,
    selective_recompute,
)
from xpusim.engine.system import Parallelism, divisors
from xpusim.plugins.workloads.training.memory import MemoryNeed, stage_memories
from xpusim.plugins.workloads.training.partition import StagePartition, make_partition

__all__ = [
    "TrainingPlan",
    "cfg_int",
    "check_plan",
    "flops_per_token",
    "missing_modules",
    "nearest_plans",
    "plan_memory",
    "plan_partition",
]


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """The workload side of a training step (the system side is its ``Parallelism``).

    ``layers_per_stage`` / ``first_stage_layers`` / ``last_stage_layers`` give the
    pipeline partition (:mod:`.partition`); ``context_comm`` how context-parallel ranks
    exchange keys and values (``ring``: point-to-point, overlapped with attention;
    ``all_gather``: gathered before attention); ``fsdp_reshard`` whether ZeRO-3/FSDP frees
    the gathered weights after the forward; ``offload_activations`` moves activations of
    the micro-batches in flight to host memory at ``offload_bandwidth`` bytes/s;
    ``schedule`` is ``1f1b`` (interleaved when ``virtual > 1``) or ``dualpipe`` (DeepSeek-V3's
    bidirectional schedule, :mod:`.steps`). ``grad_accumulation`` is how each
    micro-batch's weight gradients reach the fp32 gradient buffer (Megatron-LM's
    ``main_grad``): ``fused`` inside the weight-gradient GEMM (``--gradient-accumulation-
    fusion``, on by default since 2022: the GEMM reads and writes the fp32 buffer in its
    epilogue, hidden by the compute-bound GEMM), ``hook`` by a separate kernel per
    parameter after the GEMM wrote a 16-bit gradient (``param.main_grad.add_(param.grad)``,
    Megatron-LM's 2021 backward hook: memory-bound work every micro-batch, :mod:`.steps`),
    ``none`` when gradients are accumulated in the 16-bit buffer itself.
    ``overlap_param_gather`` whether ZeRO-3/FSDP's parameter all-gathers run behind the
    computation (prefetched a layer ahead: PyTorch FSDP's default prefetch, XLA's
    asynchronous all-gather); ``overlap_grad_reduce`` governs the gradient reductions
    only, so a stack whose gathers are asynchronous and whose reduce-scatters are not
    (EasyLM's XLA flags enable only ``--xla_enable_async_all_gather``) is
    ``overlap_param_gather`` on, ``overlap_grad_reduce`` off.
    ``fp8_recipe`` names the FP8 training stack whose quantization kernels a
    ``precision: fp8`` plan pays (``te``: Transformer Engine; ``torchao``: PyTorch Float8,
    tensorwise dynamic scaling, with FSDP's float8 all-gather; :mod:`.stagecost`).
    """

    global_batch: int
    micro_batch: int
    seq_len: int
    recompute: str = "selective"
    precision: str = "bf16"
    optimizer: str = "adam"
    grad_dtype: str = "bf16"
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    bucket_bytes: float = 25e6
    layers_per_stage: tuple[int, ...] | None = None
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None
    context_comm: str = "ring"
    fsdp_reshard: bool = True
    offload_activations: bool = False
    offload_bandwidth: float = 0.0
    schedule: str = "1f1b"
    grad_accumulation: str = "fused"
    fp8_recipe: str = "te"

    def microbatches(self, data: int) -> int:
        """Micro-batches per replica per step (``global_batch / (micro_batch · data)``)."""
        return max(1, self.global_batch // max(1, self.micro_batch * data))

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains."""
        return self.global_batch * self.seq_len


def cfg_int(model: ModelGraph, key: str) -> int:
    """An integer architecture field of the model's config (0 when absent)."""
    v = (model.info.config or {}).get(key)
    return int(v) if v else 0


def _layers(model: ModelGraph) -> int:
    return int(model.info.layers or cfg_int(model, "layers"))


def plan_partition(
    model: ModelGraph, par: Parallelism, plan: TrainingPlan
) -> StagePartition | None:
    """The pipeline partition of ``plan`` under ``par`` (``None`` for a model without a
    layer count); ``ValueError`` when the plan's partition does not add up."""
    layers = _layers(model)
    if not layers:
        return None
    return make_partition(
        layers,
        max(1, par.pipeline),
        max(1, par.virtual),
        plan.layers_per_stage,
        plan.first_stage_layers,
        plan.last_stage_layers,
    )


def missing_modules(model: ModelGraph, modules: Iterable[str]) -> tuple[str, str] | None:
    """The recompute ``modules`` that ``model`` does not have and the ones it has, each
    listed in :data:`~xpusim.engine.recompute.RECOMPUTE_MODULES` order; ``None`` when it
    has them all."""
    has = model.recomputable()
    missing = set(modules) - has
    if not missing:
        return None

    def listed(mods: Collection[str]) -> str:
        return ", ".join(m for m in RECOMPUTE_MODULES if m in mods)

    return listed(missing), listed(has)


def check_plan(model: ModelGraph, par: Parallelism, plan: TrainingPlan, count: int) -> list[str]:
    """Sentences naming what in ``par``/``plan`` does not divide (empty when it is valid)."""
    problems: list[str] = []
    if par.devices != count:
        ctx = f" x context {par.context}" if par.context > 1 else ""
        problems.append(
            f"data x tensor x pipeline{ctx} = {par.data} x {par.tensor} x "
            f"{par.pipeline} = {par.devices} devices, but the system has {count}"
        )
    layers = _layers(model)
    if layers and par.pipeline > layers:
        problems.append(f"pipeline = {par.pipeline} exceeds the model's {layers} layers")
    else:
        try:
            plan_partition(model, par, plan)
        except ValueError as exc:
            problems.append(str(exc))
    lacking = missing_modules(model, recomputed_modules(plan.recompute))
    if lacking is not None:
        problems.append(
            f"recompute_modules {lacking[0]} are not parts of {model.name} (it has {lacking[1]})"
        )
    heads = cfg_int(model, "heads")
    if heads and heads % par.tensor:
        problems.append(f"tensor = {par.tensor} does not divide the model's {heads} heads")
    per = plan.micro_batch * par.data
    if plan.global_batch % per:
        problems.append(
            f"global_batch = {plan.global_batch} is not a multiple of micro_batch "
            f"x data = {plan.micro_batch} x {par.data} = {per}"
        )
    if par.virtual > 1:
        if par.pipeline == 1:
            problems.append(f"virtual = {par.virtual} stages need pipeline > 1")
        elif plan.global_batch % per == 0 and plan.microbatches(par.data) % par.pipeline:
            problems.append(
                f"the interleaved schedule needs the {plan.microbatches(par.data)} "
                f"micro-batches per replica to be a multiple of pipeline = "
                f"{par.pipeline}"
            )
    if plan.schedule == "dualpipe":
        m = plan.microbatches(par.data)
        if par.pipeline < 2 or par.pipeline % 2 or par.virtual > 1:
            problems.append(
                f"the dualpipe schedule needs an even pipeline >= 2 without virtual stages "
                f"(pipeline = {par.pipeline}, virtual = {par.virtual})"
            )
        elif m % 2 or m < par.pipeline:
            problems.append(
                f"the dualpipe schedule feeds micro-batches from both ends, so the {m} "
                f"micro-batches per replica must be even and at least pipeline = {par.pipeline}"
            )
    if par.context > 1 and plan.seq_len % (2 * par.context):
        problems.append(
            f"context = {par.context} splits each sequence into 2 x {par.context} "
            f"load-balanced chunks, so seq_len = {plan.seq_len} must be a multiple of "
            f"{2 * par.context}"
        )
    experts = cfg_int(model, "experts")
    if par.expert > 1:
        if experts <= 1:
            problems.append(f"expert = {par.expert} needs a mixture-of-experts model")
        elif experts % par.expert:
            problems.append(f"expert = {par.expert} does not divide the model's {experts} experts")
        if (par.data * par.context) % par.expert:
            problems.append(
                f"expert = {par.expert} must divide data x context = {par.data} x "
                f"{par.context} (expert-parallel ranks are taken from the data-parallel "
                f"group)"
            )
    return problems


def plan_memory(
    model: ModelGraph,
    par: Parallelism,
    plan: TrainingPlan,
    have_bytes: float,
    reserve_bytes: float = 0.0,
) -> MemoryNeed:
    """Memory of the plan's fullest device (:func:`stage_memory_list`' largest)."""
    return max(
        stage_memory_list(model, par, plan, have_bytes, reserve_bytes),
        key=lambda x: (x.total, -x.stage),
    )


def stage_memory_list(
    model: ModelGraph,
    par: Parallelism,
    plan: TrainingPlan,
    have_bytes: float,
    reserve_bytes: float = 0.0,
) -> list[MemoryNeed]:
    """Per-device memory of every pipeline stage of ``plan`` under ``par``
    (:func:`xpusim.plugins.workloads.training.memory.stage_memories`)."""
    return stage_memories(
        model,
        par,
        micro_batch=plan.micro_batch,
        seq_len=plan.seq_len,
        microbatches=plan.microbatches(par.data),
        recompute=plan.recompute,
        precision=plan.precision,
        have_bytes=have_bytes,
        optimizer=plan.optimizer,
        reserve_bytes=reserve_bytes,
        partition=plan_partition(model, par, plan),
        grad_dtype=plan.grad_dtype,
        fsdp_reshard=plan.fsdp_reshard,
        offload_activations=plan.offload_activations,
        dualpipe=plan.schedule == "dualpipe",
        fp8_recipe=plan.fp8_recipe,
    )


def nearest_plans(
    model: ModelGraph,
    par: Parallelism,
    plan: TrainingPlan,
    count: int,
    have_bytes: float,
    reserve_bytes: float = 0.0,
    limit: int = 3,
    max_tensor: int = 64,
) -> list[str]:
    """Up to ``limit`` plans on the same ``count`` devices that divide and fit, nearest
    first (fewest changed settings, then least memory), each as a short phrase. The
    context and expert degrees are kept; pipeline degrees that do not divide the layers
    use the default partition; tensor degrees stay within ``max_tensor`` (the fast
    domain of a node, when the caller knows it)."""
    heads = cfg_int(model, "heads")
    layers = _layers(model)
    cp = max(1, par.context)
    per_cp = count // cp if count % cp == 0 else count
    tensors = [t for t in divisors(per_cp) if t <= max_tensor and (not heads or heads % t == 0)]
    found: list[tuple[int, float, str]] = []
    light = selective_recompute(LIGHT_RECOMPUTE_MODULES & model.recomputable())
    recomputes = list(dict.fromkeys((plan.recompute, "selective", light, "full")))
    for t in tensors:
        for p in divisors(per_cp // t):
            if layers and p > layers:
                continue
            d = per_cp // (t * p)
            if (d * cp) % max(1, par.expert):
                continue
            for zero in sorted({par.zero, 1, 3}):
                for rc in recomputes:
                    for mb in sorted({plan.micro_batch, 1}):
                        if plan.global_batch % (mb * d):
                            continue
                        v = (
                            par.virtual
                            if (
                                par.virtual > 1
                                and p > 1
                                and (plan.global_batch // (mb * d)) % p == 0
                            )
                            else 1
                        )
                        cand = replace(par, data=d, tensor=t, pipeline=p, virtual=v, zero=zero)
                        keep = p == par.pipeline
                        cplan = replace(
                            plan,
                            recompute=rc,
                            micro_batch=mb,
                            layers_per_stage=plan.layers_per_stage if keep else None,
                            first_stage_layers=plan.first_stage_layers if keep else None,
                            last_stage_layers=plan.last_stage_layers if keep else None,
                        )
                        try:
                            need = plan_memory(model, cand, cplan, have_bytes, reserve_bytes)
                        except Exception:
                            continue
                        if not need.fits:
                            continue
                        changed = sum(
                            (
                                t != par.tensor,
                                p != par.pipeline,
                                zero != par.zero,
                                rc != plan.recompute,
                                mb != plan.micro_batch,
                                v != par.virtual,
                            )
                        )
                        text = (
                            f"tensor={t}, pipeline={p}, data={d}"
                            + (f", context={cp}" if cp > 1 else "")
                            + (f", virtual={v}" if v > 1 else "")
                            + (f", zero={zero}" if zero else "")
                            + f", recompute={rc}, micro_batch={mb} "
                            f"({need.total / 1e9:.1f} GB per device)"
                        )
                        found.append((changed, need.total, text))
    found.sort(key=lambda x: (x[0], x[1]))
    out: list[str] = []
    for _, _, text in found:
        if text not in out:
            out.append(text)
        if len(out) == limit:
            break
    return out


def flops_per_token(model: ModelGraph, seq_len: int, recompute: str) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per trained token (see
    :mod:`xpusim.plugins.workloads.training.steps`)."""
    info = model.info
    c = info.config or {}
    fwd = info.flops_per_token or 2.0 * info.active_params
    layers = info.layers or int(c.get("layers", 0) or 0)
    heads = int(c.get("heads", 0) or 0)
    hidden = int(c.get("hidden", 0) or 0)
    head_dim = int(c.get("head_dim") or (hidden // heads if heads else 0))
    attn_fwd = 4.0 * layers * heads * head_dim * seq_len
    model_f = 3.0 * fwd + 3.0 * attn_fwd
    head = 2.0 * float(c.get("vocab", 0) or 0) * hidden
    mods = recomputed_modules(recompute)
    if recompute == "full":
        extra = max(0.0, fwd - head) + attn_fwd
    else:
        extra = attn_fwd if "core_attn" in mods else 0.0
        if mods - {"core_attn"}:  # the other modules' ops, as the training graph reruns them
            extra += _rerun_flops(model, seq_len, selective_recompute(mods - {"core_attn"}))
    return model_f, model_f + extra


def _rerun_flops(model: ModelGraph, seq_len: int, recompute: str) -> float:
    """FLOPs per token of the ops a one-stage training graph of one sequence reruns."""
    g = model.build(Shape(Phase.TRAIN, batch=1, tokens=seq_len, recompute=recompute))
    rerun = sum(o.flops * o.count for o in g.ops if o.name.startswith(RECOMPUTE))
    return rerun / seq_len
