"""The hooks xpusim plugins implement.

Built-in and third-party plugins alike are modules (or objects) listed under the entry
point group ``xpusim`` and implement any of these hooks with ``@hookimpl``::

    from xpusim import hookimpl

    @hookimpl
    def register_backends(register):
        register(MyChipBackend())

Registration hooks take a ``register`` callback so one plugin can register any number of
things; the host's registries own name checks and de-duplication.

Every command imports every plugin's entry-point module, so keep that module light: pass
``register`` a :class:`~xpusim.engine.lazy.Lazy` reference (a name and an import path)
instead of the object, and the object's module is imported only when a scenario or
command first uses that name::

    from xpusim.engine.lazy import Lazy

    @hookimpl
    def register_backends(register):
        register(Lazy("mychip", "mychip_xpusim.backend:MyChipBackend"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from xpusim.engine.backend import Backend
    from xpusim.engine.device import DeviceSpec
    from xpusim.engine.executor import Executor
    from xpusim.engine.lazy import Lazy
    from xpusim.engine.model import ModelFamily
    from xpusim.engine.policies import Router, Scheduler, ServingTechnique
    from xpusim.engine.reporter import Reporter
    from xpusim.engine.results import RunResult
    from xpusim.engine.scenario import Scenario
    from xpusim.engine.traces import TraceFormat
    from xpusim.engine.workload import Workload

PROJECT = "xpusim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: what a plugin adds -------------------------------------------------


@hookspec
def register_backends(register: Callable[[Backend | Lazy], None]) -> None:
    """Register hardware backends.

    Fires once when the host builds its registries. Call ``register(backend)`` for each
    :class:`~xpusim.engine.backend.Backend` instance, or ``register(Lazy(name, target))``
    with a :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its
    ``name`` is the key scenarios use in ``systems[].backend``. Return value is ignored.
    """


@hookspec
def register_devices(register: Callable[[DeviceSpec], None]) -> None:
    """Register device specs for an existing backend.

    Fires after every backend is registered. Call ``register(spec)`` with a
    :class:`~xpusim.engine.device.DeviceSpec` whose ``backend`` names a registered backend; the
    device joins that backend's catalog, so a vendor adds a chip without writing a
    backend. A device for a backend registered lazily and not imported yet waits, and
    joins the catalog when the backend is first used. Takes the spec itself (no lazy
    reference). Return value is ignored.
    """


@hookspec
def register_models(register: Callable[[ModelFamily | Lazy], None]) -> None:
    """Register model families.

    Call ``register(family)`` for each :class:`~xpusim.engine.model.ModelFamily`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its ``name``
    is the key used in ``model.family``. Return value is ignored.
    """


@hookspec
def register_workloads(register: Callable[[Workload | Lazy], None]) -> None:
    """Register workload kinds.

    Call ``register(workload)`` for each :class:`~xpusim.engine.workload.Workload`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its ``name``
    is the key used in ``workload.kind``. Return value is ignored.
    """


@hookspec
def register_trace_formats(register: Callable[[TraceFormat | Lazy], None]) -> None:
    """Register trace readers.

    Call ``register(fmt)`` for each :class:`~xpusim.engine.traces.TraceFormat`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its ``name``
    is the key used in ``workload.trace.format``. Return value is ignored.
    """


@hookspec
def register_reporters(register: Callable[[Reporter | Lazy], None]) -> None:
    """Register output formats written into every run folder.

    Call ``register(reporter)`` for each :class:`~xpusim.engine.reporter.Reporter`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported when a run writes its
    folder). Return value is ignored.
    """


@hookspec
def register_executors(register: Callable[[Executor | Lazy], None]) -> None:
    """Register sweep executors.

    Call ``register(executor)`` for each :class:`~xpusim.engine.executor.Executor`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its ``name``
    is the value of ``xpusim sweep --executor``. Return value is ignored.
    """


@hookspec
def register_schedulers(register: Callable[[Scheduler | Lazy], None]) -> None:
    """Register serving batch schedulers.

    Fires once when the host builds its registries. Call ``register(scheduler)`` for each
    :class:`~xpusim.engine.policies.Scheduler`, or a :class:`~xpusim.engine.lazy.Lazy`
    reference to one (imported on first use); its ``name`` is the key used in
    ``workload.scheduler.kind`` of the ``serving`` and ``offline`` workloads. Return value
    is ignored.
    """


@hookspec
def register_routers(register: Callable[[Router | Lazy], None]) -> None:
    """Register serving request routers.

    Fires once when the host builds its registries. Call ``register(router)`` for each
    :class:`~xpusim.engine.policies.Router`, or a :class:`~xpusim.engine.lazy.Lazy`
    reference to one (imported on first use); its ``name`` is the key used in
    ``workload.router`` of the ``serving`` workload. Return value is ignored.
    """


@hookspec
def register_serving_techniques(register: Callable[[ServingTechnique | Lazy], None]) -> None:
    """Register serving techniques: prefix caches, speculative decoding, adapters, pool
    layouts.

    Fires once when the host builds its registries. Call ``register(technique)`` for
    each :class:`~xpusim.engine.policies.ServingTechnique`, or a
    :class:`~xpusim.engine.lazy.Lazy` reference to one (imported on first use); its
    ``name`` is the key of its block in a ``serving`` scenario's ``workload`` mapping
    (``workload.prefix_caching: {...}`` switches on the technique ``prefix_caching``), and
    its ``schema`` validates that block. Return value is ignored.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``xpusim`` command line.

    Fires when the CLI starts, unless the command line names a built-in command; ``cli``
    is the root ``typer.Typer`` application. Add a command with ``@cli.command()`` or a
    group with ``cli.add_typer(app, name=...)``; import what the command needs inside its
    function, so ``xpusim --help`` stays fast. Return value is ignored.
    """


# --- observers: what a plugin watches -------------------------------------------------


@hookspec
def scenario_loaded(scenario: Scenario) -> None:
    """Called after a scenario is loaded and validated, before anything is simulated.

    Fires once per scenario the run pipeline loads (``xpusim run``, ``xpusim validate``,
    each sweep point), after calibration files are attached. ``scenario`` is the validated :class:`~xpusim.engine.scenario.Scenario`; observers must not
    change it. Return value is ignored.
    """


@hookspec
def run_started(scenario: Scenario, out_dir: str) -> None:
    """Called when a run begins; ``out_dir`` is where its folder will land.

    Fires once per run and once per sweep point that runs (not for ``xpusim validate``,
    nor for a point whose folder is already complete).

    Return value is ignored.
    """


@hookspec
def run_finished(results: RunResult) -> None:
    """Called after a run folder is written whole, with the :class:`~xpusim.engine.results.RunResult`.

    Fires once per run and once per sweep point, after its folder is in place.

    Return value is ignored.
    """
