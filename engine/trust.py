"""The trust boundary of a scenario file: which code a scenario may import and run.

A scenario is data, except for one thing: a ``family: torch`` model names a factory,
``module: "pkg.mod:factory"``, that xpusim imports and calls. A scenario may name only a
module the person running xpusim allowed, by package prefix:

* ``--allow-module PKG`` on ``run``, ``validate`` and ``sweep`` (repeatable), or
* ``XPUSIM_ALLOW_MODULES=PKG1,PKG2`` in the environment (sweep workers inherit it).

Nothing is allowed by default, and no allow-list can admit the standard library (its
process, OS and I/O callables: ``os:system``, ``subprocess:run``, ``builtins:exec`` ...),
``torch`` itself (``torch:load`` unpickles files, ``torch.hub`` downloads code), xpusim
or the libraries around it (:data:`NEVER`).
The factory named must be defined in an allowed module (a name the module imported
from elsewhere is refused) and no part of its path may start with ``_``.

A module path is looked up first in the scenario file's folder, then on the Python path.
User code runs through :func:`run_user`, which turns ``sys.exit()``, an interrupt the
user did not send and any other escape into an input error, so a factory can neither fake
success nor fake a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TypeVar

from xpusim.engine.errors import ScenarioError, XpusimError

ALLOW_ENV = "XPUSIM_ALLOW_MODULES"
"""Environment variable: comma-separated module prefixes a scenario may import."""

NEVER = frozenset(
    {
        # xpusim, torch and the libraries xpusim runs on
        *("xpusim", "engine", "plugins", "torch", "numpy", "polars", "pyarrow", "pydantic"),
        *("yaml", "pluggy", "simpy", "typer", "click", "rich", "matplotlib", "dask"),
        # loaders that run what they read, network clients, installers and test tools
        *("pandas", "dill", "cloudpickle", "joblib", "fsspec", "requests", "urllib3"),
        *("httpx", "pip", "setuptools", "IPython", "pytest", "_pytest", "hypothesis"),
    }
)
"""Top-level packages no allow-list admits, besides the whole standard library: none of
them defines a model factory, and each holds callables that read, write, fetch or run
what they are given (``torch:load`` and ``yaml:unsafe_load`` run what they unpickle or
construct, ``numpy:load`` unpickles, ``torch.hub`` downloads code)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_FOLDER: ContextVar[Path | None] = ContextVar("xpusim_scenario_folder", default=None)

T = TypeVar("T")


def _never(top: str) -> bool:
    """Whether top-level package ``top`` is outside every allow-list."""
    return top in NEVER or top in sys.stdlib_module_names


def check_prefix(name: str, where: str) -> str:
    """Validate one allowed module prefix (``mypkg`` or ``mypkg.nets``) and return it."""
    name = name.strip()
    if not _NAME.match(name):
        raise XpusimError(
            f"{where}: {name!r} is not a module name; give a package or module such as "
            f"mypkg or mypkg.nets."
        )
    if _never(name.split(".")[0]):
        raise XpusimError(
            f"{where}: {name!r} cannot be allowed: the standard library, torch, xpusim and "
            f"the libraries it runs on hold process, file and network callables a scenario "
            f"must never run. Allow only the package that defines your model factory."
        )
    return name


def allowed() -> tuple[str, ...]:
    """The module prefixes allowed now (from :data:`ALLOW_ENV`)."""
    raw = os.environ.get(ALLOW_ENV, "")
    return tuple(
        check_prefix(p, f"environment variable {ALLOW_ENV}") for p in raw.split(",") if p.strip()
    )


def allow(names: Iterable[str], where: str = "--allow-module") -> None:
    """Add ``names`` to the allowed prefixes of this process and the processes it starts
    (the variable :data:`ALLOW_ENV`). Each is checked first: nothing is changed on error."""
    before = allowed()  # a bad environment variable is refused even with no option
    new = [check_prefix(n, f"{where} {n}") for n in names]
    if new:
        os.environ[ALLOW_ENV] = ",".join(dict.fromkeys([*before, *new]))


def _is_allowed(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@contextlib.contextmanager
def scenario_folder(folder: Path) -> Iterator[None]:
    """While inside, user modules are looked up in ``folder`` (the scenario's) first."""
    token = _FOLDER.set(Path(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def _import(mod_name: str, where: str) -> ModuleType:
    """Import ``mod_name`` with the scenario's folder first on the path."""
    folder = _FOLDER.get()
    added = False
    if folder is not None:
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)
            added = True
    # never write __pycache__ into the user's folders: reading a scenario changes nothing
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return run_user(lambda: importlib.import_module(mod_name), f"{where}: importing")
    except ScenarioError as exc:
        if isinstance(exc.__cause__, ImportError) or "ModuleNotFoundError" in str(exc):
            here = f"the scenario's folder {folder.resolve()} and " if folder is not None else ""
            raise ScenarioError(
                f"{where}: cannot import {mod_name!r} ({exc.__cause__ or exc}). A module path "
                f"is looked up in {here}the Python path: put the package beside the scenario "
                f"file or install it (pip install -e PATH)."
            ) from None
        raise
    finally:
        sys.dont_write_bytecode = bytecode
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(folder.resolve()))  # type: ignore[union-attr]


def load_factory(path: str, where: str) -> Callable[..., Any]:
    """Import and return the callable ``package.module:attr`` if the allow-list admits it.

    Raises :class:`ScenarioError` naming ``where`` (the scenario key) and the fix when the
    module is not allowed, cannot be imported, or ``attr`` is private, a module, defined
    outside the allowed modules or not callable. Nothing is imported before the module is
    found allowed.
    """
    mod_name, _, attr = path.partition(":")
    top = mod_name.split(".")[0]
    if _never(top):
        raise ScenarioError(
            f"{where}: {path!r} names {mod_name!r}, which a scenario may never import (the "
            f"standard library, torch, xpusim and the libraries it runs on hold process, file "
            f"and network callables). "
            f"A model factory lives in your own package: module: 'mypkg.nets:build'."
        )
    prefixes = allowed()
    if not _is_allowed(mod_name, prefixes):
        now = f" (allowed now: {', '.join(prefixes)})" if prefixes else ""
        raise ScenarioError(
            f"{where}: the scenario asks to import and run code from {mod_name!r}, which is "
            f"not allowed{now}. A scenario runs code only from modules you allow: add "
            f"--allow-module {top} to the command, or set {ALLOW_ENV}={top}."
        )
    parts = attr.split(".")
    if any(not p.isidentifier() or p.startswith("_") for p in parts):
        raise ScenarioError(
            f"{where}: {attr!r} is not a public name; name a factory function or class "
            f"defined in {mod_name!r} (no part may start with '_')."
        )
    obj: Any = _import(mod_name, where)
    for part in parts:
        if not hasattr(obj, part):
            names = ", ".join(n for n in dir(obj) if not n.startswith("_"))[:300]
            raise ScenarioError(
                f"{where}: {mod_name!r} has no attribute {attr!r}; it defines: {names}."
            )
        obj = getattr(obj, part)
        if isinstance(obj, ModuleType):
            raise ScenarioError(
                f"{where}: {path!r} reaches the module {obj.__name__!r} through an import; "
                f"name a factory defined in {mod_name!r} itself."
            )
    origin = getattr(obj, "__module__", None)
    if not isinstance(origin, str) or not _is_allowed(origin, prefixes):
        raise ScenarioError(
            f"{where}: {path!r} is defined in {origin!r}, not in an allowed module "
            f"({', '.join(prefixes)}); name a factory your allowed package defines."
        )
    if not callable(obj):
        raise ScenarioError(f"{where}: {path!r} is not callable; name a function or class.")
    factory: Callable[..., Any] = obj
    return factory


@contextlib.contextmanager
def _sigint_seen() -> Iterator[list[bool]]:
    """Record whether a real SIGINT arrives while inside (main thread only)."""
    seen = [False]
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        seen[0] = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def run_user(fn: Callable[[], T], what: str) -> T:
    """Call user code ``fn``; its escapes become a :class:`ScenarioError` about ``what``.

    ``sys.exit()`` and any exception become input errors carrying the first line of the
    original. A ``KeyboardInterrupt`` is passed on only when a real Ctrl-C (SIGINT)
    arrived meanwhile; one the code raised itself is an error like any other.
    """
    with _sigint_seen() as seen:
        try:
            return fn()
        except XpusimError:
            raise
        except KeyboardInterrupt:
            if seen[0]:
                raise
            raise ScenarioError(
                f"{what}: the user code raised KeyboardInterrupt without an interrupt "
                f"being sent; fix the code."
            ) from None
        except SystemExit as exc:
            raise ScenarioError(
                f"{what}: the user code called sys.exit({exc.code!r}); a model factory must "
                f"return a module or raise an error."
            ) from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ScenarioError(f"{what}: {type(exc).__name__}: {first}") from exc
        except BaseException as exc:  # GeneratorExit and other escapes of user code
            raise ScenarioError(
                f"{what}: the user code raised {type(exc).__name__}; fix the code."
            ) from None
