"""The backend conformance kit's checks: rules any backend is held to, as plain functions.

This module needs no test runner (it does not import pytest), so a backend author can
call the checks from any harness. Its pytest face, :mod:`xpusim.engine.testing`, turns
them into tests: a backend author subclasses ``BackendConformance`` in a test module and
names the backend and device; pytest then collects a parametrized set of checks::

    from xpusim.engine.testing import BackendConformance
    from my_chip import MyChipBackend

    class TestMyChip(BackendConformance):
        backend = MyChipBackend()
        device = "my-chip-1"

The checks, each a plain function here (so they can also be called directly) and a test
method on ``BackendConformance``:

* **support is an answer** (:func:`check_support_answer`): ``supports()`` never raises
  and returns a :class:`~xpusim.engine.backend.Support`; a refusal carries a reason sentence;
  an acceptance is honoured (``compile()`` and ``cost()`` then work). A model of a kind
  no backend has heard of must be either refused with a reason or priced.
* **costs positive** (:func:`check_costs_positive`): seconds and joules are finite and
  positive, and the breakdown splits the seconds (its values are non-negative and sum
  to ``seconds``).
* **monotone in shape** (:func:`check_monotone`): more sequences, more prompt tokens,
  a longer KV context or more timesteps never make a step cheaper, and the largest
  shape of a sweep costs strictly more than the smallest.
* **deterministic** (:func:`check_deterministic`): two compilations of the same model on
  the same system price every shape identically.
* **energy floor** (:func:`check_energy_floor`): a step's joules are at least idle power
  × seconds × the devices of a replica.
* **fit consistent with memory** (:func:`check_fit_consistent`): ``fits`` is exactly
  ``need_bytes <= have_bytes``; need grows with KV tokens and batch; a KV cache twice
  the device's memory does not fit, with a reason.
* **collectives grow with size** (:func:`check_collectives_grow`): collective time is
  finite, non-negative, non-decreasing in the payload and strictly larger for 1 GB
  than for 1 kB.

Models come from two places. The decoder and spiking probes are small members of the
families the host registry holds at test time (``llama`` or ``gpt``; ``snn``): the kit
never imports a model plugin, and a probe whose family is not registered is skipped with
a reason naming it (:func:`probe_model` raises :class:`ProbeUnavailable`). The MLP probe (:class:`ProbeMLP`) is built from engine types alone
(an op graph plus a real ``torch.nn.Sequential``), so every backend always has something
to run. Systems are built by :func:`make_system` from the device's catalog links.

torch is imported only when the MLP probe's module is built.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpusim.engine.backend import Backend, Compiled, Cost, Support
from xpusim.engine.device import DeviceSpec, LinkSpec
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.host import Host, default_host
from xpusim.engine.model import ModelGraph, ModelInfo
from xpusim.engine.system import Parallelism, System, Topology

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROBES",
    "ConformanceError",
    "Probe",
    "ProbeMLP",
    "ProbeUnavailable",
    "check_collectives_grow",
    "check_costs_positive",
    "check_deterministic",
    "check_energy_floor",
    "check_fit_consistent",
    "check_monotone",
    "check_support_answer",
    "make_system",
    "probe_model",
    "shared_host",
]

REL_TOL = 1e-9
"""Relative slack in comparisons, for floating-point sums taken in a different order."""


class ConformanceError(AssertionError):
    """A backend broke a rule of the kit; the message names the rule, the backend, the
    device, the model and the numbers."""


class ProbeUnavailable(Exception):
    """A probe model cannot be built here: no installed plugin registers its family.
    The message names the families; the pytest face skips the probe with it."""


# --- probe models ------------------------------------------------------------------------


class ProbeMLP(ModelGraph):
    """A two-layer perceptron built from engine types only: ``x·W1 → ReLU → ·W2``.

    ``width`` inputs and outputs, ``hidden`` units, ``dtype`` weights and activations.
    The op graph of a step of ``batch`` samples holds two GEMMs and the ReLU; with
    tensor parallelism ``t`` the first GEMM is split by columns and the second by rows
    (Megatron style), each holds ``1/t`` of the weights, and an all-reduce of the output
    joins the shards. ``kind`` is ``mlp`` (the :data:`PROBES` entry ``unknown-kind`` uses
    a kind no backend knows, to check refusals).
    """

    def __init__(
        self, width: int = 512, hidden: int = 2048, dtype: str = "bf16", kind: str = "mlp"
    ) -> None:
        self.width = width
        self.hidden = hidden
        self.dtype = dtype
        params = float(2 * width * hidden)
        b = dtype_bytes(dtype)
        self.info = ModelInfo(
            name=f"probe-mlp-{width}x{hidden}",
            family="probe-mlp",
            kind=kind,
            dtype=dtype,
            params=params,
            active_params=params,
            param_bytes=params * b,
            flops_per_token=2.0 * params,
            layers=2,
            config={"width": width, "hidden": hidden},
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """Two sharded GEMMs, a ReLU and (tensor parallel) one all-reduce."""
        t = max(1, parallel.tensor if parallel else 1)
        n = max(1, shape.batch) * max(1, shape.tokens if shape.phase is not Phase.FORWARD else 1)
        w, h = self.width, self.hidden // t
        b = dtype_bytes(self.dtype)
        ops = [
            Op(
                "fc1",
                OpKind.MATMUL,
                flops=2.0 * n * w * h,
                bytes_read=b * (n * w + w * h),
                bytes_written=b * n * h,
                param_bytes=b * w * h,
                dims=(n, h, w),
                dtype=self.dtype,
            ),
            Op(
                "relu",
                OpKind.ELEMENTWISE,
                flops=float(n * h),
                bytes_read=b * n * h,
                bytes_written=b * n * h,
                dims=(n * h,),
                dtype=self.dtype,
            ),
            Op(
                "fc2",
                OpKind.MATMUL,
                flops=2.0 * n * h * w,
                bytes_read=b * (n * h + h * w),
                bytes_written=b * n * w,
                param_bytes=b * h * w,
                dims=(n, w, h),
                dtype=self.dtype,
            ),
        ]
        if t > 1:
            ops.append(
                Op(
                    "fc2.all_reduce",
                    OpKind.COLLECTIVE,
                    collective=Collective.ALL_REDUCE,
                    comm_bytes=b * n * w,
                    group=t,
                    dtype=self.dtype,
                )
            )
        return OpGraph(shape.phase, tuple(ops), shape, dtype=self.dtype)

    def module(self, device: str = "meta") -> torch.nn.Module:
        """The real ``torch.nn.Sequential`` this graph describes (imports torch)."""
        import torch

        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.dtype, torch.float32
        )
        return torch.nn.Sequential(
            torch.nn.Linear(self.width, self.hidden, bias=False, device=device, dtype=dt),
            torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, self.width, bias=False, device=device, dtype=dt),
        )

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """One ``(batch, width)`` input tensor (imports torch)."""
        import torch

        dt = next(self.module("meta").parameters()).dtype
        return (torch.zeros(max(1, shape.batch), self.width, device=device, dtype=dt),)


@dataclass(frozen=True)
class Probe:
    """One model the kit runs, the workload kind it is asked for and its shape sweeps.

    ``families`` lists ``(family, spec)`` candidates looked up in the host registry in
    order (the first registered one is used); ``build`` makes an engine-only model
    instead. ``sweeps`` maps a sweep name to shapes in increasing size, along one axis.
    ``kv`` says whether the model has a KV cache to check fit against.
    """

    name: str
    workload: str
    sweeps: Mapping[str, tuple[Shape, ...]]
    families: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    build: Callable[[], ModelGraph] | None = None
    kv: bool = False
    representative: tuple[Shape, ...] = field(default=())

    def shapes(self) -> tuple[Shape, ...]:
        """Every shape of every sweep (for positivity, energy and determinism)."""
        seen: dict[Shape, None] = {}
        for sweep in self.sweeps.values():
            for s in sweep:
                seen[s] = None
        return tuple(seen)


_TINY_DECODER = {
    "layers": 2,
    "hidden": 256,
    "heads": 4,
    "ffn_hidden": 704,
    "vocab": 1024,
    "seq_len": 2048,
    "dtype": "bf16",
}

PROBES: tuple[Probe, ...] = (
    Probe(
        name="decoder",
        workload="serving",
        families=(
            ("llama", {"preset": "llama-2-7b", **_TINY_DECODER, "kv_heads": 4}),
            ("gpt", {"preset": "gpt2", **_TINY_DECODER}),
        ),
        sweeps={
            "decode batch": tuple(
                Shape(Phase.DECODE, batch=b, tokens=1, context=128)
                for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)
            ),
            "prefill tokens": tuple(
                Shape(Phase.PREFILL, batch=1, tokens=t)
                for t in (16, 32, 64, 128, 256, 512, 1024, 2048)
            ),
            "decode context": tuple(
                Shape(Phase.DECODE, batch=8, tokens=1, context=c)
                for c in (0, 128, 256, 512, 1024, 2047)
            ),
        },
        kv=True,
    ),
    Probe(
        name="mlp",
        workload="offline",
        build=ProbeMLP,
        sweeps={
            "batch": tuple(
                Shape(Phase.FORWARD, batch=b) for b in (1, 2, 4, 8, 16, 64, 256, 1024, 4096)
            )
        },
    ),
    Probe(
        name="spiking",
        workload="spiking",
        families=(
            (
                "snn",
                {
                    "preset": "kws-2layer",
                    "calibration_samples": 1,
                    "calibration_timesteps": 20,
                    "timesteps": 50,
                },
            ),
        ),
        sweeps={
            "timesteps": tuple(
                Shape(Phase.SPIKING, batch=1, timesteps=t) for t in (10, 20, 50, 100)
            )
        },
    ),
    Probe(
        name="unknown-kind",
        workload="offline",
        build=lambda: ProbeMLP(kind="conformance-unknown-kind"),
        sweeps={"batch": tuple(Shape(Phase.FORWARD, batch=b) for b in (1, 16, 256))},
    ),
)
"""The models every backend is checked against."""


def shared_host() -> Host:
    """One host of every installed plugin, built on first use and shared by the kit
    (the process's :func:`~xpusim.engine.host.default_host`)."""
    return default_host()


def probe_model(probe: Probe, host: Host) -> ModelGraph:
    """Build ``probe``'s model: engine-only, or from the first of its families that
    ``host`` has registered; raises :class:`ProbeUnavailable`, naming the families, when
    none is."""
    if probe.build is not None:
        return probe.build()
    for family, spec in probe.families:
        if family in host.models:
            return host.models.get(family).configure(dict(spec))
    raise ProbeUnavailable(
        f"probe {probe.name!r} needs model family "
        f"{' or '.join(repr(f) for f, _ in probe.families)}, and no installed "
        f"plugin registers it"
    )


# --- systems ---------------------------------------------------------------------------


def _topology(device: DeviceSpec) -> Topology:
    """Two-level topology from the device's catalog links; a device without links gets
    an explicit no-link topology (collectives are then not checked)."""
    up: LinkSpec | None = device.scale_up or device.scale_out
    out: LinkSpec | None = device.scale_out or device.scale_up
    if up is None or out is None:
        return Topology(
            devices_per_node=1,
            intra_bw=1.0,
            intra_latency=0.0,
            inter_bw=1.0,
            inter_latency=0.0,
            intra_name="none",
            inter_name="none",
        )
    return Topology.from_links(max(1, device.devices_per_node), up, out)


def make_system(
    device: DeviceSpec,
    count: int = 1,
    tensor: int = 1,
    options: Mapping[str, Any] | None = None,
    name: str = "",
) -> System:
    """A system of ``count`` devices of ``device``: ``tensor``-way tensor parallel, the
    rest data parallel, wired by the device's catalog links."""
    if count % tensor:
        raise ValueError(f"tensor={tensor} does not divide count={count}")
    return System(
        name=name or f"{device.name}-x{count}",
        backend=device.backend,
        device=device,
        count=count,
        parallelism=Parallelism(data=count // tensor, tensor=tensor),
        topology=_topology(device),
        options=dict(options or {}),
    )


# --- checks ------------------------------------------------------------------------------


def _where(compiled: Compiled) -> str:
    s = compiled.system
    return f"backend {s.backend!r}, device {s.device.name!r}, model {compiled.model.name!r}"


def _fmt(shape: Shape) -> str:
    if shape.phase is Phase.SPIKING:
        return f"{shape.phase.value}(batch={shape.batch}, timesteps={shape.timesteps})"
    return (
        f"{shape.phase.value}(batch={shape.batch}, tokens={shape.tokens}, context={shape.context})"
    )


def check_support_answer(
    backend: Backend, model: ModelGraph, workload: str, system: System
) -> Support:
    """``supports()`` answers without raising; a refusal has a reason; an acceptance is
    honoured: ``compile()`` works and a first step prices. Returns the answer."""
    where = f"backend {backend.name!r}, model {model.name!r} (kind {model.kind!r})"
    try:
        answer = backend.supports(model, workload)
    except Exception as exc:
        raise ConformanceError(
            f"{where}: supports(model, {workload!r}) raised {type(exc).__name__}: {exc}; it "
            f"must return Support(ok=False, reason) instead."
        ) from exc
    if not isinstance(answer, Support):
        raise ConformanceError(f"{where}: supports() returned {answer!r}, not a Support.")
    if not answer.ok:
        if not answer.reason.strip():
            raise ConformanceError(
                f"{where}: supports() refused {workload!r} without a reason; say why in "
                f"Support.reason so the run's summary can tell the user."
            )
        return answer
    try:
        compiled = backend.compile(model, system)
        shape = (
            Shape(Phase.DECODE, batch=1, tokens=1, context=16)
            if model.kind == "decoder"
            else Shape(Phase.SPIKING, timesteps=10)
            if model.kind == "spiking"
            else Shape(Phase.FORWARD, batch=1)
        )
        compiled.cost(shape)
    except Exception as exc:
        raise ConformanceError(
            f"{where}: supports() accepted workload {workload!r} but compiling or pricing "
            f"raised {type(exc).__name__}: {exc}. Refuse what you cannot run."
        ) from exc
    return answer


def check_costs_positive(compiled: Compiled, shapes: Sequence[Shape]) -> list[Cost]:
    """Every shape's cost has finite positive seconds and joules and a breakdown of
    non-negative parts that sum to the seconds. Returns the costs."""
    costs = []
    for shape in shapes:
        c = compiled.cost(shape)
        head = f"{_where(compiled)}, {_fmt(shape)}"
        if not (math.isfinite(c.seconds) and c.seconds > 0):
            raise ConformanceError(f"{head}: step seconds must be finite and > 0, got {c.seconds}.")
        if not (math.isfinite(c.joules) and c.joules > 0):
            raise ConformanceError(f"{head}: step joules must be finite and > 0, got {c.joules}.")
        if c.breakdown:
            bad = {k: v for k, v in c.breakdown.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise ConformanceError(f"{head}: negative or non-finite breakdown parts {bad}.")
            total = sum(c.breakdown.values())
            if not math.isclose(total, c.seconds, rel_tol=1e-6, abs_tol=1e-15):
                raise ConformanceError(
                    f"{head}: the breakdown {dict(c.breakdown)} sums to {total} s but the "
                    f"step takes {c.seconds} s; the breakdown must split the seconds."
                )
        costs.append(c)
    return costs


def check_monotone(compiled: Compiled, sweep: Sequence[Shape], what: str = "") -> list[float]:
    """Seconds never decrease along ``sweep`` (shapes in increasing size) and the last
    shape costs strictly more than the first. Returns the seconds."""
    secs = [compiled.cost(s).seconds for s in sweep]
    for i in range(1, len(sweep)):
        a, b, sa, sb = sweep[i - 1], sweep[i], secs[i - 1], secs[i]
        if sb < sa * (1 - REL_TOL):
            raise ConformanceError(
                f"{_where(compiled)}: cost must not fall as the {what or 'shape'} grows, but "
                f"{_fmt(b)} takes {sb:.6g} s < {_fmt(a)} at {sa:.6g} s."
            )
    if len(secs) > 1 and not secs[-1] > secs[0]:
        raise ConformanceError(
            f"{_where(compiled)}: over the {what or 'shape'} sweep from {_fmt(sweep[0])} to "
            f"{_fmt(sweep[-1])} the cost stays at {secs[0]:.6g} s; more work must cost more."
        )
    return secs


def check_deterministic(
    backend: Backend, model: ModelGraph, system: System, shapes: Sequence[Shape]
) -> None:
    """Two separate compilations price every shape identically (seconds, joules and
    breakdown), and a repeated query returns the same cost."""
    first = backend.compile(model, system)
    second = backend.compile(model, system)
    for shape in shapes:
        a, b = first.cost(shape), second.cost(shape)
        if (a.seconds, a.joules, dict(a.breakdown)) != (b.seconds, b.joules, dict(b.breakdown)):
            raise ConformanceError(
                f"{_where(first)}, {_fmt(shape)}: two compilations disagree: {a} vs {b}; "
                f"the same scenario and seed must give the same numbers."
            )
        if first.cost(shape) != a:
            raise ConformanceError(f"{_where(first)}, {_fmt(shape)}: repeated cost() differs.")


def check_energy_floor(compiled: Compiled, shapes: Sequence[Shape]) -> bool:
    """Joules of every step are at least idle power × seconds × devices of a replica.
    Returns ``False`` (nothing checked) when the compilation has no power model."""
    power = compiled.power_model()
    if power is None:
        return False
    devices = max(1, compiled.system.parallelism.model_parallel)
    for shape in shapes:
        c = compiled.cost(shape)
        floor = power.idle_watts * c.seconds * devices
        if c.joules < floor * (1 - 1e-9):
            raise ConformanceError(
                f"{_where(compiled)}, {_fmt(shape)}: {c.joules:.6g} J is below idle power "
                f"{power.idle_watts:g} W x {c.seconds:.6g} s x {devices} device(s) = "
                f"{floor:.6g} J; a busy device draws at least its idle power."
            )
    return True


def check_fit_consistent(compiled: Compiled, kv: bool) -> None:
    """``fits`` is exactly ``need <= have`` with a reason when false; need grows with
    batch and (``kv``) KV tokens; a KV cache twice the memory does not fit."""
    where = _where(compiled)

    def consistent(label: str, **kw: Any) -> float:
        f = compiled.fit(**kw)
        if f.need_bytes < 0 or f.have_bytes <= 0:
            raise ConformanceError(
                f"{where}, fit({label}): need {f.need_bytes} B, have "
                f"{f.have_bytes} B; need must be >= 0 and have > 0."
            )
        if f.fits != (f.need_bytes <= f.have_bytes):
            raise ConformanceError(
                f"{where}, fit({label}): fits={f.fits} but need {f.need_bytes:.4g} B vs have "
                f"{f.have_bytes:.4g} B; fits must mean need <= have."
            )
        if not f.fits and not f.reason.strip():
            raise ConformanceError(f"{where}, fit({label}): does not fit but gives no reason.")
        return f.need_bytes

    consistent("kv_tokens=0, batch=1", kv_tokens=0, batch=1)
    b1 = consistent("batch=1", batch=1)
    b64 = consistent("batch=64", batch=64)
    if b64 < b1 * (1 - REL_TOL):
        raise ConformanceError(
            f"{where}: memory need falls from batch 1 ({b1:.4g} B) to batch 64 ({b64:.4g} B)."
        )
    per_tok = compiled.model.kv_bytes_per_token
    if not kv or per_tok <= 0:
        return
    have = compiled.fit(kv_tokens=0).have_bytes
    mp = max(1, compiled.system.parallelism.model_parallel)
    needs = [consistent(f"kv_tokens={n}", kv_tokens=n) for n in (0, 1024, 65536)]
    if any(b < a * (1 - REL_TOL) for a, b in itertools.pairwise(needs)) or not needs[-1] > needs[0]:
        raise ConformanceError(f"{where}: memory need must grow with KV tokens, got {needs}.")
    huge = math.ceil(2 * have * mp / per_tok)
    f = compiled.fit(kv_tokens=huge)
    if f.fits:
        raise ConformanceError(
            f"{where}: a KV cache of {huge} tokens ({huge * per_tok / mp:.4g} B per device) is "
            f"twice the device's {have:.4g} B, yet fit() says it fits."
        )
    consistent(f"kv_tokens={huge}", kv_tokens=huge)


COLLECTIVE_SIZES = (1e3, 1e5, 1e7, 1e9)
"""Payloads (bytes per device) of the collective check."""


def check_collectives_grow(
    backend: Backend,
    system: System,
    kinds: Sequence[Collective] = (
        Collective.ALL_REDUCE,
        Collective.ALL_GATHER,
        Collective.REDUCE_SCATTER,
    ),
) -> None:
    """For each ``kind`` over all of ``system``'s devices, seconds are finite, >= 0,
    non-decreasing in the payload and larger for 1 GB than for 1 kB."""
    group = system.count
    for kind in kinds:
        secs = [backend.collective_seconds(kind, n, group, system) for n in COLLECTIVE_SIZES]
        where = (
            f"backend {backend.name!r}, device {system.device.name!r}, {kind.value} over {group}"
        )
        if any(not (math.isfinite(s) and s >= 0) for s in secs):
            raise ConformanceError(f"{where}: times must be finite and >= 0, got {secs}.")
        if any(b < a * (1 - REL_TOL) for a, b in itertools.pairwise(secs)):
            raise ConformanceError(
                f"{where}: a larger payload must not be faster: {dict(zip(COLLECTIVE_SIZES, secs, strict=True))}."
            )
        if not secs[-1] > secs[0]:
            raise ConformanceError(f"{where}: 1 GB takes no longer than 1 kB ({secs[0]} s).")
