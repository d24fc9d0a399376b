"""Pydantic field types for quantities with units.

Use these in scenario schemas (the engine's and plugins'): the field accepts
``"150 ms"`` and holds seconds as a float. A wrong or missing unit fails validation with
the accepted units, and the scenario loader adds the file, line and key path::

    class Slo(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ttft_p99: Duration | None = None
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from xpusim.engine import units
from xpusim.engine.errors import UnitError
from xpusim.engine.units import Dim


def _parser(dim: Dim) -> BeforeValidator:
    def parse(v: Any) -> float:
        try:
            return units.parse(v, dim, where="value")
        except UnitError as exc:
            raise ValueError(str(exc).removeprefix("value: ")) from None

    return BeforeValidator(parse)


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError(f"must be greater than zero, got {v:g}")
    return v


def _non_negative(v: float) -> float:
    if v < 0:
        raise ValueError(f"must not be negative, got {v:g}")
    return v


Bytes = Annotated[float, _parser(Dim.BYTES), AfterValidator(_positive)]
"""A size in bytes (``80 GiB``), greater than zero."""
Bandwidth = Annotated[float, _parser(Dim.BANDWIDTH), AfterValidator(_positive)]
"""Bytes per second (``3.35 TB/s``), greater than zero."""
Duration = Annotated[float, _parser(Dim.DURATION), AfterValidator(_positive)]
"""Seconds (``150 ms``), greater than zero."""
DurationOrZero = Annotated[float, _parser(Dim.DURATION), AfterValidator(_non_negative)]
"""Seconds, zero allowed (``0 s``)."""
Rate = Annotated[float, _parser(Dim.RATE), AfterValidator(_positive)]
"""Events per second (``4/s``), greater than zero."""
Power = Annotated[float, _parser(Dim.POWER), AfterValidator(_non_negative)]
"""Watts (``700 W``)."""
Money = Annotated[float, _parser(Dim.MONEY), AfterValidator(_non_negative)]
"""US dollars (``30000 USD``)."""
PricePerEnergy = Annotated[float, _parser(Dim.PRICE_PER_ENERGY), AfterValidator(_non_negative)]
"""USD per joule (``0.12 USD/kWh``)."""
PricePerTime = Annotated[float, _parser(Dim.PRICE_PER_TIME), AfterValidator(_non_negative)]
"""USD per second (``2.5 USD/h``)."""
CarbonIntensity = Annotated[float, _parser(Dim.CARBON_INTENSITY), AfterValidator(_non_negative)]
"""kg CO2 per joule (``380 g/kWh``)."""
Flops = Annotated[float, _parser(Dim.FLOPS), AfterValidator(_positive)]
"""FLOP/s (``989 TFLOP/s``)."""
Frequency = Annotated[float, _parser(Dim.FREQUENCY), AfterValidator(_positive)]
"""Hertz (``940 MHz``)."""
