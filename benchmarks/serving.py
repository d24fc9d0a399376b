"""Serving-world speed harness: replay the Azure conv trace and a million synthetic requests.

Run by hand (never as a timed test)::

    python benchmarks/serving.py                       # both cases
    python benchmarks/serving.py --case azure --json benchmarks/out/serving.json
    python benchmarks/serving.py --case synthetic --requests 1000000 --replicas 16
    python benchmarks/serving.py --case 10m --json benchmarks/out/serving_10m.json

Prints, per case, wall and CPU seconds, simulated requests per second, iterations (events) per
second, peak RSS and cost-memo misses, and writes them as JSON to ``--json`` (default
``benchmarks/out/serving.json``).

The targets (2-core machine, one core used): the 19,366 Azure conv requests on one H100
in < 5 s wall; 1,000,000 synthetic requests over 16 replicas in < 60 s with peak RSS
< 2 GB; a whole 10,000,000-request run over 16 replicas (simulation with frames spilled
to Parquet parts past the row threshold, summary metrics, and the run folder written
with every registered reporter) with peak RSS < 3 GB.

``--case 10m`` generates the requests, simulates, computes the metrics from the (lazy)
frames, writes the run folder into a temporary folder and reports wall seconds per
stage, peak RSS (``resource.getrusage``), events/s (iterations plus requests over the
simulation wall time), requests/s, the spill threshold and the rows of each frame.

Step prices come from the real GPU backend and the ``llama`` model family (preset
``llama-2-7b``) on H100 SXM replicas, as a user's scenario gets them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xpusim.engine.backend import Compiled  # noqa: E402
from xpusim.engine.collectives import topology_from_device  # noqa: E402
from xpusim.engine.frames import frame_height  # noqa: E402
from xpusim.engine.host import build_host  # noqa: E402
from xpusim.engine.policies import SchedulerSpec  # noqa: E402
from xpusim.engine.system import Parallelism, System  # noqa: E402
from xpusim.plugins.workloads.serving.arrivals import ArrivalSpec, generate  # noqa: E402
from xpusim.plugins.workloads.serving.world import simulate_serving  # noqa: E402

AZURE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
"""The Azure LLM 2023 conversation trace, beside the repository (not part of it)."""


def make_compiled(count: int) -> tuple[Compiled, str]:
    """Llama-2-7B on ``count`` H100 SXM replicas through the real GPU backend."""
    host = build_host()
    model = host.models.get("llama").configure({"preset": "llama-2-7b", "dtype": "bf16"})
    device = host.device("gpu", "h100-sxm")
    system = System(
        name=f"h100x{count}",
        backend="gpu",
        device=device,
        count=count,
        parallelism=Parallelism(data=count),
        topology=topology_from_device(device),
    )
    return host.backends.get("gpu").compile(model, system), "gpu backend + llama-2-7b"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, frame: pl.DataFrame, replicas: int, sched: SchedulerSpec) -> dict:
    """Simulate ``frame`` and report speed figures."""
    compiled, source = make_compiled(replicas)
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = simulate_serving(
        frame, compiled, system=name, replicas=replicas, devices_per_replica=1, scheduler=sched
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    steps = frame_height(res.frames["steps"])
    req = (
        res.frames["requests"]
        .lazy()
        .select(
            (pl.col("status") == "dropped").sum().alias("dropped"),
            pl.col("preemptions").sum().alias("preemptions"),
        )
        .collect()
        .row(0, named=True)
    )
    out = {
        "case": name,
        "cost_model": source,
        "requests": frame.height,
        "replicas": replicas,
        "scheduler": sched.kind,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "iterations": steps,
        "events_per_s": round((steps + frame.height) / wall),
        "requests_per_s": round(frame.height / wall),
        "simulated_s": round(res.simulated_s, 3),
        "dropped": int(req["dropped"]),
        "preemptions": int(req["preemptions"]),
        "cost_misses": res.cost_misses,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return out


def run_10m(
    requests: int, replicas: int, rate: str, sched: SchedulerSpec, spill: int | None, report: bool
) -> dict:
    """The bounded-memory case: one whole run of ``requests`` synthetic requests."""
    import tempfile

    from xpusim.engine.frames import spill_rows
    from xpusim.engine.results import RunResult, SystemResult, write_run
    from xpusim.plugins.workloads.serving.metrics import serving_metrics

    compiled, source = make_compiled(replicas)
    t0 = time.perf_counter()
    # held only by the list until handed over, so the simulation may free it
    held = [generate(_synthetic_spec(requests, rate), seed=1)]
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    c1 = time.process_time()
    res = simulate_serving(
        held.pop(),
        compiled,
        system="h100x16",
        replicas=replicas,
        devices_per_replica=1,
        scheduler=sched,
        spill_rows=spill,
    )
    sim_s = time.perf_counter() - t1
    sim_cpu = time.process_time() - c1
    peaks = {"simulate": round(peak_rss_mb(), 1)}
    t2 = time.perf_counter()
    m = serving_metrics(res.frames, res.simulated_s)
    metrics_s = time.perf_counter() - t2
    peaks["metrics"] = round(peak_rss_mb(), 1)
    rows = {k: frame_height(v) for k, v in res.frames.items()}
    reporters: list[Any] = []
    if report:
        try:
            from xpusim.engine.host import build_host, get_plugin_manager

            host = build_host(get_plugin_manager())
            reporters = [r for _, r in host.reporters.items()]
        except Exception as exc:  # reporters not installed: frames and summary only
            print(f"no reporters: {type(exc).__name__}: {exc}", file=sys.stderr)
    system = SystemResult(
        name="h100x16", backend="gpu", device="h100", count=replicas, metrics=m, frames=res.frames
    )
    run = RunResult(
        scenario="serving-10m",
        seed=1,
        version="bench",
        systems=[system],
        workload="serving",
        model="llama-2-7b",
    )
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xpusim-bench-") as tmp:
        folder = write_run(run, Path(tmp) / "run", [])
        peaks["frames_written"] = round(peak_rss_mb(), 1)
        for reporter in reporters:
            reporter.write(run, folder)
            peaks[type(reporter).__name__] = round(peak_rss_mb(), 1)
        written = sum(f.stat().st_size for f in folder.iterdir())
    write_s = time.perf_counter() - t3
    events = rows["steps"] + requests
    return {
        "case": f"run-{requests}",
        "cost_model": source,
        "requests": requests,
        "replicas": replicas,
        "scheduler": sched.kind,
        "spill_rows": spill_rows(spill),
        "reporters": [type(r).__name__ for r in reporters],
        "generate_s": round(gen_s, 3),
        "simulate_wall_s": round(sim_s, 3),
        "simulate_cpu_s": round(sim_cpu, 3),
        "metrics_s": round(metrics_s, 3),
        "write_s": round(write_s, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "iterations": rows["steps"],
        "frame_rows": rows,
        "events_per_s": round(events / sim_s),
        "requests_per_s": round(requests / sim_s),
        "simulated_s": round(res.simulated_s, 3),
        "ttft_p99_s": m["ttft_p99_s"],
        "tbt_p99_s": m["tbt_p99_s"],
        "preemptions": m["preemptions"],
        "run_folder_mb": round(written / 2**20, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_mb_after": peaks,
    }


def _synthetic_spec(requests: int, rate: str) -> ArrivalSpec:
    """The synthetic load: Poisson arrivals, lognormal prompt and output lengths."""
    return ArrivalSpec.model_validate(
        {
            "process": "poisson",
            "rate": rate,
            "count": requests,
            "prompt_tokens": {"dist": "lognormal", "median": 512, "sigma": 1.0, "max": 4096},
            "output_tokens": {"dist": "lognormal", "median": 128, "sigma": 0.8, "max": 1024},
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cases named on the command line and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--case",
        choices=["azure", "synthetic", "10m", "all"],
        default="all",
        help="all = azure and synthetic; 10m is run on its own",
    )
    ap.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests of the synthetic case (1,000,000) or of 10m (10,000,000)",
    )
    ap.add_argument(
        "--spill-rows",
        type=int,
        default=None,
        help="row threshold past which frames spill (default: the engine's)",
    )
    ap.add_argument("--no-report", action="store_true", help="10m: write frames only")
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--rate", default="400/s", help="synthetic arrival rate")
    ap.add_argument("--trace", type=Path, default=AZURE)
    ap.add_argument("--scheduler", default="continuous")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "serving.json")
    args = ap.parse_args(argv)
    sched = SchedulerSpec(kind=args.scheduler)
    results = []
    if args.case in ("azure", "all"):
        if args.trace.exists():
            from xpusim.plugins.traces.readers import AzureLLMTrace

            t0 = time.perf_counter()
            frame = AzureLLMTrace().read(args.trace, {})
            read_s = time.perf_counter() - t0
            r = run_case("azure-conv-h100", frame, 1, sched)
            r["read_s"] = round(read_s, 3)
            results.append(r)
            print(json.dumps(r))
        else:
            print(f"skip azure: {args.trace} not found", file=sys.stderr)
    if args.case in ("synthetic", "all"):
        count = args.requests or 1_000_000
        frame = generate(_synthetic_spec(count, args.rate), seed=1)
        r = run_case(f"synthetic-{count}", frame, args.replicas, sched)
        results.append(r)
        print(json.dumps(r))
    if args.case == "10m":
        count = args.requests or 10_000_000
        r = run_10m(count, args.replicas, args.rate, sched, args.spill_rows, not args.no_report)
        results.append(r)
        print(json.dumps(r))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
