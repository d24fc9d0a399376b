"""Training memory per device: weights, gradients, optimizer states and activations.

Mixed-precision Adam (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", §3.1, the ``2Ψ + 2Ψ + KΨ`` accounting with
``K = 12``) keeps, per parameter:

==========================  ========================  =============================
state                       16/8-bit training         fp32 training
==========================  ========================  =============================
weights                     ``e`` bytes (bf16: 2)     4
gradients                   ``e`` bytes               4
optimizer (Adam)            12: fp32 master + m + v   8: m + v
optimizer (SGD, momentum)   8: fp32 master + m        4: m
==========================  ========================  =============================

ZeRO stages divide these by the data-parallel degree ``d`` (Rajbhandari et al. 2020,
Fig. 1): stage 1 the optimizer states, stage 2 also the gradients, stage 3 (= FSDP full
sharding) also the weights, which are then gathered one layer at a time (two layers'
worth is counted as the gather buffer: the one computing and the one prefetched).

Parameters are counted **per pipeline stage** of the plan's partition
(:mod:`xpusim.plugins.workloads.training.partition`): stage ``s`` holds its ``k_s`` layers
(the dense part of each split over tensor ``t``, the routed experts of a MoE layer over
``t × expert``), the first stage also the input embedding ``V·h/t`` (and learned
positions), the last the LM head ``V·h/t`` (Megatron-LM keeps a copy of tied embeddings
there too) and the final norm. With ``p = 1`` every matrix sits on one stage. A model
without architecture fields (no ``vocab``/``hidden`` in its config) is split evenly,
``params / (t·p)``.

Sharding (ZeRO, Megatron's distributed optimizer, FSDP) is over the data-parallel group,
which includes the context-parallel ranks (they hold the same weights): ``d·c`` devices
for dense parameters and ``d·c / expert`` for routed experts (Megatron-Core's
expert-data-parallel group). ``zero: 1`` is the distributed optimizer (NeMo's default),
``zero: 2`` also shards gradients, ``zero: 3`` is FSDP full sharding; with
``fsdp_reshard: false`` (FSDP's ``reshard_after_forward=False``, as Llama 3 was trained)
the gathered weights of the stage stay on the device from forward to backward.

FP8 training (``precision: fp8``, Transformer Engine style) keeps the parameters in bf16
(2 bytes) with fp32 master weights and Adam moments (12 bytes) and an FP8 copy (1 byte)
of every transformer-layer GEMM weight; gradients are kept at ``grad_dtype``. Under a
recipe of :data:`FP8_CACHED_INPUTS` (``te``) the linear layers' inputs among the
activations (:meth:`~xpusim.engine.model.ModelGraph.linear_input_bytes`) are kept at one
byte an element.

Activations are the model's own estimate (:meth:`xpusim.engine.model.ModelGraph.activation_bytes`
for one micro-batch of one stage: for the transformer the tensors each layer saves for
its backward, one by one, :mod:`xpusim.plugins.models.activations`), per layer, times
the stage's layers and the micro-batches it holds in
flight (:func:`xpusim.plugins.workloads.training.pipeline.in_flight_microbatches`: stage
``s`` of 1F1B holds ``min(m, p − s)``, more when interleaved), plus on the last stage one
micro-batch of what the output layer and the loss keep
(:meth:`~xpusim.engine.model.ModelGraph.head_activation_bytes`: a language model's fp32
log-softmax over the vocabulary), divided by the context parallel degree (each device
keeps ``1/c`` of every sequence). With
``offload_activations`` the stage keeps at most two micro-batches' worth on the device
(the one computing and the one moving to or from host memory). Under the ``dualpipe``
schedule every device holds two copies of its parameters and ``p + 1`` micro-batches of
activations (DeepSeek-AI 2024, arXiv:2412.19437, §3.2.1, Table 2). A backend's fixed
runtime reserve (CUDA context, workspaces) is added when the compiled model states one.

The peak of the plan is the stage whose device needs the most; messages name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpusim.engine.graph import Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism
from xpusim.plugins.workloads.training.partition import StagePartition, make_partition
from xpusim.plugins.workloads.training.pipeline import in_flight_microbatches

FP8_CACHED_INPUTS = frozenset({"te"})
"""FP8 recipes that keep each linear layer's input for its weight gradient in FP8:
Transformer Engine's ``Linear`` saves its quantized input (``saved_inputmat = inputmat``
when FP8 runs the weight-gradient GEMM), as DeepSeek-V3 does (arXiv:2412.19437, §3.3.3:
the cached inputs of the Linear operator in FP8). torchao's ``Float8Linear`` saves the
high-precision input."""

__all__ = [
    "FP8_CACHED_INPUTS",
    "OPTIMIZER_BYTES",
    "MemoryNeed",
    "StageParams",
    "checkpoint_bytes",
    "param_bytes",
    "stage_memories",
    "stage_param_split",
    "stage_params",
    "training_memory",
]

GB = 1e9

OPTIMIZER_BYTES: Mapping[str, tuple[float, float]] = {
    "adam": (12.0, 8.0),
    "adam_bf16": (8.0, 4.0),
    "sgd": (8.0, 4.0),
}
"""Optimizer-state bytes per parameter: (16/8-bit training with an fp32 master copy,
fp32 training). Adam: master + first and second moments in fp32; ``adam_bf16``: the
moments in bf16 beside the fp32 master (DeepSeek-AI 2024, arXiv:2412.19437, §3.3.3,
"We adopt the BF16 data format instead of FP32 to track the first and second moments");
SGD: master + momentum."""


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Per-device training memory by part (bytes) against the device's capacity, for the
    device of pipeline stage ``stage`` (of ``stages``) that holds ``layers`` layers and
    ``in_flight`` micro-batches of activations."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    reserve: float
    have: float
    stage: int = 0
    stages: int = 1
    layers: int = 0
    in_flight: float = 1.0

    @property
    def total(self) -> float:
        """Bytes needed per device."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.reserve

    @property
    def fits(self) -> bool:
        """Whether the total fits the device."""
        return self.total <= self.have

    def breakdown(self) -> dict[str, float]:
        """The parts by name (the ``Fit.breakdown`` keys)."""
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer_states": self.optimizer,
            "activations": self.activations,
            "runtime_reserve": self.reserve,
        }

    def describe(self) -> str:
        """The parts in GB, for messages."""
        return ", ".join(
            f"{k.replace('_', ' ')} {v / GB:.1f} GB" for k, v in self.breakdown().items() if v
        )

    def where(self) -> str:
        """The stage as a phrase (``pipeline stage 0 of 16 (7 layers, the embedding, 16
        micro-batches in flight)``), empty without pipelining."""
        if self.stages <= 1:
            return ""
        ends = []
        if self.stage == 0:
            ends.append("the embedding")
        if self.stage == self.stages - 1:
            ends.append("the LM head")
        parts = [f"{self.layers} layers", *ends, f"{self.in_flight:g} micro-batches in flight"]
        return f"pipeline stage {self.stage} of {self.stages} ({', '.join(parts)})"


def _cfg(model: ModelGraph) -> Mapping[str, Any]:
    return model.info.config or {}


def _expert_params_per_layer(c: Mapping[str, Any]) -> tuple[float, int]:
    """(routed-expert weights of one MoE layer, MoE layers) from the model's config."""
    experts = int(c.get("experts", 1) or 1)
    if experts <= 1:
        return 0.0, 0
    h = float(c.get("hidden", 0) or 0)
    f = float(c.get("ffn_hidden", 0) or 0)
    one = h * f * (2 if c.get("gated_mlp") else 1) + f * h
    moe_layers = int(c.get("layers", 0) or 0) - int(c.get("dense_layers", 0) or 0)
    return experts * one, max(0, moe_layers)


@dataclass(frozen=True, slots=True)
class StageParams:
    """Parameters one device of a stage holds: ``dense`` (split over tensor only) and
    ``expert`` (routed experts, also split over expert parallel), and ``gemm`` the
    transformer-layer weights among them (the ones FP8 training keeps an FP8 copy of)."""

    dense: float
    expert: float
    gemm: float

    @property
    def total(self) -> float:
        """All parameters on the device."""
        return self.dense + self.expert


def stage_param_split(
    model: ModelGraph, par: Parallelism, partition: StagePartition | None = None, stage: int = -1
) -> StageParams:
    """Parameters held by one device of pipeline stage ``stage`` (default: the largest)."""
    info = model.info
    c = _cfg(model)
    t, p = max(1, par.tensor), max(1, par.pipeline)
    vocab, hidden, layers = c.get("vocab"), c.get("hidden"), info.layers or c.get("layers")
    if not (vocab and hidden and layers):
        n = info.params / (t * p)
        return StageParams(n, 0.0, 0.0)
    part = partition or make_partition(int(layers), p, 1)
    if stage < 0:
        return max(
            (stage_param_split(model, par, part, s) for s in range(part.stages)),
            key=lambda x: x.total,
        )
    emb = float(vocab) * float(hidden)
    tied = bool(c.get("tied_embeddings", False))
    pos = float(c.get("seq_len", 0)) * float(hidden) if c.get("position") == "learned" else 0.0
    matrices = emb * (1 if tied else 2)
    expert_layer, moe_layers = _expert_params_per_layer(c)
    experts_total = expert_layer * moe_layers
    dense_layer = max(0.0, (info.params - matrices - pos - experts_total) / float(layers))
    expert_avg = experts_total / float(layers)  # routed experts, averaged over the layers
    k = part.layers[stage]
    ep = max(1, par.expert) if experts_total else 1
    dense = k * dense_layer / t
    expert = k * expert_avg / (t * ep)
    gemm = dense + expert
    if p == 1:
        dense += matrices / t + pos
    else:
        if stage == 0:
            dense += emb / t + pos
        if stage == p - 1:
            dense += emb / t
    return StageParams(dense, expert, gemm)


def stage_params(model: ModelGraph, tensor: int, pipeline: int) -> float:
    """Parameters held by one device of the largest pipeline stage of the default
    partition, without expert parallelism (module docstring)."""
    return stage_param_split(model, Parallelism(tensor=tensor, pipeline=pipeline)).total


def param_bytes(precision: str) -> float:
    """Bytes of one stored parameter: FP8 training keeps bf16 parameters."""
    return 2.0 if precision == "fp8" else float(dtype_bytes(precision))


def checkpoint_bytes(model: ModelGraph, precision: str, optimizer: str = "adam") -> float:
    """Bytes of one full checkpoint: weights at ``precision`` plus optimizer states."""
    e = param_bytes(precision)
    mixed, full = OPTIMIZER_BYTES[optimizer]
    return model.info.params * (e + (mixed if e < 4 else full))


def stage_memories(
    model: ModelGraph,
    par: Parallelism,
    *,
    micro_batch: int,
    seq_len: int,
    microbatches: int,
    recompute: str,
    precision: str,
    have_bytes: float,
    optimizer: str = "adam",
    reserve_bytes: float = 0.0,
    partition: StagePartition | None = None,
    grad_dtype: str | None = None,
    fsdp_reshard: bool = True,
    offload_activations: bool = False,
    dualpipe: bool = False,
    fp8_recipe: str = "te",
) -> list[MemoryNeed]:
    """Per-device memory of every pipeline stage of one plan (module docstring).

    ``microbatches`` is ``m``, the micro-batches per replica per step (it caps the
    activations in flight under 1F1B).
    """
    e = param_bytes(precision)
    ge = float(dtype_bytes(grad_dtype)) if grad_dtype else e
    mixed, full = OPTIMIZER_BYTES[optimizer]
    opt = mixed if e < 4 else full
    p = max(1, par.pipeline)
    layers = int(model.info.layers or _cfg(model).get("layers") or 0)
    part = partition or (make_partition(layers, p, 1) if layers >= p else None)
    cp = max(1, par.context)
    shards_dense = max(1, par.data) * cp
    shards_expert = max(1, shards_dense // max(1, par.expert))
    z = par.zero
    shape = Shape(Phase.TRAIN, batch=micro_batch, tokens=seq_len, recompute=recompute)
    stage_par = Parallelism(
        tensor=par.tensor,
        pipeline=par.pipeline,
        virtual=par.virtual,
        sequence=par.sequence,
        data=par.data,
        zero=par.zero,
        expert=par.expert,
    )
    per_mb = float(model.activation_bytes(shape, stage_par, recompute))
    if precision == "fp8" and fp8_recipe in FP8_CACHED_INPUTS:
        act_e = float(dtype_bytes(str(_cfg(model).get("dtype") or "bf16")))
        lin = float(model.linear_input_bytes(shape, stage_par, recompute))
        per_mb -= lin * (1.0 - 1.0 / act_e)  # those inputs kept at one byte an element
    n_model = -(-layers // p) if layers else 1
    per_layer_act = per_mb / max(1, n_model)
    # the last stage's head and loss keep one micro-batch (1F1B runs its backward next)
    head_act = float(model.head_activation_bytes(shape, stage_par))
    out: list[MemoryNeed] = []
    for s in range(p):
        sp = stage_param_split(model, par, part, s if part else -1)
        k = part.layers[s] if part else n_model
        shards = sp.dense / shards_dense + sp.expert / shards_expert
        weights = (sp.dense + sp.expert) * e
        if z >= 3:
            weights = shards * e
            if fsdp_reshard:
                per_layer = sp.total / max(1, k)
                weights += 2 * per_layer * e  # the layer computing and the prefetched one
            else:
                weights += sp.total * e  # gathered stage weights kept from forward to backward
        if precision == "fp8":
            weights += sp.gemm * 1.0  # FP8 copy of every layer GEMM weight
        grads = (shards if z >= 2 else sp.total) * ge
        states = (shards if z >= 1 else sp.total) * opt
        flight = in_flight_microbatches(p, max(1, microbatches), par.virtual, s)
        if dualpipe:  # two copies of the parameters, p + 1 micro-batches in flight
            weights, grads, states = 2 * weights, 2 * grads, 2 * states
            flight = float(min(max(1, microbatches), p + 1))
        if offload_activations:
            flight = min(flight, 2.0)
        act = (per_layer_act * k * flight + (head_act if s == p - 1 else 0.0)) / cp
        out.append(
            MemoryNeed(weights, grads, states, act, reserve_bytes, have_bytes, s, p, k, flight)
        )
    return out


def training_memory(model: ModelGraph, par: Parallelism, **plan: Any) -> MemoryNeed:
    """The memory of the plan's fullest device: the largest of :func:`stage_memories`
    (same keyword arguments)."""
    return max(stage_memories(model, par, **plan), key=lambda x: (x.total, -x.stage))
