"""``model.dtype: fp8`` (or ``int8``) is a checkpoint's format. Inference always takes the
precision of that name, as serving stacks run such a checkpoint: the linear layers narrow
(natively where the device has the rate; elsewhere at the next wider format with the
weights dequantized, and the report says so), attention, norms, the embedding and the LM
head in 16 bits. Training runs natively on a device with the rate and is refused on one
without, naming the field and the nearest dtype the device runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xpusim.engine import cli
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.precision import QuantizedModel, dtype_precision
from xpusim.engine.run import run_scenario
from xpusim.engine.scenario import load_scenario

Writer = Callable[..., Path]

SCENARIO = """\
name: fp8-everywhere
model: {family: llama, preset: llama-2-7b, dtype: fp8}
workload:
  kind: offline
  count: 8
  prompt_tokens: {dist: constant, value: 128}
  output_tokens: {dist: constant, value: 16}
systems:
  - {name: h100, backend: gpu, device: h100}
  - {name: a100, backend: gpu, device: a100}
"""

FINETUNE = Path(__file__).resolve().parents[1] / "scenarios" / "llama-7b-finetune.yaml"


def test_dtype_precision_decides_per_device(host: Host) -> None:
    """Inference runs a narrow dtype as the scheme of the same name on every device;
    nothing changes for a dtype that is not narrow, nor for training where the device has
    the rate; training without it raises naming the field and the nearest dtype."""
    h100, a100 = host.device("gpu", "h100"), host.device("gpu", "a100")
    assert dtype_precision("fp8", h100, training=False, where="m") == "fp8"
    assert dtype_precision("bf16", h100, training=False, where="m") is None
    assert dtype_precision("fp8", h100, training=True, where="m") is None
    assert dtype_precision("bf16", a100, training=True, where="m") is None
    assert dtype_precision("int8", a100, training=True, where="m") is None  # A100 has INT8
    assert dtype_precision("fp8", a100, training=False, where="m") == "fp8"
    with pytest.raises(XpusimError, match=r"nearest dtype it runs is bf16"):
        dtype_precision("fp8", a100, training=True, where="model.dtype")


def test_fp8_inference_on_a100_dequantizes_and_says_so(host: Host, write_yaml: Writer) -> None:
    """On A100 (no FP8 tensor cores) an FP8 model's GEMMs run at BF16 with the FP8 weights
    dequantized inside them, exactly as ``precision: fp8`` plans them; its weights keep
    FP8's bytes; the H100 beside it runs its linear layers in FP8 natively and its
    attention in 16 bits; the report's assumptions say which."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    h100, a100 = (sc.model_for(s) for s in sc.systems)
    assert isinstance(h100, QuantizedModel)
    assert (h100.plan.math, h100.plan.dequantize) == ("fp8", False)
    ops = {o.name: o for o in h100.build(Shape(Phase.PREFILL, batch=1, tokens=128)).ops}
    assert ops["mlp.up"].dtype == "fp8" and ops["attn.core"].dtype == "bf16"
    assert ops["lm_head"].dtype == "bf16" and ops["ln1"].dtype == "bf16"
    assert isinstance(a100, QuantizedModel)
    assert (a100.plan.math, a100.plan.dequantize) == ("bf16", True)
    assert "publishes no fp8 rate" in a100.plan.note
    assert a100.info.param_bytes < 0.6 * sc.model.info.param_bytes * 2  # about a byte each

    explicit = load_scenario(
        write_yaml(SCENARIO.replace("device: a100}", "device: a100, precision: fp8}"), "p.yaml"),
        host,
    ).model_for(sc.systems[1])
    assert isinstance(explicit, QuantizedModel)
    assert explicit.plan == a100.plan and explicit.info == a100.info

    result, folder = run_scenario(sc, host, out_dir=folder_of(write_yaml) / "run")
    assert [s.status for s in result.systems] == ["ok", "ok"]
    assert result.systems[1].details["precision"]["gemm_dtype"] == "bf16"
    assert result.systems[0].details["precision"]["gemm_dtype"] == "fp8"
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "weights stored as fp8, dequantized to bf16 inside the GEMM" in report


def folder_of(write_yaml: Writer) -> Path:
    """The temporary folder the scenario files of this test are written to."""
    return write_yaml("", "unused.yaml").parent


def test_fp8_training_on_a100_is_refused(host: Host) -> None:
    """FP8 training on A100 is refused at load, naming ``model.dtype``, the system, and
    bf16 as the nearest dtype it runs; through the command line it is exit status 2."""
    with pytest.raises(ScenarioError) as err:
        load_scenario(FINETUNE, host, overrides=["model.dtype=fp8"])
    msg = str(err.value)
    assert "model.dtype" in msg and "'a100-node'" in msg and "bf16" in msg
    with pytest.raises(ScenarioError, match=r"'v5p-8'.*tpu-v5p"):  # TPU v5p: BF16 only
        load_scenario(FINETUNE, host, overrides=["model.dtype=fp8", "systems.1.device=h100"])
    ok = load_scenario(
        FINETUNE,
        host,
        overrides=[
            "model.dtype=fp8",
            "systems.1.device=h100",
            "systems.2.backend=gpu",
            "systems.2.device=h200",
        ],
    )
    assert all(ok.model_for(s).info.dtype == "fp8" for s in ok.systems)


def test_fp8_training_refusal_exits_2(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """``xpusim validate`` of FP8 training on A100 exits 2 with the field in the message."""
    monkeypatch.setattr(cli, "_host", lambda: host)
    result = CliRunner().invoke(cli.app, ["validate", str(FINETUNE), "--set", "model.dtype=fp8"])
    assert result.exit_code == 2, result.output
    assert "model.dtype" in result.output and "bf16" in result.output
