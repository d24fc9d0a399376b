"""Plan speed harness: how long ``xpusim plan`` takes to answer, and its parallel speedup.

Run by hand (never as a timed test)::

    python benchmarks/plan.py                         # every case
    python benchmarks/plan.py --case 8b
    python benchmarks/plan.py --case 70b --json benchmarks/out/plan.json

Cases, each the command line end to end (``xpusim plan``, start-up included) in a fresh
process so that no case profits from another's warm worker pool:

- ``8b``: the shipped ``scenarios/plan-llama3-8b.yaml``: how many of which device serve
  50 requests/s of Llama-3-8B within TTFT p99 2 s, over every priced catalog device, on 2
  local workers. Target: under 60 s.
- ``70b``: the same traffic at 10 requests/s for Llama-3-70B over six device types
  (H100 SXM, H200, B200, MI300X, A100 80GB, L40S), on 1 and then 2 local workers.
  Targets: under 5 minutes with 2 workers, and at least 1.7x faster than with 1.
- ``70b-wide``: the same plan over tensor degrees 1, 2, 4 and 8 and batch limits 64 and
  256 (the search a user runs to find the cheapest layout), on 1 and then 2 workers.

Prints the figures and writes them as JSON to ``--json`` (default
``benchmarks/out/plan.json``) with the answer each run gave and its simulation count.
Speedups need free cores: on a shared machine say how loaded it was next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAN_8B = ROOT / "scenarios" / "plan-llama3-8b.yaml"
XPUSIM = Path(sys.executable).with_name("xpusim")

SIX_DEVICES = "[h100-sxm, h200-sxm, b200, mi300x, a100-sxm-80gb, l40s]"
CASES: dict[str, list[str]] = {
    "8b": [],
    "70b": [
        "model.preset=llama-3-70b",
        "workload.arrivals.rate=10/s",
        "plan.load.rate=10/s",
        f"plan.devices={SIX_DEVICES}",
    ],
    "70b-wide": [
        "model.preset=llama-3-70b",
        "workload.arrivals.rate=10/s",
        "plan.load.rate=10/s",
        f"plan.devices={SIX_DEVICES}",
        "plan.tensor=[1, 2, 4, 8]",
        "plan.max_batch=[64, 256]",
        "plan.max_configs=1000",
    ],
}
"""``--set`` overrides of each case over the shipped 8B plan."""


def run_case(sets: list[str], workers: int) -> dict[str, Any]:
    """``xpusim plan`` with ``sets`` on ``workers`` local workers: wall time and answer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan"
        cmd = [str(XPUSIM), "plan", str(PLAN_8B), "--workers", str(workers), "--out", str(out)]
        for item in sets:
            cmd += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        doc = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    best = doc.get("best") or {}
    return {
        "workers": workers,
        "wall_s": wall,
        "search_wall_s": doc["wall_s"],
        "timings": doc["timings"],
        "shapes": doc["shapes"],
        "simulations": doc["simulations"],
        "rounds": doc.get("rounds"),
        "answer": doc["answer"],
        "best": {
            k: best.get(k) for k in ("device", "count", "tensor", "max_batch", "usd_per_hour")
        },
    }


def load_note() -> str:
    """The machine's load while measuring (1, 5 and 15-minute load averages over the CPU
    count)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    """Run the chosen cases, print their figures and write them to JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["all", *CASES], default="all")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "plan.json")
    args = ap.parse_args()
    figures: dict[str, Any] = {"machine": load_note()}
    if args.case in ("all", "8b"):
        r = run_case(CASES["8b"], 2)
        figures["8b"] = r
        print(f"8b at 50 req/s, 2 workers: {r['wall_s']:.1f} s, {r['simulations']} simulations")
        print(f"  {r['answer']}")
    for case in ("70b", "70b-wide"):
        if args.case not in ("all", case):
            continue
        one = run_case(CASES[case], 1)
        two = run_case(CASES[case], 2)
        figures[case] = {
            "1": one,
            "2": two,
            "speedup": one["wall_s"] / two["wall_s"],
            "search_speedup": one["timings"]["search_s"] / two["timings"]["search_s"],
            "same_answer": one["answer"] == two["answer"],
        }
        print(
            f"{case} at 10 req/s over 6 device types: 1 worker {one['wall_s']:.1f} s, "
            f"2 workers {two['wall_s']:.1f} s, speedup {one['wall_s'] / two['wall_s']:.2f}x "
            f"({two['shapes']} shapes, {two['simulations']} simulations in {two['rounds']} "
            f"rounds); the search alone {figures[case]['search_speedup']:.2f}x; same answer: "
            f"{figures[case]['same_answer']}"
        )
        print(f"  {two['answer']}")
        for n, r in (("1 worker", one), ("2 workers", two)):
            t = r["timings"]
            print(
                f"  {n}: load {t['prepare_s']:.1f} s, search {t['search_s']:.1f} s "
                f"(workers' seconds: pruning {t['prune_task_s']:.1f}, sizing "
                f"{t['size_task_s']:.1f}), command {r['wall_s']:.1f} s"
            )
    figures["machine_after"] = load_note()
    print(figures["machine"], "->", figures["machine_after"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
