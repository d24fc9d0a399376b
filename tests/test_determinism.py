"""Determinism: the same scenario and seed give the same numbers, byte for byte, in any
process, whatever ``PYTHONHASHSEED`` (set and dict iteration orders must not leak into
results), and a different seed gives different numbers (so the sameness is not vacuous).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "tests" / "bad_inputs" / "base.yaml"
XPUSIM = Path(sys.executable).with_name("xpusim")

# Random arrivals and lengths on two systems of different devices.
SETS = [
    "workload.arrivals.count=300",
    "workload.arrivals.rate=30/s",
    "workload.arrivals.prompt_tokens={dist: lognormal, median: 300, sigma: 1.0, max: 900}",
    "workload.arrivals.output_tokens={dist: uniform, low: 4, high: 64}",
    "systems.1={name: a100, backend: gpu, device: a100-sxm-80gb, count: 2}",
]


def _runs(tmp_path: Path, variants: dict[str, tuple[str, list[str]]]) -> dict[str, Path]:
    """Run each variant (hash seed, extra args) in its own process, all at once."""
    procs = {}
    for name, (hash_seed, extra) in variants.items():
        out = tmp_path / name
        args = [str(XPUSIM), "run", str(BASE), "--out", str(out), "-q"]
        for s in SETS:
            args += ["--set", s]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        procs[name] = (
            out,
            subprocess.Popen(
                args + extra,
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    folders = {}
    for name, (out, proc) in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        folders[name] = out
    return folders


@pytest.mark.slow
def test_same_seed_same_bytes_across_hash_seeds(tmp_path: Path) -> None:
    """Two processes with different PYTHONHASHSEED write byte-identical summary.json and
    equal Parquet frames; a third with another --seed writes different numbers."""
    if not XPUSIM.exists():
        pytest.skip("the xpusim console script is not installed beside this interpreter")
    f = _runs(
        tmp_path,
        {
            "a": ("0", []),
            "b": ("4242", []),
            "other": ("0", ["--seed", "99"]),
        },
    )
    a, b = f["a"], f["b"]
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    parquet = sorted(p.name for p in a.glob("*.parquet"))
    assert {"summary.parquet", "requests.parquet", "devices.parquet"} <= set(parquet)
    assert parquet == sorted(p.name for p in b.glob("*.parquet"))
    for name in parquet:
        assert_frame_equal(pl.read_parquet(a / name), pl.read_parquet(b / name))

    doc = json.loads((a / "summary.json").read_text())
    other = json.loads((f["other"] / "summary.json").read_text())
    assert [s["status"] for s in doc["systems"]] == ["ok", "ok"]
    assert other["seed"] == 99
    assert doc["systems"][0]["e2e_p99_s"] != other["systems"][0]["e2e_p99_s"]
    assert not pl.read_parquet(a / "requests.parquet").equals(
        pl.read_parquet(f["other"] / "requests.parquet")
    )
