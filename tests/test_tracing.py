"""The meta-device tracer: op kinds, FLOPs, bytes, parameters and unknown ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from xpusim.engine.graph import STRIDED, OpKind, Phase, Shape
from xpusim.plugins.models.tracing import causal_pairs, fused_op, graph_from_trace, trace_module


def _meta(factory):
    with torch.device("meta"):
        return factory()


def test_linear_is_a_gemm_with_params() -> None:
    """A Linear lowers to one MATMUL of 2·m·n·k FLOPs whose weight bytes are params."""
    lin = _meta(lambda: nn.Linear(16, 32, bias=False))
    tr = trace_module(lin, (torch.zeros(4, 5, 16, device="meta"),), "bf16")
    (mm,) = tr.by_kind(OpKind.MATMUL)
    assert mm.dims == (20, 32, 16)
    assert mm.flops == 2 * 20 * 32 * 16
    assert mm.param_bytes == 16 * 32 * 2
    assert mm.bytes_read == (20 * 16 + 16 * 32) * 2
    assert mm.bytes_written == 20 * 32 * 2
    assert tr.unknown_ops == {}
    assert tr.zero_cost_ops  # the transpose/view ops are listed as zero-cost
    assert all(o.flops == 0 and o.bytes_read == 0 for o in tr if o.zero_cost)


def test_fp32_dtype_doubles_bytes_not_flops() -> None:
    """Floating tensors are priced at the scenario dtype's width."""
    lin = _meta(lambda: nn.Linear(8, 8))
    x = torch.zeros(2, 8, device="meta")
    a, b = trace_module(lin, (x,), "bf16"), trace_module(lin, (x,), "fp32")
    assert b.bytes == 2 * a.bytes
    assert b.flops == a.flops


def test_conv_lowers_to_im2col_gemm() -> None:
    """A convolution is a CONV op with the (m, n, k) of its im2col GEMM."""
    conv = _meta(lambda: nn.Conv2d(3, 8, 3, padding=1, groups=1))
    tr = trace_module(conv, (torch.zeros(2, 3, 10, 10, device="meta"),), "fp32")
    (c,) = tr.by_kind(OpKind.CONV)
    assert c.dims == (2 * 10 * 10, 8, 3 * 9)
    assert c.flops == 2 * 200 * 8 * 27


def test_sdpa_is_one_attention_op_with_causal_halving() -> None:
    """scaled_dot_product_attention is one ATTENTION op; causal keeps q(q+1)/2 pairs."""
    q = torch.zeros(2, 4, 6, 8, device="meta")

    class A(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    tr = trace_module(A(), (q,), "bf16")
    (att,) = tr.by_kind(OpKind.ATTENTION)
    assert att.dims == (6, 6, 8) and att.batch == 8
    assert att.flops == 4 * 8 * (6 * 7 / 2) * 8
    assert [o for o in tr if not o.zero_cost] == [att]  # the math decomposition is hidden
    assert causal_pairs(1, 10) == 10
    assert causal_pairs(4, 10) == 4 * 10 - 6


def test_norm_softmax_embedding_pool_kinds() -> None:
    """Norms, softmax, embeddings and pools get their kinds."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.ln = nn.LayerNorm(8)
            self.rms = nn.RMSNorm(8)

        def forward(self, ids: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
            x = self.rms(self.ln(self.emb(ids)))
            return F.softmax(x, -1).sum() + F.max_pool2d(img, 2).sum()

    m = _meta(M)
    tr = trace_module(
        m,
        (
            torch.zeros(2, 3, dtype=torch.long, device="meta"),
            torch.zeros(1, 2, 4, 4, device="meta"),
        ),
        "bf16",
    )
    kinds = [o.kind for o in tr if not o.zero_cost]
    assert kinds.count(OpKind.NORM) == 2
    assert OpKind.SOFTMAX in kinds and OpKind.POOL in kinds and OpKind.EMBEDDING in kinds
    (emb,) = tr.by_kind(OpKind.EMBEDDING)
    # a gather reads the rows it fetches (and the int64 indices), not the whole table
    assert emb.bytes_read == 6 * 8 + 6 * 8 * 2
    assert emb.param_bytes == 6 * 8 * 2


def test_unknown_ops_are_counted_by_name_and_kept() -> None:
    """An op without a rule is listed with its count and stays in the graph."""

    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(x).real + torch.fft.rfft(x).imag

    tr = trace_module(M(), (torch.zeros(4, 16, device="meta"),), "fp32")
    assert tr.unknown_ops == {"_fft_r2c": 2}
    g = graph_from_trace(tr, Phase.FORWARD, Shape(Phase.FORWARD, batch=4), "fp32")
    assert any("_fft_r2c x2" in n for n in g.notes)
    assert sum(o.count for o in g.ops if o.kind is OpKind.OTHER) == 2


def test_fused_op_records_one_op() -> None:
    """A function marked with fused_op is one op reading its inputs, writing its output."""

    @fused_op("swish_mul", OpKind.ELEMENTWISE, 2)
    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.silu(a) * b

    class M(nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return f(a, a)

    a = torch.zeros(3, 5, device="meta")
    tr = trace_module(M(), (a,), "fp32")
    (op,) = [o for o in tr if not o.zero_cost]
    assert op.name == "swish_mul" and op.flops == 30
    assert op.bytes_read == 2 * 15 * 4 and op.bytes_written == 15 * 4
    # outside a trace it is an ordinary function
    assert torch.equal(f(torch.ones(2), torch.ones(2)), F.silu(torch.ones(2)))


def test_graph_from_trace_merges_repeated_layers() -> None:
    """Equal ops of layers that differ only by index merge into one op with a count."""
    net = _meta(lambda: nn.Sequential(*[nn.Linear(8, 8) for _ in range(5)]))
    tr = trace_module(net, (torch.zeros(2, 8, device="meta"),), "bf16")
    g = graph_from_trace(tr, Phase.FORWARD, Shape(Phase.FORWARD, batch=2), "bf16")
    assert len(g.ops) == 1 and g.ops[0].count == 5
    assert g.flops == tr.flops and g.bytes == tr.bytes


def test_module_off_meta_is_refused() -> None:
    """Tracing never runs a module with real weights."""
    import pytest

    with pytest.raises(ValueError, match="meta"):
        trace_module(nn.Linear(2, 2), (torch.zeros(1, 2),), "fp32")


class _Views(nn.Module):
    """Elementwise work on contiguous tensors and on the views a layer hands them."""

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        y = x + x  # contiguous operands
        g, u = x.chunk(2, dim=-1)  # column halves: strided views
        z = F.silu(g) * u
        rep = kv.repeat_interleave(4, dim=1)  # a broadcast source, copied
        return y.sum() + z.sum() + rep.sum()


def test_elementwise_ops_on_views_are_marked_strided() -> None:
    """An elementwise op with an operand that is not contiguous at the output's shape
    (chunk halves, repeat_interleave's broadcast source) is marked strided and carries the
    STRIDED attribute into the graph; one on contiguous tensors is not."""
    tr = trace_module(
        _Views(),
        (torch.zeros(8, 64, device="meta"), torch.zeros(2, 2, 16, 8, device="meta")),
        "bf16",
    )
    by_name = {o.name: o for o in tr.by_kind(OpKind.ELEMENTWISE) if o.name != "sum"}
    assert not by_name["add"].strided
    assert by_name["silu"].strided and by_name["mul"].strided
    assert by_name["clone"].strided  # repeat_interleave = expand + clone
    g = graph_from_trace(tr, Phase.FORWARD, Shape(Phase.FORWARD, batch=8))
    marked = {o.name for o in g.ops if o.attr(STRIDED) > 0}
    assert marked == {"silu", "mul", "clone"}
    assert not next(o for o in g.ops if o.name == "add").attrs


def test_copies_with_kernels_of_their_own_are_not_marked_strided() -> None:
    """``cat`` (inputs of other shapes than its output) and padding run kernels of their
    own, not the elementwise one, so they are never marked strided."""

    class Joins(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.pad(torch.cat([a, b], dim=-1), (0, 2))

    tr = trace_module(
        Joins(), (torch.zeros(4, 8, device="meta"), torch.zeros(4, 8, device="meta")), "bf16"
    )
    ops = [o for o in tr if not o.zero_cost]
    assert {o.name for o in ops} >= {"cat"}
    assert not any(o.strided for o in ops)
