"""How much of a run's event rows the run folder keeps: the ``results.detail`` setting.

A scenario's optional ``results:`` block holds one key, ``detail``:

* ``summary`` — ``summary.json`` and ``summary.parquet`` (and the reports), no event
  frames;
* ``requests`` (the default) — also ``requests.parquet`` and ``devices.parquet``; a run
  whose systems give no ``requests`` frame (training) keeps ``steps.parquet`` instead,
  its steps being its units of work;
* ``steps`` — every event frame, ``steps.parquet`` (one row per iteration) included.

The simulation, the metrics and the reports are the same at every level: the level only
decides which frames are written as Parquet files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Detail = Literal["summary", "requests", "steps"]
"""A detail level (see the module docstring)."""

DETAIL_LEVELS: tuple[Detail, ...] = ("summary", "requests", "steps")
"""The detail levels, least to most."""

DEFAULT_DETAIL: Detail = "requests"
"""The level a scenario without a ``results:`` block gets."""


class ResultsConfig(BaseModel):
    """The ``results:`` block of a scenario: which event frames the run folder keeps."""

    model_config = ConfigDict(extra="forbid")

    detail: Detail = DEFAULT_DETAIL


def frames_at(detail: Detail, available: set[str]) -> tuple[str, ...]:
    """The event frames written at ``detail`` when the run has the frames ``available``
    (in the order ``requests``, ``steps``, ``devices``)."""
    if detail == "summary":
        keep: set[str] = set()
    elif detail == "requests":
        keep = {"requests", "devices"} if "requests" in available else {"steps", "devices"}
    else:
        keep = {"requests", "steps", "devices"}
    return tuple(n for n in ("requests", "steps", "devices") if n in keep and n in available)
