"""The SimPy world of the spiking workload: samples queue for a system's replicas.

Each replica takes up to ``batch`` waiting samples, runs them as one step priced by the
compiled model, and finishes them together, or, on a backend that runs a batch's samples
in turn (:attr:`~xpusim.engine.backend.Compiled.samples_in_turn`), the k-th when a step of
k samples would have ended (one after the other on one copy of a network; in rounds on
several copies). :func:`run_world` runs the world for given
arrival times and returns when each sample started and finished and each replica's
steps; :func:`world_energy` splits the steps' energy into static and active parts the
way :mod:`xpusim.engine.economics.energy` does (device energy, before PUE and host
power). The workload's main run and its operating-point sweep share both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from xpusim.engine.backend import Cost
from xpusim.engine.economics.energy import EnergySplit, split_energy

__all__ = ["Step", "WorldRun", "run_world", "world_energy"]

Step = tuple[float, float, int, float, str]
"""One replica step: start (s), end (s), samples, joules, power state."""


@dataclass(frozen=True)
class WorldRun:
    """When each sample started and finished, which replica served it, and each
    replica's steps (:data:`Step`)."""

    start: np.ndarray
    finish: np.ndarray
    served_by: np.ndarray
    logs: list[list[Step]]

    @property
    def horizon(self) -> float:
        """When the last sample finished (0 for none)."""
        return float(np.nanmax(self.finish)) if self.finish.size else 0.0


def run_world(
    arrivals: np.ndarray,
    batch: int,
    replicas: int,
    step_cost: Callable[[int], Cost],
    progress: Callable[[float, float], None] | None = None,
    in_turn: bool = False,
) -> WorldRun:
    """Simulate samples arriving at ``arrivals`` (s) on ``replicas`` replicas taking up to
    ``batch`` waiting samples per step; ``step_cost(b)`` prices a step of ``b`` samples;
    ``in_turn``: the k-th sample of a step finishes when a step of k samples would."""
    n = int(arrivals.size)
    env = simpy.Environment()
    queue: simpy.Store = simpy.Store(env)
    start = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    served_by = np.full(n, -1, dtype=np.int32)
    logs: list[list[Step]] = [[] for _ in range(replicas)]
    done = [0]

    def source():  # type: ignore[no-untyped-def]
        for i in range(n):
            delay = arrivals[i] - env.now
            if delay > 0:
                yield env.timeout(delay)
            queue.put(i)

    def replica(r: int):  # type: ignore[no-untyped-def]
        while done[0] < n:
            first = yield queue.get()
            taken = [first]
            while len(taken) < batch and queue.items:
                taken.append((yield queue.get()))
            cost = step_cost(len(taken))
            t0 = env.now
            start[taken] = t0
            served_by[taken] = r
            yield env.timeout(cost.seconds)
            if in_turn:
                finish[taken] = [t0 + step_cost(k).seconds for k in range(1, len(taken) + 1)]
            else:
                finish[taken] = env.now
            done[0] += len(taken)
            logs[r].append((t0, env.now, len(taken), cost.joules, cost.state))
            if progress is not None:
                progress(done[0], n)

    env.process(source())
    for r in range(replicas):
        env.process(replica(r))
    env.run()
    return WorldRun(start, finish, served_by, logs)


def world_energy(
    run: WorldRun, idle_w: float, devices: int, devices_per_replica: int
) -> EnergySplit:
    """Device energy of ``run`` split into static (``idle_w`` per device of ``devices``
    over the span from 0 to the last finish) and active (the steps' joules above idle)."""
    busy_j = sum(step[3] for log in run.logs for step in log)
    busy_s = devices_per_replica * sum(step[1] - step[0] for log in run.logs for step in log)
    return split_energy(busy_j, busy_s, idle_w, devices, run.horizon, 0.0, 1.0)
