"""Count what a real ``torch.nn.Module`` asks of hardware by running it on ``meta``.

:func:`trace_module` runs a module whose parameters live on the ``meta`` device (shapes and
dtypes, no storage, no arithmetic) under two interception layers:

* a :class:`~torch.overrides.TorchFunctionMode` that catches a few *semantic* functions
  before PyTorch decomposes them (on ``meta`` and CPU ``scaled_dot_product_attention``
  and ``rms_norm`` fall apart into a dozen aten ops): they are recorded as one
  ATTENTION or NORM op each. :func:`fused_op` lets a model mark its own Python function
  (a RoPE rotation, a SwiGLU) as one fused op the same way;
* a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every aten op the
  module runs and records one :class:`TracedOp` per call.

Counting rules (the parametric builders in this package follow the same rules, which is
what lets the tests demand equality):

* **FLOPs**: a GEMM of ``m×k`` by ``k×n`` is ``2·m·n·k`` (bias adds are free: they are a
  GEMM epilogue); a convolution counts the GEMM it lowers to (im2col: ``m = N·Ho·Wo``,
  ``n = C_out/groups``, ``k = C_in/groups·kh·kw``, ``batch = groups``); attention counts
  ``4·d`` per attended query-key pair per head (``QKᵀ`` and ``PV``); a causal mask keeps
  ``q·k − q·(q−1)/2`` pairs (bottom-right aligned, which equals top-left when ``q = k``);
  a norm or softmax counts :data:`NORM_FLOPS` per element; other elementwise ops count
  one FLOP per output element (reductions: per input element); copies, gathers,
  concatenations and casts count none.
* **Bytes**: every tensor argument is read once and every output written once, with
  floating-point tensors at the scenario ``dtype``'s width and integer tensors at their
  own width. Broadcast (stride-0) dimensions are not counted. Gathers
  (``embedding``, ``index_select``, ``gather``, ``index``) read only the rows they fetch
  plus the indices; ``copy_`` reads its source and writes its destination.
* **Parameters**: ``param_bytes`` is the bytes of arguments that are ``nn.Parameter``s
  or views of one (a transposed weight feeding ``mm``).
* View and metadata ops (``view``, ``transpose``, ``slice``, ``expand``, ``empty`` ...)
  are listed with ``zero_cost=True`` and cost nothing.
* An aten op the tracer does not know is kept (as :attr:`OpKind.OTHER`, priced by its
  bytes) **and** counted by name in :attr:`Trace.unknown_ops`; nothing is dropped.
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from xpusim.engine.graph import STRIDED, Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import EagerCalls, ModelGraph
from xpusim.plugins.models.counting import NORM_FLOPS, SOFTCAP_FLOPS, causal_pairs, window_pairs

__all__ = [
    "NORM_FLOPS",
    "Trace",
    "TracedOp",
    "causal_attention",
    "causal_pairs",
    "fused_op",
    "graph_from_trace",
    "trace_module",
]

F_ = TypeVar("F_", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TracedOp:
    """One aten op (or one intercepted function) the traced module ran.

    ``name`` is the aten op name without namespace and overload (``mm``, ``addmm``,
    ``native_layer_norm``) or the intercepted function's name (``scaled_dot_product_attention``,
    ``rope``). ``scope`` is the dotted name of the innermost module that ran it
    (``layers.3.attn.qkv``). ``zero_cost`` marks view/metadata ops; ``known`` is false
    for ops the tracer has no rule for (also counted in :attr:`Trace.unknown_ops`);
    ``strided`` marks elementwise ops on non-contiguous operands.
    Quantities follow the module docstring's counting rules.
    """

    name: str
    kind: OpKind
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    param_bytes: float = 0.0
    dims: tuple[int, ...] = ()
    batch: int = 1
    scope: str = ""
    zero_cost: bool = False
    known: bool = True
    strided: bool = False
    """An elementwise op one of whose tensors is not contiguous at the output's shape (a
    ``chunk`` half, a transpose, a broadcast source such as ``repeat_interleave``'s):
    PyTorch's CUDA elementwise kernels vectorize their loads and stores only when every
    operand is contiguous, so such an op runs on the unvectorized path."""


class Trace(list[TracedOp]):
    """The ops of one traced forward pass, in execution order.

    ``unknown_ops`` maps the name of every aten op without a counting rule to how often
    it ran; ``zero_cost_ops`` does the same for the view/metadata ops that cost nothing.
    """

    def __init__(
        self,
        ops: Sequence[TracedOp] = (),
        unknown_ops: Mapping[str, int] | None = None,
        zero_cost_ops: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(ops)
        self.unknown_ops: dict[str, int] = dict(unknown_ops or {})
        self.zero_cost_ops: dict[str, int] = dict(zero_cost_ops or {})

    @property
    def flops(self) -> float:
        """Total FLOPs of the traced pass."""
        return sum(o.flops for o in self)

    @property
    def bytes(self) -> float:
        """Total bytes read plus written."""
        return sum(o.bytes_read + o.bytes_written for o in self)

    def by_kind(self, kind: OpKind) -> list[TracedOp]:
        """The ops of one kind."""
        return [o for o in self if o.kind is kind and not o.zero_cost]


# --- op tables ----------------------------------------------------------------------

_GEMM = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "addbmm", "_scaled_mm"}
_CONV = {
    "convolution",
    "_convolution",
    "convolution_overrideable",
    "cudnn_convolution",
    "mkldnn_convolution",
    "conv2d",
    "conv1d",
    "conv3d",
}
_SDPA = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_flash_attention_forward",
    "_efficient_attention_forward",
}
_NORM = {
    "native_layer_norm",
    "layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "native_group_norm",
    "rms_norm",
    "_fused_rms_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
}
_SOFTMAX = {"_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax"}
_EMBED = {"embedding", "embedding_bag", "_embedding_bag"}
_POOL = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "_adaptive_avg_pool3d",
    "adaptive_max_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool3d",
    "_mkldnn_adaptive_avg_pool2d",
}
# Elementwise ops that move data without arithmetic (0 FLOPs).
_COPY = {
    "_to_copy",
    "copy_",
    "copy",
    "clone",
    "cat",
    "stack",
    "constant_pad_nd",
    "pad",
    "index_select",
    "gather",
    "index",
    "_unsafe_index",
    "index_put",
    "index_put_",
    "scatter",
    "scatter_",
    "masked_scatter",
    "topk",
    "sort",
    "argsort",
    "zeros",
    "ones",
    "full",
    "zeros_like",
    "ones_like",
    "full_like",
    "fill_",
    "zero_",
    "fill",
    "arange",
    "flip",
    "roll",
    "repeat",
    "tril",
    "triu",
    "where",
    "masked_fill",
    "masked_fill_",
    "_unsafe_index_put",
    "new_zeros",
    "new_ones",
    "new_full",
    "repeat_interleave",
    "upsample_nearest2d",
    "upsample_nearest1d",
    "_reshape_copy",
    "lift_fresh_copy",
    "select_scatter",
    "slice_scatter",
    "diagonal_scatter",
    "as_strided_scatter",
    "bernoulli_",
    "bernoulli",
    "rand",
    "randn",
    "rand_like",
    "randn_like",
    "uniform_",
    "normal_",
    "native_dropout",
    "dropout",
}
_POINTWISE_COPY = {
    "_to_copy",
    "copy_",
    "copy",
    "clone",
    "where",
    "masked_fill",
    "masked_fill_",
    "_reshape_copy",
    "lift_fresh_copy",
}
"""The copies of :data:`_COPY` that run PyTorch's elementwise (TensorIterator) kernels, so
a non-contiguous operand makes them :attr:`TracedOp.strided`; the others (``cat``,
padding, gathers, sorts, creation) run kernels of their own."""
_LIKE = {
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "new_zeros",
    "new_ones",
    "new_full",
    "fill_",
    "zero_",
    "uniform_",
    "normal_",
    "bernoulli_",
}
_GATHER = {"embedding", "index_select", "gather", "index", "_unsafe_index"}
_REDUCE = {
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "prod",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "norm",
    "linalg_vector_norm",
    "logsumexp",
    "cumsum",
    "cumprod",
    "argmax",
    "argmin",
    "all",
    "any",
    "count_nonzero",
    "nansum",
    "aminmax",
}
_ARITH = {
    "add",
    "add_",
    "sub",
    "sub_",
    "rsub",
    "mul",
    "mul_",
    "div",
    "div_",
    "neg",
    "neg_",
    "relu",
    "relu_",
    "gelu",
    "gelu_",
    "silu",
    "silu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "exp",
    "exp_",
    "exp2",
    "expm1",
    "log",
    "log_",
    "log1p",
    "log2",
    "pow",
    "pow_",
    "rsqrt",
    "rsqrt_",
    "sqrt",
    "sqrt_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "clamp_max_",
    "abs",
    "abs_",
    "maximum",
    "minimum",
    "threshold",
    "threshold_",
    "hardtanh",
    "hardtanh_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "softplus",
    "erf",
    "erf_",
    "sin",
    "cos",
    "floor_divide",
    "remainder",
    "fmod",
    "eq",
    "ne",
    "lt",
    "gt",
    "le",
    "ge",
    "logical_and",
    "logical_or",
    "logical_not",
    "logical_xor",
    "bitwise_and",
    "bitwise_or",
    "bitwise_not",
    "bitwise_xor",
    "reciprocal",
    "reciprocal_",
    "square",
    "addcmul",
    "addcmul_",
    "addcdiv",
    "addcdiv_",
    "lerp",
    "lerp_",
    "sign",
    "floor",
    "ceil",
    "round",
    "trunc",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "mish",
    "mish_",
    "selu",
    "celu",
    "glu",
    "sgn",
    "isnan",
    "isinf",
    "nan_to_num",
    "heaviside",
    "atan2",
    "sinh",
    "cosh",
    "atan",
    "asin",
    "acos",
    "frac",
    "xlogy",
    "logit",
    "prelu",
    "_prelu_kernel",
    "silu_backward",
    "gelu_backward",
    "threshold_backward",
    "sigmoid_backward",
    "tanh_backward",
    "index_add",
    "index_add_",
    "scatter_add",
    "scatter_add_",
    "scatter_reduce",
    "_log_softmax_backward_data",
    "_softmax_backward_data",
    "nll_loss_forward",
    "nll_loss",
    "mse_loss",
    "l1_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "smooth_l1_loss",
    "huber_loss",
    "cross_entropy_loss",
}
# Views and metadata: no data moves.
_ZERO = {
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "t",
    "transpose",
    "transpose_",
    "permute",
    "expand",
    "expand_as",
    "slice",
    "select",
    "unsqueeze",
    "unsqueeze_",
    "squeeze",
    "squeeze_",
    "as_strided",
    "alias",
    "detach",
    "detach_",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "narrow",
    "view_as_real",
    "view_as_complex",
    "unfold",
    "diagonal",
    "lift_fresh",
    "lift",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "scalar_tensor",
    "_local_scalar_dense",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "_assert_async",
    "_assert_tensor_metadata",
    "_make_dep_token",
    "_to_dtype_layout",
    "contiguous",
    "flatten",
    "unflatten",
    "movedim",
    "swapaxes",
    "swapdims",
    "view_as",
    "set_",
    "resize_",
    "_conj",
    "conj",
    "_neg_view",
    "resolve_conj",
    "resolve_neg",
    "_functionalize_sync",
    "dim",
    "size",
    "stride",
    "prim_layout",
    "_nested_tensor_from_mask_left_aligned",
    "tensor_split",
    "hsplit",
    "vsplit",
    "positive",
    "_assert_scalar",
    "sym_constrain_range_for_size",
    "result_type",
}
_ALIASING = _ZERO  # outputs of these alias their input (parameter views stay parameters)


def _causal_pairs_top_left(queries: int, keys: int) -> float:
    """Pairs of PyTorch's ``is_causal=True`` mask (top-left aligned): query ``i`` sees
    ``min(i + 1, keys)`` keys."""
    q, k = queries, keys
    m = min(q, k)
    return m * (m + 1) / 2 + max(0, q - k) * k


# --- the active tracer ------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "xpusim_tracer", default=None
)


def fused_op(
    name: str, kind: OpKind = OpKind.ELEMENTWISE, flops_per_element: float = 1.0
) -> Callable[[F_], F_]:
    """Mark a Python function as one fused op for the tracer.

    Outside a trace the function runs unchanged. Inside :func:`trace_module` its body
    runs unrecorded and one :class:`TracedOp` named ``name`` is recorded instead: it reads
    every tensor argument, writes every tensor result and costs ``flops_per_element`` per
    output element. Use it for what a production kernel fuses (a RoPE rotation, a SwiGLU
    ``silu(g)·u``) so the trace counts the fused kernel's traffic, not the eager one's.
    """

    def deco(fn: F_) -> F_:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = _ACTIVE.get()
            if rec is None or rec.suspended:
                return fn(*args, **kwargs)
            with rec.suspend():
                out = fn(*args, **kwargs)
            rec.record_fused(name, kind, (args, kwargs), out, flops_per_element)
            return out

        return wrapper  # type: ignore[return-value]

    return deco


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    enable_gqa: bool = False,
    window: int | None = None,
    softcap: float | None = None,
    v_in_k: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention with a causal mask aligned bottom-right (the queries are the last
    ``q`` of ``k`` positions: a prefill chunk over a KV cache), optionally over a sliding
    ``window`` (a query sees the ``window`` keys ending at its own position) and with the
    scores soft-capped at ``softcap`` (``c·tanh(s/c)``, Gemma 2). ``v_in_k`` says the
    values are the leading channels of the keys (multi-head latent attention's cached
    latent), which the kernel reads once; ``scale`` replaces the default
    ``1/sqrt(head size)`` (absorbed MLA keeps the scale of its unabsorbed head size).

    PyTorch's ``is_causal=True`` aligns top-left and its ``CausalBias`` cannot be built
    under a dispatch mode, so models call this. Outside a trace it runs
    ``scaled_dot_product_attention`` with an explicit boolean mask (or the scores by hand
    when soft-capped); inside a trace it is recorded as one ATTENTION op counting
    :func:`causal_pairs` (:func:`window_pairs` with a window) and, with soft-capping,
    :data:`SOFTCAP_FLOPS` more per score.
    """
    lq, lk = q.shape[-2], k.shape[-2]
    rec = _ACTIVE.get()
    if rec is None or rec.suspended:
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        if window is not None:
            mask &= torch.ones_like(mask).triu(lk - lq - window + 1)
        if softcap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        s = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
        s = (softcap * torch.tanh(s / softcap)).masked_fill(~mask, float("-inf"))
        return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v
    with rec.suspend():
        b, h, s_len, _ = q.shape
        out = torch.empty(b, s_len, h, v.shape[-1], dtype=q.dtype, device=q.device)
        out = out.transpose(1, 2)
    flags = {"_lower_right": True, "_window": window, "_softcap": softcap, "_v_in_k": v_in_k}
    rec.record_sdpa((q, k, v), flags, out)
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    flat, _ = tree_flatten(obj)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def _strided(tensors: Sequence[torch.Tensor], out: torch.Tensor) -> bool:
    """Whether a tensor of an elementwise op is not contiguous at the output's shape
    (0-dim scalars aside), so the kernel cannot run vectorized."""
    shape = out.shape
    return any(t.dim() > 0 and (t.shape != shape or not t.is_contiguous()) for t in (*tensors, out))


def _unique_numel(t: torch.Tensor) -> int:
    """Elements a kernel touches: broadcast (stride-0) dimensions count once."""
    if t.dim() == 0:
        return 1
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n


class _Recorder:
    """Shared state of one trace: the op list, counters, parameter identity, scopes."""

    def __init__(self, dtype: str) -> None:
        self.float_bytes = float(dtype_bytes(dtype))
        self.ops: list[TracedOp] = []
        self.unknown: Counter[str] = Counter()
        self.zero: Counter[str] = Counter()
        self.params: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.scopes: list[str] = [""]
        self._suspend = 0

    # scope and suspension ---------------------------------------------------------

    @property
    def suspended(self) -> bool:
        return self._suspend > 0

    @contextmanager
    def suspend(self) -> Iterator[None]:
        self._suspend += 1
        try:
            yield
        finally:
            self._suspend -= 1

    @property
    def scope(self) -> str:
        return self.scopes[-1]

    # sizes --------------------------------------------------------------------------

    def nbytes(self, t: torch.Tensor) -> float:
        width = self.float_bytes if (t.is_floating_point() or t.is_complex()) else t.element_size()
        return _unique_numel(t) * float(width)

    def is_param(self, t: torch.Tensor) -> bool:
        return isinstance(t, torch.nn.Parameter) or t in self.params

    def param_bytes(self, tensors: Sequence[torch.Tensor]) -> float:
        return sum(self.nbytes(t) for t in tensors if self.is_param(t))

    # recording ----------------------------------------------------------------------

    def add(self, op: TracedOp) -> None:
        self.ops.append(op)

    def record_fused(
        self, name: str, kind: OpKind, inputs: Any, out: Any, flops_per_element: float
    ) -> None:
        ins, outs = _tensors(inputs), _tensors(out)
        self.add(
            TracedOp(
                name=name,
                kind=kind,
                flops=flops_per_element * sum(t.numel() for t in outs),
                bytes_read=sum(self.nbytes(t) for t in ins),
                bytes_written=sum(self.nbytes(t) for t in outs),
                param_bytes=self.param_bytes(ins),
                dims=(sum(t.numel() for t in outs),),
                scope=self.scope,
            )
        )

    def record_sdpa(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        q, k, v = args[0], args[1], args[2]
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        is_causal = bool(kwargs.get("is_causal", args[5] if len(args) > 5 else False))
        lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        heads_batch = math.prod(q.shape[:-2])
        if kwargs.get("_lower_right"):
            w = kwargs.get("_window")
            pairs = causal_pairs(lq, lk) if w is None else window_pairs(lq, lk, w)
            mask_bytes = 0.0
        elif mask is not None and type(mask).__name__ == "CausalBias":
            variant = int(getattr(mask.variant, "value", mask.variant))
            pairs = causal_pairs(lq, lk) if variant == 2 else _causal_pairs_top_left(lq, lk)
            mask_bytes = 0.0
        elif is_causal:
            pairs, mask_bytes = _causal_pairs_top_left(lq, lk), 0.0
        else:
            pairs = float(lq * lk)
            mask_bytes = self.nbytes(mask) if isinstance(mask, torch.Tensor) else 0.0
        dv = v.shape[-1]
        flops = 2.0 * heads_batch * pairs * (d + dv)
        if kwargs.get("_softcap") is not None:
            flops += SOFTCAP_FLOPS * heads_batch * pairs
        ins = [q, k] if kwargs.get("_v_in_k") else [q, k, v]
        self.add(
            TracedOp(
                name="scaled_dot_product_attention",
                kind=OpKind.ATTENTION,
                flops=flops,
                bytes_read=sum(self.nbytes(t) for t in ins) + mask_bytes,
                bytes_written=sum(self.nbytes(t) for t in _tensors(out)),
                param_bytes=self.param_bytes(ins),
                dims=(lq, lk, d),
                batch=int(heads_batch),
                scope=self.scope,
            )
        )

    def record_norm(
        self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any
    ) -> None:
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        n = outs[0].numel() if outs else 0
        self.add(
            TracedOp(
                name=name,
                kind=OpKind.NORM,
                flops=float(NORM_FLOPS * n),
                bytes_read=sum(self.nbytes(t) for t in ins),
                bytes_written=sum(self.nbytes(t) for t in outs[:1]),
                param_bytes=self.param_bytes(ins),
                dims=(n,),
                scope=self.scope,
            )
        )

    def record_aten(
        self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any
    ) -> None:
        name = func.overloadpacket.__name__
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        if name in _ALIASING:
            if any(self.is_param(t) for t in ins):
                for o in outs:
                    self.params[o] = True
            self.zero[name] += 1
            self.add(TracedOp(name=name, kind=OpKind.OTHER, scope=self.scope, zero_cost=True))
            return
        read = sum(self.nbytes(t) for t in ins)
        written = sum(self.nbytes(t) for t in outs)
        pbytes = self.param_bytes(ins)
        flops = 0.0
        dims: tuple[int, ...] = ()
        batch = 1
        strided = False
        if name in _GEMM:
            kind = OpKind.MATMUL
            a, b = (
                (args[1], args[2])
                if name in {"addmm", "baddbmm", "addmv", "addbmm"}
                else (args[0], args[1])
            )
            if a.dim() == 3:
                batch, m, k = a.shape
                n = b.shape[-1]
            elif a.dim() == 2 and b.dim() == 2:
                (m, k), n = a.shape, b.shape[1]
            elif a.dim() == 2:  # mv
                (m, k), n = a.shape, 1
            else:  # dot
                m, k, n = 1, a.shape[0], 1
            flops = 2.0 * batch * m * n * k
            dims = (int(m), int(n), int(k))
        elif name in _CONV:
            kind = OpKind.CONV
            x, w = args[0], args[1]
            groups = int(args[8]) if len(args) > 8 else int(kwargs.get("groups", 1))
            o = outs[0]
            m = o.shape[0] * math.prod(o.shape[2:])
            n = w.shape[0] // groups
            k = w.shape[1] * math.prod(w.shape[2:])
            batch = groups
            flops = 2.0 * batch * m * n * k
            dims = (int(m), int(n), int(k))
            del x
        elif name in _SDPA:
            self.record_sdpa(args, kwargs, out)
            return
        elif name in _NORM:
            kind = OpKind.NORM
            n = outs[0].numel()
            flops, dims = float(NORM_FLOPS * n), (n,)
            written = self.nbytes(outs[0])  # saved statistics are bookkeeping
        elif name in _SOFTMAX:
            kind = OpKind.SOFTMAX
            n = outs[0].numel()
            flops, dims = float(NORM_FLOPS * n), (n,)
        elif name in _POOL:
            kind = OpKind.POOL
            x = ins[0]
            flops, dims = float(x.numel()), (x.numel(),)
            if name.endswith("with_indices"):
                written = self.nbytes(outs[0])
        elif name in _EMBED or name in _COPY or name in _ARITH or name in _REDUCE:
            kind = OpKind.EMBEDDING if name in _EMBED else OpKind.ELEMENTWISE
            n = outs[0].numel() if outs else 0
            if outs and (name in _ARITH or name in _POINTWISE_COPY):
                strided = _strided(ins, outs[0])
            if name in _GATHER:
                idx = [t for t in ins if not (t.is_floating_point() or t.is_complex())]
                read = sum(self.nbytes(t) for t in idx) + sum(self.nbytes(t) for t in outs)
                pbytes = (
                    sum(self.nbytes(t) for t in outs) if any(self.is_param(t) for t in ins) else 0.0
                )
            elif name in _LIKE:
                read = 0.0  # the argument only gives the shape
                pbytes = 0.0
            elif name == "copy_":
                read = self.nbytes(args[1])
                written = self.nbytes(args[0])
                pbytes = self.param_bytes([args[1]])
            elif name.endswith("_") and outs and ins and outs[0] is ins[0]:
                pass  # in place: reads self and operands, writes self
            if name in _REDUCE:
                flops = float(ins[0].numel()) if ins else 0.0
            elif name in _ARITH:
                flops = float(n)
            dims = (n,)
        else:
            self.unknown[name] += 1
            self.add(
                TracedOp(
                    name=name,
                    kind=OpKind.OTHER,
                    bytes_read=read,
                    bytes_written=written,
                    param_bytes=pbytes,
                    scope=self.scope,
                    known=False,
                )
            )
            return
        self.add(
            TracedOp(
                name=name,
                kind=kind,
                flops=flops,
                bytes_read=read,
                bytes_written=written,
                param_bytes=pbytes,
                dims=dims,
                batch=int(batch),
                scope=self.scope,
                strided=strided,
            )
        )


class _Dispatch(TorchDispatchMode):
    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.rec.suspended:
            self.rec.record_aten(func, args, kwargs, out)
        return out


_SDPA_FN = F.scaled_dot_product_attention
_NORM_FNS: dict[Any, str] = {
    F.layer_norm: "layer_norm",
    F.group_norm: "group_norm",
    F.batch_norm: "batch_norm",
    F.instance_norm: "instance_norm",
}
if hasattr(F, "rms_norm"):
    _NORM_FNS[F.rms_norm] = "rms_norm"


class _Functions(TorchFunctionMode):
    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        rec = self.rec
        if rec.suspended:
            return func(*args, **kwargs)
        if func is _SDPA_FN:
            with rec.suspend():
                out = func(*args, **kwargs)
                q, v = args[0], args[2]
                if q.device.type == "meta" and q.dim() == 4:
                    # a fused kernel writes O in the (batch, seq, heads, dim) layout of Q's
                    # producer, so `o.transpose(1, 2).reshape(...)` is a view, not a copy
                    b, h, s, _ = q.shape
                    out = torch.empty(
                        b, s, h, v.shape[-1], dtype=out.dtype, device=q.device
                    ).transpose(1, 2)
            rec.record_sdpa(args, kwargs, out)
            return out
        if func in _NORM_FNS:
            with rec.suspend():
                out = func(*args, **kwargs)
            rec.record_norm(_NORM_FNS[func], args, kwargs, out)
            return out
        return func(*args, **kwargs)


def trace_module(module: torch.nn.Module, inputs: Any, dtype: str = "bf16") -> Trace:
    """Run ``module`` on ``inputs`` (both on the ``meta`` device) and count every op.

    ``inputs`` is a tuple/list of positional arguments, a mapping of keyword arguments, or
    a single tensor. ``dtype`` is the xpusim dtype name whose width prices floating-point
    tensors (the module may be built in any float dtype). The module runs in ``eval()``
    mode under ``torch.no_grad()``. Returns a :class:`Trace` (a list of
    :class:`TracedOp`) whose ``unknown_ops`` names the ops without a counting rule.
    Raises ``ValueError`` when a parameter is not on ``meta`` (tracing must never
    allocate weights).
    """
    for name, p in module.named_parameters():
        if p.device.type != "meta":
            raise ValueError(
                f"trace_module needs a module on the meta device; parameter {name!r} is on "
                f"{p.device.type!r} (build it with module('meta'))"
            )
    rec = _Recorder(dtype)
    handles = []
    for qual, sub in module.named_modules():

        def pre(_m: torch.nn.Module, _a: Any, _q: str = qual) -> None:
            rec.scopes.append(_q)

        def post(_m: torch.nn.Module, _a: Any, _o: Any) -> None:
            if len(rec.scopes) > 1:
                rec.scopes.pop()

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post, always_call=True))
    args: tuple[Any, ...]
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}
    was_training = module.training
    module.eval()
    token = _ACTIVE.set(rec)
    try:
        with torch.no_grad(), _Functions(rec), _Dispatch(rec):
            module(*args, **kwargs)
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
        module.train(was_training)
    return Trace(rec.ops, unknown_ops=dict(rec.unknown), zero_cost_ops=dict(rec.zero))


_DIGITS = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def _op_key(t: TracedOp) -> tuple[Any, ...]:
    scope = _DIGITS.sub("*", t.scope)
    return (
        scope,
        t.name,
        t.kind,
        t.flops,
        t.bytes_read,
        t.bytes_written,
        t.param_bytes,
        t.dims,
        t.batch,
        t.strided,
    )


def graph_from_trace(
    traced: Sequence[TracedOp], phase: Phase, shape: Shape, dtype: str = "bf16"
) -> OpGraph:
    """Turn a trace into an :class:`~xpusim.engine.graph.OpGraph`.

    Zero-cost ops are left out. Ops equal in every quantity whose scopes differ only by a
    layer index (``layers.3.mlp`` and ``layers.4.mlp``) merge into one op with ``count``,
    in order of first appearance, so a 50-layer network stays a short graph. Unknown ops
    stay in as :attr:`OpKind.OTHER` and are named in the graph's ``notes``.
    """
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for t in traced:
        if t.zero_cost:
            continue
        key = _op_key(t)
        if key in merged:
            merged[key][1] += 1
        else:
            merged[key] = [t, 1]
    ops = []
    for key, (t, count) in merged.items():
        scope = key[0]
        ops.append(
            Op(
                name=f"{scope}:{t.name}" if scope else t.name,
                kind=t.kind,
                flops=t.flops,
                bytes_read=t.bytes_read,
                bytes_written=t.bytes_written,
                param_bytes=t.param_bytes,
                dims=t.dims,
                batch=max(1, t.batch),
                count=count,
                dtype=dtype,
                layer=scope,
                attrs=((STRIDED, 1.0),) if t.strided else (),
            )
        )
    notes: list[str] = []
    unknown = getattr(traced, "unknown_ops", None)
    if unknown is None:
        unknown = dict(Counter(t.name for t in traced if not t.known))
    if unknown:
        listed = ", ".join(f"{n} x{c}" for n, c in sorted(unknown.items()))
        notes.append(f"unknown ops (priced by bytes only, no FLOPs): {listed}")
    return OpGraph(phase=phase, ops=tuple(ops), shape=shape, dtype=dtype, notes=tuple(notes))


def count_eager_calls(model: ModelGraph, shape: Shape) -> EagerCalls:
    """Count the view ops and module calls of one step of ``model`` at ``shape`` by
    tracing its own module on the ``meta`` device (no storage, no arithmetic). A model
    whose module cannot be traced counts none (its graph's ops are still priced)."""
    try:
        mod = model.module("meta")
        calls = [0]

        def pre(_m: Any, _a: Any) -> None:
            calls[0] += 1

        handles = [sub.register_forward_pre_hook(pre) for sub in mod.modules()]
        try:
            tr = trace_module(mod, model.example_inputs(shape, "meta"), "fp32")
        finally:
            for h in handles:
                h.remove()
    except Exception:  # a module the tracer cannot run: nothing counted
        return EagerCalls()
    return EagerCalls(views=sum(1 for t in tr if t.zero_cost), modules=calls[0])
