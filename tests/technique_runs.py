"""A helper the serving-technique tests share: run a scenario text through the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from xpusim.engine.host import Host
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario


def run_text(
    host: Host, write_yaml: Callable[[str, str], Path], text: str
) -> tuple[dict[str, float], pl.DataFrame]:
    """Simulate the scenario ``text``; its first system's metrics and requests frame."""
    res = simulate(load_scenario(write_yaml(text, "technique.yaml"), host), host).systems[0]
    assert res.status == "ok", res.reason
    req = res.frames["requests"]
    assert isinstance(req, pl.DataFrame)
    return res.metrics, req
