"""The ``continuous`` scheduler: iteration-level batching (Orca, vLLM).

Before every iteration the scheduler admits waiting requests in arrival order while the
batch has room and the KV cache has blocks for their whole prompt; admitted prompts are
prefilled fused with the running decodes (see
:mod:`~xpusim.plugins.workloads.serving.schedulers.iteration` for the whole policy).
"""

from __future__ import annotations

import simpy

from xpusim.engine.policies import (
    Proc,
    ReplicaState,
    RequestState,
    Scheduler,
    SchedulerSpec,
    StepPrices,
)
from xpusim.plugins.workloads.serving.schedulers.iteration import iterative


class ContinuousScheduler(Scheduler):
    """Iteration-level batching with whole-prompt prefills fused into decode iterations."""

    name = "continuous"
    description = "iteration-level batching (Orca, vLLM): prompts join the running batch"

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The continuous-batching loop of ``replica``."""
        return iterative(env, replica, requests, prices, spec, split=False)
