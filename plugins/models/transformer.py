"""Decoder-only transformers: the ``gpt``, ``llama``, ``mixtral`` and ``palm`` families.

One architecture covers all four; the families differ in their default traits:

========  ==========  ========  =====  ==========  ========  ============  ======
family    norm        position  bias   MLP         block     attention     tied
========  ==========  ========  =====  ==========  ========  ============  ======
gpt       LayerNorm   learned   yes    GELU        serial    MHA           yes
llama     RMSNorm     RoPE      no     SwiGLU      serial    GQA           no
mixtral   RMSNorm     RoPE      no     SwiGLU MoE  serial    GQA           no
palm      LayerNorm   RoPE      no     SwiGLU      parallel  MQA           yes
========  ==========  ========  =====  ==========  ========  ============  ======

Each configuration builds a real ``torch.nn.Module``
(:class:`~xpusim.plugins.models.decoder_module.DecoderLM`) and a **parametric** graph
builder (:meth:`DecoderModel.build`) that writes, for any shape and parallel plan, the
same ops the module runs, counted by the rules of :mod:`xpusim.plugins.models.tracing`;
``tests/test_transformer.py`` checks the two against each other. See ``docs/models.md``
for the counting rules and the sources of the presets.

This module (configuration, parameter counts, the parametric graph and the families)
does not import torch, so a scenario is validated and simulated without it; the torch
module lives in :mod:`xpusim.plugins.models.decoder_module`, imported by
:meth:`DecoderModel.module` when a module is really built or traced.

Any family runs its attention core as one fused kernel (``attention: flash``, default) or
as Megatron-LM's separate kernels over a materialized score matrix (``attention:
unfused``, :func:`~xpusim.plugins.models.decoder_module.unfused_attention`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator

from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelFamily, ModelInfo
from xpusim.engine.system import Parallelism, divisors, near_divisors
from xpusim.plugins.models.common import (
    EagerCounted,
    adam_op,
    backward_ops,
    collective,
    recompute_ops,
    torch_dtype,
    validate_spec,
)
from xpusim.plugins.models.counting import NORM_FLOPS, causal_pairs
from xpusim.plugins.models.presets import DECODER_PRESETS, DECODER_SOURCES

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "GPT",
    "LLAMA",
    "MIXTRAL",
    "PALM",
    "DecoderConfig",
    "DecoderFamily",
    "DecoderModel",
]

ROPE_FLOPS = 3
"""FLOPs per rotated element of the fused RoPE kernel (``x·cos + rot(x)·sin``)."""
GLU_FLOPS = 2
"""FLOPs per output element of the fused gated activation (``act(g)·u``)."""
INDEX_BYTES = 8
"""Bytes of one token id or routing index (int64)."""
ATTENTION_DROPOUT = 0.1
"""Attention-dropout probability of ``attention: unfused`` in training: Megatron-LM's
default (``megatron/arguments.py``, ``--attention-dropout``, default 0.1). Its cost does
not depend on the value, only that it is nonzero (a zero rate launches no kernel)."""
DROPOUT_MASK_BYTES = 1
"""Bytes per element of the keep-mask a fused dropout kernel writes (``native_dropout``
returns a ``bool`` mask)."""


# --- configuration -----------------------------------------------------------------------


class DecoderConfig(BaseModel):
    """The architecture of one decoder-only transformer (validated, immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "decoder"
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    ffn_hidden: PositiveInt | None = None
    vocab: PositiveInt
    seq_len: PositiveInt = 2048
    gated_mlp: bool = False
    experts: PositiveInt = 1
    top_k: PositiveInt = 1
    parallel_block: bool = False
    tied_embeddings: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["learned", "rope"] = "learned"
    bias: bool = False
    activation: Literal["gelu", "silu", "relu"] = "gelu"
    attention: Literal["flash", "unfused"] = "flash"
    """How the attention core runs. ``flash``: one fused kernel that reads Q, K, V once
    and never stores the score matrix (FlashAttention). ``unfused``: Megatron-LM's
    separate kernels that materialize the ``s_q × s_k`` scores of every head: the
    ``QKᵀ`` batched GEMM, a fused scale+mask+softmax, attention dropout when training,
    the ``PV`` batched GEMM and a copy of the context into token-major layout (see
    :func:`unfused_attention` and ``docs/models.md``)."""
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dtype: Literal["fp32", "fp16", "bf16", "fp8", "int8"] = "bf16"
    kv_dtype: Literal["fp32", "fp16", "bf16", "fp8", "int8"] | None = None
    """Element type of the KV cache. ``None`` (default) follows ``dtype`` for 16/32-bit
    models and keeps a 16-bit (``bf16``) cache for ``fp8``/``int8`` models: weight and
    activation quantization leaves the cache in 16 bits unless an 8-bit cache is asked for
    (TensorRT-LLM v0.6.1 ``docs/source/gpt_attention.md``, "INT8/FP8 KV Caches": the
    attention operator works with FP16/BF16 and quantized caches are opt-in through
    ``kv_cache_quant_mode`` / ``--fp8_kv_cache``; vLLM's ``kv_cache_dtype`` defaults to
    ``auto``, the model's 16-bit dtype)."""

    @model_validator(mode="after")
    def _check(self) -> DecoderConfig:
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(
                f"heads={self.heads} must divide hidden={self.hidden} (or give head_dim); "
                f"divisors of {self.hidden} near {self.heads}: "
                f"{near_divisors(self.hidden, self.heads)}"
            )
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise ValueError(
                f"kv_heads={kv} must divide heads={self.heads}; valid kv_heads: "
                f"{divisors(self.heads)}"
            )
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} exceeds experts={self.experts}")
        if self.position == "rope" and self.d % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.d}")
        return self

    @property
    def d(self) -> int:
        """Head dimension."""
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_type(self) -> str:
        """The KV cache's element type (``kv_dtype``, or its default; see the field)."""
        if self.kv_dtype is not None:
            return self.kv_dtype
        return "bf16" if self.dtype in ("fp8", "int8") else self.dtype

    @property
    def kv(self) -> int:
        """KV heads (``heads`` for MHA, 1 for MQA)."""
        return self.kv_heads or self.heads

    @property
    def ffn(self) -> int:
        """MLP (per expert) hidden size."""
        return self.ffn_hidden or 4 * self.hidden

    @property
    def moe(self) -> bool:
        """Whether the MLP is a mixture of experts."""
        return self.experts > 1


# --- the parametric graph ----------------------------------------------------------------


class _Builder:
    """Writes the ops of one step; ``ops`` in execution order. All quantities per device."""

    def __init__(self, dtype: str, count: int) -> None:
        self.e = float(dtype_bytes(dtype))
        self.dtype = dtype
        self.count = count
        self.ops: list[Op] = []

    def gemm(
        self,
        name: str,
        m: int,
        n: int,
        k: int,
        bias: bool,
        batch: int = 1,
        weight_batch: float | None = None,
        count: int | None = None,
        layer: str = "layer",
    ) -> None:
        """A GEMM ``[m,k]x[k,n]`` (``batch`` times) whose right operand is a weight."""
        e = self.e
        wb = batch if weight_batch is None else weight_batch
        w = wb * n * k * e + (n * e if bias else 0.0)
        self.ops.append(
            Op(
                name=name,
                kind=OpKind.MATMUL,
                flops=2.0 * batch * m * n * k,
                bytes_read=batch * m * k * e + w,
                bytes_written=batch * m * n * e,
                param_bytes=w,
                dims=(m, n, k),
                batch=batch,
                count=self.count if count is None else count,
                dtype=self.dtype,
                layer=layer,
            )
        )

    def ew(
        self,
        name: str,
        kind: OpKind,
        elements: float,
        read: float,
        written: float,
        flops: float = 0.0,
        params: float = 0.0,
        count: int | None = None,
        layer: str = "layer",
    ) -> None:
        """A memory-bound op; ``read``/``written``/``params`` in elements of ``dtype``
        unless given as bytes through :meth:`raw`."""
        self.raw(
            name,
            kind,
            elements,
            read * self.e,
            written * self.e,
            flops,
            params * self.e,
            count,
            layer,
        )

    def raw(
        self,
        name: str,
        kind: OpKind,
        elements: float,
        read_b: float,
        written_b: float,
        flops: float = 0.0,
        params_b: float = 0.0,
        count: int | None = None,
        layer: str = "layer",
    ) -> None:
        self.ops.append(
            Op(
                name=name,
                kind=kind,
                flops=flops,
                bytes_read=read_b,
                bytes_written=written_b,
                param_bytes=params_b,
                dims=(max(1, math.ceil(elements)),),
                count=self.count if count is None else count,
                dtype=self.dtype,
                layer=layer,
            )
        )

    def coll(
        self,
        name: str,
        kind: Collective,
        nbytes: float,
        group: int,
        count: int | None = None,
        layer: str = "layer",
    ) -> None:
        self.ops.append(
            collective(
                name, kind, nbytes, group, self.count if count is None else count, self.dtype, layer
            )
        )


class DecoderModel(EagerCounted):
    """A configured decoder-only transformer (see the module docstring).

    :meth:`build` is parametric (no tracing) and memoized per ``(shape, parallel)``.
    Under ``pipeline = p`` the graph is the **last** stage: ``ceil(layers/p)`` layers plus
    the final norm and LM head, the largest and slowest stage (the first stage holds the
    embedding lookup instead of the head, which is far cheaper).
    """

    def __init__(self, cfg: DecoderConfig, family: str) -> None:
        self.cfg = cfg
        self.family = family
        self._graphs: dict[tuple[Shape, Parallelism | None], OpGraph] = {}
        self.info = self._info()

    # static facts ----------------------------------------------------------------------

    def _layer_params(self) -> tuple[float, float, float]:
        """(attention+norm params, all MLP params, active MLP params) of one layer."""
        c = self.cfg
        h, d, nh, kv, f = c.hidden, c.d, c.heads, c.kv, c.ffn
        attn = h * (nh + 2 * kv) * d + nh * d * h
        if c.bias:
            attn += (nh + 2 * kv) * d + h
        norm_p = h * (2 if c.norm == "layernorm" and c.bias else 1)
        attn += norm_p * (1 if c.parallel_block else 2)
        up = h * f * (2 if c.gated_mlp else 1)
        expert = up + f * h
        if c.moe:
            return attn, c.experts * expert + h * c.experts, c.top_k * expert + h * c.experts
        if c.bias:
            expert += f * (2 if c.gated_mlp else 1) + h
        return attn, expert, expert

    def _info(self) -> ModelInfo:
        c = self.cfg
        attn, mlp, mlp_act = self._layer_params()
        emb = c.vocab * c.hidden
        pos = c.seq_len * c.hidden if c.position == "learned" else 0
        head = 0 if c.tied_embeddings else emb
        norm_f = c.hidden * (2 if c.norm == "layernorm" and c.bias else 1)
        total = c.layers * (attn + mlp) + emb + pos + head + norm_f
        active = c.layers * (attn + mlp_act) + emb + pos + head + norm_f
        e = dtype_bytes(c.dtype)
        gemm_per_tok = c.layers * (
            c.hidden * (c.heads + 2 * c.kv) * c.d
            + c.heads * c.d * c.hidden
            + (mlp_act - (c.hidden * c.experts if c.moe else 0))
        )
        return ModelInfo(
            name=c.name,
            family=self.family,
            kind="decoder",
            dtype=c.dtype,
            params=float(total),
            active_params=float(active),
            param_bytes=float(total * e),
            kv_bytes_per_token=float(2 * c.layers * c.kv * c.d * dtype_bytes(c.kv_type)),
            flops_per_token=float(2 * (gemm_per_tok + c.vocab * c.hidden)),
            layers=c.layers,
            max_seq_len=c.seq_len,
            config=c.model_dump(),
        )

    # torch -------------------------------------------------------------------------------

    def module(self, device: str = "meta") -> torch.nn.Module:
        """A :class:`~xpusim.plugins.models.decoder_module.DecoderLM` on ``device`` in the
        config's dtype (bf16 for fp8/int8). Imports torch."""
        import torch

        from xpusim.plugins.models.decoder_module import DecoderLM

        with torch.device(device):
            m = DecoderLM(self.cfg)
        return m.to(torch_dtype(self.cfg.dtype))

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """``(ids, kv_cache, start, last_only)`` for PREFILL/DECODE (cache of
        ``context+tokens`` positions), ``(ids,)`` for FORWARD/TRAIN. Imports torch."""
        import torch

        c = self.cfg
        ids = torch.zeros(shape.batch, shape.tokens, dtype=torch.long, device=device)
        if shape.phase in (Phase.FORWARD, Phase.TRAIN):
            return (ids,)
        if shape.phase not in (Phase.PREFILL, Phase.DECODE):
            raise ValueError(f"no single-module inputs for phase {shape.phase.value}")
        cache = torch.zeros(
            c.layers,
            2,
            shape.batch,
            c.kv,
            shape.context + shape.tokens,
            c.d,
            dtype=torch_dtype(c.dtype),
            device=device,
        )
        return (ids, cache, shape.context, True)

    # graphs --------------------------------------------------------------------------------

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """The op graph of one device for ``shape`` under ``parallel`` (memoized)."""
        key = (shape, parallel)
        g = self._graphs.get(key)
        if g is None:
            g = self._build(shape, parallel or Parallelism())
            self._graphs[key] = g
        return g

    def _check_parallel(self, par: Parallelism) -> None:
        c = self.cfg
        t = par.tensor
        problems = []
        if c.heads % t:
            problems.append(f"heads={c.heads}")
        if c.ffn % t:
            problems.append(f"ffn_hidden={c.ffn}")
        if problems:
            raise ScenarioError(
                f"parallelism.tensor={t} must divide {' and '.join(problems)} of model "
                f"{c.name!r}; valid tensor degrees: {divisors(math.gcd(c.heads, c.ffn))}"
            )
        if c.moe and c.experts % par.expert:
            raise ScenarioError(
                f"parallelism.expert={par.expert} must divide experts={c.experts}; valid: "
                f"{divisors(c.experts)}"
            )
        if par.pipeline > c.layers:
            raise ScenarioError(
                f"parallelism.pipeline={par.pipeline} exceeds the {c.layers} layers of {c.name!r}"
            )

    def _build(self, shape: Shape, par: Parallelism) -> OpGraph:
        c = self.cfg
        self._check_parallel(par)
        phase = shape.phase
        if phase in (Phase.SPIKING, Phase.BACKWARD):
            raise UnsupportedError(f"decoder {c.name!r} has no {phase.value} phase")
        if phase is Phase.MIXED:
            parts = shape.parts or ()
            for p in parts:
                if p.phase not in (Phase.PREFILL, Phase.DECODE):
                    raise ValueError(f"a MIXED shape's parts are PREFILL/DECODE, got {p.phase}")
        else:
            parts = (shape,)
        serving = phase in (Phase.PREFILL, Phase.DECODE, Phase.MIXED)
        t = par.tensor
        sp = par.sequence and t > 1
        n_l = math.ceil(c.layers / par.pipeline)
        first, last = par.pipeline == 1, True
        big_t = sum(p.batch * p.tokens for p in parts)  # new tokens (GEMM rows)
        seqs = sum(p.batch for p in parts)
        rows = sum(p.tokens for p in parts)  # distinct positions (RoPE/pos rows)
        tn = math.ceil(big_t / t) if sp else big_t  # tokens in the sequence region
        h, d, f = c.hidden, c.d, c.ffn // t
        hd, kvd = c.heads // t, math.ceil(c.kv / t)
        e = dtype_bytes(c.dtype)
        act_bytes = big_t * h * e
        b = _Builder(c.dtype, n_l)
        norm_w = h * (2 if c.norm == "layernorm" and c.bias else 1)
        notes = [
            f"decoder {c.name}: {n_l} of {c.layers} layers on this device"
            + (
                f" (last of {par.pipeline} pipeline stages, with the LM head)"
                if par.pipeline > 1
                else ""
            )
        ]

        def reduce_out(name: str, count: int | None = None) -> None:
            if t == 1:
                return
            if sp:
                b.coll(f"{name}.reduce_scatter", Collective.REDUCE_SCATTER, act_bytes, t, count)
            else:
                b.coll(f"{name}.all_reduce", Collective.ALL_REDUCE, act_bytes, t, count)

        def gather_in(name: str, count: int | None = None) -> None:
            if sp:
                b.coll(f"{name}.all_gather", Collective.ALL_GATHER, act_bytes, t, count)

        def norm(name: str, count: int | None = None, layer: str = "layer") -> None:
            b.ew(
                name,
                OpKind.NORM,
                tn * h,
                tn * h + norm_w,
                tn * h,
                NORM_FLOPS * tn * h,
                norm_w,
                count,
                layer,
            )

        def residual(name: str) -> None:
            b.ew(name, OpKind.ELEMENTWISE, tn * h, 2 * tn * h, tn * h, tn * h)

        # embedding (first stage only)
        if first:
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
            if c.position == "learned":
                b.ew(
                    "pos_embed.add",
                    OpKind.ELEMENTWISE,
                    big_t * h,
                    big_t * h + rows * h,
                    big_t * h,
                    big_t * h,
                    rows * h,
                    count=1,
                    layer="embed",
                )
            if t > 1:
                reduce_out("embed", count=1)
        elif par.pipeline > 1:
            b.coll("pipeline.recv", Collective.SEND_RECV, act_bytes, 2, count=1, layer="pipeline")

        # one layer, repeated n_l times
        layer_start = len(b.ops)
        norm("ln1")
        gather_in("attn")
        qkv_n = (hd + 2 * kvd) * d
        b.gemm("attn.qkv", big_t, qkv_n, h, c.bias)
        if c.position == "rope":
            el = big_t * (hd + kvd) * d
            b.ew("attn.rope", OpKind.ELEMENTWISE, el, el + 2 * rows * d, el, ROPE_FLOPS * el)
        kv_e = dtype_bytes(c.kv_type)
        if serving:  # K and V of the new tokens read in ``dtype``, stored in ``kv_type``
            el = 2 * big_t * kvd * d
            b.raw("attn.kv_write", OpKind.ELEMENTWISE, el, el * e, el * kv_e)
        for i, p in enumerate(parts):
            q_len = p.tokens
            keys = (p.context + p.tokens) if serving else p.tokens
            pairs = causal_pairs(q_len, keys)
            bh = hd * p.batch
            if c.attention == "unfused":
                self._unfused_ops(
                    b,
                    p.batch,
                    q_len,
                    keys,
                    par,
                    "attn.core" if len(parts) == 1 else f"attn.core.{i}",
                    serving,
                    phase is Phase.TRAIN,
                )
                continue
            b.ops.append(
                Op(
                    name="attn.core" if len(parts) == 1 else f"attn.core.{i}",
                    kind=OpKind.ATTENTION,
                    flops=4.0 * d * pairs * bh,
                    bytes_read=(
                        p.batch * q_len * hd * d * e
                        + 2 * p.batch * keys * kvd * d * (kv_e if serving else e)
                    ),
                    bytes_written=p.batch * q_len * hd * d * e,
                    dims=(q_len, keys, d),
                    batch=max(1, bh),
                    count=n_l,
                    dtype=c.dtype,
                    layer="layer",
                    attrs=(
                        ("causal", 1.0),
                        ("kv_heads", float(kvd)),
                        ("q_heads", float(hd)),
                        ("kv_bytes", float(kv_e if serving else e)),
                    ),
                )
            )
        if c.attention == "unfused":  # head-major context -> token-major: one copy
            el = big_t * hd * d
            b.ew("attn.core.context", OpKind.ELEMENTWISE, el, el, el)
        b.gemm("attn.out", big_t, h, hd * d, c.bias)
        if not c.parallel_block:
            reduce_out("attn")
            residual("attn.residual")
            norm("ln2")
            gather_in("mlp")
        if c.moe:
            self._moe_ops(b, big_t, par)
        else:
            b.gemm("mlp.up", big_t, f * (2 if c.gated_mlp else 1), h, c.bias)
            if c.gated_mlp:
                b.ew(
                    "mlp.glu",
                    OpKind.ELEMENTWISE,
                    big_t * f,
                    2 * big_t * f,
                    big_t * f,
                    GLU_FLOPS * big_t * f,
                )
            else:
                b.ew("mlp.act", OpKind.ELEMENTWISE, big_t * f, big_t * f, big_t * f, big_t * f)
            b.gemm("mlp.down", big_t, h, f, c.bias)
        reduce_out("mlp")
        if c.parallel_block:
            residual("attn.residual")
        residual("mlp.residual")
        layer_ops = b.ops[layer_start:]

        # final norm and head (last stage)
        if last:
            norm("final_norm", count=1, layer="head")
            head_rows = seqs if serving else big_t
            if sp:
                b.coll(
                    "head.all_gather", Collective.ALL_GATHER, act_bytes, t, count=1, layer="head"
                )
            vd = math.ceil(c.vocab / t)
            b.gemm("lm_head", head_rows, vd, h, False, count=1, layer="head")
            if serving and t > 1:
                b.coll(
                    "lm_head.all_gather",
                    Collective.ALL_GATHER,
                    head_rows * c.vocab * e,
                    t,
                    count=1,
                    layer="head",
                )
            if phase is Phase.TRAIN:
                el = head_rows * vd
                b.ew(
                    "loss.log_softmax",
                    OpKind.SOFTMAX,
                    el,
                    el,
                    el,
                    NORM_FLOPS * el,
                    count=1,
                    layer="head",
                )
        if phase is Phase.TRAIN:
            fwd = list(b.ops)
            if shape.recompute == "full":
                fwd_extra = recompute_ops(layer_ops)
            elif shape.recompute == "selective":
                # the attention core (Korthikanti et al. 2022): the fused kernel, or every
                # op between the QKV and output projections of `attention: unfused`
                fwd_extra = recompute_ops(
                    o for o in layer_ops if o.name == "attn.core" or o.name.startswith("attn.core.")
                )
            else:
                fwd_extra = []
            ops = fwd + fwd_extra + backward_ops(fwd)
            if par.pipeline > 1:
                ops.append(
                    collective(
                        "pipeline.send_grad",
                        Collective.SEND_RECV,
                        act_bytes,
                        2,
                        1,
                        c.dtype,
                        "pipeline",
                    )
                )
            ops.append(adam_op(self._stage_params(par), c.dtype, par))
            notes.append(
                "train step: forward, recompute "
                f"({shape.recompute}), backward (2x forward FLOPs), Adam; the "
                "data-parallel gradient all-reduce is the training workload's"
            )
            b.ops = ops
        return OpGraph(
            phase=phase, ops=tuple(b.ops), shape=shape, dtype=c.dtype, notes=tuple(notes)
        )

    def _unfused_ops(
        self,
        b: _Builder,
        seqs: int,
        q_len: int,
        keys: int,
        par: Parallelism,
        name: str,
        serving: bool,
        train: bool,
    ) -> None:
        """The attention core of one layer for ``seqs`` sequences of ``q_len`` queries over
        ``keys`` keys with ``attention: unfused`` (see :func:`~xpusim.plugins.models.decoder_module.unfused_attention`).

        Per device, with ``bh = seqs · heads/t`` query heads: K and V repeated to the
        query heads when there are fewer KV heads (a copy each); ``QKᵀ``, a GEMM of dims
        ``(q_len, keys, d)`` batched ``bh`` times over the *whole* score matrix (a dense
        GEMM does not skip the masked half), ``2·bh·q_len·keys·d`` FLOPs, reading Q and K
        and writing the scores; the fused scale+mask+softmax reading and writing the scores
        (:data:`NORM_FLOPS` per element); in training, dropout reading the probabilities
        and writing them and a :data:`DROPOUT_MASK_BYTES` mask (no FLOPs: the tracer's rule
        for ``native_dropout``); ``PV``, dims ``(q_len, d, keys)`` batched ``bh``, reading
        the probabilities and V and writing the context. Serving reads K and V from the
        cache at its ``kv_type`` width.
        """
        c = self.cfg
        e = b.e
        d = c.d
        hd, kvd = c.heads // par.tensor, math.ceil(c.kv / par.tensor)
        bh = seqs * hd
        kv_e = float(dtype_bytes(c.kv_type)) if serving else e
        kv_el, rep_el = seqs * kvd * keys * d, bh * keys * d
        if kvd < hd:  # K and V repeated to every query head of their group
            for t_name in ("k", "v"):
                b.raw(
                    f"{name}.{t_name}_repeat", OpKind.ELEMENTWISE, rep_el, kv_el * kv_e, rep_el * e
                )
            kv_e = e
        scores = bh * q_len * keys
        flops = 2.0 * scores * d
        b.ops.append(
            Op(
                name=f"{name}.qk",
                kind=OpKind.MATMUL,
                flops=flops,
                bytes_read=bh * q_len * d * e + rep_el * kv_e,
                bytes_written=scores * e,
                dims=(q_len, keys, d),
                batch=max(1, bh),
                count=b.count,
                dtype=c.dtype,
                layer="layer",
            )
        )
        b.ew(f"{name}.softmax", OpKind.SOFTMAX, scores, scores, scores, NORM_FLOPS * scores)
        if train:
            b.raw(
                f"{name}.dropout",
                OpKind.ELEMENTWISE,
                scores,
                scores * e,
                scores * (e + DROPOUT_MASK_BYTES),
            )
        b.ops.append(
            Op(
                name=f"{name}.pv",
                kind=OpKind.MATMUL,
                flops=flops,
                bytes_read=scores * e + rep_el * kv_e,
                bytes_written=bh * q_len * d * e,
                dims=(q_len, d, keys),
                batch=max(1, bh),
                count=b.count,
                dtype=c.dtype,
                layer="layer",
            )
        )

    def _moe_ops(self, b: _Builder, n: int, par: Parallelism) -> None:
        """The MoE MLP of one layer for ``n`` tokens on this device (see :class:`MoE`)."""
        c = self.cfg
        h, k, ex = c.hidden, c.top_k, c.experts
        f = c.ffn // par.tensor
        ep = par.expert
        eloc = ex // ep
        e = b.e
        pairs = n * k  # (token, expert) rows arriving at this device
        cap = max(1, math.ceil(pairs / eloc))
        touched = eloc * (1.0 - (1.0 - k / ex) ** (n * ep))
        ib = INDEX_BYTES
        b.gemm("moe.router", n, ex, h, False)
        b.raw("moe.topk", OpKind.ELEMENTWISE, pairs, n * ex * e, pairs * (e + ib))
        b.ew("moe.softmax", OpKind.SOFTMAX, pairs, pairs, pairs, NORM_FLOPS * pairs)
        b.raw("moe.sort", OpKind.ELEMENTWISE, pairs, pairs * ib, 2 * pairs * ib)
        b.raw("moe.token_index", OpKind.ELEMENTWISE, pairs, pairs * ib, pairs * ib, pairs)
        b.raw(
            "moe.dispatch_gather",
            OpKind.ELEMENTWISE,
            pairs * h,
            pairs * ib + pairs * h * e,
            pairs * h * e,
        )
        if ep > 1:
            b.coll("moe.dispatch.all_to_all", Collective.ALL_TO_ALL, pairs * h * e, ep)
        up_n = f * (2 if c.gated_mlp else 1)
        for name, nn_, kk in (("moe.up", up_n, h), ("moe.down", h, f)):
            w = touched * nn_ * kk * e
            b.ops.append(
                Op(
                    name=name,
                    kind=OpKind.MATMUL,
                    flops=2.0 * pairs * nn_ * kk,
                    bytes_read=pairs * kk * e + w,
                    bytes_written=pairs * nn_ * e,
                    param_bytes=w,
                    dims=(cap, nn_, kk),
                    batch=eloc,
                    count=b.count,
                    dtype=c.dtype,
                    layer="layer",
                    attrs=(("experts_touched", touched),),
                )
            )
            if name == "moe.up":
                if c.gated_mlp:
                    b.ew(
                        "moe.glu",
                        OpKind.ELEMENTWISE,
                        pairs * f,
                        2 * pairs * f,
                        pairs * f,
                        GLU_FLOPS * pairs * f,
                    )
                else:
                    b.ew("moe.act", OpKind.ELEMENTWISE, pairs * f, pairs * f, pairs * f, pairs * f)
        if ep > 1:
            b.coll("moe.combine.all_to_all", Collective.ALL_TO_ALL, pairs * h * e, ep)
        b.raw("moe.weight_gather", OpKind.ELEMENTWISE, pairs, pairs * ib + pairs * e, pairs * e)
        b.ew(
            "moe.weight_mul", OpKind.ELEMENTWISE, pairs * h, pairs * h + pairs, pairs * h, pairs * h
        )
        b.ew("moe.zeros", OpKind.ELEMENTWISE, n * h, 0, n * h)
        b.raw(
            "moe.combine",
            OpKind.ELEMENTWISE,
            n * h,
            n * h * e + pairs * ib + pairs * h * e,
            n * h * e,
            n * h,
        )

    def _stage_params(self, par: Parallelism) -> float:
        """Parameters one device of the graph's stage holds (for the optimizer step)."""
        c = self.cfg
        attn, mlp, _ = self._layer_params()
        t = par.tensor
        n_l = math.ceil(c.layers / par.pipeline)
        experts = mlp / (t * (par.expert if c.moe else 1))
        per_layer = attn / t + experts
        head = c.vocab * c.hidden / t
        if par.pipeline == 1:
            emb = c.vocab * c.hidden / t + (c.seq_len * c.hidden if c.position == "learned" else 0)
            head = 0 if c.tied_embeddings else head
            return n_l * per_layer + emb + head + c.hidden
        return n_l * per_layer + head + c.hidden

    # memory ------------------------------------------------------------------------------------

    def activation_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """Activation memory of one micro-batch on one device of one pipeline stage.

        Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
        Models" (arXiv:2205.05198), Table 2, per layer with ``s`` tokens, ``b`` sequences,
        hidden ``h``, ``a`` heads and tensor parallel ``t``:

        * no recompute: ``sbh(10 + 24/t + 5as/(ht))``; with sequence parallel
          ``sbh(34 + 5as/h)/t``;
        * selective (attention core recomputed): ``sbh(10 + 24/t)``; with sequence
          parallel ``34sbh/t``;
        * full: ``2sbh`` (the layer input; ``/t`` with sequence parallel).

        The constants assume 16-bit activations; other dtypes scale by ``bytes/2``.
        Times ``ceil(layers / pipeline)`` layers.

        The ``5as/h`` term is the ``5as²b`` bytes of the stored score-sized tensors
        (softmax output ``2as²b``, dropout mask ``as²b``, dropout output ``2as²b``): only
        ``attention: unfused`` stores them. A fused (flash) kernel keeps no score matrix
        for the backward, which recomputes it from Q, K, V and the output, all already in
        the ``sbh`` terms, so ``attention: flash`` drops the term.
        """
        c = self.cfg
        s, bsz, h, a = shape.tokens, shape.batch, c.hidden, c.heads
        t = max(1, parallel.tensor)
        sp = parallel.sequence and t > 1
        sbh = s * bsz * h
        attn = 5.0 * a * s / h if c.attention == "unfused" else 0.0
        if recompute == "full":
            per = 2.0 * sbh / (t if sp else 1)
        elif recompute == "selective":
            per = 34.0 * sbh / t if sp else sbh * (10 + 24 / t)
        elif recompute == "none":
            per = sbh * (34 + attn) / t if sp else sbh * (10 + 24 / t + attn / t)
        else:
            raise ValueError(f"unknown recompute {recompute!r}; valid: none, selective, full")
        return per * math.ceil(c.layers / parallel.pipeline) * dtype_bytes(c.dtype) / 2


# --- families ----------------------------------------------------------------------------------


class DecoderFamily(ModelFamily):
    """A decoder-only family (``gpt``, ``llama``, ``mixtral``, ``palm``) with its traits
    and published presets."""

    def __init__(
        self,
        name: str,
        description: str,
        defaults: Mapping[str, Any],
        presets: Mapping[str, Mapping[str, Any]],
        sources: Mapping[str, str],
    ) -> None:
        self.name = name
        self.description = description
        self.defaults = dict(defaults)
        self.presets = presets
        self.presets_sources = sources

    def configure(self, spec: Mapping[str, Any]) -> DecoderModel:
        """Validate ``preset`` + field overrides into a :class:`DecoderModel`."""
        cfg, _ = validate_spec(DecoderConfig, spec, self.name, self.presets, self.defaults)
        return DecoderModel(cfg, self.name)


def _family(name: str, description: str, defaults: Mapping[str, Any]) -> DecoderFamily:
    presets = {k: v for k, v in DECODER_PRESETS.items() if v["family"] == name}
    return DecoderFamily(
        name,
        description,
        defaults,
        {k: {f: x for f, x in v.items() if f != "family"} for k, v in presets.items()},
        {k: DECODER_SOURCES[k] for k in presets},
    )


GPT_TRAITS = {
    "norm": "layernorm",
    "position": "learned",
    "bias": True,
    "activation": "gelu",
    "gated_mlp": False,
    "parallel_block": False,
    "tied_embeddings": True,
}
LLAMA_TRAITS = {
    "norm": "rmsnorm",
    "position": "rope",
    "bias": False,
    "activation": "silu",
    "gated_mlp": True,
    "parallel_block": False,
    "tied_embeddings": False,
}
MIXTRAL_TRAITS = {**LLAMA_TRAITS, "experts": 8, "top_k": 2}
PALM_TRAITS = {
    "norm": "layernorm",
    "position": "rope",
    "bias": False,
    "activation": "silu",
    "gated_mlp": True,
    "parallel_block": True,
    "tied_embeddings": True,
    "kv_heads": 1,
}

GPT = _family(
    "gpt", "GPT-2/GPT-3 style decoder: learned positions, LayerNorm, GELU MLP, MHA", GPT_TRAITS
)
"""The ``gpt`` family."""
LLAMA = _family(
    "llama", "Llama decoder: RMSNorm, SwiGLU MLP, RoPE, grouped-query attention", LLAMA_TRAITS
)
"""The ``llama`` family."""
MIXTRAL = _family(
    "mixtral", "Mixtral: Llama decoder with a top-k mixture-of-experts MLP", MIXTRAL_TRAITS
)
"""The ``mixtral`` family."""
PALM = _family(
    "palm",
    "PaLM decoder: parallel attention+MLP block, multi-query attention, SwiGLU, RoPE, no biases",
    PALM_TRAITS,
)
"""The ``palm`` family."""

FAMILIES: list[ModelFamily] = [GPT, LLAMA, MIXTRAL, PALM]
"""The decoder families this module registers."""
