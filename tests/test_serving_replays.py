"""The published offline runs replayed beside the serving validation table
(``benchmarks/serving_replays.py``): each cites its source, names a loaded row whose setup
it shares, and builds that row's scenario with every request sent at once."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import benchmark_module
from xpusim.engine.host import build_host
from xpusim.engine.scenario import resolve
from xpusim.engine.yamlsrc import Source

REPO = Path(__file__).resolve().parents[1]


SR = benchmark_module("serving_replays")
ROWS = {r["id"]: r for r in SR.vs.load_rows(SR.vs.ROWS)}


def test_every_replay_cites_its_source_and_names_a_loaded_row() -> None:
    replays = SR.load_replays()
    assert len(replays) == 4
    assert SR.problems(replays, ROWS) == []
    for rep in replays:
        assert rep["source"]["url"].startswith("https://") and rep["source"]["location"]
        assert ROWS[rep["like"]]["run"] == "poisson-server"
        assert rep["measured_output_tok_s"] > 0


def test_a_replay_sends_every_request_at_once_under_its_rows_setup() -> None:
    """The scenario is the row's (model, system, stack, scheduler, length laws) with a
    closed process of as many clients as requests, and it resolves as a user's would."""
    host = build_host()
    for rep in SR.load_replays():
        data = SR.replay_scenario(rep, ROWS, None)
        row = ROWS[rep["like"]]
        arrivals = data["workload"]["arrivals"]
        assert arrivals["process"] == "closed" and "rate" not in arrivals
        assert arrivals["count"] == arrivals["concurrency"] == rep["count"]
        assert arrivals["prompt_tokens"] == row["prompt_tokens"]
        assert data["workload"].get("scheduler") == row.get("scheduler")
        assert data["workload"]["stack"] == rep.get("stack", row["stack"])
        resolve(data, Source(rep["id"]), host, REPO)


def test_a_replay_naming_no_row_is_reported_with_the_fix() -> None:
    msgs = SR.problems([{"id": "x", "like": "no-such-row"}], ROWS)
    assert len(msgs) == 1 and "no-such-row" in msgs[0] and "name a poisson-server row" in msgs[0]


def test_scheduler_must_be_a_mapping() -> None:
    assert SR.main(["--scheduler", "prefill-first"]) == 2
