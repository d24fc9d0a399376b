"""Run results and the run folder, written whole or not at all.

A :class:`RunResult` holds one :class:`SystemResult` per candidate system. :func:`write_run`
writes the contract's files (``summary.json``, ``summary.parquet``, ``requests.parquet`` or
``steps.parquet``, ``devices.parquet``) and every registered reporter's files into a
temporary sibling folder, then renames it into place in one step, so a crash or a
``kill -9`` never leaves a partial run folder behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from engine.device import Figure
from engine.errors import XpusimError
from engine.reporter import Reporter

STATUSES = ("ok", "unsupported", "does-not-fit", "failed")
"""Values of a system's ``status``."""

FRAME_NAMES = ("requests", "steps", "devices")
"""Event frames a run folder may hold, one Parquet file each."""


@dataclass
class SystemResult:
    """The outcome for one candidate system.

    ``metrics`` holds the summary keys that apply (see DESIGN.md's run-folder contract);
    ``frames`` the event frames; ``figures`` the catalog figures the result relied on,
    by dotted name, for the report's "Assumptions and sources".
    """

    name: str
    backend: str
    device: str
    count: int
    status: str = "ok"
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def summary(self) -> dict[str, Any]:
        """This system's object in ``summary.json``."""
        out: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "count": self.count,
            "status": self.status,
        }
        if self.status != "ok" or self.reason:
            out["reason"] = self.reason
        for k in sorted(self.metrics):
            out[k] = _jsonable(self.metrics[k])
        return out


@dataclass
class RunResult:
    """Everything one scenario run produced."""

    scenario: str
    seed: int
    version: str
    systems: list[SystemResult]
    scenario_data: dict[str, Any] = field(default_factory=dict)
    workload: str = ""
    model: str = ""

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` document (no timestamps: byte-identical for a seed)."""
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "xpusim_version": self.version,
            "workload": self.workload,
            "model": self.model,
            "systems": [s.summary() for s in self.systems],
        }

    def summary_frame(self) -> pl.DataFrame:
        """One row per system with every summary key as a column (nulls where n/a)."""
        rows = [s.summary() for s in self.systems]
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        data = {k: [r.get(k) for r in rows] for k in keys}
        return pl.DataFrame(data, strict=False)

    def frame(self, name: str) -> pl.DataFrame | None:
        """The ``name`` frame of every system stacked (``None`` when no system has it)."""
        parts = [s.frames[name] for s in self.systems if name in s.frames and s.frames[name].height]
        if not parts:
            return None
        return pl.concat(parts, how="diagonal_relaxed")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return None
        return float(f"{v:.12g}")
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def default_out_dir(results_root: Path, name: str, stamp: str) -> Path:
    """``results/<name>-<UTC timestamp>/`` as the contract names it."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"
    return results_root / f"{safe}-{stamp}"


def write_run(run: RunResult, out_dir: Path, reporters: Iterable[Reporter] = ()) -> Path:
    """Write ``run`` into ``out_dir`` whole or not at all and return the folder.

    Files are written into a temporary folder beside ``out_dir`` and renamed into place;
    an existing non-empty ``out_dir`` is an error (a run never overwrites another).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise XpusimError(
            f"output folder {out_dir} already exists and is not empty; a run never "
            f"overwrites another. Choose another --out or remove that folder."
        )
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XpusimError(f"cannot create output folder {parent}: {exc.strerror}.") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    try:
        doc = json.dumps(run.summary(), indent=2, sort_keys=False, allow_nan=False)
        (tmp / "summary.json").write_text(doc + "\n", encoding="utf-8")
        run.summary_frame().write_parquet(tmp / "summary.parquet")
        for name in FRAME_NAMES:
            frame = run.frame(name)
            if frame is not None:
                frame.write_parquet(tmp / f"{name}.parquet")
        for reporter in reporters:
            reporter.write(run, tmp)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
