"""xpusim: simulate ML workloads on candidate hardware.

The import root of the distribution. The engine lives in :mod:`xpusim.engine` and the
built-in plugins in :mod:`xpusim.plugins`; a plugin writes::

    from xpusim import hookimpl

This module imports only the hook marker, so importing it is cheap; ``API_VERSION`` is
looked up in :mod:`xpusim.engine` on first access.
"""

from typing import Any

from xpusim.engine import __version__, hookimpl

__all__ = ["API_VERSION", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``API_VERSION``, from :mod:`xpusim.engine` when first asked for."""
    if name == "API_VERSION":
        from xpusim.engine import API_VERSION

        return API_VERSION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
