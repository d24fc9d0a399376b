"""Rent versus buy: the utilization above which owning a device is cheaper than renting
it, and how long the list price takes to pay back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import HOUR_S, MONTH_S, EconomicsConfig
from xpusim.engine.economics.owned import lifetime_figure, provisioned_kw
from xpusim.engine.economics.rented import price_figure_name, rent_price

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.economics.energy import Energy


@dataclass(frozen=True)
class BreakEven:
    """Rent versus buy (a mapping, see :func:`break_even`) or the sentence saying why it is
    not known, and the figures used."""

    result: dict[str, Any] | str
    figures: dict[str, Figure] = field(default_factory=dict)


def break_even(spec: DeviceSpec, config: EconomicsConfig, en: Energy) -> BreakEven:
    """Rent versus buy for one device, or a sentence saying why it cannot be computed.

    Owning costs ``own`` USD per device-hour whether the device works or not (amortized list
    price, electricity at the run's mean draw, hosting); renting costs ``rent`` per hour
    actually rented. If a device is needed a fraction ``u`` of the hours, owning is cheaper
    when ``u >= own / rent`` (the break-even utilization). At the workload's utilization
    ``u`` the list price is paid back after ``list / ((rent * u - opex) * 730 h)`` months.
    """
    n, nodes, host_w, span = en.devices, en.nodes, en.host_w, en.span
    energy_j, utilization = en.energy_j, en.utilization
    tier = config.pricing if config.pricing != "owned" else "cloud"
    rent, rent_fig, why = rent_price(spec, config, tier)
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
        return BreakEven("Rent-versus-buy break-even is not known: " + "; ".join(reasons) + ".")
    assert rent is not None and rent_fig is not None and spec.price.list_price is not None
    assert config.electricity is not None and energy_j is not None and utilization is not None
    lifetime = lifetime_figure(config)
    figs = {
        price_figure_name(tier): rent_fig,
        "price.list_price": spec.price.list_price,
        "economics.lifetime": lifetime,
    }
    mean_w = energy_j / (n * span) if span > 0 else 0.0  # facility watts per device, PUE in
    capex_s = spec.price.list_price.value / lifetime.value
    power_s = mean_w * config.electricity
    hosting_s = 0.0
    if config.hosting_usd_per_kw_month is not None:
        kw = provisioned_kw(spec, n, nodes, host_w, energy_j, span, config.pue) / n
        hosting_s = config.hosting_usd_per_kw_month * kw / MONTH_S
    own_s = capex_s + power_s + hosting_s
    u_star = own_s / rent
    margin_h = (rent * utilization - power_s - hosting_s) * HOUR_S
    payback = spec.price.list_price.value / (margin_h * MONTH_S / HOUR_S) if margin_h > 0 else None
    result = {
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
    return BreakEven(result, figs)


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
