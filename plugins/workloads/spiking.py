"""The ``spiking`` workload: samples through a spiking network, timestep by timestep.

Samples arrive as a Poisson (or evenly spaced) stream at ``rate``, or all at once as a
batch when no rate is given. Each replica takes up to ``batch`` waiting samples, runs
them for ``timesteps`` steps of ``timestep`` (one :attr:`~xpusim.engine.graph.Phase.SPIKING`
step of the compiled model), and finishes them together. Every backend prices the same
step: GPUs and TPUs the time-stepped dense ops, SpiNNaker its real-time mapped network.

Scenario block::

    workload:
      kind: spiking
      samples: 1000          # how many samples (inferences)
      rate: 50/s             # arrivals; omit for one batch at t = 0
      process: poisson       # poisson | uniform
      batch: 1               # samples per step at most
      timesteps: 100         # steps per sample (default: the model's)
      timestep: 1 ms         # default: the model's
      input_rate: 20 Hz      # Poisson rate of the inputs (default: the model's)

Frames: ``steps`` (one row per batch step), ``requests`` (one row per sample with
``latency_s``), ``devices`` (the power-state timeline, :data:`xpusim.engine.frames.DEVICES_SCHEMA`).
Metrics: ``throughput_samples_per_s``, ``e2e_p50_s``, ``e2e_p99_s``, ``energy_j``,
``energy_per_sample_j`` (busy device energy per sample), ``simulated_s``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
import simpy
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.backend import Compiled
from xpusim.engine.errors import ScenarioError
from xpusim.engine.frames import DEVICES_SCHEMA, REQUEST_OK, device_timeline
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.metrics import E2E_P50_S, E2E_P99_S, THROUGHPUT_SAMPLES_PER_S, detail
from xpusim.engine.qty import Duration, Rate
from xpusim.engine.spiking import SpikingModel
from xpusim.engine.workload import SystemRun, Workload, WorkloadContext

__all__ = ["REQUESTS_SCHEMA", "STEPS_SCHEMA", "WORKLOADS", "SpikingConfig", "SpikingWorkload"]

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "step": pl.Int64(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "batch": pl.Int32(),
    "timesteps": pl.Int64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the spiking ``steps`` frame (one row per batch of samples)."""

REQUESTS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "request_id": pl.Int64(),
    "arrival_s": pl.Float64(),
    "start_s": pl.Float64(),
    "finish_s": pl.Float64(),
    "latency_s": pl.Float64(),
    "status": pl.String(),
}
"""Columns of the spiking ``requests`` frame (one row per sample)."""


DEFAULT_TIMESTEPS = 100
"""Timesteps of a sample when neither the workload nor a spiking model names them."""


class SpikingConfig(BaseModel):
    """The ``workload:`` block of kind ``spiking`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(default=100, ge=1, le=10_000_000)
    rate: Rate | None = None
    process: Literal["poisson", "uniform"] = "poisson"
    batch: int = Field(default=1, ge=1, le=1_000_000)
    timesteps: int | None = Field(default=None, ge=1, le=10_000_000)
    timestep: Duration | None = None
    input_rate: Rate | None = None


def _model_and_compiled(config: SpikingConfig, ctx: WorkloadContext) -> tuple[Any, Compiled]:
    """Apply the workload's input rate and timestep to the model, and rebind the compiled
    model to it (:meth:`~xpusim.engine.backend.Compiled.rebind`: event-driven backends
    whose cost depends on them compile anew)."""
    model, compiled = ctx.model, ctx.compiled
    if config.input_rate is None and config.timestep is None:
        return model, compiled
    if not isinstance(model, SpikingModel):
        raise ScenarioError(
            f"workload.input_rate/timestep: model {model.name!r} has no such settings; "
            f"remove them or use model family snn"
        )
    changes: dict[str, Any] = {}
    if config.input_rate is not None and model.input_rate != config.input_rate:
        changes["input_rate"] = f"{config.input_rate!r} Hz"
    if config.timestep is not None and model.timestep != config.timestep:
        changes["timestep"] = f"{config.timestep!r} s"
    if changes:
        model = model.with_options(**changes)
        compiled = compiled.rebind(model)
    return model, compiled


class SpikingWorkload(Workload):
    """Spiking inference: latency per sample, throughput and energy per inference."""

    name = "spiking"
    description = "samples through a spiking network at a rate or as a batch"
    schema = SpikingConfig
    metrics = (
        THROUGHPUT_SAMPLES_PER_S,
        E2E_P50_S,
        E2E_P99_S,
        detail(
            "latency_mean_s",
            "Mean latency",
            "s",
            "lower",
            description="mean time from a sample's arrival to its result",
            order=260,
        ),
        detail("timesteps_per_sample", "Timesteps per sample", description="network timesteps"),
    )

    def shape_hint(self, config: BaseModel) -> dict[str, Any]:
        """The largest step: ``batch`` samples of ``timesteps``."""
        assert isinstance(config, SpikingConfig)
        return {"batch": config.batch, "timesteps": config.timesteps or 0}

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Simulate the samples on ``ctx.system``'s replicas."""
        if not isinstance(config, SpikingConfig):
            config = SpikingConfig.model_validate(config)
        model, compiled = _model_and_compiled(config, ctx)
        steps_per_sample = config.timesteps or (
            model.timesteps if isinstance(model, SpikingModel) else DEFAULT_TIMESTEPS
        )
        n = config.samples
        rng = np.random.default_rng(ctx.seed)
        if config.rate is None:
            arrivals = np.zeros(n)
        elif config.process == "poisson":
            arrivals = np.cumsum(rng.exponential(1.0 / config.rate, n))
        else:
            arrivals = np.arange(1, n + 1) / config.rate
        system = ctx.system
        replicas = int(compiled.replicas)
        per_replica = max(1, system.count // replicas)

        env = simpy.Environment()
        queue: simpy.Store = simpy.Store(env)
        start = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        served_by = np.full(n, -1, dtype=np.int32)
        logs: list[list[tuple[float, float, int, float, str]]] = [[] for _ in range(replicas)]
        done = [0]

        def source() -> Any:
            for i in range(n):
                delay = arrivals[i] - env.now
                if delay > 0:
                    yield env.timeout(delay)
                queue.put(i)

        def replica(r: int) -> Any:
            while done[0] < n:
                first = yield queue.get()
                batch = [first]
                while len(batch) < config.batch and queue.items:
                    batch.append((yield queue.get()))
                cost = compiled.cost(
                    Shape(Phase.SPIKING, batch=len(batch), timesteps=steps_per_sample)
                )
                t0 = env.now
                start[batch] = t0
                served_by[batch] = r
                yield env.timeout(cost.seconds)
                finish[batch] = env.now
                done[0] += len(batch)
                logs[r].append((t0, env.now, len(batch), cost.joules, cost.state))
                ctx.progress(done[0], n)

        env.process(source())
        for r in range(replicas):
            env.process(replica(r))
        env.run()
        horizon = float(np.nanmax(finish)) if n else 0.0
        name = system.name

        states = sorted({row[4] for log in logs for row in log}) or ["busy"]
        step_frames, dev_frames = [], []
        for r, log in enumerate(logs):
            arr = np.array([(a, b, c, d) for a, b, c, d, _ in log], dtype=np.float64).reshape(-1, 4)
            st = np.array([states.index(row[4]) for row in log], dtype=np.int64)
            step_frames.append(
                pl.DataFrame(
                    {
                        "system": [name] * len(log),
                        "replica": [r] * len(log),
                        "step": np.arange(len(log)),
                        "start_s": arr[:, 0],
                        "end_s": arr[:, 1],
                        "batch": arr[:, 2].astype(np.int32),
                        "timesteps": np.full(len(log), steps_per_sample),
                        "state": [states[i] for i in st],
                        "joules": arr[:, 3],
                    },
                    schema=STEPS_SCHEMA,
                )
            )
            devices = list(range(r * per_replica, (r + 1) * per_replica))
            dev_frames.append(
                device_timeline(
                    name, r, devices, arr[:, 0], arr[:, 1], st, arr[:, 3], states, horizon
                )
            )
        steps = pl.concat(step_frames) if step_frames else pl.DataFrame(schema=STEPS_SCHEMA)
        devices_frame = pl.concat(dev_frames) if dev_frames else pl.DataFrame(schema=DEVICES_SCHEMA)
        latency = finish - arrivals
        requests = pl.DataFrame(
            {
                "system": [name] * n,
                "replica": served_by,
                "request_id": np.arange(n),
                "arrival_s": arrivals,
                "start_s": start,
                "finish_s": finish,
                "latency_s": latency,
                "status": [REQUEST_OK] * n,
            },
            schema=REQUESTS_SCHEMA,
        )
        energy_j = float(steps["joules"].sum()) if steps.height else 0.0
        span = horizon - (float(arrivals.min()) if config.rate is not None else 0.0)
        metrics = {
            "throughput_samples_per_s": n / span if span > 0 else float("inf"),
            "e2e_p50_s": float(np.percentile(latency, 50)),
            "e2e_p99_s": float(np.percentile(latency, 99)),
            "latency_mean_s": float(latency.mean()),
            "energy_j": energy_j,
            "energy_per_sample_j": energy_j / n,
            "simulated_s": horizon,
            "timesteps_per_sample": steps_per_sample,
        }
        return SystemRun(
            metrics=metrics,
            frames={"steps": steps, "requests": requests, "devices": devices_frame},
            simulated_s=horizon,
        )


WORKLOADS: list[Workload] = [SpikingWorkload()]
"""The workload kinds this module contributes (``spiking``)."""
