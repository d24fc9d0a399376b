"""Summary metrics from frames: percentiles, throughput, SLO attainment, goodput."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from xpusim.engine.frames import DEVICES_SCHEMA
from xpusim.plugins.workloads.serving.metrics import (
    device_seconds,
    quantile,
    serving_metrics,
    weighted_quantile,
)
from xpusim.plugins.workloads.serving.schemas import REQUESTS_SCHEMA, STEPS_SCHEMA, TBT_SCHEMA


def test_weighted_quantile_equals_expanded_list() -> None:
    """A weighted sample gives exactly the inverted-CDF percentile of its expansion."""
    rng = np.random.default_rng(0)
    v = rng.random(50)
    w = rng.integers(0, 20, 50)
    expanded = np.repeat(v, w)
    for q in (0.01, 0.5, 0.9, 0.99, 1.0):
        assert weighted_quantile(v, w, q) == np.percentile(expanded, q * 100, method="inverted_cdf")
    assert weighted_quantile(v, np.zeros(50), 0.5) is None
    assert quantile(np.array([]), 0.5) is None


def frames() -> dict[str, pl.DataFrame]:
    req = pl.DataFrame(
        {
            "system": ["s"] * 4,
            "replica": [0, 0, 1, None],
            "request_id": [0, 1, 2, 3],
            "arrival_s": [0.0, 1.0, 2.0, 3.0],
            "first_scheduled_s": [0.0, 1.0, 2.0, None],
            "first_token_s": [0.5, 1.5, 5.0, None],
            "finish_s": [1.0, 3.0, 6.0, None],
            "prompt_tokens": [10, 10, 10, 99999],
            "output_tokens": [11, 5, 2, 10],
            "preemptions": [0, 1, 0, 0],
            "status": ["ok", "ok", "ok", "dropped"],
            "reason": [None, None, None, "too big"],
            "ttft_s": [0.5, 0.5, 3.0, None],
            "e2e_s": [1.0, 2.0, 4.0, None],
            "tbt_mean_s": [0.05, 0.375, 1.0, None],
            "tbt_max_s": [0.05, 0.5, 1.0, None],
        },
        schema=REQUESTS_SCHEMA,
    )
    steps = pl.DataFrame(
        {
            "system": ["s"] * 2,
            "replica": [0, 1],
            "step": [0, 0],
            "start_s": [0.0, 2.0],
            "end_s": [3.0, 6.0],
            "batch": [2, 1],
            "prefill_tokens": [20, 10],
            "decode_tokens": [14, 1],
            "kv_blocks_used": [3, 1],
            "state": ["compute", "memory"],
            "joules": [1.0, 2.0],
        },
        schema=STEPS_SCHEMA,
    )
    devices = pl.DataFrame(
        {
            "system": ["s"] * 4,
            "replica": [0, 0, 1, 1],
            "device": [0, 0, 1, 1],
            "start_s": [0.0, 3.0, 0.0, 2.0],
            "end_s": [3.0, 6.0, 2.0, 6.0],
            "state": ["compute", "idle", "idle", "memory"],
            "joules": [1.0, 0.0, 0.0, 2.0],
        },
        schema=DEVICES_SCHEMA,
    )
    tbt = pl.DataFrame(
        {"system": ["s"] * 3, "gap_s": [0.05, 0.5, 1.0], "tokens": [10, 4, 1]}, schema=TBT_SCHEMA
    )
    return {"requests": req, "steps": steps, "devices": devices, "tbt": tbt}


def test_serving_metrics_by_hand() -> None:
    """Each key follows its stated definition on a hand-made run."""
    m = serving_metrics(frames(), 6.0, ttft_slo_s=1.0, tbt_slo_s=0.1)
    assert m["requests_dropped"] == 1
    assert m["throughput_tokens_per_s"] == pytest.approx(18 / 6)
    assert m["ttft_p50_s"] == 0.5 and m["ttft_p99_s"] == 3.0
    assert m["e2e_p50_s"] == 2.0
    assert m["tbt_p50_s"] == 0.05 and m["tbt_p99_s"] == 1.0
    # only request 0 meets TTFT <= 1 s and mean TBT <= 100 ms; the dropped one misses
    assert m["slo_attainment"] == pytest.approx(1 / 4)
    assert m["goodput_tokens_per_s"] == pytest.approx(11 / 6)
    assert m["preemptions"] == 1
    assert m["mean_batch"] == 1.5
    assert m["busy_s"] == 7.0 and m["idle_s"] == 5.0
    assert m["utilization"] == pytest.approx(7 / 12)
    assert device_seconds(frames()["devices"]) == {"compute": 3.0, "idle": 5.0, "memory": 4.0}


def test_no_slo_gives_none() -> None:
    """Without SLOs attainment and goodput do not apply."""
    m = serving_metrics(frames(), 6.0)
    assert m["slo_attainment"] is None and m["goodput_tokens_per_s"] is None


def test_tpot_is_per_request_and_itl_per_token() -> None:
    """TPOT has one value per finished request (its mean gap); ITL weighs every token gap.
    Their means differ on the same run: one slow request moves TPOT's mean by a third and
    ITL's by its one token."""
    m = serving_metrics(frames(), 6.0)
    assert m["tpot_mean_s"] == pytest.approx((0.05 + 0.375 + 1.0) / 3)
    assert m["tpot_p50_s"] == 0.375 and m["tpot_p99_s"] == 1.0
    assert m["itl_mean_s"] == pytest.approx((0.05 * 10 + 0.5 * 4 + 1.0) / 15)
    assert m["itl_p90_s"] == 0.5
    assert m["ttft_mean_s"] == pytest.approx(4.0 / 3) and m["e2e_mean_s"] == pytest.approx(7 / 3)
    assert m["total_throughput_tokens_per_s"] == pytest.approx((18 + 30) / 6)
    assert m["mean_in_flight"] == pytest.approx(7 / 6)  # E2E 1 + 2 + 4 s over 6 s


def test_slo_bounds_name_their_figure() -> None:
    """A TPOT bound checks each request's mean gap, a largest-gap bound each request's
    worst gap; the p99 verdict is MLPerf's (p99 TTFT and p99 TPOT within bounds)."""
    tpot_only = serving_metrics(frames(), 6.0, tbt_slo_s=0.4)
    assert tpot_only["slo_attainment"] == pytest.approx(2 / 4)  # requests 0 and 1
    itl_only = serving_metrics(frames(), 6.0, itl_max_slo_s=0.4)
    assert itl_only["slo_attainment"] == pytest.approx(1 / 4)  # request 1's worst gap is 0.5
    assert serving_metrics(frames(), 6.0, ttft_slo_s=3.0, tbt_slo_s=1.0)["slo_p99_met"] is True
    assert serving_metrics(frames(), 6.0, ttft_slo_s=2.9)["slo_p99_met"] is False
    assert serving_metrics(frames(), 6.0)["slo_p99_met"] is None
