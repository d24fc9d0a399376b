"""Serving techniques are registered components: the built-ins through the hook, a
scenario's keys checked against the registry, a technique's metrics declared, and the
run's frames kept whole however the techniques shape it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from tests.fakes import FakePlugin
from xpusim import hookimpl
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.host import Host
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.policies import ServingRun, ServingTechnique
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.plugins import workloads as builtin_workloads

SCENARIO = """
name: tech
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 4/s, count: 40, prompt_tokens: {dist: constant, value: 600},
             output_tokens: {dist: constant, value: 20}}
  EXTRA
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 2}
"""

BUILTIN = {"prefix_caching", "speculative_decoding", "lora", "disaggregation", "expert_parallelism"}


def test_the_builtin_techniques_are_registered_by_the_workload_plugin(host: Host) -> None:
    """Every built-in technique is an entry of the host's registry, owned by the
    ``workloads`` entry point, exactly as a third party's would be."""
    assert set(host.serving_techniques.names()) >= BUILTIN
    for name in BUILTIN:
        assert host.serving_techniques.owner(name) == "workloads"
        tech = host.serving_techniques.get(name)
        assert isinstance(tech, ServingTechnique) and tech.name == name


def test_a_misspelled_technique_key_names_the_nearest(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """A workload key that is neither a field nor a registered technique is refused at
    load with the valid keys and the nearest one."""
    text = SCENARIO.replace("EXTRA", "prefix_cachng: {memory_fraction: 0.3}")
    with pytest.raises(ScenarioError, match="Did you mean 'prefix_caching'") as err:
        load_scenario(write_yaml(text, "bad.yaml"), host)
    assert "speculative_decoding" in str(err.value) and "router" in str(err.value)


def test_a_bad_value_in_a_technique_block_keeps_its_key_path(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """An error inside a technique's block names the block's key path and line; an
    unknown key inside it names the nearest valid one; a boolean where a number is
    expected is refused, as everywhere in a scenario."""
    bad = SCENARIO.replace("EXTRA", "prefix_caching: {memory_fraction: 1.5}")
    with pytest.raises(ScenarioError, match=r"tech.yaml:\d+, at workload\.prefix_caching"):
        load_scenario(write_yaml(bad, "tech.yaml"), host)
    typo = SCENARIO.replace("EXTRA", "prefix_caching: {memory_fracton: 0.3}")
    with pytest.raises(ScenarioError, match="Did you mean 'memory_fraction'"):
        load_scenario(write_yaml(typo, "tech.yaml"), host)
    boolean = SCENARIO.replace(
        "EXTRA", "disaggregation: {prefill: {count: true}, decode: {count: 1}}"
    )
    with pytest.raises(ScenarioError, match="expected a number, got true"):
        load_scenario(write_yaml(boolean, "tech.yaml"), host)


def test_a_technique_without_a_block_refuses_one(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Expert parallelism follows ``systems[].parallelism.expert``; a block for it is
    refused with where it comes from."""
    text = SCENARIO.replace("EXTRA", "expert_parallelism: {ranks: 8}")
    with pytest.raises(ScenarioError, match="takes no block"):
        load_scenario(write_yaml(text, "bad.yaml"), host)


def test_a_null_block_switches_a_technique_off(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """``prefix_caching: null`` (what ``--set workload.prefix_caching=null`` writes) is
    the technique off, as before the techniques were registered."""
    text = SCENARIO.replace("EXTRA", "prefix_caching: null")
    sc = load_scenario(write_yaml(text, "off.yaml"), host)
    assert sc.workload_config.technique("prefix_caching") is None  # type: ignore[attr-defined]


class _Layout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pools: int = 2


class ToyLayout(ServingTechnique):
    """A pool layout that would serve the run itself (never reached: refused first)."""

    name = "toy_layout"
    description = "a second pool layout"
    kind = "pool-layout"
    schema = _Layout
    order = 310
    metrics: tuple[Metric, ...] = (
        detail("toy_layout_pools", "Toy pools", description="pools of the toy"),
    )

    def serve(self, spec: Any, run: ServingRun) -> Any:
        raise AssertionError("not reached")


class OtherLayout(ToyLayout):
    """Another pool layout, with no check against the first."""

    name = "other_layout"
    metrics = ()


class ToyPlugin:
    @hookimpl
    def register_serving_techniques(self, register: Callable[[Any], None]) -> None:
        register(ToyLayout())
        register(OtherLayout())


def test_a_plugins_technique_joins_the_registry_its_metrics_the_vocabulary(
    pm: pluggy.PluginManager,
) -> None:
    """A third party's technique is registered by name beside the built-ins; validating
    a config that names it declares its metrics on the serving workload."""
    from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload

    pm.register(FakePlugin(), name="fakes")
    pm.register(builtin_workloads, name="workloads")
    pm.register(ToyPlugin(), name="toy")
    host = Host(pm)
    assert host.serving_techniques.owner("toy_layout") == "toy"
    cfg = ServingConfig.model_validate(
        {"trace": {"path": "x", "format": "csv"}, "toy_layout": {"pools": 3}},
        context={"host": host},
    )
    assert cfg.technique("toy_layout").pools == 3
    assert "toy_layout_pools" in {m.name for m in ServingWorkload.metrics}


def test_two_pool_layouts_on_one_system_are_refused(pm: pluggy.PluginManager) -> None:
    """Two switched-on techniques that each serve the whole run cannot both: refused at
    load where one checks for the other (disaggregation names any other technique),
    else when the run starts, naming both."""
    from tests.test_serving import compiled
    from xpusim.engine.workload import WorkloadContext
    from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload

    pm.register(FakePlugin(), name="fakes")
    pm.register(builtin_workloads, name="workloads")
    pm.register(ToyPlugin(), name="toy")
    host = Host(pm)
    with pytest.raises(ValueError, match="not combined with toy_layout"):
        ServingConfig.model_validate(
            {
                "trace": {"path": "x", "format": "csv"},
                "toy_layout": {},
                "disaggregation": {"prefill": {"count": 1}, "decode": {"count": 1}},
            },
            context={"host": host},
        )
    cfg = ServingConfig.model_validate(
        {"trace": {"path": "x", "format": "csv"}, "toy_layout": {}, "other_layout": {}},
        context={"host": host},
    )
    c = compiled(2)
    import polars as pl

    frame = pl.DataFrame(
        {"arrival_s": [0.0], "prompt_tokens": [8], "output_tokens": [2]},
    )
    ctx = WorkloadContext(
        system=c.system,
        compiled=c,
        model=c.model,
        seed=0,
        base_dir=Path("."),
        resolve_trace=lambda spec: frame,
    )
    with pytest.raises(XpusimError, match=r"other_layout, toy_layout|toy_layout, other_layout"):
        ServingWorkload().simulate(cfg, ctx)


def test_spilled_frames_outlive_the_techniques(
    host: Host, write_yaml: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With frames spilled to Parquet after a handful of rows, a run shaped by a
    technique is priced and its frames read whole: the world's spill folder stays alive
    as long as the run's frames."""
    monkeypatch.setenv("XPUSIM_SPILL_ROWS", "8")
    text = SCENARIO.replace(
        "EXTRA", "prefix_caching: {memory_fraction: 0.3, shared_prefix: {tokens: 512}}"
    )
    res = simulate(load_scenario(write_yaml(text, "spill.yaml"), host), host).systems[0]
    assert res.status == "ok", res.reason
    steps = res.frames["steps"]
    steps = steps.collect() if hasattr(steps, "collect") else steps
    assert steps.height > 8 and res.metrics["energy_j"] > 0
    assert res.metrics["prefix_hit_rate_tokens"] > 0


def test_routers_whose_choices_are_known_ahead_say_so() -> None:
    """Round-robin and a replayed assignment declare their choices before the run
    (``Router.planned``), the same ones their routing functions make; a router that
    routes by state (least-outstanding) declares none."""
    from types import SimpleNamespace

    from xpusim.plugins.workloads.serving.prefix_cache import AssignedRouter
    from xpusim.plugins.workloads.serving.routers.least_outstanding import (
        LeastOutstandingRouter,
    )
    from xpusim.plugins.workloads.serving.routers.round_robin import RoundRobinRouter

    reps: list[Any] = [SimpleNamespace(index=i, outstanding=0) for i in range(3)]
    for router in (RoundRobinRouter(), AssignedRouter([2, 0, 0, 1, 2, 1, 0])):
        route = router.start(reps, 0)
        made = [route(reps).index for _ in range(7)]
        assert list(router.planned(7, 3) or []) == made
    assert LeastOutstandingRouter().planned(7, 3) is None
