"""The failure world: a training run replayed with device failures and checkpoints.

Every device fails independently at rate ``1/mtbf``, so the job fails at
``count/mtbf``. The job trains ``k = round(checkpoint_interval / step)`` steps, writes a
checkpoint (weights + optimizer states at ``storage_bandwidth``, the aggregate rate of
the file system), and repeats. A failure (during training, checkpointing or restart)
loses everything since the last completed checkpoint and costs ``restart`` plus reading
the checkpoint back. One trainer process and one failure process run in SimPy; events
are checkpoint segments and failures, never single steps or kernels, so 10,000 steps on
16,384 devices take milliseconds. ``seeds`` independent repetitions give the spread of
time-to-train.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import simpy

from xpusim.engine.errors import ScenarioError

__all__ = ["FailureRun", "FailureSpec", "percentile", "simulate_failures"]


@dataclass(frozen=True, slots=True)
class FailureSpec:
    """Failure and checkpoint settings (all SI: seconds, bytes/s). ``mtbf_per_device``
    of ``inf`` means no failures; ``checkpoint_interval`` of ``inf`` no checkpoints."""

    mtbf_per_device: float = math.inf
    restart_s: float = 600.0
    checkpoint_interval_s: float = math.inf
    storage_bandwidth: float = 10e9


@dataclass
class FailureRun:
    """One replay of the run: wall time, failures and the segments it went through.

    ``segments`` rows are ``(kind, start_s, end_s, first_step, steps)`` with ``kind`` one
    of ``train``, ``lost``, ``checkpoint``, ``restart`` (only when recorded).
    """

    wall_s: float
    failures: int
    checkpoints: int
    lost_s: float
    checkpoint_s: float
    restart_s: float
    segments: list[tuple[str, float, float, int, float]] = field(default_factory=list)


MAX_EVENTS = 2_000_000
"""Most checkpoint segments and failures one replay may simulate, estimated before it
starts (a replay of a million steps with hourly checkpoints has a few thousand)."""


def _expected_events(
    steps: int, k: int, step_s: float, rate: float, write_s: float
) -> tuple[float, float]:
    """Failures expected per segment of ``k`` steps, and the segments and failures a
    replay is expected to simulate (each segment retried until no failure hits it)."""
    exposure = rate * (k * step_s + max(write_s, 0.0))
    return exposure, -(-steps // k) * math.exp(min(exposure, 50.0))


def _failure_rate(count: int, spec: FailureSpec) -> float:
    """Failures per second of ``count`` devices."""
    return count / spec.mtbf_per_device if spec.mtbf_per_device > 0 else 0.0


def _check_events(steps: int, k: int, step_s: float, rate: float, write_s: float) -> None:
    """Refuse a replay whose segments, each retried until no failure hits it, would
    exceed :data:`MAX_EVENTS` (a checkpoint every step of a long run, or failures so
    frequent that a segment almost never completes)."""
    exposure, events = _expected_events(steps, k, step_s, rate, write_s)
    if events > MAX_EVENTS:
        fix = (
            "failures come faster than a segment completes: give a longer "
            "mtbf_per_device or checkpoint more often (checkpoint_interval)"
            if exposure > 1
            else "checkpoint less often (checkpoint_interval) or run fewer steps"
        )
        raise ScenarioError(
            f"workload.failures: replaying {steps:,} steps with a checkpoint every {k:,} "
            f"steps takes about {events:,.3g} segments and failures (each segment expects "
            f"{exposure:.3g} failures), more than {MAX_EVENTS:,}; {fix}."
        )


def _segment_steps(step_s: float, steps: int, spec: FailureSpec) -> int:
    """Steps between two checkpoints (the whole run without checkpoints)."""
    if math.isinf(spec.checkpoint_interval_s):
        return max(1, steps)
    return max(1, round(spec.checkpoint_interval_s / step_s) if step_s > 0 else steps)


def replay_events(
    step_s: float, steps: int, count: int, spec: FailureSpec, checkpoint_write_s: float
) -> float:
    """The segments and failures one replay of :func:`simulate_failures` is expected to
    simulate (each segment retried until no failure hits it), for the work budget."""
    k = _segment_steps(step_s, steps, spec)
    rate = _failure_rate(count, spec)
    return _expected_events(steps, k, step_s, rate, checkpoint_write_s)[1]


def simulate_failures(
    step_s: float,
    steps: int,
    count: int,
    spec: FailureSpec,
    checkpoint_write_s: float,
    checkpoint_read_s: float,
    seed: int,
    record: bool = False,
) -> FailureRun:
    """Replay ``steps`` steps of ``step_s`` on ``count`` devices with failures (SimPy).

    One trainer process and one failure process; events are checkpoint segments and
    failures, never single steps or kernels.
    """
    if steps < 0 or step_s < 0:
        raise ValueError(f"negative steps ({steps}) or step time ({step_s})")
    env = simpy.Environment()
    rng = random.Random(seed)
    rate = _failure_rate(count, spec)
    k = _segment_steps(step_s, steps, spec)
    _check_events(steps, k, step_s, rate, checkpoint_write_s)
    run = FailureRun(0.0, 0, 0, 0.0, 0.0, 0.0)
    seg = run.segments

    def trainer(env: simpy.Environment):  # type: ignore[no-untyped-def]
        done = 0
        while done < steps:
            n = min(k, steps - done)
            start = env.now
            ckpt = done + n < steps and checkpoint_write_s >= 0 and k < steps
            try:
                yield env.timeout(n * step_s)
                mid = env.now
                if ckpt:
                    yield env.timeout(checkpoint_write_s)
                    run.checkpoints += 1
                    run.checkpoint_s += checkpoint_write_s
                if record:
                    seg.append(("train", start, mid, done, float(n)))
                    if ckpt:
                        seg.append(("checkpoint", mid, env.now, done + n - 1, 0.0))
                done += n
            except simpy.Interrupt:
                now = env.now
                run.failures += 1
                run.lost_s += min(now - start, n * step_s)
                run.checkpoint_s += max(0.0, now - start - n * step_s)
                if record:
                    trained = min(n * step_s, now - start)
                    seg.append(
                        (
                            "lost",
                            start,
                            start + trained,
                            done,
                            trained / step_s if step_s > 0 else 0.0,
                        )
                    )
                    if now > start + trained:
                        seg.append(("checkpoint", start + trained, now, done + n - 1, 0.0))
                while True:
                    r0 = env.now
                    try:
                        yield env.timeout(spec.restart_s + checkpoint_read_s)
                        run.restart_s += env.now - r0
                        if record:
                            seg.append(("restart", r0, env.now, done, 0.0))
                        break
                    except simpy.Interrupt:
                        run.failures += 1
                        run.restart_s += env.now - r0
                        if record:
                            seg.append(("restart", r0, env.now, done, 0.0))

    proc = env.process(trainer(env))

    def failures(env: simpy.Environment):  # type: ignore[no-untyped-def]
        while rate > 0:
            yield env.timeout(rng.expovariate(rate))
            if proc.is_alive:
                proc.interrupt("failure")
            else:
                return

    if rate > 0:
        env.process(failures(env))
    env.run(until=proc)
    run.wall_s = float(env.now)
    return run


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of ``xs``."""
    return float(np.percentile(np.asarray(xs, dtype=float), q))
