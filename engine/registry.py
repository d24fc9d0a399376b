"""Named registries that own de-duplication and unknown-name answers."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from xpusim.engine.errors import DuplicateNameError, PluginError, UnknownNameError, XpusimError
from xpusim.engine.lazy import Lazy

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
    """Items of one kind by unique name, remembering which plugin registered each.

    An item may be registered as a :class:`~xpusim.engine.lazy.Lazy` reference: its name
    is listed at once (:meth:`names`, :meth:`owner`, ``in``) and its module is imported
    the first time :meth:`get` or :meth:`items` needs the object. ``on_load(name, item,
    plugin)`` runs once per item when its object first exists (at :meth:`add` for an
    object, at first use for a lazy reference); raising there refuses the item.
    ``on_error(name, plugin, error)`` hears once of each lazy item that fails to load.
    """

    def __init__(
        self,
        kind: str,
        on_load: Callable[[str, T, str], None] | None = None,
        on_error: Callable[[str, str, PluginError], None] | None = None,
    ) -> None:
        self.kind = kind
        self._items: dict[str, T | Lazy] = {}
        self._owner: dict[str, str] = {}
        self._errors: dict[str, PluginError] = {}
        self._on_load = on_load
        self._on_error = on_error
        self._lock = threading.RLock()

    def add(self, name: str, item: T | Lazy, plugin: str) -> None:
        """Register ``item`` (an object or a lazy reference) as ``name`` for ``plugin``; a
        second owner of a name raises :class:`~xpusim.engine.errors.DuplicateNameError`
        naming both plugins."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} registered by plugin {plugin!r} has no name")
        if name in self._items:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by plugin {self._owner[name]!r} "
                f"and by plugin {plugin!r}. Rename one of them or uninstall one plugin."
            )
        if not isinstance(item, Lazy) and self._on_load is not None:
            self._on_load(name, item, plugin)
        self._items[name] = item
        self._owner[name] = plugin

    def get(self, name: str, where: str = "") -> T:
        """Return the item called ``name`` (importing it on first use) or raise
        :class:`~xpusim.engine.errors.UnknownNameError` with the valid names and the
        nearest match; a lazy item that cannot be loaded raises
        :class:`~xpusim.engine.errors.PluginError` naming its plugin and the error."""
        try:
            item = self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(unknown_message(self.kind, name, self.names(), where)) from None
        return self._load(name, item) if isinstance(item, Lazy) else item

    def _load(self, name: str, ref: Lazy) -> T:
        """Resolve ``ref`` once; a failure is remembered and raised again on later uses."""
        with self._lock:
            item = self._items[name]
            if not isinstance(item, Lazy):
                return item  # another thread loaded it meanwhile
            if name in self._errors:
                raise self._errors[name]
            plugin = self._owner[name]
            try:
                obj: T = ref.load()
                loaded = getattr(obj, "name", name)
                if loaded != name:
                    raise PluginError(
                        f"{ref.target} is named {loaded!r}, not {name!r}; make the registered "
                        f"name and the object's name agree."
                    )
                if self._on_load is not None:
                    self._on_load(name, obj, plugin)
            except Exception as exc:
                why = str(exc) if isinstance(exc, XpusimError) else f"{type(exc).__name__}: {exc}"
                error = PluginError(
                    f"{self.kind} {name!r} of plugin {plugin!r} could not be loaded from "
                    f"{ref.target}: {why}. Fix or reinstall plugin {plugin!r} (its missing "
                    f"dependency, if one is named), or use another {self.kind}."
                )
                self._errors[name] = error
                if self._on_error is not None:
                    self._on_error(name, plugin, error)
                raise error from exc
            self._items[name] = obj
            return obj

    def loaded(self, name: str) -> bool:
        """Whether ``name``'s object exists yet (an object, or a lazy reference already
        imported)."""
        return name in self._items and not isinstance(self._items[name], Lazy)

    def target(self, name: str) -> str | None:
        """Where a still-lazy ``name`` will be imported from, or ``None`` once loaded."""
        item = self._items.get(name)
        return item.target if isinstance(item, Lazy) else None

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._owner[name]

    def names(self) -> list[str]:
        """Registered names, sorted (imports nothing)."""
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, item)`` pairs in name order, importing lazy items as they come.

        An item that cannot be loaded is left out (``on_error`` has heard of it, and
        :meth:`errors` keeps it), so one broken plugin does not hide the others.
        """
        for n in self.names():
            try:
                item = self.get(n)
            except PluginError:
                continue
            yield n, item

    def errors(self) -> dict[str, PluginError]:
        """Lazy items that failed to load so far, by name."""
        return dict(self._errors)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
