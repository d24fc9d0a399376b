"""Decoder models from a Hugging Face ``config.json`` (no network, no weights).

:func:`read_config` reads a ``config.json`` (a file, or a folder holding one) and
:func:`decoder_fields` turns its values into the fields of a
:class:`~xpusim.plugins.models.transformer.DecoderConfig` for the architectures served
today:

=====================  =======================================  =============================
``model_type``         ``architectures``                        what it adds to a Llama block
=====================  =======================================  =============================
``llama``              ``LlamaForCausalLM``                     RoPE scaling (3.1/3.2/3.3)
``mistral``            ``MistralForCausalLM``                   sliding window (v0.1)
``mixtral``            ``MixtralForCausalLM``                   top-k experts
``qwen2``              ``Qwen2ForCausalLM``                     Q/K/V biases, tied embeddings
``qwen3``              ``Qwen3ForCausalLM``                     per-head Q/K norms
``qwen3_moe``          ``Qwen3MoeForCausalLM``                  Q/K norms, top-k experts
``deepseek_v2``        ``DeepseekV2ForCausalLM``                MLA, shared + routed experts,
``deepseek_v3``        ``DeepseekV3ForCausalLM``                dense first layers, MTP (V3)
``gemma2``             ``Gemma2ForCausalLM``                    sandwich norms, alternating
                                                                sliding layers, soft-capping
``gemma3_text``        ``Gemma3ForCausalLM``                    Q/K norms, 5 sliding : 1 full
``phi3``               ``Phi3ForCausalLM``                      fused QKV and gate/up
=====================  =======================================  =============================

Every key of the file must be one the reader uses or one listed in :data:`NO_COST` (fields
that change no FLOP, byte or parameter: token ids, initialisation, training-only losses,
routing scale factors ...). Anything else, an architecture not listed, or a value that
contradicts another (``num_attention_heads`` not divisible by ``num_key_value_heads``, MLA
without its ranks) is a :class:`~xpusim.engine.errors.ScenarioError` naming the field or
the value and the nearest supported one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xpusim.engine.errors import ScenarioError
from xpusim.engine.registry import nearest, unknown_message
from xpusim.engine.safeio import read_limited
from xpusim.plugins.models.common import SIZE_LIMITS, check_sizes

__all__ = ["ARCHITECTURES", "NO_COST", "decoder_fields", "read_config"]

NO_COST = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "auto_map",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
        "use_cache",
        "attention_dropout",
        "hidden_dropout",
        "embd_pdrop",
        "resid_pdrop",
        "pretraining_tp",
        "output_router_logits",
        "router_aux_loss_coef",
        "router_jitter_noise",
        "aux_loss_alpha",
        "seq_aux",
        "norm_topk_prob",
        "routed_scaling_factor",
        "scoring_func",
        "n_group",
        "topk_group",
        "ep_size",
        "cache_implementation",
        "query_pre_attn_scalar",
        "rope_local_base_freq",
        "original_max_position_embeddings",
        "use_bidirectional_attention",
    }
)
"""Keys that change no FLOP, byte or parameter of the priced model: token ids,
initialisation, dropout and auxiliary-loss settings, routing score scales and group
limits (which experts are picked, not how many), attention and RoPE scale constants."""

_COMMON = frozenset(
    {
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "tie_word_embeddings",
        "hidden_act",
        "head_dim",
    }
)

_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}


CONFIG_BYTES = 16 * 2**20
"""Largest config.json read (published ones are a few kilobytes)."""


def read_config(path: Path) -> dict[str, Any]:
    """The values of ``path`` (a ``config.json`` or a folder holding one)."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        where = f"folder {path} holds no config.json" if path.is_dir() else f"{path} not found"
        siblings = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        near = nearest(path.name, siblings)
        if near and not path.is_dir():
            where += f" (did you mean {near!r}?)"
        raise ScenarioError(
            f"model.config: {where}; give a Hugging Face config.json or the folder holding it "
            "(relative paths are relative to the scenario file)."
        )
    try:
        raw = read_limited(file, "model config", CONFIG_BYTES, error=ScenarioError)
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ScenarioError(f"model.config: {file} nests too deeply to be a config.json.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(
            f"model.config: {file} is not readable JSON ({exc}); give the model's config.json."
        ) from None
    if not isinstance(data, dict):
        raise ScenarioError(f"model.config: {file} holds {type(data).__name__}, not an object.")
    return data


class _Reader:
    """Reads one config's values, remembering which keys were used."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def need(self, key: str) -> Any:
        self.used.add(key)
        if self.data.get(key) is None:
            raise ScenarioError(
                f"{self.where}: field {key!r} is missing; a {self.data.get('model_type')} "
                f"config.json states it (copy it from the model's published config.json)."
            )
        return self.data[key]

    def refuse(self, key: str, why: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {key}={self.data.get(key)!r}: {why}")

    def must_be(self, key: str, allowed: tuple[Any, ...]) -> None:
        """``key`` may be absent or one of ``allowed`` (values the model prices as is)."""
        self.used.add(key)
        v = self.data.get(key)
        if v is not None and v not in allowed:
            raise self.refuse(key, f"only {', '.join(map(repr, allowed))} is supported here")

    def check_unknown(self, allowed: frozenset[str]) -> None:
        known = allowed | NO_COST | self.used
        for key in self.data:
            if key not in known:
                near = nearest(key, sorted(known))
                hint = f" (did you mean {near!r}?)" if near else ""
                raise ScenarioError(
                    f"{self.where}: unknown field {key!r}{hint}; it would change the model in "
                    f"a way this reader does not price. Remove it, or describe the model with "
                    f"explicit fields (docs/models.md)."
                )


def _base(r: _Reader) -> dict[str, Any]:
    heads = int(r.need("num_attention_heads"))
    kv = r.get("num_key_value_heads") or heads
    if heads % int(kv):
        raise r.refuse(
            "num_key_value_heads",
            f"must divide num_attention_heads={heads} (grouped-query attention)",
        )
    act = r.get("hidden_act") or r.get("hidden_activation") or "silu"
    if act not in _ACTIVATIONS:
        key = "hidden_act" if r.data.get("hidden_act") else "hidden_activation"
        raise r.refuse(key, unknown_message("activation", act, list(_ACTIVATIONS)))
    out: dict[str, Any] = {
        "layers": int(r.need("num_hidden_layers")),
        "hidden": int(r.need("hidden_size")),
        "heads": heads,
        "kv_heads": int(kv),
        "ffn_hidden": int(r.need("intermediate_size")),
        "vocab": int(r.need("vocab_size")),
        "norm": "rmsnorm",
        "position": "rope",
        "bias": False,
        "gated_mlp": True,
        "parallel_block": False,
        "activation": _ACTIVATIONS[act],
        "tied_embeddings": bool(r.get("tie_word_embeddings", False)),
    }
    if r.get("head_dim") is not None:
        out["head_dim"] = int(r.data["head_dim"])
    if r.get("max_position_embeddings") is not None:
        out["seq_len"] = int(r.data["max_position_embeddings"])
    if r.get("rms_norm_eps") is not None:
        out["norm_eps"] = float(r.data["rms_norm_eps"])
    if r.get("rope_theta") is not None:
        out["rope_theta"] = float(r.data["rope_theta"])
    if r.get("rope_scaling") is not None:
        out["rope_scaling"] = dict(r.data["rope_scaling"])
    _rope_parameters(r, out)
    _layer_types(r, out)
    return out


def _rope_parameters(r: _Reader, out: dict[str, Any]) -> None:
    """Newer configs state RoPE as ``rope_parameters``: one mapping, or one per layer type
    (``full_attention``, ``sliding_attention``); the full layers' ``rope_theta`` is kept
    and the mapping recorded like ``rope_scaling`` (it changes the cos/sin tables only)."""
    params = r.get("rope_parameters")
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise r.refuse("rope_parameters", "expected a mapping of RoPE settings")
    main = params.get("full_attention", params)
    if isinstance(main, Mapping) and main.get("rope_theta") is not None:
        out["rope_theta"] = float(main["rope_theta"])
    out["rope_scaling"] = dict(params)


_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


def _layer_types(r: _Reader, out: dict[str, Any]) -> None:
    """``layer_types`` (newer configs of every family) names each layer's attention."""
    types = r.get("layer_types")
    if types is None:
        return
    bad = [t for t in types if t not in _LAYER_TYPES]
    if bad:
        raise r.refuse("layer_types", unknown_message("layer type", bad[0], list(_LAYER_TYPES)))
    kinds = tuple(_LAYER_TYPES[t] for t in types)
    if "sliding" in kinds:
        out["layer_types"] = kinds


def _sliding(r: _Reader, out: dict[str, Any]) -> None:
    """A window on every layer (Mistral v0.1, Phi-3) when ``sliding_window`` is set."""
    w = r.get("sliding_window")
    if w is not None:
        out["sliding_window"] = int(w)


def _llama(r: _Reader) -> dict[str, Any]:
    r.must_be("attention_bias", (False,))
    r.must_be("mlp_bias", (False,))
    return _base(r)


def _mistral(r: _Reader) -> dict[str, Any]:
    out = _base(r)
    _sliding(r, out)
    return out


def _mixtral(r: _Reader) -> dict[str, Any]:
    out = _mistral(r)
    out["experts"] = int(r.need("num_local_experts"))
    out["top_k"] = int(r.need("num_experts_per_tok"))
    return out


def _qwen2(r: _Reader) -> dict[str, Any]:
    r.must_be("use_sliding_window", (False,))
    r.get("sliding_window")  # only read when use_sliding_window is true
    r.get("max_window_layers")
    out = _base(r)
    out["qkv_bias"] = True  # Qwen2Attention: q/k/v_proj bias=True, o_proj bias=False
    return out


def _qwen3(r: _Reader) -> dict[str, Any]:
    r.must_be("attention_bias", (False,))
    r.must_be("use_sliding_window", (False,))
    r.get("sliding_window")
    r.get("max_window_layers")
    out = _base(r)
    out["qk_norm"] = True
    return out


def _qwen3_moe(r: _Reader) -> dict[str, Any]:
    out = _qwen3(r)
    r.must_be("decoder_sparse_step", (1,))
    if r.get("mlp_only_layers"):
        raise r.refuse("mlp_only_layers", "dense layers among expert layers are not modelled")
    out["experts"] = int(r.need("num_experts"))
    out["top_k"] = int(r.need("num_experts_per_tok"))
    out["ffn_hidden"] = int(r.need("moe_intermediate_size"))
    return out


def _deepseek(r: _Reader) -> dict[str, Any]:
    r.must_be("attention_bias", (False,))
    r.must_be("moe_layer_freq", (1,))
    out = _base(r)
    nope, rope = int(r.need("qk_nope_head_dim")), int(r.need("qk_rope_head_dim"))
    out.pop("kv_heads")  # MLA caches one latent for all heads
    out["head_dim"] = nope + rope
    out["qk_rope_head_dim"] = rope
    out["v_head_dim"] = int(r.need("v_head_dim"))
    out["kv_lora_rank"] = int(r.need("kv_lora_rank"))
    if r.get("q_lora_rank"):
        out["q_lora_rank"] = int(r.data["q_lora_rank"])
    routed = r.get("n_routed_experts")
    if routed:
        moe_f = int(r.need("moe_intermediate_size"))
        out["dense_ffn_hidden"] = out["ffn_hidden"]
        out["ffn_hidden"] = moe_f
        out["experts"] = int(routed)
        out["top_k"] = int(r.need("num_experts_per_tok"))
        out["dense_layers"] = int(r.get("first_k_dense_replace") or 0)
        shared = int(r.get("n_shared_experts") or 0)
        if shared:
            out["shared_experts"] = shared
            out["shared_ffn_hidden"] = shared * moe_f
        # V3's aux-loss-free balancing keeps a per-expert score bias (e_score_correction_bias)
        out["router_bias"] = r.get("topk_method") == "noaux_tc"
    if r.get("num_nextn_predict_layers"):
        out["mtp_layers"] = int(r.data["num_nextn_predict_layers"])
    return out


def _gemma(r: _Reader, qk_norm: bool) -> dict[str, Any]:
    r.must_be("attention_bias", (False,))
    r.get("hidden_activation")
    out = _base(r)
    out["tied_embeddings"] = bool(r.get("tie_word_embeddings", True))
    out["sandwich_norm"] = True
    out["qk_norm"] = qk_norm
    for key, field in (
        ("attn_logit_softcapping", "attn_softcap"),
        ("final_logit_softcapping", "final_softcap"),
    ):
        if r.get(key) is not None:
            out[field] = float(r.data[key])
    return out


def _gemma2(r: _Reader) -> dict[str, Any]:
    out = _gemma(r, qk_norm=False)
    out["sliding_window"] = int(r.need("sliding_window"))
    r.get("sliding_window_size")  # an older duplicate of sliding_window
    # Gemma2DecoderLayer: even layers slide, odd layers attend globally
    out["layer_types"] = tuple("sliding" if i % 2 == 0 else "full" for i in range(out["layers"]))
    return out


def _gemma3(r: _Reader) -> dict[str, Any]:
    out = _gemma(r, qk_norm=True)
    out["sliding_window"] = int(r.need("sliding_window"))
    pattern = r.get("sliding_window_pattern") or r.get("_sliding_window_pattern")
    if "layer_types" in out:
        pass  # read by _base
    elif pattern:  # Gemma3Attention: is_sliding = bool((layer_idx + 1) % pattern)
        out["layer_types"] = tuple(
            "sliding" if (i + 1) % int(pattern) else "full" for i in range(out["layers"])
        )
    else:
        raise ScenarioError(
            f"{r.where}: a gemma3_text config.json states layer_types or "
            "sliding_window_pattern (which layers use the sliding window)."
        )
    return out


def _phi3(r: _Reader) -> dict[str, Any]:
    r.must_be("partial_rotary_factor", (1, 1.0))
    out = _base(r)
    _sliding(r, out)
    return out


ARCHITECTURES: dict[str, tuple[str, Callable[[_Reader], dict[str, Any]]]] = {
    "LlamaForCausalLM": ("llama", _llama),
    "MistralForCausalLM": ("mistral", _mistral),
    "MixtralForCausalLM": ("mixtral", _mixtral),
    "Qwen2ForCausalLM": ("qwen2", _qwen2),
    "Qwen3ForCausalLM": ("qwen3", _qwen3),
    "Qwen3MoeForCausalLM": ("qwen3_moe", _qwen3_moe),
    "DeepseekV2ForCausalLM": ("deepseek_v2", _deepseek),
    "DeepseekV3ForCausalLM": ("deepseek_v3", _deepseek),
    "Gemma2ForCausalLM": ("gemma2", _gemma2),
    "Gemma3ForCausalLM": ("gemma3_text", _gemma3),
    "Phi3ForCausalLM": ("phi3", _phi3),
}
"""Each supported ``architectures`` entry: its ``model_type`` and its reader."""

_EXTRA_KEYS: dict[str, frozenset[str]] = {
    "deepseek_v2": frozenset({"topk_method", "num_key_value_heads"}),
    "deepseek_v3": frozenset({"topk_method", "num_key_value_heads"}),
}


def decoder_fields(data: Mapping[str, Any], where: str = "model.config") -> dict[str, Any]:
    """The :class:`~xpusim.plugins.models.transformer.DecoderConfig` fields of a
    ``config.json``'s values (see the module docstring for what is read and refused)."""
    archs = data.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1:
        raise ScenarioError(
            f"{where}: field 'architectures' must list one architecture, got {archs!r}; "
            f"supported: {', '.join(ARCHITECTURES)}."
        )
    arch = str(archs[0])
    if arch not in ARCHITECTURES:
        if arch == "Gemma3ForConditionalGeneration":
            raise ScenarioError(
                f"{where}: architecture 'Gemma3ForConditionalGeneration' has a vision tower "
                "this reader does not price; give its text_config as a config.json with "
                "architectures ['Gemma3ForCausalLM'] and model_type 'gemma3_text'."
            )
        raise ScenarioError(unknown_message("architecture", arch, list(ARCHITECTURES), where))
    model_type, read = ARCHITECTURES[arch]
    if data.get("model_type") not in (None, model_type):
        raise ScenarioError(
            f"{where}: model_type {data.get('model_type')!r} contradicts architectures "
            f"[{arch!r}], whose model_type is {model_type!r}."
        )
    if data.get("quantization_config") is not None:
        raise ScenarioError(
            f"{where}: field 'quantization_config' describes stored weights this reader does "
            "not price; remove it and set the model's dtype (model.dtype) instead."
        )
    r = _Reader(data, where)
    fields = read(r)
    r.check_unknown(_COMMON | _EXTRA_KEYS.get(model_type, frozenset()))

    def label(field: str) -> str:
        """The ``config.json`` key a too-large field was read from (found by its value)."""
        value = fields.get(field)
        keys = [k for k, v in data.items() if not isinstance(v, bool) and v == value]
        return f"{where}: {keys[0]} (model.{field})" if keys else f"{where}: model.{field}"

    check_sizes(fields, SIZE_LIMITS, "hf", label)
    return fields
