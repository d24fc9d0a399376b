"""Offline batch inference of non-decoder models: batched forward passes, no arrivals.

``count`` samples are split into batches of ``batch`` (the last one partial) and dealt
to the replicas round-robin; each replica runs its batches back to back from t = 0, one
``Shape(Phase.FORWARD, batch, tokens)`` step each, so the span is the busiest replica's
total. (Decoder models use the serving world with every request present at t = 0.)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import polars as pl
import simpy

from xpusim.engine.backend import Compiled
from xpusim.engine.frames import device_timeline, empty
from xpusim.plugins.workloads.serving.cluster import CostTable
from xpusim.plugins.workloads.serving.schemas import STEPS_SCHEMA
from xpusim.plugins.workloads.serving.steplog import StepLog


def simulate_forward(
    compiled: Compiled,
    *,
    system: str,
    count: int,
    batch: int,
    tokens: int,
    replicas: int,
    devices_per_replica: int,
) -> tuple[dict[str, pl.DataFrame], float]:
    """Run ``count`` samples in batches of ``batch`` over ``replicas``; return the
    ``steps`` and ``devices`` frames and the simulated span in seconds."""
    if count < 1 or batch < 1 or tokens < 1:
        raise ValueError(f"count, batch and tokens must be >= 1, got {count}, {batch}, {tokens}")
    costs = CostTable(compiled)
    sizes = [batch] * (count // batch) + ([count % batch] if count % batch else [])
    env = simpy.Environment()
    logs = [StepLog() for _ in range(replicas)]

    def run(r: int) -> Generator[simpy.Event, Any, None]:
        log = logs[r]
        for b in sizes[r::replicas]:
            sec, joules, st = costs.forward(b, tokens)
            s = env.now
            yield env.timeout(sec)
            log.start.append(s)
            log.end.append(s + sec)
            log.batch.append(b)
            log.prefill.append(b * tokens)
            log.decode.append(0)
            log.kv.append(0)
            log.state.append(st)
            log.joules.append(joules)

    for r in range(replicas):
        env.process(run(r))
    env.run()
    span = float(env.now)
    steps = [lg.frame(system, r, costs.states) for r, lg in enumerate(logs)]
    devs = [
        device_timeline(
            system,
            r,
            list(range(r * devices_per_replica, (r + 1) * devices_per_replica)),
            lg.numpy("start"),
            lg.numpy("end"),
            lg.numpy("state").astype("int64"),
            lg.numpy("joules"),
            costs.states,
            span,
        )
        for r, lg in enumerate(logs)
    ]
    frames = {
        "steps": pl.concat(steps) if steps else empty(STEPS_SCHEMA),
        "devices": pl.concat(devs),
    }
    return frames, span
