"""Every shipped scenario loads, resolves its plugins and decides each system's fate."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpusim.engine.host import Host
from xpusim.engine.run import prepare
from xpusim.engine.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))
NEEDS_TRACES = {"trace-replay.yaml"}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_shipped_scenario_is_valid_and_every_system_runs(host: Host, path: Path) -> None:
    """A shipped scenario validates and none of its systems is refused: each one the
    scenario compares fits and is supported, so a user's first run shows every column."""
    if path.name in NEEDS_TRACES and not (path.parent / "../../shared/traces").resolve().is_dir():
        pytest.skip("the shared traces are not beside the repository")
    sc = load_scenario(path, host)
    assert sc.systems, path
    outcomes = {p.result.name: (p.result.status, p.result.reason) for p in prepare(sc, host)}
    assert all(status == "ok" for status, _ in outcomes.values()), outcomes


def test_quickstart_compares_h100_a100_l4(host: Host) -> None:
    """The quickstart answers the README's question: Llama-2-7B on one H100, one A100, one L4."""
    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml", host)
    assert sc.model.name == "llama-2-7b" and sc.workload.name == "serving"
    assert [(s.device.name, s.count) for s in sc.systems] == [
        ("h100-sxm", 1),
        ("a100-sxm-80gb", 1),
        ("l4", 1),
    ]
