"""Bounded memory: frames spill to Parquet parts past a row threshold and read the same."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.test_serving import compiled, load
from xpusim.engine.frames import (
    CODE_DTYPE,
    PART_SUFFIX,
    FrameBuffer,
    Packing,
    Spill,
    SpilledFrames,
    collect,
    frame_height,
    scan_parts,
    spill_rows,
)
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.report.timeline import build_trace
from xpusim.engine.results import RunResult, SystemResult, write_run
from xpusim.plugins.workloads.serving.cluster import RequestTable
from xpusim.plugins.workloads.serving.metrics import inverted_cdf_rank, serving_metrics
from xpusim.plugins.workloads.serving.schemas import STEPS_SCHEMA
from xpusim.plugins.workloads.serving.steplog import StepLog
from xpusim.plugins.workloads.serving.world import ServingResult, simulate_serving

SPILL = 23
"""A threshold far below the rows of the runs here, so every frame spills in many parts."""


Kind = Literal["static", "continuous", "chunked-prefill"]


def serve(
    kind: Kind, spill_dir: Path | None = None, spill: int | None = None, progress: object = None
) -> ServingResult:
    """400 requests on 3 replicas of 2 devices with a small KV cache: preemptions, and
    prompts too long for the cache dropped with a reason."""
    return simulate_serving(
        load(400, rate="60/s", prompt=700),
        compiled(6),
        system="s",
        replicas=3,
        devices_per_replica=2,
        scheduler=SchedulerSpec(kind=kind),
        kv_block_tokens=16,
        kv_capacity_tokens=1500,
        spill_rows=spill,
        spill_dir=None if spill_dir is None else str(spill_dir),
        progress=progress,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["static", "continuous", "chunked-prefill"])
def test_spilled_frames_and_metrics_equal_the_in_memory_ones(kind: Kind, tmp_path: Path) -> None:
    """With a tiny threshold every event frame is a LazyFrame over part files whose rows,
    order and dtypes equal the in-memory frames, and every metric is exactly equal."""
    mem = serve(kind)
    spilled = serve(kind, tmp_path, SPILL)
    assert not isinstance(mem.frames, SpilledFrames)
    assert isinstance(spilled.frames, SpilledFrames)
    for name in ("requests", "steps", "devices"):
        assert isinstance(mem.frames[name], pl.DataFrame)
        assert isinstance(spilled.frames[name], pl.LazyFrame), name
    assert spilled.frames.spill.parts > 10
    for name, frame in mem.frames.items():
        assert_frame_equal(collect(spilled.frames[name]), collect(frame))
    req = collect(mem.frames["requests"])
    assert (req["status"] == "dropped").sum() > 0
    if kind != "static":
        assert req["preemptions"].sum() > 0
    assert spilled.simulated_s == mem.simulated_s
    for slo in ({}, {"ttft_slo_s": 0.5, "tbt_slo_s": 0.02}):
        m_mem = serving_metrics(mem.frames, mem.simulated_s, **slo)
        m_spill = serving_metrics(spilled.frames, spilled.simulated_s, **slo)
        assert m_spill == m_mem


def test_spill_folder_is_removed_on_close_and_on_garbage_collection(tmp_path: Path) -> None:
    """The spill folder lives under the given parent while the frames do; closing the spill
    removes it, and so does dropping the frames."""
    res = serve("continuous", tmp_path, SPILL)
    assert isinstance(res.frames, SpilledFrames)
    folder = res.frames.spill.path
    assert folder is not None and folder.parent == tmp_path
    assert any(folder.glob(f"*{PART_SUFFIX}"))
    res.frames.spill.close()
    assert not folder.exists()
    assert res.frames.spill.closed

    res = serve("continuous", tmp_path, SPILL)
    assert isinstance(res.frames, SpilledFrames)
    folder = res.frames.spill.path
    assert folder is not None and folder.exists()
    del res
    gc.collect()
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_spill_folder_is_removed_when_the_simulation_fails(tmp_path: Path) -> None:
    """A failure halfway through a spilling run (here the progress callback) leaves no
    spill folder behind."""

    def boom(done: float, total: float) -> None:
        if done > total / 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        serve("continuous", tmp_path, SPILL, progress=boom)
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_write_run_streams_spilled_frames_and_removes_the_spill(tmp_path: Path) -> None:
    """write_run writes the same Parquet rows from spilled frames as from in-memory ones,
    removes the spill folder, and leaves the result's frames readable from the run folder."""
    mem = serve("continuous")
    spilled = serve("continuous", tmp_path / "spill", SPILL)
    assert isinstance(spilled.frames, SpilledFrames)
    folder = spilled.frames.spill.path
    assert folder is not None

    def result(res: ServingResult) -> RunResult:
        m = serving_metrics(res.frames, res.simulated_s)
        system = SystemResult(
            name="s", backend="fake", device="chip-b", count=6, metrics=m, frames=res.frames
        )
        return RunResult(scenario="spill", seed=3, version="test", systems=[system])

    run_spilled = result(spilled)
    out_mem = write_run(result(mem), tmp_path / "mem")
    out_spill = write_run(run_spilled, tmp_path / "spilled")
    assert not folder.exists()
    assert (out_mem / "summary.json").read_text() == (out_spill / "summary.json").read_text()
    for name in ("requests", "steps", "devices"):
        assert_frame_equal(
            pl.read_parquet(out_spill / f"{name}.parquet"),
            pl.read_parquet(out_mem / f"{name}.parquet"),
        )
        back = run_spilled.systems[0].frames[name]
        assert_frame_equal(collect(back), collect(mem.frames[name]))
    assert_frame_equal(collect(run_spilled.systems[0].frames["tbt"]), mem.frames["tbt"])


def test_timeline_of_a_spilled_run_matches_and_stays_bounded() -> None:
    """The Chrome trace of a spilled run equals the in-memory one when it fits, and the
    lazy per-window aggregation keeps it within max_events when it does not."""
    mem = serve("continuous")
    spilled = serve("continuous", None, SPILL)

    def run(res: ServingResult) -> RunResult:
        system = SystemResult(
            name="s",
            backend="fake",
            device="chip-b",
            count=6,
            metrics={"simulated_s": res.simulated_s},
            frames=res.frames,
        )
        return RunResult(scenario="spill", seed=3, version="test", systems=[system])

    assert build_trace(run(spilled)) == build_trace(run(mem))
    small = build_trace(run(spilled), max_events=500)
    assert 0 < small["otherData"]["events"] <= 500
    assert "window" in small["otherData"]["reduction"]
    assert small["otherData"]["intervals"] == (
        frame_height(mem.frames["steps"])
        + collect(mem.frames["devices"]).filter(pl.col("state") != "idle").height
    )


@pytest.mark.parametrize("loop", ["python", "native"])
def test_a_spilled_run_frees_its_world_without_a_collection(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a spilling run returns, its request table and step logs are freed by reference
    counting alone (the world runs no full collection for them), on both loops."""
    monkeypatch.setenv("XPUSIM_SERVING_LOOP", loop)
    gc.collect()
    gc.disable()
    try:
        res = serve("continuous", tmp_path, SPILL)
        # type(), not isinstance(): no attribute of any other object is read (some warn)
        alive = [type(o).__name__ for o in gc.get_objects() if type(o) in (RequestTable, StepLog)]
    finally:
        gc.enable()
    assert isinstance(res.frames, SpilledFrames)
    assert alive == []


def test_frame_buffer_keeps_row_order_across_parts(tmp_path: Path) -> None:
    """Slices added to a buffer come back in order: in memory below the threshold, as a
    LazyFrame over parts and the tail above it."""
    spill = Spill(10, tmp_path)
    rows = [
        pl.DataFrame(
            {"system": ["s"] * k, "replica": [0] * k, "step": list(range(k))},
            schema={c: STEPS_SCHEMA[c] for c in ("system", "replica", "step")},
        )
        for k in (4, 7, 3, 12, 2)
    ]
    schema = dict(rows[0].schema)
    small = FrameBuffer(spill, "small", schema)
    small.add(rows[0])
    assert isinstance(small.frame(), pl.DataFrame)
    assert not spill.used
    big = FrameBuffer(spill, "big", schema)
    for r in rows:
        big.add(r)
    out = big.frame()
    assert isinstance(out, pl.LazyFrame)
    assert len(big.parts) == 2
    assert_frame_equal(out.collect(), pl.concat(rows))
    spill.close()
    assert not any(tmp_path.iterdir())


def test_a_packed_buffer_unpacks_to_its_schema_in_memory_and_spilled(tmp_path: Path) -> None:
    """A packed buffer holds its rows without the fixed columns and with codes for the
    coded ones, spills them so, and gives back the frame of its schema either way,
    labels added after the rows were coded included."""
    schema = {c: STEPS_SCHEMA[c] for c in ("system", "replica", "step", "state")}
    labels = ["busy"]
    packing = Packing(fixed={"system": "h100x2", "replica": 1}, coded={"state": labels})
    packed = packing.packed_schema(schema)
    assert packed == {"step": pl.Int64(), "state": CODE_DTYPE}
    rows = [
        pl.DataFrame({"step": [0, 1, 2], "state": [0, 0, 0]}, schema=packed),
        pl.DataFrame({"step": [3, 4], "state": [1, 0]}, schema=packed),
    ]
    labels.append("prefill")  # a state met after the first rows were coded
    want = pl.DataFrame(
        {
            "system": ["h100x2"] * 5,
            "replica": [1] * 5,
            "step": [0, 1, 2, 3, 4],
            "state": ["busy", "busy", "busy", "prefill", "busy"],
        },
        schema=schema,
    )
    for rows_held in (100, 2):
        spill = Spill(rows_held, tmp_path)
        buf = FrameBuffer(spill, "steps", schema, packing)
        for r in rows:
            buf.add(r)
        out = buf.frame()
        assert isinstance(out, pl.LazyFrame) == (rows_held == 2)
        assert_frame_equal(collect(out), want)
        if buf.parts:  # the parts hold the packed columns
            assert scan_parts(buf.parts).collect_schema() == pl.Schema(packed)
        spill.close()
    assert_frame_equal(FrameBuffer(Spill(5), "none", schema, packing).frame(), want.clear())


def test_a_full_spill_disk_is_told_with_the_folder_and_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that cannot be written (a full disk) raises an OSError that names the part,
    the folder, the space there and the two settings that help, and leaves no half-written
    part behind; parked columns likewise."""
    spill = Spill(10, tmp_path)
    spill.write(pl.DataFrame({"a": [1, 2]}), "first")

    def full(self: pl.DataFrame, path: Path, **_: object) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_ipc", full)
    with pytest.raises(OSError, match="No space left") as err:
        spill.write(pl.DataFrame({"a": [3]}), "second")
    text = str(err.value)
    assert err.value.errno == 28
    assert "second-000002.arrow" in text and str(spill.path) in text
    assert "MiB of parts" in text and "MiB free" in text
    assert "XPUSIM_SPILL_DIR" in text and "XPUSIM_SPILL_ROWS (now 10 rows)" in text
    assert spill.path is not None
    assert sorted(p.name for p in spill.path.iterdir()) == ["first-000001.arrow"]

    def no_room(path: object, values: object, **_: object) -> None:
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(np, "save", no_room)
    with pytest.raises(OSError, match=r"spill part parked-000003\.npy .*disk quota exceeded"):
        spill.park(np.arange(4), "parked")
    spill.close()


def test_spill_threshold_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit threshold wins, then XPUSIM_SPILL_ROWS, then the default; nonsense is
    refused with the variable named."""
    monkeypatch.delenv("XPUSIM_SPILL_ROWS", raising=False)
    assert spill_rows() == 1_000_000
    monkeypatch.setenv("XPUSIM_SPILL_ROWS", "250_000")
    assert spill_rows() == 250_000
    assert spill_rows(5) == 5
    monkeypatch.setenv("XPUSIM_SPILL_ROWS", "many")
    with pytest.raises(ValueError, match="XPUSIM_SPILL_ROWS"):
        spill_rows()
    with pytest.raises(ValueError, match="at least 1"):
        spill_rows(0)


def test_inverted_cdf_rank_matches_numpy() -> None:
    """The rank the lazy percentile picks is numpy's inverted-CDF observation."""
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 4, 7, 10, 99, 100, 101, 1000, 12345]:
        v = np.sort(rng.random(n))
        for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
            want = np.percentile(v, q * 100, method="inverted_cdf")
            assert v[inverted_cdf_rank(n, q)] == want, (n, q)
