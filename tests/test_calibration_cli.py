"""`xpusim run --calibration FILE`: a fitted file reaches the systems of its device only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.calibration import apply_calibrations
from xpusim.engine.errors import XpusimError
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario

SCENARIO = """\
name: cal
model: {family: llama, preset: llama-2-7b}
workload: {kind: serving, arrivals: {process: poisson, rate: 2/s, count: 10,
           prompt_tokens: {dist: constant, value: 128}, output_tokens: {dist: constant, value: 16}}}
systems:
  - {name: h100, backend: gpu, device: h100-sxm}
  - {name: a100, backend: gpu, device: a100}
"""


def _gpu_calibration(tmp_path: Path, device: str) -> Path:
    path = tmp_path / f"{device}.json"
    path.write_text(
        json.dumps(
            {
                "device": device,
                "measured_on": "test fixture",
                "date": "2026-11-23",
                "command": "written by the test",
                "params": {"tensor_fraction": 0.5},
            }
        )
    )
    return path


def test_calibration_applies_to_its_device_only(
    host: Host, write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    """A GPU fit measured on an H100 is attached to the H100 system and not the A100."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    notes = apply_calibrations(sc, host, [_gpu_calibration(tmp_path, "h100-sxm")])
    assert notes == [f"h100: {tmp_path / 'h100-sxm.json'}"]
    assert sc.systems[0].options["calibration"].endswith("h100-sxm.json")
    assert "calibration" not in sc.systems[1].options
    eff, origin = host.backends.get("gpu").efficiency(sc.systems[0])  # type: ignore[attr-defined]
    assert eff.tensor_fraction == pytest.approx(0.5) and "h100-sxm" in origin


def test_calibration_for_no_system_is_refused(
    host: Host, write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    """A file measured on a device the scenario does not use is an error naming the systems."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    with pytest.raises(XpusimError, match="applies to no system"):
        apply_calibrations(sc, host, [_gpu_calibration(tmp_path, "l4")])
    with pytest.raises(XpusimError, match="no such file"):
        apply_calibrations(sc, host, [tmp_path / "missing.json"])
