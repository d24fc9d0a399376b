"""Which process wrote a temporary folder, and whether it still runs.

Temporary folders (a run folder being written, a spill folder of event parts) carry the
name of their machine and the id of their process, so a later run can remove those whose
process was killed (``kill -9``, the OOM killer) and leave alone those of live processes
and of other machines sharing the folder.
"""

from __future__ import annotations

import os
import socket


def host_tag() -> str:
    """This machine's name as used in temporary folder names (no ``-`` or separators)."""
    return "".join(c for c in socket.gethostname() if c.isalnum())[:40] or "host"


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is not ours, or cannot tell: leave its folder alone
    return True
