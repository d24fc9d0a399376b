"""Number formats and per-system quantization: what a tensor costs in memory and at which
tensor-core rate its GEMMs run.

A :class:`Precision` names three formats: the **weights'** (of the transformer blocks'
linear layers), the **activations'** (the GEMM inputs) and the **KV cache's**. A scenario
gives one per system (``systems[].precision``), as a scheme name (``fp8``, ``nvfp4``,
``w4a16`` ...) or as a mapping ``{weights, activations, kv_cache}``; so one scenario
compares H100 at FP8 with A100 at 4-bit weights and B200 at FP4.

Memory follows the format, scales included (:attr:`Format.bytes_per_element`): NVFP4 is
4.5 bits an element (a 4-bit value plus an 8-bit scale per 16), AWQ/GPTQ INT4 with groups of
128 is 4.16 bits. Embedding tables, the LM head, norms and everything that is not a weight
GEMM stay in 16 bits, as the AWQ, GPTQ and TensorRT-LLM/ModelOpt recipes keep them.

GEMMs run on the device's tensor cores for the format when the device has a published rate
for it (its catalog ``peak_flops``). When it has none, they run at the next wider format it
has (``fp4`` → ``fp8`` → ``bf16``, ``int8`` → ``bf16``), the activations in that wider
format, and the narrower weights are converted inside the GEMM: each weight element costs
:data:`DEQUANT_FLOPS_PER_ELEMENT` vector operations for every :data:`DEQUANT_ROWS` rows of the
GEMM's left operand, charged on the vector unit beside the matrix work (the op attribute
:data:`VECTOR_FLOPS_ATTR`). Weight-only formats (``w4a16``) always take that path: their
GEMMs are 16-bit. :class:`GemmPlan` records the choice and the report says which.
Quantizing activations (and new K/V entries) is taken as fused into the kernel that writes
them, as TensorRT-LLM fuses it into the norm before a GEMM, and is not charged.

:class:`QuantizedModel` wraps a configured 16-bit model and rewrites its op graphs and its
weight bytes; the KV cache's format is the model family's own ``kv_dtype`` field, which the
scenario loader sets (:func:`model_block`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpusim.engine.device import DeviceSpec, Figure
from xpusim.engine.errors import UnsupportedError, XpusimError
from xpusim.engine.graph import Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import EagerCalls, ModelGraph, StageGraphs
from xpusim.engine.registry import unknown_message
from xpusim.engine.system import Parallelism

if TYPE_CHECKING:  # torch is heavy; only type checkers need it here
    import torch

__all__ = [
    "ATTENTION_FORMATS",
    "DEQUANT_FLOPS_PER_ELEMENT",
    "DEQUANT_ROWS",
    "FORMATS",
    "NARROW_DTYPES",
    "SCHEMES",
    "VECTOR_FLOPS_ATTR",
    "Format",
    "GemmPlan",
    "Precision",
    "QuantizedModel",
    "dtype_precision",
    "model_block",
    "parse_precision",
    "plan_gemms",
    "scheme_in_dtype",
]


@dataclass(frozen=True, slots=True)
class Format:
    """One number format: ``bits`` per value of tensor-core type ``element`` (a
    ``peak_flops`` key: ``bf16``, ``fp8``, ``fp4``, ``int8``, ``int4``), plus a
    ``scale_bits`` scale shared by every ``block`` elements (``block = 0``: one scale per
    tensor or per channel, too few to count). ``layout`` says what the format is and
    where it is described."""

    name: str
    element: str
    bits: int
    block: int = 0
    scale_bits: int = 0
    layout: str = ""

    @property
    def bytes_per_element(self) -> float:
        """Bytes one element costs in memory, its share of the scales included."""
        scale = self.scale_bits / self.block if self.block else 0.0
        return (self.bits + scale) / 8.0

    @property
    def wide(self) -> bool:
        """Whether this is a 16-bit (or wider) format: no quantization."""
        return self.bits >= 16


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("bf16", "bf16", 16, layout="bfloat16, no scales"),
        Format("fp16", "fp16", 16, layout="IEEE half precision, no scales"),
        Format(
            "fp8",
            "fp8",
            8,
            layout="FP8 E4M3 with one fp32 scale per tensor (the per-tensor scaling of "
            "TensorRT-LLM and vLLM FP8 checkpoints)",
        ),
        Format(
            "fp8-block",
            "fp8",
            8,
            block=128,
            scale_bits=32,
            layout="FP8 E4M3 with an fp32 scale per 1x128 tile (DeepSeek-V3 fine-grained "
            "scaling as DeepGEMM runs it, kernels.yaml deepgemm_fp8_dense_gemm_h800_2025_04); "
            "weights' 128x128 blocks carry fewer scales, so this bounds them from above",
        ),
        Format(
            "nvfp4",
            "fp4",
            4,
            block=16,
            scale_bits=8,
            layout="NVFP4: E2M1 values with an FP8 E4M3 scale per 16 elements (and one fp32 "
            "scale per tensor), NVIDIA Blackwell's 4-bit format",
        ),
        Format(
            "mxfp4",
            "fp4",
            4,
            block=32,
            scale_bits=8,
            layout="MXFP4 (OCP Microscaling): E2M1 values with an E8M0 scale per 32 elements",
        ),
        Format(
            "int8",
            "int8",
            8,
            layout="INT8 with per-channel weight and per-token activation scales "
            "(SmoothQuant-style w8a8)",
        ),
        Format(
            "int4",
            "int4",
            4,
            block=128,
            scale_bits=20,
            layout="INT4 weights in groups of 128 with an fp16 scale and a 4-bit zero point "
            "per group (AWQ / GPTQ with group size 128)",
        ),
    )
}
"""Every format a precision may name, by name."""

ACTIVATION_FORMATS = ("bf16", "fp16", "fp8", "fp8-block", "nvfp4", "mxfp4", "int8")
"""Formats a GEMM input may be in (no kernel reads 4-bit integer activations here)."""

KV_FORMATS = ("bf16", "fp16", "fp8", "int8")
"""Formats a KV cache may be in: a model family's ``kv_dtype`` values."""

ATTENTION_FORMATS = ("bf16", "fp16", "fp8")
"""Formats context (prefill) attention may compute in: 16 bits, or FP8 as TensorRT-LLM's
FP8 context FMHA runs it (Q, K and V quantized, FP8 tensor cores, FP32 softmax)."""

SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "bf16": ("bf16", "bf16", None),
    "fp16": ("fp16", "fp16", None),
    "fp8": ("fp8", "fp8", None),
    "fp8-block": ("fp8-block", "fp8-block", None),
    "fp4": ("nvfp4", "nvfp4", None),
    "nvfp4": ("nvfp4", "nvfp4", None),
    "mxfp4": ("mxfp4", "mxfp4", None),
    "int8": ("int8", "int8", None),
    "w8a8": ("int8", "int8", None),
    "int4": ("int4", "bf16", None),
    "w4a16": ("int4", "bf16", None),
    "awq": ("int4", "bf16", None),
    "gptq": ("int4", "bf16", None),
}
"""Scheme names: ``(weights, activations, kv_cache)`` formats; a ``None`` KV cache keeps the
model's own (16-bit unless the model block says ``kv_dtype``)."""

NATIVE_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
"""``model.dtype`` values model families take themselves; any other scheme name there is the
scenario's default precision (:func:`scheme_in_dtype`)."""

KEEP_WIDE_LAYERS = ("embed", "head")
"""Op-graph layers whose weights stay 16-bit: the embedding and the LM head."""

DEQUANT_FLOPS_PER_ELEMENT = 2.0
"""Vector operations to turn one stored weight element into the GEMM's input type: one to
unpack and convert (a bit-trick or table lookup), one fused multiply-add with its group's
scale (and zero point), as the register dequantization of Marlin- and AWQ-style kernels
does. Assumption."""

DEQUANT_ROWS = 128
"""Rows of the left operand one thread block covers: a weight tile is dequantized once per
such row block (the 128-row CTA tiles of the GPU cost model). Assumption."""

VECTOR_FLOPS_ATTR = "vector_flops"
"""Op attribute: FLOPs a matrix op spends on the vector unit beside its matrix work (fused
consumers, weight dequantization); a backend charges them at its vector rate."""

_WIDER = {"fp4": ("fp8", "bf16"), "fp8": ("bf16",), "int8": ("bf16",), "int4": ("int8", "bf16")}
_AS_FORMAT = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "fp4": "nvfp4"}


@dataclass(frozen=True, slots=True)
class Precision:
    """Formats of one system's weights, activations and KV cache (``None``: the model's),
    and of its context (prefill) attention (``None``: 16 bits; ``fp8`` as TensorRT-LLM's
    FP8 context FMHA computes it)."""

    name: str
    weights: Format
    activations: Format
    kv_cache: Format | None = None
    attention: Format | None = None

    @property
    def is_default(self) -> bool:
        """Whether this changes nothing: 16-bit weights, activations and attention, the
        model's KV."""
        return (
            self.weights.wide
            and self.activations.wide
            and self.kv_cache is None
            and (self.attention is None or self.attention.wide)
        )


def _format(name: Any, allowed: tuple[str, ...], field: str, where: str) -> Format:
    text = str(name)
    if text in allowed:
        return FORMATS[text]
    kind = f"{field.replace('_', ' ')} format"
    raise XpusimError(unknown_message(kind, text, list(allowed), f"{where}.{field}"))


def parse_precision(raw: Any, where: str) -> Precision:
    """A :class:`Precision` from a scenario value: a scheme name (:data:`SCHEMES`) or a
    mapping with ``scheme``, ``weights``, ``activations`` and ``kv_cache`` (each optional;
    activations default to 16 bits, a weight-only format). Bad input raises
    :class:`~xpusim.engine.errors.XpusimError` naming ``where``, the field and the nearest
    valid name."""
    if isinstance(raw, str):
        if raw not in SCHEMES:
            raise XpusimError(
                unknown_message("precision scheme", raw, list(SCHEMES), where)
                + " Or write a mapping {weights, activations, kv_cache}."
            )
        w_name, a_name, kv_name = SCHEMES[raw]
        kv_fmt = FORMATS[kv_name] if kv_name else None
        return Precision(raw, FORMATS[w_name], FORMATS[a_name], kv_fmt)
    if not isinstance(raw, Mapping):
        raise XpusimError(
            f"{where}: a precision is a scheme name (fp8, nvfp4, w4a16 ...) or a mapping "
            f"{{weights, activations, kv_cache}}, got {raw!r}."
        )
    keys = ("scheme", "weights", "activations", "kv_cache", "attention")
    bad = [k for k in raw if k not in keys]
    if bad:
        raise XpusimError(unknown_message("precision key", bad[0], list(keys), where))
    base = parse_precision(str(raw["scheme"]), f"{where}.scheme") if "scheme" in raw else None
    w = _format(raw["weights"], tuple(FORMATS), "weights", where) if "weights" in raw else None
    weights = w or (base.weights if base else FORMATS["bf16"])
    if "activations" in raw:
        acts = _format(raw["activations"], ACTIVATION_FORMATS, "activations", where)
    else:
        acts = base.activations if base else FORMATS["bf16"]
    kv = _format(raw["kv_cache"], KV_FORMATS, "kv_cache", where) if "kv_cache" in raw else None
    kv = kv or (base.kv_cache if base else None)
    attn = None
    if "attention" in raw:
        attn = _format(raw["attention"], ATTENTION_FORMATS, "attention", where)
    _check_pair(weights, acts, where)
    parts = [f"w:{weights.name}", f"a:{acts.name}"] + ([f"kv:{kv.name}"] if kv else [])
    parts += [f"attn:{attn.name}"] if attn else []
    return Precision(" ".join(parts), weights, acts, kv, attn)


def _check_pair(weights: Format, acts: Format, where: str) -> None:
    """Refuse weight/activation pairs no GEMM kernel runs."""
    if acts.wide:
        return
    if acts.bits < weights.bits:
        raise XpusimError(
            f"{where}.activations: {acts.name} activations are narrower than {weights.name} "
            f"weights; no GEMM kernel runs that pair. Use activations: {weights.name} (or a "
            f"16-bit format)."
        )
    if (acts.element == "int8") != (weights.element in ("int8", "int4")):
        valid = "int8 or bf16" if weights.element in ("int8", "int4") else "fp8, fp4 or bf16"
        raise XpusimError(
            f"{where}.activations: {acts.name} activations do not pair with {weights.name} "
            f"weights (integer and floating-point GEMM inputs do not mix); use {valid}."
        )


def scheme_in_dtype(block: Mapping[str, Any]) -> str | None:
    """The scheme a ``model:`` block's ``dtype`` names when model families do not take it
    themselves (``fp4``, ``int4``, ``nvfp4``, ``w4a16`` ...), else ``None``: such a dtype is
    the scenario's default precision for systems that name none."""
    dtype = block.get("dtype")
    if isinstance(dtype, str) and dtype in SCHEMES and dtype not in NATIVE_DTYPES:
        return dtype
    return None


NARROW_DTYPES = ("fp8", "int8")
"""``model.dtype`` values that are narrow formats model families take themselves: inference
runs them as the precision of the same name, training natively where the device has the
rate; see :func:`dtype_precision`."""


def dtype_precision(dtype: str, device: DeviceSpec, *, training: bool, where: str) -> str | None:
    """What a system runs ``model.dtype: dtype`` at on ``device`` when it names no precision.

    ``None`` when nothing changes: ``dtype`` is not narrow (:data:`NARROW_DTYPES`). For
    inference a narrow dtype is a checkpoint's format, and the system takes the precision
    path exactly as ``precision: fp8`` would: the blocks' linear layers narrow (their
    weights, and their activations where the device publishes the rate), attention, norms,
    residuals, the embedding and the LM head in 16 bits, as serving stacks run such a
    checkpoint (vLLM's FP8 quantizes "all Linear modules (except for the final lm_head)",
    docs.vllm.ai v0.5.4 ``quantization/fp8``; TensorRT-LLM's FP8 context attention is a
    build option of its own). On a device without the rate the GEMMs run at the next wider
    format it has with the weights dequantized inside them (as vLLM runs an FP8 checkpoint
    on Ampere), and the report says so (:class:`GemmPlan`). Training runs natively where
    the device has the rate (``None``); it has no dequantizing path (FP8 training needs FP8
    tensor cores for the backward GEMMs too), so without the rate the dtype is refused: an
    :class:`~xpusim.engine.errors.XpusimError` naming ``where`` (the scenario's
    ``model.dtype``) and the nearest dtype the device runs."""
    if dtype not in NARROW_DTYPES:
        return None
    if not training:
        return dtype
    if _has(device, dtype):
        return None
    nearest = next((d for d in _WIDER[dtype] if _has(device, d)), None)
    known = ", ".join(sorted(device.peak_flops))
    fix = f"the nearest dtype it runs is {nearest}: use model.dtype: {nearest}" if nearest else ""
    raise XpusimError(
        f"{where}: model.dtype {dtype!r}: device {device.name!r} publishes no {dtype} tensor "
        f"rate (it has: {known}), and training at {dtype} runs every GEMM, the backward "
        f"ones included, on {dtype} tensor cores; {fix or 'pick a dtype it has'}, or a device "
        f"with a {dtype} rate."
    )


def model_block(block: Mapping[str, Any], precision: Precision) -> dict[str, Any]:
    """The ``model:`` block a system of ``precision`` configures its 16-bit base model from:
    ``dtype`` 16-bit (the precision sets the GEMMs' formats), and ``kv_dtype`` the
    precision's KV-cache format where it names one (else the block's own)."""
    out = dict(block)
    if str(out.get("dtype", "bf16")) not in ("bf16", "fp16"):
        out["dtype"] = "bf16"
    if precision.kv_cache is not None:
        out["kv_dtype"] = precision.kv_cache.name
    return out


# --- the GEMM plan ---------------------------------------------------------------------


def _has(device: DeviceSpec, dtype: str, fmt: Format | None = None) -> bool:
    """Whether ``device`` has a tensor rate for ``dtype`` (and, for 4-bit floats, reads
    ``fmt``'s block scaling: MXFP4 on AMD CDNA4, NVFP4 and MXFP4 on NVIDIA Blackwell)."""
    twins = {"bf16": "fp16", "fp16": "bf16"}
    if dtype not in device.peak_flops and twins.get(dtype, "") not in device.peak_flops:
        return False
    if dtype == "fp4" and fmt is not None and device.fp4_formats:
        return fmt.name in device.fp4_formats
    return True


@dataclass(frozen=True, slots=True)
class GemmPlan:
    """How a precision's GEMMs run on one device: at ``math`` (a ``peak_flops`` key the
    device has), reading ``activations``, with the stored weights converted to ``math``
    inside the GEMM when ``dequantize``; ``note`` says so in a sentence."""

    math: str
    activations: Format
    dequantize: bool
    note: str


def plan_gemms(precision: Precision, device: DeviceSpec) -> GemmPlan:
    """The :class:`GemmPlan` of ``precision`` on ``device`` (module docstring)."""
    w, a = precision.weights, precision.activations
    want = "bf16" if a.wide else a.element
    if a.wide and a.element == "fp16":
        want = "fp16"
    chain = (want, *_WIDER.get(want, ()))
    math_type = next((d for d in chain if _has(device, d, a if d == want else None)), None)
    if math_type is None:
        raise XpusimError(
            f"device {device.name!r} has no tensor rate for {want} or any wider format "
            f"(known: {', '.join(sorted(device.peak_flops))})."
        )
    acts = a if math_type == want else FORMATS[_AS_FORMAT[math_type]]
    native_w = w.element == math_type and _has(device, math_type, w)
    dequant = not w.wide and not native_w
    peak = device.flops(math_type) / 1e12
    parts = [f"GEMMs on {device.name}'s {math_type} tensor rate ({peak:,.0f} TFLOP/s)"]
    if math_type != want and _has(device, want):
        parts.append(
            f"{device.name}'s {want} tensor cores read {', '.join(device.fp4_formats)}, "
            f"not {a.name}, so activations run in {acts.name}"
        )
    elif math_type != want:
        parts.append(f"{device.name} publishes no {want} rate, so activations run in {acts.name}")
    if dequant:
        parts.append(f"weights stored as {w.name}, dequantized to {math_type} inside the GEMM")
    return GemmPlan(math_type, acts, dequant, "; ".join(parts))


# --- the quantized model ---------------------------------------------------------------


def _weight_gemm(op: Op) -> bool:
    """Whether ``op`` is a GEMM against block weights (what a weight format quantizes)."""
    return (
        op.kind in (OpKind.MATMUL, OpKind.CONV)
        and op.param_bytes > 0
        and op.layer not in KEEP_WIDE_LAYERS
    )


def _attr_add(attrs: tuple[tuple[str, float], ...], key: str, v: float) -> tuple[Any, ...]:
    d = dict(attrs)
    d[key] = d.get(key, 0.0) + v
    return tuple(d.items())


def _attention_dtype(precision: Precision, device: DeviceSpec) -> str | None:
    """The dtype ``precision`` runs context attention in on ``device``: its narrow
    ``attention`` format where the device has a tensor rate for it, else ``None`` (16
    bits)."""
    fmt = precision.attention
    if fmt is None or fmt.wide or not _has(device, fmt.element):
        return None
    return fmt.element


class QuantizedModel(ModelGraph):
    """``base`` (configured with 16-bit ``dtype``) run at ``precision`` on ``device``: op
    graphs with the weight GEMMs rewritten (weight and input bytes in their formats, the
    GEMM's dtype the plan's, dequantization work as :data:`VECTOR_FLOPS_ATTR`) and weight
    bytes in the format. It has no torch module: backends that execute a module (the
    measured cpu backend) report the system unsupported."""

    def __init__(self, base: ModelGraph, precision: Precision, device: DeviceSpec) -> None:
        if base.kind == "spiking":
            raise XpusimError(
                f"{base.name} is a spiking network: a precision sets the formats of GEMM "
                "weights and activations, which it has none of; remove the precision."
            )
        if dtype_bytes(base.info.dtype) != 2:
            raise XpusimError(
                f"a precision applies to a 16-bit model; {base.name!r} is {base.info.dtype}."
            )
        self.base = base
        self.precision = precision
        self.plan = plan_gemms(precision, device)
        self.device = device
        self.attention_dtype = _attention_dtype(precision, device)
        """The dtype context attention computes in when the precision narrows it and the
        device has a tensor rate for it; ``None``: the model's 16 bits."""
        linear16 = min(base.info.param_bytes, self._weight_gemm_bytes())
        w = precision.weights.bytes_per_element / 2.0
        self.linear_params = linear16 / 2.0
        self.info = dataclasses.replace(
            base.info, param_bytes=base.info.param_bytes - linear16 + linear16 * w
        )
        self._graphs: dict[tuple[Shape, Parallelism | None], OpGraph] = {}
        self._rewritten: dict[Op, Op] = {}

    def _weight_gemm_bytes(self) -> float:
        """16-bit bytes of every block weight GEMM of the whole model, read off a graph
        long enough to route tokens to every expert."""
        info = self.base.info
        if info.kind == "decoder":
            tokens = max(1, min(info.max_seq_len or 4096, 4096))
            shape = Shape(Phase.PREFILL, batch=1, tokens=tokens)
        else:
            shape = Shape(Phase.FORWARD, batch=1)
        g = self.base.build(shape, None)
        return sum(o.param_bytes * o.count for o in g.ops if _weight_gemm(o))

    def with_attention(self, fmt: Format) -> QuantizedModel:
        """This model with its context attention in ``fmt`` (a serving stack that builds
        FP8 context attention kernels): a copy sharing this one's weights, byte counts and
        GEMM plan, with its own graph and op memos."""
        twin = copy.copy(self)
        p = self.precision
        twin.precision = dataclasses.replace(p, name=f"{p.name} attn:{fmt.name}", attention=fmt)
        twin.attention_dtype = _attention_dtype(twin.precision, self.device)
        twin._graphs = {}
        twin._rewritten = {}
        return twin

    def rewrite(self, op: Op) -> Op:
        """``op`` at this precision (unchanged unless it is a weight GEMM, or a context
        attention whose format the precision narrows)."""
        if op.kind is OpKind.ATTENTION:
            attn = self.attention_dtype
            if attn is None or not op.dims or op.dims[0] <= 1:
                return op  # 16-bit attention, or a decode's (it reads the KV cache's format)
            return dataclasses.replace(op, dtype=attn)
        if not _weight_gemm(op):
            return op
        e = dtype_bytes(op.dtype)
        weights = op.param_bytes / e
        w_bytes = weights * self.precision.weights.bytes_per_element
        inputs = (op.bytes_read - op.param_bytes) / e * self.plan.activations.bytes_per_element
        attrs = op.attrs
        if self.plan.dequantize:
            rows = max(1, int(op.dims[0])) if op.dims else 1
            flops = weights * math.ceil(rows / DEQUANT_ROWS) * DEQUANT_FLOPS_PER_ELEMENT
            attrs = _attr_add(attrs, VECTOR_FLOPS_ATTR, flops)
        return dataclasses.replace(
            op,
            bytes_read=inputs + w_bytes,
            param_bytes=w_bytes,
            dtype=self.plan.math,
            attrs=attrs,
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """The base model's graph of ``shape`` with its weight GEMMs rewritten (memoized,
        and each op rewritten once: the graphs of a model share most of their ops)."""
        key = (shape, parallel)
        g = self._graphs.get(key)
        if g is None:
            base = self.base.build(shape, parallel)
            done = self._rewritten
            ops: list[Op] = []
            for o in base.ops:
                r = done.get(o)
                if r is None:
                    r = done[o] = self.rewrite(o)
                ops.append(r)
            g = dataclasses.replace(base, ops=tuple(ops))
            self._graphs[key] = g
        return g

    def module(self, device: str = "meta") -> torch.nn.Module:
        """Refused: a quantized model is priced from its op graph, not run."""
        raise UnsupportedError(
            f"{self.name} at precision {self.precision.name} has no torch module here: "
            "backends that run the model's module measure its 16-bit form; remove "
            "systems[].precision for this system (or, where model.dtype names a format its "
            "device has no rate for, set a 16-bit model.dtype) or use an analytic backend "
            "(gpu, tpu)."
        )

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """The base model's inputs for ``shape``."""
        return self.base.example_inputs(shape, device)

    def kv_bytes_per_token_per_device(self, parallel: Parallelism) -> float:
        """The base model's KV cache per device (configured with this precision's format)."""
        return self.base.kv_bytes_per_token_per_device(parallel)

    def weight_bytes_per_device(self, parallel: Parallelism) -> float:
        """The base model's weights on one device of ``parallel`` (its expert split kept),
        scaled by the whole model's quantized-to-16-bit weight ratio."""
        ratio = self.info.param_bytes / self.base.info.param_bytes
        return self.base.weight_bytes_per_device(parallel) * ratio

    def eager_calls(self, shape: Shape) -> EagerCalls:
        """The base model's eager calls (formats change no call count)."""
        return self.base.eager_calls(shape)

    def activation_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """The base model's activation memory (activations between GEMMs stay 16-bit)."""
        return self.base.activation_bytes(shape, parallel, recompute)

    def linear_input_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """The base model's linear-layer inputs among its activations."""
        return self.base.linear_input_bytes(shape, parallel, recompute)

    def head_activation_bytes(self, shape: Shape, parallel: Parallelism) -> float:
        """The base model's output-layer and loss activations."""
        return self.base.head_activation_bytes(shape, parallel)

    def recomputable(self) -> frozenset[str]:
        """The base model's recomputable modules (its graph's ops keep their names)."""
        return self.base.recomputable()

    def training_stages(self, graph: OpGraph) -> StageGraphs:
        """The base model's split of a training graph into passes."""
        return self.base.training_stages(graph)

    def describe(self) -> dict[str, str]:
        """The formats and the GEMM plan in words, for a run's details."""
        p = self.precision
        return {
            "precision": p.name,
            "weights": p.weights.name,
            "activations": self.plan.activations.name,
            "kv_cache": p.kv_cache.name if p.kv_cache else "model's own",
            "gemm_dtype": self.plan.math,
            "gemm": self.plan.note,
            "context_attention": self._attention_note(),
        }

    def _attention_note(self) -> str:
        """How context attention computes, in words."""
        fmt = self.precision.attention
        if fmt is None or fmt.wide:
            return "16-bit, as the model's"
        if self.attention_dtype is None:
            return f"16-bit: {self.device.name} publishes no {fmt.element} rate"
        return f"{fmt.name} on {fmt.element} tensor cores"

    def figures(self) -> dict[str, Figure]:
        """The precision's figures for a report's 'Assumptions and sources': bytes per
        element of each format and the GEMM plan."""
        p, plan = self.precision, self.plan
        out = {
            "precision.weights_bytes_per_element": Figure(
                p.weights.bytes_per_element,
                assumption=f"{p.weights.name}: {p.weights.layout}; block GEMM weights "
                f"({self.linear_params / 1e9:.2f}B parameters) in this format, embeddings, "
                "LM head and norms in 16 bits",
            ),
            "precision.activations_bytes_per_element": Figure(
                plan.activations.bytes_per_element,
                assumption=f"GEMM inputs in {plan.activations.name}: {plan.note}",
            ),
        }
        if p.kv_cache is not None:
            out["precision.kv_cache_bytes_per_element"] = Figure(
                p.kv_cache.bytes_per_element,
                assumption=f"KV cache in {p.kv_cache.name}: {p.kv_cache.layout}",
            )
        if plan.dequantize:
            out["precision.dequant_flops_per_element"] = Figure(
                DEQUANT_FLOPS_PER_ELEMENT,
                assumption=f"vector operations per stored weight element per "
                f"{DEQUANT_ROWS}-row block to convert it to {plan.math} inside the GEMM",
            )
        return out
