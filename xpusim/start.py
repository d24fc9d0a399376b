"""The ``xpusim`` console script's entry point: Ctrl-C handled before anything is imported.

The command line (:mod:`xpusim.engine.cli`) imports typer, pluggy and the engine, which
takes a noticeable fraction of a second; a Ctrl-C meanwhile would print an import
traceback. This module imports nothing of xpusim's at its top (``xpusim/__init__.py``
imports nothing either until a name is asked for), so :func:`main` installs its handler
first: a Ctrl-C while the command line is being imported ends the process at once with
status 130 and the usual line, nothing having been written yet. Once imported, the
previous handler (Python's ``KeyboardInterrupt``) is restored and the command runs, with
its own clean-up on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOPPED = b"interrupted: stopped cleanly, nothing was written.\n"
"""What a Ctrl-C while starting prints on standard error (as the command line does)."""


def _stop_while_importing(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before the command line exists: nothing to clean up, stop at once."""
    os.write(2, STOPPED)
    os._exit(130)


def main() -> None:
    """Run the ``xpusim`` command line with Ctrl-C handled from the first moment."""
    previous = signal.signal(signal.SIGINT, _stop_while_importing)
    from xpusim.engine.cli import main as command_line

    signal.signal(signal.SIGINT, previous)
    command_line()
