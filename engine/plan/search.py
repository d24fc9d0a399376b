"""``xpusim plan``: load the scenario and its ``plan:`` block, build and prune the search
space, size every shape through a sweep executor, rank, and write plan.json and plan.md.

The workload is read only through the plan knobs it declares
(:class:`~xpusim.engine.workload.PlanKnobs`). The executor runs one stream of tasks
(:mod:`.schedule`): each device's shapes are built and pruned
(:func:`~xpusim.engine.plan.probe.prune_device`, one task per device, or per device and
tensor degree when the plan names its degrees), and every shape is sized by simulations,
each its own task, queued as soon as the verdict before it is known; its workers start
while the command loads the scenario. Results are gathered in task order, never in the
order tasks finish, so plan.json is the same for any number of workers. Bad input exits 2
before anything is simulated: a workload without plan knobs, a plan value outside a
knob's range, a search that could run more simulations than ``max_configs`` (or
``--max-configs``) with how many, and a search space left empty by pruning with why for
each kind of shape and what would widen it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from xpusim.engine import __version__
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.executor import Executor, PointFailure
from xpusim.engine.host import Host
from xpusim.engine.plan import rank
from xpusim.engine.plan.bound import Mix
from xpusim.engine.plan.probe import ShapeTask, plan_task, shape_task, warm_worker
from xpusim.engine.plan.schedule import Stream
from xpusim.engine.plan.space import DeviceTask, Shape, Sizing, Space, device_tasks
from xpusim.engine.plan.spec import PlanSpec, parse_plan
from xpusim.engine.scenario import (
    apply_override,
    parse_set,
    read_scenario_data,
    resolve,
)
from xpusim.engine.workload import Knob, PlanKnobs, set_path
from xpusim.engine.yamlsrc import Source


class PlanError(XpusimError):
    """A plan whose search space is empty or larger than its simulation budget."""


@dataclass
class PlanResult:
    """The outcome of a plan: the plan.json document and the folder it was written to."""

    doc: dict[str, Any]
    out_dir: Path


ProgressFn = Callable[[int, int], None]
"""``progress(devices_done, devices_total)``."""


PLAN_BLOCKS = ("plan", "sweep", "capacity")
"""The scenario blocks a plan's configurations are built without."""


def without_plan(data: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of scenario ``data`` without :data:`PLAN_BLOCKS`."""
    return copy.deepcopy({k: v for k, v in data.items() if k not in PLAN_BLOCKS})


def workload_knobs(data: Mapping[str, Any], src: Source, host: Host, base_dir: Path) -> PlanKnobs:
    """The plan knobs the scenario's workload declares (:meth:`Workload.plan_knobs`), or a
    :class:`PlanError` naming the workload when it declares none: it cannot be planned."""
    scenario = resolve(without_plan(data), src, host, base_dir=base_dir)
    knobs = scenario.workload.plan_knobs(scenario.workload_config)
    if knobs is None:
        raise PlanError(
            f"{src.where(('workload', 'kind'))}: the {scenario.workload.name!r} workload "
            "declares no plan knobs (the load and batch settings a plan may vary), so it "
            "cannot be planned. Plan a workload that declares them (serving does), or "
            "compare chosen systems with xpusim run or xpusim sweep."
        )
    return knobs


def _knob_value(knob: Knob, value: float, src: Source, where: tuple[str, ...]) -> None:
    """Refuse a plan value outside the range the workload declares for its knob."""
    why = knob.invalid(value)
    if why:
        raise PlanError(f"{src.where(where)}: {why} (the range the workload declares).")


def prepare_base(
    data: Mapping[str, Any], spec: PlanSpec, src: Source, knobs: PlanKnobs
) -> dict[str, Any]:
    """The scenario every configuration is built on: ``data`` without its plan, sweep and
    capacity blocks, with the plan's SLO, price tier, provider, request count and rate,
    each set through the knob the workload declares for it."""
    base = without_plan(data)
    slo = spec.slo_data()
    if slo is not None:
        if knobs.slo is None:
            raise PlanError(
                f"{src.where(('plan', 'slo'))}: this workload declares no objectives block "
                "a plan may set; leave plan.slo out."
            )
        base = set_path(base, knobs.slo, slo)
    econ = base.setdefault("economics", {})
    if spec.tier is not None:
        econ.pop("pricing", None)
        econ["tier"] = spec.tier
    if spec.provider is not None:
        econ["provider"] = spec.provider
    if spec.requests is not None and knobs.requests is not None:
        _knob_value(knobs.requests, spec.requests, src, ("plan", "requests"))
        base = knobs.requests.set(base, spec.requests)
    for batch in spec.max_batch or []:
        _knob_value(batch_knob(knobs, src), batch, src, ("plan", "max_batch"))
    if isinstance(spec.load.rate, float):
        if knobs.rate is None:
            raise PlanError(
                f"{src.where(('plan', 'load', 'rate'))}: this workload's load cannot be set as "
                "a rate (a trace replays its requests as written; closed-loop clients send as "
                "their requests finish); use load: {trace: true}, or describe the traffic as "
                "an open arrival process (poisson, gamma or constant)."
            )
        _knob_value(knobs.rate, spec.load.rate, src, ("plan", "load", "rate"))
        base = knobs.rate.set(base, spec.load.rate)
    return base


def batch_knob(knobs: PlanKnobs, src: Source) -> Knob:
    """The batch-limit knob ``plan.max_batch`` sets (the one named ``max_batch``)."""
    knob = knobs.batch.get("max_batch")
    if knob is None:
        raise PlanError(
            f"{src.where(('plan', 'max_batch'))}: this workload declares no batch limit named "
            f"max_batch (it declares: {', '.join(knobs.batch) or 'none'}); a plan needs one."
        )
    return knob


def empty_space_message(space: Space, src: Source) -> str:
    """Why nothing is left to simulate, and what would widen the search."""
    reasons = [str(r["pruned"]) for r in space.pruned]
    fit = [r for r in reasons if r.startswith(("does-not-fit", "unsupported"))]
    head = f"{src.where(('plan',))}: the plan's search space is empty:"
    if reasons and len(fit) == len(reasons):
        return (
            f"{head} no candidate device can hold the model ({len(fit)} shapes tried; for "
            f"example: {fit[0]}). Widen it with larger tensor or pipeline degrees "
            "(plan.tensor, plan.pipeline), devices with more memory (plan.devices), or a "
            "smaller model or precision."
        )
    budget = [r for r in reasons if r.startswith("over budget")]
    if budget and len(budget) + len(fit) == len(reasons):
        return (
            f"{head} every configuration costs more than the budget ({budget[0]}). Raise "
            "plan.budget_usd_per_hour or add cheaper devices."
        )
    slo = [r for r in reasons if "TTFT objective" in r or "TBT objective" in r]
    if slo and len(slo) + len(fit) + len(budget) == len(reasons):
        ttft = [r for r in slo if "TTFT objective" in r]
        tbt = [r for r in slo if "TBT objective" in r]
        if ttft and tbt:
            return (
                f"{head} the SLOs contradict each other on these devices: no candidate meets "
                f"the TTFT and TBT objectives together (for example: {ttft[0]}; and: "
                f"{tbt[0]}). Loosen plan.slo (ttft_p99 or tbt_p99), allow larger tensor "
                "degrees (plan.tensor), or add faster devices."
            )
        return (
            f"{head} the SLOs cannot be met by any candidate ({slo[0]}). Loosen "
            f"plan.slo.{'ttft_p99' if ttft else 'tbt_p99'}, allow larger tensor degrees, or "
            f"{'shorten the prompts' if ttft else 'add faster devices'}."
        )
    kinds = sorted({r.split(":")[0] for r in reasons})
    example = "; ".join(reasons[:3]) or "no device has a price at the chosen tier"
    return (
        f"{head} every shape was pruned ({', '.join(kinds) or 'no devices'}; for example: "
        f"{example}). Widen it with a higher plan.count.max or budget_usd_per_hour, other "
        "devices or price tier, or a lower load."
    )


def run_plan(
    path: Path,
    host: Host,
    executor: Executor,
    out_dir: Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    overrides: Sequence[str] = (),
    max_configs: int | None = None,
    progress: ProgressFn | None = None,
) -> PlanResult:
    """Answer the scenario's ``plan:`` question and write plan.json and plan.md whole."""
    started = time.perf_counter()
    check_out(out_dir)
    data, src = read_scenario_data(path)
    for item in overrides:
        key, value = parse_set(item)
        apply_override(data, key, value, f"--set {item}")
    spec = parse_plan(data.get("plan"), src)
    # the workers start, each loading the scenario's plugins, while the command loads it
    warmup = partial(warm_worker, without_plan(data), str(path), str(path.parent))
    executor.start(workers=workers, address=address, warmup=warmup)
    knobs = workload_knobs(data, src, host, path.parent)
    base = prepare_base(data, spec, src, knobs)
    scenario = resolve(copy.deepcopy(base), src, host, base_dir=path.parent)
    knobs = scenario.workload.plan_knobs(scenario.workload_config) or knobs
    ttft, tbt = knobs.ttft_s, knobs.tbt_s
    if ttft is None and tbt is None:
        raise PlanError(
            f"{src.where(('plan',))}: a plan needs an SLO to meet; set plan.slo (for "
            "example {ttft_p99: 2 s}) or workload.slo."
        )
    rate = spec.load.rate if isinstance(spec.load.rate, float) else None
    mix = None
    if knobs.mean_prompt_tokens is not None and knobs.mean_output_tokens is not None:
        mix = Mix(knobs.mean_prompt_tokens, knobs.mean_output_tokens)
    sizing = Sizing(mix, rate, ttft, knobs.kv_memory_fraction, tbt)
    econ = scenario.config.economics
    batch = batch_knob(knobs, src)
    dev_tasks, pruned = device_tasks(base, scenario, host, spec, econ, sizing, batch)
    limit = max_configs if max_configs is not None else spec.max_configs
    shapes = sum(len(t.tensors or [1]) * len(spec.pipeline) * len(t.batches) for t in dev_tasks)
    worst = shapes * spec.probes
    if worst > limit:
        devices = len({t.device for t in dev_tasks})
        raise PlanError(
            f"{src.where(('plan',))}: the search could run up to {worst:,} simulations "
            f"({shapes} configuration shapes over {devices} devices x up to {spec.probes} "
            f"probes), more than the simulation budget of {limit:,}. Narrow the "
            "block (plan.devices, plan.tensor, plan.max_batch) or lower plan.probes, or raise "
            "plan.max_configs or pass --max-configs."
        )
    mode = "rate" if spec.load.highest else "count"
    where = knobs.rate if mode == "rate" else None
    if mode == "rate" and where is None:
        raise PlanError(
            f"{src.where(('plan', 'load'))}: rate: max needs a load the plan can raise, and "
            "this workload's load cannot be set as a rate (it replays a trace as written); "
            "describe the traffic as an arrival process."
        )
    timings = {"prepare_s": time.perf_counter() - started}
    space, rows, figures = _search(
        dev_tasks, pruned, executor, mode, rate, where, spec, workers, address, progress, timings
    )
    timings["search_s"] = time.perf_counter() - started - timings["prepare_s"]
    if not space.shapes:
        raise PlanError(empty_space_message(space, src))
    rows.sort(
        key=lambda r: (
            r["device"],
            r["tensor"],
            r["pipeline"],
            r["max_batch"],
            r.get("replicas", 0),
            r.get("rate_per_s") or 0.0,
        )
    )
    order = rank.ranked(rows, mode)
    best = order[0] if order else None
    load = "at the workload's own load" if rate is None else f"at {rate:g} req/s"
    doc: dict[str, Any] = {
        "scenario": scenario.name,
        "xpusim_version": __version__,
        "mode": mode,
        "load": {"rate_per_s": rate, "highest": spec.load.highest, "trace": spec.load.trace},
        "slo": {"ttft_p99_s": ttft, "tbt_p99_s": tbt},
        "pricing": {
            "tier": scenario.config.economics.tier,
            "pricing": scenario.config.economics.pricing,
            "provider": scenario.config.economics.provider,
        },
        "shapes": len(space.shapes),
        "simulations": sum(1 for r in rows if "replicas" in r),
        "configurations": rows,
        "pruned": space.pruned,
        "best_per_device": rank.best_per_device(order),
        "best": best,
        "answer": rank.answer(rows, best, mode, load),
        "warnings": rank.price_warnings(rows),
        "table": rank.table_rows(order),
        "executor": executor.name,
        "workers": workers,
        "rounds": figures["rounds"],
        "unused_simulations": figures["unused_simulations"],
        "timings": timings,
    }
    doc["wall_s"] = time.perf_counter() - started
    write_plan(doc, out_dir)
    return PlanResult(doc, out_dir)


def _search(
    dev_tasks: Sequence[DeviceTask],
    early: Sequence[dict[str, Any]],
    executor: Executor,
    mode: str,
    rate: float | None,
    where: Knob | None,
    spec: PlanSpec,
    workers: int | None,
    address: str | None,
    progress: ProgressFn | None,
    timings: dict[str, float],
) -> tuple[Space, list[dict[str, Any]], dict[str, Any]]:
    """Prune every device task and size every shape left, as one stream of tasks through
    ``executor`` (:mod:`.schedule`): the space (shapes and pruned, ``early`` first, then
    in task order), every configuration simulated, and the stream's figures (``rounds``,
    the most simulations one shape's search took in turn; ``unused_simulations``)."""
    devices = sorted({t.device for t in dev_tasks})

    def report(done: set[int]) -> None:
        open_ = {t.device for i, t in enumerate(dev_tasks) if i not in done}
        if progress is not None:
            progress(len(devices) - len(open_), len(devices))

    def make_task(shape: Shape, task: DeviceTask) -> ShapeTask:
        return shape_task(shape, task, mode, rate, where, spec.probes, spec.count.min)

    def map_more(points: Sequence[Any], more: Callable[[int, Any], list[Any]]) -> Any:
        return executor.map_more(plan_task, points, more, workers=workers, address=address)

    if progress:
        progress(0, len(devices))
    stream = Stream(dev_tasks, make_task, executor.slots(workers, address), report)
    got = stream.run(map_more)
    space = Space(pruned=list(early))
    rows: list[dict[str, Any]] = []
    timings["prune_task_s"] = 0.0
    for task, pruned, shape_rows in zip(dev_tasks, got.pruned, got.rows, strict=True):
        if isinstance(pruned, PointFailure):
            space.pruned.append({"device": task.device, "pruned": f"failed: {pruned.error}"})
            continue
        timings["prune_task_s"] += pruned.prune_s
        space.pruned.extend(pruned.space.pruned)
        space.shapes.extend(pruned.space.shapes)
        rows.extend(r for one in shape_rows for r in one)
    timings["size_task_s"] = sum(float(r.get("wall_s", 0.0)) for r in rows) + got.unused_s
    timings["size_task_cpu_s"] = sum(float(r.get("cpu_s", 0.0)) for r in rows) + got.unused_cpu_s
    figures = {
        "rounds": max((len(one) for per in got.rows for one in per), default=0),
        "unused_simulations": got.unused,
    }
    return space, rows, figures


def check_out(out_dir: Path) -> None:
    """Refuse, before any work, a plan folder that exists and is not empty."""
    out_dir = Path(out_dir)
    taken = out_dir.is_dir() and any(out_dir.iterdir())
    if taken or (out_dir.exists() and not out_dir.is_dir()):
        raise ScenarioError(
            f"--out {out_dir}: that path exists and is not an empty folder; a plan never "
            "overwrites anything. Name a new folder."
        )


def write_plan(doc: Mapping[str, Any], out_dir: Path) -> None:
    """Write plan.json and plan.md into ``out_dir`` whole (a temporary folder renamed)."""
    out_dir = Path(out_dir)
    check_out(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "plan.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    (tmp / "plan.md").write_text(rank.markdown(doc), encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
