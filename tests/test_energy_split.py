"""The static/active energy split: static is idle power over the whole span (and host
power), active is busy energy above idle; both times PUE, and they add up to the energy."""

from __future__ import annotations

import pytest

from tests.test_economics import BUSY_J, BUSY_S, SPAN, make_result, make_spec
from xpusim.engine.economics import EconomicsConfig, apply_economics
from xpusim.engine.economics.energy import split_energy


def test_split_adds_up_to_the_energy_and_states_each_part() -> None:
    """static = (idle W x devices x span + host) x PUE; active = (busy J - idle W x busy s)
    x PUE; their sum is energy_j, and per sample each is divided by the samples."""
    r = make_result(throughput_samples_per_s=2.0)
    cfg = EconomicsConfig(pue=1.5, host_power="200 W")
    apply_economics(r, make_spec(idle_w=50.0), 2, cfg, None)
    split = r.details["energy_split_j"]
    assert split["static"] == pytest.approx((50.0 * 2 * SPAN + 200.0 * SPAN) * 1.5)
    assert split["active"] == pytest.approx((BUSY_J - 50.0 * BUSY_S) * 1.5)
    assert split["static"] + split["active"] == pytest.approx(r.metrics["energy_j"])
    samples = 2.0 * SPAN
    assert r.metrics["energy_per_sample_static_j"] == pytest.approx(split["static"] / samples)
    assert r.metrics["energy_per_sample_active_j"] == pytest.approx(split["active"] / samples)


def test_no_split_without_an_idle_figure() -> None:
    """A device with no idle power (and idle time) has no split: static is not known."""
    r = make_result(throughput_samples_per_s=2.0)
    apply_economics(r, make_spec(idle_w=None, max_w=None), 2, EconomicsConfig(), None)
    assert "energy_split_j" not in r.details
    assert "energy_per_sample_static_j" not in r.metrics


def test_split_per_unit_refuses_no_work() -> None:
    """Splitting per zero units of work is an error naming the count."""
    with pytest.raises(ValueError, match="0 units"):
        split_energy(10.0, 1.0, 2.0, 1, 5.0, 0.0, 1.0).per(0)
