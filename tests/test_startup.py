"""Start-up imports only what a command uses.

Each test runs one command in a fresh interpreter (through the CLI's ``main``, as the
console script does) and reads which modules it imported. No test looks at a clock:
what is asserted is which heavy libraries and plugin modules a command never imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, os, sys
from xpusim.engine import cli
code = 0
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
report = {"code": code, "modules": sorted(sys.modules)}
with open(os.environ["XPUSIM_STARTUP_REPORT"], "w", encoding="utf-8") as fh:
    json.dump(report, fh)
"""

HEAVY = ("torch", "spynnaker", "pyNN", "polars", "numpy", "scipy", "matplotlib", "pandas")
"""Libraries whose import costs a large share of a second or more."""

NEUROMORPHIC = ("spynnaker", "pyNN", "spinn_")
"""sPyNNaker and its tool chain (``spinn_machine``, ``spinn_front_end_common`` ...)."""


def _run(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    """Run ``xpusim ARGV`` in a fresh interpreter; return its exit code, the modules it
    imported and its standard output."""
    report = tmp_path / "startup.json"
    env = {**os.environ, "XPUSIM_STARTUP_REPORT": str(report), "COLUMNS": "200"}
    env.pop("XPUSIM_LOAD_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.exists(), proc.stderr
    data: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return int(data["code"]), set(data["modules"]), proc.stdout


def _top_level(modules: set[str], names: tuple[str, ...]) -> set[str]:
    """The modules of ``modules`` whose top-level package starts with one of ``names``."""
    return {m.split(".")[0] for m in modules if m.split(".")[0].startswith(names)}


def _entry_point_modules() -> set[str]:
    """The modules the installed ``xpusim`` entry points name."""
    return {ep.value.split(":")[0] for ep in entry_points(group="xpusim")}


def test_version_imports_no_plugin_and_no_heavy_library(tmp_path: Path) -> None:
    """`xpusim version` prints the version without importing any plugin module, any heavy
    library, or rich."""
    code, modules, out = _run(tmp_path, "version")
    assert code == 0 and out.strip() == "0.1.0"
    assert not {m for m in modules if m.startswith("xpusim.plugins")}
    assert not _top_level(modules, (*HEAVY, "rich"))


def test_help_imports_only_entry_points_and_no_heavy_library(tmp_path: Path) -> None:
    """`xpusim --help` lists the built-in and plugin commands, importing the plugins'
    entry-point modules and the command group they add, but no backend, model, workload
    or report module and no heavy library."""
    code, modules, out = _run(tmp_path, "--help")
    assert code == 0
    assert "validate" in out and "tpu" in out and "traces" in out
    assert not _top_level(modules, HEAVY)
    loaded = {m for m in modules if m.startswith("xpusim.plugins.")}
    command_groups = {"xpusim.plugins.tpu.cli", "xpusim.plugins.traces.commands"}
    allowed = _entry_point_modules() | command_groups
    assert loaded <= allowed, sorted(loaded - allowed)


def test_plugins_lists_everything_without_importing_it(tmp_path: Path) -> None:
    """`xpusim plugins --json` lists every built-in plugin with what it registered, and
    imports none of the registered objects' modules nor a heavy library."""
    code, modules, out = _run(tmp_path, "plugins", "--json")
    assert code == 0
    listed = {p["name"]: p for p in json.loads(out)}
    assert {"gpu", "tpu", "spinnaker", "cpu", "models", "traces"} <= set(listed)
    assert "llama" in listed["models"]["registered"]["models"]
    assert listed["gpu"]["registered"]["backends"] == ["gpu"]
    assert all(p["error"] is None for p in listed.values())
    assert not _top_level(modules, HEAVY)
    assert not {m for m in modules if m.startswith("xpusim.plugins.") and m.count(".") > 2} - {
        "xpusim.plugins.tpu.cli"
    }


def test_validate_gpu_scenario_imports_no_torch_and_no_spinnaker(tmp_path: Path) -> None:
    """`xpusim validate scenarios/quickstart.yaml` (Llama on GPUs) checks the scenario
    without importing torch, sPyNNaker's tool chain, or any other backend."""
    code, modules, out = _run(tmp_path, "validate", "scenarios/quickstart.yaml")
    assert code == 0 and "valid (3 systems" in out
    assert "torch" not in {m.split(".")[0] for m in modules}
    assert not _top_level(modules, NEUROMORPHIC)
    assert not _top_level(modules, ("matplotlib", "scipy"))
    backends = {m for m in modules if m.endswith(".backend") and m.startswith("xpusim.plugins")}
    assert backends == {"xpusim.plugins.gpu.backend"}


def test_conformance_checks_import_no_test_runner() -> None:
    """The installed conformance checks (xpusim.engine.conformance) import neither pytest,
    a development-only dependency, nor torch; only the pytest face does."""
    code = (
        "import sys, xpusim.engine.conformance; "
        "print(sorted({'pytest', 'torch'} & {m.split('.')[0] for m in sys.modules}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
