"""Synthetic arrival processes and token-length distributions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.plugins.workloads.serving.arrivals import (
    ArrivalSpec,
    LengthDist,
    generate,
    sample_lengths,
)


def spec(**kw: object) -> ArrivalSpec:
    base: dict = {
        "process": "poisson",
        "rate": "10/s",
        "count": 20000,
        "prompt_tokens": {"dist": "lognormal", "median": 1000, "sigma": 1.0},
        "output_tokens": {"dist": "constant", "value": 64},
    }
    base.update(kw)
    return ArrivalSpec.model_validate(base)


def test_frame_schema_and_start_at_zero() -> None:
    """The frame has the request schema, starts at 0 and is sorted."""
    f = generate(spec(count=100), seed=1)
    assert dict(f.schema) == REQUEST_SCHEMA
    assert f["arrival_s"][0] == 0.0
    assert f["arrival_s"].is_sorted()


def test_same_seed_same_frame_other_seed_differs() -> None:
    """Generation is deterministic for a seed."""
    assert_frame_equal(generate(spec(), 5), generate(spec(), 5))
    assert not generate(spec(), 5).equals(generate(spec(), 6))


def test_changing_lengths_keeps_arrival_times() -> None:
    """Arrival times come from their own random stream."""
    a = generate(spec(), 3)
    b = generate(spec(output_tokens={"dist": "uniform", "low": 1, "high": 9}), 3)
    assert_frame_equal(a.select("arrival_s"), b.select("arrival_s"))


def test_poisson_rate_and_cv() -> None:
    """Poisson gaps have mean 1/rate and CV^2 near 1."""
    gaps = np.diff(generate(spec(), 2)["arrival_s"].to_numpy())
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(1.0, rel=0.06)


@pytest.mark.parametrize("burst", [0.25, 4.0])
def test_gamma_burstiness_is_cv_squared(burst: float) -> None:
    """Gamma gaps keep the mean rate and have CV^2 equal to `burstiness`."""
    gaps = np.diff(generate(spec(process="gamma", burstiness=burst), 2)["arrival_s"].to_numpy())
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(burst, rel=0.1)


def test_duration_bounds_arrivals() -> None:
    """With `duration`, all arrivals fall before it and their number matches the rate."""
    f = generate(spec(count=None, duration="10 min"), 4)
    assert f["arrival_s"].max() < 600
    assert f.height == pytest.approx(6000, rel=0.05)


def test_lognormal_median_and_clips() -> None:
    """Lognormal lengths have the given median and respect min/max."""
    d = LengthDist(dist="lognormal", median=1000, sigma=1.0, min=10, max=16384)
    x = sample_lengths(d, 50000, np.random.default_rng(0))
    assert np.median(x) == pytest.approx(1000, rel=0.03)
    assert x.min() >= 10 and x.max() <= 16384


def test_other_distributions() -> None:
    """constant, uniform (inclusive), clipped normal and empirical draw what they say."""
    rng = np.random.default_rng(1)
    assert (sample_lengths(LengthDist(dist="constant", value=7), 10, rng) == 7).all()
    u = sample_lengths(LengthDist(dist="uniform", low=3, high=5), 5000, rng)
    assert set(u.tolist()) == {3, 4, 5}
    n = sample_lengths(LengthDist(dist="normal", mean=10, std=20), 5000, rng)
    assert n.min() >= 1
    e = sample_lengths(LengthDist(dist="empirical", values=[5, 50], weights=[1, 0]), 100, rng)
    assert (e == 5).all()


def test_empirical_from_trace_uses_resolver() -> None:
    """An empirical distribution naming a trace draws from that trace's column."""
    pool = pl.DataFrame(
        {"arrival_s": [0.0, 1.0], "prompt_tokens": [11, 13], "output_tokens": [2, 2]},
        schema=REQUEST_SCHEMA,
    )
    s = spec(
        count=200,
        prompt_tokens={"dist": "empirical", "trace": {"path": "x.csv", "format": "azure-llm"}},
    )
    f = generate(s, 1, resolve_trace=lambda m: pool)
    assert set(f["prompt_tokens"].to_list()) <= {11, 13}


@pytest.mark.parametrize(
    "bad",
    [
        {"count": None},  # neither count nor duration
        {"duration": "1 min"},  # both
        {"rate": 4},  # no unit
        {"burstiness": 2.0},  # burstiness without gamma
        {"prompt_tokens": {"dist": "lognormal"}},  # median missing
        {"prompt_tokens": {"dist": "uniform", "low": 9, "high": 3}},
        {"prompt_tokens": {"dist": "constant", "value": 5, "mean": 3, "typo": 1}},
    ],
)
def test_bad_specs_are_rejected(bad: dict) -> None:
    """Malformed arrival blocks fail validation."""
    with pytest.raises(ValidationError):
        spec(**bad)
