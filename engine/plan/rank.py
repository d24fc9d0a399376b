"""Ranking a plan's configurations and writing its answer: plan.json, plan.md and the
short table the command prints.

Configurations that meet every SLO are ranked by cost per hour, then cost per million
tokens (when the plan fixes the rate), or by the rate they sustain, then cost per hour
(when it searches for the highest rate). The best per device and the overall best are
the first of each ranking; the answer sentence names the best, the price it used (with
its source and date), and the next cheaper configuration of its shape that was
simulated and missed. :func:`price_warnings` flags, as a run's report does, a ranking
whose prices come from different tiers or providers, or from sources older than a year.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from xpusim.engine.economics.pricebook import mixed_tiers_warning
from xpusim.engine.report.escape import terminal

RANKED_SHOWN = 10
"""Configurations the printed table shows."""


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get("metrics", {}).get(key) if key in row.get("metrics", {}) else row.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("inf")


def ranked(rows: Sequence[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    """The best configuration of each shape that met every SLO, best first."""
    order = _ordered([r for r in rows if r.get("met")], mode)
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in order:
        key = (r["device"], r["tensor"], r["pipeline"], r["max_batch"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _ordered(met: list[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    if mode == "rate":
        return sorted(
            met, key=lambda r: (-_num(r, "rate_per_s"), _num(r, "usd_per_hour"), r["device"])
        )
    return sorted(
        met,
        key=lambda r: (
            _num(r, "usd_per_hour"),
            _num(r, "cost_per_million_tokens_usd"),
            r["device"],
            r["tensor"],
            r["max_batch"],
        ),
    )


def best_per_device(order: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The first configuration of each device in ``order``."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in order:
        out.setdefault(str(r["device"]), r)
    return out


def describe(r: Mapping[str, Any]) -> str:
    """A configuration in words: ``4 × h100-sxm (tensor 1, 4 replicas, max_batch 128)``."""
    par = f"tensor {r['tensor']}" + (f", pipeline {r['pipeline']}" if r["pipeline"] > 1 else "")
    return (
        f"{r['count']} × {r['device']} ({par}, {r['replicas']} replica"
        f"{'s' if r['replicas'] != 1 else ''}, max_batch {r['max_batch']})"
    )


def next_cheaper(
    rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The simulated configuration of ``best``'s shape with one replica fewer, if any."""
    keys = ("device", "tensor", "pipeline", "max_batch")
    for r in rows:
        if all(r.get(k) == best[k] for k in keys) and r.get("replicas") == best["replicas"] - 1:
            return r
    return None


def answer(
    rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None, mode: str, load: str
) -> str:
    """The one-line answer to the plan's question."""
    if best is None:
        return (
            f"No configuration tried meets every SLO {load}. Widen the search: a higher "
            "plan.count.max or budget_usd_per_hour, more devices, larger tensor degrees, or a "
            "looser SLO."
        )
    price = best["price"]
    date = price.get("date") or "date not stated"
    m = best.get("metrics", {})
    text = (
        f"{describe(best)} at {best['usd_per_hour']:,.2f} USD/h "
        f"({price['usd_per_device_hour']:.4g} USD per device-hour, {price['cited']}, {date})"
    )
    if mode == "rate":
        text = f"Highest rate within the SLOs: {best['rate_per_s']:.3g} req/s on " + text
    else:
        text = f"Cheapest within the SLOs {load}: " + text
    if m.get("cost_per_million_tokens_usd") is not None:
        text += f", {m['cost_per_million_tokens_usd']:.3g} USD per million tokens"
    if m.get("slo_attainment") is not None:
        text += f"; {m['slo_attainment']:.1%} of requests within the SLOs"
    if mode != "rate":
        prev = next_cheaper(rows, best)
        if prev is not None:
            att = prev.get("metrics", {}).get("slo_attainment")
            shown = f"{att:.1%}" if isinstance(att, float) else "no"
            text += f"; one replica fewer meets them for only {shown} of requests"
    return text + "."


def _priced(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each simulated device's price (one per device: a plan prices a device once)."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if "replicas" in r and isinstance(r.get("price"), Mapping):
            out.setdefault(str(r["device"]), r["price"])
    return out


def _grouped(priced: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for device, price in sorted(priced.items()):
        if price.get(key):
            groups.setdefault(str(price[key]), []).append(device)
    return groups


def price_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warnings about the prices the ranking compares (empty when there is nothing to
    flag): devices priced from different tiers, or by different providers, cannot be
    compared like for like; a price older than a year may no longer hold."""
    priced = _priced(rows)
    out = []
    tiers = [(d, p.get("tier")) for d, p in sorted(priced.items())]
    mixed = mixed_tiers_warning(tiers, thing="device", block="plan")
    if mixed:
        out.append(mixed)
    providers = _grouped(priced, "provider")
    if len(providers) > 1:
        parts = "; ".join(f"{', '.join(d)} by {p}" for p, d in providers.items())
        out.append(
            f"Warning: the devices were priced by different providers ({parts}); set "
            "plan.provider to compare one provider's prices."
        )
    stale = {d: p for d, p in sorted(priced.items()) if p.get("stale")}
    if stale:
        ref = next(iter(stale.values())).get("reference_date") or "today"
        parts = ", ".join(f"{d} ({p.get('date')})" for d, p in stale.items())
        out.append(
            f"Warning: prices older than a year on {ref}: {parts}; check for newer ones "
            "(economics.price_date sets the reference date)."
        )
    return out


def table_rows(order: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The printed table's rows for the best ``RANKED_SHOWN`` configurations."""
    out = []
    for i, r in enumerate(order[:RANKED_SHOWN], 1):
        m = r.get("metrics", {})
        out.append(
            [
                str(i),
                str(r["device"]),
                str(r["count"]),
                f"{r['tensor']}x{r['pipeline']}",
                str(r["max_batch"]),
                "-" if r.get("rate_per_s") is None else f"{r['rate_per_s']:.3g}",
                f"{r['usd_per_hour']:,.2f}",
                _fmt(m.get("cost_per_million_tokens_usd"), "{:.3g}"),
                _fmt(m.get("ttft_p99_s"), "{:.3g}"),
                _fmt(m.get("slo_attainment"), "{:.1%}"),
            ]
        )
    return out


TABLE_HEAD = (
    "#",
    "device",
    "count",
    "TPxPP",
    "batch",
    "req/s",
    "$/h",
    "$/Mtok",
    "TTFT p99 s",
    "SLO met",
)
"""Column heads of the printed table."""


def _fmt(v: Any, pattern: str) -> str:
    return "-" if not isinstance(v, int | float) else pattern.format(v)


def markdown(doc: Mapping[str, Any]) -> str:
    """``plan.md``: the answer, the ranking, the best per device and what was pruned."""
    lines = [f"# Plan: {doc['scenario']}", "", f"**Answer:** {doc['answer']}", ""]
    for warning in doc.get("warnings", []):
        lines += [f"> **{warning}**", ""]
    lines += [
        f"{doc['simulations']} simulations of {doc['shapes']} configuration shapes, "
        f"{len(doc['pruned'])} shapes pruned before simulating, in {doc['wall_s']:.1f} s "
        f"on {doc['executor']} ({doc['workers']} workers).",
        "",
        "## Configurations that meet every SLO, best first",
        "",
        "| " + " | ".join(TABLE_HEAD) + " |",
        "|" + "---|" * len(TABLE_HEAD),
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in doc["table"]]
    if not doc["table"]:
        lines.append("| none | " + " | " * (len(TABLE_HEAD) - 2) + " |")
    lines += ["", "## Best per device", ""]
    for device, r in doc["best_per_device"].items():
        lines.append(f"- **{device}**: {describe(r)}, {r['usd_per_hour']:,.2f} USD/h")
    if doc["pruned"]:
        lines += ["", "## Pruned before simulating", ""]
        for r in doc["pruned"]:
            shape = ", ".join(f"{k} {r[k]}" for k in ("tensor", "pipeline", "max_batch") if k in r)
            lines.append(f"- {r['device']}{' (' + shape + ')' if shape else ''}: {r['pruned']}")
    return "\n".join(lines) + "\n"


def rich_table(doc: Mapping[str, Any]) -> Any:
    """The ranked configurations as a rich table titled with the one-line answer."""
    from rich.table import Table  # imported on use: the command line starts without rich

    caption = "\n".join(terminal(line) for line in [doc["answer"], *doc.get("warnings", [])])
    t = Table(title=terminal(f"plan {doc['scenario']}"), caption=caption)
    for head in TABLE_HEAD:
        t.add_column(head, justify="left" if head == "device" else "right")
    for row in doc["table"]:
        t.add_row(*(terminal(c) for c in row))
    return t
