"""Quantities with units, parsed once at load.

Scenario files write every quantity with its unit (``80 GiB``, ``3.35 TB/s``, ``4/s``,
``150 ms``, ``2 h``, ``700 W``, ``0.12 USD/kWh``, ``380 g/kWh``). :func:`parse` turns such a
string into an SI float for an expected dimension and raises :class:`~xpusim.engine.errors.UnitError`
with the accepted units when the unit is missing, unknown or of another dimension.

Inside the engine every quantity is an SI float: bytes, seconds, bytes/s, 1/s, watts,
joules, USD, USD per joule, kilograms of CO2 per joule.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum

from xpusim.engine.errors import UnitError


class Dim(StrEnum):
    """Physical dimensions a scenario quantity can have."""

    BYTES = "size"
    BANDWIDTH = "bandwidth"
    DURATION = "duration"
    RATE = "rate"
    POWER = "power"
    ENERGY = "energy"
    MONEY = "money"
    PRICE_PER_ENERGY = "price per energy"
    PRICE_PER_TIME = "price per time"
    CARBON_INTENSITY = "carbon intensity"
    FLOPS = "compute rate"
    FREQUENCY = "frequency"
    COUNT = "count"


_SIZE = {
    "B": 1.0,
    "kB": 1e3,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "PB": 1e15,
    "KiB": 2.0**10,
    "MiB": 2.0**20,
    "GiB": 2.0**30,
    "TiB": 2.0**40,
    "PiB": 2.0**50,
}
_TIME = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "y": 365.25 * 86400.0,
    "year": 365.25 * 86400.0,
}
_ENERGY = {"J": 1.0, "kJ": 1e3, "MJ": 1e6, "Wh": 3600.0, "kWh": 3.6e6, "MWh": 3.6e9}
_POWER = {"mW": 1e-3, "W": 1.0, "kW": 1e3, "MW": 1e6}
_FLOPS = {
    "FLOP/s": 1.0,
    "GFLOP/s": 1e9,
    "TFLOP/s": 1e12,
    "PFLOP/s": 1e15,
    "TFLOPS": 1e12,
    "GFLOPS": 1e9,
    "PFLOPS": 1e15,
    "TOP/s": 1e12,
    "TOPS": 1e12,
}
_FREQ = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}
_MASS = {"g": 1e-3, "kg": 1.0, "t": 1e3}
_MONEY = {"USD": 1.0, "$": 1.0}


def _table(dim: Dim) -> dict[str, float]:
    """Return the accepted unit spellings for ``dim`` with their SI factors."""
    if dim is Dim.BYTES:
        return dict(_SIZE)
    if dim is Dim.DURATION:
        return dict(_TIME)
    if dim is Dim.BANDWIDTH:
        out = {f"{u}/s": f for u, f in _SIZE.items()}
        out.update({"Gbps": 1e9 / 8, "Gb/s": 1e9 / 8, "Tbps": 1e12 / 8, "Mbps": 1e6 / 8})
        return out
    if dim is Dim.RATE:
        return {f"/{u}": 1.0 / f for u, f in _TIME.items() if u not in ("µs",)} | {
            "Hz": 1.0,
        }
    if dim is Dim.POWER:
        return dict(_POWER)
    if dim is Dim.ENERGY:
        return dict(_ENERGY)
    if dim is Dim.MONEY:
        return dict(_MONEY)
    if dim is Dim.PRICE_PER_ENERGY:
        return {f"{m}/{e}": mf / ef for m, mf in _MONEY.items() for e, ef in _ENERGY.items()}
    if dim is Dim.PRICE_PER_TIME:
        return {f"{m}/{t}": mf / tf for m, mf in _MONEY.items() for t, tf in _TIME.items()}
    if dim is Dim.CARBON_INTENSITY:
        return {f"{g}/{e}": gf / ef for g, gf in _MASS.items() for e, ef in _ENERGY.items()}
    if dim is Dim.FLOPS:
        return dict(_FLOPS)
    if dim is Dim.FREQUENCY:
        return dict(_FREQ)
    if dim is Dim.COUNT:
        return {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
    raise AssertionError(dim)  # pragma: no cover


_QTY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)\s*(.*?)\s*$")


def units_for(dim: Dim) -> list[str]:
    """Return the unit spellings accepted for ``dim``, for error messages and docs."""
    return sorted(u for u in _table(dim) if u)


def parse(value: object, dim: Dim, *, where: str = "value") -> float:
    """Parse ``value`` (``"80 GiB"``, ``"4/s"``, or a bare number for counts) into SI.

    ``where`` names the place for the error message (a key path). Bare numbers are only
    accepted for :attr:`Dim.COUNT`; every other dimension must carry a unit, because a
    silent unit guess is the classic source of thousand-fold mistakes.
    """
    table = _table(dim)
    if isinstance(value, bool):
        raise UnitError(f"{where}: expected a {dim.value} such as {_example(dim)}, got {value!r}.")
    if isinstance(value, int | float):
        if dim is Dim.COUNT:
            return _finite(float(value), where, dim)
        raise UnitError(
            f"{where}: {value!r} has no unit; write a {dim.value} with its unit, "
            f"for example {_example(dim)} (accepted units: {', '.join(units_for(dim))})."
        )
    if not isinstance(value, str):
        raise UnitError(f"{where}: expected a {dim.value} such as {_example(dim)}, got {value!r}.")
    m = _QTY.match(value)
    if not m:
        raise UnitError(
            f"{where}: cannot read {value!r} as a {dim.value}; write a number and a unit, "
            f"for example {_example(dim)}."
        )
    # the Greek small mu (U+03BC) and the micro sign (U+00B5) look alike: read both as micro
    number, unit = m.group(1), m.group(2).replace(" ", "").replace("\u03bc", "\u00b5")
    if unit not in table:
        other = _which_dimension(unit)
        hint = f" ({unit!r} is a unit of {other.value})" if other else ""
        raise UnitError(
            f"{where}: {value!r} is not a {dim.value}{hint}; accepted units: "
            f"{', '.join(units_for(dim))}, for example {_example(dim)}."
        )
    return _finite(float(number) * table[unit], where, dim)


def _finite(x: float, where: str, dim: Dim) -> float:
    if math.isnan(x) or math.isinf(x):
        raise UnitError(f"{where}: {dim.value} must be a finite number, got {x}.")
    return x


def _which_dimension(unit: str) -> Dim | None:
    for d in Dim:
        if d is Dim.COUNT:
            continue
        if unit in _table(d):
            return d
    return None


def _example(dim: Dim) -> str:
    return {
        Dim.BYTES: "'80 GiB'",
        Dim.BANDWIDTH: "'3.35 TB/s'",
        Dim.DURATION: "'150 ms'",
        Dim.RATE: "'4/s'",
        Dim.POWER: "'700 W'",
        Dim.ENERGY: "'3.6 MJ'",
        Dim.MONEY: "'30000 USD'",
        Dim.PRICE_PER_ENERGY: "'0.12 USD/kWh'",
        Dim.PRICE_PER_TIME: "'2.5 USD/h'",
        Dim.CARBON_INTENSITY: "'380 g/kWh'",
        Dim.FLOPS: "'989 TFLOP/s'",
        Dim.FREQUENCY: "'940 MHz'",
        Dim.COUNT: "'1000'",
    }[dim]


def format_si(x: float, dim: Dim) -> str:
    """Format an SI float back into a readable quantity string that :func:`parse` accepts."""
    choices: dict[Dim, list[tuple[str, float]]] = {
        Dim.BYTES: [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)],
        Dim.BANDWIDTH: [("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("B/s", 1.0)],
        Dim.DURATION: [
            ("h", 3600.0),
            ("min", 60.0),
            ("s", 1.0),
            ("ms", 1e-3),
            ("us", 1e-6),
            ("ns", 1e-9),
        ],
        Dim.RATE: [("/s", 1.0)],
        Dim.POWER: [("kW", 1e3), ("W", 1.0), ("mW", 1e-3)],
        Dim.ENERGY: [("kWh", 3.6e6), ("kJ", 1e3), ("J", 1.0)],
        Dim.MONEY: [("USD", 1.0)],
        Dim.PRICE_PER_ENERGY: [("USD/kWh", 1 / 3.6e6)],
        Dim.PRICE_PER_TIME: [("USD/h", 1 / 3600.0)],
        Dim.CARBON_INTENSITY: [("g/kWh", 1e-3 / 3.6e6)],
        Dim.FLOPS: [("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("FLOP/s", 1.0)],
        Dim.FREQUENCY: [("GHz", 1e9), ("MHz", 1e6), ("Hz", 1.0)],
        Dim.COUNT: [("", 1.0)],
    }
    for unit, f in choices[dim]:
        if abs(x) >= f or unit == choices[dim][-1][0]:
            v = x / f
            text = f"{v:.12g}"
            return (
                f"{text} {unit}".strip() if unit and not unit.startswith("/") else f"{text}{unit}"
            )
    raise AssertionError(dim)  # pragma: no cover
