"""Checks on the paths a command writes to, made before any work.

A run folder (``run --out``), a sweep folder and a comparison report (``compare --out``)
are checked here before anything is simulated, so a path that cannot be written ends the
command with exit status 2 at once, not after hours of simulation: a symbolic link (it
would send the output elsewhere), a parent that is a file, a folder the user cannot write
(a read-only file system, ``/proc``), a path inside a run folder (a run folder is never
modified after it is written) and, for a report, an existing file the comparison did not
write.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from xpusim.engine.errors import XpusimError

RUN_MARK = "summary.json"
"""The file that makes a folder a run folder."""

REPORT_MARK = b'<meta name="generator" content="xpusim'
"""What every HTML report xpusim writes carries in its head."""


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (symbolic links not followed)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(".")


MAX_NAME = 255
"""Longest file or folder name (in bytes) the common file systems accept."""


def check_path_text(path: Path, label: str) -> None:
    """Refuse a path no file system can hold: an empty one, one with a NUL byte, or a
    name longer than :data:`MAX_NAME` bytes."""
    text = str(path)
    if not text or "\x00" in text:
        raise XpusimError(
            f"{label} {text!r}: this is not a usable path (empty or with a NUL byte); "
            f"give a folder path such as results/my-run."
        )
    long = next((p for p in Path(text).parts if len(os.fsencode(p)) > MAX_NAME), None)
    if long is not None:
        raise XpusimError(
            f"{label} {text[:80]!r}...: the name {long[:40]!r}... is {len(os.fsencode(long))} "
            f"bytes long; a file or folder name is at most {MAX_NAME} bytes. Choose a "
            f"shorter name."
        )


def check_not_symlink(path: Path, label: str) -> None:
    """Refuse ``path`` when it is a symbolic link (dangling or not)."""
    check_path_text(path, label)
    if path.is_symlink():
        target = os.readlink(path)
        raise XpusimError(
            f"{label} {path}: this is a symbolic link (to {target}); xpusim does not write "
            f"through links, which could send the output elsewhere. Give the real path."
        )


def check_writable_parent(path: Path, label: str) -> None:
    """Check that the folders above ``path`` are folders that can be written: the nearest
    existing one is tried by creating a temporary file in it. On Linux the file never has
    a name there (``O_TMPFILE``), so a process killed mid-check leaves nothing behind; a
    probe folder made and removed here was left among a sweep's point folders when a
    worker was killed in between."""
    base = nearest_existing(path.parent if path.parent != path else path)
    if not base.is_dir():
        raise XpusimError(
            f"{label} {path}: {base} is a file, so no folder can be created under it; "
            f"choose a path whose parent folders are folders."
        )
    try:
        with tempfile.TemporaryFile(prefix=".xpusim-probe-", dir=base):
            pass
    except OSError as exc:
        raise XpusimError(
            f"{label} {path}: cannot write in {base} ({exc.strerror}); choose a folder you "
            f"can write, such as one under your home folder or the current folder."
        ) from None


def inside_run_folder(path: Path) -> Path | None:
    """The run folder that contains ``path`` (an ancestor holding ``summary.json``)."""
    for up in Path(os.path.abspath(path)).parents:
        if (up / RUN_MARK).is_file():
            return up
    return None


def check_not_in_run(path: Path, label: str) -> None:
    """Refuse a path inside an existing run folder."""
    run = inside_run_folder(path)
    if run is not None:
        raise XpusimError(
            f"{label} {path}: this is inside the run folder {run}, which is never modified "
            f"once written; choose a path outside it."
        )


def check_report_file(out: Path, inputs: Sequence[Path], label: str = "--out") -> None:
    """Check the report file ``compare`` is to write, before reading any run.

    It may not exist yet, or be an HTML report a previous comparison wrote (it is then
    replaced). Anything else is refused: a folder, a symbolic link, any other file (a
    scenario, a run's ``summary.json``), a path inside a run folder or inside one of the
    ``inputs``.
    """
    out = Path(out)
    check_not_symlink(out, label)
    absolute = Path(os.path.abspath(out))
    for run in inputs:
        root = Path(os.path.abspath(run))
        if absolute == root or root in absolute.parents:
            raise XpusimError(
                f"{label} {out}: this is inside {run}, a run folder being compared; write "
                f"the comparison elsewhere (for example --out comparison.html)."
            )
    check_not_in_run(out, label)
    if os.path.lexists(out):
        if out.is_dir():
            raise XpusimError(
                f"{label} {out}: this is a folder; give the path of the report file to "
                f"write, for example {out / 'comparison.html'}."
            )
        if not _written_by_compare(out):
            raise XpusimError(
                f"{label} {out}: this file exists and is not a comparison report xpusim "
                f"wrote, so it is not overwritten; choose a new file name or remove it."
            )
    check_writable_parent(out, label)


def _written_by_compare(path: Path) -> bool:
    """Whether ``path`` is an HTML report xpusim wrote (its head names the generator)."""
    if path.suffix.lower() not in (".html", ".htm") or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return REPORT_MARK in head
