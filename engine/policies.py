"""Serving policy contracts: the batch schedulers and request routers a plugin adds.

A serving world holds replicas of a model behind a router. Two decisions in it are
policies that plugins register by name (hooks ``register_schedulers`` and
``register_routers``) and scenarios pick (``workload.scheduler.kind``,
``workload.router``):

* a :class:`Scheduler` runs one replica: which waiting requests join the next iteration,
  how prompts are split, when to preempt. It is a SimPy process per replica, one SimPy
  event per iteration, written as a generator (:meth:`Scheduler.process`);
* a :class:`Router` picks the replica an arriving request joins
  (:meth:`Router.start` returns the per-run routing function).

A third kind of policy reshapes a whole run around them: a :class:`ServingTechnique`
(hook ``register_serving_techniques``; a scenario switches one on by writing its block,
``workload.prefix_caching: {...}``) changes the step prices (speculative decoding,
multi-LoRA, expert groups), replays a cache or an adapter store ahead of the run and
routes by it (prefix caching), or lays the devices out as pools that replace the one
serving world (disaggregated prefill and decode). Its contract and the run state it
shapes (:class:`ServingRun`) are at the end of this module.

Registered objects describe a policy and hold no run state: every run asks them for a
fresh process or routing function, so one object serves concurrent runs.

The world hands a policy the state it decides on through the protocols below
(:class:`ReplicaState`, :class:`RequestState`, :class:`KVBlocks`, :class:`StepColumns`,
:class:`StepPrices`); the serving workload's own classes implement them. A scheduler
keeps the world's bookkeeping true: every request it takes from ``replica.waiting`` it
eventually finishes with :func:`finish_request`, it appends one row per iteration to
``replica.log`` (:func:`log_step`), and it sets ``first_scheduled``/``first_token`` of a
request (NaN until set), ``fin_iter`` (the iteration of its last token) and
``seg_start`` (its first decode iteration); the world derives every frame from these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import simpy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xpusim.engine.qty import DurationOrZero
from xpusim.engine.registry import unknown_message

if TYPE_CHECKING:  # the run state a technique shapes; imported by the techniques themselves
    import polars as pl

    from xpusim.engine.backend import Compiled
    from xpusim.engine.frames import FrameMap
    from xpusim.engine.metrics import Metric
    from xpusim.engine.model import ModelGraph
    from xpusim.engine.system import System
    from xpusim.engine.workload import WorkloadContext

WAITING, PREFILLING, DECODING, DONE, DROPPED = 0, 1, 2, 3, 4
"""Request states held in :attr:`RequestState.state`."""


class KVBlocks(Protocol):
    """A replica's paged KV cache as a scheduler sees it.

    ``total_blocks`` units of KV memory, pages of ``block_tokens`` tokens; ``blocks(t)``
    is how many units a sequence holding ``t`` tokens holds and ``peak_blocks(t)`` the
    most it holds on its way to ``t`` (what a request that must never run short
    reserves). For a model whose every layer keeps every token a unit is one page of the
    whole layer stack, ``blocks(t) = ceil(t / block_tokens)`` and the peak is the same;
    with sliding-window layers (Gemma, Mistral) a unit is one layer's page and the window
    layers stop growing at the window, so a scheduler counts with these two methods rather
    than dividing by ``block_tokens`` itself. ``growth[p]`` counts the decoding sequences
    whose next token opens a new block at iterations ``j`` with ``j % block_tokens == p``
    (schedulers keep it for their running decodes).
    """

    @property
    def total_blocks(self) -> int: ...
    @property
    def block_tokens(self) -> int: ...
    @property
    def growth(self) -> list[int]: ...
    def blocks(self, tokens: int) -> int: ...
    def peak_blocks(self, tokens: int) -> int: ...


class StepColumns(Protocol):
    """A replica's step log: one entry per iteration in each column (start and end time
    in seconds, sequences in the batch, prompt tokens prefilled, decode tokens produced,
    KV blocks held after the step, state index of :attr:`StepPrices.states`, joules).

    The world may spill a long run's rows while it runs; ``start`` and ``end`` then hold
    every step as long as a scheduler leaves them whole (the log's ``keep_times``), and
    :meth:`max_gap` reads the largest step of a range wherever its rows are.
    """

    @property
    def start(self) -> array[float]: ...
    @property
    def end(self) -> array[float]: ...
    @property
    def batch(self) -> array[int]: ...
    @property
    def prefill(self) -> array[int]: ...
    @property
    def decode(self) -> array[int]: ...
    @property
    def kv(self) -> array[int]: ...
    @property
    def state(self) -> array[int]: ...
    @property
    def joules(self) -> array[float]: ...

    row_gaps: bool
    """True (the log's default) when every decode token of a step reaches its client at
    the step's end, so that each step's duration is the token gap of its decode tokens.
    A scheduler that streams tokens otherwise (several steps' tokens at once) sets it
    False and records every gap itself: in :attr:`gap_counts`, each request's largest in
    ``RequestState.seg_max``, with ``seg_start`` past ``fin_iter``."""

    gap_counts: dict[float, int]
    """Token gaps a scheduler records itself, each with its number of samples (empty
    unless it fills it); they join the run's gaps beside the rows' and
    ``RequestState.extra_gaps``."""

    def max_gap(self, a: int, b: int) -> float:
        """The largest ``end - start`` of steps ``a`` to ``b - 1`` (``a < b``)."""
        ...


class ReplicaState(Protocol):
    """One model replica: its index, its queue of waiting request ids (in arrival order
    unless a scheduler reorders it), its KV cache and step log.

    ``outstanding`` counts requests routed here and not finished (routers read it).
    ``wake`` is the event the replica's process waits on while it has nothing to do: a
    scheduler sets it to a fresh ``env.event()`` and yields it; the world triggers it when
    a request arrives.
    """

    outstanding: int
    wake: simpy.Event | None

    @property
    def index(self) -> int: ...
    @property
    def waiting(self) -> deque[int]: ...
    @property
    def kv(self) -> KVBlocks: ...
    @property
    def log(self) -> StepColumns: ...


class RequestState(Protocol):
    """Per-request state of one system's run, one flat array per field, indexed by
    request id.

    Inputs: ``arrival`` (s), ``prompt`` and ``output`` (tokens). Working state:
    ``cur_prompt`` (tokens to prefill, the prompt plus generated tokens after a
    recompute preemption), ``cur_output`` (tokens still to generate), ``entry``
    (iteration its current decode began), ``fin_iter``, ``seg_start``, ``seg_max``
    (largest token gap before its last uninterrupted segment), ``state`` (one of
    :data:`WAITING` ... :data:`DROPPED`). Results: ``first_scheduled``, ``first_token``,
    ``finish`` (s), ``preemptions``, ``extra_gaps`` (token gaps outside the step log, such
    as the first token after a preemption) and ``done`` (requests finished).
    """

    done: int

    @property
    def n(self) -> int: ...
    @property
    def arrival(self) -> Sequence[float]: ...
    @property
    def prompt(self) -> Sequence[int]: ...
    @property
    def output(self) -> Sequence[int]: ...
    @property
    def cur_prompt(self) -> array[int]: ...
    @property
    def cur_output(self) -> array[int]: ...
    @property
    def state(self) -> bytearray: ...
    @property
    def entry(self) -> array[int]: ...
    @property
    def fin_iter(self) -> array[int]: ...
    @property
    def seg_start(self) -> array[int]: ...
    @property
    def seg_max(self) -> array[float]: ...
    @property
    def first_scheduled(self) -> array[float]: ...
    @property
    def first_token(self) -> array[float]: ...
    @property
    def finish(self) -> array[float]: ...
    @property
    def preemptions(self) -> array[int]: ...
    @property
    def extra_gaps(self) -> list[float]: ...


class StepPrices(Protocol):
    """Step prices of the compiled model, memoized.

    :meth:`step` prices one iteration from totals: ``pf_n`` prefills of ``pf_tok`` tokens
    in all over ``pf_ctx`` cached tokens in all, plus ``n_dec`` decodes over ``dec_ctx``
    cached tokens in all; it returns ``(seconds, joules, state_index)``. ``memo`` maps
    bucketed keys ``(pf_n, tokens, context, decodes, decode_context)`` (sizes rounded to
    ``bits`` significant bits) to the same triples, for a hot loop that inlines the key;
    ``states`` names the state indices.
    """

    @property
    def memo(self) -> dict[tuple[int, ...], tuple[float, float, int]]: ...
    @property
    def bits(self) -> int: ...
    @property
    def states(self) -> list[str]: ...

    def step(
        self, pf_n: int, pf_tok: int, pf_ctx: int, n_dec: int, dec_ctx: int
    ) -> tuple[float, float, int]: ...


Proc = Generator[simpy.Event, Any, None]
"""A SimPy process: a generator of events."""

Route = Callable[[Sequence[ReplicaState]], ReplicaState]
"""``route(replicas) -> replica``: called once per request at its arrival instant."""


def context_host(info: ValidationInfo) -> Any:
    """The plugin host a scenario's validation context holds, or ``None`` outside a
    scenario (a spec built in code)."""
    return info.context.get("host") if isinstance(info.context, dict) else None


def _host_registry(info: ValidationInfo, attr: str) -> Any:
    """The host's registry ``attr`` from the validation context, or ``None`` outside a
    scenario (a spec built in code)."""
    host = context_host(info)
    return getattr(host, attr, None) if host is not None else None


def check_name(info: ValidationInfo, attr: str, kind: str, name: str) -> str:
    """``name`` when the host's registry ``attr`` knows it (or no host is in the
    validation context); else a ``ValueError`` listing the valid names and the nearest."""
    registry = _host_registry(info, attr)
    if registry is not None and name not in registry:
        raise ValueError(unknown_message(kind, name, registry.names()))
    return name


def resolve(info: ValidationInfo, attr: str, name: str) -> Any:
    """The object registered as ``name`` in the host's registry ``attr`` (imported on
    first use), or ``None`` when no host is in the validation context."""
    registry = _host_registry(info, attr)
    return registry.get(name) if registry is not None else None


class SchedulerSpec(BaseModel):
    """The ``workload.scheduler`` block: which scheduler, and the limits it keeps.

    ``kind`` names a registered :class:`Scheduler`. Validated inside a scenario (a
    validation context holding the host), an unknown kind lists the registered ones and
    the object is resolved once (:meth:`policy`); a spec built in code carries only the
    name, and the serving world looks it up among its built-in schedulers.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = "continuous"
    max_batch: int = Field(default=128, ge=1, description="sequences per iteration")
    max_batch_tokens: int = Field(
        default=8192, ge=1, description="tokens per iteration (prefill tokens plus one per decode)"
    )
    chunk: int = Field(
        default=512, ge=1, description="chunked-prefill: token budget per iteration (Sarathi)"
    )
    max_wait: DurationOrZero = Field(
        default=0.0, description="static: longest wait for a batch to fill (e.g. 50 ms)"
    )
    shape_bits: int = Field(
        default=6, ge=2, le=20, description="significant bits kept when bucketing step shapes"
    )
    grid_bits: int = Field(
        default=2,
        ge=1,
        le=20,
        description="significant bits of the grid new shapes are interpolated on",
    )
    steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="prefill-first: decode steps per scheduling round (vLLM's "
        "--num-scheduler-steps)",
    )
    async_output: bool = Field(
        default=False,
        description="prefill-first: process an iteration's outputs during the next "
        "iteration, as vLLM 0.6 does (tokens stream at that iteration's end; a request "
        "whose last token came last runs one more iteration)",
    )
    chunked_context: bool = Field(
        default=False,
        description="guaranteed-no-evict: prefill a prompt that does not fit the iteration's "
        "token budget in chunks of whole KV blocks (TensorRT-LLM's enable_chunked_context)",
    )
    _policy: Scheduler | None = PrivateAttr(default=None)

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str, info: ValidationInfo) -> str:
        return check_name(info, "schedulers", "scheduler", kind)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> SchedulerSpec:
        self._policy = resolve(info, "schedulers", self.kind)
        if self._policy is not None:
            check_options(self, self._policy)
        return self

    def policy(self) -> Scheduler | None:
        """The registered scheduler resolved at validation, or ``None`` (built in code)."""
        return self._policy


class Scheduler(ABC):
    """A batch scheduler: the loop that runs one replica.

    Contract: ``name`` is the key used in ``workload.scheduler.kind``; ``description``
    says the policy in one line. :meth:`process` is called once per replica per run and
    returns a SimPy process; it takes requests from ``replica.waiting``, prices each
    iteration with ``prices.step``, yields ``env.timeout(seconds)`` for it, logs it
    (:func:`log_step`) and finishes requests (:func:`finish_request`). When it has nothing
    to run it sets ``replica.wake = env.event()`` and yields that event. It keeps the
    replica's KV use within ``replica.kv.total_blocks`` and the batch within ``spec``'s
    limits, and must finish every request it takes. The object holds no run state.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"
    multi_step: bool = False
    """Whether the scheduler runs ``spec.steps`` decode steps per scheduling round; a spec
    asking a scheduler that does not for other than one step is refused
    (:func:`check_options`)."""
    async_output: bool = False
    """Whether the scheduler models ``spec.async_output`` (outputs processed during the
    next iteration); a spec asking a scheduler that does not for it is refused
    (:func:`check_options`)."""
    chunked_context: bool = False
    """Whether the scheduler models ``spec.chunked_context`` (a prompt that does not fit
    the token budget prefilled in chunks); a spec asking a scheduler that does not for it
    is refused (:func:`check_options`)."""

    @abstractmethod
    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The SimPy process running ``replica`` until the world ends."""
        raise NotImplementedError(self)


def check_options(spec: SchedulerSpec, policy: Scheduler) -> None:
    """A ``ValueError`` when ``spec`` asks ``policy`` for what it does not model: more than
    one decode step per scheduling round from a scheduler that is not multi-step, or
    ``async_output`` or ``chunked_context`` from one without it. Any of these fields would
    otherwise be accepted and ignored."""
    if spec.steps != 1 and not policy.multi_step:
        raise ValueError(
            f"scheduler {spec.kind!r} schedules before every iteration; steps: {spec.steps} "
            "(decode steps per scheduling round) applies to kind prefill-first, vLLM's "
            "multi-step scheduling: set kind: prefill-first or remove steps"
        )
    if spec.async_output and not policy.async_output:
        raise ValueError(
            f"scheduler {spec.kind!r} streams each iteration's tokens at its end; "
            "async_output: true (outputs processed during the next iteration, vLLM 0.6's "
            "asynchronous output processing) applies to kind prefill-first: set kind: "
            "prefill-first or remove async_output"
        )
    if spec.chunked_context and not policy.chunked_context:
        raise ValueError(
            f"scheduler {spec.kind!r} does not chunk prompts on request; chunked_context: "
            "true (TensorRT-LLM's chunked context) applies to kind guaranteed-no-evict, and "
            "kind chunked-prefill always chunks (its `chunk` budget): set one of those kinds "
            "or remove chunked_context"
        )


class Router(ABC):
    """A request router: which replica an arriving request joins.

    Contract: ``name`` is the key used in ``workload.router``; ``description`` says the
    policy in one line. :meth:`start` is called once per run and returns the routing
    function, which holds any state of that run (a counter, a seeded random generator);
    the same ``seed`` and arrivals give the same choices. The object holds no run state.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"

    @abstractmethod
    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        """The routing function of one run over ``replicas`` (seeded by ``seed``)."""
        raise NotImplementedError(self)

    def planned(self, routed: int, replicas: int) -> Sequence[int] | None:
        """The replica of each of ``routed`` requests in routing order, when the choices do
        not depend on the run's state (round-robin; an assignment replayed ahead of the
        run); ``None`` (the default) when they do. A world may then hand each replica its
        requests up front instead of routing each at its arrival; the routing function of
        :meth:`start` must make the same choices."""
        return None


def finish_request(requests: RequestState, replica: ReplicaState, rid: int, t: float) -> None:
    """Mark request ``rid`` finished at ``t`` and release it from ``replica``'s count."""
    requests.state[rid] = DONE
    requests.finish[rid] = t
    requests.done += 1
    replica.outstanding -= 1


def log_step(
    log: StepColumns,
    start: float,
    end: float,
    batch: int,
    prefill: int,
    decode: int,
    kv_blocks: int,
    state: int,
    joules: float,
) -> None:
    """Append one iteration to ``log`` (see :class:`StepColumns` for the columns)."""
    log.start.append(start)
    log.end.append(end)
    log.batch.append(batch)
    log.prefill.append(prefill)
    log.decode.append(decode)
    log.kv.append(kv_blocks)
    log.state.append(state)
    log.joules.append(joules)


# --- serving techniques -----------------------------------------------------------------

TechniqueKind = Literal["step", "cache", "router", "pool-layout"]
"""What part of serving a technique changes: ``step`` the price of an iteration (a draft
and verify step, adapters' GEMMs, an expert group), ``cache`` what a request needs to
compute (a prefix cache), ``router`` where requests go, ``pool-layout`` how the devices
are laid out (pools that replace the single serving world)."""

RequestsFix = Callable[[Any], Any]
"""``fix(requests) -> requests``: a ``pl.DataFrame`` or ``pl.LazyFrame`` of the run's
``requests`` frame, given back with what a technique changed before the run restored
(the full prompt, the real output length, the real arrival)."""


@dataclass
class ServingRun:
    """The state of one system's serving run, as the techniques shape it.

    The workload fills it and hands it to every switched-on technique in
    :attr:`ServingTechnique.order`, first to :meth:`ServingTechnique.price` (before the
    serving stack wraps the prices and the KV capacity is known), then to
    :meth:`ServingTechnique.replay`; then, unless a pool layout serves the run
    (:meth:`ServingTechnique.serve`), the serving world runs ``frame`` on ``replicas``
    replicas of ``devices_per_replica`` devices each, priced by ``stack(compiled)``,
    with ``kv_capacity_tokens`` of KV each and routed by ``router``.

    * ``ctx`` — the system, its compiled model, the model, the seed;
    * ``config`` — the validated ``workload`` block (``scheduler``, ``kv_block_tokens``,
      ``kv_memory_fraction``, ``slo`` ...);
    * ``frame`` — the requests (``arrival_s``, ``prompt_tokens``, ``output_tokens``, and
      a trace's extra columns such as ``hash_ids``), sorted by arrival;
    * ``compiled`` — the step prices of one replica, before the serving stack;
    * ``stack`` — puts a compiled model under the scenario's serving stack (host time
      per iteration, CUDA graphs); a pool layout applies it to each pool;
    * ``replicas``, ``devices_per_replica`` — how the system's devices form replicas;
    * ``kv_capacity_tokens`` — KV tokens one replica holds (0 until ``replay``);
    * ``router`` — a :class:`Router`, or a built-in router's name;
    * ``metrics`` — the figures a technique adds to the system's summary (declared in
      its :attr:`ServingTechnique.metrics`);
    * ``state`` — a technique's own state between its calls, under its name (the
      technique object holds no run state);
    * ``fixes`` — what restores the ``requests`` frame after the run, applied last
      added first (:meth:`restore`).
    """

    ctx: WorkloadContext
    config: Any
    frame: pl.DataFrame
    compiled: Compiled
    stack: Callable[[Compiled], Compiled]
    replicas: int
    devices_per_replica: int
    router: Router | str
    kv_capacity_tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    fixes: list[RequestsFix] = field(default_factory=list)

    def restore(self, fix: RequestsFix) -> None:
        """Restore the ``requests`` frame with ``fix`` once the run is over (the last
        fix added runs first, so each undoes its own change)."""
        self.fixes.append(fix)

    def restored(self, requests: Any) -> Any:
        """``requests`` after every fix, last added first."""
        for fix in reversed(self.fixes):
            requests = fix(requests)
        return requests


class ServingTechnique:
    """A serving technique: a component of the ``serving`` workload a scenario switches
    on by writing its block (``workload.<name>: {...}``).

    Contract: ``name`` is the key of its block in the ``workload`` mapping (it must not
    be one of the workload's own keys); ``description`` says it in one line; ``kind``
    what part of serving it changes (:data:`TechniqueKind`); ``schema`` the pydantic
    model (``extra="forbid"``) that validates the block, or ``None`` for a technique
    with no block that switches itself on from the system (:meth:`active`: expert
    parallelism follows ``systems[].parallelism.expert``); ``metrics`` the summary keys
    it adds (:class:`~xpusim.engine.metrics.Metric`); ``order`` its place among the
    switched-on techniques (lower first: step prices 100s, replays 200s, pool layouts
    300s).

    Calls, each with the validated block (``spec``; ``None`` for a blockless one):

    * :meth:`check` at load, with the whole validated workload block and the names of
      the other switched-on techniques: refuse a combination it does not support
      (raise ``ValueError`` with the fix);
    * :meth:`check_system` per system before anything simulates (``xpusim validate``
      included): refuse a system it cannot serve (raise ``ScenarioError`` with the key
      and the fix);
    * :meth:`active` per system: whether it applies there (default: it has a block);
    * :meth:`price` then :meth:`replay`, and :meth:`serve` for a pool layout: they
      change the :class:`ServingRun` (see there).

    Registered objects hold no run state: one object serves concurrent runs.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"
    kind: TechniqueKind = "step"
    schema: type[BaseModel] | None = None
    metrics: tuple[Metric, ...] = ()
    order: int = 100

    def check(self, spec: Any, config: Any, others: Sequence[str]) -> None:
        """Refuse, at load, a workload this technique cannot serve (``ValueError``)."""

    def check_system(self, spec: Any, system: System, model: ModelGraph) -> None:
        """Refuse, before any system simulates, a ``system`` (running ``model``) this
        technique would be asked to serve and cannot: raise
        :class:`~xpusim.engine.errors.ScenarioError` naming the key and the fix. Called for
        every system, with the block (``None`` when not given); the technique decides
        whether it applies there. Default: nothing to check."""

    def active(self, spec: Any, ctx: WorkloadContext) -> bool:
        """Whether the technique applies to ``ctx.system`` (default: its block is given)."""
        return spec is not None

    def price(self, spec: Any, run: ServingRun) -> None:
        """Change the step prices (``run.compiled``), the requests (``run.frame``) or how
        devices form replicas, before the stack wraps the prices."""

    def replay(self, spec: Any, run: ServingRun) -> None:
        """With ``run.kv_capacity_tokens`` known: replay a cache or store over
        ``run.frame`` ahead of the run, shorten or delay requests, set ``run.router``,
        add ``run.metrics`` and :meth:`ServingRun.restore` fixes."""

    def serve(self, spec: Any, run: ServingRun) -> tuple[FrameMap, float] | None:
        """A pool layout: serve the run itself and return its frames (``requests``,
        ``steps``, ``devices``, ``tbt``) and simulated seconds; ``None`` (the default)
        leaves it to the serving world. At most one switched-on technique serves."""
        return None


def technique_blocks(
    data: Mapping[str, Any],
    fields: Sequence[str],
    techniques: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``workload`` mapping into its own keys and the technique blocks.

    Keys in ``fields`` stay; a key naming a registered technique (``techniques``) is taken
    out with its block; any other key is refused with the valid keys and the nearest
    (``ValueError``)."""
    own: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields:
            own[key] = value
        elif key in techniques:
            blocks[key] = value
        else:
            raise ValueError(unknown_message("workload key", key, [*fields, *techniques]))
    return own, blocks
