"""CPU calibration: microbenchmarks, the fit, the file, and the GPU efficiency fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from xpusim.engine.errors import XpusimError
from xpusim.plugins.cpu import calibrate as cal_mod
from xpusim.plugins.cpu.calibrate import (
    CpuCalibration,
    KernelFit,
    StreamTable,
    fit_gemm,
    kernel_time,
)

FIXED_CALIBRATION = Path(__file__).parent / "data" / "cpu-calibration-1t.json"
"""The quick one-thread calibration measured once and committed, from which the cpu
backend's tests price (tests/test_cpu_backend.py, tests/test_conformance.py)."""


@pytest.fixture(scope="module")
def quick_cal(tmp_path_factory: pytest.TempPathFactory) -> CpuCalibration:
    """A quick one-thread calibration run through :func:`calibrate` on the measurements
    recorded in the committed file, replayed in place of the microbenchmarks. The
    calibrator's own steps (fits, tables, provenance, the file) run as they do on a
    machine, and no result depends on how fast this one is."""
    fixed = cal_mod.load(FIXED_CALIBRATION)
    recorded = fixed.points

    def gemm_points(shapes: object, dtype: str, cold: bool = False) -> list[dict[str, float]]:
        return list(recorded["gemm_cold.fp32" if cold else f"gemm.{dtype}"])

    def no_timing(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("the replayed calibration timed a kernel on this machine")

    mp = pytest.MonkeyPatch()
    mp.setattr(cal_mod, "time_call", no_timing)  # every measurement goes through it
    mp.setattr(cal_mod, "_dispatch", lambda: dict(recorded["dispatch"]))
    mp.setattr(cal_mod, "_measure_streams", lambda quick, log: dict(fixed.streams))
    mp.setattr(cal_mod, "_gemm_points", gemm_points)
    mp.setattr(cal_mod, "_conv_points", lambda shapes: list(recorded["conv.fp32"]))
    mp.setattr(cal_mod, "_attention_points", lambda shapes: list(recorded["attention.fp32"]))
    try:
        out = tmp_path_factory.mktemp("cal") / "cpu.json"
        return cal_mod.calibrate(out, quick=True, threads=1, command="pytest quick")
    finally:
        mp.undo()


def test_replayed_measurements_fit_the_committed_calibration(quick_cal: CpuCalibration) -> None:
    """Fitting the committed file's recorded measurements again gives its fits: the file
    is what the calibrator makes of what it measured."""
    fixed = cal_mod.load(FIXED_CALIBRATION)
    assert quick_cal.kernels == fixed.kernels
    assert quick_cal.dispatch_s == fixed.dispatch_s


def test_quick_calibration_records_machine_date_and_command(quick_cal: CpuCalibration) -> None:
    """The file says where (CPU model, cores, torch, threads), when and by which command."""
    raw = json.loads(Path(quick_cal.path).read_text())
    assert raw["format"] == cal_mod.FORMAT
    assert raw["machine"]["cpu_model"] == cal_mod.cpu_model()
    assert raw["machine"]["threads"] == 1 and raw["threads"] == 1
    assert raw["machine"]["torch_version"]
    assert raw["machine"]["logical_cores"] >= 1
    assert raw["date"].endswith("Z") and raw["command"] == "pytest quick"
    assert raw["quick"] is True
    assert "measured on this machine by xpusim calibrate" in quick_cal.cited()


def test_quick_calibration_measures_positive_rates(quick_cal: CpuCalibration) -> None:
    """Every kernel family has a positive fitted peak and every stream table positive
    times that do not fall as sizes grow (the calibrator builds its tables so, whatever
    the measured times)."""
    for fam in ("gemm", "gemm_cold", "conv", "attention"):
        fit = quick_cal.kernels[fam]["fp32"]
        assert fit.peak_flops > 0 and fit.overhead_s >= 0 and 0 < fit.mem_eff <= 1
    assert quick_cal.peak_flops()["fp32"] > 0 and "bf16" in quick_cal.peak_flops()
    for kind in cal_mod.STREAM_KINDS:
        t = quick_cal.streams[kind]
        assert all(s > 0 for s in t.seconds)
        assert list(t.seconds) == sorted(t.seconds)
    assert quick_cal.memory_bandwidth > 0 and quick_cal.dispatch_s > 0


def test_calibration_round_trips_through_json(quick_cal: CpuCalibration, tmp_path: Path) -> None:
    """save then load gives the same fits, tables and provenance."""
    p = cal_mod.save(quick_cal, tmp_path / "again.json")
    back = cal_mod.load(p)
    assert back.kernels["gemm"]["fp32"] == quick_cal.kernels["gemm"]["fp32"]
    assert back.streams["copy"] == quick_cal.streams["copy"]
    assert back.machine == dict(quick_cal.machine)
    assert back.date == quick_cal.date and back.threads == 1
    assert back.matches(cal_mod.machine(1)) and not back.matches(cal_mod.machine(99))


def test_committed_calibration_is_complete_and_says_how_it_was_made() -> None:
    """The committed calibration the cpu backend's tests price from loads, records the
    command, machine and date that produced it, and holds every fit and table the pricer
    reads, with positive rates."""
    cal = cal_mod.load(FIXED_CALIBRATION)
    assert "c.calibrate(" in cal.command and "quick=True, threads=1" in cal.command
    assert "committed once" in cal.command
    assert cal.quick and cal.threads == 1 and cal.date.endswith("Z")
    assert cal.machine["cpu_model"] and cal.machine["torch_version"]
    for fam in ("gemm", "gemm_cold", "conv", "attention"):
        fit = cal.kernels[fam]["fp32"]
        assert fit.peak_flops > 0 and 0 < fit.mem_eff <= 1
    assert set(cal.streams) == set(cal_mod.STREAM_KINDS)
    for table in cal.streams.values():
        assert all(s > 0 for s in table.seconds) and list(table.seconds) == sorted(table.seconds)
    assert cal.dispatch_s > 0 and cal.view_s > 0 and cal.module_call_s > 0


def test_bad_calibration_files_name_the_file(tmp_path: Path) -> None:
    """Missing, non-JSON, foreign and incomplete files raise XpusimError naming the file."""
    with pytest.raises(XpusimError, match="does not exist"):
        cal_mod.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(XpusimError, match=r"bad\.json"):
        cal_mod.load(bad)
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "h100-sxm", "params": {}}))
    with pytest.raises(XpusimError, match="not a CPU calibration"):
        cal_mod.load(gpu)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"format": cal_mod.FORMAT, "kernels": {}}))
    with pytest.raises(XpusimError, match=r"partial\.json"):
        cal_mod.load(partial)


def test_fit_recovers_known_parameters() -> None:
    """Points generated from a known model are fitted back to (nearly) zero error and a
    peak within the grid's resolution."""
    mem = StreamTable((1e3, 1e9), (1e-6, 1e-1))  # 10 GB/s streaming
    true = KernelFit(100e9, 8.0, 16.0, 4.0, 2e-6, mem_eff=0.5)
    pts = []
    for m, n, k in [
        (1, 768, 768),
        (4, 768, 768),
        (16, 256, 256),
        (64, 64, 64),
        (128, 768, 768),
        (512, 512, 512),
        (1024, 1024, 1024),
        (1, 4096, 4096),
        (32, 32, 32),
        (256, 1024, 64),
    ]:
        flops, nbytes = 2.0 * m * n * k, 4.0 * (m * k + n * k + m * n)
        c, mm = kernel_time(true, flops, m, n, k, nbytes, mem)
        pts.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "flops": flops,
                "bytes": nbytes,
                "seconds": max(c, mm) + true.overhead_s,
            }
        )
    fit = fit_gemm(pts, mem, true.overhead_s)
    assert fit.rms_log_error < 0.05
    assert fit.peak_flops == pytest.approx(100e9, rel=0.1)


def test_stream_table_interpolates_in_log_space() -> None:
    """Between points the time follows a power law; beyond the last the bandwidth holds;
    below the first the time is the first point's (the overhead floor)."""
    t = StreamTable.from_points([[1e3, 1e-6], [1e6, 1e-4]])
    assert t.seconds_for(10.0) == 1e-6
    assert t.seconds_for(2e6) == pytest.approx(2e-4)
    mid = t.seconds_for(math_sqrt(1e3 * 1e6))
    assert mid == pytest.approx(1e-5, rel=1e-6)


def math_sqrt(x: float) -> float:
    """Square root (kept local so the test reads as arithmetic)."""
    return float(x) ** 0.5


def test_cache_dir_respects_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Automatic calibrations go under $XDG_CACHE_HOME, else the temp folder, never $HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cal_mod.cache_dir() == tmp_path / "xpusim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not str(cal_mod.cache_dir()).startswith(str(tmp_path / "home"))


def test_describing_the_machine_imports_no_torch() -> None:
    """The cpu backend's module imports torch only to run a model, and the machine a
    calibration must match (its torch version included) is described from torch's
    package metadata: listing the backend's devices (every plan over all devices does)
    imports no torch where a matching calibration is at hand. The version is the
    module's own."""
    probe = (
        "import sys; import xpusim.plugins.cpu.backend; "
        "from xpusim.plugins.cpu import calibrate as c; m = c.machine(1); "
        "print(m['torch_version'], 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    import torch

    assert out == [str(torch.__version__), "False"]


def test_gpu_fit_recovers_fractions_without_a_gpu() -> None:
    """The GPU efficiency fit finds the tensor and attention fractions that generated the
    points, and the measured memory fraction and overhead, with no CUDA involved."""
    from dataclasses import replace

    from xpusim.plugins.gpu.catalog import load_catalog
    from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency
    from xpusim.plugins.gpu.measure import GEMM_SHAPES, attention_op, fit_params, gemm_op

    cat = load_catalog()
    spec = cat["h100-sxm"] if "h100-sxm" in cat else next(iter(cat.values()))
    true = replace(
        GpuEfficiency(),
        tensor_fraction=0.63,
        attention_fraction=0.41,
        memory_fraction=0.9,
        kernel_overhead_s=4e-6,
    )
    model = GpuCostModel(spec, true)
    gemm = [
        {"op": gemm_op(m, n, k, "bf16"), "seconds": model(gemm_op(m, n, k, "bf16")).seconds}
        for m, n, k in GEMM_SHAPES
    ]
    attn = [
        (attention_op(32, q, q, 128, "bf16"), model(attention_op(32, q, q, 128, "bf16")).seconds)
        for q in (512, 2048, 4096)
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
    assert params["memory_fraction"] == pytest.approx(0.9)
    assert params["kernel_overhead_s"] == pytest.approx(4e-6)
    assert params["tensor_fraction"] == pytest.approx(0.63, abs=0.011)
    assert params["attention_fraction"] == pytest.approx(0.41, abs=0.011)


def test_gpu_calibration_without_cuda_is_a_clear_error() -> None:
    """On a machine without CUDA the GPU calibration refuses with a sentence, not a trace."""
    import torch

    from xpusim.plugins.gpu.measure import calibrate_gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(XpusimError, match="needs a CUDA GPU"):
        calibrate_gpu({}, None)


def test_time_call_reduces_samples_by_the_chosen_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The median of the samples by default (what the measured device reports of whole
    steps), the fastest one with ``statistic="min"``; an unknown name is an error."""
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # samples of 1, 3 and 2 clock units
    samples_seen: list[float] = []

    def fake_clock() -> float:
        return next(ticks)

    monkeypatch.setitem(cal_mod._CLOCK, "wall", fake_clock)
    for stat, want in (("median", 2.0), ("min", 1.0)):
        ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])
        got = cal_mod.time_call(
            lambda: None,
            samples=3,
            warmup=0,
            min_sample_s=0.0,
            budget_s=0.0,
            clock="wall",
            statistic=stat,
        )
        samples_seen.append(got)
        assert got == want
    assert samples_seen == [2.0, 1.0]
    with pytest.raises(XpusimError, match="unknown statistic"):
        cal_mod.statistic_fn("mean")


def test_calibration_records_its_statistic_and_fixed_costs(quick_cal: CpuCalibration) -> None:
    """A new calibration is the median of samples, says so, and measures a view dispatch
    and an empty module call; a file without the field is read as the older fastest-sample
    statistic."""
    assert quick_cal.statistic == "median"
    assert "median of samples" in quick_cal.cited()
    assert quick_cal.view_s > 0 and quick_cal.module_call_s > 0
    raw = quick_cal.to_json()
    assert raw["statistic"] == "median"
    del raw["statistic"]
    assert CpuCalibration.from_json(raw).statistic == "min"


def test_fit_keeps_residuals_and_corrects_at_measured_shapes() -> None:
    """A point the smooth model cannot follow (here twice as slow as its neighbours say)
    is mostly recovered at its own shape, while a shape far from every point keeps the
    smooth fit."""
    mem = StreamTable((1e3, 1e9), (1e-6, 1e-1))
    true = KernelFit(100e9, 8.0, 16.0, 4.0, 2e-6, mem_eff=0.5)
    shapes = [
        (1, 768, 768),
        (4, 768, 768),
        (16, 256, 256),
        (64, 64, 64),
        (128, 768, 768),
        (512, 512, 512),
        (1024, 1024, 1024),
        (1, 4096, 4096),
        (32, 32, 32),
    ]
    pts = []
    for m, n, k in shapes:
        flops, nbytes = 2.0 * m * n * k, 4.0 * (m * k + n * k + m * n)
        c, mm = kernel_time(true, flops, m, n, k, nbytes, mem)
        slow = 2.0 if (m, n, k) == (128, 768, 768) else 1.0
        pts.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "flops": flops,
                "bytes": nbytes,
                "seconds": slow * (max(c, mm) + true.overhead_s),
            }
        )
    fit = fit_gemm(pts, mem, true.overhead_s)
    assert len(fit.residuals) == len(shapes)
    at = next(p for p in pts if (p["m"], p["n"], p["k"]) == (128, 768, 768))
    c, mm = kernel_time(fit, at["flops"], 128, 768, 768, at["bytes"], mem)
    corrected = max(c, mm) + fit.overhead_s
    smooth = (max(c, mm) / fit.correction(128, 768, 768)) + fit.overhead_s
    assert fit.correction(128, 768, 768) > 1.2
    assert abs(math.log(corrected / at["seconds"])) < 0.5 * abs(math.log(smooth / at["seconds"]))
    assert fit.correction(8192, 8192, 8192) == pytest.approx(1.0, abs=0.02)
    assert KernelFit.from_json(fit.to_json()) == fit
