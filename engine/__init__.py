"""xpusim's engine: the plugin host, scenario loading, the SimPy world and results.

The engine knows no particular chip or model; plugins add them. A plugin writes::

    from xpusim import hookimpl

Importing this package is cheap: ``API_VERSION`` (defined with the backend contract in
:mod:`xpusim.engine.backend`) is looked up on first access, so a command that needs no
backend (``xpusim version``) does not import the contracts and pydantic.
"""

from typing import Any

from xpusim.engine.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["API_VERSION", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``API_VERSION``, imported from :mod:`xpusim.engine.backend` when first asked for."""
    if name == "API_VERSION":
        from xpusim.engine.backend import API_VERSION

        return API_VERSION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
