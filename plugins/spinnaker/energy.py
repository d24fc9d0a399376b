"""Energy of a spiking run on SpiNNaker, from sPyNNaker's own energy model.

``spinn_machine.version.version_5.Version5`` (sPyNNaker 7.4.1) carries the measured
constants and the formula sPyNNaker's ``compute_energy_used`` applies after a run:

* ``WATTS_FOR_48_CHIP_BOARD_IDLE_COST`` = 26.84 W: an idle SpiNN-5 board (per board);
* ``WATTS_PER_IDLE_CHIP`` = 0.35 W: one idle chip (the chips-only figure);
* ``WATTS_PER_CORE_ACTIVE_OVERHEAD`` = 0.034 W: an active core above idle;
* ``JOULES_PER_PACKET`` = 1 nJ (25 pJ/bit × 40 bits) per multicast packet per router.

:func:`run_energy` calls ``Version5().get_active_energy`` itself with the mapping's chips
and cores and the router packets the counted spikes cause on the mapped multicast trees.
Each core's active time is, given the run's :class:`~.busy.Work`, the time it is busy
with that work (:mod:`.busy`: neuron updates and synaptic events at measured
per-operation costs), as sPyNNaker's power monitors would sample it; without the work,
every placed application core is active for the whole run, as sPyNNaker assumes when no
power monitor runs (an upper bound).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping as MappingT
from dataclasses import dataclass

from spinn_machine.version.version_5 import Version5

from xpusim.engine.device import Figure
from xpusim.plugins.spinnaker.busy import MEASURED, OpCosts, Work, busy
from xpusim.plugins.spinnaker.mapping import Mapping

SOURCE = "sPyNNaker 7.4.1 spinn_machine.version.version_5.Version5 / version_spin1.VersionSpin1"


def version5() -> Version5:
    """sPyNNaker's ``Version5`` (48-chip SpiNN-5 board) energy model object."""
    return Version5()


def constants() -> dict[str, Figure]:
    """The model's constants as cited figures (W, W, W, J)."""
    from spinn_machine.version.version_5 import Version5

    v = Version5
    return {
        "board_idle_w": Figure(
            float(v.WATTS_FOR_48_CHIP_BOARD_IDLE_COST),
            f"{SOURCE}.WATTS_FOR_48_CHIP_BOARD_IDLE_COST",
        ),
        "chip_idle_w": Figure(float(v.WATTS_PER_IDLE_CHIP), f"{SOURCE}.WATTS_PER_IDLE_CHIP"),
        "core_active_w": Figure(
            float(v.WATTS_PER_CORE_ACTIVE_OVERHEAD), f"{SOURCE}.WATTS_PER_CORE_ACTIVE_OVERHEAD"
        ),
        "packet_j": Figure(float(v.JOULES_PER_PACKET), f"{SOURCE}.JOULES_PER_PACKET"),
    }


@dataclass(frozen=True)
class RunEnergy:
    """Joules of one run: ``board_j`` (what sPyNNaker reports as the boards' energy:
    board idle power plus active cores plus packets) and its parts; ``chips_j`` the
    chips-only figure (idle power of the active chips instead of whole boards);
    ``busy_fraction`` the placed cores' mean busy share of the run (1 when every core is
    taken as active throughout)."""

    seconds: float
    board_j: float
    chips_j: float
    idle_j: float
    cores_j: float
    packets_j: float
    packets: float
    busy_fraction: float = 1.0


def router_packets(
    mapping: Mapping, spikes: MappingT[str, float]
) -> dict[tuple[int, int], dict[str, int]]:
    """Router packets per chip for ``spikes`` per population label, split into
    ``Local_Multicast_Packets`` (on chips holding a core of the source) and
    ``External_Multicast_Packets`` (packets arriving from another chip)."""
    home: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for label, x, y, _p, _n in mapping.placements:
        home[label].add((x, y))
    out: dict[tuple[int, int], dict[str, float]] = defaultdict(
        lambda: {"Local_Multicast_Packets": 0.0, "External_Multicast_Packets": 0.0}
    )
    for label, n in spikes.items():
        for xy, frac in mapping.routes.get(label, {}).items():
            kind = "Local_Multicast_Packets" if xy in home[label] else "External_Multicast_Packets"
            out[xy][kind] += n * frac
    return {xy: {k: round(v) for k, v in d.items()} for xy, d in out.items()}


def run_energy(
    mapping: Mapping,
    seconds: float,
    spikes: MappingT[str, float],
    copies: int = 1,
    work: Work | None = None,
    costs: OpCosts = MEASURED,
) -> RunEnergy:
    """Energy of running ``mapping`` for ``seconds`` of machine time with ``spikes`` per
    population label, by ``Version5().get_active_energy`` (no frames: a board on a desk,
    not a cabinet). ``copies`` of the mapped network run side by side (sPyNNaker's model
    counts core-seconds, wherever the cores sit), and the chips-only figure counts the
    chips their cores fill. With ``work`` each chip's cores are active for their share of
    the busy core-seconds the work takes at ``costs`` (:func:`.busy.busy`); without it
    every placed core is active for the whole run."""
    v = version5()
    c = constants()
    fraction = 1.0
    if work is not None:
        placed = mapping.cores * copies
        fraction = busy(work, placed, seconds, costs).fraction
    active = {
        xy: (n * seconds * copies * fraction, n * copies) for xy, n in mapping.app_cores.items()
    }
    chips = mapping.chips_for(copies)
    packets = router_packets(mapping, spikes)
    board_j = v.get_active_energy(
        seconds,
        0,
        mapping.boards,
        mapping.chips,
        active,
        packets,
    )
    chips_j = v.get_active_energy(
        seconds,
        0,
        0,
        chips,
        active,
        packets,
    )
    idle_j = mapping.boards * c["board_idle_w"].value * seconds
    cores_j = sum(t for t, _ in active.values()) * c["core_active_w"].value
    n_packets = float(sum(sum(d.values()) for d in packets.values()))
    return RunEnergy(
        seconds=seconds,
        board_j=float(board_j),
        chips_j=float(chips_j),
        idle_j=idle_j,
        cores_j=cores_j,
        packets_j=n_packets * c["packet_j"].value,
        packets=n_packets,
        busy_fraction=fraction,
    )
