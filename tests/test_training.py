"""The training workload: memory, step model, failures, frames, plan checks, scenarios."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.fakes import fake_device
from xpusim.engine.analytic import AnalyticCompiled, OpTime
from xpusim.engine.collectives import collective_seconds
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph, ModelInfo
from xpusim.engine.power import PowerModel
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads.training.failures import FailureSpec, simulate_failures
from xpusim.plugins.workloads.training.frames import STEPS_SCHEMA
from xpusim.plugins.workloads.training.memory import checkpoint_bytes, stage_params, training_memory
from xpusim.plugins.workloads.training.plan import (
    TrainingPlan,
    check_plan,
    flops_per_token,
    nearest_plans,
)
from xpusim.plugins.workloads.training.steps import step_time
from xpusim.plugins.workloads.training.workload import (
    WORKLOADS,
    TrainingConfig,
    TrainingWorkload,
)

REPO = Path(__file__).resolve().parents[1]
PEAK = 100e12


class TinyTransformer(ModelGraph):
    """A stated toy: each layer is one GEMM of ``12·h²`` weights, one TP all-reduce when
    tensor > 1; TRAIN adds ``bwd.*`` ops at twice the forward and an Adam op."""

    def __init__(
        self, layers: int = 8, hidden: int = 1024, heads: int = 16, vocab: int = 1000
    ) -> None:
        self.layers, self.h = layers, hidden
        params = layers * 12 * hidden**2 + vocab * hidden
        self.info = ModelInfo(
            name="tiny",
            family="tiny",
            kind="decoder",
            dtype="bf16",
            params=params,
            active_params=params,
            param_bytes=2 * params,
            flops_per_token=2.0 * params,
            layers=layers,
            max_seq_len=256,
            config={
                "layers": layers,
                "hidden": hidden,
                "heads": heads,
                "vocab": vocab,
                "tied_embeddings": True,
                "seq_len": 256,
            },
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        par = parallel or Parallelism()
        n_l = math.ceil(self.layers / par.pipeline)
        tok = shape.batch * shape.tokens
        w = 12 * self.h**2 / par.tensor
        fwd = [Op("layer.gemm", OpKind.MATMUL, flops=2 * w * tok, count=n_l)]
        if par.tensor > 1:
            fwd.append(
                Op(
                    "layer.ar",
                    OpKind.COLLECTIVE,
                    collective=Collective.ALL_REDUCE,
                    comm_bytes=2.0 * tok * self.h,
                    group=par.tensor,
                    count=n_l,
                )
            )
        ops = list(fwd)
        if shape.phase is Phase.TRAIN:
            if shape.recompute == "full":
                ops += [Op("recompute.layer.gemm", OpKind.MATMUL, flops=2 * w * tok, count=n_l)]
            ops += [Op("bwd.layer.gemm", OpKind.MATMUL, flops=4 * w * tok, count=n_l)]
            ops += [
                Op(
                    "bwd.layer.ar",
                    o.kind,
                    collective=o.collective,
                    comm_bytes=o.comm_bytes,
                    group=o.group,
                    count=n_l,
                )
                for o in fwd
                if o.kind is OpKind.COLLECTIVE
            ]
            if par.pipeline > 1:
                ops.append(
                    Op(
                        "pipeline.send_grad",
                        OpKind.COLLECTIVE,
                        layer="pipeline",
                        collective=Collective.SEND_RECV,
                        comm_bytes=1e9,
                        group=2,
                    )
                )
            n = n_l * w / (par.data if par.zero >= 1 else 1)
            ops.append(Op("optimizer.adam", OpKind.OPTIMIZER, flops=12 * n, bytes_read=20 * n))
        return OpGraph(shape.phase, tuple(ops), shape)

    def module(self, device: str = "meta") -> Any:
        raise NotImplementedError(self)

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        raise NotImplementedError(self)

    def activation_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        per = {"none": 34.0, "selective": 20.0, "full": 2.0}[recompute]
        n_l = math.ceil(self.layers / parallel.pipeline)
        return per * shape.batch * shape.tokens * self.h * n_l / parallel.tensor


TOPO = Topology(
    devices_per_node=8, intra_bw=300e9, intra_latency=2e-6, inter_bw=25e9, inter_latency=5e-6
)


def make(
    par: Parallelism,
    model: ModelGraph | None = None,
    memory_gb: float = 80.0,
    topo: Topology = TOPO,
) -> tuple[System, AnalyticCompiled]:
    """A system of fake chips (100 TFLOP/s, 1 TB/s) compiled with exact roofline pricing."""
    dev = fake_device("chip-t", memory_gb, PEAK / 1e12)
    system = System("s", "fake", dev, par.devices, par, topo)
    m = model or TinyTransformer()

    def price(op: Op) -> OpTime:
        return OpTime(op.flops / PEAK, op.bytes / 1e12)

    def coll(kind: Collective, n: float, g: int) -> float:
        return collective_seconds(kind, n, g, topo)

    return system, AnalyticCompiled(
        system, m, price_op=price, collective=coll, power=PowerModel.from_device(dev)
    )


def plan(**kw: Any) -> TrainingPlan:
    base: dict[str, Any] = {
        "global_batch": 64,
        "micro_batch": 1,
        "seq_len": 256,
        "recompute": "none",
        "overlap_grad_reduce": False,
    }
    base.update(kw)
    return TrainingPlan(**base)


# --- memory ---------------------------------------------------------------------------


def test_zero_stages_shard_states_in_order() -> None:
    """Mixed-precision Adam keeps 2+2+12 bytes per parameter; ZeRO 1, 2, 3 divide the
    optimizer states, then gradients, then weights by the data-parallel degree."""
    m = TinyTransformer()
    n = stage_params(m, 1, 1)
    assert n == pytest.approx(m.info.params)
    needs = [
        training_memory(
            m,
            Parallelism(data=8, zero=z),
            micro_batch=1,
            seq_len=256,
            microbatches=8,
            recompute="full",
            precision="bf16",
            have_bytes=80e9,
        )
        for z in range(4)
    ]
    assert needs[0].weights + needs[0].gradients + needs[0].optimizer == pytest.approx(16 * n)
    assert needs[1].optimizer == pytest.approx(12 * n / 8)
    assert needs[2].gradients == pytest.approx(2 * n / 8)
    assert needs[3].weights < needs[2].weights
    totals = [x.total for x in needs]
    assert totals == sorted(totals, reverse=True)


def test_activations_follow_recompute_and_pipeline_in_flight() -> None:
    """Activations are the model's per-micro-batch estimate times min(m, p) in flight."""
    m = TinyTransformer()
    kw: dict[str, Any] = {"micro_batch": 1, "seq_len": 256, "precision": "bf16", "have_bytes": 80e9}
    par = Parallelism(pipeline=4)
    none = training_memory(m, par, microbatches=16, recompute="none", **kw)
    full = training_memory(m, par, microbatches=16, recompute="full", **kw)
    assert full.activations < none.activations
    per = m.activation_bytes(Shape(Phase.TRAIN, 1, 256), par, "none")
    assert none.activations == pytest.approx(4 * per)
    few = training_memory(m, par, microbatches=2, recompute="none", **kw)
    assert few.activations == pytest.approx(2 * per)


def test_checkpoint_holds_weights_and_optimizer_states() -> None:
    """A bf16 Adam checkpoint is 2 + 12 bytes per parameter."""
    m = TinyTransformer()
    assert checkpoint_bytes(m, "bf16") == pytest.approx(14 * m.info.params)


# --- FLOPs ----------------------------------------------------------------------------


def test_hfu_flops_with_full_recompute_are_the_megatron_formula() -> None:
    """For a GPT, hardware FLOPs per token with full recompute equal Narayanan et al.
    2021 eq. (3), 96·s·l·h²·(1 + s/6h + V/16lh) per sequence; model FLOPs the same
    without recomputation, 72·s·l·h²·(1 + s/6h + V/12lh)."""
    from xpusim.plugins.models.transformer import FAMILIES

    gpt = next(f for f in FAMILIES if f.name == "gpt")
    l_, h, s, v = 24, 2304, 2048, 51200
    model = gpt.configure({"layers": l_, "hidden": h, "heads": 24, "vocab": v, "seq_len": s})
    mf, hf = flops_per_token(model, s, "full")
    # the model counts biases and norms too; the paper's formula does not
    assert hf * s == pytest.approx(
        96 * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h)), rel=2e-3
    )
    assert mf * s == pytest.approx(
        72 * s * l_ * h * h * (1 + s / (6 * h) + v / (12 * l_ * h)), rel=2e-3
    )
    _, hs = flops_per_token(model, s, "selective")
    assert mf < hs < hf


# --- the step model -------------------------------------------------------------------


def test_single_device_step_is_accumulated_microbatches_plus_optimizer() -> None:
    """d = t = p = 1: step = m × (forward + backward) + the optimizer, no bubble."""
    _system, comp = make(Parallelism())
    st = step_time(comp, comp.model, plan(global_batch=8))
    tok = 256
    w = 12 * 1024**2
    per_mb = 8 * (2 * w * tok + 4 * w * tok) / PEAK
    assert st.microbatches == 8
    assert st.fwd_s + st.bwd_s == pytest.approx(8 * 2 * w * tok / PEAK + 8 * 4 * w * tok / PEAK)
    assert st.seconds == pytest.approx(8 * per_mb + st.optimizer_s)
    assert st.bubble_s == pytest.approx(0.0, abs=1e-12)
    assert st.optimizer_s > 0
    assert sum(st.device_s.values()) == pytest.approx(st.seconds)


def test_pipeline_bubble_and_sends_are_charged() -> None:
    """p = 4 stages: the bubble is (p − 1)/m of the work, sends cross stages, and the
    graph's own pipeline ops are replaced by placed point-to-point transfers."""
    _, comp = make(Parallelism(pipeline=4))
    st = step_time(comp, comp.model, plan(global_batch=32))
    assert st.pipeline.bubble_fraction == pytest.approx(3 / 32, rel=0.05)
    assert st.p2p_s > 0
    assert st.p2p_s < 1e9 / 300e9  # not the fake 1 GB pipeline op of the graph
    assert st.comm_s == pytest.approx(st.pipeline.p2p_s)


def test_data_parallel_allreduce_exposed_unless_overlapped() -> None:
    """d = 16 replicas on 2 nodes: the gradient all-reduce adds to the step after the
    flush; overlapped in buckets behind the backward, only its tail shows."""
    _, comp = make(Parallelism(data=16))
    base = step_time(comp, comp.model, plan(global_batch=16))
    over = step_time(comp, comp.model, plan(global_batch=16, overlap_grad_reduce=True))
    assert base.dp_exposed_s > 0
    assert base.dp_exposed_s == pytest.approx(base.dp_comm_s)
    assert over.dp_exposed_s < base.dp_exposed_s
    assert over.seconds < base.seconds


def test_dp_group_placement_uses_scale_out_links() -> None:
    """With tensor = 8 filling a node, each data-parallel group has one device per node,
    so its all-reduce runs on the scale-out network, slower than when packed in a node."""
    _, packed = make(Parallelism(data=8))
    _, spread = make(Parallelism(data=8, tensor=8))
    a = step_time(packed, packed.model, plan(global_batch=8))
    b = step_time(spread, spread.model, plan(global_batch=8))
    n = stage_params(spread.model, 8, 1) * 2
    assert b.dp_comm_s == pytest.approx(
        collective_seconds(Collective.ALL_REDUCE, n, 8, Topology(1, 300e9, 2e-6, 25e9, 5e-6)),
        rel=0.02,
    )
    assert b.dp_comm_s / n > a.dp_comm_s / (stage_params(packed.model, 1, 1) * 2)


def test_tensor_parallel_collectives_sit_in_the_stage() -> None:
    """TP all-reduces are the graph's collective ops, priced per micro-batch."""
    _, comp = make(Parallelism(tensor=4))
    st = step_time(comp, comp.model, plan(global_batch=4))
    assert st.stage_breakdown["comm"] > 0
    assert st.comm_s == pytest.approx(st.stage_breakdown["comm"] * 4)


def test_recompute_costs_time_and_counts_as_hardware_flops() -> None:
    """Full recomputation adds a forward: slower step, same model FLOPs, more HFU FLOPs."""
    _, comp = make(Parallelism())
    a = step_time(comp, comp.model, plan(global_batch=4))
    b = step_time(comp, comp.model, plan(global_batch=4, recompute="full"))
    assert b.seconds > a.seconds
    assert b.model_flops == pytest.approx(a.model_flops)
    assert b.hardware_flops > a.hardware_flops


# --- plan checks ------------------------------------------------------------------------


def test_plan_check_names_what_does_not_divide() -> None:
    """Layers, heads, batch and interleaving constraints are each named with values."""
    m = TinyTransformer(layers=6, heads=12)
    probs = check_plan(m, Parallelism(data=3, tensor=8, pipeline=8), plan(global_batch=64), 192)
    text = " ".join(probs)
    assert "6 layers" in text and "12 heads" in text and "global_batch = 64" in text
    probs = check_plan(
        m, Parallelism(pipeline=4), plan(global_batch=4, layers_per_stage=(1, 2, 2)), 4
    )
    assert any("lists 3 stages but pipeline = 4" in p for p in probs)
    probs = check_plan(
        TinyTransformer(), Parallelism(data=2, pipeline=4, virtual=2), plan(global_batch=12), 8
    )
    assert any("multiple of pipeline" in p for p in probs)
    assert check_plan(TinyTransformer(), Parallelism(data=2, pipeline=4), plan(), 8) == []


def test_nearest_plans_fit_and_divide() -> None:
    """When a plan does not fit, the suggestions are plans on the same devices that do."""
    m = TinyTransformer(layers=8, hidden=4096, heads=32)
    par = Parallelism(data=8)
    have = 6e9
    plans = nearest_plans(m, par, plan(global_batch=64), 8, have)
    assert plans
    for text in plans:
        fields = dict(kv.split("=") for kv in text.split(" (")[0].split(", "))
        cand = Parallelism(
            data=int(fields["data"]),
            tensor=int(fields["tensor"]),
            pipeline=int(fields["pipeline"]),
            zero=int(fields.get("zero", 0)),
        )
        p = plan(
            global_batch=64, recompute=fields["recompute"], micro_batch=int(fields["micro_batch"])
        )
        assert check_plan(m, cand, p, 8) == []
        assert training_memory(
            m,
            cand,
            micro_batch=p.micro_batch,
            seq_len=256,
            microbatches=p.microbatches(cand.data),
            recompute=p.recompute,
            precision="bf16",
            have_bytes=have,
        ).fits


# --- failures -------------------------------------------------------------------------


def test_no_failures_wall_time_is_steps_plus_checkpoints() -> None:
    """Without failures the run is steps × step time plus one write per interval."""
    spec = FailureSpec(math.inf, 600.0, 100.0, 1e9)
    run = simulate_failures(10.0, 95, 1024, spec, 30.0, 30.0, seed=1)
    assert run.failures == 0
    assert run.checkpoints == 9  # after steps 10, 20, ..., 90; none after the last
    assert run.wall_s == pytest.approx(950.0 + 9 * 30.0)


def test_failures_lose_work_and_are_reproducible() -> None:
    """Failures add lost work and restarts; the same seed gives the same run."""
    spec = FailureSpec(mtbf_per_device=1024 * 3600.0, restart_s=300.0, checkpoint_interval_s=1800.0)
    a = simulate_failures(10.0, 10_000, 1024, spec, 60.0, 60.0, seed=3, record=True)
    b = simulate_failures(10.0, 10_000, 1024, spec, 60.0, 60.0, seed=3)
    assert a.wall_s == b.wall_s and a.failures == b.failures
    assert a.failures > 0
    assert a.wall_s > 10_000 * 10.0 + a.checkpoints * 60.0
    expected = a.wall_s / 3600.0  # one failure per hour of wall time on 1024 devices
    assert 0.5 * expected < a.failures < 1.6 * expected
    # segments tile the wall time with no gap or overlap
    segs = sorted(a.segments, key=lambda s: s[1])
    assert segs[0][1] == 0.0 and segs[-1][2] == pytest.approx(a.wall_s)
    for x, y in itertools.pairwise(segs):
        assert y[1] == pytest.approx(x[2])
    trained = sum(s[4] for s in a.segments if s[0] == "train")
    assert trained == pytest.approx(10_000)


# --- the workload end to end ------------------------------------------------------------


def _ctx(system: System, comp: AnalyticCompiled, seed: int = 0) -> WorkloadContext:
    return WorkloadContext(
        system=system,
        compiled=comp,
        model=comp.model,
        seed=seed,
        base_dir=REPO,
        resolve_trace=lambda spec: None,
    )


def test_workload_frames_and_metrics() -> None:
    """The workload reports the summary metrics and frames with exactly the declared
    columns; each device's state intervals add up to the wall time."""
    system, comp = make(Parallelism(data=2, tensor=2, pipeline=2))
    cfg = TrainingConfig.model_validate(
        {
            "global_batch": 16,
            "seq_len": 256,
            "steps": 200,
            "seeds": 3,
            "failures": {
                "mtbf_per_device": "1 h",
                "checkpoint_interval": "30 s",
                "restart": "10 s",
                "storage_bandwidth": "100 GB/s",
            },
        }
    )
    wl = TrainingWorkload()
    assert wl.fit(cfg, system, comp).fits
    out = wl.simulate(cfg, _ctx(system, comp))
    m = out.metrics
    for key in (
        "step_time_s",
        "mfu",
        "hfu",
        "throughput_tokens_per_s",
        "time_to_train_s",
        "goodput",
        "time_to_train_p10_s",
        "time_to_train_p90_s",
        "device_hours",
    ):
        assert key in m
    assert 0 < m["mfu"] < m["hfu"] < 1
    assert 0 < m["goodput"] <= 1
    assert m["time_to_train_p10_s"] <= m["time_to_train_s"] <= m["time_to_train_p90_s"]
    assert out.simulated_s == m["time_to_train_s"]
    steps = out.frames["steps"]
    assert dict(steps.schema) == STEPS_SCHEMA
    assert steps.filter(pl.col("state") == "train").height == 200
    dev = out.frames["devices"]
    assert dev.columns == ["system", "replica", "device", "start_s", "end_s", "state", "joules"]
    assert dev.select(pl.struct("replica", "device").n_unique()).item() == system.count
    assert dev["end_s"].max() <= out.simulated_s + 1e-9
    idle_like = dev.filter(pl.col("state").is_in(["checkpoint", "restart"]))
    assert (idle_like["joules"] == 0).all()
    # every device's intervals lie end to end without overlap, over simulated time
    for _, lane in dev.sort("start_s").group_by("replica", "device"):
        a, b = lane["start_s"].to_numpy(), lane["end_s"].to_numpy()
        assert (b[:-1] <= a[1:] + 1e-9).all()


def test_workload_is_deterministic_per_seed() -> None:
    """Same scenario seed, same numbers."""
    system, comp = make(Parallelism(data=4))
    cfg = TrainingConfig.model_validate(
        {
            "global_batch": 8,
            "steps": 500,
            "failures": {"mtbf_per_device": "2 h", "checkpoint_interval": "5 s"},
        }
    )
    a = TrainingWorkload().simulate(cfg, _ctx(system, comp, seed=4)).metrics
    b = TrainingWorkload().simulate(cfg, _ctx(system, comp, seed=4)).metrics
    assert a == b


def test_does_not_fit_says_by_how_much_and_what_fits() -> None:
    """A plan that does not fit names the need, the device and the nearest plans."""
    system, comp = make(Parallelism(data=8), TinyTransformer(hidden=4096, heads=32), memory_gb=6.0)
    cfg = TrainingConfig.model_validate({"global_batch": 64, "steps": 1, "recompute": "none"})
    fit = TrainingWorkload().fit(cfg, system, comp)
    assert not fit.fits
    assert "GB per device" in fit.reason and "short by" in fit.reason
    assert "tensor=" in fit.suggestion


def test_invalid_plan_is_reported_with_nearest_plans() -> None:
    """A partition that does not add up to the layers is invalid, with suggestions."""
    system, comp = make(Parallelism(data=1, pipeline=3), TinyTransformer(layers=8))
    cfg = TrainingConfig.model_validate(
        {"global_batch": 6, "steps": 1, "layers_per_stage": [2, 2, 2]}
    )
    fit = TrainingWorkload().fit(cfg, system, comp)
    assert not fit.fits
    assert "adds up to 6 layers but the model has 8" in fit.reason
    assert "pipeline=" in fit.suggestion


def test_config_needs_exactly_one_length() -> None:
    """`steps` or `tokens`, not both and not neither; quantities carry units."""
    with pytest.raises(ValueError, match="exactly one"):
        TrainingConfig.model_validate({"global_batch": 8})
    with pytest.raises(ValueError, match="exactly one"):
        TrainingConfig.model_validate({"global_batch": 8, "steps": 3, "tokens": 1e9})
    with pytest.raises(ValueError):
        TrainingConfig.model_validate(
            {"global_batch": 8, "steps": 3, "failures": {"restart": "10"}}
        )
    c = TrainingConfig.model_validate(
        {"global_batch": 8, "tokens": 3e11, "failures": {"mtbf_per_device": "10 y"}}
    )
    assert c.failures is not None
    assert c.failures.mtbf_per_device == pytest.approx(10 * 365.25 * 86400)


def test_exports_one_training_workload() -> None:
    """The module exports the `training` kind for plugins.workloads to register."""
    assert [w.name for w in WORKLOADS] == ["training"]


def test_torus_systems_use_the_backends_collectives() -> None:
    """On a torus (TPU ICI) the data-parallel all-reduce is the backend's own price."""
    topo = Topology(4, 100e9, 1e-6, 100e9, 1e-6, torus=(4, 4))
    _system, comp = make(Parallelism(data=16), topo=topo)
    calls: list[tuple[Collective, float, int]] = []
    inner = comp.collective

    def spy(kind: Collective, n: float, g: int) -> float:
        calls.append((kind, n, g))
        return inner(kind, n, g)

    comp.collective = spy
    step_time(comp, comp.model, plan(global_batch=16))
    grads = stage_params(comp.model, 1, 1) * 2
    assert any(
        k is Collective.ALL_REDUCE and g == 16 and n == pytest.approx(grads) for k, n, g in calls
    )


# --- shipped scenarios -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt3-175b-training.yaml", "llama-7b-finetune.yaml"])
def test_shipped_scenarios_run(name: str) -> None:
    """The shipped scenarios load, fit and simulate on every system with the real
    backends and model plugins."""
    from xpusim.engine.errors import UnknownNameError
    from xpusim.engine.host import Host, get_plugin_manager
    from xpusim.engine.run import simulate
    from xpusim.engine.scenario import load_scenario

    pm = get_plugin_manager()

    class Register:
        from xpusim import hookimpl

        @hookimpl
        def register_workloads(self, register: Any) -> None:
            register(TrainingWorkload())

    host0 = Host(pm)
    if "training" not in host0.workloads.names():
        pm.register(Register(), name="training-test")
    host = Host(pm)
    try:
        sc = load_scenario(REPO / "scenarios" / name, host)
    except UnknownNameError as exc:  # a backend, device or family not registered here
        pytest.skip(f"scenario needs plugins not available here: {exc}")
    res = simulate(sc, host)
    ok = [s for s in res.systems if s.status == "ok"]
    assert ok, [(s.name, s.status, s.reason) for s in res.systems]
    for s in ok:
        for key in (
            "step_time_s",
            "mfu",
            "hfu",
            "throughput_tokens_per_s",
            "time_to_train_s",
            "goodput",
        ):
            assert s.metrics[key] is not None and s.metrics[key] > 0, (s.name, key)
