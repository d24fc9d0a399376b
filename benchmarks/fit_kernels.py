"""Fit per-GPU kernel efficiency to public kernel measurements, with held-out errors.

Reads the shared reference kernels file (``kernels.yaml``) and fits, per GPU where a
table exists, the :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` fractions of the
GPU cost model (the tile-and-wave GEMM, the flash-attention kernel, memory-bound ops):

* ``tensor_fraction`` — the BF16 **best-shape asymptote**: the fraction at which the
  model's fastest GEMM over a MAMF-like search of shapes runs at the best-shape
  ``torch.matmul`` rate of ``mamf_bf16_matmul_multi_gpu`` (a best-shape rate is the
  maximum of a search, so the model's counterpart is its own maximum; its rate at the
  reported shape is recorded beside it);
* ``lowp_tensor_fraction`` — the same for the FP8 rates of ``mamf_fp8_matmul_multi_gpu``
  (H100, B200, B300, GB200; H200 takes H100's, the same die);
* ``k_fill`` (the K-loop pipeline fill) and ``kernel_overhead_s`` — to how DeepGEMM's FP8
  GEMMs (``deepgemm_fp8_dense_gemm_h800_2025_04``, H800: H100's tensor cores and HBM3)
  change with shape: every other compute-bound (M = 4,096) row fits the fill with
  DeepGEMM's own level as a nuisance parameter (a different kernel library from torch's),
  every other memory-bound (M = 64/128) row the overhead; the other rows and every row of
  the grouped (MoE) tables are held out;
* ``epilogue_exposed`` — a property of the architecture, not a fit: 1 where accumulators
  live in registers (Ampere, Hopper, CDNA), 0 on Blackwell (tensor memory);
* ``memory_fraction`` — H100: FlashMLA's memory-bound decode kernel (3,000 GB/s on H800,
  ``flashmla_decode_h800``); A100, H100 PCIe and MI300X: the STREAM read kernel of
  ``rrze_gpu_stream_dram_bandwidth_multi_gpu`` at full occupancy over the catalog rate;
* ``attention_fraction`` — H100: the FlashAttention-2 forward rates of
  ``fa3_fp16_forward_h100_by_seqlen`` (head dim 64/128/256, causal or not, 512 to 16k
  tokens), even rows fitted, odd rows held out; A100: the FlashAttention-2
  forward+backward rates of ``fa2_fwd_bwd_a100_by_seqlen`` (no forward-only table), same
  split;
* ``decode_attention_latency_s`` — the fixed time of a decode-attention launch beyond
  its bytes, math and kernel overhead (the split-KV combine pass, the page walk): H100
  from FlashAttention-2's paged decode of grouped-query heads by context length
  (``fa2_paged_decode_h100_a100_ort_pr21414`` of this project's ``kernel_rows.yaml``),
  the multi-head rows held out; A100 from that table's multi-head rows, every other one;
* ``sdpa_backward_ratio`` — H100: PyTorch SDPA's flash backward on Llama 3 8B's inputs
  (``torch_sdpa_flash_backward_h100_2024_09`` of this project's ``kernel_rows.yaml``) over
  the model's flash-attn backward of that call at the fitted ``attention_fraction`` (one
  row: exact in sample); PyTorch SDPA's forward (``torch_sdpa_forward_h100_2024_12``) is
  checked against the model's forward, nothing fitted.

A GPU without a table for a parameter inherits it from the nearest fitted architecture
(``INHERIT``), and the output says so. Writes ``plugins/gpu/kernel_fits.yaml``, which the
GPU backend applies as each device's defaults.

Usage::

    python benchmarks/fit_kernels.py [--kernels PATH] [--extra PATH] [--out PATH]
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

from xpusim.engine.graph import Op, OpKind, dtype_bytes  # noqa: E402
from xpusim.plugins.gpu.catalog import catalog  # noqa: E402
from xpusim.plugins.gpu.efficiency import (  # noqa: E402
    FLASH_BACKWARD_FLOPS,
    GpuCostModel,
    GpuEfficiency,
)
from xpusim.plugins.gpu.points import attention_backward_op, attention_op, gemm_op  # noqa: E402

KERNELS = REPO.parent / "shared" / "reference" / "kernels.yaml"
EXTRA = REPO / "benchmarks" / "kernel_rows.yaml"
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

SHAPE_FIT = ("k_fill", "kernel_overhead_s")
"""Parameters fitted to H100's by-shape GEMMs (DeepGEMM on H800)."""

TMEM_EPILOGUE = ("b200", "b300", "gb200", "gb300")
"""Blackwell parts: accumulators in tensor memory, so the epilogue overlaps (``epilogue_exposed``
0, a stated property of the architecture, not a fit)."""

TMEM_NOTE = (
    "Blackwell keeps the accumulators in tensor memory, double-buffered, so a tile's C store "
    "runs under the next tile's MMAs (with the store exposed, B300's best-shape BF16 matmul "
    "12288x18432x1024 could not reach its measured 1769 TFLOP/s at any tensor fraction)"
)

REGISTER_NOTE = (
    "Hopper, Ampere, Ada and CDNA keep the accumulators in registers, so a tile's C store ends "
    "before its SM starts the next tile: with the store exposed DeepGEMM's six M = 4096 FP8 "
    "GEMMs come out within 6.4% (median 2.5%); with it hidden, median 16% and up to 78% too "
    "fast (4096x32768x512, half of whose time is storing C)"
)

PARAMS = (
    "tensor_fraction",
    "lowp_tensor_fraction",
    "k_fill",
    "epilogue_exposed",
    "memory_fraction",
    "attention_fraction",
    "sdpa_backward_ratio",
    "kernel_overhead_s",
    "decode_attention_latency_s",
)

SAME_SILICON = {"h200-sxm": "h100-sxm"}
"""Parts whose own best-shape row is not fitted because the same chip has a fit: H200 is
H100's GH100 die with more memory (the MAMF table says its BF16 rate "is the same"), so it
takes H100's fractions rather than a second, separately measured maximum of the same
tensor cores."""

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


def gemm_tflops(
    dev: str,
    eff: GpuEfficiency,
    m: int,
    n: int,
    k: int,
    dtype: str,
    out_dtype: str | None = None,
    batch: int = 1,
) -> float:
    """Model TFLOP/s of one GEMM (``batch`` of them: a grouped GEMM), C stored in
    ``out_dtype`` (default: ``dtype``)."""
    model = GpuCostModel(catalog()[dev], eff)
    op = gemm_op(m, n, k, dtype)
    out = op.bytes_written if out_dtype is None else m * n * dtype_bytes(out_dtype)
    op = replace(
        op,
        bytes_read=op.bytes_read * batch,
        bytes_written=out * batch,
        flops=op.flops * batch,
        batch=batch,
    )
    return 2.0 * m * n * k * batch / model(op).seconds / 1e12


def solve_fraction(
    dev: str, name: str, target: float, m: int, n: int, k: int, dtype: str, base: GpuEfficiency
) -> float:
    """The fraction ``name`` at which the model (``base`` otherwise, no kernel overhead)
    runs ``m×n×k`` at ``target`` TFLOP/s: the best-shape asymptote."""

    def gap(f: float) -> float:
        changes: dict[str, Any] = {name: f, "kernel_overhead_s": 0.0}
        eff = replace(base, **changes)
        return gemm_tflops(dev, eff, m, n, k, dtype) - target

    if gap(1.0) < 0:
        raise ValueError(f"{dev}: {m}x{n}x{k} {dtype} cannot reach {target} TFLOP/s ({gap(1.0)})")
    return float(brentq(gap, 0.05, 1.0))


SEARCH_MN = tuple(range(512, 20481, 512))
SEARCH_K = (1024, 2048, 4096, 8192, 16384)
"""The shapes the model searches for its own fastest GEMM, as the MAMF finder searches a
GPU's (M and N to 20,480, K to 16,384; its published searches step by 256 to 1,024)."""


def fastest_shape(dev: str, eff: GpuEfficiency, dtype: str) -> tuple[int, int, int]:
    """The searched shape the model (no kernel overhead) runs at the highest rate."""
    model = GpuCostModel(catalog()[dev], replace(eff, kernel_overhead_s=0.0))
    best, rate = (0, 0, 0), 0.0
    for k in SEARCH_K:
        for m in SEARCH_MN:
            for n in SEARCH_MN:
                op = gemm_op(m, n, k, dtype)
                r = op.flops / model(op).seconds
                if r > rate:
                    best, rate = (m, n, k), r
    return best


def solve_asymptote(
    dev: str,
    name: str,
    target: float,
    reported: tuple[int, int, int],
    dtype: str,
    base: GpuEfficiency,
) -> tuple[float, tuple[int, int, int]]:
    """The fraction ``name`` at which the model's fastest searched shape runs at ``target``
    TFLOP/s, and that shape. A best-shape rate is the maximum of a search: its model
    counterpart is the model's own maximum over the same kind of search, so shapes where
    the model's tile menu happens to lose a wave the GPU's library does not are not read
    as a lower asymptote. Two rounds: the fastest shape barely moves with the fraction."""
    f = solve_fraction(dev, name, target, *reported, dtype, base)
    shape_ = reported
    for _ in range(2):
        shape_ = fastest_shape(dev, with_param(base, name, f), dtype)
        f = solve_fraction(dev, name, target, *shape_, dtype, base)
    return f, shape_


def with_param(eff: GpuEfficiency, name: str, value: float) -> GpuEfficiency:
    """``eff`` with the parameter ``name`` set to ``value``."""
    change: dict[str, Any] = {name: value}
    return replace(eff, **change)


def fa_flops(s: int, d: int, heads: int, batch: int, causal: bool) -> float:
    """FLOPs of one attention call's forward in FlashAttention's convention (causal
    counts half)."""
    return 4.0 * batch * s * s * heads * d * (0.5 if causal else 1.0)


def attention_tflops(
    dev: str, eff: GpuEfficiency, r: dict[str, Any], backward: bool = False
) -> float:
    """Model TFLOP/s of one FlashAttention benchmark row (16k tokens per batch, hidden
    2048), in the benchmark's own FLOP convention (causal counts half; forward plus
    backward counts 3.5 forwards). ``backward``: the row times a forward and a backward."""
    s, d = int(r["seqlen"]), int(r["head_dim"])
    heads, batch, causal = 2048 // d, 16384 // s, bool(r["causal"])
    op = attention_op(batch * heads, s, s, d, "bf16", causal)
    model = GpuCostModel(catalog()[dev], eff)
    t = model(op).seconds
    flops = fa_flops(s, d, heads, batch, causal)
    if not backward:
        return flops / t / 1e12
    t += model(attention_backward_op(op)).seconds
    return (1.0 + FLASH_BACKWARD_FLOPS) * flops / t / 1e12


def attention_call_tflops(
    dev: str, eff: GpuEfficiency, r: dict[str, Any], backward: bool, kernel: str = "flash-attn"
) -> float:
    """Model TFLOP/s of one attention call of a measured row (``seqlen``, ``heads``,
    ``head_dim``, ``causal``, ``batch``), its forward or its backward alone, in
    FlashAttention's FLOP convention (a backward counts 2.5 forwards)."""
    s, d, heads, batch = (int(r[k]) for k in ("seqlen", "head_dim", "heads", "batch"))
    causal = bool(r["causal"])
    op = attention_op(batch * heads, s, s, d, "bf16", causal)
    t = GpuCostModel(catalog()[dev], eff, attention_kernel=kernel)(
        attention_backward_op(op) if backward else op
    ).seconds
    return (
        (FLASH_BACKWARD_FLOPS if backward else 1.0)
        * fa_flops(s, d, heads, batch, causal)
        / t
        / 1e12
    )


def fit_sdpa_backward(dev: str, fraction: float, ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``sdpa_backward_ratio``: PyTorch SDPA's measured flash backward over the model's
    flash-attn backward of the same call at ``fraction``; with the SDPA forward's check."""
    eff = replace(GpuEfficiency(), attention_fraction=fraction, kernel_overhead_s=0.0)
    bwd_id, fwd_id = "torch_sdpa_flash_backward_h100_2024_09", "torch_sdpa_forward_h100_2024_12"
    (row,) = ref[bwd_id]["rows"]
    ratio = float(row["backward_tflops"]) / attention_call_tflops(dev, eff, row, True)
    fitted = replace(eff, sdpa_backward_ratio=ratio)
    model = attention_call_tflops(dev, fitted, row, True, "torch-sdpa")
    (frow,) = ref[fwd_id]["rows"]
    fwd = attention_call_tflops(dev, fitted, frow, False, "torch-sdpa")
    return {
        "value": ratio,
        "fitted_to": f"{bwd_id} (benchmarks/kernel_rows.yaml), {row['backward_tflops']} "
        "TFLOP/s for Llama 3 8B's inputs (taken as 8,192 tokens, 32 heads of 128, causal), "
        "over the model's flash-attn backward of that call (one row: exact in sample)",
        "in_sample": errors([(model, float(row["backward_tflops"]))]),
        "forward_check": {
            "table": f"{fwd_id} (benchmarks/kernel_rows.yaml), the forward priced as "
            "flash-attn's, nothing fitted",
            **errors([(fwd, float(frow["forward_tflops"]))]),
        },
    }


DECODE_TABLE = "fa2_paged_decode_h100_a100_ort_pr21414"
"""This project's kernel rows of paged decode attention by context length."""


def decode_attention_op(r: dict[str, Any]) -> Op:
    """The decode-attention op of one measured row: ``seqs`` sequences of ``seq_len``
    cached tokens, ``q_heads`` query heads over ``kv_heads`` K/V heads of ``head_dim``,
    fp16, one query each (Q, K and V read, O written, as the row's byte count)."""
    n, s, d = int(r["seqs"]), int(r["seq_len"]), int(r["head_dim"])
    qh, kh = int(r["q_heads"]), int(r["kv_heads"])
    b = dtype_bytes("fp16")
    return Op(
        "attention",
        OpKind.ATTENTION,
        flops=4.0 * n * qh * s * d,
        bytes_read=n * (qh + 2 * s * kh) * d * b,
        bytes_written=n * qh * d * b,
        dims=(1, s, d),
        batch=n * qh,
        dtype="fp16",
        attrs=(("q_heads", float(qh)), ("kv_heads", float(kh))),
    )


def fit_decode_latency(
    dev: str, eff: GpuEfficiency, fit_rows: list[dict[str, Any]], held: list[dict[str, Any]]
) -> dict[str, Any]:
    """``decode_attention_latency_s``: the median over ``fit_rows`` of what each measured
    decode launch takes beyond the model's time for it without that latency (its bytes at
    the device's streaming rate, its math, one kernel overhead); ``held`` checked."""
    model = GpuCostModel(catalog()[dev], replace(eff, decode_attention_latency_s=0.0))
    gaps = [
        float(r["gpu_time_us"]) * 1e-6 - model(decode_attention_op(r)).seconds for r in fit_rows
    ]
    value = max(0.0, statistics.median(gaps))
    fitted = GpuCostModel(catalog()[dev], replace(eff, decode_attention_latency_s=value))

    def pairs(rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [
            (fitted(decode_attention_op(r)).seconds, float(r["gpu_time_us"]) * 1e-6) for r in rs
        ]

    return {"value": value, "in_sample": errors(pairs(fit_rows)), "held_out": errors(pairs(held))}


def fitted_efficiency(out: dict[str, dict[str, Any]], dev: str) -> GpuEfficiency:
    """``GpuEfficiency`` with every parameter ``dev`` has fitted (or inherits) so far."""
    names = ("memory_fraction", "kernel_overhead_s", "attention_fraction", "tensor_fraction")
    changes: dict[str, Any] = {
        n: inherited(out, dev, n, getattr(GpuEfficiency(), n)) for n in names
    }
    return replace(GpuEfficiency(), **changes)


def errors(pairs: list[tuple[float, float]]) -> dict[str, float | int]:
    """Median and max |predicted/measured - 1| of (predicted, measured) pairs."""
    e = [abs(p / m - 1) for p, m in pairs]
    if not e:
        return {"rows": 0}
    return {"rows": len(e), "median_abs_error": statistics.median(e), "max_abs_error": max(e)}


def fit_attention(
    dev: str, rows: list[dict[str, Any]], column: str, backward: bool = False
) -> dict[str, Any]:
    """``attention_fraction`` fitted on even rows (log error), checked on odd rows;
    ``backward``: the rows are forward-plus-backward rates."""
    rows = [r for r in rows if r.get(column) is not None]
    train, held = rows[0::2], rows[1::2]

    def rate(eff: GpuEfficiency, r: dict[str, Any]) -> float:
        return attention_tflops(dev, eff, r, backward)

    def loss(f: float) -> float:
        eff = replace(GpuEfficiency(), attention_fraction=f, kernel_overhead_s=0.0)
        return sum(math.log(rate(eff, r) / float(r[column])) ** 2 for r in train)

    f = float(minimize_scalar(loss, bounds=(0.05, 1.0), method="bounded").x)
    eff = replace(GpuEfficiency(), attention_fraction=f, kernel_overhead_s=0.0)

    def pairs(rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(rate(eff, r), float(r[column])) for r in rs]

    return {"value": f, "in_sample": errors(pairs(train)), "held_out": errors(pairs(held))}


def check_attention_backward(
    dev: str, fraction: float, rows: list[dict[str, Any]], column: str
) -> dict[str, Any]:
    """Every forward-plus-backward row of ``rows`` priced at a ``fraction`` fitted to
    forward rates alone: a check of the backward's pricing, nothing fitted."""
    eff = replace(GpuEfficiency(), attention_fraction=fraction, kernel_overhead_s=0.0)
    rows = [r for r in rows if r.get(column) is not None]
    return errors([(attention_tflops(dev, eff, r, True), float(r[column])) for r in rows])


DG_OUT = "bf16"
"""DeepGEMM's GEMMs store C in BF16 (``deepgemm_fp8_dense_gemm_h800_2025_04`` conditions)."""


def dg_rows(ref: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """DeepGEMM FP8 GEMMs on H800 as ``{M, N, K, groups, tflops}``: the dense table's
    compute-bound (M = 4096) and memory-bound (M <= 128) rows, and the grouped (MoE)
    tables, contiguous and masked, as batched GEMMs of ``groups`` experts."""
    dense = ref["deepgemm_fp8_dense_gemm_h800_2025_04"]["rows"]
    grouped = [
        {
            "M": r["M_per_group"],
            "N": r["N"],
            "K": r["K"],
            "groups": r["groups"],
            "tflops": r["tflops"],
        }
        for table in (
            "deepgemm_fp8_grouped_gemm_contiguous_h800",
            "deepgemm_fp8_grouped_gemm_masked_h800",
        )
        for r in ref[table]["rows"]
    ]
    return {
        "big": [{**r, "groups": 1} for r in dense if int(r["M"]) > 128],
        "small": [{**r, "groups": 1} for r in dense if int(r["M"]) <= 128],
        "grouped": grouped,
    }


def dg_pairs(eff: GpuEfficiency, rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(model, measured) TFLOP/s of DeepGEMM rows on ``h100-sxm`` (H800: the same
    tensor cores and HBM3)."""
    return [
        (
            gemm_tflops(
                "h100-sxm",
                eff,
                int(r["M"]),
                int(r["N"]),
                int(r["K"]),
                "fp8",
                DG_OUT,
                int(r.get("groups", 1)),
            ),
            float(r["tflops"]),
        )
        for r in rs
    ]


def sq_log(pairs: list[tuple[float, float]]) -> float:
    """Sum of squared log errors."""
    return sum(math.log(p / m) ** 2 for p, m in pairs)


def fit(ref: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fitted parameters per device with what each used and its errors."""
    out: dict[str, dict[str, Any]] = {}

    def put(dev: str, name: str, rec: dict[str, Any]) -> None:
        out.setdefault(dev, {})[name] = rec

    # memory: the STREAM read kernel where a GPU has one
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
    # H100 by shape (DeepGEMM on H800: H100's tensor cores and HBM3). DeepGEMM is its own
    # kernel library, faster than torch's FP8 matmul at its best (1,520 against 1,403
    # TFLOP/s), so its level is a nuisance parameter of this fit, not H100's 8-bit
    # asymptote: the K-loop fill is fitted to how its rate changes with shape, the kernel
    # overhead to its memory-bound rows at the bandwidth FlashMLA reaches on the same HBM
    dg = dg_rows(ref)
    big_train, big_held = dg["big"][0::2], dg["big"][1::2]
    small_train, small_held = dg["small"][0::2], dg["small"][1::2]
    flashmla = next(r for r in ref["flashmla_decode_h800"]["rows"] if r["regime"] == "memory-bound")
    h100_bw = catalog()["h100-sxm"].memory_bw.value
    put(
        "h100-sxm",
        "memory_fraction",
        {
            "value": float(flashmla["value"]) * 1e9 / h100_bw,
            "fitted_to": f"flashmla_decode_h800, the memory-bound MLA decode kernel's "
            f"{flashmla['value']} GB/s on H800 SXM5 (H100 SXM's HBM3) over the catalog's "
            f"{h100_bw / 1e9:.0f} GB/s, the best bandwidth a measured kernel reaches there "
            "(one row: exact in sample)",
        },
    )
    eff = replace(
        GpuEfficiency(),
        epilogue_exposed=1.0,
        memory_fraction=float(flashmla["value"]) * 1e9 / h100_bw,
    )
    for _ in range(2):  # the compute-bound rows' epilogue and fill, then the overhead, twice

        def compute_eff(x: Any, base: GpuEfficiency = eff) -> GpuEfficiency:
            return replace(base, lowp_tensor_fraction=float(x[0]), k_fill=float(x[1]) * 100.0)

        sol = minimize(
            lambda x: sq_log(dg_pairs(compute_eff(x), big_train)),
            x0=[0.8, 0.5],
            bounds=[(0.3, 1.0), (0.0, 20.0)],
            method="Nelder-Mead",
            options={"xatol": 1e-5, "fatol": 1e-10, "maxiter": 2000},
        )
        eff = compute_eff(sol.x)

        def memory_eff(x: float, base: GpuEfficiency = eff) -> GpuEfficiency:
            return replace(base, kernel_overhead_s=x * 1e-6)

        x = minimize_scalar(
            lambda x: sq_log(dg_pairs(memory_eff(x), small_train)),
            bounds=(0.0, 20.0),
            method="bounded",
        ).x
        eff = memory_eff(float(x))
    shape_fit = {
        "fitted_to": "k_fill (with DeepGEMM's own 8-bit level, "
        f"{eff.lowp_tensor_fraction:.3f} of the FP8 peak, a nuisance parameter) to every other "
        "M = 4096 row of deepgemm_fp8_dense_gemm_h800_2025_04 (compute-bound), "
        "kernel_overhead_s to every other M = 64/128 row (memory-bound, at the FlashMLA "
        "bandwidth), in turn, twice; H800 SXM5 has H100 SXM's tensor cores and HBM3. Held "
        "out: the other dense rows and every row of deepgemm_fp8_grouped_gemm_contiguous_h800 "
        "and deepgemm_fp8_grouped_gemm_masked_h800 (MoE experts as a batch of GEMMs)",
        "in_sample": errors(dg_pairs(eff, [*big_train, *small_train])),
        "held_out": errors(dg_pairs(eff, [*big_held, *small_held, *dg["grouped"]])),
        "by_regime": {
            "compute_bound_in_sample": errors(dg_pairs(eff, big_train)),
            "compute_bound_held_out": errors(dg_pairs(eff, big_held)),
            "memory_bound_in_sample": errors(dg_pairs(eff, small_train)),
            "memory_bound_held_out": errors(dg_pairs(eff, small_held)),
            "grouped_held_out": errors(dg_pairs(eff, dg["grouped"])),
        },
    }
    for name in SHAPE_FIT:
        put("h100-sxm", name, {"value": float(getattr(eff, name)), **shape_fit})
    put("h100-sxm", "epilogue_exposed", {"value": 1.0, "assumed": REGISTER_NOTE})
    for dev in TMEM_EPILOGUE:
        put(dev, "epilogue_exposed", {"value": 0.0, "assumed": TMEM_NOTE})
    # the best-shape asymptotes: each GPU's tensor fraction (and 8-bit one) at which the
    # model, with the fitted shape mechanism and the GPU's own (or inherited) bandwidth and
    # epilogue, runs its fastest searched shape at the measured best rate
    for table, name, dtype, skip in (
        ("mamf_bf16_matmul_multi_gpu", "tensor_fraction", "bf16", ()),
        ("mamf_fp8_matmul_multi_gpu", "lowp_tensor_fraction", "fp8", SAME_SILICON),
    ):
        for row in ref[table]["rows"]:
            for dev, label in MAMF_NAMES.items():
                if row["accelerator"] != label or dev in skip:
                    continue
                reported = shape(row["best_shape_MxNxK"])
                target = float(row["mamf_tflops"])
                base = replace(
                    GpuEfficiency(),
                    k_fill=eff.k_fill,
                    memory_fraction=inherited(out, dev, "memory_fraction", eff.memory_fraction),
                    epilogue_exposed=inherited(out, dev, "epilogue_exposed", eff.epilogue_exposed),
                )
                f, fastest = solve_asymptote(dev, name, target, reported, dtype, base)
                at_reported = gemm_tflops(dev, with_param(base, name, f), *reported, dtype)
                put(
                    dev,
                    name,
                    {
                        "value": f,
                        "fitted_to": f"{table}, {label}: {target} TFLOP/s at its best searched "
                        f"shape; the model's fastest searched shape "
                        f"({'x'.join(map(str, fastest))}) runs at that rate with the fitted "
                        "tile, wave, fill and epilogue losses (one row: exact in sample)",
                        "fastest_searched_shape": "x".join(map(str, fastest)),
                        "at_reported_shape": {
                            "shape": "x".join(map(str, reported)),
                            "model_tflops": at_reported,
                            "error": at_reported / target - 1.0,
                        },
                    },
                )
    fa = ref["fa3_fp16_forward_h100_by_seqlen"]["rows"]
    rec = fit_attention("h100-sxm", fa, "fa2")
    rec["fitted_to"] = "fa3_fp16_forward_h100_by_seqlen, FlashAttention-2 forward column, even rows"
    rec["backward_check"] = {
        "table": "fa2_fwd_bwd_h100_by_seqlen, FlashAttention-2 forward+backward column, every row",
        **check_attention_backward(
            "h100-sxm", rec["value"], ref["fa2_fwd_bwd_h100_by_seqlen"]["rows"], "fa2"
        ),
    }
    put("h100-sxm", "attention_fraction", rec)
    put("h100-sxm", "sdpa_backward_ratio", fit_sdpa_backward("h100-sxm", rec["value"], ref))
    rec = fit_attention(
        "a100-sxm-80gb", ref["fa2_fwd_bwd_a100_by_seqlen"]["rows"], "fa2", backward=True
    )
    rec["fitted_to"] = (
        "fa2_fwd_bwd_a100_by_seqlen, FlashAttention-2 forward+backward column (no forward-only "
        "table for A100), even rows"
    )
    put("a100-sxm-80gb", "attention_fraction", rec)
    # decode attention's fixed launch latency: H100 on the grouped rows (the layout serving
    # engines run), A100 (multi-head rows only) on every other row
    rows = ref[DECODE_TABLE]["rows"]
    h100 = [r for r in rows if r["gpu"] == "h100-sxm"]
    grouped = [r for r in h100 if r["kv_heads"] < r["q_heads"]]
    rec = fit_decode_latency(
        "h100-sxm",
        fitted_efficiency(out, "h100-sxm"),
        grouped,
        [r for r in h100 if r not in grouped],
    )
    rec["fitted_to"] = (
        f"{DECODE_TABLE} (benchmarks/kernel_rows.yaml), FlashAttention-2 paged decode on "
        "H100 SXM, the grouped-query rows (64 sequences of 32-256 tokens, 64/8 heads); held "
        "out: the multi-head rows (32/32 heads, 32-512 tokens)"
    )
    put("h100-sxm", "decode_attention_latency_s", rec)
    a100 = [r for r in rows if r["gpu"] == "a100-sxm-80gb"]
    rec = fit_decode_latency(
        "a100-sxm-80gb", fitted_efficiency(out, "a100-sxm-80gb"), a100[1::2], a100[0::2]
    )
    rec["fitted_to"] = (
        f"{DECODE_TABLE} (benchmarks/kernel_rows.yaml), FlashAttention-2 paged decode on "
        "A100 80GB, multi-head rows of 64 and 256 tokens; held out: those of 32, 128 and 512"
    )
    put("a100-sxm-80gb", "decode_attention_latency_s", rec)
    return out


def fitted_source(fitted: dict[str, dict[str, Any]], dev: str, name: str) -> str:
    """The device whose fit of ``name`` ``dev`` takes: its own, else the nearest fitted
    architecture along ``INHERIT`` (the last one tried when none has it)."""
    src, seen = dev, set()
    while name not in fitted.get(src, {}) and src in INHERIT and src not in seen:
        seen.add(src)
        src = INHERIT[src]
    return src


def inherited(fitted: dict[str, dict[str, Any]], dev: str, name: str, default: float) -> float:
    """``name`` of ``dev`` as fitted so far, or of the nearest fitted architecture
    (``INHERIT``), or ``default``."""
    rec = fitted.get(fitted_source(fitted, dev, name), {}).get(name)
    return float(rec["value"]) if rec else default


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
            src = fitted_source(fitted, dev, name)
            if name not in fitted.get(src, {}):
                continue
            rec = dict(fitted[src][name])
            if src != dev and "assumed" not in rec:
                rec = {"value": rec["value"], "inherited_from": src}
            params[name] = rec
        out[dev] = params
    return out


def main(argv: list[str] | None = None) -> int:
    """Fit, print and write the per-GPU kernel efficiency."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", type=Path, default=KERNELS)
    ap.add_argument("--extra", type=Path, default=EXTRA, help="this project's kernel rows")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    devices = with_inheritance(fit({**entries(args.kernels), **entries(args.extra)}))
    for dev, params in devices.items():
        cells = []
        for name, rec in params.items():
            how = (
                f"from {rec['inherited_from']}"
                if "inherited_from" in rec
                else (
                    "own bf16"
                    if "taken_from" in rec
                    else ("assumed" if "assumed" in rec else "fitted")
                )
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
