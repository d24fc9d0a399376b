"""The verdict of a run: which systems count, and the one sentence that answers the question.

A system that misses the scenario's SLOs is not a candidate, however cheap or efficient it
looks: the ★ marks, best points and Pareto fronts consider only the systems that meet the
SLOs (:func:`candidates`), and say so when none does. At a fixed request rate every
system that keeps up delivers the same tokens per second, so its cost per million tokens
is its price over the demand; the simulation decides who passes, and the headline
(:func:`headline`) says both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from xpusim.engine.capacity import meets_slo
from xpusim.engine.economics.breakeven import CHOICE
from xpusim.engine.economics.pricebook import mixed_tiers_warning
from xpusim.engine.metrics import SYSTEM_KEYS
from xpusim.engine.results import hardware_label

COST_KEYS = ("cost_per_million_tokens_usd", "cost_usd")
"""The cost figures a verdict ranks by, in order of preference."""

SAME_THROUGHPUT = 0.05
"""Systems whose throughputs lie within this share of each other deliver the same load."""

TIE = 1e-9
"""Relative difference within which two figures are the same figure (rounding noise)."""


def tie_tolerance(systems: Sequence[SystemLike], metric: str) -> float:
    """The relative difference within which the best value of ``metric`` among ``systems``
    is shared, so that no ★ is given: :data:`SAME_THROUGHPUT` for a throughput
    (``throughput_*``) when every system with a value was offered the same load (an
    ``offered_rate_per_s`` within that share of the others'), since a system that keeps up
    delivers the offered load and its measured throughput differs from another's only by
    when the run's last sample or request finished; :data:`TIE` otherwise."""
    if not metric.startswith("throughput_"):
        return TIE
    valued = [s for s in systems if _value(s, metric) is not None]
    offered = [_value(s, "offered_rate_per_s") for s in valued]
    rates = [r for r in offered if r is not None and r > 0]
    if len(valued) < 2 or len(rates) != len(valued):
        return TIE
    return SAME_THROUGHPUT if max(rates) <= (1 + SAME_THROUGHPUT) * min(rates) else TIE


class SystemLike(Protocol):
    """What a verdict reads of a system (a :class:`~xpusim.engine.results.SystemResult`)."""

    name: str
    device: str
    count: int
    status: str
    metrics: dict[str, Any]

    @property
    def hardware(self) -> str:
        """What it runs on, in words (``h100-sxm × 8``)."""
        ...


S = TypeVar("S", bound=SystemLike)
"""A system type a verdict reads."""


def has_slo(systems: Sequence[SystemLike]) -> bool:
    """Whether any ok system carries an SLO verdict (the workload has SLOs)."""
    return any(s.status == "ok" and meets_slo(s.metrics) is not None for s in systems)


def candidates(systems: Sequence[S]) -> list[S]:
    """The ok systems a verdict may name: those meeting the SLOs where there are SLOs."""
    ok = [s for s in systems if s.status == "ok"]
    if not has_slo(systems):
        return ok
    return [s for s in ok if meets_slo(s.metrics)]


def _value(s: SystemLike, key: str) -> float | None:
    v = s.metrics.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _cost_key(systems: Sequence[SystemLike]) -> str | None:
    for key in COST_KEYS:
        if any(_value(s, key) is not None for s in systems):
            return key
    return None


def _label(s: SystemLike) -> str:
    return f"{s.name} ({s.hardware})"


def _misses(systems: Sequence[SystemLike]) -> str:
    miss = [s for s in systems if s.status == "ok" and meets_slo(s.metrics) is False]
    if not miss:
        return ""
    parts = []
    for s in miss:
        att = _value(s, "slo_attainment")
        parts.append(f"{s.name} ({att:.1%})" if att is not None else s.name)
    return f" Missing the SLOs (share of requests within them): {', '.join(parts)}."


def _overloads(systems: Sequence[SystemLike]) -> str:
    over = [s for s in systems if s.status == "ok" and s.metrics.get("overloaded") is True]
    if not over:
        return ""
    parts = []
    for s in over:
        rate = _value(s, "sustainable_rate_per_s")
        parts.append(f"{s.name} sustains at most about {rate:.3g} req/s" if rate else s.name)
    return (
        " Overloaded (the queue grows for the whole run, so its latencies are not a steady "
        f"state): {'; '.join(parts)}."
    )


def _same_load_note(systems: Sequence[SystemLike], key: str) -> str:
    """Say that cost per token is price over demand when every keeping-up system delivers
    the same throughput at a fixed offered rate."""
    if key != "cost_per_million_tokens_usd":
        return ""
    keep_up = [
        s
        for s in systems
        if s.status == "ok"
        and s.metrics.get("offered_rate_per_s") is not None
        and s.metrics.get("overloaded") is False
    ]
    tputs = [v for s in keep_up if (v := _value(s, "throughput_tokens_per_s")) is not None]
    if len(tputs) < 2 or max(tputs) > (1 + SAME_THROUGHPUT) * min(tputs):
        return ""
    return (
        " At this fixed request rate the systems that keep up deliver the same tokens/s, so "
        "cost per million tokens is each one's price over the demand; the simulation decides "
        "which of them meet the SLOs."
    )


def headline(systems: Sequence[SystemLike]) -> str:
    """One paragraph that answers the run's question, for the top of every output."""
    ok = [s for s in systems if s.status == "ok"]
    if not ok:
        return "No system ran; see each system's status for why."
    slo = has_slo(systems)
    pool = candidates(systems)
    tail = _misses(systems) + _overloads(systems)
    if slo and not pool:
        best = max(ok, key=lambda s: _value(s, "slo_attainment") or 0.0)
        att = _value(best, "slo_attainment") or 0.0
        return (
            "No system meets the SLOs, so none is marked best; the closest is "
            f"{_label(best)} with {att:.1%} of requests within them." + tail
        )
    key = _cost_key(pool)
    scope = "meets the SLOs" if slo else "ran (the scenario sets no SLO)"
    if key is None:
        names = ", ".join(_label(s) for s in pool)
        return (
            f"Systems that {scope.replace('meets', 'meet')}: {names}; no cost is known to rank them."
            + tail
        )
    priced = [(v, s) for s in pool if (v := _value(s, key)) is not None]
    if not priced:
        return f"No system that {scope} has a known cost." + tail
    low = min(v for v, _ in priced)
    tol = 1e-9 * abs(low)
    tied = [s for v, s in priced if abs(v - low) <= tol]
    unit = "USD per million tokens" if key == "cost_per_million_tokens_usd" else "USD for the run"
    if len(tied) > 1:
        lead = f"{' and '.join(_label(s) for s in tied)} tie as the cheapest system that {scope}"
    else:
        lead = f"{_label(tied[0])} is the cheapest system that {scope}"
    return f"{lead}: {low:,.3g} {unit}." + tail + _same_load_note(systems, key)


def ok_label(s: SystemLike, short: bool = False) -> str:
    """The status of an ok system: ``ok``, or that it is overloaded and (unless ``short``)
    the rate it sustains."""
    if s.metrics.get("overloaded") is not True:
        return "ok"
    rate = _value(s, "sustainable_rate_per_s")
    if short or rate is None:
        return "overloaded"
    return f"overloaded: sustains at most about {rate:.3g} req/s"


def rent_or_buy_notes(systems: Sequence[SystemLike]) -> str:
    """One line per system whose rent-versus-buy break-even is known."""
    lines = []
    for s in systems:
        hours = _value(s, "break_even_hours_per_year")
        if s.status != "ok" or hours is None:
            continue
        line = f"{s.name}: buying beats renting on demand above {hours:,.0f} busy hours a year"
        choice = s.metrics.get("cheaper_choice")
        if isinstance(choice, str) and choice in CHOICE:
            line += f"; at the scenario's busy hours the cheaper choice is to {CHOICE[choice]}"
            months = _value(s, "break_even_months")
            if months is not None:
                line += f", which pays back after {months:.3g} months"
        else:
            line += " (set economics.busy_hours_per_year for a verdict)"
        lines.append(line + ".")
    return "\n".join(lines)


def mixed_tiers(systems: Sequence[SystemLike]) -> str:
    """A warning when the systems were priced from different price tiers (their
    ``price_tier``), else ``""``."""
    return mixed_tiers_warning(
        [(s.name, s.metrics.get("price_tier")) for s in systems if s.status == "ok"]
    )


def price_note(used: Mapping[str, Any] | None) -> str:
    """The price a system's cost used, with its source and date, flagged when it is older
    than a year (``details["price_used"]``); empty when no price was used. A price of one
    device of several (its ``device``) says which."""
    if not used:
        return ""
    date = used.get("date")
    when = f"as of {date}" if date else "date not stated"
    which = f" for {used['device']}" if used.get("device") else ""
    text = f"price used{which}: {used['usd']:,.4g} {used['unit']} ({used['cited']}; {when})"
    if used.get("stale"):
        text += f", older than a year on {used['reference_date']}: check for a newer one"
    return text + "."


def price_notes(details: Mapping[str, Any]) -> str:
    """The prices a system's cost used: each device's (``details["prices_used"]``) for a
    system of several devices, else its one price (:func:`price_note`)."""
    by_device = details.get("prices_used")
    if isinstance(by_device, Mapping) and by_device:
        return " ".join(price_note(u) for u in by_device.values())
    return price_note(details.get("price_used"))


def summary_systems(summary: Mapping[str, Any]) -> list[SystemLike]:
    """The systems of a ``summary.json`` document as objects a verdict reads."""
    return [_Row(s) for s in summary.get("systems", [])]


class _Row:
    """A ``summary.json`` system object seen as a :class:`SystemLike`."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.name = str(d.get("name", ""))
        self.device = str(d.get("device", ""))
        self.count = int(d.get("count", 0) or 0)
        self.status = str(d.get("status", ""))
        self.hardware = str(d.get("hardware") or hardware_label(self.device, self.count))
        self.metrics = {k: v for k, v in d.items() if k not in SYSTEM_KEYS}
