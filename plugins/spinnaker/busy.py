"""Per-core busy time: the active energy of a SpiNNaker run from the work its cores do.

sPyNNaker's ``Version5`` model charges ``WATTS_PER_CORE_ACTIVE_OVERHEAD`` (0.034 W: 27.50 W
above idle measured for 806 cores active for an hour, ``version_spin1.VersionSpin1``) for
each core's *active time*. With its chip power monitors running, that time is what they
sample: the time a core is out of wait-for-interrupt
(``spinn_front_end_common.interface.interface_functions.compute_energy_used.
_extract_cores_active_time``). Without them sPyNNaker assumes every placed core active for
the whole run (``_assume_core_always_active``; its own ``get_core_active_energy`` carries
the TODO "treat cores that are active sometimes differently"): an upper bound.

A SpiNNaker application core is busy for the work of each timestep, updating its neurons
and processing the synaptic events that arrive, and sleeps in wait-for-interrupt for the
rest of the step. The work does not depend on the time-scale factor: slowing the machine
down leaves the busy core-seconds as they are and lengthens only the idle time. This
module prices that work, two ways:

* :data:`MEASURED` (the default): the marginal energy SpiNNaker hardware was measured to
  draw per neuron per millisecond (at 1 ms timesteps: per neuron update) and per
  postsynaptic potential, 100 nJ and 43 nJ (Sharp, Galluppi, Rast & Furber 2012, figures.yaml
  ``sharp2012``; the busy time they stand for at 0.034 W is 2.9 µs and 1.3 µs);
* :data:`SPYNNAKER_CYCLES`: sPyNNaker's own cycle estimates at the 200 MHz ARM968 clock
  (``VersionSpin1.clock_speeds_hz``): a synaptic event occupies a synapse core for
  ``1 / 13e6`` s (``SynapseDynamicsStatic.synapses_per_second``, from Knight & Furber 2016),
  a LIF neuron update 224 cycles (the per-neuron ``get_n_cpu_cycles`` of earlier sPyNNaker
  releases, labelled "a bit of a guess" there: leaky integrate-and-fire 100, exponential
  synapse shaping 100, static threshold 2, current input 0, plus the population's 22 base
  cycles per neuron), at 0.034 W per busy core: 2.6 nJ and 38 nJ. It leaves out what the
  estimates do not count (a spike's row lookup and DMA, timer and packet interrupts, the
  router and SDRAM power that scale with the work), so it is a lower bound.

The active energy is capped at every placed core busy for the whole run (a core cannot be
busier than always), which is sPyNNaker's no-monitor figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinn_machine.version.version_spin1 import VersionSpin1

from xpusim.engine.device import Figure

__all__ = [
    "CLOCK_HZ",
    "CORE_ACTIVE_W",
    "LIF_UPDATE_CYCLES",
    "MEASURED",
    "SPYNNAKER_CYCLES",
    "STATIC_SYNAPSES_PER_CORE_S",
    "Busy",
    "OpCosts",
    "Work",
    "busy",
]

_SPY = "sPyNNaker 7.4.1"

CORE_ACTIVE_W = Figure(
    float(VersionSpin1.WATTS_PER_CORE_ACTIVE_OVERHEAD),
    f"{_SPY} spinn_machine.version.version_spin1.VersionSpin1.WATTS_PER_CORE_ACTIVE_OVERHEAD "
    "('806 cores active for 1 hour ... 27.50W active overhead, which is 0.034W per core')",
)
"""Power of one busy application core above idle (W)."""

STATIC_SYNAPSES_PER_CORE_S = Figure(
    13e6,
    f"{_SPY} SynapseDynamicsStatic.synapses_per_second ('From Synapse-Centric Mapping of "
    "Cortical Models to the SpiNNaker Neuromorphic Architecture', Knight & Furber 2016)",
)
"""Static synaptic events one synapse core processes per second of machine time."""

CLOCK_HZ = Figure(
    200e6,
    f"{_SPY} spinn_machine.version.version_spin1.VersionSpin1.clock_speeds_hz ([200000000]: ARM968 at "
    "200 MHz)",
)
"""Clock of a SpiNNaker1 application core (Hz)."""

LIF_UPDATE_CYCLES = Figure(
    224.0,
    "sPyNNaker's per-neuron get_n_cpu_cycles before 7.4.1 (removed there): "
    "NeuronModelLeakyIntegrateAndFire 100 ('A bit of a guess'), SynapseTypeExponential 100, "
    "ThresholdTypeStatic 2 ('Just a comparison, but 2 just in case!'), InputTypeCurrent 0, "
    "and AbstractPopulationVertex._NEURON_BASE_N_CPU_CYCLES_PER_NEURON 22",
)
"""Cycles of one ``IF_curr_exp`` neuron update by sPyNNaker's own (unmeasured) estimates."""


@dataclass(frozen=True)
class OpCosts:
    """Energy a core's busy time costs per operation: ``neuron_update_j`` per neuron per
    timestep and ``synaptic_event_j`` per synaptic event (a postsynaptic potential), and
    where the figures come from."""

    name: str
    neuron_update_j: Figure
    synaptic_event_j: Figure


MEASURED = OpCosts(
    "measured (Sharp et al. 2012)",
    Figure(
        100e-9,
        "sharp2012: 'the hardware consumes 100 nJ per neuron per millisecond' (4 SpiNNaker "
        "chips, 1 ms timesteps, so per neuron update)",
    ),
    Figure(43e-9, "sharp2012: '43 nJ per postsynaptic potential'"),
)
"""Per-operation energies measured on SpiNNaker hardware: the default."""


def _cycles_costs() -> OpCosts:
    watts = CORE_ACTIVE_W
    clock = CLOCK_HZ.value
    return OpCosts(
        "sPyNNaker cycle estimates (a lower bound)",
        Figure(
            LIF_UPDATE_CYCLES.value / clock * watts.value,
            f"{LIF_UPDATE_CYCLES.value:g} cycles ({LIF_UPDATE_CYCLES.source}) at "
            f"{clock / 1e6:g} MHz ({CLOCK_HZ.source}) x {watts.value} W ({watts.source})",
        ),
        Figure(
            watts.value / STATIC_SYNAPSES_PER_CORE_S.value,
            f"1 / {STATIC_SYNAPSES_PER_CORE_S.value:.3g} s per event "
            f"({STATIC_SYNAPSES_PER_CORE_S.source}) x {watts.value} W ({watts.source})",
        ),
    )


SPYNNAKER_CYCLES = _cycles_costs()
"""Per-operation energies from sPyNNaker's own cycle figures: a lower bound."""


@dataclass(frozen=True)
class Work:
    """What the application cores do in a run: ``neuron_updates`` (neurons times
    timesteps, every copy and sample) and ``synaptic_events`` (postsynaptic potentials)."""

    neuron_updates: float
    synaptic_events: float

    def __post_init__(self) -> None:
        if not (self.neuron_updates >= 0 and self.synaptic_events >= 0):
            raise ValueError(
                f"work must be >= 0, got {self.neuron_updates} neuron updates and "
                f"{self.synaptic_events} synaptic events"
            )


@dataclass(frozen=True)
class Busy:
    """Busy time of a run's cores: ``core_seconds`` busy in all, ``cap_core_seconds``
    (every placed core busy for the whole run), the ``active_j`` they cost at 0.034 W per
    busy core (``core_seconds`` capped), and the busy fraction of the placed cores."""

    core_seconds: float
    cap_core_seconds: float
    active_j: float
    costs: str

    @property
    def fraction(self) -> float:
        """Mean share of the run the placed cores are busy (at most 1)."""
        if self.cap_core_seconds <= 0:
            return 0.0
        return min(1.0, self.core_seconds / self.cap_core_seconds)


def busy(work: Work, placed_cores: float, seconds: float, costs: OpCosts = MEASURED) -> Busy:
    """Busy core-seconds and active energy of ``work`` on ``placed_cores`` application
    cores running for ``seconds`` of machine time, at ``costs`` per operation, capped at
    every placed core busy for the whole run."""
    if placed_cores < 0 or seconds < 0:
        raise ValueError(f"cores and seconds must be >= 0, got {placed_cores}, {seconds}")
    watts = CORE_ACTIVE_W.value
    joules = (
        work.neuron_updates * costs.neuron_update_j.value
        + work.synaptic_events * costs.synaptic_event_j.value
    )
    core_s = joules / watts
    cap = placed_cores * seconds
    return Busy(core_s, cap, min(core_s, cap) * watts, costs.name)
