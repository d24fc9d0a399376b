"""Counting rules shared by the torch tracer and the parametric graph builders.

Kept apart from :mod:`xpusim.plugins.models.tracing` (which needs torch) so the
parametric builders, and with them scenario validation and simulation, import no torch.
"""

from __future__ import annotations

__all__ = ["NORM_FLOPS", "SOFTCAP_FLOPS", "causal_pairs", "window_pairs"]

NORM_FLOPS = 5
"""FLOPs per element charged to a norm or softmax (mean/max, subtract, square/exp, sum,
scale) by the tracer and by the parametric builders alike."""

SOFTCAP_FLOPS = 3
"""FLOPs per capped value of logit soft-capping ``c·tanh(x/c)`` (divide, tanh, multiply)."""


def causal_pairs(queries: int, keys: int) -> float:
    """Attended (query, key) pairs of one head of a causal mask aligned bottom-right: the
    ``q`` new queries sit at the end of ``keys`` positions, query ``i`` sees
    ``keys − q + i + 1`` keys. Equal to ``q·k − q·(q−1)/2`` when ``k ≥ q``."""
    q, k = queries, keys
    if k >= q:
        return q * k - q * (q - 1) / 2
    # fewer keys than queries: the first q-k queries see nothing (degenerate)
    return k * (k + 1) / 2


def window_pairs(queries: int, keys: int, window: int) -> float:
    """Attended (query, key) pairs of one head of a causal sliding-window mask aligned
    bottom-right: query ``i`` at position ``p = keys − q + i`` sees the ``min(p + 1,
    window)`` keys ending at its own position. Equal to :func:`causal_pairs` once the
    window covers every key."""
    lo = max(0, keys - queries) + 1  # visible keys of the first query without a window
    hi = keys  # ... and of the last
    if hi < lo:
        return 0.0
    top = min(hi, window)
    below = (lo + top) * (top - lo + 1) / 2 if top >= lo else 0.0
    capped = (hi - max(lo - 1, window)) * window if hi > window else 0.0
    return below + max(0.0, capped)
