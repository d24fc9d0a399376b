"""Kernel efficiency fitted to public tables: causal block work, 8-bit GEMM fraction,
the shipped per-GPU fits and their inheritance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.efficiency import GpuCostModel, GpuEfficiency, causal_block_factor
from xpusim.plugins.gpu.kernel_fits import fitted_params
from xpusim.plugins.gpu.points import gemm_op


def test_causal_blocks_cost_more_on_short_sequences() -> None:
    """Blocks straddling the diagonal are computed whole: 4 blocks of 128 at 512 tokens do
    10 of 16 blocks for 8.5 of 16 blocks' pairs; the extra work vanishes with length and
    never goes below the attended pairs."""
    assert causal_block_factor(512, 512, 128) == pytest.approx(
        10 * 128 * 128 / (512 * 512 - 512 * 511 / 2)
    )
    lengths = (512, 1024, 4096, 16384)
    factors = [causal_block_factor(s, s, 128) for s in lengths]
    assert factors == sorted(factors, reverse=True)
    assert factors[-1] == pytest.approx(1.0, abs=0.01)
    assert causal_block_factor(1, 4000, 128) == 1.0


def test_low_precision_gemms_use_their_own_fraction() -> None:
    """An fp8 GEMM runs at ``lowp_tensor_fraction`` when it is set, a bf16 one at
    ``tensor_fraction``; unset, both use ``tensor_fraction``."""
    dev = catalog()["h100-sxm"]
    big = (8192, 8192, 8192)
    eff = replace(GpuEfficiency(), tensor_fraction=0.8, kernel_overhead_s=0.0)
    same = GpuCostModel(dev, eff)(gemm_op(*big, "fp8")).seconds
    slower = GpuCostModel(dev, replace(eff, lowp_tensor_fraction=0.4))(gemm_op(*big, "fp8"))
    assert slower.seconds == pytest.approx(2 * same, rel=1e-9)
    bf16 = GpuCostModel(dev, replace(eff, lowp_tensor_fraction=0.4))(gemm_op(*big, "bf16"))
    assert bf16.seconds == pytest.approx(GpuCostModel(dev, eff)(gemm_op(*big, "bf16")).seconds)


def test_every_catalog_gpu_has_fitted_or_inherited_fractions() -> None:
    """Each GPU of the catalog gets every fitted fraction, and says for each whether it was
    fitted to a named table or inherited from another GPU's fit."""
    for name in ("h100-sxm", "a100-sxm-80gb", "mi300x", "l40s", "b200", "h200-sxm"):
        params = fitted_params(name)
        assert {"tensor_fraction", "memory_fraction", "attention_fraction"} <= set(params)
        for value, how in params.values():
            assert value > 0
            assert "fitted to" in how or "inherited from" in how or "no 8-bit table" in how
    assert "fitted to mamf_bf16" in fitted_params("mi300x")["tensor_fraction"][1]
    assert "inherited from a100" in fitted_params("l40s")["tensor_fraction"][1]
    assert fitted_params("no-such-gpu") == {}
