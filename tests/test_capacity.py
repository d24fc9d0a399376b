"""Capacity: the SLO verdict, overload read from a run's requests, and the goodput knee."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from xpusim.engine.capacity import (
    LoadPath,
    load_path,
    meets_slo,
    overload,
    search_knee,
    with_rate,
)
from xpusim.engine.host import Host
from xpusim.engine.run import load, simulate

QUICKSTART = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"


def _requests(n: int, rate: float, service: float) -> pl.DataFrame:
    """``n`` requests arriving every ``1/rate`` s to one server taking ``service`` s each."""
    arrival = np.arange(n) / rate
    start = np.zeros(n)
    free = 0.0
    for i, a in enumerate(arrival):
        start[i] = max(a, free)
        free = start[i] + service
    first = start + service / 10
    return pl.DataFrame(
        {
            "arrival_s": arrival,
            "ttft_s": first - arrival,
            "finish_s": start + service,
            "status": ["ok"] * n,
        }
    )


def test_meets_slo_is_99_percent_of_requests() -> None:
    """The serving SLOs are p99 objectives: 99% of requests within them meets them."""
    assert meets_slo({"slo_attainment": 0.99}) is True
    assert meets_slo({"slo_attainment": 0.989}) is False
    assert meets_slo({"slo_attainment": None}) is None
    assert meets_slo({}) is None


def test_a_queue_that_grows_all_run_is_named_with_the_rate_sustained() -> None:
    """Arrivals at 10/s on a server that completes 5/s: overloaded, sustaining about 5/s;
    the same server at 4/s keeps up."""
    over = overload(_requests(400, 10.0, 0.2))
    assert over is not None and over.overloaded
    assert over.sustainable_per_s == pytest.approx(5.0, rel=0.02)
    assert "cannot keep up" in over.sentence("l4")
    fine = overload(_requests(400, 4.0, 0.2))
    assert fine is not None and not fine.overloaded and fine.sustainable_per_s is None


def test_the_knee_search_brackets_and_bisects_a_threshold() -> None:
    """A probe that passes up to 7.3/s: the knee lands within the tolerance below it, from
    a start above or below, and a ceiling stops the doubling."""
    for start in (1.0, 50.0):
        knee = search_knee(lambda r: r <= 7.3, start, probes=20, tolerance=0.02)
        assert knee.rate_per_s is not None and 7.3 / 1.02 <= knee.rate_per_s <= 7.3
    capped = search_knee(lambda r: True, 1.0, ceiling=4.0, probes=20)
    assert capped.rate_per_s == 4.0
    none = search_knee(lambda r: False, 1.0, probes=4)
    assert none.rate_per_s is None and none.below_per_s == pytest.approx(0.125)


def test_a_knee_in_whole_clients_probes_whole_numbers() -> None:
    """Counted in clients, every probe is a whole number of at least one, and the knee is
    the last passing one next to the first failing one; a ceiling of one client a request
    stops the doubling, and a system that fails with one client has no knee."""
    seen: list[float] = []

    def probe(c: float) -> bool:
        seen.append(c)
        return c <= 43

    for start in (16.0, 100.0, 1.0):
        seen.clear()
        knee = search_knee(probe, start, probes=20, tolerance=0.0, whole=True)
        assert knee.rate_per_s == 43.0
        assert all(c == int(c) and c >= 1 for c in seen)
    capped = search_knee(lambda c: True, 16.0, ceiling=40.0, probes=20, whole=True)
    assert capped.rate_per_s == 40.0
    none = search_knee(lambda c: False, 4.0, probes=20, whole=True)
    assert none.rate_per_s is None and none.probes[-1][0] == 1.0


def test_the_offered_load_lives_in_the_arrival_rate_or_the_trace_speed() -> None:
    """A rate sets workload.arrivals.rate; a trace sets time_scale over its own rate."""
    data = {"workload": {"arrivals": {"rate": "2/s"}}}
    where = load_path(data)
    assert where == LoadPath(("workload", "arrivals", "rate"))
    assert with_rate(data, where, 8.0)["workload"]["arrivals"]["rate"] == "8/s"
    trace = {"workload": {"trace": {"path": "x.csv", "format": "csv"}}}
    tw = load_path(trace, trace_rate=4.0)
    assert tw is not None and with_rate(trace, tw, 8.0)["workload"]["trace"]["time_scale"] == 2.0
    assert load_path(trace) is None
    closed = {"workload": {"arrivals": {"process": "closed", "concurrency": 8}}}
    cw = load_path(closed)
    assert cw is not None and cw.clients
    assert with_rate(closed, cw, 12.0)["workload"]["arrivals"]["concurrency"] == 12


def test_run_names_overload_and_finds_each_knee_when_asked(host: Host) -> None:
    """The quickstart's L4 cannot keep up and says what it sustains; with capacity search
    on, each system's knee is in the summary and its probes bracket it."""
    sc = load(
        QUICKSTART,
        host,
        ["workload.arrivals.count=400", "capacity={search: true, probes: 6}"],
    )
    res = {s.name: s for s in simulate(sc, host).systems}
    l4 = res["l4"].metrics
    assert l4["overloaded"] is True and l4["sustainable_rate_per_s"] < l4["offered_rate_per_s"]
    assert res["h100"].metrics["overloaded"] is False
    for s in res.values():
        knee = s.metrics["max_rate_within_slo_per_s"]
        probes = s.details["capacity"]["probes"]
        passed = [p["rate_per_s"] for p in probes if p["met"]]
        failed = [p["rate_per_s"] for p in probes if not p["met"]]
        assert knee is None or knee == max(passed)
        assert not failed or knee is None or min(failed) > knee
    assert res["h100"].metrics["max_rate_within_slo_per_s"] > l4["max_rate_within_slo_per_s"]


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ("capacity={serach: true}", "capacity.serach"),
        ("capacity.probes=100", "capacity.probes"),
        ("capacity.tolerance=2", "capacity.tolerance"),
    ],
)
def test_validate_refuses_a_bad_capacity_block_naming_the_key_and_the_fix(
    bad: str, key: str
) -> None:
    """``xpusim validate`` catches a malformed ``capacity:`` block before anything is
    simulated: exit 2, naming the file, the key and the block's form."""
    from typer.testing import CliRunner

    from xpusim.engine import cli

    result = CliRunner().invoke(
        cli.app, ["validate", str(QUICKSTART), "--set", bad], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "quickstart.yaml" in text and f"at {key}" in text
    assert "The block is capacity: {search: true or false, probes: 2 to 40" in text
