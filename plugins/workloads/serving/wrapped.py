"""A compiled model seen through a serving technique that changes its step prices.

:class:`WrappedCompiled` hands everything but the step price to the model it wraps: the
memory fit, the KV capacity, the power model, collective pricing and the replica count.
A technique (speculative decoding, multi-LoRA) subclasses it, implements ``_cost`` and
overrides what else it changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.collectives import P2PSchedule

Switch = Callable[[Compiled], tuple[Compiled, str]]
"""A change to a compiled model (its all-reduce kernel, the engine's backend settings):
the model changed, or the same model where the change does not apply, and a sentence
saying which."""


class WrappedCompiled(Compiled):
    """``inner`` with its step price left to the subclass (``_cost``); the rest delegated."""

    def __init__(self, inner: Compiled) -> None:
        super().__init__(inner.system, inner.model)
        self.inner = inner
        self.reserve_bytes = inner.reserve_bytes
        self.collective_buffer_bytes = inner.collective_buffer_bytes
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

    def with_allreduce_kernel(
        self, kernel: str, max_bytes: float, *, schedule: P2PSchedule = "cheaper"
    ) -> tuple[Compiled, str]:
        """A copy over the wrapped model with its all-reduces on ``kernel``, or this
        wrapper where the wrapped model keeps its own (and the sentence saying why)."""
        return self._switched(
            lambda c: c.with_allreduce_kernel(kernel, max_bytes, schedule=schedule)
        )

    def with_engine_settings(self, settings: Mapping[str, Any]) -> tuple[Compiled, str]:
        """A copy over the wrapped model with the engine's ``settings``, or this wrapper
        where the wrapped model keeps its own (and the sentence saying why)."""
        return self._switched(lambda c: c.with_engine_settings(settings))

    def _switched(self, switch: Switch) -> tuple[Compiled, str]:
        """This wrapper with ``switch`` applied to the model it wraps (and to every other
        model a subclass holds, :meth:`_rewrapped`), or itself where the switch keeps the
        wrapped model; the sentence ``switch`` gives."""
        inner, how = switch(self.inner)
        if inner is self.inner:
            return self, how
        return self._rewrapped(inner, switch), how

    def _rewrapped(self, inner: Compiled, switch: Switch) -> Compiled:
        """This wrapper over ``inner`` (the wrapped model, switched), with no step price
        kept; a subclass holding other compiled models applies ``switch`` to them too."""
        del switch
        clone = copy.copy(self)
        clone.inner = inner
        clone._memo = {}
        return clone

    @property
    def replicas(self) -> int:
        """The wrapped model's replicas."""
        return self.inner.replicas
