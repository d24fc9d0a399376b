"""The plugin host: builds the plugin manager and the registries from it.

Nothing happens at import time. :func:`get_plugin_manager` loads entry points of group
``xpusim`` (built-ins are listed there too, exactly like a third-party package), recording
a plugin that fails to import instead of stopping. :func:`build_host` calls every
registration hook plugin by plugin, so each registered name knows its plugin and a plugin
that raises inside a hook is reported by name while the others keep working.

Loading is lazy: a plugin may register a :class:`~xpusim.engine.lazy.Lazy` reference
instead of an object, and its module is imported only when the item is first used
(``Registry.get``). The API-version and name checks run then; a failure is a
:class:`~xpusim.engine.errors.PluginError` naming the plugin, and is recorded on that
plugin's :class:`PluginInfo`. Devices registered for a backend that is not imported yet
wait and join its catalog when it is.

Environment: ``XPUSIM_LOAD_PLUGINS=a,b`` loads only those entry points (an empty value or a
name no installed plugin has is a :class:`~xpusim.engine.errors.PluginError`);
``XPUSIM_TRACE_PLUGINS=1`` prints every hook call to standard error.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from xpusim.engine import hookspecs
from xpusim.engine.apiversion import API_VERSION
from xpusim.engine.errors import PluginError, UnknownNameError, XpusimError
from xpusim.engine.registry import Registry, unknown_message

if TYPE_CHECKING:  # the contracts are imported by the plugins that implement them
    from xpusim.engine.backend import Backend
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.executor import Executor
    from xpusim.engine.model import ModelFamily
    from xpusim.engine.policies import Router, Scheduler, ServingTechnique
    from xpusim.engine.reporter import Reporter
    from xpusim.engine.traces import TraceFormat
    from xpusim.engine.workload import Workload

GROUP = "xpusim"


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin: its name, distribution version and what it added."""

    name: str
    version: str = ""
    module: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""
    hooks: list[str] = field(default_factory=list)


def _selected() -> set[str] | None:
    raw = os.environ.get("XPUSIM_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _check_selected(wanted: set[str], installed: list[str]) -> None:
    """Refuse an ``XPUSIM_LOAD_PLUGINS`` that names no plugin or one not installed: it
    would silently load nothing, and every later name would be "unknown"."""
    valid = ", ".join(sorted(set(installed))) or "(none installed)"
    if not wanted:
        raise PluginError(
            f"XPUSIM_LOAD_PLUGINS is set but names no plugin, so none would load; unset it "
            f"to load every plugin, or name some, separated by commas: {valid}."
        )
    unknown = sorted(wanted - set(installed))
    if unknown:
        raise PluginError(
            f"XPUSIM_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed "
            f"plugin is called; installed plugins: {valid}. Fix the names or unset it."
        )


def get_plugin_manager(
    load_entrypoints: bool = True, only: Iterable[str] | None = None
) -> pluggy.PluginManager:
    """Build a fresh plugin manager.

    Loads entry points of group ``xpusim`` when ``load_entrypoints``; ``only`` (or
    ``XPUSIM_LOAD_PLUGINS``) limits which. Import failures are kept on the manager as
    ``pm.xpusim_failures`` (name -> message) rather than raised.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    failures: dict[str, str] = {}
    versions: dict[str, str] = {}
    wanted = set(only) if only is not None else _selected()
    if load_entrypoints:
        eps = sorted(md.entry_points(group=GROUP), key=lambda e: e.name)
        if only is None and wanted is not None:
            _check_selected(wanted, [ep.name for ep in eps])
        for ep in eps:
            if wanted is not None and ep.name not in wanted:
                continue
            if pm.get_plugin(ep.name) is not None or ep.name in failures:
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                failures[ep.name] = f"{type(exc).__name__}: {exc}"
            dist = getattr(ep, "dist", None)
            versions[ep.name] = dist.version if dist is not None else ""
    pm.xpusim_failures = failures  # type: ignore[attr-defined]
    pm.xpusim_versions = versions  # type: ignore[attr-defined]
    if os.environ.get("XPUSIM_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(f"[xpusim plugins] {msg}"))
        pm.enable_tracing()
    return pm


class Host:
    """The registries built from a plugin manager, and look-ups across them."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.backends: Registry[Backend] = Registry(
            "backend", self._backend_loaded, self._load_failed
        )
        self.models: Registry[ModelFamily] = Registry(
            "model family", self._loaded, self._load_failed
        )
        self.workloads: Registry[Workload] = Registry(
            "workload kind", self._loaded, self._load_failed
        )
        self.trace_formats: Registry[TraceFormat] = Registry(
            "trace format", self._loaded, self._load_failed
        )
        self.reporters: Registry[Reporter] = Registry("reporter", self._loaded, self._load_failed)
        self.executors: Registry[Executor] = Registry("executor", self._loaded, self._load_failed)
        self.schedulers: Registry[Scheduler] = Registry(
            "scheduler", self._loaded, self._load_failed
        )
        self.routers: Registry[Router] = Registry("router", self._loaded, self._load_failed)
        self.serving_techniques: Registry[ServingTechnique] = Registry(
            "serving technique", self._loaded, self._load_failed
        )
        self.plugins: dict[str, PluginInfo] = {}
        # devices registered for a backend not imported yet: (plugin, spec) by backend
        self._pending_devices: dict[str, list[tuple[str, DeviceSpec]]] = {}
        for name, err in getattr(pm, "xpusim_failures", {}).items():
            self.plugins[name] = PluginInfo(name=name, error=err, version=self._version(name))
        self._register_all()

    # -- building ----------------------------------------------------------------------

    def _version(self, plugin: str) -> str:
        return str(getattr(self.pm, "xpusim_versions", {}).get(plugin, ""))

    def _info(self, plugin: str) -> PluginInfo:
        if plugin not in self.plugins:
            obj = self.pm.get_plugin(plugin)
            self.plugins[plugin] = PluginInfo(
                name=plugin,
                version=self._version(plugin) or str(getattr(obj, "__version__", "")),
                module=getattr(obj, "__name__", type(obj).__name__),
                hooks=sorted(h.name for h in self.pm.get_hookcallers(obj) or []),
            )
        return self.plugins[plugin]

    def _call(self, hook: str, add: Callable[[str, Any], None]) -> None:
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            plugin = impl.plugin_name
            info = self._info(plugin)
            if info.error:
                continue

            def register(item: Any, _plugin: str = plugin) -> None:
                add(_plugin, item)
                name = getattr(item, "name", "?")
                self._info(_plugin).registered.setdefault(
                    hook.removeprefix("register_"), []
                ).append(str(name))

            obj = self.pm.get_plugin(plugin)
            if obj is None:
                continue
            others = [p for _, p in self.pm.list_name_plugin() if p is not obj and p is not None]
            try:
                self.pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
            except XpusimError as exc:
                info.error = f"in {hook}: {exc}"
            except Exception as exc:
                info.error = f"in {hook}: {type(exc).__name__}: {exc}"

    def _loaded(self, name: str, item: Any, plugin: str) -> None:
        """Checks every registered object passes when it first exists: the engine API."""

        want = str(getattr(item, "api_version", API_VERSION))
        if want.split(".")[0] != API_VERSION.split(".")[0]:
            raise PluginError(
                f"plugin {plugin!r} targets xpusim engine API {want}, but this engine speaks "
                f"API {API_VERSION}; install a release of the plugin made for API {API_VERSION}."
            )

    def _backend_loaded(self, name: str, backend: Backend, plugin: str) -> None:
        """A backend's checks, then the devices other plugins registered for it."""
        self._loaded(name, backend, plugin)
        for owner, spec in self._pending_devices.pop(name, []):
            try:
                self._attach_device(owner, spec, backend)
            except XpusimError as exc:
                self._info(owner).error = f"in register_devices: {exc}"

    def _load_failed(self, name: str, plugin: str, error: PluginError) -> None:
        """Record a lazy item that failed to import on its plugin, for ``xpusim plugins``."""
        info = self._info(plugin)
        if not info.error:
            info.error = str(error)

    def _register_all(self) -> None:
        for plugin in [n for n, _ in self.pm.list_name_plugin()]:
            self._info(plugin)
        self._call("register_backends", lambda p, b: self.backends.add(b.name, b, p))
        self._call("register_devices", self._add_device)
        self._call("register_models", lambda p, m: self.models.add(m.name, m, p))
        self._call("register_workloads", lambda p, w: self.workloads.add(w.name, w, p))
        self._call("register_trace_formats", lambda p, t: self.trace_formats.add(t.name, t, p))
        self._call("register_reporters", lambda p, r: self.reporters.add(r.name, r, p))
        self._call("register_executors", lambda p, e: self.executors.add(e.name, e, p))
        self._call("register_schedulers", lambda p, s: self.schedulers.add(s.name, s, p))
        self._call("register_routers", lambda p, r: self.routers.add(r.name, r, p))
        self._call(
            "register_serving_techniques", lambda p, t: self.serving_techniques.add(t.name, t, p)
        )

    def _add_device(self, plugin: str, spec: DeviceSpec) -> None:
        where = f"device {spec.name!r} from plugin {plugin!r}"
        if spec.backend not in self.backends:
            self.backends.get(spec.backend, where=where)  # raises, listing the backends
        if self.backends.loaded(spec.backend):
            self._attach_device(plugin, spec, self.backends.get(spec.backend, where=where))
        else:
            self._pending_devices.setdefault(spec.backend, []).append((plugin, spec))

    def _attach_device(self, plugin: str, spec: DeviceSpec, backend: Backend) -> None:
        if spec.name in backend.devices():
            raise PluginError(
                f"device {spec.name!r} from plugin {plugin!r} is already in backend "
                f"{spec.backend!r}'s catalog; give it another name."
            )
        backend.add_device(spec)

    # -- look-ups ----------------------------------------------------------------------

    def device(self, backend: str, name: str, where: str = "") -> DeviceSpec:
        """The device ``name`` of ``backend`` (aliases accepted), or an error listing the
        backend's devices and the nearest match."""
        be = self.backends.get(backend, where=where)
        devs = be.devices()
        if name in devs:
            return devs[name]
        for spec in devs.values():
            if name in spec.aliases:
                return spec
        names = [*devs, *(a for spec in devs.values() for a in spec.aliases)]
        message = unknown_message(f"{backend} device", name, names, where)
        for other in self.backends.names():
            if other != backend and self._has_device(other, name):
                message += f" {name!r} is a {other} device: set backend: {other}."
        raise UnknownNameError(message)

    def _has_device(self, backend: str, name: str) -> bool:
        """Whether ``backend`` (if it loads) has a device or alias called ``name``."""
        try:
            devs = self.backends.get(backend).devices()
        except XpusimError:  # a plugin that fails to load has no devices to offer
            return False
        return name in devs or any(name in spec.aliases for spec in devs.values())

    def failed_plugins(self) -> dict[str, str]:
        """Plugins that failed to import or raised in a hook, with their errors."""
        return {n: i.error for n, i in self.plugins.items() if i.error}

    def load_all(self) -> dict[str, str]:
        """Import every lazily registered object now (what ``xpusim plugins --load``
        does), so a missing dependency shows before a scenario needs it; returns
        :meth:`failed_plugins` afterwards."""
        for registry in vars(self).values():
            if isinstance(registry, Registry):
                for _ in registry.items():  # a failure is recorded on its plugin
                    pass
        return self.failed_plugins()


def build_host(pm: pluggy.PluginManager | None = None) -> Host:
    """Build the registries from ``pm`` (a fresh entry-point manager by default)."""
    return Host(pm if pm is not None else get_plugin_manager())


_DEFAULT_LOCK = threading.RLock()
_default_pm: pluggy.PluginManager | None = None
_default_host: Host | None = None


def default_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager of this process, built once on first use (entry points are
    imported, the objects they register are not). Thread-safe."""
    global _default_pm
    with _DEFAULT_LOCK:
        if _default_pm is None:
            _default_pm = get_plugin_manager()
        return _default_pm


def default_host() -> Host:
    """The plugin host of this process, built once from :func:`default_plugin_manager`.

    The command line, sweep workers and the conformance kit all use this one host, so a
    process registers its plugins once however many runs or sweep points it serves.
    Thread-safe: executors that run several points in one process share it.
    """
    global _default_host
    with _DEFAULT_LOCK:
        if _default_host is None:
            _default_host = build_host(default_plugin_manager())
        return _default_host
