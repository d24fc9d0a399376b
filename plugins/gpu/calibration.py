"""Fitted GPU efficiency files: the data model, loading, saving and applying.

A calibration file is JSON::

    {
      "device": "h100-sxm",
      "measured_on": "1x H100 SXM5 80GB, driver 550, CUDA 12.4, torch 2.x",
      "date": "2026-11-22",
      "command": "xpusim calibrate gpu --device h100-sxm ...",
      "params": {"tensor_fraction": 0.74, "memory_fraction": 0.86, "kernel_overhead_s": 3e-6}
    }

``params`` names fields of :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency`; any field not
named keeps its default. The command that measures and writes such a file belongs to the
calibration tooling; this module only reads, writes and applies it. A scenario points a
GPU system at one with ``options: {calibration: path/to/file.json}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu.efficiency import GpuEfficiency

_REQUIRED = ("device", "measured_on", "date", "command", "params")


@dataclass(frozen=True)
class Calibration:
    """One fitted efficiency file: which device, measured where and when, by which
    command, and the fitted :class:`GpuEfficiency` parameters."""

    device: str
    measured_on: str
    date: str
    command: str
    params: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "device": self.device,
            "measured_on": self.measured_on,
            "date": self.date,
            "command": self.command,
            "params": dict(self.params),
        }

    def apply(self, eff: GpuEfficiency | None = None) -> GpuEfficiency:
        """``eff`` (default parameters when ``None``) with the fitted ``params`` set."""
        return apply(eff or GpuEfficiency(), self)

    def cited(self) -> str:
        """Provenance text for 'Assumptions and sources'."""
        where = f" {self.path}" if self.path else ""
        return (
            f"calibration{where}, measured on {self.measured_on}; date: {self.date}; "
            f"command: `{self.command}`"
        )


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name == "tiles":
        return tuple((int(t[0]), int(t[1]), float(t[2])) for t in value)
    if isinstance(default, tuple):
        return tuple(int(v) for v in value)
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    return float(value)


def apply(eff: GpuEfficiency, cal: Calibration) -> GpuEfficiency:
    """Return ``eff`` with ``cal.params`` applied; unknown parameter names raise
    :class:`~xpusim.engine.errors.XpusimError` listing the valid ones."""
    valid = GpuEfficiency.param_names()
    unknown = [k for k in cal.params if k not in valid]
    where = cal.path or "calibration"
    if unknown:
        raise XpusimError(
            f"{where}: unknown GPU efficiency parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid)}."
        )
    try:
        changes = {k: _coerce(k, v, getattr(eff, k)) for k, v in cal.params.items()}
    except (TypeError, ValueError, IndexError) as exc:
        raise XpusimError(f"{where}: a parameter has the wrong type ({exc}).") from None
    return replace(eff, **changes)


def load(path: str | Path) -> Calibration:
    """Read a calibration file; a missing file or field raises
    :class:`~xpusim.engine.errors.XpusimError` naming it."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XpusimError(f"calibration file {str(p)!r} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise XpusimError(f"calibration file {str(p)!r} is not valid JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise XpusimError(f"calibration file {str(p)!r} must hold a JSON object.")
    if str(raw.get("format", "")).startswith("xpusim-gpu-points/"):
        raise XpusimError(
            f"{str(p)!r} holds measured kernel times, not a calibration; fit one with "
            f"`xpusim calibrate --backend gpu --points {p} --out FILE` and pass FILE instead."
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise XpusimError(
            f"calibration file {str(p)!r} lacks {', '.join(missing)}; a calibration records "
            f"{', '.join(_REQUIRED)}."
        )
    if not isinstance(raw["params"], dict):
        raise XpusimError(f"calibration file {str(p)!r}: 'params' must be an object.")
    cal = Calibration(
        str(raw["device"]),
        str(raw["measured_on"]),
        str(raw["date"]),
        str(raw["command"]),
        dict(raw["params"]),
        str(p),
    )
    apply(GpuEfficiency(), cal)  # validate names and types now
    return cal


def save(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON to ``path`` and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cal.to_json(), indent=2) + "\n", encoding="utf-8")
    return p
