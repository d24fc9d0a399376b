"""A compiled model seen through a serving technique that changes its step prices.

:class:`WrappedCompiled` hands everything but the step price to the model it wraps: the
memory fit, the KV capacity, the power model, collective pricing and the replica count.
A technique (speculative decoding, multi-LoRA) subclasses it, implements ``_cost`` and
overrides what else it changes.
"""

from __future__ import annotations

from typing import Any

from xpusim.engine.backend import Compiled, Fit


class WrappedCompiled(Compiled):
    """``inner`` with its step price left to the subclass (``_cost``); the rest delegated."""

    def __init__(self, inner: Compiled) -> None:
        super().__init__(inner.system, inner.model)
        self.inner = inner
        self.reserve_bytes = inner.reserve_bytes
        self.samples_in_turn = inner.samples_in_turn

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """The wrapped model's memory fit."""
        return self.inner.fit(kv_tokens=kv_tokens, batch=batch, training=training)

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """The wrapped model's KV capacity."""
        return self.inner.kv_capacity_tokens(reserve_fraction)

    def power_model(self) -> Any:
        """The wrapped model's power model."""
        return self.inner.power_model()

    def collective_seconds(self, kind: Any, nbytes: float, group: int) -> float | None:
        """The wrapped model's collective pricing."""
        return self.inner.collective_seconds(kind, nbytes, group)

    @property
    def replicas(self) -> int:
        """The wrapped model's replicas."""
        return self.inner.replicas
