"""How a model's layers are split over pipeline stages.

Megatron-LM and NeMo place the input embedding on the first pipeline stage and the final
norm, output layer (LM head) and loss on the last one, next to their share of the
transformer layers. A plan gives the layers of each stage in one of three ways:

* ``layers_per_stage: [7, 8, 8, …, 7]`` — every stage's layers (as many entries as
  ``pipeline``), adding up to the model's layers;
* ``first_stage_layers`` and/or ``last_stage_layers`` — Megatron-LM's
  ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``: the
  remaining layers are split evenly over the other stages, which must divide them;
* nothing — an even split when ``pipeline`` divides the layers; otherwise
  :func:`default_partition`: ``floor(L/p)`` layers on every stage, one more on
  ``L mod p`` of them, and the stages with fewer layers taken from the two ends first
  (first, last, second, second-to-last …), because the ends also hold the embedding and
  the LM head. For 126 layers on 16 stages this is Llama 3 405B's published layout
  (Llama Team 2024, arXiv:2407.21783, §3.3.2: the first and last stages hold one layer
  fewer): 7, 8 × 14, 7.

Interleaved stages (``virtual = v``) split each stage's layers into ``v`` chunks (which
may differ by a layer), so every stage needs at least ``v`` layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StagePartition", "default_partition", "make_partition"]


@dataclass(frozen=True, slots=True)
class StagePartition:
    """Transformer layers held by each pipeline stage (stage 0 first).

    The first stage also holds the input embedding, the last the output layer and loss
    (the same stage when there is one).
    """

    layers: tuple[int, ...]

    @property
    def stages(self) -> int:
        """Pipeline stages."""
        return len(self.layers)

    @property
    def total(self) -> int:
        """Transformer layers over all stages."""
        return sum(self.layers)

    @property
    def uniform(self) -> bool:
        """Whether every stage holds the same number of layers."""
        return len(set(self.layers)) <= 1

    def describe(self) -> str:
        """The layout as a short phrase, runs of equal stages collapsed (``7, 8×14, 7``)."""
        parts: list[str] = []
        i = 0
        while i < len(self.layers):
            j = i
            while j + 1 < len(self.layers) and self.layers[j + 1] == self.layers[i]:
                j += 1
            n = j - i + 1
            parts.append(f"{self.layers[i]}×{n}" if n > 1 else str(self.layers[i]))
            i = j + 1
        return ", ".join(parts)


def default_partition(layers: int, pipeline: int) -> StagePartition:
    """The default split of ``layers`` over ``pipeline`` stages (module docstring)."""
    if pipeline < 1 or layers < pipeline:
        raise ValueError(f"cannot split {layers} layers over {pipeline} pipeline stages")
    base, extra = divmod(layers, pipeline)
    fewer = pipeline - extra  # stages that hold `base` layers, placed from both ends
    order: list[int] = []
    lo, hi = 0, pipeline - 1
    while lo <= hi:
        order.append(lo)
        if hi != lo:
            order.append(hi)
        lo, hi = lo + 1, hi - 1
    small = set(order[:fewer])
    return StagePartition(tuple(base if s in small else base + 1 for s in range(pipeline)))


def make_partition(
    layers: int,
    pipeline: int,
    virtual: int = 1,
    layers_per_stage: Sequence[int] | None = None,
    first_stage_layers: int | None = None,
    last_stage_layers: int | None = None,
) -> StagePartition:
    """The partition a plan asks for; ``ValueError`` with a sentence naming the fix when
    it does not add up (module docstring)."""
    if layers_per_stage is not None:
        if first_stage_layers is not None or last_stage_layers is not None:
            raise ValueError(
                "give either layers_per_stage or first_stage_layers/last_stage_layers, not both"
            )
        got = tuple(int(x) for x in layers_per_stage)
        if len(got) != pipeline:
            raise ValueError(
                f"layers_per_stage lists {len(got)} stages but pipeline = {pipeline}; give "
                f"one entry per stage"
            )
        if min(got) < 1:
            raise ValueError(f"layers_per_stage {list(got)} has a stage without layers")
        if sum(got) != layers:
            raise ValueError(
                f"layers_per_stage {list(got)} adds up to {sum(got)} layers but the model "
                f"has {layers}"
            )
        part = StagePartition(got)
    elif first_stage_layers is not None or last_stage_layers is not None:
        ends = [x for x in (first_stage_layers, last_stage_layers) if x is not None]
        middle = pipeline - len(ends)
        rest = layers - sum(ends)
        if pipeline < 2:
            raise ValueError("first_stage_layers/last_stage_layers need pipeline >= 2")
        if min(ends) < 1 or rest < middle or (middle and rest % middle) or (not middle and rest):
            raise ValueError(
                f"first/last stage layers {ends} leave {rest} of the model's {layers} layers "
                f"for {middle} other stage(s), which must split them evenly; pick sizes "
                f"that leave a multiple of {max(middle, 1)}"
            )
        each = rest // middle if middle else 0
        stages = [each] * pipeline
        if first_stage_layers is not None:
            stages[0] = first_stage_layers
        if last_stage_layers is not None:
            stages[-1] = last_stage_layers
        part = StagePartition(tuple(stages))
    elif layers % pipeline == 0:
        part = StagePartition((layers // pipeline,) * pipeline)
    else:
        part = default_partition(layers, pipeline)
    if virtual > 1 and min(part.layers) < virtual:
        raise ValueError(
            f"virtual = {virtual} interleaved chunks need at least {virtual} layers on every "
            f"stage, but the stages hold {part.describe()} layers"
        )
    return part
