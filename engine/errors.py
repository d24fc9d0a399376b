"""The exception hierarchy.

Every error a user can cause derives from :class:`XpusimError`; the CLI turns those into a
one-paragraph message and exit status 2. Anything else is an internal fault (exit 1).
"""

from __future__ import annotations


class XpusimError(Exception):
    """Root of every error caused by input: a scenario, a trace, a plugin name, a size.

    The message is a complete, one-paragraph sentence that names the place (file, line,
    key path, plugin) and the fix.
    """


class ScenarioError(XpusimError):
    """A scenario file that cannot be parsed or validated."""


class UnitError(XpusimError):
    """A quantity with a missing, unknown or wrong-dimension unit."""


class TraceError(XpusimError):
    """A trace file that is missing, empty or malformed (the message names the line)."""


class UnknownNameError(XpusimError):
    """A name (device, model, backend, workload ...) that no plugin registered."""


class DuplicateNameError(XpusimError):
    """Two plugins registered the same name in one registry."""


class PluginError(XpusimError):
    """A plugin failed to load, raised inside a hook, or targets another engine API."""


class DoesNotFitError(XpusimError):
    """A model or plan that does not fit the memory of the system it was put on."""


class UnsupportedError(XpusimError):
    """A backend that cannot run a model or workload kind (a transformer on SpiNNaker)."""
