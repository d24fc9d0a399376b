"""Encoder, vision, small and custom-torch families, and what every family exports."""

from __future__ import annotations

import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.engine.model import ModelFamily
from xpusim.engine.system import Parallelism
from xpusim.plugins.models import custom, encoder, small, transformer, vision
from xpusim.plugins.models.tracing import trace_module

ALL = [f for mod in (transformer, encoder, vision, small, custom) for f in mod.FAMILIES]


def test_families_export_and_cite_presets() -> None:
    """Each module exports FAMILIES; names are the scenario names; every preset is cited."""
    names = [f.name for f in ALL]
    assert names == ["gpt", "llama", "mixtral", "palm", "bert", "resnet", "mlp", "cnn", "torch"]
    for f in ALL:
        assert isinstance(f, ModelFamily) and f.description
        assert set(f.presets) == set(f.presets_sources), f.name
        assert all(len(s) > 20 for s in f.presets_sources.values())


def _kinds(ops, counted: bool):
    flops, nbytes = defaultdict(float), defaultdict(float)
    for o in ops:
        n = o.count if counted else 1
        flops[o.kind] += o.flops * n
        nbytes[o.kind] += (o.bytes_read + o.bytes_written) * n
    return flops, nbytes


@pytest.mark.parametrize(
    "shape", [Shape(Phase.FORWARD, batch=2, tokens=64), Shape(Phase.FORWARD, batch=1, tokens=128)]
)
def test_bert_parametric_equals_trace(shape: Shape) -> None:
    """BERT's parametric FORWARD graph equals its meta trace, FLOPs and bytes, per kind."""
    m = encoder.FAMILIES[0].configure({"preset": "bert-base"})
    tr = trace_module(m.module("meta"), m.example_inputs(shape), "bf16")
    assert tr.unknown_ops == {}
    tf, tb = _kinds(tr, False)
    gf, gb = _kinds(m.build(shape).ops, True)
    for k in tf:
        assert gf[k] == tf[k] and gb[k] == tb[k], k


def test_bert_presets_and_params() -> None:
    """bert-base has 109.5M parameters (with pooler), bert-large 335M; both cited."""
    fam = encoder.FAMILIES[0]
    base = fam.configure({"preset": "bert-base"})
    assert base.info.params == sum(p.numel() for p in base.module("meta").parameters())
    assert base.info.params == pytest.approx(109.5e6, rel=0.01)
    assert fam.configure({"preset": "bert-large"}).info.params == pytest.approx(335e6, rel=0.01)
    train = base.build(Shape(Phase.TRAIN, batch=8, tokens=128))
    fwd = base.build(Shape(Phase.FORWARD, batch=8, tokens=128))
    assert train.flops > 3 * fwd.flops


def test_resnet50_trace() -> None:
    """ResNet-50: 25.56M parameters, ~4.1 GMACs (8.2 GFLOPs) per 224² image, convs as GEMMs."""
    m = vision.FAMILIES[0].configure({"preset": "resnet-50", "dtype": "fp32"})
    assert m.info.params == 25_557_032
    g = m.build(Shape(Phase.FORWARD, batch=4))
    assert g.flops / 4 == pytest.approx(8.2e9, rel=0.02)
    convs = g.by_kind(OpKind.CONV)
    assert sum(o.count for o in convs) == 53  # 49 in blocks + 4 downsample projections
    stem = convs[0]
    assert stem.dims == (4 * 112 * 112, 64, 3 * 7 * 7)
    assert m.unknown_ops == {}
    assert len(g.ops) < 80  # repeated blocks merge
    assert m.build(Shape(Phase.FORWARD, batch=4)) is g
    r18 = vision.FAMILIES[0].configure({"preset": "resnet-18"})
    assert r18.info.params == pytest.approx(11.69e6, rel=0.01)


def test_traced_models_refuse_tensor_parallel() -> None:
    """Traced families run data parallel only and say so."""
    m = small.FAMILIES[0].configure({})
    with pytest.raises(UnsupportedError, match="data parallel"):
        m.build(Shape(Phase.FORWARD, batch=4), Parallelism(tensor=2))
    with pytest.raises(UnsupportedError, match="decode"):
        m.build(Shape(Phase.DECODE, batch=4))


def test_mlp_and_cnn() -> None:
    """MLP FLOPs are 2·batch·Σ(in·out); the CNN has a conv per stage; both train."""
    mlp = small.FAMILIES[0].configure({"sizes": [32, 64, 10], "dtype": "fp32"})
    g = mlp.build(Shape(Phase.FORWARD, batch=8))
    assert sum(o.flops * o.count for o in g.by_kind(OpKind.MATMUL)) == 2 * 8 * (32 * 64 + 64 * 10)
    assert mlp.info.params == 32 * 64 + 64 + 64 * 10 + 10
    cnn = small.FAMILIES[1].configure({"channels": [8, 16], "image_size": 16})
    cg = cnn.build(Shape(Phase.FORWARD, batch=2))
    assert sum(o.count for o in cg.by_kind(OpKind.CONV)) == 2
    assert len(cg.by_kind(OpKind.POOL)) == 2
    tg = cnn.build(Shape(Phase.TRAIN, batch=2))
    assert tg.by_kind(OpKind.OPTIMIZER)
    out = cnn.module("cpu").float()(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 10)
    with pytest.raises(ScenarioError, match="image_size"):
        small.FAMILIES[1].configure({"channels": [8, 8, 8, 8, 8], "image_size": 16})
    with pytest.raises(ScenarioError, match="Did you mean 'sizes'"):
        small.FAMILIES[0].configure({"size": [3, 4]})


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable user package with a good, a raising and a non-module factory, which
    scenarios are allowed to import (``XPUSIM_ALLOW_MODULES``)."""
    monkeypatch.setenv("XPUSIM_ALLOW_MODULES", "usernets,no_such_pkg")
    (tmp_path / "usernets.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, width=16):
                super().__init__()
                self.a = nn.Linear(8, width)
                self.b = nn.Linear(width, 2)
            def forward(self, x, scale=None):
                y = self.b(torch.relu(self.a(x)))
                return torch.fft.rfft(y).real if scale is None else y * scale

        def make(width=16):
            return Net(width)

        def broken(**kw):
            raise RuntimeError("weights file missing\\nsecond line")

        def not_a_module():
            return 3
    """)
    )
    sys.path.insert(0, str(tmp_path))
    yield "usernets"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("usernets", None)


def test_custom_torch_model(user_pkg: str) -> None:
    """A user module traces on meta; unknown ops are named in the model and graph notes."""
    fam = custom.FAMILIES[0]
    m = fam.configure(
        {
            "module": f"{user_pkg}:make",
            "kwargs": {"width": 32},
            "inputs": {"x": {"shape": [4, 8], "dtype": "fp32"}},
        }
    )
    assert m.info.params == 8 * 32 + 32 + 32 * 2 + 2
    g = m.build(Shape(Phase.FORWARD, batch=16))
    mm = g.by_kind(OpKind.MATMUL)
    assert mm[0].dims == (16, 32, 8)
    assert m.unknown_ops == {"_fft_r2c": 1}
    assert any("_fft_r2c x1" in n for n in g.notes)
    listed = fam.configure(
        {"module": f"{user_pkg}:make", "inputs": [{"shape": [4, 8]}, {"shape": [4, 2]}]}
    )
    assert listed.build(Shape(Phase.FORWARD, batch=4)).by_kind(OpKind.MATMUL)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"module": "no_such_pkg.nets:make"}, "cannot import 'no_such_pkg.nets'.*No module named"),
        ({"module": "usernets:broken"}, "usernets:broken.*weights file missing$"),
        ({"module": "usernets:not_a_module"}, "not a torch.nn.Module"),
        ({"module": "usernets:nothing"}, "has no attribute 'nothing'"),
        ({"module": "usernets"}, "package.module:factory"),
        ({"module": "usernets:make", "inputs": [{"shape": [4, 9]}]}, "failed on the given inputs"),
    ],
)
def test_custom_torch_errors(user_pkg: str, spec: dict, match: str) -> None:
    """Import failures, raising factories and wrong inputs name the module and the error."""
    spec = {"inputs": [{"shape": [4, 8]}], **spec}
    with pytest.raises(ScenarioError, match=match):
        custom.FAMILIES[0].configure(spec)
