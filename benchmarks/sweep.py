"""Sweep speed harness: parallel speedup of the local executor and per-point overhead.

Run by hand (never as a timed test)::

    python benchmarks/sweep.py                                # both cases
    python benchmarks/sweep.py --case speedup --points 200 --requests 20
    python benchmarks/sweep.py --case overhead --json benchmarks/out/sweep.json

Cases:

- ``speedup``: the quickstart scenario (``scenarios/quickstart.yaml``, three GPU systems)
  with ``--requests`` requests per point, swept over ``--points`` points (a grid of
  maximum batch sizes x arrival rates), run by the local executor on 1 and then on 2
  workers, each in a fresh Python process (so neither profits from the other's warm fork
  server). Wall time is ``run_sweep`` end to end: worker start, every point, the summary
  and the report. Target: 2 workers at least 1.7x faster than 1.
- ``overhead``: trivially cheap points (the quickstart on one H100 with 2 requests each,
  swept over the seed). Their in-process cost is measured by running them one after the
  other in this process; the executor's marginal wall time per point is the slope between
  a sweep of 10 and one of ``--overhead-points`` points on one worker (both after a
  warm-up sweep has started the fork server, a once-per-process cost). Scheduling
  overhead per point = marginal wall per point - in-process cost per point. Target:
  under 50 ms.

Prints the figures and writes them as JSON to ``--json`` (default
``benchmarks/out/sweep.json``). Speedups need free cores: on a shared machine run it when
it is idle and report the machine with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def speedup_scenario(points: int, requests: int) -> dict[str, Any]:
    """The quickstart with ``requests`` requests per point and a sweep of ``points``."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["workload"]["arrivals"]["count"] = requests
    batches = [8, 16, 32, 64, 128, 256, 512, 1024]
    rates = max(1, -(-points // len(batches)))
    data["sweep"] = {
        "grid": {
            "workload.scheduler.max_batch": batches,
            "workload.arrivals.rate": [f"{2 + 0.25 * k:g}/s" for k in range(rates)],
        },
        "max_points": len(batches) * rates,
    }
    return data


def tiny_scenario(points: int) -> dict[str, Any]:
    """Trivially cheap points: one H100, two requests, swept over the seed."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["workload"]["arrivals"]["count"] = 2
    data["systems"] = data["systems"][:1]
    data["sweep"] = {"zip": {"seed": list(range(1, points + 1))}}
    return data


def _sweep(data: dict[str, Any], workers: int, folder: Path) -> tuple[float, int]:
    """Run ``data``'s sweep on the local executor; its wall seconds and point count."""
    from xpusim.engine.host import build_host
    from xpusim.engine.scenario import read_scenario_data
    from xpusim.engine.sweep import run_sweep

    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    scenario, src = read_scenario_data(path)
    executor = build_host().executors.get("local")
    t0 = time.perf_counter()
    res = run_sweep(path, scenario, src, executor, folder / "out", workers=workers)
    wall = time.perf_counter() - t0
    if res.failed:
        raise SystemExit(f"{res.failed} points failed: {res.frame['reason'].drop_nulls()[0]}")
    return wall, res.points


def child(args: argparse.Namespace) -> None:
    """One measured sweep in this (fresh) process; prints its figures as JSON."""
    data = speedup_scenario(args.points, args.requests)
    with tempfile.TemporaryDirectory(prefix="xpusim-sweep-bench-") as tmp:
        wall, n = _sweep(data, args.workers, Path(tmp))
    print(json.dumps({"workers": args.workers, "points": n, "wall_s": wall}))


def case_speedup(args: argparse.Namespace) -> dict[str, Any]:
    """1 vs 2 local workers on the quickstart sweep, each in a fresh process."""
    runs: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--workers",
            str(workers),
            "--points",
            str(args.points),
            "--requests",
            str(args.requests),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs[workers] = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"speedup: {runs[workers]['points']} points, {workers} worker(s): "
            f"{runs[workers]['wall_s']:.1f} s wall",
            flush=True,
        )
    speedup = runs[1]["wall_s"] / runs[2]["wall_s"]
    print(f"speedup: 2 workers vs 1: {speedup:.2f}x (target >= 1.7x)")
    return {
        "points": runs[1]["points"],
        "requests_per_point": args.requests,
        "wall_1_worker_s": runs[1]["wall_s"],
        "wall_2_workers_s": runs[2]["wall_s"],
        "speedup": speedup,
        "target_speedup": 1.7,
        "met": speedup >= 1.7,
    }


def case_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Marginal executor wall per point minus the point's in-process cost."""
    from xpusim.engine.sweep import PointTask, expand, parse_sweep, run_point
    from xpusim.engine.yamlsrc import Source

    n = args.overhead_points
    src = Source(str(QUICKSTART))
    data = tiny_scenario(n)
    points = expand(data, parse_sweep(data["sweep"], src), src)
    with tempfile.TemporaryDirectory(prefix="xpusim-sweep-bench-") as tmp:
        base = Path(tmp)
        # Warm this process (imports, first-use caches) on points outside the timed set.
        warm = tiny_scenario(3)
        warm["sweep"] = {"zip": {"seed": [10_001, 10_002, 10_003]}}
        for p in expand(warm, parse_sweep(warm["sweep"], src), src):
            run_point(PointTask(p, str(QUICKSTART), str(QUICKSTART.parent), str(base / "w")))
        t0 = time.perf_counter()
        for p in points:
            run_point(PointTask(p, str(QUICKSTART), str(QUICKSTART.parent), str(base / "c")))
        compute = (time.perf_counter() - t0) / n
        shutil.rmtree(base / "c")
        small = 10
        # Start the executor's fork server once, so neither timed sweep pays for it.
        _sweep(warm, 1, _fresh(base / "warm"))
        w_small, _ = _sweep(tiny_scenario(small), 1, _fresh(base / "small"))
        w_big, _ = _sweep(copy.deepcopy(data), 1, _fresh(base / "big"))
    marginal = (w_big - w_small) / (n - small)
    overhead = marginal - compute
    print(
        f"overhead: {n} tiny points on 1 worker: {w_big:.2f} s wall ({small}: {w_small:.2f} s); "
        f"marginal {marginal * 1e3:.1f} ms/point, in-process {compute * 1e3:.1f} ms/point -> "
        f"scheduling overhead {overhead * 1e3:.1f} ms/point (target < 50 ms)"
    )
    return {
        "points": n,
        "wall_small_s": w_small,
        "wall_big_s": w_big,
        "marginal_ms_per_point": marginal * 1e3,
        "in_process_ms_per_point": compute * 1e3,
        "overhead_ms_per_point": overhead * 1e3,
        "target_overhead_ms": 50.0,
        "met": overhead < 0.050,
    }


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def main() -> None:
    """Parse arguments, run the cases, print and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["speedup", "overhead", "all"], default="all")
    ap.add_argument("--points", type=int, default=200, help="speedup sweep points")
    ap.add_argument("--requests", type=int, default=20, help="requests per speedup point")
    ap.add_argument("--overhead-points", type=int, default=100, help="tiny points (> 10)")
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "sweep.json")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.overhead_points <= 10:
        ap.error("--overhead-points must be above 10")
    report: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if args.case in ("speedup", "all"):
        report["speedup"] = case_speedup(args)
    if args.case in ("overhead", "all"):
        report["overhead"] = case_overhead(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
