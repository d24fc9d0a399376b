"""The ``offline`` workload: batch inference of a fixed set of inputs, maximizing throughput.

Decoder models (``model.kind == "decoder"``) run the serving world with every request
present at t = 0 (``count`` requests with ``prompt_tokens``/``output_tokens``
distributions, or a ``trace`` whose arrival times are ignored), under the serving
engine profile ``stack`` (:mod:`xpusim.plugins.workloads.serving.stacks`). When the
scenario sets no ``scheduler``, the run picks the largest batch and token budget that
fit memory by ``trtllm-bench``'s rules (:func:`fill_memory_limits`), and reports them as
``offline_max_batch`` and ``offline_max_batch_tokens``. Other models (vision,
encoder, MLP ...) run batched forward passes: ``count`` samples in batches of ``batch``,
``Shape(Phase.FORWARD, batch, tokens=seq_len)`` each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.budget import Work, request_work
from xpusim.engine.metrics import THROUGHPUT_SAMPLES_PER_S, detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import SchedulerSpec
from xpusim.engine.system import System
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.engine.workload import SystemRun, Workload, WorkloadContext
from xpusim.plugins.workloads.offline.world import simulate_forward
from xpusim.plugins.workloads.serving import metrics, schedulers
from xpusim.plugins.workloads.serving.arrivals import (
    MAX_REQUESTS,
    LengthDist,
    mean_tokens,
    sample_lengths,
)
from xpusim.plugins.workloads.serving.engine_memory import EngineLimits
from xpusim.plugins.workloads.serving.kvcache import KVLayout
from xpusim.plugins.workloads.serving.metrics import FORWARD_METRICS, SERVING_METRICS
from xpusim.plugins.workloads.serving.stacks import (
    DEFAULT_STACK,
    StackCompiled,
    StackOverride,
    StackProfile,
    resolve_stack,
    stack_for,
    stack_model,
    with_stack_settings,
)
from xpusim.plugins.workloads.serving.workload import TraceSpec, apply_stack, check_trace_work
from xpusim.plugins.workloads.serving.world import simulate_serving


class OfflineConfig(BaseModel):
    """The ``workload`` block of an offline scenario (without ``kind``)."""

    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(default=None, ge=1, le=MAX_REQUESTS, description="inputs to process")
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    trace: TraceSpec | None = None
    batch: int = Field(default=32, ge=1, description="non-decoder models: samples per forward pass")
    seq_len: int | None = Field(
        default=None,
        ge=1,
        description="non-decoder models: tokens per sample (default: the model's)",
    )
    scheduler: SchedulerSpec = Field(
        default_factory=lambda: SchedulerSpec(kind="continuous", max_batch=256)
    )
    kv_block_tokens: int = Field(default=16, ge=1)
    kv_memory_fraction: float = Field(default=0.9, gt=0, le=1)
    stack: str | StackOverride = Field(
        default=DEFAULT_STACK,
        description="serving engine profile: a name from stacks.yaml or {name, overrides}",
    )

    _stack: StackProfile | None = PrivateAttr(default=None)
    _scheduler_given: bool = PrivateAttr(default=False)

    @field_validator("stack")
    @classmethod
    def _known_stack(cls, stack: str | StackOverride) -> str | StackOverride:
        resolve_stack(stack)  # an unknown name or a bad override fails here, at its key
        return stack

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, spec: SchedulerSpec, info: ValidationInfo) -> SchedulerSpec:
        return schedulers.check_builtin(spec, info)

    @model_validator(mode="after")
    def _inputs(self) -> OfflineConfig:
        if self.trace is not None and (self.prompt_tokens or self.output_tokens):
            raise ValueError("give either `trace` or `prompt_tokens`/`output_tokens`, not both")
        if self.trace is None and self.count is None:
            raise ValueError("give `count` (inputs to process) or a `trace`")
        self._scheduler_given = "scheduler" in self.model_fields_set
        apply_stack(self)
        return self


TRTLLM_BENCH_MAX_BATCH = 4096
"""The most sequences ``trtllm-bench build`` sizes an engine for (``finetune_setting``:
``min(kv_cache_max_requests, 4096)``, ``tensorrt_llm/bench/build/tuning.py``)."""

TRTLLM_BENCH_MAX_TOKENS = 32768
"""The largest token budget it picks (``min(raw_bs * (1 + isl / osl), 32768)``)."""


def trtllm_bench_tokens(batch: float, mean_prompt: float, mean_output: float) -> int:
    """The token budget ``trtllm-bench build`` picks for ``batch`` sequences: the prompt
    tokens a steady state admits per iteration while ``batch`` sequences decode, ``batch ×
    (1 + input / output)``, at most 32,768, rounded up to 256 tokens below 4,096 (at
    least 2,048), to 512 below 8,192 and to 1,024 above (``finetune_setting``,
    ``tensorrt_llm/bench/build/tuning.py``)."""
    raw = min(batch * (1.0 + mean_prompt / max(1.0, mean_output)), TRTLLM_BENCH_MAX_TOKENS)
    if raw < 4096:
        return max(2048, 256 * math.ceil(raw / 256))
    if raw < 8192:
        return 512 * math.ceil(raw / 512)
    return 1024 * math.ceil(raw / 1024)


def fill_memory_limits(
    spec: SchedulerSpec,
    kv_capacity_tokens: int,
    prompts: np.ndarray,
    outputs: np.ndarray,
    layout: KVLayout | None = None,
) -> SchedulerSpec:
    """The scheduler limits an offline run picks when the scenario fixes none, by the
    rules ``trtllm-bench build`` sizes its engine from the dataset with: a batch as large
    as the KV cache holds sequences of the mean length (prompt plus output), at most
    4,096 (and at most the requests), and the token budget of :func:`trtllm_bench_tokens`
    for that batch before the requests bound it, raised to the longest prompt (so that
    every prompt fits one iteration) and at most the cache.

    With sliding-window layers (``layout``) a sequence of the mean length caches
    ``F × mean + S × min(mean, window)`` layer tokens of the cache's ``capacity ×
    layers``, so more of them fit."""
    mean_len = float(np.mean(prompts + outputs)) if len(prompts) else 1.0
    if layout is not None and layout.windowed:
        kept = layout.full_layers * mean_len + layout.window_layers * min(mean_len, layout.window)
        fit = int(kv_capacity_tokens * layout.layers // max(float(layout.layers), kept))
    else:
        fit = int(kv_capacity_tokens // max(1.0, mean_len))
    sized = max(1, min(fit, TRTLLM_BENCH_MAX_BATCH))
    batch = min(len(prompts) or 1, sized)
    mean_prompt = float(np.mean(prompts)) if len(prompts) else 1.0
    mean_output = float(np.mean(outputs)) if len(outputs) else 1.0
    longest = int(np.max(prompts)) if len(prompts) else 1
    tokens = max(trtllm_bench_tokens(sized, mean_prompt, mean_output), longest)
    tokens = max(1, min(tokens, max(1, kv_capacity_tokens)))
    return spec.model_copy(update={"max_batch": batch, "max_batch_tokens": tokens})


def _defaults(d: LengthDist | None, value: int) -> LengthDist:
    return d if d is not None else LengthDist(dist="constant", value=value)


class OfflineWorkload(Workload):
    """Offline batch inference: every input present at once, throughput is the goal."""

    name = "offline"
    description = "offline/batch inference of a fixed set of inputs (throughput)"
    schema = OfflineConfig
    metrics = (
        *SERVING_METRICS,
        *FORWARD_METRICS,
        THROUGHPUT_SAMPLES_PER_S,
        detail(
            "offline_max_batch",
            "Batch limit",
            "sequences",
            description="sequences per iteration the run allowed (picked to fit memory "
            "when the scenario sets no scheduler)",
        ),
        detail(
            "offline_max_batch_tokens",
            "Token budget",
            "tokens",
            description="tokens per iteration the run allowed",
        ),
    )

    def work(self, config: BaseModel, system: System, model: ModelGraph) -> Work | None:
        """Inputs + inputs x mean output tokens / batch + the replicas' cost
        (:func:`~xpusim.engine.budget.request_work`); a decoder's batch is the scheduler's
        ``max_batch``, another model's ``batch`` samples a forward pass with one step each.
        A trace's inputs are known once it is read: its ``count`` or ``limit`` counts."""
        assert isinstance(config, OfflineConfig)
        inputs = config.count or (config.trace.limit if config.trace is not None else None)
        shrink = "workload.count, output_tokens, systems[].count"
        if model.kind != "decoder":
            return request_work(float(inputs or 1), 1.0, config.batch, system.replicas, shrink)
        out = mean_tokens(_defaults(config.output_tokens, 128)) or 1.0
        batch = config.scheduler.max_batch
        return request_work(float(inputs or 0), out, batch, system.replicas, shrink)

    def fit(self, config: BaseModel, system: System, compiled: Compiled) -> Fit:
        """The backend's memory fit with the backend options the stack's engine sets
        (NCCL's NVLS, its decode kernel)."""
        compiled, _ = with_stack_settings(compiled, stack_for(config, system.backend))
        return super().fit(config, system, compiled)

    def runtime_model(self, config: BaseModel, system: System, model: ModelGraph) -> ModelGraph:
        """``model`` as the serving stack runs it (:func:`stack_model`: an FP8
        checkpoint's context attention in FP8 under a stack that builds it so)."""
        assert isinstance(config, OfflineConfig)
        return stack_model(stack_for(config, system.backend), model)

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Process every input on ``ctx.system`` and report throughput."""
        assert isinstance(config, OfflineConfig)
        system = ctx.system
        mp = system.parallelism.model_parallel
        if ctx.model.kind != "decoder":
            tokens = config.seq_len or max(1, int(ctx.model.info.max_seq_len or 1))
            count = config.count if config.count is not None else 1
            frames, span = simulate_forward(
                ctx.compiled,
                system=system.name,
                count=count,
                batch=config.batch,
                tokens=tokens,
                replicas=system.replicas,
                devices_per_replica=mp,
            )
            m = metrics.forward_metrics(frames, span, samples=count, tokens_per_sample=tokens)
            return SystemRun(metrics=m, frames=frames, simulated_s=span)
        frame = self._requests(config, ctx)
        stack = stack_for(config, system.backend)
        prompts = frame["prompt_tokens"].to_numpy()
        outputs = frame["output_tokens"].to_numpy()
        spec = config.scheduler
        if not config._scheduler_given:
            # sized as the build tool sizes an engine: from the cache it expects to have
            first = StackCompiled(ctx.compiled, stack, spec.steps)
            spec = fill_memory_limits(
                spec,
                first.kv_capacity_tokens(config.kv_memory_fraction),
                prompts,
                outputs,
                KVLayout.of(ctx.model.info),
            )
        longest = int(np.max(prompts + outputs)) if len(prompts) else 1
        limits = EngineLimits(spec.max_batch, spec.max_batch_tokens, longest)
        compiled = StackCompiled(ctx.compiled, stack, spec.steps, limits)
        capacity = compiled.kv_capacity_tokens(config.kv_memory_fraction)
        compiled.check_cache(capacity, config.kv_block_tokens)
        res = simulate_serving(
            frame,
            compiled,
            system=system.name,
            replicas=system.replicas,
            devices_per_replica=mp,
            scheduler=spec,
            router="least-outstanding",
            kv_block_tokens=config.kv_block_tokens,
            kv_capacity_tokens=capacity,
            progress=ctx.progress,
        )
        m = metrics.serving_metrics(res.frames, res.simulated_s)
        m["throughput_samples_per_s"] = m["throughput_requests_per_s"]
        m["offline_max_batch"] = spec.max_batch
        m["offline_max_batch_tokens"] = spec.max_batch_tokens
        return SystemRun(
            metrics=m,
            frames=res.frames,
            simulated_s=res.simulated_s,
            figures=compiled.stack_figures(),
        )

    @staticmethod
    def _requests(config: OfflineConfig, ctx: WorkloadContext) -> pl.DataFrame:
        if config.trace is not None:
            f = ctx.resolve_trace(config.trace.mapping())
            if config.count is not None:
                f = f.head(config.count)
            f = f.with_columns(pl.lit(0.0).alias("arrival_s")).select(list(REQUEST_SCHEMA))
            batch = config.scheduler.max_batch
            check_trace_work(f, batch, ctx.system.replicas, ctx.system.name)
            return f
        assert config.count is not None
        ss = np.random.SeedSequence(int(ctx.seed)).spawn(2)
        n = config.count
        p = sample_lengths(_defaults(config.prompt_tokens, 512), n, np.random.default_rng(ss[0]))
        o = sample_lengths(_defaults(config.output_tokens, 128), n, np.random.default_rng(ss[1]))
        return pl.DataFrame(
            {"arrival_s": np.zeros(n), "prompt_tokens": p, "output_tokens": o},
            schema=REQUEST_SCHEMA,
        )

    def traces(self, config: BaseModel) -> list[Mapping[str, Any]]:
        """The trace the inputs' lengths come from, if any."""
        assert isinstance(config, OfflineConfig)
        return [config.trace.mapping()] if config.trace is not None else []

    def shape_hint(self, config: BaseModel) -> Mapping[str, Any]:
        """One forward batch (non-decoders) or one KV block (decoders) must fit."""
        assert isinstance(config, OfflineConfig)
        return {"kv_tokens": config.kv_block_tokens, "batch": config.batch}


WORKLOADS: list[Workload] = [OfflineWorkload()]
"""The workload kinds this module provides (``offline``)."""
