"""Built-in model families, registered through the ``xpusim`` entry point.

Each module in :data:`MODULES` exports ``FAMILIES``, a list of
:class:`~engine.model.ModelFamily` instances: decoder transformers (``gpt``, ``llama``,
``mixtral``, ``palm``), the encoder (``bert``), vision (``resnet``), small nets (``mlp``,
``cnn``), spiking networks (``snn``) and any user torch module (``torch``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from engine import hookimpl
from engine.model import ModelFamily

MODULES: tuple[str, ...] = (
    "plugins.models.transformer",
    "plugins.models.encoder",
    "plugins.models.vision",
    "plugins.models.small",
    "plugins.models.snn",
    "plugins.models.custom",
)
"""Modules whose ``FAMILIES`` this plugin registers, in order."""


@hookimpl
def register_models(register: Callable[[ModelFamily], None]) -> None:
    """Register every family of every module in :data:`MODULES`."""
    for name in MODULES:
        for family in importlib.import_module(name).FAMILIES:
            register(family)
