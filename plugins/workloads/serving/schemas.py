"""The declared schemas of the serving frames (``offline`` decoder runs give the same).

``requests`` (:data:`REQUESTS_SCHEMA`) — one row per request. ``status`` is ``ok``
(:data:`xpusim.engine.frames.REQUEST_OK`: the request completed, and economics counts it
and its ``output_tokens``) or ``dropped`` (``reason`` says why; ``replica`` and the times
are null). ``ttft_s`` is
``first_token_s - arrival_s``; ``e2e_s`` is ``finish_s - arrival_s``; ``tbt_mean_s`` and
``tbt_max_s`` are the mean and largest gap between consecutive output tokens of that
request (null for a one-token output).

``steps`` (:data:`STEPS_SCHEMA`) — one row per iteration of a replica: sequences in the
batch, prompt tokens prefilled, decode tokens produced, KV blocks held after the step,
the busy power state (``Cost.state``) and the backend's joules for the step.

``devices`` — the power-state timeline of every device,
:data:`xpusim.engine.frames.DEVICES_SCHEMA`.

``tbt`` (:data:`TBT_SCHEMA`) — the exact multiset of time-between-token gaps: one row
per distinct gap value with the number of tokens that waited that long.
"""

from __future__ import annotations

import polars as pl

REQUESTS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "request_id": pl.Int64(),
    "arrival_s": pl.Float64(),
    "first_scheduled_s": pl.Float64(),
    "first_token_s": pl.Float64(),
    "finish_s": pl.Float64(),
    "prompt_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "preemptions": pl.Int32(),
    "status": pl.String(),
    "reason": pl.String(),
    "ttft_s": pl.Float64(),
    "e2e_s": pl.Float64(),
    "tbt_mean_s": pl.Float64(),
    "tbt_max_s": pl.Float64(),
}
"""Columns of the ``requests`` frame."""

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "replica": pl.Int32(),
    "step": pl.Int64(),
    "start_s": pl.Float64(),
    "end_s": pl.Float64(),
    "batch": pl.Int32(),
    "prefill_tokens": pl.Int64(),
    "decode_tokens": pl.Int64(),
    "kv_blocks_used": pl.Int64(),
    "state": pl.String(),
    "joules": pl.Float64(),
}
"""Columns of the ``steps`` frame."""

TBT_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String(),
    "gap_s": pl.Float64(),
    "tokens": pl.Int64(),
}
"""Columns of the ``tbt`` frame (a weighted, exact sample of token gaps)."""


def tbt_mean() -> pl.Expr:
    """``tbt_mean_s`` of a ``requests`` frame derived from its ``first_token_s``,
    ``finish_s`` and ``output_tokens`` (null for a one-token output): what a technique
    that changes the output lengths, or joins two worlds' rows, recomputes."""
    return (
        pl.when(pl.col("output_tokens") > 1)
        .then((pl.col("finish_s") - pl.col("first_token_s")) / (pl.col("output_tokens") - 1))
        .otherwise(None)
        .alias("tbt_mean_s")
    )
