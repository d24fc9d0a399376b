"""One run pipeline: ``xpusim run``, ``xpusim validate`` and every sweep point go through
the same steps, fire the observer hooks once each, and share the process's one host."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from xpusim import hookimpl
from xpusim.engine import cli
from xpusim.engine.conformance import shared_host
from xpusim.engine.executor import Executor, PointFailure
from xpusim.engine.host import Host, default_host
from xpusim.engine.run import load, run_scenario
from xpusim.engine.scenario import read_scenario_data
from xpusim.engine.sweep import PointTask, expand, parse_sweep, run_point, run_sweep, worker_host

SCENARIO: dict[str, Any] = {
    "name": "pipeline",
    "seed": 3,
    "model": {"family": "llama", "preset": "llama-2-7b", "dtype": "bf16"},
    "workload": {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": "4/s",
            "count": 12,
            "prompt_tokens": {"dist": "constant", "value": 128},
            "output_tokens": {"dist": "constant", "value": 16},
        },
    },
    "systems": [
        {"name": "h100", "backend": "gpu", "device": "h100-sxm", "count": 1},
        {"name": "a100", "backend": "gpu", "device": "a100-sxm-80gb", "count": 1},
    ],
    "economics": {"pricing": "cloud", "electricity": "0.12 USD/kWh", "pue": 1.2},
    # one point whose value is the scenario's own: the point is the plain scenario
    "sweep": {"grid": {"seed": [3]}},
}


class Inline(Executor):
    """Runs sweep points one after another in this process."""

    name = "inline-test"

    def map(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(point))``, or a failure naming the error."""
        for i, p in enumerate(points):
            try:
                yield i, fn(p)
            except Exception as exc:
                yield i, PointFailure(f"{type(exc).__name__}: {exc}")


class Counter:
    """An observer plugin counting each observer hook's calls."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"scenario_loaded": 0, "run_started": 0, "run_finished": 0}

    @hookimpl
    def scenario_loaded(self, scenario: Any) -> None:
        """Count a loaded scenario."""
        self.calls["scenario_loaded"] += 1

    @hookimpl
    def run_started(self, scenario: Any, out_dir: str) -> None:
        """Count a started run."""
        self.calls["run_started"] += 1

    @hookimpl
    def run_finished(self, results: Any) -> None:
        """Count a finished run."""
        self.calls["run_finished"] += 1


@pytest.fixture
def counter() -> Iterator[Counter]:
    """A :class:`Counter` registered on the process's default host for one test."""
    c = Counter()
    pm = default_host().pm
    pm.register(c, name="test-counter")
    try:
        yield c
    finally:
        pm.unregister(c)


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    return path


def _gpu_calibration(tmp_path: Path) -> Path:
    path = tmp_path / "h100-sxm.json"
    path.write_text(
        json.dumps(
            {
                "device": "h100-sxm",
                "measured_on": "test fixture",
                "date": "2026-11-23",
                "command": "written by the test",
                "params": {"tensor_fraction": 0.3},
            }
        )
    )
    return path


def _cli_run(path: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    res = CliRunner().invoke(cli.app, ["run", str(path), "--out", str(out), "-q", *extra])
    assert res.exit_code == 0, res.output
    return list(json.loads((out / "summary.json").read_text())["systems"])


def _sweep_point(path: Path, out: Path, calibrations: Sequence[Path] = ()) -> list[dict[str, Any]]:
    data, src = read_scenario_data(path)
    res = run_sweep(path, data, src, Inline(), out, calibrations=calibrations)
    assert (res.points, res.failed) == (1, 0)
    (folder,) = (out / "points").iterdir()
    return list(json.loads((folder / "summary.json").read_text())["systems"])


def _without_wall(systems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if "wall" not in k} for s in systems]


def test_default_host_is_one_per_process() -> None:
    """default_host() is built once per process, under concurrent first calls too, and the
    command line, sweep workers and the conformance kit all use it."""
    seen: list[Host] = []
    threads = [threading.Thread(target=lambda: seen.append(default_host())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one = default_host()
    assert all(h is one for h in seen) and len(seen) == 4
    assert cli._host() is one
    assert worker_host() is one
    assert shared_host() is one


def test_sweep_point_matches_run(tmp_path: Path) -> None:
    """A one-point sweep of a scenario writes the same summary.json systems as
    `xpusim run` of that scenario (same pipeline: same metrics, energy and cost)."""
    path = _scenario(tmp_path)
    ran = _cli_run(path, tmp_path / "run")
    swept = _sweep_point(path, tmp_path / "sweep")
    assert [s["status"] for s in ran] == ["ok", "ok"]
    assert ran[0]["cost_usd"] > 0 and ran[0]["energy_j"] > 0
    assert _without_wall(swept) == _without_wall(ran)


def test_sweep_applies_calibration_like_a_run(tmp_path: Path) -> None:
    """A calibration file given to a sweep reaches each point's systems of its device as
    `xpusim run --calibration` does: same summaries, and different from no calibration."""
    path = _scenario(tmp_path)
    cal = _gpu_calibration(tmp_path)
    plain = _cli_run(path, tmp_path / "plain")
    ran = _cli_run(path, tmp_path / "run", "--calibration", str(cal))
    swept = _sweep_point(path, tmp_path / "sweep", [cal])
    assert _without_wall(swept) == _without_wall(ran)
    assert ran[0]["throughput_tokens_per_s"] != plain[0]["throughput_tokens_per_s"]  # h100
    assert _without_wall(ran[1:]) == _without_wall(plain[1:])  # the a100 is not calibrated


def test_run_fires_each_observer_hook_once(tmp_path: Path, counter: Counter) -> None:
    """`xpusim run` fires scenario_loaded, run_started and run_finished once each."""
    _cli_run(_scenario(tmp_path), tmp_path / "run")
    assert counter.calls == {"scenario_loaded": 1, "run_started": 1, "run_finished": 1}


def test_pipeline_fires_each_observer_hook_once(tmp_path: Path, counter: Counter) -> None:
    """load() then run_scenario() fire scenario_loaded, run_started, run_finished once each."""
    host = default_host()
    run_scenario(load(_scenario(tmp_path), host), host, tmp_path / "out")
    assert counter.calls == {"scenario_loaded": 1, "run_started": 1, "run_finished": 1}


def test_validate_fires_only_scenario_loaded(tmp_path: Path, counter: Counter) -> None:
    """`xpusim validate` loads the scenario (scenario_loaded once) and runs nothing."""
    res = CliRunner().invoke(cli.app, ["validate", str(_scenario(tmp_path))])
    assert res.exit_code == 0, res.output
    assert counter.calls == {"scenario_loaded": 1, "run_started": 0, "run_finished": 0}


def test_sweep_point_fires_each_observer_hook_once(tmp_path: Path, counter: Counter) -> None:
    """Each sweep point fires scenario_loaded, run_started and run_finished once each; a
    point already complete is not run again and fires nothing."""
    path = _scenario(tmp_path)
    data, src = read_scenario_data(path)
    (point,) = expand(data, parse_sweep(data["sweep"], src), src)
    task = PointTask(point, str(path), str(tmp_path), str(tmp_path / "sweep"))
    first = run_point(task)
    assert counter.calls == {"scenario_loaded": 1, "run_started": 1, "run_finished": 1}
    assert run_point(task) == first
    assert counter.calls == {"scenario_loaded": 1, "run_started": 1, "run_finished": 1}
