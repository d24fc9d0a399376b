"""``results.detail``: which event frames a run folder keeps, and how they are written."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.test_serving import compiled
from tests.test_serving import load as requests_frame
from xpusim.engine.conformance import shared_host
from xpusim.engine.detail import DETAIL_LEVELS, frames_at
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import FrameMap, SpilledFrames, collect
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.results import RunResult, SystemResult, write_run
from xpusim.engine.run import load, run_scenario
from xpusim.plugins.workloads.serving.world import simulate_serving

SERVING = """\
name: detail
seed: 3
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  arrivals:
    process: poisson
    rate: 4/s
    count: 12
    prompt_tokens: {dist: constant, value: 128}
    output_tokens: {dist: constant, value: 16}
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
"""


def _run(tmp_path: Path, extra: str) -> Path:
    host = shared_host()
    if "llama" not in host.models:
        pytest.skip("model family `llama` is not registered")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(SERVING + extra, encoding="utf-8")
    _, folder = run_scenario(load(path, host), host, tmp_path / "out", reporters=[])
    return folder


def _parquet(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.parquet")}


def test_frames_at_each_level() -> None:
    """summary keeps no event frame; requests keeps requests and devices (steps where a
    workload has no requests frame); steps keeps them all."""
    serving = {"requests", "steps", "devices"}
    training = {"steps", "devices"}
    assert frames_at("summary", serving) == ()
    assert frames_at("requests", serving) == ("requests", "devices")
    assert frames_at("requests", training) == ("steps", "devices")
    assert frames_at("steps", serving) == ("requests", "steps", "devices")
    assert frames_at("steps", training) == ("steps", "devices")
    assert DETAIL_LEVELS == ("summary", "requests", "steps")


def test_default_serving_folder_has_no_step_rows(tmp_path: Path) -> None:
    """A serving scenario without a results block writes requests and devices, not steps."""
    folder = _run(tmp_path, "")
    assert _parquet(folder) == {"summary.parquet", "requests.parquet", "devices.parquet"}
    assert pl.read_parquet(folder / "requests.parquet").height == 12


@pytest.mark.parametrize(
    ("detail", "files"),
    [
        ("summary", {"summary.parquet"}),
        ("steps", {"summary.parquet", "requests.parquet", "steps.parquet", "devices.parquet"}),
    ],
)
def test_detail_level_picks_the_files(tmp_path: Path, detail: str, files: set[str]) -> None:
    """``results: {detail: ...}`` decides which Parquet files the folder holds, and the
    summary is the same at every level."""
    folder = _run(tmp_path, f"results: {{detail: {detail}}}\n")
    assert _parquet(folder) == files
    other = _run(tmp_path / "default", "")
    assert (folder / "summary.json").read_text() == (other / "summary.json").read_text()


def test_unknown_detail_is_a_scenario_error(tmp_path: Path) -> None:
    """A misspelled level is an input error naming the key and the valid levels."""
    host = shared_host()
    if "llama" not in host.models:
        pytest.skip("model family `llama` is not registered")
    path = tmp_path / "s.yaml"
    path.write_text(SERVING + "results: {detail: everything}\n", encoding="utf-8")
    with pytest.raises(XpusimError) as err:
        load(path, host)
    msg = str(err.value)
    assert "results.detail" in msg
    assert "steps" in msg and "summary" in msg


def _serve(tmp_path: Path, spill: int | None) -> FrameMap:
    """300 requests on 2 replicas, spilled past ``spill`` rows when given."""
    res = simulate_serving(
        requests_frame(300, rate="40/s", prompt=200),
        compiled(2),
        system="s",
        replicas=2,
        devices_per_replica=1,
        scheduler=SchedulerSpec(),
        spill_rows=spill,
        spill_dir=str(tmp_path) if spill else None,
    )
    return res.frames


def test_spilled_frames_left_out_are_dropped_not_collected(tmp_path: Path) -> None:
    """A spilled run written at ``requests`` streams requests and devices into the folder,
    removes the spill folder and drops the steps frame (its parts are gone) instead of
    reading it into memory; the written frames equal the in-memory run's."""
    frames = _serve(tmp_path, 100)
    assert isinstance(frames, SpilledFrames)
    spill_path = frames.spill.path
    system = SystemResult(name="s", backend="fake", device="chip", count=2, frames=frames)
    run = RunResult(scenario="x", seed=0, version="t", systems=[system], detail="requests")
    folder = write_run(run, tmp_path / "run")
    assert spill_path is not None and not spill_path.exists()
    assert _parquet(folder) == {"summary.parquet", "requests.parquet", "devices.parquet"}
    assert "steps" not in system.frames
    mem = _serve(tmp_path, None)
    for name in ("requests", "devices"):
        assert_frame_equal(pl.read_parquet(folder / f"{name}.parquet"), collect(mem[name]))
