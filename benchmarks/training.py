"""Speed of the training world: 10,000 steps of a 16,384-GPU plan with failures.

Target: under 10 s for 10,000 steps of a 16,384-GPU plan with
failures over 5 seeds. The harness runs the ``training`` workload end to end — the
backend prices the stage graph once, the failure world replays the run for every seed at
checkpoint/failure granularity, and the ``steps`` (one row per step) and ``devices``
(every device's timeline, sampled into windows past the row budget) frames are built —
and prints the wall time of each part.

Usage::

    python benchmarks/training.py [--steps 10000] [--devices 16384] [--seeds 5] [--json OUT]

The system is the ``llama-3-405b`` preset (126 layers, hidden 16,384, 128 heads, 8 KV
heads) at sequence 8,192 on H100s with
tensor 8, pipeline 16 over uneven stages (7, 8 × 14, 7 layers: the default partition of
126 layers), the distributed optimizer (ZeRO-1), full recomputation and data ``devices / 128``; 2,048
sequences a step; the default per-device MTBF (50,700 h, from Llama 3's interruption
count), 30-minute checkpoints at 1 TB/s aggregate storage bandwidth.
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
    ap.add_argument("--devices", type=int, default=16_384)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    host = build_host()
    fam: ModelFamily = host.models.get("llama")
    model = fam.configure({"preset": "llama-3-405b", "seq_len": 8192})
    gpu = host.backends.get("gpu")
    dev = gpu.devices()["h100-sxm"]
    n = args.devices
    par = Parallelism(data=max(1, n // 128), tensor=8, pipeline=16, sequence=True, zero=1)
    system = System("h100", "gpu", dev, par.devices, par, topology_from_device(dev))
    compiled = gpu.compile(model, system)
    t_setup = time.perf_counter() - t0

    cfg = TrainingConfig.model_validate(
        {
            "global_batch": 16 * par.data,
            "seq_len": 8192,
            "steps": args.steps,
            "recompute": "full",
            "seeds": args.seeds,
            "failures": {
                "checkpoint_interval": "30 min",
                "restart": "10 min",
                "storage_bandwidth": "1 TB/s",
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
