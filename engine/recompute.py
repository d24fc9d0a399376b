"""Activation recomputation as a training step names it (:attr:`~xpusim.engine.graph.Shape.recompute`).

``none`` keeps every activation; ``full`` keeps each layer's input and reruns the layer's
forward in the backward pass; ``selective`` reruns the attention core alone (Korthikanti et
al. 2022, arXiv:2205.05198; Megatron-Core's default ``core_attn``). A selective
recomputation of other parts is written ``selective:`` followed by the modules, as
Megatron-Core's ``--recompute-modules`` names them (:data:`RECOMPUTE_MODULES`): for
example DeepSeek-V3's "recompute all RMSNorm operations and MLA up-projections" and its
SwiGLU output (arXiv:2412.19437, §3.2.3 and §3.3.3) is
``selective:layernorm,mla_up_proj,moe_act``. A model drops what a module recomputes from
the activations it keeps and adds the module's forward work to its training graph; it
names the modules it has (:meth:`~xpusim.engine.model.ModelGraph.recomputable`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

__all__ = [
    "LIGHT_RECOMPUTE_MODULES",
    "RECOMPUTE_MODULES",
    "RecomputeModule",
    "recomputed_modules",
    "selective_recompute",
]

RecomputeModule = Literal[
    "core_attn", "layernorm", "mla_up_proj", "moe_act", "mlp", "moe", "shared_experts"
]
"""A module a selective recomputation can name (Megatron-Core's ``--recompute-modules``):
``core_attn`` the attention core; ``layernorm`` the norms before the attention and the
MLP; ``mla_up_proj`` multi-head latent attention's latent norms, up-projections and RoPE;
``moe_act`` the experts' activation function; ``mlp`` a dense MLP; ``moe`` a whole MoE
layer (router, dispatch, experts, combine); ``shared_experts`` a MoE layer's shared
experts."""

RECOMPUTE_MODULES: tuple[str, ...] = get_args(RecomputeModule)
"""The modules of :data:`RecomputeModule`, in the order a recompute lists them."""

LIGHT_RECOMPUTE_MODULES = frozenset({"core_attn", "layernorm", "mla_up_proj", "moe_act"})
"""The modules whose rerun is cheap beside what they free: the attention core (little
work for its score-sized tensors, Korthikanti et al.) and the three Megatron-Core reruns
with output-discarding checkpointing (``moe_act``, ``layernorm``, ``mla_up_proj``: an
activation, a norm or a projection rerun to drop its output), as against ``mlp``,
``moe`` and ``shared_experts``, which rerun whole GEMM blocks. A plan search tries them
together before full recomputation."""

_PREFIX = "selective:"


def selective_recompute(modules: Iterable[str]) -> str:
    """The recompute of a step that reruns ``modules``: ``selective`` for the attention
    core alone, else ``selective:`` and the modules in :data:`RECOMPUTE_MODULES` order.
    Raises ``ValueError`` for an unknown module or none."""
    mods = set(modules)
    unknown = sorted(mods - set(RECOMPUTE_MODULES))
    if unknown:
        raise ValueError(
            f"unknown recompute module {', '.join(unknown)}; known: {', '.join(RECOMPUTE_MODULES)}"
        )
    if not mods:
        raise ValueError("a selective recomputation names at least one module")
    if mods == {"core_attn"}:
        return "selective"
    return _PREFIX + ",".join(m for m in RECOMPUTE_MODULES if m in mods)


def recomputed_modules(recompute: str) -> frozenset[str]:
    """The modules ``recompute`` reruns selectively: none for ``none`` and ``full`` (which
    reruns whole layers), ``core_attn`` for ``selective``, the named ones for
    ``selective:<modules>``. Raises ``ValueError`` for anything else."""
    if recompute in ("none", "full"):
        return frozenset()
    if recompute == "selective":
        return frozenset({"core_attn"})
    if recompute.startswith(_PREFIX):
        mods = frozenset(recompute[len(_PREFIX) :].split(","))
        if selective_recompute(mods) == recompute:  # known modules, in canonical order
            return mods
    raise ValueError(
        f"unknown recompute {recompute!r}; valid: none, selective, full, "
        f"selective:<modules> (of {', '.join(RECOMPUTE_MODULES)})"
    )
