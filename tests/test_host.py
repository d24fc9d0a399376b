"""The plugin host: registries, isolation of broken plugins, name checks, API versions,
and lazy registration (imported on first use)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pluggy
import pytest
from typer.testing import CliRunner

from tests.fakes import FakeBackend, FakePlugin, fake_device
from xpusim import hookimpl
from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import DuplicateNameError, PluginError, UnknownNameError
from xpusim.engine.host import Host, get_plugin_manager
from xpusim.engine.lazy import Lazy
from xpusim.engine.registry import Registry, nearest


def test_registry_refuses_duplicates_naming_both() -> None:
    """A second registration of one name names both plugins."""
    reg: Registry[int] = Registry("backend")
    reg.add("gpu", 1, "plugin-a")
    with pytest.raises(DuplicateNameError) as exc:
        reg.add("gpu", 2, "plugin-b")
    assert "plugin-a" in str(exc.value) and "plugin-b" in str(exc.value)


def test_registry_unknown_name_lists_valid_and_nearest() -> None:
    """An unknown name lists the valid ones and the nearest match."""
    reg: Registry[int] = Registry("backend")
    for n in ("gpu", "tpu", "spinnaker"):
        reg.add(n, 0, "p")
    with pytest.raises(UnknownNameError) as exc:
        reg.get("spinaker")
    msg = str(exc.value)
    assert "Did you mean 'spinnaker'" in msg and "gpu, spinnaker, tpu" in msg
    assert nearest("GPU", ["gpu"]) == "gpu"


def test_host_records_what_each_plugin_registered(fake_host: Host) -> None:
    """The host knows which plugin registered which names."""
    info = fake_host.plugins["fakes"]
    assert info.registered["backends"] == ["fake"]
    assert fake_host.backends.owner("fake") == "fakes"
    assert "register_backends" in info.hooks


def test_duplicate_backend_from_two_plugins_is_reported(pm: pluggy.PluginManager) -> None:
    """Two plugins registering one backend name: the second is reported failed, by name."""

    class Again:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            register(FakeBackend())

    pm.register(FakePlugin(), name="fakes")
    pm.register(Again(), name="again")
    host = Host(pm)
    failed = host.failed_plugins()
    assert set(failed) == {"again"} or set(failed) == {"fakes"}
    (msg,) = failed.values()
    assert "fakes" in msg and "again" in msg
    assert "fake" in host.backends


def test_plugin_raising_in_hook_is_isolated(pm: pluggy.PluginManager) -> None:
    """A plugin that raises inside a hook is reported; the others keep working."""

    class Broken:
        @hookimpl
        def register_models(self, register: Any) -> None:
            raise RuntimeError("catalog file missing")

    pm.register(FakePlugin(), name="fakes")
    pm.register(Broken(), name="broken")
    host = Host(pm)
    assert "catalog file missing" in host.failed_plugins()["broken"]
    assert "fake" in host.models and "fake" in host.backends


def test_api_version_mismatch_names_plugin_and_versions(pm: pluggy.PluginManager) -> None:
    """A backend that targets another engine API is refused with both versions."""

    class Future(FakeBackend):
        name = "future"
        api_version = "99"

    class P:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            register(Future())

    pm.register(P(), name="future-plugin")
    host = Host(pm)
    msg = host.failed_plugins()["future-plugin"]
    assert "future-plugin" in msg and "99" in msg and "API 1" in msg
    assert "future" not in host.backends


def test_load_plugins_env_limits_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """XPUSIM_LOAD_PLUGINS loads only the named entry points."""
    monkeypatch.setenv("XPUSIM_LOAD_PLUGINS", "gpu")
    pm = get_plugin_manager()
    names = {n for n, _ in pm.list_name_plugin()}
    assert names <= {"gpu"}


def test_trace_plugins_env_prints_hook_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """XPUSIM_TRACE_PLUGINS=1 prints every hook call to standard error."""
    monkeypatch.setenv("XPUSIM_TRACE_PLUGINS", "1")
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(FakePlugin(), name="fakes")
    Host(pm)
    assert "register_backends" in capsys.readouterr().err


# --- lazy registration ------------------------------------------------------------------

LAZY_MODULE = """
from tests.fakes import FakeBackend, fake_device

class LazyBackend(FakeBackend):
    name = "lazyfake"

class Misnamed(FakeBackend):
    name = "other"

class Future(FakeBackend):
    name = "futurelazy"
    api_version = "99"
"""


@pytest.fixture
def lazy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on ``sys.path`` defining backends, not imported yet; its name."""
    name = f"xpusim_lazy_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _lazy_plugin(*refs: Lazy, devices: tuple[DeviceSpec, ...] = ()) -> object:
    class P:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            for ref in refs:
                register(ref)

        @hookimpl
        def register_devices(self, register: Any) -> None:
            for spec in devices:
                register(spec)

    return P()


def test_lazy_item_is_listed_but_imported_on_first_use(
    pm: pluggy.PluginManager, lazy_module: str
) -> None:
    """A backend registered as a Lazy reference is listed with its plugin at once, and its
    module is imported only when the backend is first asked for, once."""
    pm.register(_lazy_plugin(Lazy("lazyfake", f"{lazy_module}:LazyBackend")), name="lazy")
    host = Host(pm)
    assert "lazyfake" in host.backends and host.backends.owner("lazyfake") == "lazy"
    assert host.plugins["lazy"].registered["backends"] == ["lazyfake"]
    assert lazy_module not in sys.modules and not host.backends.loaded("lazyfake")
    backend = host.backends.get("lazyfake")
    assert lazy_module in sys.modules and backend.name == "lazyfake"
    assert host.backends.get("lazyfake") is backend


def test_lazy_import_failure_names_plugin_and_spares_the_others(
    pm: pluggy.PluginManager, lazy_module: str
) -> None:
    """A lazy item whose module cannot be imported raises a PluginError naming its plugin,
    the target and the error; the failure is recorded on the plugin, and listing the
    registry skips it while the other items keep working."""
    pm.register(_lazy_plugin(Lazy("ghost", "xpusim_no_such_module.backend:Ghost")), name="haunted")
    pm.register(_lazy_plugin(Lazy("lazyfake", f"{lazy_module}:LazyBackend")), name="lazy")
    host = Host(pm)
    assert host.failed_plugins() == {}
    with pytest.raises(PluginError) as exc:
        host.backends.get("ghost")
    msg = str(exc.value)
    assert "'haunted'" in msg and "xpusim_no_such_module" in msg and "ModuleNotFoundError" in msg
    assert "ghost" in host.failed_plugins()["haunted"]
    assert [n for n, _ in host.backends.items()] == ["lazyfake"]
    with pytest.raises(PluginError):  # remembered, not retried
        host.backends.get("ghost")


def test_lazy_object_must_carry_its_registered_name(
    pm: pluggy.PluginManager, lazy_module: str
) -> None:
    """A lazy reference whose object has another name is refused on load, naming both."""
    pm.register(_lazy_plugin(Lazy("lazyfake", f"{lazy_module}:Misnamed")), name="lazy")
    host = Host(pm)
    with pytest.raises(PluginError, match="named 'other', not 'lazyfake'"):
        host.backends.get("lazyfake")


def test_lazy_api_version_is_checked_on_load(pm: pluggy.PluginManager, lazy_module: str) -> None:
    """A lazily registered backend targeting another engine API is refused when loaded,
    with the plugin and both versions."""
    pm.register(_lazy_plugin(Lazy("futurelazy", f"{lazy_module}:Future")), name="future")
    host = Host(pm)
    with pytest.raises(PluginError) as exc:
        host.backends.get("futurelazy")
    assert "'future'" in str(exc.value) and "99" in str(exc.value) and "API 1" in str(exc.value)


def test_devices_for_a_lazy_backend_join_it_when_loaded(
    pm: pluggy.PluginManager, lazy_module: str
) -> None:
    """register_devices for a backend not imported yet does not import it; the device is
    in the backend's catalog once the backend is loaded."""
    extra = fake_device("chip-x")
    ref = Lazy("lazyfake", f"{lazy_module}:LazyBackend")
    pm.register(_lazy_plugin(ref), name="lazy")
    pm.register(_lazy_plugin(devices=(replace(extra, backend="lazyfake"),)), name="vendor")
    host = Host(pm)
    assert lazy_module not in sys.modules
    assert host.plugins["vendor"].registered["devices"] == ["chip-x"]
    assert "chip-x" in host.backends.get("lazyfake").devices()
    assert host.device("lazyfake", "chip-x").name == "chip-x"


def test_lazy_target_must_name_module_and_attribute() -> None:
    """A Lazy target without 'module:attribute' is refused with the expected form."""
    with pytest.raises(PluginError, match=r"package\.module:attribute"):
        Lazy("x", "just_a_module")


def test_every_builtin_registration_loads_under_its_name(host: Host) -> None:
    """Each lazy registration of the built-in plugins imports to an object carrying the
    registered name (a renamed class or attribute fails here, not in a user's run)."""
    registries = [r for r in vars(host).values() if isinstance(r, Registry)]
    assert len(registries) >= 6
    for registry in registries:
        names = registry.names()
        loaded = [n for n, _ in registry.items()]
        assert loaded == names, registry.errors()


def test_plugins_load_reports_a_broken_lazy_target_by_plugin(
    pm: pluggy.PluginManager, lazy_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`xpusim plugins` lists a lazily registered name without importing it; with
    --load it imports everything and lists the plugin whose target fails, with the error,
    while the other plugins stay ok."""
    import xpusim.engine.host as host_mod
    from xpusim.engine.cli import app

    pm.register(_lazy_plugin(Lazy("ghost", "xpusim_no_such_module.backend:Ghost")), name="haunted")
    pm.register(_lazy_plugin(Lazy("lazyfake", f"{lazy_module}:LazyBackend")), name="lazy")
    monkeypatch.setattr(host_mod, "_default_host", Host(pm))
    listed = CliRunner().invoke(app, ["plugins", "--json"])
    assert listed.exit_code == 0, listed.output
    assert all(p["error"] is None for p in json.loads(listed.stdout))
    assert lazy_module not in sys.modules
    loaded = CliRunner().invoke(app, ["plugins", "--load", "--json"])
    assert loaded.exit_code == 0, loaded.output
    errors = {p["name"]: p["error"] for p in json.loads(loaded.stdout)}
    assert errors["lazy"] is None and "xpusim_no_such_module" in errors["haunted"]
