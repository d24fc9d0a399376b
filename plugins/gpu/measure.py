"""Measure a CUDA GPU's kernels and fit the GPU efficiency model to them.

``xpusim calibrate --backend gpu [--out FILE]`` (through the GPU backend's ``calibrate``
method, which delegates to :func:`calibrate_gpu`) on a machine with CUDA runs the
microbenchmarks of :mod:`xpusim.plugins.gpu.microbench` (the same ones
``benchmarks/gpu_measure.sh`` runs: bf16 and fp8 GEMMs, SDPA prefill and decode, a
streaming copy, launch gaps, a small decode step) and fits them (:func:`fit_params`): the
copy rate sets ``memory_fraction``, the back-to-back tiny kernel ``kernel_overhead_s``,
the GEMMs ``tensor_fraction`` and ``lowp_tensor_fraction`` (a grid search minimising the
squared log error of :class:`~xpusim.plugins.gpu.efficiency.GpuCostModel`'s prediction,
tile and wave quantization included), the attention calls ``attention_fraction`` and the
backward of SDPA's attention ``sdpa_backward_ratio`` (priced as the ``torch-sdpa``
kernel build, since it is PyTorch's backward that was timed). The raw
measurements are kept beside the calibration as a points file
(:mod:`xpusim.plugins.gpu.points`, ``<out>.points.json``) so the fit can be redone or
checked later.

``xpusim calibrate --backend gpu --points FILE`` (:func:`calibrate_from_points`) skips the
measuring and fits the same model to a points file on any machine, with or without CUDA:
one written by an earlier calibration, or kernel times someone published. When a file has
no streaming-copy rate or no kernel-overhead figure, those two parameters are fitted to
the GEMM points too (the small-``m`` GEMMs of a decode step are bound by memory and
overhead, the large ones by the tensor rate).

The fit (:func:`fit_params`) is plain Python over measured points, so it is tested without
a GPU on points generated from known parameters. The result is a
:class:`xpusim.plugins.gpu.calibration.Calibration` naming the device, where it was measured
(GPU name, driver/CUDA, torch), the date and the command.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Op, OpKind
from xpusim.plugins.gpu import microbench
from xpusim.plugins.gpu import points as points_mod
from xpusim.plugins.gpu.builtin_params import builtin_params
from xpusim.plugins.gpu.calibration import Calibration, save
from xpusim.plugins.gpu.efficiency import LOW_PRECISION, GpuCostModel, GpuEfficiency
from xpusim.plugins.gpu.microbench import GEMM_SHAPES, match_device
from xpusim.plugins.gpu.points import Point, Points, attention_op, gemm_op, is_backward

_FRACTIONS = tuple(round(0.20 + 0.01 * i, 2) for i in range(81))  # 0.20 ... 1.00
_MEMORY_FRACTIONS = tuple(round(0.30 + 0.01 * i, 2) for i in range(71))  # 0.30 ... 1.00
_OVERHEADS = tuple(0.25e-6 * i for i in range(81))  # 0 ... 20 us
_RATIOS = tuple(round(0.20 + 0.01 * i, 2) for i in range(181))  # 0.20 ... 2.00

__all__ = [
    "GEMM_SHAPES",
    "attention_op",
    "calibrate_from_points",
    "calibrate_gpu",
    "fit_params",
    "fit_report",
    "gemm_op",
    "match_device",
]


def _log_err(model: GpuCostModel, pts: Sequence[tuple[Op, float]]) -> float:
    return sum((math.log(model(op).seconds) - math.log(t)) ** 2 for op, t in pts) / len(pts)


def _kernel(op: Op) -> str:
    """The attention kernel build a timed ``op`` ran: PyTorch SDPA's (the microbenchmarks
    time attention through ``scaled_dot_product_attention`` over contiguous tensors: its
    backward at ``sdpa_backward_ratio``, its decode without a paged kernel's launch
    latency); a forward prices as the default build's either way."""
    return "torch-sdpa" if op.kind is OpKind.ATTENTION else "flash-attn"


def _with(eff: GpuEfficiency, changes: Mapping[str, Any]) -> GpuEfficiency:
    return replace(eff, **dict(changes))


def _pairs(points: Mapping[str, Any], key: str) -> list[tuple[Op, float]]:
    out = []
    for p in points.get(key, []):
        op, t = (p["op"], p["seconds"]) if isinstance(p, Mapping) else p
        out.append((op, float(t)))
    return out


def _line_search(
    device: DeviceSpec,
    eff: GpuEfficiency,
    name: str,
    grid: Sequence[float],
    pts: Sequence[tuple[Op, float]],
    kernel: str = "flash-attn",
) -> float:
    return min(
        grid,
        key=lambda v: _log_err(
            GpuCostModel(device, _with(eff, {name: v}), attention_kernel=kernel), pts
        ),
    )


def fit_params(
    device: DeviceSpec, points: Mapping[str, Any], base: GpuEfficiency | None = None
) -> dict[str, float]:
    """Fit :class:`GpuEfficiency` to measured ``points``: ``copy_bytes_per_s`` (a number,
    optional), ``kernel_overhead_s`` (a number, optional), ``gemm`` and ``attention``
    (lists of ``{"op": Op, "seconds": t}`` or ``(Op, t)``), starting from ``base`` (the
    parameters the fitted ones are applied over at run time:
    :func:`~xpusim.plugins.gpu.builtin_params.builtin_params`; the stated defaults when
    ``None``).

    A measured copy rate sets ``memory_fraction`` directly. A measured
    ``kernel_overhead_s`` (an empty kernel's back-to-back cost) is the floor of the fitted
    one: a GEMM's fixed cost also holds its prologue and tail, so with GEMM points the
    overhead is fitted above that floor, and without them it is taken as measured.
    ``tensor_fraction`` and whichever of the two is not set are fitted to the GEMM points
    by coordinate descent over fixed grids minimising the mean squared log error. 8-bit
    GEMM points (fp8, int8) then fit ``lowp_tensor_fraction`` with those held (a file of
    8-bit points only fits the 16-bit parameters to them instead), and
    ``attention_fraction`` is fitted to the forward attention points (causal ones priced
    with their diagonal blocks) with the GEMM parameters held, and ``sdpa_backward_ratio``
    to the backward ones (PyTorch SDPA's backward, priced as the ``torch-sdpa`` build)
    with that fraction held. An ``elementwise`` entry (the
    kernels ``benchmarks/gpu_measure.sh`` times on contiguous tensors and on views) sets
    ``strided_elementwise_fraction`` (:func:`strided_fraction`)."""
    params: dict[str, float] = {}
    bw = float(points.get("copy_bytes_per_s") or 0.0)
    if bw > 0:
        params["memory_fraction"] = min(1.0, max(0.05, bw / device.memory_bw.value))
    ovh = points.get("kernel_overhead_s")
    floor = max(0.0, float(ovh)) if ovh is not None else 0.0
    if ovh is not None:
        params["kernel_overhead_s"] = floor
    eff = _with(base or GpuEfficiency(), params)
    every = _pairs(points, "gemm")
    gemm = [(op, t) for op, t in every if op.dtype not in LOW_PRECISION]
    lowp = [(op, t) for op, t in every if op.dtype in LOW_PRECISION]
    if not gemm:
        gemm, lowp = lowp, []
    if gemm:
        free: list[tuple[str, Sequence[float]]] = [("tensor_fraction", _FRACTIONS)]
        if "memory_fraction" not in params:
            free.append(("memory_fraction", _MEMORY_FRACTIONS))
        overheads = sorted({floor, *(v for v in _OVERHEADS if v >= floor)})
        free.append(("kernel_overhead_s", overheads))
        for _round in range(8):
            changed = False
            for name, grid in free:
                best = _line_search(device, eff, name, grid, gemm)
                if best != getattr(eff, name):
                    eff = _with(eff, {name: best})
                    changed = True
            if not changed:
                break
        params.update({name: float(getattr(eff, name)) for name, _grid in free})
    if lowp:
        best = _line_search(device, eff, "lowp_tensor_fraction", _FRACTIONS, lowp)
        eff = _with(eff, {"lowp_tensor_fraction": best})
        params["lowp_tensor_fraction"] = float(best)
    every_attn = _pairs(points, "attention")
    attn = [(op, t) for op, t in every_attn if not is_backward(op)]
    bwd = [(op, t) for op, t in every_attn if is_backward(op)]
    if attn:
        best = _line_search(device, eff, "attention_fraction", _FRACTIONS, attn)
        eff = _with(eff, {"attention_fraction": best})
        params["attention_fraction"] = best
    if bwd:
        best = _line_search(device, eff, "sdpa_backward_ratio", _RATIOS, bwd, "torch-sdpa")
        params["sdpa_backward_ratio"] = best
    strided = strided_fraction(points.get("elementwise"), eff.kernel_overhead_s)
    if strided is not None:
        params["strided_elementwise_fraction"] = strided
    return params


CONTIGUOUS_KERNELS = ("copy", "mul")
STRIDED_KERNELS = ("mul_chunks", "silu_chunk", "repeat_interleave")
"""The kernels of a points file's ``elementwise`` entry (``<name>_s`` seconds and
``<name>_bytes`` moved) on contiguous tensors and on views."""


def strided_fraction(entry: Any, overhead_s: float = 0.0) -> float | None:
    """``strided_elementwise_fraction`` from an ``elementwise`` entry: the median rate of
    the kernels on views over the median rate of the contiguous ones (each rate the bytes
    over the seconds less ``overhead_s``), at most 1; ``None`` when the entry lacks
    either group."""
    if not isinstance(entry, Mapping):
        return None

    def rates(names: Sequence[str]) -> list[float]:
        out = []
        for n in names:
            t, b = entry.get(f"{n}_s"), entry.get(f"{n}_bytes")
            if isinstance(t, int | float) and isinstance(b, int | float) and t > overhead_s:
                out.append(float(b) / (float(t) - overhead_s))
        return out

    flat, views = rates(CONTIGUOUS_KERNELS), rates(STRIDED_KERNELS)
    if not flat or not views:
        return None
    return min(1.0, statistics.median(views) / statistics.median(flat))


def fit_report(
    device: DeviceSpec, points: Sequence[Point], eff: GpuEfficiency | None = None
) -> list[tuple[Point, float, float]]:
    """Each point with the model's predicted seconds and the signed relative error
    ``predicted / measured - 1`` under ``eff`` (the defaults when ``None``); a backward
    attention point priced as the ``torch-sdpa`` build that ran it."""
    models = {
        kernel: GpuCostModel(device, eff or GpuEfficiency(), attention_kernel=kernel)
        for kernel in ("flash-attn", "torch-sdpa")
    }
    out = []
    for p in points:
        pred = models[_kernel(p.op)](p.op).seconds
        out.append((p, pred, pred / p.seconds - 1.0))
    return out


def _cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise XpusimError(
            f"xpusim calibrate --backend gpu needs a CUDA GPU; this machine has none visible "
            f"to torch {torch.__version__} (a CPU-only build or no device). Run it on the GPU "
            f"machine, then pass the file with --calibration FILE or options.calibration."
        )
    return torch


def measure(quick: bool = False) -> Points:
    """Run the microbenchmarks of :mod:`xpusim.plugins.gpu.microbench` on ``cuda:0`` and
    return their points (device not yet named)."""
    _cuda()
    return microbench.measure("cuda", quick)


def describe_machine() -> str:
    """GPU name, driver/CUDA and torch versions of ``cuda:0``."""
    torch = _cuda()
    props = torch.cuda.get_device_properties(0)
    return (
        f"1x {props.name} ({props.total_memory / 2**30:.0f} GiB, "
        f"{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, torch "
        f"{torch.__version__}"
    )


def points_path(calibration: str | Path) -> Path:
    """Where the points a calibration was fitted to are kept: ``<stem>.points.json``
    beside it."""
    p = Path(calibration)
    return p.with_name(p.stem + ".points.json")


def memory_note(spec: DeviceSpec, pts: Points) -> str | None:
    """A line setting the catalog's ``memory_bytes`` beside the total the measured GPU's
    runtime reported (the points' ``memory_total_bytes``) and what its CUDA context took
    (``memory_free_at_start_bytes``); None when the points hold no such figure."""
    total = pts.extra.get("memory_total_bytes")
    if not isinstance(total, int | float) or total <= 0:
        return None
    have = spec.memory_bytes.value
    line = (
        f"  memory: this GPU's runtime reported {total / 1e9:.2f} GB; the catalog holds "
        f"{have / 1e9:.2f} GB for {spec.name!r} ({have / total - 1:+.1%})"
    )
    free = pts.extra.get("memory_free_at_start_bytes")
    if isinstance(free, int | float) and 0 < free <= total:
        line += f"; the CUDA context took {(total - free) / 1e9:.2f} GB"
    return line


def _say_fit(
    say: Callable[[str], None], spec: DeviceSpec, pts: Points, params: Mapping[str, float]
) -> None:
    """Tell the fitted parameters, how well they fit the points, and the memory note."""
    say("  fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    say(_summary(spec, pts, params))
    if (note := memory_note(spec, pts)) is not None:
        say(note)


def _summary(spec: DeviceSpec, pts: Points, params: Mapping[str, float]) -> str:
    eff = _with(builtin_params(spec)[0], params)
    errs = [abs(e) for _p, _t, e in fit_report(spec, (*pts.gemm, *pts.attention), eff)]
    if not errs:
        return "  no timed kernels to check the fit against"
    return (
        f"  fit over {len(errs)} timed kernels: median |error| {statistics.median(errs):.1%}, "
        f"max {max(errs):.1%}"
    )


def calibrate_gpu(
    catalog: Mapping[str, DeviceSpec],
    out: str | Path | None = None,
    *,
    quick: bool = False,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path]:
    """Measure ``cuda:0``, fit, and write the calibration (default
    ``calibration-<device>.json`` in the working folder) and its points file beside it;
    return the calibration and its path."""
    torch = _cuda()
    say = log or (lambda s: print(s, flush=True))
    name = torch.cuda.get_device_name(0)
    spec = match_device(catalog, name)
    say(f"calibrating gpu: {name} as catalog device {spec.name!r}")
    raw = measure(quick)
    path = Path(out) if out else Path(f"calibration-{spec.name}.json")
    cmd = command or ("xpusim calibrate --backend gpu" + (f" --out {out}" if out else ""))
    when = raw.date
    pts = replace(raw, device=spec.name, measured_on=describe_machine(), source=cmd)
    params = fit_params(spec, pts.for_fit(), builtin_params(spec)[0])
    _say_fit(say, spec, pts, params)
    cal = Calibration(
        device=spec.name,
        measured_on=pts.measured_on,
        date=when,
        command=cmd,
        params=params,
        path=str(path),
    )
    save(cal, path)
    points_mod.save(pts, points_path(path))
    return cal, path


def _spec_named(catalog: Mapping[str, DeviceSpec], name: str, where: str) -> DeviceSpec:
    for spec in catalog.values():
        if name == spec.name or name in spec.aliases:
            return spec
    raise XpusimError(
        f"{where}: device {name!r} is not in the GPU catalog; known: "
        f"{', '.join(sorted(catalog))}. Name one of them in the file's 'device'."
    )


def calibrate_from_points(
    catalog: Mapping[str, DeviceSpec],
    points_file: str | Path,
    out: str | Path | None = None,
    *,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path]:
    """Fit a calibration to the points file ``points_file`` (no GPU needed) and write it
    (default ``calibration-<device>.json``); return it and its path. The calibration keeps
    the points' device, machine and date, and names the points file in its command."""
    say = log or (lambda s: print(s, flush=True))
    pts = points_mod.load(points_file)
    spec = _spec_named(catalog, pts.device, f"points file {str(points_file)!r}")
    say(
        f"fitting gpu efficiency for {spec.name!r} to {len(pts.gemm)} GEMM and "
        f"{len(pts.attention)} attention points from {points_file}"
    )
    params = fit_params(spec, pts.for_fit(), builtin_params(spec)[0])
    _say_fit(say, spec, pts, params)
    path = Path(out) if out else Path(f"calibration-{spec.name}.json")
    cmd = command or (
        f"xpusim calibrate --backend gpu --points {points_file}" + (f" --out {out}" if out else "")
    )
    cal = Calibration(
        device=spec.name,
        measured_on=f"{pts.measured_on} (points: {pts.source})",
        date=pts.date,
        command=cmd,
        params=params,
        path=str(path),
    )
    save(cal, path)
    return cal, path
