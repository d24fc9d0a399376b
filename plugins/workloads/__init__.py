"""Built-in workload kinds and serving policies, registered through the ``xpusim`` entry
point.

Each workload owns its world in a package of this plugin (``serving/``, ``offline/``,
``training/``, and ``spiking``). This module registers everything by name only
(:class:`~xpusim.engine.lazy.Lazy`), so starting the host imports none of the worlds; a
workload, scheduler or router is imported the first time a scenario or command uses it.
Adding a kind, a scheduler, a router or a serving technique is one line in
:data:`WORKLOADS`, :data:`SCHEDULERS`, :data:`ROUTERS` or :data:`TECHNIQUES`.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

_HERE = "xpusim.plugins.workloads"

WORKLOADS: tuple[Lazy, ...] = (
    Lazy("serving", f"{_HERE}.serving.workload:ServingWorkload"),
    Lazy("offline", f"{_HERE}.offline.workload:OfflineWorkload"),
    Lazy("training", f"{_HERE}.training.workload:TrainingWorkload"),
    Lazy("spiking", f"{_HERE}.spiking:SpikingWorkload"),
)
"""The workload kinds this plugin registers, in order."""

SCHEDULERS: tuple[Lazy, ...] = (
    Lazy("static", f"{_HERE}.serving.schedulers.static:StaticScheduler"),
    Lazy("continuous", f"{_HERE}.serving.schedulers.continuous:ContinuousScheduler"),
    Lazy("chunked-prefill", f"{_HERE}.serving.schedulers.chunked_prefill:ChunkedPrefillScheduler"),
    Lazy(
        "guaranteed-no-evict",
        f"{_HERE}.serving.schedulers.no_evict:GuaranteedNoEvictScheduler",
    ),
    Lazy("prefill-first", f"{_HERE}.serving.schedulers.prefill_first:PrefillFirstScheduler"),
)
"""The batch schedulers this plugin registers."""

ROUTERS: tuple[Lazy, ...] = (
    Lazy("round-robin", f"{_HERE}.serving.routers.round_robin:RoundRobinRouter"),
    Lazy("least-outstanding", f"{_HERE}.serving.routers.least_outstanding:LeastOutstandingRouter"),
)
"""The request routers this plugin registers."""

TECHNIQUES: tuple[Lazy, ...] = (
    Lazy("expert_parallelism", f"{_HERE}.serving.expert:ExpertParallelTechnique"),
    Lazy("speculative_decoding", f"{_HERE}.serving.speculative:SpeculativeTechnique"),
    Lazy("lora", f"{_HERE}.serving.lora:LoraTechnique"),
    Lazy("prefix_caching", f"{_HERE}.serving.prefix_cache:PrefixCachingTechnique"),
    Lazy("disaggregation", f"{_HERE}.serving.disagg:DisaggregationTechnique"),
)
"""The serving techniques this plugin registers (each a block of the ``serving``
workload, but expert parallelism, which follows ``systems[].parallelism.expert``)."""


@hookimpl
def register_workloads(register: Callable[[Lazy], None]) -> None:
    """Register every workload kind in :data:`WORKLOADS` (imported on first use)."""
    for w in WORKLOADS:
        register(w)


@hookimpl
def register_schedulers(register: Callable[[Lazy], None]) -> None:
    """Register the ``static``, ``continuous``, ``chunked-prefill``,
    ``guaranteed-no-evict`` and ``prefill-first`` schedulers."""
    for s in SCHEDULERS:
        register(s)


@hookimpl
def register_routers(register: Callable[[Lazy], None]) -> None:
    """Register the ``round-robin`` and ``least-outstanding`` routers."""
    for r in ROUTERS:
        register(r)


@hookimpl
def register_serving_techniques(register: Callable[[Lazy], None]) -> None:
    """Register the ``prefix_caching``, ``speculative_decoding``, ``lora``,
    ``disaggregation`` and ``expert_parallelism`` serving techniques."""
    for t in TECHNIQUES:
        register(t)
