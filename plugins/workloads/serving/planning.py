"""What ``xpusim plan`` may vary of a serving workload: its plan knobs.

The serving workload declares (:func:`plan_knobs`, behind
:meth:`ServingWorkload.plan_knobs`):

* the load knob, ``workload.arrivals.rate`` (an open arrival process only: a trace is
  replayed as written, and closed-loop clients send as their requests finish);
* one batch-limit knob, ``max_batch`` at ``workload.scheduler.max_batch`` (at least 1);
* the requests per simulation, ``workload.arrivals.count`` (replacing a ``duration``) or
  ``workload.trace.limit``;
* the objectives block, ``workload.slo``, and its bounds in seconds;
* the mean request (prompt and output tokens), drawn from the arrival process's own
  length distributions with a fixed seed so that clipping counts exactly (unknown for a
  trace, or lengths sampled from one, until it is read);
* the KV share of memory, ``kv_memory_fraction``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpusim.engine.workload import Knob, PlanKnobs
from xpusim.plugins.workloads.serving.arrivals import MAX_REQUESTS, LengthDist, sample_lengths

MIX_SAMPLES = 20_000
"""Draws per length distribution for the mean request."""
MIX_SEED = 20261205
"""Seed of those draws: the same mean, so the same plan, every time."""


def _mean(dist: LengthDist) -> float | None:
    """The mean of ``dist``'s clipped draws, or ``None`` when it samples a trace."""
    if dist.dist == "empirical" and not dist.values:
        return None
    rng = np.random.default_rng(MIX_SEED)
    return float(sample_lengths(dist, MIX_SAMPLES, rng).mean())


def plan_knobs(config: Any) -> PlanKnobs:
    """The plan knobs of a validated serving ``config`` (see the module docstring)."""
    arrivals, trace = config.arrivals, config.trace
    rate = requests = None
    prompt = output = None
    if arrivals is not None:
        if arrivals.rate is not None:  # closed-loop clients' load follows the system
            rate = Knob(
                ("workload", "arrivals", "rate"), low=1e-6, unit="/s", current=arrivals.rate
            )
        requests = Knob(
            ("workload", "arrivals", "count"),
            low=1,
            high=MAX_REQUESTS,
            integer=True,
            current=arrivals.count,
            clears=(("workload", "arrivals", "duration"),),
        )
        prompt, output = _mean(arrivals.prompt_tokens), _mean(arrivals.output_tokens)
    elif trace is not None:
        requests = Knob(("workload", "trace", "limit"), low=1, integer=True, current=trace.limit)
    batch = Knob(
        ("workload", "scheduler", "max_batch"),
        low=1,
        integer=True,
        current=config.scheduler.max_batch,
    )
    ttft, tpot, _ = config.slo.bounds()
    return PlanKnobs(
        rate=rate,
        batch={"max_batch": batch},
        requests=requests,
        slo=("workload", "slo"),
        ttft_s=ttft,
        tbt_s=tpot,
        mean_prompt_tokens=prompt if output is not None else None,
        mean_output_tokens=output if prompt is not None else None,
        kv_memory_fraction=float(config.kv_memory_fraction),
    )
