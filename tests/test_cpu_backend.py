"""The cpu backend: measured execution (device ``host``) and the calibrated analytic
device (``host-analytic``), on tiny hand-written torch modules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from xpusim.engine.backend import Cost
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import EagerCalls, ModelGraph, ModelInfo
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.plugins.cpu import calibrate as cal_mod
from xpusim.plugins.cpu.backend import CpuBackend, MeasuredCompiled, host_spec
from xpusim.plugins.cpu.measure import MAX_SAMPLES, MIN_SAMPLED_S, Rapl


class TinyModel(ModelGraph):
    """A two-layer MLP traced on meta for its graph; ``fail`` makes the module or its
    inputs misbehave the way a user's model can."""

    def __init__(self, fail: str = "", count_calls: bool = True) -> None:
        self.fail = fail
        self.count_calls = count_calls
        self.info = ModelInfo(
            name="tiny",
            family="test",
            kind="mlp",
            dtype="fp32",
            params=64 * 64 * 2.0,
            active_params=64 * 64 * 2.0,
            param_bytes=4 * 64 * 64 * 2.0,
        )

    def module(self, device: str = "meta") -> nn.Module:
        if self.fail == "factory":
            raise RuntimeError("factory exploded\nsecond line")
        with torch.device(device):
            return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        width = 63 if self.fail == "shape" else 64
        return (torch.zeros(max(1, shape.batch), width, device=device),)

    def eager_calls(self, shape: Shape) -> EagerCalls:
        """Counted by the models plugin's tracer, as the built-in models count theirs
        (none when ``count_calls`` is off: the contract's default)."""
        from xpusim.plugins.models.tracing import count_eager_calls

        return count_eager_calls(self, shape) if self.count_calls else super().eager_calls(shape)

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        from xpusim.plugins.models.tracing import graph_from_trace, trace_module

        tr = trace_module(self.module("meta"), self.example_inputs(shape, "meta"), "fp32")
        return graph_from_trace(tr, Phase.FORWARD, shape, "fp32")


FIXED_CALIBRATION = Path(__file__).parent / "data" / "cpu-calibration-1t.json"
"""A quick one-thread calibration measured once and committed: every price a test compares
comes from these fixed rates, never from a measurement of the machine running the test."""


@pytest.fixture(scope="module")
def cal_file() -> Path:
    """The committed one-thread calibration file."""
    return FIXED_CALIBRATION


def system(cal_file: Path, device: str = "host", **opts: Any) -> System:
    """A one-host cpu system using ``cal_file``."""
    spec = host_spec(cal_mod.load(cal_file), device)
    options = {"threads": 1, "repeats": 2, "warmup": 1, "calibration": str(cal_file), **opts}
    return System("h", "cpu", spec, 1, Parallelism(), Topology(1, 1.0, 0.0, 1.0, 0.0), options)


SHAPE = Shape(Phase.FORWARD, batch=4)


def test_measured_cost_runs_the_module_and_memoizes(cal_file: Path) -> None:
    """The host device executes the model: positive seconds split into compute, memory and
    overhead that sum to them, energy, FLOPs from the graph, and one measurement per shape."""
    c = CpuBackend().compile(TinyModel(), system(cal_file))
    assert isinstance(c, MeasuredCompiled)
    cost = c.cost(SHAPE)
    assert isinstance(cost, Cost) and cost.seconds > 0 and cost.joules > 0
    assert set(cost.breakdown) == {"compute", "memory", "overhead"}
    assert sum(cost.breakdown.values()) == pytest.approx(cost.seconds)
    assert cost.flops == pytest.approx(TinyModel().build(SHAPE).flops)
    assert cost.flops >= 2 * 2 * 4 * 64 * 64  # two GEMMs of 4x64x64
    t = c.timings[SHAPE]
    # the sampling rule, which holds at any machine speed: at least `repeats` samples, and
    # sampling stops only once the samples add up to MIN_SAMPLED_S or reach the cap
    assert 2 <= len(t.samples) <= MAX_SAMPLES and t.threads == 1
    assert sum(t.wall_samples) >= MIN_SAMPLED_S or len(t.samples) == MAX_SAMPLES
    assert c.cost(SHAPE) is cost  # memoized: not run again
    assert any("addmm" in name for name in c.op_profiles[SHAPE].ops)


def test_energy_is_marked_modelled_without_rapl(
    cal_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no readable RAPL counter the joules come from the stated power model and the
    figures say so."""
    monkeypatch.setattr(Rapl, "open", classmethod(lambda cls, root=None: None))
    c = CpuBackend().compile(TinyModel(), system(cal_file))
    assert isinstance(c, MeasuredCompiled)
    cost = c.cost(SHAPE)
    assert cost.joules == pytest.approx(c.power.joules(cost.breakdown, devices=1))
    fig = c.figures_used()["energy.method"]
    assert "modelled" in fig.assumption and not fig.source


def test_rapl_reads_package_domains_and_wraps(tmp_path: Path) -> None:
    """Package domains are read (sub-domains skipped) and a wrapped counter still gives
    the energy used."""
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"
    for d in (pkg, sub):
        d.mkdir()
    (pkg / "energy_uj").write_text("999000000\n")
    (pkg / "max_energy_range_uj").write_text("1000000000\n")
    (sub / "energy_uj").write_text("5\n")
    rapl = Rapl.open(tmp_path)
    assert rapl is not None and len(rapl.domains) == 1
    start = rapl.read()
    (pkg / "energy_uj").write_text("1000000\n")  # wrapped past the range
    assert rapl.joules_since(start) == pytest.approx(2.0)
    assert Rapl.open(tmp_path / "absent") is None


def test_analytic_device_prices_from_the_calibration(cal_file: Path) -> None:
    """host-analytic is the engine's roofline with this machine's calibrated rates."""
    from xpusim.engine.analytic import AnalyticCompiled

    c = CpuBackend().compile(TinyModel(), system(cal_file, "host-analytic"))
    assert isinstance(c, AnalyticCompiled)
    cost = c.cost(SHAPE)
    assert cost.seconds > 0 and cost.joules > 0
    assert cost.breakdown["compute"] + cost.breakdown["memory"] > 0
    assert cost.breakdown["overhead"] > 0
    bigger = c.cost(Shape(Phase.FORWARD, batch=512))
    assert bigger.seconds > cost.seconds
    assert c.fit().fits


def test_pricer_uses_each_kind_table(cal_file: Path) -> None:
    """GEMMs are compute or memory bound by the fit; a transcendental elementwise op uses
    the gelu table, a plain one the add table."""
    from xpusim.engine.graph import Op
    from xpusim.plugins.cpu.analytic import CpuOpPricer

    cal = cal_mod.load(cal_file)
    pr = CpuOpPricer(cal)
    big = Op(
        "mm",
        OpKind.MATMUL,
        flops=2.0 * 512**3,
        bytes_read=2 * 4 * 512**2,
        bytes_written=4 * 512**2,
        dims=(512, 512, 512),
        dtype="fp32",
    )
    assert pr(big).bound == "compute"
    n = 1 << 20
    add = Op(
        "x:add",
        OpKind.ELEMENTWISE,
        flops=n,
        bytes_read=8.0 * n,
        bytes_written=4.0 * n,
        dims=(n,),
        dtype="fp32",
    )
    gelu = Op(
        "x:gelu",
        OpKind.ELEMENTWISE,
        flops=n,
        bytes_read=8.0 * n,
        bytes_written=4.0 * n,
        dims=(n,),
        dtype="fp32",
    )
    assert pr(add).memory_s == pytest.approx(
        cal.streams["elementwise"].seconds_for(12.0 * n) - cal.dispatch_s
    )
    assert pr(gelu).memory_s == pytest.approx(
        cal.streams["transcendental"].seconds_for(12.0 * n) - cal.dispatch_s
    )


def test_catalog_cites_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Both devices exist; peak FLOP/s and bandwidth cite the calibration measured on this
    machine (a quick one measured on first use into $XDG_CACHE_HOME); memory comes from
    /proc/meminfo."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("xpusim.plugins.cpu.backend.SHIPPED", tmp_path / "none")
    monkeypatch.setattr(cal_mod, "logical_cores", lambda: 1)
    be = CpuBackend()
    cat = be.catalog()
    assert set(cat) == {"host", "host-analytic"}
    spec = cat["host"]
    assert "measured on this machine by xpusim calibrate" in spec.peak_flops["fp32"].source
    assert "measured on this machine" in spec.memory_bw.source
    assert "meminfo" in spec.memory_bytes.source
    assert spec.power.max_w is not None and spec.power.max_w.assumption
    assert (tmp_path / "xpusim" / "cpu-calibration-1t.json").is_file()
    assert be.default_calibration(1) is be.default_calibration(1)


def test_a_module_that_cannot_be_built_names_the_model_and_error(cal_file: Path) -> None:
    """A factory that raises gives an XpusimError with the model name and the first line."""
    c = CpuBackend().compile(TinyModel("factory"), system(cal_file))
    with pytest.raises(XpusimError, match=r"'tiny'.*RuntimeError: factory exploded$"):
        c.cost(SHAPE)


def test_inputs_of_the_wrong_shape_name_the_first_error_line(cal_file: Path) -> None:
    """A module that rejects its inputs fails with the model name and the torch error."""
    c = CpuBackend().compile(TinyModel("shape"), system(cal_file))
    with pytest.raises(XpusimError, match=r"'tiny' failed on the cpu backend.*RuntimeError"):
        c.cost(SHAPE)


def test_supports_inference_not_training(cal_file: Path) -> None:
    """Training and spiking workloads are refused with a reason; serving is accepted."""
    be = CpuBackend()
    assert be.supports(TinyModel(), "serving").ok
    no = be.supports(TinyModel(), "training")
    assert not no.ok and "inference" in no.reason


def test_bad_options_are_errors(cal_file: Path) -> None:
    """Unknown dtype, clock or a non-positive thread count are input errors."""
    be = CpuBackend()
    for opts in ({"dtype": "int3"}, {"clock": "sundial"}, {"threads": 0}):
        with pytest.raises(XpusimError):
            be.compile(TinyModel(), system(cal_file, **opts))


def test_cpu_clock_option_measures_process_time(cal_file: Path) -> None:
    """With clock: cpu the step's samples are the process CPU times."""
    c = CpuBackend().compile(TinyModel(), system(cal_file, clock="cpu"))
    assert isinstance(c, MeasuredCompiled)
    c.cost(SHAPE)
    t = c.timings[SHAPE]
    assert t.clock == "cpu" and t.samples == t.cpu_samples
    assert len(t.wall_samples) == len(t.cpu_samples) >= 2


def test_the_host_registers_the_cpu_backend() -> None:
    """The built-in entry point registers backend ``cpu`` with a calibrate method."""
    from xpusim.engine.host import build_host

    host = build_host()
    be = host.backends.get("cpu")
    assert be.name == "cpu" and callable(be.calibrate)


def test_analytic_device_charges_counted_views_and_module_calls(cal_file: Path) -> None:
    """The views and module calls a model counts for a step (here from a meta trace of its
    module: the tiny MLP's Sequential + two Linear + ReLU, and a transpose per Linear) are
    charged at the calibrated view and module-call times as overhead; a model that counts
    none is charged none."""
    from xpusim.engine.model import EagerCalls
    from xpusim.plugins.cpu.analytic import CpuAnalyticCompiled

    u = TinyModel().eager_calls(SHAPE)
    assert u.modules == 4
    assert u.views >= 2
    c = CpuBackend().compile(TinyModel(), system(cal_file, "host-analytic"))
    assert isinstance(c, CpuAnalyticCompiled)
    cal = cal_mod.load(cal_file)
    extra = c.untraced_seconds(SHAPE)
    assert extra == pytest.approx(u.views * cal.view_s + u.modules * cal.module_call_s)
    per_op = sum(c.op_time(o).overhead_s * o.count for o in c.graph(SHAPE).ops)
    assert c.cost(SHAPE).breakdown["overhead"] == pytest.approx(per_op + extra)
    plain = CpuBackend().compile(TinyModel(count_calls=False), system(cal_file, "host-analytic"))
    assert isinstance(plain, CpuAnalyticCompiled)
    assert plain.untraced(SHAPE) == EagerCalls() and plain.untraced_seconds(SHAPE) == 0.0


def test_max_pool_and_decode_attention_use_their_own_rates(cal_file: Path) -> None:
    """A max pool is priced by the measured max_pool2d table, not the add table; decode
    attention over a cache in a model larger than the op reads its keys and values (the
    cache bytes) at the copy bandwidth of the whole weight footprint, and the rest of its
    bytes as in a model that fits. Both are checked as the model's formulas, which hold for
    any calibration's rates.

    The orderings these formulas imply are checked only where the rates decide them by
    construction: in the committed file the max_pool2d table is far slower per byte than
    the add table, and for decode attention the committed copy table is replaced by one
    with a cache cliff, 40 GB/s up to 64 MiB and 10 GB/s beyond, so the op's 25 MB sit in
    cache while a 2 GB model streams from DRAM and reading its cache at a quarter of the
    bandwidth costs well over three times as much. (The committed quick table stops at
    8 MiB, so there both working sets get its last point's bandwidth and the two prices
    differ only by which rate the last few kilobytes get.)"""
    from xpusim.engine.graph import Op
    from xpusim.plugins.cpu.analytic import CpuOpPricer
    from xpusim.plugins.cpu.calibrate import StreamTable, kernel_time

    cal = cal_mod.load(cal_file)
    n = 1 << 18
    pool = Op(
        "f:max_pool2d_with_indices",
        OpKind.POOL,
        bytes_read=4.0 * n,
        bytes_written=1.0 * n,
        dims=(n,),
        dtype="fp32",
    )
    pool_s = CpuOpPricer(cal)(pool).memory_s
    assert pool_s == pytest.approx(cal.streams["maxpool"].seconds_for(5.0 * n) - cal.dispatch_s)
    add_s = cal.streams["elementwise"].seconds_for(5.0 * n) - cal.dispatch_s
    assert pool_s > 10.0 * add_s

    heads, keys, d = 48, 1024, 64
    attn = Op(
        "a:sdpa",
        OpKind.ATTENTION,
        flops=4.0 * heads * keys * d,
        bytes_read=4.0 * heads * (1 + 2 * keys) * d,
        bytes_written=4.0 * heads * d,
        dims=(1, keys, d),
        batch=heads,
        dtype="fp32",
    )
    in_cache, in_dram = 40e9, 10e9
    cliff = StreamTable(
        (1e4, 64.0 * 2**20, 256.0 * 2**20),
        (1e4 / in_cache, 64.0 * 2**20 / in_cache, 256.0 * 2**20 / in_dram),
    )
    with_cliff = replace(cal, streams={**cal.streams, "copy": cliff})
    for c in (cal, with_cliff):
        small = CpuOpPricer(c, weight_bytes=0.0)(attn)
        large = CpuOpPricer(c, weight_bytes=2e9)(attn)
        fit = c.kernel("attention", "fp32")
        m, nk, k = float(heads), float(keys), float(d)  # (queries·batch, keys, d)
        flops = 4.0 * m * nk * k
        copy = c.streams["copy"]
        cache = attn.bytes_read * 2.0 * keys / (1 + 2.0 * keys)
        _, resident = kernel_time(fit, flops, m, nk, k, attn.bytes, copy)
        _, rest = kernel_time(fit, flops, m, nk, k, attn.bytes - cache, copy)
        assert small.memory_s == pytest.approx(resident)
        assert large.memory_s == pytest.approx(rest + cache / (copy.bandwidth(2e9) * fit.mem_eff))
    assert cliff.bandwidth(attn.bytes) == pytest.approx(in_cache)
    assert cliff.bandwidth(2e9) == pytest.approx(in_dram)
    assert large.memory_s > 3.0 * small.memory_s


def test_measured_inputs_are_seeded_normal_samples(cal_file: Path) -> None:
    """host replaces the model's floating-point example inputs (zeros) by seeded normal
    samples of the same shape, identical between calls."""
    m = CpuBackend().compile(TinyModel(), system(cal_file))
    assert isinstance(m, MeasuredCompiled)
    a = m.inputs(SHAPE)[0]
    b = m.inputs(SHAPE)[0]
    assert a.shape == (SHAPE.batch, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and float(a.std()) > 0.5
