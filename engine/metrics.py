"""The metric vocabulary: every summary key a run can emit, with how outputs show it.

A :class:`Metric` names a key of a system's object in ``summary.json`` and says how a
person reads it: a label and unit, the scale from the stored SI value to the shown unit,
which direction is better, which workloads emit it, and where it is shown (the terminal
table, the report's summary table, the sweep's best points and Pareto frontier).

A :class:`Vocabulary` is an ordered set of metrics. It starts with the engine's own
metrics (:data:`ENGINE_METRICS`: energy, cost, carbon, the simulated span), which the
economics step adds to every system, and a workload extends it by *declaring* its metrics
on its contract (``Workload.metrics``, a tuple of :class:`Metric`).
:func:`vocabulary_for` gathers the vocabulary of one workload; the run keeps it on its
result, and the terminal table, ``report.html``/``report.md``, the sweep report and
``xpusim compare`` all read it instead of lists of their own.

Metrics more than one workload emits (throughput per token and per sample, request
latency, step time) are defined here once (:data:`THROUGHPUT_TOKENS_PER_S` ...) for
workloads to declare by reference.

This module imports nothing heavy (no polars, no numpy): the command line reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from xpusim.engine.workload import Workload

Better = Literal["higher", "lower", "none"]
"""Which direction of a metric is better; ``none`` when neither is (a count, a span)."""

Frontier = Literal["throughput", "cost", ""]
"""The part a metric plays in the sweep's throughput-versus-cost Pareto frontier."""

SYSTEM_KEYS: tuple[str, ...] = (
    "name",
    "backend",
    "device",
    "count",
    "hardware",
    "status",
    "reason",
)
"""Keys of a system's object in ``summary.json`` that name the system rather than measure it
(``hardware`` only where its devices are of several kinds: ``h100-sxm × 2 + h200-sxm × 6``)."""


@dataclass(frozen=True)
class Metric:
    """One summary key and how every output shows it.

    ``name`` is the key in ``summary.json`` (units in the name: ``ttft_p99_s``); outputs
    show ``value * scale`` in ``unit`` under ``label``. ``better`` is ``higher``,
    ``lower`` or ``none``. ``workloads`` names the workload kinds that emit it (empty for
    the engine's own metrics, which every workload's systems get); :func:`vocabulary_for`
    fills it in for a workload's declarations. ``order`` places it among the others
    (ties keep declaration order): throughput 100s, latency 200s, service level 300s,
    training 400s, energy 500s, cost 600s, carbon 700s, the run 900s, details 1000s.

    Where it is shown: ``report`` puts it in the summary table of ``report.html`` and
    ``report.md``; ``table`` makes it a column of the terminal table, headed ``short``
    (``"{label} {unit}"`` when empty) and formatted with ``table_format`` (a
    :meth:`str.format` pattern applied to the scaled value); ``instead_of`` names a metric
    that, when any system has it, hides this one from the terminal table (per-token
    figures win over per-sample ones for language models). ``headline`` makes the sweep
    report name the best point for it, and ``frontier`` makes it an axis of the sweep's
    Pareto frontier. A metric is shown only where at least one system has a value.
    """

    name: str
    label: str
    unit: str = ""
    scale: float = 1.0
    better: Better = "none"
    description: str = ""
    workloads: tuple[str, ...] = ()
    order: int = 500
    report: bool = True
    table: bool = True
    short: str = ""
    table_format: str = "{:,.4g}"
    instead_of: str = ""
    headline: bool = False
    frontier: Frontier = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"metric name {self.name!r} is not a summary key")
        if self.better not in ("higher", "lower", "none"):
            raise ValueError(f"metric {self.name!r}: better {self.better!r} not higher/lower/none")

    @property
    def heading(self) -> str:
        """The label with its unit, as the report's summary table shows it."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def column(self) -> str:
        """The terminal table's column header."""
        return self.short or f"{self.label} {self.unit}".strip()

    def shown(self, value: float) -> float:
        """``value`` (stored, SI) in the shown unit."""
        return value * self.scale

    def same_definition(self, other: Metric) -> bool:
        """Whether ``other`` defines this metric the same way (``workloads`` aside)."""
        return replace(self, workloads=()) == replace(other, workloads=())


def detail(name: str, label: str, unit: str = "", better: Better = "none", **kw: Any) -> Metric:
    """A metric kept in ``summary.json`` for scripts but shown in neither table."""
    kw.setdefault("order", 1000)
    return Metric(name, label, unit, better=better, report=False, table=False, **kw)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of metrics by name (iterate it for the display order).

    Build one with :meth:`extend` or :func:`vocabulary_for`; a name declared twice must
    carry the same definition (the emitting workloads are merged), else ``ValueError``.
    """

    metrics: tuple[Metric, ...] = ()
    _by_name: Mapping[str, Metric] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Metric] = {}
        for m in self.metrics:
            prev = by_name.get(m.name)
            if prev is not None:
                if not prev.same_definition(m):
                    raise ValueError(
                        f"metric {m.name!r} declared twice with different definitions: "
                        f"{prev} and {m}"
                    )
                merged = tuple(dict.fromkeys(prev.workloads + m.workloads))
                m = replace(prev, workloads=merged)
            by_name[m.name] = m
        ranked = sorted(by_name.values(), key=lambda m: m.order)  # stable: ties keep order
        object.__setattr__(self, "metrics", tuple(ranked))
        object.__setattr__(self, "_by_name", {m.name: m for m in ranked})

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Metric:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; known: {', '.join(self._by_name)}") from None

    def get(self, name: str) -> Metric | None:
        """The metric named ``name``, or ``None``."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Every metric's name, in display order."""
        return list(self._by_name)

    def extend(self, metrics: Iterable[Metric], workload: str = "") -> Vocabulary:
        """This vocabulary plus ``metrics`` (tagged as emitted by ``workload`` when given)."""
        more = [
            replace(m, workloads=tuple(dict.fromkeys((*m.workloads, workload)))) if workload else m
            for m in metrics
        ]
        return Vocabulary((*self.metrics, *more))

    def merge(self, other: Vocabulary) -> Vocabulary:
        """Both vocabularies; where they define a name differently, this one's wins (used
        to put runs written by different versions side by side)."""
        return Vocabulary(
            (
                *self.metrics,
                *(
                    m
                    for m in other.metrics
                    if m.name not in self or m.same_definition(self[m.name])
                ),
            )
        )

    def to_json(self) -> list[dict[str, Any]]:
        """The vocabulary as JSON data (a list of metric objects)."""
        return [{**asdict(m), "workloads": list(m.workloads)} for m in self.metrics]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> Vocabulary:
        """The vocabulary :meth:`to_json` wrote (unknown fields are ignored)."""
        fields = set(Metric.__dataclass_fields__)
        out = []
        for d in data:
            kw = {k: v for k, v in d.items() if k in fields}
            kw["workloads"] = tuple(kw.get("workloads", ()))
            out.append(Metric(**kw))
        return cls(tuple(out))


# --- shared definitions: metrics more than one workload emits ---------------------------

THROUGHPUT_TOKENS_PER_S = Metric(
    "throughput_tokens_per_s",
    "Throughput",
    "tokens/s",
    better="higher",
    description="tokens processed per second of simulated time",
    order=100,
    short="tokens/s",
    table_format="{:,.0f}",
    headline=True,
    frontier="throughput",
)
"""Tokens per second (serving: output tokens of finished requests; training: trained)."""

THROUGHPUT_SAMPLES_PER_S = Metric(
    "throughput_samples_per_s",
    "Throughput",
    "samples/s",
    better="higher",
    description="samples (requests, inputs, sequences) completed per second",
    order=110,
    short="samples/s",
    table_format="{:,.1f}",
    instead_of="throughput_tokens_per_s",
    headline=True,
    frontier="throughput",
)
"""Samples per second; in the terminal table only where no system counts tokens."""

E2E_P50_S = Metric(
    "e2e_p50_s",
    "End-to-end p50",
    "ms",
    1e3,
    "lower",
    description="median time from a request's arrival to its last output",
    order=240,
    table=False,
)
"""Median request latency, arrival to completion."""

E2E_P99_S = Metric(
    "e2e_p99_s",
    "End-to-end p99",
    "ms",
    1e3,
    "lower",
    description="99th-percentile time from a request's arrival to its last output",
    order=250,
    short="e2e p99 ms",
    table_format="{:,.1f}",
)
"""99th-percentile request latency, arrival to completion."""

STEP_TIME_S = Metric(
    "step_time_s",
    "Step time",
    "s",
    better="lower",
    description="seconds one step (a training iteration or a forward batch) takes",
    order=400,
    short="step s",
    table_format="{:,.3f}",
)
"""Seconds per step."""


# --- the engine's own metrics (economics and the run) -----------------------------------

ENGINE_METRICS: tuple[Metric, ...] = (
    Metric(
        "energy_j",
        "Energy",
        "kWh",
        1 / 3.6e6,
        "lower",
        description="energy of the simulated span, device power-state timeline times PUE",
        order=500,
        table=False,
    ),
    Metric(
        "energy_per_token_j",
        "Energy per token",
        "J",
        better="lower",
        description="energy divided by the tokens processed",
        order=510,
        short="J/token",
        table_format="{:.3g}",
        headline=True,
    ),
    Metric(
        "energy_per_sample_j",
        "Energy per sample",
        "J",
        better="lower",
        description="energy divided by the samples processed",
        order=520,
        short="J/sample",
        table_format="{:.3g}",
        instead_of="energy_per_token_j",
    ),
    Metric(
        "energy_per_sample_static_j",
        "Static energy per sample",
        "J",
        better="lower",
        description="idle power of the devices (and host) over the span, per sample: what "
        "the system draws whether or not it works, which falls as the load rises",
        order=521,
        table=False,
    ),
    Metric(
        "energy_per_sample_active_j",
        "Active energy per sample",
        "J",
        better="lower",
        description="busy energy above idle power, per sample: what one more sample costs "
        "(the figure neuromorphic papers report as energy per inference)",
        order=522,
        table=False,
    ),
    Metric(
        "energy_per_step_j",
        "Energy per step",
        "kJ",
        1e-3,
        "lower",
        description="energy divided by the steps (iterations) run",
        order=530,
        table=False,
    ),
    Metric(
        "energy_per_run_j",
        "Energy per training run",
        "MWh",
        1 / 3.6e9,
        "lower",
        description="energy of the whole training run (time to train)",
        order=540,
        table=False,
    ),
    Metric(
        "cost_per_million_tokens_usd",
        "Cost per 1M tokens",
        "USD",
        better="lower",
        description="cost divided by the tokens processed, times one million",
        order=600,
        short="$/Mtok",
        table_format="{:,.2f}",
        headline=True,
        frontier="cost",
    ),
    Metric(
        "cost_usd",
        "Cost",
        "USD",
        better="lower",
        description="cost of the simulated span: rented device-hours, or owned (amortized "
        "price plus electricity)",
        order=610,
        short="cost $",
        table_format="{:,.2f}",
        headline=True,
        frontier="cost",
    ),
    Metric(
        "cost_per_run_usd",
        "Cost per training run",
        "USD",
        better="lower",
        description="cost of the whole training run (time to train)",
        order=620,
        table=False,
    ),
    Metric(
        "carbon_kg",
        "Carbon",
        "kg CO2e",
        better="lower",
        description="energy times the grid's carbon intensity",
        order=700,
        table=False,
    ),
    Metric(
        "carbon_per_run_kg",
        "Carbon per training run",
        "t CO2e",
        1e-3,
        "lower",
        description="carbon of the whole training run (time to train)",
        order=710,
        table=False,
    ),
    Metric(
        "simulated_s",
        "Simulated time",
        "s",
        description="span of simulated time the metrics cover",
        order=900,
        table=False,
    ),
    Metric(
        "max_rate_within_slo_per_s",
        "Max rate within SLO",
        "req/s",
        better="higher",
        description="the highest offered request rate at which the system still meets its "
        "SLOs (goodput knee, by bisection; with capacity: {search: true})",
        order=320,
        short="max req/s",
        table_format="{:,.3g}",
    ),
    Metric(
        "max_concurrency_within_slo",
        "Max clients within SLO",
        "clients",
        better="higher",
        description="the most closed-loop clients (workload.arrivals.process: closed) the "
        "system serves within its SLOs (by bisection in whole clients; with capacity: "
        "{search: true})",
        order=322,
        short="max clients",
        table_format="{:,.0f}",
    ),
    Metric(
        "sustainable_rate_per_s",
        "Sustained rate when overloaded",
        "req/s",
        better="higher",
        description="requests completed per second while the queue grew: the most an "
        "overloaded system sustains",
        order=321,
        table=False,
    ),
    Metric(
        "break_even_hours_per_year",
        "Buy beats renting above",
        "busy h/year",
        better="none",
        description="busy hours a year above which owning a device costs less than renting "
        "it on demand, over its lifetime (hosting, power and staff included)",
        order=630,
        table=False,
    ),
    Metric(
        "break_even_months",
        "Purchase pays back after",
        "months",
        better="lower",
        description="at the scenario's busy hours a year, the months until the rent saved "
        "pays for the purchase (none when renting stays cheaper)",
        order=631,
        table=False,
    ),
    Metric(
        "model_params",
        "Parameters",
        "B",
        scale=1e-9,
        description="the model's parameters (every expert of a mixture of experts)",
        order=950,
        table=False,
    ),
    Metric(
        "model_active_params",
        "Active parameters",
        "B",
        scale=1e-9,
        description="parameters one token passes through (the routed experts it uses)",
        order=951,
        table=False,
    ),
    Metric(
        "weight_bytes_per_device",
        "Weights per device",
        "GB",
        scale=1e-9,
        description="model weights one device holds under the system's parallel plan",
        order=952,
        table=False,
    ),
    Metric(
        "kv_bytes_per_token",
        "KV cache per token",
        "KB",
        scale=1e-3,
        description="KV-cache bytes of one token over all layers, before sharding (for a "
        "model with sliding-window layers, each of the first kv_window_tokens tokens)",
        order=953,
        table=False,
    ),
    Metric(
        "kv_bytes_per_token_full_layers",
        "KV cache per token, full-attention layers",
        "KB",
        scale=1e-3,
        description="KV-cache bytes of one token over the full-attention layers only, before "
        "sharding: what each token past the window adds (models with sliding-window layers)",
        order=954,
        table=False,
    ),
    Metric(
        "kv_window_tokens",
        "KV window",
        "tokens",
        description="tokens a sliding-window layer's KV cache keeps at most (models with "
        "sliding-window layers)",
        order=955,
        table=False,
    ),
    detail(
        "cheaper_choice",
        "Cheaper choice",
        description="at the scenario's busy hours a year: own (buy), rent (on demand) or "
        "committed (a reserved rental)",
        order=632,
    ),
    detail(
        "price_tier",
        "Price tier",
        description="where the device price came from: hyperscaler, neocloud, committed, "
        "spot or purchase (the price catalog's tiers), scenario, device (its own figure) or "
        "discounted on-demand",
        order=633,
    ),
    detail(
        "offered_rate_per_s",
        "Offered rate",
        "req/s",
        description="requests per second arriving over the run",
        order=1010,
    ),
    detail(
        "overloaded",
        "Overloaded",
        description="true when requests arrived faster than the system completed them and "
        "its queue grew for the whole run",
        order=1011,
    ),
)
"""The metrics the engine adds to every system (economics, capacity and the simulated span)."""


def engine_vocabulary() -> Vocabulary:
    """The vocabulary before any workload extends it: :data:`ENGINE_METRICS`."""
    return Vocabulary(ENGINE_METRICS)


def vocabulary_for(*workloads: Workload) -> Vocabulary:
    """The engine's metrics extended by what each of ``workloads`` declares
    (``Workload.metrics``), each tagged with the workload's name."""
    vocab = engine_vocabulary()
    for w in workloads:
        vocab = vocab.extend(w.metrics, workload=w.name)
    return vocab
