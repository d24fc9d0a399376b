"""Synthetic request arrivals: Poisson and gamma (bursty) processes with token-length laws.

A scenario writes::

    arrivals: {process: poisson, rate: 4/s, count: 2000,
               prompt_tokens: {dist: lognormal, median: 1000, sigma: 1.0, max: 16384},
               output_tokens: {dist: constant, value: 128}}

and :func:`generate` returns a frame of :data:`xpusim.engine.traces.REQUEST_SCHEMA`, the same
frame a trace reader returns, so the serving world cannot tell the two apart.

Processes (inter-arrival gaps of mean ``1/rate``):

* ``poisson`` — exponential gaps (coefficient of variation 1);
* ``gamma`` — gamma gaps with ``burstiness`` = CV² of the gaps (shape ``1/burstiness``):
  1 is Poisson, above 1 is bursty, below 1 is smoother;
* ``constant`` — evenly spaced (CV² 0);
* ``closed`` — closed-loop clients: ``concurrency`` clients each send their next request
  the moment their previous one finishes (no ``rate``: the system's own speed sets the
  load), as vLLM's ``benchmark_serving.py --max-concurrency N`` with an infinite request
  rate and genai-perf's ``--concurrency N`` run. Every request is ready at 0 s and is
  sent when a client is free, in order.

Give ``count`` (requests) or ``duration`` (arrivals strictly before it), not both; a
``closed`` process takes ``count``. The first request arrives at 0 s, as in a trace.

``concurrency`` on the other processes caps the requests in flight (sent and not
finished): a request whose arrival comes while ``concurrency`` are in flight is sent when
one finishes, the waiting ones in arrival order (``benchmark_serving.py --request-rate R
--max-concurrency N``). A request's ``arrival_s`` in the results is the instant it was
sent, from which its TTFT and end-to-end latency count, as the benchmark clients time
them.

Token-length distributions (each with optional ``min`` (default 1) and ``max`` clips,
values rounded to whole tokens):

* ``lognormal`` — ``median`` and ``sigma`` (of the underlying normal, default 1.0);
* ``constant`` — ``value``;
* ``uniform`` — integers from ``low`` to ``high`` inclusive;
* ``normal`` — ``mean`` and ``std``, clipped to [min, max];
* ``empirical`` — draws (with replacement) from ``values`` (optionally ``weights``), or
  from a column of a trace file (``trace: {path, format}``, ``column``), which the
  workload resolves through the trace readers before calling :func:`generate`.

Determinism: one :class:`numpy.random.SeedSequence` from the scenario seed is split into
three independent streams (gaps, prompt lengths, output lengths), so the same seed gives
the same frame bit for bit, and changing the length law leaves arrival times unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xpusim.engine.qty import Duration, Rate
from xpusim.engine.traces import MAX_TOKENS, REQUEST_SCHEMA

MAX_REQUESTS = 100_000_000
"""Most requests one arrival process may generate (by ``count``, or expected from
``rate`` x ``duration``): a larger run would exhaust memory long before it finished, so it
is refused at load, before anything is allocated."""


MAX_CONCURRENCY = 1_000_000
"""Most requests in flight a scenario may ask of its clients."""


class LengthDist(BaseModel):
    """A token-length distribution (see the module docstring for each ``dist``)."""

    model_config = ConfigDict(extra="forbid")

    dist: Literal["lognormal", "constant", "uniform", "normal", "empirical"]
    median: float | None = Field(
        default=None, gt=0, le=MAX_TOKENS, description="lognormal: median tokens"
    )
    sigma: float = Field(default=1.0, ge=0, description="lognormal: sigma of log(tokens)")
    value: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="constant: tokens")
    low: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="uniform: lowest tokens")
    high: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS, description="uniform: highest tokens (inclusive)"
    )
    mean: float | None = Field(default=None, gt=0, le=MAX_TOKENS, description="normal: mean tokens")
    std: float | None = Field(default=None, ge=0, description="normal: standard deviation")
    values: list[int] | None = Field(default=None, description="empirical: sample values")
    weights: list[float] | None = Field(default=None, description="empirical: sample weights")
    trace: dict[str, Any] | None = Field(
        default=None, description="empirical: a trace spec ({path, format, ...}) to draw from"
    )
    column: Literal["prompt_tokens", "output_tokens"] | None = Field(
        default=None, description="empirical from a trace: which column (default: this field's own)"
    )
    min: int = Field(default=1, ge=1, le=MAX_TOKENS, description="clip below")
    max: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="clip above")

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        need: dict[str, tuple[str, ...]] = {
            "lognormal": ("median",),
            "constant": ("value",),
            "uniform": ("low", "high"),
            "normal": ("mean", "std"),
            "empirical": (),
        }
        missing = [k for k in need[self.dist] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist {self.dist!r} needs {', '.join(missing)}")
        if (
            self.dist == "uniform"
            and self.low is not None
            and self.high is not None
            and (self.low > self.high)
        ):
            raise ValueError(f"uniform: low {self.low} is above high {self.high}")
        if self.dist == "empirical":
            if (self.values is None) == (self.trace is None):
                raise ValueError("empirical needs exactly one of `values` or `trace`")
            if self.values is not None:
                if not self.values or min(self.values) < 1:
                    raise ValueError("empirical `values` must be a non-empty list of tokens >= 1")
                if self.weights is not None and (
                    len(self.weights) != len(self.values)
                    or min(self.weights) < 0
                    or sum(self.weights) <= 0
                ):
                    raise ValueError("`weights` must be as long as `values`, >= 0, not all 0")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max {self.max} is below min {self.min}")
        return self


def mean_tokens(dist: LengthDist) -> float | None:
    """The mean token length ``dist`` draws, clipped to its ``min`` and ``max``, for the
    work estimate (:mod:`xpusim.engine.budget`); ``None`` when it is drawn from a trace
    (known only once the trace is read)."""
    if dist.dist == "constant" and dist.value is not None:
        mean = float(dist.value)
    elif dist.dist == "uniform" and dist.low is not None and dist.high is not None:
        mean = (dist.low + dist.high) / 2
    elif dist.dist == "normal" and dist.mean is not None:
        mean = dist.mean
    elif dist.dist == "lognormal" and dist.median is not None:
        mean = dist.median * math.exp(min(dist.sigma, 20.0) ** 2 / 2)
    elif dist.dist == "empirical" and dist.values:
        w = dist.weights or [1.0] * len(dist.values)
        mean = sum(v * x for v, x in zip(dist.values, w, strict=True)) / sum(w)
    else:
        return None
    return float(min(max(mean, dist.min), dist.max or MAX_TOKENS))


def requests_of(spec: ArrivalSpec) -> float:
    """Requests ``spec`` generates (``count``, or expected from ``rate`` x ``duration``)."""
    if spec.count is not None:
        return float(spec.count)
    return (spec.rate or 0.0) * (spec.duration or 0.0)


def horizon_of(spec: ArrivalSpec) -> float | None:
    """Simulated seconds ``spec``'s arrivals span (``duration``, or ``count`` / ``rate``);
    ``None`` for closed-loop clients, whose sends follow the system's own speed."""
    if spec.duration is not None:
        return spec.duration
    if spec.rate is None:
        return None
    return (spec.count or 0) / spec.rate


class ArrivalSpec(BaseModel):
    """A synthetic arrival process and the token lengths of its requests."""

    model_config = ConfigDict(extra="forbid")

    process: Literal["poisson", "gamma", "constant", "closed"] = "poisson"
    rate: Rate | None = None
    burstiness: Annotated[float, Field(gt=0)] = 1.0
    count: Annotated[int, Field(ge=1, le=MAX_REQUESTS)] | None = None
    duration: Duration | None = None
    concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] | None = None
    prompt_tokens: LengthDist
    output_tokens: LengthDist

    @model_validator(mode="after")
    def _check(self) -> ArrivalSpec:
        if self.process == "closed":
            if self.concurrency is None:
                raise ValueError(
                    "`process: closed` needs `concurrency`, the number of clients (for "
                    "example concurrency: 64)"
                )
            if self.rate is not None or self.duration is not None:
                raise ValueError(
                    "closed-loop clients send as their requests finish: drop `rate` and "
                    "`duration`, and give `count`; or cap an open process instead "
                    "(process: poisson, rate: ..., concurrency: ...)"
                )
        elif self.rate is None:
            raise ValueError(
                f"`process: {self.process}` needs `rate` (for example rate: 4/s); or use "
                "`process: closed` with `concurrency` for clients that send as their "
                "requests finish"
            )
        if (self.count is None) == (self.duration is None):
            raise ValueError("give exactly one of `count` (requests) or `duration` (e.g. 10 min)")
        if (
            self.duration is not None
            and self.rate is not None
            and self.rate * self.duration > MAX_REQUESTS
        ):
            raise ValueError(
                f"rate x duration = {self.rate * self.duration:.3g} requests; a run may "
                f"generate at most {MAX_REQUESTS:,}. Lower the rate or the duration"
            )
        if self.burstiness != 1.0 and self.process != "gamma":
            raise ValueError("`burstiness` applies to `process: gamma` only")
        return self


TraceResolver = Callable[[Mapping[str, Any]], pl.DataFrame]


def _gaps(spec: ArrivalSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    assert spec.rate is not None  # an open process (validated)
    mean = 1.0 / spec.rate
    if spec.process == "poisson":
        return rng.exponential(mean, n)
    if spec.process == "gamma":
        k = 1.0 / spec.burstiness
        return rng.gamma(k, mean / k, n)
    return np.full(n, mean)


def arrival_times(spec: ArrivalSpec, rng: np.random.Generator) -> np.ndarray:
    """Arrival seconds of ``spec`` (first at 0), by count or up to its duration; every
    request of closed-loop clients is ready at 0 (the world sends it when a client is
    free)."""
    if spec.process == "closed":
        assert spec.count is not None  # validated
        return np.zeros(spec.count)
    if spec.count is not None:
        g = _gaps(spec, rng, spec.count)
        return np.concatenate(([0.0], np.cumsum(g[:-1])))
    assert spec.duration is not None and spec.rate is not None
    horizon = spec.duration
    parts = [np.zeros(1)]
    t = 0.0
    block = max(1024, int(horizon * spec.rate * 1.1) + 16)
    while True:
        g = _gaps(spec, rng, block)
        c = t + np.cumsum(g)
        parts.append(c[c < horizon])
        if c[-1] >= horizon:
            break
        t = float(c[-1])
    return np.concatenate(parts)


def sample_lengths(
    dist: LengthDist, n: int, rng: np.random.Generator, pool: Sequence[int] | None = None
) -> np.ndarray:
    """Draw ``n`` whole token counts from ``dist`` (``pool`` holds resolved empirical
    values when ``dist`` names a trace)."""
    if dist.dist == "lognormal":
        assert dist.median is not None
        x = rng.lognormal(np.log(dist.median), dist.sigma, n)
    elif dist.dist == "constant":
        assert dist.value is not None
        x = np.full(n, float(dist.value))
    elif dist.dist == "uniform":
        assert dist.low is not None and dist.high is not None
        x = rng.integers(dist.low, dist.high + 1, n).astype(np.float64)
    elif dist.dist == "normal":
        assert dist.mean is not None and dist.std is not None
        x = rng.normal(dist.mean, dist.std, n)
    else:
        values = np.asarray(pool if pool is not None else dist.values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("empirical distribution has no values")
        p = None
        if pool is None and dist.weights is not None:
            w = np.asarray(dist.weights, dtype=np.float64)
            p = w / w.sum()
        x = rng.choice(values, size=n, p=p)
    x = np.rint(x)
    hi = dist.max if dist.max is not None else MAX_TOKENS
    return np.clip(x, dist.min, hi).astype(np.int64)


def generate(
    spec: ArrivalSpec, seed: int, resolve_trace: TraceResolver | None = None
) -> pl.DataFrame:
    """Generate the request frame (:data:`REQUEST_SCHEMA`) of ``spec`` for ``seed``.

    ``resolve_trace`` reads an ``empirical`` distribution's ``trace`` mapping into a
    request frame; it is required only when such a distribution is used.
    """
    s_gap, s_prompt, s_out = np.random.SeedSequence(int(seed)).spawn(3)
    t = arrival_times(spec, np.random.default_rng(s_gap))
    n = int(t.size)
    cols = {}
    for name, dist, ss in (
        ("prompt_tokens", spec.prompt_tokens, s_prompt),
        ("output_tokens", spec.output_tokens, s_out),
    ):
        pool = None
        if dist.dist == "empirical" and dist.trace is not None:
            if resolve_trace is None:
                raise ValueError("an empirical length from a trace needs a trace resolver")
            frame = resolve_trace(dist.trace)
            pool = frame[dist.column or name].to_list()
        cols[name] = sample_lengths(dist, n, np.random.default_rng(ss), pool)
    return pl.DataFrame(
        {
            "arrival_s": t,
            "prompt_tokens": cols["prompt_tokens"],
            "output_tokens": cols["output_tokens"],
        },
        schema=REQUEST_SCHEMA,
    )
