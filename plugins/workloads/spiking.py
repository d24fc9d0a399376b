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
      sweep: {samples: 200}  # operating points over load and input rate (see below)

Frames: ``steps`` (one row per batch step), ``requests`` (one row per sample with
``latency_s``), ``devices`` (the power-state timeline, :data:`xpusim.engine.frames.DEVICES_SCHEMA`),
``operating_points`` (energy per inference and latency over offered load and input
rate, :mod:`.spiking_sweep`).
Metrics: ``throughput_samples_per_s`` (what the offered load gave),
``capacity_samples_per_s`` (the most the system finishes), ``e2e_p50_s``, ``e2e_p99_s``,
``latency_mean_s``, ``simulated_s``; per inference ``synaptic_events_per_sample``, and
per timestep the equivalent ``dense_ops_per_timestep`` (what a GPU or TPU computes: every synapse
multiplied and every neuron updated) and ``synaptic_events_per_timestep`` (what an
event-driven chip processes); and what a placing backend decided
(:meth:`~xpusim.engine.backend.Compiled.mapping_facts`: ``boards``, ``network_copies``,
``chips_used``,
``cores_used``, ``neurons_per_core``, ``routing_entries``, ``real_time_factor``,
``required_time_scale_factor``, ``fits_real_time``). The engine adds energy, its
static/active split, cost and carbon.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.backend import Compiled
from xpusim.engine.budget import Work
from xpusim.engine.errors import ScenarioError
from xpusim.engine.frames import DEVICES_SCHEMA, REQUEST_OK, device_timeline
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.engine.metrics import (
    E2E_P50_S,
    E2E_P99_S,
    THROUGHPUT_SAMPLES_PER_S,
    Metric,
    detail,
)
from xpusim.engine.model import ModelGraph
from xpusim.engine.qty import Duration, Rate
from xpusim.engine.spiking import SpikingModel
from xpusim.engine.system import System
from xpusim.engine.workload import SystemRun, Workload, WorkloadContext
from xpusim.plugins.workloads.spiking_sweep import (
    INPUT_RATE_FACTORS,
    LOAD_FACTORS,
    SweepConfig,
    capacity,
    operating_points,
)
from xpusim.plugins.workloads.spiking_world import run_world

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

SAMPLE_EVENTS = 100
"""Events one sample costs the spiking world besides its timesteps (arrival, batching, a
replica's turn, its frame rows): a sample takes about 0.1 ms to simulate whatever its
timesteps, so a million samples are about two minutes."""


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
    sweep: SweepConfig = Field(default_factory=SweepConfig)


def _fact(name: str, label: str, description: str, order: int, unit: str = "") -> Metric:
    """A mapping fact or op count: shown in the report's summary, no better direction."""
    return Metric(
        name, label, unit, description=description, order=order, table=False, better="none"
    )


CAPACITY = Metric(
    "capacity_samples_per_s",
    "Capacity",
    "samples/s",
    better="higher",
    description="the most samples per second the system finishes, over batch sizes up to "
    "the workload's batch: what it could carry, where throughput is what it was offered",
    order=110,
    table=False,
)
"""The system's capacity, beside the throughput the offered load gave."""

FACT_METRICS: tuple[Metric, ...] = (
    _fact("boards", "Boards", "boards of the neuromorphic machine", 800),
    _fact("network_copies", "Network copies", "copies of the network side by side", 800),
    _fact("chips_used", "Chips used", "chips with at least one application core placed", 801),
    _fact("cores_used", "Cores used", "application cores placed (monitors included)", 802),
    _fact("neurons_per_core", "Neurons per core", "LIF neurons per core holding them", 803),
    _fact("routing_entries", "Routing entries", "multicast routing-table entries", 804),
    _fact(
        "real_time_factor",
        "Real-time factor",
        "machine time per simulated time (the time-scale factor it runs at)",
        805,
    ),
    _fact(
        "required_time_scale_factor",
        "Slow-down needed",
        "the smallest time-scale factor at which the busiest core keeps up",
        806,
    ),
    _fact(
        "dense_ops_per_timestep",
        "Dense ops per timestep",
        "operations of one sample's timestep computed densely: two per synapse and the "
        "LIF update of every neuron",
        807,
    ),
    _fact(
        "synaptic_events_per_timestep",
        "Synaptic events per timestep",
        "synaptic events of one sample's timestep (the sparse, event-driven work)",
        808,
    ),
    detail(
        "synaptic_events_per_sample",
        "Synaptic events per sample",
        description="synaptic events of one inference (all its timesteps)",
    ),
    detail(
        "fits_real_time",
        "Fits in real time",
        description="whether the busiest core keeps up at the configured time-scale factor",
    ),
)
"""Mapping facts and op counts the spiking workload puts in the summary."""


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


def _timesteps(config: SpikingConfig, model: Any) -> int:
    """Timesteps of one sample: the workload's, else the spiking model's, else
    :data:`DEFAULT_TIMESTEPS`."""
    return config.timesteps or (
        model.timesteps if isinstance(model, SpikingModel) else DEFAULT_TIMESTEPS
    )


def _op_counts(model: Any, timesteps: int) -> dict[str, float]:
    """Per sample: dense ops and synaptic events per timestep, synaptic events per
    inference, from the model's one-sample graph."""
    g = model.build(Shape(Phase.SPIKING, batch=1, timesteps=timesteps))
    dense = sum(op.flops for op in g.ops if op.kind in (OpKind.MATMUL, OpKind.ELEMENTWISE))
    events = sum(dict(op.attrs).get("synaptic_events", 0.0) for op in g.ops)
    return {
        "dense_ops_per_timestep": float(dense),
        "synaptic_events_per_timestep": float(events),
        "synaptic_events_per_sample": float(events) * timesteps,
    }


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
        CAPACITY,
        *FACT_METRICS,
    )

    def shape_hint(self, config: BaseModel) -> dict[str, Any]:
        """The largest step: ``batch`` samples of ``timesteps``."""
        assert isinstance(config, SpikingConfig)
        return {"batch": config.batch, "timesteps": config.timesteps or 0}

    def work(self, config: BaseModel, system: System, model: ModelGraph) -> Work | None:
        """Samples x (timesteps + :data:`SAMPLE_EVENTS`), the operating points' samples
        likewise; the horizon is the samples' arrival span at ``rate``."""
        if not isinstance(config, SpikingConfig):
            return None
        steps = _timesteps(config, model)
        sw = config.sweep
        points = 0
        if sw.enabled:
            points = len(sw.loads or LOAD_FACTORS) + len(sw.input_rates or INPUT_RATE_FACTORS)
        samples = config.samples + points * sw.samples
        per = steps + SAMPLE_EVENTS
        counted = f"{config.samples:,} samples"
        if points:
            counted = f"({counted} + {points} operating points x {sw.samples:,})"
        return Work(
            events=float(samples) * per,
            how=f"{counted} x ({steps:,} timesteps + {SAMPLE_EVENTS})",
            shrink="workload.samples, timesteps, sweep.samples",
            horizon_s=config.samples / config.rate if config.rate else None,
        )

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Simulate the samples on ``ctx.system``'s replicas."""
        if not isinstance(config, SpikingConfig):
            config = SpikingConfig.model_validate(config)
        model, compiled = _model_and_compiled(config, ctx)
        steps_per_sample = _timesteps(config, model)
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

        world = run_world(
            arrivals,
            config.batch,
            replicas,
            lambda b: compiled.cost(Shape(Phase.SPIKING, batch=b, timesteps=steps_per_sample)),
            ctx.progress,
            compiled.samples_in_turn,
        )
        start, finish, served_by, logs = world.start, world.finish, world.served_by, world.logs
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
        if config.rate is not None and n >= 2 and arrivals.max() > arrivals.min():
            # the load every system was offered (the same arrivals for each): throughputs
            # of systems that keep up are the same delivered load (verdict.tie_tolerance)
            metrics["offered_rate_per_s"] = (n - 1) / float(arrivals.max() - arrivals.min())
        most = capacity(compiled, config.batch, steps_per_sample)
        if math.isfinite(most):
            metrics["capacity_samples_per_s"] = most
        if isinstance(model, SpikingModel):
            metrics.update(_op_counts(model, steps_per_sample))
        declared = {m.name for m in FACT_METRICS}
        metrics.update({k: v for k, v in compiled.mapping_facts().items() if k in declared})
        frames = {"steps": steps, "requests": requests, "devices": devices_frame}
        if config.sweep.enabled:
            frames["operating_points"] = operating_points(
                config.sweep,
                rate=config.rate,
                process=config.process,
                batch=config.batch,
                timesteps=steps_per_sample,
                model=model,
                compiled=compiled,
                system=system,
                seed=ctx.seed,
            )
        return SystemRun(metrics=metrics, frames=frames, simulated_s=horizon)


WORKLOADS: list[Workload] = [SpikingWorkload()]
"""The workload kinds this module contributes (``spiking``)."""
