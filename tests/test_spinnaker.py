"""The spinnaker backend: sPyNNaker mapping, config hygiene, energy model and costs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from xpusim.engine import lif
from xpusim.engine.errors import DoesNotFitError, XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.plugins.models.snn import FAMILIES
from xpusim.plugins.spinnaker import busy, energy, mapping, realtime
from xpusim.plugins.spinnaker.backend import SPINN5, SpinnakerBackend

SNN = FAMILIES[0]


def _system(count: int = 1, **options: object) -> System:
    topo = Topology(
        devices_per_node=1, intra_bw=1.0, intra_latency=0.0, inter_bw=1.0, inter_latency=0.0
    )
    return System("spinn5", "spinnaker", SPINN5, count, Parallelism(), topo, dict(options))


@pytest.fixture(scope="module")
def small_model():  # type: ignore[no-untyped-def]
    return SNN.configure(
        {
            "inputs": 64,
            "layers": [32, 4],
            "input_rate": "50 Hz",
            "calibration_samples": 2,
            "calibration_timesteps": 50,
        }
    )


@pytest.fixture(scope="module")
def compiled(small_model, tmp_path_factory):  # type: ignore[no-untyped-def]
    reports = tmp_path_factory.mktemp("reports")
    c = SpinnakerBackend().compile(small_model, _system(reports=str(reports)))
    c.reports_dir = reports  # type: ignore[attr-defined]
    return c


def test_mapping_reads_back_chips_cores_placements_and_routes(compiled) -> None:  # type: ignore[no-untyped-def]
    """sPyNNaker maps every population onto cores of a virtual 48-chip board and the
    routing tables route the input and hidden spikes."""
    m = compiled.mapping
    assert m.virtual and m.boards == 1 and m.chips == 48
    assert {p[0] for p in m.placements} == {"input", "layer1", "layer2"}
    assert sum(p[4] for p in m.placements if p[0] == "layer1") == 32
    assert m.cores >= 3 and m.routing_entries >= 1
    assert m.packets_per_spike("input") >= 1.0
    assert m.packets_per_spike("layer2") == 0.0  # the output projects nowhere


def test_config_hygiene_writes_nothing_in_home_or_cwd(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Mapping leaves the user's home and the working directory untouched and puts
    sPyNNaker's reports into the folder it was given; the environment is restored."""
    home = Path(os.path.expanduser("~"))
    before_home = set(os.listdir(home))
    before_cwd = set(os.listdir("."))
    env = {k: os.environ.get(k) for k in ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")}
    net = lif.Network(8, (lif.Layer("layer1", np.ones((8, 4))),))
    m = mapping.map_network(net, report_dir=tmp_path)
    assert m.network_cores() == 2
    assert set(os.listdir(home)) == before_home
    assert set(os.listdir(".")) == before_cwd
    assert not (home / ".spynnaker.cfg").exists() or ".spynnaker.cfg" in before_home
    assert (tmp_path / "spynnaker.log").exists() and (tmp_path / "reports").is_dir()
    assert env == {k: os.environ.get(k) for k in env}
    assert os.listdir(compiled.reports_dir)


def test_user_board_config_is_detected(tmp_path: Path) -> None:
    """A config naming a board or spalloc server selects a real run; a virtual one not."""
    cfg = tmp_path / ".spynnaker.cfg"
    cfg.write_text("[Machine]\nspalloc_server = https://spalloc.example/\nversion = 5\n")
    assert mapping.board_settings(cfg)["spalloc_server"] == "https://spalloc.example/"
    cfg.write_text("[Machine]\nversion = 5\nvirtual_board = True\n")
    assert mapping.board_settings(cfg) == {}
    assert mapping.board_settings(None) == {}


def test_row_builder_matches_spynnaker() -> None:
    """The sorted row builder returns exactly sPyNNaker's per-row masks."""
    from spynnaker.pyNN.models.neuron.synapse_dynamics.abstract_sdram_synapse_dynamics import (
        AbstractSDRAMSynapseDynamics as Asd,
    )

    rng = np.random.default_rng(3)
    idx = rng.integers(0, 40, 2000)
    data = rng.integers(0, 2**32 - 1, (2000, 2), dtype=np.uint64).astype(np.uint32)
    ours = mapping._rows_by_sort(None, idx, 45, data, 30)
    theirs = Asd.convert_per_connection_data_to_rows(None, idx, 45, data, 30)  # type: ignore[arg-type]
    assert len(ours) == len(theirs) == 45
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cost_is_real_time_and_energy_from_version5(compiled) -> None:  # type: ignore[no-untyped-def]
    """A step lasts batch x timesteps x timestep x time-scale factor, and its joules are
    sPyNNaker's Version5 board energy: board idle + cores active for their busy time (the
    step's neuron updates and synaptic events at Sharp et al.'s measured costs, at most
    every placed core throughout) + router packets."""
    shape = Shape(Phase.SPIKING, batch=2, timesteps=100)
    c = compiled.cost(shape)
    assert c.seconds == pytest.approx(2 * 100 * 1e-3)
    e = compiled.energy(shape)
    k = energy.constants()
    work = compiled.work(shape)
    assert work.neuron_updates == compiled.network.neurons * 100 * 2
    one = compiled.work(Shape(Phase.SPIKING, batch=1, timesteps=100))
    assert work.synaptic_events == pytest.approx(2 * one.synaptic_events)
    busy_j = (
        work.neuron_updates * busy.MEASURED.neuron_update_j.value
        + work.synaptic_events * busy.MEASURED.synaptic_event_j.value
    )
    cap_j = compiled.mapping.cores * c.seconds * k["core_active_w"].value
    expect = (
        k["board_idle_w"].value * c.seconds + min(busy_j, cap_j) + e.packets * k["packet_j"].value
    )
    assert c.joules == pytest.approx(expect, rel=1e-6)
    assert e.cores_j == pytest.approx(min(busy_j, cap_j), rel=1e-6)
    whole = compiled.energy(shape, busy_time=False)
    assert whole.cores_j == pytest.approx(cap_j, rel=1e-6) and whole.busy_fraction == 1.0
    assert e.packets > 0 and e.chips_j < e.board_j
    slow = SpinnakerBackend().compile(compiled.model, _system(time_scale_factor=10))
    slow._cache = compiled._cache  # no second mapping needed for the arithmetic
    assert slow.time_scale_factor == 10


def test_transformer_is_unsupported() -> None:
    """A non-spiking model gets a reason, not a crash."""

    class Fake:
        kind, name = "decoder", "llama-2-7b"

    s = SpinnakerBackend().supports(Fake(), "serving")  # type: ignore[arg-type]
    assert not s.ok and "spiking" in s.reason


def test_too_large_network_does_not_fit_and_says_what_would() -> None:
    """A network beyond one board's cores raises DoesNotFitError (exit 2) naming the
    cores needed and the boards that would fit it."""
    big = lif.Network(1000, (lif.Layer("layer1", np.zeros((1000, 250_000))),))
    with pytest.raises(DoesNotFitError, match="boards"):
        mapping.check_fits(big, 1)
    assert issubclass(DoesNotFitError, XpusimError)
    model = SNN.configure(
        {
            "inputs": 1000,
            "layers": [250_000],
            "connectivity": 1e-5,
            "weights": "random",
            "calibration_samples": 1,
            "calibration_timesteps": 2,
        }
    )
    fit = SpinnakerBackend().compile(model, _system(1)).fit()
    assert not fit.fits and "count" in fit.suggestion


def test_bad_options_raise() -> None:
    """Unknown options and a time-scale factor below 1 are input errors."""
    model = SNN.configure({"inputs": 4, "layers": [2]})
    with pytest.raises(XpusimError):
        SpinnakerBackend().compile(model, _system(time_scale_factor=0.5))
    with pytest.raises(XpusimError, match="valid"):
        SpinnakerBackend().compile(model, _system(colour="red"))


@pytest.mark.skipif(not mapping.nest_available(), reason="nest-simulator not installed")
def test_nest_counts_spikes_close_to_the_lif_simulator(small_model) -> None:  # type: ignore[no-untyped-def]
    """The same PyNN network on NEST fires at rates close to the engine's LIF simulator."""
    x = small_model.input_spikes(100, 2)
    ours = lif.simulate(small_model.network, x, 1.0)
    theirs = mapping.nest_activity(small_model.network, x, 1.0)
    assert theirs.spikes[0] == pytest.approx(ours.spikes[0])
    assert theirs.rates_hz[1] == pytest.approx(ours.rates_hz[1], rel=0.5, abs=2.0)


def test_a_step_is_in_the_compute_state(compiled) -> None:  # type: ignore[no-untyped-def]
    """A SpiNNaker step records the compute power state, so the devices timeline (and
    the utilisation chart and energy) counts the cores running as busy."""
    assert compiled.cost(Shape(Phase.SPIKING, batch=1, timesteps=10)).state == "compute"


def test_mapping_facts_read_back_what_spynnaker_placed(compiled) -> None:  # type: ignore[no-untyped-def]
    """The facts are the mapping's: one board, the chips and cores placed, LIF neurons
    per core holding them, routing entries, the time-scale factor, and a small network
    keeps up with real time."""
    facts = compiled.mapping_facts()
    m = compiled.mapping
    assert facts["boards"] == 1 and facts["chips_used"] == m.chips_used
    assert facts["cores_used"] == m.cores and facts["routing_entries"] == m.routing_entries
    lif_cores = sum(1 for p in m.placements if p[0] != "input")
    assert facts["neurons_per_core"] == pytest.approx(36 / lif_cores)
    assert facts["real_time_factor"] == 1.0
    assert facts["fits_real_time"] is True and facts["required_time_scale_factor"] == 1.0


def test_the_same_network_at_another_input_rate_maps_once(compiled) -> None:  # type: ignore[no-untyped-def]
    """Driving the same weights at another input rate (or converting at another rate:
    same synapse positions and signs) reuses the mapping instead of mapping again."""
    sparser = compiled.rebind(compiled.model.at_input_rate(5.0))
    assert sparser.mapping is compiled.mapping
    reconverted = compiled.rebind(compiled.model.with_options(input_rate="80 Hz"))
    assert reconverted.mapping is compiled.mapping


def _placed(atoms: int, tsf: float = 1.0) -> mapping.Mapping:
    """A hand-made mapping: one LIF population of 2 x ``atoms`` neurons on two cores."""
    return mapping.Mapping(
        boards=1,
        chips=48,
        cores_per_chip=18,
        placements=(("input", 0, 0, 1, 10), ("layer1", 0, 0, 2, atoms), ("layer1", 0, 0, 3, atoms)),
        app_cores={(0, 0): 3},
        routes={},
        routing_entries=2,
        routing_tables=1,
        timestep_ms=1.0,
        time_scale_factor=tsf,
        virtual=True,
        wall_s=0.0,
        labels=("input", "layer1"),
    )


def test_real_time_compares_the_busiest_core_with_a_cores_share_of_the_board() -> None:
    """A core's load is its share of the population's incoming events per second of
    machine time; it fits when within 1.8e9/s per board spread over 768 cores, and the
    slow-down needed scales the load down to that capacity."""
    cap = realtime.core_capacity().value
    assert cap == pytest.approx(1.8e9 / 768)
    sizes = {"layer1": 200}
    light = realtime.real_time(_placed(100), {"layer1": 1000.0}, sizes)
    assert light.peak_core_events_per_s == pytest.approx(500 / 1e-3)
    assert light.fits and light.required_time_scale_factor == 1.0
    heavy_events = 2 * 3 * cap * 1e-3  # three times a core's capacity per core
    heavy = realtime.real_time(_placed(100), {"layer1": heavy_events}, sizes)
    assert not heavy.fits and heavy.required_time_scale_factor == pytest.approx(3.0)
    slowed = realtime.real_time(_placed(100, tsf=4.0), {"layer1": heavy_events}, sizes)
    assert slowed.fits and slowed.required_time_scale_factor == pytest.approx(3.0)


def test_copies_run_samples_in_rounds_with_every_copy_active(compiled, small_model) -> None:  # type: ignore[no-untyped-def]
    """Three copies of the network take a batch of three in one round and a batch of four
    in two; every copy's cores draw active power for the step, the board idles once; the
    facts count the copies' cores."""
    three = SpinnakerBackend().compile(small_model, _system(copies=3))
    three._cache = compiled._cache  # the same network maps once
    t = 100 * 1e-3
    one_round = three.cost(Shape(Phase.SPIKING, batch=3, timesteps=100))
    assert one_round.seconds == pytest.approx(t)
    assert three.cost(Shape(Phase.SPIKING, batch=4, timesteps=100)).seconds == pytest.approx(2 * t)
    e = three.energy(Shape(Phase.SPIKING, batch=3, timesteps=100), busy_time=False)
    k = energy.constants()
    assert e.cores_j == pytest.approx(3 * compiled.mapping.cores * k["core_active_w"].value * t)
    # busy time: a copy without a sample still updates its neurons, but has no events
    lone = three.work(Shape(Phase.SPIKING, batch=1, timesteps=100))
    full = three.work(Shape(Phase.SPIKING, batch=3, timesteps=100))
    assert lone.neuron_updates == full.neuron_updates == 3 * compiled.network.neurons * 100
    assert lone.synaptic_events == pytest.approx(full.synaptic_events / 3)
    assert e.idle_j == pytest.approx(k["board_idle_w"].value * t)
    facts = three.mapping_facts()
    assert facts["network_copies"] == 3 and facts["cores_used"] == 3 * compiled.mapping.cores
    assert three.samples_in_turn


def test_too_many_copies_do_not_fit_and_say_how_many_would() -> None:
    """Copies beyond the board's cores are refused, naming the most copies that fit."""
    net = lif.Network(64, (lif.Layer("layer1", np.ones((64, 32))),))
    with pytest.raises(DoesNotFitError, match="copies: 383"):
        mapping.check_fits(net, 1, copies=1000)


def test_copies_must_be_a_whole_number() -> None:
    """copies: 0 or 1.5 is an input error naming the option."""
    model = SNN.configure({"inputs": 4, "layers": [2]})
    for bad in (0, 1.5):
        with pytest.raises(XpusimError, match="copies"):
            SpinnakerBackend().compile(model, _system(copies=bad))


# --- the whole machine of a large network (machine.py) -------------------------------


def test_neurons_per_core_follow_spynnakers_ring_buffer_rule() -> None:
    """Bits agree with sPyNNaker's ``get_n_bits``; at 0.1 ms steps with delays to 12.8 ms
    (128 slots, 7 bits) and two synapse types (1 bit) 14 - 8 = 6 bits are left: 64
    neurons per core; at 1 ms steps and 1 ms delays the default 256 holds."""
    from spynnaker.pyNN.utilities.utility_calls import get_n_bits

    from xpusim.plugins.spinnaker import machine

    for n in range(0, 600):
        assert machine.n_bits(n) == get_n_bits(n)
    assert machine.atoms_per_core(0.1, 12.8) == 64
    assert machine.atoms_per_core(0.25, 16.0) == 128  # 64 slots: 6 + 1 bits, 7 left
    assert machine.atoms_per_core(1.0, 1.0) == mapping.MAX_LIF_PER_CORE
    assert machine.atoms_per_core(0.1, 12.8, default=32) == 32
    with pytest.raises(ValueError):
        machine.atoms_per_core(0.001, 1000.0)


def test_synapse_cores_split_only_below_one_ms_and_scale_with_the_slow_down() -> None:
    """sPyNNaker splits neuron and synapse processing below 1 ms steps, with enough
    synapse cores for the events at 13e6 per second per core times the slow-down."""
    from xpusim.plugins.spinnaker import machine

    per_core = machine.STATIC_SYNAPSES_PER_CORE_S.value
    assert machine.synapse_cores(5 * per_core, 1.0, 1.0) == 0
    assert machine.synapse_cores(0.0, 0.1, 1.0) == 0
    assert machine.synapse_cores(2.5 * per_core, 0.1, 1.0) == 3
    assert machine.synapse_cores(2.5 * per_core, 0.1, 20.0) == 1
    p = machine.place(
        [130, 64],
        [per_core / 32, 10.0],
        timestep_ms=0.1,
        time_scale_factor=1.0,
        max_delay_ms=12.8,
        sources_per_neuron=True,
    )
    # 130 neurons: 64 + 64 + 2 (3 neuron cores, 2 synapse cores each for the full
    # slices, 1 for the two-neuron rest); 64 neurons: one core with one synapse core
    assert (p.atoms_per_core, p.neuron_cores, p.synapse_cores, p.source_cores) == (64, 4, 6, 4)
    assert p.cores == 14


def test_boards_come_in_triads_and_frames_of_24() -> None:
    """One board for a job that fits one; beyond that whole triads, in 24-board frames."""
    from xpusim.plugins.spinnaker import machine

    per_board = mapping.capacity_cores(1)
    one = machine.allocate(per_board)
    assert (one.boards_needed, one.boards, one.frames) == (1, 1, 0)
    two = machine.allocate(per_board + 1)
    assert (two.boards_needed, two.boards, two.frames) == (2, 3, 1)
    big = machine.allocate(25 * per_board)
    assert (big.boards_needed, big.boards, big.frames) == (25, 27, 2)
    with pytest.raises(ValueError):
        machine.allocate(0)


def test_wall_power_is_spynnakers_version5_energy_of_one_second() -> None:
    """Boards, frames and active cores give what ``Version5.get_active_energy`` gives for
    one second of the same job (no packets); a single board is charged its box."""
    from spinn_machine.version.version_5 import Version5

    from xpusim.plugins.spinnaker import machine

    v = object.__new__(Version5)  # its energy methods read class constants only
    for cores in (3000, 20000):
        alloc = machine.allocate(cores)
        w = machine.wall_power(alloc, cores)
        active = {(0, 0): (float(cores), cores)}
        ref = v.get_active_energy(1.0, alloc.frames, alloc.boards, alloc.chips, active, {})
        assert w.total_w == pytest.approx(ref)
    # a single boxed board: its idle power with the box's supply (no frame), plus cores
    one = machine.allocate(10)
    boxed = v.get_idle_energy(1.0, 1, 1, one.chips) + 10 * v.WATTS_PER_CORE_ACTIVE_OVERHEAD
    assert machine.wall_power(one, 10).total_w == pytest.approx(boxed)
    bare = machine.wall_power(machine.allocate(10), 10, boxed=False)
    assert bare.container_w == 0.0
    assert machine.wall_power(machine.allocate(10), 10, 1e9).packets_w == pytest.approx(1.0)


def test_microcircuit_rows_are_predicted_from_the_placement() -> None:
    """The validation's SpiNNaker microcircuit rows price the machine the rules place the
    network on: 64 neurons per core, a synapse and a Poisson core per neuron core, the
    boards' and frame's wall power for time_scale_factor seconds per biological second."""
    import importlib.util

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "validate_spiking", root / "benchmarks" / "validate_spiking.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = yaml.safe_load((root / "benchmarks" / "spiking_rows.yaml").read_text(encoding="utf-8"))
    rows = {r["id"]: r for r in mod.evaluate(doc, skip_kws=True)}
    net = mod.microcircuit(doc["network"])
    for rid, tsf in (
        ("spinnaker-microcircuit-x20", 20.0),
        ("spinnaker-microcircuit-realtime", 1.0),
    ):
        r = rows[rid]
        slices = sum(-(-n // 64) for n in doc["network"]["neurons"])
        assert r["placement"]["neurons_per_core"] == 64
        assert r["placement"]["neuron_cores"] == slices
        assert r["placement"]["source_cores"] == slices
        assert r["cores"] == sum(
            r["placement"][k] for k in ("neuron_cores", "synapse_cores", "source_cores")
        )
        assert r["predicted"] == pytest.approx(r["model_power_w"] * tsf / net["events_per_s"])
        assert r["model_power_w"] == pytest.approx(sum(r["power_parts_w"].values()))
    assert rows["genn-v100-microcircuit"]["predicted"] is None
