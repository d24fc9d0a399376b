"""Rent versus buy over the hardware's life.

Owning a device costs the same every year whatever it does: its purchase price spread
over ``lifetime``, hosting (per provisioned kW and per node), staff per node, and
electricity for the hours it works and idles. Renting on demand costs the hourly price
for the hours it is needed; a committed (reserved) rental pays every hour of the year.
The hours a device is needed are the scenario's ``busy_hours_per_year`` (or
``busy_fraction``), never the utilization inside one simulated run: a six-hour job that
keeps its devices busy says nothing about the other 8,760 hours of the year.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import HOUR_S, HOURS_PER_YEAR, EconomicsConfig
from xpusim.engine.economics.owned import lifetime_figure, provisioned_kw
from xpusim.engine.economics.rented import catalog_price, price_figure_name, rent_price

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.economics.energy import Energy

YEAR_S = HOURS_PER_YEAR * HOUR_S


UNKNOWN = "Rent-versus-buy break-even is not known: "
"""How the sentence saying why rent versus buy is not known begins."""


@dataclass(frozen=True)
class BreakEven:
    """Rent versus buy (a mapping, see :func:`break_even`) or the sentence saying why it is
    not known, and the figures used."""

    result: dict[str, Any] | str
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnYear:
    """What owning one device costs per year, by part (USD), and its electricity per busy
    hour (what the cost rises by with each hour worked)."""

    amortization: float
    hosting: float
    staff: float
    idle_electricity: float
    busy_usd_per_hour: float

    def total(self, busy_hours: float) -> float:
        """The year's cost of owning at ``busy_hours`` busy hours."""
        idle_share = max(0.0, 1.0 - busy_hours / HOURS_PER_YEAR)
        return (
            self.amortization
            + self.hosting
            + self.staff
            + self.idle_electricity * idle_share
            + self.busy_usd_per_hour * busy_hours
        )


def own_year(
    spec: DeviceSpec, config: EconomicsConfig, en: Energy, list_usd: float, life_s: float
) -> OwnYear:
    """Yearly cost parts of owning one of ``spec`` (``en`` gives the draw while working)."""
    assert en.energy_j is not None and config.electricity is not None
    n, span = en.devices, en.span
    busy_w = en.energy_j / (n * span) if span > 0 else 0.0  # facility watts, PUE in
    idle_w = spec.power.idle_w.value * config.pue if spec.power.idle_w is not None else 0.0
    per_node = config.devices_per_node or spec.devices_per_node
    hosting = 0.0
    if config.hosting_usd_per_kw_month is not None:
        kw = provisioned_kw(spec, n, en.nodes, en.host_w, en.energy_j, span, config.pue) / n
        hosting += config.hosting_usd_per_kw_month * kw * 12.0
    if config.hosting_usd_per_node_month is not None:
        hosting += config.hosting_usd_per_node_month * 12.0 / per_node
    staff = (config.staff_usd_per_node_year or 0.0) / per_node
    return OwnYear(
        amortization=list_usd * YEAR_S / life_s,
        hosting=hosting,
        staff=staff,
        idle_electricity=idle_w * YEAR_S * config.electricity,
        busy_usd_per_hour=(busy_w - idle_w) * HOUR_S * config.electricity,
    )


def break_even(spec: DeviceSpec, config: EconomicsConfig, en: Energy) -> BreakEven:
    """Rent versus buy for one device over its life, or a sentence saying why not.

    ``break_even_hours_per_year``: the busy hours above which owning costs less than renting
    on demand. ``break_even_months``: when owning is the cheaper choice at the scenario's
    busy hours, how long until the purchase price is paid back by the rent saved.
    ``cheaper``: ``own``, ``rent`` or ``committed`` over a year at those hours (``None``
    when the scenario gives none).
    """
    rent_tier = config.pricing if config.pricing in ("cloud", "spot") else "cloud"
    rent, rent_fig, why = rent_price(spec, config, rent_tier)
    list_fig, list_why = catalog_price(spec, config, "owned")
    reasons = []
    if rent is None:
        reasons.append(why)
    if list_fig is None:
        reasons.append(list_why)
    if config.electricity is None:
        reasons.append("the scenario gives no electricity price (economics.electricity)")
    if en.energy_j is None:
        reasons.append("the run's energy is not known")
    if en.span <= 0:
        reasons.append("the run has no simulated span")
    if reasons:
        return BreakEven(UNKNOWN + "; ".join(reasons) + ".")
    assert rent is not None and rent_fig is not None and list_fig is not None
    lifetime = lifetime_figure(config)
    figs = {
        price_figure_name(rent_tier): rent_fig,
        "price.list_price": list_fig,
        "economics.lifetime": lifetime,
    }
    own = own_year(spec, config, en, list_fig.value, lifetime.value)
    rent_h = rent * HOUR_S
    fixed = own.amortization + own.hosting + own.staff + own.idle_electricity
    slope = rent_h - own.busy_usd_per_hour + own.idle_electricity / HOURS_PER_YEAR
    hours_star = fixed / slope if slope > 0 else None
    committed_fig, _ = catalog_price(spec, config, "reserved")
    committed_year = committed_fig.value * YEAR_S if committed_fig is not None else None
    if committed_fig is not None:
        figs["price.reserved"] = committed_fig
    busy = config.busy_hours()
    result: dict[str, Any] = {
        "rent_tier": rent_tier,
        "rent_usd_per_device_hour": rent_h,
        "list_usd": list_fig.value,
        "lifetime_years": lifetime.value / YEAR_S,
        "own_fixed_usd_per_device_year": fixed,
        "own_breakdown_usd_per_device_year": {
            "amortization": own.amortization,
            "hosting": own.hosting,
            "staff": own.staff,
            "idle_electricity": own.idle_electricity,
        },
        "own_usd_per_busy_hour": own.busy_usd_per_hour,
        "committed_usd_per_device_year": committed_year,
        "break_even_hours_per_year": hours_star,
        "break_even_utilization": None if hours_star is None else hours_star / HOURS_PER_YEAR,
        "busy_hours_per_year": busy,
        "cheaper": None,
        "break_even_months": None,
    }
    if busy is not None:
        choices = {"own": own.total(busy), "rent": rent_h * busy}
        if committed_year is not None:
            choices["committed"] = committed_year
        result["yearly_usd_per_device"] = choices
        result["cheaper"] = min(choices, key=lambda k: (choices[k], k))
        monthly_saving = (rent_h * busy - (own.total(busy) - own.amortization)) / 12.0
        if result["cheaper"] == "own" and monthly_saving > 0:
            result["break_even_months"] = list_fig.value / monthly_saving
    return BreakEven(result, figs)


def fleet_break_even(kinds: Sequence[tuple[str, int, BreakEven]]) -> BreakEven:
    """Rent versus buy for a system of several devices (``(device, count, its
    break_even)`` per kind), or a sentence saying why not: each kind's yearly cost lines
    are those of :func:`break_even`, times its count, added up. Owning the whole system
    costs its devices' fixed yearly costs plus their electricity per busy hour; renting it
    costs their hourly prices; so the break-even is the one busy-hour figure where the two
    sums meet (the system is bought or rented whole). The mapping holds the sums
    (``devices``: the count of each device; ``kinds``: each device's own mapping)."""
    why = {
        name: be.result.removeprefix(UNKNOWN).rstrip(".")
        for name, _, be in kinds
        if isinstance(be.result, str)
    }
    if why:
        if len(set(why.values())) == 1 and len(why) == len(kinds):
            return BreakEven(f"{UNKNOWN}{next(iter(why.values()))}.")
        return BreakEven(UNKNOWN + "; ".join(f"for {d}, {w}" for d, w in why.items()) + ".")
    per: dict[str, dict[str, Any]] = {}
    figs: dict[str, Figure] = {}
    for name, _, be in kinds:
        assert isinstance(be.result, dict)
        per[name] = be.result
        figs.update({f"{k}@{name}": f for k, f in be.figures.items()})
    counts = {name: n for name, n, _ in kinds}

    def total(key: str) -> float:
        return sum(counts[d] * float(r[key]) for d, r in per.items())

    fixed = total("own_fixed_usd_per_device_year")
    idle = sum(
        counts[d] * r["own_breakdown_usd_per_device_year"]["idle_electricity"]
        for d, r in per.items()
    )
    rent_h = total("rent_usd_per_device_hour")
    slope = rent_h - total("own_usd_per_busy_hour") + idle / HOURS_PER_YEAR
    hours_star = fixed / slope if slope > 0 else None
    first = next(iter(per.values()))
    busy = first["busy_hours_per_year"]
    committed = [r["committed_usd_per_device_year"] for r in per.values()]
    result: dict[str, Any] = {
        "devices": counts,
        "kinds": per,
        "rent_tier": first["rent_tier"],
        "rent_usd_per_hour": rent_h,
        "list_usd": total("list_usd"),
        "lifetime_years": first["lifetime_years"],
        "own_fixed_usd_per_year": fixed,
        "committed_usd_per_year": (
            None if None in committed else total("committed_usd_per_device_year")
        ),
        "break_even_hours_per_year": hours_star,
        "break_even_utilization": None if hours_star is None else hours_star / HOURS_PER_YEAR,
        "busy_hours_per_year": busy,
        "cheaper": None,
        "break_even_months": None,
    }
    if busy is not None:
        choices = {"own": 0.0, "rent": rent_h * busy}
        for d, r in per.items():
            choices["own"] += counts[d] * r["yearly_usd_per_device"]["own"]
        if result["committed_usd_per_year"] is not None:
            choices["committed"] = result["committed_usd_per_year"]
        result["yearly_usd"] = choices
        result["cheaper"] = min(choices, key=lambda k: (choices[k], k))
        amortization = sum(
            counts[d] * r["own_breakdown_usd_per_device_year"]["amortization"]
            for d, r in per.items()
        )
        monthly_saving = (rent_h * busy - (choices["own"] - amortization)) / 12.0
        if result["cheaper"] == "own" and monthly_saving > 0:
            result["break_even_months"] = result["list_usd"] / monthly_saving
    return BreakEven(result, figs)


CHOICE = {"own": "buy", "rent": "rent on demand", "committed": "rent on a commitment"}
"""How the verdict names each choice."""


def describe_break_even(be: Mapping[str, Any]) -> str:
    """One paragraph a person can act on, from a ``details["break_even"]`` mapping (one
    device's, :func:`break_even`, or a system's of several, :func:`fleet_break_even`)."""
    hours = be.get("break_even_hours_per_year")
    life = be.get("lifetime_years", 0.0)
    if "devices" in be:
        fleet = " and ".join(f"{n} x {d}" for d, n in be["devices"].items())
        text = (
            f"Buying the system's devices ({fleet}) at {be['list_usd']:,.0f} USD over "
            f"{life:.3g} years costs {be['own_fixed_usd_per_year']:,.0f} USD a year before "
            f"electricity for work; renting them ({be['rent_tier']}) costs "
            f"{be['rent_usd_per_hour']:.3g} USD an hour. "
        )
    else:
        text = (
            f"Buying at {be['list_usd']:,.0f} USD a device over {life:.3g} years costs "
            f"{be['own_fixed_usd_per_device_year']:,.0f} USD per device-year before "
            f"electricity for work; renting ({be['rent_tier']}) costs "
            f"{be['rent_usd_per_device_hour']:.3g} USD per device-hour. "
        )
    if hours is None or hours > HOURS_PER_YEAR:
        text += "Owning is never cheaper than renting on demand, even busy all year. "
    else:
        text += f"Owning is cheaper above {hours:,.0f} busy hours a year ({hours / HOURS_PER_YEAR:.0%}). "
    busy = be.get("busy_hours_per_year")
    if busy is None:
        return text + (
            "Set economics.busy_hours_per_year (or busy_fraction) to the hours a year the "
            "hardware would work for a verdict."
        )
    text += f"At {busy:,.0f} busy hours a year the cheaper choice is to {CHOICE[be['cheaper']]}"
    months = be.get("break_even_months")
    if months is not None and be["cheaper"] == "own":
        text += f"; the purchase pays back after {months:.3g} months"
    return text + "."
