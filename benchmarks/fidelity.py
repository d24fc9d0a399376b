"""Fidelity of the analytic CPU device against the measured one, on this machine.

For each case (a model, a shape) the ``cpu`` backend's ``host`` device really runs the
model on seeded normal inputs (median of ``--repeats`` timed calls after warm-up) and ``host-analytic`` predicts
the same step from the calibration of this machine (the same roofline machinery as the
GPU and TPU backends, with CPU rates). Prints per-case error ``(predicted - measured) /
measured`` (and, for information, against the fastest call) and the median of ``|error|``; with ``--json OUT`` writes the rows and
``median_abs_error`` (a fraction). Target: median |error| <= 15 %, none above 35 %.

    python benchmarks/fidelity.py [--json OUT] [--threads N] [--repeats N]
                                  [--calibration FILE] [--quick]

Without ``--calibration`` it uses this machine's full calibration at ``--threads`` (the
cached file ``xpusim calibrate --backend cpu`` writes, or a shipped one for a matching
machine), measuring one first (about half a minute) when only a quick one exists.
Exit status 1 when the target is missed, 0 when met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.graph import Phase, Shape  # noqa: E402
from xpusim.engine.model import ModelGraph  # noqa: E402
from xpusim.engine.system import Parallelism, System, Topology  # noqa: E402
from xpusim.plugins.cpu import calibrate as cal_mod  # noqa: E402
from xpusim.plugins.cpu.backend import CpuBackend, MeasuredCompiled, analytic_compiled, host_spec  # noqa: E402

TARGET_MEDIAN = 0.15
TARGET_MAX = 0.35


@dataclass(frozen=True)
class Case:
    """One fidelity case: a model family and its spec, a shape, a label."""

    label: str
    family: str
    spec: dict[str, Any]
    shape: Shape
    quick: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


GPT_SMALL = {"preset": "gpt2", "dtype": "fp32", "seq_len": 512}

CASES = [
    Case(
        "mlp 784-1024-1024-10 b32",
        "mlp",
        {"sizes": [784, 1024, 1024, 10], "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=32),
    ),
    Case(
        "mlp 256-256-10 b1",
        "mlp",
        {"sizes": [256, 256, 256, 10], "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=1),
        quick=False,
    ),
    Case(
        "cnn 32-64 @32px b8",
        "cnn",
        {"channels": [32, 64], "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=8),
    ),
    Case(
        "resnet-50 b1",
        "resnet",
        {"preset": "resnet-50", "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=1),
    ),
    Case(
        "resnet-50 b2",
        "resnet",
        {"preset": "resnet-50", "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=2),
        quick=False,
    ),
    Case(
        "bert-base s128 b1",
        "bert",
        {"preset": "bert-base", "dtype": "fp32"},
        Shape(Phase.FORWARD, batch=1, tokens=128),
    ),
    Case("gpt2 prefill 128 b1", "gpt", GPT_SMALL, Shape(Phase.PREFILL, batch=1, tokens=128)),
    Case(
        "gpt2 decode ctx128 b1",
        "gpt",
        GPT_SMALL,
        Shape(Phase.DECODE, batch=1, tokens=1, context=128),
    ),
    Case(
        "gpt2 decode ctx256 b4",
        "gpt",
        GPT_SMALL,
        Shape(Phase.DECODE, batch=4, tokens=1, context=256),
        quick=False,
    ),
]


def families() -> dict[str, Any]:
    """Model families by name: the installed plugins', else the model modules' own."""
    out: dict[str, Any] = {}
    try:
        from xpusim.engine.host import build_host

        host = build_host()
        out.update({n: f for n, f in host.models.items()})
    except Exception:  # the host may not load in a partial checkout; fall back below
        pass
    if not out:
        import importlib

        for mod in ("small", "vision", "encoder", "transformer"):
            try:
                m = importlib.import_module(f"xpusim.plugins.models.{mod}")
            except Exception:
                continue
            for f in getattr(m, "FAMILIES", []):
                out.setdefault(f.name, f)
    return out


def host_system(cal: cal_mod.CpuCalibration, options: dict[str, Any]) -> System:
    """A one-host ``cpu`` system on device ``host``."""
    return System(
        name="host",
        backend="cpu",
        device=host_spec(cal, "host"),
        count=1,
        parallelism=Parallelism(),
        topology=Topology(1, 1.0, 0.0, 1.0, 0.0),
        options=options,
    )


def run_case(
    case: Case, model: ModelGraph, cal: cal_mod.CpuCalibration, options: dict[str, Any]
) -> dict[str, Any]:
    """Measure and predict one case; the row of the result table."""
    system = host_system(cal, options)
    twin = analytic_compiled(model, system, cal)
    measured = MeasuredCompiled(system, model, twin)
    t0 = time.perf_counter()
    m = measured.cost(case.shape)
    wall = time.perf_counter() - t0
    p = twin.cost(case.shape)
    timing = measured.timings[case.shape]
    err = (p.seconds - m.seconds) / m.seconds
    return {
        "case": case.label,
        "family": case.family,
        "phase": case.shape.phase.value,
        "batch": case.shape.batch,
        "tokens": case.shape.tokens,
        "context": case.shape.context,
        "measured_s": m.seconds,
        "measured_min_s": timing.fastest,
        "measured_samples_s": list(timing.samples),
        "predicted_s": p.seconds,
        "error": err,
        "error_vs_fastest": (p.seconds - timing.fastest) / timing.fastest,
        "predicted_breakdown_s": dict(p.breakdown),
        "measured_breakdown_s": dict(m.breakdown),
        "gflop": m.flops / 1e9,
        "bench_wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print the table; see the module docstring."""
    ap = argparse.ArgumentParser(description="analytic vs measured CPU step time")
    ap.add_argument("--json", type=Path, default=None, help="write rows and median here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration file")
    ap.add_argument("--quick", action="store_true", help="a smaller set of cases")
    ap.add_argument(
        "--clock",
        choices=cal_mod.CLOCKS,
        default="wall",
        help="wall time, or process CPU time (robust at 1 thread on a busy machine)",
    )
    args = ap.parse_args(argv)
    threads = int(args.threads or cal_mod.logical_cores())
    start = time.perf_counter()
    if args.calibration:
        cal = cal_mod.load(args.calibration)
    else:
        cal = CpuBackend().default_calibration(threads, args.clock)
        if cal.quick:
            path = cal_mod.default_path(threads, args.clock)
            print(
                f"only a quick calibration exists for {threads} threads; measuring the full "
                f"set (written to {path})",
                flush=True,
            )
            cal = cal_mod.calibrate(
                path,
                threads=threads,
                clock=args.clock,
                command="benchmarks/fidelity.py (full calibration)",
            )
    if cal.threads != threads:
        print(f"note: calibration measured at {cal.threads} threads, running at {threads}")
    print(f"calibration: {cal.cited()}")
    fams = families()
    options = {"threads": threads, "repeats": args.repeats, "warmup": 2, "clock": args.clock}
    if cal.statistic != "median":
        print(
            f"note: calibration points are the {cal.statistic} of their samples, steps the "
            f"median of theirs; re-measure it with `xpusim calibrate --backend cpu`"
        )
    if cal.clock != args.clock:
        print(f"note: calibration timed by the {cal.clock} clock, steps by the {args.clock} clock")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    print(f"{'case':28} {'measured ms':>12} {'predicted ms':>13} {'error':>8} {'vs fastest':>10}")
    for case in CASES:
        if args.quick and not case.quick:
            continue
        fam = fams.get(case.family)
        if fam is None:
            skipped.append(f"{case.label}: family {case.family!r} is not installed")
            continue
        model = fam.configure(dict(case.spec))
        row = run_case(case, model, cal, options)
        rows.append(row)
        print(
            f"{case.label:28} {row['measured_s'] * 1e3:12.2f} {row['predicted_s'] * 1e3:13.2f} "
            f"{row['error'] * 100:+7.1f}% {row['error_vs_fastest'] * 100:+9.1f}%",
            flush=True,
        )
    for s in skipped:
        print(f"skipped: {s}")
    errs = [abs(r["error"]) for r in rows]
    med = statistics.median(errs) if errs else float("nan")
    worst = max(errs) if errs else float("nan")
    ok = bool(errs) and med <= TARGET_MEDIAN and worst <= TARGET_MAX
    print(
        f"median |error| {med * 100:.1f}% (target <= {TARGET_MEDIAN * 100:.0f}%), max "
        f"{worst * 100:.1f}% (target <= {TARGET_MAX * 100:.0f}%): "
        f"{'met' if ok else 'MISSED'}; {len(rows)} cases in "
        f"{time.perf_counter() - start:.0f} s at {threads} threads, {args.clock} clock"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "median_abs_error": med,
                    "max_abs_error": worst,
                    "target_met": ok,
                    "threads": threads,
                    "repeats": args.repeats,
                    "clock": args.clock,
                    "calibration": cal.cited(),
                    "machine": dict(cal.machine),
                    "rows": rows,
                    "skipped": skipped,
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
