"""xpusim beside the tools people would use instead: wall time and predictions, same cases.

Usage::

    python benchmarks/compare_peers.py [--peer-python PATH] [--case NAME ...]
                                       [--timeout S] [--json OUT]

Cases (each tool in a fresh process, so its wall time includes start-up, as a command
line pays it; ``inner`` is the computation alone):

* ``llama2-7b-a100`` — Llama-2-7B, bf16, one A100 SXM 80GB, batch 1: the prefill of a
  512-token prompt and one decode step over 512 cached tokens. xpusim's GPU backend,
  llm-analysis (``infer``, its ``NousResearch_Llama-2-7b-hf`` config) and GenZ
  (``prefill_moddeling``/``decode_moddeling``, ``meta-llama/Llama-2-7B``).
* ``gemm-256x128x256`` — SCALE-Sim's golden GEMM on a 32×32 weight-stationary array, 64 kB
  SRAMs, 10 words/cycle of DRAM: ``xpusim tpu gemm`` and SCALE-Sim 3.0.
* ``alexnet-conv1`` — AlexNet conv1 (224×224×3, 11×11, 96 filters, stride 4; SCALE-Sim's
  ``alexnet.csv`` row) on the same array and memory: ``xpusim tpu conv`` and SCALE-Sim 3.0.

The peers are optional (see :mod:`peers` for how each is installed) and may live in another
environment: ``--peer-python`` names its interpreter (default: this one). A peer it cannot
import is reported as not installed and the other tools still run. Prints one table with
each tool's wall and inner seconds, its wall time over xpusim's, and the predictions side
by side; writes them as JSON to ``--json`` (default ``benchmarks/out/compare_peers.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

ROOT = Path(__file__).resolve().parents[1]

ALEXNET_CONV1 = "Conv1, 224, 224, 11, 11, 3, 96, 4,"
"""SCALE-Sim's ``topologies/conv_nets/alexnet.csv`` first row."""

Tool = tuple[str, bool, Callable[[], str]]
"""A tool of a case: name, whether it runs under the peer Python, its program."""

CASES: dict[str, list[Tool]] = {
    "llama2-7b-a100": [
        ("xpusim", False, lambda: peers.xpusim_llm("llama-2-7b", "a100-sxm-80gb", 512)),
        (
            "llm-analysis",
            True,
            lambda: peers.llm_analysis_llm("NousResearch_Llama-2-7b-hf", "a100-sxm-80gb", 512),
        ),
        ("genz", True, lambda: peers.genz_llm("meta-llama/Llama-2-7B", "A100_80GB_GPU", 512)),
    ],
    "gemm-256x128x256": [
        (
            "xpusim",
            False,
            lambda: peers.xpusim_tpu(
                "gemm", ["--m", "256", "--n", "128", "--k", "256", "--bandwidth", "10"]
            ),
        ),
        (
            "scalesim",
            True,
            lambda: peers.scalesim("Test1, 256, 128, 256,", True, 32, 32, 64, 10, "ws"),
        ),
    ],
    "alexnet-conv1": [
        (
            "xpusim",
            False,
            lambda: peers.xpusim_tpu(
                "conv",
                [
                    "--ifmap",
                    "224,224,3",
                    "--filter",
                    "11,11",
                    "--filters",
                    "96",
                    "--stride",
                    "4",
                    "--bandwidth",
                    "10",
                ],
            ),
        ),
        ("scalesim", True, lambda: peers.scalesim(ALEXNET_CONV1, False, 32, 32, 64, 10, "ws")),
    ],
}
"""Every case and its tools, xpusim first."""


def _fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.3f} {unit}"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen cases, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--peer-python", default=sys.executable, help="interpreter with the peers installed"
    )
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per tool and case")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "compare_peers.json")
    args = ap.parse_args(argv)
    out: dict[str, object] = {
        "python": platform.python_version(),
        "xpusim_python": sys.executable,
        "peer_python": args.peer_python,
        "cases": {},
    }
    cases: dict[str, object] = {}
    for name in args.case or list(CASES):
        runs = []
        for tool, is_peer, program in CASES[name]:
            python = args.peer_python if is_peer else sys.executable
            run = peers.run_case(tool, python, program(), args.timeout)
            runs.append(run)
        base = runs[0].wall_s if runs[0].status == "ok" else None
        print(f"\n{name}")
        rows = []
        for r in runs:
            ratio = r.wall_s / base if base and r.wall_s and r.status == "ok" else None
            row = asdict(r)
            row["wall_vs_xpusim"] = ratio
            rows.append(row)
            if r.status != "ok":
                print(f"  {r.tool:<13} {r.status}: {r.note}")
                continue
            preds = ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.predictions.items()
            )
            print(
                f"  {r.tool:<13} wall {_fmt(r.wall_s)} (inner {_fmt(r.inner_s)}), "
                f"{'' if ratio is None else f'{ratio:.2f}x xpusim wall; '}{preds}"
            )
        cases[name] = rows
    out["cases"] = cases
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
