"""Device specifications: the catalog entries backends price against.

A catalog is data: every number is a :class:`Figure` carrying its value (SI units) and the
source it came from, normally the id of an entry in the project's reference figures
(``h100sxm_mem``) or a short citation. Figures that no source publishes are ``None`` and
reports say "not known" for them, or carry an explicit ``assumption`` text. A figure that
goes stale, such as a price, may carry the ``date`` its source states (ISO ``YYYY``,
``YYYY-MM`` or ``YYYY-MM-DD``, as precise as the source); listings and reports show it, or "date not stated" where it is empty.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine import units
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import DTYPE_BYTES
from xpusim.engine.qty import Bandwidth, Bytes, Flops, Money, Power, PricePerTime
from xpusim.engine.registry import unknown_message


@dataclass(frozen=True, slots=True)
class Figure:
    """A number with its provenance.

    ``source`` is a reference-figures id or a citation; ``assumption`` is set instead when
    the number is a stated modelling assumption rather than a published figure. ``date`` is
    when the figure held, as its source states it: an ISO date, ``YYYY``, ``YYYY-MM`` or
    ``YYYY-MM-DD`` (``"2024-10"``; a year alone where the source gives no month), or empty where the source states none (never guessed).
    Prices carry it so a reader sees how old they are. It is checked by
    :func:`check_date` when the figure joins a :class:`DeviceSpec` or is read from a
    catalog, so the error names the device and the field.
    """

    value: float
    source: str = ""
    assumption: str = ""
    date: str = ""

    def __post_init__(self) -> None:
        if not self.source and not self.assumption:
            raise ValueError(f"figure {self.value} has neither a source nor an assumption")
        if not isinstance(self.date, str):
            raise TypeError(f"figure {self.value}: date must be a str, got {self.date!r}")

    @property
    def cited(self) -> str:
        """Human-readable provenance for reports."""
        return self.source if self.source else f"assumption: {self.assumption}"

    @property
    def dated(self) -> str:
        """The figure's date for listings: the date, or ``"date not stated"``."""
        return self.date if self.date else DATE_NOT_STATED


DATE_NOT_STATED = "date not stated"
"""What listings and reports print for a figure whose source states no date."""

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def check_date(date: str, where: str) -> str:
    """``date`` if it is empty or an ISO ``YYYY`` / ``YYYY-MM`` / ``YYYY-MM-DD`` date; else an
    :class:`~xpusim.engine.errors.XpusimError` naming ``where`` (the device and field)."""
    if not date:
        return date
    m = _DATE_RE.match(date)
    if m is not None:
        year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
        try:
            _dt.date(year, month, day)
        except ValueError:
            pass
        else:
            return date
    raise XpusimError(
        f"{where}: date {date!r} is not an ISO date; write YYYY, YYYY-MM or YYYY-MM-DD "
        "(e.g. 2024-10), or leave the date out where the source states none."
    )


@dataclass(frozen=True, slots=True)
class PowerSpec:
    """Power figures of one device (watts)."""

    max_w: Figure | None = None
    idle_w: Figure | None = None
    mean_w: Figure | None = None


@dataclass(frozen=True, slots=True)
class PriceSpec:
    """Price figures of one device, in SI like every quantity inside the engine.

    ``on_demand``, ``spot`` and ``reserved`` are rental prices per device in USD per
    second (a catalog writes them with their unit, ``12.29 USD/h``); ``list_price`` is
    the purchase price per device in USD.
    """

    on_demand: Figure | None = None
    spot: Figure | None = None
    reserved: Figure | None = None
    list_price: Figure | None = None


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link class: per-device unidirectional bandwidth (bytes/s) and latency (s)."""

    name: str
    bandwidth: Figure
    latency: Figure


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One accelerator part as a backend sees it.

    ``peak_flops`` maps a dtype name (``bf16``, ``fp8`` ...) to dense peak FLOP/s.
    ``scale_up`` is the fast in-node fabric (NVLink, ICI); ``scale_out`` the network
    between nodes; ``devices_per_node`` sizes the default topology (the scale-up domain:
    8 for an HGX board, 72 for an NVL72 rack). ``extra`` holds backend-specific numbers
    (SM count, MXU geometry, clock) as Figures. ``efficiency`` holds this device's own
    defaults for its backend's cost-model parameters, by parameter name (a measured
    best-shape matmul fraction, say), each cited like any figure; the backend checks the
    names.
    """

    name: str
    backend: str
    vendor: str
    description: str
    peak_flops: Mapping[str, Figure]
    memory_bytes: Figure
    memory_bw: Figure
    power: PowerSpec = field(default_factory=PowerSpec)
    price: PriceSpec = field(default_factory=PriceSpec)
    scale_up: LinkSpec | None = None
    scale_out: LinkSpec | None = None
    devices_per_node: int = 8
    extra: Mapping[str, Figure] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    efficiency: Mapping[str, Figure] = field(default_factory=dict)
    fp4_formats: tuple[str, ...] = ()
    """The block-scaled 4-bit formats its ``fp4`` tensor rate reads (``nvfp4``, ``mxfp4``);
    empty where the catalog does not say, and then any."""
    base: str | None = None
    """The catalog device a scenario derived this one from (``device: {base: ...}``), or
    ``None`` for a catalog device: a backend looks up what it knows of the part by name
    (fitted kernel efficiencies, say) under the base's name when the derived one has none."""

    def __post_init__(self) -> None:
        for name, fig in self.figures().items():
            check_date(fig.date, f"device {self.name!r}: {name}.date")

    def flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; bf16/fp16 stand in for each other."""
        for key in (dtype, {"fp16": "bf16", "bf16": "fp16"}.get(dtype, dtype)):
            if key in self.peak_flops:
                return self.peak_flops[key].value
        raise XpusimError(
            f"device {self.name!r} has no published peak for dtype {dtype!r}; "
            f"known dtypes: {', '.join(sorted(self.peak_flops))}. Pick one in model.dtype."
        )

    def figures(self) -> dict[str, Figure]:
        """Every figure of this spec by a dotted name, for 'Assumptions and sources'."""
        out: dict[str, Figure] = {f"peak_flops.{k}": v for k, v in self.peak_flops.items()}
        out["memory_bytes"] = self.memory_bytes
        out["memory_bw"] = self.memory_bw
        for group, obj in (("power", self.power), ("price", self.price)):
            for name in obj.__dataclass_fields__:
                fig = getattr(obj, name)
                if fig is not None:
                    out[f"{group}.{name}"] = fig
        for lname, link in (("scale_up", self.scale_up), ("scale_out", self.scale_out)):
            if link is not None:
                out[f"{lname}.bandwidth"] = link.bandwidth
                out[f"{lname}.latency"] = link.latency
        out.update({f"extra.{k}": v for k, v in self.extra.items()})
        out.update({f"efficiency.{k}": v for k, v in self.efficiency.items()})
        return out


_DIMS = {
    "memory_bytes": units.Dim.BYTES,
    "memory_bw": units.Dim.BANDWIDTH,
    "max_w": units.Dim.POWER,
    "idle_w": units.Dim.POWER,
    "mean_w": units.Dim.POWER,
    "on_demand": units.Dim.PRICE_PER_TIME,
    "spot": units.Dim.PRICE_PER_TIME,
    "reserved": units.Dim.PRICE_PER_TIME,
    "list_price": units.Dim.MONEY,
    "bandwidth": units.Dim.BANDWIDTH,
    "latency": units.Dim.DURATION,
}


def _figure(raw: Any, dim: units.Dim, where: str) -> Figure | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "value" not in raw:
        raise XpusimError(f"{where}: a catalog figure is a mapping with 'value' and 'source'.")
    value = units.parse(raw["value"], dim, where=where)
    return Figure(
        value, str(raw.get("source", "")), str(raw.get("assumption", "")), _date(raw, where)
    )


def _date(raw: Mapping[str, Any], where: str) -> str:
    """A catalog figure's ``date``, checked; YAML reads ``2024-10-01`` as a date object."""
    d = raw.get("date")
    if d is None:
        return ""
    text = d.isoformat() if isinstance(d, _dt.date) else str(d)
    return check_date(text, f"{where}.date")


def spec_from_mapping(name: str, backend: str, raw: Mapping[str, Any], where: str) -> DeviceSpec:
    """Build a :class:`DeviceSpec` from a catalog mapping (as in a plugin's YAML catalog).

    Quantities carry units (``{value: 80 GB, source: h100sxm_mem}``); ``peak_flops`` maps
    dtypes to such figures; ``extra`` figures are plain numbers with a source. Any figure may
    carry ``date: YYYY-MM`` (or ``YYYY``, ``YYYY-MM-DD``), the date its source states; a malformed
    one is refused naming the file, device and field.
    """

    def fig(key: str, sub: Mapping[str, Any] | None = None, group: str = "") -> Figure | None:
        src = raw if sub is None else sub
        return _figure(src.get(key), _DIMS[key], f"{where}.{group}{key}")

    peaks = {
        dt: _req(_figure(v, units.Dim.FLOPS, f"{where}.peak_flops.{dt}"), where)
        for dt, v in dict(raw.get("peak_flops", {})).items()
    }
    power_raw = dict(raw.get("power", {}))
    price_raw = dict(raw.get("price", {}))

    def link(key: str) -> LinkSpec | None:
        lr = raw.get(key)
        if lr is None:
            return None
        return LinkSpec(
            name=str(lr.get("name", key)),
            bandwidth=_req(_figure(lr["bandwidth"], units.Dim.BANDWIDTH, f"{where}.{key}"), where),
            latency=_req(_figure(lr["latency"], units.Dim.DURATION, f"{where}.{key}"), where),
        )

    extra = _plain_figures(raw, "extra", where)
    return DeviceSpec(
        name=name,
        backend=backend,
        vendor=str(raw.get("vendor", "")),
        description=str(raw.get("description", "")),
        peak_flops=peaks,
        memory_bytes=_req(fig("memory_bytes"), where),
        memory_bw=_req(fig("memory_bw"), where),
        power=PowerSpec(**{k: fig(k, power_raw, "power.") for k in ("max_w", "idle_w", "mean_w")}),
        price=PriceSpec(**{k: fig(k, price_raw, "price.") for k in PriceSpec.__dataclass_fields__}),
        scale_up=link("scale_up"),
        scale_out=link("scale_out"),
        devices_per_node=int(raw.get("devices_per_node", 8)),
        extra=extra,
        aliases=tuple(raw.get("aliases", ())),
        efficiency=_plain_figures(raw, "efficiency", where),
        fp4_formats=tuple(str(f) for f in raw.get("fp4_formats", ())),
    )


def _plain_figures(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Figure]:
    """The unitless figures of ``raw[key]`` (``extra``, ``efficiency``) by name."""
    out: dict[str, Figure] = {}
    for k, v in dict(raw.get(key, {})).items():
        out[k] = Figure(
            float(v["value"]),
            str(v.get("source", "")),
            str(v.get("assumption", "")),
            _date(v, f"{where}.{key}.{k}"),
        )
    return out


def _req(f: Figure | None, where: str) -> Figure:
    if f is None:
        raise XpusimError(f"{where}: a required catalog figure is missing.")
    return f


# --- a device defined in a scenario ----------------------------------------------------


class DerivedPrice(BaseModel):
    """``systems[].device.price``: the derived device's own prices, the keys of
    ``systems[].pricing`` (rentals per device-hour, ``list`` per device bought)."""

    model_config = ConfigDict(extra="forbid")

    cloud: PricePerTime | None = None
    """On-demand rental (``2.5 USD/h``)."""
    spot: PricePerTime | None = None
    """Spot rental."""
    reserved: PricePerTime | None = None
    """Committed-use rental."""
    list: Money | None = None
    """Purchase price per device (``30000 USD``)."""


PRICE_FIELDS = {"cloud": "on_demand", "spot": "spot", "reserved": "reserved", "list": "list_price"}
"""A scenario's price keys and the :class:`PriceSpec` field each one sets."""


class DerivedDevice(BaseModel):
    """``systems[].device`` written as a mapping: a catalog device (``base``) with the
    figures the scenario changes, for a part or a configuration the catalog lacks (a
    power-capped H100, a B200 with 192 GB, a vendor's preview chip). Every figure given is
    cited as the scenario's own; the rest keep the base's figures and sources. ``price``
    gives the device's own prices, which a run uses before the price catalog's (as it
    does ``systems[].pricing``, which wins where both name a price)."""

    model_config = ConfigDict(extra="forbid")

    base: str
    """The catalog device (or alias) of the system's backend this one starts from."""
    name: str | None = Field(default=None, min_length=1, max_length=100)
    """The device's name in results (default: ``<base>-custom``)."""
    description: str = ""
    memory: Bytes | None = None
    """Device memory (``96 GB``)."""
    memory_bw: Bandwidth | None = None
    """Memory bandwidth (``4 TB/s``)."""
    peak_flops: dict[str, Flops] = Field(default_factory=dict)
    """Dense peaks by dtype (``{bf16: 1000 TFLOP/s, fp4: 8 PFLOP/s}``), replacing or
    adding to the base's."""
    max_power: Power | None = None
    """Board power at full load (``600 W``)."""
    idle_power: Power | None = None
    """Board power when idle (``90 W``)."""
    price: DerivedPrice | None = None
    """The device's prices (``{cloud: 3 USD/h, list: 32000 USD}``), cited as the
    scenario's."""


def derive_device(base: DeviceSpec, cfg: DerivedDevice, where: str) -> DeviceSpec:
    """``base`` with the figures ``cfg`` gives, each cited as ``scenario <where>.<field>``;
    a peak for a dtype the engine does not know is refused naming the nearest one."""

    def cite(value: float, key: str) -> Figure:
        return Figure(value, source=f"scenario {where}.{key}")

    peaks = dict(base.peak_flops)
    for dtype, value in cfg.peak_flops.items():
        if dtype not in DTYPE_BYTES:
            raise XpusimError(
                unknown_message("dtype", dtype, list(DTYPE_BYTES), f"{where}.peak_flops")
            )
        peaks[dtype] = cite(value, f"peak_flops.{dtype}")
    power = base.power
    if cfg.max_power is not None:
        power = replace(power, max_w=cite(cfg.max_power, "max_power"))
    if cfg.idle_power is not None:
        power = replace(power, idle_w=cite(cfg.idle_power, "idle_power"))
    price = base.price
    if cfg.price is not None:
        given = {
            PRICE_FIELDS[k]: cite(v, f"price.{k}")
            for k, v in cfg.price.model_dump().items()
            if v is not None
        }
        price = replace(price, **given)
    return replace(
        base,
        name=cfg.name or f"{base.name}-custom",
        description=cfg.description or f"{base.description}, with figures from the scenario",
        peak_flops=peaks,
        memory_bytes=base.memory_bytes if cfg.memory is None else cite(cfg.memory, "memory"),
        memory_bw=base.memory_bw if cfg.memory_bw is None else cite(cfg.memory_bw, "memory_bw"),
        power=power,
        price=price,
        aliases=(),
        base=base.base or base.name,
    )
