"""Properties that always hold, checked on generated inputs (hypothesis).

* Units: a formatted quantity parses back to the same SI value; every accepted unit is a
  linear scale; anything else raises :class:`~xpusim.engine.errors.UnitError` and nothing else.
* Scenario loading: any text gives data or a :class:`~xpusim.engine.errors.ScenarioError`; any
  value put anywhere in a valid scenario gives a scenario or an input error, never a
  crash; values written in a scenario come back as loaded.
* Trace readers: a sorted trace (equal timestamps included) reads back exactly from CSV
  and JSON Lines; arbitrary bytes give a valid frame or a :class:`TraceError`; a trace
  that goes backwards is refused naming the first line that does.
* The serving simulation: every request arrives once and finishes once or is reported
  dropped; generated tokens equal requested tokens; simulated time never runs backwards;
  device energy is at least idle power times time; more replicas never lower capacity.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from xpusim.engine import units
from xpusim.engine.backend import Compiled
from xpusim.engine.errors import ScenarioError, TraceError, UnitError, XpusimError
from xpusim.engine.frames import collect
from xpusim.engine.host import Host
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.results import default_out_dir
from xpusim.engine.run import simulate
from xpusim.engine.scenario import read_scenario_data, resolve
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.engine.units import Dim
from xpusim.engine.yamlsrc import load_yaml
from xpusim.plugins.traces.readers import CsvTrace, JsonlTrace
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.world import simulate_serving

BASE = Path(__file__).parent / "bad_inputs" / "base.yaml"
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SIM = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- units ---------------------------------------------------------------------------------

POSITIVE_DIMS = [d for d in Dim if d is not Dim.COUNT]


@FAST
@given(
    dim=st.sampled_from(list(Dim)),
    x=st.floats(min_value=1e-9, max_value=1e18, allow_nan=False, allow_infinity=False),
)
def test_format_then_parse_round_trips(dim: Dim, x: float) -> None:
    """``parse(format_si(x))`` is ``x`` to 12 significant digits, for every dimension."""
    text = units.format_si(x, dim)
    assert units.parse(text, dim) == pytest.approx(x, rel=1e-11)


@FAST
@given(
    data=st.data(),
    dim=st.sampled_from(POSITIVE_DIMS),
    v=st.floats(min_value=0, max_value=1e9, allow_nan=False),
)
def test_every_unit_is_a_linear_scale(data: st.DataObject, dim: Dim, v: float) -> None:
    """For each accepted unit, ``"v unit"`` parses to ``v`` times the unit's factor,
    with or without a space."""
    unit = data.draw(st.sampled_from(units.units_for(dim)))
    factor = units.parse(f"1 {unit}", dim)
    assert factor > 0
    assert units.parse(f"{v!r} {unit}", dim) == pytest.approx(v * factor, rel=1e-12)
    assert units.parse(f"{v!r}{unit}", dim) == pytest.approx(v * factor, rel=1e-12)


JUNK = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789.eE+-/ sGBKiMWhJUSD$nafi", max_size=20),
    st.floats(),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@FAST
@given(dim=st.sampled_from(list(Dim)), value=JUNK)
def test_parse_gives_a_finite_float_or_a_unit_error(dim: Dim, value: Any) -> None:
    """Whatever the input, parsing returns a finite float or raises UnitError naming the
    place; no other exception escapes."""
    try:
        x = units.parse(value, dim, where="here")
    except UnitError as exc:
        assert str(exc).startswith("here: ")
        assert "\n" not in str(exc)
    else:
        assert math.isfinite(x)


# --- scenario loading ------------------------------------------------------------------

YAMLISH = st.text(
    alphabet=st.sampled_from([*"ab:-[]{}#&*!|>'\"\n\t ,.?%@`1", "\u00e9"]), max_size=80
)


@FAST
@given(text=st.one_of(YAMLISH, st.text(max_size=80)))
def test_any_text_loads_or_gives_a_scenario_error(text: str) -> None:
    """``load_yaml`` on any text returns data or raises ScenarioError naming the file."""
    try:
        load_yaml(text, "x.yaml")
    except ScenarioError as exc:
        assert str(exc).startswith("x.yaml")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


BASE_DATA, BASE_SRC = read_scenario_data(BASE)
BASE_PATHS = _paths(BASE_DATA)

VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(
            [
                "4/s",
                "0/s",
                "-1 s",
                "80 GiB",
                "nan/s",
                "1e30/s",
                "gpu",
                "",
                "h100-sxm",
                "continuous",
                "lognormal",
            ]
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@SIM
@given(path=st.sampled_from(BASE_PATHS), value=VALUES)
def test_any_value_anywhere_resolves_or_gives_an_input_error(
    host: Host, path: tuple[Any, ...], value: Any
) -> None:
    """Replacing any field of a valid scenario with any value gives a resolved scenario
    or an XpusimError with a one-paragraph message; never another exception."""
    data = copy.deepcopy(BASE_DATA)
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        resolve(data, BASE_SRC, host, base_dir=BASE.parent)
    except XpusimError as exc:
        assert "\n" not in str(exc)
        assert str(BASE) in str(exc) or "at " in str(exc) or "unknown" in str(exc)


@SIM
@given(
    rate=st.floats(min_value=1e-3, max_value=1e6),
    count=st.integers(1, 10**8),
    seed=st.integers(0, 2**63 - 1),
    ttft_ms=st.integers(1, 10**6),
)
def test_loaded_values_are_the_written_ones(
    host: Host, rate: float, count: int, seed: int, ttft_ms: int
) -> None:
    """A scenario's written rate, count, seed and SLO come back from loading, in SI."""
    data = copy.deepcopy(BASE_DATA)
    data["seed"] = seed
    data["workload"]["arrivals"].update(rate=f"{rate!r}/s", count=count)
    data["workload"]["slo"] = {"ttft_p99": f"{ttft_ms} ms"}
    sc = resolve(data, BASE_SRC, host, base_dir=BASE.parent)
    cfg: Any = sc.workload_config
    assert sc.seed == seed
    assert cfg.arrivals.rate == pytest.approx(rate, rel=1e-12)
    assert cfg.arrivals.count == count
    assert cfg.slo.ttft_p99 == pytest.approx(ttft_ms * 1e-3, rel=1e-12)


# --- trace readers -----------------------------------------------------------------------

ROWS = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(min_value=0, max_value=100, allow_nan=False)),
        st.integers(1, 100_000),
        st.integers(1, 10_000),
    ),
    min_size=1,
    max_size=40,
)


def _trace(
    rows: list[tuple[float, int, int]], start: float
) -> tuple[list[float], list[int], list[int]]:
    t = (start + np.cumsum([r[0] for r in rows])).tolist()
    return t, [r[1] for r in rows], [r[2] for r in rows]


@FAST
@given(
    rows=ROWS, start=st.floats(min_value=0, max_value=1e6), unit=st.sampled_from(["s", "ms", "us"])
)
def test_sorted_traces_read_back_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[float, int, int]],
    start: float,
    unit: str,
) -> None:
    """A sorted trace (repeated timestamps included: simultaneous arrivals, kept in file
    order) reads back from CSV and JSON Lines with arrivals relative to the first."""
    t, prompt, output = _trace(rows, start)
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    folder = tmp_path_factory.mktemp("trace")
    csv = folder / "t.csv"
    csv.write_text(
        "arrival_s,prompt_tokens,output_tokens\n"
        + "".join(f"{a!r},{p},{o}\n" for a, p, o in zip(t, prompt, output, strict=True))
    )
    jsonl = folder / "t.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"arrival_s": float(a), "prompt_tokens": p, "output_tokens": o}) + "\n"
            for a, p, o in zip(t, prompt, output, strict=True)
        )
    )
    want = (np.asarray(t) - t[0]) * scale
    for fmt, path in ((CsvTrace(), csv), (JsonlTrace(), jsonl)):
        df = fmt.read(path, {"time_unit": unit})
        assert df.schema == pl.Schema(REQUEST_SCHEMA)
        assert df.height == len(rows)
        np.testing.assert_allclose(df["arrival_s"].to_numpy(), want, rtol=1e-12, atol=1e-9)
        assert df["prompt_tokens"].to_list() == prompt
        assert df["output_tokens"].to_list() == output
        assert (np.diff(df["arrival_s"].to_numpy()) >= 0).all()


@FAST
@given(rows=ROWS.filter(lambda r: len(r) >= 2), data=st.data())
def test_a_trace_going_backwards_names_its_line(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[float, int, int]],
    data: st.DataObject,
) -> None:
    """Moving one row earlier than its predecessor is refused, naming that row's line."""
    t, prompt, output = _trace(rows, 10.0)
    k = data.draw(st.integers(1, len(rows) - 1))
    t[k] = t[k - 1] - data.draw(st.floats(min_value=1e-3, max_value=5))
    assume(all(t[i] <= t[i + 1] for i in range(k - 1)))
    path = tmp_path_factory.mktemp("trace") / "t.csv"
    path.write_text(
        "arrival_s,prompt_tokens,output_tokens\n"
        + "".join(f"{a!r},{p},{o}\n" for a, p, o in zip(t, prompt, output, strict=True))
    )
    with pytest.raises(TraceError, match=rf"line {k + 2}: arrival_s goes backwards"):
        CsvTrace().read(path, {})


@FAST
@given(
    blob=st.one_of(
        st.binary(max_size=200),
        st.text(
            alphabet='arrival_s,prompt_tokens,output_tokens0123456789.-e\n\r naif"', max_size=200
        ).map(lambda s: ("arrival_s,prompt_tokens,output_tokens\n" + s).encode()),
    )
)
@example(blob=b'arrival_s,prompt_tokens,output_tokens\n""')  # a row of one quoted empty cell
@example(blob=b'arrival_s,prompt_tokens,output_tokens\n0,1,"1\r"\n\r2,1,x\n')  # stray CRs
def test_any_bytes_give_a_valid_frame_or_a_trace_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes
) -> None:
    """Readers return a valid request frame (sorted, tokens >= 1, finite) or raise
    TraceError naming the file; never another exception."""
    path = tmp_path_factory.mktemp("trace") / "t.csv"
    path.write_bytes(blob)
    for fmt in (CsvTrace(), JsonlTrace()):
        try:
            df = fmt.read(path, {})
        except TraceError as exc:
            assert str(path) in str(exc)
        else:
            assert df.height >= 1
            t = df["arrival_s"].to_numpy()
            assert np.isfinite(t).all() and t[0] == 0 and (np.diff(t) >= 0).all()
            assert (df["prompt_tokens"] >= 1).all() and (df["output_tokens"] >= 1).all()


# --- the serving simulation --------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(host: Host) -> Compiled:
    """GPT-2 compiled by the real GPU backend for one H100 SXM."""
    sc = resolve(copy.deepcopy(BASE_DATA), BASE_SRC, host, base_dir=BASE.parent)
    return host.backends.get("gpu").compile(sc.model, sc.systems[0])


REQUESTS = st.lists(
    st.tuples(st.floats(min_value=0, max_value=0.5), st.integers(1, 600), st.integers(1, 80)),
    min_size=1,
    max_size=40,
).map(
    lambda rows: pl.DataFrame(
        {
            "arrival_s": np.cumsum([r[0] for r in rows]) - rows[0][0],
            "prompt_tokens": [r[1] for r in rows],
            "output_tokens": [r[2] for r in rows],
        },
        schema=REQUEST_SCHEMA,
    )
)
SCHEDULERS = st.builds(
    lambda kind, mb, mbt, chunk: SchedulerSpec(
        kind=kind, max_batch=mb, max_batch_tokens=mbt, chunk=chunk
    ),
    st.sampled_from(["static", "continuous", "chunked-prefill", "guaranteed-no-evict"]),
    st.integers(1, 16),
    st.integers(700, 4096),
    st.integers(16, 512),
)


@SIM
@given(
    frame=REQUESTS,
    spec=SCHEDULERS,
    replicas=st.integers(1, 3),
    kv=st.sampled_from([256, 1024, 100_000]),
    router=st.sampled_from(["round-robin", "least-outstanding"]),
    layout=st.one_of(
        st.none(),
        st.builds(KVLayout, st.integers(0, 6), st.integers(1, 12), st.integers(1, 300)),
    ),
)
@example(  # a static batch's padding rides to its longest output without growing its KV
    frame=pl.DataFrame(
        {"arrival_s": [0.0] * 18, "prompt_tokens": [1] * 18, "output_tokens": [43] + [1] * 17},
        schema=REQUEST_SCHEMA,
    ),
    spec=SchedulerSpec(kind="static", max_batch=6, max_batch_tokens=700, chunk=16),
    replicas=1,
    kv=256,
    router="round-robin",
    layout=None,
)
def test_serving_invariants(
    compiled: Compiled,
    frame: pl.DataFrame,
    spec: SchedulerSpec,
    replicas: int,
    kv: int,
    router: str,
    layout: KVLayout | None,
) -> None:
    """Every request appears once and is either finished (times ordered, within the span)
    or dropped with a reason because it can never fit; tokens are conserved; each
    replica's steps and each device's timeline move forward only and cover the span;
    with the model's layout or a drawn sliding-window one, whose windows give pages back,
    under every scheduler, and no step holds more blocks than the cache."""
    block = 16
    res = simulate_serving(
        frame,
        compiled,
        system="s",
        replicas=replicas,
        devices_per_replica=1,
        scheduler=spec,
        router=router,
        kv_block_tokens=block,
        kv_capacity_tokens=kv,
        kv_layout=layout,
    )
    req, steps, devs = (collect(res.frames[k]) for k in ("requests", "steps", "devices"))
    n = frame.height
    assert req["request_id"].to_list() == list(range(n))
    assert set(req["status"].unique()) <= {"ok", "dropped"}
    cache = PagedKVCache(kv // block, block, layout)
    need = cache.peak_blocks_of((frame["prompt_tokens"] + frame["output_tokens"] - 1).to_numpy())
    too_big = (need > cache.total_blocks).tolist()
    if layout is None:  # without a window: the blocks of the whole sequence
        assert (
            need.tolist()
            == (-(-(frame["prompt_tokens"] + frame["output_tokens"] - 1) // block)).to_list()
        )
    assert (steps["kv_blocks_used"] <= kv // block).all()
    assert (req["status"] == "dropped").to_list() == too_big
    dropped = req.filter(pl.col("status") == "dropped")
    assert (
        dropped["reason"].null_count() == 0 and dropped["finish_s"].null_count() == dropped.height
    )
    ok = req.filter(pl.col("status") == "ok")
    # the arrival process delivers a request at `now + (t - now)`, which may round to an
    # ulp before its arrival time
    assert (ok["arrival_s"] <= ok["first_scheduled_s"] + 1e-15 * ok["arrival_s"].abs()).all()
    assert (ok["first_scheduled_s"] <= ok["first_token_s"]).all()
    assert (ok["first_token_s"] <= ok["finish_s"]).all()
    assert (ok["finish_s"] <= res.simulated_s + 1e-9).all()

    made = int(steps["decode_tokens"].sum()) + ok.height
    want = int(ok["output_tokens"].sum())
    pre = int(ok["preemptions"].sum())
    if spec.kind == "chunked-prefill":
        assert made <= want <= made + pre
    else:
        assert made + pre == want
    assert int(steps["prefill_tokens"].sum()) >= int(ok["prompt_tokens"].sum())

    for _, g in steps.group_by("replica"):
        s, e = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        assert (e > s).all() and (s[1:] >= e[:-1]).all()
    for _, g in devs.group_by("device"):
        s, e = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        assert s[0] == 0 and (e >= s).all() and (s[1:] == e[:-1]).all()
        assert e[-1] == pytest.approx(res.simulated_s)


@SIM
@given(
    n=st.integers(1, 30),
    prompt=st.integers(1, 800),
    output=st.integers(1, 64),
    spec=SCHEDULERS,
    replicas=st.integers(1, 3),
)
def test_more_replicas_never_lower_capacity(
    compiled: Compiled, n: int, prompt: int, output: int, spec: SchedulerSpec, replicas: int
) -> None:
    """For the same scheduler and a saturating burst of like requests, one more replica
    serves at least as many tokens per second."""
    frame = pl.DataFrame(
        {"arrival_s": [0.0] * n, "prompt_tokens": [prompt] * n, "output_tokens": [output] * n},
        schema=REQUEST_SCHEMA,
    )

    def capacity(k: int) -> float:
        res = simulate_serving(
            frame,
            compiled,
            system="s",
            replicas=k,
            devices_per_replica=1,
            scheduler=spec,
            kv_block_tokens=16,
            kv_capacity_tokens=100_000,
        )
        req = collect(res.frames["requests"])
        return float(req["output_tokens"].sum()) / float(req["finish_s"].to_numpy().max())

    assert capacity(replicas + 1) >= capacity(replicas) * (1 - 1e-9)


@SIM
@given(
    count=st.integers(1, 60),
    rate=st.floats(min_value=0.5, max_value=200),
    systems=st.integers(1, 2),
    pue=st.floats(min_value=1.0, max_value=2.0),
)
def test_energy_is_at_least_idle_power_times_time(
    host: Host, count: int, rate: float, systems: int, pue: float
) -> None:
    """Each system's energy is at least its devices' idle power times the simulated
    span (idle draw never stops), and the simulated span covers every arrival."""
    data = copy.deepcopy(BASE_DATA)
    data["workload"]["arrivals"].update(count=count, rate=f"{rate!r}/s")
    data["economics"]["pue"] = pue
    data["systems"] = [
        {"name": "h100", "backend": "gpu", "device": "h100-sxm", "count": 1},
        {"name": "l4x2", "backend": "gpu", "device": "l4", "count": 2},
    ][:systems]
    sc = resolve(data, BASE_SRC, host, base_dir=BASE.parent)
    run = simulate(sc, host)
    for res, system in zip(run.systems, sc.systems, strict=True):
        assert res.status == "ok", res.reason
        prep = host.backends.get(system.backend).compile(sc.model, system)
        power = prep.power_model()
        assert power is not None
        span = res.metrics["simulated_s"]
        floor = power.idle_w * system.count * span
        assert res.metrics["energy_j"] >= floor * (1 - 1e-9)
        arrivals = collect(res.frames["requests"])["arrival_s"]
        assert span >= float(arrivals.to_numpy().max())


# --- output paths ------------------------------------------------------------------------


@FAST
@given(name=st.text(min_size=1, max_size=200))
def test_default_run_folder_stays_inside_results(name: str) -> None:
    """Whatever a scenario's name holds (``../``, ``/``, dots, control characters), its
    default run folder is a visible direct child of the results folder."""
    root = Path("results")
    out = default_out_dir(root, name, "20250101T000000Z")
    assert out.parent == root
    assert not out.name.startswith(".")
    assert "/" not in out.name and "\\" not in out.name and "\x00" not in out.name
    assert out.name.endswith("-20250101T000000Z")
    assert len(out.name) <= 200
