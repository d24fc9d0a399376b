"""The loaded (``poisson-server``) rows of the serving validation table: each carries its
source and length laws and replays as Poisson arrivals at its stated rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scripts import benchmark_module
from xpusim.engine.host import build_host

VS = benchmark_module("validate_serving")
SERVER = [r for r in VS.load_rows(VS.ROWS) if r["run"] == "poisson-server"]


def test_loaded_rows_cover_two_gpus_and_cite_their_source() -> None:
    assert len(SERVER) >= 4
    assert len({r["gpu"] for r in SERVER}) >= 2
    for r in SERVER:
        assert r["kind"] == "server"
        assert r["metric"] in VS.SERVER_METRICS
        assert r["rate"] > 0 and r["count"] > 0
        src = r["source"]
        assert src["url"].startswith("https://") and src["title"] and src["location"]
        assert "--request-rate" in r["setup"]


def test_a_loaded_row_replays_as_poisson_arrivals_at_its_rate() -> None:
    row: dict[str, Any] = dict(SERVER[0])
    data = VS.scenario_data(row)
    arrivals = data["workload"]["arrivals"]
    assert data["workload"]["kind"] == "serving"
    assert arrivals["process"] == "poisson"
    assert arrivals["rate"] == f"{float(row['rate'])}/s"
    assert arrivals["count"] == row["count"]
    assert arrivals["prompt_tokens"] == row["prompt_tokens"]


def test_a_loaded_row_predicts_its_latency_statistic() -> None:
    row: dict[str, Any] = dict(SERVER[0], count=100)
    out = VS.predict(build_host(), row)
    assert out["status"] == "ok"
    assert 0 < out["predicted"] < 10


def test_an_unknown_statistic_is_refused() -> None:
    row: dict[str, Any] = dict(SERVER[0], count=20, metric="ttft_p42_s")
    with pytest.raises(ValueError, match="unknown metric"):
        VS.predict(build_host(), row)


def test_a_server_row_without_its_rate_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {k: v for k, v in SERVER[0].items() if k != "rate"}
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({"rows": [row]}), encoding="utf-8")
    assert VS.main(["--rows", str(path)]) == 2
    err = capsys.readouterr().err
    assert row["id"] in err and "missing `rate`" in err


def test_every_shipped_row_is_well_formed() -> None:
    assert [p for r in VS.load_rows(VS.ROWS) for p in VS.row_problems(r)] == []


def test_each_tensorrt_llm_row_names_the_release_it_was_measured_with() -> None:
    """A row whose table says its data is from v0.5 (or that comes from the v0.5.0 page)
    runs under stack tensorrt-llm-0.5, every other TensorRT-LLM static-batch row under
    tensorrt-llm-0.6, and both profiles exist."""
    profiles = {"tensorrt-llm-0.5", "tensorrt-llm-0.6"}
    rows = [r for r in VS.load_rows(VS.ROWS) if str(r["stack"]).startswith("tensorrt-llm-0.")]
    assert rows
    for r in rows:
        assert r["stack"] in profiles
        where = f"{r['source']['location']} {r['source']['url']} {r['setup']}"
        v05 = "data from v0.5" in where or "release/0.5.0" in where
        assert r["stack"] == ("tensorrt-llm-0.5" if v05 else "tensorrt-llm-0.6"), r["id"]


def test_a_multi_step_row_runs_under_its_own_scheduler() -> None:
    """The vLLM v0.6.0 rows ran with --num-scheduler-steps 10: each carries that
    scheduler (prefill-first, 10 steps a round, vLLM's limits for its command, outputs
    processed a step late as 0.6 does by default) and the scenario it replays as holds
    it; a row without one keeps its stack's scheduler."""
    multi = [r for r in SERVER if r["id"].startswith("vllm060-")]
    assert len(multi) == 12
    for r in multi:
        assert "--num-scheduler-steps 10" in r["setup"]
        sched = VS.scenario_data(r)["workload"]["scheduler"]
        assert sched == {
            "kind": "prefill-first",
            "steps": 10,
            "max_batch": 256,
            "max_batch_tokens": 4096,
            "async_output": True,
        }
    plain = next(r for r in SERVER if "scheduler" not in r)
    assert "scheduler" not in VS.scenario_data(plain)["workload"]
