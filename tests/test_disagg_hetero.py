"""Disaggregated pools of different devices: each pool priced on its own chip, the KV
moved over the network between them, compared with colocated serving in one scenario."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from xpusim.engine.errors import XpusimError
from xpusim.engine.host import Host
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads.serving.disagg import Disaggregation, Link, pools

SCENARIO = """
name: hetero
seed: 3
model: {family: llama, preset: llama-3-8b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 8/s, count: 160, prompt_tokens: {dist: lognormal, median: 2000, sigma: 0.4},
             output_tokens: {dist: lognormal, median: 200, sigma: 0.4}}
  disaggregation: {prefill: {count: 2}, decode: DECODE, link: LINK, systems: [h100-h100, h100-h200]}
systems:
  - {name: colocated, backend: gpu, device: h100-sxm, count: 4}
  - {name: h100-h100, backend: gpu, device: h100-sxm, count: 4}
  - {name: h100-h200, backend: gpu, device: h100-sxm, count: 4}
"""


def _runs(
    host: Host, write_yaml: Callable[[str, str], Path], decode: str, link: str = "scale-out"
) -> dict[str, Any]:
    text = SCENARIO.replace("DECODE", decode).replace("LINK", link)
    res = simulate(load_scenario(write_yaml(text, "hetero.yaml"), host), host)
    return {r.name: r for r in res.systems}


def test_a_decode_pool_of_h200s_decodes_faster_than_one_of_h100s(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Beside a colocated system, the split whose decode pool is H200s (4.8 TB/s against
    3.35 TB/s) serves every request with a lower TPOT than the all-H100 split, while its
    prefill pool, the same two H100s, runs exactly the same iterations; a decode step of
    eight sequences is cheaper on the H200 pool."""
    # two scenarios: an H100 decode pool and an H200 decode pool on the same system name
    same = _runs(host, write_yaml, "{count: 2}")
    mixed = _runs(host, write_yaml, "{count: 2, device: h200-sxm}")
    col, h100, h200 = same["colocated"], same["h100-h200"], mixed["h100-h200"]
    for r in (col, h100, h200):
        assert r.status == "ok", r.reason
        req = r.frames["requests"]
        assert isinstance(req, pl.DataFrame) and (req["status"] == "ok").all()
    assert h200.metrics["tpot_mean_s"] < h100.metrics["tpot_mean_s"]
    assert h200.metrics["decode_replicas"] == h100.metrics["decode_replicas"] == 2
    # the prefill pools are the same H100s serving the same arrivals
    from polars.testing import assert_frame_equal

    pre = [r.frames["steps"] for r in (h100, h200)]
    assert isinstance(pre[0], pl.DataFrame) and isinstance(pre[1], pl.DataFrame)
    assert_frame_equal(pre[0].filter(pl.col("replica") < 2), pre[1].filter(pl.col("replica") < 2))
    # a decode step over the same sequences costs less on the H200 pool
    steps = h200.frames["steps"]
    steps100 = h100.frames["steps"]
    assert isinstance(steps, pl.DataFrame) and isinstance(steps100, pl.DataFrame)

    def decode_step_s(s: pl.DataFrame) -> float:
        d = s.filter((pl.col("replica") >= 2) & (pl.col("batch") == 8))
        return float(np.median((d["end_s"] - d["start_s"]).to_numpy()))

    assert decode_step_s(steps) < decode_step_s(steps100)
    # the colocated system is not split
    assert "decode_replicas" not in col.metrics
    assert h200.metrics["decode_device_s"] == pytest.approx(2 * h200.metrics["simulated_s"])


def _ctx(host: Host, write_yaml: Callable[[str, str], Path]) -> WorkloadContext:
    """The context of the scenario's colocated system (four H100s), as a run builds it."""
    text = SCENARIO.replace("DECODE", "{count: 2}").replace("LINK", "scale-out")
    sc = load_scenario(write_yaml(text, "ctx.yaml"), host)
    system = sc.systems[0]
    model = sc.model_for(system)
    return WorkloadContext(
        system=system,
        compiled=host.backends.get("gpu").compile(model, system),
        model=model,
        seed=0,
        base_dir=sc.base_dir,
        resolve_trace=lambda spec: None,
    )


def test_the_kv_crosses_the_slower_network_of_the_two_devices(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Pools of one device use the system's network; pools of different devices the
    slower of their two scale-out links; a scale-up link between two kinds of device is
    refused with the fix; a stated link is used as stated."""
    ctx = _ctx(host, write_yaml)
    dis = Disaggregation.model_validate(
        {"prefill": {"count": 2}, "decode": {"count": 2, "device": "mi300x"}}
    )
    p = pools(dis, ctx.system, ctx.model)
    h100 = host.device("gpu", "h100-sxm")
    mi = host.device("gpu", "mi300x")
    assert h100.scale_out is not None and mi.scale_out is not None
    assert p.bandwidth == min(h100.scale_out.bandwidth.value, mi.scale_out.bandwidth.value)
    assert p.latency == max(h100.scale_out.latency.value, mi.scale_out.latency.value)
    assert p.decode_system.device.name == "mi300x" and p.prefill_system.device.name == "h100-sxm"
    up = dis.model_copy(update={"link": "scale-up"})
    with pytest.raises(XpusimError, match="no node fabric joins"):
        pools(up, ctx.system, ctx.model)
    stated = dis.model_copy(update={"link": Link.model_validate({"bandwidth": "10 GB/s"})})
    assert pools(stated, ctx.system, ctx.model).bandwidth == 10e9


def test_an_unknown_pool_device_names_the_nearest(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """A misspelled pool device is refused with the backend's devices and the nearest."""
    dis = Disaggregation.model_validate(
        {"prefill": {"count": 2}, "decode": {"count": 2, "device": "h200-sx"}}
    )
    with pytest.raises(XpusimError, match="Did you mean 'h200-sxm'"):
        pools(dis, _ctx(host, write_yaml).system, _ctx(host, write_yaml).model)


PRICED = SCENARIO.replace(
    "systems:\n",
    "economics: {pricing: cloud, electricity: 0.12 USD/kWh, pue: 1.2, host_power: 900 W}\n"
    "systems:\n",
)


def _on_demand(name: str) -> float:
    """The on-demand price (USD per device-second) the price book gives ``name`` with no
    tier or provider named: hyperscaler first, then neocloud."""
    from xpusim.engine.economics.pricebook import offers_for, pick

    offer = pick(offers_for((name,)), ("hyperscaler", "neocloud"), None)
    assert offer is not None
    return offer.value


def _pool_energy(devices: pl.DataFrame, lanes: int, span: float, spec: Any) -> float:
    """Joules of one pool's rows before PUE: its busy joules, its device's idle power over
    the device-time no busy row covers, and one node's host power (900 W) over the span."""
    from xpusim.engine.economics import BUSY_STATES
    from xpusim.engine.power import PowerModel

    busy = devices.filter(pl.col("state").is_in(list(BUSY_STATES)))
    busy_s = float((busy["end_s"].clip(0.0, span) - busy["start_s"].clip(0.0, span)).sum())
    idle_w = PowerModel.from_device(spec).idle_w
    return float(busy["joules"].sum()) + idle_w * (lanes * span - busy_s) + 900.0 * span


def test_each_pool_is_priced_at_its_own_device(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """An H100-prefill/H200-decode system costs each pool's device-seconds at its own
    device's on-demand price from the price book, and its energy is each pool's busy
    joules, its own device's idle power over its idle time and its own node's host
    power, times the PUE; the report names both prices. Beside it, the all-H100 split and
    the colocated system are priced at the H100's price alone, as before."""
    text = PRICED.replace("DECODE", "{count: 2, device: h200-sxm}").replace("LINK", "scale-out")
    res = simulate(load_scenario(write_yaml(text, "priced.yaml"), host), host)
    runs = {r.name: r for r in res.systems}
    mixed, col = runs["h100-h200"], runs["colocated"]
    h100, h200 = host.device("gpu", "h100-sxm"), host.device("gpu", "h200-sxm")
    assert _on_demand("h100-sxm") != _on_demand("h200-sxm")

    m = mixed.metrics
    span = float(m["simulated_s"])
    assert m["prefill_device_s"] == m["decode_device_s"] == pytest.approx(2 * span)
    want = m["prefill_device_s"] * _on_demand("h100-sxm") + m["decode_device_s"] * _on_demand(
        "h200-sxm"
    )
    assert m["cost_usd"] == pytest.approx(want, rel=1e-12)
    assert m["cost_per_million_tokens_usd"] == pytest.approx(
        want / (m["throughput_tokens_per_s"] * span) * 1e6, rel=1e-9
    )
    assert set(mixed.details["cost_breakdown_usd"]) == {
        "cloud rental (h100-sxm)",
        "cloud rental (h200-sxm)",
    }

    dev = mixed.frames["devices"]
    assert isinstance(dev, pl.DataFrame)
    pre, dec = dev.filter(pl.col("replica") < 2), dev.filter(pl.col("replica") >= 2)
    assert set(pre["device_name"]) == {"h100-sxm"} and set(dec["device_name"]) == {"h200-sxm"}
    energy = 1.2 * (_pool_energy(pre, 2, span, h100) + _pool_energy(dec, 2, span, h200))
    assert m["energy_j"] == pytest.approx(energy, rel=1e-9)
    assert mixed.details["devices_counted"] == 4

    used = mixed.details["prices_used"]
    assert list(used) == ["h100-sxm", "h200-sxm"]
    assert used["h200-sxm"]["usd"] == pytest.approx(_on_demand("h200-sxm") * 3600.0)
    assert "price.on_demand@h200-sxm" in mixed.figures
    assert "power.idle_w@h200-sxm" in mixed.figures
    assert mixed.details["break_even"]["devices"] == {"h100-sxm": 2, "h200-sxm": 2}

    from xpusim.engine.report.markdown import render_markdown

    md = render_markdown(res)
    assert "price used for h100-sxm" in md and "price used for h200-sxm" in md
    row = next(line for line in md.splitlines() if "price.on_demand@h200-sxm" in line)
    assert f"{_on_demand('h200-sxm') * 3600.0:.4g} USD/h" in row

    # the colocated system runs and is priced on its own device alone, as it always was
    assert "device_name" not in col.frames["devices"].columns
    c_span = float(col.metrics["simulated_s"])
    assert col.metrics["cost_usd"] == pytest.approx(4 * c_span * _on_demand("h100-sxm"), rel=1e-12)
    assert "prices_used" not in col.details and "price.on_demand" in col.figures


def test_rent_or_buy_of_a_system_of_two_devices_adds_up_its_devices(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """An H100-prefill/H200-decode system is bought or rented whole: its yearly costs are
    each device's (as a one-device system's break-even states them) times its count,
    added up; the break-even hours are where owning and renting the whole system meet, so
    they lie between the two devices' own; the verdict names both devices."""
    from xpusim.engine.economics import describe_break_even
    from xpusim.engine.economics.config import HOURS_PER_YEAR

    text = PRICED.replace("DECODE", "{count: 2, device: h200-sxm}").replace("LINK", "scale-out")
    text = text.replace("host_power: 900 W}", "host_power: 900 W, busy_hours_per_year: 6000}")
    res = simulate(load_scenario(write_yaml(text, "fleet.yaml"), host), host)
    mixed = next(r for r in res.systems if r.name == "h100-h200")
    be = mixed.details["break_even"]
    kinds = be["kinds"]
    assert be["devices"] == {"h100-sxm": 2, "h200-sxm": 2} and set(kinds) == {
        "h100-sxm",
        "h200-sxm",
    }

    def own(k: dict[str, Any], hours: float) -> float:
        parts = k["own_breakdown_usd_per_device_year"]
        idle = parts["idle_electricity"] * (1.0 - hours / HOURS_PER_YEAR)
        return (
            k["own_fixed_usd_per_device_year"]
            - parts["idle_electricity"]
            + idle
            + (k["own_usd_per_busy_hour"] * hours)
        )

    hours = be["break_even_hours_per_year"]
    assert hours is not None
    owning = sum(2 * own(k, hours) for k in kinds.values())
    renting = sum(2 * k["rent_usd_per_device_hour"] * hours for k in kinds.values())
    assert owning == pytest.approx(renting, rel=1e-9)
    each = sorted(k["break_even_hours_per_year"] for k in kinds.values())
    assert each[0] <= hours <= each[1]
    yearly = be["yearly_usd"]
    assert yearly["own"] == pytest.approx(sum(2 * own(k, 6000.0) for k in kinds.values()))
    assert yearly["rent"] == pytest.approx(be["rent_usd_per_hour"] * 6000.0)
    assert be["cheaper"] == min(yearly, key=lambda c: (yearly[c], c))
    assert mixed.metrics["break_even_hours_per_year"] == hours
    assert "price.list_price@h200-sxm" in mixed.figures
    text = describe_break_even(be)
    assert "2 x h100-sxm and 2 x h200-sxm" in text and "6,000 busy hours" in text


def test_a_system_of_two_devices_says_so_wherever_it_is_named(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """The split on H100s and H200s is named with both devices and their counts in its
    summary, the terminal table, the Markdown and HTML reports and the verdict read back
    from summary.json; a system on its own device alone keeps ``device × count`` and no
    ``hardware`` key."""
    from xpusim.engine.report.html import render_html
    from xpusim.engine.report.markdown import render_markdown
    from xpusim.engine.report.terminal import summary_table
    from xpusim.engine.report.verdict import summary_systems

    text = PRICED.replace("DECODE", "{count: 2, device: h200-sxm}").replace("LINK", "scale-out")
    res = simulate(load_scenario(write_yaml(text, "named.yaml"), host), host)
    runs = {r.name: r for r in res.systems}
    both = "h100-sxm × 2 + h200-sxm × 2"
    assert runs["h100-h200"].hardware == both
    assert runs["h100-h200"].summary()["hardware"] == both
    assert runs["colocated"].hardware == "h100-sxm × 4"
    assert "hardware" not in runs["colocated"].summary()
    assert both in render_markdown(res) and both in render_html(res)
    rows = {s.name: s for s in summary_systems(res.summary())}
    assert rows["h100-h200"].hardware == both and rows["colocated"].hardware == "h100-sxm × 4"
    assert "hardware" not in rows["h100-h200"].metrics
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(summary_table(res.summary(), res.vocabulary))
    assert both in console.export_text()


def test_an_all_h100_split_names_no_device(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Pools that both run on the system's device leave the devices frame as it was and
    price the system's four devices at its one price."""
    text = PRICED.replace("DECODE", "{count: 2}").replace("LINK", "scale-out")
    res = simulate(load_scenario(write_yaml(text, "same.yaml"), host), host)
    split = {r.name: r for r in res.systems}["h100-h200"]
    assert "device_name" not in split.frames["devices"].columns
    want = 4 * float(split.metrics["simulated_s"]) * _on_demand("h100-sxm")
    assert split.metrics["cost_usd"] == pytest.approx(want, rel=1e-12)
    assert split.details["price_used"]["figure"] == "price.on_demand"


def test_a_misspelled_pool_device_is_refused_at_load(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Loading the scenario (what `xpusim validate` does first) refuses a pool device no
    backend has, at its file, line and key path, with the nearest name; a device of the
    pool's named backend is checked against that backend."""
    from xpusim.engine.errors import ScenarioError

    text = SCENARIO.replace("DECODE", "{count: 2, device: h200-sx}").replace("LINK", "scale-out")
    with pytest.raises(ScenarioError) as err:
        load_scenario(write_yaml(text, "typo.yaml"), host)
    msg = str(err.value)
    assert "typo.yaml:9, at workload.disaggregation.decode.device" in msg
    assert "Did you mean 'h200-sxm'" in msg
    named = SCENARIO.replace("DECODE", "{count: 2, backend: tpu, device: h200-sxm}")
    with pytest.raises(ScenarioError, match="unknown tpu device 'h200-sxm'"):
        load_scenario(write_yaml(named.replace("LINK", "scale-out"), "other.yaml"), host)


def test_the_system_device_keeps_its_inline_price_and_the_pool_device_its_tier(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """A system whose own device is written inline with its price (a power-capped H100 at
    2 USD/h, 80 W idle) and whose decode pool runs on H200s, priced at the neocloud tier:
    the prefill pool's device-seconds cost the inline price and its idle power is the
    inline figure; the decode pool's cost the H200's neocloud offer from the price book;
    the price tier names both."""
    from xpusim.engine.economics.pricebook import offers_for, pick

    text = (
        SCENARIO.replace("DECODE", "{count: 2, device: h200-sxm}")
        .replace("LINK", "scale-out")
        .replace(
            "  - {name: h100-h200, backend: gpu, device: h100-sxm, count: 4}",
            "  - {name: h100-h200, backend: gpu, count: 4, device: {base: h100-sxm, name: "
            "h100-capped, max_power: 500 W, idle_power: 80 W, price: {cloud: 2 USD/h}}}",
        )
        .replace("systems:\n", "economics: {tier: neocloud, pue: 1.0}\nsystems:\n")
    )
    res = simulate(load_scenario(write_yaml(text, "inline.yaml"), host), host)
    mixed = {r.name: r for r in res.systems}["h100-h200"]
    assert mixed.status == "ok", mixed.reason
    offer = pick(offers_for(("h200-sxm",)), ("neocloud",), None)
    assert offer is not None
    m = mixed.metrics
    want = m["prefill_device_s"] * 2.0 / 3600.0 + m["decode_device_s"] * offer.value
    assert m["cost_usd"] == pytest.approx(want, rel=1e-12)
    used = mixed.details["prices_used"]
    assert used["h100-capped"]["tier"] == "scenario" and used["h200-sxm"]["tier"] == "neocloud"
    assert m["price_tier"] == "scenario + neocloud"
    assert mixed.figures["power.idle_w@h100-capped"].value == 80.0
    dev = mixed.frames["devices"]
    assert isinstance(dev, pl.DataFrame)
    assert set(dev.filter(pl.col("replica") < 2)["device_name"]) == {"h100-capped"}


def test_the_tiers_of_a_system_of_two_devices_read_in_words() -> None:
    """The mixed-tier warning names each device's tier of a two-device system in words."""
    from xpusim.engine.economics.pricebook import mixed_tiers_warning

    text = mixed_tiers_warning([("a", "neocloud"), ("b", "scenario + neocloud")])
    assert "b at the scenario's own price and neocloud on-demand" in text
