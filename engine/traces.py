"""Trace formats: readers that turn a trace file into request arrivals or jobs.

A reader is registered through ``register_trace_formats``. It returns a polars frame with
the schema :data:`REQUEST_SCHEMA` (requests of an inference trace) sorted by arrival, with
arrival times relative to the first request. Readers raise
:class:`~xpusim.engine.errors.TraceError` naming the file, the line and the fix for a malformed
row; they never return a partly read trace.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

REQUEST_SCHEMA: dict[str, type[pl.DataType]] = {
    "arrival_s": pl.Float64,
    "prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64,
}
"""Columns of a request trace: arrival time in seconds from the first request, prompt
length and output length in tokens."""

MAX_TOKENS = 100_000_000
"""Largest token length a request may carry, read from a trace or drawn from a length
distribution (draws are clipped to it), so a heavy-tailed law or a corrupt row never
overflows the integer columns."""

JOB_SCHEMA: dict[str, type[pl.DataType]] = {
    "submit_s": pl.Float64,
    "duration_s": pl.Float64,
    "devices": pl.Float64,
}
"""Columns of a cluster job trace: submit time, run time, devices asked for (fractional
for shared devices)."""


class TraceFormat(ABC):
    """A trace file format.

    Contract: ``name`` is the key used in a scenario's ``trace.format``; :meth:`read`
    takes the resolved path and the rest of the scenario's trace mapping (``columns``,
    ``time_unit`` ...) and returns a frame of :data:`REQUEST_SCHEMA` or
    :data:`JOB_SCHEMA`, or raises :class:`~xpusim.engine.errors.TraceError`.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"

    @abstractmethod
    def read(self, path: Path, options: Mapping[str, Any]) -> pl.DataFrame:
        """Read ``path`` into a request or job frame."""
        raise NotImplementedError(self)
