"""Sweeps: many variants of one scenario, each run as an independent task.

A scenario's ``sweep:`` block names the fields to vary by their dotted paths (a number
indexes a list)::

    sweep:
      grid: {workload.scheduler.max_batch: [16, 64], systems.0.count: [1, 2]}
      zip: {workload.arrivals.rate: [2/s, 4/s, 8/s], workload.arrivals.count: [200, 400, 800]}
      random: {samples: 8, seed: 1,
               params: {economics.pue: {uniform: [1.1, 1.6]},
                        workload.arrivals.rate: {loguniform: [1, 20], unit: /s}}}

Points are the product of the grid, the zipped rows and the random samples. Each point is
the full scenario with its values applied; its id is a content hash of that scenario, so a
re-run skips points whose run folder is complete. Points run through an executor plugin
(``register_executors``); one that fails records its error and the rest go on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xpusim.engine.capacity import SLO_QUANTILE
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.executor import PointFailure
from xpusim.engine.metrics import Vocabulary, engine_vocabulary, vocabulary_for
from xpusim.engine.yamlsrc import Source

# --- the sweep block --------------------------------------------------------------------


class RandomParam(BaseModel):
    """One randomly sampled field: exactly one of ``uniform``, ``loguniform``, ``int``
    (inclusive bounds) or ``choice``; ``unit`` is appended to sampled numbers."""

    model_config = ConfigDict(extra="forbid")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[int, int] | None = None
    choice: list[Any] | None = None
    unit: str = ""

    def draw(self, rng: np.random.Generator) -> Any:
        """Sample one value."""
        if self.uniform is not None:
            lo, hi = self.uniform
            return self._u(float(rng.uniform(lo, hi)))
        if self.loguniform is not None:
            lo, hi = self.loguniform
            return self._u(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        if self.int is not None:
            lo, hi = self.int
            return self._u(int(rng.integers(lo, hi + 1)))
        assert self.choice is not None
        return self.choice[int(rng.integers(0, len(self.choice)))]

    def _u(self, x: float) -> Any:
        if not self.unit:
            return x
        text = f"{x:.6g}"
        return f"{text}{self.unit}" if self.unit.startswith("/") else f"{text} {self.unit}"

    def model_post_init(self, _ctx: Any) -> None:
        given = [
            k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of uniform, loguniform, int, choice (got {given or 'none'})"
            )
        bounds = self.uniform or self.loguniform or self.int
        if bounds is not None and not bounds[0] <= bounds[1]:
            raise ValueError(f"lower bound {bounds[0]} is above upper bound {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")


class RandomSpec(BaseModel):
    """``sweep.random``: ``samples`` draws of ``params`` with their own ``seed``."""

    model_config = ConfigDict(extra="forbid")
    samples: int = Field(ge=1, le=100_000)
    seed: int = Field(default=0, ge=0)
    params: dict[str, RandomParam] = Field(min_length=1)


MAX_POINTS = 1_000_000
"""Most points ``sweep.max_points`` may allow (each point is a run folder)."""


class SweepSpec(BaseModel):
    """The ``sweep:`` block."""

    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    random: RandomSpec | None = None
    max_points: int = Field(default=100_000, ge=1, le=MAX_POINTS)
    reports: list[str] = Field(default_factory=lambda: ["markdown"])

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"grid field {k!r} has no values")
        return v

    @field_validator("zip")
    @classmethod
    def _same_length(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        lengths = {k: len(x) for k, x in v.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zipped lists must have one length; got {lengths}")
        return v


@dataclass(frozen=True)
class Point:
    """One sweep point: its index, content id, the values it sets, its full scenario."""

    index: int
    id: str
    params: dict[str, Any]
    data: dict[str, Any]


def parse_sweep(raw: Any, src: Source) -> SweepSpec:
    """Validate a ``sweep:`` block with errors naming the file and line."""
    from xpusim.engine.scenario import validation_message

    if raw is None:
        raise ScenarioError(
            f"{src.file}: the scenario has no `sweep:` block; add one, for example "
            f"sweep: {{grid: {{workload.scheduler.max_batch: [16, 64]}}}}."
        )
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, src, ("sweep",))) from None
    if not spec.grid and not spec.zip and spec.random is None:
        raise ScenarioError(
            f"{src.where(('sweep',))}: the sweep varies nothing; add grid, zip or random."
        )
    return spec


def point_id(data: Mapping[str, Any]) -> str:
    """A content hash of a point's full scenario (stable across processes and runs)."""
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(base: Mapping[str, Any], spec: SweepSpec, src: Source) -> list[Point]:
    """Every point of ``spec`` applied to ``base`` (the scenario without its sweep block)."""
    from xpusim.engine.scenario import apply_override, parse_set

    grid_keys = list(spec.grid)
    zip_keys = list(spec.zip)
    # count the points from the list lengths before building any of them
    total = math.prod(len(v) for v in spec.grid.values())
    total *= len(next(iter(spec.zip.values()))) if spec.zip else 1
    total *= spec.random.samples if spec.random is not None else 1
    if total > spec.max_points:
        raise ScenarioError(
            f"{src.where(('sweep',))}: the sweep has {total:,} points, more than max_points "
            f"({spec.max_points:,}); shrink it or raise sweep.max_points (at most "
            f"{MAX_POINTS:,})."
        )
    grid = list(itertools.product(*(spec.grid[k] for k in grid_keys))) or [()]
    zipped = list(zip(*(spec.zip[k] for k in zip_keys), strict=True)) or [()]
    draws: list[dict[str, Any]] = [{}]
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        draws = [
            {k: p.draw(rng) for k, p in spec.random.params.items()}
            for _ in range(spec.random.samples)
        ]
    points: list[Point] = []
    seen: set[str] = set()
    for g, z, r in itertools.product(grid, zipped, draws):
        params = dict(zip(grid_keys, g, strict=True)) | dict(zip(zip_keys, z, strict=True)) | r
        data = copy.deepcopy(dict(base))
        data.pop("sweep", None)
        for key, value in params.items():
            path, _ = parse_set(f"{key}=0")
            apply_override(data, path, copy.deepcopy(value), f"{src.where(('sweep',))}: {key}")
        pid = point_id(data)
        if pid in seen:
            continue
        seen.add(pid)
        points.append(Point(len(points), pid, params, data))
    return points


# --- running a point (in a worker process) ----------------------------------------------


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run one point: picklable, self-contained.

    ``calibrations`` are calibration files applied to the point's systems exactly as
    ``xpusim run --calibration`` applies them to a run's.
    """

    point: Point
    scenario_file: str
    base_dir: str
    out_dir: str
    reports: tuple[str, ...] = ("markdown",)
    calibrations: tuple[str, ...] = ()


def worker_host() -> Any:
    """The plugin host of this worker process: the process's one
    :func:`~xpusim.engine.host.default_host`, built on first use and then reused.

    Building it imports every plugin (torch among them), which takes seconds; a worker
    pays that once, not once per point. Thread-safe for executors that run several
    points in one process.
    """
    from xpusim.engine.host import default_host

    return default_host()


def point_folder(out_dir: Path | str, pid: str) -> Path:
    """Where the run folder of point ``pid`` lives in a sweep folder."""
    return Path(out_dir) / "points" / pid


def _read_done(folder: Path) -> dict[str, Any] | None:
    """The point's ``summary.json`` when its folder is complete, else ``None``."""
    done = folder / "summary.json"
    if not done.exists():
        return None
    try:
        return dict(json.loads(done.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one sweep point into ``out_dir/points/<id>`` and return its ``summary.json``.

    The point goes through the same pipeline as ``xpusim run``
    (:func:`xpusim.engine.run.load_point`, then :func:`xpusim.engine.run.run_scenario`):
    calibration, observer hooks, pricing and writing included.

    Idempotent: a point whose folder is complete is not run again, so a point retried
    after its worker died finishes exactly once. The folder is written whole (through a
    temporary ``.partial`` folder renamed into place); if another attempt of the same
    point completed it first, that attempt's summary is returned.
    """
    from xpusim.engine.run import load_point, run_scenario

    folder = point_folder(task.out_dir, task.point.id)
    summary = _read_done(folder)
    if summary is not None:
        return summary
    host = worker_host()
    src = Source(f"{task.scenario_file} (sweep point {task.point.index})")
    reporters = [host.reporters.get(name, where="sweep.reports") for name in task.reports]
    scenario = load_point(
        copy.deepcopy(task.point.data),
        src,
        host,
        base_dir=Path(task.base_dir),
        calibrations=[Path(c) for c in task.calibrations],
    )
    try:
        result, _ = run_scenario(scenario, host, folder, reporters=reporters)
    except Exception:
        summary = _read_done(folder)
        if summary is not None:
            return summary  # another attempt of this point completed it first
        raise
    written = _read_done(folder)
    return written if written is not None else dict(result.summary())


# --- the sweep --------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The outcome of a sweep: one row per point and system, and where it was written.

    ``points`` counts every point, ``skipped`` those already complete from an earlier
    run, ``failed`` those that ended with an error this time.
    """

    frame: pl.DataFrame
    out_dir: Path
    points: int
    skipped: int
    failed: int
    wall_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        """Points run (successfully) by this invocation."""
        return self.points - self.skipped - self.failed


ProgressFn = Callable[[int, int, int], None]
"""``progress(finished, total, failed)`` after each point ends (and once at the start)."""


def _rows(point: Point, summary: Mapping[str, Any] | None, error: str) -> list[dict[str, Any]]:
    base = {"point": point.index, "point_id": point.id}
    base.update({f"param.{k}": _cell(v) for k, v in point.params.items()})
    if summary is None:
        return [base | {"status": "failed", "reason": error}]
    return [base | {k: _cell(v) for k, v in s.items()} for s in summary["systems"]]


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v


def _check_reports(spec: SweepSpec, known: Collection[str] | None, src: Source) -> None:
    """Fail before any point runs when ``sweep.reports`` names an unknown reporter."""
    if known is None:
        return
    from xpusim.engine.errors import UnknownNameError
    from xpusim.engine.registry import unknown_message

    for name in spec.reports:
        if name not in known:
            raise UnknownNameError(
                unknown_message("reporter", name, sorted(known), src.where(("sweep", "reports")))
            )


def remove_partials(out_dir: Path) -> int:
    """Remove ``.partial`` folders a killed worker left in ``out_dir/points``; their count."""
    removed = 0
    points = Path(out_dir) / "points"
    if not points.is_dir():
        return 0
    for child in points.iterdir():
        if child.name.startswith(".") and ".partial" in child.name:
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    return removed


def _undo_if_it_fails(
    outcomes: Iterator[tuple[int, Any]], made: Sequence[Path]
) -> Iterator[tuple[int, Any]]:
    """Pass the executor's outcomes on; when the executor fails (a scheduler that cannot
    be reached), remove the folders this sweep created that are still empty, so a sweep
    stopped by bad input leaves nothing behind."""
    try:
        yield from outcomes
    except BaseException:
        for folder in made:  # deepest first; a folder holding anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def run_sweep(
    scenario_file: Path,
    data: dict[str, Any],
    src: Source,
    executor: Any,
    out_dir: Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
    reporters: Collection[str] | None = None,
    calibrations: Collection[Path] = (),
) -> SweepResult:
    """Expand the sweep of ``data`` and run its points through ``executor``.

    Points whose folder under ``out_dir/points`` is complete are skipped; the others run
    as independent tasks. ``out_dir/summary.parquet`` (one row per point and system, the
    point's values as ``param.*`` columns) and ``out_dir/sweep.md`` are rewritten over all
    points at the end. ``reporters`` (the registered reporter names), when given, lets
    an unknown name in ``sweep.reports`` fail before anything runs. ``calibrations``
    are applied to every point as ``xpusim run --calibration`` applies them to a run.
    """
    spec = parse_sweep(data.get("sweep"), src)
    _check_reports(spec, reporters, src)
    for cal in calibrations:
        if not Path(cal).is_file():
            raise ScenarioError(f"--calibration {cal}: no such file. Check the path.")
    points = expand(data, spec, src)
    out_dir = Path(out_dir)
    made = [p for p in (out_dir / "points", out_dir, *out_dir.parents) if not p.exists()]
    try:
        (out_dir / "points").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create sweep folder {out_dir}: {exc.strerror}.") from None
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    todo: list[PointTask] = []
    skipped = 0
    base_dir = str(Path(scenario_file).resolve().parent)
    for p in points:
        summary = _read_done(point_folder(out_dir, p.id))
        if summary is not None:
            rows.extend(_rows(p, summary, ""))
            skipped += 1
        else:
            todo.append(
                PointTask(
                    p,
                    str(scenario_file),
                    base_dir,
                    str(out_dir.resolve()),
                    tuple(spec.reports),
                    tuple(str(Path(c).resolve()) for c in calibrations),
                )
            )
    failed = 0
    finished = skipped
    if progress:
        progress(finished, len(points), failed)
    outcomes = executor.map(run_point, todo, workers=workers, address=address, retries=retries)
    for idx, outcome in _undo_if_it_fails(outcomes, made):
        task = todo[idx]
        if isinstance(outcome, PointFailure):
            failed += 1
            rows.extend(_rows(task.point, None, outcome.error))
        else:
            rows.extend(_rows(task.point, outcome, ""))
        finished += 1
        if progress:
            progress(finished, len(points), failed)
    remove_partials(out_dir)
    frame = _frame(rows)
    _write_atomic(frame, out_dir / "summary.parquet")
    report = sweep_report(frame, sweep_vocabulary(points))
    tmp = out_dir / ".sweep.md.partial"
    tmp.write_text(report, encoding="utf-8")
    os.replace(tmp, out_dir / "sweep.md")
    return SweepResult(frame, out_dir, len(points), skipped, failed, time.perf_counter() - started)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The summary frame: one row per point and system, ordered by point then system."""
    if not rows:
        return pl.DataFrame(
            {"point": [], "point_id": [], "status": []},
            schema={"point": pl.Int64, "point_id": pl.String, "status": pl.String},
        )
    frame = pl.DataFrame(rows, infer_schema_length=None, strict=False)
    keys = ["point", "name"] if "name" in frame.columns else ["point"]
    return frame.sort(keys, nulls_last=True)


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


_HOW = {"higher": "max", "lower": "min"}
"""How the best-point table writes a metric's better direction."""


def pareto(frame: pl.DataFrame, maximize: str, minimize: str) -> pl.DataFrame:
    """Rows not dominated on (higher ``maximize``, lower ``minimize``), best first."""
    if maximize not in frame.columns or minimize not in frame.columns:
        return frame.head(0)
    ok = frame.filter(pl.col(maximize).is_not_null() & pl.col(minimize).is_not_null()).sort(
        [minimize, maximize], descending=[False, True]
    )
    keep, best = [], -math.inf
    for i, v in enumerate(ok[maximize].to_list()):
        if v > best:
            keep.append(i)
            best = v
    return ok[keep]


def _fmt(v: Any) -> str:
    """A table cell: numbers to four significant figures, the rest as text."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


def sweep_vocabulary(points: Collection[Point]) -> Vocabulary:
    """The metric vocabulary of the workload kinds the sweep's points run (the engine's
    metrics alone where a kind cannot be loaded; its points failed and say why)."""
    kinds = sorted(
        {
            str(k)
            for p in points
            if isinstance(k := dict(p.data.get("workload") or {}).get("kind"), str)
        }
    )
    if not kinds:
        return engine_vocabulary()
    host = worker_host()
    workloads = []
    for kind in kinds:
        try:
            workloads.append(host.workloads.get(kind))
        except XpusimError:
            continue
    return vocabulary_for(*workloads)


def sweep_report(frame: pl.DataFrame, vocabulary: Vocabulary | None = None) -> str:
    """A Markdown report: counts, the best point per headline metric of ``vocabulary``
    (the engine's metrics when not given), the throughput/cost Pareto frontier and the
    failed points with their errors."""
    vocab = vocabulary if vocabulary is not None else engine_vocabulary()
    lines = ["# Sweep report", ""]
    params = [c for c in frame.columns if c.startswith("param.")]
    names = [p.removeprefix("param.") for p in params]
    has = {"point", "status"} <= set(frame.columns)
    if not has or frame.is_empty():
        return "# Sweep report\n\nNo points.\n"
    per_point = frame.group_by("point").agg(
        (pl.col("status") == "failed").all().alias("failed"),
    )
    n_points = per_point.height
    n_failed = int(per_point["failed"].sum())
    ran = frame.filter(pl.col("status") == "ok")
    not_ok = frame.filter(pl.col("status") != "ok")
    lines.append(
        f"{n_points} points: {n_points - n_failed} ran, {n_failed} failed; "
        f"{ran.height} system rows ok, {not_ok.height} not ok. Each point's run folder is "
        f"points/<point_id>/."
    )
    # best points and the frontier consider only rows that meet the SLOs, where there are any
    ok = ran
    if "slo_attainment" in ran.columns and ran["slo_attainment"].drop_nulls().len():
        ok = ran.filter(pl.col("slo_attainment") >= SLO_QUANTILE - 1e-12)
        lines.append(
            f"{ok.height} of the {ran.height} ok rows meet the SLOs (at least "
            f"{SLO_QUANTILE:.0%} of requests within them); the best points and the "
            "frontier below consider only those."
            + (" No row meets them, so none is named best." if ok.is_empty() else "")
        )
    head = "| metric | best | point | point_id | system | " + " | ".join(names) + " |"
    rule = "|---|---|---|---|---|" + "---|" * len(params)
    best: list[str] = []
    for m in vocab:
        metric, how = m.name, _HOW.get(m.better)
        if not m.headline or how is None:
            continue
        if metric not in ok.columns or ok[metric].drop_nulls().is_empty():
            continue
        row = (
            ok.filter(pl.col(metric).is_not_null())
            .sort([metric, "point"], descending=[how == "max", False])
            .row(0, named=True)
        )
        vals = " | ".join(_fmt(row[p]) for p in params)
        best.append(
            f"| {metric} ({how}) | {_fmt(float(row[metric]))} | {row['point']} | "
            f"{row['point_id']} | {_fmt(row.get('name'))} | {vals} |"
        )
    if best:
        lines += ["", "## Best point per metric", "", head, rule, *best]
    done = False
    for tp in (m.name for m in vocab if m.frontier == "throughput"):
        for cost in (m.name for m in vocab if m.frontier == "cost"):
            front = pareto(ok, tp, cost)
            if front.height and not done:
                done = True
                lines += [
                    "",
                    f"## Pareto frontier: {tp} (higher) vs {cost} (lower)",
                    "",
                    f"| point | point_id | system | {tp} | {cost} | " + " | ".join(names) + " |",
                    "|---|---|---|---|---|" + "---|" * len(params),
                ]
                for r in front.iter_rows(named=True):
                    vals = " | ".join(_fmt(r[p]) for p in params)
                    lines.append(
                        f"| {r['point']} | {r['point_id']} | {_fmt(r.get('name'))} | "
                        f"{_fmt(float(r[tp]))} | {_fmt(float(r[cost]))} | {vals} |"
                    )
    failed = frame.filter(pl.col("status") == "failed")
    if failed.height:
        lines += [
            "",
            "## Failed",
            "",
            "| point | point_id | system | " + " | ".join(names) + " | error |",
            "|---|---|---|" + "---|" * len(params) + "---|",
        ]
        for r in failed.iter_rows(named=True):
            vals = " | ".join(_fmt(r[p]) for p in params)
            lines.append(
                f"| {r['point']} | {r['point_id']} | {_fmt(r.get('name'))} | {vals} | "
                f"{_fmt(r.get('reason'))} |"
            )
    return "\n".join(lines) + "\n"
