"""The built-in batch schedulers, one class per module.

* ``static`` (:mod:`.static`) — request-level batching;
* ``continuous`` (:mod:`.continuous`) — iteration-level batching (Orca, vLLM);
* ``chunked-prefill`` (:mod:`.chunked_prefill`) — Sarathi-Serve stall-free batching;
* ``guaranteed-no-evict`` (:mod:`.no_evict`) — TensorRT-LLM's admission: only when the KV
  of prompt plus output is reservable, so nothing is preempted;
* ``prefill-first`` (:mod:`.prefill_first`) — vLLM V0's default: prompt-only iterations
  first, decodes in rounds of ``steps`` iterations (multi-step scheduling).

Each is one SimPy process per replica and one SimPy event per iteration
(:class:`xpusim.engine.policies.Scheduler`); ``continuous`` and ``chunked-prefill`` also
have a fast path that runs many iterations per event when the world hands each replica
its arrivals ahead (:mod:`.iteration`). The workload plugin registers them through the
``register_schedulers`` hook, as a third party registers its own.
"""

from __future__ import annotations

from pydantic import ValidationInfo

from xpusim.engine.policies import Scheduler, SchedulerSpec, check_options
from xpusim.engine.registry import unknown_message
from xpusim.plugins.workloads.serving.schedulers.chunked_prefill import ChunkedPrefillScheduler
from xpusim.plugins.workloads.serving.schedulers.continuous import ContinuousScheduler
from xpusim.plugins.workloads.serving.schedulers.no_evict import GuaranteedNoEvictScheduler
from xpusim.plugins.workloads.serving.schedulers.prefill_first import PrefillFirstScheduler
from xpusim.plugins.workloads.serving.schedulers.static import StaticScheduler

SCHEDULERS: tuple[type[Scheduler], ...] = (
    StaticScheduler,
    ContinuousScheduler,
    ChunkedPrefillScheduler,
    GuaranteedNoEvictScheduler,
    PrefillFirstScheduler,
)
"""The built-in scheduler classes, registered by the workload plugin."""


def check_builtin(spec: SchedulerSpec, info: ValidationInfo) -> SchedulerSpec:
    """``spec`` when it was resolved against a host's registry (inside a scenario) or
    names a built-in scheduler; a ``ValueError`` listing the valid ones otherwise (a
    config validated without a host knows only the built-ins, as the world does)."""
    if spec.policy() is None and not (isinstance(info.context, dict) and "host" in info.context):
        check_options(spec, builtin_scheduler(spec.kind))
    return spec


def builtin_scheduler(name: str) -> Scheduler:
    """The built-in scheduler called ``name`` (a spec built in code, outside a scenario,
    carries only the name); ``ValueError`` listing the valid ones otherwise."""
    for cls in SCHEDULERS:
        if cls.name == name:
            return cls()
    raise ValueError(unknown_message("scheduler", name, [c.name for c in SCHEDULERS]))
