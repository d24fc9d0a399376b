"""Figure dates: read from catalogs, checked, and shown beside prices and sources."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pluggy
import pytest
import yaml
from typer.testing import CliRunner

from tests.fakes import SRC, FakePlugin, fake_device
from xpusim import hookimpl
from xpusim.engine import cli
from xpusim.engine.device import DeviceSpec, Figure, PriceSpec, check_date, spec_from_mapping
from xpusim.engine.economics.pricebook import is_stale
from xpusim.engine.errors import XpusimError
from xpusim.engine.host import Host
from xpusim.engine.report import SourceRow, source_rows
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.results import RunResult, SystemResult

CHIP_YAML = """\
devices:
  chip-dated:
    vendor: Test
    description: a device with dated prices
    peak_flops: {{bf16: {{value: 100 TFLOP/s, source: test fixture}}}}
    memory_bytes: {{value: 16 GB, source: test fixture}}
    memory_bw: {{value: 1 TB/s, source: test fixture}}
    price:
      on_demand: {{value: 2.5 USD/h, source: test_price_entry, date: {on_demand}}}
      spot: {{value: 1.0 USD/h, source: test_price_entry}}
      reserved: {{value: 1.5 USD/h, source: test_price_entry, date: {reserved}}}
"""


def _vendor(*specs: DeviceSpec | Callable[[], DeviceSpec]) -> object:
    """A plugin registering ``specs`` for the fake backend (callables build them in the hook)."""

    class Vendor:
        @hookimpl
        def register_devices(self, register: Any) -> None:
            for s in specs:
                register(s() if callable(s) else s)

    return Vendor()


def _catalog_spec(tmp_path: Path, on_demand: str, reserved: str) -> DeviceSpec:
    """The chip of :data:`CHIP_YAML` read the way a plugin reads its YAML catalog."""
    p = tmp_path / "catalog.yaml"
    p.write_text(CHIP_YAML.format(on_demand=on_demand, reserved=reserved), encoding="utf-8")
    body = yaml.safe_load(p.read_text(encoding="utf-8"))["devices"]["chip-dated"]
    return spec_from_mapping("chip-dated", "fake", body, where=f"{p.name}:devices.chip-dated")


def _devices_json(
    monkeypatch: pytest.MonkeyPatch, pm: pluggy.PluginManager, spec: DeviceSpec
) -> dict[str, Any]:
    """``xpusim devices --json --backend fake`` on a host with ``spec`` registered; its row."""
    pm.register(FakePlugin(), name="fakes")
    pm.register(_vendor(spec), name="vendor")
    host = Host(pm)
    monkeypatch.setattr(cli, "_host", lambda: host)
    result = CliRunner().invoke(cli.app, ["devices", "--json", "--backend", "fake"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    return rows[spec.name]


def test_catalog_price_date_round_trips_to_devices_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pm: pluggy.PluginManager
) -> None:
    """A catalog price with a date (month, or a full day YAML reads as a date object) comes
    out of ``devices --json`` with its USD per hour, source, date and assumption; a price
    with no date is null."""
    spec = _catalog_spec(tmp_path, on_demand="2024-10", reserved="2025-01-01")
    assert spec.price.on_demand is not None and spec.price.on_demand.date == "2024-10"
    row = _devices_json(monkeypatch, pm, spec)
    prices = row["price_per_hour"]
    assert prices["on_demand"] == {
        "tier": "device",
        "provider": None,
        "usd_per_hour": pytest.approx(2.5),
        "source": "test_price_entry",
        "date": "2024-10",
        "stale": is_stale("2024-10", dt.date.today()),
        "assumption": None,
        "stand_in": None,
    }
    assert row["prices"]["neocloud"]["usd_per_hour"] == pytest.approx(2.5)
    assert row["offers"] == []
    assert prices["reserved"]["date"] == "2025-01-01"
    assert prices["spot"]["date"] is None
    assert prices["spot"]["usd_per_hour"] == pytest.approx(1.0)


def test_undated_price_figure_is_null_in_json_and_not_stated_in_the_table(
    monkeypatch: pytest.MonkeyPatch, pm: pluggy.PluginManager
) -> None:
    """A price Figure built without a date is null in ``devices --json``, and the table says
    "date not stated" beside its USD per hour."""
    spec = replace(fake_device("chip-undated"), price=PriceSpec(on_demand=Figure(3.0 / 3600, SRC)))
    row = _devices_json(monkeypatch, pm, spec)
    assert row["price_per_hour"]["on_demand"]["date"] is None
    assert row["price_per_hour"]["on_demand"]["usd_per_hour"] == pytest.approx(3.0)
    result = CliRunner().invoke(cli.app, ["devices", "--backend", "fake"], env={"COLUMNS": "200"})
    line = next(ln for ln in result.output.splitlines() if "chip-undated" in ln)
    assert "3.00" in line and "date not stated" in line


@pytest.mark.parametrize("bad", ["2024-13", "'2024-02-30'", "May 2024", "'20245'", "24-05"])
def test_malformed_catalog_date_names_device_and_field(tmp_path: Path, bad: str) -> None:
    """A catalog figure whose date is not an ISO YYYY, YYYY-MM or YYYY-MM-DD date is
    refused, naming the file, the device and the field."""
    with pytest.raises(XpusimError) as exc:
        _catalog_spec(tmp_path, on_demand="2024-10", reserved=bad)
    msg = str(exc.value)
    assert "catalog.yaml:devices.chip-dated.price.reserved.date" in msg
    assert "YYYY-MM" in msg


@pytest.mark.parametrize("loader", ["xpusim.plugins.gpu.catalog", "xpusim.plugins.tpu.backend"])
def test_builtin_catalog_loaders_read_and_check_dates(tmp_path: Path, loader: str) -> None:
    """The GPU and TPU catalog loaders carry a figure's date onto the spec and refuse a
    malformed one naming the device and field."""
    import importlib

    load = importlib.import_module(loader).load_catalog
    good = tmp_path / "good.yaml"
    good.write_text(CHIP_YAML.format(on_demand="2024-10", reserved="2025-01"), encoding="utf-8")
    spec = load(good)["chip-dated"]
    assert spec.price.reserved is not None and spec.price.reserved.date == "2025-01"
    assert spec.price.spot is not None and spec.price.spot.date == ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CHIP_YAML.format(on_demand="2024-00", reserved="2025-01"), encoding="utf-8")
    with pytest.raises(XpusimError, match=r"devices\.chip-dated\.price\.on_demand\.date"):
        load(bad)


def test_malformed_date_from_a_plugin_device_is_refused(pm: pluggy.PluginManager) -> None:
    """A device a plugin registers with a malformed price date is refused: the plugin is
    marked failed with a message naming the device and field, and the device is absent."""

    def bad_chip() -> DeviceSpec:
        price = PriceSpec(on_demand=Figure(1.0 / 3600, SRC, date="2024-13"))
        return replace(fake_device("chip-bad"), price=price)

    pm.register(FakePlugin(), name="fakes")
    pm.register(_vendor(bad_chip), name="vendor")
    host = Host(pm)
    error = host.failed_plugins()["vendor"]
    assert "'chip-bad'" in error and "price.on_demand.date" in error and "'2024-13'" in error
    assert "chip-bad" not in host.backends.get("fake").devices()


def test_check_date_accepts_iso_months_and_days() -> None:
    """check_date keeps empty, YYYY (a source that gives only the year), YYYY-MM and real
    YYYY-MM-DD dates, and refuses impossible
    days with the caller's location in the message."""
    assert check_date("", "x") == ""
    assert check_date("2023", "x") == "2023"
    assert check_date("2023-07", "x") == "2023-07"
    assert check_date("2024-02-29", "x") == "2024-02-29"
    with pytest.raises(XpusimError, match=r"^here: date '2023-02-29'"):
        check_date("2023-02-29", "here")


def test_report_sources_show_a_price_date_when_known() -> None:
    """'Assumptions and sources' shows a dated figure's date, says "date not stated" for an
    undated price, and adds nothing to other undated figures."""
    figures = {
        "price.on_demand": Figure(2.0 / 3600, "test_price_entry", date="2024-10"),
        "price.spot": Figure(1.0 / 3600, "test_price_entry"),
        "memory_bw": Figure(1e12, SRC),
    }
    system = SystemResult(name="sys", backend="fake", device="chip", count=1, figures=figures)
    rows = {r.name: r for r in source_rows([system])}
    assert rows["price.on_demand"].date_note == "as of 2024-10"
    assert rows["price.spot"].date_note == "date not stated"
    assert rows["memory_bw"].date_note == ""
    assert isinstance(rows["memory_bw"], SourceRow)
    md = render_markdown(RunResult(scenario="dates", seed=0, version="test", systems=[system]))
    assert "test_price_entry; as of 2024-10" in md
    assert "test_price_entry; date not stated" in md


def test_shipped_prices_live_in_the_price_catalog_with_their_dates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device catalogs carry no prices: the H100's AWS on-demand price is the price
    catalog's, dated 2023 as its entry (aws_p5_ondemand) states, and ``devices --json``
    shows what runs use per tier, with provider and date, flagging those older than a
    year on the reference date."""
    from xpusim.engine.economics.pricebook import price_book
    from xpusim.engine.host import default_host
    from xpusim.plugins.gpu.catalog import CATALOG_PATH, load_catalog

    cat = load_catalog(CATALOG_PATH)
    assert all(s.price == PriceSpec() for s in cat.values())
    aws = [o for o in price_book()["h100-sxm"] if o.provider == "aws" and o.tier == "hyperscaler"]
    assert aws[0].source == "aws_p5_ondemand" and aws[0].as_of == "2023"
    host = default_host()
    monkeypatch.setattr(cli, "_host", lambda: host)
    args = ["devices", "--json", "--backend", "gpu", "--price-date", "2026-12-05"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    h100 = {r["name"]: r for r in json.loads(result.output)}["h100-sxm"]
    on_demand = h100["price_per_hour"]["on_demand"]
    assert on_demand["provider"] == "azure" and on_demand["date"] == "2026-06-11"
    assert on_demand["stale"] is False and on_demand["tier"] == "hyperscaler"
    assert h100["prices"]["purchase"]["stale"] is True
    assert any(o["source"] == "aws_p5_ondemand" and o["stale"] for o in h100["offers"])
