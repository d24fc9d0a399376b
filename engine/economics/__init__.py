"""Energy, cost and carbon of a run (the scenario's ``economics:`` block), as small steps.

:func:`price_system` composes pure steps over one system's device spec, device count,
economics config, power model, the workload's declared output metrics and its declared
frames, and returns an :class:`Economics`: the metrics, details and figures the run
records (every figure with its source or the assumption that stands in for it, for the
report's "Assumptions and sources").

Energy (:mod:`.energy`)
    Each device's power-state timeline (the ``devices`` frame,
    :data:`~xpusim.engine.frames.DEVICES_SCHEMA`) plus idle power times the device-time
    not covered by a busy interval, plus host power per node over the span, times the PUE.
Work (:mod:`.units`)
    Tokens, samples and steps the run completed, from declared metrics and frames.
Cost (:mod:`.rented`, :mod:`.owned`)
    Rented: the device-hour price times device-hours. Owned: the list price amortized
    over ``lifetime`` for the run's span, plus electricity, plus hosting.
Carbon (:mod:`.carbon`)
    Energy times the grid intensity, plus optional embodied carbon.
Rent versus buy (:mod:`.breakeven`)
    The utilization above which owning is cheaper, and the payback time.
Device kinds (:mod:`.kinds`)
    A system whose ``devices`` frame names several devices (its ``device_name`` column)
    is priced per device: each device's lanes at its own idle power, nodes and price,
    the parts added up (:func:`price_kinds`).

A figure that is needed and not known (a device with no published price, say) makes the
metrics that depend on it ``None`` with a sentence saying why in ``not_known``; the rest
is still computed. A negative, absurd or non-finite price or power figure is an input
error (:class:`~xpusim.engine.errors.XpusimError`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from xpusim.engine.device import Figure
from xpusim.engine.economics.breakeven import (
    BreakEven,
    break_even,
    describe_break_even,
    fleet_break_even,
)
from xpusim.engine.economics.carbon import Carbon, carbon
from xpusim.engine.economics.config import (
    BUSY_STATES,
    DEFAULT_LIFETIME,
    G_PER_KWH,
    GRID_INTENSITY,
    HOUR_S,
    KWH_J,
    MONTH_S,
    SCENARIO_SOURCE,
    EconomicsConfig,
    PowerModelLike,
    validate_figures,
)
from xpusim.engine.economics.cost import Cost, combine_costs
from xpusim.engine.economics.energy import Energy, Timeline, combine_energies, energy, timeline
from xpusim.engine.economics.kinds import DeviceKind, DeviceResolver, device_kinds
from xpusim.engine.economics.owned import owned_cost
from xpusim.engine.economics.pricebook import is_stale
from xpusim.engine.economics.rented import SCENARIO_PREFIX, rented_cost
from xpusim.engine.economics.units import WorkUnits, work_units
from xpusim.engine.frames import Frame, frame_height

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.results import SystemResult

__all__ = [
    "BUSY_STATES",
    "DEFAULT_LIFETIME",
    "GRID_INTENSITY",
    "G_PER_KWH",
    "HOUR_S",
    "KWH_J",
    "MONTH_S",
    "BreakEven",
    "Carbon",
    "Cost",
    "DeviceKind",
    "DeviceResolver",
    "Economics",
    "EconomicsConfig",
    "Energy",
    "PowerModelLike",
    "Timeline",
    "WorkUnits",
    "apply_economics",
    "describe_break_even",
    "for_device",
    "price_kinds",
    "price_system",
    "validate_figures",
]


@dataclass
class Economics:
    """What pricing one system adds to its result.

    ``metrics``: ``energy_j``, ``energy_per_token_j``, ``energy_per_sample_j``,
    ``energy_per_step_j``, ``cost_usd``, ``cost_per_million_tokens_usd``, ``carbon_kg``
    (and ``*_per_run`` when the workload reports ``time_to_train_s``), ``None`` where not
    known. ``details``: ``power_states_s``, ``utilization``, ``devices_counted``,
    ``energy_breakdown_j``, ``cost_breakdown_usd``, ``carbon_breakdown_kg``,
    ``break_even``, ``price_used`` (see :func:`price_used`) and, for a system of several
    devices, ``prices_used`` (each device's, by name). ``choice``: the rent-or-buy
    verdict (``own``, ``rent``, ``committed``) when the scenario gives its busy hours,
    recorded as the ``cheaper_choice`` summary key. ``not_known``: why each ``None``
    metric is not known. ``figures``: every figure used, by dotted name. ``tier``: the
    price tier recorded as ``price_tier`` when it is not ``price_used``'s own (each
    device's tier, joined with ``+`` where they differ).
    """

    metrics: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    not_known: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    choice: str | None = None
    tier: str | None = None

    def unknown(self, metric: str, reason: str) -> None:
        """Mark ``metric`` not known, for ``reason``."""
        self.metrics[metric] = None
        self.not_known[metric] = reason


def pue_figure(pue: float) -> Figure:
    """The PUE as a figure: the scenario's, or the stated assumption of none."""
    if pue != 1.0:
        return Figure(pue, source=SCENARIO_SOURCE.format("pue"))
    return Figure(1.0, assumption="PUE 1.0: no facility overhead counted (set economics.pue)")


def _per_unit(out: Economics, en: Energy, units: WorkUnits) -> None:
    if en.split is not None and units.samples:
        per = en.split.per(units.samples)
        out.metrics["energy_per_sample_static_j"] = per["static_j"]
        out.metrics["energy_per_sample_active_j"] = per["active_j"]
    for key, n in (
        ("energy_per_token_j", units.tokens),
        ("energy_per_sample_j", units.samples),
        ("energy_per_step_j", units.steps),
    ):
        if n is None or n <= 0:
            continue
        if en.energy_j is None:
            out.unknown(key, en.reason)
        else:
            out.metrics[key] = en.energy_j / n


def _per_run(out: Economics, time_to_train_s: float | None, span: float) -> None:
    """Scale energy, cost and carbon to a whole training run, when the workload gives one."""
    if not time_to_train_s or span <= 0:
        return
    scale = float(time_to_train_s) / span
    for src, dst in (
        ("energy_j", "energy_per_run_j"),
        ("cost_usd", "cost_per_run_usd"),
        ("carbon_kg", "carbon_per_run_kg"),
    ):
        value = out.metrics.get(src)
        if value is None:
            out.unknown(dst, out.not_known.get(src, f"{src} is not known."))
        else:
            out.metrics[dst] = float(value) * scale


def price_system(
    spec: DeviceSpec,
    count: int,
    config: EconomicsConfig,
    power: PowerModelLike | None,
    metrics: Mapping[str, Any],
    frames: Mapping[str, Frame],
    *,
    resolve: DeviceResolver | None = None,
) -> Economics:
    """Energy, cost and carbon of one system that ran ``ok``.

    ``metrics`` are the workload's (``simulated_s``, throughputs, ``time_to_train_s``),
    ``frames`` its declared frames (``devices``, ``requests``, ``steps``). ``count`` is
    the number of devices; the ``devices`` frame may show more (replicas), and then its
    count is used. Nothing passed in is changed.

    Where the ``devices`` frame names other devices than ``spec`` (its ``device_name``
    column, :mod:`.kinds`), each device's lanes are priced apart, at that device's idle
    power, host nodes and price (``resolve`` finds a named device; default: the plugin
    host's catalogs), and the parts added up (:func:`price_kinds`).
    """
    validate_figures(spec, config)
    kinds = device_kinds(frames.get("devices"), spec, power, count, resolve)
    if len(kinds) > 1 or not kinds[0].own:
        return price_kinds(kinds, config, metrics, frames)
    out = Economics(figures={"economics.pue": pue_figure(config.pue)})

    tl = timeline(frames.get("devices"), metrics.get("simulated_s"), count, spec, power)
    en = energy(tl, spec, config, power)
    out.figures.update(en.figures)
    units = _record_energy(out, en, config, metrics, frames)

    device_s = en.devices * en.span
    cost = (
        owned_cost(spec, config, en)
        if config.pricing == "owned"
        else rented_cost(spec, config, device_s)
    )
    out.figures.update(cost.figures)
    used = price_used(cost.figures, config, tier=cost.tier, provider=cost.provider)
    if used is not None:
        out.details["price_used"] = used
    _record_cost(out, cost, units)
    _record_carbon(out, en, config, device_s, metrics)

    _record_break_even(out, break_even(spec, config, en))
    return out


def price_kinds(
    kinds: Sequence[DeviceKind],
    config: EconomicsConfig,
    metrics: Mapping[str, Any],
    frames: Mapping[str, Frame],
) -> Economics:
    """Energy, cost and carbon of a system whose lanes run on several devices (or on
    another device than the system's), each kind priced on its own and added up.

    Each kind's energy is its lanes' busy joules, its idle power over its idle
    device-seconds and host power over its own nodes, times the PUE; its cost its
    device-seconds at its device's price (rented) or its list price, electricity and
    hosting (owned), each price chosen by the same tier and provider rules as a
    system's own. Figures are named with their device (``price.on_demand@h200-sxm``);
    ``details["prices_used"]`` gives each device's price (:func:`price_used`) and
    ``details["price_used"]`` the first kind's. Rent versus buy is that of the device
    when there is one kind (a system all of whose lanes run on another device than its
    own), else that of the whole system (:func:`fleet_break_even`: every kind's yearly
    costs times its count, added up)."""
    for k in kinds:
        validate_figures(k.spec, config)
    out = Economics(figures={"economics.pue": pue_figure(config.pue)})
    out.details["device_counts"] = {k.name: k.count for k in kinds}
    span = metrics.get("simulated_s")
    devices = frames.get("devices")
    if span is None and devices is not None and frame_height(devices):
        span = float(devices.lazy().select(pl.col("end_s").max()).collect().item())
    figs: dict[str, Figure] = {}
    parts: list[Energy] = []
    for k in kinds:
        en_k = energy(timeline(k.frame, span, k.count, k.spec, k.power), k.spec, config, k.power)
        parts.append(en_k)
        figs.update(for_device(en_k.figures, k.name))
    en = combine_energies(parts, figs)
    out.figures.update(en.figures)
    units = _record_energy(out, en, config, metrics, frames)

    costs: list[tuple[str, Cost]] = []
    used_by: dict[str, dict[str, Any]] = {}
    cost_figs: dict[str, Figure] = {}
    for k, en_k in zip(kinds, parts, strict=True):
        c = (
            owned_cost(k.spec, config, en_k)
            if config.pricing == "owned"
            else rented_cost(k.spec, config, en_k.devices * en_k.span)
        )
        costs.append((k.name, c))
        cost_figs.update(for_device(c.figures, k.name))
        used = price_used(c.figures, config, tier=c.tier, provider=c.provider)
        if used is not None:
            used_by[k.name] = {"device": k.name, **used}
    cost = combine_costs(costs, cost_figs)
    out.figures.update(cost.figures)
    if used_by:
        out.details["prices_used"] = used_by
        out.details["price_used"] = next(iter(used_by.values()))
    if cost.tier:
        out.tier = cost.tier
    _record_cost(out, cost, units)
    _record_carbon(out, en, config, en.devices * en.span, metrics)
    if len(kinds) == 1:
        _record_break_even(out, break_even(kinds[0].spec, config, en), kinds[0].name)
        return out
    each = [
        (k.name, k.count, break_even(k.spec, config, en_k))
        for k, en_k in zip(kinds, parts, strict=True)
    ]
    _record_break_even(out, fleet_break_even(each))
    return out


def _record_break_even(out: Economics, be: BreakEven, device: str | None = None) -> None:
    """Record rent versus buy on ``out``: its details and metrics, or why it is not known
    (its figures named with ``device`` when given)."""
    out.figures.update(be.figures if device is None else for_device(be.figures, device))
    if isinstance(be.result, str):
        out.not_known["break_even"] = be.result
    else:
        out.details["break_even"] = be.result
        out.metrics["break_even_hours_per_year"] = be.result["break_even_hours_per_year"]
        if be.result["busy_hours_per_year"] is not None:
            out.metrics["break_even_months"] = be.result["break_even_months"]
            out.choice = be.result["cheaper"]


def for_device(figures: Mapping[str, Figure], device: str) -> dict[str, Figure]:
    """``figures`` named with the ``device`` they belong to (``power.idle_w@h200-sxm``);
    the scenario's economics figures (``economics.*``), shared by every device, keep
    their names."""
    return {
        (name if name.startswith("economics.") else f"{name}{DEVICE_MARK}{device}"): fig
        for name, fig in figures.items()
    }


DEVICE_MARK = "@"
"""Joins a figure's name to the device it belongs to, in a system of several devices."""


def _record_energy(
    out: Economics,
    en: Energy,
    config: EconomicsConfig,
    metrics: Mapping[str, Any],
    frames: Mapping[str, Frame],
) -> WorkUnits:
    """Record the energy's details and metrics on ``out``, then the electricity price
    figure; the work units the energy is divided by."""
    out.details["power_states_s"] = en.states
    out.details["utilization"] = en.utilization
    out.details["devices_counted"] = en.devices
    if en.energy_j is None:
        out.unknown("energy_j", en.reason)
    else:
        out.details["energy_breakdown_j"] = en.breakdown
        if en.split is not None:
            out.details["energy_split_j"] = {
                "static": en.split.static_j,
                "active": en.split.active_j,
            }
        out.metrics["energy_j"] = en.energy_j

    units = work_units(metrics, frames)
    _per_unit(out, en, units)

    if config.electricity is not None:
        out.figures["economics.electricity"] = Figure(
            config.electricity, source=SCENARIO_SOURCE.format("electricity")
        )
    return units


def _record_cost(out: Economics, cost: Cost, units: WorkUnits) -> None:
    """Record the cost, its breakdown and the cost per million tokens on ``out``."""
    if cost.cost_usd is None:
        out.unknown("cost_usd", cost.reason)
    else:
        out.metrics["cost_usd"] = cost.cost_usd
        out.details["cost_breakdown_usd"] = cost.breakdown
    if units.tokens is not None and units.tokens > 0:
        if cost.cost_usd is None:
            out.unknown("cost_per_million_tokens_usd", cost.reason)
        else:
            out.metrics["cost_per_million_tokens_usd"] = cost.cost_usd / units.tokens * 1e6


def _record_carbon(
    out: Economics,
    en: Energy,
    config: EconomicsConfig,
    device_s: float,
    metrics: Mapping[str, Any],
) -> None:
    """Record the carbon of ``en`` and ``device_s`` device-seconds, then the per-run
    figures of a workload that gives ``time_to_train_s``."""
    co2 = carbon(en.energy_j, config, device_s)
    out.figures.update(co2.figures)
    if co2.carbon_kg is None:
        out.unknown("carbon_kg", en.reason)
    else:
        out.metrics["carbon_kg"] = co2.carbon_kg
        out.details["carbon_breakdown_kg"] = co2.breakdown

    _per_run(out, metrics.get("time_to_train_s"), en.span)


def price_used(
    figures: Mapping[str, Figure],
    config: EconomicsConfig,
    *,
    tier: str = "",
    provider: str = "",
) -> dict[str, Any] | None:
    """The device price a cost used: its figure name, value per device-hour (or per device
    bought), citation, date, whether it is older than a year on ``economics.price_date``
    (today when not given; ``None`` where the source states no date), and the ``tier``
    and ``provider`` it came from (:class:`~.cost.Cost`; ``None`` when not known)."""
    for name, fig in figures.items():
        if name.startswith("price."):
            today = config.price_date or _dt.date.today()
            per = 1.0 if name == "price.list_price" else HOUR_S
            return {
                "figure": name,
                "usd": fig.value * per,
                "unit": "USD" if name == "price.list_price" else "USD/h",
                "cited": _cited(fig, tier),
                "date": fig.date or None,
                "stale": is_stale(fig.date, today),
                "reference_date": today.isoformat(),
                "tier": tier or None,
                "provider": provider or None,
            }
    return None


def _cited(fig: Figure, tier: str) -> str:
    """A price's citation in words: one the scenario gives (``systems[].pricing`` or a
    derived device's ``price``) reads ``from the scenario (systems.0.device.price.cloud)``."""
    if tier == "scenario" and fig.source.startswith(SCENARIO_PREFIX):
        return f"from the scenario ({fig.source.removeprefix(SCENARIO_PREFIX)})"
    return fig.cited


def record(result: SystemResult, priced: Economics) -> None:
    """Add ``priced`` to ``result``: metrics, figures, details and the ``not_known`` reasons
    (joined to any the result already has)."""
    result.metrics.update(priced.metrics)
    if priced.choice is not None:
        result.metrics["cheaper_choice"] = priced.choice
    tier = priced.tier or (priced.details.get("price_used") or {}).get("tier")
    if tier:
        result.metrics["price_tier"] = tier
    result.figures.update(priced.figures)
    not_known = dict(result.details.get("not_known", {}))
    result.details.update(priced.details)
    not_known.update(priced.not_known)
    result.details["not_known"] = not_known


def apply_economics(
    result: SystemResult,
    spec: DeviceSpec,
    count: int,
    config: EconomicsConfig,
    power: PowerModelLike | None,
) -> None:
    """Price ``result`` (one system that ran ``ok``) and record it: :func:`price_system`
    over the result's metrics and frames, then :func:`record`."""
    record(result, price_system(spec, count, config, power, result.metrics, result.frames))
