"""Start-up harness: how long each command takes before it does its work, and why.

Run by hand (never as a timed test)::

    python benchmarks/startup.py                  # 5 runs of each command
    python benchmarks/startup.py --runs 9 --json benchmarks/out/startup.json

Commands measured, each in fresh interpreters from the repository root:

- ``xpusim --help``, ``xpusim version``, ``xpusim plugins`` and
  ``xpusim validate scenarios/quickstart.yaml``: whole-process wall time, from spawning
  the interpreter to its exit.
- ``xpusim run scenarios/quickstart.yaml``: wall time from spawning the interpreter to
  two instants of the run, after which the process stops (the simulation itself is not
  start-up): ``run_started`` (the observer hook fires: plugins, scenario and calibrations
  loaded) and the **first simulated event** (the first ``progress`` report of the
  workload, which the serving world makes at the first request's arrival, after every
  system is compiled). The command runs through the CLI's ``main`` in a small driver that
  registers a ``run_started`` observer and hands ``run_scenario`` a ``progress`` callback
  that records its first call.

For each command the figure is the median of ``--runs`` runs; one more run under
``python -X importtime`` lists the imports that cost the most (top-level entries, by
cumulative time) and the heavy libraries the command imported at all. Prints a table
and writes everything as JSON to ``--json`` (default ``benchmarks/out/startup.json``).
Timings move with the machine's load: on a shared machine, run it when it is idle and
report the machine with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "scenarios/quickstart.yaml"

COMMANDS: list[tuple[str, list[str]]] = [
    ("--help", ["--help"]),
    ("version", ["version"]),
    ("plugins", ["plugins"]),
    ("validate quickstart", ["validate", QUICKSTART]),
    ("run quickstart (to first event)", ["run", QUICKSTART, "--quiet"]),
]
"""(label, arguments) of each command measured."""

HEAVY = (
    "torch",
    "spynnaker",
    "pyNN",
    "spinn_machine",
    "polars",
    "numpy",
    "scipy",
    "matplotlib",
    "simpy",
    "pydantic",
    "rich",
    "dask",
)
"""Libraries whose presence after a command is reported."""

DRIVER = r"""
import json, os, sys, time
from xpusim import hookimpl
from xpusim.engine import cli

marks = {}
path = os.environ["XPUSIM_STARTUP_MARKS"]

def done():
    marks["modules"] = sorted({m.split(".")[0] for m in sys.modules})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(marks, fh)
    sys.stdout.flush()
    os._exit(0)

class Observer:
    @hookimpl
    def run_started(self, scenario, out_dir):
        marks["run_started"] = time.time()

if sys.argv[1:2] == ["run"]:  # only `run` imports the pipeline; others must not
    import xpusim.engine.run as engine_run

    cli._pm().register(Observer(), name="startup-observer")
    inner = engine_run.run_scenario

    def run_scenario(*args, progress=None, **kw):
        def first_event(name, done_, total):
            marks["first_event"] = time.time()
            done()
        return inner(*args, progress=first_event, **kw)

    engine_run.run_scenario = run_scenario
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
marks["exit"] = time.time()
done()
"""
"""Runs the CLI in-process, recording the instants of a ``run`` (see the module text)."""

_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _spawn(
    args: list[str], importtime: bool, marks_file: Path
) -> tuple[float, dict[str, Any], str]:
    """Run ``xpusim ARGS`` through the driver; return (spawn time, marks, stderr)."""
    env = {**os.environ, "XPUSIM_STARTUP_MARKS": str(marks_file), "COLUMNS": "160"}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", DRIVER, *args]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    end = time.time()
    if not marks_file.exists():
        raise SystemExit(f"xpusim {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    marks: dict[str, Any] = json.loads(marks_file.read_text(encoding="utf-8"))
    marks_file.unlink()
    marks.setdefault("exit", end)
    return t0, marks, proc.stderr


def top_imports(stderr: str, n: int = 8) -> list[dict[str, Any]]:
    """The ``n`` top-level imports of an ``-X importtime`` report with the largest
    cumulative time (milliseconds)."""
    rows = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and len(m.group(3)) == 1:  # one space: imported by the program itself
            rows.append(
                {
                    "module": m.group(4),
                    "cumulative_ms": int(m.group(2)) / 1000,
                    "self_ms": int(m.group(1)) / 1000,
                }
            )
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:n]


def measure(label: str, args: list[str], runs: int, work: Path) -> dict[str, Any]:
    """Median start-up of one command over ``runs`` runs, plus one import profile."""
    if args[0] == "run":
        args = [*args, "--out", str(work / "run")]
    is_run = args[0] == "run"
    walls: list[float] = []
    started: list[float] = []
    for _ in range(runs):
        t0, marks, _ = _spawn(args, False, work / "marks.json")
        if is_run:
            if "first_event" not in marks:
                raise SystemExit(f"{label}: the run ended without a simulated event")
            walls.append(marks["first_event"] - t0)
            started.append(marks["run_started"] - t0)
        else:
            walls.append(marks["exit"] - t0)
    _, marks, stderr = _spawn(args, True, work / "marks.json")
    out: dict[str, Any] = {
        "command": "xpusim " + " ".join(a for a in args if not a.startswith(str(work))),
        "label": label,
        "runs": runs,
        "wall_s_median": statistics.median(walls),
        "wall_s": walls,
        "top_imports": top_imports(stderr),
        "heavy_imported": sorted(set(marks["modules"]) & set(HEAVY)),
    }
    if is_run:
        out["what"] = "spawn to the first simulated event"
        out["run_started_s_median"] = statistics.median(started)
    else:
        out["what"] = "spawn to exit"
    return out


def main() -> None:
    """Measure every command, print the figures, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per command (median)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "out" / "startup.json")
    opts = ap.parse_args()
    if opts.runs < 1:
        ap.error("--runs must be at least 1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in COMMANDS:
            r = measure(label, args, opts.runs, Path(tmp))
            results.append(r)
            extra = (
                f" (run_started at {r['run_started_s_median']:.2f} s)"
                if "run_started_s_median" in r
                else ""
            )
            print(f"{label:34} {r['wall_s_median']:6.2f} s median of {opts.runs}{extra}")
            print(f"    heavy libraries imported: {', '.join(r['heavy_imported']) or 'none'}")
            for imp in r["top_imports"][:5]:
                print(f"    {imp['cumulative_ms']:8.1f} ms  {imp['module']}")
    doc = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commands": results,
    }
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"written: {opts.json}")


if __name__ == "__main__":
    main()
