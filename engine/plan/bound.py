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

The request mix (mean prompt and output tokens) is read from the workload's arrival
process (``workload.arrivals.prompt_tokens`` / ``output_tokens``), sampled with a fixed
seed so clipping is counted exactly; a trace-driven workload has no mix to read here and
gets no bound (its search starts from one replica).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Phase, Shape

_SAMPLES = 20_000
_SEED = 20261205


@dataclass(frozen=True)
class Mix:
    """Mean tokens per request: ``prompt`` in, ``output`` out."""

    prompt: float
    output: float


def _mean_tokens(dist: Mapping[str, Any]) -> float | None:
    """The mean of one token-length distribution of the arrival process, or ``None``."""
    rng = np.random.default_rng(_SEED)
    kind = dist.get("dist")
    lo = float(dist.get("min", 1) or 1)
    hi = float(dist.get("max") or math.inf)
    if kind == "constant" and dist.get("value") is not None:
        return float(dist["value"])
    if kind == "lognormal" and dist.get("median") is not None:
        sigma = float(dist.get("sigma", 1.0))
        x = rng.lognormal(math.log(float(dist["median"])), sigma, _SAMPLES)
    elif kind == "normal" and dist.get("mean") is not None:
        x = rng.normal(float(dist["mean"]), float(dist.get("std", 0.0) or 0.0), _SAMPLES)
    elif kind == "uniform" and dist.get("low") is not None and dist.get("high") is not None:
        x = rng.uniform(float(dist["low"]), float(dist["high"]), _SAMPLES)
    elif kind == "empirical" and dist.get("values"):
        vals = np.asarray(dist["values"], dtype=float)
        w = np.asarray(dist.get("weights") or np.ones(len(vals)), dtype=float)
        return float(np.clip(vals, lo, hi) @ (w / w.sum()))
    else:
        return None
    return float(np.clip(np.rint(x), lo, hi).mean())


def request_mix(data: Mapping[str, Any]) -> Mix | None:
    """The mean request of scenario ``data``'s arrival process, or ``None`` when the
    workload has none (a trace) or a distribution this bound does not read."""
    arrivals = dict(data.get("workload") or {}).get("arrivals")
    if not isinstance(arrivals, Mapping):
        return None
    p = arrivals.get("prompt_tokens")
    o = arrivals.get("output_tokens")
    if not isinstance(p, Mapping) or not isinstance(o, Mapping):
        return None
    prompt, output = _mean_tokens(p), _mean_tokens(o)
    if prompt is None or output is None:
        return None
    return Mix(prompt, output)


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
