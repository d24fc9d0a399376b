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


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks that hold ``tokens`` tokens (``ceil``)."""
    return -(-tokens // block_tokens)


class PagedKVCache:
    """Block accounting of one replica's KV cache.

    ``used`` blocks are held by admitted sequences; :meth:`allocate` and :meth:`free`
    move them. Decoders are registered with :meth:`add_decoder` (when their prefill
    completes at iteration ``k`` holding ``tokens``) and removed with
    :meth:`remove_decoder`; :meth:`growth_blocks` says how many new blocks iteration ``j``
    needs for them. The serving loop inlines these operations for speed; the methods are
    the reference behaviour the tests check it against.
    """

    __slots__ = ("block_tokens", "growth", "total_blocks", "used")

    def __init__(self, total_blocks: int, block_tokens: int) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        if total_blocks < 0:
            raise ValueError(f"negative KV capacity {total_blocks} blocks")
        self.total_blocks = int(total_blocks)
        self.block_tokens = int(block_tokens)
        self.used = 0
        self.growth = [0] * self.block_tokens

    @property
    def free_blocks(self) -> int:
        """Blocks not held by any sequence."""
        return self.total_blocks - self.used

    @property
    def capacity_tokens(self) -> int:
        """Tokens the whole cache holds."""
        return self.total_blocks * self.block_tokens

    def blocks(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens."""
        return blocks_for(tokens, self.block_tokens)

    def can_allocate(self, n: int) -> bool:
        """Whether ``n`` more blocks are free."""
        return self.used + n <= self.total_blocks

    def allocate(self, n: int) -> None:
        """Take ``n`` blocks; raises ``ValueError`` when fewer are free."""
        if n < 0 or self.used + n > self.total_blocks:
            raise ValueError(
                f"cannot allocate {n} blocks: {self.free_blocks} of {self.total_blocks} free"
            )
        self.used += n

    def free(self, n: int) -> None:
        """Return ``n`` blocks."""
        if n < 0 or n > self.used:
            raise ValueError(f"cannot free {n} blocks: {self.used} in use")
        self.used -= n

    def phase(self, tokens: int, iteration: int) -> int:
        """Residue class of a decoder that held ``tokens`` after prefill at ``iteration``."""
        return (tokens - iteration - 1) % self.block_tokens

    def add_decoder(self, tokens: int, iteration: int) -> None:
        """Register a sequence that finished prefill at ``iteration`` holding ``tokens``."""
        self.growth[self.phase(tokens, iteration)] += 1

    def remove_decoder(self, tokens: int, iteration: int) -> None:
        """Unregister a decoder added with the same ``tokens`` and ``iteration``."""
        self.growth[self.phase(tokens, iteration)] -= 1

    def growth_blocks(self, iteration: int) -> int:
        """New blocks the registered decoders need to write their token in ``iteration``."""
        return self.growth[(-iteration) % self.block_tokens]

    @staticmethod
    def decoder_tokens(tokens: int, entry: int, iteration: int) -> int:
        """Tokens held at the start of ``iteration`` by a decoder that entered at ``entry``."""
        return tokens + iteration - entry - 1
