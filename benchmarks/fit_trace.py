"""Fit an arrival process and token-length distributions to an Azure LLM trace.

Prints the gamma renewal process (rate, burstiness = squared coefficient of variation of
inter-arrival times) and log-normal maximum-likelihood fits (median = exp(mean log x),
sigma = std log x) of prompt and output lengths, the figures scenarios/quickstart.yaml uses.

    python benchmarks/fit_trace.py ../shared/traces/azure_llm_2023_conv.csv [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl


def fit(path: Path) -> dict[str, float]:
    """Return the fitted parameters of the trace at ``path``."""
    df = pl.read_csv(path)
    ts = df["TIMESTAMP"].str.strptime(pl.Datetime("ns"), "%Y-%m-%d %H:%M:%S%.f")
    t = (ts - ts[0]).dt.total_nanoseconds().to_numpy() / 1e9
    gaps = np.diff(t)
    out: dict[str, float] = {
        "requests": float(len(t)),
        "span_s": float(t[-1]),
        "rate_per_s": float(len(gaps) / t[-1]),
        "burstiness_cv2": float(gaps.var() / gaps.mean() ** 2),
    }
    for col, key in (("ContextTokens", "prompt"), ("GeneratedTokens", "output")):
        x = df[col].to_numpy().astype(float)
        logs = np.log(x)
        out[f"{key}_lognormal_median"] = float(np.exp(logs.mean()))
        out[f"{key}_lognormal_sigma"] = float(logs.std())
        out[f"{key}_p99"] = float(np.percentile(x, 99))
    return out


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    figures = fit(args.trace)
    for k, v in figures.items():
        print(f"{k:28s} {v:,.4g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
