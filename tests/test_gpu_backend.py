"""The GPU backend: catalog provenance, the per-op cost model, fit, calibration."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import pluggy
import pytest
import yaml

from xpusim.engine import hookspecs
from xpusim.engine.collectives import topology_from_device
from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import STRIDED, Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph, ModelInfo
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.gpu import calibration
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.gpu.catalog import catalog, resolve
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency
from xpusim.plugins.workloads.serving.stacks import StackCompiled, load_profile

FIGURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "figures.yaml"
KERNELS = FIGURES.with_name("kernels.yaml")


# -- a hand-built Llama-like decoder (the real transformer family lives elsewhere) -----


class FakeLlama(ModelGraph):
    """GEMMs, flash attention, norms and TP all-reduces of a Llama-style decoder."""

    def __init__(
        self,
        name: str,
        hidden: int,
        ffn: int,
        layers: int,
        heads: int,
        kv_heads: int,
        vocab: int,
        params: float,
    ) -> None:
        self.h, self.ffn, self.layers = hidden, ffn, layers
        self.heads, self.kv_heads = heads, kv_heads
        self.vocab, self.hd = vocab, hidden // heads
        kv = 2 * layers * kv_heads * self.hd * 2
        self.info = ModelInfo(
            name=name,
            family="fake",
            kind="decoder",
            dtype="bf16",
            params=params,
            active_params=params,
            param_bytes=2 * params,
            kv_bytes_per_token=kv,
            flops_per_token=2 * params,
            layers=layers,
            max_seq_len=4096,
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        par = parallel or Parallelism()
        t, nl = par.tensor, self.layers // par.pipeline
        m = shape.new_tokens
        h, hd = self.h, self.hd
        qkv = (self.heads + 2 * self.kv_heads) * hd // t
        ffn = self.ffn // t

        def gemm(name: str, mm: int, n: int, k: int, count: int = nl) -> Op:
            return Op(
                name,
                OpKind.MATMUL,
                flops=2 * mm * n * k,
                bytes_read=2 * (mm * k + n * k),
                bytes_written=2 * mm * n,
                param_bytes=2 * n * k,
                dims=(mm, n, k),
                count=count,
            )

        ctx = shape.context + shape.tokens
        qh, kvh = self.heads // t, max(1, self.kv_heads // t)
        att = Op(
            "attn",
            OpKind.ATTENTION,
            flops=4 * shape.tokens * ctx * hd * qh * shape.batch,
            bytes_read=2 * shape.batch * (shape.tokens * qh * hd + 2 * ctx * kvh * hd),
            bytes_written=2 * shape.batch * shape.tokens * qh * hd,
            dims=(shape.tokens, ctx, hd),
            batch=qh * shape.batch,
            count=nl,
        )
        ops = [
            gemm("qkv", m, qkv, h),
            att,
            gemm("o", m, h, h // t),
            gemm("gate_up", m, 2 * ffn, h),
            gemm("down", m, h, ffn),
            Op(
                "norm",
                OpKind.NORM,
                flops=8 * m * h,
                bytes_read=4 * m * h,
                bytes_written=2 * m * h,
                dims=(m * h,),
                count=2 * nl,
            ),
            Op(
                "act",
                OpKind.ELEMENTWISE,
                flops=4 * m * ffn,
                bytes_read=4 * m * ffn,
                bytes_written=2 * m * ffn,
                dims=(m * ffn,),
                count=nl,
            ),
            gemm("lm_head", shape.batch, self.vocab // t, h, count=1),
        ]
        if t > 1:
            ops.append(
                Op(
                    "tp_ar",
                    OpKind.COLLECTIVE,
                    collective=Collective.ALL_REDUCE,
                    comm_bytes=2 * m * h,
                    group=t,
                    count=2 * nl,
                )
            )
        return OpGraph(phase=shape.phase, ops=tuple(ops), shape=shape)

    def module(self, device: str = "meta") -> Any:
        raise NotImplementedError

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        raise NotImplementedError


def llama7b() -> FakeLlama:
    return FakeLlama("fake-llama-7b", 4096, 11008, 32, 32, 32, 32000, 6.74e9)


def llama70b() -> FakeLlama:
    return FakeLlama("fake-llama-70b", 8192, 28672, 80, 64, 8, 32000, 68.98e9)


def system(device: str | DeviceSpec, tensor: int = 1, **options: Any) -> System:
    dev = resolve(device) if isinstance(device, str) else device
    par = Parallelism(tensor=tensor)
    return System(
        name="sut",
        backend="gpu",
        device=dev,
        count=tensor,
        parallelism=par,
        topology=topology_from_device(dev),
        options=dict(options),
    )


# -- catalog --------------------------------------------------------------------------


def test_catalog_figures_cite_sources() -> None:
    """Every GPU catalog figure cites a source id that exists in the shared reference figures
    or measured kernel rates, or states an assumption."""
    ids: set[str] | None = None
    if FIGURES.exists() and KERNELS.exists():
        raw = yaml.safe_load(FIGURES.read_text(encoding="utf-8"))
        ids = {e["id"] for e in raw["entries"]}
        ids |= {e["id"] for e in yaml.safe_load(KERNELS.read_text(encoding="utf-8"))}
    specs = catalog()
    assert {"h100-sxm", "h100-pcie", "a100-sxm-80gb", "l4", "l40s", "b200", "mi300x"} <= set(specs)
    assert {"h200-sxm", "gb200", "b300", "gb300", "mi325x", "mi355x", "gaudi3"} <= set(specs)
    for spec in specs.values():
        figs = spec.figures()
        assert "power.max_w" in figs and "extra.sm_count" in figs
        for key, fig in figs.items():
            assert fig.source or fig.assumption.strip(), (spec.name, key)
            if fig.source and ids is not None:
                assert fig.source in ids, f"{spec.name}.{key} cites unknown id {fig.source!r}"


def test_catalog_values_and_aliases() -> None:
    """Aliases resolve to catalog entries with their published figures (H100 SXM: 989.4 TFLOP/s
    bf16, 3.35 TB/s); a misspelt name raises an error naming the close match."""
    h = resolve("h100")
    assert h.name == "h100-sxm" and resolve("a100").name == "a100-sxm-80gb"
    assert h.flops("bf16") == pytest.approx(989.4e12)
    assert h.memory_bw.value == pytest.approx(3.35e12)
    assert h.price.on_demand is None  # prices live in engine/economics/prices.yaml
    assert resolve("l4").memory_bytes.value == pytest.approx(23_570_219_008)  # the runtime's total
    with pytest.raises(XpusimError, match="h100"):
        resolve("h100-sxn")


# -- the per-op cost model -----------------------------------------------------------


def gemm_s(cm: GpuCostModel, m: int, n: int, k: int) -> float:
    nbytes = 2.0 * (m * k + k * n + m * n)
    return cm.gemm(m, n, k, 1, "bf16", nbytes)[0].seconds


@pytest.mark.parametrize("dev", ["h100-sxm", "a100", "l4", "mi300x"])
def test_gemm_monotone_in_m_n_k(dev: str) -> None:
    """GEMM time never decreases as m, n or k grows, on every GPU."""
    cm = GpuCostModel(resolve(dev))
    sizes = [1, 7, 16, 100, 128, 129, 500, 1000, 1024, 1025, 3000, 4096, 5000, 8192, 16385]
    for fixed in (64, 1024, 4096):
        for axis in range(3):
            times = []
            for s in sizes:
                dims = [fixed, fixed, fixed]
                dims[axis] = s
                times.append(gemm_s(cm, *dims))
            assert all(b >= a * (1 - 1e-12) for a, b in itertools.pairwise(times)), (
                dev,
                fixed,
                axis,
                times,
            )


def test_wave_quantization_visible() -> None:
    """A GEMM with one more tile than there are SMs takes a second wave and twice the compute
    time; m = 129 pads to the same tiles, and time, as m = 256."""
    dev = resolve("h100")
    sms = int(dev.extra["sm_count"].value)
    eff = GpuEfficiency(tiles=((128, 128, 1.0),), split_k=(1,), kernel_overhead_s=0.0)
    cm = GpuCostModel(dev, eff)
    k = 8192
    full = cm.gemm(128 * sms, 128, k, 1, "bf16", 0.0)
    over = cm.gemm(128 * (sms + 1), 128, k, 1, "bf16", 0.0)
    assert full[1]["waves"] == 1 and over[1]["waves"] == 2
    assert over[0].compute_s / full[0].compute_s == pytest.approx(2.0)
    # tile quantization: m = 129 pads to 256 rows, the same as m = 256
    assert cm.gemm(129, 128, k, 1, "bf16", 0.0)[0].compute_s == pytest.approx(
        cm.gemm(256, 128, k, 1, "bf16", 0.0)[0].compute_s
    )


def test_decode_memory_bound_prefill_compute_bound() -> None:
    """A decode GEMM (m = 1) is memory-bound at weight bytes / (bandwidth x memory fraction); a
    4096-token prefill GEMM is compute-bound at 50-75% of peak."""
    cm = GpuCostModel(resolve("h100"))
    h = 4096
    decode = cm(
        Op(
            "qkv",
            OpKind.MATMUL,
            flops=2 * 1 * 3 * h * h,
            bytes_read=2 * (h + 3 * h * h),
            bytes_written=2 * 3 * h,
            dims=(1, 3 * h, h),
        )
    )
    assert decode.bound == "memory"
    # ~ weight bytes / (bandwidth x memory_fraction)
    assert decode.memory_s == pytest.approx(2 * 3 * h * h / (3.35e12 * 0.8), rel=0.01)
    m = 4096
    prefill = cm(
        Op(
            "qkv",
            OpKind.MATMUL,
            flops=2 * m * 3 * h * h,
            bytes_read=2 * (m * h + 3 * h * h),
            bytes_written=2 * m * 3 * h,
            dims=(m, 3 * h, h),
        )
    )
    assert prefill.bound == "compute"
    achieved = 2 * m * 3 * h * h / prefill.seconds
    assert 0.5 * 989.4e12 < achieved < 0.75 * 989.4e12


def test_attention_is_flash_style() -> None:
    """Attention is priced as a fused flash kernel that moves Q, K, V and O once (not the score
    matrix), so a 4096-token attention is compute-bound."""
    cm = GpuCostModel(resolve("h100"))
    q = kv = 4096
    d, heads = 128, 32
    unfused = 2 * heads * (3 * q * d + q * kv) + 2 * heads * (q * d + q * kv)
    op = Op(
        "attn",
        OpKind.ATTENTION,
        flops=4 * q * kv * d * heads,
        bytes_read=unfused,
        dims=(q, kv, d),
        batch=heads,
    )
    t = cm(op)
    assert t.memory_s == pytest.approx(heads * 4 * q * d * 2 / cm.bw)  # Q, K, V, O once
    assert t.bound == "compute"


def test_vector_ops_memory_bound_and_kernel_overhead() -> None:
    """A norm is memory-bound and pays one kernel-launch overhead."""
    cm = GpuCostModel(resolve("h100"))
    t = cm(Op("norm", OpKind.NORM, flops=5e6, bytes_read=4e6, bytes_written=2e6, dims=(1_000_000,)))
    assert t.bound == "memory"
    assert t.overhead_s == GpuEfficiency().kernel_overhead_s


# -- collectives, backend -------------------------------------------------------------


def test_tp_all_reduce_grows_with_bytes_and_group() -> None:
    """A TP all-reduce grows with bytes and group size, and is slower over the L40S's PCIe than
    over the H100's NVLink."""
    b = GpuBackend()
    s8 = system("h100", tensor=8)
    by_bytes = [b.collective_seconds(Collective.ALL_REDUCE, n, 8, s8) for n in (1e4, 1e6, 1e8)]
    assert by_bytes == sorted(by_bytes)
    by_group = [b.collective_seconds(Collective.ALL_REDUCE, 1e8, g, s8) for g in (2, 4, 8)]
    assert by_group == sorted(by_group)
    # PCIe parts are slower than NVLink parts for the same collective
    assert b.collective_seconds(Collective.ALL_REDUCE, 1e8, 4, system("l40s", 4)) > by_group[1]


def test_supports_and_registration() -> None:
    """The GPU backend accepts a decoder and refuses an unknown model kind by name; the plugin
    registers exactly one backend, 'gpu'."""
    b = GpuBackend()
    assert b.supports(llama7b(), "serving").ok

    odd = llama7b()
    odd.info = dataclasses.replace(odd.info, kind="graph-net")
    r = b.supports(odd, "serving")
    assert not r.ok and "graph-net" in r.reason

    import xpusim.plugins.gpu as plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="gpu")
    got: list[Any] = []
    pm.hook.register_backends(register=got.append)
    assert [x.name for x in got] == ["gpu"]


def test_compiled_decode_step_near_weights_over_bandwidth() -> None:
    """A 7B decode step on one H100 takes between weights / effective bandwidth and 1.25x that,
    is memory-bound, and lists its efficiency assumptions."""
    model = llama7b()
    c = GpuBackend().compile(model, system("h100"))
    cost = c.cost(Shape(Phase.DECODE, batch=1, tokens=1, context=128))
    floor = model.info.param_bytes / (3.35e12 * GpuEfficiency().memory_fraction)
    assert floor <= cost.seconds < 1.3 * floor
    assert cost.state == "memory"
    assert cost.joules > 0
    assert "gpu.efficiency.tensor_fraction" in c.figures_used()


# -- fit ------------------------------------------------------------------------------


def test_llama70b_does_not_fit_one_l4() -> None:
    """A 70B model (138 GB of weights) does not fit a 24 GB L4: the reason states the GB short and
    the suggestion names 8xL4 with tensor parallelism and larger GPUs."""
    b = GpuBackend()
    f = b.compile(llama70b(), system("l4")).fit(kv_tokens=0)
    assert not f.fits
    assert f.breakdown["weights"] == pytest.approx(137.96e9)
    short = (f.need_bytes - f.have_bytes) / 1e9
    assert 110 < short < 125
    assert f"short by {short:.1f} GB" in f.reason
    assert "8×l4 with tensor parallel" in f.suggestion
    assert "h200-sxm (150 GB)" in f.suggestion and "b200" in f.suggestion


def test_llama70b_on_two_h100_with_tp2() -> None:
    """A 70B model with TP=2 fits two H100s at 69-72 GB per GPU, leaving KV-cache room for fewer
    than 40,000 tokens (90% of the runtime's 85.0 GB, less the need, at 160 kB a token)."""
    c = GpuBackend().compile(llama70b(), system("h100", tensor=2))
    f = c.fit(kv_tokens=0)
    # 69 GB of weights per GPU + runtime reserve: it fits, with little room for KV cache
    assert f.fits
    assert 69e9 < f.need_bytes < 72e9
    cap = c.kv_capacity_tokens(0.9)
    assert 30_000 < cap < 40_000
    assert not c.fit(kv_tokens=100_000).fits


def test_nccl_nvls_buffers_are_held_on_nvswitch_groups_of_three_or_more() -> None:
    """NCCL binds NVLS buffers on each GPU of an H100 or H200 group of more than two (288
    MiB per GPU of the group: 2.4 GB at TP 8, as NCCL's own log reads), so an inference fit
    holds them and the KV cache shrinks by as much; two H100s, an A100 group (no NVLS) and
    ``nccl_nvls: false`` hold none, and without NVLS a large 8-GPU all-reduce is priced
    on rings."""
    b = GpuBackend()
    tp8 = b.compile(llama70b(), system("h100", tensor=8))
    assert tp8.fit(kv_tokens=0).breakdown["collective_buffers"] == pytest.approx(8 * 301989888)
    assert "vllm-project/vllm#9699" in tp8.figures_used()["memory.collective_buffers"].assumption
    assert b.compile(llama70b(), system("h100", tensor=4)).collective_buffer_bytes == (
        pytest.approx(4 * 301989888)
    )
    for sut in (system("h100", tensor=2), system("a100", tensor=8)):
        assert "collective_buffers" not in b.compile(llama70b(), sut).fit().breakdown
    off = b.compile(llama70b(), system("h100", tensor=8, nccl_nvls=False))
    assert off.collective_buffer_bytes == 0.0
    assert off.kv_capacity_tokens(0.9) > tp8.kv_capacity_tokens(0.9)
    big = 256 * 2**20
    assert off.collective_seconds(Collective.ALL_REDUCE, big, 8) > tp8.collective_seconds(
        Collective.ALL_REDUCE, big, 8
    )
    assert tp8.fit(kv_tokens=0, training=True).breakdown.get("collective_buffers") is None
    trt = load_profile("tensorrt-llm")
    on, off_stack = StackCompiled(tp8, trt), StackCompiled(off, trt)
    assert on.collective_buffer_bytes == tp8.collective_buffer_bytes
    assert off_stack.kv_capacity_tokens(0.9) > on.kv_capacity_tokens(0.9)


# -- calibration ----------------------------------------------------------------------


def test_calibration_round_trip_and_apply(tmp_path: Path) -> None:
    """A calibration saves and loads unchanged, overrides only the parameters it names, and is
    refused on another device or with unknown or missing fields."""
    cal = calibration.Calibration(
        "h100-sxm",
        "1x H100 SXM (test)",
        "2026-11-22",
        "xpusim calibrate gpu",
        {"tensor_fraction": 0.6, "kernel_overhead_s": 5e-6},
    )
    p = calibration.save(cal, tmp_path / "h100.json")
    back = calibration.load(p)
    assert back.params == cal.params and back.device == "h100-sxm"
    eff = back.apply()
    assert eff.tensor_fraction == 0.6 and eff.memory_fraction == GpuEfficiency().memory_fraction
    b = GpuBackend()
    base = b.compile(llama7b(), system("h100")).cost(Shape(Phase.PREFILL, batch=1, tokens=2048))
    slow = b.compile(llama7b(), system("h100", calibration=str(p))).cost(
        Shape(Phase.PREFILL, batch=1, tokens=2048)
    )
    assert slow.seconds > base.seconds
    with pytest.raises(XpusimError, match="measured on"):
        b.compile(llama7b(), system("a100", calibration=str(p)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cal.to_json(), "params": {"warp_speed": 9}}))
    with pytest.raises(XpusimError, match="warp_speed"):
        calibration.load(bad)
    with pytest.raises(XpusimError, match="lacks"):
        bad.write_text(json.dumps({"device": "h100-sxm"}))
        calibration.load(bad)


# -- the real transformer family, once it exists --------------------------------------

HAS_TRANSFORMER = importlib.util.find_spec("xpusim.plugins.models.transformer") is not None


def _llama(preset: str, dtype: str, **fields: Any) -> ModelGraph:
    from xpusim.plugins.models.transformer import FAMILIES

    fam = {f.name: f for f in FAMILIES}["llama"]
    return fam.configure({"preset": preset, "dtype": dtype, **fields})


@pytest.mark.skipif(not HAS_TRANSFORMER, reason="xpusim.plugins.models.transformer not available")
def test_real_llama2_7b_decode_is_weights_over_bandwidth() -> None:
    """Llama-2-7B (13.5 GB in bf16) decodes on an H100 in between weights / effective bandwidth
    and 1.3x that, memory-bound (the rest: a few microseconds a kernel, and each layer's
    decode-attention launch latency)."""
    model = _llama("llama-2-7b", "bf16")
    assert model.info.param_bytes == pytest.approx(13.48e9, rel=0.01)
    c = GpuBackend().compile(model, system("h100"))
    cost = c.cost(Shape(Phase.DECODE, batch=1, tokens=1, context=128))
    floor = model.info.param_bytes / (3.35e12 * GpuEfficiency().memory_fraction)
    assert floor <= cost.seconds < 1.3 * floor
    assert cost.state == "memory"


def offline_tokens_per_s(c: Any, batch: int, prompt: int, output: int) -> float:
    """Static-batch offline throughput: one prefill of the prompts (which yields the first
    token) and ``output - 1`` decode steps over a growing context, as gptSessionBenchmark."""
    t = c.cost(Shape(Phase.PREFILL, batch=batch, tokens=prompt)).seconds
    for i in range(output - 1):
        t += c.cost(Shape(Phase.DECODE, batch=batch, tokens=1, context=prompt + i)).seconds
    return batch * output / t


@pytest.mark.skipif(not HAS_TRANSFORMER, reason="xpusim.plugins.models.transformer not available")
def test_real_llama2_7b_offline_vs_trtllm() -> None:
    """Against ``trtllm_h100_7b_bs768_128_128`` (19,694 output tok/s/GPU, FP8, TP=1).
    A sanity check, not a fit: no parameter is tuned to this row. With every tensor priced
    at 1 byte (weights, activations and, as the published build's ``--fp8_kv_cache``, the
    KV cache in fp8) the model predicts ~23,300 tok/s, +18 % over the measurement; the
    whole-bf16 variant ~11,800 tok/s brackets it below."""
    measured = 19694.0
    c8 = GpuBackend().compile(_llama("llama-2-7b", "fp8", kv_dtype="fp8"), system("h100"))
    fp8 = offline_tokens_per_s(c8, 768, 128, 128)
    err = fp8 / measured - 1
    assert abs(err) < 0.35, f"model {fp8:.0f} tok/s vs TensorRT-LLM {measured:.0f} ({err:+.0%})"
    c16 = GpuBackend().compile(_llama("llama-2-7b", "bf16"), system("h100"))
    bf16 = offline_tokens_per_s(c16, 768, 128, 128)
    assert bf16 < measured < fp8 * 1.35


# -- decode attention kernels and the KV-cache dtype ------------------------------------


def _decode_attention(
    q_heads: int, kv_heads: int, seqs: int, keys: int, kv_bytes: float, d: int = 128
) -> Op:
    """One decode attention op as the transformer family writes it (one query per seq)."""
    return Op(
        "attn.core",
        OpKind.ATTENTION,
        flops=4.0 * d * keys * q_heads * seqs,
        bytes_read=(seqs * q_heads * d * 2 + 2 * seqs * keys * kv_heads * d * kv_bytes),
        bytes_written=seqs * q_heads * d * 2,
        dims=(1, keys, d),
        batch=q_heads * seqs,
        attrs=(
            ("causal", 1.0),
            ("kv_heads", float(kv_heads)),
            ("q_heads", float(q_heads)),
            ("kv_bytes", kv_bytes),
        ),
    )


def test_per_head_decode_attention_streams_kv_once_per_query_head() -> None:
    """The masked-MHA kernel (``per-head``) reads each K/V head once per query head of its
    group, so a GQA decode (group 8) moves ~8x the KV bytes of the grouped kernel; for MHA
    (group 1) the two kernels move the same bytes."""
    dev = resolve("h100")
    grouped = GpuCostModel(dev, decode_attention="grouped")
    per_head = GpuCostModel(dev, decode_attention="per-head")
    gqa = _decode_attention(q_heads=32, kv_heads=4, seqs=64, keys=3072, kv_bytes=1.0)
    q_bytes = 64 * 32 * 128 * 2 * 2  # Q read and O written, bf16
    kv_grouped = 2 * 64 * 3072 * 4 * 128 * 1.0
    bw = dev.memory_bw.value * GpuEfficiency().memory_fraction
    assert grouped(gqa).memory_s == pytest.approx((q_bytes + kv_grouped) / bw)
    assert per_head(gqa).memory_s == pytest.approx((q_bytes + 8 * kv_grouped) / bw)
    assert per_head(gqa).bound == "memory"
    mha = _decode_attention(q_heads=32, kv_heads=32, seqs=64, keys=3072, kv_bytes=1.0)
    assert per_head(mha).memory_s == pytest.approx(grouped(mha).memory_s)


def test_grouped_decode_packs_the_query_group_as_mma_rows() -> None:
    """A grouped decode kernel pads ``q x group`` rows to 16, not one row: for group 8 the
    tensor-core time is 2x the exact FLOPs' time instead of 16x."""
    dev = resolve("a100")
    cm = GpuCostModel(dev)
    eff = GpuEfficiency()
    gqa = _decode_attention(q_heads=16, kv_heads=2, seqs=1280, keys=192, kv_bytes=2.0)
    exact = gqa.flops / (dev.flops("bf16") * eff.attention_fraction)
    assert cm(gqa).compute_s == pytest.approx(2 * exact, rel=0.02)
    mha = _decode_attention(q_heads=16, kv_heads=16, seqs=1280, keys=192, kv_bytes=2.0)
    assert cm(mha).compute_s == pytest.approx(16 * exact, rel=0.02)


def test_decode_attention_option_is_checked() -> None:
    """``options.decode_attention`` selects the kernel; an unknown name is a clear error."""
    assert GpuBackend.decode_attention(system("h100")) == "grouped"
    assert GpuBackend.decode_attention(system("h100", decode_attention="per-head")) == "per-head"
    with pytest.raises(XpusimError, match="decode_attention"):
        GpuBackend().compile(
            FakeLlama("m", 512, 2048, 2, 8, 8, 1000, 1e7), system("h100", decode_attention="xqa")
        )


@pytest.mark.skipif(not HAS_TRANSFORMER, reason="xpusim.plugins.models.transformer not available")
def test_kv_dtype_sets_the_decode_attention_bytes() -> None:
    """fp8 weights keep a 16-bit KV cache by default; ``kv_dtype: fp8`` halves the KV bytes
    the decode attention reads (and the cache's memory per token)."""
    shape = Shape(Phase.DECODE, batch=64, tokens=1, context=2048)
    par = Parallelism(tensor=2)
    m16 = _llama("llama-2-70b", "fp8")
    m8 = _llama("llama-2-70b", "fp8", kv_dtype="fp8")
    assert m16.info.kv_bytes_per_token == 2 * m8.info.kv_bytes_per_token
    a16 = next(o for o in m16.build(shape, par).ops if o.name == "attn.core")
    a8 = next(o for o in m8.build(shape, par).ops if o.name == "attn.core")
    q_part = 64 * 32 * 128 * 1.0  # queries in the model's fp8
    assert a16.bytes_read - q_part == pytest.approx(2 * (a8.bytes_read - q_part))
    assert a8.attr("kv_bytes") == 1.0 and a16.attr("kv_bytes") == 2.0


@pytest.mark.skipif(not HAS_TRANSFORMER, reason="xpusim.plugins.models.transformer not available")
def test_real_llama2_70b_long_decode_vs_trtllm_needs_per_head_kernel() -> None:
    """Against ``trtllm_h100_70b_bs64_2048_2048`` (547 output tok/s/GPU, FP8 with FP8 KV,
    TP=2, TensorRT-LLM v0.6.1 whose decode runs the masked MHA kernel). With the grouped
    kernel the model over-predicts by more than 1.8x (and runs over twice the per-head
    kernel's rate); with the per-head kernel of that release it lands within 25 %. A check
    of the mechanism, not a fit: nothing is tuned to the row."""
    measured = 547.0
    model = _llama("llama-2-70b", "fp8", kv_dtype="fp8")
    grouped = GpuBackend().compile(model, system("h100", tensor=2))
    per_head = GpuBackend().compile(model, system("h100", tensor=2, decode_attention="per-head"))
    g = offline_tokens_per_s(grouped, 64, 2048, 2048) / 2
    p = offline_tokens_per_s(per_head, 64, 2048, 2048) / 2
    assert g > 1.8 * measured and g > 2.0 * p
    assert abs(p / measured - 1) < 0.25, f"model {p:.0f} tok/s/GPU vs TensorRT-LLM {measured:.0f}"


def test_strided_elementwise_runs_at_its_fraction_of_the_streaming_rate() -> None:
    """An elementwise op marked STRIDED streams at ``strided_elementwise_fraction`` of the
    rate a contiguous one gets (the same at the default 1.0); other kinds ignore the mark,
    and a fraction outside (0, 1] is refused."""
    dev = resolve("h100")
    plain = Op("mul", OpKind.ELEMENTWISE, flops=1e6, bytes_read=2e8, bytes_written=1e8)
    marked = dataclasses.replace(plain, attrs=((STRIDED, 1.0),))
    default = GpuCostModel(dev)
    assert default(marked).memory_s == pytest.approx(default(plain).memory_s)
    half = GpuCostModel(dev, GpuEfficiency(strided_elementwise_fraction=0.5))
    assert half(marked).memory_s == pytest.approx(2 * half(plain).memory_s)
    norm = dataclasses.replace(marked, kind=OpKind.NORM)
    assert half(norm).memory_s == pytest.approx(half(plain).memory_s)
    with pytest.raises(XpusimError, match="strided_elementwise_fraction"):
        GpuEfficiency(strided_elementwise_fraction=0.0)


def test_tensorrt_llm_holds_its_all_reduce_workspace_beside_its_slots() -> None:
    """TensorRT-LLM's custom all-reduce keeps a ping and a pong buffer of its workspace
    size times the group on every GPU: 128 MB at TP 8 (8 MB), 64 MB at TP 2 (16 MB),
    none on one GPU or once a scenario moves the all-reduces to the library; the engine's
    runtime memory counts it, and its cache is that much smaller."""
    from xpusim.plugins.workloads.serving.engine_memory import EngineLimits
    from xpusim.plugins.workloads.serving.stacks import StackOverride, resolve_stack

    b = GpuBackend()
    lim = EngineLimits(256, 8192, 4096)
    trt = load_profile("tensorrt-llm")
    tp8 = StackCompiled(b.compile(llama70b(), system("h100", tensor=8)), trt, limits=lim)
    assert tp8.engine_memory_parts()["allreduce_workspace"] == pytest.approx(2 * 8e6 * 8)
    tp2 = StackCompiled(b.compile(llama70b(), system("h200", tensor=2)), trt, limits=lim)
    assert tp2.engine_memory_parts()["allreduce_workspace"] == pytest.approx(2 * 16e6 * 2)
    one = StackCompiled(
        b.compile(FakeLlama("s", 4096, 14336, 32, 32, 8, 32000, 8e9), system("h100")),
        trt,
        limits=lim,
    )
    assert "allreduce_workspace" not in one.engine_memory_parts()
    nccl = resolve_stack(StackOverride(name="tensorrt-llm", allreduce="library"))
    plain = StackCompiled(tp8.inner, nccl, limits=lim)
    assert "allreduce_workspace" not in plain.engine_memory_parts()
    assert tp8.kv_capacity_tokens(0.9) < plain.kv_capacity_tokens(0.9)


def test_a_stack_that_states_its_decode_kernel_sets_it() -> None:
    """TensorRT-LLM 0.6 ran the masked MHA kernel: under its profile a grouped-query 70B
    decode reads each K/V head once per query head and costs more than the same profile
    told the grouped kernel; a system that sets the option itself keeps its own; the
    figures say which applied. A profile that states no kernel leaves the backend's."""
    from xpusim.plugins.workloads.serving.stacks import StackOverride, resolve_stack

    b = GpuBackend()
    tp4 = b.compile(llama70b(), system("h100", tensor=4))
    shape = Shape(Phase.DECODE, batch=64, tokens=1, context=2048)
    old = StackCompiled(tp4, load_profile("tensorrt-llm-0.6"))
    told = StackCompiled(
        tp4, resolve_stack(StackOverride(name="tensorrt-llm-0.6", decode_attention="grouped"))
    )
    assert old.inner.cost(shape).seconds > 1.5 * told.inner.cost(shape).seconds
    fig = old.figures_used()["stack.decode_attention_grouped"]
    assert fig.value == 0.0 and "gpt_attention.md" in (fig.assumption or "")
    assert "decode_attention 'per-head' (the engine's)" in old.settings_how
    own = b.compile(llama70b(), system("h100", tensor=4, decode_attention="grouped"))
    kept = StackCompiled(own, load_profile("tensorrt-llm-0.6"))
    assert kept.inner.cost(shape).seconds == pytest.approx(told.inner.cost(shape).seconds)
    assert "decode_attention as the system's options set it" in kept.settings_how
    plain = StackCompiled(tp4, load_profile("tensorrt-llm"))
    assert "decode_attention" not in plain.settings_how
    assert "stack.decode_attention_grouped" not in plain.figures_used()


def test_a_stack_that_turns_nvls_off_drops_its_buffers_and_pricing() -> None:
    """SGLang leaves NCCL's NVLS off: under ``sglang-0.3`` eight H100s hold no NVLS buffers
    and get more cache than the same stack told to keep NVLS; a speculative wrapper's draft
    is switched with its target; a system that sets ``nccl_nvls`` itself keeps its setting;
    the run's figures say which applied."""
    from xpusim.plugins.workloads.serving.speculative import SpeculativeCompiled
    from xpusim.plugins.workloads.serving.stacks import StackOverride, resolve_stack

    b = GpuBackend()
    tp8 = b.compile(llama70b(), system("h100", tensor=8))
    off = StackCompiled(tp8, load_profile("sglang-0.3"))
    kept = StackCompiled(tp8, resolve_stack(StackOverride(name="sglang-0.3", nccl_nvls=True)))
    assert off.collective_buffer_bytes == 0.0 < kept.collective_buffer_bytes
    assert off.kv_capacity_tokens(0.88) > kept.kv_capacity_tokens(0.88)
    fig = off.figures_used()["stack.nccl_nvls"]
    assert fig.value == 0.0 and "enable_nccl_nvls" in (fig.assumption or "")
    spec = StackCompiled(SpeculativeCompiled(tp8, tp8, k=2), load_profile("sglang-0.3"))
    assert isinstance(spec.inner, SpeculativeCompiled)
    assert spec.inner.draft.collective_buffer_bytes == 0.0
    assert (
        tp8.with_engine_settings({"nccl_nvls": False})[0]
        is tp8.with_engine_settings({"nccl_nvls": False})[0]
    )  # compiled once
    own = b.compile(llama70b(), system("h100", tensor=8, nccl_nvls=True))
    assert StackCompiled(own, load_profile("sglang-0.3")).collective_buffer_bytes > 0
