"""Sizing shapes by simulation: each shape's search, and the tasks workers run.

Each shape's search is a generator (:func:`shape_steps`): it yields the next
configuration to simulate, ``(replicas, rate)``, and is sent whether it met the SLOs.
:mod:`.schedule` runs every shape's search side by side, each simulation its own task of
the sweep executor (:func:`plan_task`); :func:`replay` gives the probe a search asks for
after any history of verdicts, which is what idle workers speculate on. A shape's
sequence of probes depends only on its own verdicts, so the configurations simulated, and
the answer, are the same whatever the number of workers or the order tasks finish in.

In ``count`` mode a search finds the fewest replicas that meet the SLOs at the offered
load. It starts at the shape's lower bound (the closed-form one, or the count limit); on
a pass it steps down until a count misses (so the bound is checked, never trusted), on a
miss it doubles until a count passes or the limit is reached, then it bisects between
the last miss and the first pass. The answer's next cheaper count (one replica fewer) was
therefore simulated and missed, unless the answer is the fewest the limits allow. In
``rate`` mode it holds the most replicas the limits allow and, from the closed-form
bound, halves or doubles the offered rate until the knee is bracketed, then bisects
(:func:`xpusim.engine.capacity.knee_steps`). Every simulation is a row of plan.json.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpusim.engine.capacity import knee_steps, meets_slo
from xpusim.engine.errors import XpusimError
from xpusim.engine.executor import PointFailure
from xpusim.engine.plan.space import DeviceTask, Shape, Space, config_data, device_space
from xpusim.engine.run import load_point, simulate
from xpusim.engine.scenario import resolve
from xpusim.engine.sweep import worker_host
from xpusim.engine.workload import Knob
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
    workload's own load) or ``rate`` (highest rate at the most replicas); ``load`` is the
    workload's load knob, which sets the rate."""

    shape: Shape
    base: dict[str, Any]
    scenario_file: str
    base_dir: str
    mode: str
    rate: float | None
    load: Knob | None
    probes: int
    floor_devices: int = 1
    tolerance: float = 0.05


def config_row(shape: Shape, replicas: int, rate: float | None) -> dict[str, Any]:
    """The start of a plan.json row: ``shape`` at ``replicas`` replicas and offered
    ``rate``, its device count and its price."""
    count = replicas * shape.replica_devices
    return {
        **shape.params(),
        "replicas": replicas,
        "count": count,
        "rate_per_s": rate,
        "usd_per_hour": count * shape.price.usd_per_device_hour,
        "price": shape.price.to_json(),
    }


def simulate_config(task: ShapeTask, replicas: int, rate: float | None) -> dict[str, Any]:
    """Simulate ``task.shape`` at ``replicas`` replicas and offered ``rate``: one row."""
    shape = task.shape
    data = config_data(task.base, shape, replicas)
    if rate is not None and task.load is not None:
        data = task.load.set(data, rate)
    row = config_row(shape, replicas, rate)
    started = time.perf_counter()
    cpu0 = time.process_time()
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
    row["cpu_s"] = time.process_time() - cpu0
    return row


Steps = Generator[tuple[int, float | None], bool, None]
"""A shape's search: yields ``(replicas, rate)`` to simulate, is sent whether it met."""


def count_steps(task: ShapeTask) -> Steps:
    """The fewest replicas meeting the SLOs (see the module docstring)."""
    shape = task.shape
    floor = max(1, -(-task.floor_devices // shape.replica_devices))
    ceiling = shape.max_replicas
    rate = task.rate
    guess = shape.min_replicas
    fail: int | None = None
    ok: int | None = None
    n = 1
    if (yield guess, rate):
        ok, step = guess, 1
        while ok > floor and n < task.probes:
            r = max(floor, ok - step)
            n += 1
            if (yield r, rate):
                ok, step = r, step * 2
            else:
                fail = r
                break
        if fail is None and ok == floor:
            fail = floor - 1
    else:
        fail = guess
        while fail < ceiling and n < task.probes:
            r = min(fail * 2, ceiling)
            n += 1
            if (yield r, rate):
                ok = r
                break
            fail = r
    while ok is not None and fail is not None and ok - fail > 1 and n < task.probes:
        mid = (fail + ok) // 2
        n += 1
        if (yield mid, rate):
            ok = mid
        else:
            fail = mid


def rate_steps(task: ShapeTask) -> Steps:
    """The highest offered rate meeting the SLOs at the most replicas allowed."""
    shape = task.shape
    replicas = shape.max_replicas
    start = 1.0 if shape.bound_per_s is None else shape.bound_per_s * replicas
    knee = knee_steps(start, probes=task.probes, tolerance=task.tolerance)
    try:
        rate = next(knee)
        while True:
            rate = knee.send((yield replicas, rate))
    except StopIteration:
        return


def shape_steps(task: ShapeTask) -> Steps:
    """The search ``task.mode`` asks for."""
    return rate_steps(task) if task.mode == "rate" else count_steps(task)


@dataclass(frozen=True)
class SimPoint:
    """One simulation of a round: ``task``'s shape at ``replicas`` and offered ``rate``."""

    task: ShapeTask
    replicas: int
    rate: float | None


def simulate_point(point: SimPoint) -> dict[str, Any]:
    """The executor's function for one simulation: its plan.json row."""
    return simulate_config(point.task, point.replicas, point.rate)


def failed_row(point: SimPoint, failure: PointFailure) -> dict[str, Any]:
    """The row of a simulation whose task raised or whose worker died: a miss."""
    return {
        **config_row(point.task.shape, point.replicas, point.rate),
        "status": "failed",
        "reason": failure.error,
        "met": False,
        "metrics": {},
        "wall_s": 0.0,
        "cpu_s": 0.0,
    }


def advance(gen: Steps, met: bool | None) -> tuple[int, float | None] | None:
    """The search's next probe after the verdict ``met`` (``None``: start it), or ``None``
    when it has ended."""
    try:
        return next(gen) if met is None else gen.send(met)
    except StopIteration:
        return None


def replay(task: ShapeTask, verdicts: Sequence[bool]) -> tuple[int, float | None] | None:
    """The probe ``task``'s search asks for after ``verdicts`` (a fresh search fed them
    in turn), or ``None`` when it has ended by then. A search depends only on its own
    verdicts, so this is what it would ask after any such history, real or supposed."""
    gen = shape_steps(task)
    probe = advance(gen, None)
    for met in verdicts:
        if probe is None:
            return None
        probe = advance(gen, met)
    gen.close()
    return probe


def plan_task(task: DeviceTask | SimPoint) -> Pruned | dict[str, Any]:
    """The executor's one function for a plan: build and prune one device's shapes, or
    run one simulation (its plan.json row)."""
    if isinstance(task, SimPoint):
        return simulate_point(task)
    return prune_device(task)


def warm_worker(data: dict[str, Any], scenario_file: str, base_dir: str) -> None:
    """A worker's warm-up before its first task (:meth:`Executor.start`): resolve the
    plan's scenario ``data`` with the worker's host, which loads the workload, the model
    family and the backends it names, and their catalogs, while the command is still
    loading the same scenario."""
    host = worker_host()
    resolve(copy.deepcopy(data), Source(f"{scenario_file} (plan)"), host, base_dir=Path(base_dir))


@dataclass
class Pruned:
    """One device task's shapes and pruned ones, and the seconds building them took."""

    space: Space
    prune_s: float


def prune_device(task: DeviceTask) -> Pruned:
    """Build and prune one device's shapes in a worker (the executor's function)."""
    started = time.perf_counter()
    space = device_space(task)
    return Pruned(space, time.perf_counter() - started)


def shape_task(
    shape: Shape,
    device: DeviceTask,
    mode: str,
    rate: float | None,
    load: Knob | None,
    probes: int,
    floor_devices: int,
) -> ShapeTask:
    """The sizing task of one of ``device``'s shapes."""
    return ShapeTask(
        shape,
        device.base,
        device.scenario_file,
        device.base_dir,
        mode,
        rate,
        load,
        probes,
        floor_devices,
    )
