"""Size limits, checked before the work, under a memory limit the inputs would blow.

Each case runs the real ``xpusim`` command in its own process with its address space
capped (``ulimit -v`` through ``resource.setrlimit``) at 2 GiB, far less than the inputs:
20 GiB sparse files as a scenario, an ``extends:`` target, a trace, a points file and a
compared run's ``summary.json``; ``/dev/zero``; a training run of a trillion steps or
1e308 tokens; a YAML alias bomb in a ``--set`` value; an offline run of 10^8 inputs
(above the work budget; with the budget raised, more than 2 GiB holds: running out of
memory is an input error too); nine million spiking samples; a million serving devices;
a hundred million model layers. Every one must end with exit 2 and
one paragraph naming the input, never a ``MemoryError`` traceback, a kill or a hang
(each process has a timeout).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "bad_inputs"
XPUSIM = Path(sys.executable).with_name("xpusim")
MEMORY_LIMIT = 2 * 2**30
"""Address space of each case's process: enough for xpusim itself, not for its inputs."""

BOMB = (
    "["
    + ", ".join(
        [f"&a{0} [x,x,x,x,x,x,x,x,x,x]"]
        + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    )
    + "]"
)
"""A ``--set`` value that expands to 10^9 values through YAML aliases."""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


TRAINING = ["run", str(CORPUS / "training_base.yaml"), "--out", "{tmp}/out"]

CASES = {
    "scenario-20GiB": (["validate", "{tmp}/huge.yaml"], "huge.yaml", "20.0 GiB"),
    "extends-20GiB": (["validate", "{tmp}/extends.yaml"], "huge.yaml", "20.0 GiB"),
    "scenario-dev-zero": (["run", "/dev/zero", "--out", "{tmp}/out"], "/dev/zero", "device"),
    "trace-20GiB": (
        ["validate", str(CORPUS / "trace_base.yaml"), "--set", "workload.trace.path={tmp}/t.csv"],
        "t.csv",
        "the limit is 4.0 GiB",
    ),
    "points-20GiB": (
        ["calibrate", "--backend", "gpu", "--points", "{tmp}/points.json"],
        "points.json",
        "20.0 GiB",
    ),
    "compared-summary-20GiB": (
        ["compare", "{tmp}/run", "--out", "{tmp}/c.html"],
        "summary.json",
        "20.0 GiB",
    ),
    "training-trillion-steps": (
        [*TRAINING, "--set", "workload.steps=1000000000000"],
        "workload.steps",
        "less than or equal to",
    ),
    "training-1e308-tokens": (
        [*TRAINING, "--set", "workload.steps=null", "--set", "workload.tokens=1.0e308"],
        "workload.tokens",
        "less than or equal to",
    ),
    "offline-hundred-million-inputs": (
        [
            "run",
            str(CORPUS / "base.yaml"),
            "--out",
            "{tmp}/out",
            "--set",
            "workload={kind: offline, count: 100000000}",
        ],
        "at workload",
        "above the work budget",
    ),
    "offline-hundred-million-inputs-budget-raised": (
        [
            "run",
            str(CORPUS / "base.yaml"),
            "--out",
            "{tmp}/out",
            "--max-events",
            "1e15",
            "--set",
            "workload={kind: offline, count: 100000000}",
        ],
        "at workload",
        "ran out of memory",
    ),
    "spiking-nine-million-samples": (
        [
            "run",
            str(CORPUS / "spiking_base.yaml"),
            "--out",
            "{tmp}/out",
            "--set",
            "workload.samples=9000000",
        ],
        "at workload",
        "above the work budget",
    ),
    "serving-a-million-devices": (
        [
            "run",
            str(CORPUS / "base.yaml"),
            "--out",
            "{tmp}/out",
            "--set",
            "systems.0.count=1000000",
        ],
        "at workload",
        "above the work budget",
    ),
    "model-layers-a-hundred-million": (
        [
            "run",
            str(CORPUS / "base.yaml"),
            "--out",
            "{tmp}/out",
            "--set",
            "model.layers=100000000",
        ],
        "model.layers",
        "at most 10,000 layers",
    ),
    "set-alias-bomb": (
        ["validate", str(CORPUS / "base.yaml"), "--set", f"description={BOMB}"],
        "--set",
        "more than 1,000,000 values",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_the_work_under_a_memory_limit(case: str, tmp_path: Path) -> None:
    """Exit 2 with the place and the limit, in a 2 GiB process, within a minute, writing
    nothing."""
    if not XPUSIM.exists():
        pytest.skip("the xpusim console script is not installed beside this interpreter")
    args, place, expect = CASES[case]
    big = 20 * 2**30
    _sparse(tmp_path / "huge.yaml", big)
    (tmp_path / "extends.yaml").write_text("extends: huge.yaml\nname: x\n", encoding="utf-8")
    _sparse(tmp_path / "t.csv", big)
    _sparse(tmp_path / "points.json", big)
    (tmp_path / "run").mkdir()
    _sparse(tmp_path / "run" / "summary.json", big)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [str(XPUSIM), *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    env = {**os.environ, "XPUSIM_ALLOW_MODULES": "", "COLUMNS": "200"}
    proc = subprocess.run(
        argv,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited,
        check=False,
    )
    message = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, message[-1500:])
    assert "Traceback" not in message and "MemoryError" not in message
    assert message.startswith("error: ") and "\n" not in message, message
    assert place in message and expect in message, message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
