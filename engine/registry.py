"""Named registries that own de-duplication and unknown-name answers."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from xpusim.engine.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


def nearest(name: str, choices: list[str]) -> str | None:
    """The closest valid name to a misspelled ``name``, or ``None`` when nothing is close."""
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return lowered[name.lower()]
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[hits[0]] if hits else None


def unknown_message(kind: str, name: object, choices: list[str], where: str = "") -> str:
    """A one-paragraph message for an unknown ``name`` listing the valid ones."""
    near = nearest(str(name), choices)
    place = f"{where}: " if where else ""
    hint = f" Did you mean {near!r}?" if near else ""
    valid = ", ".join(sorted(choices)) if choices else "(none registered)"
    return f"{place}unknown {kind} {name!r}.{hint} Valid {_plural(kind)}: {valid}."


def _plural(noun: str) -> str:
    """``model family`` -> ``model families``; ``backend`` -> ``backends``."""
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


class Registry(Generic[T]):
    """Items of one kind by unique name, remembering which plugin registered each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owner: dict[str, str] = {}

    def add(self, name: str, item: T, plugin: str) -> None:
        """Register ``item`` as ``name`` for ``plugin``; a second owner of a name raises
        :class:`~xpusim.engine.errors.DuplicateNameError` naming both plugins."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} registered by plugin {plugin!r} has no name")
        if name in self._items:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by plugin {self._owner[name]!r} "
                f"and by plugin {plugin!r}. Rename one of them or uninstall one plugin."
            )
        self._items[name] = item
        self._owner[name] = plugin

    def get(self, name: str, where: str = "") -> T:
        """Return the item called ``name`` or raise :class:`~xpusim.engine.errors.UnknownNameError`
        with the valid names and the nearest match."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(unknown_message(self.kind, name, self.names(), where)) from None

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._owner[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, item)`` pairs in name order."""
        for n in self.names():
            yield n, self._items[n]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
