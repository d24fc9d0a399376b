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

Parameters per device are those of the **largest** pipeline stage under tensor parallel
``t`` and pipeline ``p``: ``ceil(L/p)`` layers of ``layer_params / t`` plus one
vocabulary matrix ``V·h / t`` (the first stage holds the input embedding, the last the
LM head — Megatron-LM keeps a copy of tied embeddings there too), plus learned positions
on the first stage. With ``p = 1`` every matrix sits on one stage. A model without
architecture fields (no ``vocab``/``hidden`` in its config) is split evenly,
``params / (t·p)``.

Activations are the model's own estimate (:meth:`xpusim.engine.model.ModelGraph.activation_bytes`
for one micro-batch of one stage, e.g. Korthikanti et al. 2022 Table 2 for the
transformer) times the micro-batches in flight on the first stage
(:func:`xpusim.plugins.workloads.training.pipeline.in_flight_microbatches`: ``min(m, p)`` for 1F1B, more when
interleaved), plus a backend's fixed runtime reserve (CUDA context, workspaces) when the
compiled model states one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpusim.engine.graph import Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism
from xpusim.plugins.workloads.training.pipeline import in_flight_microbatches

__all__ = [
    "OPTIMIZER_BYTES",
    "MemoryNeed",
    "checkpoint_bytes",
    "stage_params",
    "training_memory",
]

GB = 1e9

OPTIMIZER_BYTES: Mapping[str, tuple[float, float]] = {
    "adam": (12.0, 8.0),
    "sgd": (8.0, 4.0),
}
"""Optimizer-state bytes per parameter: (16/8-bit training with an fp32 master copy,
fp32 training). Adam: master + first and second moments; SGD: master + momentum."""


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Per-device training memory by part (bytes) against the device's capacity."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    reserve: float
    have: float

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


def _cfg(model: ModelGraph) -> Mapping[str, Any]:
    return model.info.config or {}


def stage_params(model: ModelGraph, tensor: int, pipeline: int) -> float:
    """Parameters held by one device of the largest pipeline stage (module docstring)."""
    info = model.info
    c = _cfg(model)
    t, p = max(1, tensor), max(1, pipeline)
    vocab, hidden, layers = c.get("vocab"), c.get("hidden"), info.layers or c.get("layers")
    if not (vocab and hidden and layers):
        return info.params / (t * p)
    emb = float(vocab) * float(hidden)
    tied = bool(c.get("tied_embeddings", False))
    pos = float(c.get("seq_len", 0)) * float(hidden) if c.get("position") == "learned" else 0.0
    matrices = emb * (1 if tied else 2)
    layer = max(0.0, (info.params - matrices - pos) / float(layers))
    n_l = math.ceil(int(layers) / p)
    if p == 1:
        return n_l * layer / t + matrices / t + pos
    return n_l * layer / t + emb / t + pos


def checkpoint_bytes(model: ModelGraph, precision: str, optimizer: str = "adam") -> float:
    """Bytes of one full checkpoint: weights at ``precision`` plus optimizer states."""
    e = dtype_bytes(precision)
    mixed, full = OPTIMIZER_BYTES[optimizer]
    return model.info.params * (e + (mixed if e < 4 else full))


def training_memory(
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
) -> MemoryNeed:
    """Per-device memory of one training plan (see the module docstring).

    ``microbatches`` is ``m``, the micro-batches per replica per step (it caps the
    activations in flight under 1F1B).
    """
    e = dtype_bytes(precision)
    mixed, full = OPTIMIZER_BYTES[optimizer]
    opt = mixed if e < 4 else full
    n = stage_params(model, par.tensor, par.pipeline)
    d = max(1, par.data)
    z = par.zero
    weights = n * e / (d if z >= 3 else 1)
    if z >= 3:
        layers = max(1, model.info.layers)
        per_layer = n / max(1, math.ceil(layers / max(1, par.pipeline)))
        weights += 2 * per_layer * e  # gather buffer: the layer computing and the prefetched one
    grads = n * e / (d if z >= 2 else 1)
    states = n * opt / (d if z >= 1 else 1)
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
    act = per_mb * in_flight_microbatches(par.pipeline, max(1, microbatches), par.virtual)
    return MemoryNeed(weights, grads, states, act, reserve_bytes, have_bytes)
