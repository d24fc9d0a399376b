"""A paged KV cache (vLLM's PagedAttention block accounting) with O(1) decode growth.

Memory is ``total_blocks`` blocks of ``block_tokens`` tokens. A sequence holding ``c``
tokens holds ``ceil(c / block_tokens)`` blocks; writing its next token needs a new block
exactly when ``c`` is a multiple of ``block_tokens``.

Every decoding sequence grows by one token per iteration, so instead of touching each
sequence per iteration the cache keeps, for each residue class ``p`` of
``(tokens - entry_iteration - 1) mod block_tokens``, how many decoders are in it
(:attr:`PagedKVCache.growth`). The blocks needed by iteration ``j`` are then
``growth[(-j) % block_tokens]``: one lookup, whatever the batch size, and exact.
"""

from __future__ import annotations


class PagedKVCache:
    """Block accounting of one replica's KV cache (the scheduler's ``KVBlocks`` view).

    ``total_blocks`` blocks of ``block_tokens`` tokens; ``growth`` is the residue-class
    counter of the module docstring, which the schedulers keep for their running decodes.
    """

    __slots__ = ("block_tokens", "growth", "total_blocks")

    def __init__(self, total_blocks: int, block_tokens: int) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        if total_blocks < 0:
            raise ValueError(f"negative KV capacity {total_blocks} blocks")
        self.total_blocks = int(total_blocks)
        self.block_tokens = int(block_tokens)
        self.growth = [0] * self.block_tokens
