"""The tensors a decoder layer keeps from its forward pass for its backward pass.

Training memory is mostly these saved tensors, so they are listed one by one, as the
modules of Megatron-Core and Transformer Engine save them (fused kernels: a norm keeps its
input, a linear layer its input, a fused gated activation its input, a flash-attention
kernel its ``Q``, ``K``, ``V``, output and log-sum-exp), rather than through one
closed-form constant. For the architecture Korthikanti et al. derived their formula on
(arXiv:2205.05198, §4.1 and Table 2: multi-head attention, a GELU MLP of ``4h``,
LayerNorm, dropout after the attention and the MLP, 16-bit activations) the inventory
adds up to their ``sbh(10 + 24/t + 5as/(ht))`` exactly; for today's models it follows
what they change:

* grouped-query attention keeps ``K`` and ``V`` of ``kv_heads`` heads, not ``heads``;
* a gated MLP's fused activation keeps both halves of the first linear layer's output
  (``2f``, Megatron-Core's ``bias_swiglu``), the second linear layer its ``f``-wide input;
* models without dropout (Llama, Mixtral, DeepSeek) keep no keep-masks
  (``hidden_dropout``);
* a mixture of experts keeps, for each (token, expert) row its device's experts receive
  (the busiest device's, ``expert_imbalance`` times the mean), the dispatched input of
  the expert's first linear layer, the activation's input, the second linear layer's
  input and the expert's output (weighted by the router probability in the combine, whose
  gradient needs it), plus the router's probabilities and the shared experts' MLP;
* multi-head latent attention keeps the latents its norms and up-projections take and
  the per-head ``Q``, ``K``, ``V`` the up-projections expand them to;
* a flash kernel keeps its fp32 log-sum-exp (4 bytes per head and token); an unfused
  core keeps the score-sized softmax output, dropout mask and dropped probabilities;
* PyTorch module code (``elementwise: eager``, Meta's Llama reference and torchtitan
  without ``torch.compile``) keeps what its autograd nodes save: each RMSNorm an fp32 copy
  of its input (for the square) and its 16-bit normed value (for the weight), the SDPA
  call K and V repeated to every query head, the gated activation three ``f``-wide tensors
  (``w1``'s output, its SiLU and ``w3``'s output) rather than two. The complex RoPE
  product keeps nothing per token (its other factor, the frequency table, needs no
  gradient) and the SDPA output's ``.contiguous()`` is the flash kernel's own token-major
  storage.

Tensor parallelism splits what lies between a layer's column- and row-parallel linear
layers (``inside``: heads, the MLP's hidden width, the experts' width); the norms,
the linear layers' inputs before the split and the dropout masks are whole on every rank
(``outside``) unless sequence parallelism splits them; the latents of multi-head latent
attention and the dispatched expert rows are whole on every rank (``replicated``).

Recomputation drops what it recomputes (:mod:`xpusim.engine.recompute`): ``selective``
the attention core's own tensors (Korthikanti et al.'s selective recomputation,
Megatron-Core's default ``core_attn`` module: the score-sized tensors, or a flash
kernel's log-sum-exp; its inputs ``Q``, ``K``, ``V`` stay as the checkpoint's inputs and
its output as the next linear layer's input); ``selective:<modules>`` what each named
module keeps inside it (``layernorm``: the norms' outputs, which the projections after
them take as input; ``mla_up_proj``: the normed latents and the expanded ``Q``, ``K``,
``V``; ``moe_act``: the experts' activation outputs; ``mlp``, ``moe``,
``shared_experts``: everything of the MLP, the MoE layer or its shared experts but their
input); ``full`` keeps only each layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from xpusim.engine.graph import dtype_bytes
from xpusim.engine.system import Parallelism

if TYPE_CHECKING:
    from xpusim.plugins.models.transformer import DecoderConfig

__all__ = [
    "CORE_ATTN",
    "FP32_BYTES",
    "LAYERNORM",
    "LOSS_BYTES",
    "LSE_BYTES",
    "MASK_BYTES",
    "MLA_UP_PROJ",
    "MLP",
    "MOE",
    "MOE_ACT",
    "SHARED_EXPERTS",
    "Region",
    "Saved",
    "head_activations",
    "layer_activations",
    "layer_input",
]

Region = Literal["outside", "inside", "replicated"]
"""Where a saved tensor lies relative to tensor parallelism (module docstring)."""

LSE_BYTES = 4.0
"""Bytes per head and token of a flash kernel's saved log-sum-exp (fp32, the
``softmax_lse`` FlashAttention returns for its backward)."""

LOSS_BYTES = 4.0
"""Bytes per logit the loss keeps: the cross entropy runs in fp32 on the logits cast up
(Megatron-Core's vocab-parallel cross entropy; torchtitan's ``pred.float()`` before
``cross_entropy``), whose log-softmax output its backward needs; Megatron-LM's
theoretical memory counts ``4·sbh·(1 + V/h)`` for the head's and the loss's inputs."""

FP32_BYTES = 4.0
"""Bytes of an fp32 element (module code computes norms and rotations in fp32)."""

MASK_BYTES = 1.0
"""Bytes per element of a dropout keep-mask (``native_dropout`` returns a ``bool``)."""


CORE_ATTN = frozenset({"core_attn"})
LAYERNORM = frozenset({"layernorm"})
MLA_UP_PROJ = frozenset({"mla_up_proj"})
MLP = frozenset({"mlp"})
MOE = frozenset({"moe"})
MOE_ACT = frozenset({"moe_act"})
SHARED_EXPERTS = frozenset({"shared_experts"})
"""The recompute modules (:data:`~xpusim.engine.recompute.RECOMPUTE_MODULES`) one by one,
as the sets a saved tensor's ``dropped_by`` and a graph op's modules are made of."""


@dataclass(frozen=True, slots=True)
class Saved:
    """One tensor a layer saves for its backward pass.

    ``elements`` per token of the micro-batch (per routed row for ``expert`` tensors),
    before any split; ``bytes_per`` per element; ``region`` how tensor parallelism splits
    it; ``linear_input`` when it is a linear layer's saved input (FP8 recipes that cache
    those inputs keep them at one byte); ``dropped_by`` the recompute modules
    (:data:`~xpusim.engine.recompute.RECOMPUTE_MODULES`) any one of which, recomputed,
    drops it; ``expert`` when it is counted per routed (token, expert) row rather than per
    token.
    """

    name: str
    elements: float
    bytes_per: float
    region: Region
    linear_input: bool = False
    dropped_by: frozenset[str] = frozenset()
    expert: bool = False

    def bytes(self, tokens: float, rows: float, parallel: Parallelism) -> float:
        """Bytes one device keeps for ``tokens`` tokens and ``rows`` routed rows."""
        t = max(1, parallel.tensor)
        n = rows if self.expert else tokens
        size = n * self.elements * self.bytes_per
        if self.region == "inside" or (self.region == "outside" and parallel.sequence and t > 1):
            return size / t
        return size


def layer_activations(cfg: DecoderConfig, seq: int, moe: bool, unfused: bool) -> list[Saved]:
    """The tensors one layer of ``cfg`` saves in training at sequence length ``seq``: a
    MoE layer when ``moe``; ``unfused`` for the score-sized tensors of an unfused core."""
    c = cfg
    e = float(dtype_bytes(c.dtype))
    h, d = c.hidden, c.d
    eager = c.elementwise == "eager"
    out: list[Saved] = _norm_input(c, "ln1", e)
    # the norm's output, which the projections after it save as their input
    out.append(Saved("attn.in", h, e, "outside", linear_input=True, dropped_by=LAYERNORM))
    if c.mla:
        out += _mla(c, e)
    else:
        q, kv = c.heads * d, c.kv * d
        if c.qk_norm:  # the per-head norms' inputs, before RoPE
            out.append(Saved("attn.qk_norm.input", q + kv, e, "inside"))
        out.append(Saved("attn.core.q", q, e, "inside"))
        # module code repeats K and V to every query head before the SDPA call
        width = q if eager and not unfused else kv
        out.append(Saved("attn.core.kv", 2 * width, e, "inside"))
        out.append(Saved("attn.proj.input", q, e, "inside", linear_input=True))
    if unfused:
        scores = c.heads * seq  # one row of scores per head and query token
        out.append(Saved("attn.core.softmax", scores, e, "inside", dropped_by=CORE_ATTN))
        if c.attention_dropout > 0:
            out.append(
                Saved("attn.core.dropout_mask", scores, MASK_BYTES, "inside", dropped_by=CORE_ATTN)
            )
            out.append(Saved("attn.core.dropout_out", scores, e, "inside", dropped_by=CORE_ATTN))
    else:
        out.append(Saved("attn.core.lse", c.heads, LSE_BYTES, "inside", dropped_by=CORE_ATTN))
    if c.hidden_dropout > 0:
        out.append(Saved("attn.dropout_mask", h, MASK_BYTES, "outside"))
    if c.sandwich_norm:
        out.append(Saved("ln1_post.input", h, e, "outside"))
    if not c.parallel_block:  # a parallel block's MLP takes the attention's norm output
        out += _norm_input(c, "ln2", e)
        out.append(Saved("mlp.in", h, e, "outside", linear_input=True, dropped_by=LAYERNORM))
    if moe:
        out += _moe(c, e)
    else:
        out += _mlp(c, "mlp", c.dense_ffn if c.moe else c.ffn, e, MLP)
    if c.sandwich_norm:
        out.append(Saved("ln2_post.input", h, e, "outside"))
    if c.hidden_dropout > 0:
        out.append(Saved("mlp.dropout_mask", h, MASK_BYTES, "outside"))
    return out


def head_activations(cfg: DecoderConfig) -> list[Saved]:
    """What the last stage's head keeps per token: the final norm's input, the LM head's
    input and the loss's fp32 log-softmax over the device's share of the vocabulary."""
    e = float(dtype_bytes(cfg.dtype))
    return [
        Saved("final_norm.input", cfg.hidden, e, "outside"),
        Saved("lm_head.input", cfg.hidden, e, "outside", linear_input=True),
        Saved("loss.log_softmax", cfg.vocab, LOSS_BYTES, "inside"),
    ]


def _norm_input(c: DecoderConfig, name: str, e: float) -> list[Saved]:
    """What a norm keeps of its input: the input itself; as RMSNorm module code
    (``elementwise: eager``, ``self._norm(x.float()).type_as(x) * self.weight``) the fp32
    copy its square reads and the normed value its weight multiplies."""
    if c.elementwise == "eager" and c.norm == "rmsnorm":
        return [
            Saved(f"{name}.input", c.hidden, FP32_BYTES, "outside"),
            Saved(f"{name}.normed", c.hidden, e, "outside", dropped_by=LAYERNORM),
        ]
    return [Saved(f"{name}.input", c.hidden, e, "outside")]


def layer_input(cfg: DecoderConfig) -> Saved:
    """A layer's input, the first norm's saved input: all that full recomputation keeps."""
    return Saved("ln1.input", cfg.hidden, float(dtype_bytes(cfg.dtype)), "outside")


def _mlp(
    c: DecoderConfig,
    name: str,
    f: int,
    e: float,
    drop: frozenset[str],
    act: frozenset[str] = frozenset(),
    expert: bool = False,
) -> list[Saved]:
    """An MLP of width ``f`` after its first linear layer's input: the fused activation's
    input (both halves when gated) and the second linear layer's input (the activation's
    output), dropped when a module of ``drop`` is recomputed, the latter also by one of
    ``act``. A gated activation as module code (``F.silu(w1(x)) * w3(x)``) keeps three
    ``f``-wide tensors: ``w1``'s output for the activation, its result and ``w3``'s output
    for the product."""
    halves = 3 if c.elementwise == "eager" else 2
    width = halves * f if c.gated_mlp else f
    return [
        Saved(f"{name}.act.input", width, e, "inside", dropped_by=drop, expert=expert),
        Saved(
            f"{name}.fc2.input",
            f,
            e,
            "inside",
            linear_input=True,
            dropped_by=drop | act,
            expert=expert,
        ),
    ]


def _moe(c: DecoderConfig, e: float) -> list[Saved]:
    """A MoE MLP: the router's probabilities per token, per routed row the dispatched
    input, the expert MLP's tensors and the expert's output, then the shared experts."""
    h = c.hidden
    out = [
        Saved("moe.router.probs", c.experts, e, "outside", dropped_by=MOE),
        Saved("moe.dispatched", h, e, "replicated", linear_input=True, dropped_by=MOE, expert=True),
        *_mlp(c, "moe.expert", c.ffn, e, MOE, MOE_ACT, expert=True),
        Saved("moe.expert.output", h, e, "replicated", dropped_by=MOE, expert=True),
    ]
    if c.shared_ffn:
        out += _mlp(c, "moe.shared", c.shared_ffn, e, MOE | SHARED_EXPERTS)
    return out


def _mla(c: DecoderConfig, e: float) -> list[Saved]:
    """Multi-head latent attention (the expanded form training runs): the latents the
    norms and up-projections keep, on every rank, then the per-head ``Q``, ``K``, ``V``
    and output."""
    ckv = c.kv_lora_rank or 0
    r, dv = c.qk_rope_head_dim or 0, c.v_head_dim or 0
    out: list[Saved] = []
    if c.q_lora_rank:
        cq = c.q_lora_rank
        out.append(Saved("attn.q_a_norm.input", cq, e, "replicated"))
        out.append(
            Saved("attn.q_b.input", cq, e, "replicated", linear_input=True, dropped_by=MLA_UP_PROJ)
        )
    out.append(Saved("attn.kv_a_norm.input", ckv, e, "replicated"))
    out.append(
        Saved("attn.kv_b.input", ckv, e, "replicated", linear_input=True, dropped_by=MLA_UP_PROJ)
    )
    out.append(Saved("attn.k_rope.input", r, e, "replicated"))
    out.append(Saved("attn.core.q", c.heads * c.d, e, "inside", dropped_by=MLA_UP_PROJ))
    out.append(Saved("attn.core.kv", c.heads * (c.d + dv), e, "inside", dropped_by=MLA_UP_PROJ))
    out.append(Saved("attn.proj.input", c.heads * dv, e, "inside", linear_input=True))
    return out
