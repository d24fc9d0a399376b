"""Closed-form cycle model of a systolic array (equal to the emulator's compute cycles).

For a GEMM ``M×K · K×N`` on an ``R×C`` array under dataflow ``d`` (SCALE-Sim's mapping, see
:mod:`xpusim.plugins.tpu.systolic`)::

    (S_r, S_c, T) = (M, N, K) for os, (K, N, M) for ws, (K, M, N) for is
    folds        = ceil(S_r / R) · ceil(S_c / C)
    per_fold     = T + R + C - 2            (os)
                 = 2R + C + T - 2           (ws, is: R cycles to shift the stationary block in)
    compute      = folds · per_fold - 1     (SCALE-Sim reports the number of the last cycle)

With an ideal memory interface (no ``bandwidth``) nothing stalls, so total = compute; this is
what full-size models use. Stalls under a limited DRAM bandwidth come from the scratchpad
model in :mod:`xpusim.plugins.tpu.memory`, driven by the layer's demand (it is exact but walks every
cycle, so it is for layer-level studies, not for pricing whole models).

PE-busy cycles (MACs actually done, counting only mapped PEs) are ``M·N·K`` for every
dataflow, and the per-fold mapping efficiency follows from the partial folds at the edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.plugins.tpu.systolic import check_array, check_gemm, fold_cycles, spatial_temporal


@dataclass(frozen=True, slots=True)
class CycleCount:
    """Closed-form cycles of one GEMM on one array."""

    m: int
    n: int
    k: int
    rows: int
    cols: int
    dataflow: str
    folds: int
    cycles_per_fold: int
    compute_cycles: int
    mapping_efficiency: float

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def utilization(self) -> float:
        """MACs over the array's MAC slots in the compute cycles."""
        return self.macs / (self.compute_cycles * self.rows * self.cols)


def gemm_cycles(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> CycleCount:
    """Compute cycles of ``M×K · K×N`` on an ``rows × cols`` array (see module docstring)."""
    check_gemm(m, n, k)
    check_array(rows, cols, dataflow)
    sr, sc, t = spatial_temporal(m, n, k, dataflow)
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    per = fold_cycles(rows, cols, t, dataflow)
    folds = rf * cf
    # average over folds of (rows used · cols used) / (R·C)
    mapping = (sr * sc) / (folds * rows * cols)
    return CycleCount(m, n, k, rows, cols, dataflow, folds, per, folds * per - 1, mapping)


def gemm_compute_cycles(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> int:
    """Just the compute cycles (the hot path for pricing whole models)."""
    if dataflow == "os":
        sr, sc, t = m, n, k
        per = t + rows + cols - 2
    elif dataflow == "ws":
        sr, sc, t = k, n, m
        per = 2 * rows + cols + t - 2
    else:
        sr, sc, t = k, m, n
        per = 2 * rows + cols + t - 2
    return -(-sr // rows) * -(-sc // cols) * per - 1
