"""`family: torch` on the analytic accelerators: a user's module is priced op by op from
its traced graph on the GPU and TPU backends, its unknown ops named with their count."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpusim.engine.collectives import topology_from_device
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.gpu.catalog import resolve as gpu_device
from xpusim.plugins.models.custom import FAMILIES
from xpusim.plugins.tpu.backend import TpuBackend
from xpusim.plugins.tpu.backend import resolve as tpu_device


@pytest.fixture
def small_lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelGraph]:
    """A small user transformer block (attention by matmuls, an MLP, a norm) and one op
    the tracer has no rule for (an FFT)."""
    monkeypatch.setenv("XPUSIM_ALLOW_MODULES", "tinylm")
    (tmp_path / "tinylm.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self, d=64):
                super().__init__()
                self.qkv = nn.Linear(d, 3 * d)
                self.out = nn.Linear(d, d)
                self.up = nn.Linear(d, 4 * d)
                self.down = nn.Linear(4 * d, d)
                self.norm = nn.LayerNorm(d)
            def forward(self, x):
                q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
                a = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
                x = x + self.out(a)
                x = x + self.down(torch.relu(self.up(x)))
                return torch.fft.rfft(x).real

        def make(d=64):
            return Block(d)
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = FAMILIES[0].configure(
        {"module": "tinylm:make", "inputs": {"x": {"shape": [2, 16, 64], "dtype": "fp32"}}}
    )
    yield model
    sys.modules.pop("tinylm", None)


def _system(backend: str, device) -> System:  # type: ignore[no-untyped-def]
    return System("sut", backend, device, 1, Parallelism(), topology_from_device(device))


@pytest.mark.parametrize(
    ("backend", "system"),
    [
        (GpuBackend(), lambda: _system("gpu", gpu_device("h100-sxm"))),
        (TpuBackend(), lambda: _system("tpu", tpu_device("v5e"))),
    ],
    ids=["gpu", "tpu"],
)
def test_user_module_priced_op_by_op(small_lm: ModelGraph, backend, system) -> None:  # type: ignore[no-untyped-def]
    """Both backends accept the module and price a forward and a training step from the
    traced ops: the step's FLOPs are the trace's, more work costs more time, and the
    graph names the unknown op with its count."""
    assert small_lm.kind == "custom"
    for workload in ("offline", "training"):
        assert backend.supports(small_lm, workload).ok, backend.supports(small_lm, workload)
    compiled = backend.compile(small_lm, system())
    small = Shape(Phase.FORWARD, batch=2)
    big = Shape(Phase.FORWARD, batch=64)
    g = small_lm.build(small)
    assert g.by_kind(OpKind.MATMUL) and g.by_kind(OpKind.OTHER)
    assert any("_fft_r2c x1" in n for n in g.notes)
    c_small, c_big = compiled.cost(small), compiled.cost(big)
    assert c_small.flops == pytest.approx(g.flops)
    assert 0 < c_small.seconds < c_big.seconds
    train = compiled.cost(Shape(Phase.TRAIN, batch=2))
    assert train.seconds > c_small.seconds and train.flops > 2 * c_small.flops
