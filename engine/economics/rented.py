"""Rented hardware (``cloud`` on-demand, ``spot``, ``reserved``): the device-hour price
times device-hours; electricity and hosting are in the price."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpusim.engine.device import Figure
from xpusim.engine.economics.config import HOUR_S, EconomicsConfig
from xpusim.engine.economics.cost import Cost

if TYPE_CHECKING:
    from xpusim.engine.device import DeviceSpec


def price_figure_name(tier: str) -> str:
    """The dotted name of a rental tier's figure (``cloud`` is the on-demand price)."""
    return "price.on_demand" if tier == "cloud" else f"price.{tier}"


def rent_price(
    spec: DeviceSpec, config: EconomicsConfig, tier: str
) -> tuple[float | None, Figure | None, str]:
    """USD per device-second of ``tier`` (cloud, spot, reserved), its figure, and why not."""
    price = spec.price
    cloud = price.on_demand
    if tier == "cloud":
        if cloud is None:
            return None, None, (f"{spec.name} has no published on-demand price (price.on_demand)")
        return cloud.value, cloud, ""
    direct = price.spot if tier == "spot" else price.reserved
    if direct is not None:
        return direct.value, direct, ""
    discount = config.spot_discount if tier == "spot" else config.reserved_discount
    if discount is not None and cloud is not None:
        value = cloud.value * (1.0 - discount)
        return (
            value,
            Figure(
                value,
                assumption=f"{tier} price = on-demand {cloud.value * HOUR_S:.4g} USD/h "
                f"({cloud.cited}) less economics.{tier}_discount {discount:.0%}",
            ),
            "",
        )
    return (
        None,
        None,
        (
            f"{spec.name} has no published {tier} price (price.{tier})"
            + ("" if cloud is None else f" and the scenario sets no economics.{tier}_discount")
        ),
    )


def rented_cost(spec: DeviceSpec, config: EconomicsConfig, device_s: float) -> Cost:
    """The rental bill of ``device_s`` device-seconds at the scenario's pricing tier."""
    rate, fig, why = rent_price(spec, config, config.pricing)
    if rate is None or fig is None:
        return Cost(None, reason=f"Rented cost is not known: {why}.")
    part = f"{config.pricing} rental"
    amount = rate * device_s
    return Cost(amount, {part: amount}, figures={price_figure_name(config.pricing): fig})
