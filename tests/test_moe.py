"""Mixture of experts: expert-parallel weights, token routing by all-to-all, imbalance."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from xpusim.engine.collectives import collective_seconds
from xpusim.engine.graph import ROWS_MEAN, ROWS_STD, Collective, Op, OpKind, Phase, Shape
from xpusim.engine.system import Parallelism, Topology
from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency, expected_row_tiles
from xpusim.plugins.models.hf import HFFamily
from xpusim.plugins.models.transformer import MIXTRAL

HF = HFFamily()


def test_expert_parallel_shards_expert_weights() -> None:
    """With expert: 2 each device holds half the routed experts and all the rest: Mixtral
    8x7B's 93.4 GB of bf16 weights become about 48 GB a device."""
    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    x = m.experts
    assert x is not None and x.experts == 8 and x.top_k == 2 and x.moe_layers == 32
    assert x.expert_params == 32 * 8 * 3 * 4096 * 14336
    whole = m.weight_bytes_per_device(Parallelism())
    assert whole == m.info.param_bytes
    ep2 = m.weight_bytes_per_device(Parallelism(expert=2))
    assert ep2 == pytest.approx(whole - x.expert_params * 2 / 2)
    assert 47e9 < ep2 < 49e9
    assert m.expert_weight_bytes(Parallelism(expert=2)) == x.expert_params * 2 / 2


def test_dense_model_has_no_experts() -> None:
    """A dense model reports no experts and splits its weights over tensor x pipeline."""
    m = HF.configure({"preset": "llama-3.1-8b"})
    assert m.experts is None
    par = Parallelism(tensor=2, pipeline=2)
    assert m.weight_bytes_per_device(par) == m.info.param_bytes / 4


def test_deepseek_experts_shared_and_dense_layers() -> None:
    """DeepSeek-V3: 58 expert layers of 256 routed experts, one shared expert, three
    dense layers first."""
    m = HF.configure({"preset": "deepseek-v3"})
    x = m.experts
    assert x is not None and (x.experts, x.top_k, x.shared_experts, x.moe_layers) == (
        256,
        8,
        1,
        58,
    )
    g = m.build(Shape(Phase.DECODE, batch=8, tokens=1, context=1000))
    names = {o.name: o for o in g.ops}
    assert names["mlp.up"].count == 3 and names["moe.up"].count == 58
    assert names["moe.shared.up"].count == 58


def _a2a(m, par: Parallelism, tokens: int = 256) -> list:
    g = m.build(Shape(Phase.PREFILL, batch=1, tokens=tokens, context=0), par)
    return [o for o in g.ops if o.collective is Collective.ALL_TO_ALL]


def test_expert_parallel_routes_by_all_to_all() -> None:
    """Dispatch and combine carry each routed token's hidden state to its expert's device
    and back: tokens x top_k x hidden x dtype bytes, over the expert group."""
    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    assert _a2a(m, Parallelism()) == []
    ops = _a2a(m, Parallelism(expert=2))
    assert [o.name for o in ops] == ["moe.dispatch.all_to_all", "moe.combine.all_to_all"]
    for o in ops:
        assert o.comm_bytes == 256 * 2 * 4096 * 2 and o.group == 2 and o.count == 32


def test_imbalance_scales_the_busiest_device() -> None:
    """expert_imbalance scales the busiest expert-parallel device's expert GEMMs and
    all-to-all bytes; without expert parallelism it changes nothing."""
    even = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    skew = MIXTRAL.configure({"preset": "mixtral-8x7b", "expert_imbalance": 1.5})
    shape = Shape(Phase.PREFILL, batch=1, tokens=512, context=0)
    ep = Parallelism(expert=4)

    def op(m, name: str, par: Parallelism):
        return next(o for o in m.build(shape, par).ops if o.name == name)

    assert op(skew, "moe.up", ep).flops == pytest.approx(1.5 * op(even, "moe.up", ep).flops)
    a, b = op(skew, "moe.dispatch.all_to_all", ep), op(even, "moe.dispatch.all_to_all", ep)
    assert a.comm_bytes == pytest.approx(1.5 * b.comm_bytes)
    one = Parallelism()
    assert op(skew, "moe.up", one).flops == op(even, "moe.up", one).flops


@pytest.mark.parametrize(("kind", "measured_gbps"), [("dispatch", 153.0), ("combine", 158.0)])
def test_all_to_all_prices_like_deepep(kind: str, measured_gbps: float) -> None:
    """kernels.yaml `deepep_v1_normal_kernels_h800`: DeepEP's intranode EP8 kernels move
    DeepSeek-V3's routed tokens (4096 tokens a rank, hidden 7168, top-8) at 153 GB/s
    (dispatch) and 158 GB/s (combine) over H800 NVLink (~160 GB/s). The graph's all-to-all
    priced over that link achieves the same bandwidth within 5%."""
    m = HF.configure({"preset": "deepseek-v3", "dtype": "fp8"})
    par = Parallelism(expert=8)
    op = next(o for o in _a2a(m, par, tokens=4096) if kind in o.name)
    assert op.comm_bytes == 4096 * 8 * 7168 * 1
    nvlink = Topology(
        devices_per_node=8, intra_bw=160e9, intra_latency=1e-6, inter_bw=50e9, inter_latency=5e-6
    )
    seconds = collective_seconds(Collective.ALL_TO_ALL, op.comm_bytes, 8, nvlink)
    # DeepEP's "bottleneck bandwidth": the bytes that leave the rank over NVLink per second
    achieved = op.comm_bytes * 7 / 8 / seconds / 1e9
    assert achieved == pytest.approx(measured_gbps, rel=0.05)


def test_expert_parallel_serving_fits_where_one_device_did_not() -> None:
    """Mixtral 8x7B in bf16 does not fit one H100 whole, but does with expert: 2."""
    from xpusim.plugins.gpu.catalog import catalog

    have = catalog()["h100-sxm"].memory_bytes.value
    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    assert m.weight_bytes_per_device(Parallelism()) > have
    assert m.weight_bytes_per_device(Parallelism(expert=2)) < have


def test_summary_facts_follow_the_plan() -> None:
    """Every system's summary carries total and active parameters, its weights per device
    under its plan and the KV bytes per token."""
    from xpusim.engine.model import model_facts

    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    one = model_facts(m, Parallelism())
    ep = model_facts(m, Parallelism(expert=2))
    assert one["model_params"] == m.info.params
    assert one["model_active_params"] == m.info.active_params < m.info.params
    assert one["kv_bytes_per_token"] == 131072
    assert one["weight_bytes_per_device"] == m.info.param_bytes
    assert ep["weight_bytes_per_device"] == m.weight_bytes_per_device(Parallelism(expert=2))
    assert ep["weight_bytes_per_device"] < 0.55 * one["weight_bytes_per_device"]


def test_kv_cache_per_device_under_tensor_parallelism() -> None:
    """A tensor split divides the KV heads (replicated when fewer than the degree); an
    MLA latent is whole on every tensor rank; pipeline stages split the layers."""
    llama = HF.configure({"preset": "llama-3.1-70b"})
    kv = llama.info.kv_bytes_per_token
    assert llama.kv_bytes_per_token_per_device(Parallelism(tensor=8)) == kv / 8
    assert llama.kv_bytes_per_token_per_device(Parallelism(tensor=16)) == kv / 8
    assert llama.kv_bytes_per_token_per_device(Parallelism(tensor=2, pipeline=2)) == kv / 4
    ds = HF.configure({"preset": "deepseek-v3"})
    assert ds.kv_bytes_per_token_per_device(Parallelism(tensor=8)) == ds.info.kv_bytes_per_token


def test_gpu_memory_fit_shards_experts() -> None:
    """The backend's memory fit holds each device's share: Mixtral 8x7B with expert: 2 on
    two H100s fits with about 48 GB of weights a device, not 93.4 GB."""
    from xpusim.engine.collectives import topology_from_device
    from xpusim.engine.system import System
    from xpusim.plugins.gpu.backend import GpuBackend
    from xpusim.plugins.gpu.catalog import resolve

    dev = resolve("h100-sxm")
    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    fits = {}
    for ep in (1, 2):
        par = Parallelism(data=2, expert=ep)
        system = System("sut", "gpu", dev, 2, par, topology_from_device(dev))
        fits[ep] = GpuBackend().compile(m, system).fit(kv_tokens=0)
    assert fits[1].breakdown["weights"] == pytest.approx(93.4e9, rel=0.001)
    assert not fits[1].fits
    assert fits[2].breakdown["weights"] == pytest.approx(48.3e9, rel=0.001)
    assert fits[2].fits


@pytest.mark.parametrize(("kind", "measured_gbps"), [("dispatch", 726.0), ("combine", 740.0)])
def test_gpu_backend_all_to_all_matches_deepep_v2_on_b200(kind: str, measured_gbps: float) -> None:
    """kernels.yaml `deepep_v2_elasticbuffer_bandwidth`: on SM100 within one NVLink domain
    (EP 8, DeepSeek-V3's 8K tokens a batch, hidden 7168, top-8) DeepEP V2 reaches 726 GB/s
    dispatch and 740 GB/s combine of logical bandwidth (local-rank traffic included). The
    gpu backend prices the graph's all-to-all on eight B200s within 10% of that."""
    from xpusim.engine.collectives import topology_from_device
    from xpusim.engine.system import System
    from xpusim.plugins.gpu.backend import GpuBackend
    from xpusim.plugins.gpu.catalog import resolve

    dev = resolve("b200")
    m = HF.configure({"preset": "deepseek-v3", "dtype": "fp8"})
    par = Parallelism(data=8, expert=8)
    compiled = GpuBackend().compile(m, System("sut", "gpu", dev, 8, par, topology_from_device(dev)))
    op = next(o for o in _a2a(m, par, tokens=8192) if kind in o.name)
    seconds = compiled.collective_seconds(Collective.ALL_TO_ALL, op.comm_bytes, 8)
    assert op.comm_bytes / seconds / 1e9 == pytest.approx(measured_gbps, rel=0.10)


def test_expert_gemms_carry_the_binomial_spread_of_their_rows() -> None:
    """Each expert's rows are the tokens routed to it, a binomial of n tokens with
    probability top_k / experts: the expert GEMMs say their mean and spread, which a
    backend that pads each expert to whole tiles prices."""
    m = MIXTRAL.configure({"preset": "mixtral-8x7b"})
    shape = Shape(Phase.PREFILL, batch=1, tokens=3072, context=0)
    up = next(o for o in m.build(shape, Parallelism()).ops if o.name == "moe.up")
    assert up.attr(ROWS_MEAN) == pytest.approx(3072 * 2 / 8)
    assert up.attr(ROWS_STD) == pytest.approx((3072 * 0.25 * 0.75) ** 0.5)


def test_expected_row_tiles_smooth_the_tile_cliff() -> None:
    """With no spread a group takes the tiles of its mean; with the spread of routed
    tokens, a mean on a tile boundary costs about half a tile more (some experts spill
    into a seventh tile), the expectation grows smoothly with the mean instead of
    jumping at each boundary, and a group that sees no row launches no tile."""
    assert expected_row_tiles(768, 0.0, 128) == 6
    assert expected_row_tiles(770, 0.0, 128) == 7
    assert expected_row_tiles(0, 0.0, 128) == 0
    on = expected_row_tiles(768, 24.0, 128)
    assert 6.4 < on < 6.6
    means = [700 + 4 * i for i in range(40)]
    tiles = [expected_row_tiles(x, 24.0, 128) for x in means]
    assert all(b >= a for a, b in pairwise(tiles))
    assert max(b - a for a, b in pairwise(tiles)) < 0.1
    assert expected_row_tiles(1e-3, 1e-2, 64) < 1e-3


def test_a_grouped_gemm_of_spread_rows_costs_its_expected_tiles() -> None:
    """The GPU prices an expert GEMM whose rows spread about a tile multiple above the
    same GEMM of equal rows per expert, and no longer drops when the tokens fall on a
    tile boundary: one more token costs about as much as one fewer."""
    dev = catalog()["a100-sxm-80gb"]
    cost = GpuCostModel(dev, GpuEfficiency())

    def seconds(rows: float, spread: float) -> float:
        op = Op(
            name="moe.up",
            kind=OpKind.MATMUL,
            flops=2.0 * rows * 8 * 14336 * 4096,
            bytes_read=8 * 14336 * 4096 * 2.0,
            bytes_written=rows * 8 * 14336 * 2.0,
            dims=(math.ceil(rows), 14336, 4096),
            batch=8,
            dtype="fp16",
            attrs=((ROWS_MEAN, rows), (ROWS_STD, spread)),
        )
        return cost(op).seconds

    assert seconds(768, 24.0) > seconds(768, 0.0) * 1.03
    lower, upper = seconds(767, 24.0), seconds(769, 24.0)
    assert upper / lower < 1.02
    assert seconds(769, 0.0) / seconds(767, 0.0) > 1.1  # the cliff of equal rows
