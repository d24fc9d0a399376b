"""Measure a CUDA GPU's kernels and fit the GPU efficiency model to them.

``xpusim calibrate --backend gpu [--out FILE]`` (through the GPU backend's ``calibrate``
method, which delegates to :func:`calibrate_gpu`) on a machine with CUDA:

1. **Streaming copy** (``dst.copy_(src)`` over 256 MiB-1 GiB) -> ``memory_fraction`` =
   achieved bytes/s over the catalog's memory bandwidth.
2. **Kernel overhead**: back-to-back one-element additions -> ``kernel_overhead_s``.
3. **GEMM** (``torch.mm`` in the chosen dtype) over a grid of shapes from decode GEMVs to
   large square ones -> ``tensor_fraction``, fitted by a grid search that minimises the
   squared log error of :class:`~plugins.gpu.efficiency.GpuCostModel`'s prediction (tile
   and wave quantization included) against the measured times.
4. **Attention** (``scaled_dot_product_attention``, prefill and decode shapes) ->
   ``attention_fraction`` the same way.

Times come from CUDA events around ``reps`` back-to-back calls after warm-up. The fit
(:func:`fit_params`) is plain Python over measured points, so it is tested without a GPU on
points generated from known parameters. The result is a
:class:`plugins.gpu.calibration.Calibration` naming the device, where it was measured
(GPU name, driver/CUDA, torch), the date and the command.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from engine.device import DeviceSpec
from engine.errors import XpusimError
from engine.graph import Op, OpKind, dtype_bytes
from plugins.gpu.calibration import Calibration, save
from plugins.gpu.efficiency import GpuCostModel, GpuEfficiency

GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 4096, 4096),
    (8, 4096, 4096),
    (32, 4096, 4096),
    (128, 4096, 4096),
    (512, 4096, 4096),
    (2048, 4096, 4096),
    (4096, 4096, 4096),
    (8192, 8192, 8192),
    (1024, 1024, 1024),
    (2048, 11008, 4096),
    (2048, 4096, 11008),
    (16, 14336, 4096),
    (256, 256, 256),
    (4096, 128, 4096),
    (333, 777, 1999),
)
GEMM_QUICK: tuple[tuple[int, int, int], ...] = (
    (1, 4096, 4096),
    (512, 4096, 4096),
    (4096, 4096, 4096),
)
# (sequences x heads, queries, keys, head dim)
ATTN_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (32, 2048, 2048, 128),
    (64, 512, 512, 128),
    (256, 1, 2048, 128),
    (1024, 1, 1024, 128),
    (32, 4096, 4096, 64),
    (8, 8192, 8192, 128),
)
ATTN_QUICK: tuple[tuple[int, int, int, int], ...] = ((32, 2048, 2048, 128), (256, 1, 2048, 128))

_FRACTIONS = tuple(round(0.20 + 0.01 * i, 2) for i in range(81))  # 0.20 ... 1.00


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


def attention_op(bh: int, q: int, kv: int, d: int, dtype: str) -> Op:
    """The :class:`Op` of one non-causal flash-attention call."""
    b = dtype_bytes(dtype)
    return Op(
        "attention",
        OpKind.ATTENTION,
        flops=4.0 * bh * q * kv * d,
        bytes_read=bh * (q + 2 * kv) * d * b,
        bytes_written=bh * q * d * b,
        dims=(q, kv, d),
        batch=bh,
        dtype=dtype,
    )


def _log_err(model: GpuCostModel, pts: Sequence[tuple[Op, float]]) -> float:
    return sum((math.log(model(op).seconds) - math.log(t)) ** 2 for op, t in pts) / len(pts)


def _with(eff: GpuEfficiency, changes: Mapping[str, Any]) -> GpuEfficiency:
    return replace(eff, **dict(changes))


def fit_params(device: DeviceSpec, points: Mapping[str, Any]) -> dict[str, float]:
    """Fit ``memory_fraction``, ``kernel_overhead_s``, ``tensor_fraction`` and
    ``attention_fraction`` of :class:`GpuEfficiency` to measured ``points``:
    ``copy_bytes_per_s`` (a number), ``kernel_overhead_s`` (a number), ``gemm`` and
    ``attention`` (lists of ``{"op": Op, "seconds": t}`` or ``(Op, t)``)."""

    def pairs(key: str) -> list[tuple[Op, float]]:
        out = []
        for p in points.get(key, []):
            op, t = (p["op"], p["seconds"]) if isinstance(p, Mapping) else p
            out.append((op, float(t)))
        return out

    params: dict[str, float] = {}
    base = GpuEfficiency()
    bw = float(points.get("copy_bytes_per_s", 0.0))
    if bw > 0:
        params["memory_fraction"] = min(1.0, max(0.05, bw / device.memory_bw.value))
    ovh = points.get("kernel_overhead_s")
    if ovh is not None:
        params["kernel_overhead_s"] = max(0.0, float(ovh))
    eff = _with(base, params)
    for key, name in (("gemm", "tensor_fraction"), ("attention", "attention_fraction")):
        pts = pairs(key)
        if not pts:
            continue
        best = min(
            _FRACTIONS, key=lambda f: _log_err(GpuCostModel(device, _with(eff, {name: f})), pts)
        )
        params[name] = best
        eff = _with(eff, {name: best})
    return params


def _cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise XpusimError(
            f"xpusim calibrate --backend gpu needs a CUDA GPU; this machine has none visible "
            f"to torch {torch.__version__} (a CPU-only build or no device). Run it on the GPU "
            f"machine, then pass the file with --calibration FILE or options.calibration."
        )
    return torch


def _time(torch: Any, fn: Callable[[], Any], reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) * 1e-3 / reps


def measure(
    dtype: str = "bf16", quick: bool = False, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the microbenchmarks on ``cuda:0`` (see module doc) and return the points."""
    torch = _cuda()
    say = log or (lambda _s: None)
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    dev = torch.device("cuda:0")
    n = (256 if quick else 1024) * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(src)
    t = _time(torch, partial(dst.copy_, src))
    copy_bw = 2 * n * 4 / t
    del src, dst
    one = torch.ones(1, device=dev)
    ovh = _time(torch, partial(one.add_, 1.0), reps=200)
    say(f"  copy {copy_bw / 1e9:.0f} GB/s, kernel overhead {ovh * 1e6:.1f} us")
    gemm = []
    for m, nn, k in GEMM_QUICK if quick else GEMM_SHAPES:
        a = torch.randn(m, k, dtype=tdt, device=dev)
        b = torch.randn(k, nn, dtype=tdt, device=dev)
        gemm.append(
            {"op": gemm_op(m, nn, k, dtype), "seconds": _time(torch, partial(torch.mm, a, b))}
        )
        del a, b
    attn = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for bh, q, kv, d in ATTN_QUICK if quick else ATTN_SHAPES:
        qq = torch.randn(1, bh, q, d, dtype=tdt, device=dev)
        kk = torch.randn(1, bh, kv, d, dtype=tdt, device=dev)
        vv = torch.randn(1, bh, kv, d, dtype=tdt, device=dev)
        attn.append(
            {
                "op": attention_op(bh, q, kv, d, dtype),
                "seconds": _time(torch, partial(sdpa, qq, kk, vv)),
            }
        )
        del qq, kk, vv
    return {"copy_bytes_per_s": copy_bw, "kernel_overhead_s": ovh, "gemm": gemm, "attention": attn}


def describe_machine() -> str:
    """GPU name, driver/CUDA and torch versions of ``cuda:0``."""
    torch = _cuda()
    props = torch.cuda.get_device_properties(0)
    return (
        f"1x {props.name} ({props.total_memory / 2**30:.0f} GiB, "
        f"{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, torch "
        f"{torch.__version__}"
    )


def match_device(catalog: Mapping[str, DeviceSpec], gpu_name: str) -> DeviceSpec:
    """The catalog device whose name or alias best matches the CUDA device name."""
    norm = gpu_name.lower().replace("nvidia", "").replace(" ", "").replace("-", "")
    best: tuple[int, DeviceSpec] | None = None
    for spec in catalog.values():
        for name in (spec.name, *spec.aliases):
            key = name.lower().replace(" ", "").replace("-", "")
            if key and key in norm:
                score = len(key)
                if best is None or score > best[0]:
                    best = (score, spec)
    if best is None:
        raise XpusimError(
            f"the CUDA device {gpu_name!r} matches no GPU catalog device; known: "
            f"{', '.join(sorted(catalog))}. Add it with register_devices first."
        )
    return best[1]


def calibrate_gpu(
    catalog: Mapping[str, DeviceSpec],
    out: str | Path | None = None,
    *,
    dtype: str = "bf16",
    quick: bool = False,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path]:
    """Measure ``cuda:0``, fit, and write the calibration (default
    ``calibration-<device>.json`` in the working folder); return it and its path."""
    torch = _cuda()
    say = log or (lambda s: print(s, flush=True))
    name = torch.cuda.get_device_name(0)
    spec = match_device(catalog, name)
    say(f"calibrating gpu: {name} as catalog device {spec.name!r}")
    pts = measure(dtype, quick, say)
    params = fit_params(spec, pts)
    say("  fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    path = Path(out) if out else Path(f"calibration-{spec.name}.json")
    cal = Calibration(
        device=spec.name,
        measured_on=describe_machine(),
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command or ("xpusim calibrate --backend gpu" + (f" --out {out}" if out else "")),
        params=params,
        path=str(path),
    )
    save(cal, path)
    return cal, path
