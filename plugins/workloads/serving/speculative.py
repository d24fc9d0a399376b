"""Speculative decoding: a draft model proposes ``k`` tokens, the target verifies ``k + 1``.

Every decode iteration of a sequence runs the draft model ``k`` times (one token each,
over its own KV cache of the same length) and the target model once over ``k + 1`` new
tokens (the ``k`` proposals and the position after them), priced as a prefill chunk of
``k + 1`` tokens over the sequence's context. The prompt is prefilled by both models.
A draft that proposes a tree (EAGLE, Medusa; ``tree_tokens``) has the target verify every
node of the tree in that one pass, ``tree_tokens`` tokens per sequence, and runs each of
its ``k`` steps over ``ceil((tree_tokens - 1) / k)`` candidates per sequence (the tree's
width at a depth); the acceptance rates then describe the accepted path.
With per-position acceptance rates ``a_1 .. a_k`` (each the chance that the proposal at
that position is accepted given the ones before it were) a step yields on average

    tau = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k

tokens (the accepted run plus the target's own token); with a constant rate ``a`` this is
``(1 - a^(k+1)) / (1 - a)`` (Leviathan, Kalman and Matias, "Fast Inference from
Transformers via Speculative Decoding", ICML 2023, eq. 1).

The model, and where it simplifies: a request of ``m`` output tokens runs its first token
from the prefill and the other ``m - 1`` in ``ceil((m - 1) / tau)`` speculative steps
(the expected count, not a draw per step). The serving world runs those steps as decode
iterations whose price is the draft's ``k`` steps plus the target's verification, so
batching, queueing and preemption see the real step times; the ``requests`` frame then
gets back each request's real output length, and ``tbt_mean_s`` (so TPOT) is recomputed
from it. ``itl`` percentiles are the gaps between speculative steps (tokens arrive in
bursts of ``tau`` on average). The draft's weights and KV cache (one entry per token, like
the target's) come out of the KV memory; the ``k`` transient proposal slots do not.
At low batch a step costs little more than one decode and yields ``tau`` tokens, so TPOT
falls; when the batch is compute-bound, verifying ``k + 1`` tokens per sequence costs up
to ``k + 1`` times a decode and speculation can lose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from xpusim.engine.backend import Compiled, Cost
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import ServingRun, ServingTechnique
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads.serving.schemas import tbt_mean
from xpusim.plugins.workloads.serving.wrapped import Switch, WrappedCompiled


class SpeculativeDecoding(BaseModel):
    """``workload.speculative_decoding``: the draft model, ``k`` and the acceptance.

    ``draft`` is a model block as in the scenario's ``model:`` (``family``, ``preset`` and
    fields); ``k`` the tokens it proposes per step (the tree's depth, for a tree);
    ``acceptance`` one rate in [0, 1] for every position, or a list of ``k`` per-position
    rates; ``tree_tokens`` the tokens a draft tree gives the target to verify (default
    ``k + 1``, a chain).
    """

    model_config = ConfigDict(extra="forbid")

    draft: dict[str, Any]
    k: int = Field(ge=1, le=32)
    acceptance: float | list[float]
    tree_tokens: int | None = Field(
        default=None,
        ge=2,
        le=1024,
        description="tokens the target verifies per step when the draft proposes a tree "
        "(EAGLE, Medusa, SGLang's speculative_num_draft_tokens); default k + 1, a chain",
    )

    _draft: ModelGraph | None = PrivateAttr(default=None)

    @field_validator("acceptance")
    @classmethod
    def _rates(cls, a: float | list[float], info: ValidationInfo) -> float | list[float]:
        rates = a if isinstance(a, list) else [a]
        bad = [r for r in rates if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(
                f"an acceptance rate is a probability in [0, 1], got {bad[0]}; give the share "
                f"of proposed tokens the target accepts (for example 0.7)"
            )
        k = info.data.get("k")
        if isinstance(a, list) and k is not None and len(a) != k:
            raise ValueError(f"give one acceptance rate per proposed position: {k}, got {len(a)}")
        return a

    @field_validator("tree_tokens")
    @classmethod
    def _tree(cls, t: int | None, info: ValidationInfo) -> int | None:
        k = info.data.get("k")
        if t is not None and k is not None and t < k + 1:
            raise ValueError(
                f"a draft tree of depth k={k} verifies at least its k + 1 = {k + 1} tokens "
                f"(a chain), got tree_tokens={t}"
            )
        return t

    def verify_tokens(self) -> int:
        """Tokens the target verifies per sequence and step: the tree, or ``k + 1``."""
        return self.tree_tokens if self.tree_tokens is not None else self.k + 1

    def draft_width(self) -> int:
        """Tokens the draft runs per sequence at each of its ``k`` steps: the tree's
        candidates below the root spread over its depth (1 for a chain)."""
        return -(-(self.verify_tokens() - 1) // self.k)

    @field_validator("draft")
    @classmethod
    def _draft_block(cls, block: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(block.get("family"), str):
            raise ValueError(
                "the draft is a model block with its `family` (and `preset` or fields), as in "
                "the scenario's `model:`, for example {family: llama, preset: llama-3-8b}"
            )
        return block

    def rates(self) -> list[float]:
        """The acceptance rate of each of the ``k`` positions."""
        a = self.acceptance
        return list(a) if isinstance(a, list) else [float(a)] * self.k

    def tokens_per_step(self) -> float:
        """Expected tokens a speculative step yields (module docstring)."""
        tau, run = 1.0, 1.0
        for r in self.rates():
            run *= r
            tau += run
        return tau

    def draft_model(self, ctx: WorkloadContext) -> ModelGraph:
        """The configured draft model (through the host of this process)."""
        if self._draft is None:
            from xpusim.engine.host import default_host

            block = dict(self.draft)
            family = default_host().models.get(
                str(block.pop("family")), where="workload.speculative_decoding.draft.family"
            )
            self._draft = family.configure(block)
        return self._draft


SPEC_METRICS: tuple[Metric, ...] = (
    detail(
        "spec_tokens_per_step",
        "Tokens per speculative step",
        "tokens",
        better="higher",
        description="expected tokens a draft-and-verify step yields per sequence",
    ),
)
"""The metrics a run with speculative decoding adds."""


class SpeculativeCompiled(WrappedCompiled):
    """The target model seen through speculative decoding: decode iterations cost the
    draft's ``k`` decode steps plus the target's verification of ``k + 1`` tokens;
    prefills cost both models' prefills; the KV capacity is shared with the draft."""

    def __init__(
        self, target: Compiled, draft: Compiled, k: int, verify: int = 0, width: int = 1
    ) -> None:
        super().__init__(target)
        self.target = target
        self.draft = draft
        self.k = k
        self.verify = verify or k + 1
        self.width = width

    def _rewrapped(self, inner: Compiled, switch: Switch) -> Compiled:
        """The wrapper over the switched target, its draft switched too."""
        clone = super()._rewrapped(inner, switch)
        assert isinstance(clone, SpeculativeCompiled)
        clone.target = inner
        clone.draft = switch(self.draft)[0]
        return clone

    def _verify(self, part: Shape) -> Shape:
        """A decode part as the target's verification: ``verify`` tokens per sequence
        (``k + 1`` for a chain, the whole tree for a tree)."""
        return replace(part, phase=Phase.PREFILL, tokens=self.verify)

    def _draft_step(self, part: Shape) -> Shape:
        """A decode part as one draft step: a decode for a chain, a chunk of ``width``
        candidates per sequence for a tree."""
        if self.width <= 1:
            return part
        return replace(part, phase=Phase.PREFILL, tokens=self.width)

    def _cost(self, shape: Shape) -> Cost:
        parts = shape.parts if shape.phase is Phase.MIXED else (shape,)
        decodes = [p for p in parts if p.phase is Phase.DECODE]
        prefills = [p for p in parts if p.phase is Phase.PREFILL]
        if not decodes:
            costs = [self.target.cost(shape), self.draft.cost(shape)]
        else:
            verify = tuple(self._verify(p) if p.phase is Phase.DECODE else p for p in parts)
            tgt = verify[0] if len(verify) == 1 else replace(shape, parts=verify)
            costs = [self.target.cost(tgt)]
            costs += [self.draft.cost(self._draft_step(p)) for p in decodes] * self.k
            if prefills:
                pf = (
                    prefills[0] if len(prefills) == 1 else Shape(Phase.MIXED, parts=tuple(prefills))
                )
                costs.append(self.draft.cost(pf))
        breakdown: dict[str, float] = {}
        for c in costs:
            for key, v in c.breakdown.items():
                breakdown[key] = breakdown.get(key, 0.0) + v
        return Cost(
            seconds=sum(c.seconds for c in costs),
            joules=sum(c.joules for c in costs),
            breakdown=breakdown,
            flops=sum(c.flops for c in costs),
        )

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """Tokens of KV the replica holds once the draft's weights are in memory and every
        token keeps a KV entry in both models."""
        t, d = self.target.model.info, self.draft.model.info
        cap = self.target.kv_capacity_tokens(reserve_fraction)
        left = cap * t.kv_bytes_per_token - d.param_bytes
        return max(0, int(left // (t.kv_bytes_per_token + d.kv_bytes_per_token)))


@dataclass
class SpeculativeRun:
    """Speculative decoding prepared for one system: the compiled model to serve, the
    expected tokens per step, and each request's real output length (frame order)."""

    compiled: SpeculativeCompiled
    tokens_per_step: float
    outputs: np.ndarray | None = None

    def shorten(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with each output as the first token plus its speculative steps."""
        if not frame["arrival_s"].is_sorted():
            frame = frame.sort("arrival_s", maintain_order=True)
        out = frame["output_tokens"].to_numpy()
        self.outputs = out
        steps = np.ceil((out - 1) / self.tokens_per_step).astype(np.int64)
        return frame.with_columns(pl.Series("output_tokens", 1 + steps, dtype=pl.Int64))

    def restore(self, requests: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        """The ``requests`` frame with each real output length and its mean token gap."""
        assert self.outputs is not None
        out = pl.lit(pl.Series(self.outputs)).gather(pl.col("request_id"))
        return requests.with_columns(out.alias("output_tokens")).with_columns(tbt_mean())

    @property
    def metrics(self) -> dict[str, float]:
        """The run's speculative-decoding figures."""
        return {"spec_tokens_per_step": self.tokens_per_step}


def prepare(
    spec: SpeculativeDecoding, ctx: WorkloadContext, target: Compiled | None = None
) -> SpeculativeRun:
    """Compile the draft on ``ctx.system`` and wrap ``target`` (default ``ctx.compiled``);
    a draft that is not smaller than the target is refused."""
    from xpusim.engine.host import default_host

    draft = spec.draft_model(ctx)
    tp, dp = ctx.model.info.params, draft.info.params
    if dp >= tp:
        raise XpusimError(
            f"workload.speculative_decoding.draft: the draft model has {dp / 1e9:.3g} B "
            f"parameters, the target {tp / 1e9:.3g} B; a draft must be smaller than the model "
            f"it drafts for to save time. Name a smaller preset (or fewer layers)."
        )
    backend = default_host().backends.get(ctx.system.backend)
    compiled = SpeculativeCompiled(
        target or ctx.compiled,
        backend.compile(draft, ctx.system),
        spec.k,
        verify=spec.verify_tokens(),
        width=spec.draft_width(),
    )
    return SpeculativeRun(compiled, spec.tokens_per_step())


class SpeculativeTechnique(ServingTechnique):
    """``speculative_decoding``: draft-and-verify decode steps (module docstring);
    registered by the built-in workload plugin."""

    name = "speculative_decoding"
    description = "speculative decoding: a draft proposes k tokens, the target verifies k + 1"
    kind = "step"
    schema = SpeculativeDecoding
    metrics = SPEC_METRICS
    order = 120

    def price(self, spec: SpeculativeDecoding, run: ServingRun) -> None:
        """Wrap the replica's prices in draft-and-verify steps and shorten each output to
        its expected steps; the real lengths come back after the run."""
        s = prepare(spec, run.ctx, run.compiled)
        run.compiled = s.compiled
        run.frame = s.shorten(run.frame)
        run.metrics.update(s.metrics)
        run.restore(s.restore)
