"""Quantities with units: parsing, dimensions and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xpusim.engine import units
from xpusim.engine.errors import UnitError
from xpusim.engine.units import Dim


@pytest.mark.parametrize(
    ("text", "dim", "si"),
    [
        ("80 GiB", Dim.BYTES, 80 * 2**30),
        ("80 GB", Dim.BYTES, 80e9),
        ("3.35 TB/s", Dim.BANDWIDTH, 3.35e12),
        ("400 Gbps", Dim.BANDWIDTH, 50e9),
        ("4/s", Dim.RATE, 4.0),
        ("12 /min", Dim.RATE, 0.2),
        ("150 ms", Dim.DURATION, 0.15),
        ("2 h", Dim.DURATION, 7200.0),
        ("700 W", Dim.POWER, 700.0),
        ("0.12 USD/kWh", Dim.PRICE_PER_ENERGY, 0.12 / 3.6e6),
        ("2.5 USD/h", Dim.PRICE_PER_TIME, 2.5 / 3600),
        ("380 g/kWh", Dim.CARBON_INTENSITY, 0.38 / 3.6e6),
        ("989.4 TFLOP/s", Dim.FLOPS, 989.4e12),
        ("1e3 s", Dim.DURATION, 1000.0),
    ],
)
def test_parse_known_units(text: str, dim: Dim, si: float) -> None:
    """Every documented spelling parses to the SI value."""
    assert units.parse(text, dim) == pytest.approx(si, rel=1e-12)


def test_bare_number_needs_a_unit() -> None:
    """A number without a unit is refused for dimensions other than counts."""
    with pytest.raises(UnitError, match="has no unit"):
        units.parse(80, Dim.BYTES)
    assert units.parse(80, Dim.COUNT) == 80


def test_wrong_dimension_names_both() -> None:
    """A unit of another dimension says which dimension it belongs to."""
    with pytest.raises(UnitError) as exc:
        units.parse("4 GB", Dim.RATE, where="workload.arrivals.rate")
    msg = str(exc.value)
    assert "workload.arrivals.rate" in msg and "size" in msg and "/s" in msg


@pytest.mark.parametrize("bad", ["nan s", "inf GB", "fast", "", "3.2.1 ms", True, None, [1]])
def test_garbage_is_refused(bad: object) -> None:
    """Non-finite numbers, words and wrong types are refused with a UnitError."""
    with pytest.raises(UnitError):
        units.parse(bad, Dim.DURATION)


@given(
    st.floats(min_value=1e-6, max_value=1e15, allow_nan=False, allow_infinity=False),
    st.sampled_from([d for d in Dim if d is not Dim.COUNT]),
)
def test_format_round_trip(x: float, dim: Dim) -> None:
    """format_si writes a string that parse reads back to the same value."""
    again = units.parse(units.format_si(x, dim), dim)
    assert math.isclose(again, x, rel_tol=1e-9)
