"""Plans that cannot be answered, through the command line: each exits 2 with one
paragraph naming the place in the scenario, why the search space is empty or too large,
and what would widen or narrow it; no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from xpusim.engine.cli import app

REPO = Path(__file__).resolve().parents[1]
PLAN_8B = REPO / "scenarios" / "plan-llama3-8b.yaml"

CASES = {
    "no-device-holds-the-model": (
        [
            *("--set", "model.preset=llama-3-70b"),
            *("--set", "plan.devices=[l4]"),
            *("--set", "plan.tensor=[1]"),
        ],
        ["no candidate device can hold the model", "plan.tensor", "plan.devices"],
    ),
    "budget-below-any-configuration": (
        ["--set", "plan.budget_usd_per_hour=0.5", "--set", "plan.devices=[h100-sxm, b200]"],
        ["costs more than the budget", "plan.budget_usd_per_hour"],
    ),
    "contradictory-slos": (
        [
            *("--set", "plan.slo={ttft_p99: 100 ms, tbt_p99: 5 ms}"),
            *("--set", "plan.devices=[h100-sxm, l4]"),
            *("--set", "plan.tensor=[1]"),
        ],
        ["contradict each other", "TTFT and TBT objectives together", "plan.slo"],
    ),
    "unreachable-ttft": (
        ["--set", "plan.slo={ttft_p99: 1 ms}", "--set", "plan.devices=[h100-sxm]"],
        ["SLOs cannot be met", "plan.slo.ttft_p99"],
    ),
    "over-the-simulation-budget-flag": (
        ["--max-configs", "3"],
        ["simulations (", "more than the simulation budget of 3", "--max-configs"],
    ),
    "over-the-simulation-budget-block": (
        ["--set", "plan.max_configs=5", "--set", "plan.devices=[h100-sxm, l4]"],
        ["could run up to", "budget of 5", "plan.devices", "--max-configs"],
    ),
    "no-slo-at-all": (
        ["--set", "plan={load: {rate: 50/s}}", "--set", "workload.slo={}"],
        ["a plan needs an SLO", "plan.slo"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_plan_without_an_answer_exits_2_saying_why(case: str, tmp_path: Path) -> None:
    """Bad plan input (no device holds the model, a budget below any configuration,
    objectives that cannot be met together or at all, a search larger than its stated
    simulation budget, no SLO): exit 2, the scenario's place, the reason and the way out;
    nothing written."""
    args, expect = CASES[case]
    out = tmp_path / "plan"
    result = CliRunner().invoke(app, ["plan", str(PLAN_8B), "--out", str(out), *args])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in text and "plan-llama3-8b.yaml:" in text
    for fragment in expect:
        assert fragment in text, (fragment, text)
    assert not out.exists()


def test_the_simulation_budget_message_counts_the_configurations(tmp_path: Path) -> None:
    """Over the simulation budget, the message says how many simulations the search could
    run: shapes times probes, counted before anything is compiled."""
    args = ["--set", "plan.devices=[h100-sxm, l4]", "--set", "plan.probes=4"]
    args += ["--set", "plan.tensor=[1, 2]", "--max-configs", "10"]
    result = CliRunner().invoke(app, ["plan", str(PLAN_8B), "--out", str(tmp_path / "p"), *args])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "up to 16 simulations (4 configuration shapes over 2 devices x up to 4 probes)" in text
