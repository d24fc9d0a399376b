"""xpusim: simulate ML workloads on candidate hardware.

The import root of the distribution. The engine lives in :mod:`xpusim.engine` and the
built-in plugins in :mod:`xpusim.plugins`; a plugin writes::

    from xpusim import hookimpl

This module imports only the hook marker, so importing it is cheap.
"""

from xpusim.engine import API_VERSION, __version__, hookimpl

__all__ = ["API_VERSION", "__version__", "hookimpl"]
