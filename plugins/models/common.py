"""Helpers shared by the model families: spec validation, dtypes, training-step ops and a
:class:`~xpusim.engine.model.ModelGraph` whose graphs come from a meta-device trace."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ValidationError

from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import BACKWARD, RECOMPUTE, EagerCalls, ModelGraph, ModelInfo
from xpusim.engine.registry import unknown_message
from xpusim.engine.system import Parallelism

__all__ = [
    "DTYPES",
    "SIZE_LIMITS",
    "ModelDtype",
    "SizeLimit",
    "TracedModelGraph",
    "adam_op",
    "backward_ops",
    "torch_dtype",
    "validate_spec",
]

DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
"""The dtypes a model block may name; tensors are priced at this width."""


def _known_dtype(value: Any) -> Any:
    """A dtype of :data:`DTYPES`, or a message naming the nearest one."""
    if isinstance(value, str) and value not in DTYPES:
        raise ValueError(unknown_message("dtype", value, list(DTYPES)))
    return value


ModelDtype = Annotated[
    Literal["fp32", "fp16", "bf16", "fp8", "int8"], BeforeValidator(_known_dtype)
]
"""A model's number format (``dtype``, ``kv_dtype``): one of :data:`DTYPES`, an unknown one
refused naming the nearest (``fp9``: did you mean ``fp8``?). Other scheme names in
``model.dtype`` (``fp4``, ``w4a16``) are precisions the scenario loader resolves first."""

ADAM_FLOPS_PER_PARAM = 12
"""FLOPs charged per parameter for one Adam update (two moment updates, bias correction,
the square root, division and the weight update)."""


def torch_dtype(name: str) -> Any:
    """The torch dtype a module of xpusim dtype ``name`` is built in. fp8 and int8 have no
    eager kernels for every op, so those modules are built in bf16 (graphs still price
    tensors at 1 byte)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16}.get(name, torch.bfloat16)


class SizeLimit(NamedTuple):
    """The largest value a model dimension may take, and its unit in messages.

    ``items`` bounds the length of a list-valued field (``blocks``, ``sizes``,
    ``channels``), whose every entry is bounded by ``most``.
    """

    most: int
    unit: str
    items: int = 0


MAX_LAYERS = 10_000
"""Layers (and blocks) of a model: the deepest published models have a few hundred."""
MAX_WIDTH = 2**20
"""A hidden size, head size, latent rank, channel count or MLP width (about a million):
the widest published models have tens of thousands."""
MAX_FFN = 2**24
"""An MLP's inner width (about 16.8 million), a few hundred times the widest published."""
MAX_HEADS = 65_536
"""Attention heads and experts: published models have at most a few hundred."""
MAX_VOCAB = 2**24
"""Vocabulary and class counts (about 16.8 million): published vocabularies reach 256 Ki."""
MAX_SEQ = 100_000_000
"""A context length or attention window: the token limit of a request (engine.traces)."""
MAX_IMAGE = 65_536
"""An image side in pixels, or a convolution kernel side."""

SIZE_LIMITS: dict[str, SizeLimit] = {
    "layers": SizeLimit(MAX_LAYERS, "layers"),
    "dense_layers": SizeLimit(MAX_LAYERS, "layers"),
    "mtp_layers": SizeLimit(MAX_LAYERS, "layers"),
    "hidden": SizeLimit(MAX_WIDTH, "units"),
    "head_dim": SizeLimit(MAX_WIDTH, "units"),
    "q_lora_rank": SizeLimit(MAX_WIDTH, "units"),
    "kv_lora_rank": SizeLimit(MAX_WIDTH, "units"),
    "qk_rope_head_dim": SizeLimit(MAX_WIDTH, "units"),
    "v_head_dim": SizeLimit(MAX_WIDTH, "units"),
    "width": SizeLimit(MAX_WIDTH, "channels"),
    "in_channels": SizeLimit(MAX_WIDTH, "channels"),
    "ffn_hidden": SizeLimit(MAX_FFN, "units"),
    "shared_ffn_hidden": SizeLimit(MAX_FFN, "units"),
    "dense_ffn_hidden": SizeLimit(MAX_FFN, "units"),
    "heads": SizeLimit(MAX_HEADS, "heads"),
    "kv_heads": SizeLimit(MAX_HEADS, "heads"),
    "experts": SizeLimit(MAX_HEADS, "experts"),
    "top_k": SizeLimit(MAX_HEADS, "experts"),
    "shared_experts": SizeLimit(MAX_HEADS, "experts"),
    "vocab": SizeLimit(MAX_VOCAB, "tokens"),
    "type_vocab": SizeLimit(MAX_VOCAB, "tokens"),
    "num_classes": SizeLimit(MAX_VOCAB, "classes"),
    "seq_len": SizeLimit(MAX_SEQ, "tokens"),
    "sliding_window": SizeLimit(MAX_SEQ, "tokens"),
    "image_size": SizeLimit(MAX_IMAGE, "pixels"),
    "kernel": SizeLimit(MAX_IMAGE, "pixels"),
    "blocks": SizeLimit(MAX_LAYERS, "blocks", items=MAX_LAYERS),
    "sizes": SizeLimit(MAX_FFN, "units", items=MAX_LAYERS),
    "channels": SizeLimit(MAX_WIDTH, "channels", items=MAX_LAYERS),
}
"""The upper bound of every model dimension a family's options name, checked before a
model is built (:func:`check_sizes`): far above any published model, so that a typo or an
absurd what-if (``--set model.layers=100000000``) is refused at once instead of looping
over every layer. A configuration class may replace entries with its own
``SIZE_LIMITS`` class attribute (the spiking family's ``layers`` are layer sizes)."""


def _number(value: Any) -> float | None:
    """``value`` as a number when it is one (an integer, a float or a numeric string),
    else ``None`` (a bool is not a number here; pydantic reports the wrong type)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            return None
    return None


def check_sizes(
    values: Mapping[str, Any],
    limits: Mapping[str, SizeLimit],
    family: str,
    label: Callable[[str], str] | None = None,
) -> None:
    """Refuse a model dimension above its :class:`SizeLimit` with a
    :class:`~xpusim.engine.errors.ScenarioError` naming ``model.<key>`` (or ``label(key)``:
    the ``config.json`` key it came from), the value, the limit and the fix."""
    for key, lim in limits.items():
        value = values.get(key)
        where = label(key) if label is not None else f"model.{key}"
        if isinstance(value, list | tuple):
            if lim.items and len(value) > lim.items:
                raise ScenarioError(
                    f"{where}: lists {len(value):,} entries; a {family} model may have at "
                    f"most {lim.items:,} (far above any published model). Give fewer "
                    f"entries (docs/reliability.md, limits)."
                )
            entries: list[Any] = list(value)
        else:
            entries = [value]
        for entry in entries:
            n = _number(entry)
            if n is not None and n > lim.most:
                raise ScenarioError(
                    f"{where}: {entry!r} is far beyond any real model; a {family} model's "
                    f"{key} may be at most {lim.most:,} {lim.unit} (docs/reliability.md, "
                    f"limits). Give the published value, or a smaller what-if."
                )


def _fmt_loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def validate_spec(
    cls: type[BaseModel],
    spec: Mapping[str, Any],
    family: str,
    presets: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any] | None = None,
) -> tuple[Any, str | None]:
    """Validate a scenario ``model:`` block (without ``family``) into ``cls``.

    ``preset`` picks a published configuration whose fields the other keys override;
    ``defaults`` are the family's own architecture traits (applied before the preset).
    Any problem raises :class:`~xpusim.engine.errors.ScenarioError` naming the key, the value,
    and the valid choices or the nearest preset.
    """
    if not isinstance(spec, Mapping):
        raise ScenarioError(f"model: expected a mapping of fields, got {spec!r}")
    spec = dict(spec)
    spec.pop("family", None)
    preset = spec.pop("preset", None)
    merged: dict[str, Any] = dict(defaults or {})
    if preset is not None:
        if preset not in presets:
            raise ScenarioError(
                unknown_message(f"{family} preset", preset, list(presets), where="model.preset")
            )
        merged.update(presets[preset])
        merged.setdefault("name", preset)
    fields = cls.model_fields
    for key in spec:
        if key not in fields:
            raise ScenarioError(
                unknown_message(
                    f"{family} model field",
                    key,
                    [f for f in fields if f != "name"],
                    where=f"model.{key}",
                )
            )
    merged.update(spec)
    merged.setdefault("name", family)
    limits = getattr(cls, "SIZE_LIMITS", SIZE_LIMITS)
    check_sizes(merged, limits, family)  # before a validator loops over a dimension
    try:
        cfg = cls.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _fmt_loc(err.get("loc", ()))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        if err.get("type") == "missing":
            near = ", ".join(sorted(presets)) or "(none)"
            raise ScenarioError(
                f"model.{loc}: family {family!r} needs field {loc!r} (or a `preset`: {near})"
            ) from None
        got = err.get("input")
        where = f"model.{loc}" if loc else "model"
        extra = "" if loc == "" else f" (got {got!r})"
        raise ScenarioError(f"{where}: {msg}{extra}") from None
    check_sizes({k: getattr(cfg, k, None) for k in limits}, limits, family)
    return cfg, preset


# --- training-step ops ----------------------------------------------------------------


def backward_op(op: Op) -> list[Op]:
    """The backward of one forward op, as the ops a backend prices.

    A GEMM (or a convolution lowered to one) of dims ``(m, n, k)`` — ``Y[m,n] = X[m,k]·W[k,n]``
    — becomes two GEMMs of its own FLOPs each, with their own shapes, because tiling and
    wave quantization depend on them: the data gradient ``dX[m,k] = dY·Wᵀ`` (dims
    ``(m, k, n)``) reads the output gradient and the weights and writes ``dX``; the weight
    gradient ``dW[k,n] = Xᵀ·dY`` (dims ``(k, n, m)``) reads the inputs and the output
    gradient and writes ``dW``. Other ops cost twice their forward FLOPs in one op, read
    their inputs and the output gradient and write input gradients. A collective repeats
    (Megatron's backward all-reduce mirrors the forward one).
    """
    if op.kind is OpKind.COLLECTIVE:
        return [_renamed(op, BACKWARD)]
    if op.kind in (OpKind.MATMUL, OpKind.CONV) and len(op.dims) >= 3:
        m, n, k = (int(d) for d in op.dims[:3])
        if op.param_bytes > 0:
            w_bytes = op.param_bytes
        else:  # two activations: split the reads by operand size (m·k vs k·n)
            w_bytes = op.bytes_read * n / (m + n) if m + n else 0.0
        x_bytes = max(0.0, op.bytes_read - w_bytes)
        y_bytes = op.bytes_written
        dx = replace(
            op,
            name=f"{BACKWARD}{op.name}.dx",
            bytes_read=y_bytes + w_bytes,
            bytes_written=x_bytes,
            dims=(m, k, n),
        )
        dw = replace(
            op,
            name=f"{BACKWARD}{op.name}.dw",
            bytes_read=x_bytes + y_bytes,
            bytes_written=w_bytes,
            param_bytes=0.0,
            dims=(k, n, m),
        )
        return [dx, dw]
    return [
        Op(
            name=f"{BACKWARD}{op.name}",
            kind=op.kind,
            flops=2 * op.flops,
            bytes_read=op.bytes_read + op.bytes_written,
            bytes_written=op.bytes_read,
            param_bytes=op.param_bytes,
            dims=op.dims,
            batch=op.batch,
            count=op.count,
            dtype=op.dtype,
            layer=op.layer,
            attrs=op.attrs,
        )
    ]


def _renamed(op: Op, prefix: str) -> Op:
    return Op(
        name=f"{prefix}{op.name}",
        kind=op.kind,
        flops=op.flops,
        bytes_read=op.bytes_read,
        bytes_written=op.bytes_written,
        param_bytes=op.param_bytes,
        dims=op.dims,
        batch=op.batch,
        count=op.count,
        dtype=op.dtype,
        collective=op.collective,
        comm_bytes=op.comm_bytes,
        group=op.group,
        layer=op.layer,
        attrs=op.attrs,
    )


def backward_ops(ops: Iterable[Op]) -> list[Op]:
    """Backward ops of a forward op list, in reverse order."""
    return [b for o in reversed(list(ops)) for b in backward_op(o)]


def recompute_ops(ops: Iterable[Op]) -> list[Op]:
    """The extra forward work of activation recomputation (ops renamed ``recompute.*``)."""
    return [_renamed(o, RECOMPUTE) for o in ops]


def adam_op(params: float, dtype: str, parallel: Parallelism | None = None) -> Op:
    """One Adam step over ``params`` parameters held by this device.

    Reads parameters and gradients (at ``dtype``), both fp32 moments and, for a 16/8-bit
    ``dtype``, the fp32 master copy; writes parameters, moments and master. With ZeRO
    (``parallel.zero >= 1``) each data-parallel rank updates only its ``1/data`` share.
    """
    par = parallel or Parallelism()
    e = float(dtype_bytes(dtype))
    master = 4.0 if e < 4 else 0.0
    n = params / par.data if par.zero >= 1 else params
    return Op(
        name="optimizer.adam",
        kind=OpKind.OPTIMIZER,
        flops=ADAM_FLOPS_PER_PARAM * n,
        bytes_read=n * (2 * e + 8 + master),
        bytes_written=n * (e + 8 + master),
        param_bytes=n * e,
        dims=(max(1, math.ceil(n)),),
        dtype=dtype,
        layer="optimizer",
    )


def collective(
    name: str, kind: Collective, nbytes: float, group: int, count: int, dtype: str, layer: str = ""
) -> Op:
    """A collective op of ``nbytes`` payload per device over ``group`` devices."""
    return Op(
        name=name,
        kind=OpKind.COLLECTIVE,
        collective=kind,
        comm_bytes=nbytes,
        group=group,
        count=count,
        dtype=dtype,
        layer=layer,
    )


# --- eager calls ----------------------------------------------------------------------


class EagerCounted(ModelGraph):
    """Base of this plugin's models: :meth:`ModelGraph.eager_calls` counted from a
    ``meta`` trace of the model's own module (torch is imported on the first count)."""

    def eager_calls(self, shape: Shape) -> EagerCalls:
        """The view ops and module calls one eager step of ``shape`` makes."""
        from xpusim.plugins.models.tracing import count_eager_calls

        return count_eager_calls(self, shape)


# --- graphs from a trace ---------------------------------------------------------------


class TracedModelGraph(EagerCounted):
    """A model whose graphs come from tracing its real module on ``meta``.

    Subclasses give :meth:`_make_module` and :meth:`example_inputs`. FORWARD graphs are
    the trace (cached per shape); TRAIN graphs add the backward of every op
    (:func:`backward_op`), ``recompute: full`` one more forward, and an Adam step.
    Data parallelism needs nothing from the graph; tensor and pipeline parallelism are not
    modelled for traced models and raise :class:`~xpusim.engine.errors.UnsupportedError`.
    """

    family_name = ""
    model_kind = "vision"

    def __init__(self, name: str, dtype: str, config: Mapping[str, Any]) -> None:
        self._name = name
        self.dtype = dtype
        self.config = dict(config)
        self._meta: Any = None
        self._traces: dict[Any, Any] = {}
        self._graphs: dict[tuple[Shape, Parallelism | None], OpGraph] = {}
        self._info: ModelInfo | None = None
        self.unknown_ops: dict[str, int] = {}

    # subclass contract -------------------------------------------------------------

    def _make_module(self, device: str) -> Any:
        """Build the torch module on ``device`` (on ``meta`` nothing is allocated)."""
        raise NotImplementedError(self)

    def _trace_key(self, shape: Shape) -> Any:
        """What a trace depends on (the batch for fixed-size inputs)."""
        return shape.batch

    # ModelGraph ------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Static facts, counted from a meta module on first use."""
        if self._info is None:
            m = self.meta_module()
            n = float(sum(p.numel() for p in m.parameters()))
            self._info = ModelInfo(
                name=self._name,
                family=self.family_name,
                kind=self.model_kind,
                dtype=self.dtype,
                params=n,
                active_params=n,
                param_bytes=n * dtype_bytes(self.dtype),
                flops_per_token=0.0,
                config=self.config,
            )
        return self._info

    @info.setter
    def info(self, value: ModelInfo) -> None:
        self._info = value

    def module(self, device: str = "meta") -> Any:
        """A fresh ``torch.nn.Module`` on ``device``."""
        return self._make_module(device)

    def meta_module(self) -> Any:
        """The cached meta-device module used for tracing."""
        if self._meta is None:
            self._meta = self._make_module("meta")
        return self._meta

    def trace(self, shape: Shape) -> Any:
        """The (cached) :class:`~xpusim.plugins.models.tracing.Trace` of one forward pass."""
        from xpusim.plugins.models.tracing import trace_module

        key = self._trace_key(shape)
        if key not in self._traces:
            tr = trace_module(self.meta_module(), self.example_inputs(shape, "meta"), self.dtype)
            self._traces[key] = tr
            for n, c in tr.unknown_ops.items():
                self.unknown_ops[n] = max(self.unknown_ops.get(n, 0), c)
        return self._traces[key]

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """The FORWARD or TRAIN graph of ``shape`` on one device of a data-parallel plan."""
        key = (shape, parallel)
        g = self._graphs.get(key)
        if g is None:
            g = self._build(shape, parallel)
            self._graphs[key] = g
        return g

    def _build(self, shape: Shape, parallel: Parallelism | None) -> OpGraph:
        from xpusim.plugins.models.tracing import graph_from_trace

        par = parallel or Parallelism()
        if par.tensor > 1 or par.pipeline > 1:
            raise UnsupportedError(
                f"model {self._name!r} ({self.family_name}) is traced, not parametric: it "
                f"runs data parallel only, not tensor={par.tensor} pipeline={par.pipeline}. "
                "Use parallelism: {data: N}."
            )
        if shape.phase not in (Phase.FORWARD, Phase.TRAIN):
            raise UnsupportedError(
                f"model {self._name!r} ({self.family_name}) has no {shape.phase.value} phase; "
                "it runs forward (inference) and train steps"
            )
        fwd = graph_from_trace(self.trace(shape), Phase.FORWARD, shape, self.dtype)
        if shape.phase is Phase.FORWARD:
            return fwd
        ops = list(fwd.ops)
        if shape.recompute == "full":
            ops += recompute_ops(fwd.ops)
        ops += backward_ops(fwd.ops)
        ops.append(adam_op(self.info.params, self.dtype, par))
        return OpGraph(
            phase=Phase.TRAIN, ops=tuple(ops), shape=shape, dtype=self.dtype, notes=fwd.notes
        )


def shape_or_error(factory: Callable[[], Any], what: str) -> Any:
    """Call ``factory`` turning any exception into a :class:`ScenarioError` about ``what``
    carrying the first line of the original error."""
    try:
        return factory()
    except ScenarioError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScenarioError(f"{what}: {type(exc).__name__}: {first}") from None
