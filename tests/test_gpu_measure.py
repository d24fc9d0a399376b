"""The GPU measuring script: its dry run on the CPU writes a points file the calibration
fits, and the fit recovers 8-bit GEMM and causal attention fractions without a GPU."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu import points as points_mod
from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency
from xpusim.plugins.gpu.measure import (
    calibrate_from_points,
    fit_params,
    memory_note,
    strided_fraction,
)
from xpusim.plugins.gpu.microbench import GEMM_SHAPES, copies, main, rotating
from xpusim.plugins.gpu.points import attention_backward_op, attention_op, gemm_op, is_backward

REPO = Path(__file__).resolve().parents[1]


def test_cpu_dry_run_writes_a_points_file_the_fit_reads(tmp_path: Path) -> None:
    """``--device cpu`` times tiny GEMMs, attention, copy, launch gaps and a decode step;
    the file says it is a dry run, loads as points (causal prefill kept) and fits."""
    out = tmp_path / "dry.points.json"
    assert main(["--out", str(out), "--device", "cpu", "--catalog-device", "h100-sxm"]) == 0
    pts = points_mod.load(out)
    assert pts.device == "h100-sxm" and "DRY RUN" in pts.measured_on
    assert pts.gemm and pts.attention and pts.copy_bytes_per_s and pts.kernel_overhead_s
    assert any(p.op.attr("causal", 0.0) > 0 for p in pts.attention)
    backward = [p for p in pts.attention if is_backward(p.op)]
    assert backward and all(p.label.startswith("sdpa backward") for p in backward)
    assert pts.extra["decode_step"]["eager_s"] > 0 and pts.extra["launch_gap_s"] > 0
    step = pts.extra["decode_step"]
    assert step["prefill_eager_s"] > 0 and step["prefill_tokens"] > 0
    kernels = step["decode_kernels"]
    assert kernels and all(k["us"] > 0 and k["calls"] > 0 for k in kernels)
    assert any("mm" in k["kernel"] for k in kernels)
    gqa = pts.extra["gqa_decode"]
    assert gqa["repeated_kv_bytes"] == gqa["kv_bytes"] * gqa["heads"] // gqa["kv_heads"]
    assert all(gqa[k] > 0 for k in ("grouped_s", "repeated_s", "kv_once_s"))
    ew = pts.extra["elementwise"]
    for op in ("copy", "mul", "mul_chunks", "silu_chunk", "repeat_interleave"):
        assert ew[f"{op}_s"] > 0 and ew[f"{op}_bytes"] > 0
    labels = [p.label for p in pts.gemm]
    assert {"mm (wall)", "linear (wall)"} <= set(labels)
    cal, path = calibrate_from_points(catalog(), out, tmp_path / "cal.json", log=lambda s: None)
    assert path.exists() and "tensor_fraction" in cal.params
    assert "sdpa_backward_ratio" in cal.params


def test_timer_counts_each_rotated_operand_set() -> None:
    """Operand sets cover the rotation budget (1 to 32 of them) and a rotating callable
    walks them in turn, so repeated calls do not re-read one set from a cache."""
    assert copies(10, 0) == 1 and copies(10, 35) == 4 and copies(1, 1 << 40) == 32
    seen: list[int] = []
    call = rotating(seen.append, [(1,), (2,), (3,)])
    for _ in range(5):
        call()
    assert seen == [1, 2, 3, 1, 2]


def test_shell_wrapper_refuses_without_arguments() -> None:
    """The shell script states its usage and exits 2 when given no output file."""
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_measure.sh")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "usage" in run.stderr


def test_fit_recovers_lowp_and_causal_attention_fractions() -> None:
    """Points generated from known fractions, fp8 GEMMs and causal prefills among them,
    give those fractions back."""
    spec = catalog()["h100-sxm"]
    true = replace(
        GpuEfficiency(),
        tensor_fraction=0.8,
        lowp_tensor_fraction=0.6,
        attention_fraction=0.35,
        memory_fraction=0.9,
        kernel_overhead_s=4e-6,
    )
    model = GpuCostModel(spec, true)
    gemm = [
        (gemm_op(m, n, k, dt), model(gemm_op(m, n, k, dt)).seconds)
        for m, n, k in GEMM_SHAPES
        for dt in ("bf16", "fp8")
    ]
    attn = [
        (op, model(op).seconds)
        for op in (attention_op(32, s, s, 128, "bf16", causal=True) for s in (512, 2048, 8192))
    ]
    params = fit_params(
        spec,
        {
            "copy_bytes_per_s": 0.9 * spec.memory_bw.value,
            "kernel_overhead_s": 4e-6,
            "gemm": gemm,
            "attention": attn,
        },
    )
    assert params["tensor_fraction"] == pytest.approx(0.8, abs=0.011)
    assert params["lowp_tensor_fraction"] == pytest.approx(0.6, abs=0.011)
    assert params["attention_fraction"] == pytest.approx(0.35, abs=0.011)


def test_fit_recovers_the_sdpa_backward_ratio() -> None:
    """Backward points of PyTorch SDPA generated at a known ratio of the flash-attn
    package's backward give it back, with the forward fraction fitted to the forward
    points alone (a slower backward does not drag the forward fraction down)."""
    spec = catalog()["h100-sxm"]
    true = replace(GpuEfficiency(), attention_fraction=0.33, sdpa_backward_ratio=0.6)
    sdpa = GpuCostModel(spec, true, attention_kernel="torch-sdpa")
    fwd = [attention_op(16, s, s, 128, "bf16", causal=True) for s in (1024, 4096, 8192)]
    bwd = [attention_backward_op(op) for op in fwd]
    params = fit_params(spec, {"attention": [(op, sdpa(op).seconds) for op in (*fwd, *bwd)]})
    assert params["attention_fraction"] == pytest.approx(0.33, abs=0.011)
    assert params["sdpa_backward_ratio"] == pytest.approx(0.6, abs=0.011)
    assert "sdpa_backward_ratio" not in fit_params(
        spec, {"attention": [(op, sdpa(op).seconds) for op in fwd]}
    )
    # a build faster than the package's backward is fitted as such, not capped at 1
    fast = GpuCostModel(spec, replace(true, sdpa_backward_ratio=1.4), attention_kernel="torch-sdpa")
    params = fit_params(spec, {"attention": [(op, fast(op).seconds) for op in (*fwd, *bwd)]})
    assert params["sdpa_backward_ratio"] == pytest.approx(1.4, abs=0.011)
    with pytest.raises(XpusimError, match="sdpa_backward_ratio"):
        GpuEfficiency(sdpa_backward_ratio=0.0)


def test_points_file_keeps_causal_flag(tmp_path: Path) -> None:
    """A causal attention point survives a save and load; a non-boolean flag is refused."""
    pts = points_mod.Points(
        device="h100-sxm",
        measured_on="test",
        date="2026-12-05",
        source="test",
        attention=(points_mod.Point(attention_op(8, 64, 64, 16, "bf16", causal=True), 1e-5),),
    )
    path = points_mod.save(pts, tmp_path / "p.json")
    back = points_mod.load(path)
    assert back.attention[0].op.attr("causal", 0.0) == 1.0
    assert back.attention[0].op.flops == pytest.approx(4 * 8 * (64 * 64 - 64 * 63 / 2) * 16)
    text = path.read_text().replace('"causal": true', '"causal": "yes"')
    path.write_text(text)
    with pytest.raises(Exception, match="causal"):
        points_mod.load(path)


def test_points_file_keeps_the_backward_pass(tmp_path: Path) -> None:
    """A backward attention point is written with ``"pass": "backward"`` and read back as
    the training graph's backward op (twice the forward's FLOPs); another pass is refused
    naming the field and its choices."""
    fwd = attention_op(8, 64, 64, 16, "bf16", causal=True)
    pts = points_mod.Points(
        device="h100-sxm",
        measured_on="test",
        date="2026-12-06",
        source="test",
        attention=(points_mod.Point(fwd, 1e-5), points_mod.Point(attention_backward_op(fwd), 3e-5)),
    )
    path = points_mod.save(pts, tmp_path / "p.json")
    assert path.read_text().count('"pass": "backward"') == 1
    a, b = points_mod.load(path).attention
    assert not is_backward(a.op) and is_backward(b.op)
    assert b.op.flops == pytest.approx(2 * a.op.flops)
    path.write_text(path.read_text().replace('"pass": "backward"', '"pass": "both"'))
    with pytest.raises(Exception, match="'pass' must be one of forward, backward"):
        points_mod.load(path)


def test_strided_fraction_is_the_rate_of_views_over_contiguous_kernels() -> None:
    """The fit reads an ``elementwise`` entry: median rate on views over median rate on
    contiguous tensors (fixed cost removed), capped at 1; an entry missing either group
    fits nothing, and fit_params passes it through."""
    mb = 1e8
    entry = {
        "copy_s": 1e-4 + 2e-6,
        "copy_bytes": 2 * mb,
        "mul_s": 1.5e-4 + 2e-6,
        "mul_bytes": 3 * mb,
        "mul_chunks_s": 3e-4 + 2e-6,
        "mul_chunks_bytes": 3 * mb,
        "silu_chunk_s": 2e-4 + 2e-6,
        "silu_chunk_bytes": 2 * mb,
        "repeat_interleave_s": 1.25e-4 + 2e-6,
        "repeat_interleave_bytes": 1.25 * mb,
    }
    assert strided_fraction(entry, 2e-6) == pytest.approx(0.5)
    assert strided_fraction({k: v for k, v in entry.items() if "chunk" not in k}, 2e-6) == (
        pytest.approx(0.5)
    )
    assert strided_fraction({"copy_s": 1.0, "copy_bytes": 1.0}) is None
    assert strided_fraction(None) is None
    fast = {**entry, "mul_chunks_s": 1e-5, "silu_chunk_s": 1e-5, "repeat_interleave_s": 1e-5}
    assert strided_fraction(fast) == 1.0
    spec = catalog()["h100-sxm"]
    params = fit_params(spec, {"kernel_overhead_s": 2e-6, "elementwise": entry})
    assert params["strided_elementwise_fraction"] == pytest.approx(0.5)


def test_memory_note_sets_the_catalog_beside_the_runtime_total() -> None:
    """A points file that holds the runtime's memory total gets a line comparing it with
    the catalog (an H100 SXM's 85,045,477,376 B is the catalog's own figure: +0.0%) and
    naming what the CUDA context took; a file without it (a CPU dry run, a published
    table) gets none."""
    spec = catalog()["h100-sxm"]
    bare = points_mod.Points("h100-sxm", "test", "2026-12-06T00:00:00Z", "test")
    assert memory_note(spec, bare) is None
    pts = replace(
        bare,
        extra={"memory_total_bytes": 85_045_477_376, "memory_free_at_start_bytes": 84_500_000_000},
    )
    note = memory_note(spec, pts)
    assert note is not None
    assert "85.05 GB" in note and "(+0.0%)" in note and "context took 0.55 GB" in note
    smaller = replace(pts, extra={"memory_total_bytes": 80_000_000_000})
    note = memory_note(spec, smaller)
    assert note is not None and "(+6.3%)" in note and "context" not in note
