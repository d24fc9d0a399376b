"""The LLM serving world: arrivals, a router, replicas with schedulers and KV caches.

:func:`simulate_serving` replays a request frame (:data:`engine.traces.REQUEST_SCHEMA`)
on one system and returns its frames (``requests``, ``steps``, ``devices``, ``tbt``; see
:mod:`engine.sim.events`). One SimPy process feeds arrivals through the router; one
process per replica runs its scheduler (:mod:`engine.sim.schedulers`), one SimPy event
per iteration. Requests whose KV cache need (prompt + output − 1 tokens) exceeds a
replica's whole cache are dropped up front with a reason and never routed.

Token-gap exactness: ``tbt_mean_s`` is ``(last token − first token) / (output − 1)``;
``tbt_max_s`` is the maximum of the iteration durations over the request's decode
iterations (a sparse-table range maximum per replica) and of the gaps around any
preemption; the ``tbt`` frame is the exact multiset of all gaps (iteration durations
weighted by the decode tokens of the iteration, plus each post-preemption gap).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import simpy

from engine.backend import Compiled
from engine.errors import DoesNotFitError
from engine.sim import schedulers
from engine.sim.cluster import DONE, DROPPED, CostTable, Replica, RequestTable
from engine.sim.events import (
    REQUESTS_SCHEMA,
    STEPS_SCHEMA,
    TBT_SCHEMA,
    device_timeline,
    empty,
)
from engine.sim.router import make_router
from engine.sim.schedulers import SchedulerSpec
from engine.traces import REQUEST_SCHEMA


@dataclass
class ServingResult:
    """Frames of one simulated system and its simulated span in seconds."""

    frames: dict[str, pl.DataFrame]
    simulated_s: float
    replicas: int
    kv_blocks: int
    cost_misses: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max(values[lo[i]:hi[i] + 1])`` for every ``i`` (all ranges non-empty)."""
    out = np.empty(lo.size)
    if lo.size == 0:
        return out
    levels = [values]
    span = 1
    longest = int((hi - lo).max()) + 1
    while span * 2 <= longest:
        prev = levels[-1]
        levels.append(np.maximum(prev[:-span], prev[span:]))
        span *= 2
    length = hi - lo + 1
    k = np.floor(np.log2(length)).astype(np.int64)
    for lvl in np.unique(k):
        sel = k == lvl
        tab = levels[int(lvl)]
        a = lo[sel]
        b = hi[sel] - (1 << int(lvl)) + 1
        out[sel] = np.maximum(tab[a], tab[b])
    return out


def simulate_serving(
    requests: pl.DataFrame,
    compiled: Compiled,
    *,
    system: str,
    replicas: int,
    devices_per_replica: int,
    scheduler: SchedulerSpec | None = None,
    router: str = "round-robin",
    kv_block_tokens: int = 16,
    kv_capacity_tokens: int | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> ServingResult:
    """Replay ``requests`` on ``replicas`` replicas of ``compiled`` and return the frames.

    ``kv_capacity_tokens`` defaults to ``compiled.kv_capacity_tokens()``; it is rounded
    down to whole blocks of ``kv_block_tokens``. Raises
    :class:`~engine.errors.DoesNotFitError` when not one block fits.
    """
    spec = scheduler or SchedulerSpec()
    missing = [c for c in REQUEST_SCHEMA if c not in requests.columns]
    if missing:
        raise ValueError(f"request frame lacks column(s) {missing}")
    if kv_block_tokens < 1:
        raise ValueError(f"kv_block_tokens must be >= 1, got {kv_block_tokens}")
    cap = compiled.kv_capacity_tokens() if kv_capacity_tokens is None else kv_capacity_tokens
    blocks = int(cap) // kv_block_tokens
    if blocks < 1:
        raise DoesNotFitError(
            f"system {system!r}: the model's weights leave no room for a KV cache "
            f"({cap} tokens, less than one block of {kv_block_tokens}); use more devices per "
            "replica (tensor parallelism) or a device with more memory."
        )
    requests = requests.sort("arrival_s", maintain_order=True)
    arrival = requests["arrival_s"].to_list()
    prompt = requests["prompt_tokens"].to_list()
    output = requests["output_tokens"].to_list()
    n = len(arrival)
    req = RequestTable(arrival, prompt, output)

    # drop requests that cannot fit even alone
    p_np = requests["prompt_tokens"].to_numpy()
    o_np = requests["output_tokens"].to_numpy()
    need_tok = p_np + o_np - 1
    need_blocks = -(-need_tok // kv_block_tokens)
    drop = need_blocks > blocks
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(drop).tolist():
        req.state[i] = DROPPED
        reasons[i] = (
            f"needs {int(need_tok[i])} KV tokens, a replica holds "
            f"{blocks * kv_block_tokens}"
        )

    env = simpy.Environment()
    costs = CostTable(compiled, spec.shape_bits, spec.grid_bits)
    reps = [Replica(i, blocks, kv_block_tokens) for i in range(replicas)]
    for r in reps:
        if spec.kind == "static":
            env.process(schedulers.static(env, r, req, costs, spec))
        else:
            env.process(schedulers.iterative(env, r, req, costs, spec,
                                             split=spec.kind == "chunked-prefill"))
    route = make_router(router)
    env.process(_arrivals(env, req, reps, route, progress))
    env.run()
    if progress is not None:
        progress(n, n)

    # every routed request must be done
    st = np.frombuffer(bytes(req.state), dtype=np.uint8)
    stuck = np.flatnonzero((st != DONE) & (st != DROPPED))
    if stuck.size:
        raise AssertionError(f"{stuck.size} requests never finished (first: {int(stuck[0])})")

    frames = _frames(system, req, reps, costs, devices_per_replica, reasons)
    return _result(frames, replicas, blocks, costs)


def _result(frames: dict[str, pl.DataFrame], replicas: int, blocks: int,
            costs: CostTable) -> ServingResult:
    horizon = frames.pop("__horizon")["simulated_s"].item()
    return ServingResult(frames=frames, simulated_s=horizon, replicas=replicas,
                         kv_blocks=blocks, cost_misses=costs.misses)


def _arrivals(
    env: simpy.Environment, req: RequestTable, reps: list[Replica],
    route: Callable[[list[Replica]], Replica], progress: Callable[[float, float], None] | None,
) -> Generator[simpy.Event, Any, None]:
    """Feed each request to its replica at its arrival instant."""
    arrival = req.arrival
    state = req.state
    replica_of = req.replica
    n = req.n
    every = max(1, n // 100)
    timeout = env.timeout
    for rid in range(n):
        t = arrival[rid]
        if t > env.now:
            yield timeout(t - env.now)
        if progress is not None and rid % every == 0:
            progress(rid, n)
        if state[rid] == DROPPED:
            continue
        rep = route(reps)
        replica_of[rid] = rep.index
        rep.waiting.append(rid)
        rep.outstanding += 1
        ev = rep.wake
        if ev is not None:
            rep.wake = None
            ev.succeed()


def _frames(
    system: str, req: RequestTable, reps: list[Replica], costs: CostTable,
    devices_per_replica: int, reasons: dict[int, str],
) -> dict[str, pl.DataFrame]:
    n = req.n
    arrival = np.asarray(req.arrival, dtype=np.float64)
    first_tok = np.asarray(req.first_token)
    finish = np.asarray(req.finish)
    replica = np.asarray(req.replica)
    fin_iter = np.asarray(req.fin_iter)
    seg_start = np.asarray(req.seg_start)
    seg_max = np.asarray(req.seg_max)
    output = np.asarray(req.output, dtype=np.int64)
    ok = np.frombuffer(bytes(req.state), dtype=np.uint8) == DONE

    last_tok = np.full(n, np.nan)
    tbt_max = np.full(n, np.nan)
    step_frames = []
    dev_frames = []
    gap_parts: list[pl.DataFrame] = []
    horizon = float(arrival.max()) if n else 0.0
    ends_all = []
    for r in reps:
        if len(r.log):
            ends_all.append(r.log.end[-1])
    if ends_all:
        horizon = max(horizon, max(ends_all))
    for r in reps:
        log = r.log
        start = np.asarray(log.start)
        end = np.asarray(log.end)
        dur = end - start
        mine = np.flatnonzero(ok & (replica == r.index))
        if mine.size:
            last_tok[mine] = end[fin_iter[mine]]
            lo = seg_start[mine]
            hi = fin_iter[mine]
            has = lo <= hi
            seg = np.zeros(mine.size)
            seg[has] = _range_max(dur, lo[has], hi[has])
            both = np.maximum(seg, seg_max[mine])
            tbt_max[mine] = both
        if len(log):
            dec = np.asarray(log.decode)
            w = dec > 0
            gap_parts.append(pl.DataFrame({"gap_s": dur[w], "tokens": dec[w]}))
        step_frames.append(log.frame(system, r.index, costs.states))
        devs = list(range(r.index * devices_per_replica, (r.index + 1) * devices_per_replica))
        dev_frames.append(device_timeline(
            system, r.index, devs, start, end, np.asarray(log.state, dtype=np.int64),
            np.asarray(log.joules), costs.states, horizon,
        ))
    if req.extra_gaps:
        gap_parts.append(pl.DataFrame({"gap_s": np.asarray(req.extra_gaps),
                                       "tokens": np.ones(len(req.extra_gaps), np.int64)}))
    one_tok = output <= 1
    tbt_max[one_tok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        tbt_mean = np.where(one_tok, np.nan, (last_tok - first_tok) / (output - 1))
    reason = [reasons.get(i) for i in range(n)] if reasons else None
    first_sched = np.asarray(req.first_scheduled)
    req_frame = pl.DataFrame(
        {
            "system": pl.Series([system] * n, dtype=pl.String),
            "replica": pl.Series(replica, dtype=pl.Int32),
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": arrival,
            "first_scheduled_s": first_sched,
            "first_token_s": first_tok,
            "finish_s": finish,
            "prompt_tokens": np.asarray(req.prompt, dtype=np.int64),
            "output_tokens": output,
            "preemptions": np.asarray(req.preemptions, dtype=np.int32),
            "status": pl.Series(np.where(ok, "ok", "dropped").tolist(), dtype=pl.String),
            "reason": pl.Series(reason if reason is not None else [None] * n, dtype=pl.String),
            "ttft_s": first_tok - arrival,
            "e2e_s": finish - arrival,
            "tbt_mean_s": tbt_mean,
            "tbt_max_s": tbt_max,
        },
        schema=REQUESTS_SCHEMA,
    ).with_columns(
        # NaN marks "not applicable" inside the simulation; frames use null
        pl.col(pl.Float64).fill_nan(None),
        pl.when(pl.col("status") == "dropped").then(None).otherwise(pl.col("replica"))
        .alias("replica"),
    )
    tbt = (
        pl.concat(gap_parts).group_by("gap_s").agg(pl.col("tokens").sum()).sort("gap_s")
        .with_columns(pl.lit(system, pl.String).alias("system")).select(list(TBT_SCHEMA))
        .cast(TBT_SCHEMA)  # type: ignore[arg-type]
        if gap_parts else empty(TBT_SCHEMA)
    )
    return {
        "requests": req_frame,
        "steps": pl.concat(step_frames) if step_frames else empty(STEPS_SCHEMA),
        "devices": pl.concat(dev_frames),
        "tbt": tbt,
        "__horizon": pl.DataFrame({"simulated_s": [horizon]}),
    }
