"""Published model configurations, each with the document it comes from.

A preset holds only architecture fields; a family adds its traits (norm, position
encoding, MLP kind) and a scenario may override any field. ``family`` names the family
a preset belongs to.
"""

from __future__ import annotations

from typing import Any

DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "family": "gpt",
        "layers": 12,
        "hidden": 768,
        "heads": 12,
        "ffn_hidden": 3072,
        "vocab": 50257,
        "seq_len": 1024,
    },
    "gpt3-175b": {
        "family": "gpt",
        "layers": 96,
        "hidden": 12288,
        "heads": 96,
        "ffn_hidden": 49152,
        "vocab": 50257,
        "seq_len": 2048,
    },
    "mt-nlg-530b": {
        "family": "gpt",
        "layers": 105,
        "hidden": 20480,
        "heads": 128,
        "ffn_hidden": 81920,
        "vocab": 50257,
        "seq_len": 2048,
    },
    "llama-2-7b": {
        "family": "llama",
        "layers": 32,
        "hidden": 4096,
        "heads": 32,
        "kv_heads": 32,
        "ffn_hidden": 11008,
        "vocab": 32000,
        "seq_len": 4096,
    },
    "llama-2-13b": {
        "family": "llama",
        "layers": 40,
        "hidden": 5120,
        "heads": 40,
        "kv_heads": 40,
        "ffn_hidden": 13824,
        "vocab": 32000,
        "seq_len": 4096,
    },
    "llama-2-70b": {
        "family": "llama",
        "layers": 80,
        "hidden": 8192,
        "heads": 64,
        "kv_heads": 8,
        "ffn_hidden": 28672,
        "vocab": 32000,
        "seq_len": 4096,
    },
    "llama-3-8b": {
        "family": "llama",
        "layers": 32,
        "hidden": 4096,
        "heads": 32,
        "kv_heads": 8,
        "ffn_hidden": 14336,
        "vocab": 128256,
        "seq_len": 8192,
        "rope_theta": 500000.0,
    },
    "llama-3-70b": {
        "family": "llama",
        "layers": 80,
        "hidden": 8192,
        "heads": 64,
        "kv_heads": 8,
        "ffn_hidden": 28672,
        "vocab": 128256,
        "seq_len": 8192,
        "rope_theta": 500000.0,
    },
    "llama-3-405b": {
        "family": "llama",
        "layers": 126,
        "hidden": 16384,
        "heads": 128,
        "kv_heads": 8,
        "ffn_hidden": 53248,
        "vocab": 128256,
        "seq_len": 131072,
        "rope_theta": 500000.0,
    },
    "mixtral-8x7b": {
        "family": "mixtral",
        "layers": 32,
        "hidden": 4096,
        "heads": 32,
        "kv_heads": 8,
        "ffn_hidden": 14336,
        "vocab": 32000,
        "seq_len": 32768,
        "experts": 8,
        "top_k": 2,
        "rope_theta": 1000000.0,
    },
    "palm-540b": {
        "family": "palm",
        "layers": 118,
        "hidden": 18432,
        "heads": 48,
        "kv_heads": 1,
        "head_dim": 256,
        "ffn_hidden": 73728,
        "vocab": 256000,
        "seq_len": 2048,
    },
}
"""Decoder-only presets (families ``gpt``, ``llama``, ``mixtral``, ``palm``)."""

DECODER_SOURCES: dict[str, str] = {
    "gpt2": "Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners' "
    "(124M model); HF model card openai-community/gpt2 config.json",
    "gpt3-175b": "Brown et al. 2020, 'Language Models are Few-Shot Learners', "
    "arXiv:2005.14165, Table 2.1 (GPT-3 175B)",
    "mt-nlg-530b": "Smith et al. 2022, 'Using DeepSpeed and Megatron to Train "
    "Megatron-Turing NLG 530B', arXiv:2201.11990, Sec. 3.1 (105 layers, "
    "hidden 20480, 128 heads)",
    "llama-2-7b": "Touvron et al. 2023, 'Llama 2: Open Foundation and Fine-Tuned Chat "
    "Models', arXiv:2307.09288; HF model card meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "Touvron et al. 2023, arXiv:2307.09288; HF model card meta-llama/Llama-2-13b-hf",
    "llama-2-70b": "Touvron et al. 2023, arXiv:2307.09288 (GQA, 8 KV heads); HF model card "
    "meta-llama/Llama-2-70b-hf",
    "llama-3-8b": "Llama Team 2024, 'The Llama 3 Herd of Models', arXiv:2407.21783, "
    "Table 3; HF model card meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "Llama Team 2024, arXiv:2407.21783, Table 3; HF model card "
    "meta-llama/Meta-Llama-3-70B",
    "llama-3-405b": "Llama Team 2024, arXiv:2407.21783, Table 3 (126 layers, 16384 "
    "hidden, 128 heads, 8 KV heads, FFN 53248); HF model card "
    "meta-llama/Llama-3.1-405B",
    "mixtral-8x7b": "Jiang et al. 2024, 'Mixtral of Experts', arXiv:2401.04088, Table 1; "
    "HF model card mistralai/Mixtral-8x7B-v0.1",
    "palm-540b": "Chowdhery et al. 2022, 'PaLM: Scaling Language Modeling with Pathways', "
    "arXiv:2204.02311, Table 1 and Sec. 2 (parallel block, multi-query "
    "attention, SwiGLU, RoPE, shared embeddings, head size 256)",
}

ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": {
        "layers": 12,
        "hidden": 768,
        "heads": 12,
        "ffn_hidden": 3072,
        "vocab": 30522,
        "seq_len": 512,
    },
    "bert-large": {
        "layers": 24,
        "hidden": 1024,
        "heads": 16,
        "ffn_hidden": 4096,
        "vocab": 30522,
        "seq_len": 512,
    },
}
"""Encoder presets (family ``bert``)."""

ENCODER_SOURCES: dict[str, str] = {
    "bert-base": "Devlin et al. 2019, 'BERT: Pre-training of Deep Bidirectional "
    "Transformers for Language Understanding', arXiv:1810.04805, Sec. 3 "
    "(BERT-BASE: L=12, H=768, A=12); HF model card google-bert/bert-base-uncased",
    "bert-large": "Devlin et al. 2019, arXiv:1810.04805, Sec. 3 (BERT-LARGE: L=24, H=1024, "
    "A=16); HF model card google-bert/bert-large-uncased",
}

VISION_SOURCES: dict[str, str] = {
    "resnet-18": "He et al. 2016, 'Deep Residual Learning for Image Recognition', "
    "arXiv:1512.03385, Table 1 (18-layer, basic blocks [2, 2, 2, 2])",
    "resnet-50": "He et al. 2016, arXiv:1512.03385, Table 1 (50-layer, bottleneck blocks "
    "[3, 4, 6, 3])",
}
