"""Validate the GPU GEMM cost model against measured H100 kernel times, and check its fit.

The points come from ``calibrations/points/vidur-h100-fp16-linear.points.json``: per-kernel
medians of fp16 linear layers (one cuBLAS GEMM each) that Vidur (MLSys 2024) profiled on an
H100 and published in its repository; the file says which rows, how each maps to a GEMM
shape, and why it is attached to ``h100-sxm``. Three comparisons are printed:

1. **defaults**: :class:`xpusim.plugins.gpu.efficiency.GpuEfficiency` as shipped (stated
   assumptions, no measurement) against every point;
2. **fitted, in sample**: the parameters ``xpusim calibrate --backend gpu --points`` fits to
   every point, against the same points;
3. **fitted, held out**: parameters fitted to the points whose label does *not* start with
   ``--holdout`` (default ``phi-2``: fit on InternLM-20B's shapes), checked on those that do
   (phi-2's, a different hidden size and MLP width);
4. **public kernel fit, held out**: the device's defaults fitted to the shared public
   kernel tables (``plugins/gpu/kernel_fits.yaml``, ``benchmarks/fit_kernels.py``), which
   never saw these points, against every point;
5. **MI355X small-M GEMMs, held out**: the public kernel fit of ``mi355x`` (its best-shape
   asymptote; bandwidth and kernel overhead inherited from MI300X and H100) against the
   BF16 decode GEMMs of ``aiter_flydsl_decode_gemm_latency_mi355x`` (K = 7,168, N = 64 to
   1,024, M = 1 to 128): AITER's FlyDSL kernel and the fastest generic library kernel
   (hipBLASLt, Triton, assembly) of each shape. Another vendor's small-M regime, where a
   GEMM is bound by its weight bytes and its fixed cost.

Each part prints the median and maximum |error| overall and per regime: ``m <= 64``
(decode-sized GEMMs, bound by memory and kernel overhead), ``64 < m < 1024`` and
``m >= 1024`` (prefill-sized, bound by the tensor rate). With ``--rows`` every point is
listed.

Usage::

    python benchmarks/validate_gpu_kernels.py [--points FILE] [--holdout PREFIX] [--rows]
                                              [--json OUT]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.device import DeviceSpec  # noqa: E402
from xpusim.engine.graph import OpKind  # noqa: E402
from xpusim.plugins.gpu import points as points_mod  # noqa: E402
from xpusim.plugins.gpu.builtin_params import builtin_params  # noqa: E402
from xpusim.plugins.gpu.catalog import catalog  # noqa: E402
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency  # noqa: E402
from xpusim.plugins.gpu.kernel_fits import fitted_params  # noqa: E402
from xpusim.plugins.gpu.measure import fit_params, fit_report  # noqa: E402
from xpusim.plugins.gpu.points import Point, Points, gemm_op  # noqa: E402

DEFAULT_POINTS = REPO / "calibrations" / "points" / "vidur-h100-fp16-linear.points.json"
KERNELS = REPO.parent / "shared" / "reference" / "kernels.yaml"
REGIMES = (("m<=64", 1, 64), ("64<m<1024", 65, 1023), ("m>=1024", 1024, 1 << 62))


def _stats(errs: Sequence[float]) -> dict[str, float | int]:
    a = [abs(e) for e in errs]
    if not a:
        return {"n": 0}
    return {"n": len(a), "median_abs_error": statistics.median(a), "max_abs_error": max(a)}


def _part(
    name: str, spec: DeviceSpec, pts: Sequence[Point], eff: GpuEfficiency, rows: bool
) -> dict[str, Any]:
    rep = fit_report(spec, pts, eff)
    out: dict[str, Any] = {"part": name, "all": _stats([e for _p, _t, e in rep])}
    line = f"{name:<22} all {_fmt(out['all'])}"
    gemm = [(p, e) for p, _t, e in rep if p.op.kind is OpKind.MATMUL]
    for label, lo, hi in REGIMES:
        st = _stats([e for p, e in gemm if lo <= p.op.dims[0] <= hi])
        out[label] = st
        line += f" | {label} {_fmt(st)}"
    attn = [e for p, _t, e in rep if p.op.kind is OpKind.ATTENTION]
    if attn:
        out["attention"] = _stats(attn)
        line += f" | attention {_fmt(out['attention'])}"
    print(line)
    if rows:
        for p, t, e in rep:
            print(
                f"    {p.label:<48} {p.op.dims[0]:>5}x{p.op.dims[1]:>5}x{p.op.dims[2]:>5} "
                f"measured {p.seconds * 1e6:8.1f} us  predicted {t * 1e6:8.1f} us  {e:+6.1%}"
            )
    out["rows"] = [
        {
            "label": p.label,
            "m": p.op.dims[0],
            "n": p.op.dims[1],
            "k": p.op.dims[2],
            "measured_s": p.seconds,
            "predicted_s": t,
            "error": e,
        }
        for p, t, e in rep
    ]
    return out


def _fmt(st: dict[str, Any]) -> str:
    if not st.get("n"):
        return "(none)"
    return f"n={st['n']} median {st['median_abs_error']:.1%} max {st['max_abs_error']:.1%}"


def _subset(pts: Points, keep: Sequence[Point]) -> Points:
    return replace(pts, gemm=tuple(keep), attention=())


def mi355x_small_m(kernels: Path, rows: bool) -> dict[str, Any]:
    """The public kernel fit of ``mi355x`` against the small-M BF16 GEMM latencies of
    ``aiter_flydsl_decode_gemm_latency_mi355x`` (part 5 of the module docstring)."""
    entry = next(
        e
        for e in yaml.safe_load(kernels.read_text(encoding="utf-8"))
        if e["id"] == "aiter_flydsl_decode_gemm_latency_mi355x"
    )
    spec = catalog()["mi355x"]
    eff = replace(GpuEfficiency(), **{k: v for k, (v, _how) in fitted_params(spec.name).items()})
    cost = GpuCostModel(spec, eff)
    out: dict[str, Any] = {"part": "mi355x small-M, held out", "rows": []}
    errs: dict[str, list[float]] = {"flydsl_us": [], "best_baseline_us": []}
    for r in entry["rows"]:
        m, n = int(r["M"]), int(r["N"])
        t = cost(gemm_op(m, n, 7168, "bf16")).seconds
        row = {"m": m, "n": n, "k": 7168, "predicted_s": t}
        for col, acc in errs.items():
            acc.append(t / (float(r[col]) * 1e-6) - 1.0)
            row[col] = float(r[col])
        out["rows"].append(row)
        if rows:
            print(
                f"    {m:>4}x{n:>5}x7168 FlyDSL {r['flydsl_us']:5.1f} us  best library "
                f"{r['best_baseline_us']:5.1f} us  predicted {t * 1e6:5.1f} us"
            )
    line = "mi355x small-M, held out"
    for col, label in (("flydsl_us", "FlyDSL"), ("best_baseline_us", "best library")):
        out[label] = _stats(errs[col])
        line += f" | against {label} {_fmt(out[label])}"
    print(line)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the five comparisons and print (and optionally write) their figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=Path, default=DEFAULT_POINTS)
    ap.add_argument("--holdout", default="phi-2", help="label prefix of the held-out points")
    ap.add_argument("--rows", action="store_true", help="list every point")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/out/validate_gpu_kernels.json")
    ap.add_argument("--kernels", type=Path, default=KERNELS, help="shared reference kernels")
    args = ap.parse_args(argv)

    pts = points_mod.load(args.points)
    spec = catalog()[pts.device]
    print(
        f"{len(pts.gemm)} measured GEMMs and {len(pts.attention)} attention kernels on "
        f"{spec.name} from {args.points.name}"
    )
    print(f"source: {pts.source}")
    parts = []
    default = GpuEfficiency()
    base = builtin_params(spec)[0]
    every = (*pts.gemm, *pts.attention)
    parts.append(_part("defaults", spec, every, default, args.rows))
    fitted = fit_params(spec, pts.for_fit(), base)
    parts.append(_part("fitted, in sample", spec, every, replace(base, **fitted), args.rows))
    held = [p for p in pts.gemm if p.label.startswith(args.holdout)]
    train = [p for p in pts.gemm if not p.label.startswith(args.holdout)]
    held_fit: dict[str, float] = {}
    if held and train:
        held_fit = fit_params(spec, _subset(pts, train).for_fit(), base)
        parts.append(
            _part(
                f"fitted, held out ({len(held)})",
                spec,
                held,
                replace(base, **held_fit),
                args.rows,
            )
        )
    if fitted_params(spec.name):
        parts.append(
            _part(
                "public kernel fit, held out",
                spec,
                every,
                base,
                args.rows,
            )
        )
    if args.kernels.exists():
        parts.append(mi355x_small_m(args.kernels, args.rows))
    print("fitted to all points: " + ", ".join(f"{k}={v:.4g}" for k, v in fitted.items()))
    if held_fit:
        print(
            f"fitted without {args.holdout!r}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in held_fit.items())
        )
    result = {
        "points": str(
            args.points.relative_to(REPO) if args.points.is_relative_to(REPO) else args.points
        ),
        "device": spec.name,
        "fitted": fitted,
        "fitted_without_holdout": held_fit,
        "parts": parts,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
