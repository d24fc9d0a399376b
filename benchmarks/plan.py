"""Plan speed harness: how long ``xpusim plan`` takes to answer, and its parallel speedup.

Run by hand (never as a timed test)::

    python benchmarks/plan.py                         # every case
    python benchmarks/plan.py --case 8b
    python benchmarks/plan.py --case 70b --json benchmarks/out/plan.json
    python benchmarks/plan.py --case 70b --repeat 5    # alternate 1 and 2 workers 5 times

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
Each run records the load average before it and the share of all CPUs that was busy
while it ran (``cpu_busy``, from ``/proc/stat``: the plan's own processes and everyone
else's), and the workers' wall and CPU seconds simulating (a wall far above the CPU
means the workers waited for a CPU). ``--repeat N`` alternates one and two workers N
times and reports each pair's ratio, the median ratio and the ratio of the fastest runs,
so that a burst of someone else's work does not decide the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far, or ``None`` off Linux."""
    try:
        fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


def run_case(sets: list[str], workers: int) -> dict[str, Any]:
    """``xpusim plan`` with ``sets`` on ``workers`` local workers: wall time and answer,
    the load before it and the share of the CPUs busy while it ran."""
    load_before = os.getloadavg()[0]
    before = cpu_ticks()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan"
        cmd = [str(XPUSIM), "plan", str(PLAN_8B), "--workers", str(workers), "--out", str(out)]
        for item in sets:
            cmd += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        after = cpu_ticks()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        doc = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    best = doc.get("best") or {}
    failed = [r for r in doc["configurations"] if r.get("status") == "failed"]
    busy = None
    if before is not None and after is not None and after[1] > before[1]:
        busy = (after[0] - before[0]) / (after[1] - before[1])
    return {
        "workers": workers,
        "wall_s": wall,
        "load_before": load_before,
        "cpu_busy": busy,
        "search_wall_s": doc["wall_s"],
        "timings": doc["timings"],
        "shapes": doc["shapes"],
        "simulations": doc["simulations"],
        "rounds": doc.get("rounds"),
        "unused_simulations": doc.get("unused_simulations"),
        "failed": len(failed),
        "first_failure": failed[0].get("reason") if failed else None,
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


def summarize(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The figures of alternating 1- and 2-worker runs of one case: every run, each
    pair's ratio, their median, and the ratio of the fastest run of each."""
    ratios = [one["wall_s"] / two["wall_s"] for one, two in pairs]
    fastest_one = min((one for one, _ in pairs), key=lambda r: r["wall_s"])
    fastest_two = min((two for _, two in pairs), key=lambda r: r["wall_s"])
    two = pairs[-1][1]
    return {
        "runs": [{"1": a, "2": b, "speedup": r} for (a, b), r in zip(pairs, ratios, strict=True)],
        "speedup": statistics.median(ratios),
        "speedup_fastest": fastest_one["wall_s"] / fastest_two["wall_s"],
        "search_speedup": statistics.median(
            a["timings"]["search_s"] / b["timings"]["search_s"] for a, b in pairs
        ),
        "same_answer": all(a["answer"] == b["answer"] for a, b in pairs),
        "1": fastest_one,
        "2": fastest_two,
        "answer": two["answer"],
    }


def report(case: str, f: dict[str, Any]) -> None:
    """Print one case's figures."""
    two = f["2"]
    for i, run in enumerate(f["runs"], 1):
        a, b = run["1"], run["2"]
        print(
            f"{case} pair {i}: 1 worker {a['wall_s']:.2f} s (load {a['load_before']:.2f}, "
            f"CPUs {_busy(a)} busy), 2 workers {b['wall_s']:.2f} s (load "
            f"{b['load_before']:.2f}, CPUs {_busy(b)} busy): {run['speedup']:.2f}x"
        )
        for r in (a, b):
            if r["failed"]:
                print(f"  {r['failed']} simulations failed: {str(r['first_failure'])[:300]}")
    print(
        f"{case} at 10 req/s over 6 device types: median speedup {f['speedup']:.2f}x over "
        f"{len(f['runs'])} pairs, fastest runs {f['1']['wall_s']:.2f} s and "
        f"{two['wall_s']:.2f} s ({f['speedup_fastest']:.2f}x); {two['shapes']} shapes, "
        f"{two['simulations']} simulations, at most {two['rounds']} in turn per shape, "
        f"{two['unused_simulations']} speculated and unused; the search alone "
        f"{f['search_speedup']:.2f}x; same answer: {f['same_answer']}"
    )
    print(f"  {f['answer']}")
    for n, r in (("1 worker", f["1"]), ("2 workers", two)):
        t = r["timings"]
        print(
            f"  {n}: load {t['prepare_s']:.2f} s, search {t['search_s']:.2f} s "
            f"(workers' seconds: pruning {t['prune_task_s']:.2f}, sizing "
            f"{t['size_task_s']:.2f} wall, {t.get('size_task_cpu_s', 0.0):.2f} CPU), "
            f"command {r['wall_s']:.2f} s"
        )


def _busy(run: dict[str, Any]) -> str:
    share = run.get("cpu_busy")
    return "?" if share is None else f"{share:.0%}"


def main() -> None:
    """Run the chosen cases, print their figures and write them to JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["all", *CASES], default="all")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "plan.json")
    ap.add_argument("--repeat", type=int, default=1, help="pairs of 1- and 2-worker runs")
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
        pairs = [(run_case(CASES[case], 1), run_case(CASES[case], 2)) for _ in range(args.repeat)]
        figures[case] = summarize(pairs)
        report(case, figures[case])
    figures["machine_after"] = load_note()
    print(figures["machine"], "->", figures["machine_after"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
