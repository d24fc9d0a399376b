"""Sweeps end to end on the local process pool: results, resumption, failed points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from xpusim.engine.cli import app
from xpusim.engine.host import Host, build_host
from xpusim.engine.scenario import read_scenario_data
from xpusim.engine.sweep import SweepResult, run_sweep

pytestmark = pytest.mark.slow

SCENARIO: dict[str, Any] = {
    "name": "sweep-e2e",
    "seed": 7,
    "model": {"family": "llama", "preset": "llama-2-7b", "dtype": "bf16"},
    "workload": {
        "kind": "serving",
        "arrivals": {
            "process": "gamma",
            "rate": "5.53/s",
            "burstiness": 1.2,
            "count": 30,
            "prompt_tokens": {"dist": "lognormal", "median": 760, "sigma": 0.985, "max": 3072},
            "output_tokens": {"dist": "lognormal", "median": 151, "sigma": 0.859, "max": 1024},
        },
        "scheduler": {"kind": "continuous", "max_batch": 128, "max_batch_tokens": 8192},
        "slo": {"ttft_p99": "2 s", "tbt_p99": "150 ms"},
    },
    "systems": [
        {"name": "h100", "backend": "gpu", "device": "h100-sxm", "count": 1},
        {"name": "l4", "backend": "gpu", "device": "l4", "count": 1},
    ],
    "economics": {"pricing": "cloud", "electricity": "0.12 USD/kWh", "pue": 1.2},
}


@pytest.fixture(scope="module")
def host() -> Host:
    """One plugin host for the module."""
    return build_host()


def _write(folder: Path, sweep: dict[str, Any]) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO | {"sweep": sweep}, sort_keys=False))
    return path


def _sweep(host: Host, path: Path, out: Path, **kw: Any) -> SweepResult:
    data, src = read_scenario_data(path)
    return run_sweep(path, data, src, host.executors.get("local"), out, workers=2, **kw)


class Grid(NamedTuple):
    """The grid sweep's scenario file, sweep folder, result and progress calls."""

    path: Path
    out: Path
    res: SweepResult
    calls: list[tuple[int, int, int]]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, host: Host) -> Grid:
    """A 2 x 2 grid (max batch x PUE) over two systems, run once on two local workers."""
    folder = tmp_path_factory.mktemp("grid")
    path = _write(
        folder,
        {"grid": {"workload.scheduler.max_batch": [8, 64], "economics.pue": [1.1, 1.5]}},
    )
    calls: list[tuple[int, int, int]] = []
    res = _sweep(host, path, folder / "out", progress=lambda *a: calls.append(a))
    return Grid(path, folder / "out", res, calls)


def test_grid_runs_every_point(grid: Grid) -> None:
    """Every point of the grid runs and gets a complete run folder of its own."""
    out, res = grid.out, grid.res
    assert (res.points, res.skipped, res.failed, res.ran) == (4, 0, 0, 4)
    ids = res.frame["point_id"].unique().to_list()
    assert len(ids) == 4
    for pid in ids:
        doc = json.loads((out / "points" / pid / "summary.json").read_text())
        assert [s["name"] for s in doc["systems"]] == ["h100", "l4"]
        assert (out / "points" / pid / "report.md").exists()
        assert not (out / "points" / pid / "report.html").exists()  # sweep.reports default
    assert not [p for p in (out / "points").iterdir() if ".partial" in p.name]


def test_progress_reports_each_point(grid: Grid) -> None:
    """The progress callback starts at zero and counts up to the number of points."""
    calls = grid.calls
    assert calls[0] == (0, 4, 0)
    assert calls[-1] == (4, 4, 0)
    assert [c[0] for c in calls] == list(range(5))


def test_summary_parquet_one_row_per_point_and_system(
    grid: Grid,
) -> None:
    """summary.parquet has param.* columns and one row per point x system, with the
    point's values matching what its run folder simulated."""
    out = grid.out
    frame = pl.read_parquet(out / "summary.parquet")
    assert {"param.workload.scheduler.max_batch", "param.economics.pue"} <= set(frame.columns)
    assert frame.height == 8
    assert frame.group_by("point_id", "name").len()["len"].to_list() == [1] * 8
    assert set(frame["status"].to_list()) == {"ok"}
    pairs = set(
        zip(
            frame["param.workload.scheduler.max_batch"].to_list(),
            frame["param.economics.pue"].to_list(),
            strict=True,
        )
    )
    assert pairs == {(8, 1.1), (8, 1.5), (64, 1.1), (64, 1.5)}
    # A higher PUE costs more energy for the same point otherwise.
    e = frame.filter(
        (pl.col("name") == "h100") & (pl.col("param.workload.scheduler.max_batch") == 64)
    ).sort("param.economics.pue")["energy_j"]
    assert e[1] == pytest.approx(e[0] * 1.5 / 1.1, rel=1e-6)


def test_report_names_best_point(grid: Grid) -> None:
    """sweep.md names the point with the highest throughput, and a Pareto frontier."""
    out, res = grid.out, grid.res
    text = (out / "sweep.md").read_text()
    ok = res.frame.filter(pl.col("status") == "ok")
    best = ok.sort("throughput_tokens_per_s", descending=True).row(0, named=True)
    line = next(r for r in text.splitlines() if r.startswith("| throughput_tokens_per_s"))
    assert best["point_id"] in line and f"| {best['name']} |" in line
    assert "## Pareto frontier" in text
    assert "4 points: 4 ran, 0 failed" in text


def test_resume_skips_finished_points(host: Host, grid: Grid) -> None:
    """A second run into the same folder skips every point and rewrites the same table."""
    path, out, first = grid.path, grid.out, grid.res
    before = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    again = _sweep(host, path, out)
    assert (again.points, again.skipped, again.ran, again.failed) == (4, 4, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == before
    assert again.frame.equals(first.frame)


def test_failed_point_is_recorded_and_others_go_on(host: Host, tmp_path: Path) -> None:
    """A point with an unknown device fails with its error; the other point runs."""
    path = _write(tmp_path, {"grid": {"systems.1.device": ["l4", "nosuch-chip"]}})
    res = _sweep(host, path, tmp_path / "out")
    assert (res.points, res.failed, res.ran) == (2, 1, 1)
    frame = pl.read_parquet(tmp_path / "out" / "summary.parquet")
    bad = frame.filter(pl.col("param.systems.1.device") == "nosuch-chip")
    assert bad["status"].to_list() == ["failed"]
    assert "nosuch-chip" in bad["reason"][0] and "l4" in bad["reason"][0]
    good = frame.filter(pl.col("param.systems.1.device") == "l4")
    assert good["status"].to_list() == ["ok", "ok"]
    assert not (tmp_path / "out" / "points" / bad["point_id"][0]).exists()
    text = (tmp_path / "out" / "sweep.md").read_text()
    assert "## Failed" in text and bad["point_id"][0] in text


def test_cli_sweep(tmp_path: Path) -> None:
    """`xpusim sweep` runs the points, prints the counts and the report, exit 0; an
    unknown executor is bad input (exit 2)."""
    path = _write(tmp_path, {"zip": {"workload.arrivals.count": [10, 20]}})
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "2 points: 2 ran, 0 already done, 0 failed" in res.output
    assert "# Sweep report" in res.output
    assert pl.read_parquet(tmp_path / "o" / "summary.parquet").height == 4
    bad = runner.invoke(app, ["sweep", str(path), "--executor", "nosuch"])
    assert bad.exit_code == 2
    assert "nosuch" in bad.output
