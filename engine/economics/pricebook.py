"""The tiered price catalog (``prices.yaml`` beside this module) and the choice of one price.

Each device has offers: a tier (:data:`TIERS`), a provider, a price (USD per device-second
for rentals, USD per device for a purchase), the reference-figures id it comes from and
the date the source states. :func:`choose` picks the offer a scenario asks for: its
``economics.tier`` (else the tier its ``pricing`` implies) and ``economics.provider``;
among several offers of one tier the device's own price wins over a stand-in's (a nearby
part's, :attr:`Offer.stand_in`), then the most recently dated, then the cheapest, so the
choice never depends on file order. :func:`is_stale` says whether a price is older than a
year on a reference date.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine import units
from xpusim.engine.device import Figure, check_date
from xpusim.engine.errors import XpusimError

PRICES_PATH = Path(__file__).with_name("prices.yaml")

TIERS = ("hyperscaler", "neocloud", "committed", "spot", "purchase")
"""Price tiers: on-demand at a hyperscaler or a GPU cloud, committed, spot, purchase."""

TIER_LABEL = {
    "hyperscaler": "hyperscaler on-demand",
    "neocloud": "neocloud on-demand",
    "committed": "committed use",
    "spot": "spot",
    "purchase": "purchase",
}
"""How reports name each tier."""

PRICING_TIERS: dict[str, tuple[str, ...]] = {
    "cloud": ("hyperscaler", "neocloud"),
    "spot": ("spot",),
    "reserved": ("committed",),
    "owned": ("purchase",),
}
"""The tiers each ``economics.pricing`` accepts, in the order tried when no tier is named."""

STALE_DAYS = 365
"""A price older than this many days on the reference date is flagged."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One published price of one device: ``value`` is SI (USD per device-second for a
    rental, USD per device for a purchase)."""

    device: str
    tier: str
    provider: str
    value: float
    source: str
    as_of: str = ""
    note: str = ""
    stand_in: str = ""
    """The part the price is really for when its source publishes none for this device
    (``A100 40GB``); empty for the device's own price."""

    @property
    def usd_per_hour(self) -> float:
        """The rental price per device-hour (a purchase price as is)."""
        return self.value if self.tier == "purchase" else self.value * 3600.0

    def figure(self) -> Figure:
        """The offer as a dated :class:`Figure` citing its entry, provider and tier."""
        label = f"{self.provider}, {TIER_LABEL[self.tier]}"
        if self.stand_in:
            label += f", the {self.stand_in}'s price"
        return Figure(
            self.value,
            source=f"{self.source} ({label})",
            assumption=self.note,
            date=self.as_of,
        )


def _offer(device: str, raw: Mapping[str, Any], where: str) -> Offer:
    tier = str(raw.get("tier", ""))
    if tier not in TIERS:
        raise XpusimError(f"{where}: tier {tier!r} is not one of {', '.join(TIERS)}.")
    dim = units.Dim.MONEY if tier == "purchase" else units.Dim.PRICE_PER_TIME
    value = units.parse(raw.get("price"), dim, where=f"{where}.price")
    as_of = raw.get("as_of")
    date = "" if as_of is None else check_date(str(as_of), f"{where}.as_of")
    if not raw.get("source") or not raw.get("provider"):
        raise XpusimError(f"{where}: an offer needs a provider and a source id.")
    return Offer(
        device,
        tier,
        str(raw["provider"]),
        value,
        str(raw["source"]),
        date,
        str(raw.get("note", "")),
        str(raw.get("stand_in", "")),
    )


def load_prices(path: Path | str = PRICES_PATH) -> dict[str, tuple[Offer, ...]]:
    """Parse a price catalog (``devices: {name: [offer, ...]}``) into offers by device."""
    p = Path(path)
    raw: Mapping[str, Any] = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    out: dict[str, tuple[Offer, ...]] = {}
    for name, offers in dict(raw.get("devices") or {}).items():
        out[str(name)] = tuple(
            _offer(str(name), o, f"{p.name}:devices.{name}.{i}") for i, o in enumerate(offers)
        )
    return out


@lru_cache(maxsize=1)
def price_book() -> Mapping[str, tuple[Offer, ...]]:
    """The shipped price catalog (parsed once)."""
    return load_prices()


def offers_for(
    names: Sequence[str], book: Mapping[str, tuple[Offer, ...]] | None = None
) -> tuple[Offer, ...]:
    """The offers of the first of ``names`` (a device name and its aliases) the book lists."""
    book = price_book() if book is None else book
    for name in names:
        if name in book:
            return book[name]
    return ()


def _date_key(as_of: str) -> str:
    return as_of or "0000"


def pick(offers: Sequence[Offer], tiers: Sequence[str], provider: str | None) -> Offer | None:
    """The offer of the first tier of ``tiers`` that has one (of ``provider`` when named):
    the device's own price before a stand-in's, then the most recently dated, then the
    cheapest."""
    for tier in tiers:
        found = [
            o
            for o in offers
            if o.tier == tier and (provider is None or o.provider == provider.lower())
        ]
        if found:
            return min(
                found,
                key=lambda o: (bool(o.stand_in), _invert(_date_key(o.as_of)), o.value, o.provider),
            )
    return None


def _invert(date: str) -> tuple[int, ...]:
    """A sort key that puts later dates first."""
    return tuple(-ord(c) for c in date.ljust(10, "0"))


def providers(book: Mapping[str, tuple[Offer, ...]] | None = None) -> list[str]:
    """Every provider the book names, sorted."""
    book = price_book() if book is None else book
    return sorted({o.provider for offers in book.values() for o in offers})


def parse_date(date: str) -> _dt.date | None:
    """An ISO ``YYYY`` / ``YYYY-MM`` / ``YYYY-MM-DD`` date as its last possible day's start
    (a year alone reads as 31 December, a month as its last day), or ``None`` if empty."""
    if not date:
        return None
    parts = [int(x) for x in date.split("-")]
    if len(parts) == 1:
        return _dt.date(parts[0], 12, 31)
    if len(parts) == 2:
        nxt = _dt.date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
        return nxt - _dt.timedelta(days=1)
    return _dt.date(parts[0], parts[1], parts[2])


def is_stale(date: str, today: _dt.date) -> bool | None:
    """Whether a price dated ``date`` is more than a year old on ``today`` (read generously:
    a year alone counts from its last day); ``None`` where no date is stated."""
    d = parse_date(date)
    if d is None:
        return None
    return (today - d).days > STALE_DAYS


ORIGIN_LABEL = {
    "scenario": "the scenario's own price",
    "device": "the device's own price",
    "discounted on-demand": "the on-demand price less the scenario's discount",
}
"""How a warning names a price that is not a catalog tier's."""


def tier_label(tier: str) -> str:
    """A price tier, or another origin of a price, in words; the tiers of a system of
    several devices (joined with `` + ``) each in words, joined with ``and``."""
    if isinstance(tier, str) and " + " in tier:
        return " and ".join(tier_label(t) for t in tier.split(" + "))
    return TIER_LABEL.get(tier) or ORIGIN_LABEL.get(tier, tier)


def mixed_tiers_warning(
    priced: Sequence[tuple[str, str | None]], thing: str = "system", block: str = "economics"
) -> str:
    """A warning when the systems of one comparison were priced from different tiers
    (``pricing: cloud`` tries hyperscaler then neocloud per device, so one device may be
    priced at a hyperscaler and another at a GPU cloud); ``""`` when they share one.
    ``priced`` is ``(system, tier)`` for each priced system (``None``: not priced); a plan
    compares devices (``thing``) and sets its tier in its own ``block``."""
    groups: dict[str, list[str]] = {}
    for name, tier in priced:
        if tier:
            groups.setdefault(tier, []).append(name)
    if len(groups) < 2:
        return ""
    parts = "; ".join(f"{', '.join(names)} at {tier_label(tier)}" for tier, names in groups.items())
    return (
        f"Warning: the {thing}s were priced from different tiers ({parts}), so their costs "
        f"do not compare like for like; set {block}.tier (and {block}.provider) to "
        f"price every {thing} at one tier."
    )
