"""Prefix caching (vLLM's automatic prefix caching, SGLang's radix cache), replayed ahead.

KV blocks are named by the hash of their whole token prefix, so two requests whose
prompts share their first ``k`` blocks share their first ``k`` block ids. A replica keeps
the blocks of earlier prompts in a cache of ``memory_fraction`` of its KV blocks, evicting
the least recently used block when full; a new request whose first ``m`` block ids are
cached skips the prefill of those ``m × block_tokens`` tokens (at most ``prompt − 1``: the
last prompt token is always computed, as in vLLM, to produce the first token's logits).

Where the ids come from: a trace that carries them (Mooncake's ``hash_ids``, one per
512-token block) replays exactly; a trace without them can declare a shared system
prompt (``shared_prefix: {tokens, prompts}``): each request draws one of ``prompts``
system prompts (seeded), whose whole blocks within the first ``tokens`` tokens are shared
by every request that drew it; the rest of each prompt is its own. Or it can declare
multi-turn conversations (``conversations: {sessions, turns}``): each request joins one of
``sessions`` open conversations of ``turns`` requests, and its prompt begins with the
previous turn's whole blocks, prompt and answer (a chat client resends the history; the
answer's blocks are cached when the turn ends, as vLLM caches generated blocks).

The model, and where it simplifies. The cache is replayed over the requests in arrival
order before the run, per replica, with a fixed capacity (the share ``memory_fraction``
of the replica's KV blocks, taken out of what running requests may use). A request then
runs in the serving world as a prompt of ``prompt − hit`` tokens: its prefill compute and
the KV blocks it holds beside the cache shrink by the hit, which is what prefix caching
saves. Not modelled: a block enters the cache at its request's arrival rather than when
its prefill ends, the cache does not grow into blocks running requests leave free (vLLM
caches in every free block), and the attention of the uncached tokens over the cached
prefix, and of decodes over it, is priced as if the prefix were absent (it understates
attention cost at long cached prefixes). ``prompt_tokens`` of the ``requests`` frame stays
the full prompt.

Routing: under ``round-robin`` the world's routing is reproduced exactly (the ``i``-th
routed request to replica ``i mod R``; requests too large for a replica are dropped and
not routed, as in the world). ``routing: cache-aware`` follows SGLang's cache-aware
router: a request goes to the replica whose cache holds the longest prefix of it (the
one with the fewest requests routed so far on a tie) when that prefix is more than
``cache_threshold`` of its blocks (SGLang's ``cache_threshold``, default 0.5), else to
the replica with the fewest requests routed so far (SGLang sends it to the least-filled
cache); the world then routes by that assignment. Without the threshold a block every
prompt shares (a system prompt) would draw every request to the first replica that cached
it. Not replayed: SGLang's load tier (``balance_abs_threshold``/``balance_rel_threshold``
on the replicas' running requests), which are known only during the run.

Metrics: ``prefix_hit_rate_tokens`` (prompt tokens served from the cache / prompt tokens
of routed requests), ``prefix_hit_rate_blocks`` (prompt blocks found / prompt blocks
looked up) and ``prefill_tokens_saved``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xpusim.engine.errors import TraceError
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.policies import ReplicaState, Route, Router, ServingRun, ServingTechnique
from xpusim.engine.traces import MAX_TOKENS
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache

HASH_COLUMN = "hash_ids"
"""The request-frame column of per-block prefix hash ids (the ``mooncake`` format's)."""


MAX_SESSIONS = 1_000_000
"""Most conversations open at once, or distinct system prompts: each holds its history
(or its blocks) while the trace is prepared, so a count far beyond any deployment would
exhaust memory before the run starts."""
MAX_TURNS = 10_000
"""Most requests of one conversation: each turn's prompt resends the whole history."""


class SharedPrefix(BaseModel):
    """``prefix_caching.shared_prefix``: a system prompt shared by a trace's requests."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(ge=1, le=MAX_TOKENS, description="tokens of each system prompt")
    prompts: int = Field(
        default=1, ge=1, le=MAX_SESSIONS, description="distinct system prompts drawn from"
    )


class Conversations(BaseModel):
    """``prefix_caching.conversations``: multi-turn conversations over a trace's requests.

    Each request joins one of ``sessions`` open conversations (drawn from the seed); a
    conversation lasts ``turns`` requests, and each turn's prompt begins with the whole
    previous turn (its prompt and its answer), as a chat client resends the history.
    """

    model_config = ConfigDict(extra="forbid")

    sessions: int = Field(ge=1, le=MAX_SESSIONS, description="conversations open at once")
    turns: int = Field(ge=2, le=MAX_TURNS, description="requests of one conversation")


class PrefixCaching(BaseModel):
    """``workload.prefix_caching``: the prefix cache of every replica.

    ``memory_fraction`` is the share of a replica's KV blocks the cache keeps;
    ``block_tokens`` the tokens each hash id covers (default: ``kv_block_tokens``; 512 for
    Mooncake's traces); ``routing`` ``round-robin`` or ``cache-aware`` (with its
    ``cache_threshold``); ``shared_prefix``
    declares a system prompt for a trace that carries no hashes.
    """

    model_config = ConfigDict(extra="forbid")

    memory_fraction: float = Field(gt=0, lt=1)
    block_tokens: int | None = Field(default=None, ge=1)
    routing: Literal["round-robin", "cache-aware"] = "round-robin"
    cache_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="cache-aware: share of a prompt's blocks the best replica must hold "
        "(strictly more) for the cache to choose; else the least-used replica (SGLang's "
        "router, default 0.5)",
    )
    shared_prefix: SharedPrefix | None = None
    conversations: Conversations | None = None

    @model_validator(mode="after")
    def _one_synthetic(self) -> PrefixCaching:
        if self.shared_prefix is not None and self.conversations is not None:
            raise ValueError(
                "declare either `shared_prefix` (a system prompt) or `conversations` "
                "(multi-turn chats), not both"
            )
        return self


PREFIX_METRICS: tuple[Metric, ...] = (
    detail(
        "prefix_hit_rate_tokens",
        "Prefix-cache hit rate (tokens)",
        better="higher",
        description="prompt tokens served from the prefix cache / prompt tokens routed",
    ),
    detail(
        "prefix_hit_rate_blocks",
        "Prefix-cache hit rate (blocks)",
        better="higher",
        description="prompt blocks found in the prefix cache / prompt blocks looked up",
    ),
    detail(
        "prefill_tokens_saved",
        "Prefill tokens saved",
        "tokens",
        better="higher",
        description="prompt tokens whose prefill the prefix cache skipped",
    ),
)
"""The metrics a run with prefix caching adds."""


@dataclass
class CacheReplay:
    """The outcome of replaying the prefix caches over a request frame.

    ``frame`` is the request frame with each prompt shortened by its hit; ``hit_tokens``
    the tokens each request (in frame order) found cached; ``assignment`` the replica of
    each routed request in routing order (``None`` under round-robin, which the world
    reproduces itself); ``kv_capacity_tokens`` what is left to running requests.
    """

    frame: pl.DataFrame
    hit_tokens: np.ndarray
    assignment: list[int] | None
    kv_capacity_tokens: int
    metrics: dict[str, float]


def block_ids(
    spec: PrefixCaching, frame: pl.DataFrame, block_tokens: int, seed: int
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Each request's prompt block ids: the trace's ``hash_ids`` (checked against the
    block size), else ids made from the declared ``shared_prefix`` or ``conversations``;
    and, for conversations, the ids of each answer's whole blocks, which are cached too."""
    prompts = frame["prompt_tokens"].to_list()
    if HASH_COLUMN in frame.columns:
        ids: list[list[int]] = frame[HASH_COLUMN].to_list()
        for row, (h, n) in enumerate(zip(ids, prompts, strict=True)):
            want = -(-n // block_tokens)
            if len(h) != want:
                raise TraceError(
                    f"workload.prefix_caching.block_tokens: request {row} of the trace has "
                    f"{len(h)} block hashes for a {n}-token prompt, but the cache's blocks "
                    f"of {block_tokens} tokens make {want}: the hashes were made with "
                    f"another block size. Set `prefix_caching.block_tokens` to the trace's "
                    f"(512 for Mooncake's traces)."
                )
        return ids, None
    if spec.conversations is not None:
        return conversation_ids(spec.conversations, frame, block_tokens, seed)
    if spec.shared_prefix is None:
        raise TraceError(
            "workload.prefix_caching: the trace carries no block hashes (a `hash_ids` column, "
            "as the `mooncake` format reads), so no prompt could ever hit the cache. Replay a "
            "trace with hashes, or declare the shared system prompt with `shared_prefix: "
            "{tokens: N, prompts: K}` or multi-turn chats with `conversations: {sessions: S, "
            "turns: T}`."
        )
    sp = spec.shared_prefix
    draw = np.random.default_rng([seed, 0x50C]).integers(0, sp.prompts, size=len(prompts))
    shared_blocks = sp.tokens // block_tokens
    out: list[list[int]] = []
    fresh = sp.prompts * shared_blocks  # ids past the system prompts' are each request's own
    for n, p in zip(prompts, draw.tolist(), strict=True):
        nb = -(-n // block_tokens)
        k = min(shared_blocks, n // block_tokens)
        own = nb - k
        out.append([p * shared_blocks + b for b in range(k)] + list(range(fresh, fresh + own)))
        fresh += own
    return out, None


def conversation_ids(
    conv: Conversations, frame: pl.DataFrame, block_tokens: int, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Block ids of multi-turn conversations: a turn reuses the ids of the previous turn's
    whole blocks (its prompt and its answer) as far as its own prompt reaches."""
    prompts = frame["prompt_tokens"].to_list()
    outputs = frame["output_tokens"].to_list()
    draw = np.random.default_rng([seed, 0xC0A]).integers(0, conv.sessions, size=len(prompts))
    history: list[list[int]] = [[] for _ in range(conv.sessions)]
    turn = [0] * conv.sessions
    fresh = 0
    out: list[list[int]] = []
    answers: list[list[int]] = []
    for n, m, c in zip(prompts, outputs, draw.tolist(), strict=True):
        if turn[c] == conv.turns:  # the conversation ended: a new one opens
            history[c], turn[c] = [], 0
        k = min(len(history[c]), n // block_tokens)
        own = -(-n // block_tokens) - k
        ids = history[c][:k] + list(range(fresh, fresh + own))
        fresh += own
        out.append(ids)
        answer = (n + m) // block_tokens - n // block_tokens  # whole blocks of the reply
        answers.append(list(range(fresh, fresh + answer)))
        history[c] = ids[: n // block_tokens] + answers[-1]
        fresh += answer
        turn[c] += 1
    return out, answers


def replay(
    spec: PrefixCaching,
    frame: pl.DataFrame,
    *,
    replicas: int,
    kv_capacity_tokens: int,
    kv_block_tokens: int,
    seed: int,
    layout: KVLayout | None = None,
) -> CacheReplay:
    """Replay each replica's prefix cache over ``frame`` (sorted by arrival) and return
    the shortened frame, the hits, the routing and the metrics (module docstring).
    ``layout`` is the model's KV layout: a request is dropped unrouted exactly when the
    world would drop it, by the peak KV it holds in what the cache leaves (a sliding
    window's layers keeping only their window)."""
    bt = spec.block_tokens or kv_block_tokens
    if not frame["arrival_s"].is_sorted():
        frame = frame.sort("arrival_s", maintain_order=True)
    ids, answers = block_ids(spec, frame, bt, seed)
    total_blocks = int(kv_capacity_tokens) // kv_block_tokens
    cache_blocks = int(total_blocks * spec.memory_fraction)
    left_blocks = total_blocks - cache_blocks
    left = PagedKVCache(left_blocks, kv_block_tokens, layout)  # what the world will hold
    capacity = cache_blocks * kv_block_tokens // bt  # hash blocks each cache holds
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(replicas)]
    routed_count = [0] * replicas
    prompts = frame["prompt_tokens"].to_list()
    outputs = frame["output_tokens"].to_list()
    hits = np.zeros(len(prompts), dtype=np.int64)
    assignment: list[int] | None = [] if spec.routing == "cache-aware" else None
    k = 0
    looked = found = routed_tokens = 0
    for i, (h, n, m) in enumerate(zip(ids, prompts, outputs, strict=True)):
        if assignment is None:
            r = k % replicas
            got = _matched(caches[r], h)
        else:
            best = [(_matched(c, h), -routed_count[j], -j) for j, c in enumerate(caches)]
            got, _, neg = max(best)
            r = -neg
            if h and got <= spec.cache_threshold * len(h):  # too little cached: balance
                r = min(range(replicas), key=lambda j: (routed_count[j], j))
                got = _matched(caches[r], h)
        hit = min(got * bt, n - 1)
        if left.peak_blocks(n - hit + m - 1) > left.total_blocks:
            continue  # the world drops it unrouted: it neither routes nor touches a cache
        if assignment is not None:
            assignment.append(r)
        routed_count[r] += 1
        k += 1
        hits[i] = hit
        looked += len(h)
        found += got
        routed_tokens += n
        _insert(caches[r], h if answers is None else [*h, *answers[i]], got, capacity)
    short = frame.with_columns(
        (pl.col("prompt_tokens") - pl.Series(hits)).alias("prompt_tokens")
    ).drop(HASH_COLUMN, strict=False)
    saved = int(hits.sum())
    return CacheReplay(
        frame=short,
        hit_tokens=hits,
        assignment=assignment,
        kv_capacity_tokens=left_blocks * kv_block_tokens,
        metrics={
            "prefix_hit_rate_tokens": saved / routed_tokens if routed_tokens else 0.0,
            "prefix_hit_rate_blocks": found / looked if looked else 0.0,
            "prefill_tokens_saved": float(saved),
        },
    )


def _matched(cache: OrderedDict[int, None], ids: Sequence[int]) -> int:
    """How many leading ids of ``ids`` the cache holds."""
    m = 0
    for x in ids:
        if x not in cache:
            break
        m += 1
    return m


def _insert(cache: OrderedDict[int, None], ids: Sequence[int], got: int, capacity: int) -> None:
    """Touch every id of ``ids`` (most recently used last; the first ``got`` are known to
    be cached), evicting the least recently used ones past ``capacity``."""
    if capacity <= 0:
        return
    move = cache.move_to_end
    for x in ids[:got]:
        move(x)
    rest = ids[got:]
    if cache.keys().isdisjoint(rest):
        cache.update(dict.fromkeys(rest))  # the usual case: all new, added in one call
    else:
        for x in rest:
            if x in cache:
                move(x)
            else:
                cache[x] = None
    pop = cache.popitem
    for _ in range(len(cache) - capacity):
        pop(last=False)


class AssignedRouter(Router):
    """Routes the ``k``-th routed request to the replica ``assignment[k]`` decided by the
    cache-aware replay (an object of one run, not a registered policy)."""

    name = "prefix-cache-aware"
    description = "the replica whose prefix cache holds the longest prefix of the request"

    def __init__(self, assignment: Sequence[int]) -> None:
        self.assignment = list(assignment)

    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        """A routing function that follows the assignment in routing order."""
        order = iter(self.assignment)

        def assigned(replicas: Sequence[ReplicaState]) -> ReplicaState:
            k = next(order, None)
            if k is None:  # the replay and the world disagree on which requests are served
                raise ValueError(
                    f"the replay ahead of the run routed {len(self.assignment)} requests, "
                    "and the world routes more: it admits a request the replay dropped"
                )
            return replicas[k]

        return assigned

    def planned(self, routed: int, replicas: int) -> Sequence[int]:
        """The assignment itself (the replay decided every routed request's replica)."""
        return self.assignment[:routed]


def restore_prompts(
    requests: pl.DataFrame | pl.LazyFrame, hits: np.ndarray
) -> pl.DataFrame | pl.LazyFrame:
    """The ``requests`` frame with ``prompt_tokens`` back to the full prompt (the world
    saw the prompt less its cached prefix); ``request_id`` indexes ``hits``."""
    return requests.with_columns(
        (pl.col("prompt_tokens") + pl.lit(pl.Series(hits)).gather(pl.col("request_id"))).alias(
            "prompt_tokens"
        )
    )


class PrefixCachingTechnique(ServingTechnique):
    """``prefix_caching``: each replica's prefix cache replayed ahead of the run (module
    docstring); registered by the built-in workload plugin."""

    name = "prefix_caching"
    description = "prefix caching: LRU caches of hashed KV blocks, round-robin or cache-aware"
    kind = "cache"
    schema = PrefixCaching
    metrics = PREFIX_METRICS
    order = 240

    def check(self, spec: PrefixCaching, config: Any, others: Sequence[str]) -> None:
        """Round-robin replay needs the replicas' order ahead: the world's router must be
        ``round-robin`` too."""
        if spec.routing == "round-robin" and config.router != "round-robin":
            raise ValueError(
                f"prefix caching is replayed ahead of the run, which needs the replicas' order "
                f"known in advance: set `router: round-robin` (not {config.router!r}) or "
                f"`prefix_caching.routing: cache-aware`"
            )

    def replay(self, spec: PrefixCaching, run: ServingRun) -> None:
        """Shorten each prompt by its cached prefix, keep the cache's blocks out of what
        running requests may use, route by the cache under ``cache-aware``."""
        cache = replay(
            spec,
            run.frame,
            replicas=run.replicas,
            kv_capacity_tokens=run.kv_capacity_tokens,
            kv_block_tokens=run.config.kv_block_tokens,
            seed=run.ctx.seed,
            layout=KVLayout.of(run.compiled.model.info),
        )
        run.frame, run.kv_capacity_tokens = cache.frame, cache.kv_capacity_tokens
        if cache.assignment is not None:
            run.router = AssignedRouter(cache.assignment)
        run.metrics.update(cache.metrics)
        hits = cache.hit_tokens
        run.restore(lambda requests: restore_prompts(requests, hits))
