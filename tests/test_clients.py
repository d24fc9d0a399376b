"""Clients with a concurrency limit: closed-loop clients and capped open arrivals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import simpy
import yaml
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from tests.test_serving import load, run
from xpusim.engine import run as runner
from xpusim.engine.capacity import load_path
from xpusim.engine.host import Host
from xpusim.plugins.workloads.serving.arrivals import ArrivalSpec, generate, horizon_of
from xpusim.plugins.workloads.serving.clients import ClientRequestTable, ClientSlots
from xpusim.plugins.workloads.serving.metrics import serving_metrics
from xpusim.plugins.workloads.serving.planning import plan_knobs
from xpusim.plugins.workloads.serving.workload import ServingConfig

LENGTHS = {
    "prompt_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6, "max": 4000},
    "output_tokens": {"dist": "lognormal", "median": 50, "sigma": 0.6, "max": 400},
}


def closed(count: int, concurrency: int, seed: int = 3) -> pl.DataFrame:
    spec = ArrivalSpec.model_validate(
        {"process": "closed", "concurrency": concurrency, "count": count, **LENGTHS}
    )
    return generate(spec, seed)


def serve(
    frame: pl.DataFrame, concurrency: int | None, kind: str = "continuous", **kw: Any
) -> pl.DataFrame:
    """The ``requests`` frame of ``frame`` served under a client limit of ``concurrency``."""
    req = run(frame, kind, concurrency=concurrency, **kw).frames["requests"]
    assert isinstance(req, pl.DataFrame)
    return req


def in_flight_peak(req: pl.DataFrame) -> int:
    """The most requests sent and not finished at any instant (a finish at the instant of
    a send frees its slot first)."""
    events = [(t, 1) for t in req["arrival_s"].to_list()]
    events += [(t, -1) for t in req["finish_s"].to_list()]
    peak = cur = 0
    for _, step in sorted(events):
        cur += step
        peak = max(peak, cur)
    return peak


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill", "static", "guaranteed-no-evict"])
def test_closed_clients_send_each_request_as_one_finishes(kind: str) -> None:
    """N closed-loop clients: the first N requests are sent at 0 and every later one at
    the instant an earlier one finishes, so the sends after the first N are exactly the
    finishes but the last N, and never more than N are in flight."""
    n, clients = 240, 16
    req = serve(closed(n, clients), clients, kind, replicas=2, max_batch=8)
    assert (req["status"] == "ok").all()
    sent = req["arrival_s"].to_numpy()
    assert (sent[:clients] == 0.0).all()
    assert np.array_equal(
        np.sort(sent[clients:]), np.sort(req["finish_s"].to_numpy())[: n - clients]
    )
    assert np.all(np.diff(sent) >= 0)  # sent in request order
    assert in_flight_peak(req) == clients
    # latency counts from the sending, as a benchmark client times it
    assert_frame_equal(
        req.select((pl.col("first_token_s") - pl.col("arrival_s")).alias("ttft_s")),
        req.select("ttft_s"),
    )


def test_a_limit_that_never_binds_changes_nothing() -> None:
    """A cap above the most requests ever in flight leaves every request's times exactly as
    the run without it (which takes the fast path)."""
    frame = load(300, rate="20/s")
    free = serve(frame, None)
    peak = in_flight_peak(free)
    assert_frame_equal(serve(frame, peak), free)


def test_a_binding_limit_queues_arrivals_in_order() -> None:
    """Under a tight cap a request is sent at its arrival or, when every slot is taken, at
    the instant a slot frees; those waiting go in arrival order."""
    frame = load(300, rate="80/s")
    ready = frame["arrival_s"].to_numpy()
    req = serve(frame, 4, replicas=2)
    sent = req["arrival_s"].to_numpy()
    finish = set(req["finish_s"].to_list())
    assert in_flight_peak(req) == 4
    assert np.all(sent >= ready)
    assert np.all(np.diff(sent) >= 0)
    late = sent > ready
    assert late.sum() > 100  # the cap binds
    assert all(t in finish for t in sent[late].tolist())


def test_the_world_records_each_wait_for_a_slot() -> None:
    """Each request sent has its wait behind the limit, sending instant less arrival (0
    for those sent on arrival), in sending order; a run without a limit records none."""
    frame = load(300, rate="80/s")
    res = run(frame, "continuous", replicas=2, concurrency=4)
    waits = np.asarray(res.extra["client_waits"])
    sent = res.frames["requests"]["arrival_s"].to_numpy()
    ready = frame["arrival_s"].to_numpy()
    assert waits.shape == sent.shape and (waits >= 0).all()
    assert np.allclose(waits, sent - ready, rtol=0, atol=1e-9)
    assert "client_waits" not in run(frame, "continuous", replicas=2).extra


def test_as_many_clients_as_requests_is_a_batch_at_zero() -> None:
    """With a client for every request all are sent at 0: the run is the open one whose
    requests all arrive at 0."""
    frame = closed(120, 500)
    assert_frame_equal(serve(frame, 500), serve(frame, None))


def test_slots_are_given_back_as_the_finished_count_rises() -> None:
    """The request table turns each rise of its finished count into free slots and wakes a
    waiting sender; a plain table's count stays a plain attribute."""
    env = simpy.Environment()
    slots = ClientSlots(env, 2)
    table = ClientRequestTable([0.0, 0.0, 0.0], [1, 1, 1], [1, 1, 1], slots)
    slots.take()
    slots.take()
    woke = slots.wait()
    table.done += 1
    assert slots.free == 1 and woke.triggered
    with pytest.raises(AssertionError):
        slots.give_back(5)
    with pytest.raises(ValueError):
        ClientSlots(env, 0)


def test_closed_process_is_checked_at_load() -> None:
    """``process: closed`` needs ``concurrency`` and ``count`` and takes no ``rate`` or
    ``duration``; an open process needs its ``rate``."""
    base = {"count": 10, **LENGTHS}
    with pytest.raises(ValidationError, match="needs `concurrency`"):
        ArrivalSpec.model_validate({"process": "closed", **base})
    with pytest.raises(ValidationError, match="drop `rate`"):
        ArrivalSpec.model_validate({"process": "closed", "concurrency": 4, "rate": "2/s", **base})
    with pytest.raises(ValidationError, match="needs `rate`"):
        ArrivalSpec.model_validate({"process": "poisson", "concurrency": 4, **base})
    spec = ArrivalSpec.model_validate({"process": "closed", "concurrency": 4, **base})
    assert horizon_of(spec) is None
    assert (generate(spec, 1)["arrival_s"] == 0.0).all()


def test_closed_clients_load_is_a_count_of_clients_not_a_rate() -> None:
    """``xpusim plan`` cannot set closed clients' load as a rate and the capacity search
    counts their clients; a capped open process keeps its rate for both."""
    arrivals = {"process": "closed", "concurrency": 8, "count": 50, **LENGTHS}
    cfg = ServingConfig.model_validate({"arrivals": arrivals})
    assert plan_knobs(cfg).rate is None
    where = load_path({"workload": {"arrivals": arrivals}})
    assert where is not None and where.clients and where.path[-1] == "concurrency"
    capped = {**arrivals, "process": "poisson", "rate": "3/s"}
    assert plan_knobs(ServingConfig.model_validate({"arrivals": capped})).rate is not None
    open_ = load_path({"workload": {"arrivals": capped}})
    assert open_ is not None and not open_.clients


@pytest.mark.parametrize(
    "block",
    [
        {"disaggregation": {"prefill": {"count": 1}, "decode": {"count": 1}}},
        {"lora": {"adapters": 4, "rank": 8, "gpu_slots": 2, "host_link": "25 GB/s"}},
    ],
)
def test_techniques_that_fix_arrivals_ahead_refuse_a_limit(block: dict[str, Any]) -> None:
    """Disaggregated pools and LoRA's resident-slot replay fix arrivals before the run,
    which a client's limit moves during it: the combination is refused at load."""
    arrivals = {"process": "closed", "concurrency": 8, "count": 50, **LENGTHS}
    with pytest.raises(ValidationError, match="concurrency"):
        ServingConfig.model_validate({"arrivals": arrivals, **block})


def test_mean_in_flight_is_the_clients_concurrency() -> None:
    """Closed clients keep ``concurrency`` requests in flight until the last ones drain,
    so the run's time-averaged requests in flight (Little's law) is just below it."""
    res = run(closed(400, 12), "continuous", concurrency=12)
    m = serving_metrics(res.frames, res.simulated_s)
    assert 0.9 * 12 < m["mean_in_flight"] <= 12


def test_capacity_search_finds_the_most_clients_within_the_slos(host: Host, tmp_path: Path) -> None:
    """For closed clients the capacity search counts clients: the knee is a whole number
    of them that met the SLOs, and every client count above it that was probed missed."""
    path = tmp_path / "closed.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "closed",
                "model": {"family": "llama", "preset": "llama-3-8b"},
                "workload": {
                    "kind": "serving",
                    "arrivals": {"process": "closed", "concurrency": 8, "count": 200, **LENGTHS},
                    "slo": {"ttft": "150 ms"},
                },
                "systems": [{"name": "a100", "backend": "gpu", "device": "a100-sxm-80gb"}],
                "capacity": {"search": True, "probes": 10},
            }
        )
    )
    sc = runner.load(path, host)
    (res,) = runner.simulate(sc, host).systems
    knee = res.metrics["max_concurrency_within_slo"]
    probes = res.details["capacity"]["probes"]
    assert "max_rate_within_slo_per_s" not in res.metrics
    assert isinstance(knee, int) and knee >= 1
    assert all(isinstance(p["concurrency"], int) for p in probes)
    assert knee == max(p["concurrency"] for p in probes if p["met"])
    assert all(p["concurrency"] > knee for p in probes if not p["met"])
    assert any(not p["met"] for p in probes)  # the search found where the SLOs break


def test_a_trace_takes_the_same_cap(tmp_path: Path) -> None:
    """``trace.concurrency`` caps a trace replay as ``arrivals.concurrency`` caps a
    process: the workload hands it to the world, and the trace reader never sees it."""
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.1,10,5\n")
    cfg = ServingConfig.model_validate(
        {"trace": {"path": str(path), "format": "csv", "concurrency": 3}}
    )
    assert cfg.client_limit() == 3
    assert cfg.trace is not None and "concurrency" not in cfg.trace.mapping()
    open_ = ServingConfig.model_validate({"trace": {"path": str(path), "format": "csv"}})
    assert open_.client_limit() is None
    with pytest.raises(ValidationError, match="concurrency"):
        ServingConfig.model_validate(
            {
                "trace": {"path": str(path), "format": "csv", "concurrency": 3},
                "disaggregation": {"prefill": {"count": 1}, "decode": {"count": 1}},
            }
        )


def test_a_closed_trace_is_sent_by_its_clients_in_file_order(host: Host, tmp_path: Path) -> None:
    """``trace: {closed: true}`` ignores the timestamps: the clients send the trace's
    requests in file order, each with its own lengths, and the capacity search counts
    those clients. ``closed`` needs ``concurrency`` and takes no ``time_scale``."""
    rng = np.random.default_rng(5)
    n = 120
    table = pl.DataFrame(
        {
            "arrival_s": np.sort(rng.uniform(0, 500, n)),
            "prompt_tokens": rng.integers(50, 1500, n),
            "output_tokens": rng.integers(5, 200, n),
        }
    )
    trace = tmp_path / "t.csv"
    table.write_csv(trace)
    spec = {"path": str(trace), "format": "csv", "concurrency": 6, "closed": True}
    path = tmp_path / "closed-trace.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "closed-trace",
                "model": {"family": "llama", "preset": "llama-3-8b"},
                "workload": {"kind": "serving", "trace": spec, "slo": {"ttft": "60 ms"}},
                "systems": [{"name": "h100", "backend": "gpu", "device": "h100-sxm"}],
                "capacity": {"search": True, "probes": 8},
            }
        )
    )
    (res,) = runner.simulate(runner.load(path, host), host).systems
    req = res.frames["requests"]
    assert isinstance(req, pl.DataFrame)
    sent = req["arrival_s"].to_numpy()
    assert (sent[:6] == 0.0).all() and np.all(np.diff(sent) >= 0)
    assert np.array_equal(np.sort(sent[6:]), np.sort(req["finish_s"].to_numpy())[: n - 6])
    assert req["prompt_tokens"].to_list() == table["prompt_tokens"].to_list()
    assert req["output_tokens"].to_list() == table["output_tokens"].to_list()
    assert in_flight_peak(req) == 6
    assert isinstance(res.metrics["max_concurrency_within_slo"], int)
    assert "client_wait_p99_s" not in res.metrics  # closed clients pace, they do not wait
    for bad in ({"concurrency": None}, {"time_scale": 2.0}):
        with pytest.raises(ValidationError, match="closed: true"):
            ServingConfig.model_validate({"trace": {**spec, **bad}})


def test_a_capped_open_load_reports_what_its_clients_held_back(host: Host, tmp_path: Path) -> None:
    """Under a cap the latencies count from the sending, so the summary also says how long
    requests waited for a client after they came due: nothing without a cap."""
    arrivals = {"process": "poisson", "rate": "60/s", "count": 300, **LENGTHS}
    path = tmp_path / "capped.yaml"
    scenario = {
        "name": "capped",
        "model": {"family": "llama", "preset": "llama-3-8b"},
        "workload": {"kind": "serving", "arrivals": {**arrivals, "concurrency": 4}},
        "systems": [{"name": "a100", "backend": "gpu", "device": "a100-sxm-80gb"}],
    }
    path.write_text(yaml.safe_dump(scenario))
    (res,) = runner.simulate(runner.load(path, host), host).systems
    m = res.metrics
    assert m["client_wait_p99_s"] > m["client_wait_mean_s"] > 0
    assert 0 < m["client_waited_share"] <= 1
    scenario["workload"]["arrivals"] = arrivals
    path.write_text(yaml.safe_dump(scenario))
    (free,) = runner.simulate(runner.load(path, host), host).systems
    assert "client_wait_p99_s" not in free.metrics
