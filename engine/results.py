"""Run results and the run folder, written whole or not at all.

A :class:`RunResult` holds one :class:`SystemResult` per candidate system. :func:`write_run`
writes the contract's files (``summary.json``, ``summary.parquet``, ``requests.parquet`` or
``steps.parquet``, ``devices.parquet``, a spiking run's ``operating_points.parquet``) and
every registered reporter's files into a
temporary sibling folder, then renames it into place in one step, so a crash or a
``kill -9`` never leaves a partial run folder behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import polars as pl

from xpusim.engine.detail import Detail, frames_at
from xpusim.engine.device import Figure
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import (
    SPILL_DIR_ENV,
    SPILL_PREFIX,
    SPILL_ROWS_ENV,
    Frame,
    FrameMap,
    SpilledFrames,
    frame_height,
    spill_rows,
)
from xpusim.engine.metrics import Vocabulary, engine_vocabulary
from xpusim.engine.outpaths import check_not_in_run, check_not_symlink, check_writable_parent
from xpusim.engine.procs import alive as _alive
from xpusim.engine.procs import host_tag as _host_tag
from xpusim.engine.reporter import Reporter

STATUSES = ("ok", "unsupported", "does-not-fit", "failed")
"""Values of a system's ``status``."""

FRAME_NAMES = ("requests", "steps", "devices")
"""Event frames a run folder may hold, one Parquet file each."""

POINT_FRAMES = ("operating_points",)
"""Small frames a workload computes beside its events (the spiking workload's operating
points over offered load and input firing rate, with the schema that workload declares),
written as ``<name>.parquet`` at every ``results.detail``."""


def mixed_counts(device: str, counts: Any) -> dict[str, int] | None:
    """``counts`` (devices by kind) when they say more than "``device`` only", else
    ``None``."""
    if not isinstance(counts, Mapping) or not counts:
        return None
    out = {str(k): int(v) for k, v in counts.items()}
    return None if list(out) == [device] else out


def hardware_label(device: str, count: int, counts: Mapping[str, int] | None = None) -> str:
    """``device × count``, or each kind's ``name × n`` joined by `` + ``."""
    if counts:
        return " + ".join(f"{d} × {n}" for d, n in counts.items())
    return f"{device} × {count}"


@dataclass
class SystemResult:
    """The outcome for one candidate system.

    ``metrics`` holds the summary keys that apply (see the run-folder contract in docs/architecture.md);
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
    frames: FrameMap = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    @property
    def device_counts(self) -> dict[str, int] | None:
        """How many devices of each kind the system runs, where that is not just its
        ``count`` of its ``device`` (pools on other chips: ``{"h100-sxm": 2, "h200-sxm":
        6}``); ``None`` otherwise."""
        return mixed_counts(self.device, self.details.get("device_counts"))

    @property
    def hardware(self) -> str:
        """What the system runs on, in words: ``h100-sxm × 8``, or ``h100-sxm × 2 +
        h200-sxm × 6`` for pools on two chips."""
        return hardware_label(self.device, self.count, self.device_counts)

    def summary(self) -> dict[str, Any]:
        """This system's object in ``summary.json``."""
        out: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "count": self.count,
            "status": self.status,
        }
        if self.device_counts is not None:  # pools on other chips: say which
            out["hardware"] = self.hardware
        if self.status != "ok" or self.reason:
            out["reason"] = self.reason
        for k in sorted(self.metrics):
            out[k] = _jsonable(self.metrics[k])
        return out


@dataclass
class RunResult:
    """Everything one scenario run produced.

    ``vocabulary`` holds the metrics its systems may carry (the engine's and those the
    workload declares); every output reads labels, units and directions from it.
    ``detail`` is the scenario's ``results.detail``: which event frames the run folder
    keeps (:mod:`xpusim.engine.detail`); a run built in code keeps every frame unless it
    says otherwise.
    """

    scenario: str
    seed: int
    version: str
    systems: list[SystemResult]
    scenario_data: dict[str, Any] = field(default_factory=dict)
    workload: str = ""
    model: str = ""
    vocabulary: Vocabulary = field(default_factory=engine_vocabulary)
    detail: Detail = "steps"

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

    def frame(self, name: str) -> Frame | None:
        """The ``name`` frame of every system stacked (``None`` when no system has it): a
        DataFrame when every part is in memory, else a LazyFrame (spilled runs), which
        callers query or stream rather than collect whole."""
        parts = [
            s.frames[name]
            for s in self.systems
            if name in s.frames and frame_height(s.frames[name])
        ]
        if not parts:
            return None
        if all(isinstance(p, pl.DataFrame) for p in parts):
            return pl.concat(
                [p for p in parts if isinstance(p, pl.DataFrame)], how="diagonal_relaxed"
            )
        return pl.concat([p.lazy() for p in parts], how="diagonal_relaxed")


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
    """``results/<name>-<UTC timestamp>/`` as the contract names it.

    The scenario name is reduced to letters, digits, ``-``, ``_`` and inner dots (no
    leading dot), so the folder is always a visible direct child of ``results_root``
    whatever the name holds (``../``, ``/``, control characters).
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lstrip(".")
    return results_root / f"{safe[:120] or 'run'}-{stamp}"


PARTIAL_MARK = ".partial-"
"""Temporary run folders are hidden siblings named ``.<name>.partial-<host>-<pid>-<random>``."""

_PARTIAL = re.compile(r"^\..*\.partial-(?P<host>[^/]*)-(?P<pid>\d+)-[^-]+$")


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder a run cannot be written into whole, before any work.

    The folder may not exist yet or be an empty folder. An existing file, a non-empty
    folder (a run never overwrites another), a symbolic link, a path under a file, inside
    another run folder or in a folder that cannot be written is an error.
    """
    out_dir = Path(out_dir)
    try:
        _check_out_dir(out_dir)
    except OSError as exc:  # a path the system cannot even look at (too long, a loop)
        raise XpusimError(
            f"--out {str(out_dir)[:200]}: cannot use this path ({exc.strerror}); choose a "
            f"shorter, plain folder path."
        ) from None


def _check_out_dir(out_dir: Path) -> None:
    check_not_symlink(out_dir, "--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise XpusimError(
            f"--out {out_dir}: this is an existing file, not a folder; a run writes a folder "
            f"of results. Choose a new folder path (it is created)."
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise XpusimError(
            f"output folder {out_dir} already exists and is not empty; a run never "
            f"overwrites another. Choose another --out or remove that folder."
        )
    check_not_in_run(out_dir, "--out")
    check_writable_parent(out_dir, "--out")


def remove_stale_partials(parent: Path) -> int:
    """Remove temporary run folders in ``parent`` whose writing process on this host is
    gone (killed with ``kill -9`` or by the system mid-write); return how many.

    A temporary folder names its host and process id, so a folder that a live process
    (or another machine sharing the folder) is still writing is left alone.
    """
    return _remove_stale(parent, _PARTIAL)


def _remove_stale(parent: Path, pattern: re.Pattern[str]) -> int:
    """Remove the folders in ``parent`` whose names match ``pattern`` (with groups
    ``host`` and ``pid``) and whose process on this host is gone; return how many."""
    removed = 0
    try:
        children = list(Path(parent).iterdir())
    except OSError:
        return 0
    host = _host_tag()
    for child in children:
        m = pattern.match(child.name)
        if m is None or m["host"] != host or _alive(int(m["pid"])) or child.is_symlink():
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed += 1
    return removed


_SPILL = re.compile(r"^" + re.escape(SPILL_PREFIX) + r"(?P<host>[^-/]*)-(?P<pid>\d+)-[^-/]+$")


def spill_parent() -> Path:
    """The folder spill folders are made in: ``$XPUSIM_SPILL_DIR`` or the system's
    temporary folder."""
    return Path(os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir())


def check_spill_settings() -> None:
    """Check ``XPUSIM_SPILL_ROWS`` and ``XPUSIM_SPILL_DIR`` before any work, and remove
    the spill folders killed runs of this machine left in the spill folder.

    A junk row count, or a spill folder that is a file, a broken link or cannot be
    written, is an input error naming the variable, so it cannot end as a ``failed``
    system after the simulation has started.
    """
    try:
        spill_rows()
    except ValueError as exc:
        raise XpusimError(
            f"environment variable {SPILL_ROWS_ENV}: {exc}; set a whole number of rows of "
            f"at least 1 (for example {SPILL_ROWS_ENV}=1000000) or unset it."
        ) from None
    parent = spill_parent()
    env = os.environ.get(SPILL_DIR_ENV)
    where = f"environment variable {SPILL_DIR_ENV}={env}" if env else f"temporary folder {parent}"
    if os.path.lexists(parent) and not parent.is_dir():
        raise XpusimError(
            f"{where}: this is not a folder (a file or a broken link); spilled event rows "
            f"need a folder. Point {SPILL_DIR_ENV} at a folder you can write, or unset it."
        )
    try:
        check_writable_parent(parent / "spill", where)
    except XpusimError as exc:
        raise XpusimError(f"{exc} (Set {SPILL_DIR_ENV} to another folder.)") from None
    remove_stale_spills(parent)


def remove_stale_spills(parent: Path) -> int:
    """Remove the spill folders in ``parent`` whose process on this machine is gone
    (a run killed mid-simulation cannot remove its own); return how many."""
    return _remove_stale(parent, _SPILL)


def write_run(run: RunResult, out_dir: Path, reporters: Iterable[Reporter] = ()) -> Path:
    """Write ``run`` into ``out_dir`` whole or not at all and return the folder.

    Files are written into a temporary folder beside ``out_dir`` and renamed into place;
    an existing non-empty ``out_dir`` is an error (a run never overwrites another). Stale
    temporary folders that killed runs left in the same parent are removed first.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XpusimError(f"cannot create output folder {parent}: {exc.strerror}.") from None
    remove_stale_partials(parent)
    prefix = f".{out_dir.name[:100]}{PARTIAL_MARK}{_host_tag()}-{os.getpid()}-"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise XpusimError(
            f"--out {out_dir}: cannot write in {parent} ({exc.strerror}); choose a folder "
            f"you can write."
        ) from None
    try:
        doc = json.dumps(run.summary(), indent=2, sort_keys=False, allow_nan=False)
        (tmp / "summary.json").write_text(doc + "\n", encoding="utf-8")
        run.summary_frame().write_parquet(tmp / "summary.parquet")
        available = {n for n in FRAME_NAMES if any(n in s.frames for s in run.systems)}
        for name in (*frames_at(run.detail, available), *POINT_FRAMES):
            frame = run.frame(name)
            if frame is not None:
                _write_frame(frame, tmp / f"{name}.parquet")
        for reporter in reporters:
            reporter.write(run, tmp)
        _move_into_place(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise XpusimError(
            f"--out {out_dir}: writing the run folder failed ({exc.strerror or exc}); nothing "
            f"was written. Check the free space and permissions of {parent}."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _release_spills(run, out_dir)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out_dir`` in one step.

    An empty ``out_dir`` is replaced; when another run filled ``out_dir`` meanwhile (two
    runs given the same ``--out``), the later one stops with an input error and its
    folder is removed by the caller.
    """
    try:
        os.replace(tmp, out_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise XpusimError(
                f"--out {out_dir}: another run wrote this folder while this one was running, "
                f"and a run never overwrites another; nothing of this run was kept. Run again "
                f"with another --out."
            ) from None
        raise


PARQUET_COMPRESSION: Final = "zstd"
"""Codec of the run folder's Parquet files (fast to write and read, ~3x smaller than plain
event rows)."""

PARQUET_LEVEL = 3
"""zstd level: higher levels cost several times the writing time for a few per cent."""

PARQUET_ROW_GROUP = 1 << 20
"""Rows per Parquet row group: large enough for compression and statistics to pay, small
enough that a reader scanning one system or time range skips the rest."""


def _write_frame(frame: Frame, path: Path) -> None:
    """Write one event frame; a lazy (spilled) one streams to the file, part by part, so
    the writer never holds the whole frame."""
    if isinstance(frame, pl.DataFrame):
        frame.write_parquet(
            path,
            compression=PARQUET_COMPRESSION,
            compression_level=PARQUET_LEVEL,
            row_group_size=PARQUET_ROW_GROUP,
        )
    else:
        frame.sink_parquet(
            path,
            compression=PARQUET_COMPRESSION,
            compression_level=PARQUET_LEVEL,
            row_group_size=PARQUET_ROW_GROUP,
        )


def _release_spills(run: RunResult, out_dir: Path) -> None:
    """Point every spilled system's frames at the run folder's Parquet files and remove
    its spill folder: the frames stay readable (lazily) and no part file outlives the run.
    A spilled event frame the run's detail level left out of the folder is dropped (reading
    it whole could exceed the memory the spill saved); any other spilled frame not in the
    folder is collected first."""
    for s in run.systems:
        frames = s.frames
        if not isinstance(frames, SpilledFrames):
            continue
        for name, frame in list(frames.items()):
            if isinstance(frame, pl.DataFrame):
                continue
            path = out_dir / f"{name}.parquet"
            if name in FRAME_NAMES and path.is_file():
                frames[name] = pl.scan_parquet(path).filter(pl.col("system") == s.name)
            elif name in FRAME_NAMES:
                del frames[name]
            else:
                frames[name] = frame.collect()
        frames.spill.close()
