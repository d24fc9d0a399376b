"""Plan knobs: a workload declares what ``xpusim plan`` may vary (the offered rate, the
batch limits, the requests per simulation, with their scenario paths and valid ranges),
and the planner sets values only through them; a workload that declares none is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_run_pipeline import Inline
from xpusim.engine.cli import app
from xpusim.engine.host import Host
from xpusim.engine.plan.search import PlanError, run_plan
from xpusim.engine.run import load
from xpusim.engine.workload import Knob, PlanKnobs
from xpusim.plugins.workloads.serving.workload import ServingWorkload

REPO = Path(__file__).resolve().parents[1]
PLAN_8B = REPO / "scenarios" / "plan-llama3-8b.yaml"
FINETUNE = REPO / "scenarios" / "llama-7b-finetune.yaml"


def test_serving_declares_its_knobs_with_paths_and_ranges(host: Host) -> None:
    """The serving workload declares the arrival rate as its load knob, ``max_batch`` as
    its batch limit and the request count (replacing a duration), each with the
    scenario's own value, plus the objectives and mean request sizing reads."""
    sc = load(PLAN_8B, host)
    knobs = sc.workload.plan_knobs(sc.workload_config)
    assert isinstance(knobs, PlanKnobs)
    assert knobs.rate is not None and knobs.rate.path == ("workload", "arrivals", "rate")
    assert knobs.rate.current == pytest.approx(50.0)
    batch = knobs.batch["max_batch"]
    assert batch.path == ("workload", "scheduler", "max_batch") and batch.current == 128
    assert batch.invalid(0) and not batch.invalid(64)
    assert knobs.requests is not None and knobs.requests.current == 2000
    assert knobs.ttft_s == pytest.approx(2.0) and knobs.tbt_s is None
    assert knobs.mean_prompt_tokens is not None and knobs.mean_output_tokens is not None


def test_a_knob_sets_its_path_and_clears_what_it_replaces() -> None:
    """Setting a knob writes the value in the scenario's own notation at its path, removes
    the keys it replaces, and leaves the input untouched."""
    data = {"workload": {"arrivals": {"rate": "1/s", "duration": "10 s"}}}
    rate = Knob(("workload", "arrivals", "rate"), low=1e-6, unit="/s")
    count = Knob(
        ("workload", "arrivals", "count"),
        low=1,
        integer=True,
        clears=(("workload", "arrivals", "duration"),),
    )
    assert rate.set(data, 12.5)["workload"]["arrivals"]["rate"] == "12.5/s"
    out = count.set(data, 300)
    assert out["workload"]["arrivals"] == {"rate": "1/s", "count": 300}
    assert data["workload"]["arrivals"]["duration"] == "10 s"
    assert "whole number" in count.invalid(2.5) and "at least 1" in count.invalid(0)


def test_a_workload_without_knobs_cannot_be_planned(tmp_path: Path) -> None:
    """``xpusim plan`` over a workload that declares no plan knobs (training) exits 2,
    naming the workload and that it cannot be planned, and writes nothing."""
    result = CliRunner().invoke(
        app,
        [
            "plan",
            str(FINETUNE),
            "--out",
            str(tmp_path / "p"),
            "--set",
            "plan={load: {rate: 1/s}, slo: {ttft_p99: 2 s}}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "'training' workload" in result.output and "cannot be planned" in result.output
    assert not (tmp_path / "p").exists()


def _narrowed(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Make the serving workload declare its knobs with ``changes``."""
    declared = ServingWorkload.plan_knobs

    def knobs(self: ServingWorkload, config: object) -> PlanKnobs | None:
        got = declared(self, config)  # type: ignore[arg-type]
        return None if got is None else dataclasses.replace(got, **changes)

    monkeypatch.setattr(ServingWorkload, "plan_knobs", knobs)


def test_plan_values_are_checked_against_the_declared_ranges(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner reads the valid range from the workload's knob: a batch limit above the
    declared maximum is refused before anything is simulated, naming the knob's path."""
    sc = load(PLAN_8B, host)
    knobs = sc.workload.plan_knobs(sc.workload_config)
    assert knobs is not None
    small = dataclasses.replace(knobs.batch["max_batch"], high=64)
    _narrowed(monkeypatch, batch={"max_batch": small})
    with pytest.raises(PlanError, match=r"workload\.scheduler\.max_batch must be at most 64"):
        run_plan(PLAN_8B, host, Inline(), tmp_path / "p", overrides=["plan.max_batch=[128]"])
    assert not (tmp_path / "p").exists()


def test_a_workload_without_a_load_knob_takes_no_rate(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workload whose knobs have no load knob cannot be planned at a rate, nor for the
    highest rate: both are refused saying to plan the load as written."""
    _narrowed(monkeypatch, rate=None)
    with pytest.raises(PlanError, match=r"cannot be set as a rate.*trace: true"):
        run_plan(PLAN_8B, host, Inline(), tmp_path / "p")
    with pytest.raises(PlanError, match="rate: max needs a load the plan can raise"):
        run_plan(PLAN_8B, host, Inline(), tmp_path / "q", overrides=["plan.load={rate: max}"])


def test_the_planner_names_no_workload_field() -> None:
    """engine/plan/ reads a workload only through its declared knobs: none of its modules
    looks up a serving key (arrivals, the scheduler) or reads the validated workload block
    itself (it only hands it to ``plan_knobs``)."""
    for path in (REPO / "engine" / "plan").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for key in ('"arrivals"', '"scheduler"', "workload_config."):
            assert key not in text, f"{path.name} reads {key}"
        assert text.count("workload_config") == text.count("plan_knobs(scenario.workload_config")
