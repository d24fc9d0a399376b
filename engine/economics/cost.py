"""The result of a cost step (rented or owned hardware)."""

from __future__ import annotations

from collections.abc import Sequence
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


def combine_costs(parts: Sequence[tuple[str, Cost]], figures: dict[str, Figure]) -> Cost:
    """The cost of a system whose devices are of several kinds, from each kind's cost by
    device name: the amounts add up, each part named with its device (``cloud rental
    (h200-sxm)``); the tier and provider are each kind's, joined with ``+`` where they
    differ. ``figures`` are the figures to record (each kind's, named apart by the
    caller). Not known when any kind's cost is not known, for every such kind's reason."""

    def joined(values: Sequence[str]) -> str:
        seen = [v for i, v in enumerate(values) if v and v not in values[:i]]
        return " + ".join(seen)

    tier = joined([c.tier for _, c in parts])
    provider = joined([c.provider for _, c in parts])
    reasons = [c.reason for _, c in parts if c.cost_usd is None]
    if reasons:
        return Cost(None, reason=" ".join(reasons), figures=figures, tier=tier, provider=provider)
    breakdown = {f"{k} ({name})": v for name, c in parts for k, v in c.breakdown.items()}
    total = sum(float(c.cost_usd or 0.0) for _, c in parts)
    return Cost(total, breakdown, figures=figures, tier=tier, provider=provider)
