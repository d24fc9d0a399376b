"""Energy, cost and carbon of a run (the scenario's ``economics:`` block).

:func:`apply_economics` turns one system's simulated timeline into joules, dollars and
kilograms of CO2e, and records every figure it used (with its source or the assumption
that stands in for it) so the report can list them under "Assumptions and sources".

Energy
    Each device's power-state timeline (the ``devices`` frame: busy intervals whose state
    is ``compute``, ``memory``, ``comm`` or ``overhead``, with their joules) plus idle
    power times the device-time not covered by a busy interval over the simulated span.
    Host overhead (``host_power`` per node) runs for the whole span. The sum is multiplied
    by the PUE: ``energy_j = (busy_j + idle_w * idle_s + host_w * nodes * span) * pue``.
Cost
    Rented (``cloud`` on-demand, ``reserved``, ``spot``): the device-hour price times
    device-hours; electricity and hosting are in the price. Owned: the list price amortized
    over ``lifetime`` for the run's span, plus electricity for ``energy_j``, plus hosting
    per provisioned kW-month.
Carbon
    ``energy_j`` times the grid intensity (``carbon_intensity``, else the ``region``'s,
    else the world average), plus optional embodied carbon amortized over the lifetime.

A figure that is needed and not known (a device with no published price, say) makes the
metrics that depend on it ``None`` and puts a sentence saying why into
``result.details["not_known"][metric]``; the rest is still computed. A negative, absurd or
non-finite price or power figure is an input error (:class:`~xpusim.engine.errors.XpusimError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xpusim.engine.device import Figure
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import frame_columns, frame_height, ordered_sum
from xpusim.engine.qty import CarbonIntensity, Duration, Power, PricePerEnergy
from xpusim.engine.registry import unknown_message

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.results import SystemResult

HOUR_S = 3600.0
MONTH_S = 365.25 * 86400.0 / 12.0
KWH_J = 3.6e6
G_PER_KWH = 1e-3 / KWH_J
"""One gram of CO2e per kWh in SI (kg per joule)."""

_EMBER_WORLD = (
    "Ember, Global Electricity Review 2024: world power-sector emissions intensity in 2023, "
    "481 gCO2/kWh (as charted by Statista, "
    "https://www.statista.com/statistics/943137/global-emissions-intensity-power-sector-by-country/)"
)
_OWID = (
    "Our World in Data, 'Carbon intensity of electricity generation' (Ember and Energy "
    "Institute), 2023 values, https://ourworldindata.org/grapher/carbon-intensity-electricity"
)
_EMBER_COUNTRY = (
    "Ember, electricity generation emission intensity by country in 2023 (as charted by "
    "Statista, https://www.statista.com/statistics/943137/"
    "global-emissions-intensity-power-sector-by-country/)"
)

GRID_INTENSITY: dict[str, Figure] = {
    "world": Figure(481 * G_PER_KWH, _EMBER_WORLD),
    "australia": Figure(549 * G_PER_KWH, _OWID),
    "brazil": Figure(98 * G_PER_KWH, _OWID),
    "canada": Figure(170 * G_PER_KWH, _OWID),
    "china": Figure(582 * G_PER_KWH, _OWID),
    "france": Figure(56 * G_PER_KWH, _OWID),
    "germany": Figure(381 * G_PER_KWH, _OWID),
    "india": Figure(713 * G_PER_KWH, _EMBER_COUNTRY),
    "norway": Figure(30 * G_PER_KWH, _EMBER_COUNTRY),
}
"""Grid carbon intensity (kg CO2e per joule) by ``economics.region``; ``world`` is the
default when a scenario names neither a region nor a ``carbon_intensity``."""

DEFAULT_LIFETIME = Figure(
    4 * 365.25 * 86400.0,
    assumption="4-year service life for owned accelerators (a common depreciation schedule "
    "for servers; set economics.lifetime to change it)",
)

_SCENARIO = "scenario (economics.{})"

# Guards against catalog or scenario figures that cannot be real (a typo in a unit, say).
_MAX_USD_PER_DEVICE_HOUR = 1000.0
_MAX_LIST_USD = 10_000_000.0
_MAX_USD_PER_KWH = 10.0
_MAX_WATTS = 100_000.0

BUSY_STATES = ("compute", "memory", "comm", "overhead")
"""Busy power states of the ``devices`` frame; anything else counts as ``idle``."""


class PowerModelLike(Protocol):
    """What :func:`apply_economics` needs of a power model (``xpusim.engine.power.PowerModel``):
    the idle draw and the draw in a busy state, in watts (``None`` when not known)."""

    @property
    def idle_watts(self) -> float | None:
        """Watts drawn by an idle device."""
        ...

    def state_watts(self, state: str) -> float | None:
        """Watts drawn while busy in ``state`` (``compute``, ``memory``, ``comm`` ...)."""
        ...

    def figures(self) -> Mapping[str, Figure]:
        """The figures the model used, by dotted name (``power.idle_w`` ...)."""
        ...


class EconomicsConfig(BaseModel):
    """How energy, money and carbon are counted.

    ``pricing`` picks rented (``cloud`` on-demand, ``spot``, ``reserved``) or ``owned``
    hardware; ``electricity`` and ``pue`` turn device energy into a bill; ``lifetime``
    amortizes an owned device's list price; ``carbon_intensity`` is the grid's (else the
    ``region``'s published average, else the world average). ``host_power`` is the draw
    of one node's host (CPUs, NICs, fans) beside its accelerators; ``hosting_usd_per_kw_month``
    the colocation price of provisioned power for owned hardware; ``spot_discount`` and
    ``reserved_discount`` derive those prices from the on-demand one where the catalog
    publishes none; ``embodied_kg_per_device`` is manufacturing carbon, amortized over
    ``lifetime``.
    """

    model_config = ConfigDict(extra="forbid")

    pricing: Literal["cloud", "spot", "reserved", "owned"] = "cloud"
    electricity: PricePerEnergy | None = None
    pue: float = Field(default=1.0, ge=1.0, le=5.0)
    carbon_intensity: CarbonIntensity | None = None
    lifetime: Duration | None = None
    region: str | None = None
    host_power: Power | None = None
    hosting_usd_per_kw_month: float | None = Field(default=None, ge=0.0, le=10_000.0)
    spot_discount: float | None = Field(default=None, ge=0.0, lt=1.0)
    reserved_discount: float | None = Field(default=None, ge=0.0, lt=1.0)
    embodied_kg_per_device: float | None = Field(default=None, ge=0.0, le=1_000_000.0)

    @field_validator("region")
    @classmethod
    def _known_region(cls, v: str | None) -> str | None:
        if v is None:
            return v
        key = v.strip().lower()
        if key not in GRID_INTENSITY:
            raise ValueError(
                unknown_message("region", v, list(GRID_INTENSITY))
                + " Or give carbon_intensity (for example 380 g/kWh)."
            )
        return key


# --- helpers ---------------------------------------------------------------------------


def _check(name: str, value: float, limit: float, unit: str, device: str, scale: float) -> None:
    """Raise for a negative, non-finite or absurd figure ``value`` (SI; ``scale`` to ``unit``)."""
    shown = value * scale
    if not math.isfinite(value) or value < 0 or shown > limit:
        why = "negative" if value < 0 else ("not finite" if not math.isfinite(value) else "absurd")
        raise XpusimError(
            f"device {device!r}: {name} = {shown:g} {unit} is {why}; a real figure lies between "
            f"0 and {limit:g} {unit}. Fix the catalog entry or the scenario's economics block."
        )


def validate_figures(spec: DeviceSpec, config: EconomicsConfig) -> None:
    """Raise :class:`XpusimError` for a negative or absurd price, power or electricity figure."""
    price = spec.price
    for key in ("on_demand", "spot", "reserved"):
        fig = getattr(price, key)
        if fig is not None:
            _check(f"price.{key}", fig.value, _MAX_USD_PER_DEVICE_HOUR, "USD/h", spec.name, HOUR_S)
    if price.list_price is not None:
        _check("price.list_price", price.list_price.value, _MAX_LIST_USD, "USD", spec.name, 1.0)
    for key in ("max_w", "idle_w", "mean_w"):
        fig = getattr(spec.power, key)
        if fig is not None:
            _check(f"power.{key}", fig.value, _MAX_WATTS, "W", spec.name, 1.0)
    if config.electricity is not None:
        _check(
            "economics.electricity",
            config.electricity,
            _MAX_USD_PER_KWH,
            "USD/kWh",
            spec.name,
            KWH_J,
        )
    if config.host_power is not None:
        _check("economics.host_power", config.host_power, _MAX_WATTS, "W", spec.name, 1.0)


def _as_watts(x: Any) -> float | None:
    """A power model's answer (a number, a Figure, a callable or ``None``) as watts."""
    if callable(x):
        x = x()
    if isinstance(x, Figure):
        return x.value
    if x is None:
        return None
    return float(x)


def _idle(spec: DeviceSpec, power: PowerModelLike | None) -> tuple[float | None, Figure | None]:
    """Idle watts and their provenance: the power model's, else the catalog's idle figure."""
    if power is not None:
        watts = _as_watts(power.idle_watts)
        if watts is not None:
            fig = _model_figures(power).get("power.idle_w")
            if not isinstance(fig, Figure) or fig.value != watts:
                cat = spec.power.idle_w
                fig = (
                    cat
                    if cat is not None and cat.value == watts
                    else Figure(
                        watts,
                        assumption=f"idle power of {spec.name} from the {spec.backend} backend's "
                        f"power model (no published idle figure)",
                    )
                )
            return watts, fig
    if spec.power.idle_w is not None:
        return spec.power.idle_w.value, spec.power.idle_w
    return None, None


def _model_figures(power: PowerModelLike | None) -> dict[str, Figure]:
    """The figures a power model says it used (``figures()``)."""
    if power is None:
        return {}
    out = power.figures()
    return {str(k): v for k, v in out.items() if isinstance(v, Figure)} if out else {}


def _state_watts(power: PowerModelLike | None, state: str) -> float | None:
    if power is None:
        return None
    return _as_watts(power.state_watts(state))


def _price_figure_name(tier: str) -> str:
    """The dotted name of a rental tier's figure (``cloud`` is the on-demand price)."""
    return "price.on_demand" if tier == "cloud" else f"price.{tier}"


def _rent_price(
    spec: DeviceSpec, config: EconomicsConfig, tier: str
) -> tuple[float | None, Figure | None, str]:
    """USD per device-second of ``tier`` (cloud, spot, reserved), its figure, and why not."""
    price = spec.price
    cloud = price.on_demand
    if tier == "cloud":
        if cloud is None:
            return None, None, (f"{spec.name} has no published on-demand price (price.on_demand)")
        return cloud.value, cloud, ""
    direct = price.spot if tier == "spot" else price.reserved
    if direct is not None:
        return direct.value, direct, ""
    discount = config.spot_discount if tier == "spot" else config.reserved_discount
    if discount is not None and cloud is not None:
        value = cloud.value * (1.0 - discount)
        return (
            value,
            Figure(
                value,
                assumption=f"{tier} price = on-demand {cloud.value * HOUR_S:.4g} USD/h "
                f"({cloud.cited}) less economics.{tier}_discount {discount:.0%}",
            ),
            "",
        )
    return (
        None,
        None,
        (
            f"{spec.name} has no published {tier} price (price.{tier})"
            + ("" if cloud is None else f" and the scenario sets no economics.{tier}_discount")
        ),
    )


def _units(result: SystemResult) -> tuple[float | None, float | None, float | None]:
    """Tokens, samples and steps the run completed (``None`` where not applicable)."""
    m = result.metrics
    span = m.get("simulated_s")
    tokens = samples = steps = None
    tps = m.get("throughput_tokens_per_s")
    sps = m.get("throughput_samples_per_s")
    if tps is not None and span:
        tokens = float(tps) * float(span)
    if sps is not None and span:
        samples = float(sps) * float(span)
    req = result.frames.get("requests")
    if req is not None and frame_height(req):
        cols = frame_columns(req)
        done = req.lazy()
        if "status" in cols:
            done = done.filter(pl.col("status").is_in(["ok", "done", "finished", "completed"]))
            if frame_height(done) == 0:
                done = (
                    req.lazy().filter(pl.col("finish_s").is_not_null())
                    if "finish_s" in cols
                    else req.lazy()
                )
        if tokens is None and "output_tokens" in cols:
            tokens = float(done.select(pl.col("output_tokens").sum()).collect().item())
        if samples is None:
            samples = float(frame_height(done))
    st = result.frames.get("steps")
    if st is not None and frame_height(st):
        steps = float(frame_height(st))
    elif m.get("step_time_s") and span:
        steps = float(span) / float(m["step_time_s"])
    return tokens, samples, steps


# --- the entry point -------------------------------------------------------------------


def apply_economics(
    result: SystemResult,
    spec: DeviceSpec,
    count: int,
    config: EconomicsConfig,
    power: PowerModelLike | None,
) -> None:
    """Add energy, cost and carbon metrics to ``result`` (one system that ran ``ok``).

    Adds ``energy_j``, ``energy_per_token_j``, ``energy_per_sample_j``,
    ``energy_per_step_j``, ``cost_usd``, ``cost_per_million_tokens_usd``, ``carbon_kg`` (and
    ``*_per_run`` metrics when the run reports ``time_to_train_s``) to ``result.metrics``;
    ``energy_breakdown_j``, ``power_states_s``, ``utilization``, ``cost_breakdown_usd``,
    ``break_even`` and ``not_known`` to ``result.details``; and every figure used to
    ``result.figures``. ``count`` is the number of devices; the ``devices`` frame may show
    more (replicas), and then its count is used.
    """
    validate_figures(spec, config)
    m = result.metrics
    details = result.details
    not_known: dict[str, str] = dict(details.get("not_known", {}))
    figs = result.figures

    def unknown(metric: str, reason: str) -> None:
        m[metric] = None
        not_known[metric] = reason

    figs["economics.pue"] = (
        Figure(config.pue, source=_SCENARIO.format("pue"))
        if config.pue != 1.0
        else Figure(1.0, assumption="PUE 1.0: no facility overhead counted (set economics.pue)")
    )

    # 1. the span and the device power-state timeline
    dev = result.frames.get("devices")
    span = m.get("simulated_s")
    dev_rows = frame_height(dev) if dev is not None else 0
    if span is None and dev is not None and dev_rows:
        span = float(dev.lazy().select(pl.col("end_s").max()).collect().item())
    span = float(span or 0.0)
    n_devices = max(int(count), 1)
    busy_j: float | None = None
    busy_s = 0.0
    states: dict[str, float] = {}
    energy_reason = ""
    if dev is not None and dev_rows:
        dev_cols = frame_columns(dev)
        lane_cols = [c for c in ("replica", "device") if c in dev_cols]
        lanes = (
            int(dev.lazy().select(pl.struct(lane_cols).n_unique()).collect().item())
            if lane_cols
            else 1
        )
        n_devices = max(n_devices, lanes)
        # clip each interval to [0, span] and keep the busy ones (a lazy frame stays lazy:
        # only per-state sums are collected, added in row order by ordered_sum)
        iv = (
            dev.lazy()
            .with_columns(
                pl.col("start_s").clip(0.0, span).alias("_a"),
                pl.col("end_s").clip(0.0, span).alias("_b"),
            )
            .with_columns((pl.col("_b") - pl.col("_a")).clip(0.0).alias("_d"))
        )
        busy = iv.filter(pl.col("state").is_in(list(BUSY_STATES)))
        # intervals with joules count as recorded; the rest at the model's state watts
        busy = busy.with_columns(
            pl.col("joules").cast(pl.Float64)
            if "joules" in dev_cols
            else pl.lit(None, pl.Float64).alias("joules")
        )
        has_j = pl.col("joules").is_not_null() & pl.col("joules").is_finite()
        names = sorted(
            str(x)
            for x in busy.select(pl.col("state").unique()).collect()["state"].drop_nulls().to_list()
        )
        states = {k: ordered_sum(busy, pl.col("_d"), pl.col("state") == k) for k in names}
        busy_s = sum(states.values())
        total = ordered_sum(busy, pl.col("joules"), has_j)
        missing: set[str] = set()
        unpriced_names = sorted(
            str(x)
            for x in busy.filter(~has_j)
            .select(pl.col("state").unique())
            .collect()["state"]
            .drop_nulls()
            .to_list()
        )
        unpriced = [
            (k, ordered_sum(busy, pl.col("_d"), ~has_j & (pl.col("state") == k)))
            for k in unpriced_names
        ]
        for state, d in unpriced:
            w = _state_watts(power, str(state))
            if w is None:
                missing.add(str(state))
            else:
                total += w * float(d)
        model_figs = _model_figures(power)
        for state in states:
            if f"power.state.{state}" in model_figs:
                figs[f"power.state.{state}"] = model_figs[f"power.state.{state}"]
        if "power.max_w" in model_figs and len(model_figs) > 1:
            figs["power.max_w"] = model_figs["power.max_w"]
        if missing:
            energy_reason = (
                f"busy intervals in state(s) {', '.join(sorted(missing))} carry no joules and "
                f"no power model gives {spec.name}'s draw in them"
            )
        else:
            busy_j = total
    else:
        energy_reason = "the run recorded no device power-state timeline (devices frame)"
    idle_s = max(n_devices * span - busy_s, 0.0)
    states["idle"] = idle_s
    details["power_states_s"] = states
    details["utilization"] = busy_s / (n_devices * span) if span > 0 else None
    details["devices_counted"] = n_devices

    idle_w, idle_fig = _idle(spec, power)
    if idle_fig is not None:
        figs["power.idle_w"] = idle_fig
    idle_j: float | None = None
    if idle_w is not None:
        idle_j = idle_w * idle_s
    elif idle_s == 0.0:
        idle_j = 0.0
    elif not energy_reason:
        energy_reason = (
            f"{spec.name} has no published idle power and no power model supplied one, and its "
            f"devices were idle {idle_s:.3g} device-seconds"
        )

    nodes = math.ceil(n_devices / max(spec.devices_per_node, 1))
    host_w = config.host_power or 0.0
    figs["economics.host_power_w"] = (
        Figure(host_w, source=_SCENARIO.format("host_power"))
        if config.host_power is not None
        else Figure(
            0.0,
            assumption="host CPU/NIC/fan power not counted; set economics.host_power "
            "per node to include it",
        )
    )
    host_j = host_w * nodes * span

    energy_j: float | None = None
    if busy_j is not None and idle_j is not None:
        it_j = busy_j + idle_j + host_j
        energy_j = it_j * config.pue
        details["energy_breakdown_j"] = {
            "busy": busy_j,
            "idle": idle_j,
            "host": host_j,
            "facility (PUE)": it_j * (config.pue - 1.0),
        }
        m["energy_j"] = energy_j
    else:
        unknown("energy_j", f"Energy is not known: {energy_reason}.")

    # 2. energy per unit of work
    tokens, samples, steps = _units(result)
    per = (
        ("energy_per_token_j", tokens),
        ("energy_per_sample_j", samples),
        ("energy_per_step_j", steps),
    )
    for key, n in per:
        if n is None or n <= 0:
            continue
        if energy_j is None:
            unknown(key, not_known["energy_j"])
        else:
            m[key] = energy_j / n

    # 3. cost
    breakdown: dict[str, float] = {}
    cost: float | None = None
    device_s = n_devices * span
    lifetime_fig = (
        Figure(config.lifetime, source=_SCENARIO.format("lifetime"))
        if config.lifetime is not None
        else DEFAULT_LIFETIME
    )
    if config.electricity is not None:
        figs["economics.electricity"] = Figure(
            config.electricity, source=_SCENARIO.format("electricity")
        )
    if config.pricing == "owned":
        figs["economics.lifetime"] = lifetime_fig
        reasons = []
        if spec.price.list_price is None:
            reasons.append(f"{spec.name} has no published list price (price.list_price)")
        if config.electricity is None:
            reasons.append("the scenario gives no electricity price (economics.electricity)")
        if energy_j is None and config.electricity is not None:
            reasons.append("its energy is not known")
        if reasons:
            unknown("cost_usd", "Owned cost is not known: " + "; ".join(reasons) + ".")
        else:
            assert spec.price.list_price is not None and config.electricity is not None
            assert energy_j is not None
            figs["price.list_price"] = spec.price.list_price
            breakdown["amortization"] = spec.price.list_price.value * device_s / lifetime_fig.value
            breakdown["electricity"] = energy_j * config.electricity
            if config.hosting_usd_per_kw_month is not None:
                figs["economics.hosting_usd_per_kw_month"] = Figure(
                    config.hosting_usd_per_kw_month,
                    source=_SCENARIO.format("hosting_usd_per_kw_month"),
                )
                kw = _provisioned_kw(spec, n_devices, nodes, host_w, energy_j, span, config.pue)
                breakdown["hosting"] = config.hosting_usd_per_kw_month * kw * span / MONTH_S
            cost = sum(breakdown.values())
    else:
        rate, fig, why = _rent_price(spec, config, config.pricing)
        if rate is None or fig is None:
            unknown("cost_usd", f"Rented cost is not known: {why}.")
        else:
            figs[_price_figure_name(config.pricing)] = fig
            breakdown[f"{config.pricing} rental"] = rate * device_s
            cost = breakdown[f"{config.pricing} rental"]
    if cost is not None:
        m["cost_usd"] = cost
        details["cost_breakdown_usd"] = breakdown
    if tokens is not None and tokens > 0:
        if cost is None:
            unknown("cost_per_million_tokens_usd", not_known["cost_usd"])
        else:
            m["cost_per_million_tokens_usd"] = cost / tokens * 1e6

    # 4. carbon
    if config.carbon_intensity is not None:
        grid = Figure(config.carbon_intensity, source=_SCENARIO.format("carbon_intensity"))
    else:
        grid = GRID_INTENSITY[config.region or "world"]
    figs["economics.carbon_intensity"] = grid
    if energy_j is None:
        unknown("carbon_kg", not_known["energy_j"])
    else:
        carbon = energy_j * grid.value
        carbon_parts = {"operational": carbon}
        if config.embodied_kg_per_device is not None:
            figs["economics.embodied_kg_per_device"] = Figure(
                config.embodied_kg_per_device, source=_SCENARIO.format("embodied_kg_per_device")
            )
            figs["economics.lifetime"] = lifetime_fig
            emb = config.embodied_kg_per_device * device_s / lifetime_fig.value
            carbon_parts["embodied"] = emb
            carbon += emb
        m["carbon_kg"] = carbon
        details["carbon_breakdown_kg"] = carbon_parts

    # 5. a whole training run, when the workload extrapolates one
    ttt = m.get("time_to_train_s")
    if ttt and span > 0:
        scale = float(ttt) / span
        for src, dst in (
            ("energy_j", "energy_per_run_j"),
            ("cost_usd", "cost_per_run_usd"),
            ("carbon_kg", "carbon_per_run_kg"),
        ):
            if m.get(src) is None:
                unknown(dst, not_known.get(src, f"{src} is not known."))
            else:
                m[dst] = float(m[src]) * scale

    # 6. rent versus buy
    details["break_even"] = _break_even(
        spec,
        config,
        n_devices,
        nodes,
        host_w,
        energy_j,
        span,
        details["utilization"],
        lifetime_fig,
        figs,
    )
    if isinstance(details["break_even"], str):
        not_known["break_even"] = details.pop("break_even")
    details["not_known"] = not_known


def _provisioned_kw(
    spec: DeviceSpec, n: int, nodes: int, host_w: float, energy_j: float, span: float, pue: float
) -> float:
    """IT power a colocation contract provisions: the devices' max power (their mean draw
    over the run where no max is published) plus the hosts'."""
    if spec.power.max_w is not None:
        dev_w = spec.power.max_w.value * n
    else:
        dev_w = energy_j / pue / span if span > 0 else 0.0
    return (dev_w + host_w * nodes) / 1000.0


def _break_even(
    spec: DeviceSpec,
    config: EconomicsConfig,
    n: int,
    nodes: int,
    host_w: float,
    energy_j: float | None,
    span: float,
    utilization: float | None,
    lifetime: Figure,
    figs: dict[str, Figure],
) -> dict[str, Any] | str:
    """Rent versus buy for one device, or a sentence saying why it cannot be computed.

    Owning costs ``own`` USD per device-hour whether the device works or not (amortized list
    price, electricity at the run's mean draw, hosting); renting costs ``rent`` per hour
    actually rented. If a device is needed a fraction ``u`` of the hours, owning is cheaper
    when ``u >= own / rent`` (the break-even utilization). At the workload's utilization
    ``u`` the list price is paid back after ``list / ((rent * u - opex) * 730 h)`` months.
    """
    tier = config.pricing if config.pricing != "owned" else "cloud"
    rent, rent_fig, why = _rent_price(spec, config, tier)
    reasons = []
    if rent is None:
        reasons.append(why)
    if spec.price.list_price is None:
        reasons.append(f"{spec.name} has no published list price (price.list_price)")
    if config.electricity is None:
        reasons.append("the scenario gives no electricity price (economics.electricity)")
    if energy_j is None:
        reasons.append("the run's energy is not known")
    if utilization is None:
        reasons.append("the run has no simulated span")
    if reasons:
        return "Rent-versus-buy break-even is not known: " + "; ".join(reasons) + "."
    assert rent is not None and rent_fig is not None and spec.price.list_price is not None
    assert config.electricity is not None and energy_j is not None and utilization is not None
    figs[_price_figure_name(tier)] = rent_fig
    figs["price.list_price"] = spec.price.list_price
    figs["economics.lifetime"] = lifetime
    mean_w = energy_j / (n * span) if span > 0 else 0.0  # facility watts per device, PUE in
    capex_s = spec.price.list_price.value / lifetime.value
    power_s = mean_w * config.electricity
    hosting_s = 0.0
    if config.hosting_usd_per_kw_month is not None:
        kw = _provisioned_kw(spec, n, nodes, host_w, energy_j, span, config.pue) / n
        hosting_s = config.hosting_usd_per_kw_month * kw / MONTH_S
    own_s = capex_s + power_s + hosting_s
    u_star = own_s / rent
    margin_h = (rent * utilization - power_s - hosting_s) * HOUR_S
    payback = spec.price.list_price.value / (margin_h * MONTH_S / HOUR_S) if margin_h > 0 else None
    return {
        "rent_tier": tier,
        "rent_usd_per_device_hour": rent * HOUR_S,
        "own_usd_per_device_hour": own_s * HOUR_S,
        "own_breakdown_usd_per_device_hour": {
            "amortization": capex_s * HOUR_S,
            "electricity": power_s * HOUR_S,
            "hosting": hosting_s * HOUR_S,
        },
        "utilization": utilization,
        "break_even_utilization": u_star,
        "cheaper": "own" if utilization >= u_star else "rent",
        "payback_months": payback,
    }


def describe_break_even(be: Mapping[str, Any]) -> str:
    """One sentence a person can act on, from a ``details["break_even"]`` mapping."""
    u, u_star = be["utilization"], be["break_even_utilization"]
    own, rent = be["own_usd_per_device_hour"], be["rent_usd_per_device_hour"]
    threshold = (
        f"owning is cheaper when devices are busy at least {u_star:.0%} of the hours"
        if u_star <= 1.0
        else "owning is never cheaper, even with devices busy all the time"
    )
    text = (
        f"Owning costs {own:.3g} USD per device-hour against {rent:.3g} USD renting "
        f"({be['rent_tier']}); {threshold}. This workload keeps them busy {u:.0%}, "
        f"so {be['cheaper']}."
    )
    pb = be.get("payback_months")
    if pb is not None and be["cheaper"] == "own":
        text += f" The list price pays back after {pb:.3g} months."
    return text
