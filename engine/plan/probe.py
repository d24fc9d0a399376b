"""Searching in a worker: one device's shapes built, then each sized by simulation.

:func:`run_device` is what the executor runs (a picklable :class:`DeviceRun` in, a
:class:`DeviceOutcome` out): it builds the device's shapes
(:func:`~xpusim.engine.plan.space.device_space`) and sizes each with :func:`run_shape`.

In ``count`` mode :func:`run_shape` finds the fewest replicas that meet the SLOs at the
offered load. It starts at the shape's lower bound (the closed-form one, or the count
limit); on a pass it steps down until a count misses (so the bound is checked, never
trusted), on a miss it doubles until a count passes or the limit is reached, then it
bisects between the last miss and the first pass. The answer's next cheaper count (one
replica fewer) was therefore simulated and missed, unless the answer is the fewest the
limits allow. In ``rate`` mode it holds the most replicas the limits allow and, from the
closed-form bound, halves or doubles the offered rate until the knee is bracketed, then
bisects (:func:`xpusim.engine.capacity.search_knee`). Every simulation is a row of
plan.json.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpusim.engine.capacity import LoadPath, meets_slo, search_knee, with_rate
from xpusim.engine.errors import XpusimError
from xpusim.engine.plan.space import DeviceTask, Shape, Space, config_data, device_space
from xpusim.engine.run import load_point, simulate
from xpusim.engine.sweep import worker_host
from xpusim.engine.yamlsrc import Source

KEPT_METRICS = (
    "throughput_tokens_per_s",
    "throughput_requests_per_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tbt_p99_s",
    "e2e_p99_s",
    "slo_attainment",
    "goodput_requests_per_s",
    "offered_rate_per_s",
    "overloaded",
    "sustainable_rate_per_s",
    "cost_usd",
    "cost_per_million_tokens_usd",
    "energy_per_token_j",
    "simulated_s",
)
"""The metrics of each simulated configuration that plan.json keeps."""


@dataclass(frozen=True)
class ShapeTask:
    """What a worker needs to size one shape: picklable and self-contained.

    ``mode`` is ``count`` (fewest replicas at ``rate``; ``rate`` is ``None`` to keep the
    workload's own load) or ``rate`` (highest rate at the most replicas); ``load`` says
    where the rate lives in the scenario."""

    shape: Shape
    base: dict[str, Any]
    scenario_file: str
    base_dir: str
    mode: str
    rate: float | None
    load: LoadPath | None
    probes: int
    floor_devices: int = 1
    tolerance: float = 0.05


def simulate_config(task: ShapeTask, replicas: int, rate: float | None) -> dict[str, Any]:
    """Simulate ``task.shape`` at ``replicas`` replicas and offered ``rate``: one row."""
    shape = task.shape
    data = config_data(task.base, shape, replicas)
    if rate is not None and task.load is not None:
        data = with_rate(data, task.load, rate)
    count = replicas * shape.replica_devices
    row: dict[str, Any] = {
        **shape.params(),
        "replicas": replicas,
        "count": count,
        "rate_per_s": rate,
        "usd_per_hour": count * shape.price.usd_per_device_hour,
        "price": shape.price.to_json(),
    }
    started = time.perf_counter()
    try:
        host = worker_host()
        src = Source(f"{task.scenario_file} (plan)")
        sc = load_point(copy.deepcopy(data), src, host, base_dir=Path(task.base_dir))
        res = simulate(sc, host).systems[0]
    except XpusimError as exc:
        row.update(status="failed", reason=str(exc), met=False, metrics={})
    else:
        row["status"] = res.status
        if res.reason:
            row["reason"] = res.reason
        row["metrics"] = {k: res.metrics.get(k) for k in KEPT_METRICS if k in res.metrics}
        row["met"] = res.status == "ok" and bool(meets_slo(res.metrics))
    row["wall_s"] = time.perf_counter() - started
    return row


def _by_count(task: ShapeTask) -> list[dict[str, Any]]:
    """The fewest replicas meeting the SLOs (see the module docstring)."""
    shape = task.shape
    rows: list[dict[str, Any]] = []
    floor = max(1, -(-task.floor_devices // shape.replica_devices))

    def test(r: int) -> bool:
        rows.append(simulate_config(task, r, task.rate))
        return bool(rows[-1]["met"])

    fail, ok = _bracket(test, shape.min_replicas, floor, shape.max_replicas, task.probes, rows)
    while ok is not None and fail is not None and ok - fail > 1 and len(rows) < task.probes:
        mid = (fail + ok) // 2
        if test(mid):
            ok = mid
        else:
            fail = mid
    return rows


def _bracket(
    test: Callable[[int], bool],
    guess: int,
    floor: int,
    ceiling: int,
    probes: int,
    rows: list[dict[str, Any]],
) -> tuple[int | None, int | None]:
    """``(largest count that missed, smallest that passed)`` around ``guess``: on a pass,
    step down (1, 2, 4 ... replicas) until a count misses or ``floor`` passes; on a miss,
    double until a count passes or ``ceiling`` misses. ``None`` where not found."""
    fail: int | None = None
    ok: int | None = None
    if test(guess):
        ok, step = guess, 1
        while ok > floor and len(rows) < probes:
            r = max(floor, ok - step)
            if test(r):
                ok, step = r, step * 2
            else:
                fail = r
                break
        return (floor - 1 if fail is None and ok == floor else fail), ok
    fail = guess
    while fail < ceiling and len(rows) < probes:
        r = min(fail * 2, ceiling)
        if test(r):
            return fail, r
        fail = r
    return fail, None


def _by_rate(task: ShapeTask) -> list[dict[str, Any]]:
    """The highest offered rate meeting the SLOs at the most replicas allowed."""
    shape = task.shape
    replicas = shape.max_replicas
    rows: list[dict[str, Any]] = []

    def probe(rate: float) -> bool:
        rows.append(simulate_config(task, replicas, rate))
        return bool(rows[-1]["met"])

    start = 1.0 if shape.bound_per_s is None else shape.bound_per_s * replicas
    search_knee(probe, start, probes=task.probes, tolerance=task.tolerance)
    return rows


def run_shape(task: ShapeTask) -> list[dict[str, Any]]:
    """Every configuration simulated while sizing one shape."""
    return _by_rate(task) if task.mode == "rate" else _by_count(task)


@dataclass(frozen=True)
class DeviceRun:
    """One device's whole search: build its shapes (:func:`device_space`), then size each
    as :class:`ShapeTask` says (``mode``, ``rate``, ``load``, ``probes``, ``floor_devices``)."""

    device: DeviceTask
    mode: str
    rate: float | None
    load: LoadPath | None
    probes: int
    floor_devices: int = 1


@dataclass
class DeviceOutcome:
    """What one device's search gives back: its shapes and pruned ones, every configuration
    simulated, and the seconds spent building and sizing its shapes."""

    space: Space
    rows: list[dict[str, Any]]
    prune_s: float
    size_s: float


def run_device(task: DeviceRun) -> DeviceOutcome:
    """Prune and size one device's shapes in a worker (the executor's function)."""
    started = time.perf_counter()
    space = device_space(task.device)
    built = time.perf_counter()
    rows: list[dict[str, Any]] = []
    d = task.device
    for shape in space.shapes:
        rows.extend(
            run_shape(
                ShapeTask(
                    shape,
                    d.base,
                    d.scenario_file,
                    d.base_dir,
                    task.mode,
                    task.rate,
                    task.load,
                    task.probes,
                    task.floor_devices,
                )
            )
        )
    return DeviceOutcome(space, rows, built - started, time.perf_counter() - built)
