"""Energy, cost and carbon (engine.economics) on small hand-checked timelines."""

from __future__ import annotations

import math

import polars as pl
import pytest
from pydantic import ValidationError

from xpusim.engine.device import DeviceSpec, Figure, PowerSpec, PriceSpec
from xpusim.engine.economics import (
    GRID_INTENSITY,
    HOUR_S,
    KWH_J,
    MONTH_S,
    EconomicsConfig,
    apply_economics,
    describe_break_even,
)
from xpusim.engine.errors import XpusimError
from xpusim.engine.power import PowerModel
from xpusim.engine.results import SystemResult

SRC = "test_fixture"
SPAN = 10.0


def make_spec(
    *,
    cloud_h: float | None = 4.0,
    spot_h: float | None = None,
    list_price: float | None = 30_000.0,
    idle_w: float | None = 50.0,
    max_w: float | None = 700.0,
    per_node: int = 8,
) -> DeviceSpec:
    """A device spec whose price and power figures are given per test (None = unpublished)."""

    def fig(v: float | None, scale: float = 1.0) -> Figure | None:
        return None if v is None else Figure(v * scale, SRC)

    return DeviceSpec(
        name="testchip",
        backend="gpu",
        vendor="test",
        description="a test device",
        peak_flops={"bf16": Figure(1e15, SRC)},
        memory_bytes=Figure(80e9, SRC),
        memory_bw=Figure(3e12, SRC),
        power=PowerSpec(max_w=fig(max_w), idle_w=fig(idle_w)),
        price=PriceSpec(
            on_demand=fig(cloud_h, 1 / HOUR_S),
            spot=fig(spot_h, 1 / HOUR_S),
            list_price=fig(list_price),
        ),
        devices_per_node=per_node,
    )


def make_result(span: float = SPAN, tokens_per_s: float = 100.0, **metrics: float) -> SystemResult:
    """Two devices over ``span`` s: device 0 busy 4 s compute (400 J) and 1 s comm (50 J),
    device 1 busy 2 s memory (100 J), plus an explicit idle row that must not count twice."""
    dev = pl.DataFrame(
        {
            "system": ["s"] * 4,
            "replica": [0, 0, 0, 0],
            "device": [0, 0, 0, 1],
            "start_s": [0.0, 4.0, 5.0, 0.0],
            "end_s": [4.0, 5.0, 6.0, 2.0],
            "state": ["compute", "idle", "comm", "memory"],
            "joules": [400.0, 999.0, 50.0, 100.0],
        }
    )
    m = {"simulated_s": span, "throughput_tokens_per_s": tokens_per_s, **metrics}
    return SystemResult("s", "gpu", "testchip", 2, metrics=m, frames={"devices": dev})


BUSY_J = 550.0
BUSY_S = 7.0


def test_energy_is_busy_joules_plus_idle_power_times_idle_time_times_pue() -> None:
    """energy_j = (busy joules + idle W x idle device-seconds + host W x nodes x span) x PUE;
    explicit idle rows are not counted as busy."""
    r = make_result()
    cfg = EconomicsConfig(pue=1.5, host_power="200 W")
    apply_economics(r, make_spec(idle_w=50.0), 2, cfg, None)
    idle_s = 2 * SPAN - BUSY_S
    expected = (BUSY_J + 50.0 * idle_s + 200.0 * 1 * SPAN) * 1.5
    assert r.metrics["energy_j"] == pytest.approx(expected)
    parts = r.details["energy_breakdown_j"]
    assert parts["busy"] == pytest.approx(BUSY_J)
    assert parts["idle"] == pytest.approx(50.0 * idle_s)
    assert parts["host"] == pytest.approx(2000.0)
    assert sum(parts.values()) == pytest.approx(expected)
    assert r.details["power_states_s"] == pytest.approx(
        {"compute": 4.0, "comm": 1.0, "memory": 2.0, "idle": idle_s}
    )
    assert r.details["utilization"] == pytest.approx(BUSY_S / (2 * SPAN))
    assert r.metrics["energy_per_token_j"] == pytest.approx(expected / (100.0 * SPAN))
    assert r.figures["power.idle_w"].value == 50.0
    assert r.figures["economics.pue"].value == 1.5


class FakePower:
    """A power model: 30 W idle, 500 W computing."""

    idle_watts = 30.0

    def state_watts(self, state: str) -> float | None:
        return {"compute": 500.0}.get(state)

    def figures(self) -> dict[str, Figure]:
        return {}


def test_power_model_fills_missing_joules_and_idle_power() -> None:
    """A busy interval without joules is priced at the model's state watts, and the model's
    idle watts (an assumption, recorded as such) stand in for an unpublished idle figure."""
    r = make_result()
    r.frames["devices"] = r.frames["devices"].with_columns(
        pl.when(pl.col("state") == "compute").then(None).otherwise(pl.col("joules")).alias("joules")
    )
    apply_economics(r, make_spec(idle_w=None), 2, EconomicsConfig(), FakePower())
    expected = 500.0 * 4.0 + 50.0 + 100.0 + 30.0 * (2 * SPAN - BUSY_S)
    assert r.metrics["energy_j"] == pytest.approx(expected)
    assert r.figures["power.idle_w"].assumption
    assert "energy_j" not in r.details["not_known"]


def test_cloud_cost_is_device_hours_times_price() -> None:
    """Rented cost = USD per device-hour x devices x hours; per million tokens divides by
    the tokens the run produced (throughput x span)."""
    r = make_result(span=HOUR_S)
    apply_economics(r, make_spec(cloud_h=4.0), 2, EconomicsConfig(pricing="cloud"), None)
    assert r.metrics["cost_usd"] == pytest.approx(8.0)
    assert r.details["cost_breakdown_usd"] == pytest.approx({"cloud rental": 8.0})
    assert r.metrics["cost_per_million_tokens_usd"] == pytest.approx(8.0 / (100 * HOUR_S) * 1e6)
    assert r.figures["price.on_demand"].source == SRC


def test_spot_price_from_catalog_or_from_a_discount() -> None:
    """Spot uses the catalog's spot price; without one, on-demand less spot_discount, and the
    derived price is recorded as an assumption."""
    r = make_result(span=HOUR_S)
    apply_economics(r, make_spec(spot_h=1.5), 2, EconomicsConfig(pricing="spot"), None)
    assert r.metrics["cost_usd"] == pytest.approx(3.0)
    r = make_result(span=HOUR_S)
    apply_economics(r, make_spec(), 2, EconomicsConfig(pricing="spot", spot_discount=0.6), None)
    assert r.metrics["cost_usd"] == pytest.approx(2 * 4.0 * 0.4)
    assert "spot_discount" in r.figures["price.spot"].assumption


def test_owned_cost_is_amortization_plus_electricity_plus_hosting() -> None:
    """Owned cost = list price x device-time / lifetime + energy x electricity price +
    hosting USD per kW-month x provisioned kW (max power) x months."""
    r = make_result(span=HOUR_S)
    cfg = EconomicsConfig(
        pricing="owned",
        electricity="0.10 USD/kWh",
        lifetime="3 year",
        hosting_usd_per_kw_month=150.0,
        pue=1.2,
    )
    apply_economics(r, make_spec(list_price=30_000.0, max_w=700.0), 2, cfg, None)
    energy = r.metrics["energy_j"]
    lifetime = 3 * 365.25 * 86400
    amort = 30_000.0 * 2 * HOUR_S / lifetime
    power = energy / KWH_J * 0.10
    hosting = 150.0 * 1.4 * HOUR_S / MONTH_S
    parts = r.details["cost_breakdown_usd"]
    assert parts["amortization"] == pytest.approx(amort)
    assert parts["electricity"] == pytest.approx(power)
    assert parts["hosting"] == pytest.approx(hosting)
    assert r.metrics["cost_usd"] == pytest.approx(amort + power + hosting)
    assert r.figures["economics.lifetime"].source


def test_break_even_hours_are_yearly_ownership_over_the_rent_price() -> None:
    """Owning costs list/lifetime plus idle electricity per year; each busy hour adds the
    draw above idle. The break-even busy hours solve rent x H = own(H); with no busy hours
    given there is no verdict, and the sentence asks for them."""
    r = make_result(span=HOUR_S)
    cfg = EconomicsConfig(pricing="cloud", electricity="0.10 USD/kWh")
    apply_economics(r, make_spec(cloud_h=4.0, list_price=30_000.0), 2, cfg, None)
    be = r.details["break_even"]
    year_h = 8766.0
    busy_w = r.metrics["energy_j"] / (2 * HOUR_S)
    amort = 30_000.0 / 4
    idle_year = 50.0 * year_h / 1000 * 0.10
    per_busy_h = (busy_w - 50.0) / 1000 * 0.10
    assert be["own_fixed_usd_per_device_year"] == pytest.approx(amort + idle_year)
    hours = (amort + idle_year) / (4.0 - per_busy_h + idle_year / year_h)
    assert be["break_even_hours_per_year"] == pytest.approx(hours)
    assert be["cheaper"] is None and be["break_even_months"] is None
    assert "busy_hours_per_year" in describe_break_even(be)


def test_a_short_busy_job_is_told_to_rent_and_a_year_round_one_to_buy() -> None:
    """The verdict reads the hours a year the hardware works, not the run's utilization:
    a run that keeps its device busy 100% is still told to rent when it works 500 hours a
    year, and to buy (with a payback in months) when it works 8,000."""
    dev = pl.DataFrame(
        {
            "system": ["s"],
            "replica": [0],
            "device": [0],
            "start_s": [0.0],
            "end_s": [HOUR_S],
            "state": ["compute"],
            "joules": [700.0 * HOUR_S],
        }
    )

    def verdict(hours: float) -> dict[str, object]:
        r = SystemResult(
            "s", "gpu", "testchip", 1, metrics={"simulated_s": HOUR_S}, frames={"devices": dev}
        )
        cfg = EconomicsConfig(electricity="0.10 USD/kWh", busy_hours_per_year=hours)
        apply_economics(r, make_spec(cloud_h=10.0), 1, cfg, None)
        assert r.metrics["cheaper_choice"] == r.details["break_even"]["cheaper"]
        return dict(r.details["break_even"])

    short, busy = verdict(500.0), verdict(8000.0)
    assert short["cheaper"] == "rent"
    assert busy["cheaper"] == "own"
    months = busy["break_even_months"]
    assert isinstance(months, float) and 0 < months < 48
    assert "buy" in describe_break_even(busy) and "pays back" in describe_break_even(busy)


def test_busy_fraction_and_busy_hours_are_one_input() -> None:
    """``busy_fraction`` is a share of the year's 8,766 hours; giving both is refused."""
    assert EconomicsConfig(busy_fraction=0.5).busy_hours() == pytest.approx(4383.0)
    with pytest.raises(ValidationError, match="not both"):
        EconomicsConfig(busy_fraction=0.5, busy_hours_per_year=100)


def test_missing_figures_are_not_known_with_reasons_and_the_rest_is_computed() -> None:
    """No price and no idle power: energy, cost and carbon are None with a reason sentence
    each naming the missing figure; throughput and the timeline summary remain."""
    r = make_result()
    apply_economics(
        r, make_spec(cloud_h=None, list_price=None, idle_w=None), 2, EconomicsConfig(), None
    )
    nk = r.details["not_known"]
    for metric in (
        "energy_j",
        "energy_per_token_j",
        "cost_usd",
        "cost_per_million_tokens_usd",
        "carbon_kg",
        "break_even",
    ):
        assert metric in nk, metric
        if metric in r.metrics:
            assert r.metrics[metric] is None
    assert "idle power" in nk["energy_j"]
    assert "on_demand" in nk["cost_usd"]
    assert r.metrics["throughput_tokens_per_s"] == 100.0
    assert r.details["utilization"] == pytest.approx(BUSY_S / (2 * SPAN))


def test_cost_is_known_even_when_energy_is_not() -> None:
    """A rented price does not depend on energy: cost is computed when idle power is unknown."""
    r = make_result(span=HOUR_S)
    apply_economics(r, make_spec(idle_w=None), 2, EconomicsConfig(), None)
    assert r.metrics["energy_j"] is None
    assert r.metrics["cost_usd"] == pytest.approx(8.0)


def test_no_device_timeline_is_not_known() -> None:
    """A run without a devices frame has energy not known, saying so."""
    r = SystemResult("s", "gpu", "testchip", 1, metrics={"simulated_s": 5.0})
    apply_economics(r, make_spec(), 1, EconomicsConfig(), None)
    assert r.metrics["energy_j"] is None
    assert "timeline" in r.details["not_known"]["energy_j"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cloud_h": -1.0}, "negative"),
        ({"cloud_h": 50_000.0}, "absurd"),
        ({"list_price": -5.0}, "negative"),
        ({"idle_w": -3.0}, "negative"),
        ({"list_price": math.inf}, "not finite"),
    ],
)
def test_negative_or_absurd_figures_are_input_errors(kwargs: dict[str, float], needle: str) -> None:
    """A negative, absurd or infinite price or power figure raises XpusimError (exit 2)."""
    with pytest.raises(XpusimError, match=needle):
        apply_economics(make_result(), make_spec(**kwargs), 2, EconomicsConfig(), None)


def test_absurd_electricity_price_is_an_input_error() -> None:
    """50 USD/kWh is no real tariff (a unit slip): XpusimError."""
    with pytest.raises(XpusimError, match="electricity"):
        apply_economics(
            make_result(), make_spec(), 2, EconomicsConfig(electricity="50 USD/kWh"), None
        )


def test_negative_scenario_figures_fail_validation() -> None:
    """The scenario schema refuses negative prices and discounts of 100 % or more."""
    with pytest.raises(ValidationError):
        EconomicsConfig(electricity="-0.1 USD/kWh")
    with pytest.raises(ValidationError):
        EconomicsConfig(spot_discount=1.0)
    with pytest.raises(ValidationError):
        EconomicsConfig(hosting_usd_per_kw_month=-1.0)


def test_carbon_uses_world_default_region_or_explicit_intensity() -> None:
    """carbon_kg = energy x grid intensity: the world average (cited) by default, a region's
    figure when named, the scenario's own when given."""
    r = make_result()
    apply_economics(r, make_spec(), 2, EconomicsConfig(), None)
    e = r.metrics["energy_j"]
    assert r.metrics["carbon_kg"] == pytest.approx(e * 481e-3 / KWH_J)
    assert "Ember" in r.figures["economics.carbon_intensity"].source
    r = make_result()
    apply_economics(r, make_spec(), 2, EconomicsConfig(region="France"), None)
    assert r.metrics["carbon_kg"] == pytest.approx(e * GRID_INTENSITY["france"].value)
    r = make_result()
    apply_economics(r, make_spec(), 2, EconomicsConfig(carbon_intensity="100 g/kWh"), None)
    assert r.metrics["carbon_kg"] == pytest.approx(e * 100e-3 / KWH_J)


def test_embodied_carbon_is_amortized_over_lifetime() -> None:
    """Embodied kg per device x device-time / lifetime is added to operational carbon."""
    r = make_result()
    cfg = EconomicsConfig(embodied_kg_per_device=1500.0, lifetime="5 year")
    apply_economics(r, make_spec(), 2, cfg, None)
    parts = r.details["carbon_breakdown_kg"]
    assert parts["embodied"] == pytest.approx(1500.0 * 2 * SPAN / (5 * 365.25 * 86400))
    assert r.metrics["carbon_kg"] == pytest.approx(sum(parts.values()))


def test_unknown_region_lists_valid_ones() -> None:
    """A misspelled region names the nearest valid one."""
    with pytest.raises(ValidationError, match="germany"):
        EconomicsConfig(region="germnay")


def test_training_run_scales_to_time_to_train() -> None:
    """With time_to_train_s, per-run energy, cost and carbon scale the simulated span up; the
    per-step energy divides by the steps simulated."""
    r = make_result(span=HOUR_S, time_to_train_s=10 * HOUR_S)
    r.frames["steps"] = pl.DataFrame({"system": ["s"] * 4, "step": [0, 1, 2, 3]})
    apply_economics(r, make_spec(), 2, EconomicsConfig(), None)
    assert r.metrics["energy_per_run_j"] == pytest.approx(10 * r.metrics["energy_j"])
    assert r.metrics["cost_per_run_usd"] == pytest.approx(10 * r.metrics["cost_usd"])
    assert r.metrics["energy_per_step_j"] == pytest.approx(r.metrics["energy_j"] / 4)


def test_replicas_in_the_frame_count_as_devices() -> None:
    """When the devices frame shows more (replica, device) lanes than ``count``, idle time
    covers them all."""
    r = make_result()
    r.frames["devices"] = pl.concat(
        [
            r.frames["devices"],
            r.frames["devices"].with_columns(pl.lit(1, pl.Int64).alias("replica")),
        ]
    )
    apply_economics(r, make_spec(), 2, EconomicsConfig(), None)
    assert r.details["devices_counted"] == 4
    assert r.details["energy_breakdown_j"]["idle"] == pytest.approx(50.0 * (4 * SPAN - 2 * BUSY_S))


def test_with_the_engine_power_model() -> None:
    """With engine.power's PowerModel and no published idle figure, idle power is the model's
    stated assumption and is listed among the figures."""
    spec = make_spec(idle_w=None, max_w=700.0)
    model = PowerModel.from_device(spec)
    r = make_result()
    apply_economics(r, spec, 2, EconomicsConfig(), model)
    idle = model.idle_watts
    assert r.metrics["energy_j"] == pytest.approx(BUSY_J + idle * (2 * SPAN - BUSY_S))
    assert r.figures["power.idle_w"].assumption
    assert r.figures["power.idle_w"].value == pytest.approx(idle)
