"""Sliding-window layers cap their KV cache at the window: a sequence of ``c`` tokens caches
``full layers × c + window layers × min(c, window)`` tokens, counted in pages; the model's
facts say both per-token figures and the window; attention in those layers reads only the
window. Checked on Gemma 3 27B (62 layers, 10 full, 52 with a 1,024-token window)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from xpusim.engine.frames import collect
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import Host
from xpusim.engine.model import model_facts
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.run import run_scenario
from xpusim.engine.scenario import load_scenario
from xpusim.engine.system import Parallelism
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.plugins.models.counting import causal_pairs, window_pairs
from xpusim.plugins.workloads.offline.workload import fill_memory_limits
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.reference import simulate_reference
from xpusim.plugins.workloads.serving.world import simulate_serving

Writer = Callable[..., Path]

SCENARIO = """\
name: gemma-long-context
model: {family: hf, preset: gemma-3-27b}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 1/s, count: 4,
             prompt_tokens: {dist: constant, value: 32000},
             output_tokens: {dist: constant, value: 16}}
systems:
  - {name: h200, backend: gpu, device: h200}
"""

PER_LAYER = 2 * 16 * 128 * 2  # K and V, 16 KV heads of 128, bf16


def test_gemma3_facts_name_both_per_token_figures(host: Host) -> None:
    """Gemma 3 27B caches 62 layers' worth per token up to the window and 10 layers' worth
    per token past it; the summary facts carry both and the window."""
    m = host.models.get("hf").configure({"preset": "gemma-3-27b"})
    info = m.info
    assert (info.kv_window, info.kv_bytes_per_token) == (1024, 62 * PER_LAYER)
    assert info.kv_full_bytes_per_token == 10 * PER_LAYER
    assert info.kv_sequence_bytes(32_000) == PER_LAYER * (10 * 32_000 + 52 * 1024)
    assert info.kv_sequence_bytes(800) == PER_LAYER * 62 * 800
    facts = model_facts(m, Parallelism())
    assert facts["kv_bytes_per_token"] == 62 * PER_LAYER
    assert facts["kv_bytes_per_token_full_layers"] == 10 * PER_LAYER
    assert facts["kv_window_tokens"] == 1024
    llama = host.models.get("llama").configure({"preset": "llama-2-7b"})
    assert "kv_window_tokens" not in model_facts(llama, Parallelism())
    assert KVLayout.of(llama.info) == KVLayout(32)


def test_layout_counts_pages_and_frees_those_behind_the_window() -> None:
    """A sliding layer holds the pages its last ``window`` tokens touch; each full layer
    every page; one more token costs a page per layer at a boundary and gives back the
    window's oldest page when it leaves."""
    lay = KVLayout(10, 52, 1024)
    cache = PagedKVCache(1000, 16, lay)
    assert cache.total_blocks == 1000 * 62
    assert cache.blocks(0) == 0
    assert cache.blocks(100) == 62 * 7  # inside the window: every layer, 7 pages
    assert cache.blocks(32_768) == 10 * 2048 + 52 * 64  # aligned: the window is 64 pages
    assert cache.blocks(32_770) == 10 * 2049 + 52 * 65  # straddling: 65 pages
    assert cache.step_blocks(32_768) == 10 + 52  # a new page for every layer
    assert cache.step_blocks(32_769 + 14) == -52  # the window's oldest page is freed
    lengths = np.array([0, 1, 15, 16, 17, 1023, 1024, 1025, 1040, 5000, 32_770])
    assert cache.blocks_of(lengths).tolist() == [cache.blocks(int(n)) for n in lengths]
    for n in (1, 1024, 1041, 5000):  # pages sum to the tokens' steps
        assert sum(cache.step_blocks(c) for c in range(n)) == cache.blocks(n)
    plain = PagedKVCache(1000, 16)
    assert plain.blocks(32_770) == 2049 and plain.total_blocks == 1000
    assert PagedKVCache(1000, 16, KVLayout(62)).blocks(100) == 7  # no window: plain blocks


def test_long_context_fits_more_sequences_on_gemma3(host: Host, write_yaml: Writer) -> None:
    """On an H200 at 32,000 tokens a Gemma 3 sequence caches about a sixth of what 62
    full layers would, so the cache holds that many times more sequences; the same
    memory backs both counts."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    system = sc.systems[0]
    model = sc.model_for(system)
    compiled = host.backends.get("gpu").compile(model, system)
    cap_tokens = compiled.kv_capacity_tokens(0.9)
    blocks = cap_tokens // 16
    windowed = PagedKVCache(blocks, 16, KVLayout.of(model.info))
    plain = PagedKVCache(blocks, 16)
    ctx = 32_016
    ratio = (62 * ctx) / (10 * ctx + 52 * 1024)
    assert model.info.kv_sequence_bytes(ctx) == pytest.approx(
        model.info.kv_bytes_per_token * ctx / ratio
    )
    assert plain.max_sequences(ctx) >= 1
    # each count is the memory over one sequence's need, rounded down: the exact ratio
    # lies between the counts' ratio with either one rounded up
    w, p = windowed.max_sequences(ctx), plain.max_sequences(ctx)
    assert w / (p + 1) < ratio < (w + 1) / p
    assert windowed.max_sequences(ctx) >= 4 * plain.max_sequences(ctx)
    # both count the same bytes: layer blocks x one layer's page = blocks x every layer's
    stack_page = 16 * model.info.kv_bytes_per_token
    assert windowed.total_blocks * stack_page / 62 == pytest.approx(plain.total_blocks * stack_page)
    assert plain.total_blocks * stack_page <= 0.9 * system.device.memory_bytes.value
    # short sequences never reach the window: the same count either way
    assert windowed.max_sequences(512) == plain.max_sequences(512)


def test_sliding_attention_reads_only_the_window(host: Host) -> None:
    """Prefill and decode of a sliding layer attend to at most ``window`` keys per query
    (its FLOPs are the window's pairs and its reads the window's keys); full layers attend
    to every earlier token."""
    m = host.models.get("hf").configure({"preset": "gemma-3-27b"})
    g = m.build(Shape(Phase.PREFILL, batch=1, tokens=8192))
    local = next(o for o in g.ops if o.name == "attn.core.local")
    glob = next(o for o in g.ops if o.name == "attn.core")
    assert local.flops / glob.flops == pytest.approx(
        window_pairs(8192, 8192, 1024) / causal_pairs(8192, 8192), rel=0.02
    )
    d = m.build(Shape(Phase.DECODE, batch=4, tokens=1, context=60_000))
    dl = next(o for o in d.ops if o.name == "attn.core.local")
    dg = next(o for o in d.ops if o.name == "attn.core")
    assert dl.dims[1] == 1024 and dg.dims[1] == 60_001
    assert dl.bytes_read < dg.bytes_read / 50


def test_layout_refuses_nonsense() -> None:
    """A layout with no layers, negative counts or window layers without a window is a
    programming error, refused with the values."""
    for bad in ((0, 0, 0), (-1, 2, 8), (4, 2, 0)):
        with pytest.raises(ValueError, match=r"layout|negative|window"):
            KVLayout(*bad)


@pytest.mark.parametrize("layout", [None, KVLayout(10, 52, 1024), KVLayout(1, 1, 40)])
def test_residue_counters_give_each_iterations_need(layout: KVLayout | None) -> None:
    """The O(1) decode need from the residue counters (a decoder of ``c`` tokens at
    iteration ``j`` in class ``(c - j) % B``, and in ``past`` once ``c >= window``) equals
    the sum of every decoder's :meth:`step_blocks`, iteration after iteration."""
    rng = np.random.default_rng(7)
    cache = PagedKVCache(10**9, 16, layout)
    window = layout.window if layout is not None else 0
    tokens = [int(t) for t in rng.integers(1, 3000, size=40)]
    for j in range(2500):
        for c in tokens:
            cache.growth[(c - j) % 16] += 1
            if layout is not None and c >= window:
                cache.past[(c - j) % 16] += 1
        assert cache.decode_blocks(j) == sum(cache.step_blocks(c) for c in tokens), j
        cache.growth = [0] * 16
        cache.past = [0] * 16
        tokens = [c + 1 for c in tokens]


def test_a_window_on_every_layer_stops_growing(host: Host) -> None:
    """With a window on every layer (Mistral v0.1's config), a sequence's cache stops at the
    window: no bytes per token past it, and the pages stay those the window touches."""
    m = host.models.get("llama").configure({"preset": "llama-2-7b", "sliding_window": 4096})
    assert m.info.kv_full_bytes_per_token == 0
    assert m.info.kv_sequence_bytes(100_000) == m.info.kv_sequence_bytes(4096)
    lay = KVLayout.of(m.info)
    assert lay == KVLayout(0, 32, 4096)
    cache = PagedKVCache(100, 16, lay)
    assert cache.blocks(100_000) == 32 * 256 and cache.blocks(100_001) == 32 * 257
    assert cache.max_sequences(10**6) == cache.max_sequences(4096)


def test_gemma3_serving_at_long_context_runs_more_sequences(host: Host, write_yaml: Writer) -> None:
    """A Gemma 3 27B serving run at 32,000-token prompts on an H200: with its window layers
    freeing pages the replica runs several times the sequences at once that it runs with
    the window ignored (every layer full), each step's blocks in use are the layout's
    pages of the sequences it holds, and the fast path equals the plain loop and the
    reference world."""
    sc = load_scenario(write_yaml(SCENARIO), host)
    system = sc.systems[0]
    compiled = host.backends.get("gpu").compile(sc.model_for(system), system)
    info = compiled.model.info
    lay = KVLayout.of(info)
    assert lay == KVLayout(10, 52, 1024)
    cap = compiled.kv_capacity_tokens(0.9)
    prompt, output, n = 32_000, 48, 24
    frame = pl.DataFrame(
        {"arrival_s": [0.0] * n, "prompt_tokens": [prompt] * n, "output_tokens": [output] * n},
        schema=REQUEST_SCHEMA,
    )
    spec = SchedulerSpec(kind="continuous", max_batch=64, max_batch_tokens=1 << 20)
    args = {
        "replicas": 1,
        "scheduler": spec,
        "kv_block_tokens": 16,
        "kv_capacity_tokens": cap,
    }

    def serve(**more: object) -> dict[str, pl.DataFrame]:
        res = simulate_serving(frame, compiled, system="s", devices_per_replica=1, **args, **more)
        return {k: collect(v) for k, v in res.frames.items()}

    windowed = serve()
    full = serve(kv_layout=KVLayout(62))
    fits = PagedKVCache(cap // 16, 16, lay).max_sequences(prompt + output - 1)
    fits_full = PagedKVCache(cap // 16, 16).max_sequences(prompt + output - 1)
    assert fits >= 4 * fits_full >= 4
    top = int(windowed["steps"]["batch"].max())
    top_full = int(full["steps"]["batch"].max())
    assert top >= 4 * top_full
    assert (windowed["requests"]["status"] == "ok").all()
    # the first iteration prefills `top` prompts at once, then they decode together: each
    # step holds `top` sequences of prompt + i tokens, in blocks of every layer
    steps = windowed["steps"]
    first = steps.filter(pl.col("decode_tokens") == top).head(output - 1)
    kv = PagedKVCache(cap // 16, 16, lay)
    assert steps["kv_blocks_used"][0] == -(-top * kv.blocks(prompt) // 62)
    assert first["kv_blocks_used"].to_list() == [
        -(-top * kv.blocks(prompt + i) // 62) for i in range(1, output)
    ]
    plain = serve(fast=False)
    for name in windowed:
        assert_frame_equal(windowed[name], plain[name])
    ref = simulate_reference(
        frame, compiled, replicas=1, scheduler=spec, kv_block_tokens=16, kv_capacity_tokens=cap
    )
    reqs = windowed["requests"].sort("request_id")
    for row, want in zip(reqs.iter_rows(named=True), ref.requests, strict=True):
        assert row["preemptions"] == want.preemptions
        assert row["finish_s"] == pytest.approx(want.finish_s, rel=1e-12)
        assert row["first_token_s"] == pytest.approx(want.first_token_s, rel=1e-12)
    assert [s.kv_blocks_used for s in ref.steps] == steps["kv_blocks_used"].to_list()


def test_offline_batch_counts_the_windowed_layer_tokens() -> None:
    """Offline sizing without a scheduler: a sequence of the mean length caches ``F × mean +
    S × min(mean, window)`` of the cache's ``capacity × layers`` layer tokens, so Gemma 3's
    layout fits more sequences at long lengths and the same number at short ones."""
    spec = SchedulerSpec(kind="continuous", max_batch=256, max_batch_tokens=8192)
    lay = KVLayout(10, 52, 1024)
    long_p, long_o = np.array([32_000] * 100), np.array([768] * 100)
    plain = fill_memory_limits(spec, 400_000, long_p, long_o)
    windowed = fill_memory_limits(spec, 400_000, long_p, long_o, lay)
    assert plain.max_batch == 400_000 // 32_768 == 12
    assert windowed.max_batch == 400_000 * 62 // (10 * 32_768 + 52 * 1024) == 65
    short_p, short_o = np.array([500] * 100), np.array([100] * 100)
    assert fill_memory_limits(spec, 40_000, short_p, short_o, lay).max_batch == (
        fill_memory_limits(spec, 40_000, short_p, short_o).max_batch
    )
    assert fill_memory_limits(spec, 400_000, long_p, long_o, KVLayout(62)) == plain


PREFIX_SCENARIO = """\
name: gemma-prefix-cache
model: {family: hf, preset: gemma-3-27b}
workload:
  kind: serving
  arrivals: {process: poisson, rate: 1/s, count: 3,
             prompt_tokens: {dist: constant, value: 100000},
             output_tokens: {dist: constant, value: 8}}
  prefix_caching: {memory_fraction: 0.05, routing: ROUTING,
                   shared_prefix: {tokens: 2048, prompts: 1}}
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 2}
"""


@pytest.mark.parametrize("routing", ["round-robin", "cache-aware"])
def test_prefix_cache_replay_admits_what_the_windowed_world_admits(
    host: Host, write_yaml: Writer, routing: str
) -> None:
    """A 100,000-token Gemma 3 prompt fits an H100 only because its sliding layers keep
    their window: the prefix cache's replay, which routes ahead of the run, must drop
    exactly what the world drops (here nothing), or the world's routing plan is short of
    the requests it serves."""
    path = write_yaml(PREFIX_SCENARIO.replace("ROUTING", routing))
    sc = load_scenario(path, host)
    result, _ = run_scenario(sc, host, out_dir=path.parent / "run")
    (system,) = result.systems
    assert system.status == "ok", system.reason
    assert system.metrics["requests_dropped"] == 0
