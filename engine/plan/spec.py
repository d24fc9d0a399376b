"""The ``plan:`` block of a scenario: the question ``xpusim plan`` answers.

::

    plan:
      load: {rate: 50/s}          # or {rate: max} (the highest rate), or {trace: true}
      slo: {ttft_p99: 2 s}        # default: the workload's own slo
      devices: [h100-sxm, l4]     # default: every catalog device that holds the model
      count: {min: 1, max: 64}    # devices per configuration
      tensor: [1, 2]              # default: every degree within a node not pruned
      pipeline: [1]
      max_batch: [64, 128]        # default: the workload scheduler's
      budget_usd_per_hour: 200
      tier: neocloud              # or hyperscaler, committed, spot, purchase
      provider: nebius
      requests: 2000              # requests per simulation (default: the workload's)
      probes: 8                   # simulations per configuration shape at most
      max_configs: 400            # simulations the whole search may run

See ``docs/plan.md`` for the contract.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xpusim.engine.errors import ScenarioError
from xpusim.engine.qty import Duration, Rate
from xpusim.engine.scenario import validation_message
from xpusim.engine.yamlsrc import Source


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadSpec(_Strict):
    """``plan.load``: a request ``rate`` (``50/s``), ``max`` for the highest rate the
    configurations sustain, or ``trace: true`` for the workload's own arrivals as written."""

    rate: Rate | Literal["max"] | None = None
    trace: bool = False

    @model_validator(mode="after")
    def _one(self) -> LoadSpec:
        if (self.rate is None) == (not self.trace):
            raise ValueError("give exactly one of `rate` (50/s, or max) or `trace: true`")
        return self

    @property
    def highest(self) -> bool:
        """Whether the plan searches for the highest sustained rate."""
        return self.rate == "max"


class SloSpec(_Strict):
    """``plan.slo``: the objectives every configuration must meet (p99 of requests)."""

    ttft_p99: Duration | None = None
    tbt_p99: Duration | None = None


class CountSpec(_Strict):
    """``plan.count``: the fewest and most devices a configuration may have."""

    min: int = Field(default=1, ge=1, le=100_000)
    max: int = Field(default=64, ge=1, le=100_000)

    @model_validator(mode="after")
    def _order(self) -> CountSpec:
        if self.min > self.max:
            raise ValueError(f"count.min {self.min} is above count.max {self.max}")
        return self


class PlanSpec(_Strict):
    """The whole ``plan:`` block (see the module docstring)."""

    load: LoadSpec
    slo: SloSpec | None = None
    devices: list[str] | None = Field(default=None, min_length=1)
    count: CountSpec = Field(default_factory=CountSpec)
    tensor: list[int] | None = Field(default=None, min_length=1)
    pipeline: list[int] = Field(default_factory=lambda: [1], min_length=1)
    max_batch: list[int] | None = Field(default=None, min_length=1)
    budget_usd_per_hour: float | None = Field(default=None, gt=0.0)
    tier: Literal["hyperscaler", "neocloud", "committed", "spot", "purchase"] | None = None
    provider: str | None = None
    requests: int | None = Field(default=None, ge=50, le=1_000_000)
    probes: int = Field(default=8, ge=2, le=40)
    max_configs: int = Field(default=400, ge=1, le=100_000)

    @field_validator("tensor", "pipeline", "max_batch")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"every value must be at least 1, got {v}")
        return None if v is None else sorted(set(v))

    def slo_data(self) -> dict[str, Any] | None:
        """The SLO as scenario data for ``workload.slo`` (``None``: keep the workload's)."""
        if self.slo is None:
            return None
        return {k: f"{v:.9g} s" for k, v in self.slo.model_dump().items() if v is not None}


def parse_plan(raw: Any, src: Source) -> PlanSpec:
    """Validate a ``plan:`` block with errors naming the file and line."""
    if raw is None:
        raise ScenarioError(
            f"{src.file}: the scenario has no `plan:` block; add one, for example "
            "plan: {load: {rate: 50/s}, slo: {ttft_p99: 2 s}, count: {max: 16}}."
        )
    try:
        spec = PlanSpec.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, src, ("plan",))) from None
    if spec.slo is not None and spec.slo.ttft_p99 is None and spec.slo.tbt_p99 is None:
        raise ScenarioError(
            f"{src.where(('plan', 'slo'))}: the SLO block is empty; give ttft_p99 or tbt_p99 "
            "(or leave plan.slo out to use the workload's)."
        )
    return spec
