"""A sweep on a real Dask cluster survives a worker killed in the middle.

The test starts ``dask scheduler`` and two ``dask worker`` processes on localhost, runs a
sweep through the dask executor, SIGKILLs one worker as soon as the first point is back,
and checks that every point finished exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from xpusim.engine.host import build_host
from xpusim.engine.scenario import read_scenario_data
from xpusim.engine.sweep import run_sweep

pytest.importorskip("distributed")

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).with_name("dask"))

SCENARIO: dict[str, Any] = {
    "name": "sweep-dask",
    "seed": 3,
    "model": {"family": "llama", "preset": "llama-2-7b", "dtype": "bf16"},
    "workload": {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": "6/s",
            "count": 30,
            "prompt_tokens": {"dist": "lognormal", "median": 500, "sigma": 0.8, "max": 2048},
            "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.8, "max": 512},
        },
        "scheduler": {"kind": "continuous", "max_batch": 64},
    },
    "systems": [
        {"name": "h100", "backend": "gpu", "device": "h100-sxm"},
        {"name": "a100", "backend": "gpu", "device": "a100-sxm-80gb"},
    ],
    "sweep": {"grid": {"workload.scheduler.max_batch": [4, 8, 16, 32, 64, 128], "seed": [1, 2]}},
}


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a dask command in its own session, logging to ``log``."""
    with log.open("wb") as fh:
        return subprocess.Popen(
            [DASK, *args], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` and its process group, killing it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two single-threaded, nanny-less workers on 127.0.0.1."""
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                [
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(sched_file),
                ],
                tmp_path / "scheduler.log",
            )
        )
        for _ in range(200):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for k in range(2):
            procs.append(
                _start(
                    [
                        "worker",
                        "--scheduler-file",
                        str(sched_file),
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--local-directory",
                        str(tmp_path / f"w{k}"),
                    ],
                    tmp_path / f"worker{k}.log",
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_worker_killed_mid_sweep_every_point_once(
    tmp_path: Path, cluster: tuple[str, list[subprocess.Popen[bytes]]]
) -> None:
    """Killing one of two workers once results arrive loses no point and duplicates none:
    each point has one complete run folder and one row per system in summary.parquet."""
    address, procs = cluster
    victim = procs[1]
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    out = tmp_path / "out"
    killed_at: list[int] = []

    def progress(done: int, total: int, failed: int) -> None:
        if done >= 1 and not killed_at:
            os.kill(victim.pid, signal.SIGKILL)
            killed_at.append(done)

    data, src = read_scenario_data(path)
    host = build_host()
    res = run_sweep(
        path, data, src, host.executors.get("dask"), out, address=address, progress=progress
    )

    assert killed_at and killed_at[0] < res.points, "the worker was killed mid-sweep"
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert procs[2].poll() is None, "the other worker kept going"
    assert (res.points, res.failed, res.skipped) == (12, 0, 0)

    frame = pl.read_parquet(out / "summary.parquet")
    assert frame.height == 12 * 2
    counts = frame.group_by("point_id", "name").len()
    assert counts.height == 24 and set(counts["len"].to_list()) == {1}
    assert set(frame["status"].to_list()) == {"ok"}, frame.filter(pl.col("status") != "ok")[
        "reason"
    ].to_list()

    folders = sorted(p.name for p in (out / "points").iterdir())
    assert folders == sorted(frame["point_id"].unique().to_list())
    for pid in folders:
        doc = json.loads((out / "points" / pid / "summary.json").read_text())
        assert [s["name"] for s in doc["systems"]] == ["h100", "a100"]
        assert all(s["status"] == "ok" for s in doc["systems"])
    assert not list(out.rglob("*.partial*"))
