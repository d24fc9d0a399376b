"""``xpusim plan``: the answer meets the SLOs and the next cheaper configuration does not;
an empty or oversized search space is refused with exit 2 saying what would widen it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_run_pipeline import Inline
from xpusim.engine.capacity import meets_slo
from xpusim.engine.cli import app
from xpusim.engine.errors import XpusimError
from xpusim.engine.host import Host
from xpusim.engine.plan.search import PlanError, run_plan
from xpusim.engine.run import load, simulate

REPO = Path(__file__).resolve().parents[1]
PLAN_8B = REPO / "scenarios" / "plan-llama3-8b.yaml"
H100_ONLY = ["plan.devices=[h100-sxm]", "workload.arrivals.count=800"]


def _plan(host: Host, tmp_path: Path, sets: Sequence[str]) -> dict[str, Any]:
    return run_plan(PLAN_8B, host, Inline(), tmp_path / "plan", overrides=sets).doc


@pytest.fixture(scope="module")
def h100_plan(host: Host, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _plan(host, tmp_path_factory.mktemp("plan"), H100_ONLY)


def _met(host: Host, count: int) -> bool | None:
    """Whether ``count`` H100s meet the plan's SLO at its load, run as a plain scenario."""
    sc = load(
        PLAN_8B,
        host,
        [*H100_ONLY[1:], f"systems.0.count={count}", "workload.slo={ttft_p99: 2 s}"],
    )
    return meets_slo(simulate(sc, host).systems[0].metrics)


def test_the_chosen_h100_count_meets_the_slo_and_one_fewer_does_not(
    host: Host, h100_plan: dict[str, Any]
) -> None:
    """How many H100s serve 50 req/s of Llama-3-8B within TTFT p99 2 s: the plan's answer,
    run again as an ordinary scenario, meets the SLO; one H100 fewer does not."""
    best = h100_plan["best"]
    assert best is not None and best["device"] == "h100-sxm" and best["met"]
    assert _met(host, best["count"]) is True
    assert best["count"] > 1
    assert _met(host, best["count"] - 1) is False
    assert "one replica fewer meets them for only" in h100_plan["answer"]


def test_plan_json_records_every_configuration_its_verdict_and_the_pruned(
    h100_plan: dict[str, Any], tmp_path: Path
) -> None:
    """Every simulated configuration has its parameters, metrics, SLO verdict and cost;
    the best per device and overall are named; plan.md carries the answer."""
    sims = [r for r in h100_plan["configurations"] if "replicas" in r]
    assert sims and h100_plan["simulations"] == len(sims)
    for r in sims:
        assert {"device", "count", "tensor", "max_batch", "met", "usd_per_hour", "metrics"} <= set(
            r
        )
        assert r["usd_per_hour"] == pytest.approx(r["count"] * r["price"]["usd_per_device_hour"])
    assert h100_plan["best_per_device"]["h100-sxm"] == h100_plan["best"]
    assert h100_plan["answer"].startswith("Cheapest within the SLOs at 50 req/s")


def test_the_written_folder_holds_plan_json_and_plan_md(host: Host, tmp_path: Path) -> None:
    """The plan folder is written whole: plan.json parses and plan.md states the answer."""
    doc = _plan(host, tmp_path, [*H100_ONLY, "plan.count.max=4"])
    written = json.loads((tmp_path / "plan" / "plan.json").read_text(encoding="utf-8"))
    assert written["answer"] == doc["answer"]
    assert doc["answer"] in (tmp_path / "plan" / "plan.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (
            ["plan.devices=[l4]", "plan.tensor=[1]", "model.preset=llama-3-70b"],
            "no candidate device can hold the model",
        ),
        (["plan.budget_usd_per_hour=0.5", "plan.devices=[h100-sxm, b200]"], "more than the budget"),
        (["plan.slo={ttft_p99: 1 ms}", "plan.devices=[h100-sxm]"], "SLOs cannot be met"),
        (["plan.slo={tbt_p99: 10 us}", "plan.devices=[h100-sxm, l4]"], "SLOs cannot be met"),
    ],
    ids=["nothing-fits", "over-budget", "impossible-ttft", "impossible-tbt"],
)
def test_an_empty_search_space_says_why_and_what_would_widen_it(
    host: Host, tmp_path: Path, sets: list[str], words: str
) -> None:
    """No device holds the model, a budget below any configuration, or an SLO no device
    can reach: refused before simulating, naming the place and the way to widen it."""
    with pytest.raises(PlanError, match=words) as info:
        _plan(host, tmp_path, sets)
    assert "plan" in str(info.value) and not (tmp_path / "plan").exists()


def test_a_search_over_the_simulation_budget_is_refused_with_its_size(
    host: Host, tmp_path: Path
) -> None:
    """More possible simulations than max_configs: the error gives the count and asks for a
    narrower block or --max-configs."""
    with pytest.raises(PlanError, match=r"up to \d+ simulations .*--max-configs"):
        _plan(host, tmp_path, ["plan.max_configs=3"])


def test_the_command_exits_2_on_an_empty_search_space(tmp_path: Path) -> None:
    """``xpusim plan`` turns a plan error into exit 2 with one paragraph, no traceback."""
    result = CliRunner().invoke(
        app,
        [
            "plan",
            str(PLAN_8B),
            "--out",
            str(tmp_path / "p"),
            "--set",
            "plan.budget_usd_per_hour=0.5",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "budget" in result.output and "Traceback" not in result.output


def test_the_highest_rate_is_bracketed_by_a_miss(host: Host, tmp_path: Path) -> None:
    """``load: {rate: max}`` holds the most devices allowed and bisects on the rate: the
    answer is the highest rate simulated that met the SLOs, and a higher one missed."""
    sets = [
        "plan.devices=[h100-sxm]",
        "plan.load={rate: max}",
        "plan.count.max=2",
        "workload.arrivals.count=600",
    ]
    doc = _plan(host, tmp_path, sets)
    rows = [r for r in doc["configurations"] if "replicas" in r]
    assert doc["mode"] == "rate" and {r["count"] for r in rows} == {2}
    best = doc["best"]
    assert best["rate_per_s"] == max(r["rate_per_s"] for r in rows if r["met"])
    assert any(not r["met"] and r["rate_per_s"] > best["rate_per_s"] for r in rows)
    assert doc["answer"].startswith("Highest rate within the SLOs")


def test_named_tensor_degrees_are_each_searched(host: Host, tmp_path: Path) -> None:
    """With plan.tensor listed, every degree is its own shape: both are simulated and the
    ranking keeps the best configuration of each."""
    sets = [
        "plan.devices=[h100-sxm]",
        "plan.tensor=[1, 2]",
        "plan.count.max=8",
        "workload.arrivals.count=600",
    ]
    doc = _plan(host, tmp_path, sets)
    simulated = {r["tensor"] for r in doc["configurations"] if "replicas" in r}
    assert simulated == {1, 2} and doc["shapes"] == 2
    assert {row[3] for row in doc["table"]} == {"1x1", "2x1"}


@pytest.mark.slow
def test_over_every_device_no_cheaper_configuration_met_the_slo(host: Host, tmp_path: Path) -> None:
    """The shipped 8B plan over every priced device: its answer meets the SLO when run as
    a plain scenario, one replica fewer does not, and every simulated configuration that
    costs less per hour missed the SLO."""
    doc = _plan(host, tmp_path, ["workload.arrivals.count=600"])
    best = doc["best"]
    assert best is not None
    cheaper = [
        r
        for r in doc["configurations"]
        if "replicas" in r and r["usd_per_hour"] < best["usd_per_hour"] - 1e-9
    ]
    assert cheaper and not any(r["met"] for r in cheaper)

    def met(count: int) -> bool | None:
        sets = [
            "workload.arrivals.count=600",
            "workload.slo={ttft_p99: 2 s}",
            f"systems.0.device={best['device']}",
            f"systems.0.backend={best['backend']}",
            f"systems.0.count={count}",
            f"systems.0.parallelism.tensor={best['tensor']}",
        ]
        return meets_slo(simulate(load(PLAN_8B, host, sets), host).systems[0].metrics)

    assert met(best["count"]) is True
    if best["replicas"] > 1:
        assert met(best["count"] - best["tensor"] * best["pipeline"]) is False


def test_an_existing_plan_folder_is_refused_before_any_work(host: Host, tmp_path: Path) -> None:
    """--out naming a folder with files in it is refused at once, and left as it was."""
    out = tmp_path / "plan"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(XpusimError, match="never overwrites"):
        run_plan(PLAN_8B, host, Inline(), out, overrides=H100_ONLY)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"


def _same_search(doc: dict[str, Any]) -> dict[str, Any]:
    """What a plan found, without its timings: the ranking, the answer and every row."""

    def timeless(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("wall_s", "cpu_s")}

    keep = ("table", "answer", "pruned", "shapes", "simulations", "rounds")
    return {
        "rows": [timeless(r) for r in doc["configurations"]],
        "best": timeless(doc["best"] or {}),
        "per_device": {d: timeless(r) for d, r in doc["best_per_device"].items()},
        **{k: doc[k] for k in keep},
    }


def test_one_and_two_workers_give_the_same_plan(host: Host, tmp_path: Path) -> None:
    """Each round of simulations is spread over the workers, and its verdicts are taken
    in shape order: the ranking, the answer and every configuration simulated are the same
    with one local worker as with two, and progress ends with every device searched."""
    local = host.executors.get("local")
    sets = ["plan.devices=[h100-sxm, l4, a100]", "workload.arrivals.count=300"]
    seen: list[tuple[int, int]] = []
    docs = [
        run_plan(
            PLAN_8B,
            host,
            local,
            tmp_path / f"plan-{n}",
            workers=n,
            overrides=sets,
            progress=lambda done, total: seen.append((done, total)),
        ).doc
        for n in (1, 2)
    ]
    assert docs[0]["best"] is not None and docs[0]["rounds"] >= 2
    assert _same_search(docs[0]) == _same_search(docs[1])
    assert seen[-1] == (3, 3) and seen[0] == (0, 3)
