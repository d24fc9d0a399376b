"""Devices a scenario defines inline from a catalog device: the prices it gives are the
run's prices, named in the results and the report as the scenario's own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.collectives import topology_from_device
from xpusim.engine.device import DeviceSpec, derive_device
from xpusim.engine.economics import HOUR_S
from xpusim.engine.errors import ScenarioError
from xpusim.engine.host import Host
from xpusim.engine.run import run_scenario
from xpusim.engine.scenario import DerivedDevice, load_scenario
from xpusim.engine.system import Parallelism, System
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.gpu.kernel_fits import fitted_params

Writer = Callable[..., Path]

SCENARIO = """\
name: inline-price
model: {family: llama, preset: llama-2-7b}
workload:
  kind: offline
  count: 8
  prompt_tokens: {dist: constant, value: 128}
  output_tokens: {dist: constant, value: 16}
systems:
  - name: h200-own
    backend: gpu
    device: {base: h200, name: h200-leased, max_power: 600 W,
             price: {cloud: 3.0 USD/h, list: 30000 USD}}
  - {name: h200, backend: gpu, device: h200}
economics: {pricing: cloud}
"""


def test_inline_device_price_is_the_runs_price(host: Host, write_yaml: Writer) -> None:
    """An inline device's ``price`` replaces its base's catalog price: it is cited as the
    scenario's field, the cost is that rate times device time, and the summary and the
    report name it as from the scenario; the catalog device beside it keeps its offer."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    dev = sc.systems[0].device
    assert dev.price.on_demand is not None
    assert dev.price.on_demand.value == pytest.approx(3.0 / HOUR_S)
    assert dev.price.on_demand.source == "scenario systems.0.device.price.cloud"
    assert dev.price.list_price is not None and dev.price.list_price.value == 30000

    result, folder = run_scenario(sc, host, out_dir=folder_in(write_yaml))
    own, cat = result.systems
    assert own.status == "ok" and cat.status == "ok"
    used = own.details["price_used"]
    assert used["usd"] == pytest.approx(3.0) and used["tier"] == "scenario"
    assert used["cited"] == "from the scenario (systems.0.device.price.cloud)"
    # one device rented for the simulated span at the scenario's 3 USD/h
    assert own.metrics["cost_usd"] == pytest.approx(own.metrics["simulated_s"] * 3.0 / HOUR_S)
    assert cat.details["price_used"]["tier"] in ("hyperscaler", "neocloud")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["systems"][0]["price_tier"] == "scenario"
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "from the scenario (systems.0.device.price.cloud)" in report


def folder_in(write_yaml: Writer) -> Path:
    """A run folder beside the scenario files of this test."""
    return write_yaml("", "unused.yaml").parent / "run"


def test_owned_pricing_reads_the_inline_list_price(host: Host, write_yaml: Writer) -> None:
    """With ``pricing: owned`` the inline device's ``list`` price is the one amortized."""
    text = SCENARIO.replace(
        "economics: {pricing: cloud}", "economics: {pricing: owned, electricity: 0.1 USD/kWh}"
    )
    sc = load_scenario(write_yaml(text), host)
    result, _ = run_scenario(sc, host, out_dir=folder_in(write_yaml))
    used = result.systems[0].details["price_used"]
    assert used["figure"] == "price.list_price" and used["usd"] == pytest.approx(30000)
    assert used["cited"] == "from the scenario (systems.0.device.price.list)"


def test_system_pricing_wins_over_the_inline_price(host: Host, write_yaml: Writer) -> None:
    """Where ``systems[].pricing`` and the inline device both name a price, the system's
    wins (it is applied last, as for a catalog device)."""
    text = SCENARIO.replace(
        "price: {cloud: 3.0 USD/h, list: 30000 USD}}",
        "price: {cloud: 3.0 USD/h}}\n    pricing: {cloud: 2.0 USD/h}",
    )
    sc = load_scenario(write_yaml(text), host)
    fig = sc.systems[0].device.price.on_demand
    assert fig is not None and fig.value == pytest.approx(2.0 / HOUR_S)
    assert fig.source == "scenario systems.0.pricing.cloud"


@pytest.mark.parametrize(
    ("price", "needle"),
    [
        ("{clod: 3 USD/h}", "clod"),
        ("{cloud: 3 GB}", "price.cloud: '3 GB' is not a price"),
        ("{cloud: -3 USD/h}", "price.cloud: must not be negative"),
    ],
)
def test_bad_inline_prices_are_refused(
    host: Host, write_yaml: Writer, price: str, needle: str
) -> None:
    """An unknown price key, a value of the wrong dimension or a negative price is refused
    at load, naming the field."""
    text = SCENARIO.replace("{cloud: 3.0 USD/h, list: 30000 USD}", price)
    with pytest.raises(ScenarioError, match=needle.replace(".", r"\.")):
        load_scenario(write_yaml(text), host)


def test_a_derived_gpu_keeps_its_bases_kernel_fits(host: Host) -> None:
    """A device derived from a catalog part runs that part's kernels: the GPU backend
    applies the base's fitted efficiencies to it and names the base in each source,
    instead of falling back to the stated defaults."""
    backend = host.backends.get("gpu")
    assert isinstance(backend, GpuBackend)
    base = backend.devices()["h100-sxm"]
    derived = derive_device(
        base, DerivedDevice.model_validate({"base": "h100-sxm", "memory": "96 GB"}), "t"
    )
    assert derived.base == "h100-sxm"
    fits = fitted_params("h100-sxm")
    assert fits, "the H100 SXM has public kernel fits"

    def system(dev: DeviceSpec) -> System:
        return System("s", "gpu", dev, 1, Parallelism(), topology_from_device(dev))

    eff_base, _ = backend.efficiency_sources(system(base))
    eff_derived, sources = backend.efficiency_sources(system(derived))
    assert eff_derived == eff_base
    for name in fits:
        assert "'h100-sxm', which" in sources[name]
