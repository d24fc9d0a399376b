"""The efficiency parameters a GPU device runs with before any calibration of it: the
stated defaults of :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency`, then the device's
public kernel fit (:mod:`xpusim.plugins.gpu.kernel_fits`, or its base part's for a derived
device), then its catalog entry's own ``efficiency:`` block.

A run applies a calibration file and inline ``options.efficiency`` over these
(:meth:`xpusim.plugins.gpu.backend.GpuBackend.efficiency_sources`), and a calibration is
fitted starting from them (:func:`xpusim.plugins.gpu.measure.fit_params`), so that what
the fit minimises is what a run prices.
"""

from __future__ import annotations

from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu.calibration import Calibration, apply
from xpusim.plugins.gpu.efficiency import GpuEfficiency
from xpusim.plugins.gpu.kernel_fits import fitted_params

__all__ = ["DEFAULT_SOURCE", "builtin_params", "device_efficiency"]

DEFAULT_SOURCE = "default (stated assumption, plugins/gpu/efficiency.py)"
"""Where a parameter nothing else sets comes from."""


def device_efficiency(device: DeviceSpec) -> dict[str, float]:
    """The device's own :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` defaults (its
    catalog ``efficiency:`` block), checked against the parameter names."""
    valid = GpuEfficiency.param_names()
    bad = [k for k in device.efficiency if k not in valid]
    if bad:
        raise XpusimError(
            f"gpu device {device.name!r}: unknown efficiency parameter(s) "
            f"{', '.join(map(repr, bad))} in its catalog entry; valid: {', '.join(valid)}."
        )
    return {k: f.value for k, f in device.efficiency.items()}


def builtin_params(device: DeviceSpec) -> tuple[GpuEfficiency, dict[str, str]]:
    """``device``'s parameters before calibration and, for each, where its value came
    from."""
    sources = dict.fromkeys(GpuEfficiency.param_names(), DEFAULT_SOURCE)
    fits = fitted_params(device.name)
    if not fits and device.base is not None:
        # a scenario's derived device is its base part with other figures: the kernels
        # run as on the base, so the base's fits apply (and say so)
        fits = {
            k: (v, f"{how}; the fit of {device.base!r}, which {device.name!r} is derived from")
            for k, (v, how) in fitted_params(device.base).items()
        }
    values = {k: v for k, (v, _how) in fits.items()}
    sources.update({k: f"public kernel fit: {how}" for k, (_v, how) in fits.items()})
    own = device_efficiency(device)
    values.update(own)
    sources.update(
        {name: f"device {device.name!r} catalog: {device.efficiency[name].cited}" for name in own}
    )
    return apply(GpuEfficiency(), Calibration("", "", "", "", values)), sources
