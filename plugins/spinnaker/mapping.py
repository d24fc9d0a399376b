"""Build a spiking network with sPyNNaker's PyNN API and map it onto a SpiNNaker machine.

:func:`map_network` creates the network with ``pyNN.spiNNaker`` (spike sources, one
``IF_curr_exp`` population per layer, ``FromListConnector`` projections with the exact
weights, positive on the excitatory and negative on the inhibitory receptor), runs
sPyNNaker's own tool chain (partitioning, placement, routing, key allocation, routing
table generation) and reads back what it decided: the machine, the placements of every
core, the routing tables, and which routers each population's spikes cross. On a
virtual machine (no board configured) nothing runs; on a real board (the user's
sPyNNaker config names ``machine_name``, ``spalloc_server`` or ``remote_spinnaker_url``)
the network runs for real and the recorded spikes come back.

**Config hygiene.** sPyNNaker reads ``.spynnaker.cfg`` from ``site_config_dir``,
``user_config_dir`` (``$XDG_CONFIG_HOME``) and ``~``, and when it finds none it *writes*
``~/.spynnaker.cfg``; its reports land in ``./reports`` by default. For the duration of a
call :func:`spynnaker_session` points ``XDG_CONFIG_HOME``, ``XDG_CONFIG_DIRS`` and
``HOME`` at a private temporary folder holding the engine's own ``.spynnaker.cfg``
(a copy of the user's board settings when they name a board, else a virtual SpiNN-5
machine), sends ``default_report_file_path`` to the run folder or a temporary one, and
restores everything afterwards: nothing is written to the user's home or the working
directory.

**Synapse data on a virtual board.** After mapping, sPyNNaker writes every core's data
specification, synaptic matrices included. Generating those on the machine (the
synapse expander) is its supported way to skip host-side generation, but
``SynapseInformation.may_generate_on_machine`` refuses it on a virtual board, and the
host path builds each matrix's rows with one boolean mask per row
(``AbstractSDRAMSynapseDynamics.convert_per_connection_data_to_rows``, O(rows ×
connections)), which dominates mapping time (~30 s for 1M synapses). For the duration of
a call that method is replaced by :func:`_rows_by_sort`, which returns the same rows (a
stable sort by row index keeps sPyNNaker's order within a row; a test checks equality)
in O(n log n).
"""

from __future__ import annotations

import atexit
import configparser
import contextlib
import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpusim.engine import lif
from xpusim.engine.errors import DoesNotFitError, ScenarioError, XpusimError

__all__ = [
    "APP_CORES_PER_CHIP",
    "CHIPS_PER_BOARD",
    "MAX_LIF_PER_CORE",
    "MAX_SOURCES_PER_CORE",
    "Mapping",
    "estimate_cores",
    "map_network",
    "nest_activity",
    "spynnaker_session",
    "user_config",
]

CHIPS_PER_BOARD = 48
"""Chips of a SpiNN-5 board (``spinn_machine.version.version_48_chips``, figures.yaml
``spinn5_board``)."""

APP_CORES_PER_CHIP = 16
"""Application cores per chip: 18 ARM968 cores less the SCAMP monitor and sPyNNaker's extra
monitor (what ``virtual_machine_by_boards`` leaves for placements)."""

MAX_LIF_PER_CORE = 256
"""sPyNNaker's default atoms per core for ``IF_curr_exp`` (an upper bound: the splitter
may choose fewer to fit DTCM and SDRAM)."""

MAX_SOURCES_PER_CORE = 500
"""Atoms per core sPyNNaker gives a ``SpikeSourcePoisson`` population."""

_LOGGERS = (
    "spinn_utilities",
    "spinn_machine",
    "spinnman",
    "pacman",
    "spinn_front_end_common",
    "spynnaker",
    "pyNN",
    "spalloc_client",
)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Mapping:
    """What sPyNNaker's tool chain decided for one network on one machine.

    ``placements`` are ``(label, x, y, p, atoms)`` for the network's cores; ``app_cores``
    counts every non-system core placed (monitors that sPyNNaker adds included) by chip;
    ``routes[label][(x, y)]`` is the fraction of ``label``'s spikes whose multicast tree
    passes the router of chip ``(x, y)`` (each pass is one router packet);
    ``routing_entries`` is the size of the uncompressed tables. ``measured`` holds spike
    counts per population when a real board ran the network.
    """

    boards: int
    chips: int
    cores_per_chip: int
    placements: tuple[tuple[str, int, int, int, int], ...]
    app_cores: dict[tuple[int, int], int]
    routes: dict[str, dict[tuple[int, int], float]]
    routing_entries: int
    routing_tables: int
    timestep_ms: float
    time_scale_factor: float
    virtual: bool
    wall_s: float
    labels: tuple[str, ...]
    measured: dict[str, int] = field(default_factory=dict)

    @property
    def cores(self) -> int:
        """Application cores in use (every chip)."""
        return sum(self.app_cores.values())

    @property
    def chips_used(self) -> int:
        """Chips with at least one application core."""
        return len(self.app_cores)

    def network_cores(self, label: str | None = None) -> int:
        """Cores holding the network's populations (or one population)."""
        return sum(1 for p in self.placements if label is None or p[0] == label)

    def chips_for(self, copies: int) -> int:
        """Chips the application cores of ``copies`` of this network fill, packed
        :data:`APP_CORES_PER_CHIP` to a chip (at least the chips one copy uses, at most
        the machine's)."""
        fill = math.ceil(self.cores * copies / APP_CORES_PER_CHIP)
        return min(self.chips, max(self.chips_used, fill))

    def packets_per_spike(self, label: str) -> float:
        """Router packets one spike of ``label`` causes (routers its tree crosses)."""
        return float(sum(self.routes.get(label, {}).values()))


def estimate_cores(net: lif.Network) -> int:
    """Cores the network's populations need at sPyNNaker's default atoms per core."""
    return math.ceil(net.inputs / MAX_SOURCES_PER_CORE) + sum(
        math.ceil(layer.n_post / MAX_LIF_PER_CORE) for layer in net.layers
    )


def capacity_cores(boards: int) -> int:
    """Application cores of ``boards`` SpiNN-5 boards, less sPyNNaker's one gatherer core
    per board."""
    return boards * (CHIPS_PER_BOARD * APP_CORES_PER_CHIP - 1)


def check_fits(net: lif.Network, boards: int, copies: int = 1) -> None:
    """Raise :class:`DoesNotFitError` when ``copies`` of the network cannot fit ``boards``
    boards at sPyNNaker's atoms per core, naming what would fit."""
    one, have = estimate_cores(net), capacity_cores(boards)
    need = one * copies
    if need > have:
        need_boards = math.ceil(need / capacity_cores(1))
        if copies > 1:
            raise DoesNotFitError(
                f"{copies} copies of the network need about {need} cores ({one} each) but "
                f"{boards} SpiNN-5 board(s) offer {have}; use at most copies: "
                f"{max(1, have // one)} or count: {need_boards} boards"
            )
        max_neurons = (have - math.ceil(net.inputs / MAX_SOURCES_PER_CORE)) * MAX_LIF_PER_CORE
        raise DoesNotFitError(
            f"the network needs about {need} cores ({net.neurons} LIF neurons at "
            f"{MAX_LIF_PER_CORE} per core and {net.inputs} inputs at {MAX_SOURCES_PER_CORE} "
            f"per core) but {boards} SpiNN-5 board(s) offer {have}; {boards} board(s) fit at "
            f"most {max(0, max_neurons)} LIF neurons with these inputs, or use count: "
            f"{need_boards} boards for this network"
        )


# --- config hygiene -------------------------------------------------------------------


def _config_candidates() -> list[Path]:
    """Where sPyNNaker looks for ``.spynnaker.cfg`` under the current environment."""
    import appdirs

    name = ".spynnaker.cfg"
    return [
        Path(appdirs.site_config_dir()) / name,
        Path(appdirs.user_config_dir()) / name,
        Path(os.path.expanduser("~")) / name,
    ]


def user_config() -> Path | None:
    """The user's own sPyNNaker config file, if any (read-only; never created)."""
    for p in _config_candidates():
        if p.is_file():
            return p
    return None


def board_settings(path: Path | None) -> dict[str, str]:
    """The ``[Machine]`` settings of a user config that name a real machine (empty when
    it names none, or there is no config)."""
    if path is None:
        return {}
    cp = configparser.RawConfigParser()
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read(path)
    except configparser.Error as exc:
        raise ScenarioError(f"cannot read the sPyNNaker config {path}: {exc}") from None
    if not cp.has_section("Machine"):
        return {}
    machine = {k: v for k, v in cp.items("Machine")}
    real = any(
        machine.get(k, "None").strip() not in ("", "None")
        for k in ("machine_name", "spalloc_server", "remote_spinnaker_url")
    )
    virtual = machine.get("virtual_board", "False").strip().lower() == "true"
    return machine if real and not virtual else {}


@contextlib.contextmanager
def spynnaker_session(
    report_dir: Path | None = None, machine: dict[str, str] | None = None
) -> Iterator[Path]:
    """Run sPyNNaker with the engine's private config, reports in ``report_dir`` (or a
    temporary folder), logs and progress bars in ``<reports>/spynnaker.log``.

    ``machine`` are ``[Machine]`` settings for a real board; without them the config
    describes a virtual SpiNN-5 machine (``version = 5``, ``virtual_board = True``).
    Yields the reports folder. One session at a time per process (sPyNNaker is a
    singleton).
    """
    with _LOCK:
        priv = Path(tempfile.mkdtemp(prefix="xpusim-spynnaker-"))
        reports = Path(report_dir) if report_dir is not None else priv / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        cfg_home, site, home = priv / "config", priv / "site", priv / "home"
        for d in (cfg_home, site, home):
            d.mkdir()
        lines = ["[Machine]"]
        if machine:
            lines += [f"{k} = {v}" for k, v in machine.items()]
        else:
            lines += ["version = 5", "virtual_board = True"]
        lines += [
            "",
            "[Reports]",
            f"default_report_file_path = {reports}",
            "max_reports_kept = 1",
            "",
            "[Mode]",
            "mode = Production",
            "",
            "[Logging]",
            "instantiate = False",
            "",
        ]
        (cfg_home / ".spynnaker.cfg").write_text("\n".join(lines), encoding="utf-8")
        saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "HOME")}
        os.environ.update(XDG_CONFIG_HOME=str(cfg_home), XDG_CONFIG_DIRS=str(site), HOME=str(home))
        log_path = reports / "spynnaker.log"
        handler = logging.FileHandler(log_path, encoding="utf-8")
        saved_loggers = []
        for name in _LOGGERS:
            lg = logging.getLogger(name)
            saved_loggers.append((lg, lg.handlers[:], lg.propagate, lg.level))
            lg.handlers = [handler]
            lg.propagate = False
            lg.setLevel(logging.INFO)
        from spynnaker.pyNN.models.neuron.synapse_dynamics import (
            abstract_sdram_synapse_dynamics as asd,
        )

        cls = asd.AbstractSDRAMSynapseDynamics
        original = cls.convert_per_connection_data_to_rows
        cls.convert_per_connection_data_to_rows = _rows_by_sort  # type: ignore[method-assign]
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield reports
        finally:
            cls.convert_per_connection_data_to_rows = original  # type: ignore[method-assign]
            # sPyNNaker registers an atexit hook per setup that writes into the (private,
            # about to vanish) report folder; sim.end() has already marked it finished
            from spinn_utilities.data.utils_data_writer import UtilsDataWriter

            atexit.unregister(UtilsDataWriter.write_errored_file)
            with contextlib.suppress(OSError), open(log_path, "a", encoding="utf-8") as f:
                f.write(sink.getvalue())
            for lg, handlers, prop, level in saved_loggers:
                lg.handlers, lg.propagate = handlers, prop
                lg.setLevel(level)
            handler.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(priv, ignore_errors=True)


def _rows_by_sort(
    self: Any,
    connection_row_indices: np.ndarray,
    n_rows: int,
    data: np.ndarray,
    max_n_synapses: int,
) -> list[np.ndarray]:
    """The rows of ``AbstractSDRAMSynapseDynamics.convert_per_connection_data_to_rows``
    by one stable sort instead of one mask per row (same output)."""
    idx = np.asarray(connection_row_indices).astype(np.int64, copy=False)
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=n_rows)[:n_rows]
    ordered = np.asarray(data)[order]
    ends = np.cumsum(counts)
    starts = ends - counts
    stop = np.minimum(ends, starts + max_n_synapses)
    return [ordered[a:b].reshape(-1) for a, b in zip(starts.tolist(), stop.tolist(), strict=True)]


# --- building and mapping -------------------------------------------------------------


def _connections(layer: lif.Layer, delay_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """FromListConnector arrays ``(pre, post, |weight|, delay)`` for the positive and the
    negative weights of ``layer``."""
    pre, post, w = layer.coo()
    out = []
    for keep in (w > 0, w < 0):
        out.append(
            np.column_stack(
                [pre[keep], post[keep], np.abs(w[keep]), np.full(int(keep.sum()), delay_ms)]
            )
        )
    return out[0], out[1]


def _build(
    sim: Any,
    net: lif.Network,
    rates_hz: np.ndarray | None,
    spike_times: list[list[float]] | None,
    dt_ms: float,
    record: bool,
    inhibitory_sign: float = 1.0,
) -> list[Any]:
    """Create the populations and projections; returns the populations in order.

    ``inhibitory_sign`` is the sign the simulator wants on inhibitory current weights:
    sPyNNaker takes magnitudes, PyNN's NEST backend negative values."""
    if spike_times is not None:
        src = sim.Population(
            net.inputs, sim.SpikeSourceArray(spike_times=spike_times), label="input"
        )
    else:
        rates = np.zeros(net.inputs) if rates_hz is None else np.asarray(rates_hz, float)
        # one rate for all is a single range in sPyNNaker's ranged lists (fast to map)
        rate: Any = float(rates[0]) if np.all(rates == rates[0]) else rates.tolist()
        src = sim.Population(net.inputs, sim.SpikeSourcePoisson(rate=rate), label="input")
    pops = [src]
    for layer in net.layers:
        pop = sim.Population(layer.n_post, sim.IF_curr_exp(**net.params.pynn()), label=layer.name)
        pops.append(pop)
    for k, layer in enumerate(net.layers):
        exc, inh = _connections(layer, dt_ms)
        inh[:, 2] *= inhibitory_sign
        for conns, receptor in ((exc, "excitatory"), (inh, "inhibitory")):
            if conns.shape[0]:
                sim.Projection(
                    pops[k],
                    pops[k + 1],
                    sim.FromListConnector(conns),
                    sim.StaticSynapse(),
                    receptor_type=receptor,
                )
    if record:
        for pop in pops:
            pop.record("spikes")
    return pops


def map_network(
    net: lif.Network,
    *,
    boards: int = 1,
    dt_ms: float = 1.0,
    time_scale_factor: float = 1.0,
    timesteps: int = 100,
    input_rates_hz: np.ndarray | None = None,
    spike_times: list[list[float]] | None = None,
    report_dir: Path | None = None,
    use_board: bool = True,
) -> Mapping:
    """Build ``net`` with ``pyNN.spiNNaker``, map it, and read back the mapping.

    ``boards`` sizes the virtual machine (``n_boards_required``); when the user's config
    names a real machine and ``use_board`` is true, the network is loaded and run there for
    ``timesteps`` and its spikes are counted. Raises :class:`DoesNotFitError` when the
    network does not fit the machine (checked before mapping and from sPyNNaker's own
    placement), naming what would fit.
    """
    lif.check_positive_int("boards", boards)
    lif.check_positive_int("timesteps", timesteps)
    if not dt_ms > 0 or not time_scale_factor >= 1:
        raise ScenarioError(
            f"timestep must be > 0 ms (got {dt_ms}) and time_scale_factor >= 1 "
            f"(got {time_scale_factor})"
        )
    check_fits(net, boards)
    machine = board_settings(user_config()) if use_board else {}
    virtual = not machine
    t0 = time.perf_counter()
    with spynnaker_session(report_dir, machine):
        import pyNN.spiNNaker as sim  # noqa: N813 - PyNN's convention
        from spynnaker.pyNN.data import SpynnakerDataView as view  # noqa: N813

        sim.setup(
            timestep=dt_ms,
            time_scale_factor=time_scale_factor,
            n_boards_required=boards if virtual else None,
        )
        try:
            pops = _build(sim, net, input_rates_hz, spike_times, dt_ms, record=not virtual)
            try:
                sim.run(timesteps * dt_ms)
            except XpusimError:
                raise
            except Exception as exc:
                name = type(exc).__name__
                if "Place" in name or "place" in str(exc).lower() or "space" in str(exc).lower():
                    raise DoesNotFitError(
                        f"sPyNNaker could not place the network on {boards} SpiNN-5 board(s): "
                        f"{exc}. Use a larger count (boards) or a smaller network."
                    ) from None
                raise
            measured: dict[str, int] = {}
            if not virtual:
                for pop in pops:
                    trains = pop.get_data("spikes").segments[0].spiketrains
                    measured[pop.label] = int(sum(len(t) for t in trains))
            mapping = _read_back(
                view, net, dt_ms, time_scale_factor, virtual, time.perf_counter() - t0, measured
            )
        finally:
            sim.end()
    return mapping


def _read_back(
    view: Any,
    net: lif.Network,
    dt_ms: float,
    tsf: float,
    virtual: bool,
    wall_s: float,
    measured: dict[str, int],
) -> Mapping:
    from spinn_front_end_common.abstract_models import AbstractHasAssociatedBinary
    from spinn_front_end_common.utility_models.chip_power_monitor_machine_vertex import (
        ChipPowerMonitorMachineVertex,
    )
    from spinnman.model.enums.executable_type import ExecutableType

    labels = ("input", *(layer.name for layer in net.layers))
    machine = view.get_machine()
    placements: list[tuple[str, int, int, int, int]] = []
    app_cores: dict[tuple[int, int], int] = defaultdict(int)
    for pl in view.iterate_placemements():
        v = pl.vertex
        app = getattr(v, "app_vertex", None)
        label = getattr(app, "label", None)
        if label in labels:
            placements.append((str(label), pl.x, pl.y, pl.p, int(v.vertex_slice.n_atoms)))
        if (
            isinstance(v, AbstractHasAssociatedBinary)
            and v.get_binary_start_type() != ExecutableType.SYSTEM
            and not isinstance(v, ChipPowerMonitorMachineVertex)
        ):
            app_cores[(pl.x, pl.y)] += 1
    # routers each population's multicast trees cross, weighted by the atoms they carry
    atoms: dict[str, int] = {lab: n for lab, n in zip(labels, net.sizes, strict=True)}
    routes: dict[str, dict[tuple[int, int], float]] = {lab: defaultdict(float) for lab in labels}
    by_part = view.get_routing_table_by_partition()
    for xy in by_part.get_routers():
        entries = by_part.get_entries_for_router(*xy) or {}
        for (src, _partition), _entry in entries.items():
            app = getattr(src, "app_vertex", None) or src
            label = getattr(app, "label", None)
            if label not in routes:
                continue
            n = src.vertex_slice.n_atoms if hasattr(src, "vertex_slice") else atoms[label]
            routes[label][xy] += n / atoms[label]
    tables = view.get_uncompressed()
    n_entries = sum(t.number_of_entries for t in tables.routing_tables)
    return Mapping(
        boards=len(machine.ethernet_connected_chips),
        chips=machine.n_chips,
        cores_per_chip=18,
        placements=tuple(sorted(placements)),
        app_cores=dict(app_cores),
        routes={k: dict(v) for k, v in routes.items()},
        routing_entries=int(n_entries),
        routing_tables=len(list(tables.routing_tables)),
        timestep_ms=dt_ms,
        time_scale_factor=tsf,
        virtual=virtual,
        wall_s=wall_s,
        labels=labels,
        measured=measured,
    )


# --- counting on CPU with PyNN's NEST backend ------------------------------------------


def nest_available() -> bool:
    """Whether PyPI's ``nest-simulator`` (and PyNN's NEST backend) import."""
    try:
        import nest  # noqa: F401
        import pyNN.nest  # noqa: F401
    except Exception:
        return False
    return True


def nest_activity(net: lif.Network, spikes_in: np.ndarray, dt_ms: float = 1.0) -> lif.Activity:
    """Count spikes and synaptic events by running the same PyNN network (the same
    ``_build``) on NEST, one sample after the other separated by silence. The input
    spike at step ``t`` is given at ``(t + 2) · dt`` ms (PyNN-NEST refuses a spike at the
    first step)."""
    if not nest_available():
        raise XpusimError(
            "the NEST counter needs PyPI's nest-simulator: "
            "pip install 'xpusim[nest]' (or choose counter: lif)"
        )
    import pyNN.nest as sim

    x = np.asarray(spikes_in, dtype=bool)
    steps, batch, _ = x.shape
    gap = steps + 50  # steps of silence between samples so state decays
    times: list[list[float]] = [[] for _ in range(net.inputs)]
    for b in range(batch):
        t_idx, n_idx = np.nonzero(x[:, b, :])
        for t, n in zip(t_idx, n_idx, strict=True):
            times[n].append(float((b * gap + t + 2) * dt_ms))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        sim.setup(timestep=dt_ms, min_delay=dt_ms)
        try:
            pops = _build(
                sim, net, None, [sorted(t) for t in times], dt_ms, record=True, inhibitory_sign=-1.0
            )
            sim.run(batch * gap * dt_ms)
            counts = []
            out = np.zeros((batch, net.sizes[-1]), dtype=np.int64)
            for i, pop in enumerate(pops):
                trains = pop.get_data("spikes").segments[0].spiketrains
                counts.append(float(sum(len(t) for t in trains)))
                if i == len(pops) - 1:
                    for j, tr in enumerate(trains):
                        s = np.asarray(tr.magnitude) // (gap * dt_ms)
                        for b in s.astype(int):
                            if 0 <= b < batch:
                                out[b, j] += 1
        finally:
            sim.end()
    fan = [layer.fan_out for layer in net.layers]
    per = 1.0 / (steps * batch)
    events = []
    for i in range(len(net.sizes)):
        if i < len(fan):
            # events need per-neuron counts; approximate by the mean fan-out
            events.append(counts[i] * float(fan[i].mean()) * per)
        else:
            events.append(0.0)
    secs = steps * dt_ms * 1e-3
    return lif.Activity(
        timesteps=steps,
        batch=batch,
        dt_ms=dt_ms,
        spikes=tuple(c * per for c in counts),
        synaptic_events=tuple(events),
        rates_hz=tuple(c / (batch * n * secs) for c, n in zip(counts, net.sizes, strict=True)),
        output_counts=out,
    )
