"""SpiNNaker backend harness: mapping speed and energy per synaptic event.

Run ``python benchmarks/spinnaker.py`` (add ``--quick`` for a smaller network). It

1. maps the ``snn-20k`` reference network (20,000 neurons: 10,000 Poisson inputs at 10 Hz
   and 10,000 ``IF_curr_exp`` neurons; 1,000,000 synapses at 1 % connectivity) onto a
   virtual SpiNN-5 board with sPyNNaker and prints the wall time (target: under 30 s);
2. runs one second of the network's activity (counted by the exact LIF simulator) through
   sPyNNaker's Version5 energy model and prints the energy per synaptic event, board
   level and chips only, and the board figure split into static (board idle) and active
   (cores, packets) parts, against the range published for SpiNNaker in the reference
   figures (``neuromorphic`` entries): from 43 nJ per postsynaptic potential
   (``sharp2012``, 4 chips, chip power only) to 5.9 µJ per synaptic event (``knight_nowotny_esyn``,
   a whole machine running the cortical microcircuit 20x slower than real time).

Figures land in ``benchmarks/out/spinnaker.json`` (or the file given with ``--json OUT``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpusim.engine.graph import Phase, Shape  # noqa: E402
from xpusim.engine.system import Parallelism, System, Topology  # noqa: E402
from xpusim.plugins.models.snn import FAMILIES  # noqa: E402
from xpusim.plugins.spinnaker.backend import SPINN5, SpinnakerBackend  # noqa: E402

PUBLISHED_J = {
    "sharp2012 (43 nJ per PSP, 4-chip board, real time)": 43e-9,
    "knight_nowotny_esyn (SpiNNaker 0.6 µJ, Rhodes et al. 2020)": 0.6e-6,
    "knight_nowotny_esyn (SpiNNaker 5.9 µJ, microcircuit x20 slower)": 5.9e-6,
}
LOW, HIGH = 43e-9, 5.9e-6


def main() -> int:
    """Map the reference network, price one second, print and save the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 2,000-neuron network instead")
    ap.add_argument(
        "--json",
        type=Path,
        default=ROOT / "benchmarks" / "out" / "spinnaker.json",
        help="where the figures are written (default benchmarks/out/spinnaker.json)",
    )
    args = ap.parse_args()
    spec: dict[str, object] = {
        "preset": "snn-20k",
        "calibration_samples": 1,
        "calibration_timesteps": 200,
    }
    if args.quick:
        spec.update(inputs=1000, layers=[1000], connectivity=0.1)
    model = FAMILIES[0].configure(spec)
    topo = Topology(1, 1.0, 0.0, 1.0, 0.0)
    system = System("spinn5", "spinnaker", SPINN5, 1, Parallelism(), topo)
    compiled = SpinnakerBackend().compile(model, system)
    net = compiled.network

    t0 = time.perf_counter()
    mp = compiled.mapping
    map_s = time.perf_counter() - t0
    print(
        f"network: {net.inputs + net.neurons:,} neurons ({net.inputs:,} inputs), "
        f"{net.synapses:,} synapses"
    )
    print(
        f"mapping on a virtual SpiNN-5 board: {map_s:.1f} s wall "
        f"(sPyNNaker session {mp.wall_s:.1f} s; target < 30 s)"
    )
    print(
        f"  chips used {mp.chips_used} of {mp.chips}, application cores {mp.cores}, "
        f"routing entries {mp.routing_entries} in {mp.routing_tables} tables, "
        f"packets per input spike {mp.packets_per_spike('input'):.2f}"
    )

    steps = round(1e3 / compiled.dt_ms)  # one second of activity
    shape = Shape(Phase.SPIKING, batch=1, timesteps=steps)
    e = compiled.energy(shape)
    events = compiled.synaptic_events(shape)
    per_board = e.board_j / events
    per_chips = e.chips_j / events
    print(f"one second: {events:,.0f} synaptic events, {e.packets:,.0f} router packets")
    print(
        f"  board energy {e.board_j:.2f} J (idle {e.idle_j:.2f}, cores {e.cores_j:.3f}, "
        f"packets {e.packets_j:.4f}) -> {per_board * 1e9:.0f} nJ per synaptic event"
    )
    print(f"  chips-only energy {e.chips_j:.3f} J -> {per_chips * 1e9:.0f} nJ per synaptic event")
    active = (e.cores_j + e.packets_j) / events
    static = e.idle_j / events
    print(
        f"  split: static (board idle) {static * 1e9:.0f} nJ + active (cores, packets) "
        f"{active * 1e9:.0f} nJ per synaptic event"
    )
    for name, v in PUBLISHED_J.items():
        print(f"  published: {name}: {v * 1e9:.0f} nJ")
    inside = LOW <= per_board <= HIGH
    print(
        f"board-level figure inside the published range [{LOW * 1e9:.0f} nJ, "
        f"{HIGH * 1e9:.0f} nJ]: {'yes' if inside else 'NO'}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "neurons": net.inputs + net.neurons,
                "synapses": net.synapses,
                "mapping_wall_s": map_s,
                "chips_used": mp.chips_used,
                "cores": mp.cores,
                "routing_entries": mp.routing_entries,
                "synaptic_events_per_s": events,
                "energy_per_synaptic_event_board_j": per_board,
                "energy_per_synaptic_event_chips_j": per_chips,
                "energy_per_synaptic_event_static_j": static,
                "energy_per_synaptic_event_active_j": active,
                "published_range_j": [LOW, HIGH],
                "inside_range": inside,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if inside else 1


if __name__ == "__main__":
    raise SystemExit(main())
