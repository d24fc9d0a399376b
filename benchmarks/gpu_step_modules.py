"""Factories of the small Llama that ``benchmarks/gpu_measure.sh`` times, for the ``torch``
model family (``module: "gpu_step_modules:decode"``): the same module code
(:func:`xpusim.plugins.gpu.microbench.small_llama`), so that
``benchmarks/validate_gpu_steps.py`` prices exactly what was measured."""

from __future__ import annotations

from typing import Any

import torch

from xpusim.plugins.gpu.microbench import small_llama


def decode(layers: int, hidden: int, heads: int, kv_heads: int) -> Any:
    """The decode step: ``forward(x, k_cache, v_cache)``, one token per sequence."""
    return small_llama(torch, layers, hidden, heads, kv_heads)


class _Prefill(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Any:
        return self.model.prefill(x)


def prefill(layers: int, hidden: int, heads: int, kv_heads: int) -> Any:
    """The prefill: ``forward(x)`` over a whole prompt, causal attention."""
    return _Prefill(small_llama(torch, layers, hidden, heads, kv_heads))
