"""A plain reference for the serving world, built on SimPy resources.

The fast world (:func:`~xpusim.plugins.workloads.serving.world.simulate_serving`; for the
``continuous`` scheduler :func:`~xpusim.plugins.workloads.serving.schedulers.iteration.iterative`)
keeps its queues and KV blocks as counters in flat arrays and uses SimPy as a clock only.
This module simulates the same policies (every built-in scheduler, :data:`SCHEDULERS`)
the plain way, to check it against: each replica's
waiting queue is a :class:`simpy.PriorityStore`, its KV cache a :class:`simpy.Container`
of blocks, every request is a SimPy process of its own, and each replica is a process
that runs iterations. It is written for clarity, not speed, and is not used by any
scenario; ``tests/test_serving_reference.py`` checks that both worlds give the same
times.

A request's process waits for its arrival time; a request whose KV need (prompt plus
output minus one tokens) exceeds a replica's whole cache is dropped there and never
routed. Otherwise it is routed (``round-robin``: the ``i``-th routed request goes to
replica ``i mod R``; ``least-outstanding``: the replica with the fewest routed and
unfinished requests, lowest index on a tie), joins the back of that replica's queue, and
then reads the notes its replica sends it: scheduled, preempted, and one per token. Its
first token and its last token give its first-token and finish times.

A replica holds its running requests and, before every iteration, at the iteration's
start instant:

1. *Decode growth.* A running request holding ``c`` tokens of KV writes its last token
   in this iteration, which needs a new block exactly when ``c`` is a multiple of the
   block size. While the free blocks do not cover those new blocks, the running request
   that arrived last is preempted, recompute-style: its blocks go back to the cache, it
   goes back to the *front* of the queue (ahead of the requests preempted before it),
   and it will prefill its prompt plus the tokens it has generated.
2. *Admission.* Requests are admitted from the front of the queue, in order, while the
   batch holds fewer than ``max_batch`` sequences. A request's prefill is all its tokens
   (its prompt, plus its generated tokens after a preemption) and it takes the blocks
   for all of them at once. The token budget ``max_batch_tokens`` counts one token per
   decode and the prefill tokens; only the first prefill of an iteration may exceed it
   (so a prompt longer than the budget is admitted as the only prefill). While the batch
   is not empty (running or already admitted requests), admission leaves
   ``int(blocks * WATERMARK)`` blocks free. Admission stops at the first request that
   does not fit.
3. *The iteration.* Its price comes from
   :meth:`~xpusim.plugins.workloads.serving.cluster.CostTable.step`, the fast world's own
   table (with its shape bucketing), for the admitted prefills (fused with the decodes,
   no cached context) and the running decodes over the tokens they hold. The replica
   waits that long.
4. *Tokens.* At the iteration's end every request in it gets one token: the decodes
   their next, the prefills their first (or, after a preemption, their next). A request
   with all its tokens finishes and frees its blocks.

An idle replica sleeps until a request is routed to it. Every arrival at an instant is
routed before any replica decides at that instant (the request processes set their
arrival timeouts at time zero, before any iteration's, and SimPy runs events of one
instant in the order they were set). The fast world does not fix that order when an
arrival falls exactly on an iteration's end: the arrival goes first only when the
arrival before it came before that iteration began. The two worlds are therefore
compared on workloads where no arrival meets an iteration's end.

With the ``guaranteed-no-evict`` scheduler (TensorRT-LLM's admission,
:mod:`~xpusim.plugins.workloads.serving.schedulers.no_evict`) each replica also holds a
second :class:`simpy.Container`, of promised blocks. Admission (step 2) takes from it the
blocks of the request's whole sequence (``prompt + output - 1`` tokens) and stops at the
first request they do not cover, with no watermark; a finished request puts them back.
Decode growth (step 1) then always finds its blocks, so no request is preempted. With
``chunked_context`` the token budget is kept exactly: before admission, the requests
whose prompt is partly prefilled (``partial``, in admission order) each take the rest of
their prompt when it fits the budget left, else the budget left rounded down to whole
blocks, and stop at the first that gets nothing; admission then gives each new request
its first chunk the same way and stops at the first that gets nothing (in an iteration
that would otherwise run nothing, a chunk that rounds to nothing takes the budget as it
is). A request counts towards ``max_batch`` from admission, takes each chunk's blocks as
it prefills it, is priced over the prompt tokens it already holds, and joins the running
requests with its first token at the end of the iteration of its last chunk.

With the ``chunked-prefill`` scheduler (Sarathi-Serve stall-free batching,
:mod:`~xpusim.plugins.workloads.serving.schedulers.chunked_prefill`) an iteration's token
budget is ``min(chunk, max_batch_tokens)``, less one token per running decode. A request
is *partial* from its admission until its prefill is done; it prefills ``tokens`` tokens
(its prompt, plus its generated tokens after a preemption) in chunks. Decode growth
(step 1) may preempt a partial request too (the newest of the running and partial
requests goes, its prefill lost). Before admission, the partial requests, in admission
order, each take the rest of their prefill or the budget left, whichever is less, cut to
what the free blocks hold, and stop at the first that gets nothing. Admission (step 2)
then gives each new request its first chunk the same way (the rest of the budget, at
most its prefill) while budget is left, with the watermark of step 2 counted over the
running and partial requests. Each chunk takes its blocks as it runs and is priced over
the tokens its request already holds; a request's first token comes at the end of the
iteration of its last chunk. An iteration that would run nothing while more than one
request is partial preempts the newest of them and tries again.

With the ``static`` scheduler (request-level batching,
:mod:`~xpusim.plugins.workloads.serving.schedulers.static`) a replica runs whole batches.
With fewer than ``max_batch`` requests queued and a ``max_wait``, it waits until the head
of the queue has waited ``max_wait`` since its arrival, looking again at each request
routed to it meanwhile. It then takes requests from the front of the queue while the
batch has room and the free blocks cover each one's whole sequence (the most blocks it
holds on its way to ``prompt + output - 1`` tokens), runs one prefill of all their
prompts (each request's first token at its end) and decode iterations over the whole
batch until the longest output is done: each iteration is priced for every sequence of
the batch over the context that grows by the batch each iteration (the finished ones pad
along), gives a token to the requests that still have one to come, and reports the
blocks of the KV each request keeps (up to its last token). At the batch's end every
request of it is returned (its finish time) and its blocks go back.

With the ``prefill-first`` scheduler (vLLM V0's default, with ``steps`` decode
iterations per scheduling round,
:mod:`~xpusim.plugins.workloads.serving.schedulers.prefill_first`) a replica instead runs
rounds. A *prefill round* admits as step 2 does, except that the token budget counts only
the prompts, and runs those prompts alone, each getting its first token at the
iteration's end. When none is admitted, a *decode round*: every running request takes the
blocks of the ``steps`` tokens of KV it writes in the round (to its last token at most),
the newest running requests preempted while they do not fit; ``steps`` iterations run
over the whole batch, and at the round's end each request gets the round's tokens it
keeps (up to ``steps``) in one note; a request with all its tokens finishes and frees its
blocks. Each request records the instants it receives tokens (``emissions``). With
``async_output`` the replica holds each iteration's notes back (``owed``) and sends them at
the end of its next iteration (after the first step of a decode round), or at once when it
has nothing to run; a request with all its tokens stays running until its notes are sent,
and runs the next round with the others when its last token came at a round's last step
(reserving no blocks), while one whose output ended inside the round leaves at the round's
end and frees its blocks when its notes are sent (``parked``). A request preempted while
owed notes gets them first, and leaves instead when they were its last.

Sliding-window layers (a model whose :class:`~.kvcache.KVLayout` has them, Gemma 2 and 3
or Mistral v0.1): the cache counts layer blocks (one layer's ``block_tokens`` tokens) and
a request holding ``c`` tokens holds :meth:`~.kvcache.PagedKVCache.blocks` ``(c)`` of
them, its full layers every page and its window layers the pages of their last
``window`` tokens. Decode growth (step 1) takes, for each running request, what writing
its token takes (:meth:`~.kvcache.PagedKVCache.step_blocks`): a page per layer at a page
boundary, less the page a window leaves behind, so an iteration may give blocks back;
the running requests that arrived last are preempted while the net need exceeds the free
blocks. A request is dropped, and no-evict reserves, by the most blocks the request holds
on its way to ``prompt + output - 1`` tokens
(:meth:`~.kvcache.PagedKVCache.peak_blocks`). Each iteration's blocks in use are reported
as blocks of every layer, rounded up, as the fast world's step log does.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import polars as pl
import simpy

from xpusim.engine.backend import Compiled
from xpusim.engine.policies import SchedulerSpec
from xpusim.plugins.workloads.serving.cluster import CostTable
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.schedulers.iteration import WATERMARK

ROUTERS = ("round-robin", "least-outstanding")
"""Routers the reference world knows."""

SCHEDULERS = ("continuous", "chunked-prefill", "guaranteed-no-evict", "prefill-first", "static")
"""Scheduler kinds the reference world restates."""

Proc = Generator[simpy.Event, Any, Any]


@dataclass(frozen=True)
class RequestOutcome:
    """What happened to one request: the replica it was routed to (``None`` when
    dropped), its times in seconds (``None`` when dropped) and the instants it received
    tokens (one per note: a token, or a round's chunk)."""

    replica: int | None
    first_scheduled_s: float | None
    first_token_s: float | None
    finish_s: float | None
    preemptions: int
    emissions: tuple[float, ...] = ()


@dataclass(frozen=True)
class ReferenceStep:
    """One iteration of one replica: its span, the sequences in it, the prompt tokens it
    prefilled, the decode tokens it produced and the KV blocks held while it ran."""

    replica: int
    start_s: float
    end_s: float
    batch: int
    prefill_tokens: int
    decode_tokens: int
    kv_blocks_used: int


@dataclass(frozen=True)
class ReferenceResult:
    """The outcome of every request, indexed by request id (position in arrival order,
    as in the fast world), the ids of the dropped requests, and every replica's
    iterations in time order, replica by replica."""

    requests: tuple[RequestOutcome, ...]
    dropped: frozenset[int]
    steps: tuple[ReferenceStep, ...]


class _Note(Enum):
    """What a replica tells a request's process."""

    SCHEDULED = "scheduled"
    PREEMPTED = "preempted"
    TOKEN = "token"
    RETURNED = "returned"


@dataclass(eq=False)
class _Request:
    """One request: its inputs, what its replica knows of it, and its recorded times.

    ``tokens`` is its text so far (prompt plus generated tokens); ``blocks`` the KV
    blocks it holds; ``prefilled`` the tokens its chunked prefill has done so far.
    A running request whose prefill is done holds the KV of ``tokens - 1`` tokens: its
    last token's KV is written by its next decode.
    """

    rid: int
    arrival_s: float
    prompt: int
    output: int
    inbox: simpy.Store
    tokens: int = 0
    blocks: int = 0
    replica: int | None = None
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    dropped: bool = False
    emissions: list[float] = field(default_factory=list)
    prefilled: int = 0

    @property
    def generated(self) -> int:
        """Tokens generated so far."""
        return self.tokens - self.prompt

    def outcome(self) -> RequestOutcome:
        """The request's recorded outcome."""
        return RequestOutcome(
            self.replica,
            self.first_scheduled_s,
            self.first_token_s,
            self.finish_s,
            self.preemptions,
            tuple(self.emissions),
        )


@dataclass(eq=False)
class _Replica:
    """One replica: a queue, a KV cache of blocks, its running requests and its steps.

    ``cache`` does the block arithmetic (how many blocks a request holding so many tokens
    holds); the blocks themselves are the :class:`simpy.Container` ``kv``.

    The queue is a :class:`simpy.PriorityStore` so that a preempted request can go back
    to its front: requests joining the back get increasing keys, preempted ones
    decreasing negative keys.
    """

    index: int
    env: simpy.Environment
    costs: CostTable
    spec: SchedulerSpec
    cache: PagedKVCache
    queue: simpy.PriorityStore = field(init=False)
    kv: simpy.Container = field(init=False)
    promised: simpy.Container | None = field(init=False, default=None)
    running: list[_Request] = field(default_factory=list)
    partial: list[_Request] = field(default_factory=list)
    outstanding: int = 0
    steps: list[ReferenceStep] = field(default_factory=list)
    owed: list[tuple[_Request, int]] = field(default_factory=list)
    parked: list[_Request] = field(default_factory=list)
    arrived: simpy.Event | None = None
    _back: int = 0
    _front: int = 0

    @property
    def total_blocks(self) -> int:
        """The cache's blocks (layer blocks with a windowed layout)."""
        return self.cache.total_blocks

    def __post_init__(self) -> None:
        self.queue = simpy.PriorityStore(self.env)
        self.kv = simpy.Container(self.env, capacity=self.total_blocks, init=self.total_blocks)
        if self.spec.kind == "guaranteed-no-evict":
            self.promised = simpy.Container(
                self.env, capacity=self.total_blocks, init=self.total_blocks
            )

    def _promise(self, req: _Request) -> int:
        """Blocks of a request's whole sequence, which no-evict admission reserves."""
        return self.cache.peak_blocks(req.prompt + req.output - 1)

    def join(self, req: _Request) -> None:
        """Put a newly routed request at the back of the queue (and wake a replica that
        waits for its batch to fill)."""
        self._back += 1
        self.queue.put(simpy.PriorityItem(self._back, req))
        if self.arrived is not None and not self.arrived.triggered:
            self.arrived.succeed()

    def _requeue(self, req: _Request) -> None:
        """Put a preempted request at the front of the queue."""
        self._front -= 1
        self.queue.put(simpy.PriorityItem(self._front, req))

    def _step(self, req: _Request) -> int:
        """Blocks a running request's next decode takes: one when it starts a new block
        (with a window: a page per layer, less the page the window leaves behind)."""
        return self.cache.step_blocks(req.tokens - 1)

    def _free(self, req: _Request) -> Proc:
        """Return a request's blocks to the cache."""
        if req.blocks:  # only an empty prompt before its first decode holds none
            yield self.kv.put(req.blocks)
            req.blocks = 0
        if self.promised is not None and req.generated == req.output:
            yield self.promised.put(self._promise(req))

    def _preempt_newest(self) -> Proc:
        """Preempt the running or partly prefilled request that arrived last
        (recompute-style). Tokens owed to it are sent first; when they were its last, it
        leaves instead."""
        req = max(self.running + self.partial, key=lambda r: r.rid)
        if req in self.partial:
            self.partial.remove(req)
            req.prefilled = 0
        else:
            self.running.remove(req)
        yield from self._free(req)
        for k, (r, tokens) in enumerate(self.owed):
            if r is req:
                del self.owed[k]
                req.inbox.put((_Note.TOKEN, tokens))
                break
        if req.generated == req.output:
            return
        self._requeue(req)
        req.inbox.put(_Note.PREEMPTED)

    def _grow(self) -> Proc:
        """Take the blocks this iteration's decodes need, preempting until they fit."""
        need = sum(self._step(r) for r in self.running)
        while need > self.kv.level:
            if self.promised is not None:
                raise AssertionError(f"replica {self.index}: a reserved decode lacks a block")
            yield from self._preempt_newest()
            need = sum(self._step(r) for r in self.running)
        if need > 0:
            yield self.kv.get(need)
        elif need < 0:  # windows gave back more pages than the others took
            yield self.kv.put(-need)
        for r in self.running:
            r.blocks += self._step(r)

    def _admit(self) -> Generator[simpy.Event, Any, list[_Request]]:
        """Admit requests from the front of the queue while the policy allows; return
        them (``prefill-first``: a budget of prompt tokens alone)."""
        reserve = int(self.total_blocks * WATERMARK)
        decodes = 0 if self.spec.kind == "prefill-first" else len(self.running)
        room = self.spec.max_batch_tokens - decodes
        admitted: list[_Request] = []
        while self.queue.items:
            batch = len(self.running) + len(admitted)
            if batch >= self.spec.max_batch:
                break
            req: _Request = self.queue.items[0].item  # the heap's least key: the front
            if admitted and req.tokens > room:
                break
            need = self.cache.blocks(req.tokens)
            if self.promised is not None:
                if self._promise(req) > self.promised.level:
                    break
                yield self.promised.get(self._promise(req))
            elif self.kv.level - need < (reserve if batch else 0):
                break
            yield self.queue.get()
            if need:  # an empty prompt holds no block yet
                yield self.kv.get(need)
            req.blocks = need
            room -= req.tokens
            admitted.append(req)
            req.inbox.put(_Note.SCHEDULED)
        return admitted

    def _chunks(self, decodes: int) -> Generator[simpy.Event, Any, list[tuple[_Request, int]]]:
        """Chunked context: this iteration's prompt chunks, partly prefilled requests
        first, then newly admitted ones, each with the blocks of its chunk taken."""
        spec, unit = self.spec, self.cache.block_tokens
        assert self.promised is not None
        room = spec.max_batch_tokens - decodes
        out: list[tuple[_Request, int]] = []

        def size(left: int) -> int:
            c = left if left <= room else room // unit * unit
            return min(left, room) if c == 0 and not decodes and not out else c

        for req in self.partial:
            c = size(req.prompt - req.prefilled)
            if not c:
                break
            out.append((req, c))
            room -= c
        while self.queue.items and len(self.running) + len(self.partial) < spec.max_batch:
            req = self.queue.items[0].item
            c = size(req.prompt)
            if not c or self._promise(req) > self.promised.level:
                break
            yield self.promised.get(self._promise(req))
            yield self.queue.get()
            self.partial.append(req)
            out.append((req, c))
            room -= c
            req.inbox.put(_Note.SCHEDULED)
        for req, c in out:
            yield from self._take(
                req, self.cache.blocks(req.prefilled + c) - self.cache.blocks(req.prefilled)
            )
        return out

    def _chunked(self) -> Proc:
        """One iteration of ``guaranteed-no-evict`` with chunked context."""
        decodes = list(self.running)
        chunks = yield from self._chunks(len(decodes))
        if not decodes and not chunks:
            raise AssertionError(f"replica {self.index} cannot admit its first request")
        yield from self._run_chunks(decodes, chunks)

    def _run_chunks(self, decodes: list[_Request], chunks: list[tuple[_Request, int]]) -> Proc:
        """Run an iteration of ``decodes`` and prefill ``chunks``: price it over the tokens
        each chunk's request already holds, record it, then give each decode its next
        token and each request whose last chunk ran its first (or, resumed after a
        preemption, its next)."""
        env = self.env
        tokens = sum(c for _r, c in chunks)
        cached = sum(r.prefilled for r, _c in chunks)
        context = sum(r.tokens - 1 for r in decodes)
        seconds, _j, _s = self.costs.step(len(chunks), tokens, cached, len(decodes), context)
        start = env.now
        used = self._used()
        yield env.timeout(seconds)
        self.steps.append(
            ReferenceStep(
                self.index, start, env.now, len(decodes) + len(chunks), tokens, len(decodes), used
            )
        )
        firsts = []
        for req, c in chunks:
            req.prefilled += c
            if req.prefilled == req.tokens:
                self.partial.remove(req)
                req.prefilled = 0
                firsts.append(req)
        self.running.extend(firsts)
        for req in decodes + firsts:
            yield from self._give(req, 1)

    def _take(self, req: _Request, blocks: int) -> Proc:
        """``req`` takes ``blocks`` more blocks, or gives ``-blocks`` back (a window that
        moved, a batch that ended)."""
        if blocks > 0:
            yield self.kv.get(blocks)
        elif blocks < 0:
            yield self.kv.put(-blocks)
        req.blocks += blocks

    def _split_chunks(
        self, decodes: int
    ) -> Generator[simpy.Event, Any, list[tuple[_Request, int]]]:
        """``chunked-prefill``: this iteration's prefill chunks, partial requests first,
        then newly admitted ones, each with the blocks of its chunk taken."""
        spec, cache = self.spec, self.cache
        room = min(spec.chunk, spec.max_batch_tokens) - decodes
        out: list[tuple[_Request, int]] = []
        for req in self.partial:
            if room <= 0:
                break
            done = req.prefilled
            c = min(room, req.tokens - done)
            held = cache.blocks(done)
            if cache.blocks(done + c) - held > self.kv.level:
                c = cache.tokens_within(int(self.kv.level) + held, done + c) - done
                if c <= 0:
                    break
            yield from self._take(req, cache.blocks(done + c) - held)
            out.append((req, c))
            room -= c
        reserve = int(self.total_blocks * WATERMARK)
        batch = len(self.running) + len(self.partial)
        while self.queue.items and batch < spec.max_batch and room > 0:
            req = self.queue.items[0].item
            c = min(req.tokens, room)
            need = cache.blocks(c)
            if self.kv.level - need < (reserve if batch else 0):
                break
            yield self.queue.get()
            yield from self._take(req, need)
            self.partial.append(req)
            out.append((req, c))
            batch += 1
            room -= c
            req.inbox.put(_Note.SCHEDULED)
        return out

    def _split(self) -> Proc:
        """One iteration of ``chunked-prefill`` (see the module docstring)."""
        while True:
            yield from self._grow()
            decodes = list(self.running)
            chunks = yield from self._split_chunks(len(decodes))
            if decodes or chunks:
                break
            if len(self.partial) < 2:
                raise AssertionError(f"replica {self.index} cannot make progress")
            yield from self._preempt_newest()
        yield from self._run_chunks(decodes, chunks)

    def _fill(self) -> Proc:
        """``static``: with a ``max_wait`` and fewer than ``max_batch`` requests queued,
        wait until the head has waited ``max_wait``, looking again at each arrival."""
        env, spec = self.env, self.spec
        while len(self.queue.items) < spec.max_batch and spec.max_wait > 0:
            deadline = self.queue.items[0].item.arrival_s + spec.max_wait
            if env.now >= deadline:
                return
            self.arrived = env.event()
            yield self.arrived | env.timeout(deadline - env.now)
            self.arrived = None

    def _static(self) -> Proc:
        """One batch of ``static`` (see the module docstring)."""
        env, cache = self.env, self.cache
        yield from self._fill()
        batch: list[_Request] = []
        while self.queue.items and len(batch) < self.spec.max_batch:
            req = self.queue.items[0].item
            need = cache.peak_blocks(req.prompt + req.output - 1)
            if need > self.kv.level:
                break
            yield self.queue.get()
            yield from self._take(req, need)
            batch.append(req)
            req.inbox.put(_Note.SCHEDULED)
        if not batch:
            raise AssertionError(f"replica {self.index}: a request does not fit an empty cache")
        k = len(batch)
        prompts = sum(r.prompt for r in batch)
        seconds, _j, _s = self.costs.step(k, prompts, 0, 0, 0)
        start = env.now
        yield env.timeout(seconds)
        held = sum(cache.blocks(r.prompt) for r in batch)
        self.steps.append(
            ReferenceStep(self.index, start, env.now, k, prompts, 0, cache.stack_blocks(held))
        )
        for req in batch:
            self._owe(req, 1)
        yield from self._stream()
        context = prompts
        for i in range(1, max(r.output for r in batch)):
            seconds, _j, _s = self.costs.step(0, 0, 0, k, context)
            start = env.now
            yield env.timeout(seconds)
            context += k
            alive = [r for r in batch if r.output > i]
            held = sum(cache.blocks(r.prompt + min(i, r.output - 1)) for r in batch)
            self.steps.append(
                ReferenceStep(
                    self.index, start, env.now, k, 0, len(alive), cache.stack_blocks(held)
                )
            )
            for req in alive:
                self._owe(req, 1)
            yield from self._stream()
        for req in batch:
            yield from self._take(req, -req.blocks)
            req.inbox.put(_Note.RETURNED)

    def _give(self, req: _Request, tokens: int) -> Proc:
        """``req`` receives ``tokens`` tokens now; finished, it leaves and frees its
        blocks."""
        req.tokens += tokens
        req.inbox.put((_Note.TOKEN, tokens))
        if req.generated == req.output:
            self.running.remove(req)
            yield from self._free(req)

    def _owe(self, req: _Request, tokens: int) -> None:
        """``req`` has ``tokens`` more tokens, sent with the next :meth:`_stream`."""
        req.tokens += tokens
        self.owed.append((req, tokens))

    def _stream(self) -> Proc:
        """Send the tokens owed now; the parked requests free their blocks."""
        for req, tokens in self.owed:
            req.inbox.put((_Note.TOKEN, tokens))
        self.owed.clear()
        for req in self.parked:
            yield from self._free(req)
        self.parked.clear()

    def _drop_done(self) -> Proc:
        """Running requests with all their tokens leave and free their blocks."""
        for req in [r for r in self.running if r.generated == r.output]:
            self.running.remove(req)
            yield from self._free(req)

    def _used(self) -> int:
        """Blocks in use, as blocks of every layer."""
        return self.cache.stack_blocks(self.total_blocks - int(self.kv.level))

    def _round(self) -> Proc:
        """One round of ``prefill-first`` (see the module docstring)."""
        env, steps, lag = self.env, self.spec.steps, self.spec.async_output
        prefills = yield from self._admit()
        if prefills:
            tokens = sum(r.tokens for r in prefills)
            seconds, _j, _s = self.costs.step(len(prefills), tokens, 0, 0, 0)
            start = env.now
            used = self._used()
            yield env.timeout(seconds)
            self.steps.append(
                ReferenceStep(self.index, start, env.now, len(prefills), tokens, 0, used)
            )
            if lag:  # the previous iteration's tokens reach their requests now
                yield from self._stream()
                yield from self._drop_done()
            self.running.extend(prefills)
            for req in prefills:
                if lag:
                    self._owe(req, 1)
                else:
                    yield from self._give(req, 1)
            return
        if not self.running:
            if self.owed:  # nothing to schedule: the owed tokens are sent now
                yield from self._stream()
                return
            raise AssertionError(f"replica {self.index} cannot admit its first request")

        def reserve(r: _Request) -> int:
            if r.generated == r.output:  # done, its last token not yet sent: writes nothing
                return 0
            c = r.tokens - 1
            last = min(c + steps, c + r.output - r.generated)
            return self.cache.peak_blocks(last) - self.cache.blocks(c)

        while self.running and sum(reserve(r) for r in self.running) > self.kv.level:
            yield from self._preempt_newest()
        if not self.running:
            return
        need = sum(reserve(r) for r in self.running)
        if need:
            yield self.kv.get(need)
        for r in self.running:
            r.blocks += reserve(r)
        batch = list(self.running)
        context = sum(r.tokens - 1 for r in batch)
        for i in range(steps):
            seconds, _j, _s = self.costs.step(0, 0, 0, len(batch), context + i * len(batch))
            start = env.now
            used = self._used()
            yield env.timeout(seconds)
            kept = sum(1 for r in batch if r.output - r.generated > i)
            self.steps.append(ReferenceStep(self.index, start, env.now, len(batch), 0, kept, used))
            if lag and i == 0:  # the previous round's tokens reach their requests now
                yield from self._stream()
        for r in batch:
            if r.generated == r.output:  # done before the round: it leaves
                self.running.remove(r)
                yield from self._free(r)
                continue
            k = min(steps, r.output - r.generated)
            if lag or r.generated + k < r.output:  # it holds the KV it wrote
                back = r.blocks - self.cache.blocks(r.tokens - 1 + k)
                if back:
                    yield self.kv.put(back)
                r.blocks -= back
            if not lag:
                yield from self._give(r, k)
                continue
            self._owe(r, k)
            if r.generated == r.output and k < steps:  # done inside the round
                self.running.remove(r)
                self.parked.append(r)

    def run(self) -> Proc:
        """The replica's process: iterations back to back while it has work."""
        env = self.env
        while True:
            if not self.running and not self.partial and not self.queue.items:
                if self.owed:  # nothing to schedule: the owed tokens are sent now
                    yield from self._stream()
                # idle: sleep until a request is routed here; put it back where it was,
                # admission below takes it
                item = yield self.queue.get()
                yield self.queue.put(item)
            if self.spec.kind == "prefill-first":
                yield from self._round()
                continue
            if self.spec.kind == "chunked-prefill":
                yield from self._split()
                continue
            if self.spec.kind == "static":
                yield from self._static()
                continue
            yield from self._grow()
            if self.spec.chunked_context:
                yield from self._chunked()
                continue
            decodes = list(self.running)
            prefills = yield from self._admit()
            if not decodes and not prefills:
                raise AssertionError(f"replica {self.index} cannot admit its first request")
            prefill_tokens = sum(r.tokens for r in prefills)
            context = sum(r.tokens - 1 for r in decodes)
            seconds, _joules, _state = self.costs.step(
                len(prefills), prefill_tokens, 0, len(decodes), context
            )
            start = env.now
            used = self.cache.stack_blocks(self.total_blocks - int(self.kv.level))
            yield env.timeout(seconds)
            self.steps.append(
                ReferenceStep(
                    self.index,
                    start,
                    env.now,
                    len(decodes) + len(prefills),
                    prefill_tokens,
                    len(decodes),
                    used,
                )
            )
            self.running.extend(prefills)
            for req in decodes + prefills:
                yield from self._give(req, 1)


class _Router:
    """Picks the replica of each routed request (see the module docstring)."""

    def __init__(self, name: str, replicas: Sequence[_Replica]) -> None:
        if name not in ROUTERS:
            raise ValueError(f"unknown router {name!r}; valid routers: {', '.join(ROUTERS)}")
        self.name = name
        self.replicas = replicas
        self.routed = 0

    def route(self) -> _Replica:
        """The replica for the next request."""
        if self.name == "round-robin":
            rep = self.replicas[self.routed % len(self.replicas)]
        else:
            rep = min(self.replicas, key=lambda r: (r.outstanding, r.index))
        self.routed += 1
        return rep


def _request(env: simpy.Environment, req: _Request, router: _Router, cache: PagedKVCache) -> Proc:
    """The life of one request: arrive, be dropped or routed, then read the replica's
    notes until the last token."""
    yield env.timeout(req.arrival_s)
    if cache.peak_blocks(req.prompt + req.output - 1) > cache.total_blocks:
        req.dropped = True
        return
    rep = router.route()
    req.replica = rep.index
    rep.outstanding += 1
    rep.join(req)
    received = 0
    while received < req.output:
        note = yield req.inbox.get()
        if note is _Note.SCHEDULED and req.first_scheduled_s is None:
            req.first_scheduled_s = env.now
        elif note is _Note.PREEMPTED:
            req.preemptions += 1
        elif isinstance(note, tuple):  # (TOKEN, how many)
            received += note[1]
            req.emissions.append(env.now)
            if req.first_token_s is None:
                req.first_token_s = env.now
    if rep.spec.kind == "static":  # its batch returns it at the batch's end
        yield req.inbox.get()
    req.finish_s = env.now
    rep.outstanding -= 1


def simulate_reference(
    requests: pl.DataFrame,
    compiled: Compiled,
    *,
    replicas: int,
    scheduler: SchedulerSpec,
    router: str = "round-robin",
    kv_block_tokens: int = 16,
    kv_capacity_tokens: int,
    kv_layout: KVLayout | None = None,
) -> ReferenceResult:
    """Replay ``requests`` (arrival, prompt and output columns) on ``replicas`` replicas
    with the policy of the module docstring for ``scheduler.kind`` (one of
    :data:`SCHEDULERS`).

    Takes the same arguments as the fast world's entry point; ``kv_capacity_tokens`` is
    rounded down to whole blocks. Request ids are positions in arrival order (a stable
    sort). ``kv_layout`` defaults to ``KVLayout.of(compiled.model.info)``, as in the fast
    world. Raises ``ValueError`` for another scheduler kind, an unknown router or a cache
    of less than one block.
    """
    if scheduler.kind not in SCHEDULERS:
        raise ValueError(
            f"the reference world runs the {', '.join(SCHEDULERS)} schedulers, "
            f"not {scheduler.kind!r}"
        )
    total = kv_capacity_tokens // kv_block_tokens
    if total < 1:
        raise ValueError(
            f"KV capacity of {kv_capacity_tokens} tokens holds no block of {kv_block_tokens}"
        )
    rows = requests.sort("arrival_s", maintain_order=True)
    env = simpy.Environment()
    costs = CostTable(compiled, scheduler.shape_bits, scheduler.grid_bits)
    layout = KVLayout.of(compiled.model.info) if kv_layout is None else kv_layout
    reps = [
        _Replica(i, env, costs, scheduler, PagedKVCache(total, kv_block_tokens, layout))
        for i in range(replicas)
    ]
    for rep in reps:
        env.process(rep.run())
    route = _Router(router, reps)
    sizes = PagedKVCache(total, kv_block_tokens, layout)  # the drop check's arithmetic
    reqs = [
        _Request(i, float(a), int(p), int(o), simpy.Store(env), tokens=int(p))
        for i, (a, p, o) in enumerate(
            zip(rows["arrival_s"], rows["prompt_tokens"], rows["output_tokens"], strict=True)
        )
    ]
    for req in reqs:
        if req.output < 1 or req.prompt < 0:
            raise ValueError(
                f"request {req.rid} has {req.prompt} prompt and {req.output} output tokens; "
                "a prompt has at least 0 tokens and a request generates at least 1"
            )
        env.process(_request(env, req, route, sizes))
    env.run()
    stuck = [r.rid for r in reqs if not r.dropped and r.finish_s is None]
    if stuck:
        raise AssertionError(f"requests {stuck} never finished")
    return ReferenceResult(
        requests=tuple(r.outcome() for r in reqs),
        dropped=frozenset(r.rid for r in reqs if r.dropped),
        steps=tuple(s for rep in reps for s in rep.steps),
    )
