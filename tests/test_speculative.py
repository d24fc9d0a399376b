"""Speculative decoding: expected tokens per step, step prices, KV sharing, and its effect
on a serving run at low and high load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.speculative import SpeculativeCompiled, SpeculativeDecoding
from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload

from .technique_runs import run_text
from .test_serving import _ctx, compiled

DRAFT = {"family": "llama", "preset": "llama-2-7b", "layers": 4}


def spec(**kw: object) -> SpeculativeDecoding:
    return SpeculativeDecoding.model_validate({"draft": DRAFT, "k": 4, "acceptance": 0.7, **kw})


def test_expected_tokens_per_step_follow_the_acceptance() -> None:
    """A constant rate a gives (1 - a^(k+1)) / (1 - a); per-position rates give
    1 + a1 + a1 a2 + ...; a draft never accepted gives one token, always accepted k + 1."""
    assert spec().tokens_per_step() == pytest.approx((1 - 0.7**5) / 0.3)
    assert spec(acceptance=[0.9, 0.5, 0.5, 0.0]).tokens_per_step() == pytest.approx(
        1 + 0.9 + 0.45 + 0.225
    )
    assert spec(acceptance=0.0).tokens_per_step() == 1.0
    assert spec(acceptance=1.0).tokens_per_step() == 5.0


def test_a_decode_step_costs_k_draft_steps_and_one_verification() -> None:
    """A decode iteration is priced as the target prefilling k + 1 tokens per sequence
    over the context plus k draft decodes; a prefill runs in both models."""
    target, draft = compiled(), compiled()
    sc = SpeculativeCompiled(target, draft, 3)
    dec = Shape(Phase.DECODE, batch=4, tokens=1, context=100)
    want = target.cost(Shape(Phase.PREFILL, batch=4, tokens=4, context=100)).seconds
    want += 3 * draft.cost(dec).seconds
    assert sc.cost(dec).seconds == pytest.approx(want)
    pf = Shape(Phase.PREFILL, batch=1, tokens=300, context=0)
    assert sc.cost(pf).seconds == pytest.approx(2 * target.cost(pf).seconds)
    mixed = Shape(Phase.MIXED, batch=5, parts=(pf, dec))
    verify = Shape(
        Phase.MIXED, batch=5, parts=(pf, Shape(Phase.PREFILL, batch=4, tokens=4, context=100))
    )
    want = target.cost(verify).seconds + 3 * draft.cost(dec).seconds + draft.cost(pf).seconds
    assert sc.cost(mixed).seconds == pytest.approx(want)


def test_a_draft_tree_is_verified_whole_and_drafted_by_its_width() -> None:
    """With ``tree_tokens`` the target verifies the whole tree per sequence and each of
    the k draft steps runs the tree's width of candidates; at batch 1 (memory-bound) the
    tree costs about what the chain does, and at a large batch clearly more."""
    tree = spec(k=5, acceptance=0.7, tree_tokens=23)
    assert tree.verify_tokens() == 23 and tree.draft_width() == 5
    assert spec(k=5).verify_tokens() == 6 and spec(k=5).draft_width() == 1
    target, draft = compiled(), compiled()
    chain_c = SpeculativeCompiled(target, draft, 5)
    tree_c = SpeculativeCompiled(target, draft, 5, verify=23, width=5)
    dec = Shape(Phase.DECODE, batch=4, tokens=1, context=100)
    want = target.cost(Shape(Phase.PREFILL, batch=4, tokens=23, context=100)).seconds
    want += 5 * draft.cost(Shape(Phase.PREFILL, batch=4, tokens=5, context=100)).seconds
    assert tree_c.cost(dec).seconds == pytest.approx(want)

    def ratio(batch: int) -> float:
        d = Shape(Phase.DECODE, batch=batch, tokens=1, context=500)
        return tree_c.cost(d).seconds / chain_c.cost(d).seconds

    assert ratio(1) < 1.5 < ratio(256)
    with pytest.raises(ValueError, match="at least its k \\+ 1"):
        spec(k=5, tree_tokens=4)


def test_the_draft_shares_the_kv_memory() -> None:
    """The KV capacity is what is left once the draft's weights are in, divided by both
    models' KV bytes per token."""
    target, draft = compiled(), compiled()
    sc = SpeculativeCompiled(target, draft, 2)
    t, d = target.model.info, draft.model.info
    cap = target.kv_capacity_tokens(0.9)
    want = int((cap * t.kv_bytes_per_token - d.param_bytes) // (2 * t.kv_bytes_per_token))
    assert sc.kv_capacity_tokens(0.9) == want < cap


def test_a_draft_larger_than_the_target_is_refused() -> None:
    """A 7B draft for a 1B target raises, naming both sizes and the fix."""
    cfg = ServingConfig.model_validate(
        {
            "arrivals": {
                "process": "constant",
                "rate": "1/s",
                "count": 3,
                "prompt_tokens": {"dist": "constant", "value": 10},
                "output_tokens": {"dist": "constant", "value": 5},
            },
            "speculative_decoding": {
                "draft": {"family": "llama", "preset": "llama-2-7b"},
                "k": 3,
                "acceptance": 0.6,
            },
        }
    )
    with pytest.raises(XpusimError, match=r"must be smaller than the model"):
        ServingWorkload().simulate(cfg, _ctx())


SCENARIO = """
name: sd
seed: 1
model: {family: llama, preset: llama-2-13b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: RATE, count: COUNT, prompt_tokens: {dist: constant, value: 256},
             output_tokens: {dist: constant, value: 128}}
  scheduler: {kind: continuous, max_batch: 256}
  stack: none
  speculative_decoding: SD
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
"""

SD = json.dumps({"draft": DRAFT, "k": 4, "acceptance": 0.7})
SD_LONG = json.dumps({"draft": DRAFT, "k": 6, "acceptance": 0.5})


def _run(
    host: Host, write_yaml: Callable[[str, str], Path], rate: str, count: int, sd: str
) -> tuple[dict[str, float], pl.DataFrame]:
    text = SCENARIO.replace("RATE", rate).replace("COUNT", str(count)).replace("SD", sd)
    return run_text(host, write_yaml, text)


def test_speculation_helps_at_low_batch_and_costs_throughput_when_compute_bound(
    host: Host, write_yaml: Callable[[str, str], Path]
) -> None:
    """One request at a time: TPOT falls with speculation. A saturated replica (about 150
    sequences, as many as its KV holds) speculating 6 tokens at acceptance 0.5 (about 2
    tokens a step): its output throughput falls, since verifying 7 tokens per sequence is
    compute-bound. The requests frame keeps every request's real output length."""
    on, req = _run(host, write_yaml, "0.2/s", 20, SD)
    off, _ = _run(host, write_yaml, "0.2/s", 20, "null")
    assert on["tpot_mean_s"] < 0.8 * off["tpot_mean_s"]
    assert on["spec_tokens_per_step"] == pytest.approx((1 - 0.7**5) / 0.3)
    assert req["output_tokens"].to_list() == [128] * 20
    tpot = (req["e2e_s"] - req["ttft_s"]) / 127
    assert req["tbt_mean_s"].to_list() == pytest.approx(tpot.to_list())
    busy_on, _ = _run(host, write_yaml, "200/s", 1500, SD_LONG)
    busy_off, _ = _run(host, write_yaml, "200/s", 1500, "null")
    assert busy_on["throughput_tokens_per_s"] < busy_off["throughput_tokens_per_s"]


@pytest.mark.parametrize(
    ("sd", "message"),
    [
        ('{"draft": {"family": "llama"}, "k": 3, "acceptance": 1.2}', "in \\[0, 1\\]"),
        (
            '{"draft": {"family": "llama"}, "k": 3, "acceptance": [0.5, 0.5]}',
            "one acceptance rate per",
        ),
        ('{"draft": {"preset": "x"}, "k": 3, "acceptance": 0.5}', "family"),
        ('{"draft": {"family": "llama"}, "k": 0, "acceptance": 0.5}', "k"),
    ],
)
def test_bad_speculative_blocks_are_refused_at_load(
    host: Host, write_yaml: Callable[[str, str], Path], sd: str, message: str
) -> None:
    """An acceptance rate outside [0, 1], a list of the wrong length, a draft without a
    family, or k < 1: a ScenarioError at load."""
    text = SCENARIO.replace("RATE", "1/s").replace("COUNT", "3").replace("SD", sd)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write_yaml(text, "bad.yaml"), host)
