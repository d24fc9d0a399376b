"""The device kinds of one system: which of the ``devices`` frame's lanes run on which device.

A system runs on one device unless its workload says otherwise: a workload whose lanes run
on different devices (a pool of one part beside a pool of another) names each row's
device in the optional ``device_name`` column of the ``devices`` frame
(:data:`~xpusim.engine.frames.DEVICE_NAME`). :func:`device_kinds` splits the frame by
that name: a row without one, or naming the system's device or one of its aliases, runs
on the system's device, which keeps what the scenario gave it (a derived device's own
figures, ``systems[].pricing``) and the power model the system was compiled with; any
other name is a catalog device, looked up through the plugin host (the system's backend
first, then the others) with the power model built from its catalog figures
(:meth:`~xpusim.engine.power.PowerModel.from_device`). Each kind is then priced on its own
(:func:`~xpusim.engine.economics.price_system`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from xpusim.engine.economics.config import PowerModelLike
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import DEVICE_NAME, Frame, frame_columns, frame_height

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec

DeviceResolver = Callable[[str], tuple["DeviceSpec", PowerModelLike | None]]
"""Finds a device named in the ``devices`` frame: its spec and the power model that prices
its states (``None`` when there is none)."""


@dataclass(frozen=True)
class DeviceKind:
    """The lanes of one system that run on one device: its ``spec`` and ``power`` model,
    how many devices ``count`` it counts, and its rows of the ``devices`` frame
    (``frame``; ``None`` when the frame has none). ``own`` is true for the system's own
    device."""

    spec: DeviceSpec
    power: PowerModelLike | None
    count: int
    frame: Frame | None
    own: bool

    @property
    def name(self) -> str:
        """The device's name."""
        return self.spec.name


def catalog_device(backend: str) -> DeviceResolver:
    """A resolver over the plugin host's device catalogs: ``backend``'s devices first, then
    every other backend's; the power model is the catalog's (``None`` for a device that
    publishes no maximum power). An unknown name is an error naming the nearest."""

    def resolve(name: str) -> tuple[DeviceSpec, PowerModelLike | None]:
        from xpusim.engine.host import default_host
        from xpusim.engine.power import PowerModel

        host = default_host()
        for other in (backend, *(b for b in host.backends.names() if b != backend)):
            try:
                devs = host.backends.get(other).devices()
            except XpusimError:  # a plugin that fails to load has no devices to offer
                continue
            spec = devs.get(name) or next((s for s in devs.values() if name in s.aliases), None)
            if spec is not None:
                power = PowerModel.from_device(spec) if spec.power.max_w is not None else None
                return spec, power
        host.device(backend, name, where=f"the devices frame's {DEVICE_NAME} column")
        raise AssertionError("unreachable: host.device raises for an unknown device")

    return resolve


def device_kinds(
    devices: Frame | None,
    spec: DeviceSpec,
    power: PowerModelLike | None,
    count: int,
    resolve: DeviceResolver | None = None,
) -> list[DeviceKind]:
    """The device kinds of a system whose device is ``spec`` (``count`` devices, priced with
    ``power``), from its ``devices`` frame; the system's own kind first, the others in the
    order the frame names them.

    A frame without the ``device_name`` column, or whose rows all run on the system's
    device, gives the one kind ``[own]`` with the frame as it is. Otherwise each named
    device counts its (replica, device) lanes, and the system's device, where some rows
    run on it, whatever of ``count`` the other kinds leave (at least its own lanes); ``resolve`` finds the other
    devices (default: :func:`catalog_device` over the system's backend).
    """
    whole = DeviceKind(spec, power, count, devices, True)
    if devices is None or DEVICE_NAME not in frame_columns(devices) or not frame_height(devices):
        return [whole]
    mine = (spec.name, *spec.aliases)
    named = devices.lazy().with_columns(
        pl.when(pl.col(DEVICE_NAME).is_null() | pl.col(DEVICE_NAME).is_in(list(mine)))
        .then(pl.lit(spec.name))
        .otherwise(pl.col(DEVICE_NAME))
        .alias("_kind")
    )
    lanes = (
        named.group_by("_kind", maintain_order=True)
        .agg(pl.struct(["replica", "device"]).n_unique().alias("_lanes"))
        .collect()
    )
    found = dict(zip(lanes["_kind"].to_list(), lanes["_lanes"].to_list(), strict=True))
    if list(found) == [spec.name]:
        return [whole]
    find = resolve if resolve is not None else catalog_device(spec.backend)
    others = [k for k in found if k != spec.name]
    out: list[DeviceKind] = []
    own_lanes = int(found.get(spec.name, 0))
    if own_lanes:
        own_count = max(own_lanes, int(count) - sum(int(found[k]) for k in others))
        out.append(DeviceKind(spec, power, own_count, _rows(named, spec.name), True))
    for name in others:
        other, other_power = find(str(name))
        out.append(DeviceKind(other, other_power, int(found[name]), _rows(named, name), False))
    return out


def _rows(named: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """The rows of one kind, without the helper column, in the frame's row order."""
    return named.filter(pl.col("_kind") == kind).drop("_kind")
