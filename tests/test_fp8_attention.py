"""An FP8 checkpoint's context attention: 16-bit unless the serving stack builds FP8
context attention kernels (TensorRT-LLM's FP8 context FMHA, which ``trtllm-bench`` builds
for FP8 models) or the scenario's precision says so; decode attention and devices without
an FP8 rate keep 16 bits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.precision import QuantizedModel, parse_precision
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.offline.workload import OfflineConfig
from xpusim.plugins.workloads.serving.stacks import stack_for

Writer = Callable[..., Path]

SCENARIO = """\
name: fp8-attention
model: {{family: llama, preset: llama-2-7b, dtype: fp8}}
workload:
  kind: offline
  count: 4
  prompt_tokens: {{dist: constant, value: 4096}}
  output_tokens: {{dist: constant, value: 4}}
  stack: {stack}
systems:
  - {{name: h100, backend: gpu, device: h100}}
  - {{name: a100, backend: gpu, device: a100}}
  - {{name: h100-bf16-attention, backend: gpu, device: h100,
      precision: {{scheme: fp8, attention: bf16}}}}
"""

PREFILL = Shape(Phase.PREFILL, batch=1, tokens=4096)
DECODE = Shape(Phase.DECODE, batch=8, tokens=1, context=4096)


def attention_dtypes(model: object, shape: Shape) -> set[str]:
    """The dtypes of the attention cores of ``model``'s graph of ``shape``."""
    assert isinstance(model, QuantizedModel)
    return {o.dtype for o in model.build(shape).ops if o.name.startswith("attn.core")}


def test_trtllm_stack_runs_fp8_context_attention(host: Host, write_yaml: Writer) -> None:
    """Under ``stack: tensorrt-llm`` the H100's prefill attention computes in FP8 and its
    decode attention in 16 bits; the A100 (no FP8 rate) and a system whose precision
    names 16-bit attention keep 16 bits; the run details say which."""
    sc = load_scenario(write_yaml(SCENARIO.format(stack="tensorrt-llm")), host)
    h100, a100, wide = (sc.model_for(s) for s in sc.systems)
    assert attention_dtypes(h100, PREFILL) == {"fp8"}
    assert attention_dtypes(h100, DECODE) == {"bf16"}
    assert attention_dtypes(a100, PREFILL) == {"bf16"}
    assert attention_dtypes(wide, PREFILL) == {"bf16"}
    assert isinstance(h100, QuantizedModel) and isinstance(a100, QuantizedModel)
    assert h100.describe()["context_attention"] == "fp8 on fp8 tensor cores"
    assert "publishes no fp8 rate" in a100.describe()["context_attention"]
    gpu = host.backends.get("gpu")
    fp8 = gpu.compile(h100, sc.systems[0]).cost(PREFILL).seconds
    bf16 = gpu.compile(wide, sc.systems[2]).cost(PREFILL).seconds
    assert fp8 < bf16  # the same GEMMs, the attention at twice the tensor rate


def test_other_stacks_keep_16_bit_attention(host: Host, write_yaml: Writer) -> None:
    """vLLM runs an FP8 checkpoint's attention in 16 bits, unless a scenario's stack
    override switches FP8 context attention on (its source then says so)."""
    sc = load_scenario(write_yaml(SCENARIO.format(stack="vllm-0.6")), host)
    assert attention_dtypes(sc.model_for(sc.systems[0]), PREFILL) == {"bf16"}
    on = "{name: vllm-0.6, fp8_context_attention: true}"
    sc = load_scenario(write_yaml(SCENARIO.format(stack=on), "on.yaml"), host)
    assert attention_dtypes(sc.model_for(sc.systems[0]), PREFILL) == {"fp8"}
    config = sc.workload_config
    assert isinstance(config, OfflineConfig)
    prof = stack_for(config, "gpu")
    assert prof.fp8_context_attention
    assert prof.sources["fp8_context_attention"] == "scenario override (workload.stack)"


def test_precision_attention_key() -> None:
    """``attention`` in a precision mapping takes a 16-bit format or fp8; anything else is
    refused naming the field and the valid values."""
    p = parse_precision({"scheme": "fp8", "attention": "fp8"}, "systems[0].precision")
    assert p.attention is not None and p.attention.name == "fp8" and "attn:fp8" in p.name
    assert not parse_precision({"attention": "fp8"}, "p").is_default
    assert parse_precision({"attention": "bf16"}, "p").is_default
    with pytest.raises(XpusimError, match=r"systems\[0\]\.precision\.attention"):
        parse_precision({"scheme": "fp8", "attention": "nvfp4"}, "systems[0].precision")
