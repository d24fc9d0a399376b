"""A plan flags the prices it compares, as a run's report does: devices priced from
different tiers or by different providers, and prices older than a year, are named in
plan.json, plan.md and the printed table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tests.test_run_pipeline import Inline
from xpusim.engine.host import Host
from xpusim.engine.plan import rank
from xpusim.engine.plan.search import run_plan

REPO = Path(__file__).resolve().parents[1]
PLAN_8B = REPO / "scenarios" / "plan-llama3-8b.yaml"


def _row(device: str, tier: str, provider: str, date: str | None, stale: bool | None) -> Any:
    price = {
        "usd_per_device_hour": 2.0,
        "cited": "test",
        "date": date,
        "tier": tier,
        "provider": provider,
        "stale": stale,
        "reference_date": "2026-12-06",
    }
    return {"device": device, "replicas": 1, "price": price}


def test_one_tier_and_provider_with_recent_prices_gives_no_warning() -> None:
    """Every device priced at one tier, by one provider, within a year: nothing to flag."""
    rows = [_row("a", "neocloud", "x", "2026-06", False), _row("b", "neocloud", "x", None, None)]
    assert rank.price_warnings(rows) == []


def test_mixed_tiers_providers_and_old_prices_are_each_named() -> None:
    """Devices priced at two tiers, by two providers, one price over a year old: one
    warning each, naming the devices and the way out."""
    rows = [
        _row("h100", "hyperscaler", "azure", "2026-06", False),
        _row("mi300x", "neocloud", "crusoe", "2024-01", True),
    ]
    tiers, providers, old = rank.price_warnings(rows)
    assert "h100 at hyperscaler on-demand" in tiers and "mi300x at neocloud on-demand" in tiers
    assert "plan.tier" in tiers
    assert "h100 by azure" in providers and "plan.provider" in providers
    assert "mi300x (2024-01)" in old and "2026-12-06" in old


def test_a_plan_over_mixed_tiers_warns_in_every_output(host: Host, tmp_path: Path) -> None:
    """A plan whose devices' cheapest on-demand prices come from a hyperscaler and a GPU
    cloud says so in plan.json, plan.md and the printed table's caption; naming one tier
    removes the tier warning."""
    sets = ["plan.devices=[h100-sxm, mi300x]", "workload.arrivals.count=300", "plan.probes=2"]
    doc = run_plan(PLAN_8B, host, Inline(), tmp_path / "p", overrides=sets).doc
    tiers = {r["device"]: r["price"]["tier"] for r in doc["configurations"] if "replicas" in r}
    assert tiers == {"h100-sxm": "hyperscaler", "mi300x": "neocloud"}
    assert any("different tiers" in w for w in doc["warnings"])
    md = (tmp_path / "p" / "plan.md").read_text(encoding="utf-8")
    assert all(w in md for w in doc["warnings"])
    console = Console(width=400, record=True)
    console.print(rank.rich_table(doc))
    assert "different tiers" in console.export_text()
    one = run_plan(PLAN_8B, host, Inline(), tmp_path / "q", overrides=[*sets, "plan.tier=neocloud"])
    assert not any("different tiers" in w for w in one.doc["warnings"])
