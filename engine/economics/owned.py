"""Owned hardware: the list price amortized over the lifetime for the run's span, plus
electricity for the run's energy, plus hosting per provisioned kW-month."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import (
    DEFAULT_LIFETIME,
    MONTH_S,
    SCENARIO_SOURCE,
    EconomicsConfig,
)
from xpusim.engine.economics.cost import Cost
from xpusim.engine.economics.rented import choose_price

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.economics.energy import Energy


def lifetime_figure(config: EconomicsConfig) -> Figure:
    """The service life owned devices are amortized over: the scenario's, else 4 years."""
    if config.lifetime is not None:
        return Figure(config.lifetime, source=SCENARIO_SOURCE.format("lifetime"))
    return DEFAULT_LIFETIME


def hosting_figure(config: EconomicsConfig) -> Figure | None:
    """The scenario's colocation price per provisioned kW-month, when it gives one."""
    if config.hosting_usd_per_kw_month is None:
        return None
    return Figure(
        config.hosting_usd_per_kw_month, source=SCENARIO_SOURCE.format("hosting_usd_per_kw_month")
    )


def provisioned_kw(
    spec: DeviceSpec, n: int, nodes: int, host_w: float, energy_j: float, span: float, pue: float
) -> float:
    """IT power a colocation contract provisions: the devices' max power (their mean draw
    over the run where no max is published) plus the hosts'."""
    if spec.power.max_w is not None:
        dev_w = spec.power.max_w.value * n
    else:
        dev_w = energy_j / pue / span if span > 0 else 0.0
    return (dev_w + host_w * nodes) / 1000.0


def owned_cost(spec: DeviceSpec, config: EconomicsConfig, en: Energy) -> Cost:
    """What owning the devices for the run's span cost."""
    lifetime = lifetime_figure(config)
    figs: dict[str, Figure] = {"economics.lifetime": lifetime}
    reasons = []
    chosen = choose_price(spec, config, "owned")
    list_fig = chosen.figure
    if list_fig is None:
        reasons.append(chosen.why)
    if config.electricity is None:
        reasons.append("the scenario gives no electricity price (economics.electricity)")
    if en.energy_j is None and config.electricity is not None:
        reasons.append("its energy is not known")
    if reasons:
        return Cost(
            None, reason="Owned cost is not known: " + "; ".join(reasons) + ".", figures=figs
        )
    assert list_fig is not None and config.electricity is not None
    assert en.energy_j is not None
    device_s = en.devices * en.span
    figs["price.list_price"] = list_fig
    breakdown = {
        "amortization": list_fig.value * device_s / lifetime.value,
        "electricity": en.energy_j * config.electricity,
    }
    hosting = hosting_figure(config)
    if hosting is not None:
        figs["economics.hosting_usd_per_kw_month"] = hosting
        kw = provisioned_kw(spec, en.devices, en.nodes, en.host_w, en.energy_j, en.span, config.pue)
        breakdown["hosting"] = hosting.value * kw * en.span / MONTH_S
    provider = chosen.offer.provider if chosen.offer is not None else ""
    return Cost(
        sum(breakdown.values()), breakdown, figures=figs, tier=chosen.tier, provider=provider
    )
