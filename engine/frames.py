"""The frame layer every workload shares: frames in memory or spilled, and the device
timeline.

A workload returns its results as named frames (:data:`FrameMap`); every engine consumer
(results, economics, reports) reads them through polars queries. Units live in column
names and every frame carries a ``system`` column so runs of several systems concatenate.
Each workload declares the schemas of its own frames; the one frame every workload
gives, ``devices``, is declared here:

``requests`` — where a workload gives one, its schema declares ``status``
(:data:`REQUEST_OK` for a completed request) and, for token-generating workloads,
``output_tokens``.

``devices`` (:data:`DEVICES_SCHEMA`) — the power-state timeline of every device: busy
intervals (consecutive steps of one state merged, :func:`device_timeline`) and ``idle``
intervals covering the rest of ``[0, simulated_s]``. Busy rows carry the step joules
split evenly over the replica's devices; idle rows carry 0 J (the economics model
applies idle power). A workload whose lanes run on different devices (one pool of a part
beside a pool of another) adds the optional :data:`DEVICE_NAME` column, the catalog name
of each row's device (null: the system's device); economics then prices each device's
lanes at that device's price and power (:mod:`xpusim.engine.economics.kinds`). A frame
without the column runs wholly on the system's device.

Bounded memory: a frame is a :data:`Frame`, either an in-memory ``pl.DataFrame`` or a
``pl.LazyFrame``. Below a row threshold (:func:`spill_rows`, default
:data:`DEFAULT_SPILL_ROWS` rows per frame, ``XPUSIM_SPILL_ROWS`` in the environment
overrides it) every frame is a DataFrame, exactly as built in memory. Past it, rows are
flushed in chunks to part files (Arrow IPC, uncompressed) in a :class:`Spill` folder the
run owns and the frame becomes a LazyFrame scanning the parts (plus the in-memory tail), in
the same row order. A :class:`FrameBuffer` may hold its rows packed (:class:`Packing`):
columns fixed for the buffer left out, string columns of a few values held as codes.
Consumers read frames through polars queries that accept both (``.lazy()`` on a DataFrame
is free); :func:`frame_height` and :func:`collect` help. The spill folder is
removed when :meth:`Spill.close` is called (``xpusim.engine.results.write_run`` does so once the
run folder holds the final Parquet files), when the frames that own it are garbage
collected, or when the process exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import polars as pl

from xpusim.engine.procs import host_tag

DEVICES_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "device": pl.Int32(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the ``devices`` frame."""

DEVICE_NAME = "device_name"
"""Optional column of the ``devices`` frame (``pl.String``): the device a row's lane runs on,
by its catalog name, where a system's lanes run on different devices; null, or absent,
for the system's own device."""

IDLE = "idle"
"""The device state outside any step."""

REQUEST_OK = "ok"
"""The ``status`` of a completed request in a ``requests`` frame.

A workload that gives a ``requests`` frame declares ``status`` in its schema: ``ok`` for a
request that completed, another value (``dropped``) for one that did no work. Economics
counts the completed requests as samples and, where the schema declares
``output_tokens``, their output tokens as tokens (when the workload's metrics give no
throughput of its own)."""


Frame: TypeAlias = pl.DataFrame | pl.LazyFrame
"""An event frame: in memory, or lazy over spilled part files."""

FrameMap: TypeAlias = dict[str, pl.DataFrame] | dict[str, Frame]
"""Frames by name as a workload returns them: all in memory, or some lazy."""

DEFAULT_SPILL_ROWS = 1_000_000
"""Rows a frame holds in memory before it spills to part files."""

SPILL_ROWS_ENV = "XPUSIM_SPILL_ROWS"
"""Environment variable overriding :data:`DEFAULT_SPILL_ROWS` (a positive integer)."""

SPILL_DIR_ENV = "XPUSIM_SPILL_DIR"
"""Environment variable naming the parent folder of spill folders (default: the system's
temporary folder)."""


PART_SUFFIX = ".arrow"
"""The suffix of a spilled frame's part files (Arrow IPC)."""

SPILL_PREFIX = "xpusim-spill-"
"""Spill folders are named ``xpusim-spill-<host>-<pid>-<random>``."""


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame of ``schema``."""
    return pl.DataFrame(schema=schema)


def spill_rows(rows: int | None = None) -> int:
    """The spill threshold: ``rows`` when given, else ``$XPUSIM_SPILL_ROWS``, else
    :data:`DEFAULT_SPILL_ROWS`. Raises ``ValueError`` for a value below 1."""
    if rows is None:
        raw = os.environ.get(SPILL_ROWS_ENV, "").strip()
        try:
            rows = int(raw.replace("_", "")) if raw else DEFAULT_SPILL_ROWS
        except ValueError:
            raise ValueError(f"{SPILL_ROWS_ENV}={raw!r} is not an integer row count") from None
    if rows < 1:
        raise ValueError(f"the spill threshold must be at least 1 row, got {rows}")
    return rows


def frame_height(frame: Frame) -> int:
    """Rows of ``frame``; a lazy frame is counted by a query (Parquet metadata for parts)."""
    if isinstance(frame, pl.DataFrame):
        return frame.height
    return int(frame.select(pl.len()).collect().item())


def collect(frame: Frame) -> pl.DataFrame:
    """``frame`` in memory (a lazy one is collected; use on aggregated results only)."""
    return frame if isinstance(frame, pl.DataFrame) else frame.collect()


def frame_columns(frame: Frame) -> list[str]:
    """Column names of ``frame`` (a lazy frame's from its schema, without reading rows)."""
    if isinstance(frame, pl.DataFrame):
        return frame.columns
    return frame.collect_schema().names()


def ordered_sum(frame: Frame, value: pl.Expr, where: pl.Expr | None = None) -> float:
    """Sum of ``value`` over the rows of ``frame`` (those where ``where`` holds), added in
    row order by numpy's pairwise summation: the same float however the frame is chunked,
    in memory or spilled (polars' own sum may differ in the last bit between layouts)."""
    q = frame.lazy()
    if where is not None:
        q = q.filter(where)
    col = q.select(value.cast(pl.Float64).alias("v")).collect()["v"]
    return float(np.sum(col.to_numpy())) if col.len() else 0.0


class Spill:
    """A temporary folder of Parquet part files that one run owns.

    The folder is created on the first :meth:`write` (under ``parent``, ``$XPUSIM_SPILL_DIR``
    or the system's temporary folder) and removed by :meth:`close`, at garbage collection
    or at interpreter exit, whichever comes first. ``rows`` is the threshold
    (:func:`spill_rows`) the frame buffers of the run use.
    """

    def __init__(self, rows: int | None = None, parent: str | Path | None = None) -> None:
        self.rows = spill_rows(rows)
        self._parent = parent if parent is not None else (os.environ.get(SPILL_DIR_ENV) or None)
        self.path: Path | None = None
        self.parts = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def used(self) -> bool:
        """Whether any part file was written (and the folder exists until closed)."""
        return self.path is not None

    @property
    def closed(self) -> bool:
        """Whether the folder was created and since removed."""
        return self._finalizer is not None and not self._finalizer.alive

    def write(self, frame: pl.DataFrame, stem: str) -> Path:
        """Write ``frame`` as the next part file named after ``stem`` (Arrow IPC) and
        return its path; :func:`scan_parts` reads parts back."""
        path = self._next(stem, PART_SUFFIX)
        # Arrow IPC, uncompressed: a part is scratch that this run reads back once or
        # twice. Step and request rows write in a fifth to a third of the time Parquet
        # with lz4 takes and read back faster, at twice the bytes or more (packed rows;
        # `benchmarks/serving.py --case spill`, docs/workloads/serving.md).
        try:
            frame.write_ipc(path, compression="uncompressed")
        except OSError as exc:
            raise self._failed(path, exc) from exc
        return path

    def park(self, values: np.ndarray, stem: str) -> np.ndarray:
        """Write ``values`` to the folder as the next part (``.npy``) and return them read
        back as a read-only memory map: a column a run needs again only later holds no
        memory meanwhile (its pages are read when used)."""
        path = self._next(stem, ".npy")
        try:
            np.save(path, values, allow_pickle=False)
        except OSError as exc:
            raise self._failed(path, exc) from exc
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def _failed(self, path: Path, exc: OSError) -> OSError:
        """``exc``, raised writing part ``path``, told with the folder, what it holds and
        the way out (a full disk, most often); what was written of the part is removed."""
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        try:
            held = sum(p.stat().st_size for p in path.parent.iterdir()) / 2**20
            free = shutil.disk_usage(path.parent).free / 2**20
        except OSError:
            held = free = float("nan")
        text = (
            f"writing the spill part {path.name} into {path.parent} failed ({exc}); the "
            f"folder holds {held:,.1f} MiB of parts and its disk has {free:,.1f} "
            f"MiB free (the spilled frames of a run's finished systems stay until its run "
            f"folder is written). Point {SPILL_DIR_ENV} at a folder with more free space (ten "
            f"million serving requests spill about 2.5 GB), or raise {SPILL_ROWS_ENV} (now "
            f"{self.rows:,} rows) to hold more rows in memory"
        )
        return OSError(exc.errno, text) if exc.errno is not None else OSError(text)

    def _next(self, stem: str, suffix: str) -> Path:
        """The path of the next part file, the folder made on first use."""
        if self.closed:
            raise RuntimeError(f"spill folder {self.path} was already removed")
        if self.path is None:
            parent = Path(self._parent) if self._parent is not None else None
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            # the name carries host and process, so a later run removes it if this one is killed
            prefix = f"{SPILL_PREFIX}{host_tag()}-{os.getpid()}-"
            self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)
        self.parts += 1
        return self.path / f"{stem}-{self.parts:06d}{suffix}"

    def close(self) -> None:
        """Remove the folder and its parts (frames scanning them become unreadable)."""
        if self._finalizer is not None:
            self._finalizer()


class SpilledFrames(dict[str, Frame]):
    """A frames mapping that keeps the :class:`Spill` its lazy frames read alive.

    It is an ordinary ``dict`` of name to :data:`Frame`; :attr:`spill` is the folder the
    lazy frames scan. Passing the mapping along keeps the folder; dropping it (or
    ``spill.close()``) removes the folder.
    """

    def __init__(self, frames: dict[str, Frame], spill: Spill) -> None:
        super().__init__(frames)
        self.spill = spill


def scan_parts(parts: Sequence[Path]) -> pl.LazyFrame:
    """The rows of part files :meth:`Spill.write` wrote, in order, as they were written
    (a packed buffer's parts hold its packed columns)."""
    return pl.scan_ipc(list(parts))


CODE_DTYPE: pl.DataType = pl.Int32()
"""The dtype of a coded column's codes in a packed frame (:class:`Packing`)."""


@dataclass(frozen=True)
class Packing:
    """How a :class:`FrameBuffer` holds the rows of a frame more compactly than its schema.

    ``fixed`` names the columns every row of the buffer has the same value in (the
    ``system`` and ``replica`` of one replica's step rows): the packed rows leave them out.
    ``coded`` names string columns of a few values (a step's ``state``): the packed rows
    hold each value's index into its list of labels, as :data:`CODE_DTYPE`. A labels list
    may grow while the rows are held (the buffer reads it when it builds the frame), as
    long as the labels already coded keep their places.

    Packed step rows write in three quarters of the time and read back their states four
    times faster than rows with the strings, a third smaller (``benchmarks/serving.py
    --case spill``).
    """

    fixed: Mapping[str, Any] = field(default_factory=dict)
    coded: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def packed_schema(self, schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
        """The columns of packed rows of a frame of ``schema``, in its order."""
        return {
            name: CODE_DTYPE if name in self.coded else dtype
            for name, dtype in schema.items()
            if name not in self.fixed
        }

    def unpack(self, schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
        """Expressions selecting the columns of ``schema``, in order, from packed rows."""
        out: list[pl.Expr] = []
        for name, dtype in schema.items():
            if name in self.fixed:
                out.append(pl.lit(self.fixed[name], dtype=dtype).alias(name))
            elif name in self.coded:
                labels = pl.Series(list(self.coded[name]), dtype=dtype)
                out.append(pl.lit(labels).gather(pl.col(name)).alias(name))
            else:
                out.append(pl.col(name))
        return out


class FrameBuffer:
    """Rows of one frame, appended in slices and spilled in parts past the threshold.

    :meth:`add` appends a DataFrame slice; once the buffered rows reach ``spill.rows`` they
    are written as one part file. :meth:`frame` returns the whole frame in order: the
    buffered DataFrame when nothing was spilled, else a LazyFrame over the parts and the
    in-memory tail. Several buffers (one per replica) stack with :func:`concat_frames`.

    With a ``packing``, slices are added packed (its :meth:`~Packing.packed_schema` of
    ``schema``), held and spilled so, and :meth:`frame` unpacks them to ``schema``.
    """

    def __init__(
        self,
        spill: Spill,
        name: str,
        schema: dict[str, pl.DataType],
        packing: Packing | None = None,
    ) -> None:
        self.spill = spill
        self.name = name
        self.schema = schema
        self.packing = packing
        self.parts: list[Path] = []
        self._tail: list[pl.DataFrame] = []
        self._rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Append the rows of ``frame`` (columns of :attr:`schema`)."""
        if frame.height == 0:
            return
        self._tail.append(frame)
        self._rows += frame.height
        if self._rows >= self.spill.rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part file (nothing when empty)."""
        if not self._tail:
            return
        chunk = pl.concat(self._tail, rechunk=True) if len(self._tail) > 1 else self._tail[0]
        self.parts.append(self.spill.write(chunk, self.name))
        self._tail = []
        self._rows = 0

    def frame(self) -> Frame:
        """All rows in order: a DataFrame when nothing spilled, else a LazyFrame."""
        unpack = self.packing.unpack(self.schema) if self.packing is not None else None
        tail: pl.DataFrame | None = None
        if self._tail:
            tail = pl.concat(self._tail) if len(self._tail) > 1 else self._tail[0]
        if not self.parts:
            if tail is None:
                return empty(self.schema)
            return tail.select(unpack) if unpack is not None else tail
        lazy = scan_parts(self.parts)
        if tail is not None:
            lazy = pl.concat([lazy, tail.lazy()])
        return lazy.select(unpack) if unpack is not None else lazy


def concat_frames(frames: list[Frame], schema: dict[str, pl.DataType]) -> Frame:
    """``frames`` stacked in order: a DataFrame when all are in memory, else a LazyFrame."""
    if not frames:
        return empty(schema)
    if all(isinstance(f, pl.DataFrame) for f in frames):
        eager = [f for f in frames if isinstance(f, pl.DataFrame)]
        return pl.concat(eager) if len(eager) > 1 else eager[0]
    return pl.concat([f.lazy() for f in frames])


def device_timeline(
    system: str,
    replica: int,
    devices: list[int],
    start: np.ndarray,
    end: np.ndarray,
    state: np.ndarray,
    joules: np.ndarray,
    states: list[str],
    horizon: float,
) -> pl.DataFrame:
    """The ``devices`` rows of one replica from its steps.

    Consecutive steps of one state that touch (``start == previous end``) merge into one
    busy interval; gaps, the lead-in from 0 and the tail up to ``horizon`` are ``idle``.
    Every device of the replica gets the same intervals; busy joules are split evenly.
    """
    n = start.size
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    codes: list[np.ndarray] = []  # into ``labels``: the step states, then idle
    labels = pl.Series([*states, IDLE], dtype=pl.String)
    idle = len(states)
    js: list[np.ndarray] = []
    if n:
        new = np.ones(n, dtype=bool)
        new[1:] = (state[1:] != state[:-1]) | (start[1:] != end[:-1])
        first = np.flatnonzero(new)
        last = np.append(first[1:] - 1, n - 1)
        b_start, b_end = start[first], end[last]
        b_j = np.add.reduceat(joules, first) / len(devices)
        # idle gaps: before the first run, between runs and after the last one
        i_start = np.concatenate(([0.0], b_end))
        i_end = np.concatenate((b_start, [max(horizon, float(b_end[-1]))]))
        keep = i_end > i_start
        starts += [b_start, i_start[keep]]
        ends += [b_end, i_end[keep]]
        codes += [state[first], np.full(int(keep.sum()), idle)]
        js += [b_j, np.zeros(int(keep.sum()))]
    elif horizon > 0:
        starts.append(np.array([0.0]))
        ends.append(np.array([horizon]))
        codes.append(np.array([idle]))
        js.append(np.zeros(1))
    if not starts:
        return empty(DEVICES_SCHEMA)
    s = np.concatenate(starts)
    order = np.argsort(s, kind="stable")
    one = pl.DataFrame(
        {
            "start_s": s[order],
            "end_s": np.concatenate(ends)[order],
            "state": labels.gather(np.concatenate(codes)[order]),
            "joules": np.concatenate(js)[order],
        }
    )
    dev = pl.DataFrame({"device": pl.Series(devices, dtype=pl.Int32)})
    return (
        dev.join(one, how="cross")
        .with_columns(
            pl.lit(system, pl.String).alias("system"), pl.lit(replica, pl.Int32).alias("replica")
        )
        .select(list(DEVICES_SCHEMA))
    )
