"""The registry of public request traces: where each lives, and a verified local copy.

The entries are data (``tracereg.yaml`` beside this module): a name, the download URL,
the licence, the reader (``format`` and its options), and the file's size and sha256
with where those figures come from. :func:`fetch` downloads an entry into the user cache
folder (:func:`cache_dir`; ``XPUSIM_TRACE_CACHE`` overrides it), checking the size and
the sha256 as the bytes arrive, and moves the file into place only once they match.
:func:`local_trace` is what a scenario's ``trace: {name: ...}`` resolves through: the
verified copy, downloaded first when absent.

An entry whose publisher states no checksum carries ``sha256: null``: its first download
is pinned (``NAME.pin.json`` beside the file records its sha256 and size) and every later
use is checked against the pin, so a file that changes under the same name is refused.

Every failure a user can cause or fix (an unknown name, no network, a file whose bytes
do not match) raises :class:`~xpusim.engine.errors.TraceError` with the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine.errors import TraceError
from xpusim.engine.registry import nearest
from xpusim.engine.safeio import check_regular, read_limited

PIN_BYTES = 64 * 2**10
"""Largest pin file (a first download's size and sha256, a few lines of JSON) read."""
CACHED_BYTES = 2**40
"""Largest cached trace hashed (streamed, a chunk at a time; the readers' own limits
apply when it is read)."""

CACHE_ENV = "XPUSIM_TRACE_CACHE"
"""Environment variable naming the folder traces are cached in (overrides the default)."""

CHUNK = 1 << 20
"""Bytes read from the network per step of a download."""

TIMEOUT_S = 60.0
"""Seconds a download waits for the server before giving up."""

Progress = Callable[[int, int | None], None]
"""A download progress callback: bytes received so far, and the total when known."""


@dataclass(frozen=True)
class TraceEntry:
    """One public trace of the registry.

    ``format`` and ``options`` are how the run reads it (a registered trace format and
    its options, as a scenario's ``workload.trace`` would give them). ``size_bytes`` and
    ``sha256`` are ``None`` where no checksum is published (then the first download is
    pinned); ``checksum_source`` says where the figures come from.
    """

    name: str
    title: str
    url: str
    licence: str
    cite: str
    format: str
    checksum_source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    requests: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        """The cached file's name: the entry's name and the URL's extension."""
        suffix = Path(self.url.rsplit("/", 1)[-1]).suffix or ".dat"
        return f"{self.name}{suffix}"

    def reader_spec(self, path: Path) -> dict[str, Any]:
        """The trace mapping that reads the cached file at ``path``."""
        return {"path": str(path), "format": self.format, **dict(self.options)}


@cache
def registry() -> dict[str, TraceEntry]:
    """Every registered trace by name, read once from ``tracereg.yaml``."""
    text = (Path(__file__).with_name("tracereg.yaml")).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)["traces"]
    return {name: TraceEntry(name=name, **fields) for name, fields in raw.items()}


def entry(name: str, where: str = "trace name") -> TraceEntry:
    """The entry called ``name``; an unknown name raises with the names and the nearest."""
    reg = registry()
    if name in reg:
        return reg[name]
    near = nearest(name, list(reg))
    hint = f" Did you mean {near!r}?" if near else ""
    raise TraceError(
        f"{where}: unknown trace {name!r}.{hint} Registered traces: {', '.join(reg)} "
        f"(`xpusim traces list` shows each with its source and licence)."
    )


def cache_dir() -> Path:
    """The folder traces are kept in: ``$XPUSIM_TRACE_CACHE``, else the user cache folder
    (``~/.cache/xpusim/traces`` on Linux, the platform's equivalent elsewhere)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import appdirs

    return Path(appdirs.user_cache_dir("xpusim")) / "traces"


def cached_path(e: TraceEntry) -> Path:
    """Where the verified copy of ``e`` lives (whether or not it is there yet)."""
    return cache_dir() / e.filename


def _pin_path(e: TraceEntry) -> Path:
    return cache_dir() / f"{e.name}.pin.json"


def expected(e: TraceEntry) -> tuple[int | None, str | None]:
    """The size and sha256 a copy of ``e`` must have: the registry's, else the pin of
    its first download, else ``(None, None)`` (not downloaded yet)."""
    if e.sha256 is not None:
        return e.size_bytes, e.sha256
    pin = _pin_path(e)
    if pin.is_file():
        raw = read_limited(pin, "trace pin file", PIN_BYTES, error=TraceError)
        try:
            data = json.loads(raw.decode("utf-8"))
            return int(data["size_bytes"]), str(data["sha256"])
        except (ValueError, TypeError, KeyError, RecursionError):
            raise TraceError(
                f"{pin}: the pin of trace {e.name!r} is damaged (not its size and sha256); "
                f"delete it and the cached copy beside it, then fetch the trace again."
            ) from None
    return e.size_bytes, None


def file_sha256(path: Path) -> tuple[int, str]:
    """The size and sha256 of the file at ``path``."""
    check_regular(path, "cached trace", CACHED_BYTES, error=TraceError)  # never a FIFO
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def status(e: TraceEntry) -> str:
    """``verified``, ``absent``, or ``corrupt`` (a cached copy that fails its check)."""
    path = cached_path(e)
    if not path.is_file():
        return "absent"
    return "verified" if _verify(e, path) is None else "corrupt"


def _verify(e: TraceEntry, path: Path) -> str | None:
    """Why the file at ``path`` is not the trace ``e`` (``None`` when it is)."""
    want_size, want_sha = expected(e)
    size, sha = file_sha256(path)
    if want_size is not None and size != want_size:
        return f"it has {size:,} bytes, the registry expects {want_size:,}"
    if want_sha is not None and sha != want_sha:
        return f"its sha256 is {sha}, the registry expects {want_sha}"
    return None


def fetch(name: str, progress: Progress | None = None, *, force: bool = False) -> Path:
    """Download the trace ``name`` into :func:`cache_dir` and return the verified file.

    An already verified copy is kept (``force`` downloads again). The bytes go to a
    temporary file in the cache folder while their size and sha256 are counted; the file
    replaces the cached copy only when both match the registry (or, for an entry with no
    published checksum, the pin of an earlier download; the first download writes that
    pin). ``progress(received, total)`` is called as bytes arrive.
    """
    e = entry(name)
    path = cached_path(e)
    if not force and path.is_file() and _verify(e, path) is None:
        return path
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TraceError(
            f"cannot create the trace cache folder {folder} ({exc.strerror}); set "
            f"{CACHE_ENV} to a folder you can write."
        ) from None
    want_size, want_sha = expected(e)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{e.name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            size, sha = _download(e, out, progress)
        if want_size is not None and size != want_size:
            raise TraceError(
                f"trace {e.name!r}: the download from {e.url} has {size:,} bytes, the "
                f"registry expects {want_size:,} ({e.checksum_source}); the file was not "
                f"kept. Try `xpusim traces fetch {e.name}` again; if it persists the "
                f"published file has changed."
            )
        if want_sha is not None and sha != want_sha:
            raise TraceError(
                f"trace {e.name!r}: the download from {e.url} has sha256 {sha}, the "
                f"registry expects {want_sha} ({e.checksum_source}); the file was not "
                f"kept. Try `xpusim traces fetch {e.name}` again; if it persists the "
                f"published file has changed."
            )
        os.replace(tmp, path)
        if e.sha256 is None and want_sha is None:
            _pin_path(e).write_text(
                json.dumps({"sha256": sha, "size_bytes": size, "url": e.url}) + "\n",
                encoding="utf-8",
            )
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _download(e: TraceEntry, out: Any, progress: Progress | None) -> tuple[int, str]:
    """Stream ``e.url`` into ``out``; return the byte count and the sha256."""
    h = hashlib.sha256()
    size = 0
    req = urllib.request.Request(e.url, headers={"User-Agent": "xpusim-trace-fetch"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else e.size_bytes
            if progress is not None:
                progress(0, total)
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(size, total)
    except urllib.error.HTTPError as exc:
        raise TraceError(
            f"trace {e.name!r}: {e.url} answered HTTP {exc.code} ({exc.reason}); the "
            f"file may have moved. Download it by hand and point the scenario at it with "
            f"`trace: {{path: FILE, format: {e.format}}}`."
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TraceError(
            f"trace {e.name!r}: cannot download {e.url} ({reason}). Check the network "
            f"(a proxy goes in HTTPS_PROXY), or download the file by hand and point the "
            f"scenario at it with `trace: {{path: FILE, format: {e.format}}}`."
        ) from None
    return size, h.hexdigest()


def local_trace(name: str, where: str = "workload.trace.name") -> dict[str, Any]:
    """The trace mapping (``path``, ``format``, options) of the verified copy of ``name``,
    downloaded first if it is not cached (with a progress line on a terminal). A cached
    copy that fails its check raises: ``xpusim traces fetch NAME --force`` replaces it."""
    e = entry(name, where)
    path = cached_path(e)
    if path.is_file():
        why = _verify(e, path)
        if why is not None:
            raise TraceError(
                f"{where}: the cached trace {path} is not {name!r}: {why}. Download it "
                f"again with `xpusim traces fetch {name} --force`."
            )
        return e.reader_spec(path)
    return e.reader_spec(fetch(name, _stderr_progress(e) if sys.stderr.isatty() else None))


def _stderr_progress(e: TraceEntry) -> Progress:
    """A one-line download progress on standard error."""

    def show(done: int, total: int | None) -> None:
        of = f" of {total / 1e6:.1f} MB" if total else ""
        end = "\n" if total is not None and done >= total else ""
        sys.stderr.write(f"\rdownloading trace {e.name}: {done / 1e6:.1f} MB{of}{end}")
        sys.stderr.flush()

    return show
