"""Trace readers: Azure LLM inference trace, generic CSV and JSON Lines, Alibaba GPU jobs.

Every reader returns a frame of :data:`xpusim.engine.traces.REQUEST_SCHEMA` (``arrival_s``,
``prompt_tokens``, ``output_tokens``; arrival seconds relative to the first request) or,
for the Alibaba cluster trace, :data:`xpusim.engine.traces.JOB_SCHEMA`, and raises
:class:`~xpusim.engine.errors.TraceError` naming the file, the line and the fix for anything it
cannot read. A trace is read whole or not at all.

Options (the rest of the scenario's ``trace:`` mapping) shared by every reader:

* ``limit: N`` keeps the first ``N`` requests (after validating the whole file);
* ``time_scale: 2.0`` divides every arrival time by 2 (replays the trace twice as fast).

Ordering rule: timestamps must be non-decreasing. An earlier timestamp after a later one
is an error naming the line (a shuffled or concatenated trace is more often a mistake
than an intent, and silently sorting would hide it). Equal timestamps are legal: they
are requests arriving at the same instant, kept in file order.

Line numbers count the header as line 1, so the first data row is line 2 (CSV) and the
first object is line 1 (JSON Lines); blank lines are skipped but counted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xpusim.engine.errors import TraceError
from xpusim.engine.safeio import read_limited
from xpusim.engine.traces import JOB_SCHEMA, MAX_TOKENS, REQUEST_SCHEMA, TraceFormat

TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
"""Numeric time units a generic trace's arrival column may use (besides ``datetime``)."""

REQUEST_FIELDS = ("arrival", "prompt_tokens", "output_tokens")
"""Logical fields a generic request trace maps onto its own column names (``columns``)."""

_COMMON = {"limit", "time_scale"}

MAX_TRACE_BYTES = 4 * 2**30
"""Largest trace file read (4 GiB): a trace is read whole into memory, and this is about
a hundred million request rows."""

MAX_SPAN_S = 1e9
"""Longest simulated time a trace may span, first arrival to last (about 30 years)."""

MAX_LINE_BYTES = 2**20
"""Longest line a trace may have (1 MiB): a request row is a few dozen bytes, so a longer
line means a wrong or corrupted file, and refusing it keeps error messages short."""


# --- helpers ------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Read ``path`` whole, checking it exists, is non-empty and is UTF-8 text."""
    path = Path(path)
    if not path.exists():
        raise TraceError(
            f"trace file {str(path)!r} does not exist; check `trace.path` (a relative path "
            "is relative to the scenario file)."
        )
    if path.is_dir():
        raise TraceError(f"trace path {str(path)!r} is a folder; point `trace.path` at a file.")
    data = read_limited(
        path,
        "trace file",
        MAX_TRACE_BYTES,
        "Split the trace, or keep the first requests (`head -n`), and point `trace.path` "
        "at that file.",
        TraceError,
    )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceError(
            f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; "
            "save the trace as UTF-8 (for example `iconv -f latin1 -t utf-8`)."
        ) from None
    if not data.strip():
        raise TraceError(f"{path}: the trace is empty; it needs a header and at least one row.")
    _check_line_lengths(path, data)
    return data


def _check_line_lengths(path: Path, data: bytes) -> None:
    """Refuse a line longer than :data:`MAX_LINE_BYTES`, naming it."""
    if len(data) <= MAX_LINE_BYTES:
        return
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    bounds = np.concatenate(([-1], ends, [len(data)]))
    lengths = np.diff(bounds) - 1
    i = int(np.argmax(lengths))
    if lengths[i] > MAX_LINE_BYTES:
        raise TraceError(
            f"{path}: line {i + 1} is {lengths[i] / 2**20:.1f} MiB long; a trace line is at "
            f"most {MAX_LINE_BYTES // 2**20} MiB (a request row is a few dozen bytes). Check "
            "that this is the right file and that it uses newline line ends."
        )


def _short(text: str, limit: int = 40) -> str:
    """``repr`` of a cell, cut to ``limit`` characters for messages."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _check_options(path: Path, fmt: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    """Reject option keys a reader does not understand (a misspelling is an error)."""
    allowed = allowed | _COMMON | {"path", "format"}
    bad = sorted(k for k in options if k not in allowed)
    if bad:
        raise TraceError(
            f"{path}: trace format {fmt!r} has no option(s) {', '.join(map(repr, bad))}; "
            f"valid options: {', '.join(sorted(allowed - {'path', 'format'}))}."
        )


def _data_lines(data: bytes, header: bool) -> list[int]:
    """1-based file line numbers of the non-blank data rows (header excluded)."""
    lines = data.split(b"\n")
    if not any(not ln.strip() for ln in lines[:-1]) and (lines[-1].strip() or len(lines) > 1):
        # fast path: no blank line inside the file
        n = len(lines) if lines[-1].strip() else len(lines) - 1
        start = 2 if header else 1
        return list(range(start, n + 1))
    nums = [i + 1 for i, ln in enumerate(lines) if ln.strip()]
    return nums[1:] if header else nums


def _at(lines: Sequence[int], i: int) -> str:
    """Where data row ``i`` (0-based) is: its file line, or its row number where the line
    count could not be matched to the parsed rows (stray carriage returns, say)."""
    return f"line {lines[i]}" if 0 <= i < len(lines) else f"data row {i + 1}"


def _csv_lines(data: bytes, separator: str = ",") -> list[int]:
    """1-based file line numbers where each CSV data row starts (header excluded).

    A quoted cell may hold line breaks, so a row can span several lines; rows are then
    found by parsing the quotes, and every later row keeps its true line number.
    """
    if b'"' not in data:
        return _data_lines(data, header=True)
    text = data.decode("utf-8")
    raw = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator[:1])
    starts: list[int] = []
    end = 0
    try:
        for _row in reader:
            start, end = end + 1, reader.line_num
            # a row is skipped only where its text is blank, as the reader drops such lines
            # before polars parses; a row of quoted empty cells ('""') is a row
            if start != end or start > len(raw) or raw[start - 1].strip():
                starts.append(start)
    except csv.Error:
        return _data_lines(data, header=True)  # polars' own parse reports the problem
    return starts[1:]


def _read_csv_strings(path: Path, data: bytes, separator: str = ",") -> pl.DataFrame:
    """Parse CSV bytes into an all-string frame (blank lines skipped)."""
    rows = data.split(b"\n")
    if any(not ln.strip() for ln in rows[:-1]) or (rows[-1] and not rows[-1].strip()):
        # polars reads a blank line as a row of nulls; drop them so that frame rows and
        # the line numbers of :func:`_data_lines` (which skips them) stay aligned
        data = b"\n".join(ln for ln in rows if ln.strip())
    try:
        return pl.read_csv(
            io.BytesIO(data), infer_schema=False, separator=separator, truncate_ragged_lines=False
        )
    except Exception as exc:  # polars raises ComputeError/NoDataError with its own text
        raise TraceError(
            f"{path}: cannot parse as CSV ({str(exc).splitlines()[0]}); check the separator "
            "and that every row has the header's number of fields."
        ) from None


def _fixed_layout(
    path: Path,
    fmt: str,
    options: Mapping[str, Any],
    columns: Sequence[str],
    row: str,
    how: str,
) -> tuple[bytes, pl.DataFrame]:
    """Read a CSV trace of a fixed published layout (no options) as strings, checking it
    has ``columns`` (``how`` explains the layout) and at least one ``row``."""
    _check_options(path, fmt, options, set())
    data = _read_bytes(path)
    df = _read_csv_strings(path, data)
    _require_columns(path, df, columns, how)
    if df.height == 0:
        raise TraceError(f"{path}: the trace has a header but no rows; add at least one {row}.")
    return data, df


def _require_columns(path: Path, df: pl.DataFrame, wanted: Sequence[str], how: str) -> None:
    missing = [c for c in wanted if c not in df.columns]
    if len(missing) == len(set(wanted)):
        # none matches: the first line is not a trace header (it is not echoed, since the
        # file may be anything, a key file included)
        raise TraceError(
            f"{path}: missing column(s) {', '.join(map(repr, wanted))}: none of them is in "
            f"the file's first line, so this does not look like a trace of this format (its "
            f"{len(df.columns)} header field(s) are not shown). Check `trace.path`. {how}"
        )
    if missing:
        raise TraceError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(map(repr, df.columns))}. {how}"
        )


def _numeric(
    path: Path,
    s: pl.Series,
    lines: Sequence[int],
    what: str,
    *,
    integer: bool,
    minimum: float,
    maximum: float = np.inf,
) -> np.ndarray:
    """Convert a string (or numeric) column to finite numbers within ``[minimum, maximum]``,
    naming the first bad line."""
    if s.dtype == pl.String:
        stripped = s.str.strip_chars()
        vals = stripped.cast(pl.Float64, strict=False)
    else:
        stripped = s.cast(pl.String)
        vals = s.cast(pl.Float64, strict=False)
    arr = vals.to_numpy()
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raw = stripped[i]
        if raw is None or raw == "":
            msg = f"{what} is missing"
        elif np.isnan(arr[i]) and raw.lower() not in ("nan", "+nan", "-nan"):
            msg = f"{what} {_short(raw)} is not a number"
        else:
            msg = f"{what} is {_short(raw)}, not a finite number"
        raise TraceError(f"{path}: {_at(lines, i)}: {msg}; fix or remove that row.")
    below = np.flatnonzero(arr < minimum)
    if below.size:
        i = int(below[0])
        raise TraceError(
            f"{path}: {_at(lines, i)}: {what} is {_short(stripped[i])}, but it must be at least "
            f"{minimum:g}; fix or remove that row."
        )
    above = np.flatnonzero(arr > maximum)
    if above.size:
        i = int(above[0])
        raise TraceError(
            f"{path}: {_at(lines, i)}: {what} is {_short(stripped[i])}, but it must be at most "
            f"{maximum:,.0f}; fix or remove that row."
        )
    if integer:
        frac = np.flatnonzero(arr != np.floor(arr))
        if frac.size:
            i = int(frac[0])
            raise TraceError(
                f"{path}: {_at(lines, i)}: {what} is {_short(stripped[i])}, not a whole number of "
                "tokens; fix or remove that row."
            )
    return arr


def _check_sorted(path: Path, t: np.ndarray, lines: Sequence[int], what: str) -> None:
    """Timestamps must not go backwards (equal ones are simultaneous arrivals)."""
    if t.size > 1:
        back = np.flatnonzero(np.diff(t) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise TraceError(
                f"{path}: {_at(lines, i)}: {what} goes backwards (earlier than "
                f"{_at(lines, i - 1)}); a trace must be sorted by time (equal times are allowed). "
                "Sort the file by its time column."
            )


def _finish_requests(
    path: Path,
    t: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    options: Mapping[str, Any],
) -> pl.DataFrame:
    """Apply ``limit`` and ``time_scale`` and build the :data:`REQUEST_SCHEMA` frame."""
    if t.size == 0:
        raise TraceError(f"{path}: the trace has a header but no rows; add at least one request.")
    t = t - t[0]
    limit = _limit(path, options)
    scale = _time_scale(path, options)
    if limit is not None:
        t, prompt, output = t[:limit], prompt[:limit], output[:limit]
    _check_span(path, float(t[-1]), scale)
    return pl.DataFrame(
        {
            "arrival_s": t / scale,
            "prompt_tokens": prompt.astype(np.int64),
            "output_tokens": output.astype(np.int64),
        },
        schema=REQUEST_SCHEMA,
    )


def _check_span(path: Path, last_s: float, scale: float) -> None:
    """Refuse a replay whose last event, at ``last_s`` in the file's time, falls later
    than :data:`MAX_SPAN_S` of simulated time once divided by ``time_scale``."""
    span_s = last_s / scale  # Python floats: an overflow is inf, without a warning
    if not span_s <= MAX_SPAN_S:
        by = f" after time_scale {scale:g}" if scale != 1.0 else ""
        raise TraceError(
            f"{path}: the trace spans {span_s:.3g} s of simulated time{by}, more than "
            f"{MAX_SPAN_S:.0e} s (about 30 years); check the time column's unit "
            f"(`time_unit`) and `time_scale`."
        )


def _limit(path: Path, options: Mapping[str, Any]) -> int | None:
    limit = options.get("limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TraceError(f"{path}: `limit` must be a whole number >= 1, got {limit!r}.")
    return limit


def _time_scale(path: Path, options: Mapping[str, Any]) -> float:
    scale = options.get("time_scale", 1.0)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not scale > 0
        or (scale == float("inf"))
    ):
        raise TraceError(
            f"{path}: `time_scale` must be a positive number (2.0 replays twice as fast), "
            f"got {scale!r}."
        )
    return float(scale)


def _arrival_seconds(
    path: Path,
    s: pl.Series,
    lines: Sequence[int],
    column: str,
    time_unit: str,
    time_format: str | None,
) -> np.ndarray:
    """Turn an arrival column into seconds (numeric with a unit, or datetimes)."""
    if time_unit == "datetime":
        if s.dtype != pl.String:
            s = s.cast(pl.String)
        raw = s.str.strip_chars()
        try:
            if time_format:
                dt = raw.str.to_datetime(time_format, time_unit="ns", strict=False)
            else:
                dt = raw.str.to_datetime(time_unit="ns", strict=False)
        except Exception:
            dt = pl.Series([None] * len(raw), dtype=pl.Datetime("ns"))
        nulls = np.flatnonzero(dt.is_null().to_numpy())
        if nulls.size:
            i = int(nulls[0])
            hint = (
                f"the format {time_format!r}"
                if time_format
                else "an ISO date-time like '2023-11-16 18:15:46.68' (or set `time_format`)"
            )
            raise TraceError(
                f"{path}: {_at(lines, i)}: {column} {_short(raw[i])} is not a date-time matching "
                f"{hint}; fix that row."
            )
        ns = dt.dt.replace_time_zone(None).cast(pl.Int64).to_numpy()
        t = (ns - ns[0]).astype(np.float64) * 1e-9
        _check_sorted(path, t, lines, column)
        return t
    if time_unit not in TIME_UNITS:
        raise TraceError(
            f"{path}: `time_unit` {time_unit!r} is not known; use one of "
            f"{', '.join([*TIME_UNITS, 'datetime'])}."
        )
    t = _numeric(path, s, lines, column, integer=False, minimum=-np.inf) * TIME_UNITS[time_unit]
    _check_sorted(path, t, lines, column)
    return t


def _mapping(path: Path, options: Mapping[str, Any]) -> dict[str, str]:
    raw = options.get("columns") or {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in raw.values()
    ):
        raise TraceError(
            f"{path}: `columns` must map {', '.join(REQUEST_FIELDS)} to the file's column "
            f"names, for example columns: {{arrival: ts, prompt_tokens: in, output_tokens: "
            f"out}}; got {_short(str(raw))}."
        )
    cols = dict(raw)
    bad = sorted(str(k) for k in cols if k not in REQUEST_FIELDS)
    if bad:
        raise TraceError(
            f"{path}: `columns` has unknown key(s) {', '.join(map(repr, bad))}; it maps "
            f"{', '.join(REQUEST_FIELDS)} to the file's column names."
        )
    out = {f: str(cols.get(f, "arrival_s" if f == "arrival" else f)) for f in REQUEST_FIELDS}
    return out


def _generic_requests(
    path: Path, df: pl.DataFrame, lines: Sequence[int], options: Mapping[str, Any]
) -> pl.DataFrame:
    cols = _mapping(path, options)
    _require_columns(
        path,
        df,
        list(cols.values()),
        "Map them with `columns: {arrival: ..., prompt_tokens: ..., output_tokens: ...}`.",
    )
    if df.height == 0:
        raise TraceError(f"{path}: the trace has no rows; add at least one request.")
    t = _arrival_seconds(
        path,
        df[cols["arrival"]],
        lines,
        cols["arrival"],
        str(options.get("time_unit", "s")),
        options.get("time_format"),
    )
    prompt = _numeric(
        path,
        df[cols["prompt_tokens"]],
        lines,
        cols["prompt_tokens"],
        integer=True,
        minimum=1,
        maximum=MAX_TOKENS,
    )
    output = _numeric(
        path,
        df[cols["output_tokens"]],
        lines,
        cols["output_tokens"],
        integer=True,
        minimum=1,
        maximum=MAX_TOKENS,
    )
    return _finish_requests(path, t, prompt, output, options)


# --- formats ------------------------------------------------------------------------


class AzureLLMTrace(TraceFormat):
    """The Azure LLM inference trace 2023 (Splitwise): ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    Timestamps are ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits, no zone); the
    file uses CRLF line ends and has no final newline. ``ContextTokens`` is the prompt,
    ``GeneratedTokens`` the output.
    """

    name = "azure-llm"
    description = "Azure LLM inference trace 2023 (TIMESTAMP, ContextTokens, GeneratedTokens)"
    columns = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read an Azure LLM trace file into a :data:`REQUEST_SCHEMA` frame."""
        path = Path(path)
        data, df = _fixed_layout(
            path,
            self.name,
            options,
            self.columns,
            "request",
            "An Azure LLM trace has the header TIMESTAMP,ContextTokens,GeneratedTokens; "
            "for another layout use `format: csv` with `columns`.",
        )
        lines = _csv_lines(data)
        t = _arrival_seconds(
            path, df["TIMESTAMP"], lines, "TIMESTAMP", "datetime", "%Y-%m-%d %H:%M:%S%.f"
        )
        prompt = _numeric(
            path,
            df["ContextTokens"],
            lines,
            "ContextTokens",
            integer=True,
            minimum=1,
            maximum=MAX_TOKENS,
        )
        output = _numeric(
            path,
            df["GeneratedTokens"],
            lines,
            "GeneratedTokens",
            integer=True,
            minimum=1,
            maximum=MAX_TOKENS,
        )
        return _finish_requests(path, t, prompt, output, options)


class CsvTrace(TraceFormat):
    """A generic CSV request trace.

    Options: ``columns`` maps ``arrival``, ``prompt_tokens``, ``output_tokens`` to the
    file's headers (defaults ``arrival_s``, ``prompt_tokens``, ``output_tokens``);
    ``time_unit`` is ``s`` (default), ``ms``, ``us``, ``ns`` or ``datetime`` (then an
    optional ``time_format`` in chrono/strftime syntax); ``separator`` (default ``,``).
    """

    name = "csv"
    description = "generic CSV request trace with a `columns` mapping and `time_unit`"

    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read a CSV request trace into a :data:`REQUEST_SCHEMA` frame."""
        path = Path(path)
        _check_options(
            path, self.name, options, {"columns", "time_unit", "time_format", "separator"}
        )
        data = _read_bytes(path)
        df = _read_csv_strings(path, data, str(options.get("separator", ",")))
        lines = _csv_lines(data, str(options.get("separator", ",")))
        return _generic_requests(path, df, lines, options)


class JsonlTrace(TraceFormat):
    """A JSON Lines request trace: one object per line.

    Options as for :class:`CsvTrace` (``columns``, ``time_unit``, ``time_format``).
    """

    name = "jsonl"
    description = "JSON Lines request trace with a `columns` mapping and `time_unit`"

    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read a JSON Lines request trace into a :data:`REQUEST_SCHEMA` frame."""
        path = Path(path)
        _check_options(path, self.name, options, {"columns", "time_unit", "time_format"})
        data = _read_bytes(path)
        lines = _data_lines(data, header=False)
        body = b"\n".join(ln for ln in data.split(b"\n") if ln.strip())
        cols = _mapping(path, options)
        try:
            df = pl.read_ndjson(io.BytesIO(body), infer_schema_length=None)
        except Exception:
            df = None
        if df is None or df.height != len(lines):
            self._locate_error(path, data)
            raise TraceError(f"{path}: cannot parse as JSON Lines; one JSON object per line.")
        _require_columns(
            path,
            df,
            list(cols.values()),
            "Map them with `columns: {arrival: ..., prompt_tokens: ..., output_tokens: ...}`.",
        )
        for col in dict.fromkeys(cols.values()):
            if df[col].dtype.is_nested() or df[col].dtype == pl.Object:
                self._locate_nested(path, data, col)
        # keys with mixed types (1 and "1") come back as strings: _numeric handles both
        return _generic_requests(path, df, lines, options)

    @staticmethod
    def _locate_nested(path: Path, data: bytes, column: str) -> None:
        """Raise for the first line whose ``column`` holds an object or a list."""
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if raw.strip():
                value = json.loads(raw.decode("utf-8")).get(column)
                if isinstance(value, dict | list):
                    kind = "an object" if isinstance(value, dict) else "a list"
                    raise TraceError(
                        f"{path}: line {n}: {column} is {kind}, not a number; each value of "
                        f"a request is a single number or date-time."
                    )
        raise TraceError(f"{path}: {column} holds objects or lists, not numbers.")

    @staticmethod
    def _locate_error(path: Path, data: bytes) -> None:
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))  # the file was checked to be UTF-8
            except json.JSONDecodeError as exc:
                raise TraceError(
                    f"{path}: line {n}: not valid JSON ({exc.msg}); each line must be one "
                    "JSON object."
                ) from None
            except RecursionError:
                raise TraceError(
                    f"{path}: line {n}: JSON nested too deeply; each line must be one flat "
                    "JSON object."
                ) from None
            if not isinstance(obj, dict):
                raise TraceError(
                    f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}."
                )
            nested = next((k for k, v in obj.items() if isinstance(v, dict | list)), None)
            if nested is not None:
                raise TraceError(
                    f"{path}: line {n}: {_short(str(nested))} holds an object or a list; each "
                    f"value of a request is a single number or date-time."
                )


class AlibabaGpuTrace(TraceFormat):
    """The Alibaba cluster-trace-gpu-v2023 task list (``openb_pod_list_*.csv``) as jobs.

    ``submit_s`` is ``creation_time`` relative to the first task, ``duration_s`` is
    ``deletion_time - creation_time`` and ``devices`` is ``num_gpu``, or ``gpu_milli/1000``
    for a GPU-sharing task (``num_gpu`` 1 with ``gpu_milli`` below 1000). CPU-only tasks
    (``num_gpu`` 0) are kept with 0 devices.
    """

    name = "alibaba-gpu"
    description = "Alibaba cluster-trace-gpu-v2023 pod list as GPU jobs"
    columns = ("creation_time", "deletion_time", "num_gpu", "gpu_milli")

    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read the pod list into a :data:`JOB_SCHEMA` frame."""
        path = Path(path)
        data, df = _fixed_layout(
            path,
            self.name,
            options,
            self.columns,
            "task",
            "An Alibaba GPU v2023 pod list has creation_time, deletion_time, num_gpu and "
            "gpu_milli columns.",
        )
        lines = _csv_lines(data)
        created = _numeric(
            path, df["creation_time"], lines, "creation_time", integer=False, minimum=0
        )
        _check_sorted(path, created, lines, "creation_time")
        deleted = _numeric(
            path, df["deletion_time"], lines, "deletion_time", integer=False, minimum=0
        )
        gpus = _numeric(path, df["num_gpu"], lines, "num_gpu", integer=True, minimum=0)
        milli_raw = df["gpu_milli"].str.strip_chars().replace("", "0").fill_null("0")
        milli = _numeric(path, milli_raw, lines, "gpu_milli", integer=False, minimum=0)
        dur = deleted - created
        neg = np.flatnonzero(dur < 0)
        if neg.size:
            i = int(neg[0])
            raise TraceError(
                f"{path}: {_at(lines, i)}: deletion_time is before creation_time; fix that row."
            )
        shared = (gpus == 1) & (milli > 0) & (milli < 1000)
        devices = np.where(shared, milli / 1000.0, gpus)
        submit = created - created[0]
        limit = _limit(path, options)
        scale = _time_scale(path, options)
        if limit is not None:
            submit, dur, devices = submit[:limit], dur[:limit], devices[:limit]
        _check_span(path, float(np.max(submit + dur)) if submit.size else 0.0, scale)
        return pl.DataFrame(
            {"submit_s": submit / scale, "duration_s": dur, "devices": devices},
            schema=JOB_SCHEMA,
        )


TRACE_FORMATS: list[type[TraceFormat]] = [AzureLLMTrace, CsvTrace, JsonlTrace, AlibabaGpuTrace]
"""Built-in trace formats, registered by :mod:`xpusim.plugins.traces`."""
