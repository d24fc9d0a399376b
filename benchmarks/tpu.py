"""TPU model speed: closed form vs cycle stepping, a Llama-2-7B decode step on v5e, and
AlexNet conv1 with DRAM stalls against SCALE-Sim.

Usage: ``python benchmarks/tpu.py [--json OUT] [--cap-seconds S] [--scalesim-python PATH]``

1. Closed form vs the cycle-stepped emulator on a 1024×1024×1024 GEMM on a 32×32 array
   (weight stationary). Stepping 1024³ takes 1024 folds of 1118 cycles (~1.1 M array
   cycles of numpy work), so the emulator is run on growing GEMMs ``s×1024×1024`` (s = 32,
   64, 128 rows of A), within ``--cap-seconds``; its time is linear in the number of folds ×
   cycles per fold, which the script fits and extrapolates to 1024³, and says so. The closed
   form is timed directly on 1024³.
2. Wall time to price one Llama-2-7B decode step on a TPU v5e (compile + one cost call,
   fresh backend, and a second shape on the same compilation).
3. AlexNet conv1 (SCALE-Sim's ``alexnet.csv`` row: 224×224×3, 11×11, 96 filters, stride 4)
   on a 32×32 weight-stationary array with 64 kB SRAMs and 10 words/cycle of DRAM, so the
   scratchpad stall model runs on every cycle: ``xpusim tpu conv`` and SCALE-Sim 3.0 in
   fresh processes (``peers.py``), the computation timed inside each (imports excluded)
   and the whole process too, with the cycles and DRAM words of both. SCALE-Sim runs under
   ``--scalesim-python`` (default: this interpreter); where it is not installed the case
   says so and times xpusim alone. ``--no-scalesim`` skips it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

from xpusim.plugins.tpu.cycles import gemm_compute_cycles, gemm_cycles
from xpusim.plugins.tpu.systolic import SystolicArray


def time_closed_form(n: int, reps: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        gemm_compute_cycles(n, n, n, 32, 32, "ws")
    return (time.perf_counter() - t0) / reps


def time_stepping(m: int, n: int, k: int) -> tuple[float, int]:
    a = np.ones((m, k), dtype=np.int64)
    b = np.ones((k, n), dtype=np.int64)
    arr = SystolicArray(32, 32, "ws")
    t0 = time.perf_counter()
    r = arr.gemm(a, b)
    return time.perf_counter() - t0, r.compute_cycles + 1


def alexnet_conv1(scalesim_python: str, with_scalesim: bool) -> dict[str, object]:
    """AlexNet conv1 with bandwidth stalls in xpusim and (when installed) SCALE-Sim."""
    conv_args = ["--ifmap", "224,224,3", "--filter", "11,11", "--filters", "96"]
    conv_args += ["--stride", "4", "--bandwidth", "10"]
    mine = peers.run_case("xpusim", sys.executable, peers.xpusim_tpu("conv", conv_args), 900)
    res: dict[str, object] = {"xpusim": mine.__dict__}
    if mine.status != "ok":
        print(f"AlexNet conv1: xpusim {mine.status}: {mine.note}")
        return res
    print(
        f"AlexNet conv1 with stalls: xpusim {mine.inner_s:.2f} s "
        f"(process {mine.wall_s:.2f} s), {mine.predictions['total_cycles']} cycles "
        f"({mine.predictions['stall_cycles']} stall)"
    )
    if not with_scalesim:
        return res
    row = "Conv1, 224, 224, 11, 11, 3, 96, 4,"
    ref = peers.run_case(
        "scalesim", scalesim_python, peers.scalesim(row, False, 32, 32, 64, 10, "ws"), 1800
    )
    res["scalesim"] = ref.__dict__
    if ref.status != "ok":
        print(f"  SCALE-Sim {ref.status}: {ref.note}")
        return res
    assert mine.inner_s and ref.inner_s and mine.wall_s and ref.wall_s
    same = mine.predictions == ref.predictions
    res["same_cycles_and_dram_words"] = same
    res["speedup_inner"] = ref.inner_s / mine.inner_s
    res["speedup_process"] = ref.wall_s / mine.wall_s
    print(
        f"  SCALE-Sim 3.0 {ref.inner_s:.2f} s (process {ref.wall_s:.2f} s): "
        f"{ref.inner_s / mine.inner_s:.1f}x slower in the computation, "
        f"{ref.wall_s / mine.wall_s:.1f}x as a process; cycles and DRAM words "
        f"{'identical' if same else 'DIFFER: ' + json.dumps(ref.predictions)}"
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument(
        "--cap-seconds", type=float, default=60.0, help="time budget for the cycle-stepped runs"
    )
    ap.add_argument(
        "--scalesim-python", default=sys.executable, help="interpreter with scalesim installed"
    )
    ap.add_argument("--no-scalesim", action="store_true", help="skip the SCALE-Sim comparison")
    args = ap.parse_args()
    out: dict[str, object] = {"python": platform.python_version(), "machine": platform.machine()}

    cf = time_closed_form(1024)
    full_cycles = gemm_cycles(1024, 1024, 1024, 32, 32, "ws").compute_cycles + 1
    samples = []
    spent = 0.0
    for m in (32, 64, 128, 256):
        if spent > args.cap_seconds / 2:
            break
        s, cycles = time_stepping(m, 1024, 1024)
        spent += s
        samples.append({"gemm": [m, 1024, 1024], "array_cycles": cycles, "seconds": s})
    xs = np.array([x["array_cycles"] for x in samples], dtype=float)
    ys = np.array([x["seconds"] for x in samples], dtype=float)
    per_cycle = float((xs @ ys) / (xs @ xs))  # least squares through the origin
    stepped_full = per_cycle * full_cycles
    out["speed"] = {
        "gemm": [1024, 1024, 1024],
        "array": [32, 32],
        "dataflow": "ws",
        "closed_form_seconds": cf,
        "stepping_samples": samples,
        "stepping_seconds_per_array_cycle": per_cycle,
        "array_cycles_1024_cubed": full_cycles,
        "stepping_seconds_1024_cubed_extrapolated": stepped_full,
        "speedup": stepped_full / cf,
        "note": "cycle stepping of 1024^3 extrapolated linearly from the measured runs "
        "(its cost is proportional to array cycles); closed form measured directly",
    }
    print(f"closed form 1024^3 on 32x32: {cf * 1e6:.2f} us")
    for smp in samples:
        print(f"  stepping {smp['gemm']}: {smp['array_cycles']} cycles in {smp['seconds']:.2f} s")
    print(
        f"stepping 1024^3 (extrapolated): {stepped_full:.1f} s -> speedup {stepped_full / cf:,.0f}x"
    )

    try:
        from xpusim.engine.collectives import topology_from_device
        from xpusim.engine.graph import Phase, Shape
        from xpusim.engine.system import Parallelism, System
        from xpusim.plugins.models.transformer import FAMILIES
        from xpusim.plugins.tpu.backend import TpuBackend, resolve

        fam = {f.name: f for f in FAMILIES}["llama"]
        model = fam.configure({"preset": "llama-2-7b"})
        dev = resolve("v5e")
        system = System("v5e", "tpu", dev, 1, Parallelism(), topology_from_device(dev))
        shapes = [Shape(Phase.DECODE, batch=1, tokens=1, context=c) for c in (512, 1024)]
        t0 = time.perf_counter()
        compiled = TpuBackend().compile(model, system)
        cost = compiled.cost(shapes[0])
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled.cost(shapes[1])
        second = time.perf_counter() - t0
        out["llama2_7b_decode_v5e"] = {
            "first_step_wall_seconds": first,
            "next_shape_wall_seconds": second,
            "simulated_step_seconds": cost.seconds,
            "breakdown": dict(cost.breakdown),
        }
        print(
            f"Llama-2-7B decode step on v5e: priced in {first * 1e3:.3f} ms "
            f"(next shape {second * 1e3:.3f} ms); simulated step {cost.seconds * 1e3:.2f} ms"
        )
    except ImportError as e:  # pragma: no cover - models plugin missing
        out["llama2_7b_decode_v5e"] = {"skipped": str(e)}
        print(f"Llama-2-7B decode skipped: {e}")

    out["alexnet_conv1_stalls"] = alexnet_conv1(args.scalesim_python, not args.no_scalesim)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
