"""Per-stage costs of a training step from one priced stage graph.

The backend prices one stage graph per micro-batch shape
(:meth:`~xpusim.engine.backend.Compiled.stage_costs`): the **last** stage's, with
``ceil(L/p)`` layers plus the final norm, LM head and loss (the whole model when
``p = 1``). Stages of a real partition differ: the first holds the input embedding, the
last the head, each its own number of layers (:mod:`.partition`). This module splits the
priced seconds of each pass (forward, backward) and each cause (``compute``, ``memory``,
``overhead``, ``comm``) over the graph's parts in proportion to what each part asks of
that cause:

==========  =============================================
cause       measure an op contributes
==========  =============================================
compute     FLOPs
memory      bytes read and written
comm        collective payload bytes
other       op instances (launches)
==========  =============================================

Parts are the ops labelled ``layer`` (per layer: their measure over the graph's layer
count), ``head`` (last stage only), ``embed`` (first stage only: read from the model's
one-stage graph and priced at the same rates) and the rest (every stage). A stage of
``k`` layers then costs ``rate × (k·layer + head? + embed? + rest)`` per cause, which
reproduces the priced graph exactly for the stage it describes.

The same split gives the share of a stage's compute seconds spent in the transformer
layers' GEMMs (``OpKind.MATMUL`` FLOPs of ``layer`` ops), which FP8 training speeds up
(:func:`fp8_gemm_speedup`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Op, OpKind, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism
from xpusim.plugins.workloads.training.partition import StagePartition

__all__ = ["PassParts", "StageCostModel", "stage_cost_model"]

CAUSES = ("compute", "memory", "overhead", "comm")
"""Causes a priced breakdown splits into (anything else is measured in op instances)."""


def _measure(op: Op, cause: str) -> float:
    n = float(op.count)
    if cause == "compute":
        return op.flops * n
    if cause == "memory":
        return op.bytes * n
    if cause == "comm":
        return op.comm_bytes * n if op.kind is OpKind.COLLECTIVE else 0.0
    return n


def _measures(ops: Iterable[Op], causes: Iterable[str]) -> dict[str, float]:
    ops = list(ops)
    return {c: sum(_measure(o, c) for o in ops) for c in causes}


@dataclass(frozen=True)
class PassParts:
    """One pass (forward or backward) split into per-part seconds by cause.

    ``layer`` is one transformer layer; ``head`` the last stage's extra; ``embed`` the
    first stage's; ``rest`` what every stage has. ``layer_gemm_compute_s`` is the part of
    one layer's ``compute`` seconds spent in its weight GEMMs, ``layer_attention_compute_s``
    the part spent in its attention core.
    """

    layer: Mapping[str, float]
    head: Mapping[str, float]
    embed: Mapping[str, float]
    rest: Mapping[str, float]
    layer_gemm_compute_s: float
    layer_attention_compute_s: float

    def stage(self, layers: int, first: bool, last: bool) -> dict[str, float]:
        """Seconds by cause of a stage holding ``layers`` layers (and the ends it holds)."""
        out: dict[str, float] = {}
        for k in {*self.layer, *self.head, *self.embed, *self.rest}:
            v = layers * self.layer.get(k, 0.0) + self.rest.get(k, 0.0)
            if first:
                v += self.embed.get(k, 0.0)
            if last:
                v += self.head.get(k, 0.0)
            out[k] = v
        return out


def _split(
    priced: Mapping[str, float],
    ops: list[Op],
    embed_ops: list[Op],
    n_layers: int,
) -> PassParts:
    """Split one pass's priced seconds over its parts (module docstring)."""
    causes = list(priced)
    layer = [o for o in ops if o.layer == "layer"]
    head = [o for o in ops if o.layer == "head"]
    rest = [o for o in ops if o.layer not in ("layer", "head", "embed")]
    embed_here = [o for o in ops if o.layer == "embed"]
    total = _measures(ops, causes)
    parts = {
        "layer": _measures(layer, causes),
        "head": _measures(head, causes),
        "rest": _measures(rest, causes),
    }
    emb = _measures(embed_ops, causes)
    emb_here = _measures(embed_here, causes)
    out: dict[str, dict[str, float]] = {k: {} for k in (*parts, "embed")}
    for c in causes:
        secs = float(priced[c])
        if total[c] > 0:
            rate = secs / total[c]
        else:  # no op measures this cause: attribute it per op instance
            rate = 0.0
            inst = _measures(ops, ["overhead"])["overhead"]
            if inst > 0:
                for name, sel in (("layer", layer), ("head", head), ("rest", rest)):
                    share = _measures(sel, ["overhead"])["overhead"] / inst
                    out[name][c] = secs * share
                out["embed"][c] = 0.0
                continue
        for name in parts:
            out[name][c] = rate * parts[name][c]
        # the embedding: priced in the graph when it holds it, else at the same rate
        out["embed"][c] = rate * (emb_here[c] if embed_here else emb[c])
    n = max(1, n_layers)
    per_layer = {c: v / n for c, v in out["layer"].items()}
    attn_flops = sum(o.flops * o.count for o in layer if _is_attention(o))
    gemm_flops = sum(
        o.flops * o.count for o in layer if o.kind is OpKind.MATMUL and not _is_attention(o)
    )
    layer_flops = parts["layer"].get("compute", 0.0)
    compute = per_layer.get("compute", 0.0)
    return PassParts(
        per_layer,
        out["head"],
        out["embed"],
        out["rest"],
        compute * gemm_flops / layer_flops if layer_flops > 0 else 0.0,
        compute * attn_flops / layer_flops if layer_flops > 0 else 0.0,
    )


def _is_attention(op: Op) -> bool:
    """The attention core: a fused attention op, or the score and value GEMMs of an
    unfused one."""
    return op.kind is OpKind.ATTENTION or (
        op.kind is OpKind.MATMUL and op.name.endswith((".qk", ".pv"))
    )


@dataclass(frozen=True)
class StageCostModel:
    """Forward and backward :class:`PassParts`, the optimizer seconds of the priced
    stage, and how the backend priced it."""

    forward: PassParts
    backward: PassParts
    optimizer: Mapping[str, float]
    how: str

    def stage(self, s: int, partition: StagePartition) -> tuple[dict[str, float], dict[str, float]]:
        """(forward, backward) seconds by cause of stage ``s`` of ``partition``."""
        first, last = s == 0, s == partition.stages - 1
        k = partition.layers[s]
        return self.forward.stage(k, first, last), self.backward.stage(k, first, last)


def stage_cost_model(
    compiled: Compiled, model: ModelGraph, shape: Shape, par: Parallelism
) -> StageCostModel:
    """Price the stage graph of ``shape`` once and split it (module docstring)."""
    sc = compiled.stage_costs(shape)
    graph = model.build(shape, par)
    stages = model.training_stages(graph)
    layers = int(model.info.layers or 0)
    p = max(1, par.pipeline)
    n_l = -(-layers // p) if layers else 1
    if p > 1:
        try:
            whole = model.training_stages(model.build(shape, replace(par, pipeline=1, virtual=1)))
            embed_f = [o for o in whole.forward.ops if o.layer == "embed"]
            embed_b = [o for o in whole.backward.ops if o.layer == "embed"]
        except Exception:  # a model that cannot build one stage: no embedding share
            embed_f, embed_b = [], []
    else:
        embed_f, embed_b = [], []
    fwd_ops = list(stages.forward.ops)
    bwd_ops = list(stages.backward.ops)
    if not bwd_ops:
        # the backend split forward:backward itself; split both by the forward ops
        bwd_ops, embed_b = fwd_ops, embed_f
    forward = _split(dict(sc.forward), fwd_ops, embed_f, n_l)
    backward = _split(dict(sc.backward), bwd_ops, embed_b, n_l)
    return StageCostModel(forward, backward, dict(sc.optimizer), sc.how)
