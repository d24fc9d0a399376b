"""The ``hf`` family: a decoder described by a Hugging Face ``config.json``.

``model: {family: hf, config: path/to/config.json}`` (a file, or a folder holding one)
or ``model: {family: hf, preset: qwen2.5-7b}`` (a published ``config.json`` kept in
:mod:`~xpusim.plugins.models.hf_presets`). The file's values become a
:class:`~xpusim.plugins.models.transformer.DecoderConfig` through
:func:`~xpusim.plugins.models.hf_config.decoder_fields`; any field of that configuration
(``dtype``, ``kv_dtype``, ``expert_imbalance``, ``seq_len`` ...) may be given beside it and
wins. Nothing is downloaded and no weights are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xpusim.engine.errors import ScenarioError
from xpusim.engine.model import ModelFamily
from xpusim.plugins.models.common import validate_spec
from xpusim.plugins.models.hf_config import decoder_fields, read_config
from xpusim.plugins.models.hf_presets import HF_PRESETS, HF_SOURCES
from xpusim.plugins.models.transformer import DecoderConfig, DecoderModel

__all__ = ["HFFamily"]


class HFFamily(ModelFamily):
    """Decoders from a ``config.json`` (``config:``) or a published one (``preset:``)."""

    name = "hf"
    description = (
        "Any supported Hugging Face decoder from its config.json (Llama 3.x, Mistral, "
        "Mixtral, Qwen2/2.5/3, Qwen3-MoE, DeepSeek-V2/V3, Gemma 2/3, Phi-3)"
    )

    def __init__(self) -> None:
        self.presets = {k: decoder_fields(v, f"preset {k}") for k, v in HF_PRESETS.items()}
        self.presets_sources = dict(HF_SOURCES)

    def configure(self, spec: Mapping[str, Any]) -> DecoderModel:
        """Validate ``config`` or ``preset`` plus field overrides into a
        :class:`~xpusim.plugins.models.transformer.DecoderModel`."""
        spec = dict(spec)
        spec.pop("family", None)
        config = spec.pop("config", None)
        if config is None:
            if spec.get("preset") is None:
                raise ScenarioError(
                    "model: family 'hf' needs `config: path/to/config.json` or a `preset`: "
                    f"{', '.join(sorted(self.presets))}."
                )
            cfg, _ = validate_spec(DecoderConfig, spec, self.name, self.presets)
            return DecoderModel(cfg, self.name)
        if spec.get("preset") is not None:
            raise ScenarioError(
                "model: give either `config` or `preset`, not both (a preset is a published "
                "config.json)."
            )
        path = Path(str(config))
        fields = decoder_fields(read_config(path), f"model.config ({path})")
        # the model's name: its folder's, or the file's own unless it is "config.json"
        label = path.name if path.is_dir() or path.stem != "config" else path.parent.name
        cfg, _ = validate_spec(DecoderConfig, {**spec, "preset": label}, self.name, {label: fields})
        return DecoderModel(cfg, self.name)
