"""The contract between the engine and a workload kind.

A workload kind (``serving``, ``offline``, ``training``, ``spiking`` ...) is registered
through ``register_workloads``. It validates its scenario block with its own pydantic
model and simulates one system in a SimPy world, returning a :class:`SystemRun`: event
frames and the summary metrics of that system.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.budget import Work
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
    """

    metrics: dict[str, Any]
    frames: FrameMap = field(default_factory=dict)
    simulated_s: float = 0.0


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


class Workload(ABC):
    """A workload kind.

    Contract: ``name`` is the key used in ``workload.kind``; ``schema`` is a pydantic model
    (``extra="forbid"``) of the scenario's ``workload`` block minus ``kind``;
    :meth:`simulate` runs one system and never prints. ``metrics`` declares every
    summary key :meth:`simulate` emits (:class:`~xpusim.engine.metrics.Metric`: label,
    unit, scale, which direction is better, where it is shown); the engine adds its own
    (energy, cost, carbon, ``simulated_s``), and every output (the terminal table, the
    reports, the sweep report, ``compare``) shows what this vocabulary says.
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
