"""The work budget: how many simulated events one system may take, estimated before it runs.

Every workload kind estimates the events a system's simulation will take from the sizes
the scenario states, before anything is simulated (:meth:`Workload.work
<xpusim.engine.workload.Workload.work>`): serving, requests plus requests x mean output
tokens / batch plus the replicas' own bookkeeping; offline, inputs likewise; training, the
pipeline's stages x micro-batches of one step; spiking, samples x timesteps. An estimate
above the budget is refused with exit status 2, naming the estimate, the budget and both
fixes: shrink the scenario, or raise the budget with ``--max-events N`` or the
``XPUSIM_MAX_EVENTS`` environment variable. The simulated time a run spans, where the
workload knows it in advance (arrivals by rate and count or duration, spiking samples at
a rate), is bounded by :data:`MAX_HORIZON_S` the same way.

An event here is a unit of simulation work of about half a microsecond on one core, so
the estimates of the workload kinds compare: each weighs what it counts by what that
costs (:data:`REQUEST_EVENTS`, :data:`STEP_EVENTS`, :data:`REPLICA_EVENTS`,
:data:`PASS_EVENTS`; the spiking workload's ``SAMPLE_EVENTS``). The default budget, 10^8
(about a minute), is a hundred times the largest shipped scenario's estimate (about 10^6)
and low enough that an absurd what-if ends at once instead of running for hours.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from xpusim.engine.errors import XpusimError

DEFAULT_MAX_EVENTS = 100_000_000
"""Estimated events one system may take unless raised (about a minute of simulation)."""
MAX_EVENTS_LIMIT = 10**15
"""The largest budget ``--max-events`` or ``XPUSIM_MAX_EVENTS`` may set."""
ENV = "XPUSIM_MAX_EVENTS"
"""The environment variable that sets the budget (``--max-events`` sets it too, so that
sweep and plan workers inherit it)."""
MAX_HORIZON_S = 1e9
"""Longest simulated time a run may span (about 30 years; as a trace's span)."""
REQUEST_EVENTS = 20
"""Events one request costs the serving world (arrival, routing, admission, its rows)."""
STEP_EVENTS = 40
"""Events one decode step of a replica costs (its batch priced, its sequences advanced)."""
REPLICA_EVENTS = 2000
"""Events one replica of a serving or offline system costs whatever its load (its
scheduler, cache and frames are built and stepped): ten thousand replicas are 2e7."""
PASS_EVENTS = 20
"""Events one pipeline pass (a micro-batch's forward or backward on one stage) costs."""
REPLAY_EVENTS = 300
"""Events one checkpoint segment or failure of a training run's failure replay costs (a
replay of a million segments takes minutes)."""


class BudgetError(XpusimError):
    """A run whose estimated work or simulated time is above its limit (exit 2)."""


@dataclass(frozen=True)
class Work:
    """The estimated work of simulating one system.

    ``events`` the simulated events; ``how`` the estimate in words (``"20 requests + 20
    requests x 8 output tokens / batch 16 + 1 replica x 1000"``); ``shrink`` the keys that
    make it smaller; ``horizon_s`` the simulated time the run spans where known in advance.
    """

    events: float
    how: str
    shrink: str
    horizon_s: float | None = None


def max_events() -> int:
    """The budget: ``XPUSIM_MAX_EVENTS`` when set, else :data:`DEFAULT_MAX_EVENTS`.
    A value that is not a whole number from 1 to :data:`MAX_EVENTS_LIMIT` is an input
    error naming the variable."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_EVENTS
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = math.nan
    if not (1 <= value <= MAX_EVENTS_LIMIT) or value != int(value):
        raise BudgetError(
            f"{ENV}={raw[:100]!r} (or --max-events): the work budget must be a whole number "
            f"of events from 1 to {MAX_EVENTS_LIMIT:.0e}, such as 1e9; unset it for the "
            f"default {DEFAULT_MAX_EVENTS:,}."
        )
    return int(value)


def set_max_events(value: str | None) -> None:
    """Apply ``--max-events``: check it and export it as :data:`ENV` for workers."""
    if value is None:
        return
    os.environ[ENV] = str(value)
    max_events()


def check_work(work: Work | None, where: str, system: str) -> None:
    """Refuse ``work`` above the budget or the horizon with an :class:`XpusimError` that
    starts with ``where`` (the scenario file, line and ``workload``) and names the
    estimate, the budget and the fixes."""
    if work is None:
        return
    budget = max_events()
    events = work.events
    if not math.isfinite(events) or events > budget:
        shown = (
            f"{events:,.0f}"
            if events < 1e15
            else (f"{events:.3g}" if math.isfinite(events) else "beyond any number of")
        )
        raise BudgetError(
            f"{where}: simulating system {system!r} would take an estimated {shown} events "
            f"({work.how}), above the work budget of {budget:,}. Shrink the scenario "
            f"({work.shrink}), or raise the budget with --max-events N or {ENV}=N if the "
            f"run is meant to be that large."
        )
    h = work.horizon_s
    if h is not None and (not math.isfinite(h) or h > MAX_HORIZON_S):
        raise BudgetError(
            f"{where}: system {system!r} would simulate {h:.3g} s of time, more than the "
            f"{MAX_HORIZON_S:.0e} s (about 30 years) a run may span. Shrink it ({work.shrink})."
        )


def request_work(
    requests: float,
    output_tokens: float,
    batch: int,
    replicas: int,
    shrink: str,
    horizon_s: float | None = None,
) -> Work:
    """The work of serving ``requests`` of ``output_tokens`` tokens on average (decode
    steps of up to ``batch`` sequences) on ``replicas`` replicas:
    :data:`REQUEST_EVENTS` per request, :data:`STEP_EVENTS` per decode step (requests x
    output tokens / batch) and :data:`REPLICA_EVENTS` per replica. ``requests`` of 0: not
    known before a trace is read (its replicas still count)."""
    steps = requests * output_tokens / max(1, batch)
    events = REQUEST_EVENTS * requests + STEP_EVENTS * steps + REPLICA_EVENTS * replicas
    parts = []
    if requests > 0:
        parts.append(f"{REQUEST_EVENTS} x {requests:,.0f} requests")
        parts.append(
            f"{STEP_EVENTS} x {steps:,.0f} decode steps ({requests:,.0f} requests x "
            f"{output_tokens:,.4g} mean output tokens / batch {batch:,})"
        )
    parts.append(f"{REPLICA_EVENTS:,} x {replicas:,} replicas")
    return Work(events=events, how=" + ".join(parts), shrink=shrink, horizon_s=horizon_s)
