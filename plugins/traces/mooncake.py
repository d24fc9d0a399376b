"""The Mooncake trace format: JSON Lines requests that carry their prompt's block hashes.

Mooncake (Qin et al., FAST 2025) publishes its request traces as one JSON object a line::

    {"timestamp": 3000, "input_length": 13544, "output_length": 71, "hash_ids": [0, 219, ...]}

``timestamp`` is in milliseconds, ``input_length`` and ``output_length`` are the prompt and
output tokens, and ``hash_ids`` names each 512-token block of the prompt by the hash of
its whole prefix (two requests whose prompts share their first ``k`` blocks share their
first ``k`` ids), so a prefix cache can be replayed exactly. The prompt's last block may
be partial: a request of ``n`` prompt tokens lists ``ceil(n / 512)`` ids.

The frame is :data:`~xpusim.engine.traces.REQUEST_SCHEMA` plus ``hash_ids``
(a list of integers per request). Options: ``block_tokens`` (512, the tokens each id
covers; a list whose length disagrees with it is refused), ``limit`` and ``time_scale``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from xpusim.engine.errors import TraceError
from xpusim.engine.safeio import read_limited
from xpusim.engine.traces import MAX_TOKENS, REQUEST_SCHEMA, TraceFormat
from xpusim.plugins.traces.readers import MAX_TRACE_BYTES, _check_span

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per hashed block in the published Mooncake traces (FAST25-release README)."""

OPTIONS = {"block_tokens", "limit", "time_scale"}
"""The options this format accepts."""


class MooncakeTrace(TraceFormat):
    """Mooncake's JSON Lines trace with ``hash_ids`` (see the module docstring)."""

    name = "mooncake"
    description = "Mooncake JSON Lines trace (timestamp ms, input/output_length, hash_ids)"

    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read a Mooncake trace into a request frame with a ``hash_ids`` column."""
        path = Path(path)
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise TraceError(
                f"{path}: the mooncake format takes no option {', '.join(unknown)}; it "
                f"accepts {', '.join(sorted(OPTIONS))}."
            )
        block = _whole(path, "block_tokens", options.get("block_tokens", MOONCAKE_BLOCK_TOKENS))
        limit = options.get("limit")
        scale = options.get("time_scale", 1.0)
        if limit is not None:
            limit = _whole(path, "limit", limit)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < 1e300:
            raise TraceError(f"{path}: `time_scale` must be a number > 0, got {scale!r}.")
        data = read_limited(  # a regular file within the trace size limit, or an error
            path,
            "trace",
            MAX_TRACE_BYTES,
            "Replay a part of it (cut the file, or `limit:` after cutting).",
            error=TraceError,
        )
        rows = [ln for ln in data.split(b"\n") if ln.strip()]
        if not rows:
            raise TraceError(
                f"{path}: the trace is empty; a Mooncake trace has one request a line."
            )
        frame = _parse(path, data, len(rows))
        if limit is not None:
            frame = frame.head(limit)
        _check(path, frame, block)
        t = frame["timestamp"].cast(pl.Float64) / 1000.0
        _check_span(path, float(t[-1] - t[0]), float(scale))  # as every request reader does
        return pl.DataFrame(
            {
                "arrival_s": (t - t[0]) / float(scale),
                "prompt_tokens": frame["input_length"].cast(pl.Int64),
                "output_tokens": frame["output_length"].cast(pl.Int64),
                "hash_ids": frame["hash_ids"].cast(pl.List(pl.Int64)),
            },
            schema={**REQUEST_SCHEMA, "hash_ids": pl.List(pl.Int64)},
        )


def _whole(path: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TraceError(f"{path}: `{key}` must be a whole number >= 1, got {value!r}.")
    return value


def _parse(path: Path, data: bytes, n: int) -> pl.DataFrame:
    """The four columns, or an error naming the first line that is not a request."""
    cols = ("timestamp", "input_length", "output_length", "hash_ids")
    try:
        df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        if df.height == n and all(c in df.columns for c in cols):
            return df.select(cols)
    except Exception:
        pass
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise TraceError(
                f"{path}, line {i}: not a JSON object; a Mooncake trace has one request a line."
            ) from None
        missing = [c for c in cols if not isinstance(obj, dict) or c not in obj]
        if missing:
            raise TraceError(
                f"{path}, line {i}: the request lacks {', '.join(missing)}; each line needs "
                f"timestamp, input_length, output_length and hash_ids."
            )
    raise TraceError(
        f"{path}: the lines do not share one layout (a field changes type); each line needs "
        f"timestamp (ms), input_length, output_length (integers) and hash_ids (a list)."
    )


def _check(path: Path, df: pl.DataFrame, block: int) -> None:
    """Refuse non-integer or out-of-range fields, decreasing times and hash lists whose
    length is not ``ceil(input_length / block)``."""
    for c in ("timestamp", "input_length", "output_length"):
        if not df[c].dtype.is_integer():
            raise TraceError(f"{path}: `{c}` must be whole numbers, got {df[c].dtype}.")
    dtype = df["hash_ids"].dtype
    if not (isinstance(dtype, pl.List) and dtype.inner.is_integer()):
        raise TraceError(f"{path}: `hash_ids` must be lists of integers.")
    bad = _first(
        (df["input_length"] < 1)
        | (df["input_length"] > MAX_TOKENS)
        | (df["output_length"] < 1)
        | (df["output_length"] > MAX_TOKENS)
    )
    if bad is not None:
        raise TraceError(
            f"{path}, line {bad + 1}: input_length and output_length must be whole numbers "
            f"from 1 to {MAX_TOKENS:,}."
        )
    back = _first(df["timestamp"].diff().fill_null(0) < 0)
    if back is not None:
        raise TraceError(
            f"{path}, line {back + 1}: the timestamp goes back in time; sort the file by timestamp."
        )
    want = (df["input_length"] + block - 1) // block
    wrong = _first(df["hash_ids"].list.len().cast(pl.Int64) != want)
    if wrong is not None:
        n, k = int(df["input_length"][wrong]), len(df["hash_ids"][wrong])
        raise TraceError(
            f"{path}, line {wrong + 1}: {k} block hashes for a {n}-token prompt, but blocks of "
            f"{block} tokens make {-(-n // block)}. The hashes were made with another block "
            f"size: set the trace's `block_tokens` to it (Mooncake's published traces use "
            f"{MOONCAKE_BLOCK_TOKENS})."
        )


def _first(mask: pl.Series) -> int | None:
    hits = mask.arg_true()
    return int(hits[0]) if len(hits) else None
