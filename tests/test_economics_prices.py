"""The tiered price catalog: every offer sourced and dated as its entry states, and the
choice of one price by tier and provider."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import FIGURES
from xpusim.engine.device import Figure, PriceSpec
from xpusim.engine.economics import HOUR_S, EconomicsConfig
from xpusim.engine.economics.pricebook import (
    TIERS,
    Offer,
    is_stale,
    load_prices,
    pick,
    price_book,
)
from xpusim.engine.economics.rented import catalog_price
from xpusim.engine.host import default_host


def test_every_offer_names_a_tier_provider_and_source() -> None:
    """Each shipped offer has a known tier, a provider and a reference-figures id."""
    book = load_prices()
    assert book
    ids = None
    if FIGURES.exists():
        ids = {e["id"] for e in yaml.safe_load(FIGURES.read_text(encoding="utf-8"))["entries"]}
    for device, offers in book.items():
        for o in offers:
            assert o.tier in TIERS and o.provider and o.source, (device, o)
            if ids is not None:
                assert o.source in ids, f"{device}: unknown figures id {o.source!r}"
            assert o.value > 0


def test_the_devices_the_issue_named_unpriced_now_have_a_price() -> None:
    """The L4, L40S, B200 and MI300X have an on-demand price; the H100's on-demand default
    is no longer AWS's undated pre-cut list price but the latest dated hyperscaler one."""
    host = default_host()
    for name in ("l4", "l40s", "b200", "mi300x"):
        spec = host.device("gpu", name)
        fig, why = catalog_price(spec, EconomicsConfig(), "cloud")
        assert fig is not None, why
    h100 = host.device("gpu", "h100-sxm")
    fig, _ = catalog_price(h100, EconomicsConfig(), "cloud")
    assert fig is not None and fig.date == "2026-06-11" and "azure" in fig.source


def test_every_catalog_device_in_the_book_is_a_real_device() -> None:
    """A device name in the price catalog names a device some backend registers."""
    host = default_host()
    known = {
        n
        for b in host.backends.names()
        for spec in host.backends.get(b).devices().values()
        for n in (spec.name, *spec.aliases)
    }
    planned = {
        "h200-sxm",
        "gb200",
        "b300",
        "gb300",
        "mi325x",
        "mi355x",
        "gaudi3",
        "trainium2",
        "tpu-v7",
    }
    assert set(price_book()) <= known | planned


def test_tier_and_provider_choose_the_offer() -> None:
    """A named tier and provider pick that offer; a provider with no offer for the device
    leaves the price unknown with a sentence naming those that have one."""
    spec = default_host().device("gpu", "h100-sxm")
    fig, _ = catalog_price(spec, EconomicsConfig(tier="neocloud", provider="lambda"), "cloud")
    assert fig is not None and fig.value * HOUR_S == pytest.approx(2.99)
    fig, _ = catalog_price(spec, EconomicsConfig(tier="spot", provider="crusoe"), "spot")
    assert fig is not None and fig.value * HOUR_S == pytest.approx(1.60)
    fig, why = catalog_price(spec, EconomicsConfig(tier="neocloud", provider="aws"), "cloud")
    assert fig is None and "lambda (neocloud)" in why


def test_a_scenario_price_wins_over_the_catalog() -> None:
    """A price the scenario sets for a system is used as given."""
    spec = default_host().device("gpu", "h100-sxm")
    mine = Figure(1.0 / HOUR_S, source="scenario systems.0.pricing.cloud")
    fig, _ = catalog_price(
        replace(spec, price=PriceSpec(on_demand=mine)), EconomicsConfig(), "cloud"
    )
    assert fig == mine


def test_pick_prefers_the_latest_date_then_the_lowest_price() -> None:
    """Among one tier's offers the most recently dated wins, an undated one last."""
    offers = [
        Offer("x", "neocloud", "a", 1.0, "s", ""),
        Offer("x", "neocloud", "b", 3.0, "s", "2026-01"),
        Offer("x", "neocloud", "c", 2.0, "s", "2025"),
    ]
    chosen = pick(offers, ("neocloud",), None)
    assert chosen is not None and chosen.provider == "b"
    assert pick(offers, ("spot",), None) is None


def test_stale_prices_are_older_than_a_year() -> None:
    """A year alone counts from its last day; no date is not stale but unknown."""
    today = dt.date(2026, 12, 5)
    assert is_stale("2023-08", today) is True
    assert is_stale("2025", today) is False
    assert is_stale("2025-11", today) is True
    assert is_stale("", today) is None


def test_unknown_provider_and_contradicting_tier_are_refused() -> None:
    """A misspelled provider lists the known ones; a tier that contradicts pricing says so."""
    with pytest.raises(ValidationError, match="nebius"):
        EconomicsConfig(provider="nebulus")
    with pytest.raises(ValidationError, match="make them agree"):
        EconomicsConfig(tier="purchase", pricing="cloud")


def test_the_report_names_the_price_used_and_flags_an_old_one() -> None:
    """The price a cost used is recorded with its citation and date; one older than a year
    on the reference date is flagged, an undated one says so."""
    from xpusim.engine.economics import price_used
    from xpusim.engine.report.verdict import price_note

    cfg = EconomicsConfig(price_date=dt.date(2026, 12, 5))
    old = price_used({"price.on_demand": Figure(1.0 / HOUR_S, "src_a", date="2023")}, cfg)
    assert old is not None and old["stale"] is True and old["usd"] == pytest.approx(1.0)
    assert "older than a year on 2026-12-05" in price_note(old)
    undated = price_used({"price.on_demand": Figure(1.0 / HOUR_S, "src_b")}, cfg)
    assert undated is not None and undated["stale"] is None
    assert "date not stated" in price_note(undated)


def test_a_named_provider_binds_the_rental_not_the_purchase() -> None:
    """With provider aws the rental is AWS's; the purchase price a break-even needs comes
    from whoever publishes one (AWS sells no H100s)."""
    spec = default_host().device("gpu", "h100-sxm")
    cfg = EconomicsConfig(provider="aws")
    rent, _ = catalog_price(spec, cfg, "cloud")
    buy, _ = catalog_price(spec, cfg, "owned")
    assert rent is not None and "aws" in rent.source
    assert buy is not None and buy.value == pytest.approx(27_500)


def test_a_stand_in_price_is_used_only_where_the_device_has_none() -> None:
    """The A100 80GB's GCP spot price is the A100 40GB's (a stand-in): AWS's own A100 80GB
    spot price wins by default, the stand-in only when GCP is named."""
    spec = default_host().device("gpu", "a100-sxm-80gb")
    fig, _ = catalog_price(spec, EconomicsConfig(pricing="spot"), "spot")
    assert fig is not None and "aws" in fig.source
    fig, _ = catalog_price(spec, EconomicsConfig(pricing="spot", provider="gcp"), "spot")
    assert fig is not None and fig.value * HOUR_S == pytest.approx(0.88)
    assert "A100 40GB" in fig.source and fig.date == "2022"


def test_mixed_tiers_are_named_in_a_warning() -> None:
    """Systems priced from different tiers get a warning naming each; one tier none."""
    from xpusim.engine.economics.pricebook import mixed_tiers_warning

    text = mixed_tiers_warning([("h100", "hyperscaler"), ("mi300x", "neocloud"), ("x", None)])
    assert "h100 at hyperscaler on-demand" in text and "mi300x at neocloud on-demand" in text
    assert "economics.tier" in text
    assert mixed_tiers_warning([("a", "neocloud"), ("b", "neocloud")]) == ""
