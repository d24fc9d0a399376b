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
    # serving techniques: registered components, a block each switches one on
    prefix_caching: {memory_fraction: 0.3, block_tokens: 512}          # prefix_cache.py
    speculative_decoding: {draft: {family: llama, preset: ...}, k: 4, acceptance: 0.7}
    lora: {adapters: 100, rank: 16, gpu_slots: 8, host_link: 25 GB/s}  # lora.py
    disaggregation: {prefill: {count: 2}, decode: {count: 6}}          # disagg.py
    # (expert parallelism follows systems[].parallelism.expert: expert.py)

The techniques are :class:`~xpusim.engine.policies.ServingTechnique` objects registered
through the ``register_serving_techniques`` hook (the built-in ones by this plugin, as a
third party registers its own): any key of the block that is not one of the fields
below names a registered technique, whose ``schema`` validates its block. See
``docs/workloads/serving.md`` for every field and the simulation model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Literal

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from xpusim.engine import tracereg
from xpusim.engine.backend import Compiled, Fit
from xpusim.engine.budget import Work, check_work, request_work
from xpusim.engine.errors import PluginError, TraceError, XpusimError
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import (
    Router,
    SchedulerSpec,
    ServingRun,
    ServingTechnique,
    check_name,
    context_host,
    resolve,
    technique_blocks,
)
from xpusim.engine.qty import Duration
from xpusim.engine.registry import nearest
from xpusim.engine.scenario import BOOL_NUMBER, first_bool_number, keys_at
from xpusim.engine.system import System
from xpusim.engine.workload import PlanKnobs, SystemRun, Workload, WorkloadContext
from xpusim.plugins.workloads import TECHNIQUES
from xpusim.plugins.workloads.serving import metrics, routers, schedulers
from xpusim.plugins.workloads.serving.arrivals import (
    MAX_CONCURRENCY,
    ArrivalSpec,
    generate,
    horizon_of,
    mean_tokens,
    requests_of,
)
from xpusim.plugins.workloads.serving.clients import wait_metrics
from xpusim.plugins.workloads.serving.engine_memory import EngineLimits
from xpusim.plugins.workloads.serving.metrics import SERVING_METRICS
from xpusim.plugins.workloads.serving.planning import plan_knobs as serving_knobs
from xpusim.plugins.workloads.serving.schedulers.iteration import loop_choice
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
from xpusim.plugins.workloads.serving.world import simulate_serving


class TraceSpec(BaseModel):
    """``workload.trace``: a trace file and how to read it.

    ``path`` is relative to the scenario file; ``format`` names a registered trace format
    (``azure-llm``, ``csv``, ``jsonl`` ...). ``columns``/``time_unit``/``time_format``/
    ``separator`` are for the generic formats; ``limit`` keeps the first N requests;
    ``time_scale`` divides arrival times (2.0 replays twice as fast); ``concurrency`` keeps
    at most that many requests in flight, a request whose arrival comes while that many
    are sent and not finished waiting for one to finish, as a load generator with that
    many connections replays it (see ``arrivals``); ``closed: true`` ignores the
    timestamps and sends the trace's requests, in file order, from ``concurrency``
    closed-loop clients (a benchmark's dataset run at an infinite request rate).
    ``options`` passes anything else to a third-party format. Or ``name`` names a public
    trace of the registry (:mod:`xpusim.engine.tracereg`), which gives its file and reader:
    the run reads the verified copy in the trace cache, downloading it first when absent.
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
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    closed: bool = False
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _file_or_name(self) -> TraceSpec:
        if self.closed and (self.concurrency is None or self.time_scale is not None):
            raise ValueError(
                "`closed: true` sends the trace's requests from closed-loop clients, "
                "ignoring its timestamps: give `concurrency` (the number of clients) and "
                "drop `time_scale`"
            )
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
        d = self.model_dump(exclude_none=True, exclude={"options", "name", "concurrency", "closed"})
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
    _router: Router | None = PrivateAttr(default=None)
    _stack: StackProfile | None = PrivateAttr(default=None)
    _blocks: dict[str, Any] = PrivateAttr(default_factory=dict)
    _techniques: tuple[ServingTechnique, ...] = PrivateAttr(default=())

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
        loop_choice()  # a junk XPUSIM_SERVING_LOOP fails here, before any work
        self._router = resolve(info, "routers", self.router)
        apply_stack(self)
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _with_techniques(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> ServingConfig:
        """Take the serving techniques' blocks out (a key that is not a field names a
        registered technique), validate the rest, then each block with its technique's
        schema (an error keeps its key path), and let each technique refuse a
        combination it does not serve."""
        if not isinstance(data, Mapping):
            return handler(data)
        names, get = technique_registry(info)
        own, given = technique_blocks(data, list(cls.model_fields), names)
        self: ServingConfig = handler(own)
        blocks: dict[str, Any] = {}
        errors: list[InitErrorDetails] = []
        for key, block in given.items():
            if block is None:  # `prefix_caching: null` (or `--set ...=null`): switched off
                continue
            tech = get(key)
            errors += _block_errors(tech, key, block, info, blocks)
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        self._blocks = blocks
        chosen = {key: get(key) for key in blocks}
        rest = other_techniques(names, get, chosen)
        self._techniques = tuple(sorted([*chosen.values(), *rest], key=lambda t: t.order))
        _seen_metrics(self._techniques)
        for tech in sorted(chosen.values(), key=lambda t: -t.order):
            tech.check(blocks[tech.name], self, [k for k in blocks if k != tech.name])
        return self

    def closed_clients(self) -> bool:
        """Whether closed-loop clients send the requests (``process: closed``, or a trace
        with ``closed: true``): every request is due at once, so a wait for a slot is how
        the clients pace the run, not a delay behind a due time."""
        if self.arrivals is not None:
            return self.arrivals.process == "closed"
        return self.trace is not None and self.trace.closed

    def client_limit(self) -> int | None:
        """The most requests the clients keep in flight (``arrivals.concurrency`` or
        ``trace.concurrency``), ``None`` for clients without a limit."""
        source = self.arrivals if self.arrivals is not None else self.trace
        return source.concurrency if source is not None else None

    def technique(self, name: str) -> Any:
        """The validated block of technique ``name``, or ``None`` when not given."""
        return self._blocks.get(name)

    def techniques(self) -> tuple[ServingTechnique, ...]:
        """Every technique that may apply, in :attr:`ServingTechnique.order`: those whose
        block is given, and those without a block (they switch themselves on)."""
        return self._techniques

    def router_policy(self) -> Router | str:
        """The registered router resolved at validation (inside a scenario), else the
        name, which the serving world looks up among its built-in routers."""
        return self._router if self._router is not None else self.router


def _builtin_techniques() -> dict[str, ServingTechnique]:
    """The built-in techniques by name, for a config validated outside a scenario."""
    return {ref.name: ref.load() for ref in TECHNIQUES}


_BUILTIN = cache(_builtin_techniques)


def technique_registry(
    info: ValidationInfo,
) -> tuple[list[str], Callable[[str], ServingTechnique]]:
    """The registered technique names and a look-up: the host's registry inside a
    scenario (the validation context holds the host), else the built-in techniques."""
    registry = getattr(context_host(info), "serving_techniques", None)
    if registry is not None:
        return registry.names(), lambda name: registry.get(name, where="workload")
    builtin = _BUILTIN()
    return list(builtin), builtin.__getitem__


def other_techniques(
    names: Sequence[str],
    get: Callable[[str], ServingTechnique],
    chosen: Mapping[str, ServingTechnique],
) -> list[ServingTechnique]:
    """The techniques without a block (they switch themselves on from the system); a
    technique that cannot be loaded is left out here (its plugin is marked failed)."""
    out = []
    for name in names:
        if name in chosen:
            continue
        try:
            tech = get(name)
        except PluginError:
            continue
        if tech.schema is None:
            out.append(tech)
    return out


def _block_errors(
    tech: ServingTechnique, key: str, block: Any, info: ValidationInfo, blocks: dict[str, Any]
) -> list[InitErrorDetails]:
    """Validate ``block`` with ``tech``'s schema into ``blocks[key]``; the errors, with
    their key paths under ``key`` (an unknown key answered with the valid ones)."""
    if tech.schema is None:
        return [
            _value_error(
                (key,),
                block,
                f"the serving technique {key!r} takes no block: it switches itself on from "
                f"the system ({tech.description}); remove `{key}`",
            )
        ]
    bad = first_bool_number(tech.schema, block, (key,))
    if bad is not None:
        here, value = bad
        return [_value_error(here, value, BOOL_NUMBER.format(value=str(value).lower()))]
    try:
        blocks[key] = tech.schema.model_validate(block, context=info.context)
    except ValidationError as exc:
        out: list[InitErrorDetails] = []
        for err in exc.errors():
            loc = (key, *err["loc"])
            if err["type"] == "extra_forbidden":
                valid = keys_at(tech.schema, err["loc"][:-1])
                near = nearest(str(loc[-1]), valid)
                hint = f" Did you mean {near!r}?" if near else ""
                out.append(
                    _value_error(
                        loc,
                        err["input"],
                        f"unknown key {loc[-1]!r}.{hint} Valid keys here: {', '.join(valid)}",
                    )
                )
                continue
            detail_: InitErrorDetails = {"type": err["type"], "loc": loc, "input": err["input"]}
            if "ctx" in err:
                detail_["ctx"] = err["ctx"]
            out.append(detail_)
        return out
    return []


def _value_error(loc: tuple[Any, ...], value: Any, message: str) -> InitErrorDetails:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


def apply_stack(config: Any) -> None:
    """Resolve ``config.stack`` and fill what the scenario left unset from the profile:
    the scheduler (its kind and limits), ``kv_memory_fraction`` and, where the profile
    states it, ``kv_block_tokens``. Shared by the ``serving`` and ``offline`` configs,
    which both hold ``stack``, ``scheduler``, ``kv_memory_fraction`` and
    ``kv_block_tokens``."""
    prof = resolve_stack(config.stack)
    config._stack = prof
    given = config.model_fields_set
    if "scheduler" not in given:
        config.scheduler = SchedulerSpec(**prof.scheduler)
    if "kv_memory_fraction" not in given:
        config.kv_memory_fraction = prof.kv_memory_fraction
    if "kv_block_tokens" not in given and prof.kv_block_tokens is not None:
        config.kv_block_tokens = prof.kv_block_tokens


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
        if config.trace.closed:  # every request due at once; the clients pace them
            frame = frame.with_columns(pl.lit(0.0, dtype=pl.Float64).alias("arrival_s"))
        return frame
    assert config.arrivals is not None
    return generate(config.arrivals, ctx.seed, ctx.resolve_trace)


BASE_METRICS: tuple[Metric, ...] = (
    *SERVING_METRICS,
    Metric(
        "client_wait_p99_s",
        "Client-side wait p99",
        "ms",
        better="lower",
        scale=1e3,
        description="99th percentile of the time a request waited for a free client slot "
        "after it came due, under a concurrency cap on an open arrival process or a trace; "
        "not in TTFT, which counts from the sending",
        order=215,
        table=False,
    ),
    detail(
        "client_wait_mean_s",
        "Client-side wait mean",
        "ms",
        "lower",
        scale=1e3,
        description="mean time a request waited for a free client slot after it came due "
        "(capped open arrivals or trace)",
    ),
    detail(
        "client_waited_share",
        "Requests that waited for a client",
        description="share of the requests sent that waited for a free client slot "
        "(capped open arrivals or trace)",
    ),
    detail("replicas", "Replicas", description="model replicas the devices hold"),
    detail(
        "kv_capacity_tokens",
        "KV-cache capacity",
        "tokens",
        description="tokens of KV cache one replica holds",
    ),
)
"""The serving workload's own metrics, without its techniques'."""


def _seen_metrics(techniques: Sequence[ServingTechnique]) -> None:
    """Declare the metrics of ``techniques`` on the serving workload (a plugin's technique
    brings its own; a name already declared keeps its first definition)."""
    known = {m.name for m in ServingWorkload.metrics}
    new: list[Metric] = []
    for m in (m for t in techniques for m in t.metrics):
        if m.name not in known:
            known.add(m.name)
            new.append(m)
    if new:
        ServingWorkload.metrics = (*ServingWorkload.metrics, *new)


class ServingWorkload(Workload):
    """Online serving: arrivals, a router, per-replica schedulers and paged KV caches,
    shaped by the serving techniques a scenario switches on.

    ``metrics`` holds the serving metrics and the built-in techniques'; a plugin's
    technique adds its own when a scenario validates with it."""

    name = "serving"
    description = "LLM inference serving: arrivals, batching schedulers, KV cache, SLOs"
    schema = ServingConfig
    metrics = BASE_METRICS

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

    def runtime_model(self, config: BaseModel, system: System, model: ModelGraph) -> ModelGraph:
        """``model`` as the serving stack runs it (:func:`stack_model`: an FP8
        checkpoint's context attention in FP8 under a stack that builds it so)."""
        assert isinstance(config, ServingConfig)
        return stack_model(stack_for(config, system.backend), model)

    def fit(self, config: BaseModel, system: System, compiled: Compiled) -> Fit:
        """The switched-on techniques' checks of ``system`` first
        (:meth:`~xpusim.engine.policies.ServingTechnique.check_system`: a pool on a device
        that does not exist is refused here, by ``xpusim validate`` too), then the
        backend's memory fit with the backend options the stack's engine sets (NCCL's
        NVLS, its decode kernel)."""
        assert isinstance(config, ServingConfig)
        for tech in config.techniques():
            tech.check_system(config.technique(tech.name), system, compiled.model)
        compiled, _ = with_stack_settings(compiled, stack_for(config, system.backend))
        return super().fit(config, system, compiled)

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        """Replay the requests on ``ctx.system`` and compute its serving metrics.

        The techniques that apply to the system (:meth:`ServingConfig.techniques`) shape
        the run in their order: each prices, then each replays; a pool layout then
        serves the run, else the serving world does; the ``requests`` frame is restored
        and the techniques' metrics join the serving metrics."""
        assert isinstance(config, ServingConfig)
        system = ctx.system
        stack = stack_for(config, system.backend)

        frame = request_frame(config, ctx)
        if not frame["arrival_s"].is_sorted():  # request ids are rows in arrival order
            frame = frame.sort("arrival_s", maintain_order=True)
        sched = config.scheduler
        longest = (frame["prompt_tokens"] + frame["output_tokens"]).max() if len(frame) else 1
        limits = EngineLimits(sched.max_batch, sched.max_batch_tokens, int(longest or 1))

        def stacked(c: Compiled) -> StackCompiled:
            return StackCompiled(c, stack, sched.steps, limits)

        run = ServingRun(
            ctx=ctx,
            config=config,
            frame=frame,
            compiled=ctx.compiled,
            stack=stacked,
            replicas=system.replicas,
            devices_per_replica=system.parallelism.model_parallel,
            router=config.router_policy(),
        )
        on = [(t, config.technique(t.name)) for t in config.techniques()]
        on = [(t, spec) for t, spec in on if t.active(spec, ctx)]
        layouts = [t.name for t, _ in on if type(t).serve is not ServingTechnique.serve]
        if len(layouts) > 1:
            raise XpusimError(
                f"system {system.name!r}: the pool layouts {', '.join(layouts)} each serve "
                f"the whole run; switch on one of them."
            )
        for tech, spec in on:
            tech.price(spec, run)
        compiled = stacked(run.compiled)
        run.kv_capacity_tokens = compiled.kv_capacity_tokens(config.kv_memory_fraction)
        compiled.check_cache(run.kv_capacity_tokens, config.kv_block_tokens)
        for tech, spec in on:
            tech.replay(spec, run)
        served = None
        for tech, spec in on:
            served = tech.serve(spec, run)
            if served is not None:
                break
        if served is not None:
            frames, span = served
            kv_tokens = None
        else:
            res = simulate_serving(
                run.frame,
                compiled,
                system=system.name,
                replicas=run.replicas,
                devices_per_replica=run.devices_per_replica,
                scheduler=config.scheduler,
                router=run.router,
                kv_block_tokens=config.kv_block_tokens,
                kv_capacity_tokens=run.kv_capacity_tokens,
                progress=ctx.progress,
                seed=ctx.seed,
                concurrency=config.client_limit(),
            )
            # the world's own mapping: it holds the spill folder of frames past the row
            # threshold, which a copy would let go (and the folder with it)
            frames, span = res.frames, res.simulated_s
            kv_tokens = res.kv_blocks * config.kv_block_tokens
            run.metrics.setdefault("replicas", res.replicas)
            waits = res.extra.get("client_waits")
            if waits is not None and not config.closed_clients():
                # a capped open load: how long requests waited behind the clients' limit
                run.metrics.update(wait_metrics(waits))
        if run.fixes:
            frames["requests"] = run.restored(frames["requests"])
        ttft_slo, tpot_slo, itl_slo = config.slo.bounds()
        m = metrics.serving_metrics(
            frames,
            span,
            ttft_slo_s=ttft_slo,
            tbt_slo_s=tpot_slo,
            itl_max_slo_s=itl_slo,
        )
        if kv_tokens is not None:
            m["kv_capacity_tokens"] = kv_tokens
        m.update(run.metrics)
        return SystemRun(
            metrics=m, frames=frames, simulated_s=span, figures=compiled.stack_figures()
        )

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


_seen_metrics(tuple(_BUILTIN().values()))

WORKLOADS: list[Workload] = [ServingWorkload()]
"""The workload kinds this module provides (``serving``)."""
