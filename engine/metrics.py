"""Summary metrics from a run's frames: latency percentiles, throughput, SLOs, goodput.

Everything here reads frames only (``requests``, ``steps``, ``devices``, ``tbt``; see
:mod:`engine.sim.events`), so a run folder's Parquet files give the same numbers.

Percentiles use the inverted-CDF definition (numpy's ``method="inverted_cdf"``): the
p-quantile is the smallest observed value whose cumulative share reaches ``p``. It never
interpolates between observations, so a weighted sample (the ``tbt`` frame: each gap
with the number of tokens that waited that long) gives exactly the percentile of the
expanded per-token list.

SLO attainment: a request meets the SLOs when it finished (``status == "ok"``), its TTFT
is at most ``ttft`` and its mean time between tokens (TPOT, ``tbt_mean_s``; one-token
outputs pass) is at most ``tbt``; only the SLOs given are checked. Dropped requests
count as misses. Goodput is the rate of SLO-meeting requests (and of their output
tokens) over the simulated span.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from engine.sim.events import IDLE


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


def device_seconds(devices: pl.DataFrame) -> dict[str, float]:
    """Device-seconds by state from a ``devices`` frame (``idle`` included)."""
    if devices.height == 0:
        return {}
    by = (
        devices.group_by("state")
        .agg((pl.col("end_s") - pl.col("start_s")).sum().alias("s"))
        .sort("state")
    )
    return {str(k): float(v) for k, v in zip(by["state"], by["s"], strict=True)}


def _utilization(devices: pl.DataFrame, simulated_s: float) -> tuple[float | None, dict]:
    states = device_seconds(devices)
    busy = sum(v for k, v in states.items() if k != IDLE)
    lanes = devices.select("replica", "device").unique().height if devices.height else 0
    util = busy / (lanes * simulated_s) if lanes and simulated_s > 0 else None
    return util, states


def serving_metrics(
    frames: dict[str, pl.DataFrame],
    simulated_s: float,
    *,
    ttft_slo_s: float | None = None,
    tbt_slo_s: float | None = None,
) -> dict[str, Any]:
    """Summary keys of one serving system from its frames.

    Keys: ``requests``, ``requests_ok``, ``requests_dropped``, ``output_tokens``,
    ``throughput_tokens_per_s`` (output tokens of finished requests / ``simulated_s``),
    ``throughput_requests_per_s``, ``ttft_p50_s``, ``ttft_p99_s``, ``tbt_p50_s``,
    ``tbt_p99_s``, ``e2e_p50_s``, ``e2e_p99_s``, ``slo_attainment``,
    ``goodput_requests_per_s``, ``goodput_tokens_per_s``, ``preemptions``,
    ``mean_batch`` (sequences per iteration, averaged over iterations), ``iterations``,
    ``utilization`` (busy device-time / (devices x simulated_s)), ``busy_s`` and
    ``idle_s`` (device-seconds), ``state_s`` (device-seconds by state) and
    ``simulated_s``. A value that does not apply is ``None``.
    """
    req = frames["requests"]
    steps = frames.get("steps", pl.DataFrame())
    devices = frames.get("devices", pl.DataFrame())
    tbt = frames.get("tbt")
    ok = req.filter(pl.col("status") == "ok")
    span = float(simulated_s)
    out_tokens = int(ok["output_tokens"].sum()) if ok.height else 0
    m: dict[str, Any] = {
        "requests": req.height,
        "requests_ok": ok.height,
        "requests_dropped": req.height - ok.height,
        "output_tokens": out_tokens,
        "simulated_s": span,
        "throughput_tokens_per_s": out_tokens / span if span > 0 else None,
        "throughput_requests_per_s": ok.height / span if span > 0 else None,
    }
    for name, col in (("ttft", "ttft_s"), ("e2e", "e2e_s")):
        vals = ok[col].drop_nulls().to_numpy()
        m[f"{name}_p50_s"] = quantile(vals, 0.50)
        m[f"{name}_p99_s"] = quantile(vals, 0.99)
    if tbt is not None and tbt.height:
        gaps, w = tbt["gap_s"].to_numpy(), tbt["tokens"].to_numpy()
        m["tbt_p50_s"] = weighted_quantile(gaps, w, 0.50)
        m["tbt_p99_s"] = weighted_quantile(gaps, w, 0.99)
    else:
        m["tbt_p50_s"] = m["tbt_p99_s"] = None
    if ttft_slo_s is None and tbt_slo_s is None:
        m["slo_attainment"] = None
        m["goodput_requests_per_s"] = None
        m["goodput_tokens_per_s"] = None
    else:
        cond = pl.lit(True)
        if ttft_slo_s is not None:
            cond = cond & (pl.col("ttft_s") <= ttft_slo_s)
        if tbt_slo_s is not None:
            cond = cond & (pl.col("tbt_mean_s").is_null() | (pl.col("tbt_mean_s") <= tbt_slo_s))
        good = ok.filter(cond)
        m["slo_attainment"] = good.height / req.height if req.height else None
        m["goodput_requests_per_s"] = good.height / span if span > 0 else None
        m["goodput_tokens_per_s"] = (
            float(good["output_tokens"].sum()) / span if span > 0 else None
        )
    m["preemptions"] = int(req["preemptions"].sum()) if req.height else 0
    m["iterations"] = steps.height
    m["mean_batch"] = float(steps["batch"].mean()) if steps.height else None  # type: ignore[arg-type]
    util, states = _utilization(devices, span)
    m["utilization"] = util
    m["busy_s"] = sum(v for k, v in states.items() if k != IDLE)
    m["idle_s"] = states.get(IDLE, 0.0)
    m["state_s"] = states
    return m


def forward_metrics(
    frames: dict[str, pl.DataFrame], simulated_s: float, *, samples: int, tokens_per_sample: int
) -> dict[str, Any]:
    """Summary keys of an offline run of batched forward passes.

    Keys: ``throughput_samples_per_s``, ``throughput_tokens_per_s`` (samples x tokens
    per sample / span), ``step_time_s`` (mean step), ``mean_batch``, ``iterations``,
    ``utilization``, ``busy_s``, ``idle_s``, ``state_s``, ``simulated_s``.
    """
    steps = frames["steps"]
    span = float(simulated_s)
    util, states = _utilization(frames.get("devices", pl.DataFrame()), span)
    return {
        "samples": samples,
        "simulated_s": span,
        "throughput_samples_per_s": samples / span if span > 0 else None,
        "throughput_tokens_per_s": samples * tokens_per_sample / span if span > 0 else None,
        "step_time_s": float((steps["end_s"] - steps["start_s"]).mean())  # type: ignore[arg-type]
        if steps.height else None,
        "iterations": steps.height,
        "mean_batch": float(steps["batch"].mean()) if steps.height else None,  # type: ignore[arg-type]
        "utilization": util,
        "busy_s": sum(v for k, v in states.items() if k != IDLE),
        "idle_s": states.get(IDLE, 0.0),
        "state_s": states,
    }
