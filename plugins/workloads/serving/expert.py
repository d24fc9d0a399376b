"""Expert parallelism in serving: an expert group steps as one replica.

A mixture-of-experts model served with ``parallelism.expert: E`` spreads its routed
experts over ``E`` ranks (each ``tensor × pipeline`` devices); the model's graph already
holds each rank's share of the experts and the dispatch and combine all-to-all among the
``E`` ranks on every MoE layer (``plugins/models``; priced by the backend's collectives).
What the serving world adds: those ``E`` ranks are coupled by the all-to-all on every
layer, so they step together, as one replica. Attention runs data-parallel over the ranks
(DeepSeek's and SGLang's DP-attention deployment): a group iteration of ``b`` sequences
gives each rank ``ceil(b / E)`` of them (and of each part's prompts), every rank waits for
the all-to-all, and the iteration lasts as long as the busiest rank's step. The group's
KV cache is the ranks' caches together, and all ``E × tensor × pipeline`` devices draw
power during the step. A group with less work than ranks still runs every rank (the
idle ones join the all-to-all with empty batches, priced here at the busiest rank's
share).

Not modelled: imbalance of the attention load between ranks (sequences are dealt
evenly); expert-load imbalance is the model's ``expert_imbalance``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpusim.engine.backend import Compiled, Cost
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import ServingRun, ServingTechnique
from xpusim.engine.system import System
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads.serving.wrapped import WrappedCompiled


def expert_group(system: System, model: ModelGraph) -> int:
    """Ranks one serving replica spans: ``parallelism.expert`` for a mixture-of-experts
    model (1 otherwise); raises when the system's ranks do not divide into groups."""
    ep = system.parallelism.expert
    if ep <= 1 or int(model.info.config.get("experts", 1) or 1) <= 1:
        return 1
    if system.replicas % ep:
        raise XpusimError(
            f"system {system.name!r}: parallelism.expert={ep} groups the {system.replicas} "
            f"ranks of {system.parallelism.model_parallel} device(s) each into expert groups, "
            f"but {system.replicas} is not a multiple of {ep}; use a device count that is a "
            f"multiple of {ep * system.parallelism.model_parallel}."
        )
    return ep


class ExpertGroupCompiled(WrappedCompiled):
    """``ranks`` expert-parallel ranks priced as one replica (module docstring)."""

    def __init__(self, inner: Compiled, ranks: int) -> None:
        super().__init__(inner)
        self.ranks = ranks

    def rank_shape(self, shape: Shape) -> Shape:
        """The busiest rank's share of a group iteration: ``ceil(batch / ranks)``."""

        def share(s: Shape) -> Shape:
            return replace(s, batch=-(-s.batch // self.ranks)) if s.batch else s

        if shape.phase is Phase.MIXED:
            parts = tuple(share(p) for p in shape.parts)
            return replace(shape, batch=sum(p.batch for p in parts), parts=parts)
        return share(shape)

    def _cost(self, shape: Shape) -> Cost:
        c = self.inner.cost(self.rank_shape(shape))
        return Cost(
            seconds=c.seconds,
            joules=c.joules * self.ranks,
            breakdown=c.breakdown,
            flops=c.flops * self.ranks,
        )

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """The ranks' KV caches together."""
        return self.inner.kv_capacity_tokens(reserve_fraction) * self.ranks

    @property
    def replicas(self) -> int:
        """Expert groups of the system."""
        return max(1, self.inner.replicas // self.ranks)


class ExpertParallelTechnique(ServingTechnique):
    """``expert_parallelism``: a system's expert-parallel ranks step as one replica
    (module docstring). It has no block: it switches itself on for a mixture-of-experts
    model on a system with ``parallelism.expert`` above 1. Registered by the built-in
    workload plugin."""

    name = "expert_parallelism"
    description = "expert parallelism: E ranks of DP attention and sharded experts as one replica"
    kind = "step"
    schema = None
    order = 100

    def active(self, spec: Any, ctx: WorkloadContext) -> bool:
        """On for a mixture-of-experts model over ``parallelism.expert`` > 1 ranks."""
        return expert_group(ctx.system, ctx.model) > 1

    def price(self, spec: Any, run: ServingRun) -> None:
        """Price a group iteration as its busiest rank's share; the group is one replica."""
        ranks = expert_group(run.ctx.system, run.ctx.model)
        run.compiled = ExpertGroupCompiled(run.compiled, ranks)
        run.replicas //= ranks
        run.devices_per_replica *= ranks
