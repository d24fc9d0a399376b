"""The plugin host: registries, isolation of broken plugins, name checks, API versions."""

from __future__ import annotations

from typing import Any

import pluggy
import pytest

from tests.fakes import FakeBackend, FakePlugin
from xpusim import hookimpl
from xpusim.engine.errors import DuplicateNameError, UnknownNameError
from xpusim.engine.host import Host, get_plugin_manager
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
