"""The ``chunked-prefill`` scheduler: Sarathi-Serve stall-free batching.

Each iteration has a token budget of ``min(chunk, max_batch_tokens)``: all running decodes
first, then prefill chunks, continuing partly prefilled prompts first (see
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


class ChunkedPrefillScheduler(Scheduler):
    """Iteration-level batching with prompts split into chunks within a token budget."""

    name = "chunked-prefill"
    description = "Sarathi-Serve stall-free batching: prompts prefilled in token-budget chunks"

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The chunked-prefill loop of ``replica``."""
        return iterative(env, replica, requests, prices, spec, split=True)
