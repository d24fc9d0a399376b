"""Sweeps: point expansion, content ids, resumption and failure isolation."""

from __future__ import annotations

from typing import Any

import pytest

from xpusim.engine.errors import ScenarioError
from xpusim.engine.metrics import vocabulary_for
from xpusim.engine.sweep import expand, parse_sweep, point_id, sweep_report
from xpusim.engine.yamlsrc import Source
from xpusim.plugins.workloads.serving.workload import ServingWorkload

SRC = Source("s.yaml")
BASE: dict[str, Any] = {
    "name": "s",
    "model": {"family": "fake"},
    "workload": {"kind": "batch", "steps": 1, "scheduler": {"max_batch": 8}},
    "systems": [{"name": "a", "backend": "fake", "device": "chip-a", "count": 1}],
}


def test_grid_zip_random_product() -> None:
    """Points are grid x zip x random samples, each applying its values by dotted path."""
    spec = parse_sweep(
        {
            "grid": {"workload.scheduler.max_batch": [16, 64], "systems.0.count": [1, 2]},
            "zip": {"workload.steps": [1, 2, 3], "seed": [5, 6, 7]},
            "random": {
                "samples": 2,
                "seed": 4,
                "params": {"economics.pue": {"uniform": [1.1, 1.5]}},
            },
        },
        SRC,
    )
    points = expand(BASE, spec, SRC)
    assert len(points) == 2 * 2 * 3 * 2
    p = points[0]
    assert p.data["workload"]["scheduler"]["max_batch"] == p.params["workload.scheduler.max_batch"]
    assert p.data["systems"][0]["count"] == p.params["systems.0.count"]
    assert 1.1 <= p.data["economics"]["pue"] <= 1.5
    assert "sweep" not in p.data
    assert len({q.id for q in points}) == len(points)


def test_random_draws_are_seeded() -> None:
    """The same random spec draws the same values; a unit is appended to numbers."""
    raw = {
        "random": {
            "samples": 3,
            "seed": 9,
            "params": {"workload.rate": {"loguniform": [1, 20], "unit": "/s"}},
        }
    }
    a = expand(BASE, parse_sweep(raw, SRC), SRC)
    b = expand(BASE, parse_sweep(raw, SRC), SRC)
    assert [p.params for p in a] == [p.params for p in b]
    assert all(str(p.params["workload.rate"]).endswith("/s") for p in a)


def test_point_id_is_content_hash() -> None:
    """Equal scenarios have equal ids whatever the key order; any change changes it."""
    a = {"x": 1, "y": {"z": [1, 2]}}
    b = {"y": {"z": [1, 2]}, "x": 1}
    assert point_id(a) == point_id(b)
    assert point_id(a) != point_id({"x": 2, "y": {"z": [1, 2]}})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (None, "no `sweep:` block"),
        ({}, "varies nothing"),
        ({"grid": {"a": []}}, "has no values"),
        ({"zip": {"a": [1, 2], "b": [1]}}, "one length"),
        ({"grdi": {"a": [1]}}, "Did you mean 'grid'"),
        ({"random": {"samples": 2, "params": {"a": {"uniform": [3, 1]}}}}, "above upper"),
    ],
)
def test_bad_sweep_blocks(raw: Any, match: str) -> None:
    """A malformed sweep block is refused with the reason."""
    with pytest.raises(ScenarioError, match=match):
        parse_sweep(raw, SRC)


def test_too_many_points() -> None:
    """A sweep larger than max_points is refused before anything runs."""
    spec = parse_sweep(
        {"grid": {"a": list(range(100)), "b": list(range(100))}, "max_points": 50}, SRC
    )
    with pytest.raises(ScenarioError, match="10,000 points"):
        expand(BASE, spec, SRC)


def test_sweep_report_marks_best_and_frontier() -> None:
    """The report names the best point per metric and the throughput/cost frontier."""
    import polars as pl

    frame = pl.DataFrame(
        {
            "point": [0, 1, 2],
            "point_id": ["a", "b", "c"],
            "param.x": [1, 2, 3],
            "name": ["s", "s", "s"],
            "status": ["ok", "ok", "ok"],
            "throughput_tokens_per_s": [100.0, 300.0, 200.0],
            "cost_per_million_tokens_usd": [1.0, 2.0, 3.0],
        }
    )
    text = sweep_report(frame, vocabulary_for(ServingWorkload()))
    assert "| throughput_tokens_per_s (max) | 300 | 1 |" in text
    frontier = text.split("Pareto frontier")[1]
    assert "\n| 0 |" in frontier and "\n| 1 |" in frontier and "\n| 2 |" not in frontier
