"""Measured GPU kernel points: the raw evidence a GPU calibration is fitted to.

A points file is JSON (``format: xpusim-gpu-points/1``)::

    {
      "format": "xpusim-gpu-points/1",
      "device": "h100-sxm",
      "measured_on": "1x NVIDIA H100 80GB HBM3 (132 SMs), CUDA 12.4, torch 2.4",
      "date": "2026-11-22T10:00:00Z",
      "source": "xpusim calibrate --backend gpu --out h100.json",
      "copy_bytes_per_s": 2.9e12,          # optional: a streaming copy's rate
      "kernel_overhead_s": 2.1e-6,         # optional: an empty kernel's cost
      "gemm": [{"m": 512, "n": 4096, "k": 4096, "dtype": "bf16", "seconds": 6.1e-5,
                "label": "optional words"}],
      "attention": [{"bh": 32, "q": 2048, "kv": 2048, "d": 128, "dtype": "bf16",
                     "seconds": 4.2e-4, "causal": true,     # causal: optional, false
                     "pass": "backward"}]   # pass: optional, forward
    }

An attention point with ``"pass": "backward"`` times the backward of that call through
PyTorch's ``scaled_dot_product_attention`` (the gradients of Q, K and V from the output's
gradient), which the calibration prices as the ``torch-sdpa`` kernel build
(:data:`~xpusim.plugins.gpu.efficiency.ATTENTION_KERNELS`) and fits
``sdpa_backward_ratio`` to.

Other top-level fields (``launch_gap_s``, ``decode_step``, ``memory_total_bytes`` ...
that ``benchmarks/gpu_measure.sh`` records) are kept as they are in :attr:`Points.extra`.

``xpusim calibrate --backend gpu`` writes one beside every calibration it measures, and
``xpusim calibrate --backend gpu --points FILE`` fits a calibration from one on any machine:
from a file measured earlier, or from kernel timings someone published (the shipped
``calibrations/points/`` files say where theirs come from). Every problem with a file is
an :class:`~xpusim.engine.errors.XpusimError` naming the file, the entry and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Op, OpKind, dtype_bytes
from xpusim.engine.model import BACKWARD

FORMAT = "xpusim-gpu-points/1"
"""The ``format`` field every points file carries."""

_HEADER = ("device", "measured_on", "date", "source")
_GEMM_DIMS = ("m", "n", "k")
_ATTN_DIMS = ("bh", "q", "kv", "d")
_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
PASSES = ("forward", "backward")
"""Passes an attention point may time."""


def gemm_op(m: int, n: int, k: int, dtype: str) -> Op:
    """The :class:`Op` of one ``m x n x k`` GEMM (A, B and C once)."""
    b = dtype_bytes(dtype)
    return Op(
        "gemm",
        OpKind.MATMUL,
        flops=2.0 * m * n * k,
        bytes_read=(m * k + k * n) * b,
        bytes_written=m * n * b,
        dims=(m, n, k),
        dtype=dtype,
    )


def attention_op(bh: int, q: int, kv: int, d: int, dtype: str, causal: bool = False) -> Op:
    """The :class:`Op` of one flash-attention call over ``bh`` (sequence, head) pairs,
    ``causal`` with the queries at the end of the keys (only attended pairs count)."""
    b = dtype_bytes(dtype)
    pairs = float(q * kv)
    if causal:
        pairs = q * kv - q * (q - 1) / 2 if kv >= q else kv * (kv + 1) / 2
    return Op(
        "attention",
        OpKind.ATTENTION,
        flops=4.0 * bh * pairs * d,
        bytes_read=bh * (q + 2 * kv) * d * b,
        bytes_written=bh * q * d * b,
        dims=(q, kv, d),
        batch=bh,
        dtype=dtype,
        attrs=(("causal", 1.0),) if causal else (),
    )


def attention_backward_op(op: Op) -> Op:
    """The backward of the attention call ``op`` as a training graph holds it (named with
    the backward prefix, twice the forward's FLOPs; the cost model prices the kernel's
    five GEMMs)."""
    return replace(op, name=f"{BACKWARD}{op.name}", flops=2.0 * op.flops)


def is_backward(op: Op) -> bool:
    """Whether ``op`` is a backward op (its name has the backward prefix)."""
    return op.name.startswith(BACKWARD)


@dataclass(frozen=True)
class Point:
    """One timed kernel: its op (shape and dtype), seconds per call, and a label."""

    op: Op
    seconds: float
    label: str = ""


@dataclass(frozen=True)
class Points:
    """A points file in memory (see the module docstring for the fields)."""

    device: str
    measured_on: str
    date: str
    source: str
    gemm: tuple[Point, ...] = ()
    attention: tuple[Point, ...] = ()
    copy_bytes_per_s: float | None = None
    kernel_overhead_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def for_fit(self) -> dict[str, Any]:
        """The mapping :func:`xpusim.plugins.gpu.measure.fit_params` takes."""
        out: dict[str, Any] = {
            "gemm": [(p.op, p.seconds) for p in self.gemm],
            "attention": [(p.op, p.seconds) for p in self.attention],
        }
        if self.copy_bytes_per_s is not None:
            out["copy_bytes_per_s"] = self.copy_bytes_per_s
        if self.kernel_overhead_s is not None:
            out["kernel_overhead_s"] = self.kernel_overhead_s
        if isinstance(self.extra.get("elementwise"), Mapping):
            out["elementwise"] = self.extra["elementwise"]
        return out

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""

        def entry(p: Point) -> dict[str, Any]:
            names: Sequence[str]
            vals: Sequence[int]
            if p.op.kind is OpKind.MATMUL:
                names, vals = _GEMM_DIMS, p.op.dims
            else:
                names, vals = _ATTN_DIMS, (p.op.batch, *p.op.dims)
            row: dict[str, Any] = dict(zip(names, (int(v) for v in vals), strict=True))
            row.update(dtype=p.op.dtype, seconds=p.seconds)
            if p.op.kind is OpKind.ATTENTION and p.op.attr("causal", 0.0) > 0:
                row["causal"] = True
            if p.op.kind is OpKind.ATTENTION and is_backward(p.op):
                row["pass"] = "backward"
            if p.label:
                row["label"] = p.label
            return row

        out: dict[str, Any] = {
            "format": FORMAT,
            "device": self.device,
            "measured_on": self.measured_on,
            "date": self.date,
            "source": self.source,
            **dict(self.extra),
        }
        if self.copy_bytes_per_s is not None:
            out["copy_bytes_per_s"] = self.copy_bytes_per_s
        if self.kernel_overhead_s is not None:
            out["kernel_overhead_s"] = self.kernel_overhead_s
        out["gemm"] = [entry(p) for p in self.gemm]
        out["attention"] = [entry(p) for p in self.attention]
        return out


def _number(
    where: str, name: str, value: Any, *, integer: bool = False, zero_ok: bool = False
) -> Any:
    """``value`` as a finite number above zero (or at least zero with ``zero_ok``, whole
    with ``integer``); anything else raises naming ``where`` and ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value)) and (float(value) >= 0 if zero_ok else value > 0)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = (
            "a number >= 0"
            if zero_ok
            else "a positive whole number"
            if integer
            else "a positive number"
        )
        raise XpusimError(f"{where}: {name!r} must be {kind}, got {value!r}.")
    return int(value) if integer else float(value)


def _entries(where: str, raw: Mapping[str, Any], key: str, dims: Sequence[str]) -> list[Point]:
    rows = raw.get(key, [])
    if not isinstance(rows, list):
        raise XpusimError(f"{where}: {key!r} must be a list of measured points.")
    out = []
    for i, row in enumerate(rows):
        at = f"{where}: {key}[{i}]"
        if not isinstance(row, dict):
            raise XpusimError(f"{at} must be an object with {', '.join(dims)}, dtype, seconds.")
        missing = [f for f in (*dims, "dtype", "seconds") if f not in row]
        if missing:
            raise XpusimError(
                f"{at} lacks {', '.join(missing)}; a {key} point records "
                f"{', '.join(dims)}, dtype and seconds."
            )
        vals = [_number(at, d, row[d], integer=True) for d in dims]
        dtype = row["dtype"]
        if dtype not in _DTYPES:
            raise XpusimError(f"{at}: 'dtype' must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
        secs = _number(at, "seconds", row["seconds"])
        if key == "gemm":
            op = gemm_op(vals[0], vals[1], vals[2], dtype)
        else:
            causal = row.get("causal", False)
            if not isinstance(causal, bool):
                raise XpusimError(f"{at}: 'causal' must be true or false, got {causal!r}.")
            op = attention_op(vals[0], vals[1], vals[2], vals[3], dtype, causal)
            pass_ = row.get("pass", "forward")
            if pass_ not in PASSES:
                raise XpusimError(
                    f"{at}: 'pass' must be one of {', '.join(PASSES)}, got {pass_!r}."
                )
            if pass_ == "backward":
                op = attention_backward_op(op)
        out.append(Point(op, secs, str(row.get("label", ""))))
    return out


def load(path: str | Path) -> Points:
    """Read and check a points file; every problem raises
    :class:`~xpusim.engine.errors.XpusimError` naming the file and the entry."""
    p = Path(path)
    where = f"points file {str(p)!r}"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XpusimError(f"{where} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise XpusimError(f"{where} is not valid JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise XpusimError(f"{where} must hold a JSON object.")
    if raw.get("format") != FORMAT:
        raise XpusimError(
            f"{where}: 'format' must be {FORMAT!r}, got {raw.get('format')!r}; is this a "
            f"calibration file rather than the points it was fitted to?"
        )
    missing = [k for k in _HEADER if not raw.get(k)]
    if missing:
        raise XpusimError(
            f"{where} lacks {', '.join(missing)}; a points file says which device, where, "
            f"when and by what the times were measured."
        )
    gemm = _entries(where, raw, "gemm", _GEMM_DIMS)
    attn = _entries(where, raw, "attention", _ATTN_DIMS)
    copy = raw.get("copy_bytes_per_s")
    ovh = raw.get("kernel_overhead_s")
    if not gemm and not attn and copy is None:
        raise XpusimError(f"{where} has no measured points: give gemm or attention entries.")
    known = {"format", *_HEADER, "gemm", "attention", "copy_bytes_per_s", "kernel_overhead_s"}
    return Points(
        device=str(raw["device"]),
        measured_on=str(raw["measured_on"]),
        date=str(raw["date"]),
        source=str(raw["source"]),
        gemm=tuple(gemm),
        attention=tuple(attn),
        copy_bytes_per_s=None if copy is None else _number(where, "copy_bytes_per_s", copy),
        kernel_overhead_s=(
            None if ovh is None else _number(where, "kernel_overhead_s", ovh, zero_ok=True)
        ),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def save(points: Points, path: str | Path) -> Path:
    """Write ``points`` as JSON to ``path`` and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(points.to_json(), indent=1) + "\n", encoding="utf-8")
    return p
