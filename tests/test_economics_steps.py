"""Economics as small pure steps over declared frames: composing them changes nothing
passed in, and work is counted from the declared request status and columns."""

from __future__ import annotations

import copy
import dataclasses

import polars as pl
import pytest

from tests.test_economics import SPAN, make_result, make_spec
from xpusim.engine.device import DeviceSpec, Figure, PriceSpec
from xpusim.engine.economics import HOUR_S, EconomicsConfig, apply_economics, price_system
from xpusim.engine.economics.breakeven import BreakEven, fleet_break_even
from xpusim.engine.economics.config import HOURS_PER_YEAR
from xpusim.engine.economics.units import work_units
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import DEVICE_NAME, REQUEST_OK, Frame


def test_price_system_changes_nothing_passed_in_and_matches_apply_economics() -> None:
    """price_system leaves the metrics and frames it reads as they were, and recording its
    answer gives the same metrics as apply_economics."""
    r = make_result()
    metrics_before = copy.deepcopy(r.metrics)
    dev = r.frames["devices"]
    assert isinstance(dev, pl.DataFrame)
    dev_before = dev.clone()
    cfg = EconomicsConfig.model_validate({"electricity": "0.1 USD/kWh", "pue": 1.2})
    priced = price_system(make_spec(), 2, cfg, None, r.metrics, r.frames)
    assert r.metrics == metrics_before and dev.equals(dev_before)
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
    frames: dict[str, Frame] = {"devices": r.frames["devices"].drop("joules")}
    with pytest.raises(XpusimError, match="joules"):
        price_system(make_spec(), 2, EconomicsConfig(), None, r.metrics, frames)


def _named(names: list[str | None]) -> dict[str, pl.DataFrame]:
    """make_result's devices frame with each row's device named (lane (0, 0) is rows 0-2,
    lane (0, 1) row 3)."""
    dev = make_result().frames["devices"]
    assert isinstance(dev, pl.DataFrame)
    return {"devices": dev.with_columns(pl.Series(DEVICE_NAME, names, dtype=pl.String))}


def _other(**kw: float | None) -> DeviceSpec:
    """A second device, ``otherchip``, of its own price and power."""
    return dataclasses.replace(make_spec(**kw), name="otherchip")  # type: ignore[arg-type]


def test_rows_naming_only_the_system_device_price_as_without_the_column() -> None:
    """A devices frame whose rows name the system's device (by name, alias or null) is
    priced exactly as the same frame without the column."""
    spec = dataclasses.replace(make_spec(), aliases=("tc",))
    cfg = EconomicsConfig.model_validate(
        {"electricity": "0.1 USD/kWh", "pue": 1.2, "busy_hours_per_year": 3000}
    )
    r = make_result()
    plain = price_system(spec, 2, cfg, None, r.metrics, r.frames)
    named = price_system(spec, 2, cfg, None, r.metrics, _named(["testchip", None, "tc", None]))
    assert named.metrics == plain.metrics
    assert named.details == plain.details and named.figures == plain.figures


def test_each_device_is_priced_at_its_own_price_idle_power_and_nodes() -> None:
    """Lane (0, 0) runs on the system's testchip (4 USD/h, 50 W idle), lane (0, 1) on
    otherchip (10 USD/h, 100 W idle): each lane's energy is its busy joules, its device's
    idle power over its idle time and its own node's host power, times the PUE; its cost
    its device-seconds at its device's price; the figures and prices say which device."""
    other = _other(cloud_h=10.0, idle_w=100.0)
    cfg = EconomicsConfig.model_validate({"pue": 1.5, "host_power": "200 W"})
    r = make_result()
    priced = price_system(
        make_spec(),
        2,
        cfg,
        None,
        r.metrics,
        _named([None, None, None, "otherchip"]),
        resolve=lambda name: (other, None),
    )
    a = (450.0 + 50.0 * (SPAN - 5.0) + 200.0 * SPAN) * 1.5
    b = (100.0 + 100.0 * (SPAN - 2.0) + 200.0 * SPAN) * 1.5
    assert priced.metrics["energy_j"] == pytest.approx(a + b)
    assert priced.details["devices_counted"] == 2
    assert priced.details["utilization"] == pytest.approx(7.0 / (2 * SPAN))
    assert sum(priced.details["energy_breakdown_j"].values()) == pytest.approx(a + b)
    want = SPAN * 4.0 / HOUR_S + SPAN * 10.0 / HOUR_S
    assert priced.metrics["cost_usd"] == pytest.approx(want)
    assert priced.details["cost_breakdown_usd"] == pytest.approx(
        {"cloud rental (testchip)": SPAN * 4.0 / HOUR_S, "cloud rental (otherchip)": SPAN / 360}
    )
    assert priced.metrics["cost_per_million_tokens_usd"] == pytest.approx(
        want / (100.0 * SPAN) * 1e6
    )
    used = priced.details["prices_used"]
    assert {k: v["usd"] for k, v in used.items()} == pytest.approx(
        {"testchip": 4.0, "otherchip": 10.0}
    )
    assert used["otherchip"]["device"] == "otherchip" and priced.tier == "device"
    assert priced.figures["price.on_demand@otherchip"].value == pytest.approx(10.0 / HOUR_S)
    assert priced.figures["power.idle_w@otherchip"].value == 100.0
    assert "economics.host_power_w" in priced.figures
    assert priced.not_known["break_even"] == (
        "Rent-versus-buy break-even is not known: the scenario gives no electricity price "
        "(economics.electricity)."
    )


def test_owned_devices_are_amortized_and_powered_each_at_its_own_figures() -> None:
    """Owned, each device's list price is amortized over its own device-seconds and its
    own energy is billed at the electricity price."""
    other = _other(list_price=50_000.0, idle_w=100.0)
    cfg = EconomicsConfig.model_validate(
        {"pricing": "owned", "electricity": "0.1 USD/kWh", "lifetime": "4 y"}
    )
    r = make_result()
    priced = price_system(
        make_spec(),
        2,
        cfg,
        None,
        r.metrics,
        _named([None, None, None, "otherchip"]),
        resolve=lambda name: (other, None),
    )
    assert cfg.lifetime is not None and cfg.electricity is not None
    e_a = 450.0 + 50.0 * (SPAN - 5.0)
    e_b = 100.0 + 100.0 * (SPAN - 2.0)
    want = (30_000.0 + 50_000.0) * SPAN / cfg.lifetime + (e_a + e_b) * cfg.electricity
    assert priced.metrics["cost_usd"] == pytest.approx(want)
    assert priced.details["cost_breakdown_usd"]["amortization (otherchip)"] == pytest.approx(
        50_000.0 * SPAN / cfg.lifetime
    )
    assert set(priced.details["prices_used"]) == {"testchip", "otherchip"}


def test_a_device_without_a_price_leaves_the_cost_unknown_and_says_which() -> None:
    """When one device has no price the system's cost is not known, for that device's
    reason; its energy still is; the system's scenario price keeps its tier."""
    own = dataclasses.replace(
        make_spec(),
        price=PriceSpec(on_demand=Figure(2.0 / HOUR_S, "scenario systems.0.pricing.cloud")),
    )
    cfg = EconomicsConfig()
    r = make_result()
    priced = price_system(
        own,
        2,
        cfg,
        None,
        r.metrics,
        _named([None, None, None, "otherchip"]),
        resolve=lambda name: (_other(cloud_h=None), None),
    )
    assert priced.metrics["cost_usd"] is None
    assert "otherchip has no published on-demand price" in priced.not_known["cost_usd"]
    assert priced.metrics["energy_j"] is not None
    assert priced.details["prices_used"]["testchip"]["tier"] == "scenario"
    assert "otherchip" not in priced.details["prices_used"]


def test_a_device_no_catalog_has_is_an_error_naming_it() -> None:
    """A row naming a device no backend has is refused, naming it."""
    r = make_result()
    with pytest.raises(XpusimError, match="nonesuch"):
        price_system(
            make_spec(),
            2,
            EconomicsConfig(),
            None,
            r.metrics,
            _named([None, None, None, "nonesuch"]),
        )


def test_a_system_all_on_another_device_is_priced_and_compared_as_that_device() -> None:
    """Every row naming otherchip: the system's two devices are otherchips, priced at its
    price, and rent versus buy is otherchip's."""
    other = _other(cloud_h=10.0, list_price=50_000.0)
    cfg = EconomicsConfig.model_validate({"electricity": "0.1 USD/kWh", "busy_fraction": 0.5})
    r = make_result()
    priced = price_system(
        make_spec(),
        2,
        cfg,
        None,
        r.metrics,
        _named(["otherchip"] * 4),
        resolve=lambda name: (other, None),
    )
    assert priced.metrics["cost_usd"] == pytest.approx(2 * SPAN * 10.0 / HOUR_S)
    assert list(priced.details["prices_used"]) == ["otherchip"]
    be = priced.details["break_even"]
    assert be["rent_usd_per_device_hour"] == pytest.approx(10.0) and be["list_usd"] == 50_000.0
    assert priced.choice is not None and "price.list_price@otherchip" in priced.figures


def _kind(fixed: float, idle: float, amort: float, busy_h: float, rent_h: float) -> BreakEven:
    """A one-device break-even mapping with the figures ``fleet_break_even`` sums."""
    return BreakEven(
        {
            "rent_tier": "cloud",
            "rent_usd_per_device_hour": rent_h,
            "list_usd": amort * 5.0,
            "lifetime_years": 5.0,
            "own_fixed_usd_per_device_year": fixed,
            "own_breakdown_usd_per_device_year": {
                "amortization": amort,
                "hosting": fixed - amort - idle,
                "staff": 0.0,
                "idle_electricity": idle,
            },
            "own_usd_per_busy_hour": busy_h,
            "committed_usd_per_device_year": None,
            "busy_hours_per_year": 6000.0,
            "yearly_usd_per_device": {
                "own": fixed - idle * 6000.0 / HOURS_PER_YEAR + busy_h * 6000.0,
                "rent": rent_h * 6000.0,
            },
        }
    )


def test_a_fleet_breaks_even_where_owning_and_renting_all_of_it_meet() -> None:
    """Two kinds of device, bought or rented whole: the break-even hours solve
    sum(count x own) = sum(count x rent); the cheaper choice and the payback months come
    from the summed yearly costs; a kind whose break-even is not known makes the system's
    not known, naming that kind and why."""
    a = _kind(fixed=10_000.0, idle=876.0, amort=8_000.0, busy_h=0.2, rent_h=3.0)
    b = _kind(fixed=30_000.0, idle=1_752.0, amort=25_000.0, busy_h=0.4, rent_h=6.0)
    be = fleet_break_even([("a", 2, a), ("b", 1, b)])
    assert isinstance(be.result, dict)
    r = be.result
    fixed = 2 * 10_000.0 + 30_000.0
    slope = 2 * (3.0 - 0.2 + 876.0 / HOURS_PER_YEAR) + (6.0 - 0.4 + 1_752.0 / HOURS_PER_YEAR)
    assert r["break_even_hours_per_year"] == pytest.approx(fixed / slope)
    own = 2 * a.result["yearly_usd_per_device"]["own"] + b.result["yearly_usd_per_device"]["own"]  # type: ignore[index]
    assert r["yearly_usd"] == pytest.approx({"own": own, "rent": (2 * 3.0 + 6.0) * 6000.0})
    assert r["cheaper"] == "own"
    saving = ((2 * 3.0 + 6.0) * 6000.0 - (own - (2 * 8_000.0 + 25_000.0))) / 12.0
    assert r["break_even_months"] == pytest.approx((2 * 40_000.0 + 125_000.0) / saving)
    assert r["committed_usd_per_year"] is None and "committed" not in r["yearly_usd"]

    unknown = BreakEven("Rent-versus-buy break-even is not known: no list price for b.")
    msg = fleet_break_even([("a", 2, a), ("b", 1, unknown)]).result
    assert msg == "Rent-versus-buy break-even is not known: for b, no list price for b."
