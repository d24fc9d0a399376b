"""xpusim's engine: the plugin host, scenario loading, the SimPy world and results.

The engine knows no particular chip or model; plugins add them. A plugin writes::

    from xpusim import hookimpl

Importing this package is cheap: it holds ``API_VERSION`` (:mod:`xpusim.engine.apiversion`),
``__version__`` and ``hookimpl``, and imports neither the contracts nor pydantic.
"""

from xpusim.engine.apiversion import API_VERSION
from xpusim.engine.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["API_VERSION", "__version__", "hookimpl"]
