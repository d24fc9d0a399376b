"""The torch module of the decoder-only transformers (:class:`DecoderLM`).

Built and traced on the ``meta`` device to check the parametric graph of
:mod:`xpusim.plugins.models.transformer` (which holds the configuration and imports no
torch) and run for real by the measured ``cpu`` backend. Imported by
:meth:`~xpusim.plugins.models.transformer.DecoderModel.module`, so only a command that
builds a module pays for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from xpusim.engine.graph import OpKind
from xpusim.plugins.models.counting import NORM_FLOPS, SOFTCAP_FLOPS
from xpusim.plugins.models.tracing import causal_attention, fused_op
from xpusim.plugins.models.transformer import (
    ATTENTION_DROPOUT,
    GLU_FLOPS,
    ROPE_FLOPS,
    DecoderConfig,
)

__all__ = [
    "DecoderLM",
    "apply_rope",
    "qk_norm",
    "scale_mask_softmax",
    "softcap",
    "unfused_attention",
]


@fused_op("rope", OpKind.ELEMENTWISE, ROPE_FLOPS)
def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding (Su et al. 2021) of ``q`` and ``k`` (``[b, heads, t, d]``)
    with ``cos``/``sin`` tables of ``[t, d]``; one fused kernel for the tracer."""

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


@fused_op("qk_norm", OpKind.NORM, NORM_FLOPS)
def qk_norm(
    q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of every head's queries and keys over the head dimension, with one weight
    vector each (Qwen3, Gemma 3): one fused kernel for the tracer."""
    d = q.shape[-1]
    return F.rms_norm(q, (d,), wq, eps), F.rms_norm(k, (d,), wk, eps)


@fused_op("softcap", OpKind.ELEMENTWISE, SOFTCAP_FLOPS)
def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Logit soft-capping ``cap·tanh(x/cap)`` (Gemma 2's final logits): one fused kernel
    for the tracer."""
    return cap * torch.tanh(x / cap)


@fused_op("scale_mask_softmax", OpKind.SOFTMAX, NORM_FLOPS)
def scale_mask_softmax(scores: torch.Tensor, scale: float, offset: int) -> torch.Tensor:
    """``softmax(scale · scores)`` over the last dimension under a causal mask aligned
    bottom-right (query ``i`` sees keys ``≤ offset + i``; ``offset = keys − queries``),
    computed in fp32 and returned in the scores' dtype: Megatron-LM's fused
    scale+mask+softmax kernel (``FusedScaleMaskSoftmax`` with
    ``attention_softmax_in_fp32``; ``scaled_upper_triang_masked_softmax``), one op for the
    tracer that reads the scores and writes the probabilities."""
    q, k = scores.shape[-2], scores.shape[-1]
    keep = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(offset)
    x = (scores.float() * scale).masked_fill(~keep, float("-inf"))
    return torch.softmax(x, dim=-1).to(scores.dtype)


def unfused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    training: bool,
    dropout: float = ATTENTION_DROPOUT,
) -> torch.Tensor:
    """Causal attention as Megatron-LM ran it before FlashAttention (``attention: unfused``).

    ``q`` is ``[b, heads, t, d]``, ``k``/``v`` ``[b, kv_heads, keys, d]`` (the queries are
    the last ``t`` of ``keys`` positions); returns the context ``[b, t, heads·d]``.
    Following ``megatron/model/transformer.py`` (``ParallelSelfAttention`` of 2021, later
    ``CoreAttention``): K/V are repeated to every query head when there are fewer KV heads;
    ``QKᵀ`` is a batched GEMM that writes the ``t × keys`` scores of every head; a fused
    scale+mask+softmax (:func:`scale_mask_softmax`) rewrites them as probabilities; in
    training, dropout at rate ``dropout`` (when above 0) writes the dropped probabilities and a
    1-byte keep-mask (``native_dropout``, the fused CUDA kernel ``nn.Dropout`` runs); the
    ``PV`` batched GEMM writes the context, which one copy turns token-major (Megatron's
    ``permute(2, 0, 1, 3).contiguous()``).

    Megatron's activations are sequence-first, so its ``[b·heads, s, d]`` operands are
    views and each GEMM is one strided-batched launch; this module is batch-first, where no
    such view exists, so it runs one ``heads``-batched GEMM per sequence over the same
    operands (the same FLOPs and bytes, counted as one op by the parametric graph).
    """
    b, h, t, d = q.shape
    kv, keys = k.shape[1], k.shape[2]
    if kv != h:  # Megatron-LM's CoreAttention: key_layer.repeat(...), a copy per tensor
        g = h // kv
        k = k[:, :, None].expand(b, kv, g, keys, d).contiguous().view(b, h, keys, d)
        v = v[:, :, None].expand(b, kv, g, keys, d).contiguous().view(b, h, keys, d)
    scale = d**-0.5
    outs = []
    for i in range(b):
        probs = scale_mask_softmax(torch.bmm(q[i], k[i].transpose(1, 2)), scale, keys - t)
        if training and dropout > 0:
            probs, _ = torch.native_dropout(probs, dropout, True)
        outs.append(torch.bmm(probs, v[i]).transpose(0, 1))
    return torch.stack(outs).reshape(b, t, h * d)


_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
}


def _glu(act: str) -> Any:
    fn: Callable[[torch.Tensor], torch.Tensor] = _ACTS[act]

    @fused_op("glu", OpKind.ELEMENTWISE, GLU_FLOPS)
    def glu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Gated activation ``act(g)·u`` (SwiGLU for silu; Shazeer 2020)."""
        return fn(g) * u

    return glu


def _norm(cfg: DecoderConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, bias=cfg.bias)


class Attention(nn.Module):
    """Causal self-attention with a fused QKV projection, GQA/MQA and a KV cache; the
    core runs as one fused kernel (``attention: flash``) or as Megatron-LM's separate
    kernels (``attention: unfused``, :func:`unfused_attention`)."""

    def __init__(self, cfg: DecoderConfig, layer: int = 0) -> None:
        super().__init__()
        self.h, self.kv, self.d = cfg.heads, cfg.kv, cfg.d
        self.window = cfg.sliding_window if cfg.is_sliding(layer) else None
        self.softcap = cfg.attn_softcap
        self.unfused = cfg.attention == "unfused"
        self.dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden, (self.h + 2 * self.kv) * self.d, bias=cfg.has_qkv_bias)
        self.out = nn.Linear(self.h * self.d, cfg.hidden, bias=cfg.bias)
        self.eps = cfg.norm_eps
        self.q_norm = nn.RMSNorm(self.d, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.d, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None,
        start: int,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.kv * self.d, self.kv * self.d], -1)
        q = q.view(b, t, self.h, self.d).transpose(1, 2)
        k = k.view(b, t, self.kv, self.d).transpose(1, 2)
        v = v.view(b, t, self.kv, self.d).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qk_norm(q, k, self.q_norm.weight, self.k_norm.weight, self.eps)
        if cos is not None and sin is not None:
            q, k = apply_rope(q, k, cos, sin)
        if cache is not None:  # [2, b, kv, max_len, d]: write the new tokens, read all
            cache[0, :, :, start : start + t].copy_(k)
            cache[1, :, :, start : start + t].copy_(v)
            k, v = cache[0, :, :, : start + t], cache[1, :, :, : start + t]
        if self.unfused:
            return self.out(unfused_attention(q, k, v, self.training, self.dropout))
        keys = k.shape[2]
        gqa = self.kv != self.h
        if self.window is not None or self.softcap is not None:
            if self.window is not None:  # the kernel reads only the window's keys
                keep = min(keys, self.window + t - 1)
                k, v = k[:, :, keys - keep :], v[:, :, keys - keep :]
            o = causal_attention(q, k, v, gqa, self.window, self.softcap)
        elif t == 1:
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif keys == t:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # a prefill chunk after `start` cached tokens
            o = causal_attention(q, k, v, enable_gqa=gqa)
        return self.out(o.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434, §2.1) over a cache of
    ``[b, max_len, kv_lora_rank + qk_rope_head_dim]`` per layer: the compressed latent and
    the shared rotary key.

    The query is projected through its own low rank (``q_lora_rank``) or directly; the
    joint KV down-projection gives the latent (normed) and the rotary key. One new token
    over a cache (decode) runs the absorbed form: each head's query is mapped into the
    latent space by ``W_UK`` (a GEMM batched over heads), attention reads the latent
    once for all heads (one KV head, values = the latent's leading channels) and each
    head's output is mapped back by ``W_UV`` and laid out token-major (vLLM's
    ``_v_up_proj``). Otherwise the expanded form up-projects the latent of every key to
    per-head keys and values and attends per head.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, self.nh, self.d = cfg.hidden, cfg.heads, cfg.d
        self.r, self.dv, self.ckv = (
            cfg.qk_rope_head_dim or 0,
            cfg.v_head_dim or 0,
            cfg.kv_lora_rank or 0,
        )
        self.dn = self.d - self.r
        cq = cfg.q_lora_rank
        self.q_a = nn.Linear(h, cq, bias=False) if cq else None
        self.q_a_norm = nn.RMSNorm(cq, eps=cfg.norm_eps) if cq else None
        self.q = nn.Linear(cq or h, self.nh * self.d, bias=False)
        self.kv_a = nn.Linear(h, self.ckv + self.r, bias=False)
        self.kv_a_norm = nn.RMSNorm(self.ckv, eps=cfg.norm_eps)
        self.kv_b = nn.Linear(self.ckv, self.nh * (self.dn + self.dv), bias=False)
        self.out = nn.Linear(self.nh * self.dv, h, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None,
        start: int,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        nh, dn, dv, r, ckv = self.nh, self.dn, self.dv, self.r, self.ckv
        xq = x if self.q_a is None or self.q_a_norm is None else self.q_a_norm(self.q_a(x))
        q = self.q(xq).view(b, t, nh, self.d).transpose(1, 2)
        q_nope, q_pe = q.split([dn, r], dim=-1)
        c, k_pe = self.kv_a(x).split([ckv, r], dim=-1)
        c = self.kv_a_norm(c)
        k_pe = k_pe.view(b, t, 1, r).transpose(1, 2)
        if cos is not None and sin is not None:
            q_pe, k_pe = apply_rope(q_pe, k_pe, cos, sin)
        if cache is not None:  # [b, max_len, ckv + r]: write the new tokens' latent
            cache[:, start : start + t, :ckv].copy_(c)
            cache[:, start : start + t, ckv:].copy_(k_pe[:, 0])
        w = self.kv_b.weight.view(nh, dn + dv, ckv)
        if cache is not None and t == 1:  # decode: the absorbed form
            lat = cache[:, : start + t].unsqueeze(1)
            q_lat = torch.bmm(q_nope.permute(1, 0, 2, 3).reshape(nh, b * t, dn), w[:, :dn])
            qq = torch.cat([q_lat.view(nh, b, t, ckv).permute(1, 0, 2, 3), q_pe], dim=-1)
            o = causal_attention(qq, lat, lat[..., :ckv], True, v_in_k=True, scale=self.d**-0.5)
            y = torch.bmm(o.permute(1, 0, 2, 3).reshape(nh, b * t, ckv), w[:, dn:].transpose(1, 2))
            return self.out(y.transpose(0, 1).reshape(b, t, nh * dv))
        if cache is not None:  # the expanded form over every cached key
            lat = cache[:, : start + t]
            c_all, kpe_all = lat[..., :ckv], lat[..., ckv:].unsqueeze(1)
        else:
            c_all, kpe_all = c, k_pe
        keys = c_all.shape[1]
        k_nope, v = self.kv_b(c_all).view(b, keys, nh, dn + dv).transpose(1, 2).split([dn, dv], -1)
        k = torch.cat([k_nope, kpe_all.expand(b, nh, keys, r)], dim=-1)
        o = causal_attention(torch.cat([q_nope, q_pe], dim=-1), k, v)
        return self.out(o.transpose(1, 2).reshape(b, t, nh * dv))


class MLP(nn.Module):
    """Dense MLP: ``fc2(act(fc1 x))`` or, gated, ``down(act(gate x)·up x)`` with a fused
    gate/up projection."""

    def __init__(self, cfg: DecoderConfig, ffn: int | None = None) -> None:
        super().__init__()
        self.gated = cfg.gated_mlp
        f = ffn or cfg.ffn
        self.up = nn.Linear(cfg.hidden, 2 * f if self.gated else f, bias=cfg.bias)
        self.down = nn.Linear(f, cfg.hidden, bias=cfg.bias)
        self.glu = _glu(cfg.activation)
        self.act: Callable[[torch.Tensor], torch.Tensor] = _ACTS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(x)
        if self.gated:
            g, u = y.chunk(2, dim=-1)
            y = self.glu(g, u)
        else:
            y = self.act(y)
        return self.down(y)


class MoE(nn.Module):
    """Top-k mixture of experts with balanced-capacity dispatch.

    Tokens are routed by a linear router, the top-k logits softmaxed (Mixtral), the
    (token, expert) pairs sorted by expert and cut into ``E`` equal slices of
    ``C = T·k/E`` rows that batched GEMMs process. The shapes are those of perfectly
    balanced routing with capacity factor 1, which is what the cost model assumes; the
    numerics are not a faithful Mixtral (a slice may hold another expert's tokens).
    DeepSeek's routing bias is added to the logits before the top-k, and its shared
    experts (one dense MLP of ``shared_ffn_hidden``) add their output to every token's.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.e, self.k, h, f = cfg.experts, cfg.top_k, cfg.hidden, cfg.ffn
        self.gated = cfg.gated_mlp
        self.router = nn.Linear(h, self.e, bias=False)
        self.w_up = nn.Parameter(torch.empty(self.e, h, 2 * f if self.gated else f))
        self.w_down = nn.Parameter(torch.empty(self.e, f, h))
        nn.init.normal_(self.w_up, std=h**-0.5)
        nn.init.normal_(self.w_down, std=f**-0.5)
        self.glu = _glu(cfg.activation)
        self.act: Callable[[torch.Tensor], torch.Tensor] = _ACTS[cfg.activation]
        self.route_bias = nn.Parameter(torch.zeros(self.e)) if cfg.router_bias else None
        self.shared = MLP(cfg, cfg.shared_ffn) if cfg.shared_ffn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n = x.shape[0]
        logits = self.router(x)
        if self.route_bias is not None:  # DeepSeek-V3: a per-expert bias steers the choice
            logits = logits + self.route_bias
        topv, topi = torch.topk(logits, self.k, dim=-1)
        weights = F.softmax(topv, dim=-1)
        order = torch.argsort(topi.reshape(-1))
        token = torch.floor_divide(order, self.k)
        xs = x.index_select(0, token)
        rows = n * self.k
        cap = -(-rows // self.e)
        if cap * self.e != rows:
            xs = F.pad(xs, (0, 0, 0, cap * self.e - rows))
        y = torch.bmm(xs.view(self.e, cap, -1), self.w_up)
        if self.gated:
            g, u = y.chunk(2, dim=-1)
            y = self.glu(g, u)
        else:
            y = self.act(y)
        y = torch.bmm(y, self.w_down).view(cap * self.e, -1)[:rows]
        w = weights.reshape(-1).index_select(0, order)
        y = y * w.unsqueeze(-1)
        out = torch.zeros_like(x).index_add_(0, token, y)
        if self.shared is not None:  # the shared experts see every token
            out = out + self.shared(x)
        return out.view(shape)


@fused_op("dropout_add", OpKind.ELEMENTWISE, 1.0)
def dropout_add(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x + dropout(y)`` and the dropout's 1-byte keep-mask, as Megatron-LM's fused
    bias-dropout-add kernel runs it (one kernel: reads both, writes the sum and the mask;
    one scaling and one add per element)."""
    dropped, mask = torch.native_dropout(y, p, True)
    return x + dropped, mask


class Block(nn.Module):
    """One transformer layer: pre-norm serial (``x + attn(ln x)``, ``x + mlp(ln x)``; with
    ``sandwich_norm`` each branch output normed again before the residual, Gemma 2/3) or
    parallel (``x + attn(ln x) + mlp(ln x)``, PaLM)."""

    def __init__(self, cfg: DecoderConfig, layer: int = 0) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.p_drop = cfg.hidden_dropout
        self.ln1 = _norm(cfg)
        self.ln2 = None if self.parallel else _norm(cfg)
        self.ln1_post = _norm(cfg) if cfg.sandwich_norm else None
        self.ln2_post = _norm(cfg) if cfg.sandwich_norm else None
        self.attn: nn.Module = MLAttention(cfg) if cfg.mla else Attention(cfg, layer)
        self.mlp: nn.Module = (
            MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg, cfg.dense_ffn if cfg.moe else None)
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None,
        start: int,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.ln1(x)
        if self.ln2 is None:
            x = self._add(x, self.attn(h, cache, start, cos, sin))
            return self._add(x, self.mlp(h))
        a = self.attn(h, cache, start, cos, sin)
        x = self._add(x, a if self.ln1_post is None else self.ln1_post(a))
        m = self.mlp(self.ln2(x))
        return self._add(x, m if self.ln2_post is None else self.ln2_post(m))

    def _add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual add of a branch's output ``y``, through the hidden dropout in
        training (``hidden_dropout``)."""
        if self.training and self.p_drop > 0:
            return dropout_add(x, y, self.p_drop)[0]
        return x + y


class DecoderLM(nn.Module):
    """A decoder-only language model.

    ``forward(ids, kv_cache=None, start=0, last_only=False)``: ``ids`` ``[b, t]`` new
    tokens at positions ``start …start+t``; ``kv_cache`` ``[layers, 2, b, kv_heads,
    max_len, head_dim]`` receives their keys and values and supplies the ``start`` earlier
    ones; ``last_only`` computes logits for the last token of each sequence (serving)
    instead of every token (scoring, training).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.pos = nn.Embedding(cfg.seq_len, cfg.hidden) if cfg.position == "learned" else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = _norm(cfg)
        self.head = None if cfg.tied_embeddings else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        if cfg.position == "rope":
            d = cfg.qk_rope_head_dim or cfg.d if cfg.mla else cfg.d
            inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            ang = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv)
            ang = torch.cat((ang, ang), dim=-1)
            self.register_buffer("cos", ang.cos(), persistent=False)
            self.register_buffer("sin", ang.sin(), persistent=False)
        else:
            self.cos = self.sin = None

    def forward(
        self,
        ids: torch.Tensor,
        kv_cache: torch.Tensor | None = None,
        start: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        t = ids.shape[1]
        if start + t > self.cfg.seq_len:
            raise ValueError(f"positions up to {start + t} exceed seq_len {self.cfg.seq_len}")
        x = self.embed(ids)
        if self.pos is not None:
            x = x + self.pos.weight[start : start + t]
        cos = self.cos[start : start + t] if self.cos is not None else None
        sin = self.sin[start : start + t] if self.sin is not None else None
        for i, layer in enumerate(self.layers):
            x = layer(x, None if kv_cache is None else kv_cache[i], start, cos, sin)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        if self.cfg.final_softcap is not None:
            logits = softcap(logits, self.cfg.final_softcap)
        return logits
