"""Training at cluster scale: the step model and the failure/checkpoint world.

The step model (:func:`step_time`) prices one optimizer step of a data/tensor/pipeline
parallel plan once; the failure world (:func:`simulate_failures`) then replays the whole
run in SimPy at the granularity that decides time-to-train — checkpoint intervals and
failures, not kernels — so 10,000 steps on 1,024 devices take milliseconds.

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
2. **Pipeline.** :func:`xpusim.plugins.workloads.training.pipeline.pipeline_time`: ``(m·v + p − 1)·c`` with
   ``c`` one chunk's forward+backward plus its two point-to-point transfers.
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
   every micro-batch, overlapped with that micro-batch's compute when
   ``overlap_grad_reduce`` is on.
5. **Optimizer.** The graph's optimizer op (sharded ``1/d`` under ZeRO), once per step.

``step = pipeline + exposed data-parallel time + parameter all-gather (ZeRO 1/2) +
optimizer``.

Collective placement. Ranks are ordered tensor, then data, then pipeline (Megatron's
order): a tensor group is ``t`` consecutive devices, a data-parallel group has
``max(1, devices_per_node // t)`` members per node, a pipeline boundary crosses nodes
once ``t·d·p`` exceeds a node. Data-parallel and pipeline collectives are priced by
:func:`xpusim.engine.collectives.collective_seconds` over the system's two-level topology with
the group's members per node, at the link rates the backend's own collective function
achieves (probed with two send-recv sizes per link class, so a backend's achievable
fraction of link rate carries over); on a TPU-style torus (``topology.torus`` set, or a
device whose catalog declares ``extra.torus_dims``) the backend's collective function
prices them directly. Hardware-agnostic: the same code
serves GPU and TPU systems.

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

Failure world: every device fails independently at rate ``1/mtbf``, so the job fails at
``count/mtbf``. The job trains ``k = round(checkpoint_interval / step)`` steps, writes a
checkpoint (weights + optimizer states at ``storage_bandwidth``, the aggregate rate of
the file system), and repeats. A failure (during training, checkpointing or restart)
loses everything since the last completed checkpoint and costs ``restart`` plus reading
the checkpoint back. ``seeds`` independent repetitions give the spread of time-to-train.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl
import simpy

from xpusim.engine.backend import Compiled
from xpusim.engine.collectives import collective_seconds
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import DEVICES_SCHEMA
from xpusim.engine.graph import Collective, Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import Parallelism, System, Topology, divisors
from xpusim.plugins.workloads.training.memory import (
    MemoryNeed,
    checkpoint_bytes,
    stage_params,
    training_memory,
)
from xpusim.plugins.workloads.training.pipeline import PipelineTime, pipeline_time

__all__ = [
    "BUSY_KEYS",
    "STEPS_SCHEMA",
    "FailureRun",
    "FailureSpec",
    "StepTime",
    "TrainingPlan",
    "check_plan",
    "devices_frame",
    "flops_per_token",
    "nearest_plans",
    "plan_memory",
    "simulate_failures",
    "step_time",
]

BUSY_KEYS = ("compute", "memory", "overhead", "comm")
"""Busy power states a step's device time is split into (the rest is ``bubble``)."""

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "step": pl.Int64(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "compute_s": pl.Float64(),
    "comm_s": pl.Float64(),
    "bubble_s": pl.Float64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the training ``steps`` frame: one row per optimizer step executed (state
``train``, or ``lost`` when a failure later threw it away), plus one row per checkpoint
write (``checkpoint``, ``step`` = last step it covers) and per restart (``restart``,
``step`` = the step training resumes from). ``compute_s``/``comm_s``/``bubble_s`` are
one device's seconds in that row; ``joules`` the busy energy of all devices."""


# --- the plan --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """The workload side of a training step (the system side is its ``Parallelism``)."""

    global_batch: int
    micro_batch: int
    seq_len: int
    recompute: str = "selective"
    precision: str = "bf16"
    optimizer: str = "adam"
    grad_dtype: str = "bf16"
    overlap_grad_reduce: bool = True
    bucket_bytes: float = 25e6

    def microbatches(self, data: int) -> int:
        """Micro-batches per replica per step (``global_batch / (micro_batch · data)``)."""
        return max(1, self.global_batch // max(1, self.micro_batch * data))

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains."""
        return self.global_batch * self.seq_len


def _cfg_int(model: ModelGraph, key: str) -> int:
    v = (model.info.config or {}).get(key)
    return int(v) if v else 0


def check_plan(model: ModelGraph, par: Parallelism, plan: TrainingPlan, count: int) -> list[str]:
    """Sentences naming what in ``par``/``plan`` does not divide (empty when it is valid)."""
    problems: list[str] = []
    if par.devices != count:
        problems.append(
            f"data x tensor x pipeline = {par.data} x {par.tensor} x "
            f"{par.pipeline} = {par.devices} devices, but the system has {count}"
        )
    layers = model.info.layers or _cfg_int(model, "layers")
    chunks = par.pipeline * par.virtual
    if layers and layers % chunks:
        what = (
            f"pipeline x virtual = {par.pipeline} x {par.virtual} = {chunks}"
            if par.virtual > 1
            else f"pipeline = {par.pipeline}"
        )
        problems.append(f"{what} does not divide the model's {layers} layers")
    heads = _cfg_int(model, "heads")
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
    return problems


def plan_memory(
    model: ModelGraph,
    par: Parallelism,
    plan: TrainingPlan,
    have_bytes: float,
    reserve_bytes: float = 0.0,
) -> MemoryNeed:
    """Per-device memory of ``plan`` under ``par`` (:func:`xpusim.plugins.workloads.training.memory.training_memory`)."""
    return training_memory(
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
    )


def nearest_plans(
    model: ModelGraph,
    par: Parallelism,
    plan: TrainingPlan,
    count: int,
    have_bytes: float,
    reserve_bytes: float = 0.0,
    limit: int = 3,
) -> list[str]:
    """Up to ``limit`` plans on the same ``count`` devices that divide and fit, nearest
    first (fewest changed settings, then least memory), each as a short phrase."""
    heads = _cfg_int(model, "heads")
    layers = model.info.layers or _cfg_int(model, "layers")
    tensors = [t for t in divisors(count) if t <= 64 and (not heads or heads % t == 0)]
    found: list[tuple[int, float, str]] = []
    recomputes = [plan.recompute] + [r for r in ("selective", "full") if r != plan.recompute]
    for t in tensors:
        for p in divisors(count // t):
            if layers and (layers % p or p > layers):
                continue
            d = count // (t * p)
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
                        cplan = replace(plan, recompute=rc, micro_batch=mb)
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


# --- FLOPs -----------------------------------------------------------------------------


def flops_per_token(model: ModelGraph, seq_len: int, recompute: str) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per trained token; formulas in the module docstring."""
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
    if recompute == "full":
        extra = max(0.0, fwd - head) + attn_fwd
    elif recompute == "selective":
        extra = attn_fwd
    else:
        extra = 0.0
    return model_f, model_f + extra


# --- the step model --------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """One optimizer step of the plan, failure-free (see the module docstring).

    ``device_s`` splits one device's step into busy states (``compute``, ``memory``,
    ``overhead``, ``comm``) and ``bubble`` (idle), summing to ``seconds``.
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


def _stage_costs(
    compiled: Compiled, shape: Shape
) -> tuple[dict[str, float], dict[str, float], dict[str, float], str]:
    """(forward breakdown, backward breakdown, optimizer breakdown, how) of one
    micro-batch on one stage device (:meth:`~xpusim.engine.backend.Compiled.stage_costs`)."""
    st = compiled.stage_costs(shape)
    return dict(st.forward), dict(st.backward), dict(st.optimizer), st.how


def _probe(fn: Callable[[Collective, float, int], float], group: int) -> tuple[float, float]:
    """(bandwidth, latency) of a send-recv over ``group`` measured on ``fn``."""
    n1, n2 = 1e6, 1e9
    t1, t2 = fn(Collective.SEND_RECV, n1, group), fn(Collective.SEND_RECV, n2, group)
    if t2 <= t1:
        raise ValueError("collective function does not grow with size")
    bw = (n2 - n1) / (t2 - t1)
    return bw, max(0.0, t1 - n1 / bw)


def backend_collective(compiled: Compiled) -> Callable[[Collective, float, int], float] | None:
    """The compilation's own collective pricing
    (:meth:`~xpusim.engine.backend.Compiled.collective_seconds`), or ``None`` when it
    prices none and the system topology's catalog link rates apply."""
    if compiled.collective_seconds(Collective.SEND_RECV, 1.0, 2) is None:
        return None

    def fn(kind: Collective, nbytes: float, group: int) -> float:
        return float(compiled.collective_seconds(kind, nbytes, group) or 0.0)

    return fn


def effective_topology(compiled: Compiled, system: System) -> Topology:
    """The system topology at the link rates the backend's collectives achieve."""
    topo = system.topology
    fn = backend_collective(compiled)
    if fn is None:
        return topo
    try:
        ibw, ilat = _probe(fn, 2)
        obw, olat = _probe(fn, topo.devices_per_node + 1)
    except (ValueError, XpusimError):  # no size-linear send-recv to read rates from
        return topo
    return replace(topo, intra_bw=ibw, intra_latency=ilat, inter_bw=obw, inter_latency=olat)


class _Comms:
    """Prices data-parallel and pipeline collectives with their placement."""

    def __init__(self, compiled: Compiled, system: System) -> None:
        self.system = system
        self.topo = effective_topology(compiled, system)
        fn = backend_collective(compiled)
        torus = bool(system.topology.torus) or "torus_dims" in system.device.extra
        self.torus_fn = fn if torus else None

    def dp(self, kind: Collective, nbytes: float) -> float:
        par = self.system.parallelism
        if par.data <= 1 or nbytes <= 0:
            return 0.0
        if self.torus_fn is not None:
            return float(self.torus_fn(kind, nbytes, par.data))
        per_node = max(1, min(par.data, self.topo.devices_per_node // max(1, par.tensor)))
        return collective_seconds(
            kind, nbytes, par.data, replace(self.topo, devices_per_node=per_node)
        )

    def p2p(self, nbytes: float, sequence_split: bool) -> float:
        par = self.system.parallelism
        if par.pipeline <= 1 or nbytes <= 0:
            return 0.0
        t = max(1, par.tensor)
        if self.torus_fn is not None:
            send = float(self.torus_fn(Collective.SEND_RECV, nbytes / t, 2))
        else:
            spans = par.tensor * par.data * par.pipeline > self.topo.devices_per_node
            if spans:
                send = self.topo.inter_latency + nbytes / t / self.topo.inter_bw
            else:
                send = self.topo.intra_latency + nbytes / t / self.topo.intra_bw
        gather = 0.0
        if t > 1 and not sequence_split:
            if self.torus_fn is not None:
                gather = float(self.torus_fn(Collective.ALL_GATHER, nbytes, t))
            else:
                gather = collective_seconds(
                    Collective.ALL_GATHER,
                    nbytes,
                    t,
                    replace(self.topo, devices_per_node=max(t, self.topo.devices_per_node)),
                )
        return send + gather


def _bucketed_exposed(
    total_bytes: float, bucket: float, window: float, price: Callable[[float], float]
) -> tuple[float, float]:
    """(total collective seconds, seconds exposed after ``window``) of reducing
    ``total_bytes`` in buckets that become ready uniformly over ``window``."""
    n = max(1, math.ceil(total_bytes / max(bucket, 1.0)))
    size = total_bytes / n
    each = price(size)
    end = 0.0
    for i in range(n):
        ready = window * (i + 1) / n
        end = max(end, ready) + each
    return n * each, max(0.0, end - window)


def step_time(
    compiled: Compiled, model: ModelGraph, plan: TrainingPlan, power: PowerModel | None = None
) -> StepTime:
    """Price one failure-free optimizer step of ``plan`` on ``compiled.system``."""
    system = compiled.system
    par = system.parallelism
    t, p, v, d = par.tensor, par.pipeline, max(1, par.virtual), par.data
    m = plan.microbatches(d)
    shape = Shape(
        Phase.TRAIN, batch=plan.micro_batch, tokens=plan.seq_len, recompute=plan.recompute
    )
    fwd_b, bwd_b, opt_b, how = _stage_costs(compiled, shape)
    notes = [how]
    comms = _Comms(compiled, system)

    stage_b = {k: fwd_b.get(k, 0.0) + bwd_b.get(k, 0.0) for k in {*fwd_b, *bwd_b}}
    fwd_s, bwd_s = sum(fwd_b.values()), sum(bwd_b.values())

    # ZeRO-3 / FSDP: gather parameters for forward and backward, reduce-scatter gradients,
    # every micro-batch.
    n_stage = stage_params(model, t, p)
    e = dtype_bytes(plan.precision)
    ge = dtype_bytes(plan.grad_dtype)
    z3 = 0.0
    if par.zero >= 3 and d > 1:
        ag = comms.dp(Collective.ALL_GATHER, n_stage * e)
        rs = comms.dp(Collective.REDUCE_SCATTER, n_stage * ge)
        if plan.overlap_grad_reduce:
            z3 = max(0.0, ag - fwd_s) + max(0.0, ag + rs - bwd_s)
        else:
            z3 = 2 * ag + rs
        notes.append(
            "ZeRO-3: parameters gathered for forward and backward and gradients "
            "reduce-scattered every micro-batch"
        )

    hidden = _cfg_int(model, "hidden")
    act_bytes = plan.micro_batch * plan.seq_len * hidden * e
    p2p = comms.p2p(act_bytes, par.sequence and t > 1)
    pipe = pipeline_time(fwd_s + bwd_s + z3, m, p, v, p2p)

    # data-parallel gradient reduction
    grad_bytes = n_stage * ge
    dp_total = dp_exposed = gather = 0.0
    if d > 1 and par.zero < 3:
        kind = Collective.ALL_REDUCE if par.zero == 0 else Collective.REDUCE_SCATTER
        if plan.overlap_grad_reduce:
            dp_total, dp_exposed = _bucketed_exposed(
                grad_bytes, plan.bucket_bytes, bwd_s, lambda n: comms.dp(kind, n)
            )
        else:
            dp_total = dp_exposed = comms.dp(kind, grad_bytes)
        if par.zero >= 1:
            full = comms.dp(Collective.ALL_GATHER, n_stage * e)
            if plan.overlap_grad_reduce:
                nb = max(1, math.ceil(n_stage * e / plan.bucket_bytes))
                gather = comms.dp(Collective.ALL_GATHER, n_stage * e / nb)
            else:
                gather = full
            dp_total += full
    opt_s = sum(opt_b.values())
    seconds = pipe.seconds + dp_exposed + gather + opt_s

    # one device's time by state
    dev: dict[str, float] = {k: 0.0 for k in BUSY_KEYS}
    for k, x in stage_b.items():
        key = k if k in BUSY_KEYS else "compute"
        dev[key] += x * m
    for k, x in opt_b.items():
        key = k if k in BUSY_KEYS else "compute"
        dev[key] += x
    dev["comm"] += pipe.p2p_s + dp_exposed + gather + z3 * m
    dev["bubble"] = max(0.0, seconds - sum(dev.values()))

    pw = power
    busy_j = 0.0
    if pw is not None:
        busy_j = system.count * sum(pw.state_watts(k) * dev[k] for k in BUSY_KEYS)
    mf, hf = flops_per_token(model, plan.seq_len, plan.recompute)
    tokens = plan.tokens_per_step
    return StepTime(
        seconds=seconds,
        microbatches=m,
        fwd_s=fwd_s,
        bwd_s=bwd_s,
        stage_breakdown=stage_b,
        p2p_s=p2p,
        pipeline=pipe,
        dp_comm_s=dp_total,
        dp_exposed_s=dp_exposed,
        param_gather_s=gather,
        zero3_exposed_s=z3 * m,
        optimizer_s=opt_s,
        device_s=dev,
        model_flops=mf * tokens,
        hardware_flops=hf * tokens,
        busy_joules=busy_j,
        notes=tuple(notes),
    )


# --- the failure world -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureSpec:
    """Failure and checkpoint settings (all SI: seconds, bytes/s). ``mtbf_per_device``
    of ``inf`` means no failures; ``checkpoint_interval`` of ``inf`` no checkpoints."""

    mtbf_per_device: float = math.inf
    restart_s: float = 600.0
    checkpoint_interval_s: float = math.inf
    storage_bandwidth: float = 10e9


@dataclass
class FailureRun:
    """One replay of the run: wall time, failures and the segments it went through.

    ``segments`` rows are ``(kind, start_s, end_s, first_step, steps)`` with ``kind`` one
    of ``train``, ``lost``, ``checkpoint``, ``restart`` (only when recorded).
    """

    wall_s: float
    failures: int
    checkpoints: int
    lost_s: float
    checkpoint_s: float
    restart_s: float
    segments: list[tuple[str, float, float, int, float]] = field(default_factory=list)


def simulate_failures(
    step_s: float,
    steps: int,
    count: int,
    spec: FailureSpec,
    checkpoint_write_s: float,
    checkpoint_read_s: float,
    seed: int,
    record: bool = False,
) -> FailureRun:
    """Replay ``steps`` steps of ``step_s`` on ``count`` devices with failures (SimPy).

    One trainer process and one failure process; events are checkpoint segments and
    failures, never single steps or kernels.
    """
    if steps < 0 or step_s < 0:
        raise ValueError(f"negative steps ({steps}) or step time ({step_s})")
    env = simpy.Environment()
    rng = random.Random(seed)
    rate = count / spec.mtbf_per_device if spec.mtbf_per_device > 0 else 0.0
    k = (
        steps
        if math.isinf(spec.checkpoint_interval_s)
        else max(1, round(spec.checkpoint_interval_s / step_s) if step_s > 0 else steps)
    )
    k = max(1, k)
    run = FailureRun(0.0, 0, 0, 0.0, 0.0, 0.0)
    seg = run.segments

    def trainer(env: simpy.Environment):  # type: ignore[no-untyped-def]
        done = 0
        while done < steps:
            n = min(k, steps - done)
            start = env.now
            ckpt = done + n < steps and checkpoint_write_s >= 0 and k < steps
            try:
                yield env.timeout(n * step_s)
                mid = env.now
                if ckpt:
                    yield env.timeout(checkpoint_write_s)
                    run.checkpoints += 1
                    run.checkpoint_s += checkpoint_write_s
                if record:
                    seg.append(("train", start, mid, done, float(n)))
                    if ckpt:
                        seg.append(("checkpoint", mid, env.now, done + n - 1, 0.0))
                done += n
            except simpy.Interrupt:
                now = env.now
                run.failures += 1
                run.lost_s += min(now - start, n * step_s)
                run.checkpoint_s += max(0.0, now - start - n * step_s)
                if record:
                    trained = min(n * step_s, now - start)
                    seg.append(
                        (
                            "lost",
                            start,
                            start + trained,
                            done,
                            trained / step_s if step_s > 0 else 0.0,
                        )
                    )
                    if now > start + trained:
                        seg.append(("checkpoint", start + trained, now, done + n - 1, 0.0))
                while True:
                    r0 = env.now
                    try:
                        yield env.timeout(spec.restart_s + checkpoint_read_s)
                        run.restart_s += env.now - r0
                        if record:
                            seg.append(("restart", r0, env.now, done, 0.0))
                        break
                    except simpy.Interrupt:
                        run.failures += 1
                        run.restart_s += env.now - r0
                        if record:
                            seg.append(("restart", r0, env.now, done, 0.0))

    proc = env.process(trainer(env))

    def failures(env: simpy.Environment):  # type: ignore[no-untyped-def]
        while rate > 0:
            yield env.timeout(rng.expovariate(rate))
            if proc.is_alive:
                proc.interrupt("failure")
            else:
                return

    if rate > 0:
        env.process(failures(env))
    env.run(until=proc)
    run.wall_s = float(env.now)
    return run


# --- frames --------------------------------------------------------------------------------


def steps_frame(system: str, st: StepTime, run: FailureRun, watts_busy: float) -> pl.DataFrame:
    """The ``steps`` frame of a recorded run (:data:`STEPS_SCHEMA`)."""
    starts: list[np.ndarray] = []
    steps_col: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    comp: list[np.ndarray] = []
    comm: list[np.ndarray] = []
    bub: list[np.ndarray] = []
    state: list[np.ndarray] = []
    joules: list[np.ndarray] = []
    step_s = st.seconds
    per_step_j = st.busy_joules
    for kind, a, b, first, n in run.segments:
        if kind in ("train", "lost"):
            whole = math.floor(n + 1e-9) if kind == "lost" else round(n)
            frac = n - whole if kind == "lost" else 0.0
            cnt = whole + (1 if frac > 1e-9 else 0)
            if cnt == 0:
                continue
            idx = np.arange(cnt)
            s = a + idx * step_s
            e = np.minimum(s + step_s, b)
            f = (e - s) / step_s if step_s > 0 else np.ones(cnt)
            starts.append(s)
            ends.append(e)
            steps_col.append(first + idx)
            comp.append(f * st.compute_s)
            comm.append(f * st.comm_s)
            bub.append(f * st.bubble_s)
            state.append(np.full(cnt, kind, dtype=object))
            joules.append(f * per_step_j)
        else:
            starts.append(np.array([a]))
            ends.append(np.array([b]))
            steps_col.append(np.array([first]))
            comp.append(np.zeros(1))
            comm.append(np.zeros(1))
            bub.append(np.zeros(1))
            state.append(np.array([kind], dtype=object))
            joules.append(np.zeros(1))
    if not starts:
        return pl.DataFrame(schema=STEPS_SCHEMA)
    n_rows = sum(len(x) for x in starts)
    del watts_busy
    return pl.DataFrame(
        {
            "system": [system] * n_rows,
            "step": np.concatenate(steps_col).astype(np.int64),
            "start_s": np.concatenate(starts),
            "end_s": np.concatenate(ends),
            "compute_s": np.concatenate(comp),
            "comm_s": np.concatenate(comm),
            "bubble_s": np.concatenate(bub),
            "state": [str(x) for x in np.concatenate(state)],
            "joules": np.concatenate(joules),
        },
        schema=STEPS_SCHEMA,
    )


def devices_frame(
    system: System, st: StepTime, run: FailureRun, power: PowerModel | None
) -> pl.DataFrame:
    """The ``devices`` frame, aggregated per state: for every device (``replica`` = its
    data-parallel index, ``device`` = its index in the replica) one interval per state,
    laid end to end from 0, whose length is the device's total seconds in that state over
    the run — training states (``compute``, ``memory``, ``overhead``, ``comm``,
    ``bubble``) from the steps executed (lost work included), then ``checkpoint`` and
    ``restart``. The lengths of one device add up to the wall time. Busy rows carry
    ``watts(state) × seconds``; ``bubble``, ``checkpoint`` and ``restart`` carry 0 J (the
    economics model charges idle power for them)."""
    steps_done = (run.wall_s - run.checkpoint_s - run.restart_s) / st.seconds if st.seconds else 0.0
    parts: list[tuple[str, float]] = [
        (k, st.device_s.get(k, 0.0) * steps_done) for k in (*BUSY_KEYS, "bubble")
    ]
    parts += [("checkpoint", run.checkpoint_s), ("restart", run.restart_s)]
    parts = [(k, s) for k, s in parts if s > 0]
    lanes_r = system.parallelism.data
    per = system.parallelism.model_parallel
    n = lanes_r * per
    rows = len(parts)
    starts, ends, states, joules = [], [], [], []
    acc = 0.0
    for k, s in parts:
        starts.append(acc)
        acc += s
        ends.append(acc)
        states.append(k)
        w = power.state_watts(k) if (power is not None and k in BUSY_KEYS) else 0.0
        joules.append(w * s)
    lane = np.arange(n)
    return pl.DataFrame(
        {
            "system": [system.name] * (n * rows),
            "replica": np.repeat(lane // per, rows).astype(np.int32),
            "device": np.repeat(lane % per, rows).astype(np.int32),
            "start_s": np.tile(np.array(starts, dtype=float), n),
            "end_s": np.tile(np.array(ends, dtype=float), n),
            "state": states * n,
            "joules": np.tile(np.array(joules, dtype=float), n),
        },
        schema=DEVICES_SCHEMA,
    )


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of ``xs``."""
    return float(np.percentile(np.asarray(xs, dtype=float), q))


__all__ += ["checkpoint_bytes", "percentile", "steps_frame"]
