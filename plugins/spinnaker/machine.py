"""The whole SpiNNaker machine a large network needs: its placement, the boards and frames
allocated for it, and their power at the wall.

The backend maps small networks with sPyNNaker's own tool chain (:mod:`.mapping`). A
network the size of the Potjans-Diesmann cortical microcircuit (77,169 neurons, 0.3e9
synapses) cannot be mapped that way in reasonable time on a workstation (the host
builds every synaptic row), so this module applies the same rules sPyNNaker 7.4.1
applies, read from its source, to population sizes and rates:

* **Neurons per core** (:func:`atoms_per_core`): a core's synaptic input ring buffer
  indexes ``atoms × synapse types × delay slots`` 16-bit entries in DTCM, and sPyNNaker
  refuses a core whose index needs more than ``MAX_RING_BUFFER_BITS`` = 14 bits
  (``PopulationVertex.__update_max_delay`` and
  ``SplitterPopulationVertexNeuronsSynapses.create_machine_vertices``); delay slots are
  ``2**get_n_bits(ceil(max_delay / timestep))`` (``max_delay_steps_incoming``). At 0.1 ms
  steps with delays up to 12.8 ms and two synapse types this leaves 6 bits: 64 neurons per
  core (the value the SpiNNaker team's own microcircuit script sets); at 1 ms steps it
  leaves sPyNNaker's default of 256.
* **Synapse cores** (:func:`synapse_cores`): below 1 ms timesteps sPyNNaker splits each
  population into neuron cores fed by synapse cores
  (``PopulationVertex.use_combined_core``), ``ceil(synaptic events per second into the
  neuron core / (13e6 × time_scale_factor))`` of them
  (``PopulationVertex.__update_n_synapse_cores``; 13e6 static synapses per second per
  core is ``SynapseDynamicsStatic.synapses_per_second``, from Knight & Furber 2016).
  sPyNNaker counts events from its configured worst-case rate; here they come from the
  network's own rates.
* **Boards and frames** (:func:`allocate`): the cores fill SpiN-5 boards at
  :func:`~.mapping.capacity_cores` per board; a multi-board job on a spalloc-managed
  machine gets whole triads of three boards (spalloc allocates rectangles of triads), and
  the boards sit in frames of 24 (the million-core machine: 1,200 boards in 10 racks of
  5 frames).
* **Power at the wall** (:func:`wall_power`): sPyNNaker's own ``Version5`` model of a
  spalloc job (``compute_energy_used``): 26.84 W per board, and per frame the frame's
  switch and cooling (117 W idle plus 37.16 W more while active, measured at the power
  meter), or for a single boxed board its power supply overhead (5.04 W; sPyNNaker would
  also add a frame's active overhead when that one board sits in a spalloc frame, which a
  board on a desk does not); 0.034 W per active core above idle; 1 nJ per router packet.
  A core counts as active for its busy time (:mod:`.busy`), as sPyNNaker's power
  monitors sample it; every placed core active for the whole run, as sPyNNaker assumes
  when no power monitor runs, is the upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping as MappingT
from collections.abc import Sequence
from dataclasses import dataclass

from spinn_machine.version.version_5 import Version5

from xpusim.engine.device import Figure
from xpusim.plugins.spinnaker.busy import STATIC_SYNAPSES_PER_CORE_S
from xpusim.plugins.spinnaker.energy import SOURCE as ENERGY_SOURCE
from xpusim.plugins.spinnaker.energy import constants as chip_constants
from xpusim.plugins.spinnaker.mapping import (
    APP_CORES_PER_CHIP,
    CHIPS_PER_BOARD,
    MAX_LIF_PER_CORE,
    capacity_cores,
)

__all__ = [
    "BOARDS_PER_FRAME",
    "BOARDS_PER_TRIAD",
    "RING_BUFFER_BITS",
    "STATIC_SYNAPSES_PER_CORE_S",
    "Allocation",
    "Placement",
    "WallPower",
    "allocate",
    "atoms_per_core",
    "n_bits",
    "place",
    "synapse_cores",
    "wall_power",
]

_SPY = "sPyNNaker 7.4.1"

RING_BUFFER_BITS = Figure(
    14.0,
    f"{_SPY} spynnaker.pyNN.utilities.constants.MAX_RING_BUFFER_BITS ('14-bits = 16,384 16-bit "
    "ring buffer entries = 32Kb DTCM')",
)
"""Bits of a core's ring-buffer index (atoms, synapse types and delay slots together)."""

BOARDS_PER_TRIAD = Figure(
    3.0,
    "spalloc_client.job.Job docstring ('Any 4x5 triad segment of a machine'): spalloc "
    "allocates multi-board jobs as rectangles of triads of three SpiNN-5 boards",
)
"""Boards of one spalloc allocation unit for a multi-board job."""

BOARDS_PER_FRAME = Figure(
    24.0,
    "Wikipedia 'SpiNNaker': 57,600 chips (1,200 SpiNN-5 boards of 48) 'housed in 10 19-inch "
    "racks ... The cards holding the chips are held in 5 blade enclosures' = 24 boards per "
    "frame",
)
"""SpiNN-5 boards of one frame (blade enclosure) of the million-core machine."""


def n_bits(n_values: int) -> int:
    """Bits to express ``n_values`` values (sPyNNaker's ``utility_calls.get_n_bits``:
    0 for none, 1 for one, else ``ceil(log2(n))``)."""
    if n_values <= 0:
        return 0
    if n_values == 1:
        return 1
    return math.ceil(math.log2(n_values))


def atoms_per_core(
    timestep_ms: float,
    max_delay_ms: float,
    n_synapse_types: int = 2,
    default: int = MAX_LIF_PER_CORE,
) -> int:
    """The most neurons sPyNNaker places on one core when every delay up to
    ``max_delay_ms`` must fit the core's ring buffer (no delay extensions): the
    ring-buffer index's bits less the synapse types' and the delay slots', as a power of
    two, at most ``default``."""
    if not timestep_ms > 0 or max_delay_ms < 0:
        raise ValueError(
            f"timestep must be > 0 and max delay >= 0 ms, got {timestep_ms}, {max_delay_ms}"
        )
    slots = 2 ** n_bits(math.ceil(max_delay_ms / timestep_ms))
    free = int(RING_BUFFER_BITS.value) - n_bits(n_synapse_types) - n_bits(slots)
    if free < 0:
        raise ValueError(
            f"{slots} delay slots and {n_synapse_types} synapse types leave no ring-buffer "
            f"bits for neurons on a core"
        )
    return min(default, 2**free)


def synapse_cores(events_per_s: float, timestep_ms: float, time_scale_factor: float) -> int:
    """Synapse cores sPyNNaker gives one neuron core receiving ``events_per_s`` synaptic
    events per biological second: none at timesteps of 1 ms or more (neuron and synapse
    processing share a core), else enough cores at
    :data:`STATIC_SYNAPSES_PER_CORE_S` × ``time_scale_factor`` each."""
    if timestep_ms >= 1.0 or events_per_s <= 0:
        return 0
    per_core = STATIC_SYNAPSES_PER_CORE_S.value * time_scale_factor
    return math.ceil(events_per_s / per_core)


@dataclass(frozen=True)
class Placement:
    """Cores of a placed network: ``neuron_cores`` (the populations' slices),
    ``synapse_cores`` (feeding them) and ``source_cores`` (one-to-one spike sources),
    and the neurons per core used."""

    atoms_per_core: int
    neuron_cores: int
    synapse_cores: int
    source_cores: int

    @property
    def cores(self) -> int:
        """Application cores in all."""
        return self.neuron_cores + self.synapse_cores + self.source_cores


def place(
    sizes: Sequence[int],
    events_per_neuron_s: Sequence[float],
    *,
    timestep_ms: float,
    time_scale_factor: float,
    max_delay_ms: float,
    sources_per_neuron: bool = False,
) -> Placement:
    """Place populations of ``sizes`` neurons, each neuron receiving
    ``events_per_neuron_s`` synaptic events per biological second, by sPyNNaker's rules:
    :func:`atoms_per_core` neurons per core, :func:`synapse_cores` per neuron core for
    the events of its neurons, and, with ``sources_per_neuron``, one spike source per
    neuron (one-to-one background input) at the same atoms per core."""
    if len(sizes) != len(events_per_neuron_s):
        raise ValueError("one event rate per population is needed")
    apc = atoms_per_core(timestep_ms, max_delay_ms)
    neuron = synapse = 0
    for n, ev in zip(sizes, events_per_neuron_s, strict=True):
        full, rest = divmod(int(n), apc)
        neuron += full + (1 if rest else 0)
        synapse += full * synapse_cores(apc * ev, timestep_ms, time_scale_factor)
        if rest:
            synapse += synapse_cores(rest * ev, timestep_ms, time_scale_factor)
    source = neuron if sources_per_neuron else 0
    return Placement(apc, neuron, synapse, source)


@dataclass(frozen=True)
class Allocation:
    """Boards needed for the cores, boards allocated (whole triads beyond one board),
    frames they occupy (0 for a single boxed board) and chips in use."""

    boards_needed: int
    boards: int
    frames: int
    chips: int


def allocate(cores: int) -> Allocation:
    """The SpiNN-5 boards and frames a job of ``cores`` application cores gets."""
    if cores < 1:
        raise ValueError(f"a job needs at least one core, got {cores}")
    need = math.ceil(cores / capacity_cores(1))
    triad = int(BOARDS_PER_TRIAD.value)
    boards = need if need == 1 else triad * math.ceil(need / triad)
    frames = 0 if boards == 1 else math.ceil(boards / BOARDS_PER_FRAME.value)
    chips = min(boards * CHIPS_PER_BOARD, math.ceil(cores / APP_CORES_PER_CHIP))
    return Allocation(need, boards, frames, chips)


@dataclass(frozen=True)
class WallPower:
    """Watts of a running job at the wall, by part: boards' idle power, frames' switch
    and cooling (or a boxed board's power supply), active cores above idle, and router
    packets."""

    boards_w: float
    container_w: float
    cores_w: float
    packets_w: float

    @property
    def total_w(self) -> float:
        """Watts in all."""
        return self.boards_w + self.container_w + self.cores_w + self.packets_w


def constants() -> MappingT[str, Figure]:
    """The wall-power constants of sPyNNaker's ``Version5`` as cited figures (W)."""
    v = Version5
    return {
        "frame_idle_w": Figure(
            float(v.WATTS_FOR_FRAME_IDLE_COST), f"{ENERGY_SOURCE}.WATTS_FOR_FRAME_IDLE_COST"
        ),
        "frame_active_w": Figure(
            float(v.WATTS_PER_FRAME_ACTIVE_COST_OVERHEAD),
            f"{ENERGY_SOURCE}.WATTS_PER_FRAME_ACTIVE_COST_OVERHEAD",
        ),
        "box_w": Figure(
            float(v.WATTS_FOR_48_CHIP_BOX_COST_OVERHEAD),
            f"{ENERGY_SOURCE}.WATTS_FOR_48_CHIP_BOX_COST_OVERHEAD",
        ),
    }


def wall_power(
    alloc: Allocation, active_cores: float, packets_per_s: float = 0.0, boxed: bool = True
) -> WallPower:
    """Power of ``alloc`` running ``active_cores`` busy cores (a mean where cores are busy
    part of the time, :mod:`.busy`) and ``packets_per_s`` router packets per second, by sPyNNaker's ``Version5.get_active_energy`` for one
    second: frames are charged when the job spans more than one board; a single board
    is charged its box's power supply when ``boxed``."""
    k, c = constants(), chip_constants()
    boards_w = alloc.boards * c["board_idle_w"].value
    if alloc.frames:
        container_w = alloc.frames * (k["frame_idle_w"].value + k["frame_active_w"].value)
    else:
        container_w = k["box_w"].value if boxed else 0.0
    return WallPower(
        boards_w=boards_w,
        container_w=container_w,
        cores_w=active_cores * c["core_active_w"].value,
        packets_w=packets_per_s * c["packet_j"].value,
    )
