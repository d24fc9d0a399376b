"""Published throughput tables in the serving validation file: each filled cell becomes a
row with its source, request count and the engine limits its build used, and a
``trtllm-bench`` row replays as an offline run on the in-flight executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scripts import benchmark_module
from xpusim.engine.host import build_host

VS = benchmark_module("validate_serving")
TABLE_ROWS = [r for r in VS.load_rows(VS.ROWS) if r.get("table")]

TABLE: dict[str, Any] = {
    "id": "t",
    "source": {"title": "T", "url": "https://example.org/t", "location": "table 1"},
    "setup": "trtllm-bench throughput",
    "run": "trtllm-bench",
    "stack": "tensorrt-llm",
    "metric": "output_tok_s",
    "columns": {
        "h100-fp8": {
            "gpu": "h100",
            "device": "h100-sxm",
            "dtype": "fp8",
            "kv_dtype": "fp8",
            "label": "H100 FP8",
        },
        "a100-fp16": {"gpu": "a100", "device": "a100-sxm-80gb", "dtype": "fp16", "label": "A100"},
    },
    "counts": {"128/128": 300, "128/4096": 15},
    "limits": {
        "llama-2-70b": {
            "tp4": {
                "general": {"max_batch": 4096, "max_batch_tokens": 8192},
                4224: {"max_batch": 256, "max_batch_tokens": 8192},
            }
        }
    },
    "cells": [
        ["llama-2-70b", "LLaMA v2 70B", 4, "128/128", {"h100-fp8": 10755.0, "a100-fp16": 2766.0}],
        ["llama-2-70b", "LLaMA v2 70B", 4, "128/4096", {"h100-fp8": 7565.0}],
    ],
}


def test_each_filled_cell_is_a_row_with_its_source_count_and_limits() -> None:
    rows = VS.table_rows(TABLE)
    assert [r["id"] for r in rows] == [
        "t-h100-fp8-llama-2-70b-tp4-128-128",
        "t-a100-fp16-llama-2-70b-tp4-128-128",
        "t-h100-fp8-llama-2-70b-tp4-128-4096",
    ]
    first, fp16, long = rows
    assert first["kind"] == "offline" and long["kind"] == "decode-heavy"
    assert first["count"] == 300 and long["count"] == 15
    assert first["source"]["location"] == "table 1, row LLaMA v2 70B 128/128 TP 4, column H100 FP8"
    assert first["kv_dtype"] == "fp8" and fp16["kv_dtype"] is None
    assert (first["max_batch"], first["max_batch_tokens"]) == (4096, 8192)  # general
    assert (long["max_batch"], long["max_batch_tokens"]) == (256, 8192)  # 128 + 4096 = 4224
    assert VS.row_problems(first) == []


def test_a_trtllm_bench_row_runs_offline_under_its_build_limits() -> None:
    """With limits the run keeps the stack's capacity policy (chunked context included)
    and takes the build's batch and token budget; without them it sets no scheduler, so
    the run sizes itself."""
    row = VS.table_rows(TABLE)[0]
    data = VS.scenario_data(row)
    wl = data["workload"]
    assert wl["kind"] == "offline" and wl["count"] == 300 and wl["stack"] == "tensorrt-llm"
    assert wl["scheduler"] == {
        "kind": "guaranteed-no-evict",
        "max_batch": 4096,
        "max_batch_tokens": 8192,
        "chunked_context": True,
    }
    bare = {k: v for k, v in row.items() if k not in ("max_batch", "max_batch_tokens")}
    assert "scheduler" not in VS.scenario_data(bare)["workload"]


def test_a_trtllm_bench_row_predicts_its_throughput() -> None:
    row = dict(VS.table_rows(TABLE)[0], count=200)
    out = VS.predict(build_host(), row)
    assert out["status"] == "ok"
    assert 1000 < out["predicted"] < 100_000  # output tokens per second of four H100s


def test_the_shipped_tables_cover_the_in_flight_engine_on_four_gpus() -> None:
    """The TensorRT-LLM 0.12.0 table: in-flight batching rows on H200, H100, A100 and
    L40S, every one citing the release page and its cell, none of a held-out release."""
    assert len(TABLE_ROWS) >= 200
    assert {r["gpu"] for r in TABLE_ROWS} >= {"h200", "h100", "a100", "l40s"}
    for r in TABLE_ROWS:
        assert r["run"] == "trtllm-bench" and r["stack"] == "tensorrt-llm"
        assert "v0.12.0" in r["source"]["url"] and "column" in r["source"]["location"]
        assert r["measured"] > 0 and r["count"] > 0


def test_a_malformed_table_exits_2_naming_the_cell_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell naming a column the table lacks, or lengths without a request count, stops
    the harness before any row runs, with the table, the cell and the fix named."""
    bad = dict(TABLE, cells=[["llama-2-70b", "L", 4, "128/256", {"h200-fp8": 1.0}]])
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({"rows": [], "tables": [bad]}), encoding="utf-8")
    assert VS.main(["--rows", str(path)]) == 2
    err = capsys.readouterr().err
    assert "table 't'" in err and "cells[0]" in err
    assert "no request count for 128/256" in err and "'h200-fp8'" in err
    assert VS.table_problems({"id": "x"})[0] == "missing `source`"
    assert VS.table_problems(TABLE) == []


def test_a_row_the_model_cannot_run_counts_as_a_miss() -> None:
    """A published setup the model says does not fit is neither left out of the counts
    nor given an error: it counts among the rows beyond 25% and as not run, in every
    group it belongs to; the medians are over the rows that ran."""
    base = {"kind": "offline", "gpu": "h100", "table": "t"}
    rows = [
        {**base, "id": "a", "status": "ok", "error": 0.10},
        {**base, "id": "b", "status": "ok", "error": -0.30},
        {**base, "id": "c", "status": "does-not-fit", "reason": "no room"},
    ]
    out = VS.summarize(rows)
    for group in ("all", "offline", "table t", "gpu h100"):
        assert out[group]["rows"] == 3
        assert out[group]["beyond_25"] == 2
        assert out[group]["not_run"] == 1
        assert out[group]["median"] == pytest.approx(0.20)
