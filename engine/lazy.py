"""Lazy references: register a plugin object by name and import it only when it is used.

A plugin's entry-point module is imported whenever the host starts (every command
does), so a plugin that imports its backend, model code or reporter there makes every
command pay for torch, sPyNNaker or polars. Instead it registers a :class:`Lazy`::

    from xpusim import hookimpl
    from xpusim.engine.lazy import Lazy

    @hookimpl
    def register_backends(register):
        register(Lazy("mychip", "mychip_xpusim.backend:MyChipBackend"))

The registry lists ``mychip`` at once and imports ``mychip_xpusim.backend`` the first time
a scenario, a listing or a command needs the backend itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from xpusim.engine.errors import PluginError


@dataclass(frozen=True, slots=True)
class Lazy:
    """A named reference to a plugin object, imported on first use.

    ``name`` is the key the object is registered under (a backend's ``backends[].name``,
    a family's ``model.family`` ...) and must equal the loaded object's ``name``.
    ``target`` is ``"package.module:attribute"`` (the attribute may be dotted). When the
    attribute is a class it is called with no arguments; anything else is used as it is.
    """

    name: str
    target: str

    def __post_init__(self) -> None:
        module, sep, attr = self.target.partition(":")
        if not self.name or not isinstance(self.name, str):
            raise PluginError(f"Lazy reference to {self.target!r} has no name; give it one.")
        if not sep or not module or not attr or ":" in attr:
            raise PluginError(
                f"Lazy reference {self.name!r} has target {self.target!r}; write it as "
                f"'package.module:attribute', for example 'mychip.backend:MyChipBackend'."
            )

    @property
    def module(self) -> str:
        """The module path of :attr:`target` (what is imported on load)."""
        return self.target.partition(":")[0]

    def load(self) -> Any:
        """Import :attr:`module` and return the object: the attribute itself, or an
        instance when the attribute is a class. Import errors propagate unchanged; the
        registry turns them into a :class:`~xpusim.engine.errors.PluginError`."""
        module, _, attr = self.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj() if isinstance(obj, type) else obj
