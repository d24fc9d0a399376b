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

FP8 training also adds work the bf16 graph does not hold (:class:`Fp8Casts`): Transformer
Engine quantizes the operands of every FP8 GEMM with a fused cast-and-transpose kernel
(``cast_transpose``: read the 16-bit tensor, write its FP8 copy and the FP8 copy of its
transpose, which the weight-gradient GEMM consumes in the layout the Hopper FP8 GEMM
takes), with the tensor's absolute maximum reduced on the way for the scaling recipe. Per
layer and micro-batch that is each weight GEMM's input activation in the forward and its
output gradient in the backward; the weights are cast once a step (the FP8 copies are
kept for the step's other micro-batches). Each is priced by the backend as the
memory-bound elementwise op it is (``2 + 1 + 1`` bytes a 16-bit element).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Op, OpKind, Shape, dtype_bytes
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism
from xpusim.plugins.workloads.training.partition import StagePartition

__all__ = ["Fp8Casts", "PassParts", "StageCostModel", "stage_cost_model"]

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


CAST_BYTES_WRITTEN = 2.0
"""Bytes a cast-and-transpose kernel writes per element: the FP8 copy and the FP8 copy of
the transpose, one byte each (Transformer Engine's ``cast_transpose``)."""


@dataclass(frozen=True)
class Fp8Casts:
    """Seconds of one transformer layer's FP8 quantization kernels (module docstring):
    ``forward_s`` the GEMM inputs of one micro-batch, ``backward_s`` the GEMM output
    gradients of one micro-batch, ``weights_s`` the layer's weights once a step."""

    forward_s: float = 0.0
    backward_s: float = 0.0
    weights_s: float = 0.0


def _cast_seconds(compiled: Compiled, elements: float, count: int) -> float:
    """Seconds of ``count`` cast-and-transpose kernels of ``elements`` 16-bit elements
    each, priced by the backend when it prices single ops, else at the device's memory
    bandwidth."""
    if elements <= 0:
        return 0.0
    e = float(dtype_bytes("bf16"))
    op = Op(
        "fp8.cast_transpose",
        OpKind.ELEMENTWISE,
        flops=2.0 * elements,  # |x| and the running maximum
        bytes_read=e * elements,
        bytes_written=CAST_BYTES_WRITTEN * elements,
        dims=(max(1, int(elements)),),
        count=count,
        layer="layer",
    )
    price = getattr(compiled, "op_time", None)
    if callable(price):
        return float(price(op).seconds) * count
    bw = float(compiled.system.device.memory_bw.value)
    return (e + CAST_BYTES_WRITTEN) * elements * count / bw


def fp8_casts(compiled: Compiled, forward_ops: Iterable[Op], n_layers: int) -> Fp8Casts:
    """Per-layer :class:`Fp8Casts` of the weight GEMMs among ``forward_ops`` (the
    ``layer`` MATMULs that are not the attention core), over ``n_layers`` layers."""
    fwd = bwd = wts = 0.0
    for op in forward_ops:
        if op.layer != "layer" or op.kind is not OpKind.MATMUL or _is_attention(op):
            continue
        if len(op.dims) != 3:
            continue
        m, n, k = (float(x) for x in op.dims)
        b = float(op.batch)
        fwd += _cast_seconds(compiled, m * k * b, op.count)
        bwd += _cast_seconds(compiled, m * n * b, op.count)
        wts += _cast_seconds(compiled, k * n * b, op.count)
    per = 1.0 / max(1, n_layers)
    return Fp8Casts(fwd * per, bwd * per, wts * per)


@dataclass(frozen=True)
class StageCostModel:
    """Forward and backward :class:`PassParts`, the optimizer seconds of the priced
    stage, how the backend priced it, and the layers' FP8 casts should the plan train in
    FP8."""

    forward: PassParts
    backward: PassParts
    optimizer: Mapping[str, float]
    how: str
    fp8: Fp8Casts = Fp8Casts()

    def stage(self, s: int, partition: StagePartition) -> tuple[dict[str, float], dict[str, float]]:
        """(forward, backward) seconds by cause of stage ``s`` of ``partition``."""
        first, last = s == 0, s == partition.stages - 1
        k = partition.layers[s]
        return self.forward.stage(k, first, last), self.backward.stage(k, first, last)


def stage_cost_model(
    compiled: Compiled, model: ModelGraph, shape: Shape, par: Parallelism, fp8: bool = False
) -> StageCostModel:
    """Price the stage graph of ``shape`` once and split it (module docstring); with
    ``fp8`` also price the layers' FP8 casts (:class:`Fp8Casts`)."""
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
    casts = fp8_casts(compiled, stages.forward.ops, n_l) if fp8 else Fp8Casts()
    return StageCostModel(forward, backward, dict(sc.optimizer), sc.how, casts)
