"""Built-in model families, registered through the ``xpusim`` entry point.

Each module in :data:`MODULES` exports ``FAMILIES``, a list of
:class:`~xpusim.engine.model.ModelFamily` instances: decoder transformers (``gpt``, ``llama``,
``mixtral``, ``palm``), the encoder (``bert``), vision (``resnet``), small nets (``mlp``,
``cnn``), spiking networks (``snn``) and any user torch module (``torch``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.model import ModelFamily

MODULES: tuple[str, ...] = (
    "xpusim.plugins.models.transformer",
    "xpusim.plugins.models.encoder",
    "xpusim.plugins.models.vision",
    "xpusim.plugins.models.small",
    "xpusim.plugins.models.snn",
    "xpusim.plugins.models.custom",
)
"""Modules whose ``FAMILIES`` this plugin registers, in order."""


@hookimpl
def register_models(register: Callable[[ModelFamily], None]) -> None:
    """Register every family of every module in :data:`MODULES`."""
    for name in MODULES:
        for family in importlib.import_module(name).FAMILIES:
            register(family)
