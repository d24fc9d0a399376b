"""Hostile-input harness: how long each bad-input case takes to be refused, and how.

Run by hand (never as a timed test)::

    python benchmarks/hostile.py                          # every case of the corpus
    python benchmarks/hostile.py --only trust- --json benchmarks/out/hostile.json

Each case of ``tests/bad_inputs/cases.yaml`` runs once through the installed ``xpusim``
console script, in its own process with a 2 GiB address-space limit, from a fresh copy of
the corpus (large inputs generated as the test suite generates them). For each case the
harness records the exit status, the wall time from spawning the process to its exit,
whether standard error held a traceback, and the first 160 characters of the message.
It prints a table, the slowest cases and the cases that did not end in exit 2 without a
traceback, and writes everything as JSON to ``--json`` (default
``benchmarks/out/hostile.json``). The target is every case refused with exit 2 "within a
few seconds"; the figures move with the machine's load, so report the machine with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_bad_inputs import CASES, XPUSIM, _prepare  # noqa: E402

MEMORY_LIMIT = 2 * 2**30
"""Address space of each case's process (as in tests/test_hostile_limits.py)."""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one case in a fresh folder; its exit status, wall time and message."""
    work = Path(tempfile.mkdtemp(prefix="xpusim-hostile-"))
    try:
        argv, _, _ = _prepare(case, work)
        env = {**os.environ, "XPUSIM_ALLOW_MODULES": "", "COLUMNS": "200"}
        env.update({k: v.replace("{in}", str(work / "in")) for k, v in case.get("env", {}).items()})
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                [str(XPUSIM), *argv],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=_limited,
                check=False,
            )
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, err = None, ""
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "id": case["id"],
        "exit": code,
        "wall_s": round(wall, 3),
        "traceback": "Traceback" in err,
        "message": err.strip()[:160],
    }


def main() -> None:
    """Run the cases, print the figures and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/out/hostile.json")
    args = parser.parse_args()
    if not XPUSIM.exists():
        sys.exit(f"the xpusim console script is not installed beside {sys.executable}")
    rows = [run_case(c, args.timeout) for c in CASES if args.only in c["id"]]
    for r in rows:
        print(f"{r['id']:<52} exit {r['exit']!s:>4}  {r['wall_s']:7.2f} s")
    walls = sorted(r["wall_s"] for r in rows)
    bad = [r for r in rows if r["exit"] != 2 or r["traceback"]]
    summary = {
        "cases": len(rows),
        "median_s": walls[len(walls) // 2] if walls else None,
        "max_s": walls[-1] if walls else None,
        "not_exit_2": [r["id"] for r in bad],
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
    }
    print(json.dumps(summary, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "cases": rows}, indent=1) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
