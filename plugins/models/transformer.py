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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import (
    ROWS_MEAN,
    ROWS_STD,
    STRIDED,
    Collective,
    Op,
    OpGraph,
    OpKind,
    Phase,
    Shape,
    dtype_bytes,
)
from xpusim.engine.model import ModelFamily, ModelInfo
from xpusim.engine.recompute import recomputed_modules
from xpusim.engine.system import Parallelism, divisors, near_divisors
from xpusim.plugins.models.activations import (
    CORE_ATTN,
    FP32_BYTES,
    LAYERNORM,
    MLA_UP_PROJ,
    MLP,
    MOE,
    MOE_ACT,
    SHARED_EXPERTS,
    head_activations,
    layer_activations,
    layer_input,
)
from xpusim.plugins.models.activations import MASK_BYTES as DROPOUT_MASK_BYTES
from xpusim.plugins.models.common import (
    EagerCounted,
    ModelDtype,
    adam_op,
    backward_ops,
    collective,
    recompute_ops,
    torch_dtype,
    validate_spec,
)
from xpusim.plugins.models.counting import (
    NORM_FLOPS,
    SOFTCAP_FLOPS,
    causal_pairs,
    window_pairs,
)
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
    "ExpertFacts",
]

ROPE_FLOPS = 3
"""FLOPs per rotated element of the fused RoPE kernel (``x·cos + rot(x)·sin``)."""
GLU_FLOPS = 2
"""FLOPs per output element of the fused gated activation (``act(g)·u``)."""
INDEX_BYTES = 8
"""Bytes of one token id or routing index (int64)."""


def eager_bytes(passes: tuple[tuple[str, str], ...], act: float) -> tuple[float, float]:
    """(bytes read, bytes written) per element of an eager PyTorch module run as the
    separate kernels ``passes`` lists, each ``(read, written)`` with ``"a"`` an element of
    the activation dtype (``act`` bytes), ``"f"`` an fp32 one, ``"2a"`` two activation
    operands and ``"-"`` nothing; a cast to fp32 (``("a", "f")``) or back (``("f",
    "a")``) is no pass at all when the activations already are fp32."""
    width = {"a": act, "2a": 2 * act, "f": FP32_BYTES, "-": 0.0}
    read = written = 0.0
    for r, w in passes:
        if act == FP32_BYTES and {r, w} == {"a", "f"}:
            continue
        read += width[r]
        written += width[w]
    return read, written


def passes(
    eager: tuple[tuple[str, str], ...], fused: tuple[float, float], on: bool, act: float
) -> tuple[float, float]:
    """(elements read, elements written) of the activation dtype per element of an
    elementwise op: the ``eager`` kernels' bytes (:func:`eager_bytes`) over ``act`` when
    ``on``, else the ``fused`` kernel's."""
    if not on:
        return fused
    r, w = eager_bytes(eager, act)
    return r / act, w / act


EAGER_RMSNORM = (("a", "f"), ("f", "f"), ("f", "-"), ("f", "f"), ("f", "a"), ("a", "a"))
"""The kernels of an RMSNorm written as module code (Meta's Llama reference and torchtitan's
``RMSNorm``: ``self._norm(x.float()).type_as(x) * self.weight`` with ``_norm(x) = x *
torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``): the cast to fp32, the square, the
mean (a reduction, reading only), the scaling, the cast back and the weight; per element of
a 16-bit activation 20 bytes read and 16 written, where the fused kernel reads 2 and
writes 2."""
EAGER_ROPE = (("a", "f"), ("f", "f"), ("f", "a"))
"""The kernels of Meta's complex-number rotary embedding (``apply_rotary_emb``:
``view_as_complex(x.float()...) * freqs_cis``, ``view_as_real``, ``type_as``): the cast to
fp32, the complex product, the cast back, per rotated element (the table is read once)."""
EAGER_GLU = (("a", "a"), ("2a", "a"))
"""The kernels of a gated MLP's activation as module code (``F.silu(w1(x)) * w3(x)``):
the activation, then the product, per element of the MLP's hidden size."""
ATTENTION_DROPOUT = 0.1
"""Attention-dropout probability of ``attention: unfused`` in training: Megatron-LM's
default (``megatron/arguments.py``, ``--attention-dropout``, default 0.1). Its cost does
not depend on the value, only that it is nonzero (a zero rate launches no kernel)."""


_MOE_ACT_OPS = MOE | MOE_ACT
"""The modules an expert's activation belongs to (both recompute it)."""
_MOE_SHARED_OPS = MOE | SHARED_EXPERTS
"""The modules a shared expert's op belongs to."""
_MLA_UP_OPS = (
    "attn.q_a_norm",
    "attn.kv_a_norm",
    "attn.q_b",
    "attn.kv_b",
    "attn.rope",
    "attn.k_cat",
    "attn.q_cat",
)
"""Multi-head latent attention's ops that ``mla_up_proj`` recomputation reruns: the
latents' norms, the up-projections (``attn.kv_b`` of every part), RoPE and the
concatenation of the rotary and non-rotary parts."""
_MLP_OUTSIDE = frozenset({"mlp.residual", "mlp.dropout"})
"""Ops named ``mlp.*`` that are not the MLP module's (the residual add after it)."""


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpertFacts:
    """A mixture of experts as the workloads see it.

    ``experts`` routed experts per MoE layer, ``top_k`` routed to per token,
    ``shared_experts`` every token also passes through, ``moe_layers`` layers with experts,
    ``params_per_expert`` the weights of one routed expert, ``expert_params`` those of all
    routed experts of all layers (what expert parallelism shards) and ``imbalance`` the
    busiest expert-parallel device's share of routed pairs over the mean.
    """

    experts: int
    top_k: int
    shared_experts: int
    moe_layers: int
    params_per_expert: float
    expert_params: float
    imbalance: float


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
    elementwise: Literal["fused", "eager"] = "fused"
    """How the work between the GEMMs and the attention core runs. ``fused``: one kernel
    per norm, rotary embedding and gated activation, as Megatron-LM, Transformer Engine,
    ``torch.compile`` and serving engines run them. ``eager``: PyTorch module code run op
    by op, as Meta's Llama reference and torchtitan without ``torch.compile`` run it: the
    RMSNorm (:data:`EAGER_RMSNORM`), the complex-number RoPE (:data:`EAGER_ROPE`) and the
    gated activation (:data:`EAGER_GLU`) as their separate kernels, the attention
    output copied to token-major layout (``.transpose(1, 2).contiguous()``) and, with
    fewer KV heads than query heads, K and V copied to every query head
    (``repeat_kv``) before ``scaled_dot_product_attention``. A LayerNorm is one kernel
    either way (``nn.LayerNorm``)."""
    attention_dropout: float = Field(ATTENTION_DROPOUT, ge=0.0, lt=1.0)
    """Attention-dropout probability in training with ``attention: unfused`` (Megatron-LM's
    default 0.1, :data:`ATTENTION_DROPOUT`); at 0 no dropout kernel runs and no mask or
    dropped probabilities are stored, as in frameworks that skip dropout at rate 0
    (EasyLM's ``attn_pdrop``). ``attention: flash`` fuses any dropout into its kernel."""
    hidden_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout probability on the attention and MLP outputs before each residual add, in
    training (Megatron-LM's ``--hidden-dropout``, default 0.1, the ``gpt`` family's
    trait; Llama, Mixtral, PaLM and DeepSeek train without it). Above 0 each of the two
    dropouts writes and keeps a 1-byte keep-mask per element (the ``sbh`` masks of
    Korthikanti et al.'s formula)."""
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """RoPE frequency scaling as its ``config.json`` states it (Llama 3.1's ``llama3``,
    ``linear``, ``yarn``, Phi-3's ``longrope`` ...): it changes the cos/sin tables only, so
    it costs nothing extra; kept so the configuration is reported as given."""
    norm_eps: float = 1e-5
    qkv_bias: bool | None = None
    """Biases on the Q, K and V projections (not the output projection), as Qwen2/2.5 have;
    ``None`` follows ``bias``."""
    qk_norm: bool = False
    """An RMSNorm over each head's queries and keys before RoPE (Qwen3): ``2·head_dim``
    weights a layer."""
    sandwich_norm: bool = False
    """A norm after the attention and after the MLP as well as before them (Gemma 2/3):
    four norms a layer."""
    q_lora_rank: PositiveInt | None = None
    """Multi-head latent attention (DeepSeek-V2/V3): rank of the query compression
    (``None``: queries projected directly from the hidden state)."""
    kv_lora_rank: PositiveInt | None = None
    """Multi-head latent attention: rank of the compressed KV latent the cache holds.
    Setting it selects MLA; ``head_dim`` is then the query/key head size
    (``qk_nope_head_dim + qk_rope_head_dim``)."""
    qk_rope_head_dim: PositiveInt | None = None
    """MLA: the rotary part of each query/key head, whose key is shared by all heads and
    cached next to the latent."""
    v_head_dim: PositiveInt | None = None
    """MLA: the value head size."""
    shared_experts: NonNegativeInt = 0
    """Experts every token passes through besides its routed ones (DeepSeek)."""
    shared_ffn_hidden: PositiveInt | None = None
    """Hidden size of all shared experts together (default ``shared_experts·ffn_hidden``)."""
    dense_layers: NonNegativeInt = 0
    """The first layers that have a dense MLP instead of experts (DeepSeek's
    ``first_k_dense_replace``)."""
    dense_ffn_hidden: PositiveInt | None = None
    """Hidden size of the MLP of the dense layers of a MoE model (default ``ffn_hidden``)."""
    router_bias: bool = False
    """A per-expert bias on the routing scores (DeepSeek-V3's ``e_score_correction_bias``)."""
    expert_imbalance: float = Field(default=1.0, ge=1.0)
    """(token, expert) pairs the busiest expert-parallel device receives over the mean:
    1 is perfectly balanced routing. The step waits for that device, so its expert GEMMs
    and all-to-all bytes scale by this factor (with ``expert: 1`` every device holds
    every expert and the factor changes nothing)."""
    mtp_layers: NonNegativeInt = 0
    """Multi-token-prediction modules (DeepSeek-V3's ``num_nextn_predict_layers``): counted
    in ``mtp_params`` and left out of ``params`` and the served weights, as the published
    totals and a server without speculative decoding leave them out."""
    sliding_window: PositiveInt | None = None
    """Keys a sliding-window layer attends to (its KV cache keeps that many tokens)."""
    layer_types: tuple[Literal["full", "sliding"], ...] | None = None
    """Per layer, ``full`` or ``sliding`` attention (default: every layer ``sliding`` when
    ``sliding_window`` is set, else ``full``)."""
    attn_softcap: float | None = None
    """Attention-logit soft-capping ``c·tanh(s/c)`` (Gemma 2): extra work per score."""
    final_softcap: float | None = None
    """Final-logit soft-capping (Gemma 2): one elementwise pass over the logits."""
    dtype: ModelDtype = "bf16"
    kv_dtype: ModelDtype | None = None
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
        if self.position == "rope" and self.d % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.d}")
        self._check_mla()
        self._check_moe()
        if self.layer_types is not None and len(self.layer_types) != self.layers:
            raise ValueError(
                f"layer_types lists {len(self.layer_types)} layers but layers={self.layers}"
            )
        if self.layer_types and "sliding" in self.layer_types and self.sliding_window is None:
            raise ValueError("layer_types names sliding layers but sliding_window is not set")
        if self.attention == "unfused" and (self.mla or self.sliding_window or self.attn_softcap):
            raise ValueError(
                "attention: unfused prices Megatron-LM's dense attention; use attention: flash "
                "with multi-head latent attention, sliding windows or soft-capping"
            )
        return self

    def _check_mla(self) -> None:
        mla = (self.q_lora_rank, self.qk_rope_head_dim, self.v_head_dim)
        if self.kv_lora_rank is None:
            if any(v is not None for v in mla):
                raise ValueError(
                    "q_lora_rank, qk_rope_head_dim and v_head_dim describe multi-head latent "
                    "attention: give kv_lora_rank too"
                )
            return
        if self.qk_rope_head_dim is None or self.v_head_dim is None or self.head_dim is None:
            raise ValueError(
                "multi-head latent attention (kv_lora_rank) needs head_dim "
                "(qk_nope_head_dim + qk_rope_head_dim), qk_rope_head_dim and v_head_dim"
            )
        if self.qk_rope_head_dim >= self.head_dim:
            raise ValueError(
                f"qk_rope_head_dim={self.qk_rope_head_dim} must be below head_dim="
                f"{self.head_dim} (the rotary part of each query/key head)"
            )

    def _check_moe(self) -> None:
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} exceeds experts={self.experts}")
        if not self.moe and (self.shared_experts or self.dense_layers or self.router_bias):
            raise ValueError(
                "shared_experts, dense_layers and router_bias describe a mixture of experts: "
                "set experts > 1"
            )
        if self.dense_layers >= self.layers:
            raise ValueError(
                f"dense_layers={self.dense_layers} leaves no expert layer of layers={self.layers}"
            )

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

    @property
    def mla(self) -> bool:
        """Whether attention is multi-head latent attention (DeepSeek-V2/V3)."""
        return self.kv_lora_rank is not None

    @property
    def has_qkv_bias(self) -> bool:
        """Whether the Q, K and V projections carry biases (``qkv_bias``, else ``bias``)."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def shared_ffn(self) -> int:
        """Hidden size of the shared experts together (0 without shared experts)."""
        if not self.shared_experts:
            return 0
        return self.shared_ffn_hidden or self.shared_experts * self.ffn

    @property
    def dense_ffn(self) -> int:
        """Hidden size of the MLP of a dense layer."""
        return self.dense_ffn_hidden or self.ffn

    def is_sliding(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) attends over a sliding window."""
        if self.sliding_window is None:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding"

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has the mixture-of-experts MLP."""
        return self.moe and layer >= self.dense_layers


# --- the parametric graph ----------------------------------------------------------------


OpKey = tuple[Any, ...]
"""An :class:`Op`'s fields in the order of :data:`OP_FIELDS` (``Op(*key)`` builds it)."""

OP_FIELDS = (
    "name",
    "kind",
    "flops",
    "bytes_read",
    "bytes_written",
    "param_bytes",
    "dims",
    "batch",
    "count",
    "dtype",
    "collective",
    "comm_bytes",
    "group",
    "layer",
    "attrs",
)
"""The declaration order of :class:`Op`'s fields, which the builder's keys follow
(``tests/test_transformer.py`` holds it to ``dataclasses.fields(Op)``)."""


@dataclass(frozen=True)
class _Skeleton:
    """A serving step's ops around its attention cores: those ``before`` the first core
    and those ``after`` the last, every layer's and the head's, and the graph's notes.
    They depend on the step's phase, token totals and parallelism only
    (:meth:`DecoderModel._build`)."""

    before: tuple[Op, ...]
    after: tuple[Op, ...]
    notes: tuple[str, ...]


class _Builder:
    """Writes the ops of one step; ``ops`` in execution order. All quantities per device.

    ``intern`` (a model's table, kept across its graphs) maps an op's fields to the op
    built for them: an op that an earlier graph of the model already had is that op, not
    an equal copy. A serving run prices thousands of step shapes whose graphs share most
    of their ops (the GEMMs of a batch size, the norms, every layer's own ops), so they
    are built once, and a pricing memo keyed by op finds them by identity.
    """

    def __init__(self, dtype: str, count: int, intern: dict[OpKey, Op] | None = None) -> None:
        self.e = float(dtype_bytes(dtype))
        self.dtype = dtype
        self.count = count
        self.ops: list[Op] = []
        self.intern = intern
        # where the attention cores of the step's parts begin and end in ``ops`` (set by
        # the attention builders): every op outside them depends on the step's token
        # totals only, not on how its tokens split into parts and contexts
        self.cores: tuple[int, int] | None = None

    def add(self, key: OpKey) -> None:
        """Append the op of fields ``key`` (the interned one when there is a table)."""
        table = self.intern
        if table is None:
            self.ops.append(Op(*key))
            return
        op = table.get(key)
        if op is None:
            op = table[key] = Op(*key)
        self.ops.append(op)

    def compute(
        self,
        name: str,
        kind: OpKind,
        flops: float,
        read_b: float,
        written_b: float,
        params_b: float,
        dims: tuple[int, ...],
        batch: int,
        count: int,
        layer: str,
        attrs: tuple[tuple[str, float], ...] = (),
    ) -> None:
        """Append a non-collective op of this builder's dtype (:meth:`add`)."""
        # collective None, comm_bytes 0, group 1: not a collective
        key = (name, kind, flops, read_b, written_b, params_b, dims, batch, count, self.dtype)
        self.add((*key, None, 0.0, 1, layer, attrs))

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
        self.compute(
            name,
            OpKind.MATMUL,
            2.0 * batch * m * n * k,
            batch * m * k * e + w,
            batch * m * n * e,
            w,
            (m, n, k),
            batch,
            self.count if count is None else count,
            layer,
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
        strided: bool = False,
    ) -> None:
        """A memory-bound op; ``read``/``written``/``params`` in elements of ``dtype``
        unless given as bytes through :meth:`raw`; ``strided`` for a copy out of a
        transposed or broadcast view (:data:`~xpusim.engine.graph.STRIDED`)."""
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
            strided,
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
        strided: bool = False,
    ) -> None:
        self.compute(
            name,
            kind,
            flops,
            read_b,
            written_b,
            params_b,
            (max(1, math.ceil(elements)),),
            1,
            self.count if count is None else count,
            layer,
            ((STRIDED, 1.0),) if strided else (),
        )

    def attention(
        self,
        name: str,
        flops: float,
        read_b: float,
        written_b: float,
        dims: tuple[int, int, int],
        heads: tuple[int, int, int],
        kv_bytes: float,
        count: int,
    ) -> None:
        """A fused causal attention core of ``dims = (queries, keys, qk head size)`` for
        ``heads = (sequences, query heads, KV heads)`` reading its keys and values at
        ``kv_bytes`` an element."""
        seqs, q_heads, kv_heads = heads
        self.compute(
            name,
            OpKind.ATTENTION,
            flops,
            read_b,
            written_b,
            0.0,
            dims,
            max(1, seqs * q_heads),
            count,
            "layer",
            (
                ("causal", 1.0),
                ("kv_heads", float(kv_heads)),
                ("q_heads", float(q_heads)),
                ("kv_bytes", float(kv_bytes)),
            ),
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
        n = self.count if count is None else count
        # the op of common.collective(), as its fields
        self.add(
            (
                name,
                OpKind.COLLECTIVE,
                0.0,
                0.0,
                0.0,
                0.0,
                (),
                1,
                n,
                self.dtype,
                kind,
                nbytes,
                group,
                layer,
                (),
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
        self._ops: dict[OpKey, Op] = {}  # the builder's intern table (see _Builder)
        # the ops around a serving step's attention cores, by phase and totals (_build)
        self._skeletons: dict[tuple[Phase, int, int, int, Parallelism], _Skeleton] = {}
        self._stage_layers: dict[int, tuple[int, int]] = {}
        self.info = self._info()

    # static facts ----------------------------------------------------------------------

    def _attn_params(self) -> tuple[float, float]:
        """(all parameters, GEMM weights) of one layer's attention and its norms."""
        c = self.cfg
        h, d, nh, kv = c.hidden, c.d, c.heads, c.kv
        if c.mla:
            cq, ckv = c.q_lora_rank, c.kv_lora_rank or 0
            r, dv = c.qk_rope_head_dim or 0, c.v_head_dim or 0
            q = h * cq + cq * nh * d if cq else h * nh * d
            gemm = q + h * (ckv + r) + ckv * nh * (d - r + dv) + nh * dv * h
            attn = gemm + (cq or 0) + ckv  # the q and kv latent norms
        else:
            gemm = h * (nh + 2 * kv) * d + nh * d * h
            attn = gemm + ((nh + 2 * kv) * d if c.has_qkv_bias else 0) + (h if c.bias else 0)
            attn += 2 * d if c.qk_norm else 0
        norm_p = h * (2 if c.norm == "layernorm" and c.bias else 1)
        norms = (1 if c.parallel_block else 2) + (2 if c.sandwich_norm else 0)
        return float(attn + norm_p * norms), float(gemm)

    def _dense_mlp_params(self, f: int) -> float:
        """Parameters of a dense MLP of hidden size ``f`` (biases included)."""
        c = self.cfg
        p = c.hidden * f * (2 if c.gated_mlp else 1) + f * c.hidden
        if c.bias:
            p += f * (2 if c.gated_mlp else 1) + c.hidden
        return float(p)

    def _expert_params(self) -> float:
        """Weights of one routed expert (experts carry no biases)."""
        c = self.cfg
        return float(c.hidden * c.ffn * (2 if c.gated_mlp else 1) + c.ffn * c.hidden)

    def _moe_params(self) -> tuple[float, float, float]:
        """(all parameters, active parameters, active GEMM weights) of one MoE MLP."""
        c = self.cfg
        router = c.hidden * c.experts + (c.experts if c.router_bias else 0)
        shared = self._dense_mlp_params(c.shared_ffn) if c.shared_ffn else 0.0
        one = self._expert_params()
        return (
            c.experts * one + router + shared,
            c.top_k * one + router + shared,
            c.top_k * one + shared,
        )

    def _mlp_params(self, layer: int) -> tuple[float, float, float]:
        """(all, active, active GEMM weights) of layer ``layer``'s MLP."""
        if self.cfg.is_moe_layer(layer):
            return self._moe_params()
        p = self._dense_mlp_params(self.cfg.dense_ffn if self.cfg.moe else self.cfg.ffn)
        return p, p, p

    def _mtp_params(self) -> float:
        """Parameters of the multi-token-prediction modules (DeepSeek-V3 §2.2): per module
        two input norms, the ``2h → h`` projection, one decoder layer like the last and its
        output norm; the embedding and the output head are shared with the main model."""
        c = self.cfg
        if not c.mtp_layers:
            return 0.0
        attn, _ = self._attn_params()
        layer = attn + self._mlp_params(c.layers - 1)[0]
        return float(c.mtp_layers * (3 * c.hidden + 2 * c.hidden * c.hidden + layer))

    @property
    def experts(self) -> ExpertFacts | None:
        """The mixture of experts (``None`` for a dense model): what the training and
        serving workloads read to shard and route experts."""
        c = self.cfg
        if not c.moe:
            return None
        moe_layers = c.layers - c.dense_layers
        one = self._expert_params()
        return ExpertFacts(
            experts=c.experts,
            top_k=c.top_k,
            shared_experts=c.shared_experts,
            moe_layers=moe_layers,
            params_per_expert=one,
            expert_params=moe_layers * c.experts * one,
            imbalance=c.expert_imbalance,
        )

    def expert_weight_bytes(self, parallel: Parallelism) -> float:
        """Bytes of routed-expert weights one device holds under ``parallel``: all routed
        experts split over ``tensor × pipeline × expert`` devices (0 for a dense model)."""
        x = self.experts
        if x is None:
            return 0.0
        par = parallel
        return x.expert_params * dtype_bytes(self.cfg.dtype) / (par.model_parallel * par.expert)

    def weight_bytes_per_device(self, parallel: Parallelism) -> float:
        """Weight bytes one device holds: the non-expert weights split over ``tensor ×
        pipeline`` and the routed experts also over ``expert`` devices."""
        x = self.experts
        expert = x.expert_params if x is not None else 0.0
        e = dtype_bytes(self.cfg.dtype)
        dense = (self.info.params - expert) * e / parallel.model_parallel
        return dense + self.expert_weight_bytes(parallel)

    def kv_bytes_per_token_per_device(self, parallel: Parallelism) -> float:
        """KV-cache bytes one device holds per cached token: its ``layers / pipeline``
        layers' share, with ``ceil(kv_heads / tensor)`` KV heads a device (KV heads are
        replicated when fewer than the tensor degree) or, for multi-head latent attention,
        the whole latent on every tensor rank."""
        c = self.cfg
        t = parallel.tensor
        if c.mla:
            per_layer = self._kv_per_layer_token()
        else:
            per_layer = self._kv_per_layer_token() * math.ceil(c.kv / t) / c.kv
        return c.layers / parallel.pipeline * per_layer

    def kv_bytes(self, tokens: int) -> float:
        """KV-cache bytes of one sequence of ``tokens`` tokens over all layers: full
        layers keep every token, sliding-window layers at most ``sliding_window``
        (:meth:`~xpusim.engine.model.ModelInfo.kv_sequence_bytes`)."""
        return self.info.kv_sequence_bytes(tokens)

    @property
    def sliding_layers(self) -> int:
        """How many layers attend over a sliding window (their KV cache stops at it)."""
        return sum(1 for i in range(self.cfg.layers) if self.cfg.is_sliding(i))

    def _kv_per_layer_token(self) -> float:
        """KV bytes one layer caches per token: K and V of every KV head, or for MLA the
        compressed latent and the shared rotary key (``kv_lora_rank + qk_rope_head_dim``)."""
        c = self.cfg
        width = (c.kv_lora_rank or 0) + (c.qk_rope_head_dim or 0) if c.mla else 2 * c.kv * c.d
        return float(width * dtype_bytes(c.kv_type))

    def _info(self) -> ModelInfo:
        c = self.cfg
        attn, attn_gemm = self._attn_params()
        mlps = [self._mlp_params(i) for i in range(c.layers)]
        emb = c.vocab * c.hidden
        pos = c.seq_len * c.hidden if c.position == "learned" else 0
        head = 0 if c.tied_embeddings else emb
        norm_f = c.hidden * (2 if c.norm == "layernorm" and c.bias else 1)
        outer = emb + pos + head + norm_f
        total = c.layers * attn + sum(m[0] for m in mlps) + outer
        active = c.layers * attn + sum(m[1] for m in mlps) + outer
        e = dtype_bytes(c.dtype)
        gemm_per_tok = c.layers * attn_gemm + sum(m[2] for m in mlps)
        config = c.model_dump()
        config["mtp_params"] = self._mtp_params()
        sliding = self.sliding_layers if c.sliding_window else 0
        return ModelInfo(
            name=c.name,
            family=self.family,
            kind="decoder",
            dtype=c.dtype,
            params=float(total),
            active_params=float(active),
            param_bytes=float(total * e),
            kv_bytes_per_token=c.layers * self._kv_per_layer_token(),
            kv_window=(c.sliding_window or 0) if sliding else 0,
            kv_window_bytes_per_token=sliding * self._kv_per_layer_token(),
            flops_per_token=float(2 * (gemm_per_tok + c.vocab * c.hidden)),
            layers=c.layers,
            max_seq_len=c.seq_len,
            config=config,
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
        size = shape.context + shape.tokens
        if c.mla:  # the latent and the rotary key of every position
            width = (c.kv_lora_rank or 0) + (c.qk_rope_head_dim or 0)
            dims: tuple[int, ...] = (c.layers, shape.batch, size, width)
        else:
            dims = (c.layers, 2, shape.batch, c.kv, size, c.d)
        cache = torch.zeros(*dims, dtype=torch_dtype(c.dtype), device=device)
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
        sizes = {"heads": c.heads, "ffn_hidden": c.ffn}
        if c.moe and c.dense_layers:
            sizes["dense_ffn_hidden"] = c.dense_ffn
        if c.shared_ffn:
            sizes["shared_ffn_hidden"] = c.shared_ffn
        problems = [f"{k}={v}" for k, v in sizes.items() if v % t]
        if problems:
            raise ScenarioError(
                f"parallelism.tensor={t} must divide {' and '.join(problems)} of model "
                f"{c.name!r}; valid tensor degrees: {divisors(math.gcd(*sizes.values()))}"
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
        # a serving step's ops outside its attention cores depend on its totals only: a
        # step with the same totals as one built before (a new context length, a prompt
        # split otherwise) builds its cores between that one's ops
        skeleton_key = (phase, big_t, seqs, rows, par)
        known = self._skeletons.get(skeleton_key) if serving else None
        if known is not None:
            b = _Builder(c.dtype, n_l, self._ops)
            n_sliding = self._stage_kinds(n_l)[0]
            if c.mla:
                self._mla_cores(b, parts, par, serving)
            else:
                self._attention_cores(b, parts, par, serving, phase, n_sliding)
            return OpGraph(
                phase=phase,
                ops=known.before + tuple(b.ops) + known.after,
                shape=shape,
                dtype=c.dtype,
                notes=known.notes,
            )
        h = c.hidden
        e = dtype_bytes(c.dtype)
        act_bytes = big_t * h * e
        b = _Builder(c.dtype, n_l, self._ops)
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

        eager_norm = c.elementwise == "eager" and c.norm == "rmsnorm"
        norm_r, norm_wr = passes(EAGER_RMSNORM, (1.0, 1.0), eager_norm, b.e)

        def norm(name: str, count: int | None = None, layer: str = "layer") -> None:
            b.ew(
                name,
                OpKind.NORM,
                tn * h,
                norm_r * tn * h + norm_w,
                norm_wr * tn * h,
                NORM_FLOPS * tn * h,
                norm_w,
                count,
                layer,
            )

        drop = phase is Phase.TRAIN and c.hidden_dropout > 0

        def residual(name: str) -> None:
            el = tn * h
            if not drop:
                b.ew(name, OpKind.ELEMENTWISE, el, 2 * el, el, el)
            elif c.elementwise == "fused":  # Megatron's fused bias-dropout-add: one kernel
                b.raw(
                    name,
                    OpKind.ELEMENTWISE,
                    2 * el,
                    2 * el * b.e,
                    el * (b.e + DROPOUT_MASK_BYTES),
                    2 * el,
                )
            else:  # the branch's dropout (its output and keep-mask), then the add
                drop_name = name.removesuffix(".residual") + ".dropout"
                b.raw(
                    drop_name, OpKind.ELEMENTWISE, el, el * b.e, el * (b.e + DROPOUT_MASK_BYTES), el
                )
                b.ew(name, OpKind.ELEMENTWISE, el, 2 * el, el, el)

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

        # one layer, repeated n_l times: the stage's layers L-n_l .. L-1 of the model
        n_sliding, n_moe = self._stage_kinds(n_l)
        layer_start = len(b.ops)
        norm("ln1")
        gather_in("attn")
        if c.mla:
            self._mla_ops(b, parts, big_t, rows, par, serving)
        else:
            self._attention_ops(b, parts, big_t, rows, par, serving, phase, n_sliding)
        if not c.parallel_block:
            reduce_out("attn")
            if c.sandwich_norm:
                norm("ln1_post")
            residual("attn.residual")
            norm("ln2")
            gather_in("mlp")
        if n_moe:
            saved, b.count = b.count, n_moe
            self._moe_ops(b, big_t, par)
            b.count = saved
        if n_l - n_moe:
            dense_f = (c.dense_ffn if c.moe else c.ffn) // t
            self._mlp_ops(b, "mlp", big_t, dense_f, n_l - n_moe)
        reduce_out("mlp")
        if c.sandwich_norm:
            norm("ln2_post")
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
            if c.final_softcap is not None:
                el = head_rows * vd
                b.ew(
                    "lm_head.softcap",
                    OpKind.ELEMENTWISE,
                    el,
                    el,
                    el,
                    SOFTCAP_FLOPS * el,
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
            else:
                # the named modules' ops; `selective` is the attention core (Korthikanti et
                # al. 2022): the fused kernel, or every op between the QKV and output
                # projections of `attention: unfused`
                mods = recomputed_modules(shape.recompute)
                fwd_extra = (
                    recompute_ops(o for o in layer_ops if self._op_modules(o) & mods)
                    if mods
                    else []
                )
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
        if serving and b.cores is not None:
            lo, hi = b.cores
            self._skeletons[skeleton_key] = _Skeleton(
                tuple(b.ops[:lo]), tuple(b.ops[hi:]), tuple(notes)
            )
        return OpGraph(
            phase=phase, ops=tuple(b.ops), shape=shape, dtype=c.dtype, notes=tuple(notes)
        )

    def _attention_ops(
        self,
        b: _Builder,
        parts: tuple[Shape, ...],
        big_t: int,
        rows: int,
        par: Parallelism,
        serving: bool,
        phase: Phase,
        n_sliding: int,
    ) -> None:
        """Multi-, grouped- or multi-query attention of one layer over ``big_t`` new tokens
        in ``parts``: the fused QKV GEMM (with Q/K/V biases when the config has them), the
        per-head Q/K norm (Qwen3), RoPE, the KV-cache write, one attention core per part
        (a second one, ``.local``, for the stage's ``n_sliding`` sliding-window layers,
        whose keys stop at the window) and the output projection."""
        c = self.cfg
        t = par.tensor
        h, d = c.hidden, c.d
        hd, kvd = c.heads // t, math.ceil(c.kv / t)
        e = b.e
        b.gemm("attn.qkv", big_t, (hd + 2 * kvd) * d, h, c.has_qkv_bias)
        if c.qk_norm:
            el = big_t * (hd + kvd) * d
            b.ew("attn.qk_norm", OpKind.NORM, el, el + 2 * d, el, NORM_FLOPS * el, 2 * d)
        if c.position == "rope":
            el = big_t * (hd + kvd) * d
            rd, wr = passes(EAGER_ROPE, (1.0, 1.0), c.elementwise == "eager", e)
            b.ew(
                "attn.rope",
                OpKind.ELEMENTWISE,
                el,
                rd * el + 2 * rows * d,
                wr * el,
                ROPE_FLOPS * el,
            )
        if c.elementwise == "eager" and c.attention == "flash" and kvd < hd:
            # repeat_kv: K and V copied to every query head of their group
            b.ew(
                "attn.repeat_kv",
                OpKind.ELEMENTWISE,
                2 * big_t * hd * d,
                2 * big_t * kvd * d,
                2 * big_t * hd * d,
                strided=True,  # an expand of each KV head, copied
            )
        kv_e = dtype_bytes(c.kv_type)
        if serving:  # K and V of the new tokens read in ``dtype``, stored in ``kv_type``
            el = 2 * big_t * kvd * d
            b.raw("attn.kv_write", OpKind.ELEMENTWISE, el, el * e, el * kv_e)
        start = len(b.ops)
        self._attention_cores(b, parts, par, serving, phase, n_sliding)
        b.cores = (start, len(b.ops))
        if c.attention == "unfused":  # head-major context -> token-major: one copy
            el = big_t * hd * d
            b.ew("attn.core.context", OpKind.ELEMENTWISE, el, el, el, strided=True)
        elif c.elementwise == "eager":  # the SDPA output, made token-major (.contiguous())
            el = big_t * hd * d
            b.ew("attn.context", OpKind.ELEMENTWISE, el, el, el, strided=True)
        b.gemm("attn.out", big_t, h, hd * d, c.bias)

    def _attention_cores(
        self,
        b: _Builder,
        parts: tuple[Shape, ...],
        par: Parallelism,
        serving: bool,
        phase: Phase,
        n_sliding: int,
    ) -> None:
        """The attention core of each of ``parts`` in one layer (:meth:`_attention_ops`):
        the only ops of a serving step that depend on how its tokens split into parts
        and on their contexts."""
        c = self.cfg
        t = par.tensor
        d = c.d
        hd, kvd = c.heads // t, math.ceil(c.kv / t)
        e = b.e
        kv_e = dtype_bytes(c.kv_type)
        n_full = b.count - n_sliding
        for i, p in enumerate(parts):
            q_len = p.tokens
            keys = (p.context + p.tokens) if serving else p.tokens
            name = "attn.core" if len(parts) == 1 else f"attn.core.{i}"
            if c.attention == "unfused":
                self._unfused_ops(b, p.batch, q_len, keys, par, name, serving, phase is Phase.TRAIN)
                continue
            for suffix, count, window in (
                ("", n_full, None),
                (".local", n_sliding, c.sliding_window),
            ):
                if not count:
                    continue
                if window is None:
                    pairs, kv_keys = causal_pairs(q_len, keys), keys
                else:
                    pairs = window_pairs(q_len, keys, window)
                    kv_keys = min(keys, window + q_len - 1)
                bh = hd * p.batch
                flops = 4.0 * d * pairs * bh
                if c.attn_softcap is not None:
                    flops += SOFTCAP_FLOPS * pairs * bh
                kv_b = kv_e if serving else e
                b.attention(
                    name + suffix,
                    flops,
                    p.batch * q_len * hd * d * e + 2 * p.batch * kv_keys * kvd * d * kv_b,
                    p.batch * q_len * hd * d * e,
                    (q_len, kv_keys, d),
                    (p.batch, hd, kvd),
                    kv_b,
                    count,
                )

    def _mla_ops(
        self,
        b: _Builder,
        parts: tuple[Shape, ...],
        big_t: int,
        rows: int,
        par: Parallelism,
        serving: bool,
    ) -> None:
        """Multi-head latent attention of one layer (DeepSeek-V2, arXiv:2405.04434, §2.1).

        Over the ``big_t`` new tokens: the query down-projection, its norm and
        up-projection (or one query projection without ``q_lora_rank``); the joint KV
        down-projection to the latent and the shared rotary key, the latent's norm; RoPE
        on the rotary parts; in serving the latent and rotary key written to the cache
        (``kv_lora_rank + qk_rope_head_dim`` per token). Then per part:

        * a DECODE part runs the **absorbed** form (the up-projections folded into the
          query and the output, as FlashMLA and vLLM decode): each head's query is mapped
          into the latent space (a GEMM batched over heads), attention reads the cached
          latent once for all heads (one shared KV head of size ``kv_lora_rank +
          qk_rope_head_dim``, values of size ``kv_lora_rank``), and each head's output is
          mapped back to ``v_head_dim``;
        * a PREFILL, FORWARD or TRAIN part runs the **expanded** form: the latent of all its
          keys (cached context included) is up-projected to per-head keys and values, and
          attention runs per head with ``head_dim`` query/key and ``v_head_dim`` values.

        Tensor parallelism splits heads; the down-projections and the latent are
        replicated on every rank.
        """
        c = self.cfg
        t = par.tensor
        h, d = c.hidden, c.d
        hd = c.heads // t
        cq, ckv = c.q_lora_rank, c.kv_lora_rank or 0
        r, dv = c.qk_rope_head_dim or 0, c.v_head_dim or 0
        e = b.e
        kv_e = float(dtype_bytes(c.kv_type)) if serving else e
        if cq:
            b.gemm("attn.q_a", big_t, cq, h, False)
            b.ew(
                "attn.q_a_norm",
                OpKind.NORM,
                big_t * cq,
                big_t * cq + cq,
                big_t * cq,
                NORM_FLOPS * big_t * cq,
                cq,
            )
            b.gemm("attn.q_b", big_t, hd * d, cq, False)
        else:
            b.gemm("attn.q", big_t, hd * d, h, False)
        b.gemm("attn.kv_a", big_t, ckv + r, h, False)
        b.ew(
            "attn.kv_a_norm",
            OpKind.NORM,
            big_t * ckv,
            big_t * ckv + ckv,
            big_t * ckv,
            NORM_FLOPS * big_t * ckv,
            ckv,
        )
        el = big_t * (hd + 1) * r
        b.ew("attn.rope", OpKind.ELEMENTWISE, el, el + 2 * rows * r, el, ROPE_FLOPS * el)
        if serving:
            el = big_t * (ckv + r)
            b.raw("attn.kv_write", OpKind.ELEMENTWISE, el, el * e, el * kv_e)
        start = len(b.ops)
        self._mla_cores(b, parts, par, serving)
        b.cores = (start, len(b.ops))
        b.gemm("attn.out", big_t, h, hd * dv, False)

    def _mla_cores(
        self, b: _Builder, parts: tuple[Shape, ...], par: Parallelism, serving: bool
    ) -> None:
        """The per-part ops of one MLA layer (:meth:`_mla_ops`): the absorbed or expanded
        attention of each part, the only ops of a serving step that depend on how its
        tokens split into parts and on their contexts."""
        c = self.cfg
        t = par.tensor
        d = c.d
        hd = c.heads // t
        ckv = c.kv_lora_rank or 0
        r, dv = c.qk_rope_head_dim or 0, c.v_head_dim or 0
        dn = d - r
        e = b.e
        kv_e = float(dtype_bytes(c.kv_type)) if serving else e
        for i, p in enumerate(parts):
            tag = "" if len(parts) == 1 else f".{i}"
            q_rows = p.batch * p.tokens
            keys = (p.context + p.tokens) if serving else p.tokens
            pairs = causal_pairs(p.tokens, keys)
            bh = hd * p.batch
            if p.phase is Phase.DECODE:
                b.gemm(f"attn.q_absorb{tag}", q_rows, ckv, dn, False, batch=hd)
                d_qk, d_v, kv_heads = ckv + r, ckv, 1
                kv_read = p.batch * keys * (ckv + r) * kv_e
            else:
                b.gemm(f"attn.kv_b{tag}", p.batch * keys, hd * (dn + dv), ckv, False)
                d_qk, d_v, kv_heads = d, dv, hd
                kv_read = p.batch * keys * hd * (d + dv) * e
                # per-head keys: the up-projected part and the shared rotary key, joined
                b.ew(
                    f"attn.k_cat{tag}",
                    OpKind.ELEMENTWISE,
                    p.batch * keys * hd * d,
                    p.batch * keys * (hd * dn + r),
                    p.batch * keys * hd * d,
                )
            el = q_rows * hd * d_qk  # the query's two parts joined for the kernel
            b.ew(f"attn.q_cat{tag}", OpKind.ELEMENTWISE, el, el, el)
            b.attention(
                f"attn.core{tag}",
                2.0 * (d_qk + d_v) * pairs * bh,
                q_rows * hd * d_qk * e + kv_read,
                q_rows * hd * d_v * e,
                (p.tokens, keys, d_qk),
                (p.batch, hd, kv_heads),
                kv_e if p.phase is Phase.DECODE else e,
                b.count,
            )
            if p.phase is Phase.DECODE:
                b.gemm(f"attn.v_absorb{tag}", q_rows, dv, ckv, False, batch=hd)
                el = q_rows * hd * dv  # head-major to token-major for the output projection
                b.ew(f"attn.v_absorb.layout{tag}", OpKind.ELEMENTWISE, el, el, el)

    def _mlp_ops(self, b: _Builder, name: str, n: int, f: int, count: int) -> None:
        """A dense MLP of hidden size ``f`` (per device) over ``n`` tokens, ``count``
        layers: the up (fused gate/up when gated) GEMM, the activation, the down GEMM."""
        c = self.cfg
        b.gemm(f"{name}.up", n, f * (2 if c.gated_mlp else 1), c.hidden, c.bias, count=count)
        if c.gated_mlp:
            rd, wr = passes(EAGER_GLU, (2.0, 1.0), c.elementwise == "eager", b.e)
            b.ew(
                f"{name}.glu",
                OpKind.ELEMENTWISE,
                n * f,
                rd * n * f,
                wr * n * f,
                GLU_FLOPS * n * f,
                count=count,
            )
        else:
            b.ew(f"{name}.act", OpKind.ELEMENTWISE, n * f, n * f, n * f, n * f, count=count)
        b.gemm(f"{name}.down", n, c.hidden, f, c.bias, count=count)

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
        if train and c.attention_dropout > 0:
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
        pairs = n * k  # (token, expert) rows this device's tokens route
        # rows the busiest device's experts receive: the mean times the imbalance
        arrive = pairs * (c.expert_imbalance if ep > 1 else 1.0)
        cap = max(1, math.ceil(arrive / eloc))
        touched = eloc * (1.0 - (1.0 - k / ex) ** (n * ep))
        # a local expert's rows: each of the n * ep tokens routed to it with probability
        # k / ex (uniform routing), a binomial spread about the mean
        spread = math.sqrt(n * ep * (k / ex) * (1.0 - k / ex))
        ib = INDEX_BYTES
        b.gemm("moe.router", n, ex, h, False)
        if c.router_bias:
            b.ew("moe.route_bias", OpKind.ELEMENTWISE, n * ex, n * ex + ex, n * ex, n * ex, ex)
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
            b.coll("moe.dispatch.all_to_all", Collective.ALL_TO_ALL, arrive * h * e, ep)
        up_n = f * (2 if c.gated_mlp else 1)
        for name, nn_, kk in (("moe.up", up_n, h), ("moe.down", h, f)):
            w = touched * nn_ * kk * e
            b.ops.append(
                Op(
                    name=name,
                    kind=OpKind.MATMUL,
                    flops=2.0 * arrive * nn_ * kk,
                    bytes_read=arrive * kk * e + w,
                    bytes_written=arrive * nn_ * e,
                    param_bytes=w,
                    dims=(cap, nn_, kk),
                    batch=eloc,
                    count=b.count,
                    dtype=c.dtype,
                    layer="layer",
                    attrs=(
                        ("experts_touched", touched),
                        (ROWS_MEAN, arrive / eloc),
                        (ROWS_STD, spread),
                    ),
                )
            )
            if name == "moe.up":
                a = arrive * f
                if c.gated_mlp:
                    b.ew("moe.glu", OpKind.ELEMENTWISE, a, 2 * a, a, GLU_FLOPS * a)
                else:
                    b.ew("moe.act", OpKind.ELEMENTWISE, a, a, a, a)
        if ep > 1:
            b.coll("moe.combine.all_to_all", Collective.ALL_TO_ALL, arrive * h * e, ep)
        if c.shared_ffn:  # every token's shared experts, added to the routed output
            self._mlp_ops(b, "moe.shared", n, c.shared_ffn // par.tensor, b.count)
            b.ew("moe.shared.add", OpKind.ELEMENTWISE, n * h, 2 * n * h, n * h, n * h)
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

    def _stage_kinds(self, n_l: int) -> tuple[int, int]:
        """(sliding-window layers, MoE layers) among the last ``n_l`` layers, the stage a
        graph holds (memoized: every graph of a run asks for the same stage)."""
        hit = self._stage_layers.get(n_l)
        if hit is None:
            c = self.cfg
            stage = range(c.layers - n_l, c.layers)
            hit = self._stage_layers[n_l] = (
                sum(1 for i in stage if c.is_sliding(i)),
                sum(1 for i in stage if c.is_moe_layer(i)),
            )
        return hit

    def _stage_params(self, par: Parallelism) -> float:
        """Parameters one device of the graph's stage holds (for the optimizer step)."""
        c = self.cfg
        attn, _ = self._attn_params()
        t = par.tensor
        n_l = math.ceil(c.layers / par.pipeline)
        layers = 0.0
        for i in range(c.layers - n_l, c.layers):
            mlp = self._mlp_params(i)[0]
            layers += attn / t + mlp / (t * (par.expert if c.is_moe_layer(i) else 1))
        head = c.vocab * c.hidden / t
        if par.pipeline == 1:
            emb = c.vocab * c.hidden / t + (c.seq_len * c.hidden if c.position == "learned" else 0)
            head = 0 if c.tied_embeddings else head
            return layers + emb + head + c.hidden
        return layers + head + c.hidden

    # memory ------------------------------------------------------------------------------------

    def recomputable(self) -> frozenset[str]:
        """The attention core, the two norms and a dense MLP; with multi-head latent
        attention its up-projections; with experts the MoE layer, its activation and (when
        it has them) its shared experts."""
        c = self.cfg
        mods = {"core_attn", "layernorm", "mlp"}
        if c.mla:
            mods.add("mla_up_proj")
        if c.moe:
            mods |= {"moe", "moe_act"} | ({"shared_experts"} if c.shared_ffn else set())
        return frozenset(mods)

    def _op_modules(self, op: Op) -> frozenset[str]:
        """The recompute modules an op of a layer belongs to (by the builder's names)."""
        n = op.name
        if n == "attn.core" or n.startswith("attn.core."):
            return CORE_ATTN
        if n in ("ln1", "ln2"):
            return LAYERNORM
        if self.cfg.mla and n.startswith(_MLA_UP_OPS):
            return MLA_UP_PROJ
        if n.startswith("moe."):
            if n in ("moe.glu", "moe.act"):
                return _MOE_ACT_OPS
            if n.startswith("moe.shared.") and n != "moe.shared.add":
                return _MOE_SHARED_OPS
            return MOE
        if n.startswith("mlp.") and op.collective is None and n not in _MLP_OUTSIDE:
            return MLP
        return frozenset()

    def activation_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """Activation memory of one micro-batch on one device of one pipeline stage: the
        tensors each of the stage's ``ceil(layers / pipeline)`` layers saves for its
        backward (:mod:`xpusim.plugins.models.activations`, one by one), under
        ``recompute``:

        * ``none``: every saved tensor; for Korthikanti et al.'s architecture (2022,
          arXiv:2205.05198, Table 2) ``sbh(10 + 24/t + 5as/(ht))`` per layer, ``sbh(34 +
          5as/h)/t`` with sequence parallelism (the ``5as/h`` of the score-sized tensors
          only with ``attention: unfused``; a flash kernel keeps its log-sum-exp instead);
        * ``selective``: without the attention core's own tensors, ``sbh(10 + 24/t)``
          there, ``34sbh/t`` with sequence parallelism;
        * ``selective:<modules>``: without what each module of :meth:`recomputable` keeps
          inside it;
        * ``full``: each layer's input, ``2sbh`` (``/t`` with sequence parallelism).

        A MoE stage counts its MoE and dense layers as :meth:`build` places them.
        """
        return self._activations(shape, parallel, recompute, linear_only=False)

    def head_activation_bytes(self, shape: Shape, parallel: Parallelism) -> float:
        """The final norm's and the LM head's inputs and the loss's fp32 log-softmax,
        ``sb(2h·e + 4V/t)`` (the ``h`` terms ``/t`` with sequence parallelism; Megatron-LM's
        theoretical memory counts ``4·sbh·(1 + V/h)`` for 16-bit ``e``)."""
        tokens = float(shape.tokens * shape.batch)
        return sum(x.bytes(tokens, 0.0, parallel) for x in head_activations(self.cfg))

    def linear_input_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """The linear layers' saved inputs among :meth:`activation_bytes`: for Korthikanti
        et al.'s architecture (§4.1) the QKV projection's ``2sbh`` and the first MLP
        linear's ``2sbh`` (outside the tensor-parallel region, ``/t`` with sequence
        parallelism), the output projection's ``2sbh/t`` and the second MLP linear's
        ``8sbh/t``; none under full recomputation, which keeps only the layer input."""
        if recompute == "full":
            return 0.0
        return self._activations(shape, parallel, recompute, linear_only=True)

    def _activations(
        self, shape: Shape, parallel: Parallelism, recompute: str, linear_only: bool
    ) -> float:
        """Sum of the stage's saved tensors (:meth:`activation_bytes`)."""
        c = self.cfg
        tokens = float(shape.tokens * shape.batch)
        n_l = math.ceil(c.layers / max(1, parallel.pipeline))
        if recompute == "full":  # each layer's input (the residual stream)
            return n_l * layer_input(c).bytes(tokens, 0.0, parallel)
        mods = recomputed_modules(recompute)
        n_moe = self._stage_kinds(n_l)[1]
        ep = max(1, parallel.expert)
        rows = tokens * c.top_k * (c.expert_imbalance if ep > 1 else 1.0)
        unfused = c.attention == "unfused"
        total = 0.0
        for moe, count in ((False, n_l - n_moe), (True, n_moe)):
            if not count:
                continue
            for saved in layer_activations(c, shape.tokens, moe, unfused):
                if linear_only and not saved.linear_input:
                    continue
                if saved.dropped_by & mods:
                    continue
                total += count * saved.bytes(tokens, rows, parallel)
        return total


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
    "hidden_dropout": 0.1,
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
