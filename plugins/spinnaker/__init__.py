"""The ``spinnaker`` backend: spiking networks mapped onto SpiNNaker boards by sPyNNaker
(see ``docs/backends/spinnaker.md``).

This entry-point module registers the backend by name only;
:mod:`xpusim.plugins.spinnaker.backend` is imported the first time a scenario or command
uses it, and sPyNNaker itself when a network is first mapped.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__all__ = ["register_backends"]


@hookimpl
def register_backends(register: Callable[[Lazy], None]) -> None:
    """Register the ``spinnaker`` backend (imported on first use)."""
    register(Lazy("spinnaker", "xpusim.plugins.spinnaker.backend:SpinnakerBackend"))
