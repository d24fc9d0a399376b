"""Device specifications: the catalog entries backends price against.

A catalog is data: every number is a :class:`Figure` carrying its value (SI units) and the
source it came from, normally the id of an entry in the project's reference figures
(``h100sxm_mem``) or a short citation. Figures that no source publishes are ``None`` and
reports say "not known" for them, or carry an explicit ``assumption`` text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xpusim.engine import units
from xpusim.engine.errors import XpusimError


@dataclass(frozen=True, slots=True)
class Figure:
    """A number with its provenance.

    ``source`` is a reference-figures id or a citation; ``assumption`` is set instead when
    the number is a stated modelling assumption rather than a published figure.
    """

    value: float
    source: str = ""
    assumption: str = ""

    def __post_init__(self) -> None:
        if not self.source and not self.assumption:
            raise ValueError(f"figure {self.value} has neither a source nor an assumption")

    @property
    def cited(self) -> str:
        """Human-readable provenance for reports."""
        return self.source if self.source else f"assumption: {self.assumption}"


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
    between nodes; ``devices_per_node`` sizes the default topology. ``extra`` holds
    backend-specific numbers (SM count, MXU geometry, clock) as Figures.
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
    return Figure(value, str(raw.get("source", "")), str(raw.get("assumption", "")))


def spec_from_mapping(name: str, backend: str, raw: Mapping[str, Any], where: str) -> DeviceSpec:
    """Build a :class:`DeviceSpec` from a catalog mapping (as in a plugin's YAML catalog).

    Quantities carry units (``{value: 80 GB, source: h100sxm_mem}``); ``peak_flops`` maps
    dtypes to such figures; ``extra`` figures are plain numbers with a source.
    """

    def fig(key: str, sub: Mapping[str, Any] | None = None) -> Figure | None:
        src = raw if sub is None else sub
        return _figure(src.get(key), _DIMS[key], f"{where}.{key}")

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

    extra: dict[str, Figure] = {}
    for k, v in dict(raw.get("extra", {})).items():
        extra[k] = Figure(float(v["value"]), str(v.get("source", "")), str(v.get("assumption", "")))
    return DeviceSpec(
        name=name,
        backend=backend,
        vendor=str(raw.get("vendor", "")),
        description=str(raw.get("description", "")),
        peak_flops=peaks,
        memory_bytes=_req(fig("memory_bytes"), where),
        memory_bw=_req(fig("memory_bw"), where),
        power=PowerSpec(**{k: fig(k, power_raw) for k in ("max_w", "idle_w", "mean_w")}),
        price=PriceSpec(**{k: fig(k, price_raw) for k in PriceSpec.__dataclass_fields__}),
        scale_up=link("scale_up"),
        scale_out=link("scale_out"),
        devices_per_node=int(raw.get("devices_per_node", 8)),
        extra=extra,
        aliases=tuple(raw.get("aliases", ())),
    )


def _req(f: Figure | None, where: str) -> Figure:
    if f is None:
        raise XpusimError(f"{where}: a required catalog figure is missing.")
    return f
