"""The wafer backend against the engine's conformance kit, and its own mechanism."""

from __future__ import annotations

import pytest
from xpusim_example_backend import WaferBackend
from xpusim_example_backend.costmodel import RESIDENT, STREAMING

from xpusim.engine.graph import Phase, Shape
from xpusim.engine.testing import BackendConformance, ProbeMLP, make_system

BACKEND = WaferBackend()


class TestWse3Conformance(BackendConformance):
    """Every conformance check on one CS-3."""

    backend = BACKEND
    device = "wse-3"


class TestWse2Conformance(BackendConformance):
    """Every conformance check on one CS-2."""

    backend = BACKEND
    device = "wse-2"


def test_sram_capacity_decides_the_regime() -> None:
    """Weights within 80% of the 44 GB SRAM are resident; larger ones stream."""
    wse3 = BACKEND.devices()["wse-3"]
    system = make_system(wse3)
    small = ProbeMLP(width=4096, hidden=16384)  # 268 MB of bf16 weights
    big = ProbeMLP(width=65536, hidden=327680)  # 42.9 GB of bf16 weights
    assert BACKEND.compile(small, system).regime == RESIDENT
    assert BACKEND.compile(big, system).regime == STREAMING


def test_streaming_weights_cross_the_io_link() -> None:
    """In weight streaming a batch-1 step takes at least weight bytes / 150 GB/s, and
    forcing residency for the same model is far faster."""
    wse3 = BACKEND.devices()["wse-3"]
    model = ProbeMLP(width=8192, hidden=32768)
    shape = Shape(Phase.FORWARD, batch=1)
    streamed = BACKEND.compile(model, make_system(wse3, options={"regime": STREAMING}))
    resident = BACKEND.compile(model, make_system(wse3, options={"regime": RESIDENT}))
    floor = model.info.param_bytes / 150e9
    assert streamed.cost(shape).seconds >= floor
    assert resident.cost(shape).seconds < streamed.cost(shape).seconds / 100


def test_streaming_keeps_weights_out_of_sram() -> None:
    """Weights larger than the SRAM fit in weight streaming (they live in MemoryX) but
    not when forced resident, where the reason names the shortfall."""
    wse3 = BACKEND.devices()["wse-3"]
    big = ProbeMLP(width=65536, hidden=655360)  # 85.9 GB of bf16 weights
    streamed = BACKEND.compile(big, make_system(wse3)).fit()
    forced = BACKEND.compile(big, make_system(wse3, options={"regime": RESIDENT})).fit()
    assert streamed.fits and streamed.need_bytes < 44e9
    assert not forced.fits and "short by" in forced.reason


def test_weights_beyond_memoryx_do_not_fit() -> None:
    """A model larger than the 1.5 TB MemoryX store does not fit, and says so."""
    wse3 = BACKEND.devices()["wse-3"]
    huge = ProbeMLP(width=262144, hidden=3_000_000)  # 3.1 TB of bf16 weights
    fit = BACKEND.compile(huge, make_system(wse3)).fit()
    assert not fit.fits and "MemoryX" in fit.reason


def test_options_schema_declares_regime_only() -> None:
    """The wafer backend declares ``regime`` and refuses any other option key."""
    assert BACKEND.check_options({"regime": STREAMING}) == {"regime": STREAMING}
    with pytest.raises(ValueError, match="regim"):
        BACKEND.check_options({"regim": STREAMING})
