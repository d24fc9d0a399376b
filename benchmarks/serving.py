"""Serving-world speed harness: replay the Azure conv trace and a million synthetic requests.

Run by hand (never as a timed test)::

    python benchmarks/serving.py                       # both cases
    python benchmarks/serving.py --case azure --json benchmarks/out/serving.json
    python benchmarks/serving.py --case synthetic --requests 1000000 --replicas 16
    python benchmarks/serving.py --case 10m --json benchmarks/out/serving_10m.json
    python benchmarks/serving.py --case pricing       # a new step shape's price alone

Prints, per case, wall and CPU seconds, simulated requests per second, iterations (events) per
second, peak RSS and cost-memo misses, and writes them as JSON to ``--json`` (default
``benchmarks/out/serving.json``).

Kernel speed: every run first measures SimPy's raw event rate in the same process (one
process yielding 1,000,000 timeouts, the median of three runs) and reports each case's simulated iterations
per second of simulation CPU time as a fraction of it (``vs_simpy_timeouts``): a world at
that fraction pays, per iteration, that share of one bare SimPy event. CPU time (not wall)
is used for both, so other jobs on the machine change the figures less. ``--plain`` also
runs each case on the plain loop (``simulate_serving(..., fast=False)``: one SimPy event per
arrival and per iteration) and checks that both give the same frames. The synthetic case
then simulates the same requests once more in the same process on a fresh backend
(``again``): the first run pays loading the compiled loop (numba's import and its cached
code, about 1.1 s of CPU once a process), the second finds it loaded (where the first
ran it), as the second system of a scenario does; both are judged against the 50 %
target.

The targets (2-core machine, one core used): the 19,366 Azure conv requests on one H100
in < 5 s wall; 1,000,000 synthetic requests over 16 replicas in < 6 s of simulation with
peak RSS < 600 MiB, at >= 50 % of SimPy's raw timeout rate (iterations per second); a
whole 10,000,000-request run over 16 replicas (simulation with frames spilled to
parts past the row threshold, summary metrics, and the run folder written with every
registered reporter) with peak RSS < 1.5 GB; the run folder of 2,000,000 requests under
200 MB at the default detail level. Each case's JSON carries ``targets``: every target
that applies with its measured value and whether it is met (a line ``target ...`` is
printed for each); a wall-clock target is judged on CPU seconds as well as wall seconds,
since other jobs on the machine stretch the wall time. Peak RSS is the process's
high-water mark (``resource.getrusage``), generating the requests included.

``--case 10m`` generates the requests, simulates, computes the metrics from the (lazy)
frames, writes the run folder into a temporary folder at ``--detail`` (default
``requests``, the scenario default) and reports wall seconds per stage, peak RSS
(``resource.getrusage``), events/s (iterations plus requests over the simulation wall
time), requests/s, the spill threshold, the size of the spill folder once the simulation
ends (the temporary disk the run holds), the rows of each frame and the size of each file
of the run folder.

``--breakdown`` (synthetic case) also reports where each world's CPU time goes, by part
(``breakdown_cpu_s``: numba's load, corner pricing, the compiled loop, hand-overs, spill
checks, frames, other; ``benchmarks/serving_breakdown.py``).

``--case spill`` writes the ``steps`` rows of one replica and the ``requests`` rows of a
250,000-request run over 4 replicas as Parquet with lz4, as Arrow IPC and as packed
Arrow IPC (the spill folder's parts), and reports CPU milliseconds to write and read
back and the bytes of each (:func:`run_spill_formats`).

``--case pricing`` prices 1,870 step shapes a fresh model and backend have not seen (40 × 40
decode-only shapes and 270 fused prefill-and-decode ones) and reports the CPU microseconds a
shape takes, as the cost table pays them for every shape new to a run (no target: a
component of the cases above, whose graphs share most of their ops).

Step prices come from the real GPU backend and the ``llama`` model family (preset
``llama-2-7b``) on H100 SXM replicas, as a user's scenario gets them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import polars as pl
import simpy
from polars.testing import assert_frame_equal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xpusim.engine.backend import Compiled  # noqa: E402
from xpusim.engine.collectives import topology_from_device  # noqa: E402
from xpusim.engine.detail import DETAIL_LEVELS, Detail  # noqa: E402
from xpusim.engine.frames import collect, frame_height  # noqa: E402
from xpusim.engine.host import build_host  # noqa: E402
from xpusim.engine.policies import SchedulerSpec  # noqa: E402
from xpusim.engine.system import Parallelism, System  # noqa: E402
from xpusim.plugins.workloads.serving.arrivals import ArrivalSpec, generate  # noqa: E402
from xpusim.plugins.workloads.serving.cluster import CostTable  # noqa: E402
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


SYNTHETIC_TARGETS = {"simulate_s": 6.0, "peak_rss_mb": 600.0, "vs_simpy_timeouts": 0.5}
"""The 1,000,000-request case's targets: seconds of simulation, MiB, fraction of SimPy's rate."""

RUN_10M_PEAK_MB = 1.5e9 / 2**20
"""The 10,000,000-request run's peak RSS target, 1.5 GB, in MiB (1430.5)."""

AZURE_WALL_S = 5.0
"""The Azure conv replay's target, seconds."""


def target(value: float, limit: float, above: bool = False) -> dict[str, Any]:
    """One target's verdict: ``value`` below ``limit`` (at least ``limit`` with ``above``)."""
    met = value >= limit if above else value < limit
    return {"value": value, "target": (">= " if above else "< ") + f"{limit:g}", "met": met}


def print_targets(case: dict[str, Any]) -> None:
    """One line per target of ``case``: name, measured value, target and verdict."""
    for name, t in case.get("targets", {}).items():
        verdict = "met" if t["met"] else "NOT MET"
        print(f"target {case['case']} {name}: {t['value']} (target {t['target']}): {verdict}")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def simpy_timeout_rate(count: int = 1_000_000, repeats: int = 3) -> dict[str, Any]:
    """SimPy's raw event rate on this machine, now: one process yielding ``count``
    timeouts, per second of wall and of CPU time, the median of ``repeats`` runs (one run
    varies by a quarter from the next on a shared machine); ``samples_cpu_s`` lists each."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeats):
        env = simpy.Environment()

        def ticker(env: simpy.Environment = env) -> Generator[simpy.Event, None, None]:
            timeout = env.timeout
            for _ in range(count):
                yield timeout(1.0)

        env.process(ticker())
        t0 = time.perf_counter()
        c0 = time.process_time()
        env.run()
        walls.append(count / (time.perf_counter() - t0))
        cpus.append(count / (time.process_time() - c0))
    return {
        "timeouts": count,
        "per_wall_s": round(statistics.median(walls)),
        "per_cpu_s": round(statistics.median(cpus)),
        "samples_cpu_s": [round(c) for c in cpus],
    }


def run_case(
    name: str,
    frame: pl.DataFrame,
    replicas: int,
    sched: SchedulerSpec,
    raw: dict[str, Any],
    plain: bool = False,
    again: bool = False,
    breakdown: Any = None,
) -> dict:
    """Simulate ``frame`` and report speed figures; with ``plain``, also on the plain loop
    (checking that the frames are the same); with ``again``, simulate it once more in the
    same process with a fresh backend (``again``: the figures of a world that finds the
    compiled loop loaded, as a scenario's second system does); with a ``breakdown``
    (installed :class:`serving_breakdown.Breakdown`), also the CPU seconds by part of each
    run."""
    compiled, source = make_compiled(replicas)
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = simulate_serving(
        frame, compiled, system=name, replicas=replicas, devices_per_replica=1, scheduler=sched
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak_fast = peak_rss_mb()
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
    out: dict[str, Any] = {
        "case": name,
        "cost_model": source,
        "requests": frame.height,
        "replicas": replicas,
        "scheduler": sched.kind,
        "steps": sched.steps,
        "async_output": sched.async_output,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "iterations": steps,
        "events_per_s": round((steps + frame.height) / wall),
        "requests_per_s": round(frame.height / wall),
        "simulated_s": round(res.simulated_s, 3),
        "dropped": int(req["dropped"]),
        "preemptions": int(req["preemptions"]),
        "cost_misses": res.cost_misses,
        "iterations_per_cpu_s": round(steps / cpu),
        "vs_simpy_timeouts": round(steps / cpu / raw["per_cpu_s"], 3),
        "peak_rss_mb": round(peak_fast, 1),
    }
    if breakdown is not None:
        out["breakdown_cpu_s"] = breakdown.take(cpu)
    if name.startswith("synthetic"):
        out["targets"] = {
            "simulate_wall_s": target(out["wall_s"], SYNTHETIC_TARGETS["simulate_s"]),
            "simulate_cpu_s": target(out["cpu_s"], SYNTHETIC_TARGETS["simulate_s"]),
            "peak_rss_mb": target(out["peak_rss_mb"], SYNTHETIC_TARGETS["peak_rss_mb"]),
            "vs_simpy_timeouts": target(
                out["vs_simpy_timeouts"], SYNTHETIC_TARGETS["vs_simpy_timeouts"], above=True
            ),
        }
    elif name.startswith("azure"):
        out["targets"] = {"wall_s": target(out["wall_s"], AZURE_WALL_S)}
    if again:
        fresh = make_compiled(replicas)[0]  # no shape priced by the first run
        t0 = time.perf_counter()
        c0 = time.process_time()
        simulate_serving(
            frame, fresh, system=name, replicas=replicas, devices_per_replica=1, scheduler=sched
        )
        a_cpu = time.process_time() - c0
        out["again"] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(a_cpu, 3),
            "iterations_per_cpu_s": round(steps / a_cpu),
            "vs_simpy_timeouts": round(steps / a_cpu / raw["per_cpu_s"], 3),
        }
        if breakdown is not None:
            out["again"]["breakdown_cpu_s"] = breakdown.take(a_cpu)
        if "targets" in out:
            out["targets"]["vs_simpy_timeouts_again"] = target(
                out["again"]["vs_simpy_timeouts"],
                SYNTHETIC_TARGETS["vs_simpy_timeouts"],
                above=True,
            )
    if plain:
        t0 = time.perf_counter()
        c0 = time.process_time()
        ref = simulate_serving(
            frame,
            make_compiled(replicas)[0],  # a fresh backend: no shape priced by the first run
            system=name,
            replicas=replicas,
            devices_per_replica=1,
            scheduler=sched,
            fast=False,
        )
        p_wall = time.perf_counter() - t0
        p_cpu = time.process_time() - c0
        for key in ("requests", "steps", "devices", "tbt"):
            assert_frame_equal(collect(ref.frames[key]), collect(res.frames[key]))
        out["plain"] = {
            "wall_s": round(p_wall, 3),
            "cpu_s": round(p_cpu, 3),
            "iterations_per_cpu_s": round(steps / p_cpu),
            "vs_simpy_timeouts": round(steps / p_cpu / raw["per_cpu_s"], 3),
            "same_frames": True,
        }
        out["speedup_cpu"] = round(p_cpu / cpu, 2)
    return out


def run_pricing() -> dict[str, Any]:
    """CPU time of pricing step shapes new to a fresh model and backend (module docstring)."""
    compiled, source = make_compiled(1)
    shapes = [CostTable.shape(0, 0, 0, nb, dc) for nb in range(1, 41) for dc in range(70, 1550, 37)]
    shapes += [
        CostTable.shape(pf, pt, 0, nb, dc)
        for pf in (1, 2, 3)
        for pt in (64, 128, 256, 512, 1024)
        for nb in (0, 1, 4, 16, 32, 64)
        for dc in (128, 512, 1024)
    ]
    c0 = time.process_time()
    for shape in shapes:
        compiled.cost(shape)
    cpu = time.process_time() - c0
    return {
        "case": "pricing",
        "cost_model": source,
        "shapes": len(shapes),
        "cpu_s": round(cpu, 4),
        "us_per_shape": round(cpu / len(shapes) * 1e6, 1),
    }


SPILL_FORMATS = ("parquet-lz4", "ipc", "ipc-packed")
"""Part formats the spill case compares: Parquet with lz4 (the earlier parts), Arrow IPC
uncompressed with every column, and Arrow IPC of packed rows (the engine's parts)."""


def run_spill_formats(requests: int = 250_000, replicas: int = 4, repeats: int = 5) -> dict:
    """Write and read back the ``steps`` and ``requests`` rows of one real run in each of
    :data:`SPILL_FORMATS`: CPU milliseconds to write, to read every column and to read the
    columns the frames pass reads back (a step's decode tokens, state index and joules;
    the strings of an unpacked part mapped to indices as that pass did), and the bytes.
    The median of ``repeats`` runs of each."""
    import tempfile

    from xpusim.engine.frames import Packing
    from xpusim.plugins.workloads.serving.steplog import steps_packing

    frame = generate(_synthetic_spec(requests, f"{25 * replicas}/s"), seed=1)
    compiled, source = make_compiled(replicas)
    res = simulate_serving(
        frame,
        compiled,
        system=f"h100x{replicas}",
        replicas=replicas,
        devices_per_replica=1,
        spill_rows=10**12,  # in memory: the rows are written below
    )
    steps = collect(res.frames["steps"]).filter(pl.col("replica") == 0)
    reqs = collect(res.frames["requests"])
    states = steps["state"].unique(maintain_order=True).to_list()
    codes = {s: i for i, s in enumerate(states)}
    packings = {
        "steps": steps_packing("", 0, states),
        "requests": Packing(fixed={"system": 0}, coded={"status": ["dropped", "ok"]}),
    }

    def pack(name: str, rows: pl.DataFrame) -> pl.DataFrame:
        p = packings[name]
        coded = {c: {s: i for i, s in enumerate(p.coded[c])} for c in p.coded}
        return rows.drop(*p.fixed).with_columns(
            pl.col(c).replace_strict(m, return_dtype=pl.Int32) for c, m in coded.items()
        )

    def cpu_ms(fn: Any, *args: Any) -> float:
        times = []
        for _ in range(repeats):
            c0 = time.process_time()
            fn(*args)
            times.append(time.process_time() - c0)
        return round(statistics.median(times) * 1e3, 2)

    def write(fmt: str, rows: pl.DataFrame, path: Path) -> None:
        if fmt == "parquet-lz4":
            rows.write_parquet(path, statistics=False, compression="lz4")
        else:
            rows.write_ipc(path, compression="uncompressed")

    def read(fmt: str, path: Path, columns: list[pl.Expr] | None = None) -> None:
        scan = pl.scan_parquet(path) if fmt == "parquet-lz4" else pl.scan_ipc(path)
        (scan.select(columns) if columns else scan).collect()

    out: dict[str, Any] = {"case": "spill-formats", "cost_model": source, "requests": requests}
    with tempfile.TemporaryDirectory(prefix="xpusim-bench-") as tmp:
        for name, rows in (("steps", steps), ("requests", reqs)):
            packed = pack(name, rows)
            for fmt in SPILL_FORMATS:
                path = Path(tmp) / f"{name}-{fmt}"
                held = packed if fmt == "ipc-packed" else rows
                fig: dict[str, Any] = {
                    "rows": rows.height,
                    "write_ms": cpu_ms(write, fmt, held, path),
                }
                fig["read_all_ms"] = cpu_ms(read, fmt, path)
                if name == "steps":
                    state = pl.col("state")
                    if fmt != "ipc-packed":
                        state = state.replace_strict(codes, return_dtype=pl.Int64)
                    back = [pl.col("decode_tokens"), state, pl.col("joules")]
                    fig["read_back_ms"] = cpu_ms(read, fmt, path, back)
                fig["mib"] = round(path.stat().st_size / 2**20, 2)
                out[f"{name}/{fmt}"] = fig
    return out


def run_10m(
    requests: int,
    replicas: int,
    rate: str,
    sched: SchedulerSpec,
    spill: int | None,
    report: bool,
    detail: Detail = "requests",
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
    folder_of_parts = getattr(res.frames, "spill", None)
    spill_bytes = (
        sum(p.stat().st_size for p in folder_of_parts.path.iterdir())
        if folder_of_parts is not None and folder_of_parts.path is not None
        else 0
    )
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
        detail=detail,
    )
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xpusim-bench-") as tmp:
        folder = write_run(run, Path(tmp) / "run", [])
        peaks["frames_written"] = round(peak_rss_mb(), 1)
        for reporter in reporters:
            reporter.write(run, folder)
            peaks[type(reporter).__name__] = round(peak_rss_mb(), 1)
        files = {f.name: f.stat().st_size for f in folder.iterdir()}
        written = sum(files.values())
    write_s = time.perf_counter() - t3
    events = rows["steps"] + requests
    peak = round(peak_rss_mb(), 1)
    return {
        "case": f"run-{requests}",
        "cost_model": source,
        "requests": requests,
        "replicas": replicas,
        "scheduler": sched.kind,
        "steps": sched.steps,
        "async_output": sched.async_output,
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
        "detail": detail,
        "spill_folder_mb": round(spill_bytes / 2**20, 1),
        "run_folder_mb": round(written / 2**20, 1),
        "files_mb": {k: round(v / 2**20, 2) for k, v in sorted(files.items())},
        "peak_rss_mb": peak,
        "peak_rss_mb_after": peaks,
        "targets": {
            "peak_rss_mb": target(peak, round(RUN_10M_PEAK_MB, 1)),
            "simulate_peak_rss_mb": target(peaks["simulate"], round(RUN_10M_PEAK_MB, 1)),
        },
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
        choices=["azure", "synthetic", "10m", "pricing", "spill", "all"],
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
    ap.add_argument(
        "--detail",
        choices=list(DETAIL_LEVELS),
        default="requests",
        help="10m: the run folder's detail level (results.detail)",
    )
    ap.add_argument(
        "--plain", action="store_true", help="also run the plain loop and compare (azure/synthetic)"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="synthetic: also CPU seconds by part of each world (serving_breakdown.py)",
    )
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--rate", default="400/s", help="synthetic arrival rate")
    ap.add_argument("--trace", type=Path, default=AZURE)
    ap.add_argument("--scheduler", default="continuous")
    ap.add_argument(
        "--steps", type=int, default=1, help="prefill-first: decode steps per scheduling round"
    )
    ap.add_argument(
        "--async-output",
        action="store_true",
        help="prefill-first: stream each iteration's tokens at the end of the next",
    )
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "serving.json")
    args = ap.parse_args(argv)
    sched = SchedulerSpec(kind=args.scheduler, steps=args.steps, async_output=args.async_output)
    raw = simpy_timeout_rate()
    print(json.dumps({"simpy_timeouts": raw}))
    results: list[dict] = [{"case": "simpy-timeouts", **raw}]
    if args.case in ("azure", "all"):
        if args.trace.exists():
            from xpusim.plugins.traces.readers import AzureLLMTrace

            t0 = time.perf_counter()
            frame = AzureLLMTrace().read(args.trace, {})
            read_s = time.perf_counter() - t0
            r = run_case("azure-conv-h100", frame, 1, sched, raw, args.plain)
            r["read_s"] = round(read_s, 3)
            results.append(r)
            print(json.dumps(r))
            print_targets(r)
        else:
            print(f"skip azure: {args.trace} not found", file=sys.stderr)
    if args.case in ("synthetic", "all"):
        count = args.requests or 1_000_000
        frame = generate(_synthetic_spec(count, args.rate), seed=1)
        timers = None
        if args.breakdown:
            from serving_breakdown import Breakdown

            timers = Breakdown()
            timers.install()
        try:
            r = run_case(
                f"synthetic-{count}",
                frame,
                args.replicas,
                sched,
                raw,
                args.plain,
                again=True,
                breakdown=timers,
            )
        finally:
            if timers is not None:
                timers.uninstall()
        results.append(r)
        print(json.dumps(r))
        print_targets(r)
    if args.case == "pricing":
        r = run_pricing()
        results.append(r)
        print(json.dumps(r))
    if args.case == "spill":
        r = run_spill_formats()
        results.append(r)
        print(json.dumps(r))
    if args.case == "10m":
        count = args.requests or 10_000_000
        r = run_10m(
            count,
            args.replicas,
            args.rate,
            sched,
            args.spill_rows,
            not args.no_report,
            args.detail,
        )
        results.append(r)
        print(json.dumps(r))
        print_targets(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
