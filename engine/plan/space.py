"""The search space of a plan and what is pruned from it before anything is simulated.

A *shape* is one way to build a configuration: a device, a tensor and pipeline degree (a
replica spans ``tensor x pipeline`` devices) and a batch limit (set through the workload's
``max_batch`` knob, :class:`~xpusim.engine.workload.PlanKnobs`); the search then
picks its number of replicas. Shapes are pruned, each with the reason recorded, when:

* the device's backend does not support the model or workload;
* the device has no price at the plan's tier (a plan ranks by cost);
* one replica does not fit the device's memory at that degree;
* the closed-form bound (:mod:`.bound`) says even ``count.max`` devices (or the budget)
  cannot carry the offered rate with a margin (:data:`BOUND_MARGIN`), or one prompt's
  prefill alone exceeds the TTFT objective;
* even one replica costs more per hour than the budget.

Support and price are checked here (:func:`device_tasks`); the rest compiles the model, so
each device's shapes are built in a worker of the sweep executor (:func:`device_space`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpusim.engine.device import DeviceSpec
from xpusim.engine.economics import HOUR_S, EconomicsConfig
from xpusim.engine.economics.owned import lifetime_figure
from xpusim.engine.economics.pricebook import is_stale
from xpusim.engine.economics.rented import catalog_price, choose_price
from xpusim.engine.errors import UnknownNameError
from xpusim.engine.host import Host
from xpusim.engine.plan.bound import Mix, replica_bound
from xpusim.engine.plan.spec import PlanSpec
from xpusim.engine.registry import unknown_message
from xpusim.engine.run import prepare
from xpusim.engine.scenario import Scenario, resolve
from xpusim.engine.sweep import worker_host
from xpusim.engine.workload import Knob
from xpusim.engine.yamlsrc import Source

BOUND_MARGIN = 1.5
"""A shape is pruned by the bound only when even this many times the bound falls short:
the bound prices mean requests, and a finite run can meet the SLOs slightly above it."""

AUTO_TENSOR = (1, 2, 4, 8, 16)
"""Tensor degrees tried when the plan names none: every one within one node whose shapes
are not pruned (a replica fits, with room for enough KV cache to carry the load). Not only
the smallest: a model that barely fits one device often serves more per device, and so
costs less, at twice the degree (Llama-3-70B on B200 at 10 req/s: 2 devices at tensor 2
against more at tensor 1)."""


@dataclass(frozen=True)
class Price:
    """What one device costs per hour at the plan's tier, and where the figure is from.
    A purchase is its price over the ownership lifetime (electricity not included).

    ``tier`` is the catalog tier it came from (``hyperscaler`` ...; ``device`` or
    ``scenario`` for a price outside the catalog), ``provider`` who publishes it (empty
    when not known), and ``stale`` whether its date is more than a year before
    ``reference_date`` (``economics.price_date``, else today; ``None``: no date stated)."""

    usd_per_device_hour: float
    cited: str
    date: str
    tier: str = ""
    provider: str = ""
    stale: bool | None = None
    reference_date: str = ""

    def to_json(self) -> dict[str, Any]:
        """The price as plan.json writes it."""
        return {
            "usd_per_device_hour": self.usd_per_device_hour,
            "cited": self.cited,
            "date": self.date or None,
            "tier": self.tier or None,
            "provider": self.provider or None,
            "stale": self.stale,
            "reference_date": self.reference_date or None,
        }


@dataclass
class Shape:
    """A configuration shape the search will size: device, degrees and batch limit, its
    price, and the replica bound (``None`` when the request mix is not known)."""

    device: str
    backend: str
    tensor: int
    pipeline: int
    max_batch: int
    price: Price
    bound_per_s: float | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    batch_knob: Knob | None = None

    @property
    def replica_devices(self) -> int:
        """Devices one replica spans."""
        return self.tensor * self.pipeline

    def params(self) -> dict[str, Any]:
        """The shape's parameters as plan.json writes them."""
        return {
            "device": self.device,
            "backend": self.backend,
            "tensor": self.tensor,
            "pipeline": self.pipeline,
            "max_batch": self.max_batch,
        }


@dataclass
class Space:
    """Shapes left to simulate and the pruned ones (``params`` plus ``pruned`` reason)."""

    shapes: list[Shape] = field(default_factory=list)
    pruned: list[dict[str, Any]] = field(default_factory=list)


def system_data(shape: Shape, replicas: int) -> dict[str, Any]:
    """The ``systems:`` entry of ``shape`` at ``replicas`` replicas."""
    tp = f"t{shape.tensor}" + (f"p{shape.pipeline}" if shape.pipeline > 1 else "")
    return {
        "name": f"{shape.device}-{tp}-b{shape.max_batch}-x{replicas * shape.replica_devices}",
        "backend": shape.backend,
        "device": shape.device,
        "count": replicas * shape.replica_devices,
        "parallelism": {"tensor": shape.tensor, "pipeline": shape.pipeline},
    }


def config_data(base: Mapping[str, Any], shape: Shape, replicas: int) -> dict[str, Any]:
    """Scenario ``base`` with one system: ``shape`` at ``replicas`` replicas and its batch
    limit (set through the workload's batch knob)."""
    data = copy.deepcopy(dict(base))
    if shape.batch_knob is not None:
        data = shape.batch_knob.set(data, shape.max_batch)
    data["systems"] = [system_data(shape, replicas)]
    return data


def device_price(spec: DeviceSpec, econ: EconomicsConfig) -> Price | None:
    """The hourly price of ``spec`` at the economics block's tier, or ``None``, with the
    tier and provider it came from and whether it is older than a year."""
    chosen = choose_price(spec, econ, econ.pricing)
    fig = chosen.figure
    if fig is None:
        return None
    today = econ.price_date or _dt.date.today()
    provider = chosen.offer.provider if chosen.offer is not None else ""
    usd, cited = fig.value * HOUR_S, fig.cited
    if econ.pricing == "owned":
        hours = lifetime_figure(econ).value / HOUR_S
        usd, cited = fig.value / hours, f"{fig.cited}, over {hours:,.0f} h of life"
    stale = is_stale(fig.date, today)
    return Price(usd, cited, fig.date, chosen.tier, provider, stale, today.isoformat())


def devices(
    host: Host, scenario: Scenario, names: list[str] | None
) -> list[tuple[str, DeviceSpec]]:
    """``(backend, spec)`` of the plan's devices: the named ones (any backend's, aliases
    resolved), else every device of every backend.

    Named devices are looked up in the backends already loaded first (those the
    scenario's own systems use), then the others one at a time, stopping once every name
    is found: a plan over GPUs never imports the CPU backend's machinery (torch) for
    nothing. A name two backends both list resolves to the first searched."""
    backends = host.backends.names()
    if names is None:
        return [
            (b, spec)
            for b in backends
            for _, spec in sorted(host.backends.get(b).devices().items())
        ]
    order = sorted(backends, key=lambda b: (not host.backends.loaded(b), b))
    found: dict[str, tuple[str, DeviceSpec]] = {}
    seen: list[DeviceSpec] = []
    for b in order:
        for spec in host.backends.get(b).devices().values():
            seen.append(spec)
            for name in names:
                if name not in found and (name == spec.name or name in spec.aliases):
                    found[name] = (b, spec)
        if len(found) == len(names):
            break
    for name in names:
        if name not in found:
            known = sorted({s.name for s in seen})
            raise UnknownNameError(
                unknown_message("device", name, known, scenario.source.where(("plan", "devices")))
            )
    return [found[name] for name in names]


def _fit(base: Mapping[str, Any], shape: Shape, scenario: Scenario, host: Host) -> tuple[Any, str]:
    """Compile one replica of ``shape``: its compiled model, or ``None`` and why not."""
    sc = resolve(config_data(base, shape, 1), scenario.source, host, base_dir=scenario.base_dir)
    prep = prepare(sc, host)[0]
    if prep.compiled is None:
        return None, f"{prep.result.status}: {prep.result.reason}"
    return prep.compiled, ""


@dataclass(frozen=True)
class Sizing:
    """What sizing a shape reads: the request mix, the offered rate, the TTFT objective,
    the KV share of memory and the TBT objective."""

    mix: Mix | None
    rate: float | None
    ttft_slo_s: float | None
    kv_fraction: float
    tbt_slo_s: float | None = None


@dataclass(frozen=True)
class DeviceTask:
    """What a worker needs to build one device's shapes: picklable and self-contained.
    ``tensors`` are the tensor degrees this task tries (``None``: the automatic choice)."""

    base: dict[str, Any]
    scenario_file: str
    base_dir: str
    backend: str
    device: str
    price: Price
    spec: PlanSpec
    sizing: Sizing
    batches: tuple[int, ...]
    tensors: tuple[int, ...] | None = None
    batch_knob: Knob | None = None


def device_tasks(
    base: Mapping[str, Any],
    scenario: Scenario,
    host: Host,
    spec: PlanSpec,
    econ: EconomicsConfig,
    sizing: Sizing,
    batch_knob: Knob,
) -> tuple[list[DeviceTask], list[dict[str, Any]]]:
    """The plan's devices as tasks, and those pruned at once: unsupported, or with no
    price at the tier (a plan ranks by cost). The batch limits are the plan's, else the
    workload's own (``batch_knob``'s current value)."""
    batches = spec.max_batch or [int(batch_knob.current or 1)]
    tasks: list[DeviceTask] = []
    pruned: list[dict[str, Any]] = []
    src = scenario.path or Path(scenario.source.file)
    for backend, dev in devices(host, scenario, spec.devices):
        head = {"device": dev.name, "backend": backend}
        support = host.backends.get(backend).supports(scenario.model, scenario.workload.name)
        if not support.ok:
            pruned.append({**head, "pruned": f"unsupported: {support.reason}"})
            continue
        price = device_price(dev, econ)
        if price is None:
            _, why = catalog_price(dev, econ, econ.pricing)
            pruned.append({**head, "pruned": f"no price: {why}"})
            continue
        # named tensor degrees are independent tasks; the automatic choice tries them in turn
        for tensors in [(t,) for t in spec.tensor] if spec.tensor else [None]:
            tasks.append(
                DeviceTask(
                    dict(base),
                    str(src),
                    str(scenario.base_dir),
                    backend,
                    dev.name,
                    price,
                    spec,
                    sizing,
                    tuple(batches),
                    tensors,
                    batch_knob,
                )
            )
    return tasks, pruned


def device_space(task: DeviceTask) -> Space:
    """The shapes of one device (at the task's tensor degrees), pruned by memory fit, the
    capacity bound and the budget; it runs in a worker with that worker's plugin host."""
    host = worker_host()
    scenario = resolve(
        copy.deepcopy(task.base),
        Source(f"{task.scenario_file} (plan)"),
        host,
        base_dir=Path(task.base_dir),
    )
    spec = task.spec
    per_node = host.device(task.backend, task.device).devices_per_node
    space = Space()
    for tensor in task.tensors or AUTO_TENSOR:
        if task.tensors is None and tensor > per_node:
            break
        for pipeline in spec.pipeline:
            for batch in task.batches:
                shape = Shape(
                    task.device,
                    task.backend,
                    tensor,
                    pipeline,
                    batch,
                    task.price,
                    batch_knob=task.batch_knob,
                )
                _consider(shape, task.base, scenario, host, spec, space, task.sizing)
    return space


def _consider(
    shape: Shape,
    base: Mapping[str, Any],
    scenario: Scenario,
    host: Host,
    spec: PlanSpec,
    space: Space,
    sizing: Sizing,
) -> None:
    """Keep or prune ``shape`` (recording why)."""
    row = {**shape.params(), "price": shape.price.to_json()}
    if shape.replica_devices > spec.count.max:
        why = f"one replica needs {shape.replica_devices} devices, above count.max {spec.count.max}"
        space.pruned.append({**row, "pruned": why})
        return
    compiled, why = _fit(base, shape, scenario, host)
    if compiled is None:
        space.pruned.append({**row, "pruned": why})
        return
    why = _size(shape, spec, compiled, sizing)
    if why:
        space.pruned.append({**row, "bound_per_replica_per_s": shape.bound_per_s, "pruned": why})
        return
    space.shapes.append(shape)


def _size(shape: Shape, spec: PlanSpec, compiled: Any, sizing: Sizing) -> str:
    """Set ``shape``'s replica range from the count limits, the budget and the bound;
    return why the shape is pruned, or ``""``."""
    m = shape.replica_devices
    hi = spec.count.max // m
    if spec.budget_usd_per_hour is not None:
        affordable = int(spec.budget_usd_per_hour // (shape.price.usd_per_device_hour * m))
        if affordable < 1:
            return (
                f"over budget: one replica ({m} devices) costs "
                f"{shape.price.usd_per_device_hour * m:.4g} USD/h, above "
                f"budget_usd_per_hour {spec.budget_usd_per_hour:g}"
            )
        hi = min(hi, affordable)
    lo = max(1, math.ceil(spec.count.min / m))
    mix, rate, ttft_slo_s = sizing.mix, sizing.rate, sizing.ttft_slo_s
    if mix is not None:
        b = replica_bound(compiled, mix, shape.max_batch, sizing.kv_fraction)
        shape.bound_per_s = b.rate_per_s
        if ttft_slo_s is not None and b.prefill_s > ttft_slo_s:
            return (
                f"bound: one mean prompt's prefill alone takes {b.prefill_s:.3g} s, above the "
                f"TTFT objective {ttft_slo_s:.3g} s"
            )
        if sizing.tbt_slo_s is not None and b.decode_s > sizing.tbt_slo_s:
            return (
                f"bound: one decode step of a single sequence takes {b.decode_s:.3g} s, above "
                f"the TBT objective {sizing.tbt_slo_s:.3g} s"
            )
        if rate is not None:
            need = math.ceil(rate / b.rate_per_s - 1e-9)
            if math.ceil(rate / (BOUND_MARGIN * b.rate_per_s) - 1e-9) > hi:
                return (
                    f"bound: a replica serves at most about {b.rate_per_s:.3g} req/s, so "
                    f"{rate:.4g} req/s needs about {need} replicas ({need * m} devices), well "
                    f"above the {hi} replicas the count limit and budget allow"
                )
            lo = max(lo, min(need, hi))
    if lo > hi:
        return f"count: at least {lo * m} devices needed, above the {hi * m} allowed"
    shape.min_replicas, shape.max_replicas = lo, hi
    return ""
