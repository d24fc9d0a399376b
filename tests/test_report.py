"""report.html, report.md, timeline.json and `compare` on a synthetic two-system run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest

from xpusim.engine.device import DeviceSpec, Figure, PowerSpec, PriceSpec
from xpusim.engine.economics import HOUR_S, EconomicsConfig, apply_economics
from xpusim.engine.errors import XpusimError
from xpusim.engine.lazy import Lazy
from xpusim.engine.metrics import Metric, vocabulary_for
from xpusim.engine.report import best_systems, fmt, metric_value
from xpusim.engine.report.compare import compare_runs, load_run
from xpusim.engine.report.html import render_html
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.report.terminal import summary_table
from xpusim.engine.report.timeline import build_trace
from xpusim.engine.report.verdict import headline
from xpusim.engine.reporter import Reporter
from xpusim.engine.results import RunResult, SystemResult, write_run
from xpusim.plugins.reporters import register_reporters
from xpusim.plugins.workloads.serving.workload import ServingWorkload

SPAN = 20.0


def _spec(
    name: str, cloud_h: float | None, list_price: float | None, idle_w: float | None
) -> DeviceSpec:
    def fig(v: float | None, scale: float = 1.0) -> Figure | None:
        return None if v is None else Figure(v * scale, f"{name}_catalog")

    return DeviceSpec(
        name=name,
        backend="gpu",
        vendor="test",
        description="",
        peak_flops={"bf16": Figure(1e15, f"{name}_bf16")},
        memory_bytes=Figure(80e9, f"{name}_mem"),
        memory_bw=Figure(3e12, f"{name}_bw"),
        power=PowerSpec(max_w=Figure(700.0, f"{name}_tdp"), idle_w=fig(idle_w)),
        price=PriceSpec(on_demand=fig(cloud_h, 1 / HOUR_S), list_price=fig(list_price)),
    )


def _system(name: str, devices: int, slow: float, seed: int) -> SystemResult:
    """A serving system: ``devices`` device lanes alternating states, 300 requests."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(devices):
        t = 0.0
        while True:
            dur = float(rng.uniform(0.02, 0.08)) * slow
            if t + dur > SPAN:
                break
            state = ("compute", "memory", "comm", "overhead")[int(rng.integers(0, 4))]
            rows.append((name, 0, d, t, t + dur, state, dur * 450.0))
            t += dur + float(rng.uniform(0.0, 0.03))
    dev = pl.DataFrame(
        rows,
        schema=["system", "replica", "device", "start_s", "end_s", "state", "joules"],
        orient="row",
    )
    n = 300
    arrival = np.sort(rng.uniform(0, SPAN - 2, n))
    ttft = rng.lognormal(-2.0, 0.6, n) * slow
    tbt = rng.lognormal(-4.0, 0.3, n) * slow
    req = pl.DataFrame(
        {
            "system": [name] * n,
            "replica": [0] * n,
            "request_id": list(range(n)),
            "arrival_s": arrival,
            "first_token_s": arrival + ttft,
            "finish_s": arrival + ttft + 1.0,
            "prompt_tokens": [200] * n,
            "output_tokens": [64] * n,
            "ttft_s": ttft,
            "e2e_s": ttft + 1.0,
            "tbt_mean_s": tbt,
            "status": ["ok"] * n,
        }
    )
    steps = pl.DataFrame(
        {
            "system": [name] * 20,
            "replica": [0] * 20,
            "step": list(range(20)),
            "start_s": [i * 1.0 for i in range(20)],
            "end_s": [i * 1.0 + 0.8 for i in range(20)],
            "batch": [8] * 20,
            "prefill_tokens": [100] * 20,
            "decode_tokens": [8] * 20,
            "state": ["compute"] * 20,
            "joules": [300.0] * 20,
        }
    )
    metrics = {
        "throughput_tokens_per_s": 2000.0 / slow,
        "ttft_p50_s": float(np.quantile(ttft, 0.5)),
        "ttft_p99_s": float(np.quantile(ttft, 0.99)),
        "tbt_p50_s": float(np.quantile(tbt, 0.5)),
        "tbt_p99_s": float(np.quantile(tbt, 0.99)),
        "slo_attainment": 0.99 / slow,
        "simulated_s": SPAN,
    }
    return SystemResult(
        name,
        "gpu",
        f"{name}-chip",
        devices,
        metrics=metrics,
        frames={"devices": dev, "requests": req, "steps": steps},
    )


def synthetic_run(scenario: str = "synthetic") -> RunResult:
    """Two ok systems (one with every figure, one with no price and no idle power) and one
    unsupported system, with economics applied."""
    fast = _system("fast", 2, 1.0, 1)
    slow = _system("slow", 4, 1.7, 2)
    cfg = EconomicsConfig(electricity="0.12 USD/kWh", pue=1.3, host_power="400 W")
    apply_economics(fast, _spec("fast-chip", 4.0, 30_000.0, 70.0), 2, cfg, None)
    apply_economics(slow, _spec("slow-chip", None, None, None), 4, cfg, None)
    spiky = SystemResult(
        "neuro",
        "spinnaker",
        "spinn5",
        1,
        status="unsupported",
        reason="a transformer cannot run on SpiNNaker",
    )
    return RunResult(
        scenario,
        7,
        "0.1.0",
        [fast, slow, spiky],
        workload="serving",
        model="llama-2-7b",
        vocabulary=vocabulary_for(ServingWorkload()),
    )


def _reporters() -> list[Reporter]:
    found: list[Reporter] = []
    register_reporters(lambda r: found.append(r.load() if isinstance(r, Lazy) else r))
    return found


@pytest.fixture(scope="module")
def run() -> RunResult:
    return synthetic_run()


@pytest.fixture(scope="module")
def page(run: RunResult) -> str:
    return render_html(run)


def test_html_is_self_contained(page: str) -> None:
    """report.html fetches nothing: no script, no external src/href, no CSS import or url()."""
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.I)
    assert "<link" not in page.lower()


def test_html_has_every_section_and_svg_charts(page: str) -> None:
    """The page has the summary, the Pareto, latency, energy, utilization and cost charts
    as inline SVG, and the Assumptions and sources section."""
    for section in ("summary", "pareto", "latency", "energy", "utilization", "cost", "sources"):
        assert f'id="{section}"' in page, section
    for chart in ("pareto", "latency", "energy", "utilization", "cost"):
        assert re.search(rf'<svg class="chart" data-chart="{chart}"', page), chart
    assert "Assumptions and sources" in page
    # element ids are unique across the inlined charts
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_summary_marks_the_best_system_per_metric(run: RunResult, page: str) -> None:
    """Highest throughput and lowest latency win; the marked cell is the winner's."""
    by_key = {m.name: m for m in run.vocabulary}
    assert best_systems(run.systems, by_key["throughput_tokens_per_s"]) == {"fast"}
    assert best_systems(run.systems, by_key["ttft_p99_s"]) == {"fast"}
    assert best_systems(run.systems, by_key["simulated_s"]) == set()
    row = re.search(r'<tr data-metric="throughput_tokens_per_s">.*?</tr>', page, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0))
    assert cells == ["★ 2,000", "1,176", "-"]  # fast, slow, the unsupported system
    row = re.search(r'<tr data-metric="energy_j">.*?</tr>', page, re.S)
    assert row is not None and "★" in row.group(0)  # slow misses the SLO: fast is the pick


def _with(run: RunResult, **changes: dict[str, Any]) -> list[SystemResult]:
    """Copies of ``run``'s systems with some metrics changed, by system name."""
    out = []
    for s in run.systems:
        metrics = {**s.metrics, **changes.get(s.name, {})}
        out.append(dataclasses.replace(s, metrics=metrics))
    return out


def test_a_system_that_misses_the_slo_gets_no_star_however_cheap(run: RunResult) -> None:
    """The ★ goes to the best system that meets the SLOs: a cheaper one at 58% SLO
    attainment is not a candidate."""
    by_key = {m.name: m for m in run.vocabulary}
    systems = _with(run, slow={"cost_per_million_tokens_usd": 0.01, "cost_usd": 0.01})
    assert best_systems(systems, by_key["cost_per_million_tokens_usd"]) == {"fast"}
    ok = _with(run, slow={"cost_usd": 0.01, "slo_attainment": 1.0})
    assert best_systems(ok, by_key["cost_usd"]) == {"slow"}


def test_ties_are_ties_and_get_no_star(run: RunResult) -> None:
    """Two systems meeting the SLOs with the same best figure: neither is marked."""
    by_key = {m.name: m for m in run.vocabulary}
    same = {"slo_attainment": 1.0, "throughput_tokens_per_s": 2000.0}
    systems = _with(run, fast=same, slow=same)
    assert best_systems(systems, by_key["throughput_tokens_per_s"]) == set()


def test_the_headline_names_the_cheapest_system_meeting_the_slo(run: RunResult) -> None:
    """The headline names the cheapest system within the SLOs and who misses them; with no
    system within them it says so and names the closest; equal costs tie."""
    text = headline(run.systems)
    assert text.startswith("fast (fast-chip × 2) is the cheapest system that meets the SLOs")
    assert "slow (58.2%)" in text
    none = _with(run, fast={"slo_attainment": 0.5})
    assert headline(none).startswith("No system meets the SLOs")
    tie = _with(
        run,
        slow={"slo_attainment": 1.0, "cost_per_million_tokens_usd": 1.0},
        fast={"cost_per_million_tokens_usd": 1.0},
    )
    assert "tie as the cheapest" in headline(tie)


def test_every_output_opens_with_the_headline(run: RunResult, page: str) -> None:
    """report.md, report.html and the terminal table carry the headline sentence."""
    first = headline(run.systems).split(":")[0]
    assert first in render_markdown(run)
    assert first in page
    table = summary_table(run.summary(), run.vocabulary)
    assert first in str(table.title)


def test_the_terminal_prints_the_rent_or_buy_verdict(run: RunResult) -> None:
    """Under the terminal table: the busy hours a year above which buying beats renting,
    for each system whose prices are known, and how to get a verdict."""
    caption = str(summary_table(run.summary(), run.vocabulary).caption)
    assert "fast: buying beats renting on demand above" in caption
    assert "busy_hours_per_year" in caption and "slow:" not in caption
    told = _with(run, fast={"cheaper_choice": "rent", "break_even_months": None})
    caption = str(
        summary_table(dataclasses.replace(run, systems=told).summary(), run.vocabulary).caption
    )
    assert "the cheaper choice is to rent on demand" in caption


def test_not_known_figures_are_said_with_their_reason(page: str, run: RunResult) -> None:
    """A system with no price and no idle power shows "not known" and the reason sentence;
    its throughput is still shown."""
    assert "not known" in page
    assert "has no published on-demand price" in page
    assert "no published idle power" in page
    md = render_markdown(run)
    assert "not known" in md and "has no published on-demand price" in md


def test_unsupported_system_is_listed_with_its_reason(page: str) -> None:
    """A system that could not run is in the table with its status and reason."""
    assert "unsupported: a transformer cannot run on SpiNNaker" in page


def test_sources_list_every_figure_used_with_its_source(page: str, run: RunResult) -> None:
    """Each figure recorded by the systems appears with its value and source or assumption."""
    for s in run.systems:
        for name, fig in s.figures.items():
            assert name in page
            assert (fig.source or fig.assumption)[:40].replace("'", "&#x27;") in page
    assert "481 gCO2e/kWh" in page
    assert "4.000 USD/h" in page


def test_html_is_deterministic(run: RunResult) -> None:
    """The same run gives the same bytes."""
    assert render_html(run) == render_html(synthetic_run())


def test_markdown_has_the_summary_table(run: RunResult) -> None:
    """report.md starts with a Markdown table: header, alignment row, one row per system."""
    md = render_markdown(run)
    lines = md.splitlines()
    head = lines.index("| Metric | fast | slow | neuro |")
    assert re.match(r"^\|(:?-+:?\|)+$", lines[head + 1])
    body = []
    for line in lines[head + 2 :]:
        if not line.startswith("|"):
            break
        body.append(line)
    assert all(r.count("|") - r.count("\\|") == 5 for r in body)
    assert any(r.startswith("| Throughput (tokens/s) | **★ 2,000** | 1,176 | - |") for r in body)
    assert any("unsupported: a transformer cannot run on SpiNNaker" in r for r in body)
    assert "## Assumptions and sources" in md


def test_timeline_is_a_valid_chrome_trace(run: RunResult) -> None:
    """timeline.json: traceEvents with process/thread names and complete events whose ts and
    dur are the intervals' microseconds."""
    doc = json.loads(json.dumps(build_trace(run)))
    events = doc["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    complete = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in meta} == {"process_name", "thread_name"}
    names = {e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert any(n.startswith("fast") for n in names)
    dev = run.frame("devices")
    steps = run.frame("steps")
    assert dev is not None and steps is not None
    assert len(complete) == dev.height + steps.height
    for e in complete:
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ts"] >= 0 and e["dur"] >= 0
    first = dev.sort("start_s").row(0, named=True)
    match = [
        e
        for e in complete
        if e["name"] == first["state"] and e["ts"] == pytest.approx(first["start_s"] * 1e6)
    ]
    assert match and match[0]["dur"] == pytest.approx((first["end_s"] - first["start_s"]) * 1e6)
    assert doc["otherData"]["reduction"] == "none"


def test_timeline_caps_events_and_says_so(run: RunResult) -> None:
    """Past the cap, events are aggregated to fit, keeping every thread, and otherData says
    how."""
    doc = build_trace(run, max_events=200)
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert 0 < len(complete) <= 200
    assert "aggregated" in doc["otherData"]["reduction"]
    threads = {(e["pid"], e["tid"]) for e in complete}
    assert len(threads) == 2 + 4 + 2  # device lanes of both systems plus their step threads
    merged = sum(e["args"].get("merged_intervals", 1) for e in complete)
    assert merged == doc["otherData"]["intervals"]


def test_training_run_without_requests_still_reports() -> None:
    """A run without a requests frame (training) says there is no latency CDF and renders
    the rest."""
    training = synthetic_run()
    for s in training.systems:
        s.frames.pop("requests", None)
    page = render_html(training)
    assert 'data-chart="latency"' not in page
    assert "served no requests" in page
    assert 'data-chart="utilization"' in page


def test_reporters_write_their_files(tmp_path: Path, run: RunResult) -> None:
    """The html, markdown and timeline reporters are registered by the plugin and write
    report.html, report.md and timeline.json into the run folder."""
    reporters = _reporters()
    assert sorted(r.name for r in reporters) == ["html", "markdown", "timeline"]
    out = write_run(run, tmp_path / "run", reporters)
    for name in ("report.html", "report.md", "timeline.json", "report-data.json"):
        assert (out / name).is_file(), name
    json.loads((out / "timeline.json").read_text())


def test_load_run_reads_a_run_folder_back(tmp_path: Path, run: RunResult) -> None:
    """load_run rebuilds systems, metrics, frames, figures and details from the folder."""
    out = write_run(run, tmp_path / "run", _reporters())
    back = load_run(out)
    assert [s.name for s in back.systems] == ["fast", "slow", "neuro"]
    fast = back.systems[0]
    assert fast.metrics["cost_usd"] == pytest.approx(run.systems[0].metrics["cost_usd"])
    assert fast.frames["requests"].height == 300
    assert fast.figures["price.on_demand"] == run.systems[0].figures["price.on_demand"]
    assert "cost_usd" in back.systems[1].details["not_known"]
    assert back.systems[2].status == "unsupported"


def test_compare_merges_runs_prefixing_clashing_names(tmp_path: Path) -> None:
    """compare_runs puts two runs' systems side by side in one HTML report; names used by
    both runs are prefixed with the run folder's name."""
    a = write_run(synthetic_run("a"), tmp_path / "runA", _reporters())
    b = write_run(synthetic_run("b"), tmp_path / "runB", _reporters())
    out = compare_runs([a, b], tmp_path / "cmp" / "comparison.html")
    page = out.read_text()
    for name in ("runA/fast", "runB/fast", "runA/slow", "runB/neuro"):
        assert f"<th>{name}<br>" in page
    assert 'data-chart="pareto"' in page and 'data-chart="latency"' in page
    md = compare_runs([a, b], tmp_path / "comparison.md").read_text()
    assert "| runB/fast |" in md


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    """A folder without summary.json is an input error naming it."""
    with pytest.raises(XpusimError, match="not a run folder"):
        compare_runs([tmp_path], tmp_path / "x.html")


def test_the_sweep_best_point_is_one_that_meets_the_slo() -> None:
    """A sweep's cheapest point at 12% SLO attainment is not its best cost point: the best
    points and the frontier consider only rows meeting the SLOs, and say so."""
    from xpusim.engine.sweep import sweep_report

    frame = pl.DataFrame(
        {
            "point": [0, 1],
            "point_id": ["a", "b"],
            "param.systems.0.count": [2, 4],
            "name": ["s", "s"],
            "status": ["ok", "ok"],
            "throughput_tokens_per_s": [900.0, 1000.0],
            "cost_per_million_tokens_usd": [1.0, 2.0],
            "slo_attainment": [0.12, 1.0],
        }
    )
    text = sweep_report(frame, vocabulary_for(ServingWorkload()))
    assert "| cost_per_million_tokens_usd (min) | 2 | 1 |" in text
    assert "1 of the 2 ok rows meet the SLOs" in text


def test_an_overloaded_system_says_so_in_its_status(run: RunResult) -> None:
    """An ok system whose queue grew all run is shown as overloaded, with the rate it
    sustains, in every output's status."""
    systems = _with(run, slow={"overloaded": True, "sustainable_rate_per_s": 3.25})
    over = dataclasses.replace(run, systems=systems)
    assert "overloaded: sustains at most about 3.25 req/s" in render_markdown(over)
    assert "overloaded: sustains at most about 3.25 req/s" in render_html(over)
    table = summary_table(over.summary(), over.vocabulary)
    assert "overloaded" in list(table.columns[3].cells)


def test_counts_print_whole_and_measures_keep_their_digits() -> None:
    """A count (an ``int``) prints in all its digits, never as ``43.0``; a measured value
    keeps three significant digits; a count shown through a unit scale is a measure."""
    assert fmt(43) == "43"
    assert fmt(0) == "0"
    assert fmt(1234567) == "1,234,567"
    assert fmt(43.0) == "43.0"
    assert fmt(0.012345) == "0.0123"
    knee = Metric("max_concurrency_within_slo", "clients within the SLOs", "clients")
    scaled = Metric("some_time_s", "time", "ms", scale=1e3)
    system = SimpleNamespace(status="ok", metrics={knee.name: 43, scaled.name: 2})
    assert metric_value(system, knee) == 43  # type: ignore[arg-type]
    assert isinstance(metric_value(system, knee), int)  # type: ignore[arg-type]
    assert metric_value(system, scaled) == 2000.0  # type: ignore[arg-type]
