"""Whether a mapped network keeps up with real time on SpiNNaker.

A SpiNNaker core holding a slice of a LIF population must, every timestep of machine
time (``timestep × time_scale_factor``), process the synaptic events arriving for its
neurons. When the busiest core cannot, the board falls behind real time (sPyNNaker
reports lost packets and overruns) and the user must slow the machine down with a larger
``time_scale_factor``. The model:

* events per second of machine time on a core: the synaptic events into the core's
  population per timestep, times the share of the population's neurons the core holds,
  divided by ``timestep × time_scale_factor``;
* a core's capacity: the 1.8e9 synaptic events per second a 48-chip SpiNN-5 board was
  shown to handle in real time (``stromatias2013``), spread evenly over its application
  cores (:data:`~xpusim.plugins.spinnaker.mapping.APP_CORES_PER_CHIP` per chip), an
  assumption: it is a demonstrated load, not a measured per-core limit;
* the network fits in real time when the busiest core's load is within that capacity;
  the smallest ``time_scale_factor`` that fits is the load over the capacity times the
  configured one.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingT
from dataclasses import dataclass

from xpusim.engine.device import Figure
from xpusim.plugins.spinnaker.mapping import APP_CORES_PER_CHIP, CHIPS_PER_BOARD, Mapping

__all__ = ["BOARD_EVENTS_PER_S", "RealTime", "core_capacity", "real_time"]

BOARD_EVENTS_PER_S = Figure(1.8e9, "stromatias2013")
"""Synaptic events per second a SpiNN-5 board handled in real time (Stromatias et al.
2013, figures.yaml ``stromatias2013``)."""


def core_capacity() -> Figure:
    """Synaptic events per second one application core processes in real time: the
    board's demonstrated load spread over its application cores (an assumption)."""
    cores = CHIPS_PER_BOARD * APP_CORES_PER_CHIP
    return Figure(
        BOARD_EVENTS_PER_S.value / cores,
        assumption=f"{BOARD_EVENTS_PER_S.value:.3g} synaptic events/s per SpiNN-5 board "
        f"(stromatias2013) spread evenly over its {cores} application cores; a demonstrated "
        f"load, not a measured per-core limit",
    )


@dataclass(frozen=True)
class RealTime:
    """The busiest core's load (synaptic events per second of machine time), a core's
    capacity, the smallest time-scale factor at which the network keeps up, and whether
    the configured one does."""

    peak_core_events_per_s: float
    core_capacity_per_s: float
    required_time_scale_factor: float
    fits: bool


def real_time(
    mapping: Mapping,
    events_per_step: MappingT[str, float],
    sizes: MappingT[str, int],
) -> RealTime:
    """Whether ``mapping`` keeps up with real time when ``events_per_step[label]``
    synaptic events arrive per timestep into the population ``label`` of ``sizes[label]``
    neurons (one sample; each sample runs on its own)."""
    step_s = mapping.timestep_ms * 1e-3 * mapping.time_scale_factor
    peak = 0.0
    for label, _x, _y, _p, atoms in mapping.placements:
        events = events_per_step.get(label, 0.0)
        n = sizes.get(label, 0)
        if events <= 0 or n <= 0:
            continue
        peak = max(peak, events * atoms / n / step_s)
    cap = core_capacity().value
    need = max(1.0, mapping.time_scale_factor * peak / cap)
    return RealTime(peak, cap, need, peak <= cap)
