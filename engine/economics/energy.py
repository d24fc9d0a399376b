"""Energy of one system: the device power-state timeline, idle and host power, PUE.

:func:`timeline` reads the ``devices`` frame (:data:`~xpusim.engine.frames.DEVICES_SCHEMA`):
busy intervals (state in :data:`~xpusim.engine.economics.config.BUSY_STATES`) clipped to
``[0, span]``, with their recorded joules, or the power model's state watts where a row
carries none. :func:`energy` adds idle power over the device-time no busy interval covers
and host power over the span, times the PUE::

    energy_j = (busy_j + idle_w * idle_s + host_w * nodes * span) * pue

and splits the same total into what the system draws whether or not it works and what
working adds (:class:`EnergySplit`)::

    static_j = (idle_w * devices * span + host_w * nodes * span) * pue
    active_j = (busy_j - idle_w * busy_s) * pue          # static_j + active_j = energy_j

The static part falls per unit of work as the load rises; the active part is what one
more inference costs. A neuromorphic board's static part is its idle board power, its
active part the cores running and the packets routed; a GPU's static part is its idle
power, its active part the busy states' draw above idle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import (
    BUSY_STATES,
    SCENARIO_SOURCE,
    EconomicsConfig,
    PowerModelLike,
)
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import DEVICES_SCHEMA, Frame, frame_columns, frame_height, ordered_sum

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec


@dataclass(frozen=True)
class Timeline:
    """What the ``devices`` frame says: the span, the devices counted (``count`` or the
    frame's (replica, device) lanes, whichever is more), busy seconds by state, and the
    busy joules (``None`` with ``reason`` when some busy state cannot be priced)."""

    span: float
    devices: int
    states: dict[str, float]
    busy_s: float
    busy_j: float | None
    reason: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class EnergySplit:
    """The system's energy split into ``static_j`` (idle power of every counted device
    over the whole span, plus host power, times PUE: drawn whether or not the system
    works) and ``active_j`` (busy joules less idle power over the busy device-seconds,
    times PUE: what the work adds). ``static_j + active_j`` is the system's energy."""

    static_j: float
    active_j: float

    @property
    def total_j(self) -> float:
        """Static plus active joules."""
        return self.static_j + self.active_j

    def per(self, units: float) -> dict[str, float]:
        """The split per unit of work (``static_j``, ``active_j``, ``total_j``)."""
        if not units > 0:
            raise ValueError(f"energy split per {units} units of work")
        return {
            "static_j": self.static_j / units,
            "active_j": self.active_j / units,
            "total_j": self.total_j / units,
        }


def split_energy(
    busy_j: float,
    busy_s: float,
    idle_w: float,
    devices: int,
    span: float,
    host_j: float,
    pue: float,
) -> EnergySplit:
    """Split a timeline's energy into static and active parts (see the module docstring):
    ``busy_j`` joules over ``busy_s`` busy device-seconds, ``idle_w`` watts per idle
    device, ``devices`` counted over ``span`` seconds, ``host_j`` host joules, ``pue``."""
    static = (idle_w * devices * span + host_j) * pue
    active = (busy_j - idle_w * busy_s) * pue
    return EnergySplit(static_j=static, active_j=active)


@dataclass(frozen=True)
class Energy:
    """The system's energy (``None`` with ``reason`` when not known), its parts, the
    utilization and node count it implies, the figures it used, and its static/active
    :class:`EnergySplit` (``None`` when the energy or the idle power is not known)."""

    energy_j: float | None
    breakdown: dict[str, float] | None
    states: dict[str, float]
    utilization: float | None
    devices: int
    nodes: int
    host_w: float
    span: float
    reason: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    split: EnergySplit | None = None


def as_watts(x: Any) -> float | None:
    """A power model's answer (a number, a Figure, a callable or ``None``) as watts."""
    if callable(x):
        x = x()
    if isinstance(x, Figure):
        return x.value
    if x is None:
        return None
    return float(x)


def model_figures(power: PowerModelLike | None) -> dict[str, Figure]:
    """The figures a power model says it used (``figures()``)."""
    if power is None:
        return {}
    out = power.figures()
    return {str(k): v for k, v in out.items() if isinstance(v, Figure)} if out else {}


def _state_watts(power: PowerModelLike | None, state: str) -> float | None:
    if power is None:
        return None
    return as_watts(power.state_watts(state))


def idle_power(
    spec: DeviceSpec, power: PowerModelLike | None
) -> tuple[float | None, Figure | None]:
    """Idle watts and their provenance: the power model's, else the catalog's idle figure."""
    if power is not None:
        watts = as_watts(power.idle_watts)
        if watts is not None:
            fig = model_figures(power).get("power.idle_w")
            if not isinstance(fig, Figure) or fig.value != watts:
                cat = spec.power.idle_w
                fig = (
                    cat
                    if cat is not None and cat.value == watts
                    else Figure(
                        watts,
                        assumption=f"idle power of {spec.name} from the {spec.backend} backend's "
                        f"power model (no published idle figure)",
                    )
                )
            return watts, fig
    if spec.power.idle_w is not None:
        return spec.power.idle_w.value, spec.power.idle_w
    return None, None


def _check_schema(devices: Frame) -> None:
    """Refuse a ``devices`` frame that lacks a column of its declared schema."""
    missing = [c for c in DEVICES_SCHEMA if c not in frame_columns(devices)]
    if missing:
        raise XpusimError(
            f"the workload's devices frame lacks column(s) {', '.join(missing)} of "
            f"xpusim.engine.frames.DEVICES_SCHEMA; every workload gives that frame whole."
        )


def timeline(
    devices: Frame | None,
    simulated_s: float | None,
    count: int,
    spec: DeviceSpec,
    power: PowerModelLike | None,
) -> Timeline:
    """Busy seconds and joules by state from the ``devices`` frame over the span."""
    rows = frame_height(devices) if devices is not None else 0
    span_in = simulated_s
    if span_in is None and devices is not None and rows:
        span_in = float(devices.lazy().select(pl.col("end_s").max()).collect().item())
    span = float(span_in or 0.0)
    n_devices = max(int(count), 1)
    if devices is None or not rows:
        return Timeline(
            span,
            n_devices,
            {},
            0.0,
            None,
            "the run recorded no device power-state timeline (devices frame)",
        )
    _check_schema(devices)
    lanes = int(devices.lazy().select(pl.struct(["replica", "device"]).n_unique()).collect().item())
    n_devices = max(n_devices, lanes)
    # clip each interval to [0, span] and keep the busy ones (a lazy frame stays lazy:
    # only per-state sums are collected, added in row order by ordered_sum)
    busy = (
        devices.lazy()
        .with_columns(
            pl.col("start_s").clip(0.0, span).alias("_a"),
            pl.col("end_s").clip(0.0, span).alias("_b"),
        )
        .with_columns((pl.col("_b") - pl.col("_a")).clip(0.0).alias("_d"))
        .filter(pl.col("state").is_in(list(BUSY_STATES)))
        .with_columns(pl.col("joules").cast(pl.Float64))
    )
    # intervals with joules count as recorded; the rest at the model's state watts
    has_j = pl.col("joules").is_not_null() & pl.col("joules").is_finite()
    names = sorted(
        str(x)
        for x in busy.select(pl.col("state").unique()).collect()["state"].drop_nulls().to_list()
    )
    states = {k: ordered_sum(busy, pl.col("_d"), pl.col("state") == k) for k in names}
    busy_s = sum(states.values())
    total = ordered_sum(busy, pl.col("joules"), has_j)
    missing: set[str] = set()
    unpriced_names = sorted(
        str(x)
        for x in busy.filter(~has_j)
        .select(pl.col("state").unique())
        .collect()["state"]
        .drop_nulls()
        .to_list()
    )
    for state in unpriced_names:
        d = ordered_sum(busy, pl.col("_d"), ~has_j & (pl.col("state") == state))
        w = _state_watts(power, state)
        if w is None:
            missing.add(state)
        else:
            total += w * float(d)
    figs: dict[str, Figure] = {}
    model_figs = model_figures(power)
    for state in states:
        if f"power.state.{state}" in model_figs:
            figs[f"power.state.{state}"] = model_figs[f"power.state.{state}"]
    if "power.max_w" in model_figs and len(model_figs) > 1:
        figs["power.max_w"] = model_figs["power.max_w"]
    if missing:
        reason = (
            f"busy intervals in state(s) {', '.join(sorted(missing))} carry no joules and "
            f"no power model gives {spec.name}'s draw in them"
        )
        return Timeline(span, n_devices, states, busy_s, None, reason, figs)
    return Timeline(span, n_devices, states, busy_s, total, "", figs)


def energy(
    tl: Timeline, spec: DeviceSpec, config: EconomicsConfig, power: PowerModelLike | None
) -> Energy:
    """The system's energy from its timeline, idle power, host power and PUE."""
    span, n_devices = tl.span, tl.devices
    figs = dict(tl.figures)
    idle_s = max(n_devices * span - tl.busy_s, 0.0)
    states = {**tl.states, "idle": idle_s}
    utilization = tl.busy_s / (n_devices * span) if span > 0 else None
    reason = tl.reason

    idle_w, idle_fig = idle_power(spec, power)
    if idle_fig is not None:
        figs["power.idle_w"] = idle_fig
    idle_j: float | None = None
    if idle_w is not None:
        idle_j = idle_w * idle_s
    elif idle_s == 0.0:
        idle_j = 0.0
    elif not reason:
        reason = (
            f"{spec.name} has no published idle power and no power model supplied one, and its "
            f"devices were idle {idle_s:.3g} device-seconds"
        )

    nodes = math.ceil(n_devices / max(spec.devices_per_node, 1))
    host_w = config.host_power or 0.0
    figs["economics.host_power_w"] = (
        Figure(host_w, source=SCENARIO_SOURCE.format("host_power"))
        if config.host_power is not None
        else Figure(
            0.0,
            assumption="host CPU/NIC/fan power not counted; set economics.host_power "
            "per node to include it",
        )
    )
    host_j = host_w * nodes * span

    parts = (states, utilization, n_devices, nodes, host_w, span)
    if tl.busy_j is None or idle_j is None:
        return Energy(None, None, *parts, f"Energy is not known: {reason}.", figs)
    it_j = tl.busy_j + idle_j + host_j
    breakdown = {
        "busy": tl.busy_j,
        "idle": idle_j,
        "host": host_j,
        "facility (PUE)": it_j * (config.pue - 1.0),
    }
    split = (
        split_energy(tl.busy_j, tl.busy_s, idle_w, n_devices, span, host_j, config.pue)
        if idle_w is not None
        else None
    )
    return Energy(it_j * config.pue, breakdown, *parts, "", figs, split)


def combine_energies(parts: Sequence[Energy], figures: dict[str, Figure]) -> Energy:
    """The energy of a system whose devices are of several kinds, from each kind's
    :class:`Energy` over the same span (:func:`energy` of its own lanes, idle power and
    nodes): joules, breakdown, power-state seconds, devices, nodes and the static/active
    split add up; utilization is busy over all devices' time. ``figures`` are the
    figures to record (each kind's, named apart by the caller). Not known when any
    kind's energy is not known, for the first such kind's reason."""
    span = parts[0].span
    devices = sum(p.devices for p in parts)
    nodes = sum(p.nodes for p in parts)
    states: dict[str, float] = {}
    for p in parts:
        for k, v in p.states.items():
            states[k] = states.get(k, 0.0) + v
    busy_s = sum(v for k, v in states.items() if k != "idle")
    utilization = busy_s / (devices * span) if span > 0 and devices else None
    parts_of = (states, utilization, devices, nodes, parts[0].host_w, span)
    unknown = [p for p in parts if p.energy_j is None or p.breakdown is None]
    if unknown:
        return Energy(None, None, *parts_of, unknown[0].reason, figures)
    breakdown: dict[str, float] = {}
    for p in parts:
        assert p.breakdown is not None
        for k, v in p.breakdown.items():
            breakdown[k] = breakdown.get(k, 0.0) + v
    splits = [p.split for p in parts]
    split = (
        EnergySplit(
            static_j=sum(s.static_j for s in splits if s is not None),
            active_j=sum(s.active_j for s in splits if s is not None),
        )
        if all(s is not None for s in splits)
        else None
    )
    total = sum(float(p.energy_j or 0.0) for p in parts)
    return Energy(total, breakdown, *parts_of, "", figures, split)
