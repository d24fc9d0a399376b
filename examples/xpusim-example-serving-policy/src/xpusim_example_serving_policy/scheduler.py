"""The ``shortest-prompt-first`` scheduler: iteration-level batching, shortest prompt first.

Iteration-level batching as in Orca and vLLM (the built-in ``continuous`` policy), with one
change: before every iteration the waiting requests are ordered by prompt length, shortest
first (ties by arrival), instead of by arrival. Ordering a queue shortest job first
minimises the mean waiting time of a single server (Smith's rule); in LLM serving the
prompt is the part of a request's length known at arrival, and its prefill is the work
that stands before the first token, so serving short prompts first cuts the mean
time-to-first-token. Recent serving systems use the same idea with a predicted output
length (Qiu et al. 2024, "Efficient interactive LLM serving with proxy model-based
sequence length prediction") or with a skip-join multi-level feedback queue that
approximates it without a prediction (Wu et al. 2023, FastServe).

One iteration:

1. **Admission.** The waiting queue is sorted by ``(prompt tokens, request id)`` and its
   head is admitted while the batch holds fewer than ``spec.max_batch`` sequences, the
   prompts admitted in this iteration fit ``spec.max_batch_tokens`` minus one token per
   running decode (a longer prompt is admitted alone), and the KV cache has blocks free
   for the request's *whole* need, prompt plus output. Admission stops at the first
   request that does not fit, so every request admitted at an instant has a prompt no
   longer than any request left waiting at that instant.
2. **The step.** The admitted prompts are prefilled whole, fused with one decode token of
   every running request, priced with ``prices.step`` and run as one SimPy timeout.
3. **Bookkeeping.** A finished prefill gives the request its first token; a request whose
   last token was produced finishes (:func:`~xpusim.engine.policies.finish_request`) and
   its blocks return to the cache.

Because admission reserves a request's whole KV need (as Orca reserves the maximum
sequence length), the cache can never overflow and the policy needs no preemption. The
step log's ``kv_blocks_used`` reports the blocks the written tokens occupy, which never
exceed the reservations. The price of the reservation is a smaller batch than a policy
that allocates blocks as tokens are written, and the price of shortest-first is that a
long prompt waits while shorter ones keep arriving (starvation under sustained overload;
every request still finishes once arrivals stop).
"""

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


class ShortestPromptFirstScheduler(Scheduler):
    """Iteration-level batching that admits the shortest waiting prompts first and
    reserves each request's whole KV need (see the module docstring)."""

    name = "shortest-prompt-first"
    description = "iteration-level batching admitting the shortest waiting prompt first (SJF)"

    def process(
        self,
        env: simpy.Environment,
        replica: ReplicaState,
        requests: RequestState,
        prices: StepPrices,
        spec: SchedulerSpec,
    ) -> Proc:
        """The shortest-prompt-first loop of ``replica``: one SimPy timeout per iteration,
        idle on ``replica.wake`` while nothing waits or runs."""
        req = requests
        kv = replica.kv
        total = kv.total_blocks
        waiting = replica.waiting
        prompt, output = req.prompt, req.output
        reserved = 0  # blocks promised to admitted requests (their whole need)
        decoding: list[int] = []  # request ids producing one token per iteration
        j = 0  # iterations of this replica so far

        def need(rid: int) -> int:
            """The most KV request ``rid`` holds on its way to its last token (the cache
            counts it, sliding-window layers included)."""
            return kv.peak_blocks(prompt[rid] + output[rid] - 1)

        while True:
            if not decoding and not waiting:
                replica.wake = env.event()
                yield replica.wake
                continue
            now = env.now

            # 1. admission: the shortest prompts first, while batch, budget and cache allow
            admitted: list[int] = []
            pf_tok = 0
            if waiting:
                order = sorted(waiting, key=lambda rid: (prompt[rid], rid))
                waiting.clear()
                waiting.extend(order)
                room = spec.max_batch_tokens - len(decoding)
                while waiting and len(decoding) + len(admitted) < spec.max_batch:
                    rid = waiting[0]
                    if admitted and pf_tok + prompt[rid] > room:
                        break  # prompt budget spent (a long prompt may go alone)
                    if reserved + need(rid) > total:
                        break  # its whole KV need does not fit yet
                    waiting.popleft()
                    reserved += need(rid)
                    admitted.append(rid)
                    pf_tok += prompt[rid]
                    req.state[rid] = PREFILLING
                    req.first_scheduled[rid] = now
            if not admitted and not decoding:
                raise AssertionError(
                    f"replica {replica.index}: request {waiting[0]} does not fit an empty "
                    f"cache of {total} blocks"
                )

            # 2. one fused iteration: the admitted prefills and a token of every decode
            n_dec = len(decoding)
            dec_ctx = sum(prompt[r] + j - req.entry[r] - 1 for r in decoding)
            secs, joules, state = prices.step(len(admitted), pf_tok, 0, n_dec, dec_ctx)
            yield env.timeout(secs)
            end = now + secs

            # 3. decodes wrote their token; retire the ones that produced their last
            running: list[int] = []
            for rid in decoding:
                if req.fin_iter[rid] == j:
                    reserved -= need(rid)
                    finish_request(req, replica, rid, end)
                else:
                    running.append(rid)
            # prefills gave their first token; one-token requests are done already
            for rid in admitted:
                req.first_token[rid] = end
                req.seg_start[rid] = j + 1
                req.fin_iter[rid] = j + output[rid] - 1
                if output[rid] == 1:
                    reserved -= need(rid)
                    finish_request(req, replica, rid, end)
                    continue
                req.state[rid] = DECODING
                req.entry[rid] = j
                running.append(rid)
            decoding = running
            held = sum(kv.blocks(prompt[r] + j - req.entry[r]) for r in decoding)
            log_step(
                replica.log, now, end, len(admitted) + n_dec, pf_tok, n_dec, held, state, joules
            )
            j += 1
