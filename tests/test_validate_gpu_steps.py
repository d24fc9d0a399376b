"""`benchmarks/validate_gpu_steps.py` prices the very small Llama that the shipped H100
points file timed: the traced module has the measured shapes, and the harness writes
predicted against measured for the decode step and the prefill."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.plugins.gpu import points as points_mod

REPO = Path(__file__).resolve().parents[1]
POINTS = REPO / "calibrations" / "points" / "h100-sxm-2026-12-06.points.json"


def _harness() -> ModuleType:
    path = REPO / "benchmarks" / "validate_gpu_steps.py"
    spec = importlib.util.spec_from_file_location("validate_gpu_steps", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["validate_gpu_steps"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_traced_steps_have_the_measured_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode trace holds the four projections of eight tokens per layer and the
    repeated-KV SDPA; the prefill's projections run over the whole prompt."""
    monkeypatch.setenv("XPUSIM_ALLOW_MODULES", "")
    step = points_mod.load(POINTS).extra["decode_step"]
    decode, prefill = _harness().models(step)
    g = decode.build(Shape(Phase.FORWARD, batch=step["batch"]))
    gemms = {op.dims for op in g.by_kind(OpKind.MATMUL)}
    h = step["hidden"]
    qkv = (step["heads"] + 2 * step["kv_heads"]) * h // step["heads"]
    assert {(8, qkv, h), (8, h, h), (8, 8 * h, h), (8, h, 4 * h)} == gemms
    assert all(op.count == step["layers"] for op in g.by_kind(OpKind.MATMUL))
    (attn,) = g.by_kind(OpKind.ATTENTION)
    assert attn.batch == step["batch"] * step["heads"] and attn.dims[1] == step["context"]
    p = prefill.build(Shape(Phase.FORWARD, batch=1))
    assert {op.dims[0] for op in p.by_kind(OpKind.MATMUL)} == {step["prefill_tokens"]}


def test_harness_writes_predicted_against_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a calibration the harness reports both parameter sets, each step's measured
    time as the file has it and a positive prediction."""
    monkeypatch.setenv("XPUSIM_ALLOW_MODULES", "")
    out = tmp_path / "steps.json"
    cal = REPO / "calibrations" / "h100-sxm-2026-12-06.json"
    rc = _harness().main(["--points", str(POINTS), "--calibration", str(cal), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    step = points_mod.load(POINTS).extra["decode_step"]
    assert [r["parameters"] for r in res["rows"]] == ["built-in", str(cal)]
    for row in res["rows"]:
        assert row["decode"]["measured_s"] == step["graph_s"]
        assert row["prefill"]["measured_s"] == step["prefill_eager_s"]
        for name in ("decode", "prefill"):
            r = row[name]
            assert r["predicted_s"] > 0
            assert r["error"] == r["predicted_s"] / r["measured_s"] - 1
