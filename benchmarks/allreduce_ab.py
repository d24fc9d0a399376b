"""Check the serving engines' all-reduce kernel against published before/after runs.

``benchmarks/allreduce_ab.yaml`` lists runs of one benchmark published before and after
an engine replaced NCCL with its own peer-to-peer all-reduce kernel (vLLM's custom
all-reduce, vllm-project/vllm#2192). Each is replayed as the batch it timed (one batch of
``batch`` prompts of ``input`` tokens run to ``output`` tokens, vLLM's
``benchmark_latency.py``, under that release's token budget ``max_batch_tokens``) twice under the ``vllm-0.6`` stack, with ``allreduce:
library`` and with ``allreduce: vllm``; everything else is the same, so the predicted
saving is the mechanism's alone and is compared with the measured one. The absolute
times are printed too; they carry the rest of the model and that engine release's other
costs, which the saving does not.

Usage::

    python benchmarks/allreduce_ab.py [--json OUT]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.host import Host, build_host  # noqa: E402
from xpusim.engine.run import simulate  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402

RUNS = Path(__file__).with_name("allreduce_ab.yaml")
STACK = "vllm-0.6"
"""The profile both replays run under; only its ``allreduce`` differs between them."""


def load_runs(path: Path = RUNS) -> list[dict[str, Any]]:
    """The before/after runs of the file."""
    return list(yaml.safe_load(path.read_text(encoding="utf-8")))


def scenario(run: dict[str, Any], kernel: str) -> dict[str, Any]:
    """The scenario of ``run`` with its all-reduces on ``kernel``."""
    n = int(run["batch"])
    return {
        "name": f"ab-{run['id']}-{kernel}",
        "seed": 0,
        "model": dict(run["model"]),
        "workload": {
            "kind": "offline",
            "count": n,
            "prompt_tokens": {"dist": "constant", "value": int(run["input"])},
            "output_tokens": {"dist": "constant", "value": int(run["output"])},
            "scheduler": {
                "kind": "continuous",
                "max_batch": max(n, 256),
                "max_batch_tokens": int(run["max_batch_tokens"]),
            },
            "stack": {"name": STACK, "allreduce": kernel},
        },
        "systems": [
            {
                "name": f"{run['device']}-tp{run['tp']}",
                "backend": "gpu",
                "device": run["device"],
                "count": int(run["tp"]),
                "parallelism": {"tensor": int(run["tp"])},
            }
        ],
    }


def batch_seconds(host: Host, run: dict[str, Any], kernel: str) -> float:
    """Predicted wall time of ``run``'s batch with its all-reduces on ``kernel``."""
    sc = resolve(scenario(run, kernel), Source(run["id"]), host, REPO)
    res = simulate(sc, host).systems[0]
    if res.status != "ok":
        raise RuntimeError(f"{run['id']}: {res.status}: {res.reason}")
    return float(res.metrics["simulated_s"])


def main(argv: list[str] | None = None) -> int:
    """Replay every run both ways and print the measured and predicted savings."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    host = build_host()
    out = []
    print(f"{'run':38s} {'measured s':>17s} {'predicted s':>17s} {'saving':>16s}")
    for run in load_runs():
        before, after = float(run["before_s"]), float(run["after_s"])
        p_before = batch_seconds(host, run, "library")
        p_after = batch_seconds(host, run, "vllm")
        saved, p_saved = before - after, p_before - p_after
        rec = {
            "id": run["id"],
            "measured": {"before_s": before, "after_s": after, "saving_s": saved},
            "predicted": {"before_s": p_before, "after_s": p_after, "saving_s": p_saved},
            "saving_error": p_saved / saved - 1,
        }
        out.append(rec)
        print(
            f"{run['id']:38s} {before:7.2f} -> {after:6.2f} {p_before:7.2f} -> {p_after:6.2f} "
            f"{saved:5.2f} vs {p_saved:5.2f} s ({100 * rec['saving_error']:+.1f}%)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": out}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
