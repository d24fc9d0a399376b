"""Paged KV-cache accounting and its O(1) decode-growth counter."""

from __future__ import annotations

import random

import pytest

from xpusim.plugins.workloads.serving.kvcache import PagedKVCache, blocks_for


def test_blocks_round_up() -> None:
    """A sequence holds ceil(tokens / block) blocks."""
    assert [blocks_for(t, 16) for t in (1, 15, 16, 17, 32, 33)] == [1, 1, 1, 2, 2, 3]


def test_allocate_and_free_bounds() -> None:
    """Allocation beyond capacity and freeing more than held raise with the numbers."""
    kv = PagedKVCache(10, 16)
    kv.allocate(7)
    assert kv.free_blocks == 3 and kv.capacity_tokens == 160
    with pytest.raises(ValueError, match="3 of 10 free"):
        kv.allocate(4)
    kv.free(7)
    with pytest.raises(ValueError):
        kv.free(1)


def test_growth_counter_matches_brute_force() -> None:
    """For random decoders entering and leaving, growth_blocks(j) equals the number of
    decoders whose held tokens are a multiple of the block size at iteration j."""
    rng = random.Random(4)
    b = 16
    kv = PagedKVCache(10**9, b)
    live: dict[int, tuple[int, int]] = {}
    for j in range(2000):
        brute = sum(1 for (tok, k) in live.values() if kv.decoder_tokens(tok, k, j) % b == 0)
        assert kv.growth_blocks(j) == brute
        if rng.random() < 0.3:
            rid = len(live) + j * 1000
            live[rid] = (rng.randint(1, 300), j)
            kv.add_decoder(*live[rid])
        if live and rng.random() < 0.25:
            rid = rng.choice(list(live))
            kv.remove_decoder(*live.pop(rid))


def test_decoder_block_use_follows_growth() -> None:
    """Blocks added per iteration by the counter keep a decoder at ceil(tokens/block)."""
    kv = PagedKVCache(100, 4)
    tok, entry = 6, 0
    kv.allocate(kv.blocks(tok))
    kv.add_decoder(tok, entry)
    for j in range(1, 30):
        kv.allocate(kv.growth_blocks(j))
        assert kv.used == kv.blocks(kv.decoder_tokens(tok, entry, j) + 1)
