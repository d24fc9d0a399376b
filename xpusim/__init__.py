"""xpusim: simulate ML workloads on candidate hardware.

The import root of the distribution. The engine lives in :mod:`xpusim.engine` and the
built-in plugins in :mod:`xpusim.plugins`; a plugin writes::

    from xpusim import hookimpl

This module imports nothing at its top, so that the console script's entry point
(:mod:`xpusim.start`) can handle Ctrl-C before anything is imported; ``hookimpl``,
``__version__`` and ``API_VERSION`` are looked up in :mod:`xpusim.engine` on first access.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xpusim.engine import API_VERSION, __version__, hookimpl

__all__ = ["API_VERSION", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``hookimpl``, ``__version__`` and ``API_VERSION``, from :mod:`xpusim.engine` when
    first asked for."""
    if name in __all__:
        import xpusim.engine as engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
