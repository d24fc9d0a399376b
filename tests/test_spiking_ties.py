"""Ties are ties: equal figures get no ★ in a spiking comparison, within the tolerance
engine/report/verdict.py documents (tie_tolerance), for made-up systems and for the
shipped keyword-spotting scenario run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpusim.engine.host import Host
from xpusim.engine.metrics import Metric, engine_vocabulary
from xpusim.engine.report import best_systems
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.report.verdict import SAME_THROUGHPUT, TIE, tie_tolerance
from xpusim.engine.results import RunResult, SystemResult
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = Metric("throughput_samples_per_s", "Throughput", "samples/s", better="higher")
ENERGY = engine_vocabulary()["energy_per_sample_j"]


def _system(name: str, **metrics: float) -> SystemResult:
    return SystemResult(name, "fake", "chip", 1, metrics=dict(metrics))


def test_four_equal_throughputs_at_one_offered_load_get_no_star() -> None:
    """Four systems offered 8 samples/s that all keep up measure 8.018 to 8.022 samples/s
    (the run's last sample finishes at different times): one delivered load, no ★."""
    systems = [
        _system(n, throughput_samples_per_s=t, offered_rate_per_s=8.0)
        for n, t in zip("abcd", (8.0186, 8.0222, 8.02220, 8.0223), strict=True)
    ]
    assert tie_tolerance(systems, THROUGHPUT.name) == SAME_THROUGHPUT
    assert best_systems(systems, THROUGHPUT) == set()


def test_a_system_that_falls_behind_the_offered_load_leaves_the_others_tied() -> None:
    """Within 5% of the best at one offered load is a tie; one that delivers far less than
    the others is not the best either, so still no ★."""
    systems = [
        _system("a", throughput_samples_per_s=8.02, offered_rate_per_s=8.0),
        _system("b", throughput_samples_per_s=7.9, offered_rate_per_s=8.0),
        _system("c", throughput_samples_per_s=5.0, offered_rate_per_s=8.0),
    ]
    assert best_systems(systems, THROUGHPUT) == set()


def test_throughputs_without_an_offered_load_are_speeds_and_get_a_star() -> None:
    """A batch run (no offered load) measures each system's speed: the fastest gets the ★
    even when it is only 1% ahead, and a different offered load per system is no tie."""
    batch = [
        _system("a", throughput_samples_per_s=101.0),
        _system("b", throughput_samples_per_s=100.0),
    ]
    assert tie_tolerance(batch, THROUGHPUT.name) == TIE
    assert best_systems(batch, THROUGHPUT) == {"a"}
    apart = [
        _system("a", throughput_samples_per_s=16.0, offered_rate_per_s=16.0),
        _system("b", throughput_samples_per_s=8.0, offered_rate_per_s=8.0),
    ]
    assert best_systems(apart, THROUGHPUT) == {"a"}


@pytest.mark.parametrize(
    ("second", "star"),
    [(2.0, set()), (2.0 * (1 + 1e-12), set()), (2.0 * (1 + 1e-6), {"a"}), (2.2, {"a"})],
)
def test_energy_ties_only_within_a_billionth(second: float, star: set[str]) -> None:
    """Energy per sample is a tie only when two figures agree within a billionth (TIE);
    any real difference, however small, marks the lower one."""
    systems = [
        _system("a", energy_per_sample_j=2.0, offered_rate_per_s=8.0),
        _system("b", energy_per_sample_j=second, offered_rate_per_s=8.0),
    ]
    assert tie_tolerance(systems, ENERGY.name) == TIE == 1e-9
    assert best_systems(systems, ENERGY) == star


def test_shipped_keyword_spotting_run_stars_no_throughput(host: Host) -> None:
    """The shipped keyword-spotting scenario (five systems at 8 keywords/s, all keeping
    up) gives the throughput row no ★, while energy per sample still has its best."""
    path = ROOT / "scenarios" / "keyword-spotting-snn.yaml"
    sc = load_scenario(
        path, host, overrides=["workload.samples=200", "workload.sweep.enabled=false"]
    )
    run: RunResult = simulate(sc, host)
    ok = [s for s in run.systems if s.status == "ok"]
    assert len(ok) == 5
    assert all(s.metrics["offered_rate_per_s"] > 0 for s in ok)
    assert best_systems(run.systems, THROUGHPUT) == set()
    assert len(best_systems(run.systems, ENERGY)) == 1
    line = next(x for x in render_markdown(run).splitlines() if x.startswith("| Throughput"))
    assert "★" not in line
