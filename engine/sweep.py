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

import copy
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import ScenarioError
from engine.executor import PointFailure
from engine.yamlsrc import Source

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


class SweepSpec(BaseModel):
    """The ``sweep:`` block."""

    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    random: RandomSpec | None = None
    max_points: int = Field(default=100_000, ge=1)

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
    from engine.scenario import validation_message

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
    from engine.scenario import apply_override, parse_set

    grid_keys = list(spec.grid)
    grid = list(itertools.product(*(spec.grid[k] for k in grid_keys))) or [()]
    zip_keys = list(spec.zip)
    zipped = list(zip(*(spec.zip[k] for k in zip_keys), strict=True)) or [()]
    draws: list[dict[str, Any]] = [{}]
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        draws = [
            {k: p.draw(rng) for k, p in spec.random.params.items()}
            for _ in range(spec.random.samples)
        ]
    total = len(grid) * len(zipped) * len(draws)
    if total > spec.max_points:
        raise ScenarioError(
            f"{src.where(('sweep',))}: the sweep has {total:,} points, more than max_points "
            f"({spec.max_points:,}); shrink it or raise sweep.max_points."
        )
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
    """What a worker needs to run one point: picklable, self-contained."""

    point: Point
    scenario_file: str
    base_dir: str
    out_dir: str


_WORKER_HOST: Any = None


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one sweep point into ``out_dir/points/<id>`` and return its ``summary.json``.

    Idempotent: a point whose folder is complete is not run again, so a point retried
    after its worker died finishes exactly once.
    """
    from engine.host import build_host
    from engine.run import run_scenario
    from engine.scenario import resolve

    global _WORKER_HOST
    folder = Path(task.out_dir) / "points" / task.point.id
    done = folder / "summary.json"
    if done.exists():
        return dict(json.loads(done.read_text()))
    if _WORKER_HOST is None:
        _WORKER_HOST = build_host()
    src = Source(f"{task.scenario_file} (sweep point {task.point.index})")
    scenario = resolve(
        copy.deepcopy(task.point.data), src, _WORKER_HOST, base_dir=Path(task.base_dir)
    )
    result, _ = run_scenario(scenario, _WORKER_HOST, folder)
    return result.summary()


# --- the sweep --------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The outcome of a sweep: one row per point and system, and where it was written."""

    frame: pl.DataFrame
    out_dir: Path
    points: int
    skipped: int
    failed: int
    wall_s: float
    notes: list[str] = field(default_factory=list)


def _rows(point: Point, summary: Mapping[str, Any] | None, error: str) -> list[dict[str, Any]]:
    base = {"point": point.index, "point_id": point.id}
    base.update({f"param.{k}": _cell(v) for k, v in point.params.items()})
    if summary is None:
        return [base | {"status": "failed", "reason": error}]
    return [base | {k: _cell(v) for k, v in s.items()} for s in summary["systems"]]


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v


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
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Expand the sweep of ``data`` and run its points through ``executor``."""
    spec = parse_sweep(data.get("sweep"), src)
    points = expand(data, spec, src)
    out_dir = Path(out_dir)
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    todo: list[PointTask] = []
    skipped = 0
    for p in points:
        done = out_dir / "points" / p.id / "summary.json"
        if done.exists():
            rows.extend(_rows(p, json.loads(done.read_text()), ""))
            skipped += 1
        else:
            todo.append(PointTask(p, str(scenario_file), str(scenario_file.parent), str(out_dir)))
    failed = 0
    finished = skipped
    if progress:
        progress(finished, len(points))
    for idx, outcome in executor.map(
        run_point, todo, workers=workers, address=address, retries=retries
    ):
        task = todo[idx]
        if isinstance(outcome, PointFailure):
            failed += 1
            rows.extend(_rows(task.point, None, outcome.error))
        else:
            rows.extend(_rows(task.point, outcome, ""))
        finished += 1
        if progress:
            progress(finished, len(points))
    frame = (
        pl.DataFrame(rows, infer_schema_length=None, strict=False).sort(
            ["point", "name"], nulls_last=True
        )
        if rows and "name" in {k for r in rows for k in r}
        else pl.DataFrame(rows, strict=False)
    )
    _write_atomic(frame, out_dir / "summary.parquet")
    report = sweep_report(frame)
    (out_dir / "sweep.md").write_text(report, encoding="utf-8")
    return SweepResult(frame, out_dir, len(points), skipped, failed, time.perf_counter() - started)


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


_BEST: list[tuple[str, str]] = [
    ("throughput_tokens_per_s", "max"),
    ("throughput_samples_per_s", "max"),
    ("ttft_p99_s", "min"),
    ("tbt_p99_s", "min"),
    ("slo_attainment", "max"),
    ("time_to_train_s", "min"),
    ("energy_per_token_j", "min"),
    ("cost_per_million_tokens_usd", "min"),
    ("cost_usd", "min"),
]


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


def sweep_report(frame: pl.DataFrame) -> str:
    """A Markdown report: the best point per metric and the throughput/cost frontier."""
    lines = ["# Sweep report", ""]
    params = [c for c in frame.columns if c.startswith("param.")]
    ok = frame.filter(pl.col("status") == "ok") if "status" in frame.columns else frame
    lines.append(
        f"{frame['point'].n_unique() if 'point' in frame.columns else 0} points, "
        f"{ok.height} ok system rows, {frame.height - ok.height} not ok."
    )
    lines += [
        "",
        "## Best point per metric",
        "",
        "| metric | best | point | system | "
        + " | ".join(p.removeprefix("param.") for p in params)
        + " |",
        "|---|---|---|---|" + "---|" * len(params),
    ]
    for metric, how in _BEST:
        if metric not in ok.columns or ok[metric].drop_nulls().is_empty():
            continue
        row = (
            ok.filter(pl.col(metric).is_not_null())
            .sort(metric, descending=how == "max")
            .row(0, named=True)
        )
        vals = " | ".join(str(row[p]) for p in params)
        lines.append(
            f"| {metric} ({how}) | {row[metric]:.4g} | {row['point']} | {row.get('name')} | {vals} |"
        )
    for tp in ("throughput_tokens_per_s", "throughput_samples_per_s"):
        for cost in ("cost_per_million_tokens_usd", "cost_usd"):
            front = pareto(ok, tp, cost)
            if front.height:
                lines += [
                    "",
                    f"## Pareto frontier: {tp} vs {cost}",
                    "",
                    f"| point | system | {tp} | {cost} |",
                    "|---|---|---|---|",
                ]
                for r in front.iter_rows(named=True):
                    lines.append(
                        f"| {r['point']} | {r.get('name')} | {r[tp]:.4g} | {r[cost]:.4g} |"
                    )
                break
        else:
            continue
        break
    return "\n".join(lines) + "\n"
