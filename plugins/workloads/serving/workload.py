"""The ``serving`` workload: online LLM inference replayed on replicas behind a router.

Scenario block (``workload:``, ``kind: serving``)::

    trace: {path: traces/azure_conv.csv, format: azure-llm}     # or
    arrivals: {process: poisson, rate: 4/s, count: 2000,
               prompt_tokens: {dist: lognormal, median: 1000}, output_tokens: {...}}
    scheduler: {kind: continuous, max_batch: 128, max_batch_tokens: 8192, chunk: 512}  # or static, chunked-prefill, a plugin's
    router: round-robin            # or least-outstanding, or a router a plugin registers
    slo: {ttft: 2 s, tpot: 150 ms}  # or {preset: mlperf-llama2-70b-server}
    kv_block_tokens: 16
    stack: vllm-0.6                # the serving engine's profile (stacks.yaml); the default
    # serving techniques, each its own module:
    prefix_caching: {memory_fraction: 0.3, block_tokens: 512}          # prefix_cache.py
    speculative_decoding: {draft: {family: llama, preset: ...}, k: 4, acceptance: 0.7}
    lora: {adapters: 100, rank: 16, gpu_slots: 8, host_link: 25 GB/s}  # lora.py
    disaggregation: {prefill: {count: 2}, decode: {count: 6}}          # disagg.py
    # (expert parallelism follows systems[].parallelism.expert: expert.py)

See ``docs/workloads/serving.md`` for every field and the simulation model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xpusim.engine import tracereg
from xpusim.engine.budget import Work, check_work, request_work
from xpusim.engine.errors import TraceError, XpusimError
from xpusim.engine.metrics import detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import Router, SchedulerSpec, check_name, resolve
from xpusim.engine.qty import Duration
from xpusim.engine.system import System
from xpusim.engine.workload import PlanKnobs, SystemRun, Workload, WorkloadContext
from xpusim.plugins.workloads.serving import disagg, metrics, routers, schedulers
from xpusim.plugins.workloads.serving.arrivals import (
    ArrivalSpec,
    generate,
    horizon_of,
    mean_tokens,
    requests_of,
)
from xpusim.plugins.workloads.serving.disagg import DISAGG_METRICS, Disaggregation
from xpusim.plugins.workloads.serving.expert import ExpertGroupCompiled, expert_group
from xpusim.plugins.workloads.serving.lora import LORA_METRICS, Lora, LoraCompiled, LoraRun
from xpusim.plugins.workloads.serving.lora import adapter_params as lora_params
from xpusim.plugins.workloads.serving.lora import replay as replay_lora
from xpusim.plugins.workloads.serving.metrics import SERVING_METRICS
from xpusim.plugins.workloads.serving.planning import plan_knobs as serving_knobs
from xpusim.plugins.workloads.serving.prefix_cache import (
    PREFIX_METRICS,
    AssignedRouter,
    PrefixCaching,
    replay,
    restore_prompts,
)
from xpusim.plugins.workloads.serving.speculative import (
    SPEC_METRICS,
    SpeculativeDecoding,
    SpeculativeRun,
)
from xpusim.plugins.workloads.serving.speculative import prepare as prepare_speculative
from xpusim.plugins.workloads.serving.stacks import (
    DEFAULT_STACK,
    StackCompiled,
    StackOverride,
    StackProfile,
    resolve_stack,
    stack_for,
)
from xpusim.plugins.workloads.serving.world import simulate_serving


class TraceSpec(BaseModel):
    """``workload.trace``: a trace file and how to read it.

    ``path`` is relative to the scenario file; ``format`` names a registered trace format
    (``azure-llm``, ``csv``, ``jsonl`` ...). ``columns``/``time_unit``/``time_format``/
    ``separator`` are for the generic formats; ``limit`` keeps the first N requests;
    ``time_scale`` divides arrival times (2.0 replays twice as fast). ``options`` passes
    anything else to a third-party format. Or ``name`` names a public trace of the
    registry (:mod:`xpusim.engine.tracereg`), which gives its file and reader: the run
    reads the verified copy in the trace cache, downloading it first when absent.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    path: str | None = None
    format: str | None = None
    columns: dict[str, str] | None = None
    time_unit: Literal["s", "ms", "us", "ns", "datetime"] | None = None
    time_format: str | None = None
    separator: str | None = None
    limit: int | None = Field(default=None, ge=1)
    time_scale: float | None = Field(default=None, gt=0)
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _file_or_name(self) -> TraceSpec:
        if self.name is not None:
            given = [
                k
                for k in ("path", "format", "columns", "time_unit", "time_format", "separator")
                if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(
                    f"`name` picks a registered trace, which sets its file and reader; drop "
                    f"{', '.join(given)}, or drop `name` to read a file of your own"
                )
            try:
                tracereg.entry(self.name)
            except TraceError as exc:
                raise ValueError(str(exc)) from None
        elif self.path is None or self.format is None:
            raise ValueError(
                "give `path` and `format` (a trace file), or `name` (a registered public trace: "
                "`xpusim traces list`)"
            )
        return self

    def mapping(self) -> dict[str, Any]:
        """The mapping handed to ``ctx.resolve_trace`` (unset fields left out). A ``name``
        resolves to the verified cached copy of that trace, downloaded first if absent."""
        d = self.model_dump(exclude_none=True, exclude={"options", "name"})
        if self.name is not None:
            d = {**tracereg.local_trace(self.name), **d}
        d.update(self.options or {})
        return d


SLO_PRESETS: dict[str, dict[str, float]] = {
    "mlperf-llama2-70b-server": {"ttft": 2.0, "tpot": 0.200},
    "mlperf-llama2-70b-interactive": {"ttft": 0.450, "tpot": 0.040},
}
"""MLPerf Inference latency bounds (p99 TTFT, p99 TPOT) of the Llama-2-70B server and
interactive scenarios (MLCommons inference rules, "Benchmarks" table: 2,000 ms / 200 ms
and, from v5.0, 450 ms / 40 ms)."""


class Slo(BaseModel):
    """``workload.slo``: latency objectives, each naming the figure it bounds.

    * ``ttft`` — each request's time to first token (``ttft_p99`` is the same bound under
      its older name: the run's verdict checks it at the 99th percentile);
    * ``tpot`` — each request's time per output token, ``(e2e - ttft) / (output - 1)``
      (``tbt_p99`` is the same bound under its older name);
    * ``itl_max`` — each request's largest gap between two tokens (a per-token bound);
    * ``preset`` — a named set of bounds (:data:`SLO_PRESETS`, MLPerf's server and
      interactive conventions); a bound given beside it wins.
    """

    model_config = ConfigDict(extra="forbid")

    ttft: Duration | None = None
    tpot: Duration | None = None
    itl_max: Duration | None = None
    ttft_p99: Duration | None = None
    tbt_p99: Duration | None = None
    preset: str | None = None

    @model_validator(mode="after")
    def _one_name_each(self) -> Slo:
        if self.ttft is not None and self.ttft_p99 is not None:
            raise ValueError("give `ttft` or its older name `ttft_p99`, not both")
        if self.tpot is not None and self.tbt_p99 is not None:
            raise ValueError("give `tpot` or its older name `tbt_p99`, not both")
        if self.preset is not None and self.preset not in SLO_PRESETS:
            raise ValueError(f"unknown SLO preset {self.preset!r}; valid: {', '.join(SLO_PRESETS)}")
        return self

    def bounds(self) -> tuple[float | None, float | None, float | None]:
        """(TTFT, TPOT, largest-gap) bounds in seconds, presets filled in."""
        base = SLO_PRESETS.get(self.preset or "", {})
        ttft = self.ttft if self.ttft is not None else self.ttft_p99
        tpot = self.tpot if self.tpot is not None else self.tbt_p99
        return (
            ttft if ttft is not None else base.get("ttft"),
            tpot if tpot is not None else base.get("tpot"),
            self.itl_max,
        )


class ServingConfig(BaseModel):
    """The ``workload`` block of a serving scenario (without ``kind``)."""

    model_config = ConfigDict(extra="forbid")

    trace: TraceSpec | None = None
    arrivals: ArrivalSpec | None = None
    scheduler: SchedulerSpec = Field(default_factory=lambda: SchedulerSpec())
    router: str = "round-robin"
    slo: Slo = Field(default_factory=lambda: Slo())
    kv_block_tokens: int = Field(default=16, ge=1)
    kv_memory_fraction: float = Field(
        default=0.9, gt=0, le=1, description="share of device memory weights plus KV may use"
    )
    stack: str | StackOverride = Field(
        default=DEFAULT_STACK,
        description="serving engine profile: a name from stacks.yaml or {name, overrides}",
    )
    prefix_caching: PrefixCaching | None = None
    speculative_decoding: SpeculativeDecoding | None = None
    lora: Lora | None = None
    disaggregation: Disaggregation | None = None

    _router: Router | None = PrivateAttr(default=None)
    _stack: StackProfile | None = PrivateAttr(default=None)

    @field_validator("stack")
    @classmethod
    def _known_stack(cls, stack: str | StackOverride) -> str | StackOverride:
        resolve_stack(stack)  # an unknown name or a bad override fails here, at its key
        return stack

    @field_validator("router")
    @classmethod
    def _known_router(cls, router: str, info: ValidationInfo) -> str:
        return routers.check_builtin(check_name(info, "routers", "router", router), info)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, spec: SchedulerSpec, info: ValidationInfo) -> SchedulerSpec:
        return schedulers.check_builtin(spec, info)

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> ServingConfig:
        if (self.trace is None) == (self.arrivals is None):
            raise ValueError("give exactly one of `trace` (a file) or `arrivals` (a process)")
        self._router = resolve(info, "routers", self.router)
        apply_stack(self)
        return self

    @model_validator(mode="after")
    def _prefix_routing(self) -> ServingConfig:
        pc = self.prefix_caching
        if self.disaggregation is not None:
            other = [
                k
                for k in ("prefix_caching", "speculative_decoding", "lora")
                if getattr(self, k) is not None
            ]
            if other:
                raise ValueError(
                    f"disaggregated serving is not combined with {', '.join(other)} yet: "
                    f"compare them in separate scenarios"
                )
        if self.lora is not None and (pc is not None or self.router != "round-robin"):
            raise ValueError(
                "multi-LoRA serving replays adapter loads ahead of the run over round-robin "
                "routing: set `router: round-robin`, and leave `prefix_caching` out (the two "
                "replays are not combined)"
            )
        if pc is not None and pc.routing == "round-robin" and self.router != "round-robin":
            raise ValueError(
                f"prefix caching is replayed ahead of the run, which needs the replicas' order "
                f"known in advance: set `router: round-robin` (not {self.router!r}) or "
                f"`prefix_caching.routing: cache-aware`"
            )
        return self

    def router_policy(self) -> Router | str:
        """The registered router resolved at validation (inside a scenario), else the
        name, which the serving world looks up among its built-in routers."""
        return self._router if self._router is not None else self.router


def apply_stack(config: Any) -> None:
    """Resolve ``config.stack`` and fill what the scenario left unset from the profile:
    the scheduler (its kind and limits) and ``kv_memory_fraction``. Shared by the
    ``serving`` and ``offline`` configs, which both hold ``stack``, ``scheduler`` and
    ``kv_memory_fraction``."""
    prof = resolve_stack(config.stack)
    config._stack = prof
    given = config.model_fields_set
    if "scheduler" not in given:
        config.scheduler = SchedulerSpec(**prof.scheduler)
    if "kv_memory_fraction" not in given:
        config.kv_memory_fraction = prof.kv_memory_fraction


def check_trace_work(frame: Any, batch: int, replicas: int, system: str) -> None:
    """Refuse a trace replay above the work budget once its requests are read (before the
    run they are not known): :func:`~xpusim.engine.budget.request_work` of its rows and
    mean output tokens, with its span as the horizon."""
    n = len(frame)
    out = float(frame["output_tokens"].mean() or 1.0) if n else 1.0
    span = float(frame["arrival_s"].max() or 0.0) if n else 0.0
    work = request_work(float(n), out, batch, replicas, "workload.trace.limit", span)
    check_work(work, f"workload.trace ({n:,} requests read)", system)


def request_frame(config: ServingConfig, ctx: WorkloadContext) -> Any:
    """The request frame of ``config``: the trace read through ``ctx.resolve_trace`` (and
    checked against the work budget) or the arrival process generated from ``ctx.seed``."""
    if config.trace is not None:
        frame = ctx.resolve_trace(config.trace.mapping())
        sched = config.scheduler.max_batch
        check_trace_work(frame, sched, ctx.system.replicas, ctx.system.name)
        return frame
    assert config.arrivals is not None
    return generate(config.arrivals, ctx.seed, ctx.resolve_trace)


class ServingWorkload(Workload):
    """Online serving: arrivals, a router, per-replica schedulers and paged KV caches."""

    name = "serving"
    description = "LLM inference serving: arrivals, batching schedulers, KV cache, SLOs"
    schema = ServingConfig
    metrics = (
        *SERVING_METRICS,
        *PREFIX_METRICS,
        *SPEC_METRICS,
        *LORA_METRICS,
        *DISAGG_METRICS,
        detail("replicas", "Replicas", description="model replicas the devices hold"),
        detail(
            "kv_capacity_tokens",
            "KV-cache capacity",
            "tokens",
            description="tokens of KV cache one replica holds",
        ),
    )

    def work(self, config: BaseModel, system: System, model: ModelGraph) -> Work | None:
        """Requests + requests x mean output tokens / ``max_batch`` + the replicas' cost
        (:func:`~xpusim.engine.budget.request_work`); a trace's requests are known once it
        is read, so a trace replay is estimated by its ``limit`` (if any) and replicas."""
        assert isinstance(config, ServingConfig)
        batch = config.scheduler.max_batch
        if config.arrivals is not None:
            a = config.arrivals
            out = mean_tokens(a.output_tokens) or 1.0
            return request_work(
                requests_of(a),
                out,
                batch,
                system.replicas,
                "workload.arrivals.count or duration, output_tokens, systems[].count",
                horizon_of(a),
            )
        limit = config.trace.limit if config.trace is not None else None
        return request_work(
            float(limit or 0), 1.0, batch, system.replicas, "workload.trace.limit, systems[].count"
        )

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Replay the requests on ``ctx.system`` and compute its serving metrics."""
        assert isinstance(config, ServingConfig)
        frame = request_frame(config, ctx)
        system = ctx.system
        dis = config.disaggregation
        if dis is not None and dis.applies(system.name):
            return self._disaggregated(config, dis, ctx, frame)
        inner = ctx.compiled
        ranks = expert_group(system, ctx.model)  # an expert group steps as one replica
        if ranks > 1:
            inner = ExpertGroupCompiled(inner, ranks)
        replicas = system.replicas // ranks
        spec: SpeculativeRun | None = None
        if config.speculative_decoding is not None:  # steps of draft k, verify k + 1
            spec = prepare_speculative(config.speculative_decoding, ctx, inner)
            inner = spec.compiled
            frame = spec.shorten(frame)
        if config.lora is not None:  # the adapters' GEMMs and weights
            inner = LoraCompiled(
                inner,
                lora_params(ctx.model, config.lora.rank, config.lora.modules),
                config.lora,
                devices=system.parallelism.model_parallel * ranks,
            )
        compiled = StackCompiled(inner, stack_for(config, system.backend))
        kv_tokens = compiled.kv_capacity_tokens(config.kv_memory_fraction)
        router = config.router_policy()
        adapters: LoraRun | None = None
        if isinstance(inner, LoraCompiled) and config.lora is not None:
            adapters = replay_lora(
                config.lora,
                frame,
                inner,
                replicas=replicas,
                kv_capacity_tokens=kv_tokens,
                kv_block_tokens=config.kv_block_tokens,
                seed=ctx.seed,
            )
            frame = adapters.frame
            router = AssignedRouter(adapters.assignment)
        cache = None
        if config.prefix_caching is not None:  # prompts shrink by their cached prefix
            cache = replay(
                config.prefix_caching,
                frame,
                replicas=replicas,
                kv_capacity_tokens=kv_tokens,
                kv_block_tokens=config.kv_block_tokens,
                seed=ctx.seed,
            )
            frame, kv_tokens = cache.frame, cache.kv_capacity_tokens
            if cache.assignment is not None:
                router = AssignedRouter(cache.assignment)
        res = simulate_serving(
            frame,
            compiled,
            system=system.name,
            replicas=replicas,
            devices_per_replica=system.parallelism.model_parallel * ranks,
            scheduler=config.scheduler,
            router=router,
            kv_block_tokens=config.kv_block_tokens,
            kv_capacity_tokens=kv_tokens,
            progress=ctx.progress,
            seed=ctx.seed,
        )
        if cache is not None:
            res.frames["requests"] = restore_prompts(res.frames["requests"], cache.hit_tokens)
        if spec is not None:
            res.frames["requests"] = spec.restore(res.frames["requests"])
        if adapters is not None:
            res.frames["requests"] = adapters.restore(res.frames["requests"])
        ttft_slo, tpot_slo, itl_slo = config.slo.bounds()
        m = metrics.serving_metrics(
            res.frames,
            res.simulated_s,
            ttft_slo_s=ttft_slo,
            tbt_slo_s=tpot_slo,
            itl_max_slo_s=itl_slo,
        )
        m["replicas"] = res.replicas
        m["kv_capacity_tokens"] = res.kv_blocks * config.kv_block_tokens
        if cache is not None:
            m.update(cache.metrics)
        if spec is not None:
            m.update(spec.metrics)
        if adapters is not None:
            m.update(adapters.metrics)
        return SystemRun(metrics=m, frames=res.frames, simulated_s=res.simulated_s)

    def _disaggregated(
        self, config: ServingConfig, dis: Disaggregation, ctx: WorkloadContext, frame: Any
    ) -> SystemRun:
        """Serve on a prefill pool and a decode pool (:mod:`.disagg`)."""
        if ctx.system.parallelism.expert > 1:
            raise XpusimError(
                f"system {ctx.system.name!r}: disaggregated pools are tensor-parallel "
                f"replicas; expert parallelism is not combined with them yet."
            )
        stack = stack_for(config, ctx.system.backend)
        frames, span, extra = disagg.serve(
            dis,
            disagg.pools(dis, ctx),
            frame,
            wrap=lambda c: StackCompiled(c, stack),
            scheduler=config.scheduler,
            kv_block_tokens=config.kv_block_tokens,
            kv_memory_fraction=config.kv_memory_fraction,
            system=ctx.system.name,
            seed=ctx.seed,
        )
        ttft_slo, tpot_slo, itl_slo = config.slo.bounds()
        m = metrics.serving_metrics(
            frames, span, ttft_slo_s=ttft_slo, tbt_slo_s=tpot_slo, itl_max_slo_s=itl_slo
        )
        m.update(extra)
        m["replicas"] = extra["prefill_replicas"] + extra["decode_replicas"]
        return SystemRun(metrics=m, frames=dict(frames), simulated_s=span)

    def traces(self, config: BaseModel) -> list[Mapping[str, Any]]:
        """The request trace, or the traces empirical length distributions sample from."""
        assert isinstance(config, ServingConfig)
        if config.trace is not None:
            return [config.trace.mapping()]
        assert config.arrivals is not None
        return [
            dict(d.trace)
            for d in (config.arrivals.prompt_tokens, config.arrivals.output_tokens)
            if d.dist == "empirical" and d.trace is not None
        ]

    def shape_hint(self, config: BaseModel) -> Mapping[str, Any]:
        """Weights plus one KV block must fit; the batch is the scheduler's maximum."""
        assert isinstance(config, ServingConfig)
        return {"kv_tokens": config.kv_block_tokens, "batch": config.scheduler.max_batch}

    def plan_knobs(self, config: BaseModel) -> PlanKnobs | None:
        """What ``xpusim plan`` may vary: the arrival rate, the scheduler's ``max_batch``
        and the requests per simulation, with the SLO and mean request sizing reads
        (:mod:`.planning`)."""
        assert isinstance(config, ServingConfig)
        return serving_knobs(config)


WORKLOADS: list[Workload] = [ServingWorkload()]
"""The workload kinds this module provides (``serving``)."""
