"""The run pipeline: load, resolve, calibrate, compile, simulate, price, write.

Every way of running a scenario goes through these steps: ``xpusim run``
(:func:`load` then :func:`run_scenario`), ``xpusim validate`` (:func:`load` then
:func:`check`, stopping before anything is simulated) and every sweep point
(:func:`load_point` then :func:`run_scenario`). The pipeline fires the observer hooks
itself, once each: ``scenario_loaded`` when :func:`load` / :func:`load_point` have
validated, resolved and calibrated the scenario, ``run_started`` before simulating and
``run_finished`` after the run folder is written whole.

Systems are independent: one that a backend cannot run is ``unsupported``, one whose model
does not fit is ``does-not-fit``, one whose plugin raised is ``failed`` with the plugin's
error; the others still run. Input errors that concern every system (a malformed trace)
stop the run before anything is written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from xpusim.engine import __version__
from xpusim.engine.backend import Backend, Compiled
from xpusim.engine.budget import BudgetError, check_work
from xpusim.engine.calibration import apply_calibrations
from xpusim.engine.capacity import (
    CAPACITY_FIX,
    KNEE_KEYS,
    CapacitySpec,
    overload,
    overload_metrics,
    system_knee,
)
from xpusim.engine.economics import price_system, record
from xpusim.engine.errors import DoesNotFitError, ScenarioError, UnsupportedError, XpusimError
from xpusim.engine.host import Host
from xpusim.engine.metrics import vocabulary_for
from xpusim.engine.model import model_facts
from xpusim.engine.precision import QuantizedModel
from xpusim.engine.reporter import Reporter
from xpusim.engine.results import RunResult, SystemResult, check_out_dir, default_out_dir, write_run
from xpusim.engine.scenario import (
    Scenario,
    ScenarioConfig,
    load_scenario,
    resolve,
    validation_message,
)
from xpusim.engine.system import System
from xpusim.engine.traces import TraceFormat
from xpusim.engine.workload import SystemRun, WorkloadContext
from xpusim.engine.yamlsrc import Source

ProgressFn = Callable[[str, float, float], None]
"""``progress(system_name, done, total)`` as a system simulates."""

NoteFn = Callable[[str], None]
"""``note(text)``: a line the caller may show (a calibration file attached to a system)."""


# --- load, resolve, calibrate -----------------------------------------------------------


def load(
    path: str | Path,
    host: Host,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    calibrations: Sequence[Path] = (),
    note: NoteFn | None = None,
) -> Scenario:
    """Read, override, validate and resolve a scenario file, then calibrate it.

    Fires ``scenario_loaded`` once the scenario is ready to compile.
    """
    scenario = load_scenario(path, host, overrides, seed)
    return loaded(scenario, host, calibrations, note)


def load_point(
    data: dict[str, Any],
    src: Source,
    host: Host,
    base_dir: Path,
    calibrations: Sequence[Path] = (),
    note: NoteFn | None = None,
) -> Scenario:
    """Validate and resolve plain scenario ``data`` (a sweep point), then calibrate it.

    Fires ``scenario_loaded`` once the scenario is ready to compile, like :func:`load`.
    """
    scenario = resolve(data, src, host, base_dir=base_dir)
    return loaded(scenario, host, calibrations, note)


def calibrate(scenario: Scenario, host: Host, files: Sequence[Path]) -> list[str]:
    """Attach each calibration file to the systems it applies to; ``system: file`` notes."""
    return apply_calibrations(scenario, host, list(files))


def loaded(
    scenario: Scenario,
    host: Host,
    calibrations: Sequence[Path] = (),
    note: NoteFn | None = None,
) -> Scenario:
    """The last loading steps of every entry: calibrate, then fire ``scenario_loaded``."""
    for text in calibrate(scenario, host, calibrations):
        if note is not None:
            note(text)
    host.pm.hook.scenario_loaded(scenario=scenario)
    return scenario


class TraceCache:
    """Reads each trace once per run, through the registered trace formats."""

    def __init__(self, host: Host, base_dir: Path, where: str) -> None:
        self.host = host
        self.base_dir = base_dir
        self.where = where
        self._cache: dict[str, pl.DataFrame] = {}

    def __call__(self, spec: Mapping[str, Any]) -> pl.DataFrame:
        """Return the frame for a trace spec (``path``, ``format`` and options)."""
        key = repr(sorted((k, repr(v)) for k, v in spec.items()))
        if key not in self._cache:
            fmt_name = str(spec.get("format", ""))
            fmt: TraceFormat = self.host.trace_formats.get(
                fmt_name, where=f"{self.where}, at workload.trace.format"
            )
            raw_path = Path(str(spec.get("path", "")))
            path = raw_path if raw_path.is_absolute() else self.base_dir / raw_path
            options = {k: v for k, v in spec.items() if k not in ("path", "format")}
            self._cache[key] = fmt.read(path, options)
        return self._cache[key]


@dataclass
class Prepared:
    """A system compiled and checked, ready to simulate (or its non-ok result)."""

    system: System
    backend: Backend | None
    compiled: Compiled | None
    result: SystemResult


def prepare(scenario: Scenario, host: Host) -> list[Prepared]:
    """Compile every system and decide unsupported / does-not-fit before simulating."""
    out: list[Prepared] = []
    for index, system in enumerate(scenario.systems):
        res = SystemResult(
            name=system.name,
            backend=system.backend,
            device=system.device.name,
            count=system.count,
            details={"parallelism": _par(system)},
        )
        backend = host.backends.get(system.backend)
        compiled: Compiled | None = None
        model = scenario.model_for(system)
        res.metrics.update(model_facts(model, system.parallelism))
        if isinstance(model, QuantizedModel):  # the report says which formats and rates
            res.figures.update(model.figures())
            res.details["precision"] = model.describe()
        try:
            support = backend.supports(model, scenario.workload.name)
            if not support.ok:
                res.status, res.reason = "unsupported", support.reason
            else:
                work = scenario.workload.work(scenario.workload_config, system, model)
                check_work(work, scenario.source.where(("workload",)), system.name)
                compiled = backend.compile(model, system)
                fit = scenario.workload.fit(scenario.workload_config, system, compiled)
                res.details["memory"] = {
                    "need_bytes_per_device": fit.need_bytes,
                    "have_bytes_per_device": fit.have_bytes,
                    **{f"{k}_bytes": v for k, v in fit.breakdown.items()},
                }
                if not fit.fits:
                    res.status = "does-not-fit"
                    res.reason = " ".join(x for x in (fit.reason, fit.suggestion) if x)
                    compiled = None
        except UnsupportedError as exc:
            res.status, res.reason = "unsupported", str(exc)
        except ScenarioError as exc:  # bad input a plugin found: stop, write nothing
            raise placed(exc, scenario.source, ("systems", index)) from None
        except DoesNotFitError as exc:
            res.status, res.reason = "does-not-fit", str(exc)
        except BudgetError:
            raise  # the run is too large: stop, write nothing
        except MemoryError as exc:  # an absurd size: input, not a fault of the backend
            raise out_of_memory(
                scenario, "model", f"compiling the model for system {system.name!r}", exc
            ) from None
        except Exception as exc:  # a plugin fault fails its system, not the run
            res.status = "failed"
            res.reason = f"backend {system.backend!r} (plugin {host.backends.owner(system.backend)!r}) raised {type(exc).__name__}: {exc}"
            compiled = None
        out.append(Prepared(system, backend, compiled, res))
    return out


SHRINK = {
    "model": "the model is too large for this machine: shrink its sizes (layers, widths, "
    "vocabulary)",
    "workload": "the workload is too large for this machine: shrink its sizes (counts, "
    "lengths, batch)",
}
"""What to shrink when compiling (``model``) or simulating (``workload``) runs out of
memory."""


def out_of_memory(scenario: Scenario, key: str, doing: str, exc: MemoryError) -> XpusimError:
    """The input error for a ``MemoryError`` raised while ``doing`` (an absurd size is
    bad input, not a fault of the plugin), placed at the scenario's ``key`` block."""
    return XpusimError(
        f"{scenario.source.where((key,))}: {doing} ran out of memory ({str(exc)[:200]}); "
        f"{SHRINK[key]}."
    )


def _par(system: System) -> dict[str, Any]:
    p = system.parallelism
    return {"data": p.data, "tensor": p.tensor, "pipeline": p.pipeline, "zero": p.zero}


def read_trace(scenario: Scenario, host: Host) -> None:
    """Read every trace the workload names, so a bad trace fails before any work."""
    read = TraceCache(host, scenario.base_dir, scenario.source.file)
    for spec in scenario.workload.traces(scenario.workload_config):
        read(spec)


def check(scenario: Scenario, host: Host) -> list[Prepared]:
    """What ``xpusim validate`` does: read the trace and compile and fit every system,
    simulating nothing."""
    capacity_spec(scenario)
    read_trace(scenario, host)
    return prepare(scenario, host)


def price(res: SystemResult, system: System, compiled: Compiled, scenario: Scenario) -> None:
    """The pricing step: energy, cost and carbon of one simulated system, from its
    declared metrics and frames, recorded on ``res`` with the figures the backend used."""
    res.figures.update(compiled.figures_used())
    priced = price_system(
        system.device,
        system.count,
        scenario.config.economics,
        compiled.power_model(),
        res.metrics,
        res.frames,
    )
    record(res, priced)


def simulate(scenario: Scenario, host: Host, progress: ProgressFn | None = None) -> RunResult:
    """Simulate every system of ``scenario`` and return the results (nothing written)."""
    traces = TraceCache(host, scenario.base_dir, scenario.source.file)
    prepared = prepare(scenario, host)
    results: list[SystemResult] = []
    for index, prep in enumerate(prepared):
        res = prep.result
        if prep.compiled is not None:
            system = prep.system

            def tick(done: float, total: float, _n: str = system.name) -> None:
                if progress is not None:
                    progress(_n, done, total)

            ctx = WorkloadContext(
                system=system,
                compiled=prep.compiled,
                model=scenario.model_for(system),
                seed=scenario.seed,
                base_dir=scenario.base_dir,
                resolve_trace=traces,
                progress=tick,
            )
            started = time.perf_counter()
            try:
                run: SystemRun = scenario.workload.simulate(scenario.workload_config, ctx)
            except (DoesNotFitError, UnsupportedError) as exc:
                res.status = "does-not-fit" if isinstance(exc, DoesNotFitError) else "unsupported"
                res.reason = str(exc)
            except ScenarioError as exc:
                # bad input: stop, write nothing; a plugin's message is given its place
                raise placed(exc, scenario.source, ("systems", index)) from None
            except BudgetError as exc:  # found once a trace was read: given its place
                text = str(exc)
                if not text.startswith(scenario.source.file):
                    text = f"{scenario.source.where(('workload',))}: {text}"
                raise BudgetError(text) from None
            except XpusimError:
                raise  # bad input concerns every system: stop, write nothing
            except MemoryError as exc:  # an absurd size: input, not a fault of the plugin
                raise out_of_memory(
                    scenario, "workload", f"simulating system {system.name!r}", exc
                ) from None
            except Exception as exc:
                res.status = "failed"
                res.reason = (
                    f"simulating on backend {system.backend!r} raised {type(exc).__name__}: {exc}"
                )
            else:
                res.metrics.update(run.metrics)
                res.metrics.setdefault("simulated_s", run.simulated_s)
                res.metrics.update(overload_metrics(overload(run.frames.get("requests"))))
                res.frames = run.frames
                price(res, system, prep.compiled, scenario)
                res.figures.update(run.figures)
            res.details["wall_s"] = time.perf_counter() - started
        results.append(res)
    knees(scenario, host, results)
    if all(r.status == "does-not-fit" for r in results):
        reasons = " ".join(f"{r.name}: {r.reason}" for r in results)
        raise DoesNotFitError(
            f"{scenario.source.file}: the model does not fit any system of the scenario. {reasons}"
        )
    return RunResult(
        scenario=scenario.name,
        seed=scenario.seed,
        version=__version__,
        systems=results,
        scenario_data=scenario.data,
        workload=scenario.workload.name,
        model=scenario.model.name,
        vocabulary=vocabulary_for(scenario.workload),
        detail=scenario.config.results.detail,
    )


def knees(scenario: Scenario, host: Host, results: Sequence[SystemResult]) -> None:
    """When the scenario asks (``capacity: {search: true}``), add each ok system's goodput
    knee, ``max_rate_within_slo_per_s`` (``max_concurrency_within_slo`` for closed-loop
    clients), by bisection over short simulations of it alone."""
    spec = capacity_spec(scenario)
    if not spec.search:
        return

    def one(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
        sc = resolve(dict(data), scenario.source, host, base_dir=scenario.base_dir)
        res = simulate(sc, host).systems[0]
        return res.metrics if res.status == "ok" else None

    for i, res in enumerate(results):
        if res.status != "ok":
            continue
        found = system_knee(scenario.data, i, res.metrics, one, spec)
        if found is not None:
            res.details["capacity"] = found
            for key in KNEE_KEYS:  # a rate, or closed clients' count
                if key in found:
                    res.metrics[key] = found[key]


def capacity_spec(scenario: Scenario) -> CapacitySpec:
    """The scenario's ``capacity:`` block, validated (errors name the file, line, key and
    the block's form, :data:`~xpusim.engine.capacity.CAPACITY_FIX`)."""
    raw = scenario.data.get("capacity")
    try:
        return CapacitySpec.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        where = validation_message(exc, scenario.source, ("capacity",))
        raise ScenarioError(f"{where} {CAPACITY_FIX}") from None


def placed(exc: ScenarioError, source: Source, path: tuple[str | int, ...]) -> ScenarioError:
    """``exc`` with the scenario file, line and key path in front, unless its message
    already names the file (a plugin's check knows the value, not where it was written)."""
    text = str(exc)
    if text.startswith(source.file):
        return exc
    key = re.match(r"([A-Za-z_]\w*(?:\.\w+)*)\s*([:=])", text)
    if key is not None:  # "workload.tokens: ..." or "parallelism.tensor=5 ..."
        parts = tuple(int(k) if k.isdigit() else k for k in key.group(1).split("."))
        path = parts if parts[0] in ScenarioConfig.model_fields else (*path, *parts)
        if key.group(2) == ":":  # the place now says the key: not twice
            text = text[key.end() :].lstrip()
    return type(exc)(f"{source.where(path)}: {text}")


def utc_stamp() -> str:
    """A UTC timestamp for default run-folder names."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write(result: RunResult, out_dir: Path, reporters: Sequence[Reporter]) -> Path:
    """The writing step: the run folder, whole or not at all."""
    return write_run(result, out_dir, reporters)


def run_scenario(
    scenario: Scenario,
    host: Host,
    out_dir: Path | None = None,
    results_root: Path = Path("results"),
    progress: ProgressFn | None = None,
    reporters: Sequence[Reporter] | None = None,
) -> tuple[RunResult, Path]:
    """Simulate a loaded ``scenario``, price it and write its run folder whole.

    Fires ``run_started`` before simulating and ``run_finished`` after the folder is
    written. ``reporters`` default to every registered one; returns results and folder.
    """
    target = (
        out_dir
        if out_dir is not None
        else default_out_dir(results_root, scenario.name, utc_stamp())
    )
    check_out_dir(target)  # before the work, not after it
    chosen = list(reporters) if reporters is not None else [r for _, r in host.reporters.items()]
    host.pm.hook.run_started(scenario=scenario, out_dir=str(target))
    result = simulate(scenario, host, progress)
    folder = write(result, target, chosen)
    host.pm.hook.run_finished(results=result)
    return result, folder
