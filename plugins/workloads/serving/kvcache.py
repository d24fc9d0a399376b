"""A paged KV cache (vLLM's PagedAttention block accounting) with O(1) decode growth.

Memory is ``total_blocks`` blocks of ``block_tokens`` tokens. A sequence holding ``c``
tokens holds ``ceil(c / block_tokens)`` blocks; writing its next token needs a new block
exactly when ``c`` is a multiple of ``block_tokens``.

Every decoding sequence grows by one token per iteration, so instead of touching each
sequence per iteration the cache keeps, for each residue class ``p`` of
``(tokens - entry_iteration - 1) mod block_tokens``, how many decoders are in it
(:attr:`PagedKVCache.growth`). The blocks needed by iteration ``j`` are then
``growth[(-j) % block_tokens]``: one lookup, whatever the batch size, and exact.

Sliding-window layers. A model whose layers are not all full attention (Gemma 2 and 3,
Mistral v0.1, any config.json with a ``sliding_window``) has a :class:`KVLayout`: ``F``
full-attention layers keep every token and ``S`` sliding-window layers keep only the last
``w`` tokens, freeing the pages that fall out of the window (vLLM's hybrid KV-cache
manager). A cache built with such a layout counts in **layer blocks** (``block_tokens``
tokens of one layer): its capacity is ``total_blocks × (F + S)`` of them, and a sequence of
``c`` tokens holds :meth:`KVLayout.layer_blocks` ``= F × ceil(c / B) + S × (pages of the
last min(c, w) tokens)``. :meth:`PagedKVCache.blocks` is that count in the cache's unit
(plain blocks without a layout), :meth:`PagedKVCache.step_blocks` what writing one more
token takes (negative when a window's oldest page is freed) and
:meth:`PagedKVCache.max_sequences` how many sequences of a length fit.

A scheduler that supports windows converts token counts through :meth:`PagedKVCache.blocks`
wherever it divides by ``block_tokens`` today. The residue trick still holds: a decoder's
step is ``F + S`` at a page boundary before the window fills, and after it ``F ×
[c mod B = 0] + S × ([c mod B = 0] − [(c + 1 − w) mod B = 0])``; both terms depend only on the
decoder's residue class and on whether it has passed the window, which happens once, at a
known iteration. :attr:`PagedKVCache.past` counts the decoders past the window by residue
class, and :meth:`PagedKVCache.decode_blocks` is an iteration's need from both counters.
The iteration-level schedulers keep that need itself by phase ``(-j) % B`` as they count a
decoder in or out (``F + S`` at its class of ``growth``, ``−S`` at its class of ``past``
shifted by ``1 − w``), so their hot loop reads one entry per iteration as without a
window, and a decoder's crossing of the window is an event at iteration ``entry + w −
tokens`` beside its finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KVLayout", "PagedKVCache"]


@dataclass(frozen=True, slots=True)
class KVLayout:
    """Which layers' KV caches stop at a window: ``full_layers`` keep every token,
    ``window_layers`` keep the ``window`` most recent tokens (``window_layers = 0``: every
    layer is full attention)."""

    full_layers: int
    window_layers: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.full_layers < 0 or self.window_layers < 0:
            raise ValueError(f"negative layer count in {self}")
        if self.full_layers + self.window_layers < 1:
            raise ValueError(f"a KV layout needs at least one layer, got {self}")
        if self.window_layers and self.window < 1:
            raise ValueError(f"sliding-window layers need a window >= 1, got {self}")

    @classmethod
    def of(cls, info: Any) -> KVLayout:
        """The layout of a model from its :class:`~xpusim.engine.model.ModelInfo`
        (``layers``, ``kv_window``, ``kv_bytes_per_token`` and
        ``kv_window_bytes_per_token``); a model without sliding-window layers has every
        layer full."""
        layers = max(1, int(getattr(info, "layers", 0) or 1))
        window = int(getattr(info, "kv_window", 0) or 0)
        per_token = float(getattr(info, "kv_bytes_per_token", 0.0) or 0.0)
        window_bytes = float(getattr(info, "kv_window_bytes_per_token", 0.0) or 0.0)
        if not window or per_token <= 0 or window_bytes <= 0:
            return cls(layers)
        sliding = round(layers * window_bytes / per_token)
        sliding = min(layers, max(0, sliding))
        return cls(layers - sliding, sliding, window)

    @property
    def layers(self) -> int:
        """Every layer with a KV cache."""
        return self.full_layers + self.window_layers

    @property
    def windowed(self) -> bool:
        """Whether some layers' caches stop at the window."""
        return self.window_layers > 0

    def layer_tokens(self, tokens: int) -> int:
        """Tokens cached over all layers by a sequence of ``tokens`` tokens (one per layer
        and token kept): ``F × c + S × min(c, w)``."""
        kept = min(tokens, self.window) if self.windowed else tokens
        return self.full_layers * tokens + self.window_layers * kept

    def window_pages(self, tokens: int, block_tokens: int) -> int:
        """Pages of ``block_tokens`` one sliding-window layer holds for a sequence of
        ``tokens`` tokens: those its last ``min(tokens, window)`` tokens touch (pages
        wholly before the window are freed)."""
        if tokens <= 0:
            return 0
        first = max(0, tokens - self.window) // block_tokens
        return (tokens - 1) // block_tokens - first + 1

    def layer_blocks(self, tokens: int, block_tokens: int) -> int:
        """Layer blocks (``block_tokens`` tokens of one layer) a sequence of ``tokens``
        tokens holds: every full layer its ``ceil(tokens / block_tokens)`` pages, every
        sliding-window layer :meth:`window_pages`."""
        full = -(-tokens // block_tokens) if tokens > 0 else 0
        if not self.windowed:
            return self.full_layers * full
        return self.full_layers * full + self.window_layers * self.window_pages(
            tokens, block_tokens
        )


class PagedKVCache:
    """Block accounting of one replica's KV cache (the scheduler's ``KVBlocks`` view).

    ``total_blocks`` blocks of ``block_tokens`` tokens; ``growth`` is the residue-class
    counter of the module docstring, which the schedulers keep for their running decodes.

    With a windowed ``layout`` (module docstring) the cache counts in layer blocks:
    ``total_blocks`` is then the blocks of every layer it was given times the layout's
    layers, and :meth:`blocks` converts a sequence's tokens into that unit. Without one (or
    with a layout of full layers only) a block is ``block_tokens`` tokens of every layer, as
    before. ``past`` counts, with a windowed layout, the decoders of ``growth`` whose
    sequences already hold ``window`` tokens or more, by the same residue class.
    ``unit_layers`` is the layers a unit of ``total_blocks`` is short of a block of
    every layer by: 1 for plain blocks, the layout's layers for layer blocks.
    """

    __slots__ = ("block_tokens", "growth", "layout", "past", "total_blocks", "unit_layers")

    def __init__(
        self, total_blocks: int, block_tokens: int, layout: KVLayout | None = None
    ) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        if total_blocks < 0:
            raise ValueError(f"negative KV capacity {total_blocks} blocks")
        self.layout = layout if layout is not None and layout.windowed else None
        self.unit_layers = self.layout.layers if self.layout is not None else 1
        self.total_blocks = int(total_blocks) * self.unit_layers
        self.block_tokens = int(block_tokens)
        self.growth = [0] * self.block_tokens
        self.past = [0] * self.block_tokens

    def decode_blocks(self, j: int) -> int:
        """Units the running decoders take in iteration ``j`` from the residue counters:
        ``growth[(-j) % B]`` without a window; with one, every layer's page for those at a
        page boundary, less the window's oldest page for those past the window whose
        window start crosses one: ``(F + S) × growth[(-j) % B] − S × past[(w − 1 − j) %
        B]``. Exactly the sum of :meth:`step_blocks` over the decoders when a decoder of
        ``tokens`` tokens at iteration ``j`` sits in class ``(tokens − j) % B`` of
        ``growth``, and of ``past`` from the iteration its sequence holds ``window``
        tokens."""
        b = self.block_tokens
        lay = self.layout
        if lay is None:
            return self.growth[(-j) % b]
        return (
            lay.layers * self.growth[(-j) % b]
            - lay.window_layers * self.past[(lay.window - 1 - j) % b]
        )

    def blocks(self, tokens: int) -> int:
        """Units of :attr:`total_blocks` a sequence holding ``tokens`` tokens holds:
        ``ceil(tokens / block_tokens)`` blocks, or with a windowed layout its
        :meth:`KVLayout.layer_blocks`."""
        if self.layout is None:
            return -(-tokens // self.block_tokens) if tokens > 0 else 0
        return self.layout.layer_blocks(tokens, self.block_tokens)

    def blocks_of(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """:meth:`blocks` of every count of ``tokens`` (an array, for checking a whole
        request table at once)."""
        t = np.asarray(tokens, dtype=np.int64)
        b = self.block_tokens
        full = np.where(t > 0, -(-t // b), 0)
        lay = self.layout
        if lay is None:
            return full
        first = np.maximum(0, t - lay.window) // b
        pages = np.where(t > 0, (t - 1) // b - first + 1, 0)
        return lay.full_layers * full + lay.window_layers * pages

    def step_blocks(self, tokens: int) -> int:
        """What writing one more token to a sequence of ``tokens`` tokens takes: one block
        at a page boundary without a layout; with a windowed one, the full layers' new
        pages less the pages the window frees (so it may be negative)."""
        return self.blocks(tokens + 1) - self.blocks(tokens)

    def peak_blocks(self, tokens: int) -> int:
        """The most units a sequence holds on its way to ``tokens`` tokens: the largest
        :meth:`blocks` of ``0 .. tokens`` (what a request that must never be short of
        blocks reserves). Without a window that is :meth:`blocks` itself; with one a
        sequence may hold more just before the window's oldest page is freed than after,
        and since ``blocks(c + block_tokens) >= blocks(c)`` the peak lies in the last
        ``block_tokens`` counts."""
        if self.layout is None:
            return -(-tokens // self.block_tokens) if tokens > 0 else 0
        blocks = self.layout.layer_blocks
        b = self.block_tokens
        return max(blocks(c, b) for c in range(max(0, tokens - b + 1), tokens + 1))

    def peak_blocks_of(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """:meth:`peak_blocks` of every count of ``tokens``."""
        t = np.asarray(tokens, dtype=np.int64)
        out = self.blocks_of(t)
        if self.layout is not None:
            for k in range(1, self.block_tokens):
                np.maximum(out, self.blocks_of(np.maximum(t - k, 0)), out=out)
        return out

    def tokens_within(self, units: int, tokens: int) -> int:
        """The largest count ``t <= tokens`` whose :meth:`blocks` fit in ``units`` (what a
        prefill chunk may reach when the cache is short); -1 when none does. Without a
        window ``min(tokens, units × block_tokens)``; with one, counted down from
        ``tokens`` one change of :meth:`blocks` at a time (a new page at ``t ≡ 1``, the
        window's oldest page at ``t ≡ window``, modulo ``block_tokens``)."""
        b = self.block_tokens
        lay = self.layout
        if lay is None:
            return min(tokens, units * b) if units >= 0 else -1
        t = tokens
        while t >= 0 and lay.layer_blocks(t, b) > units:
            if t <= 1:
                t -= 1
                continue
            # the count blocks() stays at down to the last change at or below t
            down = min((t - 1) % b, (t - lay.window) % b)
            t -= down + 1
        return t

    def max_sequences(self, tokens: int) -> int:
        """How many sequences of ``tokens`` tokens the whole cache holds at once."""
        need = self.blocks(tokens)
        return self.total_blocks // need if need > 0 else 0

    def stack_blocks(self, units: int) -> int:
        """``units`` of :attr:`total_blocks` as blocks of every layer, rounded up (what a
        step log reports as blocks in use)."""
        return -(-units // self.unit_layers)
