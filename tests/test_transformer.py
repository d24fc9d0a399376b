"""Decoder families: the parametric graph equals the meta trace of the real module."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
import torch

from xpusim.engine.errors import ScenarioError
from xpusim.engine.graph import STRIDED, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.system import Parallelism
from xpusim.plugins.models.tracing import trace_module
from xpusim.plugins.models.transformer import FAMILIES, OP_FIELDS

FAM = {f.name: f for f in FAMILIES}
TINY = {"layers": 2, "hidden": 64, "heads": 8, "vocab": 100, "seq_len": 64, "ffn_hidden": 96}


def tiny(family: str, **kw):
    return FAM[family].configure({**TINY, **kw})


MODELS = {
    "gpt2": lambda: FAM["gpt"].configure({"preset": "gpt2"}),
    "tiny-llama-gqa": lambda: tiny("llama", kv_heads=2),
    "tiny-mixtral": lambda: tiny("mixtral", kv_heads=2, experts=4, top_k=2),
    "tiny-palm": lambda: tiny("palm", heads=4, head_dim=32),
    "tiny-qwen2-qkv-bias": lambda: tiny("llama", kv_heads=2, qkv_bias=True),
    "tiny-qwen3-qk-norm": lambda: tiny("llama", kv_heads=4, head_dim=16, qk_norm=True),
    "tiny-deepseek-moe": lambda: tiny(
        "mixtral",
        kv_heads=2,
        experts=4,
        top_k=2,
        shared_experts=1,
        shared_ffn_hidden=48,
        dense_layers=1,
        dense_ffn_hidden=128,
        router_bias=True,
    ),
    "tiny-gemma2-window-softcap": lambda: tiny(
        "llama",
        kv_heads=4,
        sandwich_norm=True,
        sliding_window=8,
        layer_types=("sliding", "full"),
        attn_softcap=50.0,
        final_softcap=30.0,
    ),
    "tiny-mistral-window": lambda: tiny("llama", kv_heads=2, sliding_window=20),
    "tiny-deepseek-v3-mla": lambda: tiny(
        "mixtral",
        experts=4,
        top_k=2,
        shared_experts=1,
        dense_layers=1,
        router_bias=True,
        head_dim=24,
        kv_lora_rank=32,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        v_head_dim=16,
    ),
    "tiny-deepseek-v2-lite-mla": lambda: tiny(
        "llama", head_dim=24, kv_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16
    ),
    "tiny-gemma-sandwich": lambda: tiny(
        "llama", kv_heads=4, qk_norm=True, sandwich_norm=True, tied_embeddings=True
    ),
}
SHAPES = [
    Shape(Phase.PREFILL, batch=2, tokens=32),
    Shape(Phase.PREFILL, batch=1, tokens=48, context=16),
    Shape(Phase.DECODE, batch=4, tokens=1, context=40),
    Shape(Phase.FORWARD, batch=2, tokens=32),
]


def _by_kind(ops, counted: bool):
    flops, nbytes = defaultdict(float), defaultdict(float)
    for o in ops:
        n = o.count if counted else 1
        flops[o.kind] += o.flops * n
        nbytes[o.kind] += (o.bytes_read + o.bytes_written) * n
    return flops, nbytes


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"{s.phase.value}-b{s.batch}-t{s.tokens}-c{s.context}"
)
@pytest.mark.parametrize("name", list(MODELS))
def test_parametric_graph_equals_trace(name: str, shape: Shape) -> None:
    """FLOPs of every op kind equal the meta trace exactly; bytes too, except MoE expert
    weights at small token counts (only the experts expected to be touched are read)."""
    model = MODELS[name]()
    tr = trace_module(model.module("meta"), model.example_inputs(shape), model.cfg.dtype)
    assert tr.unknown_ops == {}
    g = model.build(shape)
    tf, tb = _by_kind(tr, counted=False)
    gf, gb = _by_kind(g.ops, counted=True)
    assert set(k for k in tf if tf[k]) == set(k for k in gf if gf[k])
    for kind in tf:
        assert gf[kind] == pytest.approx(tf[kind], rel=1e-12, abs=0), kind
    moe_small = model.cfg.moe and shape.new_tokens < 64
    for kind in tb:
        if moe_small and kind is OpKind.MATMUL:
            assert gb[kind] < tb[kind]  # fewer experts touched than the module reads
            continue
        # 1e-9: the expected-experts formula leaves ~1e-19 relative at >= 64 tokens
        assert gb[kind] == pytest.approx(tb[kind], rel=1e-9), kind


def test_moe_touched_experts_at_decode() -> None:
    """At decode the expert GEMMs read E·(1-(1-k/E)^tokens) experts' weights."""
    m = tiny("mixtral", kv_heads=2, experts=4, top_k=2)
    g = m.build(Shape(Phase.DECODE, batch=2, tokens=1, context=10))
    up = next(o for o in g.ops if o.name == "moe.up")
    touched = 4 * (1 - (1 - 2 / 4) ** 2)
    assert up.attr("experts_touched") == pytest.approx(touched)
    assert up.param_bytes == pytest.approx(touched * 64 * 2 * 96 * 2)


def test_param_count_equals_module() -> None:
    """info.params equals sum(p.numel()) of the real module for every family."""
    for name, make in MODELS.items():
        model = make()
        module = model.module("meta")
        assert model.info.params == sum(p.numel() for p in module.parameters()), name


def test_tiny_modules_run_on_cpu() -> None:
    """The modules are real: a tiny one runs prefill then decode with its KV cache."""
    torch.manual_seed(0)
    for name in ("tiny-llama-gqa", "tiny-mixtral", "tiny-palm", "gpt-tiny"):
        model = MODELS[name]() if name in MODELS else tiny("gpt")
        module = model.module("cpu").float().eval()  # inference: no dropout
        cfg = model.cfg
        cache = torch.zeros(cfg.layers, 2, 1, cfg.kv, 12, cfg.d)
        ids = torch.randint(0, cfg.vocab, (1, 12))
        full = module(ids)  # whole sequence, no cache
        pre = module(ids[:, :8], cache, 0, True)
        chunk = module(ids[:, 8:11], cache, 8, True)  # a prefill chunk over the cache
        dec = module(ids[:, 11:12], cache, 11, True)
        assert pre.shape == (1, 1, cfg.vocab)
        if not cfg.moe:  # balanced-capacity MoE routing depends on the batch
            torch.testing.assert_close(pre[:, 0], full[:, 7], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(chunk[:, 0], full[:, 10], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(dec[:, 0], full[:, 11], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("preset", "family", "params"),
    [
        ("llama-2-7b", "llama", 6.74e9),
        ("llama-2-70b", "llama", 69.0e9),
        ("llama-3-8b", "llama", 8.03e9),
        ("llama-3-70b", "llama", 70.6e9),
        ("llama-3-405b", "llama", 405.9e9),
        ("mixtral-8x7b", "mixtral", 46.7e9),
        ("gpt2", "gpt", 124.4e6),
        ("gpt3-175b", "gpt", 175e9),
        ("palm-540b", "palm", 540.35e9),
        ("mt-nlg-530b", "gpt", 530e9),
        ("llama-2-13b", "llama", 13.0e9),
    ],
)
def test_preset_param_counts(preset: str, family: str, params: float) -> None:
    """Preset parameter counts are within 1% of the published figures."""
    m = FAM[family].configure({"preset": preset})
    assert m.info.params == pytest.approx(params, rel=0.01)
    assert preset in FAM[family].presets_sources


def test_big_preset_module_on_meta_matches_count() -> None:
    """The 7B module built on meta has exactly info.params parameters."""
    m = FAM["llama"].configure({"preset": "llama-2-7b"})
    assert sum(p.numel() for p in m.module("meta").parameters()) == m.info.params


def test_kv_bytes_and_active_params() -> None:
    """KV bytes per token = 2·layers·kv_heads·head_dim·bytes; MoE active < total."""
    assert FAM["llama"].configure({"preset": "llama-2-7b"}).info.kv_bytes_per_token == 524288
    assert FAM["llama"].configure({"preset": "llama-2-70b"}).info.kv_bytes_per_token == (
        2 * 80 * 8 * 128 * 2
    )
    mx = FAM["mixtral"].configure({"preset": "mixtral-8x7b"}).info
    assert mx.active_params == pytest.approx(12.9e9, rel=0.01)


def test_tensor_parallel_divides_gemm_flops() -> None:
    """Per-device GEMM FLOPs times t equal the t=1 FLOPs; 2 all-reduces per layer."""
    m = FAM["llama"].configure({"preset": "llama-2-70b"})
    shape = Shape(Phase.PREFILL, batch=2, tokens=512)
    g1, g8 = m.build(shape), m.build(shape, Parallelism(tensor=8))

    def mm(g: OpGraph) -> float:
        return sum(o.flops * o.count for o in g.ops if o.kind in (OpKind.MATMUL, OpKind.ATTENTION))

    assert mm(g8) * 8 == pytest.approx(mm(g1), rel=1e-9)
    ar = [o for o in g8.ops if o.kind is OpKind.COLLECTIVE and o.name.startswith(("attn", "mlp"))]
    assert sum(o.count for o in ar) == 2 * 80
    assert all(o.comm_bytes == 1024 * 8192 * 2 and o.group == 8 for o in ar)
    gsp = m.build(shape, Parallelism(tensor=8, sequence=True))
    kinds = {o.collective for o in gsp.ops if o.kind is OpKind.COLLECTIVE}
    assert {c.value for c in kinds} == {"all-gather", "reduce-scatter"}


def test_pipeline_stage_and_train_step() -> None:
    """A pipeline stage holds ceil(layers/p) layers; TRAIN = fwd + 2x bwd + recompute + Adam."""
    m = FAM["llama"].configure({"preset": "llama-2-7b"})
    fwd = m.build(Shape(Phase.FORWARD, batch=1, tokens=1024), Parallelism(pipeline=3))
    att = next(o for o in fwd.ops if o.kind is OpKind.ATTENTION)
    assert att.count == 11
    s = Shape(Phase.TRAIN, batch=1, tokens=1024)
    tr = m.build(s)
    f = m.build(Shape(Phase.FORWARD, batch=1, tokens=1024))
    gemm = lambda g: sum(o.flops * o.count for o in g.ops if o.kind is OpKind.MATMUL)  # noqa: E731
    assert gemm(tr) == pytest.approx(3 * gemm(f), rel=1e-9)
    full = m.build(Shape(Phase.TRAIN, batch=1, tokens=1024, recompute="full"))
    head = next(o for o in f.ops if o.name == "lm_head")
    assert gemm(full) - gemm(tr) == pytest.approx(gemm(f) - head.flops, rel=1e-9)
    sel = m.build(Shape(Phase.TRAIN, batch=1, tokens=1024, recompute="selective"))
    attn = lambda g: sum(o.flops * o.count for o in g.ops if o.kind is OpKind.ATTENTION)  # noqa: E731
    assert attn(sel) == pytest.approx(4 * attn(f))
    assert any(o.kind is OpKind.OPTIMIZER for o in tr.ops)


def test_mixed_iteration_fuses_gemms() -> None:
    """A MIXED shape runs GEMMs over all new tokens and one attention op per part."""
    m = FAM["llama"].configure({"preset": "llama-2-7b"})
    pre = Shape(Phase.PREFILL, batch=1, tokens=256, context=0)
    dec = Shape(Phase.DECODE, batch=16, tokens=1, context=900)
    mixed = m.build(Shape(Phase.MIXED, parts=(pre, dec)))
    qkv = next(o for o in mixed.ops if o.name == "attn.qkv")
    assert qkv.dims[0] == 256 + 16
    att = [o for o in mixed.ops if o.kind is OpKind.ATTENTION]
    assert len(att) == 2
    a_pre, a_dec = m.build(pre), m.build(dec)
    f = lambda g: sum(o.flops * o.count for o in g.ops if o.kind is OpKind.ATTENTION)  # noqa: E731
    assert f(mixed) == pytest.approx(f(a_pre) + f(a_dec))


def test_activation_bytes_korthikanti() -> None:
    """sbh(34 + 5as/h) per layer without recompute when the scores are stored
    (``attention: unfused``); with flash attention sbh·34 plus the kernel's fp32
    log-sum-exp (4 bytes per head and token), which selective recomputation drops; 2sbh
    with full recompute (16-bit)."""
    m = FAM["gpt"].configure({"preset": "gpt3-175b", "attention": "unfused"})
    s, b, h, a, n_layers = 2048, 1, 12288, 96, 96
    shape = Shape(Phase.TRAIN, batch=b, tokens=s)
    none = m.activation_bytes(shape, Parallelism(), "none")
    assert none == pytest.approx(s * b * h * (34 + 5 * a * s / h) * n_layers)
    flash = FAM["gpt"].configure({"preset": "gpt3-175b"})
    lse = 4 * a * s * b
    assert flash.activation_bytes(shape, Parallelism(), "none") == pytest.approx(
        (34 * s * b * h + lse) * n_layers
    )
    assert flash.activation_bytes(shape, Parallelism(tensor=8), "none") == pytest.approx(
        (s * b * h * (10 + 24 / 8) + lse / 8) * n_layers
    )
    assert flash.activation_bytes(shape, Parallelism(tensor=8), "selective") == pytest.approx(
        s * b * h * (10 + 24 / 8) * n_layers
    )
    assert m.activation_bytes(shape, Parallelism(), "full") == pytest.approx(
        2 * s * b * h * n_layers
    )
    sp = m.activation_bytes(shape, Parallelism(tensor=8, sequence=True), "selective")
    assert sp == pytest.approx(34 * s * b * h / 8 * n_layers)


def test_build_is_memoized() -> None:
    """build() returns the cached graph for a repeated (shape, parallel) and stays small
    (per-layer ops repeat by count). Speed is measured in benchmarks/, not asserted."""
    m = FAM["llama"].configure({"preset": "llama-2-70b"})
    shape = Shape(Phase.DECODE, batch=32, tokens=1, context=1000)
    assert m.build(shape, Parallelism(tensor=4)) is m.build(shape, Parallelism(tensor=4))
    assert len(m.build(shape, Parallelism(tensor=4))) < 40


def test_builder_keys_follow_the_op_fields() -> None:
    """The builder writes ops as tuples of their fields in declaration order."""
    assert tuple(f.name for f in dataclasses.fields(Op)) == OP_FIELDS


def test_graphs_of_one_model_share_their_ops() -> None:
    """An op two graphs of a model both have is one object (the builder's intern table),
    and each graph is op for op what a model without earlier graphs builds."""
    m = FAM["llama"].configure({"preset": "llama-2-7b"})
    a = m.build(Shape(Phase.DECODE, batch=8, tokens=1, context=500))
    b = m.build(Shape(Phase.DECODE, batch=8, tokens=1, context=900))
    shared = {o.name: o for o in a.ops}
    same = [o for o in b.ops if o.name in shared and o == shared[o.name]]
    assert {o.name for o in same} >= {"attn.qkv", "attn.out", "lm_head"}
    assert all(o is shared[o.name] for o in same)
    # the attention core reads the longer context: a different op, built anew
    core_a = next(o for o in a.ops if o.kind is OpKind.ATTENTION)
    core_b = next(o for o in b.ops if o.kind is OpKind.ATTENTION)
    assert core_a != core_b
    fresh = FAM["llama"].configure({"preset": "llama-2-7b"})
    for shape in (b.shape, Shape(Phase.PREFILL, batch=2, tokens=64, context=0)):
        assert m.build(shape).ops == fresh.build(shape).ops


def _fused(prompt_context: int, decode_context: int) -> Shape:
    """One 48-token prompt chunk fused with three decoding sequences."""
    return Shape(
        Phase.MIXED,
        batch=4,
        tokens=1,
        parts=(
            Shape(Phase.PREFILL, batch=1, tokens=48, context=prompt_context),
            Shape(Phase.DECODE, batch=3, tokens=1, context=decode_context),
        ),
    )


SERVING_STEPS = [
    # the same totals (phase, new tokens, sequences, positions) in each pair or triple,
    # other contexts or another split of the prompt: built around the first one's ops
    Shape(Phase.DECODE, batch=4, tokens=1, context=40),
    Shape(Phase.DECODE, batch=4, tokens=1, context=71),
    Shape(Phase.PREFILL, batch=2, tokens=32, context=0),
    Shape(Phase.PREFILL, batch=2, tokens=32, context=16),
    _fused(16, 40),
    _fused(0, 90),
    Shape(Phase.DECODE, batch=1, tokens=1, context=1),
    Shape(Phase.DECODE, batch=4, tokens=1, context=12),
]


@pytest.mark.parametrize("name", [n for n in MODELS if n != "gpt2"] + ["gpt2-unfused-eager"])
@pytest.mark.parametrize(
    "par",
    [Parallelism(), Parallelism(tensor=2, sequence=True), Parallelism(pipeline=2)],
    ids=["single", "tensor-2-sequence", "pipeline-2"],
)
def test_serving_steps_with_the_same_totals_build_what_a_fresh_model_builds(
    name: str, par: Parallelism
) -> None:
    """A serving step whose phase and token totals a model built before is built from
    that step's ops outside the attention cores and its own cores; every graph is what a
    model that built nothing before gives for it, op for op, notes included."""
    make = (
        (lambda: tiny("gpt", attention="unfused", elementwise="eager"))
        if name == "gpt2-unfused-eager"
        else MODELS[name]
    )
    warm = make()
    for shape in SERVING_STEPS:
        assert warm.build(shape, par) == make().build(shape, par), shape
    # four steps shared their totals with one built before them
    assert len(warm._skeletons) == len(SERVING_STEPS) - 4


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"preset": "llama-2-7"}, "Did you mean 'llama-2-7b'"),
        ({**TINY, "heads": 7}, "heads=7 must divide hidden=64"),
        ({**TINY, "kv_heads": 3}, "kv_heads=3 must divide heads=8"),
        ({**TINY, "layers": 0}, "model.layers"),
        ({**TINY, "hiden": 3}, "Did you mean 'hidden'"),
        ({**TINY, "dtype": "fp6"}, "model.dtype"),
        ({"layers": 2}, "needs field 'hidden'"),
    ],
)
def test_bad_input_names_the_field(spec: dict, match: str) -> None:
    """Bad model blocks raise ScenarioError naming the field and the valid choices."""
    with pytest.raises(ScenarioError, match=match):
        FAM["llama"].configure(spec)


def test_bad_tensor_parallel_degree() -> None:
    """A tensor degree that does not divide the heads is a ScenarioError."""
    m = tiny("llama")
    with pytest.raises(ScenarioError, match="tensor=3"):
        m.build(Shape(Phase.DECODE, batch=1), Parallelism(tensor=3))


def test_overrides_apply_on_top_of_a_preset() -> None:
    """Explicit fields override a preset; dtype changes bytes."""
    m = FAM["llama"].configure({"preset": "llama-2-7b", "layers": 16, "dtype": "fp8"})
    assert m.info.layers == 16 and m.info.dtype == "fp8"
    # weights in fp8, the KV cache stays 16-bit unless kv_dtype asks for fp8
    assert m.info.kv_bytes_per_token == 524288 / 2
    m8 = FAM["llama"].configure(
        {"preset": "llama-2-7b", "layers": 16, "dtype": "fp8", "kv_dtype": "fp8"}
    )
    assert m8.info.kv_bytes_per_token == 524288 / 2 / 2


# --- attention: unfused (Megatron-LM's materialized scores) ------------------------------

UNFUSED = {
    "tiny-gpt-unfused": lambda: tiny("gpt", attention="unfused"),
    "tiny-llama-gqa-unfused": lambda: tiny("llama", kv_heads=2, attention="unfused"),
    "tiny-palm-mqa-unfused": lambda: tiny("palm", heads=4, head_dim=32, attention="unfused"),
}
# traced op name -> parametric op suffix; the module runs QKᵀ then PV for every sequence
_CORE_ROLE = {
    "scale_mask_softmax": "softmax",
    "native_dropout": "dropout",
    "stack": "context",
    "clone": "repeat",
}


def _core_roles(ops, traced: bool) -> dict[str, list]:
    """Per attention-core role: FLOPs, bytes read, bytes written (times ``count`` for
    the graph) and the set of GEMM dims."""
    out: dict[str, list] = {}
    gemms = 0
    for o in ops:
        if traced:
            if o.zero_cost or ".attn" not in o.scope:
                continue
            if o.name == "bmm":
                role, gemms = ("qk", "pv")[gemms % 2], gemms + 1
            else:
                role = _CORE_ROLE.get(o.name, "")
            n = 1
        else:
            if not o.name.startswith("attn.core."):
                continue
            role = o.name.rsplit(".", 1)[1].removeprefix("k_").removeprefix("v_")
            n = o.count
        if not role:
            continue
        acc = out.setdefault(role, [0.0, 0.0, 0.0, set()])
        acc[0] += o.flops * n
        acc[1] += o.bytes_read * n
        acc[2] += o.bytes_written * n
        if role in ("qk", "pv"):
            acc[3].add(tuple(o.dims))
    return out


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"{s.phase.value}-b{s.batch}-t{s.tokens}-c{s.context}"
)
@pytest.mark.parametrize("name", list(UNFUSED))
def test_unfused_graph_equals_trace(name: str, shape: Shape) -> None:
    """With ``attention: unfused`` the parametric graph equals the meta trace of the real
    module: every op kind's FLOPs and bytes, and role by role the attention core (QKᵀ and
    PV GEMMs with their dims, the fused softmax, the K/V repeat of GQA/MQA, the context
    copy); no fused ATTENTION op remains."""
    model = UNFUSED[name]()
    tr = trace_module(model.module("meta"), model.example_inputs(shape), model.cfg.dtype)
    assert tr.unknown_ops == {}
    g = model.build(shape)
    assert not [o for o in g.ops if o.kind is OpKind.ATTENTION]
    tf, tb = _by_kind(tr, counted=False)
    gf, gb = _by_kind(g.ops, counted=True)
    assert set(k for k in tf if tf[k]) == set(k for k in gf if gf[k])
    for kind in set(tb) | set(gb):
        assert gf[kind] == pytest.approx(tf[kind], rel=1e-12, abs=0), kind
        assert gb[kind] == pytest.approx(tb[kind], rel=1e-12), kind
    traced, built = _core_roles(tr, traced=True), _core_roles(g.ops, traced=False)
    gqa = model.cfg.kv != model.cfg.heads
    assert set(built) == {"qk", "softmax", "pv", "context"} | ({"repeat"} if gqa else set())
    assert set(traced) == set(built)
    for role, (flops, read, written, dims) in built.items():
        t_flops, t_read, t_written, t_dims = traced[role]
        assert (flops, read, written) == pytest.approx((t_flops, t_read, t_written), rel=1e-12), (
            role
        )
        assert dims == t_dims, role
    keys = shape.context + shape.tokens
    assert built["qk"][3] == {(shape.tokens, keys, model.cfg.d)}
    assert built["pv"][3] == {(shape.tokens, model.cfg.d, keys)}


class _TrainMode(torch.nn.Module):
    """Runs the wrapped decoder in training mode (the tracer puts its argument in eval
    mode), so the trace includes attention dropout."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.inner.train()
        return self.inner(ids)


@pytest.mark.parametrize("name", ["tiny-gpt-unfused", "tiny-llama-gqa-unfused"])
def test_unfused_train_forward_equals_trace_with_dropout(name: str) -> None:
    """The forward ops of a TRAIN graph equal the trace of the module in training mode:
    dropout reads the probabilities and writes them plus a 1-byte keep-mask."""
    model = UNFUSED[name]()
    shape = Shape(Phase.TRAIN, batch=2, tokens=32)
    tr = trace_module(
        _TrainMode(model.module("meta")), model.example_inputs(shape), model.cfg.dtype
    )
    assert tr.unknown_ops == {}
    g = model.build(shape)
    fwd = [
        o
        for o in g.ops
        if not o.name.startswith(("bwd.", "recompute.", "loss.")) and o.kind is not OpKind.OPTIMIZER
    ]
    tf, tb = _by_kind(tr, counted=False)
    gf, gb = _by_kind(fwd, counted=True)
    for kind in set(tb) | set(gb):
        assert gf[kind] == pytest.approx(tf[kind], rel=1e-12, abs=0), kind
        assert gb[kind] == pytest.approx(tb[kind], rel=1e-12), kind
    drop = next(o for o in g.ops if o.name == "attn.core.dropout")
    el = 2 * model.cfg.heads * 32 * 32
    assert (drop.bytes_read, drop.bytes_written) == (2 * el, 3 * el)
    assert sum(o.bytes_written for o in tr if o.name == "native_dropout") == (
        drop.bytes_written * drop.count
    )
    # the gpt family's hidden dropout: both residual adds are fused bias-dropout-adds that
    # also write a 1-byte keep-mask per element
    fused = [o for o in tr if o.name == "dropout_add"]
    res = [o for o in fwd if o.name in ("attn.residual", "mlp.residual")]
    if model.cfg.hidden_dropout:
        el = 2 * 32 * model.cfg.hidden
        assert len(fused) == sum(o.count for o in res) == 2 * model.cfg.layers
        assert {(o.bytes_read, o.bytes_written) for o in res} == {(2 * el * 2, el * 3)}
    else:
        assert not fused


def test_unfused_train_without_dropout_runs_and_stores_none() -> None:
    """At ``attention_dropout: 0`` no dropout kernel runs (the graph still equals the
    module's training-mode trace) and the stored activations lose the mask and the dropped
    probabilities: sbh(34 + 2as/h) per layer instead of Korthikanti's 5as/h."""
    model = tiny("llama", kv_heads=2, attention="unfused", attention_dropout=0.0)
    shape = Shape(Phase.TRAIN, batch=2, tokens=32)
    tr = trace_module(
        _TrainMode(model.module("meta")), model.example_inputs(shape), model.cfg.dtype
    )
    g = model.build(shape)
    assert not [o for o in tr if o.name == "native_dropout"]
    assert not [o for o in g.ops if o.name.endswith(".dropout")]
    fwd = [
        o
        for o in g.ops
        if not o.name.startswith(("bwd.", "recompute.", "loss.")) and o.kind is not OpKind.OPTIMIZER
    ]
    tf, tb = _by_kind(tr, counted=False)
    gf, gb = _by_kind(fwd, counted=True)
    for kind in set(tb) | set(gb):
        assert gf[kind] == pytest.approx(tf[kind], rel=1e-12, abs=0), kind
        assert gb[kind] == pytest.approx(tb[kind], rel=1e-12), kind
    spec = {"preset": "gpt3-175b", "attention": "unfused", "attention_dropout": 0.0}
    m = FAM["gpt"].configure(spec)
    s, b, h, a, n_layers = 2048, 1, 12288, 96, 96
    none = m.activation_bytes(Shape(Phase.TRAIN, batch=b, tokens=s), Parallelism(), "none")
    assert none == pytest.approx(s * b * h * (34 + 2 * a * s / h) * n_layers)


def test_unfused_train_gemm_flops_are_megatron_eq3() -> None:
    """Unfused attention computes the full s×s of QKᵀ and PV, so with full recomputation
    the train graph's GEMM FLOPs equal Narayanan et al. 2021 eq. (3) exactly,
    96·B·s·l·h²·(1 + s/6h + V/16lh); flash attention counts only the causal pairs."""
    cfg = {**TINY, "layers": 3, "ffn_hidden": 256}
    s, b, l_, h, v = 64, 2, 3, 64, 100
    shape = Shape(Phase.TRAIN, batch=b, tokens=s, recompute="full")
    eq3 = 96.0 * b * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h))
    unfused = FAM["gpt"].configure({**cfg, "attention": "unfused"}).build(shape)
    gemm = sum(o.flops * o.count for o in unfused.ops if o.kind is OpKind.MATMUL)
    assert gemm == pytest.approx(eq3, rel=1e-12)
    flash = FAM["gpt"].configure(cfg).build(shape)
    hw = sum(o.flops * o.count for o in flash.ops if o.kind in (OpKind.MATMUL, OpKind.ATTENTION))
    causal_share = (s * (s + 1) / 2) / (s * s)
    attn_full = 4 * 4 * b * s * s * h * l_  # fwd + recompute + 2x backward, 4bs²h each
    assert hw == pytest.approx(eq3 - attn_full * (1 - causal_share), rel=1e-12)


def test_unfused_selective_recompute_reruns_the_core() -> None:
    """Selective recomputation reruns every attention-core op of ``unfused``: QKᵀ,
    softmax, dropout, PV and the context copy."""
    m = tiny("gpt", attention="unfused")
    g = m.build(Shape(Phase.TRAIN, batch=1, tokens=32, recompute="selective"))
    again = {o.name.removeprefix("recompute.") for o in g.ops if o.name.startswith("recompute.")}
    assert again == {
        "attn.core.qk",
        "attn.core.softmax",
        "attn.core.dropout",
        "attn.core.pv",
        "attn.core.context",
    }


def test_unfused_module_computes_the_same_attention() -> None:
    """The unfused module is real attention: with the same weights it gives the flash
    module's logits (eval), also through a KV cache, for MHA and GQA; in training it runs
    dropout (different logits) and back-propagates."""
    torch.manual_seed(0)
    for fam, kw in (("gpt", {}), ("llama", {"kv_heads": 2})):
        flash = tiny(fam, **kw).module("cpu").float().eval()
        unf = tiny(fam, attention="unfused", **kw).module("cpu").float().eval()
        unf.load_state_dict(flash.state_dict())
        cfg = unf.cfg
        ids = torch.randint(0, cfg.vocab, (2, 12))
        ref = flash(ids)
        torch.testing.assert_close(unf(ids), ref, rtol=1e-4, atol=1e-4)
        cache = torch.zeros(cfg.layers, 2, 2, cfg.kv, 12, cfg.d)
        unf(ids[:, :8], cache, 0, True)
        chunk = unf(ids[:, 8:11], cache, 8, True)
        torch.testing.assert_close(chunk[:, 0], ref[:, 10], rtol=1e-4, atol=1e-4)
        unf.train()
        out = unf(ids)
        assert not torch.allclose(out, ref, atol=1e-4)
        out.sum().backward()
        assert unf.layers[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize(
    "name",
    [
        "tiny-deepseek-v2-lite-mla",
        "tiny-gemma2-window-softcap",
        "tiny-mistral-window",
        "tiny-qwen3-qk-norm",
        "tiny-qwen2-qkv-bias",
    ],
)
def test_cached_steps_equal_the_full_forward(name: str) -> None:
    """Prefill, a prefill chunk over the cache and a decode step give the logits of the
    whole sequence run at once: MLA's absorbed decode equals its expanded form, and a
    sliding window keeps the same keys with and without a cache."""
    torch.manual_seed(0)
    model = MODELS[name]()
    module = model.module("cpu").float()
    cfg = model.cfg
    cache = model.example_inputs(Shape(Phase.PREFILL, batch=1, tokens=12), "cpu")[1].float()
    ids = torch.randint(0, cfg.vocab, (1, 12))
    full = module(ids)
    pre = module(ids[:, :8], cache, 0, True)
    chunk = module(ids[:, 8:11], cache, 8, True)
    dec = module(ids[:, 11:12], cache, 11, True)
    torch.testing.assert_close(pre[:, 0], full[:, 7], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunk[:, 0], full[:, 10], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dec[:, 0], full[:, 11], rtol=1e-4, atol=1e-4)


# --- elementwise: eager (PyTorch module code run op by op) --------------------------------


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_eager_elementwise_prices_each_kernel_of_the_module_code(dtype: str) -> None:
    """``elementwise: eager`` prices an RMSNorm, the complex RoPE and the gated activation
    as their separate PyTorch kernels (20 bytes read and 16 written per bf16 element for
    the RMSNorm, whose fp32 casts vanish in fp32), adds the attention output's copy and,
    with fewer KV heads than query heads, the K/V repeat; FLOPs and every GEMM are those of
    the fused graph, a LayerNorm is one kernel either way, and ``fused`` is the default."""
    from xpusim.plugins.models.transformer import (
        EAGER_GLU,
        EAGER_RMSNORM,
        EAGER_ROPE,
        eager_bytes,
    )

    shape = Shape(Phase.TRAIN, batch=2, tokens=32)
    fused = tiny("llama", kv_heads=2, dtype=dtype).build(shape)
    assert tiny("llama", kv_heads=2, dtype=dtype, elementwise="fused").build(shape) == fused
    eager = tiny("llama", kv_heads=2, dtype=dtype, elementwise="eager").build(shape)
    f_ops = {o.name: o for o in fused.ops}
    e_ops = {o.name: o for o in eager.ops}
    e = 2.0 if dtype == "bf16" else 4.0
    for name, passes, el in (
        ("ln1", EAGER_RMSNORM, 64 * 64),
        ("attn.rope", EAGER_ROPE, 64 * (8 + 2) * 8),
        ("mlp.glu", EAGER_GLU, 64 * 96),
    ):
        r, w = eager_bytes(passes, e)
        extra = e_ops[name].bytes_read - f_ops[name].bytes_read
        assert extra == pytest.approx(r * el - (2 if name == "mlp.glu" else 1) * el * e), name
        assert e_ops[name].bytes_written == pytest.approx(w * el), name
    assert eager_bytes(EAGER_RMSNORM, 2.0) == (20.0, 16.0)
    assert eager_bytes(EAGER_RMSNORM, 4.0) == (16.0, 12.0)
    assert e_ops["attn.context"].bytes_read == e_ops["attn.context"].bytes_written == 64 * 64 * e
    assert e_ops["attn.repeat_kv"].bytes_written == 2 * 64 * 64 * e
    assert e_ops["attn.repeat_kv"].bytes_read == 2 * 64 * 16 * e
    # the two copies read transposed or broadcast views; no fused op is marked
    assert {o.name for o in eager.ops if o.attr(STRIDED)} >= {"attn.context", "attn.repeat_kv"}
    assert not any(o.attr(STRIDED) for o in fused.ops)
    assert sum(o.flops * o.count for o in eager.ops) == sum(o.flops * o.count for o in fused.ops)
    assert [o for o in eager.ops if o.kind is OpKind.MATMUL] == [
        o for o in fused.ops if o.kind is OpKind.MATMUL
    ]
    # multi-head attention repeats nothing; a LayerNorm model's norms are unchanged
    assert "attn.repeat_kv" not in {
        o.name for o in tiny("llama", elementwise="eager").build(shape).ops
    }
    gpt = {o.name: o for o in tiny("gpt", elementwise="eager").build(shape).ops}
    assert gpt["ln1"] == {o.name: o for o in tiny("gpt").build(shape).ops}["ln1"]
