"""The ``guaranteed-no-evict`` scheduler: TensorRT-LLM's default capacity policy.

Iteration-level batching as ``continuous`` does it (whole prompts prefilled fused with
the running decodes, ``max_batch`` sequences, a token budget of ``max_batch_tokens``
counting one token per decode that only the first prompt of an iteration may exceed),
with another admission rule. TensorRT-LLM's ``GUARANTEED_NO_EVICT`` capacity scheduler
admits a request only when the KV blocks of its whole sequence (prompt plus maximum
output) can be reserved on top of what the running requests have reserved, so that a
running request never runs out of blocks and nothing is ever preempted. vLLM's policy
(``continuous``) admits on the prompt's blocks alone and preempts when decodes outgrow the
cache; this one holds requests in the queue instead, trading admission for no recompute.

The policy, before every iteration at its start instant:

1. *Decode growth.* A running request holding ``c`` tokens of KV writes one more in this
   iteration and takes a new block when ``c`` is a multiple of the block size ``B``; it
   always fits, since the blocks were reserved at admission.
2. *Admission.* From the front of the queue, in order, while the batch holds fewer than
   ``max_batch`` sequences: a request of ``L`` prompt and ``m`` output tokens reserves
   ``ceil((L + m - 1) / B)`` blocks (the KV it holds at its last token) when the
   reservations of the running requests leave that many of the cache's blocks; it takes
   the blocks of its prompt now. Admission stops at the first request that does not fit
   (first come, first served) or, after the first prompt of the iteration, at the first
   whose prompt exceeds the token budget left. No watermark is kept: the reservation is
   the guarantee.
3. *The iteration* is priced for its prefills and its decodes over the tokens they hold.
4. *Tokens.* Every request in the iteration gets one token at its end (the prefills their
   first); a request with all its tokens finishes and returns its blocks and its
   reservation.

*Chunked context* (``chunked_context: true``, TensorRT-LLM's ``enable_chunked_context``,
which ``trtllm-bench`` of 0.12 switches on): the token budget is kept exactly. Prompts
already partly prefilled continue first, in admission order, then new requests are
admitted as above; each prefills its whole remaining prompt when that fits the budget
left, else the budget left rounded down to whole KV blocks (the executor's chunk unit is
its block size), and a request whose chunk rounds to nothing waits for the next
iteration, as does every one after it (first come, first served). A request takes the
blocks of each chunk as it prefills it, holds its reservation from admission, counts
towards ``max_batch`` from admission, and gets its first token at the end of the
iteration that prefills its last chunk. So that an engine whose budget is smaller than a
block still progresses, a chunk that rounds to nothing in an iteration that would
otherwise run nothing takes the budget unrounded.

The maximum output of a request is its output length: the serving world knows each
request's length, as a benchmark that sets ``max_tokens`` to it and ignores end of
sequence does. A request whose whole sequence exceeds the cache is dropped by the world
before routing, so every routed request fits an empty replica.

With sliding-window layers (a cache of layer blocks, :mod:`~.kvcache`) a request holds
:meth:`~.kvcache.PagedKVCache.blocks` of its tokens, decode growth is each request's
:meth:`~.kvcache.PagedKVCache.step_blocks` (a window may give a page back) and the
reservation is the most blocks the request holds on its way to its whole sequence
(:meth:`~.kvcache.PagedKVCache.peak_blocks`), which a window may reach before the end.

This loop yields one SimPy event per iteration and takes its arrivals from the router
(the world's fast path applies to ``continuous`` and ``chunked-prefill`` only);
:func:`~xpusim.plugins.workloads.serving.reference.simulate_reference` restates the same
policy on SimPy resources to check it against.
"""

# B, L and m are the block size, prompt and output lengths of the docs' formulas.
# ruff: noqa: N806

from __future__ import annotations

import simpy

from xpusim.engine.policies import (
    DECODING,
    PREFILLING,
    Proc,
    ReplicaState,
    RequestState,
    Scheduler,
    SchedulerSpec,
    StepPrices,
    finish_request,
    log_step,
)
from xpusim.plugins.workloads.serving.kvcache import PagedKVCache


def chunk_tokens(remaining: int, room: int, unit: int, alone: bool = False) -> int:
    """Prompt tokens a chunked-context request prefills in an iteration: all ``remaining``
    when they fit the ``room`` left in the token budget, else the room rounded down to
    whole ``unit`` s (the KV block), which may be none. ``alone``: the chunk would be the
    iteration's only work, so a room below one block is taken as it is (an engine whose
    budget is smaller than a block still progresses)."""
    if remaining <= room:
        return remaining
    c = max(0, room) // unit * unit
    return max(0, room) if c == 0 and alone else c


def reserved_blocks(prompt: int, output: int, block_tokens: int) -> int:
    """Blocks a request reserves at admission: the KV of its whole sequence, ``prompt +
    output - 1`` tokens (its last token's KV is never written). The scheduler counts it
    with the cache's :meth:`~.kvcache.PagedKVCache.peak_blocks`, which is this without
    sliding-window layers."""
    return -(-(prompt + output - 1) // block_tokens)


class GuaranteedNoEvictScheduler(Scheduler):
    """Iteration-level batching that admits a request only when its whole sequence's KV
    blocks can be reserved, so no request is ever preempted (see the module docstring)."""

    name = "guaranteed-no-evict"
    description = (
        "TensorRT-LLM's guaranteed-no-evict: admit only when the KV of prompt plus output "
        "is reservable, never preempt"
    )
    chunked_context = True

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The guaranteed-no-evict loop of one replica; see the module docstring."""
        rep, req = replica, requests
        kv = rep.kv
        B = kv.block_tokens
        total = kv.total_blocks
        chunked = spec.chunked_context
        # the cache counts a request's blocks and its reservation (once a request, so not
        # inlined); a decode's growth, every decoder every iteration, stays inline without
        # a window
        blocks, peak = kv.blocks, kv.peak_blocks
        win = isinstance(kv, PagedKVCache) and kv.layout is not None
        if win:
            assert isinstance(kv, PagedKVCache)
            step = kv.step_blocks
        waiting = rep.waiting
        prompt, output = req.prompt, req.output
        log = rep.log
        running: list[int] = []  # decoding requests, in admission order
        prefilling: list[int] = []  # admitted, prompt partly prefilled (chunked context)
        done: dict[int, int] = {}  # prompt tokens each of those has prefilled
        held: dict[int, int] = {}  # tokens of KV each running request holds
        left: dict[int, int] = {}  # tokens each running request has still to generate
        promised = 0  # blocks reserved by the admitted requests
        used = 0  # blocks they hold
        j = 0  # iteration index in the replica's step log
        while True:
            if not running and not prefilling and not waiting:
                ev = rep.wake = env.event()
                yield ev
                continue
            now = env.now
            # 1. decode growth: covered by the reservations
            if win:
                used += sum(step(held[rid]) for rid in running)
            else:
                used += sum(1 for rid in running if held[rid] % B == 0)
            # 2. prefill chunks: partly prefilled prompts first, then admission
            room = spec.max_batch_tokens - len(running)
            chunks: list[tuple[int, int]] = []  # (request, prompt tokens this iteration)
            pf_tok = pf_ctx = 0
            for rid in prefilling:
                c = chunk_tokens(prompt[rid] - done[rid], room, B, not running and not chunks)
                if c == 0:
                    break
                chunks.append((rid, c))
                pf_ctx += done[rid]
                room -= c
            while waiting and len(running) + len(prefilling) < spec.max_batch:
                rid = waiting[0]
                L = prompt[rid]
                if chunked:
                    c = chunk_tokens(L, room, B, not running and not chunks)
                    if c == 0:
                        break
                elif chunks and room < L:
                    break
                else:
                    c = L
                need = peak(L + output[rid] - 1)
                if promised + need > total:
                    break
                waiting.popleft()
                promised += need
                prefilling.append(rid)
                done[rid] = 0
                chunks.append((rid, c))
                room -= c
                req.state[rid] = PREFILLING
                req.first_scheduled[rid] = now
            if not running and not chunks:
                raise AssertionError(
                    f"replica {rep.index} cannot admit its first request: {promised} of "
                    f"{total} KV blocks reserved with nothing running"
                )
            for rid, c in chunks:
                used += blocks(done[rid] + c) - blocks(done[rid])
                pf_tok += c
            # 3. the iteration
            n_dec = len(running)
            context = sum(held[rid] for rid in running)
            dur, joules, st_i = prices.step(len(chunks), pf_tok, pf_ctx, n_dec, context)
            yield env.timeout(dur)
            end = now + dur
            log_step(log, now, end, n_dec + len(chunks), pf_tok, n_dec, used, st_i, joules)
            # 4. tokens: decodes their next, prompts whose last chunk ran their first
            still: list[int] = []
            for rid in running:
                held[rid] += 1
                left[rid] -= 1
                if left[rid]:
                    still.append(rid)
                else:
                    used -= blocks(held.pop(rid))
                    promised -= peak(prompt[rid] + output[rid] - 1)
                    del left[rid]
                    finish_request(req, rep, rid, end)
            for rid, c in chunks:
                done[rid] += c
                L, m = prompt[rid], output[rid]
                if done[rid] < L:
                    continue
                prefilling.remove(rid)
                del done[rid]
                req.first_token[rid] = end
                req.seg_start[rid] = j + 1
                req.fin_iter[rid] = j + m - 1
                if m == 1:
                    used -= blocks(L)
                    promised -= peak(L + m - 1)
                    finish_request(req, rep, rid, end)
                    continue
                req.state[rid] = DECODING
                req.entry[rid] = j
                held[rid] = L
                left[rid] = m - 1
                still.append(rid)
            running = still
            j += 1
