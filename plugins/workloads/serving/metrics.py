"""Summary metrics from a run's frames: latency percentiles, throughput, SLOs, goodput.

Everything here reads frames only (``requests``, ``steps``, ``devices``, ``tbt``; see
:mod:`xpusim.engine.frames`), so a run folder's Parquet files give the same numbers.

Percentiles use the inverted-CDF definition (numpy's ``method="inverted_cdf"``): the
p-quantile is the smallest observed value whose cumulative share reaches ``p``. It never
interpolates between observations, so a weighted sample (the ``tbt`` frame: each gap
with the number of tokens that waited that long) gives exactly the percentile of the
expanded per-token list.

Latency definitions (those of vLLM's ``benchmark_serving`` and MLPerf LoadGen):

* TTFT — ``first_token_s - arrival_s`` of each finished request;
* TPOT (time per output token) — one value per request, ``(e2e - ttft) / (output - 1)``
  (the ``tbt_mean_s`` column); requests of one output token have none;
* ITL (inter-token latency) — every gap between consecutive tokens, each token one
  sample (the ``tbt`` frame); ``tbt_p50_s``/``tbt_p99_s`` are its median and 99th
  percentile and ``itl_*`` its mean and 90th percentile;
* E2E — ``finish_s - arrival_s``.

A per-token p99 ITL and a per-request p99 TPOT are different figures: one long stall
moves the first for many tokens and the second for one request.

SLO attainment: a request meets the SLOs when it finished (``status == "ok"``), its TTFT
is at most ``ttft``, its TPOT at most ``tpot`` (one-token outputs pass) and its largest
token gap at most ``itl_max``; only the SLOs given are checked. Dropped requests count as
misses. Goodput is the rate of SLO-meeting requests (and of their output tokens) over the
simulated span. ``slo_p99_met`` is MLPerf's server verdict: the run's p99 TTFT and p99
TPOT are within the bounds given.

Frames may be in memory (``pl.DataFrame``) or lazy over spilled Parquet parts
(``pl.LazyFrame``, see :mod:`xpusim.engine.frames`): every figure is a polars query over the
frame and only aggregates are collected, so the numbers are exact either way
(percentiles sort the column in polars and pick the inverted-CDF rank).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from xpusim.engine.frames import IDLE, Frame, frame_columns, ordered_sum
from xpusim.engine.metrics import (
    E2E_P50_S,
    E2E_P99_S,
    STEP_TIME_S,
    THROUGHPUT_TOKENS_PER_S,
    Metric,
    detail,
)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    """Inverted-CDF ``q``-quantile of ``values`` each repeated ``weights`` times."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    if v.size == 0:
        return None
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    target = q * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))
    return float(v[min(i, v.size - 1)])


def quantile(values: np.ndarray, q: float) -> float | None:
    """Inverted-CDF ``q``-quantile of ``values`` (``None`` when empty)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    return float(np.percentile(v, q * 100, method="inverted_cdf"))


def inverted_cdf_rank(n: int, q: float) -> int:
    """The 0-based rank in ``n`` sorted values of their inverted-CDF ``q``-quantile, with
    numpy's arithmetic (``np.percentile(..., q * 100, method="inverted_cdf")``)."""
    index = n * ((q * 100) / 100) - 1
    prev = math.floor(index)
    rank = prev if index - prev == 0 else prev + 1
    return min(max(rank, 0), n - 1)


def column_quantiles(frame: Frame, column: str, qs: tuple[float, ...]) -> list[float | None]:
    """Inverted-CDF quantiles ``qs`` of ``column`` (nulls and NaNs left out), exactly as
    :func:`quantile` gives them, computed by polars on a DataFrame or a LazyFrame."""
    vals = pl.col(column).drop_nulls()
    vals = vals.filter(~vals.is_nan())
    n = int(frame.lazy().select(vals.len()).collect().item())
    if n == 0:
        return [None for _ in qs]
    ranks = [inverted_cdf_rank(n, q) for q in qs]
    got = frame.lazy().select(vals.sort().gather(ranks)).collect().to_series()
    return [float(v) for v in got]


def _empty(frame: Frame | None) -> bool:
    return (
        frame is None
        or not frame_columns(frame)
        or (isinstance(frame, pl.DataFrame) and frame.height == 0)
    )


def device_seconds(devices: Frame | None) -> dict[str, float]:
    """Device-seconds by state from a ``devices`` frame (``idle`` included)."""
    if devices is None or _empty(devices):
        return {}
    names = devices.lazy().select(pl.col("state").unique()).collect()["state"]
    dur = pl.col("end_s") - pl.col("start_s")
    return {
        str(k): ordered_sum(devices, dur, pl.col("state") == k)
        for k in sorted(names.drop_nulls().to_list())
    }


def _utilization(devices: Frame | None, simulated_s: float) -> tuple[float | None, dict]:
    states = device_seconds(devices)
    busy = sum(v for k, v in states.items() if k != IDLE)
    lanes = (
        0
        if devices is None or _empty(devices)
        else int(devices.lazy().select(pl.struct("replica", "device").n_unique()).collect().item())
    )
    util = busy / (lanes * simulated_s) if lanes and simulated_s > 0 else None
    return util, states


def serving_metrics(
    frames: Mapping[str, Frame],
    simulated_s: float,
    *,
    ttft_slo_s: float | None = None,
    tbt_slo_s: float | None = None,
    itl_max_slo_s: float | None = None,
) -> dict[str, Any]:
    """Summary keys of one serving system from its frames.

    Keys: ``requests``, ``requests_ok``, ``requests_dropped``, ``output_tokens``,
    ``throughput_tokens_per_s`` (output tokens of finished requests / ``simulated_s``),
    ``throughput_requests_per_s``, ``ttft_p50_s``, ``ttft_p99_s``, ``tbt_p50_s``,
    ``tbt_p99_s``, ``e2e_p50_s``, ``e2e_p99_s``, the means and 90th percentiles
    (``ttft_mean_s``, ``ttft_p90_s``, ``tpot_*``, ``itl_mean_s``, ``itl_p90_s``,
    ``e2e_mean_s``, ``e2e_p90_s``), ``total_throughput_tokens_per_s`` (prompt plus output
    tokens of finished requests / ``simulated_s``), ``mean_in_flight`` (finished requests'
    summed end-to-end latency / ``simulated_s``: the requests in flight, time-averaged),
    ``slo_attainment``, ``slo_p99_met``,
    ``goodput_requests_per_s``, ``goodput_tokens_per_s``, ``preemptions``,
    ``mean_batch`` (sequences per iteration, averaged over iterations), ``iterations``,
    ``utilization`` (busy device-time / (devices x simulated_s)), ``busy_s`` and
    ``idle_s`` (device-seconds), ``state_s`` (device-seconds by state) and
    ``simulated_s``. A value that does not apply is ``None``.
    """
    req = frames["requests"].lazy()
    steps = frames.get("steps")
    devices = frames.get("devices")
    tbt = frames.get("tbt")
    is_ok = pl.col("status") == "ok"
    span = float(simulated_s)
    counts = (
        req.select(
            pl.len().alias("n"),
            is_ok.sum().alias("ok"),
            pl.col("output_tokens").filter(is_ok).sum().alias("out"),
            pl.col("prompt_tokens").filter(is_ok).sum().alias("inp"),
            pl.col("preemptions").sum().alias("pre"),
            pl.col("e2e_s").filter(is_ok).sum().alias("e2e"),
        )
        .collect()
        .row(0, named=True)
    )
    n_req, n_ok = int(counts["n"]), int(counts["ok"] or 0)
    out_tokens = int(counts["out"] or 0)
    m: dict[str, Any] = {
        "requests": n_req,
        "requests_ok": n_ok,
        "requests_dropped": n_req - n_ok,
        "output_tokens": out_tokens,
        "simulated_s": span,
        "throughput_tokens_per_s": out_tokens / span if span > 0 else None,
        "throughput_requests_per_s": n_ok / span if span > 0 else None,
        "total_throughput_tokens_per_s": (
            (out_tokens + int(counts["inp"] or 0)) / span if span > 0 else None
        ),
        # Little's law: the time-average of requests in flight is their summed latency
        # over the span (SGLang's bench_serving prints it as "Concurrency")
        "mean_in_flight": float(counts["e2e"] or 0.0) / span if span > 0 else None,
    }
    ok = req.filter(is_ok)
    for name, col in (("ttft", "ttft_s"), ("e2e", "e2e_s"), ("tpot", "tbt_mean_s")):
        p50, p90, p99 = column_quantiles(ok, col, (0.50, 0.90, 0.99))
        m[f"{name}_p50_s"], m[f"{name}_p90_s"], m[f"{name}_p99_s"] = p50, p90, p99
        m[f"{name}_mean_s"] = column_mean(ok, col)
    tbt_df = None if tbt is None else tbt.lazy().select("gap_s", "tokens").collect()
    if tbt_df is not None and tbt_df.height:
        gaps, w = tbt_df["gap_s"].to_numpy(), tbt_df["tokens"].to_numpy()
        m["tbt_p50_s"] = weighted_quantile(gaps, w, 0.50)
        m["itl_p90_s"] = weighted_quantile(gaps, w, 0.90)
        m["tbt_p99_s"] = weighted_quantile(gaps, w, 0.99)
        m["itl_mean_s"] = float(np.sum(gaps * w) / np.sum(w)) if np.sum(w) > 0 else None
    else:
        m["tbt_p50_s"] = m["tbt_p99_s"] = m["itl_p90_s"] = m["itl_mean_s"] = None
    m["slo_p99_met"] = _p99_verdict(m, ttft_slo_s, tbt_slo_s)
    if ttft_slo_s is None and tbt_slo_s is None and itl_max_slo_s is None:
        m["slo_attainment"] = None
        m["goodput_requests_per_s"] = None
        m["goodput_tokens_per_s"] = None
    else:
        cond = pl.lit(True)
        if ttft_slo_s is not None:
            cond = cond & (pl.col("ttft_s") <= ttft_slo_s)
        if tbt_slo_s is not None:
            cond = cond & (pl.col("tbt_mean_s").is_null() | (pl.col("tbt_mean_s") <= tbt_slo_s))
        if itl_max_slo_s is not None:
            cond = cond & (pl.col("tbt_max_s").is_null() | (pl.col("tbt_max_s") <= itl_max_slo_s))
        good = (
            ok.filter(cond)
            .select(pl.len().alias("n"), pl.col("output_tokens").sum().alias("tokens"))
            .collect()
            .row(0, named=True)
        )
        n_good = int(good["n"])
        m["slo_attainment"] = n_good / n_req if n_req else None
        m["goodput_requests_per_s"] = n_good / span if span > 0 else None
        m["goodput_tokens_per_s"] = float(good["tokens"] or 0) / span if span > 0 else None
    m["preemptions"] = int(counts["pre"] or 0) if n_req else 0
    m["iterations"], m["mean_batch"] = _step_counts(steps)
    util, states = _utilization(devices, span)
    m["utilization"] = util
    m["busy_s"] = sum(v for k, v in states.items() if k != IDLE)
    m["idle_s"] = states.get(IDLE, 0.0)
    m["state_s"] = states
    return m


def column_mean(frame: Frame, column: str) -> float | None:
    """Mean of ``column`` (nulls and NaNs left out), ``None`` when empty.

    The column is collected into one contiguous array before summing, so the result does
    not depend on how the frame is chunked (a frame spilled to disk in parts gives the
    same bits as the one held in memory).
    """
    vals = pl.col(column).drop_nulls()
    arr = frame.lazy().select(vals.filter(~vals.is_nan())).collect().to_series().to_numpy()
    return float(np.mean(arr)) if arr.size else None


def _p99_verdict(m: Mapping[str, Any], ttft_s: float | None, tpot_s: float | None) -> bool | None:
    """MLPerf's server verdict: p99 TTFT and p99 TPOT within the bounds given (``None``
    when no bound is given or a bounded figure is missing)."""
    checks = [(m.get("ttft_p99_s"), ttft_s), (m.get("tpot_p99_s"), tpot_s)]
    given = [(v, b) for v, b in checks if b is not None]
    if not given or any(v is None for v, _ in given):
        return None
    return all(v is not None and float(v) <= b for v, b in given)


def _step_counts(steps: Frame | None) -> tuple[int, float | None]:
    """Iterations and mean sequences per iteration of a ``steps`` frame."""
    if _empty(steps):
        return 0, None
    assert steps is not None
    row = (
        steps.lazy().select(pl.len().alias("n"), pl.col("batch").mean().alias("b")).collect().row(0)
    )
    n = int(row[0])
    return n, (float(row[1]) if n else None)


def forward_metrics(
    frames: Mapping[str, Frame], simulated_s: float, *, samples: int, tokens_per_sample: int
) -> dict[str, Any]:
    """Summary keys of an offline run of batched forward passes.

    Keys: ``throughput_samples_per_s``, ``throughput_tokens_per_s`` (samples x tokens
    per sample / span), ``step_time_s`` (mean step), ``mean_batch``, ``iterations``,
    ``utilization``, ``busy_s``, ``idle_s``, ``state_s``, ``simulated_s``.
    """
    steps = frames["steps"]
    span = float(simulated_s)
    util, states = _utilization(frames.get("devices", pl.DataFrame()), span)
    iterations, mean_batch = _step_counts(steps)
    step_time = None
    if iterations:
        step_time = float(
            steps.lazy().select((pl.col("end_s") - pl.col("start_s")).mean()).collect().item()
        )
    return {
        "samples": samples,
        "simulated_s": span,
        "throughput_samples_per_s": samples / span if span > 0 else None,
        "throughput_tokens_per_s": samples * tokens_per_sample / span if span > 0 else None,
        "step_time_s": step_time,
        "iterations": iterations,
        "mean_batch": mean_batch,
        "utilization": util,
        "busy_s": sum(v for k, v in states.items() if k != IDLE),
        "idle_s": states.get(IDLE, 0.0),
        "state_s": states,
    }


# --- the metrics these functions emit, as the workloads declare them ---------------------

stat_text = {"mean": "mean", "p50": "median", "p90": "90th-percentile", "p99": "99th-percentile"}
"""How each statistic suffix reads in a metric description."""

DEVICE_METRICS: tuple[Metric, ...] = (
    detail("iterations", "Iterations", description="scheduler iterations (steps) run"),
    detail("mean_batch", "Mean batch", description="sequences per iteration, averaged"),
    detail(
        "utilization",
        "Utilization",
        "%",
        scale=100.0,
        better="higher",
        description="busy device-time over devices times the simulated span",
    ),
    detail("busy_s", "Busy device-time", "s", description="device-seconds not idle"),
    detail("idle_s", "Idle device-time", "s", description="device-seconds idle"),
    detail("state_s", "Device-time by state", "s", description="device-seconds per power state"),
)
"""Keys :func:`serving_metrics` and :func:`forward_metrics` both emit about the devices."""

SERVING_METRICS: tuple[Metric, ...] = (
    THROUGHPUT_TOKENS_PER_S,
    Metric(
        "ttft_p50_s",
        "TTFT p50",
        "ms",
        1e3,
        "lower",
        description="median time to first token of finished requests",
        order=200,
        short="TTFT p50 ms",
        table_format="{:,.0f}",
    ),
    Metric(
        "ttft_p99_s",
        "TTFT p99",
        "ms",
        1e3,
        "lower",
        description="99th-percentile time to first token of finished requests",
        order=210,
        short="TTFT p99 ms",
        table_format="{:,.0f}",
        headline=True,
    ),
    Metric(
        "tbt_p50_s",
        "TBT p50",
        "ms",
        1e3,
        "lower",
        description="median gap between output tokens, every token weighted",
        order=220,
        short="TBT p50 ms",
        table_format="{:,.1f}",
    ),
    Metric(
        "tbt_p99_s",
        "TBT p99",
        "ms",
        1e3,
        "lower",
        description="99th-percentile gap between output tokens, every token weighted",
        order=230,
        short="TBT p99 ms",
        table_format="{:,.1f}",
        headline=True,
    ),
    E2E_P50_S,
    E2E_P99_S,
    *(
        detail(
            f"{name}_{stat}_s",
            f"{label} {stat}",
            "ms",
            "lower",
            scale=1e3,
            description=f"{stat_text[stat]} {what}",
        )
        for name, label, what in (
            ("ttft", "TTFT", "time to first token of finished requests"),
            ("e2e", "E2E", "end-to-end latency of finished requests"),
            ("tpot", "TPOT", "time per output token, one value per request (vLLM, MLPerf)"),
        )
        for stat in ("mean", "p90")
    ),
    *(
        detail(
            f"tpot_{stat}_s",
            f"TPOT {stat}",
            "ms",
            "lower",
            scale=1e3,
            description=f"{stat_text[stat]} time per output token, one value per request",
        )
        for stat in ("p50", "p99")
    ),
    *(
        detail(
            f"itl_{stat}_s",
            f"ITL {stat}",
            "ms",
            "lower",
            scale=1e3,
            description=f"{stat_text[stat]} inter-token latency, every gap one sample "
            "(its p50 and p99 are tbt_p50_s and tbt_p99_s)",
        )
        for stat in ("mean", "p90")
    ),
    detail(
        "total_throughput_tokens_per_s",
        "Total token throughput",
        "tokens/s",
        "higher",
        description="prompt plus output tokens of finished requests per second",
        order=115,
    ),
    detail(
        "mean_in_flight",
        "Mean requests in flight",
        description="requests sent and not finished, averaged over the run: finished "
        "requests' summed end-to-end latency / simulated time (the clients' concurrency "
        "under process: closed; SGLang bench_serving's Concurrency)",
    ),
    detail(
        "slo_p99_met",
        "p99 SLOs met",
        description="MLPerf server verdict: p99 TTFT and p99 TPOT within the SLOs given",
    ),
    Metric(
        "slo_attainment",
        "SLO attainment",
        "%",
        100.0,
        "higher",
        description="share of requests that finished within the TTFT, TPOT and ITL SLOs",
        order=300,
        short="SLO met",
        table_format="{:.1f}%",
        headline=True,
    ),
    detail(
        "throughput_requests_per_s",
        "Request throughput",
        "requests/s",
        "higher",
        description="finished requests per second",
        order=120,
    ),
    detail(
        "goodput_requests_per_s",
        "Goodput",
        "requests/s",
        "higher",
        description="requests meeting the SLOs per second",
        order=130,
    ),
    detail(
        "goodput_tokens_per_s",
        "Goodput",
        "tokens/s",
        "higher",
        description="output tokens of requests meeting the SLOs per second",
        order=140,
    ),
    detail("requests", "Requests", description="requests that arrived"),
    detail("requests_ok", "Requests finished", description="requests that finished"),
    detail(
        "requests_dropped",
        "Requests dropped",
        better="lower",
        description="requests that did not finish",
    ),
    detail("output_tokens", "Output tokens", description="output tokens of finished requests"),
    detail(
        "preemptions",
        "Preemptions",
        better="lower",
        description="sequences evicted from the KV cache and recomputed",
    ),
    *DEVICE_METRICS,
)
"""Every key :func:`serving_metrics` emits."""

FORWARD_METRICS: tuple[Metric, ...] = (
    STEP_TIME_S,
    detail("samples", "Samples", description="inputs processed"),
)
"""The keys :func:`forward_metrics` emits beyond ``throughput_samples_per_s`` and those
:data:`SERVING_METRICS` declares."""
