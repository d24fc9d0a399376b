"""Vector work beside a GEMM: the GPU charges a matrix op's
:data:`~xpusim.engine.precision.VECTOR_FLOPS_ATTR` FLOPs (weights dequantized inside the GEMM
from a format the tensor cores do not read) at the non-tensor rate, on the compute side of
the op's roofline: in a memory-bound decode GEMM they hide under the weight traffic, in a
compute-bound prefill GEMM they add to the tensor time."""

from __future__ import annotations

from xpusim.engine.analytic import OpTime
from xpusim.engine.graph import Op, OpKind
from xpusim.engine.precision import VECTOR_FLOPS_ATTR
from xpusim.plugins.gpu.efficiency import GpuCostModel

MATRIX_KINDS = (OpKind.MATMUL, OpKind.CONV)
"""Op kinds whose vector work rides on the GEMM's compute side."""


class WithVectorWork:
    """``price_op`` for the GPU: ``cost`` plus each matrix op's vector work at
    ``cost.vector_flops``."""

    def __init__(self, cost: GpuCostModel) -> None:
        self.cost = cost

    def __call__(self, op: Op) -> OpTime:
        """Price one instance of ``op``."""
        t = self.cost(op)
        extra = op.attr(VECTOR_FLOPS_ATTR)
        if extra <= 0 or op.kind not in MATRIX_KINDS:
            return t
        return OpTime(t.compute_s + extra / self.cost.vector_flops, t.memory_s, t.overhead_s)
