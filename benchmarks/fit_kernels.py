"""Fit per-GPU kernel efficiency to public kernel measurements, with held-out errors.

Reads the shared reference kernels file (``kernels.yaml``) and fits, per GPU where a
table exists, the :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` fractions of the
GPU cost model (the tile-and-wave GEMM, the flash-attention kernel, memory-bound ops):

* ``tensor_fraction`` — to the best-shape BF16 ``torch.matmul`` rate of
  ``mamf_bf16_matmul_multi_gpu`` (the model priced at that very shape);
* ``lowp_tensor_fraction`` — to the FP8 rate of ``mamf_fp8_matmul_multi_gpu`` (H100,
  H200, B200); on H100 the DeepGEMM FP8 GEMMs of ``deepgemm_fp8_dense_gemm_h800_2025_04``
  (H800: H100's tensor cores and HBM3) are held out to check it across shapes;
* ``memory_fraction`` — H100: half of DeepGEMM's small-M (memory-bound) FP8 GEMMs, the
  other half held out; A100, H100 PCIe and MI300X: the STREAM read kernel of
  ``rrze_gpu_stream_dram_bandwidth_multi_gpu`` at full occupancy over the catalog rate;
* ``attention_fraction`` — H100: the FlashAttention-2 forward rates of
  ``fa3_fp16_forward_h100_by_seqlen`` (head dim 64/128/256, causal or not, 512 to 16k
  tokens), even rows fitted, odd rows held out; A100: the FlashAttention-2
  forward+backward rates of ``fa2_fwd_bwd_a100_by_seqlen`` (no forward-only table), same
  split.

A GPU without a table for a parameter inherits it from the nearest fitted architecture
(``INHERIT``), and the output says so. Writes ``plugins/gpu/kernel_fits.yaml``, which the
GPU backend applies as each device's defaults.

Usage::

    python benchmarks/fit_kernels.py [--kernels PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from scipy.optimize import brentq, minimize, minimize_scalar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.graph import Op, OpKind  # noqa: E402
from xpusim.plugins.gpu.catalog import catalog  # noqa: E402
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency  # noqa: E402
from xpusim.plugins.gpu.points import gemm_op  # noqa: E402

KERNELS = REPO.parent / "shared" / "reference" / "kernels.yaml"
OUT = REPO / "plugins" / "gpu" / "kernel_fits.yaml"

MAMF_NAMES = {
    "h100-sxm": "NVIDIA H100 SXM",
    "h200-sxm": "NVIDIA H200 SXM",
    "a100-sxm-80gb": "NVIDIA A100 SXM",
    "b200": "NVIDIA B200 SXM",
    "b300": "NVIDIA B300 SXM",
    "gb200": "NVIDIA GB200 SXM",
    "mi300x": "AMD MI300X",
    "mi325x": "AMD MI325X",
    "mi355x": "AMD MI355X",
}
"""Catalog device of each MAMF table row."""

STREAM_NAMES = {"a100-sxm-80gb": "A100 80GB", "h100-pcie": "H100 PCIe", "mi300x": "MI300X"}
"""Catalog device of each STREAM row (the A100 file does not state the form factor)."""

INHERIT = {
    "h100-pcie": "h100-sxm",
    "h200-sxm": "h100-sxm",
    "l4": "a100-sxm-80gb",
    "l40s": "a100-sxm-80gb",
    "b200": "h100-sxm",
    "b300": "b200",
    "gb200": "b200",
    "gb300": "b300",
    "mi300x": "h100-sxm",
    "mi325x": "mi300x",
    "mi355x": "mi300x",
    "a100-sxm-80gb": "h100-sxm",
}
"""Nearest fitted architecture for a parameter a GPU has no table for: the same chip in
another form factor or memory (H100 PCIe, H200), the next generation of the same vendor
(B300/GB200/GB300, MI325X/MI355X), Ada (L4, L40S) from Ampere's A100 (both issue
``mma.sync`` without Hopper's asynchronous warpgroup MMA), and anything else from H100,
the most measured part."""

PARAMS = (
    "tensor_fraction",
    "lowp_tensor_fraction",
    "memory_fraction",
    "attention_fraction",
    "kernel_overhead_s",
)

SAME_SILICON = {"h200-sxm": "h100-sxm"}
"""Parts whose own single best-shape row is not fitted because the same chip has a
multi-shape fit: H200 is H100's GH100 die with more memory (the MAMF table says its BF16
rate "is the same"); one best-shape row fits the wave-quantization loss of that one shape
as much as the chip."""

BF16_RATE_FOR_LOWP = ("mi300x", "mi325x", "mi355x")
"""GPUs whose 8-bit GEMMs are taken to run at their own measured BF16 rate
(``lowp_tensor_fraction = tensor_fraction × bf16 peak / 8-bit peak``): the MAMF table
leaves MI300X's FP8 row empty (no FP8 rate measured through torch on that stack) and
has none for its successors, so a rate nobody measured is not credited. (The first rule
tried, the own BF16 *fraction* of the doubled FP8 peak, made the MI300X FP8 rows of the
serving validation 56-60 % fast at large batch; docs/validation.md records it.)"""

OWN_FRACTION_FOR_LOWP = ("a100-sxm-80gb",)
"""GPUs without FP8 whose int8 GEMMs take their own BF16 fraction of the int8 peak."""

LOWP_INHERIT = {"l4": "h100-sxm", "l40s": "h100-sxm"}
"""Ada parts have FP8 tensor cores like Hopper's: their 8-bit fraction comes from H100's
FP8 fit, the nearest architecture with a measured FP8 rate (their 16-bit fractions come
from A100, ``INHERIT``)."""


def entries(path: Path) -> dict[str, dict[str, Any]]:
    """Reference kernel entries by id."""
    return {str(e["id"]): e for e in yaml.safe_load(path.read_text(encoding="utf-8"))}


def shape(s: str) -> tuple[int, int, int]:
    """``MxNxK`` as integers."""
    m, n, k = (int(x) for x in s.split("x"))
    return m, n, k


def gemm_tflops(dev: str, eff: GpuEfficiency, m: int, n: int, k: int, dtype: str) -> float:
    """Model TFLOP/s of one GEMM."""
    model = GpuCostModel(catalog()[dev], eff)
    return 2.0 * m * n * k / model(gemm_op(m, n, k, dtype)).seconds / 1e12


def solve_fraction(dev: str, name: str, target: float, m: int, n: int, k: int, dtype: str) -> float:
    """The fraction ``name`` at which the model runs ``m×n×k`` at ``target`` TFLOP/s."""

    def gap(f: float) -> float:
        changes: dict[str, Any] = {name: f, "kernel_overhead_s": 0.0}
        eff = replace(GpuEfficiency(), **changes)
        return gemm_tflops(dev, eff, m, n, k, dtype) - target

    return float(brentq(gap, 0.05, 1.0))


def attention_tflops(dev: str, eff: GpuEfficiency, r: dict[str, Any]) -> float:
    """Model TFLOP/s of one FlashAttention benchmark row (16k tokens per batch, hidden
    2048), in the benchmark's own FLOP convention (causal counts half)."""
    s, d = int(r["seqlen"]), int(r["head_dim"])
    heads, batch = 2048 // d, 16384 // s
    causal = bool(r["causal"])
    fa_flops = 4.0 * batch * s * s * heads * d * (0.5 if causal else 1.0)
    pairs = s * s - s * (s - 1) / 2 if causal else s * s
    op = Op(
        name="attn",
        kind=OpKind.ATTENTION,
        flops=4.0 * d * pairs * batch * heads,
        bytes_read=batch * heads * 3.0 * s * d * 2,
        bytes_written=batch * heads * s * d * 2.0,
        dims=(s, s, d),
        batch=batch * heads,
        dtype="bf16",
        attrs=(("causal", 1.0 if causal else 0.0),),
    )
    t = GpuCostModel(catalog()[dev], eff)(op).seconds
    return fa_flops / t / 1e12


def errors(pairs: list[tuple[float, float]]) -> dict[str, float | int]:
    """Median and max |predicted/measured - 1| of (predicted, measured) pairs."""
    e = [abs(p / m - 1) for p, m in pairs]
    if not e:
        return {"rows": 0}
    return {"rows": len(e), "median_abs_error": statistics.median(e), "max_abs_error": max(e)}


def fit_attention(dev: str, rows: list[dict[str, Any]], column: str) -> dict[str, Any]:
    """``attention_fraction`` fitted on even rows (log error), checked on odd rows."""
    rows = [r for r in rows if r.get(column) is not None]
    train, held = rows[0::2], rows[1::2]

    def loss(f: float) -> float:
        eff = replace(GpuEfficiency(), attention_fraction=f, kernel_overhead_s=0.0)
        return sum(math.log(attention_tflops(dev, eff, r) / float(r[column])) ** 2 for r in train)

    f = float(minimize_scalar(loss, bounds=(0.05, 1.0), method="bounded").x)
    eff = replace(GpuEfficiency(), attention_fraction=f, kernel_overhead_s=0.0)

    def pairs(rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(attention_tflops(dev, eff, r), float(r[column])) for r in rs]

    return {"value": f, "in_sample": errors(pairs(train)), "held_out": errors(pairs(held))}


def fit(ref: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fitted parameters per device with what each used and its errors."""
    out: dict[str, dict[str, Any]] = {}

    def put(dev: str, name: str, rec: dict[str, Any]) -> None:
        out.setdefault(dev, {})[name] = rec

    for table, name, dtype, skip in (
        ("mamf_bf16_matmul_multi_gpu", "tensor_fraction", "bf16", ()),
        ("mamf_fp8_matmul_multi_gpu", "lowp_tensor_fraction", "fp8", tuple(SAME_SILICON)),
    ):
        for row in ref[table]["rows"]:
            for dev, label in MAMF_NAMES.items():
                if row["accelerator"] != label or dev in skip:
                    continue
                m, n, k = shape(row["best_shape_MxNxK"])
                f = solve_fraction(dev, name, float(row["mamf_tflops"]), m, n, k, dtype)
                fitted_to = (
                    f"{table}, {label} {m}x{n}x{k} {row['mamf_tflops']} TFLOP/s "
                    "(one row: exact in sample)"
                )
                put(dev, name, {"value": f, "fitted_to": fitted_to})
    # H100 FP8 GEMMs (DeepGEMM on H800: H100's tensor cores and HBM3): the compute-bound
    # M = 4096 rows fit lowp_tensor_fraction with the MAMF row, the memory-bound M <= 128
    # rows fit memory_fraction and kernel_overhead_s; every other row of each is held out
    dg = ref["deepgemm_fp8_dense_gemm_h800_2025_04"]["rows"]
    h100 = out["h100-sxm"]
    mamf_fp8 = next(
        r for r in ref["mamf_fp8_matmul_multi_gpu"]["rows"] if r["accelerator"] == "NVIDIA H100 SXM"
    )
    big = [r for r in dg if int(r["M"]) > 128]
    small = [r for r in dg if int(r["M"]) <= 128]
    big_train, big_held = big[0::2], big[1::2]
    small_train, small_held = small[0::2], small[1::2]

    def dg_pairs(eff: GpuEfficiency, rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [
            (
                gemm_tflops("h100-sxm", eff, int(r["M"]), int(r["N"]), int(r["K"]), "fp8"),
                float(r["tflops"]),
            )
            for r in rs
        ]

    mamf_row = {"M": 0, "N": 0, "K": 0, "tflops": float(mamf_fp8["mamf_tflops"])}
    mm, mn, mk = shape(mamf_fp8["best_shape_MxNxK"])
    mamf_row.update(M=mm, N=mn, K=mk)
    base = replace(
        GpuEfficiency(), tensor_fraction=h100["tensor_fraction"]["value"], kernel_overhead_s=0.0
    )

    def lowp_loss(f: float) -> float:
        eff = replace(base, lowp_tensor_fraction=f)
        return sum(math.log(p / m) ** 2 for p, m in dg_pairs(eff, [mamf_row, *big_train]))

    lf = float(minimize_scalar(lowp_loss, bounds=(0.2, 1.0), method="bounded").x)
    eff = replace(base, lowp_tensor_fraction=lf)
    put(
        "h100-sxm",
        "lowp_tensor_fraction",
        {
            "value": lf,
            "fitted_to": "mamf_fp8_matmul_multi_gpu H100 SXM row and every other M = 4096 row of "
            "deepgemm_fp8_dense_gemm_h800_2025_04 (compute-bound)",
            "in_sample": errors(dg_pairs(eff, [mamf_row, *big_train])),
            "held_out": errors(dg_pairs(eff, big_held)),
        },
    )

    def mem_loss(x: Any) -> float:
        e = replace(eff, memory_fraction=float(x[0]), kernel_overhead_s=float(x[1]) * 1e-6)
        return sum(math.log(p / m) ** 2 for p, m in dg_pairs(e, small_train))

    sol = minimize(mem_loss, x0=[0.8, 2.0], bounds=[(0.3, 1.0), (0.0, 20.0)])
    mf, ko = float(sol.x[0]), float(sol.x[1]) * 1e-6
    eff = replace(eff, memory_fraction=mf, kernel_overhead_s=ko)
    mem_rec = {
        "fitted_to": "every other M = 64 and M = 128 row of deepgemm_fp8_dense_gemm_h800_2025_04 "
        "(memory-bound), fitted together with kernel_overhead_s; H800 SXM5 has H100 SXM's HBM3",
        "in_sample": errors(dg_pairs(eff, small_train)),
        "held_out": errors(dg_pairs(eff, small_held)),
    }
    put("h100-sxm", "memory_fraction", {"value": mf, **mem_rec})
    put("h100-sxm", "kernel_overhead_s", {"value": ko, **mem_rec})
    for row in ref["rrze_gpu_stream_dram_bandwidth_multi_gpu"]["rows"]:
        for dev, label in STREAM_NAMES.items():
            if row["gpu"] == label:
                spec = catalog()[dev].memory_bw.value
                put(
                    dev,
                    "memory_fraction",
                    {
                        "value": float(row["read_GBps"]) * 1e9 / spec,
                        "fitted_to": f"rrze_gpu_stream_dram_bandwidth_multi_gpu, {label} read "
                        f"kernel {row['read_GBps']} GB/s over the catalog's {spec / 1e9:.0f} GB/s "
                        "(one row: exact in sample)",
                    },
                )
    fa = ref["fa3_fp16_forward_h100_by_seqlen"]["rows"]
    rec = fit_attention("h100-sxm", fa, "fa2")
    rec["fitted_to"] = "fa3_fp16_forward_h100_by_seqlen, FlashAttention-2 forward column, even rows"
    put("h100-sxm", "attention_fraction", rec)
    rec = fit_attention("a100-sxm-80gb", ref["fa2_fwd_bwd_a100_by_seqlen"]["rows"], "fa2")
    rec["fitted_to"] = (
        "fa2_fwd_bwd_a100_by_seqlen, FlashAttention-2 forward+backward column (no forward-only "
        "table for A100), even rows"
    )
    put("a100-sxm-80gb", "attention_fraction", rec)
    return out


def with_inheritance(fitted: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every catalog GPU with every parameter: its own fit, or the nearest fitted
    architecture's (``inherited_from`` says which)."""
    out: dict[str, dict[str, Any]] = {}
    for dev in catalog():
        if dev not in fitted and dev not in INHERIT:
            continue
        params: dict[str, Any] = {}
        for name in PARAMS:
            own = params.get("tensor_fraction")
            if name == "lowp_tensor_fraction" and own is not None and dev not in SAME_SILICON:
                if dev in LOWP_INHERIT:
                    src = LOWP_INHERIT[dev]
                    params[name] = {"value": fitted[src][name]["value"], "inherited_from": src}
                    continue
                if dev in BF16_RATE_FOR_LOWP or dev in OWN_FRACTION_FOR_LOWP:
                    spec = catalog()[dev]
                    low = max(
                        (spec.peak_flops[d].value for d in ("fp8", "int8") if d in spec.peak_flops),
                        default=spec.flops("bf16"),
                    )
                    scale = spec.flops("bf16") / low if dev in BF16_RATE_FOR_LOWP else 1.0
                    how = (
                        "its measured BF16 rate (no 8-bit rate measured)"
                        if dev in BF16_RATE_FOR_LOWP
                        else "its own tensor_fraction (no FP8; int8 at the BF16 share)"
                    )
                    params[name] = {"value": own["value"] * scale, "taken_from": how}
                    continue
            src = dev
            seen = set()
            while name not in fitted.get(src, {}) and src in INHERIT and src not in seen:
                seen.add(src)
                src = INHERIT[src]
            if name not in fitted.get(src, {}):
                continue
            rec = dict(fitted[src][name])
            if src != dev:
                rec = {"value": rec["value"], "inherited_from": src}
            params[name] = rec
        out[dev] = params
    return out


def main(argv: list[str] | None = None) -> int:
    """Fit, print and write the per-GPU kernel efficiency."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", type=Path, default=KERNELS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    devices = with_inheritance(fit(entries(args.kernels)))
    for dev, params in devices.items():
        cells = []
        for name, rec in params.items():
            how = (
                f"from {rec['inherited_from']}"
                if "inherited_from" in rec
                else ("own bf16" if "taken_from" in rec else "fitted")
            )
            err = ""
            if "held_out" in rec and rec["held_out"].get("rows"):
                err = f", held-out median {100 * rec['held_out']['median_abs_error']:.1f}%"
            cells.append(f"{name} {rec['value']:.3g} ({how}{err})")
        print(f"{dev:14s} " + "; ".join(cells))
    doc = {
        "format": "xpusim-kernel-fits/1",
        "fitted": str(date.today()),
        "command": "python benchmarks/fit_kernels.py",
        "devices": devices,
    }
    args.out.write_text(
        "# Written by `python benchmarks/fit_kernels.py`; do not edit by hand.\n"
        + yaml.safe_dump(doc, sort_keys=False, width=100),
        encoding="utf-8",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
