"""XLA-style fusion of elementwise, normalization and softmax ops into their producer.

XLA compiles a step into fusions: a matmul (or convolution, attention core, gather) with
the elementwise work that follows it, and chains of elementwise ops, run as one kernel
whose intermediates stay in on-chip memory (VMEM / vector registers). This pass rewrites an
:class:`~xpusim.engine.graph.OpGraph` the same way:

* An op of kind ELEMENTWISE, NORM or SOFTMAX is merged into the op just before it when that
  op is a MATMUL, CONV, ATTENTION, EMBEDDING or another fusible op (or a fusion already
  formed), with the same ``count``. A COLLECTIVE (or any other kind) ends the chain.
* **Reductions start their own fusion after a matrix op.** A NORM or SOFTMAX (a row
  reduction followed by elementwise work on the same rows) does not fuse into a MATMUL,
  CONV or ATTENTION producer: XLA's output fusion of a dot or convolution takes only
  elementwise consumers (XLA documentation, "Operation semantics" and the fusion pass's
  kinds: a loop or output fusion is rooted at elementwise ops, a reduction is the root
  of an input fusion that reads its operands from memory), so the matrix op writes its
  output to HBM and the reduction reads it back. After an elementwise producer (a
  residual add) the norm still fuses, as a reduction fuses with its elementwise operands.
* **Softmax is several kernels.** ``jax.nn.softmax`` is ``exp(x - max(x)) / sum(...)``:
  the row maximum is one reduction, the sum of exponentials a second that needs the
  first's result, and the normalisation a third pass that needs both, so XLA runs it as
  three fusions, each reading the scores (:data:`SOFTMAX_FORWARD_READS`); its gradient
  ``y · (dy − sum(y · dy))`` is one reduction then one elementwise pass, each reading
  ``y`` and ``dy`` (:data:`SOFTMAX_BACKWARD_READS`). A SOFTMAX that starts its own fusion
  is priced with those reads (the backward one is named ``bwd.*`` by the model).
* **A norm is two passes.** RMSNorm's mean square (LayerNorm's mean and mean square, one
  multi-output reduction) is one reduction, the scaling a second pass that needs it, and
  the backward's ``sum(dy · w · x)`` likewise: a NORM standing alone reads its input
  :data:`NORM_READS` times, and a NORM fused after an elementwise producer (a residual
  add) reads that producer's output back in its second pass.
* **HBM traffic**: the consumer's reads are served first from the producer's output held on
  chip (``shared = min(consumer.bytes_read, producer.bytes_written)``); those bytes are
  neither read back nor, for ELEMENTWISE/SOFTMAX consumers, written out (the consumer's
  output replaces them). A NORM's input is normally the residual stream, which later ops
  read again, so a producer feeding a NORM still writes its output, and the norm's
  second pass reads it back (below).
* **Vector-unit time is kept**: the consumer's FLOPs move into the fused op's
  ``attrs["vector_flops"]``, which the TPU backend prices on the vector unit, and into the
  fused op's ``flops`` so step FLOPs are unchanged.

The fused op keeps the producer's kind, GEMM dims and batch, and is named
``producer+consumer+...``.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.engine.graph import Op, OpGraph, OpKind
from xpusim.engine.model import BACKWARD

PRODUCERS = frozenset(
    {
        OpKind.MATMUL,
        OpKind.CONV,
        OpKind.ATTENTION,
        OpKind.EMBEDDING,
        OpKind.ELEMENTWISE,
        OpKind.NORM,
        OpKind.SOFTMAX,
    }
)
CONSUMERS = frozenset({OpKind.ELEMENTWISE, OpKind.NORM, OpKind.SOFTMAX})
MATRIX_PRODUCERS = frozenset({OpKind.MATMUL, OpKind.CONV, OpKind.ATTENTION})
"""Producers whose output fusion takes elementwise consumers only (not a reduction)."""
REDUCTIONS = frozenset({OpKind.NORM, OpKind.SOFTMAX})
"""Consumers holding a row reduction: they fuse only into an elementwise producer."""
SOFTMAX_FORWARD_READS = 3
"""Reads of the scores by a forward softmax standing alone: the row-maximum reduction,
the exp-sum reduction (which needs the maximum) and the normalising pass (which needs
the sum), three XLA fusions (``jax.nn.softmax``: ``unnormalized = exp(x - max(x))``,
``unnormalized / sum(unnormalized)``)."""
SOFTMAX_BACKWARD_READS = 2
"""Reads of ``y`` and ``dy`` by the softmax gradient standing alone: the reduction
``sum(y · dy)`` and the elementwise ``y · (dy − sum)`` that needs it."""
NORM_READS = 2
"""Reads of its input by a norm standing alone: the reduction (mean square) and the
scaling pass that needs it (forward; the gradient's ``sum(dy · w · x)`` then the
elementwise pass likewise)."""

VECTOR_ATTR = "vector_flops"
"""Attribute of a fused op: FLOPs of its fused consumers, run on the vector unit."""


def _attr_add(
    attrs: tuple[tuple[str, float], ...], key: str, v: float
) -> tuple[tuple[str, float], ...]:
    out = dict(attrs)
    out[key] = out.get(key, 0.0) + v
    return tuple(out.items())


def fuse_pair(producer: Op, consumer: Op) -> Op:
    """The op that runs ``consumer`` fused into ``producer`` (see module docstring)."""
    shared = min(consumer.bytes_read, producer.bytes_written)
    keep_producer_output = consumer.kind is OpKind.NORM
    written = producer.bytes_written + consumer.bytes_written
    if not keep_producer_output:
        written -= shared
    attrs = producer.attrs
    if producer.kind in CONSUMERS and not dict(producer.attrs).get(VECTOR_ATTR):
        # an elementwise chain head: its own FLOPs also run on the vector unit
        attrs = _attr_add(attrs, VECTOR_ATTR, producer.flops)
    attrs = _attr_add(attrs, VECTOR_ATTR, consumer.flops)
    return replace(
        producer,
        name=f"{producer.name}+{consumer.name}",
        flops=producer.flops + consumer.flops,
        bytes_read=producer.bytes_read
        + consumer.bytes_read
        - (0.0 if keep_producer_output else shared),
        bytes_written=max(0.0, written),
        param_bytes=producer.param_bytes + consumer.param_bytes,
        attrs=attrs,
    )


def reduction_alone(op: Op) -> Op:
    """A SOFTMAX or NORM that starts its own fusion, with the reads of its XLA kernels: a
    softmax's input read :data:`SOFTMAX_FORWARD_READS` times forward (max, exp-sum,
    normalise), :data:`SOFTMAX_BACKWARD_READS` times in the gradient (``bwd.*``); a norm's
    :data:`NORM_READS` times. Other ops are returned as they are."""
    if op.kind is OpKind.SOFTMAX:
        backward = op.name.startswith(BACKWARD)
        reads = SOFTMAX_BACKWARD_READS if backward else SOFTMAX_FORWARD_READS
    elif op.kind is OpKind.NORM:
        reads = NORM_READS
    else:
        return op
    return replace(op, bytes_read=op.bytes_read * reads)


def can_fuse(producer: Op, consumer: Op) -> bool:
    """Whether ``consumer`` fuses into ``producer`` (kinds and repeat counts; a
    reduction does not fuse into a matrix op)."""
    return (
        consumer.kind in CONSUMERS
        and producer.kind in PRODUCERS
        and not (consumer.kind in REDUCTIONS and producer.kind in MATRIX_PRODUCERS)
        and producer.count == consumer.count
        and producer.batch >= 1
        and (consumer.batch == 1 or consumer.batch == producer.batch)
    )


def fuse(graph: OpGraph) -> OpGraph:
    """Fuse elementwise/norm/softmax ops into their producers (see module docstring)."""
    out: list[Op] = []
    fused = 0
    changed = False
    for op in graph.ops:
        if out and can_fuse(out[-1], op):
            out[-1] = fuse_pair(out[-1], op)
            fused += 1
        else:
            alone = reduction_alone(op)
            changed |= alone is not op
            out.append(alone)
    if not fused and not changed:
        return graph
    saved = graph.bytes - sum(o.bytes * o.count for o in out)
    note = (
        f"tpu fusion: {fused} ops fused into producers, {saved / 1e6:.3f} MB of HBM traffic "
        "removed (reduction passes included)"
    )
    return OpGraph(
        phase=graph.phase,
        ops=tuple(out),
        shape=graph.shape,
        dtype=graph.dtype,
        notes=(*graph.notes, note),
    )
