"""The ``prefill-first`` scheduler: vLLM V0's default scheduler, with multi-step rounds.

vLLM before V1, with chunked prefill off (its default for models of at most 32K context),
runs prompts and decodes in separate iterations, prompts first (``_schedule_default`` in
``vllm/core/scheduler.py``). With ``--num-scheduler-steps N`` (vLLM 0.6's multi-step
scheduling, RFC vllm-project/vllm#6854, pull #7000) a decode batch, once scheduled, runs
``N`` forward steps before the scheduler runs again. ``steps`` is that ``N``; with the
default of one this is the plain V0 scheduler.

The policy, at the start of every scheduling round:

1. *Prefill round.* Requests are admitted from the front of the queue, in order, while
   the batch (running and admitted) holds fewer than ``max_batch`` sequences, the
   admitted prompts hold at most ``max_batch_tokens`` tokens (only the first may exceed
   it) and the free KV blocks cover the prompt, leaving 1 % of the cache free while the
   batch is not empty (vLLM's watermark). A prompt is its tokens to prefill: the prompt,
   plus the tokens generated before a preemption. When any is admitted the round is one
   prefill-only iteration: the running decodes wait, as in vLLM, where prompts scheduled
   leave no decodes in that step. At its end each admitted request emits its first token
   (or, after a preemption, its next one) and starts decoding.
2. *Decode round*, when no prompt was admitted: the running requests run ``steps``
   decode iterations as one batch. At the round's start each takes the KV blocks of the
   tokens the round writes (vLLM's lookahead slots, up to the request's last token); while
   the free blocks do not cover them the running request that arrived last is preempted,
   recompute-style (its blocks freed, back to the front of the queue). A request whose
   output ends inside the round still runs every step of it, since the batch is fixed
   until the scheduler runs again (its surplus tokens are dropped; the engine checks stop
   conditions after the round). At the round's end each request emits, in one streamed
   chunk, the tokens of the round it keeps; those whose output is complete finish then and
   free their blocks.

*Asynchronous output processing* (``async_output: true``, vLLM 0.6's default, pulls
vllm-project/vllm#7049, #7921 and #8050; the v0.6.0 release post: "performing the
processing of the ``n``-th step output while executing the ``n+1``-th step ... incurring
a slight overhead of executing one additional step per request"). The tokens an
iteration makes are processed, checked for the end of the request and streamed during
the engine's next iteration, and reach the client at its end: a prefill's first tokens at
the end of the next iteration (a prefill, or the first step of a decode round), a decode
round's chunk at the end of the next round's first step (or of the prefill that follows
it). Until then the scheduler does not know a request is done, so:

* a request whose last token came at the last step of a round (with one step a round:
  every request, and any whose prefill made its only token) is scheduled once more: it
  takes no new blocks, keeps no token, is streamed its last tokens with the others, and
  leaves the batch when that next iteration or round ends (vLLM's "extra decode run");
* a request whose output ended inside a round (the engine checks each step's outputs
  during the next step of the round) leaves the batch at the round's end, holding its
  blocks until its tokens are streamed;
* a request preempted while owed tokens receives them first (vLLM processes a request's
  pending output before preempting it) and, when they were its last, leaves instead;
* when nothing can be scheduled the engine processes the owed outputs at once.

Host time: the scheduler and input preparation run once a round, so a multi-step round
pays the stack's host time once (:class:`~xpusim.plugins.workloads.serving.stacks.StackCompiled`
charges each of its decode steps ``1 / steps`` of it); a prefill round pays it whole.

Token gaps. Tokens reach the client at the end of a prefill round (one) and of a decode
round (a chunk of up to ``steps``). A chunk is one gap, from the request's previous
emission to the round's end, as vLLM's ``benchmark_serving`` and SGLang's
``bench_serving`` record the gaps of a stream (one sample per chunk received); the gap
spans any prefill rounds in between. The scheduler counts every gap in its step log's
``gap_counts`` (gap to samples; the requests of a round share few distinct gaps) and
keeps each request's largest (``seg_max``), and clears the log's ``row_gaps``.
``tbt_mean_s`` (TPOT) is ``(finish - first token) / (output - 1)`` with the finish at the
end of the round that completes the request (with ``async_output``, when its last tokens
stream).

The step log has one row per iteration: a prefill round's row, then one row per decode
step of a round, each with the round's batch, the decode tokens it keeps and the blocks
held.

This loop yields one SimPy event per iteration and takes its arrivals from the router;
:func:`~xpusim.plugins.workloads.serving.reference.simulate_reference` restates the same
policy on SimPy resources to check it against.
"""

# B, L and m are the block size, prompt and output lengths of the docs' formulas.
# ruff: noqa: N806

from __future__ import annotations

from collections import Counter

import simpy

from xpusim.engine.policies import (
    DECODING,
    PREFILLING,
    WAITING,
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
from xpusim.plugins.workloads.serving.schedulers.iteration import WATERMARK


class PrefillFirstScheduler(Scheduler):
    """vLLM V0's default scheduler: prompt-only iterations first, then decode rounds of
    ``spec.steps`` iterations each (multi-step scheduling), optionally with its outputs
    processed one iteration late (``spec.async_output``); see the module docstring."""

    name = "prefill-first"
    description = (
        "vLLM V0's default: prompt-only iterations first, decodes in rounds of `steps` "
        "iterations (multi-step scheduling), recompute preemption, optional asynchronous "
        "output processing"
    )
    multi_step = True
    async_output = True

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The prefill-first loop of one replica; see the module docstring."""
        rep, req = replica, requests
        kv = rep.kv
        B = kv.block_tokens
        total = kv.total_blocks
        admit_limit = total - int(total * WATERMARK)
        blocks = kv.blocks
        win = isinstance(kv, PagedKVCache) and kv.layout is not None
        peak = kv.peak_blocks
        steps = spec.steps
        lag = spec.async_output
        waiting = rep.waiting
        cur_L, cur_m = req.cur_prompt, req.cur_output
        state, seg_max = req.state, req.seg_max
        first_token = req.first_token
        log = rep.log
        log.row_gaps = False
        gaps = log.gap_counts
        # the running requests in admission order, and beside each (same index) the KV
        # tokens it holds and the instant it last received tokens (-1: none yet). A
        # request in `run` with no output left awaits the processing of its last token
        # (async output) and runs its one more iteration. The requests from `due` on are
        # owed the tokens of the last iteration, not yet streamed.
        run: list[int] = []
        held: list[int] = []
        last: list[float] = []
        due = 0
        resumed: dict[int, float] = {}  # preempted requests: their last emission
        fin: list[int] = []  # requests in `run` whose owed tokens are their last
        parked: list[tuple[int, int, float]] = []  # done inside a round, out of the batch,
        # owed their last tokens: (request, blocks held till then, last emission)
        used = 0
        j = 0  # rows logged

        def done(rid: int, t: float) -> None:
            """Request ``rid`` has all its tokens at ``t``, the end of row ``j - 1``."""
            req.fin_iter[rid] = j - 1
            req.seg_start[rid] = j
            finish_request(req, rep, rid, t)

        def stream_one(rid: int, before: float, t: float) -> None:
            """One request, which last received tokens at ``before``, receives its owed
            tokens at ``t``."""
            if before < 0:
                first_token[rid] = t
            else:
                g = t - before
                gaps[g] = gaps.get(g, 0) + 1
                if g > seg_max[rid]:
                    seg_max[rid] = g
            if not cur_m[rid]:
                done(rid, t)

        def flush(t: float) -> bool:
            """Stream every owed token at ``t``; the parked blocks are free again. Whether a
            request in ``run`` got its last token."""
            nonlocal due, used
            k = len(run)
            if due < k:
                seg = last[due:k] if due else last
                ids = run[due:k] if due else run
                counts = Counter(seg)
                fresh = counts.pop(-1.0, 0)  # requests owed their first token
                for before, cnt in counts.items():
                    g = t - before
                    gaps[g] = gaps.get(g, 0) + cnt
                if fresh:
                    for rid, before in zip(ids, seg, strict=True):
                        if before < 0:
                            first_token[rid] = t
                        elif t - before > seg_max[rid]:
                            seg_max[rid] = t - before
                else:
                    for rid, before in zip(ids, seg, strict=True):
                        if t - before > seg_max[rid]:
                            seg_max[rid] = t - before
                last[due:k] = [t] * (k - due)
                due = k
            ended = bool(fin)
            for rid in fin:
                done(rid, t)
            fin.clear()
            for rid, nb, before in parked:
                stream_one(rid, before, t)
                used -= nb
            parked.clear()
            return ended

        def drop_done() -> None:
            """The requests in ``run`` with no output left leave it and free their blocks;
            none is owed tokens after."""
            nonlocal run, held, last, used, due
            stay = [i for i, rid in enumerate(run) if cur_m[rid]]
            used -= sum(blocks(held[i]) for i, rid in enumerate(run) if not cur_m[rid])
            run = [run[i] for i in stay]
            held = [held[i] for i in stay]
            last = [last[i] for i in stay]
            due = len(run)

        while True:
            if not run and not waiting:
                if parked:  # nothing to schedule: the engine processes its outputs now
                    flush(env.now)
                ev = rep.wake = env.event()
                yield ev
                continue
            now = env.now
            # 1. a prefill round: admit prompts in order
            admitted: list[int] = []
            pf_tok = 0
            while waiting and len(run) + len(admitted) < spec.max_batch:
                rid = waiting[0]
                L = cur_L[rid]
                if admitted and pf_tok + L > spec.max_batch_tokens:
                    break
                nb = blocks(L)
                if used + nb > (admit_limit if run or admitted else total):
                    break
                waiting.popleft()
                used += nb
                admitted.append(rid)
                pf_tok += L
                state[rid] = PREFILLING
                if req.first_scheduled[rid] != req.first_scheduled[rid]:  # NaN: first time
                    req.first_scheduled[rid] = now
            if admitted:
                dur, joules, st_i = prices.step(len(admitted), pf_tok, 0, 0, 0)
                yield env.timeout(dur)
                end = now + dur
                log_step(log, now, end, len(admitted), pf_tok, 0, used, st_i, joules)
                j += 1
                if lag and flush(end):  # the previous iteration's outputs, processed now
                    drop_done()
                for rid in admitted:
                    cur_m[rid] -= 1
                    if not cur_m[rid]:
                        fin.append(rid)
                    state[rid] = DECODING
                    run.append(rid)
                    held.append(cur_L[rid])
                    last.append(resumed.pop(rid, -1.0) if resumed else -1.0)
                if not lag and flush(end):
                    drop_done()
                continue
            if not run:
                if parked:  # nothing to schedule: the engine processes its outputs now
                    flush(now)
                    continue
                raise AssertionError(
                    f"replica {rep.index} cannot admit its first request: {used} of {total} "
                    "KV blocks held with nothing running"
                )
            # 2. a decode round: each running request keeps up to `steps` tokens and takes
            # the blocks of the KV the round writes (to its last token at most); the
            # newest are preempted until they fit
            keep = [steps if cur_m[r] > steps else cur_m[r] for r in run]
            if win:
                take = [
                    peak(c + k) - blocks(c) if k else 0 for c, k in zip(held, keep, strict=True)
                ]
            else:
                take = [(-c // B) - (-(c + k) // B) for c, k in zip(held, keep, strict=True)]
            need = sum(take)
            while used + need > total and run:
                i = run.index(max(run))  # ids are in arrival order: the newest
                victim, c, before = run.pop(i), held.pop(i), last.pop(i)
                need -= take.pop(i)
                del keep[i]
                used -= blocks(c)
                if i >= due:  # the engine processes its output before preempting it
                    stream_one(victim, before, now)
                    before = now
                else:
                    due -= 1
                if not cur_m[victim]:  # it was done: it leaves instead
                    fin.remove(victim)
                    continue
                resumed[victim] = before
                cur_L[victim] = c + 1  # its prompt and every token generated so far
                state[victim] = WAITING
                req.preemptions[victim] += 1
                waiting.appendleft(victim)
            if not run:
                continue  # every decode was preempted: the queue's turn
            used += need
            n = len(run)
            short = sorted(k for k in keep if k < steps)  # requests ending in the round
            ctx = sum(held)
            start = now
            gone = 0
            for i in range(steps):
                dur, joules, st_i = prices.step(0, 0, 0, n, ctx)
                yield env.timeout(dur)
                end = start + dur
                while gone < len(short) and short[gone] <= i:
                    gone += 1
                log_step(log, start, end, n, 0, n - gone, used, st_i, joules)
                j += 1
                if lag and not i:  # the previous round's outputs, processed during this step
                    flush(end)
                ctx += n
                start = end
            # the round's tokens are owed to its requests; those done before it leave;
            # each left holds the blocks of its KV (windows give pages back)
            t = start
            used -= need
            leave = False
            for i, rid in enumerate(run):
                c, k = held[i], keep[i]
                if not k:  # done before the round, its tokens since streamed
                    used -= blocks(c)
                    leave = True
                    continue
                m = cur_m[rid] - k
                cur_m[rid] = m
                held[i] = c + k
                used += blocks(c + k) - blocks(c) if win else take[i]
                if m:
                    continue
                if lag and k < steps:  # done inside the round: out of the batch, its
                    # blocks held till its tokens stream
                    parked.append((rid, blocks(c + k), last[i]))
                    leave = True
                else:
                    fin.append(rid)
            if leave:
                stay = [
                    i for i, k in enumerate(keep) if k and (cur_m[run[i]] or not lag or k == steps)
                ]
                run = [run[i] for i in stay]
                held = [held[i] for i in stay]
                last = [last[i] for i in stay]
            due = 0
            if not lag and flush(t):
                drop_done()
