"""Decoders from a Hugging Face ``config.json``: presets, files, counts and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xpusim.engine.errors import ScenarioError
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.plugins.models.hf import HFFamily
from xpusim.plugins.models.hf_presets import HF_PRESETS
from xpusim.plugins.models.transformer import LLAMA

DATA = Path(__file__).parent / "data" / "hf"
HF = HFFamily()

# Published totals, each from the model's own card or report.
PUBLISHED_TOTALS = {
    # Llama 3.1/3.3: the parameter count Hugging Face lists on each model page
    # (read from the published safetensors): 8.03B, 70.6B, 406B; Llama Team 2024,
    # arXiv:2407.21783, Table 3 gives 405B for the flagship.
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "llama-3.1-405b": 405e9,
    "llama-3.3-70b": 70.6e9,
    # Qwen2.5 model cards: "Number of Parameters: 7.61B" and "72.7B".
    "qwen2.5-7b": 7.61e9,
    "qwen2.5-72b": 72.7e9,
    # Qwen3 model cards: "Number of Parameters: 32.8B"; "30.5B in total and 3.3B activated".
    "qwen3-32b": 32.8e9,
    "qwen3-30b-a3b": 30.5e9,
    # DeepSeek-AI 2024, DeepSeek-V3 Technical Report, arXiv:2412.19437, abstract: "671B total
    # parameters with 37B activated for each token" (the MTP module is counted apart).
    "deepseek-v3": 671e9,
    # Mistral AI, "Cheaper, Better, Faster, Stronger" (2024-04-17): "39B active parameters out
    # of 141B".
    "mixtral-8x22b": 141e9,
    # Gemma Team 2025, Gemma 3 Technical Report, arXiv:2503.19786, Table 1: 27B has 1,416M
    # embedding and 25,600M non-embedding parameters (the 417M vision encoder is not priced).
    "gemma-3-27b": 1416e6 + 25600e6,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_TOTALS))
def test_preset_totals_match_published(preset: str) -> None:
    """Each preset's parameter count is within 0.5% of the published total, and it names
    the config.json it was copied from."""
    info = HF.configure({"preset": preset}).info
    assert info.params == pytest.approx(PUBLISHED_TOTALS[preset], rel=0.005)
    assert HF.presets_sources[preset].startswith("https://huggingface.co/")


def test_every_preset_has_a_published_total() -> None:
    """No preset goes without a checked total."""
    assert set(HF_PRESETS) == set(PUBLISHED_TOTALS)


@pytest.mark.parametrize(
    ("preset", "active"),
    [
        ("qwen3-30b-a3b", 3.3e9),  # model card: "3.3B activated" (ours 3.35B)
        ("mixtral-8x22b", 39e9),  # "39B active parameters" (ours 39.2B)
    ],
)
def test_moe_active_parameters_match_published(preset: str, active: float) -> None:
    """Active parameters agree with the published figure to the two digits it is given
    (the publishers cut the third digit rather than round it: within 2%)."""
    assert HF.configure({"preset": preset}).info.active_params == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize(
    ("source", "total", "active"),
    [
        ("preset:deepseek-v3", 671e9, 37e9),  # arXiv:2412.19437 abstract
        # DeepSeek-V2-Lite model card: "15.7B total parameters, 2.4B activated"
        ("file:deepseek-v2-lite.json", 15.7e9, 2.4e9),
    ],
)
def test_deepseek_counts(source: str, total: float, active: float) -> None:
    """DeepSeek's totals match; its published activated counts leave out the input
    embedding table (a lookup), and so rounded they match ours less that table."""
    kind, _, name = source.partition(":")
    spec = {"preset": name} if kind == "preset" else {"config": str(DATA / name)}
    m = HF.configure(spec)
    assert m.info.params == pytest.approx(total, rel=0.005)
    lookup = m.cfg.vocab * m.cfg.hidden
    # two published digits: 36.6B -> "37B", 2.45B -> "2.4B"
    assert m.info.active_params - lookup == pytest.approx(active, rel=0.025)


def test_mla_kv_cache_is_the_latent() -> None:
    """Multi-head latent attention caches kv_lora_rank + qk_rope_head_dim per layer."""
    m = HF.configure({"preset": "deepseek-v3"})
    assert m.info.kv_bytes_per_token == 61 * (512 + 64) * 2
    fp8 = HF.configure({"preset": "deepseek-v3", "kv_dtype": "fp8"})
    assert fp8.info.kv_bytes_per_token == 61 * (512 + 64)


def test_mtp_module_is_counted_apart() -> None:
    """DeepSeek-V3's multi-token-prediction module is reported, not added to params."""
    info = HF.configure({"preset": "deepseek-v3"}).info
    assert 10e9 < info.config["mtp_params"] < 14e9


def test_qwen2_from_a_folder_and_its_qkv_bias() -> None:
    """A folder holding config.json reads like the file; Qwen2's Q/K/V biases are counted
    (the hand translation to `llama` could not express them)."""
    folder = HF.configure({"config": str(DATA / "qwen2-7b")})
    file = HF.configure({"config": str(DATA / "qwen2-7b" / "config.json")})
    assert folder.info.params == file.info.params
    assert folder.name == "qwen2-7b"
    # Qwen/Qwen2-7B model page: 7.62B parameters
    assert folder.info.params == pytest.approx(7.62e9, rel=0.005)
    c = folder.cfg
    by_hand = LLAMA.configure(
        {
            "layers": c.layers,
            "hidden": c.hidden,
            "heads": c.heads,
            "kv_heads": c.kv,
            "ffn_hidden": c.ffn,
            "vocab": c.vocab,
        }
    )
    assert folder.info.params - by_hand.info.params == c.layers * (c.heads + 2 * c.kv) * c.d


def test_gemma_sliding_layers_cap_their_kv() -> None:
    """Gemma 3's sliding layers keep at most the window; full layers keep every token."""
    m = HF.configure({"preset": "gemma-3-27b"})
    per_layer = 2 * 16 * 128 * 2
    full = sum(1 for t in m.cfg.layer_types or () if t == "full")
    assert full == 62 // 6
    assert m.kv_bytes(100_000) == per_layer * (full * 100_000 + (62 - full) * 1024)
    assert m.kv_bytes(500) == per_layer * 62 * 500
    g = m.build(Shape(Phase.DECODE, batch=1, tokens=1, context=50_000))
    local = next(o for o in g.ops if o.name == "attn.core.local")
    glob = next(o for o in g.ops if o.name == "attn.core")
    assert local.count == 62 - full and glob.count == full
    assert local.dims[1] == 1024 and glob.dims[1] == 50_001


def test_overrides_apply_to_a_config() -> None:
    """Fields beside `config` override the file's values."""
    m = HF.configure({"config": str(DATA / "qwen2-7b"), "dtype": "fp8", "layers": 4})
    assert m.cfg.layers == 4 and m.info.dtype == "fp8"


def _write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"architectures": ["Qwen2ForCausalLm"]}, "Did you mean 'Qwen2ForCausalLM'"),
        ({"architectures": ["FalconForCausalLM"]}, "unknown architecture 'FalconForCausalLM'"),
        ({"num_hiden_layers": 28}, "unknown field 'num_hiden_layers'.*'num_hidden_layers'"),
        ({"num_key_value_heads": 5}, "num_key_value_heads=5: must divide"),
        ({"model_type": "llama"}, "model_type 'llama' contradicts"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"hidden_act": "swish2"}, "hidden_act='swish2'"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, change: dict, match: str) -> None:
    """A wrong, unknown or contradictory value is refused naming it and the nearest one."""
    data = json.loads((DATA / "qwen2-7b" / "config.json").read_text())
    data.update(change)
    with pytest.raises(ScenarioError, match=match):
        HF.configure({"config": _write(tmp_path, data)})


def test_missing_field_and_missing_file(tmp_path: Path) -> None:
    """A missing required field or file is named."""
    data = json.loads((DATA / "qwen2-7b" / "config.json").read_text())
    del data["hidden_size"]
    with pytest.raises(ScenarioError, match="field 'hidden_size' is missing"):
        HF.configure({"config": _write(tmp_path, data)})
    with pytest.raises(ScenarioError, match=r"holds no config\.json"):
        HF.configure({"config": str(tmp_path / "..")})
    with pytest.raises(ScenarioError, match="either `config` or `preset`"):
        HF.configure({"config": str(DATA / "qwen2-7b"), "preset": "qwen2.5-7b"})


@pytest.mark.parametrize("preset", sorted(HF_PRESETS))
def test_every_preset_builds_each_phase(preset: str) -> None:
    """Every preset builds prefill, decode, mixed and train graphs; decode FLOPs per token
    are at least twice the active GEMM weights a token passes through."""
    m = HF.configure({"preset": preset})
    pre = Shape(Phase.PREFILL, batch=2, tokens=64, context=0)
    dec = Shape(Phase.DECODE, batch=4, tokens=1, context=256)
    for shape in (pre, dec, Shape(Phase.MIXED, parts=(pre, dec)), Shape(Phase.TRAIN, 1, 128)):
        g = m.build(shape)
        assert g.flops > 0
    d = m.build(dec)
    assert d.flops / 4 >= 0.98 * m.info.flops_per_token


def test_scenario_names_a_config_beside_it(tmp_path: Path) -> None:
    """`model: {config: PATH}` needs no family, reads PATH relative to the scenario file,
    and a misspelt folder is named with the nearest one."""
    import shutil

    from xpusim.engine.host import default_host
    from xpusim.engine.scenario import load_scenario

    shutil.copytree(DATA / "qwen2-7b", tmp_path / "models" / "qwen2-7b")
    text = """\
name: from-config
model: {config: models/%s}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 1/s, count: 4, prompt_tokens: {dist: lognormal, median: 64},
             output_tokens: {dist: lognormal, median: 8}}
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
"""
    good = tmp_path / "good.yaml"
    good.write_text(text % "qwen2-7b")
    scenario = load_scenario(good, default_host())
    assert scenario.model.info.family == "hf" and scenario.model.name == "qwen2-7b"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text % "qwen2-7c")
    with pytest.raises(ScenarioError, match="did you mean 'qwen2-7b'"):
        load_scenario(bad, default_host())


@pytest.mark.parametrize("preset", ["deepseek-v3", "qwen3-30b-a3b", "gemma-3-27b", "qwen2.5-7b"])
def test_forward_gemm_flops_follow_the_parameter_count(preset: str) -> None:
    """A forward pass's GEMM FLOPs equal 2 × tokens × the GEMM weights a token passes
    through (counted from the parameters, independently of the graph), plus the routers:
    the graph (MLA's expanded form, shared experts, dense layers included) and the counts
    agree."""
    m = HF.configure({"preset": preset})
    tokens = 512
    g = m.build(Shape(Phase.FORWARD, batch=1, tokens=tokens))
    gemm = sum(o.flops * o.count for o in g.by_kind(OpKind.MATMUL))
    x = m.experts
    routers = 2 * tokens * m.cfg.hidden * x.experts * x.moe_layers if x else 0
    assert gemm == pytest.approx(tokens * m.info.flops_per_token + routers, rel=1e-12)


def test_mla_decode_reads_the_latent_once() -> None:
    """MLA decode runs the absorbed form: the query is mapped into the latent, attention
    reads each cached token's latent and rotary key once for all heads, and the output is
    mapped back; prefill runs the expanded form (keys and values up-projected)."""
    m = HF.configure({"preset": "deepseek-v3"})
    dec = {o.name: o for o in m.build(Shape(Phase.DECODE, batch=4, tokens=1, context=999)).ops}
    core = dec["attn.core"]
    assert {"attn.q_absorb", "attn.v_absorb"} <= set(dec) and "attn.kv_b" not in dec
    latent = 4 * 1000 * (512 + 64) * 2
    assert core.bytes_read == 4 * 128 * (512 + 64) * 2 + latent
    assert core.flops == 2 * (576 + 512) * 1000 * 128 * 4
    pre = {o.name for o in m.build(Shape(Phase.PREFILL, batch=1, tokens=64)).ops}
    assert "attn.kv_b" in pre and "attn.q_absorb" not in pre


@pytest.mark.parametrize(
    ("file", "published", "traits"),
    [
        ("phi-3-mini-4k.json", 3.82e9, {"sliding_window": 2047}),
        ("gemma-2-9b.json", 9.24e9, {"attn_softcap": 50.0, "sandwich_norm": True}),
        ("llama-3.2-1b.json", 1.24e9, {"tied_embeddings": True, "head_dim": 64}),
        ("mistral-7b-v0.1.json", 7.24e9, {"sliding_window": 4096}),
    ],
)
def test_published_config_files(file: str, published: float, traits: dict) -> None:
    """Published config.json files of Phi-3, Gemma 2, Llama 3.2 and Mistral read with their
    traits, and count within 0.5% of the parameters their model pages state
    (tests/data/hf/SOURCES.md)."""
    m = HF.configure({"config": str(DATA / file)})
    assert m.info.params == pytest.approx(published, rel=0.005)
    for key, value in traits.items():
        assert getattr(m.cfg, key) == value, key
    if m.cfg.layer_types:  # Gemma 2: even layers slide, odd ones attend globally
        assert m.cfg.layer_types[:2] == ("sliding", "full")


def test_newer_config_keys(tmp_path: Path) -> None:
    """Newer config.json files state `layer_types` and `rope_parameters`: read, and an
    unknown layer type is refused by name."""
    data = json.loads((DATA / "qwen2-7b" / "config.json").read_text())
    del data["rope_theta"]
    data["layer_types"] = ["full_attention"] * 28
    data["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
    m = HF.configure({"config": _write(tmp_path, data)})
    assert m.cfg.rope_theta == 1e6 and m.cfg.layer_types is None
    data["layer_types"][3] = "chunked_attention"
    with pytest.raises(ScenarioError, match=r"layer_types.*'chunked_attention'"):
        HF.configure({"config": _write(tmp_path, data)})
    gemma = json.loads(json.dumps(HF_PRESETS["gemma-3-27b"]))
    del gemma["sliding_window_pattern"]
    gemma["layer_types"] = ["sliding_attention", "full_attention"] * 31
    g = HF.configure({"config": _write(tmp_path, gemma)})
    assert g.cfg.layer_types == ("sliding", "full") * 31
