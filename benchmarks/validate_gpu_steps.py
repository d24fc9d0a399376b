"""Price the measured small-Llama steps of a GPU points file and compare.

``benchmarks/gpu_measure.sh`` times one decode step of a small Llama-shaped model (eager,
and replayed as a CUDA graph) and the prefill of one prompt (eager), and keeps them in the
points file's ``decode_step`` entry. This harness traces the very same module
(``benchmarks/gpu_step_modules.py``, the ``torch`` model family on ``meta``), prices it on
the file's GPU with the built-in parameters (stated defaults and the public kernel fit)
and, with ``--calibration``, with a fitted calibration, and prints predicted against
measured: the decode step against its graph replay (the GPU's time alone, as the cost
model prices it), the prefill against its eager time (large kernels: launching is
hidden). Each op of the trace is listed with ``--ops``.

Usage::

    python benchmarks/validate_gpu_steps.py [--points FILE] [--calibration FILE] [--ops]
                                            [--json OUT]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (REPO, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from xpusim.engine.collectives import topology_from_device  # noqa: E402
from xpusim.engine.graph import STRIDED, Phase, Shape  # noqa: E402
from xpusim.engine.model import ModelGraph  # noqa: E402
from xpusim.engine.system import Parallelism, System  # noqa: E402
from xpusim.plugins.gpu import points as points_mod  # noqa: E402
from xpusim.plugins.gpu.backend import GpuBackend  # noqa: E402
from xpusim.plugins.gpu.catalog import resolve  # noqa: E402
from xpusim.plugins.gpu.efficiency import GpuCostModel  # noqa: E402
from xpusim.plugins.models.custom import FAMILIES  # noqa: E402

DEFAULT_POINTS = REPO / "calibrations" / "points" / "h100-sxm-2026-12-06.points.json"
MODULE = "gpu_step_modules"


def models(step: Mapping[str, Any]) -> tuple[ModelGraph, ModelGraph]:
    """The decode and prefill models of a points file's ``decode_step`` entry."""
    os.environ["XPUSIM_ALLOW_MODULES"] = ",".join(
        filter(None, (os.environ.get("XPUSIM_ALLOW_MODULES", ""), MODULE))
    )
    dims = {k: int(step[k]) for k in ("layers", "hidden", "heads", "kv_heads")}
    head = dims["hidden"] // dims["heads"]
    cache = {"shape": [step["batch"], dims["kv_heads"], step["context"], head], "dtype": "bf16"}
    family = FAMILIES[0]
    decode = family.configure(
        {
            "name": "small-llama-decode",
            "module": f"{MODULE}:decode",
            "kwargs": dims,
            "inputs": {
                "x": {"shape": [step["batch"], dims["hidden"]], "dtype": "bf16"},
                "k_cache": cache,
                "v_cache": cache,
            },
        }
    )
    prefill = family.configure(
        {
            "name": "small-llama-prefill",
            "module": f"{MODULE}:prefill",
            "kwargs": dims,
            "inputs": {
                "x": {"shape": [1, step["prefill_tokens"], dims["hidden"]], "dtype": "bf16"}
            },
        }
    )
    return decode, prefill


def compare(
    device: str, step: Mapping[str, Any], calibration: str | None, ops: bool
) -> dict[str, Any]:
    """Predicted and measured seconds of the two steps under one set of parameters."""
    spec = resolve(device)
    # the module calls PyTorch's SDPA over contiguous tensors: priced as that build
    options: dict[str, Any] = {"attention_kernel": "torch-sdpa"}
    if calibration:
        options["calibration"] = calibration
    system = System("sut", "gpu", spec, 1, Parallelism(), topology_from_device(spec), options)
    backend = GpuBackend()
    out: dict[str, Any] = {"parameters": calibration or "built-in"}
    decode, prefill = models(step)
    cases = (
        ("decode", decode, Shape(Phase.FORWARD, batch=int(step["batch"])), step["graph_s"]),
        ("prefill", prefill, Shape(Phase.FORWARD, batch=1), step["prefill_eager_s"]),
    )
    for name, model, shape, measured in cases:
        predicted = backend.compile(model, system).cost(shape).seconds
        out[name] = {"predicted_s": predicted, "measured_s": measured}
        out[name]["error"] = predicted / measured - 1.0
        if ops:
            eff, _src = backend.efficiency(system)
            cost = GpuCostModel(spec, eff, attention_kernel="torch-sdpa")
            for op in model.build(shape).ops:
                t = cost(op).seconds
                how = "strided" if op.attr(STRIDED) else ""
                print(
                    f"    {name:<8} {op.name:<44} x{op.count:<3} {op.kind.name.lower():<12} "
                    f"{how:<8}{t * 1e6:8.1f} us each, {t * op.count * 1e6:8.1f} us in all"
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print predicted against measured for the built-in parameters and a calibration."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=Path, default=DEFAULT_POINTS)
    ap.add_argument("--calibration", default=None, help="a fitted calibration to compare too")
    ap.add_argument("--ops", action="store_true", help="list each op's predicted time")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/out/validate_gpu_steps.json")
    args = ap.parse_args(argv)
    pts = points_mod.load(args.points)
    step = pts.extra.get("decode_step")
    if not isinstance(step, Mapping) or "graph_s" not in step or "prefill_eager_s" not in step:
        print(f"{args.points}: no measured decode and prefill steps (decode_step)", file=sys.stderr)
        return 2
    print(f"{pts.device}, measured {pts.date} on {pts.measured_on}")
    print(
        f"small Llama: {step['layers']} layers, hidden {step['hidden']}, {step['heads']} "
        f"heads ({step['kv_heads']} KV), bf16; decode batch {step['batch']} at "
        f"{step['context']} cached tokens, prefill of {step['prefill_tokens']} tokens"
    )
    rows = []
    for cal in (None, args.calibration) if args.calibration else (None,):
        res = compare(pts.device, step, cal, args.ops)
        rows.append(res)
        for name in ("decode", "prefill"):
            r = res[name]
            print(
                f"{res['parameters']:<40} {name:<8} predicted {r['predicted_s'] * 1e3:7.3f} ms  "
                f"measured {r['measured_s'] * 1e3:7.3f} ms  {r['error']:+6.1%}"
            )
    print(
        f"eager decode step {step['eager_s'] * 1e3:.3f} ms against its graph replay "
        f"{step['graph_s'] * 1e3:.3f} ms: {step['eager_s'] / step['graph_s'] - 1:+.1%} of "
        f"host launch cost not hidden by the GPU's own time"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"points": str(args.points), "step": dict(step), "rows": rows}, indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
