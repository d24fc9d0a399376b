"""Per-GPU kernel efficiency fitted to public kernel measurements.

``plugins/gpu/kernel_fits.yaml`` is written by ``python benchmarks/fit_kernels.py`` from
the shared reference kernel tables (best-shape BF16/FP8 matmul rates, DeepGEMM FP8 GEMMs
by shape, FlashAttention-2 rates by head dim, length and causality, FlashMLA and STREAM
bandwidth). For each catalog GPU it holds the fitted
:class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` parameters (the best-shape
asymptotes, the GEMM shape mechanism, bandwidth, overhead, attention), what each was
fitted to and its in-sample and held-out error; for a parameter the GPU has no table for,
the nearest fitted architecture it inherits from; for one that is a property of the
architecture (whether the GEMM epilogue overlaps the main loop), that property.
The GPU backend applies them as the device's defaults, below the catalog's own
``efficiency`` figures, a calibration file and inline options.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

FITS_PATH = Path(__file__).with_name("kernel_fits.yaml")
"""The fitted file shipped with the plugin."""


@cache
def _devices(path: Path = FITS_PATH) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return dict(doc.get("devices") or {})


def fitted_params(device: str) -> dict[str, tuple[float, str]]:
    """``{parameter: (value, how)}`` for ``device``: ``how`` names the table it was fitted
    to with its held-out error, or the architecture it inherits from. Empty for a device
    the fits do not cover."""
    out: dict[str, tuple[float, str]] = {}
    for name, rec in _devices().get(device, {}).items():
        if "inherited_from" in rec:
            how = f"inherited from {rec['inherited_from']}'s fit (no table for {device})"
        elif "taken_from" in rec:
            how = f"no 8-bit table for {device}: {rec['taken_from']}"
        elif "assumed" in rec:
            how = f"stated property of the architecture: {rec['assumed']}"
        else:
            held = rec.get("held_out", {})
            err = (
                f"; held-out median |error| {100 * float(held['median_abs_error']):.1f}%"
                if held.get("rows")
                else ""
            )
            how = f"fitted to {rec.get('fitted_to', 'public kernel tables')}{err}"
        out[str(name)] = (float(rec["value"]), f"{how} (python benchmarks/fit_kernels.py)")
    return out
