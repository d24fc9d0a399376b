"""Kernel efficiency fitted to public tables: causal block work, 8-bit GEMM fraction,
the shipped per-GPU fits and their inheritance."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from tests.scripts import benchmark_module
from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency, causal_block_factor
from xpusim.plugins.gpu.kernel_fits import FITS_PATH, fitted_params
from xpusim.plugins.gpu.points import gemm_op


def shipped(device: str) -> GpuEfficiency:
    """``device``'s efficiency as the shipped kernel fits set it."""
    params: dict[str, Any] = {k: v for k, (v, _how) in fitted_params(device).items()}
    return replace(GpuEfficiency(), **params)


def test_causal_blocks_cost_more_on_short_sequences() -> None:
    """Blocks straddling the diagonal are computed whole: 4 blocks of 128 at 512 tokens do
    10 of 16 blocks for 8.5 of 16 blocks' pairs; the extra work vanishes with length and
    never goes below the attended pairs."""
    assert causal_block_factor(512, 512, 128) == pytest.approx(
        10 * 128 * 128 / (512 * 512 - 512 * 511 / 2)
    )
    lengths = (512, 1024, 4096, 16384)
    factors = [causal_block_factor(s, s, 128) for s in lengths]
    assert factors == sorted(factors, reverse=True)
    assert factors[-1] == pytest.approx(1.0, abs=0.01)
    assert causal_block_factor(1, 4000, 128) == 1.0


def test_low_precision_gemms_use_their_own_fraction() -> None:
    """An fp8 GEMM runs at ``lowp_tensor_fraction`` when it is set, a bf16 one at
    ``tensor_fraction``; unset, both use ``tensor_fraction``. (The epilogue's store does
    not scale with the fraction, so it is overlapped here to compare main loops.)"""
    dev = catalog()["h100-sxm"]
    big = (8192, 8192, 8192)
    eff = replace(GpuEfficiency(), tensor_fraction=0.8, kernel_overhead_s=0.0, epilogue_exposed=0.0)
    same = GpuCostModel(dev, eff)(gemm_op(*big, "fp8")).seconds
    slower = GpuCostModel(dev, replace(eff, lowp_tensor_fraction=0.4))(gemm_op(*big, "fp8"))
    assert slower.seconds == pytest.approx(2 * same, rel=1e-9)
    bf16 = GpuCostModel(dev, replace(eff, lowp_tensor_fraction=0.4))(gemm_op(*big, "bf16"))
    assert bf16.seconds == pytest.approx(GpuCostModel(dev, eff)(gemm_op(*big, "bf16")).seconds)


def test_every_catalog_gpu_has_fitted_or_inherited_fractions() -> None:
    """Each GPU of the catalog gets every fitted fraction, and says for each whether it was
    fitted to a named table or inherited from another GPU's fit."""
    for name in ("h100-sxm", "a100-sxm-80gb", "mi300x", "l40s", "b200", "h200-sxm"):
        params = fitted_params(name)
        assert {"tensor_fraction", "memory_fraction", "attention_fraction"} <= set(params)
        for value, how in params.values():
            assert value >= 0
            assert any(
                s in how
                for s in (
                    "fitted to",
                    "inherited from",
                    "no 8-bit table",
                    "property of the architecture",
                )
            )
    assert "fitted to mamf_bf16" in fitted_params("mi300x")["tensor_fraction"][1]
    assert "inherited from a100" in fitted_params("l40s")["tensor_fraction"][1]
    assert fitted_params("no-such-gpu") == {}


def test_epilogue_store_adds_to_the_compute_side_where_exposed() -> None:
    """A GEMM whose C does not fit under its main loop (register accumulators) spends its
    C bytes over the achieved bandwidth after the main loop; with the store overlapped
    (Blackwell's tensor memory) only the main loop counts. Memory time is the same."""
    dev = catalog()["h100-sxm"]
    m, n, k = 4096, 32768, 512
    op = gemm_op(m, n, k, "bf16")
    base = replace(GpuEfficiency(), kernel_overhead_s=0.0, tiles=((128, 256, 1.0),))
    exposed = GpuCostModel(dev, base)
    hidden = GpuCostModel(dev, replace(base, epilogue_exposed=0.0))
    store = op.bytes_written / exposed.bw
    assert exposed(op).compute_s - hidden(op).compute_s == pytest.approx(store, rel=1e-9)
    assert exposed(op).memory_s == pytest.approx(hidden(op).memory_s)


def test_k_loop_fill_costs_most_at_short_k() -> None:
    """The pipeline fill adds ``k_fill`` K-steps of main-loop time per tile, so it slows a
    short-K GEMM by a larger share than a long-K one."""
    dev = catalog()["a100-sxm-80gb"]
    eff = replace(GpuEfficiency(), kernel_overhead_s=0.0, epilogue_exposed=0.0)

    def slowdown(k: int) -> float:
        op = gemm_op(4096, 4096, k, "bf16")
        fill = GpuCostModel(dev, replace(eff, k_fill=256.0))(op).compute_s
        return fill / GpuCostModel(dev, eff)(op).compute_s

    assert slowdown(512) == pytest.approx(1.5, rel=1e-6)
    assert slowdown(8192) == pytest.approx(1 + 256 / 8192, rel=1e-6)


@pytest.mark.parametrize(
    ("device", "dtype", "weight_bytes"),
    [("a100-sxm-80gb", "bf16", 0.52), ("b200", "fp4", 0.5625), ("h100-sxm", "fp8", 1.0)],
)
def test_decode_gemm_streams_weights_at_the_format_bytes(
    device: str, dtype: str, weight_bytes: float
) -> None:
    """A batch-1 decode GEMM (4-bit weights dequantized into a 16-bit GEMM on A100, NVFP4
    on B200, FP8 on H100) pads its one token to a narrow (swap-AB) tile, not to 64 rows,
    and is bound by its weight bytes: with the shipped fits."""
    dev = catalog()[device]
    eff = shipped(device)
    n, k = 22016, 4096
    op = replace(gemm_op(1, n, k, dtype), bytes_read=n * k * weight_bytes + 2 * k)
    cost = GpuCostModel(dev, eff)
    t, _cfg = cost.gemm(1, n, k, 1, dtype, op.bytes, op.bytes_written)
    assert t.bound == "memory"
    assert t.memory_s == pytest.approx(op.bytes / cost.bw, rel=1e-9)


def test_best_shape_asymptote_reproduces_the_measured_best_rate() -> None:
    """Each GPU's fitted tensor fraction makes the model's fastest searched shape run at
    the GPU's measured best-shape rate (``mamf_bf16_matmul_multi_gpu``), and real shapes
    come out lower than that rate."""
    fits = yaml.safe_load(FITS_PATH.read_text(encoding="utf-8"))["devices"]
    for device, best in (("a100-sxm-80gb", 271.2), ("h100-sxm", 794.5), ("mi300x", 668.4)):
        cost = GpuCostModel(catalog()[device], replace(shipped(device), kernel_overhead_s=0.0))
        m, n, k = (
            int(x) for x in fits[device]["tensor_fraction"]["fastest_searched_shape"].split("x")
        )
        op = gemm_op(m, n, k, "bf16")
        assert op.flops / cost(op).seconds / 1e12 == pytest.approx(best, rel=1e-6)
        # a Megatron-like wgrad (2,048 tokens of reduction, a large output) runs below it
        real = gemm_op(9216, 2304, 2048, "bf16")
        assert real.flops / cost(real).seconds / 1e12 < 0.97 * best


def test_every_catalog_gpu_has_a_shape_mechanism() -> None:
    """Every fitted GPU gets the K-loop fill and the epilogue share; Blackwell parts
    overlap the epilogue, register-accumulator parts do not, each said as a property of
    the architecture."""
    for name in ("h100-sxm", "a100-sxm-80gb", "mi300x", "l40s", "b200", "gb300"):
        params = fitted_params(name)
        assert {"k_fill", "epilogue_exposed"} <= set(params)
        assert "property of the architecture" in params["epilogue_exposed"][1]
    assert fitted_params("b300")["epilogue_exposed"][0] == 0.0
    assert fitted_params("a100-sxm-80gb")["epilogue_exposed"][0] == 1.0


def test_weight_only_4bit_decode_is_priced_at_its_weight_bytes() -> None:
    """A batch-1 decode step of Llama-2-7B with AWQ/GPTQ 4-bit weights on one A100 runs
    more than twice as fast as in bf16 (the weights are a quarter of the bytes; the head,
    attention and per-kernel costs are not): its GEMMs stream their 4-bit weights on narrow
    tiles instead of computing 64 padded rows, which left it at 1.34x."""
    from xpusim.engine.collectives import topology_from_device
    from xpusim.engine.graph import Phase, Shape
    from xpusim.engine.precision import QuantizedModel, parse_precision
    from xpusim.engine.system import Parallelism, System
    from xpusim.plugins.gpu.backend import GpuBackend
    from xpusim.plugins.models.transformer import FAMILIES

    dev = catalog()["a100-sxm-80gb"]
    system = System("sut", "gpu", dev, 1, Parallelism(), topology_from_device(dev))
    base = {f.name: f for f in FAMILIES}["llama"].configure({"preset": "llama-2-7b"})
    w4 = QuantizedModel(base, parse_precision("w4a16", "x"), dev)
    shape = Shape(Phase.DECODE, batch=1, tokens=1, context=512)
    t16 = GpuBackend().compile(base, system).cost(shape).seconds
    t4 = GpuBackend().compile(w4, system).cost(shape).seconds
    assert 2.0 < t16 / t4 < 4.0


def test_fused_attention_backward_recomputes_the_scores() -> None:
    """A fused attention backward (``bwd.…``, built with twice the forward's FLOPs) is
    priced as the kernel's five GEMMs: 2.5 times the forward's compute, so a forward plus
    backward at a forward-fitted fraction lands near the H100 forward+backward table, as
    the shipped fit's own check records."""
    from xpusim.engine.graph import Op, OpKind

    model = GpuCostModel(catalog()["h100-sxm"], shipped("h100-sxm"))
    s, d, heads = 8192, 128, 16
    fwd = Op(
        "attn.core",
        OpKind.ATTENTION,
        flops=4.0 * s * s * d * heads,
        bytes_read=3.0 * s * d * 2 * heads,
        bytes_written=s * d * 2.0 * heads,
        dims=(s, s, d),
        batch=2 * heads,
    )
    bwd = replace(fwd, name="bwd.attn.core", flops=2.0 * fwd.flops)
    assert model(bwd).compute_s == pytest.approx(2.5 * model(fwd).compute_s)
    check = yaml.safe_load(FITS_PATH.read_text(encoding="utf-8"))["devices"]["h100-sxm"]
    assert check["attention_fraction"]["backward_check"]["median_abs_error"] < 0.15


def test_torch_sdpa_backward_runs_at_its_measured_rate() -> None:
    """PyTorch SDPA's flash backend (``attention_kernel="torch-sdpa"``) prices a backward
    at the shipped ratio of the flash-attn package's: on H100, Llama 3 8B's call (8,192
    tokens, 32 heads of 128, causal) comes out at the 183 TFLOP/s measured in
    pytorch/pytorch#135431; the forward is the package's, and A100 inherits the ratio."""
    from xpusim.engine.graph import Op, OpKind

    dev = catalog()["h100-sxm"]
    eff = replace(shipped("h100-sxm"), kernel_overhead_s=0.0)
    s, d, heads = 8192, 128, 32
    pairs = s * s - s * (s - 1) / 2
    fwd = Op(
        "attn.core",
        OpKind.ATTENTION,
        flops=4.0 * d * pairs * heads,
        bytes_read=3.0 * s * d * 2 * heads,
        bytes_written=s * d * 2.0 * heads,
        dims=(s, s, d),
        batch=heads,
        attrs=(("causal", 1.0),),
    )
    bwd = replace(fwd, name="bwd.attn.core", flops=2.0 * fwd.flops)
    package = GpuCostModel(dev, eff)
    sdpa = GpuCostModel(dev, eff, attention_kernel="torch-sdpa")
    fa_bwd_flops = 2.5 * 4.0 * s * s * d * heads / 2
    assert fa_bwd_flops / sdpa(bwd).seconds / 1e12 == pytest.approx(183.0, rel=1e-6)
    assert sdpa(fwd).seconds == package(fwd).seconds
    ratio = eff.sdpa_backward_ratio
    assert 0.5 < ratio < 0.75
    assert sdpa(bwd).compute_s == pytest.approx(package(bwd).compute_s / ratio)
    assert fitted_params("a100-sxm-80gb")["sdpa_backward_ratio"][0] == ratio
    with pytest.raises(XpusimError, match="attention_kernel"):
        GpuCostModel(dev, eff, attention_kernel="cudnn")


def test_a_decode_attention_launch_pays_its_fitted_latency() -> None:
    """A paged decode-attention launch (one query per sequence) pays the fitted fixed
    latency once on top of its bytes; a prefill of the same keys and PyTorch's SDPA over a
    contiguous cache do not; the H100 fit comes from the paged decode rows with the
    multi-head ones held out, and H200 inherits it."""
    decode_attention_op = benchmark_module("fit_kernels").decode_attention_op
    h100 = shipped("h100-sxm")
    assert h100.decode_attention_latency_s > 0
    rec = yaml.safe_load(FITS_PATH.read_text(encoding="utf-8"))["devices"]
    fit = rec["h100-sxm"]["decode_attention_latency_s"]
    assert "fa2_paged_decode_h100_a100_ort_pr21414" in fit["fitted_to"]
    assert fit["held_out"]["rows"] >= 4
    assert rec["h200-sxm"]["decode_attention_latency_s"]["inherited_from"] == "h100-sxm"
    row = {"seqs": 64, "seq_len": 256, "q_heads": 64, "kv_heads": 8, "head_dim": 128}
    op = decode_attention_op(row)
    dev = catalog()["h100-sxm"]
    with_latency = GpuCostModel(dev, h100)(op)
    without = GpuCostModel(dev, replace(h100, decode_attention_latency_s=0.0))(op)
    assert with_latency.seconds - without.seconds == pytest.approx(h100.decode_attention_latency_s)
    prefill = replace(op, dims=(256, 256, 128))
    assert GpuCostModel(dev, h100)(prefill).overhead_s == h100.kernel_overhead_s
    sdpa = GpuCostModel(dev, h100, attention_kernel="torch-sdpa")(op)  # contiguous cache
    assert sdpa.overhead_s == h100.kernel_overhead_s
    with pytest.raises(XpusimError):
        GpuEfficiency(decode_attention_latency_s=-1e-6)
