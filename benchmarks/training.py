"""Speed of the training world: 10,000 steps on 1,024 devices with failures.

Target (the training issue): under 10 s on the project's 2-core machine. The harness runs
the ``training`` workload end to end — the backend prices the stage graph once, the
failure world replays the run for every seed at checkpoint/failure granularity, and the
``steps`` (one row per step) and ``devices`` (one row per device and state) frames are
built — and prints the wall time of each part.

Usage::

    python benchmarks/training.py [--steps 10000] [--devices 1024] [--seeds 5] [--json OUT]

The system is GPT 76B on A100s with Megatron-LM's plan (tensor 8, pipeline 4, data
``devices / 32``), a per-device MTBF of 2,000 h (so ~0.5 failures per hour of wall time on
1,024 devices) and 30-minute checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.collectives import topology_from_device  # noqa: E402
from xpusim.engine.host import build_host  # noqa: E402
from xpusim.engine.model import ModelFamily  # noqa: E402
from xpusim.engine.system import Parallelism, System  # noqa: E402
from xpusim.engine.workload import WorkloadContext  # noqa: E402
from xpusim.plugins.workloads.training.workload import TrainingConfig, TrainingWorkload  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time one training simulation and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    host = build_host()
    try:
        fam: ModelFamily = host.models.get("gpt")
    except Exception:
        from xpusim.plugins.models.transformer import FAMILIES

        fam = next(f for f in FAMILIES if f.name == "gpt")
    model = fam.configure(
        {"layers": 60, "hidden": 10240, "heads": 80, "vocab": 51200, "seq_len": 2048}
    )
    gpu = host.backends.get("gpu")
    dev = gpu.devices()["a100-sxm-80gb"]
    n = args.devices
    par = Parallelism(data=max(1, n // 32), tensor=8, pipeline=4, sequence=True)
    system = System("a100", "gpu", dev, par.devices, par, topology_from_device(dev))
    compiled = gpu.compile(model, system)
    t_setup = time.perf_counter() - t0

    cfg = TrainingConfig.model_validate(
        {
            "global_batch": 56 * par.data,
            "seq_len": 2048,
            "steps": args.steps,
            "recompute": "selective",
            "seeds": args.seeds,
            "failures": {
                "mtbf_per_device": "2000 h",
                "checkpoint_interval": "30 min",
                "restart": "10 min",
                "storage_bandwidth": "50 GB/s",
            },
        }
    )
    ctx = WorkloadContext(
        system=system,
        compiled=compiled,
        model=model,
        seed=0,
        base_dir=REPO,
        resolve_trace=lambda spec: None,
    )
    t1 = time.perf_counter()
    run = TrainingWorkload().simulate(cfg, ctx)
    t_sim = time.perf_counter() - t1
    m = run.metrics
    out = {
        "devices": system.count,
        "steps": args.steps,
        "seeds": args.seeds,
        "setup_s": t_setup,
        "simulate_s": t_sim,
        "step_time_s": m["step_time_s"],
        "time_to_train_s": m["time_to_train_s"],
        "failures": m["failures"],
        "goodput": m["goodput"],
        "steps_rows": run.frames["steps"].height,
        "devices_rows": run.frames["devices"].height,
        "target_s": 10.0,
    }
    print(
        f"{system.count} devices, {args.steps} steps, {args.seeds} seeds: simulate "
        f"{t_sim:.3f} s (setup {t_setup:.2f} s; target < 10 s)"
    )
    print(
        f"  step {m['step_time_s']:.2f} s, time to train {m['time_to_train_s'] / 3600:.1f} h, "
        f"{m['failures']} failures, goodput {m['goodput']:.3f}; frames: "
        f"{out['steps_rows']} step rows, {out['devices_rows']} device rows"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
