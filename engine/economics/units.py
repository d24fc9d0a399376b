"""The work a run completed, in the units that energy and cost are divided by.

Tokens and samples come from the workload's declared output metrics
(``throughput_tokens_per_s`` and ``throughput_samples_per_s`` times ``simulated_s``);
where a metric is absent they are counted from the declared ``requests`` frame: requests
whose ``status`` is :data:`~xpusim.engine.frames.REQUEST_OK` are samples, and their
``output_tokens`` (where the schema has that column) are tokens. Steps are the rows of
the ``steps`` frame, else ``simulated_s / step_time_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import REQUEST_OK, Frame, frame_columns, frame_height


@dataclass(frozen=True)
class WorkUnits:
    """Tokens, samples and steps the run completed (``None`` where not applicable)."""

    tokens: float | None
    samples: float | None
    steps: float | None


def _completed(requests: Frame) -> pl.LazyFrame:
    """The requests whose declared ``status`` is :data:`REQUEST_OK`."""
    if "status" not in frame_columns(requests):
        raise XpusimError(
            "the workload's requests frame has no status column; a requests frame declares "
            f"status ({REQUEST_OK!r} for a completed request)."
        )
    return requests.lazy().filter(pl.col("status") == REQUEST_OK)


def work_units(metrics: Mapping[str, Any], frames: Mapping[str, Frame]) -> WorkUnits:
    """The run's tokens, samples and steps from its metrics and declared frames."""
    span = metrics.get("simulated_s")
    tokens = samples = steps = None
    tps = metrics.get("throughput_tokens_per_s")
    sps = metrics.get("throughput_samples_per_s")
    if tps is not None and span:
        tokens = float(tps) * float(span)
    if sps is not None and span:
        samples = float(sps) * float(span)
    req = frames.get("requests")
    if req is not None and frame_height(req) and (tokens is None or samples is None):
        done = _completed(req)
        if tokens is None and "output_tokens" in frame_columns(req):
            tokens = float(done.select(pl.col("output_tokens").sum()).collect().item())
        if samples is None:
            samples = float(frame_height(done))
    st = frames.get("steps")
    if st is not None and frame_height(st):
        steps = float(frame_height(st))
    elif metrics.get("step_time_s") and span:
        steps = float(span) / float(metrics["step_time_s"])
    return WorkUnits(tokens, samples, steps)
