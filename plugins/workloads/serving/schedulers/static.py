"""The ``static`` scheduler.

``static`` — request-level batching (FasterTransformer / early HF ``generate``). When the
replica is free it takes up to ``max_batch`` waiting requests (after waiting up to
``max_wait`` for the batch to fill) whose whole KV (prompt + output) fits, runs one
prefill of all prompts and then decode iterations over the full batch until the
longest output is done; shorter requests pad along, and every request of the batch is
returned when the batch ends (Orca's motivating problem). No preemption.

With sliding-window layers (a cache of layer blocks, :mod:`~.kvcache`) a request reserves
the most blocks it holds on its way to its whole sequence
(:meth:`~.kvcache.PagedKVCache.peak_blocks`) and the step log reports the blocks the
batch's sequences hold, each by :meth:`~.kvcache.PagedKVCache.blocks`.
"""

# B and L are the block size and prompt length of the docs' formulas.
# ruff: noqa: N806

from __future__ import annotations

import simpy

from xpusim.engine.policies import (
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


class StaticScheduler(Scheduler):
    """Request-level batching: a batch runs from its prefill until its longest output is
    done (see the module docstring)."""

    name = "static"
    description = "request-level batching: a batch runs to its longest output, no preemption"

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The static-batching loop of one replica; see the module docstring."""
        rep, req, costs = replica, requests, prices
        kv = rep.kv
        B = kv.block_tokens
        total = kv.total_blocks
        # a windowed cache's arithmetic (decided once: without a window it stays inline)
        win = isinstance(kv, PagedKVCache) and kv.layout is not None
        if win:
            assert isinstance(kv, PagedKVCache)
            blocks, peak = kv.blocks, kv.peak_blocks
        waiting = rep.waiting
        max_batch = spec.max_batch
        max_wait = spec.max_wait
        arrival = req.arrival
        L_all = req.prompt
        M_all = req.output
        log = rep.log
        j = 0
        while True:
            if not waiting:
                ev = rep.wake = env.event()
                yield ev
                continue
            now = env.now
            if len(waiting) < max_batch and max_wait > 0:
                deadline = arrival[waiting[0]] + max_wait
                if now < deadline:
                    ev = rep.wake = env.event()
                    yield ev | env.timeout(deadline - now)
                    rep.wake = None
                    continue
            batch: list[int] = []
            used = 0
            while waiting and len(batch) < max_batch:
                rid = waiting[0]
                span = L_all[rid] + M_all[rid] - 1
                nb = peak(span) if win else -(-span // B)
                if used + nb > total:
                    break
                waiting.popleft()
                batch.append(rid)
                used += nb
            if not batch:
                raise AssertionError(f"replica {rep.index}: a request does not fit an empty cache")
            k = len(batch)
            lens = [L_all[r] for r in batch]
            outs = [M_all[r] for r in batch]
            ptok = sum(lens)
            for r in batch:
                req.state[r] = PREFILLING
                req.first_scheduled[r] = now
            # prefill of every prompt
            dur, joules, st_i = costs.step(k, ptok, 0, 0, 0)
            yield env.timeout(dur)
            t = now + dur
            held = sum(blocks(x) for x in lens) if win else sum(-(-x // B) for x in lens)
            log_step(log, now, t, k, ptok, 0, held, st_i, joules)
            j0 = j
            j += 1
            for r in batch:
                req.first_token[r] = t
            # decode until the longest output is done; the batch keeps its size (padding)
            longest = max(outs)
            alive = sorted(outs, reverse=True)
            n_alive = k
            ctx = ptok
            for i in range(1, longest):
                while n_alive and alive[n_alive - 1] - 1 < i:
                    n_alive -= 1
                dur, joules, st_i = costs.step(0, 0, 0, k, ctx)
                s = t
                yield env.timeout(dur)
                t = s + dur
                ctx += k
                # a request's KV stops at its last token (what admission reserved for it):
                # the padding that rides along to the longest output is computed, not kept
                kept = [x + min(i, m - 1) for x, m in zip(lens, outs, strict=True)]
                held = sum(blocks(c) for c in kept) if win else sum(-(-c // B) for c in kept)
                log_step(log, s, t, k, 0, n_alive, held, st_i, joules)
                j += 1
            for r, m in zip(batch, outs, strict=True):
                req.fin_iter[r] = j0 + m - 1
                req.seg_start[r] = j0 + 1
                finish_request(req, rep, r, t)
