"""The per-tensor activation inventory of a decoder layer (plugins/models/activations.py)."""

from __future__ import annotations

import pytest

from xpusim.engine.graph import Phase, Shape
from xpusim.engine.system import Parallelism
from xpusim.plugins.models.activations import layer_activations
from xpusim.plugins.models.hf import HFFamily
from xpusim.plugins.models.transformer import FAMILIES

FAM = {f.name: f for f in FAMILIES}
HF = HFFamily()
S = 4096
SHAPE = Shape(Phase.TRAIN, batch=1, tokens=S)


def test_llama_keeps_grouped_kv_and_both_halves_of_the_gated_mlp() -> None:
    """Llama 3 70B (GQA 64/8, SwiGLU 28,672, no dropout): per layer and token, the two
    norm inputs and the two projection inputs (h each, outside the tensor split), Q and
    the output (64·128 each), K and V of 8 heads, the flash kernel's log-sum-exp, the
    fused SwiGLU's 2f input and the down projection's f input; bf16."""
    m = FAM["llama"].configure({"preset": "llama-3-70b"})
    c = m.cfg
    h, q, kv, f, a = c.hidden, c.heads * c.d, c.kv * c.d, c.ffn, c.heads
    assert (h, q, kv, f, a) == (8192, 8192, 1024, 28672, 64)
    outside = 4 * h * 2
    inside = (2 * q + 2 * kv + 3 * f) * 2 + 4 * a
    for t, sp in ((1, False), (8, False), (8, True)):
        par = Parallelism(tensor=t, sequence=sp)
        want = S * (outside / (t if sp else 1) + inside / t) * c.layers
        assert m.activation_bytes(SHAPE, par, "none") == pytest.approx(want)
    # against Korthikanti et al.'s GPT-3 constant the grouped K/V save and the gated MLP costs
    per_sbh = m.activation_bytes(SHAPE, Parallelism(), "none") / (S * h * c.layers)
    assert per_sbh == pytest.approx((8 * h + 2 * (2 * q + 2 * kv + 3 * f) + 4 * a) / h)
    assert 33 < per_sbh < 34  # 10 + 24 would be GPT-3's with its dropout masks


def test_dropout_masks_follow_hidden_dropout() -> None:
    """The ``gpt`` family trains with Megatron's hidden dropout (two 1-byte masks per
    token and hidden unit); Llama has none; the field moves only the masks."""
    gpt = FAM["gpt"].configure({"preset": "gpt3-175b"})
    dry = FAM["gpt"].configure({"preset": "gpt3-175b", "hidden_dropout": 0.0})
    assert gpt.cfg.hidden_dropout == 0.1
    assert FAM["llama"].configure({"preset": "llama-2-7b"}).cfg.hidden_dropout == 0.0
    diff = gpt.activation_bytes(SHAPE, Parallelism(), "selective") - dry.activation_bytes(
        SHAPE, Parallelism(), "selective"
    )
    assert diff == pytest.approx(2 * S * gpt.cfg.hidden * gpt.cfg.layers)


def test_moe_counts_routed_rows_at_the_busiest_device() -> None:
    """Mixtral 8x7B: each (token, expert) row keeps its dispatched input (h), the
    SwiGLU's 2f, the down projection's f and the expert's output (h); with expert
    parallelism the busiest device receives ``expert_imbalance`` times the mean rows."""
    m = FAM["mixtral"].configure({"preset": "mixtral-8x7b", "expert_imbalance": 1.25})
    c = m.cfg
    h, f, k = c.hidden, c.ffn, c.top_k
    dense_like = FAM["llama"].configure(  # the same layers with one dense MLP of width f
        {
            "layers": c.layers,
            "hidden": h,
            "heads": c.heads,
            "kv_heads": c.kv,
            "ffn_hidden": f,
            "vocab": c.vocab,
        }
    )
    routed = (2 * h + 3 * f) * 2
    dense_mlp = 3 * f * 2
    router = c.experts * 2
    for ep, imb in ((1, 1.0), (8, 1.25)):
        par = Parallelism(expert=ep)
        got = m.activation_bytes(SHAPE, par, "none") - dense_like.activation_bytes(
            SHAPE, par, "none"
        )
        assert got == pytest.approx(S * (k * imb * routed + router - dense_mlp) * c.layers)


def test_mla_keeps_latents_and_expanded_heads() -> None:
    """DeepSeek-V3's multi-head latent attention keeps its query and KV latents (before
    and after their norms), the rotary key input, and the expanded per-head Q (192), K
    (192), V (128) and output (128) of its 128 heads."""
    m = HF.configure({"preset": "deepseek-v3"})
    c = m.cfg
    names = {x.name: x for x in layer_activations(c, S, moe=True, unfused=False)}
    assert names["attn.core.q"].elements == 128 * 192
    assert names["attn.core.kv"].elements == 128 * (192 + 128)
    assert names["attn.proj.input"].elements == 128 * 128
    assert names["attn.q_b.input"].elements == 1536
    assert names["attn.kv_b.input"].elements == 512
    assert names["moe.shared.act.input"].elements == 2 * 2048
    assert "attn.dropout_mask" not in names
    # latents are whole on every tensor-parallel rank, heads are split
    one = names["attn.kv_b.input"].bytes(S, 0, Parallelism(tensor=8, sequence=True))
    assert one == S * 512 * 2
    assert names["attn.core.q"].bytes(S, 0, Parallelism(tensor=8)) == S * 128 * 192 * 2 / 8


def test_recompute_and_linear_inputs() -> None:
    """``full`` keeps each layer's input; ``selective`` drops only the core's own tensors;
    the linear inputs of a MoE layer include every routed row's two expert inputs."""
    m = FAM["mixtral"].configure({"preset": "mixtral-8x7b"})
    c = m.cfg
    par = Parallelism(tensor=2, sequence=True)
    assert m.activation_bytes(SHAPE, par, "full") == pytest.approx(S * c.hidden * 2 / 2 * c.layers)
    none = m.activation_bytes(SHAPE, par, "none")
    sel = m.activation_bytes(SHAPE, par, "selective")
    assert none - sel == pytest.approx(S * 4 * c.heads / 2 * c.layers)
    lin = m.linear_input_bytes(SHAPE, par, "none")
    h, q, f, k = c.hidden, c.heads * c.d, c.ffn, c.top_k
    want = S * (2 * h / 2 * 2 + q * 2 / 2 + k * (h * 2 + f * 2 / 2)) * c.layers
    assert lin == pytest.approx(want)
    with pytest.raises(ValueError, match="valid: none, selective, full"):
        m.activation_bytes(SHAPE, par, "most")


def test_head_keeps_the_fp32_loss_over_the_vocabulary() -> None:
    """The last stage keeps the final norm's and the LM head's inputs and the loss's fp32
    log-softmax over the device's vocabulary share: Megatron-LM's ``4·sbh·(1 + V/h)``."""
    m = FAM["llama"].configure({"preset": "llama-3-8b"})
    h, v = m.cfg.hidden, m.cfg.vocab
    assert m.head_activation_bytes(SHAPE, Parallelism()) == pytest.approx(4 * S * h * (1 + v / h))
    sp = Parallelism(tensor=4, sequence=True)
    assert m.head_activation_bytes(SHAPE, sp) == pytest.approx(S * (2 * h * 2 + 4 * v) / 4)
    assert m.head_activation_bytes(SHAPE, Parallelism(tensor=4)) == pytest.approx(
        S * (2 * h * 2 + 4 * v / 4)
    )


def test_module_code_keeps_what_its_autograd_saves() -> None:
    """``elementwise: eager`` (torchtitan's module code): each RMSNorm keeps an fp32 copy
    of its input and its 16-bit normed value, the SDPA call keeps K and V repeated to all
    32 query heads, and SwiGLU keeps three f-wide tensors."""
    spec = {"preset": "llama-3-8b"}
    fused = FAM["llama"].configure(spec)
    eager = FAM["llama"].configure({**spec, "elementwise": "eager"})
    c = fused.cfg
    h, q, kv, f = c.hidden, c.heads * c.d, c.kv * c.d, c.ffn
    extra = 2 * (4 * h + 2 * h - 2 * h)  # two norms: fp32 input and normed, not the input
    extra += 2 * (2 * q - 2 * kv) + 2 * f
    got = eager.activation_bytes(SHAPE, Parallelism(), "none") - fused.activation_bytes(
        SHAPE, Parallelism(), "none"
    )
    assert got == pytest.approx(S * extra * c.layers)
    # full recomputation keeps the 16-bit layer input either way
    assert eager.activation_bytes(SHAPE, Parallelism(), "full") == fused.activation_bytes(
        SHAPE, Parallelism(), "full"
    )
