"""The ``spinnaker`` backend: spiking networks on SpiNNaker boards through sPyNNaker.

Compiling maps the network with sPyNNaker's own tool chain (:mod:`.mapping`) onto as
many SpiNN-5 boards as the system's ``count`` (a virtual machine unless the user's
sPyNNaker config names a board), once per network and machine in a process. A step of a
:attr:`~xpusim.engine.graph.Phase.SPIKING` shape ``(batch=b, timesteps=T)`` then costs

* ``seconds = b · T · timestep · time_scale_factor``: SpiNNaker runs in real time (scaled
  by the time-scale factor) and one mapped network takes the samples of a batch one after
  the other;
* ``joules`` from sPyNNaker's energy model (:mod:`.energy`) for those seconds, the mapped
  chips and cores, each core active for its busy time (:mod:`.busy`: the step's neuron
  updates and synaptic events at measured per-operation costs, at most every core for
  the whole step), and the router packets of the spikes counted for the network (the
  ``SPIKING`` ops' activity from the exact LIF simulator, PyNN on NEST with
  ``options.counter: nest``, or the board's own recorded spikes);
* the power state ``compute``: the application cores run the network for those seconds
  (the board idles between samples).

:meth:`SpinnakerCompiled.mapping_facts` reads back what sPyNNaker decided (boards, chips
and cores used, neurons per core, routing entries) and whether the busiest core keeps up
with real time (:mod:`.realtime`).

System options (``systems[].options``): ``time_scale_factor`` (>= 1, default 1),
``counter`` (``lif`` | ``nest``), ``reports`` (a folder for sPyNNaker's reports; default a
temporary one, deleted), ``use_board`` (default true: run on a board the user's config
names), ``copies`` (default 1: copies of the network side by side on the machine; a
step of ``b`` samples then takes ``ceil(b / copies)`` rounds, every copy updating its
neurons each timestep whether or not it holds a sample, and the k-th sample finishes with
its round).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping as MappingT
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine import lif
from xpusim.engine.backend import Backend, Compiled, Cost, Fit, Support
from xpusim.engine.device import DeviceSpec, Figure, PowerSpec, PriceSpec
from xpusim.engine.errors import DoesNotFitError, ScenarioError, UnsupportedError
from xpusim.engine.graph import Collective, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.spiking import SpikingModel
from xpusim.engine.system import System
from xpusim.plugins.spinnaker import busy, energy, mapping, realtime

__all__ = ["SPINN5", "SpinnakerBackend", "SpinnakerCompiled"]

_MB = 1e6


def _spinn5() -> DeviceSpec:
    """The SpiNN-5 board as a catalog entry (figures.yaml ids and sPyNNaker constants)."""
    board_idle = 26.84
    full = board_idle + 48 * mapping.APP_CORES_PER_CHIP * 0.034
    return DeviceSpec(
        name="spinn-5",
        backend="spinnaker",
        vendor="University of Manchester",
        description="SpiNN-5 board: 48 SpiNNaker chips, 18 ARM968 cores each (864 cores), "
        "128 MB SDRAM per chip",
        peak_flops={},
        memory_bytes=Figure(48 * 128 * _MB, "spinn5_board"),
        memory_bw=Figure(
            48 * 0.9e9,
            assumption="~0.9 GB/s SDRAM bandwidth per chip "
            "(Painkras et al. 2013); not used by the spiking cost model",
        ),
        power=PowerSpec(
            idle_w=Figure(board_idle, f"{energy.SOURCE}.WATTS_FOR_48_CHIP_BOARD_IDLE_COST"),
            max_w=Figure(
                full,
                assumption="board idle power plus every application core "
                "active (sPyNNaker Version5 constants: 26.84 W + 768 x 0.034 W)",
            ),
        ),
        price=PriceSpec(),
        devices_per_node=1,
        extra={
            "chips": Figure(48, "spinn5_board"),
            "cores_per_chip": Figure(18, "spinnaker1_chip"),
            "chip_power_w": Figure(1.0, "spinnaker1_chip"),
        },
        aliases=("spinn5", "spinnaker", "spinn-5-board"),
    )


SPINN5 = _spinn5()


def _fingerprint(net: lif.Network) -> tuple[Any, ...]:
    """What the mapping depends on: population sizes and, per projection, where the
    excitatory and inhibitory synapses are (not their weights, so the networks that a
    conversion at another input rate gives map once)."""
    parts: list[Any] = [tuple(net.sizes)]
    for layer in net.layers:
        pre, post, w = layer.coo()
        h = hashlib.sha256()
        for arr in (pre, post, np.sign(w).astype(np.int8)):
            h.update(np.ascontiguousarray(arr).tobytes())
        parts.append(h.hexdigest())
    return tuple(parts)


def _activity_attrs(model: ModelGraph, shape: Shape) -> list[dict[str, float]]:
    g = model.build(shape)
    layers = [dict(op.attrs) for op in g.ops if op.kind is OpKind.SPIKING]
    if not layers:
        raise UnsupportedError(
            f"model {model.name!r} has no spiking layers; the spinnaker backend runs "
            f"spiking networks (model family snn)"
        )
    return layers


class SpinnakerCompiled(Compiled):
    """A spiking network mapped onto ``system.count`` SpiNN-5 boards."""

    samples_in_turn = True
    """Copies of the mapped network run a batch's samples in rounds, in real time."""

    def __init__(
        self, system: System, model: ModelGraph, cache: dict[Any, mapping.Mapping]
    ) -> None:
        super().__init__(system, model)
        opts = dict(system.options or {})
        unknown = set(opts) - {"time_scale_factor", "counter", "reports", "use_board", "copies"}
        if unknown:
            raise ScenarioError(
                f"systems[{system.name}].options: unknown key(s) {sorted(unknown)} for the "
                f"spinnaker backend; valid: time_scale_factor, counter, reports, use_board, "
                f"copies"
            )
        self.copies = opts.get("copies", 1)
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 1:
            raise ScenarioError(
                f"systems[{system.name}].options.copies must be a whole number of at least 1 "
                f"(copies of the network side by side), got {self.copies!r}"
            )
        self.time_scale_factor = float(opts.get("time_scale_factor", 1.0))
        if not self.time_scale_factor >= 1.0:
            raise ScenarioError(
                f"systems[{system.name}].options.time_scale_factor must be >= 1 "
                f"(1 = real time), got {self.time_scale_factor}"
            )
        self.counter = str(opts.get("counter", "lif"))
        if self.counter not in ("lif", "nest"):
            raise ScenarioError(
                f"systems[{system.name}].options.counter must be 'lif' or 'nest', "
                f"got {self.counter!r}"
            )
        self.reports = Path(opts["reports"]) if opts.get("reports") else None
        self.use_board = bool(opts.get("use_board", True))
        self._cache = cache

    @property
    def replicas(self) -> int:
        """All of a system's boards form one machine running one copy of the network."""
        return 1

    @property
    def spiking_model(self) -> SpikingModel:
        """The compiled model as a spiking network (the only kind :meth:`SpinnakerBackend.compile`
        accepts)."""
        if not isinstance(self.model, SpikingModel):
            raise UnsupportedError(
                f"model {self.model.name!r} does not describe a LIF network; the spinnaker "
                f"backend runs the snn family"
            )
        return self.model

    @property
    def network(self) -> lif.Network:
        """The model's LIF network."""
        return self.spiking_model.network

    @property
    def dt_ms(self) -> float:
        """The network's timestep in ms."""
        return self.spiking_model.dt_ms

    @property
    def mapping(self) -> mapping.Mapping:
        """The sPyNNaker mapping (computed once per network, machine and timestep)."""
        net = self.network
        key = (
            _fingerprint(net),
            self.system.count,
            self.dt_ms,
            self.time_scale_factor,
            self.use_board,
        )
        m = self._cache.get(key)
        if m is None:
            rates = np.full(net.inputs, self.spiking_model.activity.rates_hz[0])
            m = mapping.map_network(
                net,
                boards=self.system.count,
                dt_ms=self.dt_ms,
                time_scale_factor=self.time_scale_factor,
                input_rates_hz=rates,
                report_dir=self.reports,
                use_board=self.use_board,
            )
            self._cache[key] = m
        return m

    def rebind(self, model: ModelGraph) -> SpinnakerCompiled:
        """The same system compiled for ``model`` (a workload's input rate or timestep),
        sharing the mapping cache."""
        return SpinnakerCompiled(self.system, model, self._cache)

    def spikes_per_step(self, shape: Shape) -> dict[str, float]:
        """Spikes per timestep of the whole batch per population label."""
        layers = _activity_attrs(self.model, shape)
        labels = ["input", *(f"layer{int(a['layer'])}" for a in layers)]
        spikes = [layers[0]["spikes_in"], *(a["spikes_out"] for a in layers)]
        if self.counter == "nest":
            x = self.spiking_model.calibration_inputs()
            act = mapping.nest_activity(self.network, x, self.dt_ms)
            b = max(1, shape.batch)
            spikes = [s * b for s in act.spikes]
        return dict(zip(labels, spikes, strict=True))

    def _cost(self, shape: Shape) -> Cost:
        if shape.phase is not Phase.SPIKING:
            raise UnsupportedError(
                f"the spinnaker backend runs spiking steps, not {shape.phase.value} steps"
            )
        rounds = math.ceil(max(1, shape.batch) / self.copies)
        seconds = rounds * shape.timesteps * self.dt_ms * 1e-3 * self.time_scale_factor
        per_step = self.spikes_per_step(shape)
        spikes = {k: v * shape.timesteps for k, v in per_step.items()}
        e = energy.run_energy(self.mapping, seconds, spikes, self.copies, self.work(shape))
        return Cost(seconds=seconds, joules=e.board_j, breakdown={"compute": seconds})

    def work(self, shape: Shape) -> busy.Work:
        """What the cores do in one step of ``shape``: every copy's LIF neurons updated each
        timestep of each round (a copy without a sample still updates its neurons), and the
        synaptic events the samples' activity counts."""
        rounds = math.ceil(max(1, shape.batch) / self.copies)
        updates = float(self.network.neurons) * shape.timesteps * rounds * self.copies
        return busy.Work(updates, self.synaptic_events(shape))

    def synaptic_events(self, shape: Shape) -> float:
        """Synaptic events of one step of ``shape`` (all timesteps, whole batch)."""
        return (
            sum(a["synaptic_events"] for a in _activity_attrs(self.model, shape)) * shape.timesteps
        )

    def energy(self, shape: Shape, busy_time: bool = True) -> energy.RunEnergy:
        """The energy breakdown of one step of ``shape``: cores active for their busy time
        (:mod:`.busy`), or with ``busy_time=False`` every placed core active throughout
        (sPyNNaker's figure without power monitors)."""
        c = self.cost(shape)
        spikes = {k: v * shape.timesteps for k, v in self.spikes_per_step(shape).items()}
        work = self.work(shape) if busy_time else None
        return energy.run_energy(self.mapping, c.seconds, spikes, self.copies, work)

    def real_time(self) -> realtime.RealTime:
        """Whether the busiest core keeps up with one sample's synaptic events in real
        time (at the configured time-scale factor)."""
        act = self.spiking_model.activity
        labels = self.mapping.labels
        events = {labels[i + 1]: e for i, e in enumerate(act.synaptic_events[:-1])}
        sizes = dict(zip(labels, self.network.sizes, strict=True))
        return realtime.real_time(self.mapping, events, sizes)

    def mapping_facts(self) -> dict[str, float | bool]:
        """What sPyNNaker decided for the network (see :meth:`Compiled.mapping_facts`):
        boards of the machine, copies of the network, chips and application cores they
        use (one copy's placement times the copies), LIF neurons per core holding them,
        uncompressed routing entries of one copy, the time-scale factor the machine runs
        at, the smallest one at which it keeps up, and whether the configured one does."""
        m = self.mapping
        lif_cores = sum(1 for p in m.placements if p[0] != "input")
        rt = self.real_time()
        return {
            "boards": float(m.boards),
            "network_copies": float(self.copies),
            "chips_used": float(m.chips_for(self.copies)),
            "cores_used": float(m.cores * self.copies),
            "neurons_per_core": self.network.neurons / max(lif_cores, 1),
            "routing_entries": float(m.routing_entries),
            "real_time_factor": m.time_scale_factor,
            "required_time_scale_factor": rt.required_time_scale_factor,
            "fits_real_time": rt.fits,
        }

    def _boards_needed(self) -> int:
        """SpiNN-5 boards the network's copies need at sPyNNaker's atoms per core."""
        cores = mapping.estimate_cores(self.network) * self.copies
        return math.ceil(cores / mapping.capacity_cores(1))

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """Whether the network maps onto the boards (cores and SDRAM from sPyNNaker)."""
        have = self.system.device.memory_bytes.value
        need = float(self.network.synapses) * 4.0
        try:
            mapping.check_fits(self.network, self.system.count, self.copies)
            m = self.mapping
        except DoesNotFitError as exc:
            return Fit(
                False,
                need,
                have,
                reason=str(exc),
                suggestion=f"use count: {self._boards_needed()} boards, fewer copies or a "
                f"smaller network",
            )
        return Fit(
            True, need, have, breakdown={"cores": float(m.cores), "chips": float(m.chips_used)}
        )

    def figures_used(self) -> dict[str, Figure]:
        """The device's figures plus the energy model's constants."""
        out = super().figures_used()
        out.update({f"energy.{k}": v for k, v in energy.constants().items()})
        out["busy.neuron_update_j"] = busy.MEASURED.neuron_update_j
        out["busy.synaptic_event_j"] = busy.MEASURED.synaptic_event_j
        out["realtime.board_events_per_s"] = realtime.BOARD_EVENTS_PER_S
        out["realtime.core_events_per_s"] = realtime.core_capacity()
        return out


class SpinnakerOptions(BaseModel):
    """``systems[].options`` of the spinnaker backend (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    time_scale_factor: float = Field(default=1.0, ge=1.0)
    """Slow-down against real time (sPyNNaker's ``time_scale_factor``; 1 = real time)."""
    counter: Literal["lif", "nest"] = "lif"
    """Who counts spikes: the engine's exact LIF simulator or PyNN on NEST."""
    reports: str | None = None
    """A folder for sPyNNaker's reports (default: a temporary one, deleted)."""
    use_board: bool = True
    """Run on a board when the user's sPyNNaker config names one."""
    copies: int = Field(default=1, ge=1)
    """Copies of the network side by side on the machine, each taking samples."""


class SpinnakerBackend(Backend):
    """SpiNNaker (SpiNN-5 boards) through sPyNNaker's PyNN API and tool chain."""

    name = "spinnaker"
    description = (
        "SpiNNaker neuromorphic boards: networks mapped by sPyNNaker, real-time "
        "timing, sPyNNaker's energy model"
    )
    options = SpinnakerOptions

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[Any, mapping.Mapping] = {}

    def catalog(self) -> MappingT[str, DeviceSpec]:
        """One device: the 48-chip SpiNN-5 board."""
        return {SPINN5.name: SPINN5}

    def supports(self, model: ModelGraph, workload: str) -> Support:
        """Spiking networks for the spiking workload only."""
        if model.kind != "spiking":
            return Support(
                False,
                (
                    f"SpiNNaker runs spiking neural networks; {model.name!r} is a {model.kind} "
                    f"model (use model family snn)"
                ),
            )
        if workload != "spiking":
            return Support(False, (f"SpiNNaker runs the 'spiking' workload, not {workload!r}"))
        return Support(True)

    def compile(self, model: ModelGraph, system: System) -> SpinnakerCompiled:
        """Prepare ``model`` for ``system``; mapping happens on first use."""
        if model.kind != "spiking":
            raise UnsupportedError(self.supports(model, "spiking").reason)
        return SpinnakerCompiled(system, model, self._cache)

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """Boards of one machine share the multicast fabric; there are no collectives."""
        if group <= 1 or nbytes <= 0:
            return 0.0
        raise UnsupportedError(
            f"SpiNNaker has no {kind.value} collective; spiking networks exchange spikes "
            f"over the multicast router fabric"
        )
