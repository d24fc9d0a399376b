"""Isolation of faulty plugins, end to end: a backend that raises fails only its own
systems, a plugin that cannot be imported is listed by name with its error, and a plugin
that targets another engine API is refused naming both versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from tests.fakes import FakeBackend, FakePlugin
from xpusim.engine import API_VERSION, hookimpl
from xpusim.engine.backend import Compiled
from xpusim.engine.host import Host
from xpusim.engine.model import ModelGraph
from xpusim.engine.run import run_scenario
from xpusim.engine.scenario import load_scenario
from xpusim.engine.system import System

REPO = Path(__file__).resolve().parents[1]


class ExplodingBackend(FakeBackend):
    """Backend ``exploding``: its compile() raises, as a buggy plugin would."""

    name = "exploding"

    def compile(self, model: ModelGraph, system: System) -> Compiled:
        raise RuntimeError("wafer map file is corrupt")


class ExplodingPlugin:
    """A third-party plugin registering the exploding backend."""

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(ExplodingBackend())


SCENARIO = """\
name: isolation
seed: 1
model: {family: fake, preset: small}
workload: {kind: batch, steps: 3, batch: 4}
systems:
  - {name: good-a, backend: fake, device: chip-a, count: 1}
  - {name: broken, backend: exploding, device: chip-b, count: 1}
  - {name: good-b, backend: fake, device: chip-b, count: 1}
"""


def test_backend_raising_in_compile_fails_only_its_system(
    pm: pluggy.PluginManager, write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    """A system whose backend raises in compile() is `failed` in summary.json with the
    plugin's name and error; the other systems run `ok`."""
    pm.register(FakePlugin(), name="fakes")
    pm.register(ExplodingPlugin(), name="exploding-plugin")
    host = Host(pm)
    scenario = load_scenario(write_yaml(SCENARIO), host)
    _, folder = run_scenario(scenario, host, out_dir=tmp_path / "run")
    systems = {s["name"]: s for s in json.loads((folder / "summary.json").read_text())["systems"]}
    assert systems["good-a"]["status"] == "ok" and systems["good-b"]["status"] == "ok"
    assert systems["good-a"]["throughput_samples_per_s"] > 0
    broken = systems["broken"]
    assert broken["status"] == "failed"
    assert "exploding-plugin" in broken["reason"]
    assert "RuntimeError: wafer map file is corrupt" in broken["reason"]


def _fake_distribution(site: Path, name: str, module: str, code: str) -> None:
    """Install a one-module distribution with an `xpusim` entry point into ``site``."""
    (site / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
    info = site / f"{name}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[xpusim]\n{name} = {module}\n", encoding="utf-8")


def _plugins_json(site: Path) -> dict[str, dict[str, Any]]:
    """`xpusim plugins --json` in a fresh process that also sees ``site``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("XPUSIM_LOAD_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "xpusim.engine.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)}


def test_plugins_lists_a_plugin_that_fails_to_import(tmp_path: Path) -> None:
    """`xpusim plugins` lists an installed plugin whose import fails, by name, with its
    error and version; the built-in plugins still load and register."""
    _fake_distribution(
        tmp_path,
        "brokenchip",
        "xpusim_brokenchip",
        """\
        raise ImportError("libbrokenchip.so: cannot open shared object file")
    """,
    )
    plugins = _plugins_json(tmp_path)
    broken = plugins["brokenchip"]
    assert "libbrokenchip.so" in broken["error"]
    assert broken["version"] == "0.3.0"
    assert plugins["gpu"]["error"] is None and plugins["gpu"]["registered"]["backends"] == ["gpu"]


def test_plugins_refuses_a_backend_for_another_engine_api(tmp_path: Path) -> None:
    """An installed backend that declares another engine API version is listed as
    failed with the plugin's name and both versions; it registers nothing."""
    _fake_distribution(
        tmp_path,
        "futurechip",
        "xpusim_futurechip",
        """\
        from xpusim import hookimpl
        from tests.fakes import FakeBackend

        class FutureBackend(FakeBackend):
            name = "future"
            api_version = "7"

        @hookimpl
        def register_backends(register):
            register(FutureBackend())
    """,
    )
    plugins = _plugins_json(tmp_path)
    err = plugins["futurechip"]["error"]
    assert "'futurechip'" in err and "API 7" in err and f"API {API_VERSION}" in err
    assert "backends" not in plugins["futurechip"]["registered"]
    assert plugins["gpu"]["error"] is None
