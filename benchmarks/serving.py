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
``llama-2-7b``) when those plugins are installed; otherwise from :class:`AnalyticCompiled`,
a documented roofline stand-in built from the same engine types: FLOPs ``2·P`` per new
token plus attention ``4·layers·hidden`` per (token, cached token) pair, bytes = weights
once per step plus KV read/written, time ``max(flops/(peak·0.6), bytes/(bw·0.8)) + 20 µs``
and power linear between idle and max in the larger utilisation. The stand-in exists for
the engine speed measurement only; its numbers are not a hardware claim.
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

from engine.arrivals import ArrivalSpec, generate  # noqa: E402
from engine.backend import Compiled, Cost, Fit  # noqa: E402
from engine.device import DeviceSpec, Figure, PowerSpec  # noqa: E402
from engine.graph import OpGraph, Shape  # noqa: E402
from engine.model import ModelGraph, ModelInfo  # noqa: E402
from engine.sim.events import frame_height  # noqa: E402
from engine.sim.schedulers import SchedulerSpec  # noqa: E402
from engine.sim.serving import simulate_serving  # noqa: E402
from engine.system import Parallelism, System, Topology  # noqa: E402

AZURE = Path("/work/shared/traces/azure_llm_2023_conv.csv")

_A = "benchmark stand-in (H100 SXM datasheet-like figure)"
H100_LIKE = DeviceSpec(
    name="h100-standin", backend="standin", vendor="-", description="roofline stand-in",
    peak_flops={"bf16": Figure(989e12, assumption=_A)},
    memory_bytes=Figure(80 * 2**30, assumption=_A),
    memory_bw=Figure(3.35e12, assumption=_A),
    power=PowerSpec(max_w=Figure(700.0, assumption=_A), idle_w=Figure(100.0, assumption=_A)),
)


class StandInModel(ModelGraph):
    """Static facts of a Llama-2-7B-shaped decoder (no op graphs)."""

    def __init__(self) -> None:
        self.info = ModelInfo(
            name="llama-2-7b-standin", family="llama", kind="decoder", dtype="bf16",
            params=6.74e9, active_params=6.74e9, param_bytes=6.74e9 * 2,
            kv_bytes_per_token=2 * 32 * 4096 * 2, flops_per_token=2 * 6.74e9, layers=32,
            max_seq_len=4096, config={"hidden": 4096, "layers": 32},
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """Unused by the stand-in cost model."""
        return OpGraph(phase=shape.phase, ops=(), shape=shape)

    def module(self, device: str = "meta") -> Any:
        """No torch module for the stand-in."""
        raise NotImplementedError(self)

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """No inputs for the stand-in."""
        raise NotImplementedError(self)


class AnalyticCompiled(Compiled):
    """Roofline step prices for :class:`StandInModel` on :data:`H100_LIKE` (see module doc)."""

    def _terms(self, s: Shape) -> tuple[float, float]:
        info = self.model.info
        hidden = float(info.config["hidden"])
        if s.parts:
            f = b = 0.0
            for p in s.parts:
                pf, pb = self._terms(p)
                f += pf
                b += pb - info.param_bytes  # weights are read once per fused step
            return f, b + info.param_bytes
        toks = s.batch * s.tokens
        pairs = s.batch * (s.tokens * s.context + s.tokens * (s.tokens + 1) / 2)
        flops = 2 * info.active_params * toks + 4 * info.layers * hidden * pairs
        kv = info.kv_bytes_per_token * s.batch * (s.context + s.tokens)
        return flops, info.param_bytes + kv

    def _cost(self, shape: Shape) -> Cost:
        flops, nbytes = self._terms(shape)
        dev = self.system.device
        tp = self.system.parallelism.model_parallel
        t_c = flops / tp / (dev.flops("bf16") * 0.6)
        t_m = nbytes / tp / (dev.memory_bw.value * 0.8)
        sec = max(t_c, t_m) + 20e-6
        util = max(t_c, t_m) / sec
        assert dev.power.max_w is not None and dev.power.idle_w is not None
        watts = dev.power.idle_w.value + (dev.power.max_w.value - dev.power.idle_w.value) * util
        return Cost(seconds=sec, joules=watts * sec * tp,
                    breakdown={"compute": t_c, "memory": t_m, "overhead": 20e-6}, flops=flops)

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """Weights plus KV per device against device memory."""
        tp = self.system.parallelism.model_parallel
        need = (self.model.info.param_bytes + kv_tokens * self.model.kv_bytes_per_token) / tp
        have = self.system.device.memory_bytes.value
        return Fit(fits=need <= have, need_bytes=need, have_bytes=have)


def standin_system(count: int = 1, tensor: int = 1) -> System:
    """A system of ``count`` stand-in H100s split ``tensor`` ways per replica."""
    topo = Topology(devices_per_node=8, intra_bw=450e9, intra_latency=2e-6, inter_bw=50e9,
                    inter_latency=5e-6)
    return System(name=f"h100x{count}", backend="standin", device=H100_LIKE, count=count,
                  parallelism=Parallelism(tensor=tensor), topology=topo)


def make_compiled(count: int) -> tuple[Compiled, str]:
    """The real GPU backend + llama-2-7b when installed, else the analytic stand-in."""
    try:
        from engine.host import build_host, get_plugin_manager

        host = build_host(get_plugin_manager())
        backend = host.backends.get("gpu")
        model = host.models.get("llama").configure(
            {"preset": "llama-2-7b", "dtype": "bf16"})
        device = host.device("gpu", "h100-sxm")
        base = standin_system(count)
        system = System(name=base.name, backend="gpu", device=device, count=count,
                        parallelism=base.parallelism, topology=base.topology)
        return backend.compile(model, system), "gpu backend + llama-2-7b"
    except Exception as exc:  # plugins not there yet: say so and use the stand-in
        return (AnalyticCompiled(standin_system(count), StandInModel()),
                f"analytic stand-in ({type(exc).__name__}: {str(exc)[:80]})")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, frame: pl.DataFrame, replicas: int, sched: SchedulerSpec) -> dict:
    """Simulate ``frame`` and report speed figures."""
    compiled, source = make_compiled(replicas)
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = simulate_serving(frame, compiled, system=name, replicas=replicas,
                           devices_per_replica=1, scheduler=sched)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    steps = frame_height(res.frames["steps"])
    req = res.frames["requests"].lazy().select(
        (pl.col("status") == "dropped").sum().alias("dropped"),
        pl.col("preemptions").sum().alias("preemptions"),
    ).collect().row(0, named=True)
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


def run_10m(requests: int, replicas: int, rate: str, sched: SchedulerSpec,
            spill: int | None, report: bool) -> dict:
    """The bounded-memory case: one whole run of ``requests`` synthetic requests."""
    import tempfile

    from engine.metrics import serving_metrics
    from engine.results import RunResult, SystemResult, write_run
    from engine.sim.events import spill_rows

    compiled, source = make_compiled(replicas)
    t0 = time.perf_counter()
    # held only by the list until handed over, so the simulation may free it
    held = [generate(_synthetic_spec(requests, rate), seed=1)]
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    c1 = time.process_time()
    res = simulate_serving(held.pop(), compiled, system="h100x16", replicas=replicas,
                           devices_per_replica=1, scheduler=sched, spill_rows=spill)
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
            from engine.host import build_host, get_plugin_manager

            host = build_host(get_plugin_manager())
            reporters = [r for _, r in host.reporters.items()]
        except Exception as exc:  # reporters not installed: frames and summary only
            print(f"no reporters: {type(exc).__name__}: {exc}", file=sys.stderr)
    system = SystemResult(name="h100x16", backend="gpu", device="h100", count=replicas,
                          metrics=m, frames=res.frames)
    run = RunResult(scenario="serving-10m", seed=1, version="bench", systems=[system],
                    workload="serving", model="llama-2-7b")
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
    return ArrivalSpec.model_validate({
        "process": "poisson", "rate": rate, "count": requests,
        "prompt_tokens": {"dist": "lognormal", "median": 512, "sigma": 1.0, "max": 4096},
        "output_tokens": {"dist": "lognormal", "median": 128, "sigma": 0.8, "max": 1024},
    })


def main(argv: list[str] | None = None) -> int:
    """Run the cases named on the command line and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["azure", "synthetic", "10m", "all"], default="all",
                    help="all = azure and synthetic; 10m is run on its own")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests of the synthetic case (1,000,000) or of 10m (10,000,000)")
    ap.add_argument("--spill-rows", type=int, default=None,
                    help="row threshold past which frames spill (default: the engine's)")
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
            from plugins.traces.readers import AzureLLMTrace

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
