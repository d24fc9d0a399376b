"""Rented hardware (``cloud`` on-demand, ``spot``, ``reserved``): the device-hour price
times device-hours; electricity and hosting are in the price.

The price comes from, in order: a price the scenario gives for the system
(``systems[].pricing``), the tiered price catalog (:mod:`.pricebook`, the scenario's
``economics.tier`` and ``economics.provider``), the device's own catalog ``price:`` block,
and for spot and reserved the on-demand price less the scenario's discount.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import HOUR_S, EconomicsConfig
from xpusim.engine.economics.cost import Cost
from xpusim.engine.economics.pricebook import TIER_LABEL, offers_for, pick

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec

SCENARIO_PREFIX = "scenario "
"""Sources of prices a scenario gives per system start with this."""

_SPEC_FIELD = {"cloud": "on_demand", "spot": "spot", "reserved": "reserved", "owned": "list_price"}
_KIND = {"cloud": "on-demand", "spot": "spot", "reserved": "committed", "owned": "purchase"}
_TIERS = {"cloud": ("hyperscaler", "neocloud"), "spot": ("spot",), "reserved": ("committed",)}


def price_figure_name(tier: str) -> str:
    """The dotted name of a rental tier's figure (``cloud`` is the on-demand price)."""
    return "price.on_demand" if tier == "cloud" else f"price.{tier}"


def catalog_price(
    spec: DeviceSpec, config: EconomicsConfig, pricing: str
) -> tuple[Figure | None, str]:
    """The price of ``spec`` for ``pricing`` (``cloud``, ``spot``, ``reserved``, ``owned``)
    from the scenario or the price catalogs, and why none when there is none."""
    own = getattr(spec.price, _SPEC_FIELD[pricing])
    if own is not None and own.source.startswith(SCENARIO_PREFIX):
        return own, ""
    chosen = pricing == config.pricing
    tiers = config.tiers() if chosen else _TIERS.get(pricing, ("purchase",))
    offers = offers_for((spec.name, *spec.aliases))
    offer = pick(offers, tiers, config.provider)
    if offer is None and not chosen:
        # another tier than the scenario's (the break-even's purchase or commitment):
        # the named provider's offer when it has one, else any
        offer = pick(offers, tiers, None)
    if offer is not None:
        return offer.figure(), ""
    if config.provider is not None and offers and chosen:
        named = ", ".join(TIER_LABEL[t] for t in tiers)
        have = sorted({f"{o.provider} ({o.tier})" for o in offers})
        return None, (
            f"{spec.name} has no {named} price from provider {config.provider!r} "
            f"(the price catalog has {', '.join(have)}); set economics.provider to one of them"
        )
    if own is not None:
        return own, ""
    named = " or ".join(TIER_LABEL[t] for t in tiers)
    return None, (
        f"{spec.name} has no published {_KIND[pricing]} price ({named} in the price catalog, "
        f"or price.{_SPEC_FIELD[pricing]})"
    )


def rent_price(
    spec: DeviceSpec, config: EconomicsConfig, tier: str
) -> tuple[float | None, Figure | None, str]:
    """USD per device-second of ``tier`` (cloud, spot, reserved), its figure, and why not."""
    fig, why = catalog_price(spec, config, tier)
    if fig is not None:
        return fig.value, fig, ""
    if tier == "cloud":
        return None, None, why
    discount = config.spot_discount if tier == "spot" else config.reserved_discount
    cloud, _ = catalog_price(spec, config.model_copy(update={"tier": None}), "cloud")
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
        why + ("" if cloud is None else f" and the scenario sets no economics.{tier}_discount"),
    )


def rented_cost(spec: DeviceSpec, config: EconomicsConfig, device_s: float) -> Cost:
    """The rental bill of ``device_s`` device-seconds at the scenario's pricing tier."""
    rate, fig, why = rent_price(spec, config, config.pricing)
    if rate is None or fig is None:
        return Cost(None, reason=f"Rented cost is not known: {why}.")
    part = f"{config.pricing} rental"
    amount = rate * device_s
    return Cost(amount, {part: amount}, figures={price_figure_name(config.pricing): fig})
