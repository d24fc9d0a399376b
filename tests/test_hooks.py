"""Every hook is documented with its exact signature and a runnable example, and tested.

The examples of docs/plugins.md are executed here as real plugins: each ``test_hook_<name>``
loads that hook's code block into a module, registers it in a fresh plugin manager and
checks the hook's effect.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Any

import pluggy
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.fakes import FakePlugin
from xpusim.engine import hookspecs
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario
from xpusim.plugins import workloads as builtin_workloads

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = sorted(
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "xpusim_spec")
)


def _sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def _example(hook: str) -> types.ModuleType:
    """Execute the first python block under the hook's heading as a module."""
    for heading, body in _sections().items():
        if heading.startswith(f"{hook}("):
            block = re.search(r"```python\n(.*?)```", body, flags=re.S)
            assert block, f"no python example under {heading}"
            mod = types.ModuleType(f"doc_example_{hook}")
            exec(compile(block.group(1), f"docs/plugins.md:{hook}", "exec"), mod.__dict__)
            return mod
    raise AssertionError(f"{hook} has no section")


def _host_with(pm: pluggy.PluginManager, *plugins: Any) -> Host:
    pm.register(FakePlugin(), name="fakes")
    for i, p in enumerate(plugins):
        pm.register(p, name=f"example{i}")
    return Host(pm)


def test_every_hook_is_documented_with_its_signature() -> None:
    """docs/plugins.md has a heading `name(args)` with the exact parameters of every hook."""
    headings = set(_sections())
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"{name}({params})" in headings, f"docs/plugins.md lacks '## {name}({params})'"


def test_every_hook_has_a_test() -> None:
    """Each hook has a test named test_hook_<name> somewhere in the suite."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    missing = [h for h in HOOKS if f"def test_hook_{h}(" not in text]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"


def test_hook_register_backends(pm: pluggy.PluginManager) -> None:
    """The documented backend registers, lists its device and prices a step."""
    host = _host_with(pm, _example("register_backends"))
    assert host.device("toy", "toy-1").name == "toy-1"
    assert host.backends.owner("toy") == "example0"


def test_hook_register_devices(pm: pluggy.PluginManager, host: Host) -> None:
    """A device registered for the GPU backend joins that backend's catalog."""
    mod = _example("register_devices")
    pm.register(host.pm.get_plugin("gpu"), name="gpu")
    pm.register(mod, name="vendor")
    h = Host(pm)
    assert "my-gpu-96gb" in h.backends.get("gpu").devices()
    assert not h.failed_plugins()


def test_hook_register_models(pm: pluggy.PluginManager) -> None:
    """The documented model family configures and its graph counts the GEMM's FLOPs."""
    from xpusim.engine.graph import Phase, Shape

    host = _host_with(pm, _example("register_models"))
    model = host.models.get("linear").configure({"preset": "small"})
    g = model.build(Shape(Phase.FORWARD, batch=4))
    assert g.flops == 2 * 4 * 256 * 256


def test_hook_register_workloads(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """The documented workload runs end to end through a scenario on the fake backend."""
    from xpusim.engine.run import run_scenario

    host = _host_with(pm, _example("register_workloads"))
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: repeat\nmodel: {family: fake}\nworkload: {kind: repeat, steps: 5, batch: 2}\n"
        "systems: [{name: a, backend: fake, device: chip-a}]\n"
    )
    result, folder = run_scenario(load_scenario(p, host), host, tmp_path / "out")
    (sys_,) = result.systems
    assert sys_.status == "ok" and sys_.metrics["throughput_samples_per_s"] > 0
    assert (folder / "summary.json").exists()


def test_hook_register_trace_formats(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """The documented trace format reads rows and names the line of a bad one."""
    from xpusim.engine.errors import TraceError

    host = _host_with(pm, _example("register_trace_formats"))
    fmt = host.trace_formats.get("tsv-requests")
    good = tmp_path / "t.tsv"
    good.write_text("0.5\t100\t10\n0.1\t20\t5\n")
    df = fmt.read(good, {})
    assert df["arrival_s"].to_list() == [0.1, 0.5] and df.schema["prompt_tokens"] == pl.Int64
    bad = tmp_path / "b.tsv"
    bad.write_text("0.5\t100\t10\n0.7\t1\n")
    with pytest.raises(TraceError, match=":2:"):
        fmt.read(bad, {})


def test_hook_register_reporters(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """A registered reporter's file lands in the run folder."""
    from xpusim.engine.run import run_scenario

    host = _host_with(pm, _example("register_reporters"))
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: r\nmodel: {family: fake}\nworkload: {kind: batch}\n"
        "systems: [{name: a, backend: fake, device: chip-a}]\n"
    )
    _, folder = run_scenario(load_scenario(p, host), host, tmp_path / "out")
    assert "name" in (folder / "summary.csv").read_text().splitlines()[0]


def test_hook_register_executors(pm: pluggy.PluginManager) -> None:
    """The documented executor yields results and failures by index."""
    from xpusim.engine.executor import PointFailure

    host = _host_with(pm, _example("register_executors"))
    ex = host.executors.get("inline")
    out = dict(ex.map(lambda x: 10 // x, [1, 0, 5]))
    assert out[0] == 10 and out[2] == 2 and isinstance(out[1], PointFailure)


def test_hook_register_commands(pm: pluggy.PluginManager) -> None:
    """A plugin command is added to the CLI and runs."""
    import typer

    mod = _example("register_commands")
    pm.register(mod, name="cmds")
    app = typer.Typer()
    app.command("noop")(lambda: None)
    pm.hook.register_commands(cli=app)
    res = CliRunner().invoke(app, ["hello", "greet", "--name", "chip"])
    assert res.exit_code == 0 and "hello chip" in res.output


def _observed_run(pm: pluggy.PluginManager, tmp_path: Path, mod: types.ModuleType) -> Any:
    from xpusim.engine.run import load, run_scenario

    host = _host_with(pm, mod)
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: obs\nmodel: {family: fake}\nworkload: {kind: batch}\n"
        "systems: [{name: a, backend: fake, device: chip-a}, {name: b, backend: fake, device: chip-b, count: 2}]\n"
    )
    return run_scenario(load(p, host), host, tmp_path / "out")


def test_hook_scenario_loaded(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """scenario_loaded observers see the validated scenario."""
    mod = _example("scenario_loaded")
    _observed_run(pm, tmp_path, mod)
    assert mod.SEEN == ["obs: 2 systems"]


def test_hook_run_started(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """run_started receives the folder the run will land in."""
    mod = _example("run_started")
    _observed_run(pm, tmp_path, mod)
    assert [str(tmp_path / "out")] == mod.STARTED


def test_hook_run_finished(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    """run_finished receives the results after the folder is written."""
    mod = _example("run_finished")
    _observed_run(pm, tmp_path, mod)
    assert mod.CHEAPEST == {"obs": "a"}  # b rents two devices for the same work


def _serve(host: Host, block: dict[str, Any], replicas: int) -> Any:
    """Simulate ``block`` (a serving workload block) on the fake backend of the serving
    tests, with the scheduler and router the host resolves."""
    from tests.test_serving import compiled
    from xpusim.plugins.workloads.serving.workload import ServingConfig
    from xpusim.plugins.workloads.serving.world import simulate_serving

    cfg = ServingConfig.model_validate(block, context={"host": host})
    frame = pl.DataFrame(
        {"arrival_s": [0.0, 0.0, 0.0, 0.0], "prompt_tokens": [8, 4, 6, 2], "output_tokens": [3] * 4}
    )
    return simulate_serving(
        frame,
        compiled(replicas),
        system="s",
        replicas=replicas,
        devices_per_replica=1,
        scheduler=cfg.scheduler,
        router=cfg.router_policy(),
        seed=3,
    )


def test_hook_register_schedulers(pm: pluggy.PluginManager) -> None:
    """The documented scheduler is registered by name and runs one request at a time."""
    host = _host_with(pm, _example("register_schedulers"), builtin_workloads)
    assert "one-at-a-time" in host.schedulers.names()
    res = _serve(
        host, {"trace": {"path": "x", "format": "csv"}, "scheduler": {"kind": "one-at-a-time"}}, 1
    )
    steps = res.frames["steps"]
    req = res.frames["requests"]
    assert steps["batch"].max() == 1  # never two sequences in one iteration
    assert (req["status"] == "ok").all() and steps.height == 4 * 3
    # first come first served: finish times follow request ids
    assert req.sort("request_id")["finish_s"].is_sorted()


def test_hook_register_routers(pm: pluggy.PluginManager) -> None:
    """The documented router is registered by name, routes every request and is seeded."""
    host = _host_with(pm, _example("register_routers"), builtin_workloads)
    assert "random" in host.routers.names()
    block = {"trace": {"path": "x", "format": "csv"}, "router": "random"}
    a = _serve(host, block, 3).frames["requests"]["replica"].to_list()
    b = _serve(host, block, 3).frames["requests"]["replica"].to_list()
    assert a == b and set(a) <= {0, 1, 2}
    with pytest.raises(Exception, match="Did you mean 'random'"):
        _serve(host, {**block, "router": "randon"}, 3)


def test_hook_register_serving_techniques(pm: pluggy.PluginManager) -> None:
    """The documented technique is registered by name, its block switches it on and is
    validated at its key path, it halves the prefill work the world sees and the
    requests frame keeps the full prompts; a misspelled key names the technique."""
    from tests.test_serving import compiled
    from xpusim.engine.workload import WorkloadContext
    from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload

    host = _host_with(pm, _example("register_serving_techniques"), builtin_workloads)
    assert "prompt_compression" in host.serving_techniques.names()
    assert "prefix_caching" in host.serving_techniques.names()  # the built-ins, alike
    frame = pl.DataFrame(
        {
            "arrival_s": [0.0, 0.1, 0.2, 0.3],
            "prompt_tokens": [800, 400, 600, 200],
            "output_tokens": [3] * 4,
        }
    )
    c = compiled(1)

    def serve(block: dict[str, Any]) -> Any:
        cfg = ServingConfig.model_validate(
            {"trace": {"path": "x", "format": "csv"}, **block}, context={"host": host}
        )
        ctx = WorkloadContext(
            system=c.system,
            compiled=c,
            model=c.model,
            seed=1,
            base_dir=Path("."),
            resolve_trace=lambda spec: frame,
        )
        return ServingWorkload().simulate(cfg, ctx)

    plain = serve({})
    half = serve({"prompt_compression": {"ratio": 0.5}})
    assert half.metrics["prompt_tokens_dropped"] == 1000.0
    steps = half.frames["steps"]
    assert steps["prefill_tokens"].sum() == 1000  # the world prefilled the kept half
    assert plain.frames["steps"]["prefill_tokens"].sum() == 2000
    req = half.frames["requests"].sort("request_id")
    assert req["prompt_tokens"].to_list() == [800, 400, 600, 200]
    assert half.metrics["ttft_mean_s"] < plain.metrics["ttft_mean_s"]
    with pytest.raises(Exception, match=r"prompt_compression\.ratio"):
        serve({"prompt_compression": {"ratio": 2}})
    with pytest.raises(Exception, match="Did you mean 'prompt_compression'"):
        serve({"prompt_compresion": {"ratio": 0.5}})
