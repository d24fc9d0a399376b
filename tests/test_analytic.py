"""The reusable roofline machinery (engine.analytic) and the power model (engine.power)."""

from __future__ import annotations

from typing import Any

import pytest

from xpusim.engine.analytic import AnalyticCompiled, OpTime, roofline
from xpusim.engine.collectives import collective_seconds, topology_from_device
from xpusim.engine.device import DeviceSpec, Figure, PowerSpec
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph, ModelInfo
from xpusim.engine.power import PowerModel
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.gpu.catalog import catalog, resolve


class TinyModel(ModelGraph):
    """Two GEMMs per layer, a norm and a tensor-parallel all-reduce."""

    def __init__(
        self,
        hidden: int = 1024,
        layers: int = 4,
        param_bytes: float = 1e9,
        kv_bytes_per_token: float = 1e5,
    ) -> None:
        self.hidden, self.layers = hidden, layers
        self.info = ModelInfo(
            name="tiny",
            family="fake",
            kind="decoder",
            dtype="bf16",
            params=param_bytes / 2,
            active_params=param_bytes / 2,
            param_bytes=param_bytes,
            kv_bytes_per_token=kv_bytes_per_token,
            layers=layers,
            max_seq_len=2048,
        )
        self.builds = 0

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        self.builds += 1
        par = parallel or Parallelism()
        t = par.tensor
        m, h = shape.new_tokens, self.hidden
        n = 4 * h // t
        layers = self.layers // par.pipeline
        ops = [
            Op(
                "up",
                OpKind.MATMUL,
                flops=2 * m * n * h,
                bytes_read=2 * (m * h + n * h),
                bytes_written=2 * m * n,
                param_bytes=2 * n * h,
                dims=(m, n, h),
                count=layers,
            ),
            Op(
                "down",
                OpKind.MATMUL,
                flops=2 * m * n * h,
                bytes_read=2 * (m * n + n * h),
                bytes_written=2 * m * h,
                param_bytes=2 * n * h,
                dims=(m, h, n),
                count=layers,
            ),
            Op(
                "norm",
                OpKind.NORM,
                flops=5 * m * h,
                bytes_read=2 * m * h,
                bytes_written=2 * m * h,
                dims=(m * h,),
                count=layers,
            ),
        ]
        if t > 1:
            ops.append(
                Op(
                    "ar",
                    OpKind.COLLECTIVE,
                    collective=Collective.ALL_REDUCE,
                    comm_bytes=2 * m * h,
                    group=t,
                    count=layers,
                )
            )
        return OpGraph(phase=shape.phase, ops=tuple(ops), shape=shape)

    def module(self, device: str = "meta") -> Any:
        raise NotImplementedError

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        raise NotImplementedError


def make_system(device: DeviceSpec, tensor: int = 1, pipeline: int = 1) -> System:
    par = Parallelism(tensor=tensor, pipeline=pipeline)
    return System(
        name="s",
        backend=device.backend,
        device=device,
        count=par.model_parallel,
        parallelism=par,
        topology=topology_from_device(device),
    )


def compiled(
    model: TinyModel,
    device: DeviceSpec,
    tensor: int = 1,
    pipeline: int = 1,
    calls: list[Op] | None = None,
) -> AnalyticCompiled:
    system = make_system(device, tensor, pipeline)
    peak, bw = device.flops("bf16"), device.memory_bw.value

    def price(op: Op) -> OpTime:
        if calls is not None:
            calls.append(op)
        return roofline(op.flops, op.bytes, peak, bw, 1e-6)

    return AnalyticCompiled(
        system,
        model,
        price_op=price,
        collective=lambda k, n, g: collective_seconds(k, n, g, system.topology),
        power=PowerModel.from_device(device),
        catalog=catalog(),
        reserve_bytes=1e9,
    )


def test_optime_semantics() -> None:
    """An op takes max(compute, memory) plus overhead, and is memory-bound only when its memory
    time exceeds its compute time (a tie counts as compute)."""
    t = OpTime(2.0, 3.0, 0.5)
    assert t.seconds == 3.5 and t.bound == "memory"
    assert OpTime(3.0, 3.0).bound == "compute"


def test_cost_breakdown_energy_and_flops() -> None:
    """A step's seconds are the sum of its compute/memory/comm/overhead breakdown; a decode is
    memory-bound, a big prefill compute-bound, and joules and FLOPs count every TP device."""
    dev = resolve("h100")
    model = TinyModel()
    c = compiled(model, dev, tensor=2)
    cost = c.cost(Shape(Phase.DECODE, batch=1, tokens=1, context=10))
    assert set(cost.breakdown) == {"compute", "memory", "comm", "overhead"}
    assert cost.seconds == pytest.approx(sum(cost.breakdown.values()))
    assert cost.breakdown["memory"] > cost.breakdown["compute"]  # decode GEMV
    assert cost.breakdown["comm"] > 0
    assert cost.breakdown["overhead"] == pytest.approx(3 * 4 * 1e-6)
    assert cost.joules == pytest.approx(c.power.joules(cost.breakdown, devices=2))
    g = model.build(Shape(Phase.DECODE, batch=1, tokens=1, context=10), Parallelism(tensor=2))
    assert cost.flops == pytest.approx(g.flops * 2)
    big = c.cost(Shape(Phase.PREFILL, batch=8, tokens=2048))
    assert big.state == "compute"


def test_memoization_prices_each_distinct_op_once() -> None:
    """A shape's graph is built once and each distinct op priced once; a new shape made of the
    same ops reuses their prices."""
    calls: list[Op] = []
    model = TinyModel()
    c = compiled(model, resolve("h100"), calls=calls)
    s = Shape(Phase.DECODE, batch=4, tokens=1, context=100)
    c.cost(s)
    c.cost(s)
    assert model.builds == 1
    n = len(calls)
    c.cost(Shape(Phase.DECODE, batch=4, tokens=1, context=200))  # same ops, new shape
    assert len(calls) == n


def test_pipeline_runs_stages_in_sequence() -> None:
    """Two pipeline stages run one after the other, so a step takes the seconds and joules of
    the unsplit model on one device."""
    dev = resolve("h100")
    one = compiled(TinyModel(), dev).cost(Shape(Phase.PREFILL, batch=1, tokens=512))
    two = compiled(TinyModel(), dev, pipeline=2).cost(Shape(Phase.PREFILL, batch=1, tokens=512))
    assert two.seconds == pytest.approx(one.seconds, rel=1e-9)
    assert two.joules == pytest.approx(one.joules, rel=1e-9)


def test_fit_and_memory_need() -> None:
    """Weights beyond device memory do not fit and the reason gives the GB short and suggests
    tensor parallelism; extra needs join the breakdown and KV capacity fits the usable memory."""
    dev = resolve("l4")
    model = TinyModel(param_bytes=30e9)
    f = compiled(model, dev).fit(kv_tokens=0)
    assert not f.fits
    assert f.breakdown["weights"] == pytest.approx(30e9)
    assert "short by" in f.reason and "GB" in f.reason
    assert "tensor parallel" in f.suggestion
    ok = compiled(TinyModel(param_bytes=10e9), dev).memory_need({"optimizer": 5e9})
    assert ok.fits and ok.breakdown["optimizer"] == 5e9
    c = compiled(TinyModel(param_bytes=10e9, kv_bytes_per_token=1e5), dev, tensor=2)
    cap = c.kv_capacity_tokens(0.9)
    assert cap > 0
    assert c.fit(kv_tokens=cap).need_bytes <= dev.memory_bytes.value * 0.9 + 1


def test_figures_used_lists_power_assumptions() -> None:
    """figures_used lists the cited TDP, the assumption behind idle power and the runtime memory
    reserve."""
    figs = compiled(TinyModel(), resolve("h100")).figures_used()
    assert figs["power.max_w"].source == "h100sxm_nvlink_tdp"
    assert "gpu_idle_power_gap" in figs["power.idle_w"].assumption
    assert "memory.runtime_reserve" in figs


def test_power_model() -> None:
    """Idle power is 20% of TDP unless a published idle figure is given; state watts rise idle <
    overhead < comm < memory < compute <= TDP, and energy scales with the device count."""
    dev = resolve("h100")
    pm = PowerModel.from_device(dev)
    assert pm.idle_watts == pytest.approx(0.2 * 700)
    w = {s: pm.state_watts(s) for s in ("compute", "memory", "comm", "overhead")}
    assert pm.idle_watts < w["overhead"] < w["comm"] < w["memory"] < w["compute"] <= 700
    assert pm.joules({"compute": 2.0, "memory": 1.0}, devices=4) == pytest.approx(
        4 * (2 * w["compute"] + w["memory"])
    )
    assert pm.state_watts("something-else") > pm.idle_watts
    # a published idle figure wins over the assumption
    spec = DeviceSpec(
        name="x",
        backend="gpu",
        vendor="",
        description="",
        peak_flops={"bf16": Figure(1e12, "s")},
        memory_bytes=Figure(1e9, "s"),
        memory_bw=Figure(1e9, "s"),
        power=PowerSpec(max_w=Figure(192, "tpuv4_power"), idle_w=Figure(90, "tpuv4_power")),
    )
    assert PowerModel.from_device(spec).idle_watts == 90
    for fig in pm.figures().values():
        assert fig.source or fig.assumption


@pytest.mark.parametrize(
    "field", ["flops", "bytes_read", "bytes_written", "param_bytes", "comm_bytes"]
)
@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_op_refuses_negative_and_nan_quantities(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"op 'x': {field} must be >= 0, got {value}"):
        Op(name="x", kind=OpKind.ELEMENTWISE, **{field: value})
