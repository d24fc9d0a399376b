"""Prefix caching: the block-hash LRU replay, its routing, and its effect on a serving run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from xpusim.engine.errors import ScenarioError, TraceError
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.workloads.serving.prefix_cache import PrefixCaching, replay
from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload

from .test_serving import _ctx


def frame(rows: list[tuple[float, int, int, list[int]]]) -> pl.DataFrame:
    """A request frame with block hashes: (arrival, prompt, output, hash_ids) rows."""
    return pl.DataFrame(
        {
            "arrival_s": [r[0] for r in rows],
            "prompt_tokens": [r[1] for r in rows],
            "output_tokens": [r[2] for r in rows],
            "hash_ids": [r[3] for r in rows],
        },
        schema={
            "arrival_s": pl.Float64,
            "prompt_tokens": pl.Int64,
            "output_tokens": pl.Int64,
            "hash_ids": pl.List(pl.Int64),
        },
    )


def spec(**kw: object) -> PrefixCaching:
    return PrefixCaching.model_validate({"memory_fraction": 0.5, "block_tokens": 4, **kw})


def test_a_shared_prefix_hits_and_its_prefill_is_skipped() -> None:
    """A request whose first blocks were seen before finds them: its prompt shrinks by
    the matched blocks' tokens, and the hit rates count tokens and blocks."""
    f = frame([(0.0, 12, 2, [1, 2, 3]), (1.0, 10, 2, [1, 2, 9])])
    out = replay(spec(), f, replicas=1, kv_capacity_tokens=400, kv_block_tokens=4, seed=0)
    assert out.hit_tokens.tolist() == [0, 8]
    assert out.frame["prompt_tokens"].to_list() == [12, 2]
    assert out.metrics["prefill_tokens_saved"] == 8
    assert out.metrics["prefix_hit_rate_tokens"] == pytest.approx(8 / 22)
    assert out.metrics["prefix_hit_rate_blocks"] == pytest.approx(2 / 6)
    assert out.kv_capacity_tokens == 200  # half the blocks hold the cache


def test_the_last_prompt_token_is_always_computed() -> None:
    """A prompt cached whole still prefills its last token (the first token's logits)."""
    f = frame([(0.0, 8, 2, [1, 2]), (1.0, 8, 2, [1, 2])])
    out = replay(spec(), f, replicas=1, kv_capacity_tokens=400, kv_block_tokens=4, seed=0)
    assert out.hit_tokens.tolist() == [0, 7]


def test_least_recently_used_blocks_are_evicted() -> None:
    """With room for two blocks, a third prompt evicts the oldest: the first prompt's
    prefix misses again while the more recent one still hits."""
    f = frame(
        [
            (0.0, 5, 1, [1, 2]),
            (1.0, 5, 1, [3, 4]),
            (2.0, 5, 1, [1, 5]),
            (3.0, 5, 1, [3, 6]),
        ]
    )
    # 4 blocks of 4 tokens in all, half for the cache: two hash blocks
    out = replay(spec(), f, replicas=1, kv_capacity_tokens=16, kv_block_tokens=4, seed=0)
    assert out.hit_tokens.tolist() == [0, 0, 0, 0]
    roomy = replay(spec(), f, replicas=1, kv_capacity_tokens=64, kv_block_tokens=4, seed=0)
    assert roomy.hit_tokens.tolist() == [0, 0, 4, 4]


def test_cache_aware_routing_keeps_a_conversation_on_its_replica() -> None:
    """Round-robin spreads two conversations' turns over both replicas (no hits);
    cache-aware routing sends each turn to the replica that holds its prefix."""
    f = frame(
        [
            (0.0, 9, 1, [1, 2, 3]),
            (1.0, 9, 1, [7, 8, 9]),
            (2.0, 9, 1, [7, 8, 10]),
            (3.0, 9, 1, [1, 2, 11]),
        ]
    )
    rr = replay(spec(), f, replicas=2, kv_capacity_tokens=400, kv_block_tokens=4, seed=0)
    assert rr.hit_tokens.tolist() == [0, 0, 0, 0] and rr.assignment is None
    ca = replay(
        spec(routing="cache-aware"),
        f,
        replicas=2,
        kv_capacity_tokens=400,
        kv_block_tokens=4,
        seed=0,
    )
    assert ca.assignment == [0, 1, 1, 0]
    assert ca.hit_tokens.tolist() == [0, 0, 8, 8]


def test_hashes_of_another_block_size_are_refused() -> None:
    """A hash list whose length is not ceil(prompt / block_tokens) names the key to set."""
    f = frame([(0.0, 12, 2, [1, 2, 3])])
    with pytest.raises(TraceError, match=r"prefix_caching.block_tokens.*3 block hashes"):
        replay(
            spec(block_tokens=8), f, replicas=1, kv_capacity_tokens=400, kv_block_tokens=4, seed=0
        )


def test_a_trace_without_hashes_needs_a_declared_prefix() -> None:
    """No hashes and no shared_prefix: refused, since nothing could hit."""
    f = frame([(0.0, 12, 2, [1, 2, 3])]).drop("hash_ids")
    with pytest.raises(TraceError, match="shared_prefix"):
        replay(spec(), f, replicas=1, kv_capacity_tokens=400, kv_block_tokens=4, seed=0)


def test_a_declared_system_prompt_is_shared_by_whole_blocks() -> None:
    """With one system prompt of 10 tokens and blocks of 4, the second request finds
    the two whole blocks of it (8 tokens)."""
    f = frame([(0.0, 30, 2, []), (1.0, 30, 2, [])]).drop("hash_ids")
    s = spec(shared_prefix={"tokens": 10, "prompts": 1})
    out = replay(s, f, replicas=1, kv_capacity_tokens=4000, kv_block_tokens=4, seed=0)
    assert out.hit_tokens.tolist() == [0, 8]


def test_a_conversation_turn_finds_the_previous_turn_and_its_answer() -> None:
    """One session of three turns, blocks of 4: the second turn finds the first turn's
    prompt and answer blocks (12 tokens), the third the whole second turn (its prompt
    less the last token); the fourth request opens a new conversation and finds nothing."""
    f = frame([(0.0, 8, 4, []), (1.0, 16, 4, []), (2.0, 20, 2, []), (3.0, 8, 2, [])]).drop(
        "hash_ids"
    )
    s = spec(conversations={"sessions": 1, "turns": 3})
    out = replay(s, f, replicas=1, kv_capacity_tokens=4000, kv_block_tokens=4, seed=0)
    assert out.hit_tokens.tolist() == [0, 12, 19, 0]


ARRIVALS = {
    "process": "poisson",
    "rate": "8/s",
    "count": 200,
    "prompt_tokens": {"dist": "lognormal", "median": 2000, "sigma": 0.3},
    "output_tokens": {"dist": "constant", "value": 20},
}


def _serve(
    prefix: dict[str, object] | None, count: int = 2
) -> tuple[dict[str, float], pl.DataFrame]:
    body: dict[str, object] = {"arrivals": ARRIVALS, "stack": "none"}
    if prefix is not None:
        body["prefix_caching"] = prefix
    cfg = ServingConfig.model_validate(body)
    run = ServingWorkload().simulate(cfg, _ctx(count))
    req = run.frames["requests"]
    assert isinstance(req, pl.DataFrame)
    return run.metrics, req


def test_prefix_caching_lowers_ttft_and_keeps_the_full_prompt_in_the_frame() -> None:
    """A shared 1,536-token system prompt served from the cache lowers the mean TTFT;
    the requests frame still reports each request's whole prompt."""
    off, req_off = _serve(None)
    on, req_on = _serve({"memory_fraction": 0.2, "shared_prefix": {"tokens": 1536}})
    assert on["prefix_hit_rate_tokens"] > 0.5
    assert on["ttft_mean_s"] < 0.7 * off["ttft_mean_s"]
    assert req_on["prompt_tokens"].to_list() == req_off["prompt_tokens"].to_list()
    assert req_on["replica"].to_list() == req_off["replica"].to_list()


def test_cache_aware_routing_runs_through_the_world() -> None:
    """Under cache-aware routing that always follows the cache (``cache_threshold: 0``)
    the world follows the replay's assignment: every request finishes and the hits match
    the round-robin replay's or exceed them."""
    rr, _ = _serve({"memory_fraction": 0.2, "shared_prefix": {"tokens": 1536, "prompts": 2}})
    ca, req = _serve(
        {
            "memory_fraction": 0.2,
            "routing": "cache-aware",
            "cache_threshold": 0.0,
            "shared_prefix": {"tokens": 1536, "prompts": 2},
        }
    )
    assert (req["status"] == "ok").all()
    assert ca["prefill_tokens_saved"] >= rr["prefill_tokens_saved"]


def test_cache_threshold_keeps_a_prefix_every_prompt_shares_from_drawing_all_load() -> None:
    """One system prompt that every request opens with, short against the prompts: with
    ``cache_threshold: 0`` the replica that cached it first wins every request (it always
    holds the longest prefix); with SGLang's default 0.5 the prefix is too small a share
    to choose by, so the requests spread over both replicas and the mean TTFT falls."""
    block = {"memory_fraction": 0.2, "routing": "cache-aware"}
    shared = {"shared_prefix": {"tokens": 64, "prompts": 1}}
    greedy, req_g = _serve({**block, **shared, "cache_threshold": 0.0})
    spread, req_s = _serve({**block, **shared})
    assert req_g["replica"].n_unique() == 1
    assert req_s["replica"].n_unique() == 2
    assert spread["ttft_mean_s"] < greedy["ttft_mean_s"]


SCENARIO = """
name: pc
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 1/s, count: 5, prompt_tokens: {dist: constant, value: 100},
             output_tokens: {dist: constant, value: 5}}
  router: ROUTER
  prefix_caching: PC
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
"""


@pytest.mark.parametrize(
    ("router", "pc", "message"),
    [
        ("least-outstanding", "{memory_fraction: 0.3}", "set `router: round-robin`"),
        ("round-robin", "{memory_fraction: 1.5}", "memory_fraction"),
        ("round-robin", "{memory_fraction: 0.3, routing: nearest}", "routing"),
        ("round-robin", "{memory_fraction: 0.3, lora: 2}", "lora"),
        (
            "round-robin",
            "{memory_fraction: 0.3, shared_prefix: {tokens: 8}, conversations: {sessions: 2, turns: 2}}",
            "not both",
        ),
    ],
)
def test_bad_prefix_caching_blocks_are_refused_at_load(
    host: Host, write_yaml: Callable[[str, str], Path], router: str, pc: str, message: str
) -> None:
    """A state-dependent router without cache-aware routing, a fraction outside (0, 1),
    an unknown routing or key: a ScenarioError at load naming the key."""
    path = write_yaml(SCENARIO.replace("ROUTER", router).replace("PC", pc), "pc.yaml")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path, host)
