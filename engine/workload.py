"""The contract between the engine and a workload kind.

A workload kind (``serving``, ``offline``, ``training``, ``spiking`` ...) is registered
through ``register_workloads``. It validates its scenario block with its own pydantic
model and simulates one system in a SimPy world, returning a :class:`SystemRun`: event
frames and the summary metrics of that system.

A workload that ``xpusim plan`` may size declares its *plan knobs*
(:meth:`Workload.plan_knobs`, a :class:`PlanKnobs`): the settings a plan may vary (the
offered request rate, the batch limits, the requests per simulation), where each lives in
the scenario and its valid range, and what the plan reads to size its search (the
objectives, the mean request, the KV share of memory). The engine's planner reads only
that, never a workload's fields by name; a workload that declares none cannot be planned.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.budget import Work
from xpusim.engine.device import Figure
from xpusim.engine.frames import FrameMap
from xpusim.engine.metrics import Metric
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import System


@dataclass
class SystemRun:
    """What simulating one system produced.

    ``metrics`` holds summary keys of the run-folder contract that apply
    (``throughput_tokens_per_s``, ``ttft_p99_s`` ...), each declared in the workload's
    :attr:`Workload.metrics` or the engine's vocabulary; ``frames`` the event frames by name
    (``requests``, ``steps``, ``devices``), each with a ``system`` column: a
    ``pl.DataFrame``, or a ``pl.LazyFrame`` over Parquet parts when the run spilled past
    the row threshold (:mod:`xpusim.engine.frames`; every engine consumer accepts both).
    ``busy_s``/``state_s`` give device-seconds by power state for the energy model.
    ``figures`` holds what the workload itself relied on beyond the backend's figures (a
    serving stack's host time, CUDA-graph sizes, KV fraction, all-reduce kernel), by
    dotted name, each with its source, for the report's "Assumptions and sources".
    """

    metrics: dict[str, Any]
    frames: FrameMap = field(default_factory=dict)
    simulated_s: float = 0.0
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadContext:
    """Everything a workload needs to simulate one system.

    ``resolve_trace(spec)`` reads a trace spec through the registered trace formats;
    ``progress(done, total)`` advances the progress bar; ``base_dir`` is the scenario
    file's folder, against which relative paths resolve.
    """

    system: System
    compiled: Compiled
    model: ModelGraph
    seed: int
    base_dir: Path
    resolve_trace: Callable[[Mapping[str, Any]], Any]
    progress: Callable[[float, float], None] = lambda done, total: None


@dataclass(frozen=True)
class Knob:
    """One scenario setting a plan may set: where it lives and which values are valid.

    ``path`` is the key path from the top of the scenario (``("workload", "arrivals",
    "rate")``); ``low`` and ``high`` bound the valid values (inclusive; ``None``: no
    bound); ``integer`` says only whole values are valid; ``unit`` is written after a
    value (``"/s"`` for a rate; ``""``: the number itself); ``current`` is the scenario's
    own value (``None`` when it has none); ``clears`` are key paths removed when the knob
    is set (a request count replaces a duration)."""

    path: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    integer: bool = False
    unit: str = ""
    current: float | None = None
    clears: tuple[tuple[str, ...], ...] = ()

    @property
    def dotted(self) -> str:
        """The path as ``--set`` writes it: ``workload.arrivals.rate``."""
        return ".".join(self.path)

    def invalid(self, value: float) -> str:
        """Why ``value`` is not valid for this knob, or ``""``."""
        if self.integer and value != int(value):
            return f"{self.dotted} must be a whole number, got {value:g}"
        if self.low is not None and value < self.low:
            return f"{self.dotted} must be at least {self.low:g}{self.unit}, got {value:g}"
        if self.high is not None and value > self.high:
            return f"{self.dotted} must be at most {self.high:g}{self.unit}, got {value:g}"
        return ""

    def scenario_value(self, value: float) -> Any:
        """``value`` as the scenario writes it: an int, or a number and its unit."""
        if self.integer:
            return int(value)
        return f"{value:.9g}{self.unit}" if self.unit else float(value)

    def set(self, data: Mapping[str, Any], value: float) -> dict[str, Any]:
        """A copy of scenario ``data`` with this knob at ``value`` (and ``clears`` gone)."""
        out = copy.deepcopy(dict(data))
        for gone in self.clears:
            node: Any = out
            for key in gone[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(gone[-1], None)
        return set_path(out, self.path, self.scenario_value(value))


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``data`` with ``value`` at key ``path`` (intermediate mappings made as needed)."""
    node = data
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = node[key] = {}
        node = nxt
    node[path[-1]] = value
    return data


@dataclass(frozen=True)
class PlanKnobs:
    """What ``xpusim plan`` may vary of a workload, and what it reads to size a search
    (declared by :meth:`Workload.plan_knobs` for one validated configuration).

    The knobs: ``rate``, the load knob, the offered request rate (``None``: the workload's
    load cannot be set as a rate, for example a trace replayed as written; such a plan
    takes the load as written, ``load: {trace: true}``); ``batch``, the batch-limit knobs
    by name (``plan.max_batch`` sets the one named ``max_batch``); ``requests``, the
    requests one simulation replays (``plan.requests``); ``slo``, the key path of the
    objectives block ``plan.slo`` replaces (written ``{ttft_p99: 2 s, tbt_p99: 50 ms}``).

    What sizing reads: ``ttft_s`` and ``tbt_s``, the objectives in seconds (``None``:
    none); ``mean_prompt_tokens`` and ``mean_output_tokens``, the mean request (``None``:
    not known before simulating, then the closed-form bound is skipped);
    ``kv_memory_fraction``, the share of device memory weights plus KV cache may use.
    """

    rate: Knob | None = None
    batch: Mapping[str, Knob] = field(default_factory=dict)
    requests: Knob | None = None
    slo: tuple[str, ...] | None = None
    ttft_s: float | None = None
    tbt_s: float | None = None
    mean_prompt_tokens: float | None = None
    mean_output_tokens: float | None = None
    kv_memory_fraction: float = 0.9


class Workload(ABC):
    """A workload kind.

    Contract: ``name`` is the key used in ``workload.kind``; ``schema`` is a pydantic model
    (``extra="forbid"``) of the scenario's ``workload`` block minus ``kind``;
    :meth:`simulate` runs one system and never prints. ``metrics`` declares every
    summary key :meth:`simulate` emits (:class:`~xpusim.engine.metrics.Metric`: label,
    unit, scale, which direction is better, where it is shown); the engine adds its own
    (energy, cost, carbon, ``simulated_s``), and every output (the terminal table, the
    reports, the sweep report, ``compare``) shows what this vocabulary says. Optional
    capabilities have defaults: :meth:`traces`, :meth:`shape_hint`, :meth:`work`,
    :meth:`fit`, and :meth:`plan_knobs` (what ``xpusim plan`` may vary; without it the
    workload cannot be planned).
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"
    schema: type[BaseModel]
    metrics: tuple[Metric, ...] = ()

    @abstractmethod
    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Simulate ``config`` on ``ctx.system`` and return its frames and metrics."""
        raise NotImplementedError(self)

    def traces(self, config: BaseModel) -> list[Mapping[str, Any]]:
        """The trace specs ``config`` reads (each the mapping :meth:`simulate` hands to
        ``ctx.resolve_trace``), so that ``xpusim validate`` can read them before any work.
        The default: none."""
        return []

    def shape_hint(self, config: BaseModel) -> Mapping[str, Any]:
        """Sizes a backend's fit check needs before simulating: ``kv_tokens`` (serving),
        ``batch``; used by the default :meth:`fit`."""
        return {}

    def work(self, config: BaseModel, system: System, model: ModelGraph) -> Work | None:
        """The estimated events of simulating ``config`` on ``system`` (and the simulated
        time it spans, where known), from the stated sizes alone, so that the engine can
        refuse a run above the work budget before it starts
        (:func:`xpusim.engine.budget.check_work`). The default: no estimate."""
        return None

    def runtime_model(self, config: BaseModel, system: System, model: ModelGraph) -> ModelGraph:
        """``model`` as the software this workload runs on ``system`` executes it, when
        that software builds kernels of its own the scenario's model does not describe (a
        serving stack that runs an FP8 checkpoint's context attention in FP8); the model
        every later step prices, fits and reports. Called once per system when the
        scenario loads. The default: ``model`` itself."""
        return model

    def plan_knobs(self, config: BaseModel) -> PlanKnobs | None:
        """The knobs ``xpusim plan`` may vary for ``config`` and what it reads to size a
        search (:class:`PlanKnobs`); the planner reads nothing else of the workload. The
        default: none, so a plan over this workload is refused (exit 2) naming it."""
        return None

    def fit(self, config: BaseModel, system: System, compiled: Compiled) -> Fit:
        """Whether this workload fits ``system``'s memory. The default asks the backend
        (:meth:`Compiled.fit`) with :meth:`shape_hint`; workloads with their own memory
        model (training: weights, gradients, optimizer states, activations) override it."""
        hint = self.shape_hint(config)
        return compiled.fit(
            kv_tokens=int(hint.get("kv_tokens", 0)),
            batch=int(hint.get("batch", 1)),
            training=bool(hint.get("training", False)),
        )
