"""The spiking workload: arrivals or a batch, latency per sample, throughput, energy,
on SpiNNaker and on the dense backends (GPU, TPU) when they are installed."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from xpusim.engine.backend import Compiled, Cost, Fit
from xpusim.engine.frames import DEVICES_SCHEMA, collect
from xpusim.engine.graph import Shape
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.models.snn import FAMILIES
from xpusim.plugins.spinnaker.backend import SPINN5, SpinnakerBackend
from xpusim.plugins.workloads.spiking import REQUESTS_SCHEMA, STEPS_SCHEMA, WORKLOADS, SpikingConfig

SPIKING = WORKLOADS[0]
ROOT = Path(__file__).resolve().parents[1]
TOPO = Topology(
    devices_per_node=8, intra_bw=1e11, intra_latency=1e-6, inter_bw=1e10, inter_latency=5e-6
)


class FixedCompiled(Compiled):
    """A stand-in backend: each step costs 1 ms per timestep and 2 J per sample."""

    def _cost(self, shape: Shape) -> Cost:
        return Cost(
            seconds=1e-3 * shape.timesteps, joules=2.0 * shape.batch, breakdown={"compute": 1.0}
        )

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        return Fit(True, 0, 1)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return FAMILIES[0].configure(
        {"preset": "kws-2layer", "calibration_samples": 2, "calibration_timesteps": 50}
    )


def _ctx(system: System, compiled: Compiled, model) -> WorkloadContext:  # type: ignore[no-untyped-def]
    return WorkloadContext(
        system=system,
        compiled=compiled,
        model=model,
        seed=7,
        base_dir=Path("."),
        resolve_trace=lambda s: None,
    )


def test_schema_uses_units_and_forbids_extra_keys() -> None:
    """Rates and durations carry units; an unknown key is refused."""
    c = SpikingConfig.model_validate(
        {"samples": 10, "rate": "50/s", "timestep": "0.5 ms", "input_rate": "20 Hz"}
    )
    assert c.rate == 50.0 and c.timestep == pytest.approx(5e-4)
    for bad in ({"samples": 0}, {"rate": "50"}, {"timesteps": -1}, {"sample": 3}):
        with pytest.raises(ValidationError):
            SpikingConfig.model_validate(bad)


def test_batch_mode_latency_and_throughput(model) -> None:  # type: ignore[no-untyped-def]
    """All samples at t=0 in batches of 4 on one replica: steps of 100 ms run back to
    back, so the last sample finishes after ceil(10/4) steps."""
    system = System("fake", "fake", SPINN5, 1, Parallelism(), TOPO)
    run = SPIKING.simulate(
        SpikingConfig(samples=10, batch=4, timesteps=100),
        _ctx(system, FixedCompiled(system, model), model),
    )
    steps, req = collect(run.frames["steps"]), collect(run.frames["requests"])
    assert steps.schema == pl.Schema(STEPS_SCHEMA) and req.schema == pl.Schema(REQUESTS_SCHEMA)
    assert steps["batch"].to_list() == [4, 4, 2]
    assert run.simulated_s == pytest.approx(0.3)
    assert run.metrics["throughput_samples_per_s"] == pytest.approx(10 / 0.3)
    assert run.metrics["energy_per_sample_j"] == pytest.approx(2.0)
    assert req["latency_s"].max() == pytest.approx(0.3)
    dev = collect(run.frames["devices"])
    assert dev.schema == pl.Schema(DEVICES_SCHEMA)
    assert dev["joules"].sum() == pytest.approx(20.0)


def test_arrivals_at_a_rate_queue_behind_a_busy_replica(model) -> None:  # type: ignore[no-untyped-def]
    """Poisson arrivals at 5/s against 100 ms service: latency is at least the service
    time and the frames are reproducible for a seed."""
    system = System("fake", "fake", SPINN5, 2, Parallelism(data=2), TOPO)
    cfg = SpikingConfig.model_validate({"samples": 200, "rate": "5/s", "timesteps": 100})
    a = SPIKING.simulate(cfg, _ctx(system, FixedCompiled(system, model), model))
    b = SPIKING.simulate(cfg, _ctx(system, FixedCompiled(system, model), model))
    assert a.metrics["e2e_p50_s"] >= 0.1 - 1e-12
    assert a.metrics["e2e_p99_s"] >= a.metrics["e2e_p50_s"]
    assert set(collect(a.frames["requests"])["replica"].unique().to_list()) <= {0, 1}
    assert_frame_equal(a.frames["requests"], b.frames["requests"])


def test_spinnaker_runs_the_workload_in_real_time(model) -> None:  # type: ignore[no-untyped-def]
    """On SpiNNaker a sample of 100 steps takes 100 ms (real time) and costs the board's
    energy; the input rate of the workload changes the energy but not the time."""
    system = System("spinn5", "spinnaker", SPINN5, 1, Parallelism(), TOPO)
    compiled = SpinnakerBackend().compile(model, system)
    cfg = {"samples": 5, "timesteps": 100, "rate": "1/s", "process": "uniform"}
    run = SPIKING.simulate(SpikingConfig.model_validate(cfg), _ctx(system, compiled, model))
    assert run.metrics["e2e_p50_s"] == pytest.approx(0.1)
    e1 = run.metrics["energy_per_sample_j"]
    assert 26.84 * 0.1 < e1 < 60 * 0.1
    busier = SPIKING.simulate(
        SpikingConfig.model_validate({**cfg, "input_rate": "100 Hz"}), _ctx(system, compiled, model)
    )
    assert busier.metrics["e2e_p50_s"] == pytest.approx(0.1)
    assert busier.metrics["energy_per_sample_j"] > e1


def _backend(module: str, cls: str):  # type: ignore[no-untyped-def]
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = importlib.import_module(module)
        return getattr(mod, cls)()
    except Exception:  # a backend under construction: the fake stands in
        return None


@pytest.mark.parametrize(
    ("module", "cls", "device"),
    [
        ("xpusim.plugins.gpu.backend", "GpuBackend", "l4"),
        ("xpusim.plugins.gpu.backend", "GpuBackend", "h100-sxm"),
        ("xpusim.plugins.tpu.backend", "TpuBackend", "tpu-v5e"),
    ],
)
def test_dense_backends_price_the_same_workload(model, module, cls, device) -> None:  # type: ignore[no-untyped-def]
    """GPUs and the TPU price the time-stepped dense ops of the same network; where a
    backend is not installed the fake stands in, so the workload path is still checked."""
    backend = _backend(module, cls)
    if backend is None:
        system = System(device, "fake", SPINN5, 1, Parallelism(), TOPO)
        compiled: Compiled = FixedCompiled(system, model)
    else:
        devices = backend.devices()
        spec = devices.get(device) or next(
            (d for d in devices.values() if device in d.aliases), None
        )
        if spec is None:
            pytest.skip(f"{device} not in the {cls} catalog")
        system = System(device, backend.name, spec, 1, Parallelism(), TOPO)
        compiled = backend.compile(model, system)
    run = SPIKING.simulate(
        SpikingConfig(samples=20, batch=8, timesteps=100), _ctx(system, compiled, model)
    )
    m = run.metrics
    assert m["throughput_samples_per_s"] > 0 and m["energy_per_sample_j"] > 0
    assert np.isfinite(m["e2e_p99_s"])


def test_scenario_ships_the_four_way_comparison() -> None:
    """scenarios/keyword-spotting-snn.yaml compares one SpiNN-5 board (one copy of the
    network, and 128 copies), one L4, one H100 and a TPU v5e on the spiking workload with
    the kws-2layer network."""
    doc = yaml.safe_load((ROOT / "scenarios" / "keyword-spotting-snn.yaml").read_text())
    assert doc["model"]["family"] == "snn" and doc["model"]["preset"] == "kws-2layer"
    assert doc["workload"]["kind"] == "spiking"
    SpikingConfig.model_validate({k: v for k, v in doc["workload"].items() if k != "kind"})
    systems = {(s["backend"], s["device"], s["count"]) for s in doc["systems"]}
    copies = sorted(s.get("options", {}).get("copies", 1) for s in doc["systems"])
    assert copies[-1] == 128 and len(doc["systems"]) == 5
    assert systems == {
        ("spinnaker", "spinn-5", 1),
        ("gpu", "l4", 1),
        ("gpu", "h100-sxm", 1),
        ("tpu", "v5e", 1),
    }
    FAMILIES[0].configure({k: v for k, v in doc["model"].items() if k != "family"})


class PlacedCompiled(FixedCompiled):
    """The stand-in at 10 J per sample, placing the model like a neuromorphic backend."""

    def _cost(self, shape: Shape) -> Cost:
        return Cost(1e-3 * shape.timesteps, 10.0 * shape.batch, {"compute": 1.0})

    def mapping_facts(self) -> dict[str, float | bool]:
        return {"chips_used": 3.0, "fits_real_time": True, "not_a_declared_fact": 1.0}


def _sweep_run(model, **workload):  # type: ignore[no-untyped-def]
    system = System("fake", "fake", SPINN5, 1, Parallelism(), TOPO)
    cfg = SpikingConfig.model_validate({"samples": 20, "timesteps": 100, **workload})
    return SPIKING.simulate(cfg, _ctx(system, PlacedCompiled(system, model), model))


def test_operating_points_split_energy_and_leave_saturated_loads_out(model) -> None:  # type: ignore[no-untyped-def]
    """Over offered load: a load at or above the capacity (one 100 ms sample at a time:
    10/s) is saturated and not simulated; below it, each inference's device energy is
    idle power over the span (static) plus the steps' joules above idle (active)."""
    run = _sweep_run(model, rate="2/s", sweep={"samples": 50})
    pts = run.frames["operating_points"].filter(pl.col("axis") == "load")
    assert pts["load_per_s"].to_list() == pytest.approx(
        [2 * f for f in (1 / 64, 1 / 16, 1 / 4, 1, 4, 16, 64, 256)]
    )
    assert pts["saturated"].to_list() == [x >= 10.0 for x in pts["load_per_s"]]
    assert pts["capacity_per_s"].to_list() == pytest.approx([10.0] * pts.height)
    live = pts.filter(~pl.col("saturated"))
    idle_w = SPINN5.power.idle_w.value  # type: ignore[union-attr]
    assert live["active_j"].to_list() == pytest.approx([10.0 - idle_w * 0.1] * live.height)
    low = live.row(0, named=True)
    assert low["static_j"] == pytest.approx(idle_w / low["load_per_s"], rel=0.3)
    assert low["total_j"] == pytest.approx(low["static_j"] + low["active_j"])
    assert low["latency_p50_s"] == pytest.approx(0.1)
    assert pts.filter(pl.col("saturated"))["total_j"].null_count() == pts["saturated"].sum()


def test_operating_points_over_input_rate_drive_the_same_network(model) -> None:  # type: ignore[no-untyped-def]
    """Over input rate: the same weights driven harder cause more synaptic events per
    inference; a backend whose cost ignores them (dense, or this stand-in) prices each
    point the same."""
    run = _sweep_run(model, rate="2/s", sweep={"samples": 20, "input_rates": ["5 Hz", "40 Hz"]})
    pts = run.frames["operating_points"].filter(pl.col("axis") == "input_rate")
    assert pts["input_rate_hz"].to_list() == [5.0, 40.0]
    events = pts["synaptic_events"].to_list()
    assert events[0] < events[1]
    assert pts["total_j"].n_unique() == 1 and pts["fits_real_time"].to_list() == [True, True]


def test_sweep_can_be_switched_off(model) -> None:  # type: ignore[no-untyped-def]
    """workload.sweep.enabled: false gives no operating points."""
    run = _sweep_run(model, rate="2/s", sweep={"enabled": False})
    assert "operating_points" not in run.frames


def test_summary_carries_op_counts_and_declared_mapping_facts(model) -> None:  # type: ignore[no-untyped-def]
    """Every system gets the dense ops (two per synapse and the LIF update per neuron) and
    the synaptic events of a timestep; a placing backend's facts are copied when the
    workload declares them, and no other key is."""
    run = _sweep_run(model, sweep={"enabled": False})
    sizes = [390, 256, 256, 12]
    dense = sum(2 * a * b + 12 * b for a, b in itertools.pairwise(sizes))
    m = run.metrics
    assert m["dense_ops_per_timestep"] == dense
    assert m["synaptic_events_per_timestep"] == pytest.approx(sum(model.activity.synaptic_events))
    assert m["synaptic_events_per_sample"] == pytest.approx(100 * m["synaptic_events_per_timestep"])
    assert m["chips_used"] == 3.0 and m["fits_real_time"] is True
    assert "not_a_declared_fact" not in m
    declared = {x.name for x in SPIKING.metrics}
    assert set(m) - {"energy_j", "energy_per_sample_j", "simulated_s"} <= declared


def test_capacity_is_what_the_system_could_carry(model) -> None:  # type: ignore[no-untyped-def]
    """At a low offered load throughput is the load; capacity is the most samples per
    second the replica finishes (batch 4 of 100 ms steps taken whole: 40/s)."""
    run = _sweep_run(model, rate="2/s", batch=4, sweep={"enabled": False})
    assert run.metrics["throughput_samples_per_s"] < 3.0
    assert run.metrics["capacity_samples_per_s"] == pytest.approx(40.0)


def test_sweep_keys_are_checked_at_load() -> None:
    """A sweep load or input rate of zero, an input rate above what a 1 ms-step source
    emits, too few samples or an unknown key are refused with the key named."""
    for bad in (
        {"loads": ["0/s"]},
        {"input_rates": ["0 Hz"]},
        {"input_rates": ["5000 Hz"]},
        {"samples": 1},
        {"points": 3},
    ):
        with pytest.raises(ValidationError, match="sweep"):
            SpikingConfig.model_validate({"sweep": bad})


class InTurnCompiled(FixedCompiled):
    """A stand-in that runs a batch's samples one after the other (100 ms each)."""

    samples_in_turn = True

    def _cost(self, shape: Shape) -> Cost:
        return Cost(1e-3 * shape.timesteps * shape.batch, 1.0, {"compute": 1.0})


def test_samples_run_in_turn_finish_one_after_the_other(model) -> None:  # type: ignore[no-untyped-def]
    """On a backend that runs a batch's samples in turn, four samples waiting at t=0 in
    one step of 400 ms finish at 100, 200, 300 and 400 ms, not all at 400 ms."""
    system = System("fake", "fake", SPINN5, 1, Parallelism(), TOPO)
    cfg = SpikingConfig.model_validate(
        {"samples": 4, "batch": 4, "timesteps": 100, "sweep": {"enabled": False}}
    )
    run = SPIKING.simulate(cfg, _ctx(system, InTurnCompiled(system, model), model))
    latency = collect(run.frames["requests"])["latency_s"].to_list()
    assert latency == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert collect(run.frames["steps"]).height == 1


def test_operating_points_land_in_the_run_folder_with_their_schema(model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The sweep's points are written to operating_points.parquet in the declared schema,
    the same rows the run held, and the report's spiking section names the file."""
    from xpusim.engine.report import html, markdown
    from xpusim.engine.results import RunResult, SystemResult, write_run
    from xpusim.plugins.workloads.spiking_sweep import OPERATING_POINTS_SCHEMA

    sim = _sweep_run(model, rate="2/s", sweep={"samples": 20})
    system = SystemResult("fake", "fake", "spinn-5", 1, metrics=sim.metrics, frames=sim.frames)
    run = RunResult("s", 7, "0", [system], workload="spiking")
    out = write_run(run, tmp_path / "run")
    written = pl.read_parquet(out / "operating_points.parquet")
    assert dict(written.schema) == OPERATING_POINTS_SCHEMA
    assert_frame_equal(written, sim.frames["operating_points"])
    assert "`operating_points.parquet`" in markdown.render_markdown(run)
    assert "<code>operating_points.parquet</code>" in html.render_html(run)
