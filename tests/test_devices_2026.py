"""Today's devices and per-system precisions in scenarios: names and aliases resolve, a
scenario derives a device from a catalog one, each system runs its own formats, and bad
input names the place and the nearest valid value."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xpusim.engine import cli
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.precision import VECTOR_FLOPS_ATTR, QuantizedModel
from xpusim.engine.run import prepare, simulate
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.gpu.vectorwork import WithVectorWork

Writer = Callable[..., Path]

SCENARIO = """\
name: formats
model: {family: llama, preset: llama-2-7b}
workload:
  kind: offline
  count: 8
  prompt_tokens: {dist: constant, value: 128}
  output_tokens: {dist: constant, value: 16}
systems:
  - {name: h100-fp8, backend: gpu, device: h100, precision: fp8}
  - {name: a100-awq, backend: gpu, device: a100, precision: w4a16}
  - {name: b200-fp4, backend: gpu, device: b200, precision: {scheme: fp4, kv_cache: fp8}}
  - {name: h200, backend: gpu, device: h200}
"""


def test_new_devices_resolve_by_name_and_alias(host: Host) -> None:
    """The 2026 parts resolve under their canonical names and aliases: h200 is the H200
    SXM, a GB200 or GB300 sits in a 72-GPU NVLink domain, ironwood is TPU v7 and trn2 is
    Trainium2 (systolic, on the tpu backend)."""
    assert host.device("gpu", "h200").name == "h200-sxm"
    for name in ("gb200", "b300", "gb300", "mi325x", "mi355x", "gaudi3"):
        assert host.device("gpu", name).name == name
    assert host.device("gpu", "gb200").devices_per_node == 72
    assert host.device("gpu", "gb300").flops("fp4") == pytest.approx(15e15)
    assert host.device("tpu", "ironwood").name == "tpu-v7"
    assert host.device("tpu", "trn2").name == "trainium2"


def test_devices_command_lists_the_new_devices(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """``xpusim devices --json`` lists every new part with its sources."""
    monkeypatch.setattr(cli, "_host", lambda: host)
    result = CliRunner().invoke(cli.app, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    for name in ("h200-sxm", "gb200", "b300", "gb300", "mi325x", "mi355x", "gaudi3"):
        assert rows[name]["backend"] == "gpu"
    assert rows["tpu-v7"]["backend"] == "tpu" and rows["trainium2"]["backend"] == "tpu"
    assert rows["h200-sxm"]["sources"]["memory_bytes"] == "h200_sxm_hbm"


def test_gaudi3_has_its_own_cited_efficiency(host: Host, write_yaml: Writer) -> None:
    """Gaudi 3's matmul efficiency default is its own measured best-shape fraction, cited,
    while other devices keep theirs from elsewhere."""
    sc = load_scenario(
        write_yaml(SCENARIO.replace("device: h200}", "device: gaudi3}").replace("h200", "g3")),
        host,
    )
    gaudi = next(s for s in sc.systems if s.device.name == "gaudi3")
    eff, sources = GpuBackend().efficiency_sources(gaudi)
    assert eff.tensor_fraction == pytest.approx(0.677)
    assert eff.lowp_tensor_fraction == pytest.approx(0.703)
    assert "mamf_bf16_matmul_multi_gpu" in sources["tensor_fraction"]
    h100 = next(s for s in sc.systems if s.device.name == "h100-sxm")
    assert "catalog" not in GpuBackend().efficiency_sources(h100)[1]["tensor_fraction"]


def test_each_system_runs_its_own_precision(host: Host, write_yaml: Writer) -> None:
    """One scenario compares H100 at FP8, A100 at AWQ INT4 and B200 at NVFP4: each system
    gets its quantized model (the B200's with an FP8 KV cache), a plain system the
    scenario's 16-bit model, and every one fits and is recorded with its formats."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    models = {s.name: sc.model_for(s) for s in sc.systems}
    assert models["h200"] is sc.model
    fp8, awq, fp4 = models["h100-fp8"], models["a100-awq"], models["b200-fp4"]
    assert isinstance(fp8, QuantizedModel) and fp8.plan.math == "fp8"
    assert isinstance(awq, QuantizedModel) and awq.plan.dequantize
    assert isinstance(fp4, QuantizedModel) and fp4.plan.math == "fp4"
    assert fp4.kv_bytes_per_token == pytest.approx(sc.model.kv_bytes_per_token / 2)
    assert fp8.kv_bytes_per_token == sc.model.kv_bytes_per_token
    assert fp4.info.param_bytes < awq.info.param_bytes * 1.1 < fp8.info.param_bytes
    prepared = {p.result.name: p.result for p in prepare(sc, host)}
    assert all(r.status == "ok" for r in prepared.values())
    assert prepared["a100-awq"].details["precision"]["gemm_dtype"] == "bf16"
    assert "dequantized to bf16" in prepared["a100-awq"].details["precision"]["gemm"]
    assert "precision.weights_bytes_per_element" in prepared["b200-fp4"].figures
    assert "precision" not in prepared["h200"].details


def test_model_dtype_fp4_is_every_systems_precision(host: Host, write_yaml: Writer) -> None:
    """``model.dtype: fp4`` (or ``int4``), which no family takes itself, is the precision of
    every system that names none; the scenario's model is the 16-bit base."""
    text = SCENARIO.replace("preset: llama-2-7b}", "preset: llama-2-7b, dtype: int4}")
    sc = load_scenario(write_yaml(text), host)
    assert sc.model.info.dtype == "bf16"
    h200 = sc.model_for(sc.systems[3])
    assert isinstance(h200, QuantizedModel) and h200.precision.weights.name == "int4"
    assert sc.model_for(sc.systems[0]).precision.name == "fp8"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("precision: fp8}", "precision: fp6}", "at systems.0.precision: unknown precision"),
        ("precision: fp8}", "precision: {weights: in4}}", "Did you mean 'int4'?"),
        ("device: h200}", "device: h20}", "Did you mean 'h200'?"),
        ("device: h200}", "device: trn2}", "'trn2' is a tpu device: set backend: tpu"),
        (
            "device: h200}",
            "device: {base: h200, peak_flops: {fp5: 1 PFLOP/s}}}",
            "unknown dtype 'fp5'",
        ),
    ],
)
def test_bad_devices_and_precisions_are_refused(
    host: Host, write_yaml: Writer, old: str, new: str, needle: str
) -> None:
    """An unknown precision, format, device or dtype is refused at load with the file, the
    key path and the nearest valid name (aliases included); a device of another backend
    says which backend to name."""
    with pytest.raises(XpusimError) as exc:
        load_scenario(write_yaml(SCENARIO.replace(old, new)), host)
    assert needle in str(exc.value)
    assert "scenario.yaml" in str(exc.value)


def test_scenario_derives_a_device(host: Host, write_yaml: Writer) -> None:
    """A device written as a mapping starts from a catalog device and replaces the figures
    it gives, each cited as the scenario's; the rest keep the base's sources."""
    text = SCENARIO.replace(
        "device: h200}",
        "device: {base: h200, name: h200-nvl, memory: 141 GB, memory_bw: 4.0 TB/s, "
        "peak_flops: {bf16: 835 TFLOP/s}, max_power: 600 W}}",
    )
    sc = load_scenario(write_yaml(text), host)
    dev = sc.systems[3].device
    assert dev.name == "h200-nvl" and dev.memory_bw.value == pytest.approx(4.0e12)
    assert dev.flops("bf16") == pytest.approx(835e12)
    assert dev.power.max_w is not None and dev.power.max_w.value == 600
    assert dev.memory_bw.source == "scenario systems.3.device.memory_bw"
    assert dev.peak_flops["fp8"].source == "h200_sxm_tensor_tflops"
    assert all(p.result.status == "ok" for p in prepare(sc, host))


def test_dequantization_work_rides_on_the_gemm(host: Host, write_yaml: Writer) -> None:
    """On A100 at AWQ INT4, a weight GEMM pays its dequantization at the vector rate on the
    compute side of its roofline, once per 128-row block: a 2048-token prefill GEMM pays 16
    times a decode GEMM's."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    system = sc.systems[1]
    model = sc.model_for(system)
    price = GpuBackend().compile(model, system).price_op
    assert isinstance(price, WithVectorWork)
    extra = []
    for shape in (
        Shape(Phase.PREFILL, batch=1, tokens=2048),
        Shape(Phase.DECODE, batch=1, tokens=1, context=128),
    ):
        up = next(o for o in model.build(shape) if o.name == "mlp.up")
        assert up.kind is OpKind.MATMUL and up.attr(VECTOR_FLOPS_ATTR) > 0
        with_work, without = price(up), price.cost(up)
        added = with_work.compute_s - without.compute_s
        assert added == pytest.approx(up.attr(VECTOR_FLOPS_ATTR) / price.cost.vector_flops)
        assert with_work.memory_s == without.memory_s
        extra.append(added)
    assert extra[0] == pytest.approx(16 * extra[1])


def test_precision_on_a_training_scenario_is_refused(host: Host) -> None:
    """A precision sets inference formats; on a training scenario it is refused, naming the
    field and pointing at ``model.dtype: fp8`` for FP8 training."""
    path = Path(__file__).resolve().parents[1] / "scenarios" / "llama-7b-finetune.yaml"
    with pytest.raises(ScenarioError, match=r"for FP8 training set model\.dtype: fp8"):
        load_scenario(path, host, overrides=["systems.0.precision=fp8"])


def test_shipped_quantized_scenario_compares_formats(host: Host) -> None:
    """``scenarios/quantized-2026.yaml`` serves Llama-3-70B with H100 and H200 at FP8, A100
    at 4-bit weights and B200 at NVFP4: each system's GEMMs run at the rate its device has
    for its format, and its weights take that format's bytes (141 GB in 16 bits, under
    45 GB at 4 bits)."""
    path = Path(__file__).resolve().parents[1] / "scenarios" / "quantized-2026.yaml"
    sc = load_scenario(path, host)
    models = {s.name: sc.model_for(s) for s in sc.systems}
    plans = {n: (m.plan.math, m.precision.weights.name) for n, m in models.items()}  # type: ignore[attr-defined]
    assert plans == {
        "h100-fp8": ("fp8", "fp8"),
        "h200-fp8": ("fp8", "fp8"),
        "a100-w4a16": ("bf16", "int4"),
        "b200-fp4": ("fp4", "nvfp4"),
    }
    assert sc.model.info.param_bytes > 140e9
    assert models["a100-w4a16"].info.param_bytes < 45e9
    assert models["b200-fp4"].info.param_bytes < 45e9


def test_precision_on_a_spiking_network_is_refused(host: Host) -> None:
    """A spiking network has no GEMM weights to quantize: a precision on one of its systems
    is refused naming the field."""
    path = Path(__file__).resolve().parents[1] / "scenarios" / "keyword-spotting-snn.yaml"
    with pytest.raises(ScenarioError, match=r"systems\.1\.precision: .* is a spiking network"):
        load_scenario(path, host, overrides=["systems.1.precision=fp8"])


def test_formats_change_what_a_run_measures(host: Host, write_yaml: Writer) -> None:
    """Simulated end to end, each system keeps its formats: the same requests finish, the
    systems at 8 and 4 bits hold fewer weight bytes per device than the 16-bit H200, and
    each quantized system's figures say which tensor rate its GEMMs ran at."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    run = {s.name: s for s in simulate(sc, host).systems}
    assert all(s.status == "ok" for s in run.values())
    weights = {n: s.metrics["weight_bytes_per_device"] for n, s in run.items()}
    assert weights["b200-fp4"] < weights["h100-fp8"] < weights["h200"]
    assert weights["a100-awq"] < weights["h100-fp8"]
    figure = run["a100-awq"].figures["precision.activations_bytes_per_element"]
    assert "a100-sxm-80gb's bf16 tensor rate" in figure.assumption
    assert (
        "fp4 tensor rate"
        in run["b200-fp4"].figures["precision.activations_bytes_per_element"].assumption
    )


def test_kv_cache_format_on_a_model_without_one_is_refused(host: Host, write_yaml: Writer) -> None:
    """An encoder keeps no KV cache: a precision's ``kv_cache`` on it is refused naming the
    system's precision, while its weight format is accepted."""
    text = """\
name: bert
model: {family: bert, preset: bert-large}
workload: {kind: offline, count: 8}
systems:
  - {name: h100, backend: gpu, device: h100, precision: {scheme: fp8, kv_cache: fp8}}
"""
    with pytest.raises(ScenarioError, match=r"systems\.0\.precision: kv_cache is set but"):
        load_scenario(write_yaml(text), host)
    sc = load_scenario(write_yaml(text.replace(", kv_cache: fp8", "")), host)
    assert isinstance(sc.model_for(sc.systems[0]), QuantizedModel)
