"""Shared fixtures: fresh plugin managers and hosts, scenario files, shared data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pluggy
import pytest
from hypothesis import settings

from xpusim.engine.host import Host, get_plugin_manager

# CI reruns the same examples every time, so a landing is judged on its own change; run
# locally (no CI variable) the property tests draw new examples each run and keep
# exploring, as fuzz/ does without a bound.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"
FIGURES = SHARED / "reference" / "figures.yaml"


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    """A fresh plugin manager with no entry points loaded."""
    manager = get_plugin_manager(load_entrypoints=False)
    yield manager
    for name, _ in list(manager.list_name_plugin()):
        manager.unregister(name=name)


@pytest.fixture
def fake_host(pm: pluggy.PluginManager) -> Host:
    """A host with only the test plugin of tests/fakes.py."""
    from tests.fakes import FakePlugin

    pm.register(FakePlugin(), name="fakes")
    return Host(pm)


@pytest.fixture(scope="session")
def host() -> Host:
    """A host with every installed plugin (the built-ins included), built once."""
    from xpusim.engine.host import build_host

    return build_host()


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a YAML text to a file in a temporary folder and return its path."""

    def write(text: str, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return write


@pytest.fixture
def traces_dir() -> Path:
    """The shared real traces folder (tests skip when it is absent)."""
    if not TRACES.is_dir():
        pytest.skip("shared traces are not present beside the repository")
    return TRACES
