"""The ``xpusim`` command line (typer).

Exit status: 0 ok, 2 bad input (one paragraph on standard error, never a traceback),
1 internal fault, 130 interrupted (nothing written).

Start-up is kept short: this module imports only typer at the top; rich, the plugin host
and each command's implementation are imported inside the command that needs them, and
plugins' extra commands are added only when the command line does not name a built-in
command (``xpusim --help`` lists them; ``xpusim version`` loads no plugin at all).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast


def _stop_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while this module imports typer and rich: nothing exists yet, so stop at
    once with the interrupt status instead of printing an import traceback."""
    os.write(2, b"interrupted: stopped cleanly, nothing was written.\n")
    os._exit(130)


# Held only while this module is imported (restored at its end); see _stop_while_starting.
_SIGINT_BEFORE = (
    signal.signal(signal.SIGINT, _stop_while_starting)
    if threading.current_thread() is threading.main_thread()
    else None
)

import typer  # noqa: E402

from xpusim.engine import __version__  # noqa: E402
from xpusim.engine.errors import XpusimError  # noqa: E402

if TYPE_CHECKING:
    import pluggy
    from rich.console import Console

    from xpusim.engine.host import Host

app = typer.Typer(
    name="xpusim",
    help="Simulate ML workloads on candidate hardware: throughput, latency, energy and cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _LazyConsole:
    """A rich ``Console`` made on first use, so commands that print nothing through rich
    (``version``) do not import it."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    @functools.cached_property
    def _console(self) -> Console:
        from rich.console import Console

        if self._stderr:
            return Console(stderr=True, highlight=False)
        # A pipe or a CI log is not a terminal: give tables room rather than 80 columns.
        return Console(highlight=False, width=None if sys.stdout.isatty() else 180)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console, name)


out = cast("Console", _LazyConsole(stderr=False))
"""Standard output (a rich console, created on first use)."""
err = cast("Console", _LazyConsole(stderr=True))
"""Standard error (a rich console, created on first use)."""

T = TypeVar("T")

AllowOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-module",
        help="Let the scenario import and run code from this package (a `family: torch` "
        "model factory); repeatable. Nothing is allowed otherwise.",
    ),
]
"""``--allow-module PKG``: the trust boundary of a scenario (see docs/reliability.md)."""

MaxEventsOption = Annotated[
    str | None,
    typer.Option(
        "--max-events",
        help="The work budget: estimated simulation events one system may take (default "
        "1e8, about a minute); a larger run is refused before it starts. Also "
        "XPUSIM_MAX_EVENTS.",
    ),
]
"""``--max-events N``: raise (or lower) the work budget (see engine/budget.py)."""


def _before_work(
    allow: list[str] | None, out_dir: Path | None, spills: bool, max_events: str | None = None
) -> None:
    """The checks every command that may run user code or write does first: the allowed
    modules, the work budget, the spill settings (removing spill folders killed runs left)
    and ``--out``."""
    from xpusim.engine import budget, trust

    trust.allow(allow or [])
    budget.set_max_events(max_events)
    budget.max_events()  # a junk XPUSIM_MAX_EVENTS is refused before any work
    if spills:
        from xpusim.engine.results import check_spill_settings

        check_spill_settings()
    if out_dir is not None:
        from xpusim.engine.results import check_out_dir

        check_out_dir(out_dir)


def _check_inputs(paths: list[Path], what: str, limit: int) -> None:
    """Refuse input files that are not regular files of at most ``limit`` bytes."""
    from xpusim.engine.safeio import check_regular

    for path in paths:
        check_regular(path, what, limit)


_said: list[str] = []
"""Messages already printed, so that an interrupt is reported once."""


def _interrupted() -> None:
    """Say once that the command was interrupted and wrote nothing."""
    if "interrupted" not in _said:
        _said.append("interrupted")
        sys.stderr.write("interrupted: stopped cleanly, nothing was written.\n")


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn`` turning input errors into exit 2 and interrupts into exit 130."""
    try:
        return fn()
    except XpusimError as exc:
        from xpusim.engine.report.escape import terminal

        err.print(
            f"[bold red]error:[/] {terminal(exc)}", soft_wrap=True, markup=True, highlight=False
        )
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _said.clear()
        _interrupted()
        raise typer.Exit(130) from None
    except SystemExit as exc:
        # code inside the command (a plugin) called sys.exit(): never a success
        from xpusim.engine.report.escape import terminal

        err.print(
            f"internal error: code running inside xpusim called sys.exit({terminal(exc.code)}); "
            f"nothing was written.",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _pm() -> pluggy.PluginManager:
    """The plugin manager of this process, built once (entry points are imported, the
    objects they register are not): :func:`xpusim.engine.host.default_plugin_manager`."""
    from xpusim.engine.host import default_plugin_manager

    return default_plugin_manager()


def _host() -> Host:
    """The host of this process, built once: :func:`xpusim.engine.host.default_host`."""
    from xpusim.engine.host import default_host

    return default_host()


CALIBRATION_BYTES = 64 * 2**20
"""Largest calibration file (``--calibration``) read: a fit is a few kilobytes."""
POINTS_BYTES = 256 * 2**20
"""Largest points file (``calibrate --points``) read: measured kernels, one per line."""
SUMMARY_BYTES = 256 * 2**20
"""Largest ``summary.json`` of a compared run folder read."""
MAX_WORKERS = 1024
"""Most parallel workers a sweep may start (each is a process)."""

# --- run / validate ---------------------------------------------------------------------


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder to create.")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: KEY.PATH=VALUE.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (overrides the scenario's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(help="A fitted calibration file; applies to systems of its device."),
    ] = None,
    allow: AllowOption = None,
    max_events: MaxEventsOption = None,
) -> None:
    """Run one scenario on all its systems and write a run folder."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from xpusim.engine.report.escape import terminal
    from xpusim.engine.report.terminal import summary_table
    from xpusim.engine.run import load, run_scenario

    def go() -> None:
        _before_work(allow, out_dir, spills=True, max_events=max_events)
        _check_inputs(calibration or [], "calibration file", CALIBRATION_BYTES)
        host = _host()
        sc = load(
            scenario,
            host,
            sets or [],
            seed,
            calibrations=calibration or [],
            note=lambda text: err.print(f"calibration: {terminal(text)}"),
        )
        show = not quiet and err.is_terminal
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not show,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(name: str, done: float, total: float) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"simulating {name}", total=total or None)
                bar.update(tasks[name], completed=done, total=total or None)

            result, folder = run_scenario(sc, host, out_dir, progress=progress)
        out.print(summary_table(result.summary(), result.vocabulary))
        for s in result.systems:
            if s.status != "ok":
                out.print(
                    f"[yellow]{terminal(s.name)}[/]: {s.status}: {terminal(s.reason)}",
                    soft_wrap=True,
                )
            for why in sorted(set(dict(s.details.get("not_known", {})).values())):
                out.print(f"[dim]{terminal(s.name)}: {terminal(why)}[/]", soft_wrap=True)
        out.print(f"run folder: {terminal(folder)}")

    guarded(go)


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY.PATH=VALUE.")] = None,
    allow: AllowOption = None,
    max_events: MaxEventsOption = None,
) -> None:
    """Check a scenario (schema, plugins, devices, traces, memory fit) without simulating.

    Code the scenario names (a `family: torch` factory) is imported and run only from
    packages given with --allow-module; otherwise validation stops there."""
    from xpusim.engine.report.escape import terminal
    from xpusim.engine.run import check, load

    def go() -> None:
        _before_work(allow, None, spills=False, max_events=max_events)
        host = _host()
        sc = load(scenario, host, sets or [])
        for prep in check(sc, host):
            r = prep.result
            note = f": {r.reason}" if r.reason else ""
            out.print(
                terminal(f"{r.name} ({r.backend}/{r.device} x{r.count}): {r.status}{note}"),
                soft_wrap=True,
            )
        out.print(
            terminal(
                f"{scenario}: valid ({len(sc.systems)} systems, workload {sc.workload.name})."
            ),
        )

    guarded(go)


@app.command()
def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file with a sweep: block.")],
    executor: Annotated[str, typer.Option(help="Where points run: local or dask.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Dask scheduler address, tcp://HOST:PORT.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Parallel workers (local pool or local Dask cluster).", min=1, max=MAX_WORKERS
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Sweep folder.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY.PATH=VALUE.")] = None,
    retries: Annotated[
        int, typer.Option(help="Retries of a point whose worker died.", min=0, max=100)
    ] = 2,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(help="A fitted calibration file; applies to systems of its device."),
    ] = None,
    allow: AllowOption = None,
    max_events: MaxEventsOption = None,
) -> None:
    """Run every point of a scenario's sweep through an executor; re-runs skip done points."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from xpusim.engine.report.escape import plain
    from xpusim.engine.run import utc_stamp
    from xpusim.engine.scenario import (
        apply_override,
        parse_set,
        read_scenario_data,
        set_label,
    )
    from xpusim.engine.sweep import run_sweep

    def go() -> None:
        _before_work(allow, None, spills=True, max_events=max_events)
        _check_inputs(calibration or [], "calibration file", CALIBRATION_BYTES)
        if out_dir is not None:
            from xpusim.engine.outpaths import check_not_in_run, check_not_symlink

            check_not_symlink(out_dir, "--out")
            check_not_in_run(out_dir, "--out")
        host = _host()
        ex = host.executors.get(executor, where="--executor")
        data, src = read_scenario_data(scenario)
        for item in sets or []:
            key, value = parse_set(item)
            apply_override(data, key, value, set_label(item))
        name = str(data.get("name", scenario.stem))
        target = out_dir or Path("results") / f"{name}-sweep-{utc_stamp()}"
        with Progress(
            TextColumn("sweep"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} points"),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("sweep", total=None, failed="")

            def progress(done: int, total: int, failed: int) -> None:
                bar.update(
                    task,
                    completed=done,
                    total=total,
                    failed=f"[red]{failed} failed[/]" if failed else "",
                )

            res = run_sweep(
                scenario,
                data,
                src,
                ex,
                target,
                workers=workers,
                address=address,
                retries=retries,
                progress=progress,
                reporters=host.reporters.names(),
                calibrations=calibration or [],
            )
        out.print(
            f"sweep {name}: {res.points} points: {res.ran} ran, {res.skipped} already done, {res.failed} failed, in {res.wall_s:.1f} s "
            f"on {executor}.",
            soft_wrap=True,
            markup=False,
        )
        report = (res.out_dir / "sweep.md").read_text(encoding="utf-8")
        out.print("\n".join(map(plain, report.splitlines())), markup=False, soft_wrap=True)
        out.print(
            f"results: {res.out_dir / 'summary.parquet'} (one row per point and system), "
            f"{res.out_dir / 'sweep.md'}, run folders in {res.out_dir / 'points'}/",
            soft_wrap=True,
            markup=False,
        )

    guarded(go)


@app.command()
def plan(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file with a plan: block.")],
    executor: Annotated[str, typer.Option(help="Where simulations run: local or dask.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Dask scheduler address, tcp://HOST:PORT.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel workers (local pool or local Dask cluster).", min=1),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Plan folder.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY.PATH=VALUE.")] = None,
    max_configs: Annotated[
        int | None, typer.Option(help="Most simulations the search may run.", min=1)
    ] = None,
    allow: AllowOption = None,
    max_events: MaxEventsOption = None,
) -> None:
    """The cheapest configurations that meet the SLOs at a load (see docs/plan.md)."""

    def go() -> None:
        _before_work(allow, None, spills=True, max_events=max_events)
        if out_dir is not None:
            from xpusim.engine.outpaths import check_not_in_run, check_not_symlink

            check_not_symlink(out_dir, "--out")
            check_not_in_run(out_dir, "--out")
        host = _host()
        ex = host.executors.get(executor, where="--executor")
        # the executor's own start-up (a local pool's fork server importing the plugins)
        # runs while this process imports the planner and loads the scenario
        ex.prepare()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from xpusim.engine.plan.rank import rich_table
        from xpusim.engine.plan.search import run_plan
        from xpusim.engine.report.escape import terminal
        from xpusim.engine.run import utc_stamp

        target = out_dir or Path("results") / f"{scenario.stem}-plan-{utc_stamp()}"
        with Progress(
            TextColumn("plan"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} devices searched"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("plan", total=None)
            res = run_plan(
                scenario,
                host,
                ex,
                target,
                workers=workers,
                address=address,
                overrides=sets or [],
                max_configs=max_configs,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        out.print(rich_table(res.doc))
        out.print(f"plan folder: {terminal(res.out_dir)}", markup=False)

    guarded(go)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to merge.")],
    out_file: Annotated[Path, typer.Option("--out", help="Report file to write.")] = Path(
        "comparison.html"
    ),
) -> None:
    """Merge several run folders into one comparison report."""
    from xpusim.engine.report.compare import compare_runs
    from xpusim.engine.report.escape import terminal

    runs = [Path(r) for r in runs]

    def go() -> None:
        from xpusim.engine.outpaths import check_report_file

        check_report_file(out_file, runs)
        summaries = [r / "summary.json" for r in runs]
        present = [p for p in summaries if p.exists() or p.is_symlink()]
        _check_inputs(present, "summary.json of a run folder", SUMMARY_BYTES)
        try:
            path = compare_runs(runs, out_file)
        except (XpusimError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a damaged run folder: input, not a fault of xpusim
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise XpusimError(
                f"compare {' '.join(map(str, runs))}: a run folder is damaged and cannot be "
                f"read ({type(exc).__name__}: {first}); give whole folders `xpusim run` "
                f"wrote, or run the scenario again."
            ) from None
        out.print(f"comparison report: {terminal(path)}")

    guarded(go)


# --- listings ---------------------------------------------------------------------------


@app.command()
def plugins(
    show_all: Annotated[bool, typer.Option("--all", help="Show hooks of each plugin.")] = False,
    hook: Annotated[
        str | None, typer.Option("--hook", help="Only plugins implementing it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="Also import everything the plugins registered, to show which fail "
            "(listing alone imports only the plugins' entry points).",
        ),
    ] = False,
) -> None:
    """List every plugin with its version and what it registered."""
    from rich.table import Table

    def go() -> None:
        host = _host()
        if load:
            host.load_all()
        infos = sorted(host.plugins.values(), key=lambda i: i.name)
        if hook:
            infos = [i for i in infos if hook in i.hooks]
        if as_json:
            doc = [
                {
                    "name": i.name,
                    "version": i.version,
                    "module": i.module,
                    "registered": i.registered,
                    "hooks": i.hooks,
                    "error": i.error or None,
                }
                for i in infos
            ]
            out.print_json(json.dumps(doc))
            return
        t = Table(title="xpusim plugins")
        for c in ("plugin", "version", "registered", "status"):
            t.add_column(c)
        if show_all:
            t.add_column("hooks")
        for i in infos:
            reg = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(i.registered.items()))
            row = [i.name, i.version, reg, f"[red]failed: {i.error}[/]" if i.error else "ok"]
            if show_all:
                row.append(", ".join(i.hooks))
            t.add_row(*row)
        out.print(t)

    guarded(go)


def _price_keys(listing: dict[str, Any]) -> dict[str, Any]:
    """``devices --json`` price keys: ``price_per_hour`` (what pricing cloud, spot and
    reserved use), ``prices`` (per tier), ``offers`` and ``price_reference_date``."""
    return {
        "price_per_hour": listing["default"],
        "prices": listing["tiers"],
        "offers": listing["offers"],
        "price_reference_date": listing["reference_date"],
    }


def _price_cell(p: dict[str, Any] | None) -> str:
    """One price for the table: value, provider, date and an age flag."""
    from xpusim.engine.device import DATE_NOT_STATED

    if p is None:
        return "-"
    value = f"{p['usd']:,.0f} USD" if "usd" in p else f"{p['usd_per_hour']:,.2f}"
    who = p["provider"] or "device's own"
    when = p["date"] or DATE_NOT_STATED
    old = ", over a year old" if p["stale"] else ""
    return f"{value} {who} ({when}{old})"


@app.command()
def devices(
    backend: Annotated[str | None, typer.Option(help="Only this backend's devices.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    price_date: Annotated[
        str | None,
        typer.Option(help="Flag prices older than a year on this date (default today)."),
    ] = None,
) -> None:
    """List the devices every backend can simulate, with their key figures and sources, and
    the prices runs use, per price tier, with provider and the date each source states."""
    import datetime as dt

    from rich.table import Table

    from xpusim.engine.economics.pricebook import TIERS
    from xpusim.engine.economics.rented import price_listing

    def go() -> None:
        try:
            today = dt.date.fromisoformat(price_date) if price_date else dt.date.today()
        except ValueError:
            raise XpusimError(f"--price-date {price_date!r}: write YYYY-MM-DD.") from None
        host = _host()
        names = [backend] if backend else host.backends.names()
        rows: list[dict[str, Any]] = []
        for b in names:
            be = host.backends.get(b, where="--backend")
            for name, spec in sorted(be.devices().items()):
                rows.append(
                    {
                        "backend": b,
                        "name": name,
                        "vendor": spec.vendor,
                        "description": spec.description,
                        "peak_flops": {k: v.value for k, v in spec.peak_flops.items()},
                        "memory_bytes": spec.memory_bytes.value,
                        "memory_bw": spec.memory_bw.value,
                        "max_w": spec.power.max_w.value if spec.power.max_w else None,
                        **_price_keys(price_listing(spec, today)),
                        "aliases": list(spec.aliases),
                        "sources": {k: f.cited for k, f in spec.figures().items()},
                    }
                )
        if as_json:
            out.print_json(json.dumps(rows))
            return
        t = Table(
            title="xpusim devices",
            caption=f"$/h on demand: what pricing: cloud uses (hyperscaler, then neocloud); "
            f"ages on {today.isoformat()}",
        )
        cols = ("backend", "device", "bf16 TFLOP/s", "memory GB", "mem BW TB/s", "max W")
        for c in (*cols, "$/h on demand"):
            t.add_column(c, justify="left" if c in ("backend", "device") else "right")
        tiers = Table(title="prices by tier (runs with economics.tier set use these)")
        for c in ("device", *TIERS):
            tiers.add_column(c)
        for r in rows:
            pf = r["peak_flops"]
            peak = pf.get("bf16") or pf.get("fp16") or (max(pf.values()) if pf else None)
            hourly = r["price_per_hour"].get("on_demand")
            tiers.add_row(r["name"], *(_price_cell(r["prices"][k]) for k in TIERS))
            t.add_row(
                r["backend"],
                r["name"],
                "-" if peak is None else f"{peak / 1e12:,.1f}",
                f"{r['memory_bytes'] / 1e9:,.1f}",
                f"{r['memory_bw'] / 1e12:,.2f}",
                "-" if r["max_w"] is None else f"{r['max_w']:,.0f}",
                _price_cell(hourly),
            )
        out.print(t)
        out.print(tiers)

    guarded(go)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List model families and their presets."""
    from rich.table import Table

    def go() -> None:
        host = _host()
        rows: list[dict[str, Any]] = [
            {
                "family": n,
                "description": f.description,
                "presets": sorted(f.presets),
                "plugin": host.models.owner(n),
            }
            for n, f in host.models.items()
        ]
        if as_json:
            out.print_json(json.dumps(rows))
            return
        t = Table(title="xpusim model families")
        for c in ("family", "presets", "description"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["family"], ", ".join(r["presets"]) or "-", r["description"])
        out.print(t)

    guarded(go)


@app.command()
def calibrate(
    backend: Annotated[str, typer.Option(help="Backend to calibrate (cpu, gpu).")] = "cpu",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Calibration file to write.")
    ] = None,
    points: Annotated[
        Path | None,
        typer.Option(
            "--points",
            help="Fit to this file of measured kernel times instead of measuring "
            "(backends that accept one: gpu).",
        ),
    ] = None,
) -> None:
    """Measure this machine's kernels and fit the backend's efficiency model."""

    def go() -> None:
        host = _host()
        be = host.backends.get(backend, where="--backend")
        if not be.can_calibrate:
            raise XpusimError(
                f"backend {backend!r} has no calibration command; backends that measure: "
                f"{', '.join(n for n, b in host.backends.items() if b.can_calibrate)}."
            )
        if points is not None:
            _check_inputs([points], "points file", POINTS_BYTES)
        if out_file is not None:
            from xpusim.engine.outpaths import check_not_symlink, check_writable_parent

            check_not_symlink(out_file, "--out")
            check_writable_parent(out_file, "--out")
        try:
            path = be.calibrate(out_file, points)
        except RecursionError:
            raise XpusimError(
                f"--points {points}: the JSON nests too deeply to read; a points file is a "
                f"flat list of measured kernels."
            ) from None
        out.print(f"calibration written: {path}", markup=False)

    guarded(go)


@app.command()
def version() -> None:
    """Print the xpusim version."""
    typer.echo(__version__)


def _builtin_commands() -> set[str]:
    """Names of the commands this module defines."""
    return {
        c.name or c.callback.__name__.replace("_", "-")
        for c in app.registered_commands
        if c.callback is not None
    }


def _command_word(argv: list[str]) -> str | None:
    """The command an argument list names (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _add_plugin_commands() -> None:
    """Let plugins add their commands (``register_commands``)."""
    try:
        pm = _pm()
    except XpusimError:
        return
    pm.hook.register_commands(cli=app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Plugins' commands are added only when the command line does not name a built-in
    command: ``xpusim --help`` and ``xpusim tpu ...`` load them, ``xpusim version`` and
    ``xpusim run ...`` do not need them.
    """
    args = sys.argv[1:] if argv is None else argv
    _said.clear()
    try:
        if _command_word(args) not in _builtin_commands():
            _add_plugin_commands()
        app(args=argv, prog_name="xpusim")
    except KeyboardInterrupt:
        # Ctrl-C while starting up (importing), before a command could catch it
        _interrupted()
        sys.exit(130)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 130:
            _interrupted()  # typer stops with 130 on a Ctrl-C while it parses or imports
        if code not in (0, 1, 2, 130):
            code = 2  # click's usage errors
        sys.exit(code)


if _SIGINT_BEFORE is not None:  # the module is imported: Ctrl-C is a KeyboardInterrupt again
    signal.signal(signal.SIGINT, _SIGINT_BEFORE)

if __name__ == "__main__":  # pragma: no cover
    main()
