"""The result of a cost step (rented or owned hardware)."""

from __future__ import annotations

from dataclasses import dataclass, field

from xpusim.engine.device import Figure


@dataclass(frozen=True)
class Cost:
    """What the run cost in USD (``None`` with ``reason`` when not known), by part, the
    figures used, and the price ``tier`` and ``provider`` the device price came from (a
    catalog tier, ``scenario``, ``device`` or ``discounted on-demand``; empty when not
    known)."""

    cost_usd: float | None
    breakdown: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    tier: str = ""
    provider: str = ""
