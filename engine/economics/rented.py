"""Rented hardware (``cloud`` on-demand, ``spot``, ``reserved``): the device-hour price
times device-hours; electricity and hosting are in the price.

The price comes from, in order: a price the scenario gives for the system
(``systems[].pricing``), the tiered price catalog (:mod:`.pricebook`, the scenario's
``economics.tier`` and ``economics.provider``; the one source of the shipped devices'
prices), the device's own ``price`` (a device a third-party plugin registers with a
:class:`~xpusim.engine.device.PriceSpec`; not an offer of the price book, which knows no
tier or provider for it, but its fallback: used wherever the book has no offer for the
device at the tier asked), and for spot and reserved the on-demand price less the
scenario's discount. :func:`choose_price` says which of them a price came from (the tier
of a catalog offer), so a report can warn when the systems of one comparison were priced
from different tiers; :func:`price_listing` is what ``xpusim devices`` shows.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import HOUR_S, EconomicsConfig
from xpusim.engine.economics.cost import Cost
from xpusim.engine.economics.pricebook import (
    TIER_LABEL,
    TIERS,
    Offer,
    is_stale,
    offers_for,
    pick,
)

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


@dataclass(frozen=True)
class Chosen:
    """A device price and where it came from: ``figure`` (``None`` with ``why`` when there
    is none), the catalog ``offer`` it is, and ``origin``: ``scenario`` (the system's
    ``pricing:``), ``catalog`` (the price book), ``device`` (the device's own figure) or
    ``""``."""

    figure: Figure | None
    why: str = ""
    offer: Offer | None = None
    origin: str = ""

    @property
    def tier(self) -> str:
        """The price tier: the offer's, else the origin (``scenario``, ``device``)."""
        return self.offer.tier if self.offer is not None else self.origin


def choose_price(spec: DeviceSpec, config: EconomicsConfig, pricing: str) -> Chosen:
    """The price of ``spec`` for ``pricing`` (``cloud``, ``spot``, ``reserved``, ``owned``)
    from the scenario, the price book or the device's own figures, and where it is from."""
    own = getattr(spec.price, _SPEC_FIELD[pricing])
    if own is not None and own.source.startswith(SCENARIO_PREFIX):
        return Chosen(own, origin="scenario")
    chosen = pricing == config.pricing
    tiers = config.tiers() if chosen else _TIERS.get(pricing, ("purchase",))
    offers = offers_for((spec.name, *spec.aliases))
    offer = pick(offers, tiers, config.provider)
    if offer is None and not chosen:
        # another tier than the scenario's (the break-even's purchase or commitment):
        # the named provider's offer when it has one, else any
        offer = pick(offers, tiers, None)
    if offer is not None:
        return Chosen(offer.figure(), offer=offer, origin="catalog")
    if config.provider is not None and offers and chosen:
        named = ", ".join(TIER_LABEL[t] for t in tiers)
        have = sorted({f"{o.provider} ({o.tier})" for o in offers})
        return Chosen(
            None,
            f"{spec.name} has no {named} price from provider {config.provider!r} "
            f"(the price catalog has {', '.join(have)}); set economics.provider to one of them",
        )
    if own is not None:
        return Chosen(own, origin="device")
    named = " or ".join(TIER_LABEL[t] for t in tiers)
    return Chosen(
        None,
        f"{spec.name} has no published {_KIND[pricing]} price ({named} in the price catalog, "
        f"or price.{_SPEC_FIELD[pricing]})",
    )


def catalog_price(
    spec: DeviceSpec, config: EconomicsConfig, pricing: str
) -> tuple[Figure | None, str]:
    """The price of ``spec`` for ``pricing`` (``cloud``, ``spot``, ``reserved``, ``owned``)
    from the scenario or the price catalogs, and why none when there is none."""
    c = choose_price(spec, config, pricing)
    return c.figure, c.why


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
    c = choose_price(spec, config, config.pricing)
    tier = c.tier if c.figure is not None else "discounted on-demand"
    return Cost(
        amount,
        {part: amount},
        figures={price_figure_name(config.pricing): fig},
        tier=tier,
        provider=c.offer.provider if c.offer is not None else "",
    )


_LISTED = (
    ("hyperscaler", "cloud"),
    ("neocloud", "cloud"),
    ("committed", "reserved"),
    ("spot", "spot"),
    ("purchase", "owned"),
)
"""Each price tier and the ``pricing`` that rents or buys at it."""


def price_listing(spec: DeviceSpec, today: _dt.date) -> dict[str, Any]:
    """The prices runs use for ``spec``, as ``xpusim devices`` shows them.

    ``tiers``: for each tier, the price a run with ``economics.tier`` set to it uses (the
    device's own figure where the book has no offer; ``None`` where there is no price);
    ``default``: what ``pricing: cloud``, ``spot`` and ``reserved`` use with no tier named
    (``on_demand`` tries hyperscaler, then neocloud); ``offers``: every offer of the book.
    Each price has its USD per hour (USD for a purchase), tier, provider, source, date, and
    ``stale``: older than a year on ``today`` (``None`` where no date is stated)."""
    tiers = {
        tier: _listed(choose_price(spec, _config(tier=tier), pricing), pricing, today)
        for tier, pricing in _LISTED
    }
    default = {
        name: _listed(choose_price(spec, _config(pricing=pricing), pricing), pricing, today)
        for name, pricing in (("on_demand", "cloud"), ("spot", "spot"), ("reserved", "reserved"))
    }
    offers = [
        _offer_row(o, today)
        for o in sorted(
            offers_for((spec.name, *spec.aliases)),
            key=lambda o: (TIERS.index(o.tier), o.provider, o.value),
        )
    ]
    return {
        "tiers": tiers,
        "default": {k: v for k, v in default.items() if v is not None},
        "offers": offers,
        "reference_date": today.isoformat(),
    }


def _listed(c: Chosen, pricing: str, today: _dt.date) -> dict[str, Any] | None:
    if c.figure is None:
        return None
    if c.offer is not None:
        return _offer_row(c.offer, today)
    fig = c.figure
    per = 1.0 if pricing == "owned" else HOUR_S
    return {
        "tier": c.tier,
        "provider": None,
        "usd_per_hour" if pricing != "owned" else "usd": fig.value * per,
        "source": fig.source or None,
        "date": fig.date or None,
        "stale": is_stale(fig.date, today),
        "assumption": fig.assumption or None,
        "stand_in": None,
    }


def _offer_row(o: Offer, today: _dt.date) -> dict[str, Any]:
    return {
        "tier": o.tier,
        "provider": o.provider,
        "usd" if o.tier == "purchase" else "usd_per_hour": o.usd_per_hour,
        "source": o.source,
        "date": o.as_of or None,
        "stale": is_stale(o.as_of, today),
        "assumption": o.note or None,
        "stand_in": o.stand_in or None,
    }


def _config(**fields: str) -> EconomicsConfig:
    """An economics block with only ``fields`` set (a tier, or a pricing)."""
    return EconomicsConfig.model_validate(fields)
