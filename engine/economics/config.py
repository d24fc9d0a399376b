"""The economics block of a scenario and the fixed figures every pricing step shares.

:class:`EconomicsConfig` is the scenario's ``economics:`` block; :data:`GRID_INTENSITY`
the published grid carbon intensities by region; :func:`validate_figures` refuses a
negative, non-finite or absurd price, power or electricity figure before any pricing.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xpusim.engine.device import Figure
from xpusim.engine.economics.pricebook import PRICING_TIERS, providers
from xpusim.engine.errors import XpusimError
from xpusim.engine.qty import CarbonIntensity, Duration, Power, PricePerEnergy
from xpusim.engine.registry import unknown_message

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec

HOUR_S = 3600.0
HOURS_PER_YEAR = 8766.0
"""Hours in an average year (365.25 days)."""
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

SCENARIO_SOURCE = "scenario (economics.{})"
"""The source of a figure the scenario's economics block gives (format with its key)."""

# Guards against catalog or scenario figures that cannot be real (a typo in a unit, say).
_MAX_USD_PER_DEVICE_HOUR = 1000.0
_MAX_LIST_USD = 10_000_000.0
_MAX_USD_PER_KWH = 10.0
_MAX_WATTS = 100_000.0

BUSY_STATES = ("compute", "memory", "comm", "overhead")
"""Busy power states of the ``devices`` frame; anything else counts as ``idle``."""


class PowerModelLike(Protocol):
    """What pricing needs of a power model (``xpusim.engine.power.PowerModel``):
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

    ``tier`` picks the price tier of the price catalog (``hyperscaler``, ``neocloud``,
    ``committed``, ``spot``, ``purchase``; it implies ``pricing``) and ``provider`` one
    provider's offers; ``price_date`` is the reference date for flagging prices older than
    a year (default: today). Rent versus buy over the hardware's life reads
    ``busy_hours_per_year`` (or ``busy_fraction`` of the year's hours), ``lifetime``,
    ``hosting_usd_per_kw_month`` or ``hosting_usd_per_node_month``,
    ``staff_usd_per_node_year`` and ``devices_per_node`` for the per-node figures.
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
    tier: Literal["hyperscaler", "neocloud", "committed", "spot", "purchase"] | None = None
    provider: str | None = None
    price_date: _dt.date | None = None
    busy_hours_per_year: float | None = Field(default=None, ge=0.0, le=HOURS_PER_YEAR)
    busy_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    hosting_usd_per_node_month: float | None = Field(default=None, ge=0.0, le=1_000_000.0)
    staff_usd_per_node_year: float | None = Field(default=None, ge=0.0, le=10_000_000.0)
    devices_per_node: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str | None) -> str | None:
        if v is None:
            return v
        key = v.strip().lower()
        known = providers()
        if key not in known:
            raise ValueError(unknown_message("provider", v, known))
        return key

    @model_validator(mode="after")
    def _tier_matches_pricing(self) -> EconomicsConfig:
        if self.tier is not None:
            implied = next(p for p, tiers in PRICING_TIERS.items() if self.tier in tiers)
            if "pricing" in self.model_fields_set and self.pricing != implied:
                raise ValueError(
                    f"tier {self.tier!r} is priced as pricing {implied!r}, but pricing is "
                    f"{self.pricing!r}; drop one of them or make them agree"
                )
            self.pricing = implied  # type: ignore[assignment]
        if self.busy_hours_per_year is not None and self.busy_fraction is not None:
            raise ValueError("give busy_hours_per_year or busy_fraction, not both")
        return self

    def tiers(self) -> tuple[str, ...]:
        """The price tiers to try, in order: the named ``tier``, else those ``pricing``
        accepts (on-demand: hyperscaler, then neocloud)."""
        return (self.tier,) if self.tier is not None else PRICING_TIERS[self.pricing]

    def busy_hours(self) -> float | None:
        """Expected busy device-hours per year, from either input (``None`` when neither)."""
        if self.busy_hours_per_year is not None:
            return self.busy_hours_per_year
        if self.busy_fraction is not None:
            return self.busy_fraction * HOURS_PER_YEAR
        return None

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
