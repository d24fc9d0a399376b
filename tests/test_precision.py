"""Precisions: formats' bytes with their scales, scheme parsing with clear errors, the GEMM
plan on devices with and without the format, and quantized models' weights and graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xpusim.engine.collectives import topology_from_device
from xpusim.engine.errors import UnsupportedError, XpusimError
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.precision import (
    DEQUANT_FLOPS_PER_ELEMENT,
    FORMATS,
    VECTOR_FLOPS_ATTR,
    QuantizedModel,
    model_block,
    parse_precision,
    plan_gemms,
    scheme_in_dtype,
)
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.gpu.catalog import load_catalog, resolve
from xpusim.plugins.tpu.backend import TpuBackend
from xpusim.plugins.tpu.backend import resolve as tpu_resolve


def _llama(**fields: Any) -> ModelGraph:
    from xpusim.plugins.models.transformer import FAMILIES

    fam = {f.name: f for f in FAMILIES}["llama"]
    return fam.configure({"preset": "llama-2-7b", **fields})


def _system(device: str) -> System:
    dev = resolve(device)
    return System("sut", "gpu", dev, 1, Parallelism(), topology_from_device(dev))


def test_format_bytes_include_their_scales() -> None:
    """NVFP4 is 4 bits plus an 8-bit scale per 16 (4.5 bits), MXFP4 an 8-bit scale per 32
    (4.25), AWQ/GPTQ INT4 an fp16 scale and 4-bit zero per 128 (4.156); per-tensor FP8 is
    one byte and block-scaled FP8 adds an fp32 per 128."""
    assert FORMATS["nvfp4"].bytes_per_element == pytest.approx(0.5625)
    assert FORMATS["mxfp4"].bytes_per_element == pytest.approx(0.53125)
    assert FORMATS["int4"].bytes_per_element == pytest.approx((4 + 20 / 128) / 8)
    assert FORMATS["fp8"].bytes_per_element == 1.0
    assert FORMATS["fp8-block"].bytes_per_element == pytest.approx(1 + 4 / 128)
    assert FORMATS["bf16"].bytes_per_element == 2.0


def test_schemes_and_mappings_parse() -> None:
    """Scheme names give weights/activations/KV formats (fp4 is NVFP4, w4a16 is weight-only
    INT4); a mapping starts from its scheme and overrides fields."""
    fp4 = parse_precision("fp4", "x")
    assert (fp4.weights.name, fp4.activations.name, fp4.kv_cache) == ("nvfp4", "nvfp4", None)
    w4 = parse_precision("w4a16", "x")
    assert (w4.weights.name, w4.activations.name) == ("int4", "bf16")
    mixed = parse_precision({"scheme": "fp4", "activations": "fp8", "kv_cache": "fp8"}, "x")
    assert (mixed.weights.name, mixed.activations.name) == ("nvfp4", "fp8")
    assert mixed.kv_cache is not None and mixed.kv_cache.name == "fp8"
    assert parse_precision({"weights": "fp8"}, "x").activations.name == "bf16"
    assert parse_precision("bf16", "x").is_default and not fp4.is_default


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("fp6", "systems.0.precision: unknown precision scheme 'fp6'. Did you mean"),
        ("nvfp5", "Did you mean 'nvfp4'?"),
        ({"weights": "int3"}, "systems.0.precision.weights: unknown weights format 'int3'"),
        ({"kv_cache": "int4"}, "systems.0.precision.kv_cache: unknown kv cache format 'int4'"),
        ({"weigths": "int4"}, "unknown precision key 'weigths'. Did you mean 'weights'?"),
        ({"weights": "int4", "activations": "fp8"}, "use int8 or bf16"),
        ({"weights": "fp8", "activations": "nvfp4"}, "Use activations: fp8"),
        (4, "a precision is a scheme name"),
    ],
)
def test_bad_precisions_name_the_place_and_the_fix(raw: Any, needle: str) -> None:
    """An unknown scheme or format, a misspelt key or a pair no GEMM kernel runs is refused
    naming the field and the nearest valid value."""
    with pytest.raises(XpusimError) as exc:
        parse_precision(raw, "systems.0.precision")
    assert needle in str(exc.value)


def test_gemm_plan_uses_the_format_or_the_next_wider_one() -> None:
    """H100 runs FP8 natively and FP4 at its FP8 rate with the weights dequantized; B200 runs
    FP4 natively; A100 runs AWQ INT4 at bf16 with dequantization, and FP8 at bf16; B300 has
    no INT8 rate, so w8a8 falls back to bf16."""
    p = plan_gemms(parse_precision("fp8", "x"), resolve("h100"))
    assert (p.math, p.dequantize) == ("fp8", False)
    p = plan_gemms(parse_precision("fp4", "x"), resolve("h100"))
    assert (p.math, p.activations.name, p.dequantize) == ("fp8", "fp8", True)
    assert "publishes no fp4 rate" in p.note and "dequantized to fp8" in p.note
    p = plan_gemms(parse_precision("fp4", "x"), resolve("b200"))
    assert (p.math, p.dequantize) == ("fp4", False)
    p = plan_gemms(parse_precision("w4a16", "x"), resolve("a100"))
    assert (p.math, p.activations.name, p.dequantize) == ("bf16", "bf16", True)
    assert plan_gemms(parse_precision("fp8", "x"), resolve("a100")).math == "bf16"
    assert plan_gemms(parse_precision("int8", "x"), resolve("b300")).math == "bf16"
    assert plan_gemms(parse_precision("int8", "x"), resolve("a100")).math == "int8"


def test_fp4_runs_natively_only_in_a_block_format_the_device_reads() -> None:
    """MI355X's FP4 rate reads MXFP4, not NVFP4: MXFP4 runs at its FP4 peak, NVFP4 at its
    FP8 peak with the weights dequantized; Blackwell reads both."""
    p = plan_gemms(parse_precision("mxfp4", "x"), resolve("mi355x"))
    assert (p.math, p.dequantize) == ("fp4", False)
    p = plan_gemms(parse_precision("nvfp4", "x"), resolve("mi355x"))
    assert (p.math, p.activations.name, p.dequantize) == ("fp8", "fp8", True)
    assert "read mxfp4, not nvfp4" in p.note
    for fmt in ("nvfp4", "mxfp4"):
        assert plan_gemms(parse_precision(fmt, "x"), resolve("b300")).math == "fp4"


def test_catalog_fp4_formats_are_checked(tmp_path: Path) -> None:
    """A catalog's ``fp4_formats`` must name 4-bit float formats; a typo is refused with
    the file, the device and the nearest valid name."""
    bad = tmp_path / "catalog.yaml"
    bad.write_text(
        "devices:\n  chip:\n    fp4_formats: [nvfp5]\n"
        "    peak_flops: {fp4: {value: 1 PFLOP/s, source: x}}\n"
        "    memory_bytes: {value: 1 GB, source: x}\n"
        "    memory_bw: {value: 1 TB/s, source: x}\n",
        encoding="utf-8",
    )
    with pytest.raises(XpusimError, match=r"catalog\.yaml:devices\.chip\.fp4_formats.*'nvfp4'"):
        load_catalog(bad)


def test_model_dtype_scheme_and_model_block() -> None:
    """``model.dtype: fp4`` or ``int4`` names a scheme families do not take (the scenario's
    default precision); fp8 stays the family's own. A system's base block is 16-bit with
    the precision's KV format."""
    assert scheme_in_dtype({"dtype": "fp4"}) == "fp4"
    assert scheme_in_dtype({"dtype": "int4"}) == "int4"
    assert scheme_in_dtype({"dtype": "fp8"}) is None and scheme_in_dtype({}) is None
    block = model_block({"preset": "x", "dtype": "fp8"}, parse_precision("fp8", "x"))
    assert block == {"preset": "x", "dtype": "bf16"}
    kv = parse_precision({"scheme": "fp4", "kv_cache": "int8"}, "x")
    assert model_block({"preset": "x"}, kv) == {"preset": "x", "kv_dtype": "int8"}


def test_quantized_weights_follow_the_format() -> None:
    """Llama-2-7B's block GEMM weights (6.48B parameters: all but the embedding, LM head
    and norms) take the weight format with its scales; the rest stays 16-bit."""
    base = _llama()
    q = QuantizedModel(base, parse_precision("w4a16", "x"), resolve("a100"))
    assert q.linear_params == pytest.approx(6.476e9, rel=0.002)
    wide = base.info.param_bytes - 2 * q.linear_params
    expect = wide + q.linear_params * FORMATS["int4"].bytes_per_element
    assert q.info.param_bytes == pytest.approx(expect)
    assert 3.8e9 < q.info.param_bytes < 4.0e9
    q4 = QuantizedModel(base, parse_precision("fp4", "x"), resolve("b200"))
    assert q4.info.param_bytes == pytest.approx(wide + q.linear_params * 0.5625)
    tp2 = Parallelism(tensor=2)
    assert q4.weight_bytes_per_device(tp2) == pytest.approx(q4.info.param_bytes / 2)


def test_quantized_model_keeps_the_base_training_memory() -> None:
    """A precision wrapper passes the base model's activation accounting through: its
    recomputable modules and its head's activations."""
    base = _llama()
    q = QuantizedModel(base, parse_precision("fp8", "x"), resolve("h100-sxm"))
    shape = Shape(Phase.TRAIN, batch=1, tokens=512)
    assert q.recomputable() == base.recomputable() != frozenset({"core_attn"})
    assert q.head_activation_bytes(shape, Parallelism()) == base.head_activation_bytes(
        shape, Parallelism()
    )


def test_quantized_graph_rewrites_only_weight_gemms() -> None:
    """Weight GEMMs read their weights and inputs in the formats and run at the plan's
    dtype, with dequantization work on the vector unit when the weights are narrower;
    the LM head, attention and norms are untouched."""
    base = _llama()
    q = QuantizedModel(base, parse_precision("w4a16", "x"), resolve("a100"))
    shape = Shape(Phase.PREFILL, batch=1, tokens=256)
    before = {o.name: o for o in base.build(shape)}
    after = {o.name: o for o in q.build(shape)}
    qkv0, qkv1 = before["attn.qkv"], after["attn.qkv"]
    assert qkv1.param_bytes == pytest.approx(qkv0.param_bytes / 2 * 0.5195, rel=1e-3)
    assert qkv1.bytes_read - qkv1.param_bytes == pytest.approx(qkv0.bytes_read - qkv0.param_bytes)
    assert qkv1.dtype == "bf16"
    assert qkv1.attr(VECTOR_FLOPS_ATTR) == pytest.approx(
        qkv0.param_bytes / 2 * 2 * DEQUANT_FLOPS_PER_ELEMENT  # 256 rows = two 128-row blocks
    )
    assert after["lm_head"] == before["lm_head"]
    for name, op in before.items():
        if op.kind in (OpKind.ATTENTION, OpKind.NORM):
            assert after[name] == op
    fp8 = QuantizedModel(base, parse_precision("fp8", "x"), resolve("h100"))
    up = {o.name: o for o in fp8.build(shape)}["mlp.up"]
    assert up.dtype == "fp8" and up.attr(VECTOR_FLOPS_ATTR) == 0.0
    assert up.bytes_read == pytest.approx(before["mlp.up"].bytes_read / 2)


def test_quantized_model_has_no_module() -> None:
    """A quantized model is priced from its graph: asking for its torch module is refused as
    unsupported, saying what to do."""
    q = QuantizedModel(_llama(), parse_precision("fp8", "x"), resolve("h100"))
    with pytest.raises(UnsupportedError, match=r"remove systems\[\]\.precision"):
        q.module()


def test_quantized_model_needs_a_16_bit_base() -> None:
    """A precision applies to a 16-bit model; an fp8-configured one is refused."""
    with pytest.raises(XpusimError, match="16-bit model"):
        QuantizedModel(_llama(dtype="fp8"), parse_precision("fp8", "x"), resolve("h100"))


def test_fp8_decode_is_faster_on_h100_and_fits_more() -> None:
    """On one H100, Llama-2-7B decoding at FP8 reads half the weight bytes of bf16, so a
    memory-bound decode step takes between 45 % and 75 % of the bf16 step."""
    base = _llama()
    shape = Shape(Phase.DECODE, batch=8, tokens=1, context=512)
    t16 = GpuBackend().compile(base, _system("h100")).cost(shape).seconds
    q = QuantizedModel(base, parse_precision("fp8", "x"), resolve("h100"))
    t8 = GpuBackend().compile(q, _system("h100")).cost(shape).seconds
    assert 0.45 < t8 / t16 < 0.75


def _tpu_prefill_s(device: str, precision: str | None) -> float:
    dev = tpu_resolve(device)
    system = System("sut", "tpu", dev, 1, Parallelism(), topology_from_device(dev))
    base = _llama()
    model = (
        base if precision is None else QuantizedModel(base, parse_precision(precision, "x"), dev)
    )
    return TpuBackend().compile(model, system).cost(Shape(Phase.PREFILL, 4, 1024)).seconds


def test_systolic_devices_run_fp8_at_their_peak_or_dequantize() -> None:
    """On the systolic backend a compute-bound prefill runs faster at FP8 on TPU v7 and
    Trainium2 (their FP8 peaks are about twice bf16); TPU v5e has no FP8 rate, so its GEMMs
    stay bf16 and the dequantization work makes the step a little slower, not faster."""
    for device in ("tpu-v7", "trainium2"):
        assert _tpu_prefill_s(device, "fp8") < 0.75 * _tpu_prefill_s(device, None)
    assert plan_gemms(parse_precision("fp8", "x"), tpu_resolve("tpu-v5e")).math == "bf16"
    assert _tpu_prefill_s("tpu-v5e", "fp8") > _tpu_prefill_s("tpu-v5e", None)
