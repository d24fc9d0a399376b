"""The iteration-level batching loop shared by ``continuous`` and ``chunked-prefill``.

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


Fast path. When the world knows every request's replica ahead (``replica.feed``, see
:class:`~xpusim.plugins.workloads.serving.cluster.Replica`), the loop takes its arrivals
itself at each iteration boundary (every request whose arrival instant is at or before
it) and does not yield to SimPy per iteration: nothing outside the replica can change
its state, so it advances its own clock and yields one SimPy event every
:data:`SYNC_ITERATIONS` iterations (and one per idle gap) so that the rest of the world
keeps pace. Between the iterations where something happens, it also fast-forwards
*decode runs*: a sequence of iterations in which no request finishes (the next finishing
iteration is known: a heap of them), none can be admitted (the queue is empty and no
arrival falls before the iteration starts, or the head of the queue does not fit, which
stays true while the run only takes blocks), no preemption is needed (the blocks each
iteration's decodes take are known ahead from the residue counters), and no prefill is
in progress. Such an iteration only advances time by its price and grows the KV use, so
the run is a short loop over prices and block counts whose rows join the step log in
bulk. Every iteration is computed with the same float operations in the same order as
the plain loop, so every per-request time and every token gap is identical to it.

Compiled fast path. A replica on the fast path without sliding-window layers runs the same
loop compiled (:mod:`~xpusim.plugins.workloads.serving.schedulers.native`, a
transliteration with identical results) when the world holds at least
:data:`NATIVE_MIN_REQUESTS` requests, or :data:`NATIVE_MIN_REQUESTS_WARM` once the
compiled loop has run in this process; smaller worlds stay here, where importing the
compiler and loading the compiled loop would cost more than it saves. The environment variable
``XPUSIM_SERVING_LOOP`` set to ``python`` or ``native`` forces one or the other (for a
machine where the compiler does not run, or to compare them).
"""

# B, L and friends are the block size and prompt length of the docs' formulas.
# ruff: noqa: N806

from __future__ import annotations

import os
import sys
import warnings
from array import array
from heapq import heappop, heappush

import simpy

from xpusim.engine.policies import (
    DECODING,
    DONE,
    PREFILLING,
    WAITING,
    Proc,
    ReplicaState,
    RequestState,
    SchedulerSpec,
    StepPrices,
)
from xpusim.plugins.workloads.serving.cluster import Replica
from xpusim.plugins.workloads.serving.kvcache import PagedKVCache

WATERMARK = 0.01
"""Fraction of KV blocks admission leaves free while the replica is busy."""

SYNC_ITERATIONS = 512
"""On the fast path, iterations a replica runs ahead of the SimPy clock before it yields
(bounding how far it runs before the world's periodic work, such as spilling step rows,
gets a turn)."""

INF = float("inf")

NATIVE_MIN_REQUESTS = 100_000
"""Requests a world holds at least for its fast-path replicas to run the compiled loop,
the first time in a process: importing numba and loading the compiled loop take 1.1 to
1.5 s of CPU once, and the compiled loop saves about 10 µs a request of the 1,000,000
synthetic ones of ``benchmarks/serving.py`` (1.5 iterations each), so it pays from
110,000 to 150,000 of those; requests with longer outputs save more each."""

NATIVE_MIN_REQUESTS_WARM = 2_000
"""The same once the compiled loop has run in this process (a sweep or a capacity
search runs many worlds): only the per-replica buffers remain to pay for."""

_NATIVE = "xpusim.plugins.workloads.serving.schedulers.native"

LOOP_ENV = "XPUSIM_SERVING_LOOP"
"""Environment variable forcing the loop: ``python``, ``native`` or ``auto`` (default)."""


def loop_choice() -> str:
    """The loop :data:`LOOP_ENV` asks for: ``python``, ``native`` or ``auto`` (unset);
    anything else is a :class:`ValueError` naming the variable (the serving workload
    checks it when it loads a scenario, before any work)."""
    choice = os.environ.get(LOOP_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "python", "native"):
        raise ValueError(
            f"environment variable {LOOP_ENV}={os.environ[LOOP_ENV]!r} is not a serving "
            "loop: set it to python, native or auto, or unset it"
        )
    return choice


def native_wanted(requests: int) -> bool:
    """Whether the fast-path replicas of a world of ``requests`` requests run the compiled
    loop: as :data:`LOOP_ENV` says, else by :data:`NATIVE_MIN_REQUESTS` (or
    :data:`NATIVE_MIN_REQUESTS_WARM` once the compiled loop has run here)."""
    choice = loop_choice()
    if choice != "auto":
        return choice == "native"
    loaded = sys.modules.get(_NATIVE)
    least = NATIVE_MIN_REQUESTS
    if loaded is not None and getattr(loaded, "warm", False):
        least = min(least, NATIVE_MIN_REQUESTS_WARM)
    return requests >= least


def iterative(
    env: simpy.Environment,
    rep: ReplicaState,
    req: RequestState,
    costs: StepPrices,
    spec: SchedulerSpec,
    split: bool,
) -> Proc:
    """The continuous (``split=False``) or chunked-prefill (``split=True``) loop of one
    replica; see the module docstring for the policy and the fast path."""
    if (
        isinstance(rep, Replica)
        and rep.feed is not None
        and rep.kv.layout is None
        and native_wanted(req.n)
    ):
        try:
            # imported on use: loading the compiler costs more than a small run takes
            from xpusim.plugins.workloads.serving.schedulers import native
        except ImportError as err:  # numba missing or broken here: the same loop in Python
            warnings.warn(
                f"compiled serving loop unavailable ({err}); running it in Python", stacklevel=2
            )
        else:
            if native.serves(rep, req):
                yield from native.iterative_native(env, rep, req, costs, spec, split)
                return
    kv = rep.kv
    B = kv.block_tokens
    total = kv.total_blocks
    admit_limit = total - int(total * WATERMARK)
    growth = kv.growth
    # Sliding-window layers (a PagedKVCache with a windowed layout): the cache counts layer
    # blocks, a sequence's blocks come from kv.blocks, and `need_at` is what the running
    # decodes take by phase. Decided once here: without a window the loop below runs the
    # plain arithmetic inline, and `need_at` is `growth` itself.
    layout = kv.layout if isinstance(kv, PagedKVCache) else None
    win = layout is not None
    need_at = growth
    if layout is not None:
        assert isinstance(kv, PagedKVCache)
        kvb = kv.blocks
        within = kv.tokens_within
        past = kv.past
        all_layers = layout.layers
        window_layers = layout.window_layers
        window = layout.window
        shift = (1 - window) % B  # a class of `past` takes from need_at[(p + shift) % B]
        need_at = [0] * B
        crossed: set[int] = set()  # decoders counted in `past`
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
    finish = req.finish
    extra_gaps = req.extra_gaps
    log = rep.log
    a_start, a_end, a_batch = log.start.append, log.end.append, log.batch.append
    a_pf, a_dec, a_kv = log.prefill.append, log.decode.append, log.kv.append
    a_state, a_j = log.state.append, log.joules.append
    memo = costs.memo
    # the decode-only prices of this replica's runs by one int, ``nb_ << 40 | dc``: the
    # memo's keys are tuples, whose lookup compares five ints; a bucketed decode context
    # (at most twice a 32-bit token count) stays below 2**40
    dmemo: dict[int, tuple[float, float, int]] = {}
    step_cost = costs.step
    bits = costs.bits
    top = 1 << bits
    timeout = env.timeout

    feed = rep.feed if isinstance(rep, Replica) else None
    feed_ids = feed.ids if feed is not None else array("i")  # empty on the plain path
    feed_at = feed.at if feed is not None else None  # arrival instants, by request id
    n_feed = len(feed_ids)
    # the queue is `waiting` (requests preempted, put back at its front) followed by the
    # feed's requests k_adm .. k_feed - 1 (arrived, not yet admitted): on the fast path an
    # arrival is a counter, not an entry of a deque
    k_feed = 0  # next request of the feed not yet arrived
    k_adm = 0  # next request of the feed not yet admitted
    # the instant it arrives at
    nxt = feed_at[feed_ids[0]] if feed_at is not None and n_feed else INF
    t = env.now  # the replica's clock: env.now on the plain path, ahead of it on the fast one
    synced = 0  # iteration of the last yield on the fast path

    fin_at: dict[int, list[int]] = {}
    fin_heap: list[int] = []  # the keys of fin_at
    last_tok_time: dict[int, float] = {}  # preempted decoders: time of their last token
    prefilling: list[list[int]] = []  # [rid, tokens done] of partly prefilled prompts
    n_dec = 0
    sum_ctx = 0
    used = 0
    j = 0

    def newest_running() -> int:
        """The running request (decoding or partly prefilled) that arrived last (the
        largest id: ids are in arrival order); -1 when none runs. A scan over the running
        requests: preemption is rare, so the admissions keep no order for it."""
        best = -1
        for rids in fin_at.values():
            for rid in rids:
                if rid > best and state[rid] == DECODING:
                    best = rid
        for e in prefilling:
            if e[0] > best:
                best = e[0]
        return best

    def enter(rid: int, p: int, held: int, f: int) -> None:
        """(Windowed layouts.) Count decoder ``rid`` of residue class ``p`` (``held`` tokens,
        entering in iteration ``j``, last token in iteration ``f``): every layer's page at
        its page boundaries, and once it holds ``window`` tokens the window's oldest page
        given back, from the iteration after ``j + window - held`` (a crossing event kept in
        the heap of finishing iterations as ``~rid``)."""
        growth[p] += 1
        need_at[p] += all_layers
        if held >= window:
            cross(rid, p)
        else:
            c = j + window - held
            if c < f:
                bucket_ = fin_at.get(c)
                if bucket_ is None:
                    fin_at[c] = [~rid]
                    heappush(fin_heap, c)
                else:
                    bucket_.append(~rid)

    def cross(rid: int, p: int) -> None:
        """(Windowed layouts.) Decoder ``rid`` of class ``p`` now holds ``window`` tokens."""
        crossed.add(rid)
        past[p] += 1
        need_at[(p + shift) % B] -= window_layers

    def crossing(rid: int, i: int) -> None:
        """(Windowed layouts.) The crossing event of iteration ``i`` for ``rid``, unless it
        is stale (the request was preempted or finished since, or already counted)."""
        if state[rid] == DECODING and rid not in crossed:
            k = entry[rid]
            L = cur_L[rid]
            if k + window - L == i:
                cross(rid, (L - k - 1) % B)

    def leave(rid: int, p: int) -> None:
        """(Windowed layouts.) Stop counting decoder ``rid`` of class ``p``."""
        growth[p] -= 1
        need_at[p] -= all_layers
        if rid in crossed:
            crossed.discard(rid)
            past[p] -= 1
            need_at[(p + shift) % B] += window_layers

    def preempt_newest(now: float) -> bool:
        """Preempt the running request that arrived last; False when none runs."""
        nonlocal used, n_dec, sum_ctx
        rid = newest_running()
        if rid >= 0:
            st = state[rid]
            if st == DECODING:
                k = entry[rid]
                L = cur_L[rid]
                ctx = L + j - k - 1
                if win:
                    used -= kvb(ctx)
                    leave(rid, (L - k - 1) % B)
                else:
                    used -= -(-ctx // B)
                    growth[(L - k - 1) % B] -= 1
                n_dec -= 1
                sum_ctx -= ctx
                g = j - k
                a = seg_start[rid]
                if a < j:  # largest gap of the segment that ends here
                    seg_max[rid] = max(seg_max[rid], log.max_gap(a, j))
                last_tok_time[rid] = now
                cur_L[rid] = L + g
                cur_m[rid] -= g
            elif st == PREFILLING:
                for i, e in enumerate(prefilling):
                    if e[0] == rid:
                        used -= kvb(e[1]) if win else -(-e[1] // B)
                        del prefilling[i]
                        break
                else:  # admitted this iteration and not yet in the list: cannot happen
                    raise AssertionError(rid)
            state[rid] = WAITING
            req.preemptions[rid] += 1
            waiting.appendleft(rid)
            return True
        return False

    while True:
        if feed_at is not None:
            # queue every request of the feed that has arrived by now
            if nxt <= t:
                k0 = k_feed
                while nxt <= t:
                    k_feed += 1
                    nxt = feed_at[feed_ids[k_feed]] if k_feed < n_feed else INF
                rep.outstanding += k_feed - k0
            if j - synced >= SYNC_ITERATIONS:
                synced = j
                if t > env.now:
                    yield timeout(t - env.now)
        if not n_dec and not prefilling and not waiting and k_adm == k_feed:
            if feed_at is None:
                ev = rep.wake = env.event()
                yield ev
                t = env.now
                continue
            if k_feed == n_feed:
                return  # nothing runs, nothing waits and nothing more will come
            t = nxt
            if t > env.now:
                yield timeout(t - env.now)
            continue
        now = t
        # 1. blocks for this iteration's decode tokens; preempt until they fit
        need = need_at[(-j) % B] if n_dec else 0
        while used + need > total:
            if not preempt_newest(now):
                raise AssertionError("KV cache overflow with nothing to preempt")
            need = need_at[(-j) % B] if n_dec else 0
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
                if win:
                    held = kvb(d)
                    extra = kvb(d + c) - held
                    if used + extra > total:
                        c = within(total - used + held, d + c) - d
                        if c <= 0:
                            break
                        extra = kvb(d + c) - held
                else:
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
        while n_run < max_batch:
            if waiting:
                rid = waiting[0]
            elif k_adm < k_feed:
                rid = feed_ids[k_adm]
            else:
                break
            L = cur_L[rid]
            if split:
                if room <= 0:
                    break
                c = L if room > L else room
            else:
                c = L
                if pf_n and c > room:
                    break
            nb = kvb(c) if win else -(-c // B)
            if used + nb > (admit_limit if n_run else total):
                break
            if waiting:
                waiting.popleft()
                if first_sched[rid] != first_sched[rid]:  # NaN: never scheduled before
                    first_sched[rid] = now
            else:  # a request of the feed is scheduled for the first time
                k_adm += 1
                first_sched[rid] = now
            used += nb
            n_run += 1
            pf_n += 1
            pf_tok += c
            room -= c
            state[rid] = PREFILLING
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
                f"held, {len(waiting) + k_feed - k_adm} waiting"
            )
        # 3. price and run the iteration
        # CostTable.step's key inlined: mean chunk, mean cached context, decode batch and
        # mean decode context, each to `bits` significant bits (0 where there are none)
        if pf_n:
            pt = (pf_tok + pf_n // 2) // pf_n or 1
            if pt >= top:
                e_ = pt.bit_length() - bits
                pt = ((pt + (1 << (e_ - 1))) >> e_) << e_
            pc = (pf_ctx + pf_n // 2) // pf_n
            if pc >= top:
                e_ = pc.bit_length() - bits
                pc = ((pc + (1 << (e_ - 1))) >> e_) << e_
        else:
            pt = pc = 0
        if n_dec:
            nb_ = n_dec
            if nb_ >= top:
                e_ = nb_.bit_length() - bits
                nb_ = ((nb_ + (1 << (e_ - 1))) >> e_) << e_
            dc = (sum_ctx + n_dec // 2) // n_dec
            if dc >= top:
                e_ = dc.bit_length() - bits
                dc = ((dc + (1 << (e_ - 1))) >> e_) << e_
        else:
            nb_ = dc = 0
        got = memo.get((pf_n, pt, pc, nb_, dc))
        dur, joules, st_i = (
            got if got is not None else step_cost(pf_n, pf_tok, pf_ctx, n_dec, sum_ctx)
        )
        if feed_at is None:
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
        # 4. decodes got their token (the ones that are done retire below, after step 5:
        # a request starting to decode now finishes after iteration j, so the order of the
        # two only changes the order of integer additions)
        sum_ctx += n_dec
        # 5. completed prefills emit their first token and start decoding
        if done_pf:
            if split and prefilling:
                prefilling[:] = [e for e in prefilling if e[1] < cur_L[e[0]]]
            for rid in done_pf:
                # a request that emitted a token before was preempted while decoding, and
                # its last token waits in last_tok_time until this first one after it
                if not last_tok_time or rid not in last_tok_time:
                    first_tok[rid] = end
                else:  # resumed after preemption: one explicit gap
                    gap = end - last_tok_time.pop(rid)
                    extra_gaps.append(gap)
                    if gap > seg_max[rid]:
                        seg_max[rid] = gap
                L = cur_L[rid]
                m = cur_m[rid]
                if m == 1:
                    used -= kvb(L) if win else -(-L // B)
                    fin_iter[rid] = j
                    seg_start[rid] = j + 1
                    state[rid] = DONE
                    finish[rid] = end
                    req.done += 1
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
                    heappush(fin_heap, f)
                else:
                    bucket_.append(rid)
                if win:
                    enter(rid, (L - j - 1) % B, L, f)
                else:
                    growth[(L - j - 1) % B] += 1
                n_dec += 1
                sum_ctx += L
        t = end
        i = j  # the iteration that ran last, ending at t
        # the fast path's decode runs (6.), on the fast path and with no prefill in progress
        run = feed_at is not None and not prefilling
        while True:
            # 4. (continued) retire the requests whose last token came in iteration i and
            # free their blocks; counted here and written back once
            if fin_heap and fin_heap[0] == i:
                heappop(fin_heap)
                gone = 0
                for rid in fin_at.pop(i):
                    if rid < 0:  # a decoder reaching the window (windowed layouts)
                        crossing(~rid, i)
                        continue
                    if state[rid] != DECODING or fin_iter[rid] != i:
                        continue  # preempted since, or finishing another time
                    L = cur_L[rid]
                    k = entry[rid]
                    ctx = L + i - k
                    if win:
                        used -= kvb(ctx)
                        leave(rid, (L - k - 1) % B)
                    else:
                        used -= -(-ctx // B)
                        growth[(L - k - 1) % B] -= 1
                    sum_ctx -= ctx
                    state[rid] = DONE
                    finish[rid] = t
                    gone += 1
                if gone:
                    n_dec -= gone
                    req.done += gone
                    rep.outstanding -= gone
            i += 1
            if not run or not n_dec:
                break
            # 6. fast path: a decode run from iteration i up to the next iteration where
            # something can happen, at most to `stop`, whose requests retire above
            stop = fin_heap[0]
            # what the run may not pass: an admission (a free seat and either a queued head
            # that fits or an arrival), a preemption
            room = budget - n_dec
            open_ = n_dec < max_batch and (room > 0 or not split)
            head_nb = -1  # blocks the queue's head needs (-1: the queue is empty)
            if open_:
                if waiting or k_adm < k_feed:
                    L = cur_L[waiting[0] if waiting else feed_ids[k_adm]]
                    c = L if not split or room > L else room
                    head_nb = kvb(c) if win else -(-c // B)
                elif nxt <= t:
                    break  # an arrival to queue and maybe admit: the plain loop's turn
            nb_ = n_dec
            if nb_ >= top:
                e_ = nb_.bit_length() - bits
                nb_ = ((nb_ + (1 << (e_ - 1))) >> e_) << e_
            # the mean decode context grows by exactly one token an iteration: its bucket,
            # and so the price, changes only when it reaches `dc_next`
            dcr = (sum_ctx + n_dec // 2) // n_dec
            dc_next = dcr
            cut = False
            while True:
                u = used + need_at[(-i) % B]
                if u > total:
                    cut = True  # a preemption: the plain loop decides it
                    break
                if open_:
                    if head_nb >= 0:
                        if u + head_nb <= admit_limit:
                            cut = True  # the head fits: the plain loop admits it
                            break
                        # and it never will while the run only takes blocks; a window's
                        # freed pages may make room, so a windowed run keeps looking
                        open_ = win
                    elif nxt <= t:
                        cut = True  # an arrival to queue and maybe admit
                        break
                if dcr >= dc_next:
                    if dcr >= top:
                        e_ = dcr.bit_length() - bits
                        h_ = 1 << (e_ - 1)
                        dc = ((dcr + h_) >> e_) << e_
                        dc_next = dc + h_
                    else:
                        dc = dcr
                        dc_next = dcr + 1
                    got = dmemo.get(nb_ << 40 | dc)
                    if got is None:
                        got = memo.get((0, 0, 0, nb_, dc))
                        if got is None:
                            got = step_cost(0, 0, 0, n_dec, sum_ctx)
                        dmemo[nb_ << 40 | dc] = got
                    dur, joules, st_i = got
                end = t + dur
                a_start(t)
                a_end(end)
                a_batch(n_dec)
                a_pf(0)
                a_dec(n_dec)
                a_kv(u)
                a_state(st_i)
                a_j(joules)
                used = u
                sum_ctx += n_dec
                dcr += 1
                t = end
                if i == stop:
                    break
                i += 1
            if cut:
                break
        j = i
