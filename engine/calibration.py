"""Calibration files given on the command line (``xpusim run --calibration FILE``).

A calibration file is a backend's own format (the GPU backend's fitted efficiency, the
CPU backend's measured kernel rates). The engine does not read it: it asks each system's
backend whether the file applies to that system (``Backend.calibration_applies``, which
is false by default) and, when it does and the scenario names none, sets the system's
``options.calibration`` to it. A file that applies to no system is an error, so a typo'd
or mismatched file never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from xpusim.engine.errors import XpusimError

if TYPE_CHECKING:
    from xpusim.engine.host import Host
    from xpusim.engine.scenario import Scenario


def apply_calibrations(scenario: Scenario, host: Host, files: Sequence[Path]) -> list[str]:
    """Attach each file to the systems it applies to; return ``system: file`` notes."""
    notes: list[str] = []
    for path in files:
        if not Path(path).is_file():
            raise XpusimError(f"--calibration {path}: no such file. Check the path.")
        used = False
        for system in scenario.systems:
            backend = host.backends.get(system.backend)
            if "calibration" in system.options:
                continue
            if backend.calibration_applies(Path(path), system):
                system.options["calibration"] = str(path)
                notes.append(f"{system.name}: {path}")
                used = True
        if not used:
            names = ", ".join(f"{s.name} ({s.backend}/{s.device.name})" for s in scenario.systems)
            raise XpusimError(
                f"--calibration {path}: the file applies to no system of the scenario "
                f"({names}); a calibration is measured on one device and applies to systems "
                f"of that device only. Check the file's device, or set "
                f"systems[].options.calibration in the scenario."
            )
    return notes
