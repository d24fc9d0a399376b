"""The training step model: one optimizer step of a parallel plan, priced once.

:func:`step_time` prices one failure-free step of a data/tensor/pipeline/context/expert
parallel plan; the failure world (:mod:`.failures`) then replays the whole run at
checkpoint/failure granularity and :mod:`.frames` turns it into frames.

Step model, per data-parallel replica (``d`` replicas, ``t`` tensor, ``p`` pipeline
stages of ``v`` chunks, ``m = global_batch / (micro_batch · d)`` micro-batches):

1. **Stage cost.** The backend prices one micro-batch's forward + recompute + backward on
   one device of one stage: ``Shape(TRAIN, batch=micro_batch, tokens=seq_len,
   recompute=...)``. The compilation prices its forward, backward and optimizer passes
   (:meth:`~xpusim.engine.backend.Compiled.stage_costs`; an analytic one op by op), with the
   tensor-parallel collectives inside each layer (all-reduce, or reduce-scatter +
   all-gather under sequence parallelism) as the graph's COLLECTIVE ops on the critical
   path; the graph's optimizer op is taken out and charged once per step, and its
   pipeline send/recv ops are taken out and priced here with their placement (3.).
   The model says which ops are backward work
   (:meth:`~xpusim.engine.model.ModelGraph.training_stages`); a compilation without its
   own split (the contract's default) prices through
   :meth:`~xpusim.engine.backend.Compiled.cost`, whose seconds cover the ``p`` stages one
   after another, so a stage is ``1/p`` of it and forward:backward is split 1:2.
   Stages of the plan's partition (:mod:`.partition`) differ: the priced stage graph is
   split into per-layer, head, embedding and per-stage parts (:mod:`.stagecost`) and
   each stage costs its own layers plus its ends.
2. **Pipeline.** Equal stages:
   :func:`xpusim.plugins.workloads.training.pipeline.pipeline_time`, ``(m·v + p − 1)·c``
   with ``c`` one chunk's forward+backward plus its two point-to-point transfers. Unequal
   stages (an uneven partition, the embedding and the LM head): the exact schedule,
   :func:`~xpusim.plugins.workloads.training.pipeline.exact_pipeline_time`.
2a. **Context parallelism** (``context = c``): each device holds ``1/c`` of every
   sequence, so a stage's work is ``1/c`` of the whole sequence's (linear ops by tokens;
   the causal attention core by the load-balanced split of each sequence into ``2c``
   chunks, which gives every rank the same share of the score matrix). Keys and values
   move between the ranks: ``ring`` sends each rank's K,V chunk ``c − 1`` times around
   the ring per layer (and K,V plus their gradients backward), overlapped with the
   attention core, so only the excess is exposed; ``all_gather`` gathers K,V before
   attention (and reduce-scatters their gradients backward), exposed. Either way the
   attention core runs as one flash call per K,V chunk whose partial results are merged
   by their log-sum-exp, measured slower than one call
   (:data:`CP_ATTENTION_EFFICIENCY_FWD`, :data:`CP_ATTENTION_EFFICIENCY_BWD`).
2b. **Expert parallelism** (``expert = e``): the model's graph holds ``1/e`` of each MoE
   layer's routed experts per device, with the all-to-all dispatch and combine of the
   routed tokens over the ``e`` ranks and the model's ``expert_imbalance``; routed-expert
   gradients are reduced over ``d·c/e`` ranks, the dense ones over ``d·c``.
2c. **FP8** (``precision: fp8``): the transformer layers' weight GEMMs run at the
   device's FP8 peak over its bf16 peak, times the ratio of FP8 to bf16 achievable
   matmul efficiency (:data:`FP8_GEMM_EFFICIENCY_RATIO`); attention, the LM head and
   everything memory-bound stay as priced in bf16. Quantizing the GEMM operands is added
   as the memory-bound work it is, by the stack's recipe (``fp8_recipe``,
   :data:`~xpusim.plugins.workloads.training.stagecost.FP8_RECIPES`; ``te``, Transformer
   Engine: each weight GEMM's input in the forward (and again in a fully recomputed
   forward) and output gradient in the backward cast and transposed to FP8 every
   micro-batch, the weights once a step; ``torchao``, PyTorch Float8 with tensorwise
   dynamic scaling: an absolute-maximum reduction before every cast, the inputs cast
   again in the backward and the FP8 weights transposed each backward). Under
   ``torchao`` with ZeRO-3/FSDP the layer GEMM weights are all-gathered in FP8 (FSDP's
   float8 all-gather), one byte a parameter.
2e. **DualPipe** (``schedule: dualpipe``, DeepSeek-V3): micro-batches enter from both
   ends and each forward chunk runs beside another micro-batch's backward chunk, the
   communication of one hidden behind the computation of the other
   (:func:`~xpusim.plugins.workloads.training.pipeline.dualpipe_time`).
2d. **Activation offloading**: a stage that would hold more than two micro-batches of
   activations moves each micro-batch's to host memory during its forward and back
   before its backward at ``offload_bandwidth``, overlapped with that pass; only the
   excess is exposed.
2f. **fp32 gradient accumulation** (``grad_accumulation: hook``, Megatron-LM 2021): every
   micro-batch's backward writes each weight's 16-bit gradient, then a separate kernel
   adds it into the fp32 ``main_grad`` (``param.main_grad.add_(param.grad.data)``):
   ``2 + 4`` bytes read and ``4`` written per parameter on the device, memory-bound work
   priced by the backend as one elementwise op (:func:`grad_accumulation_seconds`).
   ``fused`` (the weight-gradient GEMM accumulates into the fp32 buffer in its epilogue)
   adds nothing: the GEMM is compute-bound at any micro-batch of more than a few hundred
   tokens.
3. **Point-to-point.** The activation of one micro-batch (``micro_batch·seq·hidden``
   elements at the precision) crosses each stage boundary forward, its gradient
   backward. With ``t > 1`` each tensor rank sends ``1/t`` of it (Megatron's
   scatter/gather optimization, Narayanan et al. 2021 §4.1) and the receiver
   all-gathers it over the fast in-node fabric (not needed with sequence parallelism,
   where activations are already split). The transfer crosses the scale-out network
   when the pipeline spans nodes.
4. **Data-parallel gradients.** Each device's stage gradients (``stage_params`` elements
   at ``grad_dtype``) are all-reduced over the ``d`` replicas (ZeRO 1/2: reduce-scatter,
   then an all-gather of the updated parameters). Gradients go out in buckets of
   ``bucket`` bytes as the last micro-batch's backward produces them; with
   ``overlap_grad_reduce`` the buckets are reduced one after another behind the backward
   and only the tail after it is exposed; without, one all-reduce of the whole buffer
   follows the pipeline flush (Megatron-LM 2021 behaviour). ZeRO-3/FSDP gathers each
   stage's parameters for forward and again for backward and reduce-scatters gradients
   every micro-batch: the gathers overlapped with that micro-batch's compute when
   ``overlap_param_gather`` is on (the default), the reduce-scatters when
   ``overlap_grad_reduce`` is; what is not overlapped is exposed in full. With
   ``fsdp_reshard: false`` the weights gathered for the forward are kept for the
   backward (one gather per micro-batch).
5. **Optimizer.** The graph's optimizer op (sharded ``1/d`` under ZeRO), once per step.

``step = pipeline + exposed data-parallel time + parameter all-gather (ZeRO 1/2) +
optimizer``.

Collective placement: :mod:`.comms`.

FLOPs (Narayanan et al. 2021 eq. (3); Chowdhery et al. 2022 App. B):

* **model FLOPs** per token ``= 3·F + 12·L·a·d_h·s``: ``F`` the forward GEMM FLOPs per
  token (``ModelInfo.flops_per_token``: ``2×`` the matmul weights a token meets, LM head
  included) times 3 for forward + backward, plus attention scores and values over the
  full (non-causal) ``s × s`` matrix, ``L`` layers, ``a`` heads of ``d_h``. For a GPT
  this is ``72·B·s·L·h²·(1 + s/(6h) + V/(12·L·h))`` per step, the paper's formula
  without recomputation. **MFU** = model FLOPs / (devices × peak × step time).
* **hardware FLOPs** add the recomputed forward: ``full`` adds the layers' forward
  (``F − 2·V·h + 4·L·a·d_h·s``), ``selective`` the attention core (``4·L·a·d_h·s``).
  With full recomputation this is the paper's ``96·B·s·L·h²·(1 + s/(6h) + V/(16·L·h))``,
  the FLOPs behind its "achieved TFLOP/s per GPU". **HFU** = hardware FLOPs /
  (devices × peak × step time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Collective, Op, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.plugins.workloads.training.comms import Comms, bucketed_exposed
from xpusim.plugins.workloads.training.memory import StageParams, param_bytes, stage_param_split
from xpusim.plugins.workloads.training.partition import StagePartition
from xpusim.plugins.workloads.training.pipeline import (
    PipelineTime,
    dualpipe_time,
    exact_pipeline_time,
    in_flight_microbatches,
    pipeline_time,
)
from xpusim.plugins.workloads.training.plan import (
    TrainingPlan,
    cfg_int,
    flops_per_token,
    plan_partition,
)
from xpusim.plugins.workloads.training.stagecost import memory_bound_seconds, stage_cost_model

__all__ = [
    "BUSY_KEYS",
    "CP_ATTENTION_EFFICIENCY_BWD",
    "CP_ATTENTION_EFFICIENCY_FWD",
    "FP8_GEMM_EFFICIENCY_RATIO",
    "StepTime",
    "fp8_gemm_speedup",
    "grad_accumulation_seconds",
    "step_time",
]

BUSY_KEYS = ("compute", "memory", "overhead", "comm")
"""Busy power states a step's device time is split into (the rest is ``bubble``)."""

FP8_GEMM_EFFICIENCY_RATIO = 0.948
"""Achievable FP8 matmul efficiency over achievable bf16 matmul efficiency on the same
device: the median of the five NVIDIA parts measured with both in Stas Bekman's "Maximum
Achievable Matmul FLOPS" tables (reference ``mamf_fp8_matmul_multi_gpu`` and
``mamf_bf16_matmul_multi_gpu``: H100 SXM 70.9 % / 80.3 % = 0.883, H200 73.4 / 80.3 =
0.914, B300 74.5 / 78.6 = 0.948, B200 76.3 / 77.6 = 0.983, GB200 72.3 / 72.9 = 0.992)."""


CP_ATTENTION_EFFICIENCY_FWD = 0.931
"""Speed of a context-parallel attention core's forward (one flash-attention call per
key/value chunk, partial results merged by their log-sum-exp, load-balanced causal
split) over the same attention in one call on one device's share of the work. From the
ring-flash-attention benchmark (``benchmark/benchmark_qkvpacked_func.py``, zigzag ring
on 8 GPUs against ``flash_attn`` running 1/8 of the work, README of
zhuzilin/ring-flash-attention and feifeibear/long-context-attention): forward 283.0 of
302.3 iter/s on H800 (0.936) and 179.0 of 193.2 on A100 (0.927); the mean. The ring's
rate includes its K,V exchange over NVLink, which that benchmark hides behind the
computation; the exposed excess a slower link leaves is charged apart."""
CP_ATTENTION_EFFICIENCY_BWD = 0.820
"""The same for the backward, from the same table's forward + backward rates: on H800
the single call takes 1/88.2 − 1/302.3 = 8.030 ms backward, the zigzag ring 1/75.7 −
1/283.0 = 9.677 ms (0.830); on A100 11.831 ms against 14.615 ms (0.810); the mean."""


def fp8_gemm_speedup(compiled: Compiled) -> float:
    """How much faster a compute-bound GEMM runs in FP8 than in bf16 on the system's
    device (:data:`FP8_GEMM_EFFICIENCY_RATIO` × the ratio of the catalog peaks); raises
    ``KeyError`` for a device without an FP8 peak."""
    dev = compiled.system.device
    if "fp8" not in dev.peak_flops:
        raise KeyError(f"{dev.name} lists no FP8 peak")
    return max(1.0, dev.flops("fp8") / dev.flops("bf16") * FP8_GEMM_EFFICIENCY_RATIO)


@dataclass(frozen=True)
class StepTime:
    """One optimizer step of the plan, failure-free (see the module docstring).

    ``device_s`` splits one device of the slowest stage into busy states (``compute``,
    ``memory``, ``overhead``, ``comm``) and ``bubble`` (idle), summing to ``seconds``.
    Per stage: ``stage_fwd_s``/``stage_bwd_s`` are one micro-batch's forward and backward
    (context, FSDP and offload exposure included) and ``stage_state_s`` that stage's busy
    seconds per state over the step. ``tail_s`` is what follows the pipeline flush
    (exposed gradient reduction, parameter all-gather, optimizer).
    """

    seconds: float
    microbatches: int
    fwd_s: float
    bwd_s: float
    stage_breakdown: Mapping[str, float]
    p2p_s: float
    pipeline: PipelineTime
    dp_comm_s: float
    dp_exposed_s: float
    param_gather_s: float
    zero3_exposed_s: float
    optimizer_s: float
    device_s: Mapping[str, float]
    model_flops: float
    hardware_flops: float
    busy_joules: float
    notes: tuple[str, ...] = ()
    partition: StagePartition | None = None
    stage_fwd_s: tuple[float, ...] = ()
    stage_bwd_s: tuple[float, ...] = ()
    stage_state_s: tuple[Mapping[str, float], ...] = ()
    tail_s: float = 0.0
    cp_comm_s: float = 0.0
    cp_exposed_s: float = 0.0
    offload_exposed_s: float = 0.0
    virtual: int = 1

    @property
    def comm_s(self) -> float:
        """One device's communication seconds on the critical path per step."""
        return self.device_s.get("comm", 0.0)

    @property
    def compute_s(self) -> float:
        """One device's compute seconds per step (compute, memory-bound and overhead)."""
        return sum(self.device_s.get(k, 0.0) for k in ("compute", "memory", "overhead"))

    @property
    def bubble_s(self) -> float:
        """One device's idle seconds per step (pipeline fill and drain)."""
        return self.device_s.get("bubble", 0.0)


GRAD_ACCUM_BYTES_READ = 6.0
"""Bytes read per parameter by the unfused fp32 accumulation: the 16-bit gradient (2)
and the fp32 ``main_grad`` (4)."""
GRAD_ACCUM_BYTES_WRITTEN = 4.0
"""Bytes written per parameter by the unfused fp32 accumulation: the fp32 ``main_grad``."""


def grad_accumulation_seconds(compiled: Compiled, params: float, mode: str) -> float:
    """Seconds of one micro-batch's accumulation of ``params`` weight gradients into the
    fp32 buffer under ``mode`` (``hook``: one elementwise add, priced by the backend when
    it prices single ops, else at the device's memory bandwidth; ``fused`` and ``none``:
    nothing beyond the backward's own GEMMs)."""
    if mode not in ("fused", "hook", "none"):
        raise ValueError(f"unknown grad_accumulation {mode!r}; valid: fused, hook, none")
    if mode != "hook" or params <= 0:
        return 0.0
    op = Op(
        "grad.accumulate_fp32",
        OpKind.ELEMENTWISE,
        flops=params,
        bytes_read=GRAD_ACCUM_BYTES_READ * params,
        bytes_written=GRAD_ACCUM_BYTES_WRITTEN * params,
        dims=(max(1, int(params)),),
        layer="layer",
    )
    return memory_bound_seconds(compiled, op)


def _add(into: dict[str, float], part: Mapping[str, float], scale: float = 1.0) -> None:
    for k, v in part.items():
        key = k if k in BUSY_KEYS else "compute"
        into[key] = into.get(key, 0.0) + v * scale


def _kv_bytes(model: ModelGraph, plan: TrainingPlan, t: int, cp: int) -> float:
    """Bytes of one context rank's keys and values of one layer and micro-batch."""
    heads = cfg_int(model, "heads")
    hidden = cfg_int(model, "hidden")
    kv = cfg_int(model, "kv_heads") or heads
    head_dim = cfg_int(model, "head_dim") or (hidden // heads if heads else 0)
    e = 2.0 if plan.precision == "fp8" else float(dtype_bytes(plan.precision))
    return 2.0 * plan.micro_batch * (plan.seq_len / cp) * -(-kv // t) * head_dim * e


@dataclass
class _Stage:
    """One stage's per-micro-batch seconds by state and its exposed extras."""

    fwd: dict[str, float]
    bwd: dict[str, float]
    cp_comm: float = 0.0
    cp_exposed: float = 0.0
    z3: float = 0.0
    offload: float = 0.0

    @property
    def fwd_s(self) -> float:
        return sum(self.fwd.values())

    @property
    def bwd_s(self) -> float:
        return sum(self.bwd.values())


def step_time(
    compiled: Compiled, model: ModelGraph, plan: TrainingPlan, power: PowerModel | None = None
) -> StepTime:
    """Price one failure-free optimizer step of ``plan`` on ``compiled.system``."""
    system = compiled.system
    par = system.parallelism
    t, p, v, d = par.tensor, par.pipeline, max(1, par.virtual), par.data
    cp = max(1, par.context)
    m = plan.microbatches(d)
    shape = Shape(
        Phase.TRAIN, batch=plan.micro_batch, tokens=plan.seq_len, recompute=plan.recompute
    )
    scm = stage_cost_model(
        compiled, model, shape, par, fp8=plan.precision == "fp8", fp8_recipe=plan.fp8_recipe
    )
    notes = [scm.how]
    comms = Comms(compiled, system)
    part = plan_partition(model, par, plan)
    layers_of = part.layers if part is not None else (0,) * p
    n_l = -(-int(model.info.layers or 0) // p) if model.info.layers else 1

    speed = 1.0
    if plan.precision == "fp8":
        speed = fp8_gemm_speedup(compiled)
        notes.append(f"FP8 layer GEMMs {speed:.2f}x faster than bf16")

    e = param_bytes(plan.precision)
    ge = float(dtype_bytes(plan.grad_dtype))
    kv_b = _kv_bytes(model, plan, t, cp) if cp > 1 else 0.0
    per_layer_act = 0.0
    if plan.offload_activations:
        stage_shape_par = par
        per_mb = float(model.activation_bytes(shape, stage_shape_par, plan.recompute))
        per_layer_act = per_mb / max(1, n_l) / cp

    params: list[StageParams] = [stage_param_split(model, par, part, s) for s in range(p)]
    stages: list[_Stage] = []
    for s in range(p):
        if part is not None:
            fwd, bwd = scm.stage(s, part)
        else:
            fwd = scm.forward.stage(n_l, True, True)
            bwd = scm.backward.stage(n_l, True, True)
        k = layers_of[s] if part is not None else n_l
        if speed > 1.0:
            for pas, parts in ((fwd, scm.forward), (bwd, scm.backward)):
                pas["compute"] = pas.get("compute", 0.0) - k * parts.layer_gemm_compute_s * (
                    1.0 - 1.0 / speed
                )
        if plan.precision == "fp8":
            # the FP8 casts of the layers' GEMM operands (a recomputed forward casts its
            # inputs again); the weights' casts, once a step, do not shrink with context
            fwd["memory"] = fwd.get("memory", 0.0) + k * scm.fp8.forward_s
            again = scm.fp8.forward_s if plan.recompute == "full" else 0.0
            bwd["memory"] = bwd.get("memory", 0.0) + k * (scm.fp8.backward_s + again)
        st = _Stage({}, {})
        _add(st.fwd, fwd, 1.0 / cp)
        _add(st.bwd, bwd, 1.0 / cp)
        accum = grad_accumulation_seconds(compiled, params[s].total, plan.grad_accumulation)
        if accum > 0.0:  # the whole stage's parameters, whatever share of the sequence
            st.bwd["memory"] = st.bwd.get("memory", 0.0) + accum
        if plan.precision == "fp8":
            st.fwd["memory"] = st.fwd.get("memory", 0.0) + k * scm.fp8.weights_s / m
            st.bwd["memory"] = st.bwd.get("memory", 0.0) + k * scm.fp8.backward_weights_s
        if cp > 1:
            attn_f = k * scm.forward.layer_attention_compute_s / cp
            attn_b = k * scm.backward.layer_attention_compute_s / cp
            # the attention core runs as one flash call per K,V chunk, merged by their
            # log-sum-exp: slower than one call over the whole sequence
            st.fwd["compute"] = st.fwd.get("compute", 0.0) + attn_f * (
                1.0 / CP_ATTENTION_EFFICIENCY_FWD - 1.0
            )
            st.bwd["compute"] = st.bwd.get("compute", 0.0) + attn_b * (
                1.0 / CP_ATTENTION_EFFICIENCY_BWD - 1.0
            )
            attn_f /= CP_ATTENTION_EFFICIENCY_FWD
            attn_b /= CP_ATTENTION_EFFICIENCY_BWD
            if plan.context_comm == "ring":
                hop_f = comms.context(Collective.SEND_RECV, kv_b)
                hop_b = comms.context(Collective.SEND_RECV, 2 * kv_b)
                ring_f = k * (cp - 1) * hop_f
                ring_b = k * (cp - 1) * hop_b
                st.cp_comm = ring_f + ring_b
                st.cp_exposed = max(0.0, ring_f - attn_f) + max(0.0, ring_b - attn_b)
            else:
                ag = comms.context(Collective.ALL_GATHER, kv_b * cp)
                rs = comms.context(Collective.REDUCE_SCATTER, 2 * kv_b * cp)
                st.cp_comm = k * (2 * ag + rs) if plan.recompute == "full" else k * (ag + rs)
                st.cp_exposed = st.cp_comm
        # ZeRO-3 / FSDP: gather parameters for forward (and again for backward when the
        # forward resharded them), reduce-scatter gradients, every micro-batch
        if par.zero >= 3 and d * cp > 1:
            sp = params[s]
            gathered = sp.dense * e
            if plan.precision == "fp8" and plan.fp8_recipe == "torchao":
                # FSDP's float8 all-gather: the layer GEMM weights travel cast to FP8
                gathered -= min(sp.gemm, sp.dense) * (e - 1.0)
            ag = comms.dp(Collective.ALL_GATHER, gathered) + comms.expert_dp(
                Collective.ALL_GATHER, sp.expert * e
            )
            rs = comms.dp(Collective.REDUCE_SCATTER, sp.dense * ge) + comms.expert_dp(
                Collective.REDUCE_SCATTER, sp.expert * ge
            )
            gathers_b = ag if plan.fsdp_reshard else 0.0
            hidden_b = (gathers_b if plan.overlap_param_gather else 0.0) + (
                rs if plan.overlap_grad_reduce else 0.0
            )
            exposed_b = gathers_b + rs - hidden_b
            if plan.overlap_param_gather:
                st.z3 = max(0.0, ag - st.fwd_s)
            else:
                st.z3 = ag
            st.z3 += max(0.0, hidden_b - st.bwd_s) + exposed_b
        if plan.offload_activations and plan.offload_bandwidth > 0:
            flight = in_flight_microbatches(p, m, v, s)
            if flight > 2.0:
                move = per_layer_act * k / plan.offload_bandwidth
                st.offload = max(0.0, move - st.fwd_s) + max(0.0, move - st.bwd_s)
        stages.append(st)
    if par.zero >= 3 and d * cp > 1:
        notes.append(
            "ZeRO-3/FSDP: parameters gathered for forward"
            + (" and again for backward" if plan.fsdp_reshard else ", kept for backward")
            + ", gradients reduce-scattered every micro-batch"
        )

    hidden = cfg_int(model, "hidden")
    act_e = 2.0 if plan.precision == "fp8" else float(dtype_bytes(plan.precision))
    act_bytes = plan.micro_batch * plan.seq_len / cp * hidden * act_e
    p2p = comms.p2p(act_bytes, par.sequence and t > 1)
    per_stage = [st.fwd_s + st.bwd_s + st.cp_exposed + st.z3 + st.offload for st in stages]
    dual = plan.schedule == "dualpipe"
    if dual:
        comm_mb = [st.fwd.get("comm", 0.0) + st.bwd.get("comm", 0.0) for st in stages]
        weight_mb = [k * scm.backward.layer_gemm_compute_s / (2 * cp * speed) for k in layers_of]
        pipe = dualpipe_time(
            [t - x for t, x in zip(per_stage, comm_mb, strict=True)],
            comm_mb,
            [st.bwd_s - st.bwd.get("comm", 0.0) for st in stages],
            weight_mb,
            m,
            p2p,
        )
        notes.append(
            "DualPipe: communication hidden behind the paired chunk's computation, "
            "bubble (p/2 - 1)(F&B + B - 3W)"
        )
    elif p > 1 and max(per_stage) - min(per_stage) > 1e-9 * max(per_stage):
        extra = [(st.cp_exposed + st.z3 + st.offload) / 2 for st in stages]
        pipe = exact_pipeline_time(
            [st.fwd_s + x for st, x in zip(stages, extra, strict=True)],
            [st.bwd_s + x for st, x in zip(stages, extra, strict=True)],
            m,
            v,
            p2p,
        )
    else:
        pipe = pipeline_time(per_stage, m, p, v, p2p)
    slow = max(range(p), key=lambda i: (per_stage[i], -i))

    # data-parallel gradient reduction of the largest stage (dense over d·c ranks,
    # routed experts over d·c/e)
    big = max(params, key=lambda x: x.total)
    bwd_window = stages[slow].bwd_s
    dp_total = dp_exposed = gather = 0.0
    if d * cp > 1 and par.zero < 3:
        kind = Collective.ALL_REDUCE if par.zero == 0 else Collective.REDUCE_SCATTER
        for n_par, price in ((big.dense, comms.dp), (big.expert, comms.expert_dp)):
            if n_par <= 0:
                continue
            if plan.overlap_grad_reduce:
                tot, exp = bucketed_exposed(
                    n_par * ge, plan.bucket_bytes, bwd_window, partial(price, kind)
                )
            else:
                tot = exp = price(kind, n_par * ge)
            dp_total += tot
            dp_exposed += exp
            bwd_window = 0.0  # the second group reduces after the first
            if par.zero >= 1:
                full = price(Collective.ALL_GATHER, n_par * e)
                if plan.overlap_grad_reduce:
                    nb = max(1, -(-int(n_par * e) // max(1, int(plan.bucket_bytes))))
                    gather += price(Collective.ALL_GATHER, n_par * e / nb)
                else:
                    gather += full
                dp_total += full
    # the optimizer: the priced stage's, scaled to the largest stage's parameters
    priced = stage_param_split(
        model, par, StagePartition((n_l,) * p) if part is not None else None, p - 1
    )
    scale = big.total / priced.total if priced.total > 0 else 1.0
    opt_b = {k: x * scale for k, x in scm.optimizer.items()}
    opt_s = sum(opt_b.values())
    tail = dp_exposed + gather + opt_s
    seconds = pipe.seconds + tail

    # busy seconds per state of every stage's device, and of the slowest one
    stage_state: list[dict[str, float]] = []
    for st in stages:
        dev: dict[str, float] = {k: 0.0 for k in BUSY_KEYS}
        _add(dev, st.fwd, m)
        _add(dev, st.bwd, m)
        _add(dev, opt_b)
        if dual:  # only the communication no computation hides is busy on its own
            dev["comm"] -= m * (st.fwd.get("comm", 0.0) + st.bwd.get("comm", 0.0))
        dev["comm"] = max(0.0, dev["comm"] + pipe.p2p_s)
        dev["comm"] += dp_exposed + gather + (st.z3 + st.cp_exposed + st.offload) * m
        stage_state.append(dev)
    dev_slow = dict(stage_state[slow])
    dev_slow["bubble"] = max(0.0, seconds - sum(dev_slow.values()))

    busy_j = 0.0
    if power is not None:
        per_stage_devices = system.count / p
        busy_j = per_stage_devices * sum(
            power.state_watts(k) * sd[k] for sd in stage_state for k in BUSY_KEYS
        )
    mf, hf = flops_per_token(model, plan.seq_len, plan.recompute)
    tokens = plan.tokens_per_step
    stage_b: dict[str, float] = {}
    _add(stage_b, stages[slow].fwd)
    _add(stage_b, stages[slow].bwd)
    return StepTime(
        seconds=seconds,
        microbatches=m,
        fwd_s=stages[slow].fwd_s,
        bwd_s=stages[slow].bwd_s,
        stage_breakdown=stage_b,
        p2p_s=p2p,
        pipeline=pipe,
        dp_comm_s=dp_total,
        dp_exposed_s=dp_exposed,
        param_gather_s=gather,
        zero3_exposed_s=stages[slow].z3 * m,
        optimizer_s=opt_s,
        device_s=dev_slow,
        model_flops=mf * tokens,
        hardware_flops=hf * tokens,
        busy_joules=busy_j,
        notes=tuple(notes),
        partition=part,
        stage_fwd_s=tuple(
            st.fwd_s + st.cp_exposed / 2 + st.z3 / 2 + st.offload / 2 for st in stages
        ),
        stage_bwd_s=tuple(
            st.bwd_s + st.cp_exposed / 2 + st.z3 / 2 + st.offload / 2 for st in stages
        ),
        stage_state_s=tuple(stage_state),
        tail_s=tail,
        cp_comm_s=stages[slow].cp_comm * m,
        cp_exposed_s=stages[slow].cp_exposed * m,
        offload_exposed_s=stages[slow].offload * m,
        virtual=v,
    )
