"""Expert parallelism in serving: an expert group steps as one replica of DP-attention ranks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.expert import ExpertGroupCompiled

from .technique_runs import run_text
from .test_serving import compiled


def test_each_rank_takes_its_share_of_the_batch() -> None:
    """A group iteration of 10 sequences over 4 ranks prices the busiest rank's 3, each
    part of a fused iteration split alike; every rank's devices draw power."""
    inner = compiled()
    grp = ExpertGroupCompiled(inner, 4)
    dec = Shape(Phase.DECODE, batch=10, tokens=1, context=64)
    rank = Shape(Phase.DECODE, batch=3, tokens=1, context=64)
    assert grp.cost(dec).seconds == inner.cost(rank).seconds
    assert grp.cost(dec).joules == pytest.approx(4 * inner.cost(rank).joules)
    pf = Shape(Phase.PREFILL, batch=2, tokens=100, context=0)
    mixed = Shape(Phase.MIXED, batch=12, parts=(pf, dec))
    shared = grp.rank_shape(mixed)
    assert [p.batch for p in shared.parts] == [1, 3] and shared.batch == 4
    assert grp.kv_capacity_tokens(0.9) == 4 * inner.kv_capacity_tokens(0.9)


SCENARIO = """
name: ep
model: {family: mixtral, preset: mixtral-8x7b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 5/s, count: 60, prompt_tokens: {dist: constant, value: 256},
             output_tokens: {dist: constant, value: 16}}
systems:
  - {name: ep, backend: gpu, device: h100-sxm, count: COUNT, parallelism: {expert: 8}}
"""


def test_eight_expert_ranks_serve_as_one_replica(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Mixtral over 8 H100s with expert: 8 is one replica of 8 devices: every request
    goes to replica 0."""
    m, req = run_text(host, write_yaml, SCENARIO.replace("COUNT", "8"))
    assert m["replicas"] == 1
    assert set(req["replica"].to_list()) == {0}
    assert m["kv_capacity_tokens"] > 0


def test_ranks_that_do_not_fill_expert_groups_are_refused(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """12 ranks cannot form groups of 8: the run stops naming the system and the fix."""
    sc = load_scenario(write_yaml(SCENARIO.replace("COUNT", "12"), "ep.yaml"), host)
    with pytest.raises(XpusimError, match=r"not a multiple of 8.*multiple of 8"):
        simulate(sc, host)
