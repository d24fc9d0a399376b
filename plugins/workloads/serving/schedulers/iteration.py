"""Batch schedulers: one SimPy process per replica, one SimPy event per iteration.

``static`` — request-level batching (FasterTransformer / early HF ``generate``). When the
replica is free it takes up to ``max_batch`` waiting requests (after waiting up to
``max_wait`` for the batch to fill) whose whole KV (prompt + output) fits, runs one
prefill of all prompts and then decode iterations over the full batch until the
longest output is done; shorter requests pad along, and every request of the batch is
returned when the batch ends (Orca's motivating problem). No preemption.

``continuous`` — iteration-level batching (Orca, vLLM). Before every iteration the
scheduler admits waiting requests in arrival order while the batch has room
(``max_batch`` sequences, ``max_batch_tokens`` tokens counting one per decode) and the KV
cache has blocks for their whole prompt. Admitted prompts are prefilled *fused* with the
decodes of the running requests in the same iteration (Orca-style selective batching,
as vLLM V1 does) rather than in separate prefill-only iterations, so every running
request gets one token per iteration and a long prompt shows up as one long iteration
(the "generation stall"). A prompt longer than ``max_batch_tokens`` is admitted alone.

``chunked-prefill`` — Sarathi-Serve stall-free batching. Each iteration has a token
budget of ``min(chunk, max_batch_tokens)``: all running decodes first (one token each),
then the remaining budget goes to prefill chunks, continuing partly prefilled prompts
first and then admitting new ones; a prompt is split over as many iterations as its
length needs. KV blocks are taken per chunk.

Preemption (continuous and chunked): before an iteration, running decodes that cross a
block boundary need a new block each. When the free blocks do not cover them, the
running request that arrived last is preempted recompute-style (vLLM's default): its
blocks are freed and it goes back to the front of the queue; when readmitted it
prefills its prompt plus the tokens it had generated and continues. Admission keeps 1 %
of the blocks free as a watermark (as vLLM does) so that a newly admitted request does
not force an immediate preemption.

Time between tokens: iterations of a replica run back to back while it holds any
running request, so a token produced by a decode in iteration ``j`` waited exactly the
duration of iteration ``j``. The step log's ``decode_tokens`` is therefore the exact
weight of each iteration's duration in the distribution of token gaps; the only other
gaps are the first token after a preemption (recorded one by one).
"""

# B, L and friends are the block size and prompt length of the docs' formulas.
# ruff: noqa: N806

from __future__ import annotations

from collections.abc import Generator
from heapq import heappop, heappush
from typing import Any, Literal

import simpy
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.qty import DurationOrZero
from xpusim.plugins.workloads.serving.cluster import (
    DECODING,
    DONE,
    PREFILLING,
    WAITING,
    CostTable,
    Replica,
    RequestTable,
)

SCHEDULERS = ("static", "continuous", "chunked-prefill")
"""Scheduler kinds a scenario may name in ``workload.scheduler.kind``."""

WATERMARK = 0.01
"""Fraction of KV blocks admission leaves free while the replica is busy."""


class SchedulerSpec(BaseModel):
    """The ``workload.scheduler`` block."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["static", "continuous", "chunked-prefill"] = "continuous"
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


Proc = Generator[simpy.Event, Any, None]


def _finish_request(req: RequestTable, rid: int, t: float) -> None:
    req.state[rid] = DONE
    req.finish[rid] = t
    req.done += 1


def iterative(
    env: simpy.Environment,
    rep: Replica,
    req: RequestTable,
    costs: CostTable,
    spec: SchedulerSpec,
    split: bool,
) -> Proc:
    """The continuous (``split=False``) or chunked-prefill (``split=True``) loop of one
    replica; see the module docstring for the policy."""
    B = rep.kv.block_tokens
    total = rep.kv.total_blocks
    admit_limit = total - int(total * WATERMARK)
    growth = rep.kv.growth
    max_batch = spec.max_batch
    budget = min(spec.chunk, spec.max_batch_tokens) if split else spec.max_batch_tokens
    waiting = rep.waiting
    cur_L = req.cur_prompt
    cur_m = req.cur_output
    entry = req.entry
    fin_iter = req.fin_iter
    seg_start = req.seg_start
    seg_max = req.seg_max
    state = req.state
    first_sched = req.first_scheduled
    first_tok = req.first_token
    extra_gaps = req.extra_gaps
    log = rep.log
    a_start, a_end, a_batch = log.start.append, log.end.append, log.batch.append
    a_pf, a_dec, a_kv = log.prefill.append, log.decode.append, log.kv.append
    a_state, a_j = log.state.append, log.joules.append
    l_start, l_end = log.start, log.end
    memo = costs.memo
    step_cost = costs.step
    bits = costs.bits
    timeout = env.timeout

    fin_at: dict[int, list[int]] = {}
    last_tok_time: dict[int, float] = {}  # preempted decoders: time of their last token
    newest: list[int] = []  # heap of -request_id over running requests
    prefilling: list[list[int]] = []  # [rid, tokens done] of partly prefilled prompts
    n_dec = 0
    sum_ctx = 0
    used = 0
    j = 0

    def preempt_newest(now: float) -> bool:
        """Preempt the running request that arrived last; False when none runs."""
        nonlocal used, n_dec, sum_ctx
        while newest:
            rid = -heappop(newest)
            st = state[rid]
            if st == DECODING:
                k = entry[rid]
                L = cur_L[rid]
                ctx = L + j - k - 1
                used -= -(-ctx // B)
                growth[(L - k - 1) % B] -= 1
                n_dec -= 1
                sum_ctx -= ctx
                g = j - k
                a = seg_start[rid]
                if a < j:  # largest gap of the segment that ends here
                    seg_max[rid] = max(
                        seg_max[rid],
                        max(e - s for s, e in zip(l_start[a:j], l_end[a:j], strict=True)),
                    )
                last_tok_time[rid] = now
                cur_L[rid] = L + g
                cur_m[rid] -= g
            elif st == PREFILLING:
                for i, e in enumerate(prefilling):
                    if e[0] == rid:
                        used -= -(-e[1] // B)
                        del prefilling[i]
                        break
                else:  # admitted this iteration and not yet in the list: cannot happen
                    raise AssertionError(rid)
            else:
                continue
            state[rid] = WAITING
            req.preemptions[rid] += 1
            waiting.appendleft(rid)
            return True
        return False

    while True:
        if not n_dec and not prefilling and not waiting:
            ev = rep.wake = env.event()
            yield ev
            continue
        now = env.now
        # 1. blocks for this iteration's decode tokens; preempt until they fit
        need = growth[(-j) % B] if n_dec else 0
        while used + need > total:
            if not preempt_newest(now):
                raise AssertionError("KV cache overflow with nothing to preempt")
            need = growth[(-j) % B] if n_dec else 0
        used += need
        # 2. prefill work within the token budget
        pf_n = pf_tok = pf_ctx = 0
        room = budget - n_dec
        done_pf: list[int] = []
        if prefilling:
            for e in prefilling:
                if room <= 0:
                    break
                rid, d = e
                c = min(room, cur_L[rid] - d)
                held = -(-d // B)
                extra = -(-(d + c) // B) - held
                if used + extra > total:
                    c = min(c, (total - used + held) * B - d)
                    if c <= 0:
                        break
                    extra = -(-(d + c) // B) - held
                used += extra
                e[1] = d + c
                pf_n += 1
                pf_tok += c
                pf_ctx += d
                room -= c
                if d + c == cur_L[rid]:
                    done_pf.append(rid)
        n_run = n_dec + len(prefilling)
        while waiting and n_run < max_batch:
            rid = waiting[0]
            L = cur_L[rid]
            if split:
                if room <= 0:
                    break
                c = L if room > L else room
            else:
                c = L
                if pf_n and c > room:
                    break
            nb = -(-c // B)
            if used + nb > (admit_limit if n_run else total):
                break
            waiting.popleft()
            used += nb
            n_run += 1
            pf_n += 1
            pf_tok += c
            room -= c
            state[rid] = PREFILLING
            heappush(newest, -rid)
            if first_sched[rid] != first_sched[rid]:
                first_sched[rid] = now
            if c == L:
                done_pf.append(rid)
            else:
                prefilling.append([rid, c])
        if not pf_n and not n_dec:
            # partly prefilled prompts hold the blocks the oldest one needs: free some
            if len(prefilling) > 1 and preempt_newest(now):
                used -= need
                continue
            raise AssertionError(
                f"replica {rep.index} cannot make progress: {used} of {total} KV blocks "
                f"held, {len(waiting)} waiting"
            )
        # 3. price and run the iteration
        if pf_n:
            hit = step_cost(pf_n, pf_tok, pf_ctx, n_dec, sum_ctx)
        else:
            # decode-only fast path (inlined CostTable.step key)
            nb_ = n_dec
            if nb_ >= (1 << bits):
                e_ = nb_.bit_length() - bits
                nb_ = ((nb_ + (1 << (e_ - 1))) >> e_) << e_
            dc = (sum_ctx + n_dec // 2) // n_dec
            if dc >= (1 << bits):
                e_ = dc.bit_length() - bits
                dc = ((dc + (1 << (e_ - 1))) >> e_) << e_
            got = memo.get((0, 0, 0, nb_, dc))
            hit = got if got is not None else step_cost(0, 0, 0, n_dec, sum_ctx)
        dur, joules, st_i = hit
        yield timeout(dur)
        end = now + dur
        a_start(now)
        a_end(end)
        a_batch(pf_n + n_dec)
        a_pf(pf_tok)
        a_dec(n_dec)
        a_kv(used)
        a_state(st_i)
        a_j(joules)
        # 4. decodes got their token; retire the ones that are done
        sum_ctx += n_dec
        lst = fin_at.pop(j, None)
        if lst is not None:
            for rid in lst:
                if state[rid] != DECODING or fin_iter[rid] != j:
                    continue
                L = cur_L[rid]
                k = entry[rid]
                ctx = L + j - k
                used -= -(-ctx // B)
                growth[(L - k - 1) % B] -= 1
                n_dec -= 1
                sum_ctx -= ctx
                _finish_request(req, rid, end)
                rep.outstanding -= 1
        # 5. completed prefills emit their first token and start decoding
        if done_pf:
            if split and prefilling:
                prefilling[:] = [e for e in prefilling if e[1] < cur_L[e[0]]]
            for rid in done_pf:
                if first_tok[rid] != first_tok[rid]:
                    first_tok[rid] = end
                else:  # resumed after preemption: one explicit gap
                    gap = end - last_tok_time.pop(rid)
                    extra_gaps.append(gap)
                    if gap > seg_max[rid]:
                        seg_max[rid] = gap
                L = cur_L[rid]
                m = cur_m[rid]
                if m == 1:
                    used -= -(-L // B)
                    fin_iter[rid] = j
                    seg_start[rid] = j + 1
                    _finish_request(req, rid, end)
                    rep.outstanding -= 1
                    continue
                state[rid] = DECODING
                entry[rid] = j
                f = j + m - 1
                fin_iter[rid] = f
                seg_start[rid] = j + 1
                bucket_ = fin_at.get(f)
                if bucket_ is None:
                    fin_at[f] = [rid]
                else:
                    bucket_.append(rid)
                growth[(L - j - 1) % B] += 1
                n_dec += 1
                sum_ctx += L
        j += 1


def static(
    env: simpy.Environment,
    rep: Replica,
    req: RequestTable,
    costs: CostTable,
    spec: SchedulerSpec,
) -> Proc:
    """The static-batching loop of one replica; see the module docstring."""
    B = rep.kv.block_tokens
    total = rep.kv.total_blocks
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
            nb = -(-(L_all[rid] + M_all[rid] - 1) // B)
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
        _log(log, now, t, k, ptok, 0, -(-ptok // B), st_i, joules)
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
            _log(log, s, t, k, 0, n_alive, -(-ctx // B), st_i, joules)
            j += 1
        for r, m in zip(batch, outs, strict=True):
            req.fin_iter[r] = j0 + m - 1
            req.seg_start[r] = j0 + 1
            _finish_request(req, r, t)
            rep.outstanding -= 1


def _log(
    log: Any, s: float, e: float, batch: int, pf: int, dec: int, kv: int, st: int, joules: float
) -> None:
    log.start.append(s)
    log.end.append(e)
    log.batch.append(batch)
    log.prefill.append(pf)
    log.decode.append(dec)
    log.kv.append(kv)
    log.state.append(st)
    log.joules.append(joules)
