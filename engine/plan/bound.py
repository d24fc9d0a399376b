"""The closed-form capacity bound of one replica, priced before anything is simulated.

A replica serving requests of ``prompt`` tokens in and ``output`` tokens out, with at
most ``batch`` sequences in flight (the scheduler's limit, or what its KV cache holds),
spends at least one prefill of the prompt per request and ``output`` decode steps shared
by the batch. Its request rate is therefore at most::

    1 / (prefill(1 x prompt) + output x decode(batch, context) / batch)

with both step times from the backend's own cost model (:meth:`Compiled.cost`) at the
mean context. Real batches are rarely full and prefill interrupts decoding, so this is an
optimistic bound: a configuration whose replicas cannot reach the offered rate even at
this rate is pruned without simulating it, and the search for the fewest replicas
starts from ``ceil(rate / bound)``.

The request mix (mean prompt and output tokens) is what the workload declares in its plan
knobs (:class:`~xpusim.engine.workload.PlanKnobs`); a workload that does not know it
before simulating (a trace) gets no bound (its search starts from one replica).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Phase, Shape


@dataclass(frozen=True)
class Mix:
    """Mean tokens per request: ``prompt`` in, ``output`` out."""

    prompt: float
    output: float


@dataclass(frozen=True)
class Bound:
    """A replica's capacity: ``rate_per_s`` requests per second at ``batch`` sequences in
    flight; ``prefill_s``, one mean prompt's prefill alone (the floor under any time to
    first token); ``decode_s``, one decode step of a single sequence (the floor under any
    time between tokens)."""

    rate_per_s: float
    batch: int
    prefill_s: float
    decode_s: float


def replica_bound(compiled: Compiled, mix: Mix, max_batch: int, kv_fraction: float) -> Bound:
    """The closed-form bound of one replica of ``compiled`` (see the module docstring)."""
    prompt = max(1, round(mix.prompt))
    output = max(1.0, mix.output)
    kv = compiled.kv_capacity_tokens(kv_fraction)
    fits = max(1, int(kv // max(1.0, mix.prompt + mix.output)))
    batch = max(1, min(max_batch, fits))
    context = max(1, round(mix.prompt + output / 2))
    prefill = compiled.cost(Shape(Phase.PREFILL, batch=1, tokens=prompt, context=0)).seconds
    decode = compiled.cost(Shape(Phase.DECODE, batch=batch, tokens=1, context=context)).seconds
    single = compiled.cost(Shape(Phase.DECODE, batch=1, tokens=1, context=context)).seconds
    per_request = prefill + output * decode / batch
    return Bound(1.0 / per_request, batch, prefill, single)
