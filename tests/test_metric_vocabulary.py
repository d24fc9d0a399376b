"""The metric vocabulary: engine metrics plus what workloads declare, read by every output."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel
from rich.console import Console

from tests.fakes import BatchWorkload
from xpusim.engine.host import Host
from xpusim.engine.metrics import (
    ENGINE_METRICS,
    SYSTEM_KEYS,
    Metric,
    Vocabulary,
    vocabulary_for,
)
from xpusim.engine.report.html import render_html
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.report.terminal import summary_table
from xpusim.engine.results import RunResult, SystemResult
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.engine.sweep import sweep_report
from xpusim.engine.workload import SystemRun, WorkloadContext
from xpusim.plugins.workloads.offline.workload import OfflineWorkload
from xpusim.plugins.workloads.serving.workload import ServingWorkload
from xpusim.plugins.workloads.spiking import SpikingWorkload
from xpusim.plugins.workloads.training.workload import TrainingWorkload

BUILTIN = (ServingWorkload(), OfflineWorkload(), TrainingWorkload(), SpikingWorkload())
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def _table_text(summary: dict[str, Any], vocabulary: Vocabulary) -> str:
    console = Console(width=400, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(summary_table(summary, vocabulary))
    return console.export_text()


def test_vocabulary_has_no_duplicate_names() -> None:
    """The engine's metrics and each workload's declarations name every key once, and all
    built-in workloads together gather into one vocabulary without a conflict."""
    engine = [m.name for m in ENGINE_METRICS]
    assert len(engine) == len(set(engine))
    for w in BUILTIN:
        names = [m.name for m in w.metrics]
        assert len(names) == len(set(names)), w.name
        assert not set(names) & set(engine), w.name  # the engine's metrics are not redeclared
    vocab = vocabulary_for(*BUILTIN)
    assert len(vocab.names()) == len(set(vocab.names()))
    assert set(vocab["throughput_tokens_per_s"].workloads) == {"serving", "offline", "training"}
    assert vocab["energy_j"].workloads == ()


def test_a_conflicting_declaration_is_refused() -> None:
    """A name declared twice with different definitions raises, naming the metric."""
    m = Metric("widgets_per_s", "Widgets", "widgets/s", better="higher")
    with pytest.raises(ValueError, match="widgets_per_s"):
        Vocabulary((m, replace(m, better="lower")))
    assert len(Vocabulary((m, m))) == 1  # the same definition twice is one metric


@pytest.mark.parametrize(
    ("scenario", "sets"),
    [
        ("quickstart.yaml", ["workload.arrivals.count=100"]),
        ("llama-7b-finetune.yaml", []),
        ("keyword-spotting-snn.yaml", []),
    ],
)
def test_every_key_a_shipped_scenario_emits_is_declared(
    host: Host, scenario: str, sets: list[str]
) -> None:
    """Each metric key a shipped scenario's systems carry in summary.json is in the
    vocabulary of its workload, with a better direction."""
    sc = load_scenario(SCENARIOS / scenario, host, sets)
    declared = vocabulary_for(sc.workload)
    result = simulate(sc, host)
    assert any(s.status == "ok" for s in result.systems)
    for system in result.summary()["systems"]:
        for key in system:
            if key in SYSTEM_KEYS:
                continue
            assert key in declared, f"{scenario}: {key} is not declared"
            assert declared[key].better in ("higher", "lower", "none")
    assert result.vocabulary.names() == declared.names()  # the run carries its vocabulary


class WidgetWorkload(BatchWorkload):
    """The fake batch workload, also counting widgets (a metric no list knew)."""

    name = "widgets"
    metrics = (
        *BatchWorkload.metrics,
        Metric(
            "widgets_per_s",
            "Widget rate",
            "kwidgets/s",
            1e-3,
            "higher",
            description="widgets finished per second",
            order=150,
            short="kwidgets/s",
            table_format="{:,.2f}",
        ),
    )

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """The batch run plus a widget rate: 1000 widgets per simulated second per device."""
        run = super().simulate(config, ctx)
        run.metrics["widgets_per_s"] = 1000.0 * ctx.system.count
        return run


def test_a_declared_metric_is_shown_in_the_table_and_the_report(
    fake_host: Host, tmp_path: Path
) -> None:
    """A workload's own metric, declared on its contract, gets a terminal-table column and
    a report row with its label, unit and scale, and the better system is marked."""
    fake_host.workloads.add("widgets", WidgetWorkload(), "fakes")
    p = tmp_path / "w.yaml"
    p.write_text(
        "name: widgets\nmodel: {family: fake}\nworkload: {kind: widgets}\n"
        "systems: [{name: a, backend: fake, device: chip-a}, "
        "{name: b, backend: fake, device: chip-a, count: 2}]\n"
    )
    result = simulate(load_scenario(p, fake_host), fake_host)
    text = _table_text(result.summary(), result.vocabulary)
    assert "kwidgets/s" in text and "1.00" in text and "2.00" in text
    page = render_html(result)
    row = re.search(r'<tr data-metric="widgets_per_s">.*?</tr>', page, re.S)
    assert row is not None and "Widget rate (kwidgets/s)" in row.group(0)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row.group(0)) == ["1.00", "★ 2.00"]
    assert "| Widget rate (kwidgets/s) | 1.00 | **★ 2.00** |" in render_markdown(result)


def _two_systems(vocab: Vocabulary) -> RunResult:
    """Two systems with a value for every metric: ``one`` has 1, ``two`` has 2."""
    systems = [
        SystemResult(n, "fake", "chip", 1, metrics={m.name: v for m in vocab})
        for n, v in (("one", 1.0), ("two", 2.0))
    ]
    return RunResult("all", 0, "0", systems, vocabulary=vocab)


def test_the_outputs_agree_on_labels_and_direction() -> None:
    """For every metric of the built-in vocabulary, the HTML and Markdown rows carry the
    same heading, the HTML states its direction, the system marked best in the report is
    the one the sweep report names best, and the terminal column is the metric's."""
    vocab = vocabulary_for(*BUILTIN)
    run = _two_systems(vocab)
    page, md = render_html(run), render_markdown(run)
    table = _table_text(run.summary(), vocab)
    frame = pl.DataFrame(
        [
            {"point": i, "point_id": n, "name": n, "status": "ok", **s.metrics}
            for i, (n, s) in enumerate((s.name, s) for s in run.systems)
        ]
    )
    sweep = sweep_report(frame, vocab)
    for m in vocab:
        row = re.search(rf'<tr data-metric="{m.name}">(.*?)</tr>', page, re.S)
        assert (row is not None) == m.report, m.name
        md_row = next((r for r in md.splitlines() if r.startswith(f"| {m.heading} |")), None)
        assert (md_row is not None) == m.report, m.name
        winner = {"higher": "two", "lower": "one"}.get(m.better)
        if row is not None and md_row is not None:
            assert f">{m.heading}" in row.group(1), m.name
            said = re.search(r"<small>(\w+) is better</small>", row.group(1))
            assert (said.group(1) if said else "none") == m.better, m.name
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
            marked = {n for n, c in zip(("one", "two"), cells, strict=True) if "★" in c}
            assert marked == ({winner} if winner else set()), m.name
            assert ("**★" in md_row) == (winner is not None), m.name
        line = next((r for r in sweep.splitlines() if r.startswith(f"| {m.name} (")), None)
        assert (line is not None) == (m.headline and winner is not None), m.name
        if line is not None:
            how = "max" if m.better == "higher" else "min"
            assert line.startswith(f"| {m.name} ({how}) |") and f"| {winner} |" in line
        if m.table and not m.instead_of:
            assert m.column in table, m.name
