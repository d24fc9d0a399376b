"""Built-in model families, registered through the ``xpusim`` entry point.

Each family is registered by name with a :class:`~xpusim.engine.lazy.Lazy` reference
(:data:`FAMILIES`), so its module is imported only when a scenario or command uses it:
decoder transformers (``gpt``, ``llama``, ``mixtral``, ``palm``; their configuration and
parametric graphs import no torch), the encoder (``bert``), vision (``resnet``), small
nets (``mlp``, ``cnn``), spiking networks (``snn``) and any user torch module (``torch``).
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["FAMILIES", "register_models"]

_PKG = "xpusim.plugins.models"

FAMILIES: dict[str, str] = {
    "gpt": f"{_PKG}.transformer:GPT",
    "llama": f"{_PKG}.transformer:LLAMA",
    "mixtral": f"{_PKG}.transformer:MIXTRAL",
    "palm": f"{_PKG}.transformer:PALM",
    "bert": f"{_PKG}.encoder:EncoderFamily",
    "resnet": f"{_PKG}.vision:ResNetFamily",
    "mlp": f"{_PKG}.small:MLPFamily",
    "cnn": f"{_PKG}.small:CNNFamily",
    "snn": f"{_PKG}.snn:SnnFamily",
    "torch": f"{_PKG}.custom:TorchFamily",
    "hf": f"{_PKG}.hf:HFFamily",
}
"""Each family's name and where its :class:`~xpusim.engine.model.ModelFamily` is (a
class is instantiated on first use), in registration order."""


@hookimpl
def register_models(register: Callable[[Lazy], None]) -> None:
    """Register every family of :data:`FAMILIES` (imported on first use)."""
    for name, target in FAMILIES.items():
        register(Lazy(name, target))
