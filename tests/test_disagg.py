"""Disaggregated prefill and decode: two pools, the KV hand-off, and the joined frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.run import simulate
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.disagg import DecodePoolCompiled

from .test_serving import compiled

SCENARIO = """
name: dis
seed: 2
model: {family: llama, preset: llama-3-8b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 6/s, count: 150, prompt_tokens: {dist: lognormal, median: 1500, sigma: 0.4},
             output_tokens: {dist: lognormal, median: 60, sigma: 0.4}}
  DIS
systems:
  - {name: disagg, backend: gpu, device: h100-sxm, count: 4}
  - {name: colocated, backend: gpu, device: h100-sxm, count: 4}
"""

GOOD = "disaggregation: {prefill: {count: 2}, decode: {count: 2}, link: LINK, systems: [disagg]}"


def _run(host: Host, write_yaml: Callable[[str, str], Path], dis: str) -> dict[str, object]:
    res = simulate(load_scenario(write_yaml(SCENARIO.replace("DIS", dis), "d.yaml"), host), host)
    return {r.name: r for r in res.systems}


def test_a_request_is_prefilled_in_one_pool_and_decoded_in_the_other(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Every request finishes; its first token comes from a prefill replica's iteration
    and its last from a decode replica (numbered after the prefill replicas); the device
    timelines of both pools cover the whole run; the colocated system beside it is served
    as before."""
    runs = _run(host, write_yaml, GOOD.replace("LINK", "scale-out"))
    dis, col = runs["disagg"], runs["colocated"]
    assert dis.status == col.status == "ok"
    req = dis.frames["requests"]
    assert isinstance(req, pl.DataFrame)
    assert (req["status"] == "ok").all()
    multi = req.filter(pl.col("output_tokens") > 1)
    assert set(multi["replica"].to_list()) <= {2, 3}
    assert (multi["finish_s"] > multi["first_token_s"]).all()
    assert dis.metrics["prefill_replicas"] == 2 and dis.metrics["decode_replicas"] == 2
    assert dis.metrics["kv_transfer_mean_s"] > 0
    dev = dis.frames["devices"]
    assert isinstance(dev, pl.DataFrame)
    ends = dev.group_by("device", "replica").agg(pl.col("end_s").max())["end_s"].unique()
    assert ends.len() == 1
    assert "kv_transfer_mean_s" not in col.metrics


def test_a_slow_link_delays_the_second_token(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Over a stated 1 GB/s link without layer-wise overlap the KV hand-off is exposed
    whole: the mean transfer is bytes / bandwidth and TPOT rises over a fast link's."""
    slow = _run(
        host,
        write_yaml,
        GOOD.replace("LINK", "{bandwidth: 1 GB/s, latency: 0 s}").replace(
            "systems:", "layerwise: false, systems:"
        ),
    )["disagg"]
    fast = _run(host, write_yaml, GOOD.replace("LINK", "scale-up"))["disagg"]
    req = slow.frames["requests"]
    assert isinstance(req, pl.DataFrame)
    kv = 131072  # Llama-3-8B: 32 layers x 2 x 8 KV heads x 128 x 2 bytes
    multi = req.filter(pl.col("output_tokens") > 1)
    want = float((multi["prompt_tokens"] * kv / 1e9).mean())
    assert slow.metrics["kv_transfer_mean_s"] == pytest.approx(want, rel=1e-9)
    assert slow.metrics["tpot_mean_s"] > fast.metrics["tpot_mean_s"]


def test_the_decode_pool_prices_an_arriving_prompt_as_a_decode_step() -> None:
    """A request arriving with its KV costs one decode step over its prompt, fused with
    the running decodes: no prefill is computed in the decode pool."""
    inner = compiled()
    dp = DecodePoolCompiled(inner)
    pf = Shape(Phase.PREFILL, batch=2, tokens=100, context=0)
    dec = Shape(Phase.DECODE, batch=6, tokens=1, context=40)
    assert dp.cost(pf).seconds == inner.cost(Shape(Phase.DECODE, batch=2, context=100)).seconds
    mixed = Shape(Phase.MIXED, batch=8, parts=(pf, dec))
    want = inner.cost(Shape(Phase.DECODE, batch=8, context=(2 * 100 + 6 * 40) // 8)).seconds
    assert dp.cost(mixed).seconds == want


@pytest.mark.parametrize(
    ("dis", "error", "message"),
    [
        ("disaggregation: {prefill: {count: 1}, decode: {count: 2}}", XpusimError, "add up to 4"),
        (
            "disaggregation: {prefill: {count: 3, tensor: 2}, decode: {count: 1}}",
            XpusimError,
            "multiple of 2",
        ),
        (
            "disaggregation: {prefill: {count: 2}, decode: {count: 2}}\n  prefix_caching: {memory_fraction: 0.2}",
            ScenarioError,
            "not combined with prefix_caching",
        ),
    ],
)
def test_bad_pools_are_refused(
    host: Host, write_yaml: Callable[[str, str], Path], dis: str, error: type, message: str
) -> None:
    """Pools that do not add up to the system, a pool that is not whole replicas, or a
    technique not combined with disaggregation: refused with the fix."""
    with pytest.raises(error, match=message):
        simulate(load_scenario(write_yaml(SCENARIO.replace("DIS", dis), "b.yaml"), host), host)


def test_a_prefill_pool_that_cannot_hold_a_prompt_is_refused(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """Llama-3-70B replicas of one H100 hold no prompt at all: the run stops saying so."""
    text = SCENARIO.replace("DIS", GOOD.replace("LINK", "scale-out")).replace(
        "llama-3-8b", "llama-3-70b"
    )
    sc = load_scenario(
        write_yaml(text.replace("count: 4}", "count: 4, parallelism: {tensor: 4}}"), "p.yaml"), host
    )
    with pytest.raises(XpusimError, match="cannot hold a single such prompt"):
        simulate(sc, host)
