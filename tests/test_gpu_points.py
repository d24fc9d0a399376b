"""GPU points files: reading, checking, fitting a calibration to one, and the shipped one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from xpusim.engine.cli import app
from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu import measure
from xpusim.plugins.gpu import points as points_mod
from xpusim.plugins.gpu.builtin_params import builtin_params
from xpusim.plugins.gpu.calibration import load as load_calibration
from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency
from xpusim.plugins.gpu.measure import calibrate_from_points, fit_params, points_path
from xpusim.plugins.gpu.points import Point, Points, attention_op, gemm_op

REPO = Path(__file__).resolve().parents[1]
SHIPPED_POINTS = REPO / "calibrations" / "points" / "vidur-h100-fp16-linear.points.json"
SHIPPED_CAL = REPO / "calibrations" / "h100-sxm-vidur-fp16.json"
SHIPPED = (
    (SHIPPED_CAL, SHIPPED_POINTS),
    (
        REPO / "calibrations" / "h100-sxm-2026-12-06.json",
        REPO / "calibrations" / "points" / "h100-sxm-2026-12-06.points.json",
    ),
)
"""Each shipped calibration with the points file it was fitted to."""

# Decode- to prefill-sized GEMMs of 4096/11008 layers: enough spread to tell memory,
# overhead and tensor rate apart.
SHAPES = [
    (m, n, k)
    for m in (1, 8, 64, 256, 1024, 4096)
    for n, k in ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
]


def _generated(eff: GpuEfficiency) -> Points:
    spec = catalog()["h100-sxm"]
    model = GpuCostModel(spec, eff)
    gemm = tuple(
        Point(gemm_op(m, n, k, "fp16"), model(gemm_op(m, n, k, "fp16")).seconds, f"g{m}")
        for m, n, k in SHAPES
    )
    attn = tuple(
        Point(
            attention_op(32, q, q, 128, "fp16"), model(attention_op(32, q, q, 128, "fp16")).seconds
        )
        for q in (512, 2048)
    )
    return Points("h100-sxm", "generated", "2026-11-23", "the test", gemm, attn)


def _write(tmp_path: Path, data: Any, name: str = "p.points.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _valid() -> dict[str, Any]:
    return {
        "format": points_mod.FORMAT,
        "device": "h100-sxm",
        "measured_on": "a machine",
        "date": "2026-11-23",
        "source": "a command",
        "gemm": [{"m": 8, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 2e-5}],
    }


def test_points_round_trip_through_json(tmp_path: Path) -> None:
    """Saving and loading keeps every op's shape and dtype, the times, labels and the
    header, and unknown header fields survive."""
    pts = replace(_generated(GpuEfficiency()), copy_bytes_per_s=3e12, kernel_overhead_s=2e-6)
    pts = replace(pts, extra={"excerpt": "which rows"})
    back = points_mod.load(points_mod.save(pts, tmp_path / "x.points.json"))
    assert [(p.op.dims, p.op.dtype, p.seconds, p.label) for p in back.gemm] == [
        (p.op.dims, p.op.dtype, p.seconds, p.label) for p in pts.gemm
    ]
    assert [(p.op.batch, p.op.dims) for p in back.attention] == [
        (p.op.batch, p.op.dims) for p in pts.attention
    ]
    assert (back.device, back.copy_bytes_per_s, back.kernel_overhead_s) == ("h100-sxm", 3e12, 2e-6)
    assert back.extra == {"excerpt": "which rows"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"format": "xpusim-gpu-calibration"}, "'format' must be 'xpusim-gpu-points/1'"),
        ({"source": ""}, "lacks source"),
        ({"gemm": {"m": 1}}, "'gemm' must be a list"),
        ({"gemm": [{"m": 8, "n": 4096, "dtype": "fp16", "seconds": 1e-5}]}, "gemm[0] lacks k"),
        (
            {"gemm": [{"m": 8, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": -1}]},
            "gemm[0]: 'seconds' must be a positive number",
        ),
        (
            {"gemm": [{"m": 8.5, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 1e-5}]},
            "gemm[0]: 'm' must be a positive whole number",
        ),
        (
            {"gemm": [{"m": 8, "n": 4096, "k": 4096, "dtype": "half", "seconds": 1e-5}]},
            "gemm[0]: 'dtype' must be one of",
        ),
        ({"gemm": []}, "has no measured points"),
        ({"kernel_overhead_s": "fast"}, "'kernel_overhead_s' must be a number >= 0"),
        ({"attention": [{"bh": 1, "q": 1, "kv": 1, "dtype": "fp16", "seconds": 1}]}, "lacks d"),
    ],
)
def test_bad_points_files_name_the_file_and_entry(
    tmp_path: Path, change: dict[str, Any], fragment: str
) -> None:
    """Each malformed file is one sentence naming the file and the entry at fault."""
    path = _write(tmp_path, {**_valid(), **change})
    with pytest.raises(XpusimError) as err:
        points_mod.load(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_unreadable_points_files_are_named(tmp_path: Path) -> None:
    """A missing file and one that is not JSON are refused by name."""
    with pytest.raises(XpusimError, match="does not exist"):
        points_mod.load(tmp_path / "absent.json")
    with pytest.raises(XpusimError, match="not valid JSON"):
        points_mod.load(_write(tmp_path, "{gemm: oops"))


def test_fit_without_copy_or_overhead_recovers_all_gemm_parameters() -> None:
    """With no streaming-copy rate and no overhead figure, the tensor fraction, memory
    fraction and kernel overhead that generated the GEMM times are all found from them,
    and the attention fraction from the attention times."""
    true = replace(
        GpuEfficiency(),
        tensor_fraction=0.55,
        memory_fraction=0.62,
        kernel_overhead_s=3e-6,
        attention_fraction=0.44,
    )
    params = fit_params(catalog()["h100-sxm"], _generated(true).for_fit())
    assert params["tensor_fraction"] == pytest.approx(0.55, abs=0.011)
    assert params["memory_fraction"] == pytest.approx(0.62, abs=0.011)
    assert params["kernel_overhead_s"] == pytest.approx(3e-6, abs=0.3e-6)
    assert params["attention_fraction"] == pytest.approx(0.44, abs=0.011)


def test_calibrate_from_points_writes_a_calibration_that_names_its_points(
    tmp_path: Path,
) -> None:
    """The calibration keeps the points' device, machine and date, names the points file
    in its command, and loads back with the fitted parameters."""
    src = points_mod.save(_generated(GpuEfficiency()), tmp_path / "g.points.json")
    cal, path = calibrate_from_points(catalog(), src, tmp_path / "cal.json", log=lambda _s: None)
    back = load_calibration(path)
    assert back.device == "h100-sxm" and back.date == "2026-11-23"
    assert "generated" in back.measured_on and "the test" in back.measured_on
    assert f"--points {src}" in back.command
    assert back.params == pytest.approx(cal.params)
    assert back.params["tensor_fraction"] == pytest.approx(0.70, abs=0.011)


def test_points_for_an_unknown_device_are_refused(tmp_path: Path) -> None:
    """A points file naming a device the GPU catalog lacks is refused with the known ones."""
    path = _write(tmp_path, {**_valid(), "device": "h900"})
    with pytest.raises(XpusimError, match=r"'h900' is not in the GPU catalog; known: .*h100-sxm"):
        calibrate_from_points(catalog(), path, tmp_path / "c.json", log=lambda _s: None)
    assert not (tmp_path / "c.json").exists()


def test_measured_calibration_keeps_its_points_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``calibrate_gpu`` writes ``<out>.points.json`` with the raw measurements, and fitting
    that file again gives the same parameters (CUDA replaced by generated times)."""
    gen = _generated(replace(GpuEfficiency(), tensor_fraction=0.6))

    class _Cuda:
        @staticmethod
        def get_device_name(_i: int) -> str:
            return "NVIDIA H100 80GB HBM3"

    class _Torch:
        cuda = _Cuda()

    def fake_measure(*_a: Any, **_k: Any) -> points_mod.Points:
        return replace(gen, copy_bytes_per_s=2.8e12, kernel_overhead_s=2.5e-6)

    monkeypatch.setattr(measure, "_cuda", lambda: _Torch())
    monkeypatch.setattr(measure, "measure", fake_measure)
    monkeypatch.setattr(measure, "describe_machine", lambda: "1x fake H100")
    cal, path = measure.calibrate_gpu(catalog(), tmp_path / "h100.json", log=lambda _s: None)
    kept = points_mod.load(points_path(path))
    assert points_path(path).name == "h100.points.json"
    assert kept.measured_on == "1x fake H100" and kept.copy_bytes_per_s == 2.8e12
    assert len(kept.gemm) == len(gen.gemm)
    spec = catalog()["h100-sxm"]
    refit = fit_params(spec, kept.for_fit(), builtin_params(spec)[0])
    assert refit == pytest.approx(dict(cal.params))


@pytest.mark.parametrize(("cal_file", "points_file"), SHIPPED)
def test_shipped_calibration_is_the_fit_of_the_shipped_points(
    cal_file: Path, points_file: Path
) -> None:
    """Each shipped calibration is what fitting its points file gives today (over the
    device's built-in parameters, as ``xpusim calibrate --points`` fits), and it names that
    file, so the shipped figures can be reproduced."""
    cal = load_calibration(cal_file)
    assert points_file.name in cal.command
    pts = points_mod.load(points_file)
    assert pts.device == cal.device == "h100-sxm"
    assert len(pts.gemm) >= 20
    spec = catalog()[cal.device]
    refit = fit_params(spec, pts.for_fit(), builtin_params(spec)[0])
    assert refit == pytest.approx(dict(cal.params))


def test_calibrate_command_fits_a_points_file(tmp_path: Path) -> None:
    """`xpusim calibrate --backend gpu --points FILE --out OUT` needs no GPU."""
    src = points_mod.save(_generated(GpuEfficiency()), tmp_path / "g.points.json")
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(
        app, ["calibrate", "--backend", "gpu", "--points", str(src), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "calibration written" in res.output and load_calibration(out).device == "h100-sxm"


def test_calibrate_command_refuses_bad_points_calmly(tmp_path: Path) -> None:
    """A broken points file and a backend that takes none both end with exit 2 and one
    paragraph, writing nothing."""
    bad = _write(tmp_path, {**_valid(), "gemm": [{"m": 8}]})
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(
        app, ["calibrate", "--backend", "gpu", "--points", str(bad), "--out", str(out)]
    )
    assert res.exit_code == 2 and "gemm[0] lacks" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(
        app, ["calibrate", "--backend", "cpu", "--points", str(bad), "--out", str(out)]
    )
    assert res.exit_code == 2 and "--points: backend 'cpu'" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("cuda_name", "device"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_cuda_names_find_their_catalog_device(cuda_name: str, device: str) -> None:
    """The names CUDA reports map to the catalog device of the same model and board."""
    assert measure.match_device(catalog(), cuda_name).name == device


@pytest.mark.parametrize(
    ("cuda_name", "why"),
    [
        ("NVIDIA A100 80GB PCIe", "no catalog device is a PCIe board of that model"),
        ("NVIDIA H100 NVL", "no catalog device is a NVL board of that model"),
        ("NVIDIA A100-SXM4-40GB", "its 40 GB differ from the catalog's a100-sxm-80gb"),
        ("NVIDIA L40", "no catalog device is a board of that model"),
    ],
)
def test_cuda_names_of_other_boards_are_refused(cuda_name: str, why: str) -> None:
    """A board the catalog does not describe (other variant, other memory, a model whose
    name only starts like a known one) is refused rather than fitted as a neighbour."""
    with pytest.raises(XpusimError) as err:
        measure.match_device(catalog(), cuda_name)
    assert why in str(err.value) and "register_devices" in str(err.value)


def test_each_efficiency_field_names_its_own_source(
    host: Any, write_yaml: Callable[..., Path]
) -> None:
    """A system's assumptions say 'fitted' only for the fields the calibration set, the
    inline override for the field it set, the public kernel fit for the fields it covers
    and 'default' for the rest."""
    from xpusim.engine.scenario import load_scenario

    sc = load_scenario(
        write_yaml(
            f"""\
name: sources
model: {{family: llama, preset: llama-2-7b}}
workload: {{kind: offline, count: 4, prompt_tokens: {{dist: constant, value: 64}},
           output_tokens: {{dist: constant, value: 4}}}}
systems:
  - name: h100
    backend: gpu
    device: h100-sxm
    options: {{calibration: {SHIPPED_CAL}, efficiency: {{link_fraction: 0.9}}}}
"""
        ),
        host,
    )
    _eff, sources = host.backends.get("gpu").efficiency_sources(sc.systems[0])
    assert sources["tensor_fraction"].startswith("fitted: calibration")
    assert "h100-sxm-vidur-fp16.json" in sources["memory_fraction"]
    assert sources["attention_fraction"].startswith("public kernel fit: fitted to fa3_")
    assert sources["vector_ratio"].startswith("default")
    assert sources["link_fraction"] == "system 'h100' options.efficiency"


def test_a_points_file_passed_as_a_calibration_says_how_to_fit_it() -> None:
    """Giving `--calibration` the points file instead of the fitted file names the fix."""
    with pytest.raises(XpusimError, match="holds measured kernel times, not a calibration"):
        load_calibration(SHIPPED_POINTS)
