"""The analytic CPU device: the same per-op roofline machinery as the GPU and TPU
backends (:class:`xpusim.engine.analytic.AnalyticCompiled`), with every rate taken from a
calibration of this machine (:mod:`xpusim.plugins.cpu.calibrate`).

How one op instance is priced (:class:`CpuOpPricer`):

``MATMUL``
    With fewer than :data:`COLD_MAX_M` rows in a model whose weights exceed
    :data:`COLD_THRESHOLD_BYTES` (decode), the ``gemm_cold`` fit, measured with weights
    read from DRAM. Otherwise the fitted GEMM model of the op's dtype: ``compute = F / (P · e(m·batch, n, k))``,
    ``memory = B / bw_copy(B)`` (the measured copy bandwidth at that working set, so
    weights that sit in cache stream faster than weights in DRAM), ``overhead`` = the
    measured call overhead of a tiny ``linear``.
``CONV``
    The fitted convolution model (oneDNN's kernels differ from the GEMM library's) over
    the GEMM the convolution lowers to.
``ATTENTION``
    The fitted ``scaled_dot_product_attention`` model over ``(queries·batch, keys, d)``,
    charging ``4·d`` FLOPs for *every* query-key pair: PyTorch's CPU flash attention
    computes whole key blocks under a causal mask, and measured causal calls take as
    long as unmasked ones at the sizes calibrated.
``NORM`` / ``SOFTMAX``
    The measured ``layer_norm`` (``batch_norm`` for batch norms) / ``softmax`` tables at
    the op's bytes.
``POOL``
    Max pools: the measured ``max_pool2d`` table at the op's bytes (a window reduction
    runs several times slower per byte than ``a + b``); other pools as ``ELEMENTWISE``.
``ELEMENTWISE``, ``EMBEDDING``, ``OTHER``
    The measured ``a + b`` table (outputs freshly allocated, as eager ops do) at the op's
    bytes; ops whose aten name is a transcendental function (``gelu``, ``exp``, ``tanh``
    ...) use the measured ``gelu`` table.

Weights and caches: a table or fit measured at one op's working set assumes its operands
are as cache-resident as in the microbenchmark, where they stay hot between calls. In a
model whose weights (``weight_bytes``, the model's parameter bytes) exceed that working
set, each layer's weights were evicted by the others before they are read again, so an
op's parameter bytes are read at the copy bandwidth of the whole weight footprint (DRAM
for a model larger than the last-level cache), times the kernel's fitted ``μ``.

A decode step's attention reads a KV cache written in earlier steps, since evicted by the
weights streamed in between: its key and value bytes are read like weights (below) when
the model's weights exceed the op's working set.

Streaming tables include their call overhead (their smallest sizes are pure dispatch);
the measured one-element aten call is reported as ``overhead`` and the rest as
``memory``.

Eager PyTorch also spends time outside the kernels the graph prices
(:class:`CpuAnalyticCompiled`): every view op the model runs (``view``, ``transpose``,
``reshape``, ``split``: a dispatch and a tensor header, no data; the graph leaves them
out) and every ``nn.Module`` call (Python's ``__call__`` machinery). Both are *counted*
by the model (:meth:`~xpusim.engine.model.ModelGraph.eager_calls`; the built-in models
trace their own module on the ``meta`` device for the step's shape) and charged at the
calibrated view-dispatch and module-call times, as ``overhead``.
"""

from __future__ import annotations

from typing import Any

from xpusim.engine.analytic import AnalyticCompiled, OpTime
from xpusim.engine.graph import Op, OpGraph, OpKind, Shape
from xpusim.engine.model import EagerCalls
from xpusim.plugins.cpu.calibrate import CpuCalibration, StreamTable, kernel_time

TRANSCENDENTAL = frozenset(
    {
        "gelu",
        "gelu_",
        "exp",
        "exp_",
        "exp2",
        "expm1",
        "tanh",
        "tanh_",
        "sigmoid",
        "sigmoid_",
        "silu",
        "silu_",
        "erf",
        "erf_",
        "log",
        "log_",
        "log1p",
        "log2",
        "pow",
        "pow_",
        "sin",
        "cos",
        "softplus",
        "mish",
        "mish_",
        "elu",
        "elu_",
        "selu",
        "celu",
        "rsqrt",
        "rsqrt_",
        "sqrt",
        "sqrt_",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "logit",
        "erfinv",
        "hardswish",
        "hardswish_",
    }
)
"""Aten names priced with the measured transcendental (``gelu``) table."""

COLD_THRESHOLD_BYTES = 64 * 2**20
"""Model weights beyond which a small-``m`` GEMM is priced by the cold-weight fit."""

COLD_MAX_M = 32
"""The largest ``m·batch`` priced by the cold-weight fit (its measured range)."""


def aten_name(op: Op) -> str:
    """The aten op name of a traced op (``layers.*.mlp:gelu`` -> ``gelu``)."""
    return op.name.rsplit(":", 1)[-1]


class CpuOpPricer:
    """``price_op`` for :class:`~xpusim.engine.analytic.AnalyticCompiled` from a calibration."""

    def __init__(self, cal: CpuCalibration, weight_bytes: float = 0.0) -> None:
        self.cal = cal
        self.weight_bytes = float(weight_bytes)
        self.dispatch_s = cal.dispatch_s
        self.copy = cal.streams["copy"]
        self.elementwise = cal.streams["elementwise"]
        self.transcendental = cal.streams.get("transcendental", self.elementwise)
        self.norm = cal.streams.get("norm", self.elementwise)
        self.batchnorm = cal.streams.get("batchnorm", self.norm)
        self.softmax = cal.streams.get("softmax", self.norm)
        self.maxpool = cal.streams.get("maxpool", self.elementwise)

    def _weight_s(
        self, op: Op, mem_eff: float = 1.0, extra_bytes: float = 0.0
    ) -> tuple[float, float]:
        """``(seconds, bytes)`` of the op's parameter traffic (plus ``extra_bytes`` read
        from a KV cache) when the model's weights do not stay in cache between uses: read
        at the copy bandwidth of the whole weight footprint (zero seconds and bytes when
        they fit the working set of the op)."""
        w = min(op.param_bytes + extra_bytes, op.bytes)
        if w <= 0 or self.weight_bytes <= op.bytes:
            return 0.0, 0.0
        return w / (self.copy.bandwidth(self.weight_bytes) * mem_eff), w

    def _stream(self, table: StreamTable, nbytes: float, op: Op | None = None) -> OpTime:
        ws, wb = self._weight_s(op) if op is not None else (0.0, 0.0)
        rest = max(nbytes - wb, 1.0)
        t = table.seconds_for(rest)
        ovh = min(self.dispatch_s, t)
        return OpTime(0.0, t - ovh + ws, ovh)

    def _kernel(
        self,
        family: str,
        op: Op,
        m: float,
        n: float,
        k: float,
        flops: float | None = None,
        cache_bytes: float = 0.0,
    ) -> OpTime:
        cold = (
            family == "gemm"
            and self.weight_bytes > op.bytes
            and self.weight_bytes > COLD_THRESHOLD_BYTES
            and "gemm_cold" in self.cal.kernels
            and op.dims[0] * max(1, op.batch) <= COLD_MAX_M
        )
        fit = self.cal.kernel("gemm_cold" if cold else family, op.dtype)
        fl = op.flops if flops is None else flops
        if cold:  # the fit was measured with weights streaming from DRAM
            comp, mem = kernel_time(fit, fl, m, n, k, op.bytes, self.copy)
            return OpTime(comp, mem, fit.overhead_s)
        ws, wb = self._weight_s(op, fit.mem_eff, cache_bytes)
        comp, mem = kernel_time(fit, fl, m, n, k, op.bytes - wb, self.copy)
        mem += ws
        return OpTime(comp, mem, fit.overhead_s)

    def __call__(self, op: Op) -> OpTime:
        """The time of one instance of ``op`` on this machine (see module doc)."""
        kind = op.kind
        if kind in (OpKind.MATMUL, OpKind.CONV, OpKind.ATTENTION) and len(op.dims) >= 3:
            m, n, k = (float(x) for x in op.dims[:3])
            family = {OpKind.MATMUL: "gemm", OpKind.CONV: "conv", OpKind.ATTENTION: "attention"}[
                kind
            ]
            b = max(1, op.batch)
            if kind is OpKind.ATTENTION:  # every (query, key) pair: see module doc
                # keys beyond the queries come from a cache written in earlier steps
                cache = op.bytes_read * 2.0 * n / (m + 2.0 * n) if n > m else 0.0
                return self._kernel(family, op, m * b, n, k, 4.0 * b * m * n * k, cache)
            return self._kernel(family, op, m * b, n, k)
        if kind is OpKind.NORM:
            bn = "batch_norm" in aten_name(op)
            return self._stream(self.batchnorm if bn else self.norm, op.bytes, op)
        if kind is OpKind.SOFTMAX:
            return self._stream(self.softmax, op.bytes, op)
        if kind is OpKind.POOL and "max_pool" in aten_name(op):
            return self._stream(self.maxpool, op.bytes, op)
        if kind is OpKind.ELEMENTWISE and aten_name(op) in TRANSCENDENTAL:
            return self._stream(self.transcendental, op.bytes, op)
        return self._stream(self.elementwise, op.bytes, op)


class CpuAnalyticCompiled(AnalyticCompiled):
    """:class:`~xpusim.engine.analytic.AnalyticCompiled` plus the eager overheads the graph does
    not list (module doc): each step's counted views and module calls at the calibrated
    view-dispatch and module-call times, added to ``overhead``."""

    def __init__(self, *args: Any, cal: CpuCalibration, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cal = cal
        self._untraced: dict[Shape, EagerCalls] = {}

    def untraced(self, shape: Shape) -> EagerCalls:
        """The (memoized) :meth:`~xpusim.engine.model.ModelGraph.eager_calls` of ``shape``
        (a mixed serving iteration sums its parts)."""
        if shape not in self._untraced:
            if shape.parts:
                parts = [self.untraced(p) for p in shape.parts]
                self._untraced[shape] = EagerCalls(
                    sum(p.views for p in parts), sum(p.modules for p in parts)
                )
            else:
                self._untraced[shape] = self.model.eager_calls(shape)
        return self._untraced[shape]

    def untraced_seconds(self, shape: Shape) -> float:
        """Seconds of one step's untraced views and module calls."""
        u = self.untraced(shape)
        return u.views * self.cal.view_s + u.modules * self.cal.module_call_s

    def stage_breakdown(self, graph: OpGraph) -> dict[str, float]:
        """The engine's breakdown with :meth:`untraced_seconds` added to ``overhead``."""
        out = super().stage_breakdown(graph)
        out["overhead"] += self.untraced_seconds(graph.shape)
        return out
