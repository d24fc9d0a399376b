"""Economics as small pure steps over declared frames: composing them changes nothing
passed in, and work is counted from the declared request status and columns."""

from __future__ import annotations

import copy

import polars as pl
import pytest

from tests.test_economics import make_result, make_spec
from xpusim.engine.economics import EconomicsConfig, apply_economics, price_system
from xpusim.engine.economics.units import work_units
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import REQUEST_OK


def test_price_system_changes_nothing_passed_in_and_matches_apply_economics() -> None:
    """price_system leaves the metrics and frames it reads as they were, and recording its
    answer gives the same metrics as apply_economics."""
    r = make_result()
    metrics_before = copy.deepcopy(r.metrics)
    dev_before = r.frames["devices"].clone()
    cfg = EconomicsConfig(electricity="0.1 USD/kWh", pue=1.2)
    priced = price_system(make_spec(), 2, cfg, None, r.metrics, r.frames)
    assert r.metrics == metrics_before and r.frames["devices"].equals(dev_before)
    assert priced.metrics["energy_j"] is not None and priced.metrics["cost_usd"] is not None
    apply_economics(r, make_spec(), 2, cfg, None)
    assert {k: r.metrics[k] for k in priced.metrics} == priced.metrics
    assert r.details["break_even"] == priced.details["break_even"]


def test_work_counts_completed_requests_by_declared_status() -> None:
    """Without throughput metrics, samples are the requests whose status is REQUEST_OK and
    tokens their output_tokens; dropped requests count for nothing."""
    req = pl.DataFrame(
        {
            "system": ["s"] * 3,
            "status": [REQUEST_OK, "dropped", REQUEST_OK],
            "output_tokens": [10, 99, 5],
        }
    )
    units = work_units({"simulated_s": 2.0}, {"requests": req})
    assert (units.tokens, units.samples, units.steps) == (15.0, 2.0, None)


def test_devices_frame_missing_a_declared_column_is_refused() -> None:
    """A devices frame without a column of DEVICES_SCHEMA is an error naming the column."""
    r = make_result()
    frames = {"devices": r.frames["devices"].drop("joules")}
    with pytest.raises(XpusimError, match="joules"):
        price_system(make_spec(), 2, EconomicsConfig(), None, r.metrics, frames)
