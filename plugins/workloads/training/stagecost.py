"""Per-stage costs of a training step from one priced stage graph.

The backend prices one stage graph per micro-batch shape
(:meth:`~xpusim.engine.backend.Compiled.stage_costs`): the **last** stage's, with
``ceil(L/p)`` layers plus the final norm, LM head and loss (the whole model when
``p = 1``). Stages of a real partition differ: the first holds the input embedding, the
last the head, each its own number of layers (:mod:`.partition`). This module splits the
priced seconds of each pass (forward, backward) and each cause (``compute``, ``memory``,
``overhead``, ``comm``) over the graph's parts in proportion to what each part asks of
that cause. Where the backend prices single ops (``op_time``), that is each op's own
priced seconds of the cause (its compute time where it is compute-bound, its memory
time where memory-bound, its launch overhead), so the split is exact whatever rate each
kind of op runs at; otherwise a stand-in measure:

==========  =============================================
cause       measure an op contributes
==========  =============================================
compute     priced compute seconds, else FLOPs
memory      priced memory seconds, else bytes read and written
comm        collective payload bytes
other       priced overhead seconds, else op instances (launches)
==========  =============================================

Parts are the ops labelled ``layer`` (per layer: their measure over the graph's layer
count), ``head`` (last stage only), ``embed`` (first stage only: read from the model's
one-stage graph and priced at the same rates) and the rest (every stage). A stage of
``k`` layers then costs ``rate × (k·layer + head? + embed? + rest)`` per cause, which
reproduces the priced graph exactly for the stage it describes.

The same split gives the share of a layer's compute seconds spent in its weight GEMMs
(``OpKind.MATMUL`` ``layer`` ops other than the attention core), which FP8 training
speeds up (:func:`fp8_gemm_speedup`), and in its attention core, which context
parallelism slows down. By priced seconds, not FLOPs: a flash-attention core runs at
well under half a GEMM's rate (FlashAttention-2 on H100), so at long sequences a FLOP
share would give the GEMMs most of a layer's time that attention spends, and FP8 would
speed up time the GEMMs do not take.

FP8 training also adds work the bf16 graph does not hold (:class:`Fp8Casts`): the operands
of every FP8 GEMM are quantized by memory-bound kernels, which kernels depending on the
stack's recipe (:data:`FP8_RECIPES`, each priced by the backend as the elementwise op it
is):

``te``, Transformer Engine
    a fused cast-and-transpose (``cast_transpose``: read the 16-bit tensor, write its FP8
    copy and the FP8 copy of its transpose, which the weight-gradient GEMM consumes in the
    layout the Hopper FP8 GEMM takes), the tensor's absolute maximum reduced on the way
    for the scaling recipe: each weight GEMM's input in the forward and its output
    gradient in the backward, per layer and micro-batch; the weights once a step (the
    FP8 copies are kept for the step's other micro-batches). ``2 + 2`` bytes an element.
``torchao``, PyTorch Float8 with tensorwise dynamic scaling (``torchao.float8``, as
    torchtitan ran it with ``torch.compile`` and FSDP's float8 all-gather)
    the scale of a tensor is its current absolute maximum, so each cast is two kernels, a
    reduction (``amax``, read 2 bytes an element) then the scaled cast (read 2, write 1);
    ``torch._scaled_mm`` takes its second operand column-major, and the autograd function
    (``manual_float8_matmul_with_args_in_hp``, ``torchao/float8/float8_linear.py``) saves
    the 16-bit input and casts in the backward again, so per layer and micro-batch:
    forward, each GEMM input (amax, cast); backward, each output gradient (amax, one cast
    writing both layouts: read 2, write 2), each input again for the weight gradient
    (amax, cast), and each FP8 weight from the all-gather transposed for the input
    gradient (read 1, write 1); once a step, the weights' amax and cast (FSDP casts the
    shard before the float8 all-gather, with the scales precomputed after the optimizer
    step: ``precompute_float8_dynamic_scale_for_fsdp``). Elementwise work around the
    casts is assumed fused into them by the compiler (one read of the tensor per kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from xpusim.engine.analytic import OpTime
from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Op, OpKind, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism
from xpusim.plugins.workloads.training.partition import StagePartition

__all__ = [
    "FP8_RECIPES",
    "Fp8Casts",
    "Fp8Recipe",
    "PassParts",
    "StageCostModel",
    "memory_bound_seconds",
    "stage_cost_model",
]

CAUSES = ("compute", "memory", "overhead", "comm")
"""Causes a priced breakdown splits into (anything else is measured in op instances)."""


Price = Callable[[Op], OpTime]
"""The backend's price of one op instance (``Compiled.op_time``)."""


def backend_price(compiled: Compiled) -> Price | None:
    """The backend's price of one op instance (``op_time``), where it prices single ops."""
    op_time = getattr(compiled, "op_time", None)
    return op_time if callable(op_time) else None


def memory_bound_seconds(compiled: Compiled, op: Op) -> float:
    """Seconds of one instance of the memory-bound ``op``: priced by the backend where it
    prices single ops, else its bytes at the device's memory bandwidth."""
    price = backend_price(compiled)
    if price is not None:
        return float(price(op).seconds)
    return op.bytes / float(compiled.system.device.memory_bw.value)


def _measure(op: Op, cause: str, price: Price | None = None) -> float:
    n = float(op.count)
    if cause == "comm":
        return op.comm_bytes * n if op.kind is OpKind.COLLECTIVE else 0.0
    if price is not None and cause in ("compute", "memory", "overhead"):
        if op.kind is OpKind.COLLECTIVE:
            return 0.0
        t = price(op)
        if cause == "overhead":
            return t.overhead_s * n
        bound = t.compute_s >= t.memory_s  # as the backend attributes the op
        if cause == "compute":
            return t.compute_s * n if bound else 0.0
        return 0.0 if bound else t.memory_s * n
    if cause == "compute":
        return op.flops * n
    if cause == "memory":
        return op.bytes * n
    return n


def _measures(
    ops: Iterable[Op], causes: Iterable[str], price: Price | None = None
) -> dict[str, float]:
    ops = list(ops)
    return {c: sum(_measure(o, c, price) for o in ops) for c in causes}


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
    price: Price | None = None,
) -> PassParts:
    """Split one pass's priced seconds over its parts (module docstring); ``price``
    prices one op, when the backend does."""
    causes = list(priced)
    layer = [o for o in ops if o.layer == "layer"]
    head = [o for o in ops if o.layer == "head"]
    rest = [o for o in ops if o.layer not in ("layer", "head", "embed")]
    embed_here = [o for o in ops if o.layer == "embed"]
    total = _measures(ops, causes, price)
    parts = {
        "layer": _measures(layer, causes, price),
        "head": _measures(head, causes, price),
        "rest": _measures(rest, causes, price),
    }
    emb = _measures(embed_ops, causes, price)
    emb_here = _measures(embed_here, causes, price)
    out: dict[str, dict[str, float]] = {k: {} for k in (*parts, "embed")}
    for c in causes:
        secs = float(priced[c])
        if total[c] > 0:
            rate = secs / total[c]
        else:  # no op measures this cause: attribute it per op instance
            rate = 0.0
            inst = _measures(ops, ["launches"])["launches"]
            if inst > 0:
                for name, sel in (("layer", layer), ("head", head), ("rest", rest)):
                    share = _measures(sel, ["launches"])["launches"] / inst
                    out[name][c] = secs * share
                out["embed"][c] = 0.0
                continue
        for name in parts:
            out[name][c] = rate * parts[name][c]
        # the embedding: priced in the graph when it holds it, else at the same rate
        out["embed"][c] = rate * (emb_here[c] if embed_here else emb[c])
    n = max(1, n_layers)
    per_layer = {c: v / n for c, v in out["layer"].items()}
    attn = _measures([o for o in layer if _is_attention(o)], ["compute"], price)["compute"]
    gemm = _measures(
        [o for o in layer if o.kind is OpKind.MATMUL and not _is_attention(o)],
        ["compute"],
        price,
    )["compute"]
    layer_compute = parts["layer"].get("compute", 0.0)
    compute = per_layer.get("compute", 0.0)
    return PassParts(
        per_layer,
        out["head"],
        out["embed"],
        out["rest"],
        compute * gemm / layer_compute if layer_compute > 0 else 0.0,
        compute * attn / layer_compute if layer_compute > 0 else 0.0,
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

Kernel = tuple[float, float]
"""One quantization kernel over a tensor: (bytes read, bytes written) per element."""


@dataclass(frozen=True)
class Fp8Recipe:
    """The quantization kernels an FP8 training stack runs per layer GEMM (module
    docstring): on its input each forward (``forward``), on its output gradient
    (``grad_output``) and its input again (``backward_input``) each backward, on its
    weight each backward (``backward_weight``) and once a step (``weight_step``)."""

    forward: tuple[Kernel, ...]
    grad_output: tuple[Kernel, ...]
    backward_input: tuple[Kernel, ...] = ()
    backward_weight: tuple[Kernel, ...] = ()
    weight_step: tuple[Kernel, ...] = ()


_AMAX: Kernel = (2.0, 0.0)
_CAST: Kernel = (2.0, 1.0)
_CAST_TRANSPOSE: Kernel = (2.0, CAST_BYTES_WRITTEN)

FP8_RECIPES: dict[str, Fp8Recipe] = {
    "te": Fp8Recipe(
        forward=(_CAST_TRANSPOSE,),
        grad_output=(_CAST_TRANSPOSE,),
        weight_step=(_CAST_TRANSPOSE,),
    ),
    "torchao": Fp8Recipe(
        forward=(_AMAX, _CAST),
        grad_output=(_AMAX, (2.0, 2.0)),
        backward_input=(_AMAX, _CAST),
        backward_weight=((1.0, 1.0),),
        weight_step=(_AMAX, _CAST),
    ),
}
"""FP8 training stacks by name (module docstring)."""


@dataclass(frozen=True)
class Fp8Casts:
    """Seconds of one transformer layer's FP8 quantization kernels (module docstring):
    ``forward_s`` on the GEMM inputs of one micro-batch, ``backward_s`` on the GEMM output
    gradients (and inputs, where the recipe casts them again) of one micro-batch,
    ``weights_s`` on the layer's weights once a step, ``backward_weights_s`` on them each
    backward (whatever share of the sequence the rank holds)."""

    forward_s: float = 0.0
    backward_s: float = 0.0
    weights_s: float = 0.0
    backward_weights_s: float = 0.0


def _cast_seconds(
    compiled: Compiled, elements: float, count: int, kernels: Iterable[Kernel]
) -> float:
    """Seconds of ``kernels`` over ``count`` tensors of ``elements`` 16-bit elements
    each, priced by the backend when it prices single ops, else at the device's memory
    bandwidth."""
    if elements <= 0:
        return 0.0
    total = 0.0
    for read, written in kernels:
        op = Op(
            "fp8.cast",
            OpKind.ELEMENTWISE,
            flops=2.0 * elements,  # |x| and the running maximum, or the scaling
            bytes_read=read * elements,
            bytes_written=written * elements,
            dims=(max(1, int(elements)),),
            count=count,
            layer="layer",
        )
        total += memory_bound_seconds(compiled, op) * count
    return total


def fp8_casts(
    compiled: Compiled, forward_ops: Iterable[Op], n_layers: int, recipe: str = "te"
) -> Fp8Casts:
    """Per-layer :class:`Fp8Casts` of the weight GEMMs among ``forward_ops`` (the
    ``layer`` MATMULs that are not the attention core), over ``n_layers`` layers, under
    the named recipe (:data:`FP8_RECIPES`)."""
    try:
        r = FP8_RECIPES[recipe]
    except KeyError:
        raise ValueError(
            f"unknown fp8_recipe {recipe!r}; valid: {', '.join(FP8_RECIPES)}"
        ) from None
    fwd = bwd = wts = bwd_w = 0.0
    for op in forward_ops:
        if op.layer != "layer" or op.kind is not OpKind.MATMUL or _is_attention(op):
            continue
        if len(op.dims) != 3:
            continue
        m, n, k = (float(x) for x in op.dims)
        b = float(op.batch)
        fwd += _cast_seconds(compiled, m * k * b, op.count, r.forward)
        bwd += _cast_seconds(compiled, m * n * b, op.count, r.grad_output)
        bwd += _cast_seconds(compiled, m * k * b, op.count, r.backward_input)
        wts += _cast_seconds(compiled, k * n * b, op.count, r.weight_step)
        bwd_w += _cast_seconds(compiled, k * n * b, op.count, r.backward_weight)
    per = 1.0 / max(1, n_layers)
    return Fp8Casts(fwd * per, bwd * per, wts * per, bwd_w * per)


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
    compiled: Compiled,
    model: ModelGraph,
    shape: Shape,
    par: Parallelism,
    fp8: bool = False,
    fp8_recipe: str = "te",
) -> StageCostModel:
    """Price the stage graph of ``shape`` once and split it (module docstring); with
    ``fp8`` also price the layers' FP8 casts (:class:`Fp8Casts`) under ``fp8_recipe``."""
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
    price = backend_price(compiled)
    forward = _split(dict(sc.forward), fwd_ops, embed_f, n_l, price)
    backward = _split(dict(sc.backward), bwd_ops, embed_b, n_l, price)
    casts = fp8_casts(compiled, stages.forward.ops, n_l, fp8_recipe) if fp8 else Fp8Casts()
    return StageCostModel(forward, backward, dict(sc.optimizer), sc.how, casts)
