"""The ``spinnaker`` backend: spiking networks mapped onto SpiNNaker boards by sPyNNaker
(see ``docs/backends/spinnaker.md``). Importing this package does not import sPyNNaker;
mapping does, on first use."""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.backend import Backend
from xpusim.plugins.spinnaker.backend import SpinnakerBackend

__all__ = ["SpinnakerBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``spinnaker`` backend."""
    register(SpinnakerBackend())
