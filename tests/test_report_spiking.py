"""The spiking section of the reports: energy split per inference and per synaptic
event, crossovers over load and input rate, and the mapping facts."""

from __future__ import annotations

import polars as pl
import pytest

from xpusim.engine.device import Figure
from xpusim.engine.report import spiking
from xpusim.engine.report.html import render_html
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.results import RunResult, SystemResult
from xpusim.plugins.workloads.spiking_sweep import OPERATING_POINTS_SCHEMA

LOADS = (1.0, 4.0, 16.0, 64.0)
EVENTS = 1e5


def _points(name: str, static_w: float, active_j: float, cap: float) -> pl.DataFrame:
    """Operating points of a system drawing ``static_w`` idle and ``active_j`` per
    inference: E(load) = static_w / load + active_j (device joules, before PUE)."""
    rows = [
        {
            "system": name,
            "axis": "load",
            "load_per_s": x,
            "input_rate_hz": 20.0,
            "saturated": x >= cap,
            "fits_real_time": None,
            "latency_p50_s": 0.01,
            "latency_p99_s": 0.02,
            "static_j": static_w / x,
            "active_j": active_j,
            "total_j": static_w / x + active_j,
            "synaptic_events": EVENTS,
            "capacity_per_s": cap,
        }
        for x in LOADS
    ]
    return pl.DataFrame(rows, schema=OPERATING_POINTS_SCHEMA)


def _system(
    name: str, static_w: float, active_j: float, cap: float, **facts: object
) -> SystemResult:
    load = 2.0
    metrics = {
        "throughput_samples_per_s": load,
        "energy_per_sample_static_j": static_w / load,
        "energy_per_sample_active_j": active_j,
        "energy_per_sample_j": static_w / load + active_j,
        "synaptic_events_per_sample": EVENTS,
        "capacity_samples_per_s": cap,
        **facts,
    }
    return SystemResult(
        name,
        "fake",
        "chip",
        1,
        metrics=metrics,
        frames={"operating_points": _points(name, static_w, active_j, cap)},
        figures={"economics.pue": Figure(1.0, assumption="no facility overhead")},
    )


@pytest.fixture()
def run() -> RunResult:
    lean = _system("lean", 10.0, 0.01, 100.0, chips_used=3.0, fits_real_time=False)
    light = _system("light", 1.0, 0.5, 1000.0)
    return RunResult("s", 7, "0", [lean, light], workload="spiking")


def test_split_per_inference_and_per_synaptic_event(run) -> None:  # type: ignore[no-untyped-def]
    """Static, active and total joules per inference at the scenario's load, and each
    divided by the synaptic events of an inference."""
    rows = {r.system: r for r in spiking.split_rows(run.systems)}
    lean = rows["lean"]
    assert (lean.static_j, lean.active_j, lean.total_j) == pytest.approx((5.0, 0.01, 5.01))
    assert lean.per_event(lean.active_j) == pytest.approx(0.01 / EVENTS)


def test_crossover_over_load_is_found_between_grid_points(run) -> None:  # type: ignore[no-untyped-def]
    """10/x + 0.01 and 1/x + 0.5 cross at x = 9/0.49; interpolating the grid in log-log
    space lands near it, with the low-static system cheaper below."""
    (c,) = spiking.crossovers(run)
    assert c.axis == "load" and c.below == "light" and c.above == "lean"
    assert 16.0 < c.at < 64.0 and c.at == pytest.approx(9 / 0.49, rel=0.2)


def test_static_crossover_is_exact_and_checks_capacity(run) -> None:  # type: ignore[no-untyped-def]
    """From static power and active energy: lean overtakes light above (10-1)/(0.5-0.01)
    samples/s, a load both can carry; with a lean capacity below it, it never happens."""
    (x,) = spiking.static_crossovers(run)
    assert (x.lean, x.light) == ("lean", "light")
    assert x.load == pytest.approx(9 / 0.49) and x.sustained
    run.systems[0].metrics["capacity_samples_per_s"] = 10.0
    (x,) = spiking.static_crossovers(run)
    assert not x.sustained


def test_sections_state_the_split_crossovers_facts_and_what_the_star_uses(run) -> None:  # type: ignore[no-untyped-def]
    """Both documents carry the split table, the crossover sentences, the mapping facts
    (a boolean as yes/no) and the note on which energy figure the ★ uses; the HTML has
    the chart."""
    md = "\n".join(spiking.markdown_section(run))
    assert "Static J/inference" in md and "µJ/event" in md
    assert spiking.STAR_NOTE in md
    assert "light needs less energy per inference below" in md
    assert "| Chips used | 3 | - |" in md and "| Fits in real time | no | - |" in md
    page = spiking.html_section(run)
    assert 'data-chart="spiking"' in page and "Where each platform wins" in page


def test_no_section_for_other_workloads(run) -> None:  # type: ignore[no-untyped-def]
    """A run that is not spiking gets no section."""
    run.workload = "serving"
    assert spiking.markdown_section(run) == [] and spiking.html_section(run) == ""


def test_html_report_carries_the_section(run) -> None:  # type: ignore[no-untyped-def]
    """report.html of a spiking run includes the section after the energy chart."""
    page = render_html(run)
    assert page.index('id="energy"') < page.index('id="spiking"') < page.index('id="sources"')


def test_markdown_report_carries_the_section(run) -> None:  # type: ignore[no-untyped-def]
    """report.md of a spiking run includes the section after the summary table."""
    doc = render_markdown(run)
    assert doc.index("## Summary") < doc.index("## Spiking: energy per inference")
