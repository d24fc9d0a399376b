"""XLA-style fusion of elementwise, normalization and softmax ops into their producer.

XLA compiles a step into fusions: a matmul (or convolution, attention core, gather) with
the elementwise work that follows it, and chains of elementwise ops, run as one kernel
whose intermediates stay in on-chip memory (VMEM / vector registers). This pass rewrites an
:class:`~xpusim.engine.graph.OpGraph` the same way:

* An op of kind ELEMENTWISE, NORM or SOFTMAX is merged into the op just before it when that
  op is a MATMUL, CONV, ATTENTION, EMBEDDING or another fusible op (or a fusion already
  formed), with the same ``count``. A COLLECTIVE (or any other kind) ends the chain.
* **HBM traffic**: the consumer's reads are served first from the producer's output held on
  chip (``shared = min(consumer.bytes_read, producer.bytes_written)``); those bytes are
  neither read back nor, for ELEMENTWISE/SOFTMAX consumers, written out (the consumer's
  output replaces them). A NORM's input is normally the residual stream, which later ops
  read again, so a producer feeding a NORM still writes its output; only the re-read is
  dropped.
* **Vector-unit time is kept**: the consumer's FLOPs move into the fused op's
  ``attrs["vector_flops"]``, which the TPU backend prices on the vector unit, and into the
  fused op's ``flops`` so step FLOPs are unchanged.

The fused op keeps the producer's kind, GEMM dims and batch, and is named
``producer+consumer+...``.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.engine.graph import Op, OpGraph, OpKind

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
        bytes_read=producer.bytes_read + consumer.bytes_read - shared,
        bytes_written=max(0.0, written),
        param_bytes=producer.param_bytes + consumer.param_bytes,
        attrs=attrs,
    )


def can_fuse(producer: Op, consumer: Op) -> bool:
    """Whether ``consumer`` fuses into ``producer`` (kinds and repeat counts)."""
    return (
        consumer.kind in CONSUMERS
        and producer.kind in PRODUCERS
        and producer.count == consumer.count
        and producer.batch >= 1
        and (consumer.batch == 1 or consumer.batch == producer.batch)
    )


def fuse(graph: OpGraph) -> OpGraph:
    """Fuse elementwise/norm/softmax ops into their producers (see module docstring)."""
    out: list[Op] = []
    fused = 0
    for op in graph.ops:
        if out and can_fuse(out[-1], op):
            out[-1] = fuse_pair(out[-1], op)
            fused += 1
        else:
            out.append(op)
    if not fused:
        return graph
    saved = graph.bytes - sum(o.bytes * o.count for o in out)
    note = (
        f"tpu fusion: {fused} ops fused into producers, {saved / 1e6:.3f} MB of HBM traffic removed"
    )
    return OpGraph(
        phase=graph.phase,
        ops=tuple(out),
        shape=graph.shape,
        dtype=graph.dtype,
        notes=(*graph.notes, note),
    )
