"""Capacity: whether a system keeps up with its offered load, and the highest request rate
it sustains within its SLOs.

Three questions, from cheapest to dearest:

* :func:`meets_slo` — the SLO verdict of one simulated system. The serving SLOs are p99
  objectives (``ttft_p99``, ``tbt_p99``), so a system meets them when at least 99% of its
  requests do (``slo_attainment >= 0.99``); ``None`` where the workload has no SLO.
* :func:`overload` — read from the run's ``requests`` frame, no extra simulation: a
  system is *overloaded* when it completes requests more slowly than they arrive and the
  wait of the last quarter of arrivals has grown well past the first quarter's. Its
  latency percentiles then measure how long the run lasted, not a steady state, and the
  rate it completed requests at while saturated is what it sustains.
* :func:`search_knee` — the goodput knee: the highest offered rate at which the system
  still meets its SLOs, by bisection over short simulations at scaled rates (``probe``).
  ``xpusim run`` does this only when the scenario asks (``capacity: {search: true}``);
  ``xpusim plan`` does it for ``load: {rate: max}``.

The offered load of a scenario is ``workload.arrivals.rate`` (an arrival process) or the
trace's replay speed ``workload.trace.time_scale`` times its mean arrival rate
(:func:`load_path`); closed-loop clients have no rate, and their knee is the most clients
within the SLOs, searched in whole clients over their ``concurrency`` (of the arrival
process, or of a trace replayed with ``closed: true``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.frames import Frame, collect

SLO_QUANTILE = 0.99
"""The share of requests that must meet the SLOs: the serving SLOs are p99 objectives."""

WAIT_GROWTH = 4.0
"""Overloaded when the last quarter's median wait is this many times the first's ..."""
WAIT_FLOOR_S = 1.0
"""... and at least this many seconds longer ..."""
SERVED_SHARE = 0.97
"""... and requests complete at under this share of the rate they arrive at."""


def meets_slo(metrics: Mapping[str, Any]) -> bool | None:
    """Whether a system met its SLOs (``slo_attainment >= 0.99``); ``None`` with no SLO."""
    att = metrics.get("slo_attainment")
    if att is None:
        return None
    return float(att) >= SLO_QUANTILE - 1e-12


# --- overload, from one run's requests --------------------------------------------------


@dataclass(frozen=True)
class Overload:
    """How a system coped with its offered load.

    ``offered_per_s``: requests per second arriving; ``served_per_s``: completed requests
    per second from the first arrival to the last completion; ``early_wait_s`` and
    ``late_wait_s``: the median time to first token of the first and last quarter of
    arrivals; ``overloaded``: the queue grew for the whole run; ``sustainable_per_s``:
    when overloaded, the completion rate while saturated, the most it sustains.
    """

    offered_per_s: float
    served_per_s: float
    early_wait_s: float
    late_wait_s: float
    overloaded: bool

    @property
    def sustainable_per_s(self) -> float | None:
        """The rate it sustains at most (only known when it was saturated)."""
        return self.served_per_s if self.overloaded else None

    def sentence(self, name: str) -> str:
        """What a person should read instead of hour-long latency percentiles."""
        if not self.overloaded:
            return f"{name} keeps up with the offered {self.offered_per_s:.3g} requests/s."
        return (
            f"{name} cannot keep up: requests arrive at {self.offered_per_s:.3g}/s but it "
            f"sustains at most about {self.served_per_s:.3g}/s, so its queue grows for the "
            f"whole run (median wait {self.early_wait_s:.3g} s for the first quarter of "
            f"arrivals, {self.late_wait_s:.3g} s for the last); its latency percentiles "
            f"measure the run's length, not a steady state."
        )


def overload(requests: Frame | None) -> Overload | None:
    """The load verdict of a ``requests`` frame (``arrival_s``, ``ttft_s``, ``finish_s``,
    ``status``), or ``None`` when it lacks them or holds fewer than 8 requests."""
    if requests is None:
        return None
    df = collect(requests)
    need = {"arrival_s", "ttft_s", "finish_s", "status"}
    if not need <= set(df.columns) or df.height < 8:
        return None
    df = df.sort("arrival_s")
    first, last = float(df["arrival_s"][0]), float(df["arrival_s"][-1])
    ok = df.filter(pl.col("status") == "ok")
    if last <= first or ok.is_empty():
        return None
    offered = (df.height - 1) / (last - first)
    end = float(ok["finish_s"].max())  # type: ignore[arg-type]
    served = ok.height / (end - first) if end > first else offered
    q = df.height // 4
    early = df.head(q)["ttft_s"].median()
    late = df.tail(q)["ttft_s"].median()
    early_s = float(early) if isinstance(early, int | float) else 0.0
    late_s = float(late) if isinstance(late, int | float) else math.inf
    over = (
        served < SERVED_SHARE * offered
        and late_s > WAIT_GROWTH * early_s
        and late_s - early_s > WAIT_FLOOR_S
    )
    return Overload(offered, served, early_s, late_s, over)


def overload_metrics(ov: Overload | None) -> dict[str, Any]:
    """Summary keys of a load verdict: ``offered_rate_per_s``, ``overloaded`` and, when
    overloaded, ``sustainable_rate_per_s``."""
    if ov is None:
        return {}
    out: dict[str, Any] = {"offered_rate_per_s": ov.offered_per_s, "overloaded": ov.overloaded}
    if ov.sustainable_per_s is not None:
        out["sustainable_rate_per_s"] = ov.sustainable_per_s
    return out


# --- the offered load of a scenario -----------------------------------------------------


@dataclass(frozen=True)
class LoadPath:
    """Where a scenario's offered load lives: the dotted ``path`` and how a request rate
    maps to its value (``per_unit``: requests/s at value 1; ``None`` for a rate itself).
    ``clients`` marks a load counted in closed-loop clients rather than a rate: the
    value is a whole number of clients, at least one."""

    path: tuple[str, ...]
    per_unit: float | None = None
    clients: bool = False

    def value(self, rate: float) -> Any:
        """The scenario value that offers ``rate`` requests per second (or, for
        ``clients``, that many clients)."""
        if self.clients:
            return max(1, int(rate))
        if self.per_unit is None:
            return f"{rate:.9g}/s"
        return rate / self.per_unit


def load_path(data: Mapping[str, Any], trace_rate: float | None = None) -> LoadPath | None:
    """The offered-load field of scenario ``data``: ``workload.arrivals.rate``, or
    ``workload.trace.time_scale`` when ``trace_rate`` (the trace's own mean arrival rate)
    is known, or ``workload.arrivals.concurrency`` for closed-loop clients (``process:
    closed``), whose load is how many they are; ``None`` for a workload with none."""
    workload = dict(data.get("workload") or {})
    arrivals = workload.get("arrivals")
    if isinstance(arrivals, Mapping):
        if arrivals.get("process") == "closed":
            return LoadPath(("workload", "arrivals", "concurrency"), clients=True)
        return LoadPath(("workload", "arrivals", "rate"))
    trace = workload.get("trace")
    if isinstance(trace, Mapping) and trace.get("closed"):
        return LoadPath(("workload", "trace", "concurrency"), clients=True)
    if isinstance(trace, Mapping) and trace_rate:
        return LoadPath(("workload", "trace", "time_scale"), per_unit=trace_rate)
    return None


def with_rate(data: Mapping[str, Any], where: LoadPath, rate: float) -> dict[str, Any]:
    """A copy of ``data`` offering ``rate`` requests per second."""
    out = copy.deepcopy(dict(data))
    node = out
    for key in where.path[:-1]:
        node = node.setdefault(key, {})
    node[where.path[-1]] = where.value(rate)
    return out


# --- the goodput knee -------------------------------------------------------------------


class CapacitySpec(BaseModel):
    """The scenario's ``capacity:`` block: ``search`` turns the knee search on for every
    system of ``xpusim run`` (off by default: it costs up to ``probes`` more simulations
    per system); ``tolerance`` is the relative width at which bisection stops."""

    model_config = ConfigDict(extra="forbid")

    search: bool = False
    probes: int = Field(default=8, ge=2, le=40)
    tolerance: float = Field(default=0.05, gt=0.0, lt=1.0)


CAPACITY_FIX = (
    "The block is capacity: {search: true or false, probes: 2 to 40 simulations per system, "
    "tolerance: the relative width at which bisection stops, above 0 and below 1}; fix or "
    "remove the key (see docs/reports.md)."
)
"""The way out an error in a ``capacity:`` block names (``xpusim.engine.run.capacity_spec``)."""


@dataclass
class Knee:
    """The result of a knee search: ``rate_per_s`` the highest rate that met the SLOs
    (``None`` when even the lowest probe failed, then ``below_per_s`` bounds it), and every
    probe as ``(rate, met)``."""

    rate_per_s: float | None
    below_per_s: float | None
    probes: list[tuple[float, bool]] = field(default_factory=list)


Probe = Callable[[float], bool]
"""``probe(rate) -> met``: simulate at ``rate`` requests/s and say whether the SLOs held."""


KneeSteps = Generator[float, bool, Knee]
"""A knee search as a generator: it yields the next rate to simulate, is sent whether
that rate met the SLOs, and returns the :class:`Knee` (see :func:`knee_steps`)."""


def knee_steps(
    start: float,
    *,
    ceiling: float | None = None,
    probes: int = 8,
    tolerance: float = 0.05,
    whole: bool = False,
) -> KneeSteps:
    """The highest rate that passes, assuming more load never helps, one probe at a time.

    From ``start`` (often the scenario's own rate): double on success (up to ``ceiling``,
    a closed-form or measured bound, when known) or halve on failure until the knee is
    bracketed, then bisect geometrically until the bracket is within ``tolerance`` or
    ``probes`` simulations are spent. Each rate is yielded and its verdict sent back, so
    a caller may run many searches' probes side by side (``xpusim plan`` runs one round
    of every shape's probes at a time through its executor).

    With ``whole`` the load is a whole number (closed-loop clients): every probe is an
    integer of at least 1, halving stops at 1, and bisection also stops once no whole
    number lies strictly inside the bracket.
    """
    knee = Knee(None, None)

    def note(rate: float, met: bool) -> bool:
        knee.probes.append((rate, bool(met)))
        return bool(met)

    lo: float | None = None
    hi: float | None = None
    rate = start if ceiling is None else min(start, ceiling)
    if whole:
        rate = float(max(1, int(rate)))
    while len(knee.probes) < probes and (lo is None or hi is None):
        if note(rate, (yield rate)):
            lo = rate
            if ceiling is not None and rate >= ceiling:
                break
            rate = rate * 2.0 if ceiling is None else min(rate * 2.0, ceiling)
        else:
            hi = rate
            if lo is None:
                if whole and rate <= 1.0:
                    break  # not even one client meets the SLOs
                rate = float(max(1, int(rate / 2.0))) if whole else rate / 2.0
    while lo is not None and hi is not None and len(knee.probes) < probes:
        if hi / lo <= 1.0 + tolerance or (whole and hi - lo <= 1.0):
            break
        mid = float(int(math.sqrt(lo * hi))) if whole else math.sqrt(lo * hi)
        if whole and mid <= lo:
            mid = lo + 1.0
        if note(mid, (yield mid)):
            lo = mid
        else:
            hi = mid
    knee.rate_per_s = lo
    knee.below_per_s = hi if lo is None else None
    return knee


def search_knee(
    probe: Probe,
    start: float,
    *,
    ceiling: float | None = None,
    probes: int = 8,
    tolerance: float = 0.05,
    whole: bool = False,
) -> Knee:
    """:func:`knee_steps` with ``probe`` answering each rate in turn."""
    steps = knee_steps(start, ceiling=ceiling, probes=probes, tolerance=tolerance, whole=whole)
    try:
        rate = next(steps)
        while True:
            rate = steps.send(bool(probe(rate)))
    except StopIteration as done:
        knee: Knee = done.value
        return knee


# --- the knee of every system of a run --------------------------------------------------

KNEE_KEYS = ("max_rate_within_slo_per_s", "max_concurrency_within_slo")
"""The summary keys a knee search gives: the highest request rate within the SLOs, or for
closed-loop clients the most clients."""

Simulate = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
"""``simulate(data) -> metrics``: run scenario ``data`` (one system) and return that
system's metrics, or ``None`` when it did not run ``ok``."""


def system_knee(
    data: Mapping[str, Any],
    index: int,
    metrics: Mapping[str, Any],
    simulate: Simulate,
    spec: CapacitySpec,
) -> dict[str, Any] | None:
    """The goodput knee of system ``index`` of scenario ``data`` whose run gave ``metrics``.

    Starts at the run's offered rate; a system that was overloaded bounds the search by the
    rate it sustained. Closed-loop clients have no rate: their knee is the most clients
    within the SLOs (``max_concurrency_within_slo``), searched in whole clients from the
    scenario's own ``concurrency`` up to one client a request. Returns the ``capacity``
    details (the knee, its bracket and every probe with its latency) or ``None`` when the
    scenario has no SLO or no offered load.
    """
    if meets_slo(metrics) is None:
        return None
    offered = metrics.get("offered_rate_per_s")
    if not offered:
        return None
    one = copy.deepcopy(dict(data))
    one["systems"] = [copy.deepcopy(one["systems"][index])]
    one.pop("capacity", None)
    scale = float(dict(dict(one.get("workload") or {}).get("trace") or {}).get("time_scale") or 1.0)
    where = load_path(one, trace_rate=float(offered) / scale)
    if where is None:
        return None
    unit = "concurrency" if where.clients else "rate_per_s"
    workload = dict(one.get("workload") or {})
    source = dict(workload.get("arrivals") or workload.get("trace") or {})
    own = float(source.get("concurrency") or 0) if where.clients else float(offered)
    rows: list[dict[str, Any]] = []

    def probe(load: float) -> bool:
        m = metrics if load == own else simulate(with_rate(one, where, load))
        met = bool(m is not None and meets_slo(m))
        rows.append(
            {
                unit: int(load) if where.clients else load,
                "met": met,
                "ttft_p99_s": None if m is None else m.get("ttft_p99_s"),
                "tbt_p99_s": None if m is None else m.get("tbt_p99_s"),
                "slo_attainment": None if m is None else m.get("slo_attainment"),
            }
        )
        return met

    if where.clients:
        # more clients than requests is the same run as one client a request
        count = source.get("count") or source.get("limit")
        knee = search_knee(
            probe,
            own,
            ceiling=float(count) if count else None,
            probes=spec.probes,
            tolerance=spec.tolerance,
            whole=True,
        )
        return {
            "max_concurrency_within_slo": (
                None if knee.rate_per_s is None else int(knee.rate_per_s)
            ),
            "probes": sorted(rows, key=lambda r: r[unit]),
        }
    ceiling = metrics.get("sustainable_rate_per_s")
    start = float(offered) if meets_slo(metrics) else float(ceiling or offered) * 0.9
    knee = search_knee(probe, start, probes=spec.probes, tolerance=spec.tolerance)
    return {
        "max_rate_within_slo_per_s": knee.rate_per_s,
        "below_per_s": knee.below_per_s,
        "probes": sorted(rows, key=lambda r: r[unit]),
    }
