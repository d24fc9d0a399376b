"""Carbon: energy times the grid intensity (the scenario's ``carbon_intensity``, else its
``region``'s published average, else the world average), plus optional embodied carbon
amortized over the devices' lifetime."""

from __future__ import annotations

from dataclasses import dataclass, field

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import GRID_INTENSITY, SCENARIO_SOURCE, EconomicsConfig
from xpusim.engine.economics.owned import lifetime_figure


@dataclass(frozen=True)
class Carbon:
    """Kilograms of CO2e (``None`` when the energy is not known), by part, and the figures
    used."""

    carbon_kg: float | None
    breakdown: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)


def grid_intensity(config: EconomicsConfig) -> Figure:
    """The grid's carbon intensity (kg CO2e per joule) the scenario implies."""
    if config.carbon_intensity is not None:
        return Figure(config.carbon_intensity, source=SCENARIO_SOURCE.format("carbon_intensity"))
    return GRID_INTENSITY[config.region or "world"]


def carbon(energy_j: float | None, config: EconomicsConfig, device_s: float) -> Carbon:
    """Operational carbon of ``energy_j`` plus embodied carbon of ``device_s`` device-seconds."""
    grid = grid_intensity(config)
    figs: dict[str, Figure] = {"economics.carbon_intensity": grid}
    if energy_j is None:
        return Carbon(None, figures=figs)
    kg = energy_j * grid.value
    parts = {"operational": kg}
    if config.embodied_kg_per_device is not None:
        lifetime = lifetime_figure(config)
        figs["economics.embodied_kg_per_device"] = Figure(
            config.embodied_kg_per_device, source=SCENARIO_SOURCE.format("embodied_kg_per_device")
        )
        figs["economics.lifetime"] = lifetime
        emb = config.embodied_kg_per_device * device_s / lifetime.value
        parts["embodied"] = emb
        kg += emb
    return Carbon(kg, parts, figs)
