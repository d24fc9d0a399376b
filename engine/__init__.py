"""xpusim's engine: the plugin host, scenario loading, the SimPy world and results.

The engine knows no particular chip or model; plugins add them. A plugin writes::

    from xpusim import hookimpl
"""

from xpusim.engine.backend import API_VERSION
from xpusim.engine.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["API_VERSION", "__version__", "hookimpl"]
