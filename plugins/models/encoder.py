"""Encoder-only transformers: the ``bert`` family.

BERT (Devlin et al. 2019): word + learned position + token-type embeddings, an embedding
LayerNorm, post-norm layers (``LN(x + attn(x))``, ``LN(x + mlp(x))``) with bidirectional
multi-head attention and a GELU MLP, all with biases, and the tanh pooler over the first
token. :meth:`EncoderModel.build` is parametric for FORWARD (and TRAIN) and equal to the
meta trace of :class:`BertModel` under the rules of :mod:`xpusim.plugins.models.tracing`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator
from torch import nn

from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelFamily, ModelInfo
from xpusim.engine.system import Parallelism, divisors, near_divisors
from xpusim.plugins.models.common import (
    EagerCounted,
    ModelDtype,
    adam_op,
    backward_ops,
    recompute_ops,
    torch_dtype,
    validate_spec,
)
from xpusim.plugins.models.counting import NORM_FLOPS
from xpusim.plugins.models.presets import ENCODER_PRESETS, ENCODER_SOURCES
from xpusim.plugins.models.transformer import INDEX_BYTES, OpKey, _Builder

__all__ = ["FAMILIES", "BertModel", "EncoderConfig", "EncoderModel"]


class EncoderConfig(BaseModel):
    """The architecture of a BERT-style encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "bert"
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    ffn_hidden: PositiveInt | None = None
    vocab: PositiveInt = 30522
    seq_len: PositiveInt = 512
    type_vocab: PositiveInt = 2
    norm_eps: float = 1e-12
    dtype: ModelDtype = "bf16"

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.hidden % self.heads:
            raise ValueError(
                f"heads={self.heads} must divide hidden={self.hidden}; divisors near "
                f"{self.heads}: {near_divisors(self.hidden, self.heads)}"
            )
        return self

    @property
    def ffn(self) -> int:
        """MLP hidden size (4·hidden by default)."""
        return self.ffn_hidden or 4 * self.hidden


class _EncoderLayer(nn.Module):
    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.h, self.d = c.heads, c.hidden // c.heads
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.out = nn.Linear(c.hidden, c.hidden)
        self.ln1 = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.hidden, c.ffn)
        self.fc2 = nn.Linear(c.ffn, c.hidden)
        self.ln2 = nn.LayerNorm(c.hidden, eps=c.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, hid = x.shape
        q, k, v = (y.view(b, t, self.h, self.d).transpose(1, 2) for y in self.qkv(x).split(hid, -1))
        o = F.scaled_dot_product_attention(q, k, v)
        x = self.ln1(x + self.out(o.transpose(1, 2).reshape(b, t, hid)))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class BertModel(nn.Module):
    """BERT: ``forward(ids) -> (sequence_output, pooled_output)``; token types all 0."""

    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(c.vocab, c.hidden)
        self.pos = nn.Embedding(c.seq_len, c.hidden)
        self.token_type = nn.Embedding(c.type_vocab, c.hidden)
        self.ln = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(c) for _ in range(c.layers))
        self.pooler = nn.Linear(c.hidden, c.hidden)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = ids.shape[1]
        x = self.word(ids) + self.pos.weight[:t]
        x = self.ln(x + self.token_type.weight[0])
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pooler(x[:, 0]))


class EncoderModel(EagerCounted):
    """A configured BERT encoder; FORWARD and TRAIN graphs, parametric and memoized.

    Tensor parallelism splits heads and the MLP Megatron-style with two all-reduces per
    layer; pipeline parallelism keeps ``ceil(layers/p)`` layers (the last stage, with the
    pooler).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg
        self._graphs: dict[tuple[Shape, Parallelism | None], OpGraph] = {}
        self._ops: dict[OpKey, Op] = {}  # the builder's intern table
        c = cfg
        h, f = c.hidden, c.ffn
        layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
        emb = (c.vocab + c.seq_len + c.type_vocab) * h + 2 * h
        total = c.layers * layer + emb + h * h + h
        e = dtype_bytes(c.dtype)
        self.info = ModelInfo(
            name=c.name,
            family="bert",
            kind="encoder",
            dtype=c.dtype,
            params=float(total),
            active_params=float(total),
            param_bytes=float(total * e),
            flops_per_token=float(2 * c.layers * (4 * h * h + 2 * h * f)),
            layers=c.layers,
            max_seq_len=c.seq_len,
            config=c.model_dump(),
        )

    def module(self, device: str = "meta") -> torch.nn.Module:
        """A :class:`BertModel` on ``device``."""
        with torch.device(device):
            m = BertModel(self.cfg)
        return m.to(torch_dtype(self.cfg.dtype))

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """``(ids,)`` of ``[batch, tokens]``."""
        return (torch.zeros(shape.batch, shape.tokens, dtype=torch.long, device=device),)

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """FORWARD (or TRAIN) graph of one device (memoized)."""
        key = (shape, parallel)
        g = self._graphs.get(key)
        if g is None:
            g = self._build(shape, parallel or Parallelism())
            self._graphs[key] = g
        return g

    def _build(self, shape: Shape, par: Parallelism) -> OpGraph:
        c = self.cfg
        if shape.phase not in (Phase.FORWARD, Phase.TRAIN):
            raise UnsupportedError(
                f"encoder {c.name!r} runs forward and train steps, not {shape.phase.value}"
            )
        t = par.tensor
        if c.heads % t or c.ffn % t:
            raise ScenarioError(
                f"parallelism.tensor={t} must divide heads={c.heads} and ffn_hidden={c.ffn}; "
                f"valid: {divisors(math.gcd(c.heads, c.ffn))}"
            )
        if shape.tokens > c.seq_len:
            raise ScenarioError(f"{shape.tokens} tokens exceed seq_len {c.seq_len} of {c.name!r}")
        n_l = math.ceil(c.layers / par.pipeline)
        bsz, s, h = shape.batch, shape.tokens, c.hidden
        big_t = bsz * s
        hd, d, f = c.heads // t, h // c.heads, c.ffn // t
        e = dtype_bytes(c.dtype)
        b = _Builder(c.dtype, n_l, self._ops)

        def norm(name: str, count: int | None = None, layer: str = "layer") -> None:
            b.ew(
                name,
                OpKind.NORM,
                big_t * h,
                big_t * h + 2 * h,
                big_t * h,
                NORM_FLOPS * big_t * h,
                2 * h,
                count,
                layer,
            )

        def add(name: str) -> None:
            b.ew(name, OpKind.ELEMENTWISE, big_t * h, 2 * big_t * h, big_t * h, big_t * h)

        def reduce(name: str) -> None:
            if t > 1:
                b.coll(f"{name}.all_reduce", Collective.ALL_REDUCE, big_t * h * e, t)

        if par.pipeline == 1:
            b.raw(
                "embed",
                OpKind.EMBEDDING,
                big_t * h,
                big_t * INDEX_BYTES + big_t * h * e,
                big_t * h * e,
                0.0,
                big_t * h * e,
                count=1,
                layer="embed",
            )
            b.ew(
                "pos_embed.add",
                OpKind.ELEMENTWISE,
                big_t * h,
                big_t * h + s * h,
                big_t * h,
                big_t * h,
                s * h,
                count=1,
                layer="embed",
            )
            b.ew(
                "type_embed.add",
                OpKind.ELEMENTWISE,
                big_t * h,
                big_t * h + h,
                big_t * h,
                big_t * h,
                h,
                count=1,
                layer="embed",
            )
            norm("embed.ln", count=1, layer="embed")
        start = len(b.ops)
        b.gemm("attn.qkv", big_t, 3 * hd * d, h, True)
        b.ops.append(
            Op(
                name="attn.core",
                kind=OpKind.ATTENTION,
                flops=4.0 * d * s * s * hd * bsz,
                bytes_read=3 * big_t * hd * d * e,
                bytes_written=big_t * hd * d * e,
                dims=(s, s, d),
                batch=hd * bsz,
                count=n_l,
                dtype=c.dtype,
                layer="layer",
                attrs=(("causal", 0.0),),
            )
        )
        b.gemm("attn.out", big_t, h, hd * d, True)
        reduce("attn")
        add("attn.residual")
        norm("ln1")
        b.gemm("mlp.fc1", big_t, f, h, True)
        b.ew("mlp.gelu", OpKind.ELEMENTWISE, big_t * f, big_t * f, big_t * f, big_t * f)
        b.gemm("mlp.fc2", big_t, h, f, True)
        reduce("mlp")
        add("mlp.residual")
        norm("ln2")
        layer_ops = b.ops[start:]
        b.gemm("pooler.dense", bsz, h, h, True, count=1, layer="head")
        b.ew(
            "pooler.tanh",
            OpKind.ELEMENTWISE,
            bsz * h,
            bsz * h,
            bsz * h,
            bsz * h,
            count=1,
            layer="head",
        )
        ops = list(b.ops)
        notes = [
            f"encoder {c.name}: {n_l} of {c.layers} layers on this device; "
            "bidirectional attention (no causal halving)"
        ]
        if shape.phase is Phase.TRAIN:
            extra = []
            if shape.recompute == "full":
                extra = recompute_ops(layer_ops)
            elif shape.recompute == "selective":
                extra = recompute_ops(o for o in layer_ops if o.kind is OpKind.ATTENTION)
            params = self.info.params / (t * par.pipeline)
            ops = ops + extra + backward_ops(ops) + [adam_op(params, c.dtype, par)]
        return OpGraph(
            phase=shape.phase, ops=tuple(ops), shape=shape, dtype=c.dtype, notes=tuple(notes)
        )


class EncoderFamily(ModelFamily):
    """The ``bert`` family."""

    name = "bert"
    description = "BERT encoder: post-norm layers, bidirectional MHA, GELU MLP, pooler"
    presets: Mapping[str, Mapping[str, Any]] = ENCODER_PRESETS
    presets_sources: Mapping[str, str] = ENCODER_SOURCES

    def configure(self, spec: Mapping[str, Any]) -> EncoderModel:
        """Validate ``preset`` + overrides into an :class:`EncoderModel`."""
        cfg, _ = validate_spec(EncoderConfig, spec, self.name, self.presets)
        return EncoderModel(cfg)


FAMILIES: list[ModelFamily] = [EncoderFamily()]
"""The encoder families this module registers."""
