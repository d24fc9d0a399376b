"""Reading input files safely: regular files only, never more than a stated size.

Every file a scenario or an option names (the scenario and its ``extends:``, a trace, a
calibration file, a points file, a compared run's ``summary.json``) is opened through
:func:`read_limited` or checked with :func:`check_regular`. A FIFO, a device
(``/dev/zero``), a socket or a folder is refused before a byte is read, and a file larger
than its limit is refused after reading at most one byte past the limit, so no input can
hang a command or exhaust its memory before it is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from xpusim.engine.errors import XpusimError


def _kind(mode: int) -> str:
    """A file type in words, for messages."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def size_text(n: float) -> str:
    """A byte count in MiB or GiB for messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _refuse(path: Path, what: str, mode: int, error: type[XpusimError]) -> XpusimError:
    return error(
        f"{path}: the {what} is {_kind(mode)}, not a regular file; xpusim reads only "
        f"regular files (a pipe or a device could block or never end). Give the path of "
        f"a file."
    )


def _check_stat(
    path: Path,
    what: str,
    st: os.stat_result,
    limit: int,
    hint: str,
    error: type[XpusimError],
) -> None:
    """Refuse a file that is not regular or is larger than ``limit`` bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, what, st.st_mode, error)
    if st.st_size > limit:
        raise error(
            f"{path}: the {what} is {size_text(st.st_size)}; the limit is "
            f"{size_text(limit)}. {hint}".rstrip()
        )


def check_regular(
    path: Path, what: str, limit: int, hint: str = "", error: type[XpusimError] = XpusimError
) -> int:
    """Check that ``path`` is an existing regular file of at most ``limit`` bytes and
    return its size; otherwise raise :class:`XpusimError` naming ``what`` and the fix.

    For files another library opens (Parquet through polars): nothing is read here.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}. Check the path.") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}).") from None
    _check_stat(path, what, st, limit, hint, error)
    return st.st_size


def read_limited(
    path: Path, what: str, limit: int, hint: str = "", error: type[XpusimError] = XpusimError
) -> bytes:
    """Read the regular file ``path`` whole if it holds at most ``limit`` bytes.

    The file is opened without blocking (a FIFO opened for reading would otherwise wait
    for a writer), its type checked on the open descriptor (no race with a rename), and
    at most ``limit + 1`` bytes are read, so a file that grows or lies about its size is
    still refused. Raises ``error`` (an :class:`XpusimError`) naming ``what``, the path and the fix.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}. Check the path.") from None
    except IsADirectoryError:
        raise error(f"{path}: the {what} is a folder; give the path of a file.") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}).") from None
    try:
        _check_stat(path, what, os.fstat(fd), limit, hint, error)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise error(
                f"{path}: the {what} is larger than the limit of {size_text(limit)}. "
                f"{hint}".rstrip()
            )
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}).") from None
    finally:
        os.close(fd)
