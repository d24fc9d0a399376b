"""Operating points of a spiking run: energy per inference and latency of one system
over offered load and over input firing rate (sparsity).

Two built-in sweeps run the workload's own world (:mod:`.spiking_world`) on
``sweep.samples`` samples per point:

* **load**: Poisson arrivals at each rate of ``sweep.loads`` (default: the workload's
  ``rate`` times 1/64, 1/16, 1/4, 1, 4, 16, 64 and 256) at the scenario's input rate. A
  load at or above the system's capacity (the most samples per second its replicas
  finish, over batch sizes up to ``batch``) is recorded as saturated and not simulated:
  its queue would grow without bound.
* **input rate**: the scenario's arrivals (``rate``, or one batch) with the same network
  (same weights) driven at each rate of ``sweep.input_rates`` (default: the model's input
  rate times 0.1, 0.25, 0.5, 1, 2 and 4, at most 1000 Hz;
  :meth:`~xpusim.engine.spiking.SpikingModel.at_input_rate`), so event-driven backends
  see the sparser or denser activity; dense backends price the same time-stepped matrix
  products.

Energy per inference is device energy split into static (idle power over the span) and
active (busy energy above idle) parts, before PUE and host power; the report applies the
scenario's PUE. Each point also records the synaptic events per inference and whether
the backend keeps up with real time (``fits_real_time`` of
:meth:`~xpusim.engine.backend.Compiled.mapping_facts`, null where it places nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xpusim.engine.backend import Compiled
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.qty import Rate
from xpusim.engine.spiking import SpikingModel
from xpusim.engine.system import System
from xpusim.plugins.workloads.spiking_world import run_world, world_energy

__all__ = ["OPERATING_POINTS_SCHEMA", "SweepConfig", "operating_points"]

LOAD_FACTORS = (1 / 64, 1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0, 256.0)
"""Default offered loads, as multiples of the workload's rate."""

INPUT_RATE_FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Default input rates, as multiples of the model's input rate."""

MAX_INPUT_RATE_HZ = 1000.0
"""The highest Poisson input rate a 1 ms-step source can emit (one spike per step)."""

OPERATING_POINTS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "axis": pl.String(),
    "load_per_s": pl.Float64(),
    "input_rate_hz": pl.Float64(),
    "saturated": pl.Boolean(),
    "fits_real_time": pl.Boolean(),
    "latency_p50_s": pl.Float64(),
    "latency_p99_s": pl.Float64(),
    "static_j": pl.Float64(),
    "active_j": pl.Float64(),
    "total_j": pl.Float64(),
    "synaptic_events": pl.Float64(),
    "capacity_per_s": pl.Float64(),
}
"""Columns of the ``operating_points`` frame: one row per system, axis (``load`` or
``input_rate``) and point; energies are device joules per inference before PUE,
``synaptic_events`` per inference."""


class SweepConfig(BaseModel):
    """The ``workload.sweep`` block: which operating points to simulate."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Simulate the operating points (false: the run has none and the report no
    crossover section)."""
    loads: list[Rate] | None = None
    """Offered loads (samples/s); default :data:`LOAD_FACTORS` times the workload's rate."""
    input_rates: list[Rate] | None = None
    """Input firing rates (Hz); default :data:`INPUT_RATE_FACTORS` times the model's."""
    samples: int = Field(default=200, ge=10, le=100_000)
    """Samples simulated per point."""

    @field_validator("input_rates")
    @classmethod
    def _input_rates(cls, v: list[float] | None) -> list[float] | None:
        for r in v or []:
            if r > MAX_INPUT_RATE_HZ:
                raise ValueError(
                    f"an input rate of {r:g} Hz exceeds the {MAX_INPUT_RATE_HZ:g} Hz a 1 ms-step "
                    f"Poisson source can emit (one spike per step); use at most 1000 Hz"
                )
        return v


def default_loads(rate: float | None) -> list[float]:
    """The offered loads of the load sweep around ``rate`` (1/s when the workload gives
    none)."""
    base = rate if rate else 1.0
    return [base * f for f in LOAD_FACTORS]


def default_input_rates(model_rate: float) -> list[float]:
    """The input rates of the sparsity sweep around the model's input rate."""
    return sorted({min(model_rate * f, MAX_INPUT_RATE_HZ) for f in INPUT_RATE_FACTORS})


def capacity(compiled: Compiled, batch: int, timesteps: int) -> float:
    """The most samples per second ``compiled``'s replicas finish, over batch sizes up
    to ``batch``."""
    best = 0.0
    for b in sorted({1, batch, *(2**k for k in range(batch.bit_length()) if 2**k <= batch)}):
        secs = compiled.cost(Shape(Phase.SPIKING, batch=b, timesteps=timesteps)).seconds
        if secs > 0:
            best = max(best, b / secs)
    return best * compiled.replicas if best > 0 else float("inf")


def _events_per_sample(model: ModelGraph, timesteps: int) -> float:
    if not isinstance(model, SpikingModel):
        return float("nan")
    return float(sum(model.activity.synaptic_events)) * timesteps


def _point(
    compiled: Compiled,
    system: System,
    arrivals: np.ndarray,
    batch: int,
    timesteps: int,
) -> dict[str, Any]:
    """Latency percentiles and the energy split per inference of one simulated point."""
    replicas = int(compiled.replicas)
    per_replica = max(1, system.count // replicas)
    run = run_world(
        arrivals,
        batch,
        replicas,
        lambda b: compiled.cost(Shape(Phase.SPIKING, batch=b, timesteps=timesteps)),
        in_turn=compiled.samples_in_turn,
    )
    latency = run.finish - arrivals
    out: dict[str, Any] = {
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p99_s": float(np.percentile(latency, 99)),
    }
    power = compiled.power_model()
    if power is not None:
        split = world_energy(run, power.idle_w, system.count, per_replica).per(arrivals.size)
        out.update(split)
    return out


def _empty_point() -> dict[str, Any]:
    return {
        "latency_p50_s": None,
        "latency_p99_s": None,
        "static_j": None,
        "active_j": None,
        "total_j": None,
    }


def operating_points(
    sweep: SweepConfig,
    *,
    rate: float | None,
    process: str,
    batch: int,
    timesteps: int,
    model: ModelGraph,
    compiled: Compiled,
    system: System,
    seed: int,
) -> pl.DataFrame:
    """The ``operating_points`` rows of one system (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    n = sweep.samples
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0, n) if process == "poisson" else np.ones(n)
    events = _events_per_sample(model, timesteps)
    fits = compiled.mapping_facts().get("fits_real_time")
    cap = capacity(compiled, batch, timesteps)
    input_rate = model.input_rate if isinstance(model, SpikingModel) else None
    for load in sweep.loads or default_loads(rate):
        row: dict[str, Any] = {
            "axis": "load",
            "load_per_s": float(load),
            "input_rate_hz": input_rate,
            "saturated": bool(load >= cap),
            "fits_real_time": None if fits is None else bool(fits),
            "synaptic_events": events,
            "capacity_per_s": cap,
        }
        if load >= cap:
            row.update(_empty_point())
        else:
            row.update(_point(compiled, system, np.cumsum(gaps) / load, batch, timesteps))
        rows.append(row)
    if isinstance(model, SpikingModel):
        arrivals = np.cumsum(gaps) / rate if rate else np.zeros(n)
        for r in sweep.input_rates or default_input_rates(model.input_rate):
            m = model.at_input_rate(float(r))
            c = compiled.rebind(m)
            fits_r = c.mapping_facts().get("fits_real_time")
            cap_r = capacity(c, batch, timesteps)
            row = {
                "axis": "input_rate",
                "load_per_s": rate,
                "input_rate_hz": float(r),
                "saturated": bool(rate is not None and rate >= cap_r),
                "fits_real_time": None if fits_r is None else bool(fits_r),
                "synaptic_events": _events_per_sample(m, timesteps),
                "capacity_per_s": cap_r,
            }
            if row["saturated"]:
                row.update(_empty_point())
            else:
                row.update(_point(c, system, arrivals, batch, timesteps))
            rows.append(row)
    for row in rows:
        row["system"] = system.name
    return pl.DataFrame(rows, schema=OPERATING_POINTS_SCHEMA)
