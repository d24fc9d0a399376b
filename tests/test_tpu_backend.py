"""The TPU backend: catalog, MXU pricing, fusion, ICI collectives, a llama-like graph."""

from __future__ import annotations

from typing import Any

import pytest

from xpusim.engine.collectives import topology_from_device
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph, ModelInfo
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.tpu.backend import (
    FP32_PASSES,
    XLA_MXU_EFFICIENCY,
    TpuBackend,
    TpuCostModel,
    builtin_catalog,
    resolve,
    slice_shape,
    split_over_mxus,
)
from xpusim.plugins.tpu.fusion import VECTOR_ATTR, fuse


class FakeLlama(ModelGraph):
    """A small llama-like decoder graph (one layer's ops repeated ``layers`` times)."""

    def __init__(self, hidden: int = 4096, ffn: int = 11008, layers: int = 32) -> None:
        self.h, self.f, self.layers = hidden, ffn, layers
        params = layers * (4 * hidden * hidden + 3 * hidden * ffn)
        self.info = ModelInfo(
            name="fake-llama",
            family="llama",
            kind="decoder",
            dtype="bf16",
            params=params,
            active_params=params,
            param_bytes=2 * params,
            kv_bytes_per_token=2 * 2 * layers * hidden,
            layers=layers,
            max_seq_len=4096,
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        tp = parallel.tensor if parallel else 1
        t = shape.batch * shape.tokens
        h, f, n, e = self.h, self.f // tp, self.layers, 2.0

        def mm(name: str, m: int, nn: int, k: int) -> Op:
            return Op(
                name,
                OpKind.MATMUL,
                flops=2.0 * m * nn * k,
                bytes_read=(m * k + k * nn) * e,
                bytes_written=m * nn * e,
                param_bytes=k * nn * e,
                dims=(m, nn, k),
                count=n,
            )

        def ew(name: str, kind: OpKind, el: float, reads: float = 1.0) -> Op:
            return Op(
                name,
                kind,
                flops=4.0 * el,
                bytes_read=reads * el * e,
                bytes_written=el * e,
                dims=(int(el),),
                count=n,
            )

        keys = shape.context + shape.tokens
        ops = [
            ew("ln1", OpKind.NORM, t * h),
            mm("qkv", t, 3 * h // tp, h),
            ew("rope", OpKind.ELEMENTWISE, t * 2 * h // tp),
            Op(
                "attn",
                OpKind.ATTENTION,
                flops=4.0 * 128 * shape.tokens * keys * 32 * shape.batch,
                bytes_read=2 * keys * h * e * shape.batch,
                bytes_written=t * h * e,
                dims=(shape.tokens, keys, 128),
                batch=32 // tp * shape.batch,
                count=n,
            ),
            mm("out", t, h, h // tp),
            Op(
                "ar",
                OpKind.COLLECTIVE,
                collective=Collective.ALL_REDUCE,
                comm_bytes=t * h * e,
                group=tp,
                count=n,
            ),
            ew("residual", OpKind.ELEMENTWISE, t * h, reads=2.0),
            ew("ln2", OpKind.NORM, t * h),
            mm("up", t, 2 * f, h),
            ew("glu", OpKind.ELEMENTWISE, t * f, reads=2.0),
            mm("down", t, h, f),
            ew("residual2", OpKind.ELEMENTWISE, t * h, reads=2.0),
        ]
        return OpGraph(shape.phase, tuple(ops), shape)

    def module(self, device: str = "meta") -> Any:  # pragma: no cover - not needed
        raise NotImplementedError

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        raise NotImplementedError  # pragma: no cover


def _system(dev_name: str, count: int = 1, tp: int = 1, torus: tuple[int, ...] = ()) -> System:
    dev = resolve(dev_name)
    topo = topology_from_device(dev)
    if torus:
        from dataclasses import replace

        topo = replace(topo, torus=torus)
    return System("t", "tpu", dev, count, Parallelism(tensor=tp), topo)


def test_catalog_has_four_chips_with_cited_figures() -> None:
    """The catalog holds TPU v4, v5e, v5p, v6e and v7 and the systolic Trainium2, every figure
    cited or assumed, and each chip's bf16 peak equals MXUs x rows x cols x 2 x clock;
    'trillium' is the v6e, 'ironwood' the v7, 'trn2' the Trainium2."""
    cat = builtin_catalog()
    assert set(cat) == {"tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e", "tpu-v7", "trainium2"}
    assert (
        cat["tpu-v5e"].flops("bf16") == 197e12
        and cat["tpu-v5e"].peak_flops["bf16"].source == "tpuv5e_spec"
    )
    assert cat["tpu-v4"].power.max_w.source == "tpuv4_power"
    assert cat["tpu-v6e"].extra["mxu_rows"].value == 256
    for spec in cat.values():
        for name, fig in spec.figures().items():
            assert fig.source or fig.assumption, (spec.name, name)
        x = spec.extra
        # clock derived from peak = MXUs * R * C * 2 * f
        peak = (
            x["mxu_count"].value
            * x["mxu_rows"].value
            * x["mxu_cols"].value
            * 2
            * x["clock_hz"].value
        )
        assert peak == pytest.approx(spec.flops("bf16"), rel=1e-3)
    assert resolve("trillium").name == "tpu-v6e"
    assert resolve("ironwood").name == "tpu-v7" and resolve("trn2").name == "trainium2"


def test_split_over_mxus() -> None:
    """Independent GEMMs spread over the MXUs first; a lone GEMM is cut along its larger output
    dimension, one piece per MXU."""
    assert split_over_mxus(1, 4096, 4096, 1, 4) == (1, 1024, 4096, 1)
    assert split_over_mxus(2048, 128, 4096, 1, 4) == (512, 128, 4096, 1)
    assert split_over_mxus(1, 128, 128, 32, 4) == (1, 128, 128, 8)


def test_large_gemm_runs_near_peak_and_decode_is_memory_bound() -> None:
    """An 8192^3 GEMM on v5e is compute-bound at over 90% of peak; a batch-1 GEMV is
    memory-bound."""
    cost = TpuCostModel(resolve("v5e"))
    n = 8192
    op = Op(
        "big",
        OpKind.MATMUL,
        flops=2.0 * n**3,
        bytes_read=4.0 * n * n,
        bytes_written=2.0 * n * n,
        dims=(n, n, n),
    )
    t = cost(op)
    assert t.bound == "compute"
    assert 0.9 < (2.0 * n**3 / 197e12) / t.compute_s <= 1.0
    gemv = Op(
        "gemv",
        OpKind.MATMUL,
        flops=2.0 * 4096 * 4096,
        bytes_read=2.0 * 4096 * 4096,
        bytes_written=2.0 * 4096,
        dims=(1, 4096, 4096),
    )
    assert cost(gemv).bound == "memory"


def test_fusion_removes_intermediate_hbm_traffic_and_keeps_vector_time() -> None:
    """Fusion folds elementwise ops into their producer up to a collective, keeps their FLOPs as
    vector time and drops the HBM write and re-read of the intermediate."""
    g = FakeLlama().build(Shape(Phase.DECODE, batch=8, tokens=1, context=512))
    f = fuse(g)
    assert len(f.ops) < len(g.ops)
    assert f.bytes < g.bytes
    assert f.flops == pytest.approx(g.flops)
    names = [o.name for o in f.ops]
    assert "qkv+rope" in names and "up+glu" in names and "down+residual2" in names
    # the collective breaks the chain: the residual after it starts a new fusion
    assert "residual+ln2" in names
    up = next(o for o in f.ops if o.name == "up+glu")
    glu = next(o for o in g.ops if o.name == "glu")
    upraw = next(o for o in g.ops if o.name == "up")
    assert up.attr(VECTOR_ATTR) == glu.flops
    # glu's read of up's output and up's write of it are both gone
    assert up.bytes == pytest.approx(upraw.bytes + glu.bytes - 2 * upraw.bytes_written)


def test_backend_prices_llama_like_decode_on_v5e() -> None:
    """A 7B-like decode on v5e takes between weights / HBM bandwidth and twice that and is
    memory-bound; a batch-4 prefill of 1024 tokens is compute-bound."""
    be = TpuBackend()
    model = FakeLlama()
    assert be.supports(model, "serving").ok and be.supports(model, "training").ok
    c = be.compile(model, _system("v5e"))
    shape = Shape(Phase.DECODE, batch=1, tokens=1, context=512)
    cost = c.cost(shape)
    weights = model.info.param_bytes
    # decode of a 7B model is bound by reading its weights from HBM
    assert cost.seconds >= weights / resolve("v5e").memory_bw.value * 0.99
    assert cost.seconds < 2 * weights / resolve("v5e").memory_bw.value
    assert cost.joules > 0 and cost.breakdown["memory"] > cost.breakdown["compute"]
    prefill = c.cost(Shape(Phase.PREFILL, batch=4, tokens=1024))
    assert prefill.breakdown["compute"] > prefill.breakdown["memory"]


def test_real_llama_2_7b_decode_step_on_v5e_is_memory_bound() -> None:
    """A batch-1 Llama-2-7B decode step on one v5e takes within 10% above weight bytes / the
    catalog's HBM bandwidth, and over 90% of its time is memory time."""
    tr = pytest.importorskip("xpusim.plugins.models.transformer")
    fam = {f.name: f for f in tr.FAMILIES}["llama"]
    model = fam.configure({"preset": "llama-2-7b"})
    sysm = _system("v5e")
    c = TpuBackend().compile(model, sysm)
    cost = c.cost(Shape(Phase.DECODE, batch=1, tokens=1, context=1024))
    floor = model.info.param_bytes / builtin_catalog()["tpu-v5e"].memory_bw.value
    assert floor * 0.99 <= cost.seconds < 1.1 * floor
    assert cost.state == "memory"
    assert cost.breakdown["memory"] > 0.9 * cost.seconds


def test_ici_torus_collectives() -> None:
    """An all-reduce on a v5p 4x4x4 slice costs bidirectional rings per dimension; a scenario
    torus that holds the group is used, and beyond one pod a DCN ring adds time."""
    be = TpuBackend()
    s = _system("v5p", count=64, tp=64)
    assert be.torus(s, 64) == (4, 4, 4)
    assert slice_shape(16, 2) == (4, 4) and slice_shape(8, 3) == (2, 2, 2)
    link = resolve("v5p").scale_up.bandwidth.value
    n = 1e9
    t = be.collective_seconds(Collective.ALL_REDUCE, n, 64, s)
    # bandwidth term of bidirectional rings per dimension: sum 2(d-1)/d * s_i / (2 link)
    bw_term = sum(2 * 3 / 4 * (n / 4**i) / (2 * link) for i in range(3))
    assert t == pytest.approx(bw_term + 2 * 3 * 3 * 1e-6, rel=1e-6)
    # a scenario torus shape is used when it holds the group
    s2 = _system("v5e", count=16, tp=16, torus=(2, 8))
    assert be.torus(s2, 16) == (2, 8)
    assert be.collective_seconds(Collective.ALL_REDUCE, n, 1, s2) == 0.0
    # beyond one pod, a DCN ring is added
    big = be.collective_seconds(Collective.ALL_REDUCE, n, 512, _system("v5e", 512, 512))
    pod = be.collective_seconds(Collective.ALL_REDUCE, n, 256, _system("v5e", 256, 256))
    assert big > pod


def test_power_model_uses_measured_v4_and_stated_assumption_elsewhere() -> None:
    """TPU v4 power comes from its measured figure; v5e cites a TDP source and states the
    assumption made from it."""
    be = TpuBackend()
    c4 = be.compile(FakeLlama(), _system("v4"))
    figs = c4.figures_used()
    assert figs["power.max_w"].source == "tpuv4_power"
    c5 = be.compile(FakeLlama(), _system("v5e"))
    assert "tpu_v5e_v6e_tdp" in c5.figures_used()["power.max_w"].source
    assert c5.figures_used()["power.max_w"].assumption


def test_spiking_supported_unknown_kinds_refused() -> None:
    """Spiking networks run as time-stepped dense ops; a kind the backend does not know is
    refused with the kinds it does price."""
    m = FakeLlama()
    m.info = ModelInfo(
        name="snn",
        family="snn",
        kind="spiking",
        dtype="bf16",
        params=1,
        active_params=1,
        param_bytes=2,
    )
    assert TpuBackend().supports(m, "spiking").ok
    m.info = ModelInfo(
        name="gnn",
        family="gnn",
        kind="graph",
        dtype="bf16",
        params=1,
        active_params=1,
        param_bytes=2,
    )
    sup = TpuBackend().supports(m, "offline")
    assert not sup.ok and "spiking" in sup.reason and "'graph'" in sup.reason


def test_xla_matmul_efficiency_reproduces_the_measured_v5e_matmuls() -> None:
    """The sustained MXU fraction is the line through JAX's published jnp.matmul timings
    on v5e (4096^3 in 0.8273 ms, 8192^3 in 6.0471 ms) once their common dispatch time is
    taken out: the priced times plus one constant give both measurements back."""
    cost = TpuCostModel(resolve("v5e"))
    t4 = cost.gemm_seconds(4096, 4096, 4096, 1, "bf16")
    t8 = cost.gemm_seconds(8192, 8192, 8192, 1, "bf16")
    dispatch = 0.8273e-3 - t4
    assert 0.0 < dispatch < 0.1e-3
    assert t8 + dispatch == pytest.approx(6.0471e-3, rel=1e-3)
    assert 0.9 < XLA_MXU_EFFICIENCY < 1.0


def test_fp32_matmuls_run_at_xla_default_precision() -> None:
    """XLA's DEFAULT precision runs an fp32 matmul as one bf16 MXU pass: the same MXU time
    as bf16 (its operands' HBM traffic is what doubles)."""
    cost = TpuCostModel(resolve("v4"))
    assert FP32_PASSES == 1
    assert cost.gemm_seconds(2048, 4096, 4096, 1, "fp32") == pytest.approx(
        cost.gemm_seconds(2048, 4096, 4096, 1, "bf16")
    )


def _op(name: str, kind: OpKind, read: float, written: float, **kw: Any) -> Op:
    return Op(name, kind, flops=read, bytes_read=read, bytes_written=written, **kw)


def test_reductions_do_not_fuse_into_matrix_ops_and_softmax_reads_per_pass() -> None:
    """A softmax or norm after a matmul starts its own fusion (the matmul writes its output,
    the reduction reads it back); a forward softmax standing alone reads its input three
    times (max, exp-sum, normalise), its gradient twice (sum(y dy), then y (dy - sum)); a
    norm after a matmul's fused residual add stands alone, after a lone elementwise op it
    fuses; either way it reads its input twice (reduction, then scaling)."""
    s = 1e9
    g = OpGraph(
        phase=Phase.TRAIN,
        ops=(
            _op("qk", OpKind.MATMUL, 1e6, s, dims=(64, 64, 8), batch=4),
            _op("softmax", OpKind.SOFTMAX, s, s),
            _op("dropout", OpKind.ELEMENTWISE, s, s),
            _op("bwd.pv.dx", OpKind.MATMUL, 1e6, s, dims=(64, 64, 8), batch=4),
            _op("bwd.softmax", OpKind.SOFTMAX, 2 * s, s),
            _op("out", OpKind.MATMUL, 1e6, s, dims=(64, 64, 8), batch=4),
            _op("residual", OpKind.ELEMENTWISE, s, s),
            _op("ln", OpKind.NORM, s, s),
            Op("ar", OpKind.COLLECTIVE, collective=Collective.ALL_REDUCE, comm_bytes=s, group=2),
            _op("residual2", OpKind.ELEMENTWISE, s, s),
            _op("ln2", OpKind.NORM, s, s),
        ),
        shape=Shape(Phase.TRAIN, batch=1, tokens=64),
        dtype="fp32",
    )
    f = fuse(g)
    names = [o.name for o in f.ops]
    assert names == [
        "qk",
        "softmax+dropout",
        "bwd.pv.dx",
        "bwd.softmax",
        "out+residual",
        "ln",
        "ar",
        "residual2+ln2",
    ]
    qk, sm, _, bsm = f.ops[:4]
    assert qk.bytes_written == s  # the scores go to HBM
    assert sm.bytes_read == pytest.approx(3 * s)  # the dropout's read is the softmax output
    assert sm.bytes_written == pytest.approx(s)
    assert bsm.bytes_read == pytest.approx(4 * s) and bsm.bytes_written == s
    # a norm is two passes: alone it reads its input twice; after a lone residual add its
    # second pass reads the add's output (written: the residual stream) back
    ln, res_ln = f.ops[5], f.ops[7]
    assert ln.bytes_read == pytest.approx(2 * s)
    assert res_ln.bytes_read == pytest.approx(2 * s) and res_ln.bytes_written == 2 * s
