"""The ``cpu`` backend: this machine's CPU, measured for real and priced by formula.

One backend, two devices (so one scenario compares the two side by side):

``host`` (measured)
    :class:`MeasuredCompiled` really executes the model's ``torch.nn.Module`` on this
    machine for every distinct shape: ``warmup`` calls, then the median of ``repeats``
    timed calls under ``torch.inference_mode`` (memoized per shape, as every
    :class:`~xpusim.engine.backend.Compiled` is). One extra call under ``torch.profiler`` splits
    the seconds into ``compute`` / ``memory`` / ``overhead``. Energy is the RAPL delta
    when ``/sys/class/powercap/intel-rapl:*/energy_uj`` is readable, else the stated power
    model below, and :meth:`MeasuredCompiled.figures_used` says which (``energy.method``).
``host-analytic`` (analytic)
    :class:`xpusim.engine.analytic.AnalyticCompiled` with :class:`xpusim.plugins.cpu.analytic.CpuOpPricer`:
    a roofline whose GEMM/convolution/attention efficiency, streaming bandwidths and call
    overheads come from a calibration of this machine (``xpusim calibrate --backend cpu``).
    It is how the analytic machinery used for GPUs and TPUs is checked against reality
    (``benchmarks/fidelity.py``).

Options (``systems[].options``):

``threads``      torch threads (default: every core this process may run on).
``repeats``      timed calls per shape (default 5); ``warmup`` untimed ones (default 2).
``dtype``        the dtype the module runs in (default: the model's ``dtype``).
``profile``      split the measured time with ``torch.profiler`` (default true).
``clock``        ``wall`` (default) or ``cpu``: the process CPU time of each call, which on
                 a machine shared with other work leaves out the time the scheduler gave
                 them (use with ``threads: 1``); the analytic device then uses a
                 calibration measured with the same clock.
``calibration``  a calibration file (default: this machine's cached calibration, else a
                 shipped one in ``calibrations/`` measured on a matching machine, else a
                 quick calibration measured on first use and cached under
                 ``$XDG_CACHE_HOME/xpusim`` or the system temp folder).

Power model when RAPL is not readable (a stated assumption: the TDP of this CPU is not
known here): each core in use draws :data:`WATTS_PER_CORE` at full load, idle is
:data:`IDLE_FRACTION` of that, and the engine's state utilizations apply
(:class:`xpusim.engine.power.PowerModel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.analytic import AnalyticCompiled
from xpusim.engine.backend import Backend, Compiled, Cost, Fit, Support
from xpusim.engine.collectives import collective_seconds
from xpusim.engine.device import DeviceSpec, Figure, PowerSpec
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Collective, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System
from xpusim.plugins.cpu import calibrate as cal_mod
from xpusim.plugins.cpu.analytic import CpuAnalyticCompiled, CpuOpPricer
from xpusim.plugins.cpu.calibrate import CpuCalibration
from xpusim.plugins.cpu.measure import Rapl, StepTiming, profile_ops, time_steps

WATTS_PER_CORE = 5.0
"""Busy watts per core in use when no RAPL counter is readable. Server parts put 3.75
(AMD EPYC 9654: 360 W TDP over 96 cores) to 6.25 W per core (Xeon Platinum 8480+: 350 W
over 56 cores) at TDP; 5 W sits between. An assumption, not a measurement."""

IDLE_FRACTION = 0.3
"""Idle power of a core as a fraction of its busy power (uncore, caches and memory
controller stay powered); an assumption."""

INPUT_SEED = 0
"""Seed of the standard-normal values that replace a model's floating-point example
inputs on ``host``. Example inputs are often zeros, and some kernels run faster on
constant data than on real data: ``max_pool2d`` over 8×32×32×32 zeros takes a third of
the time it takes over normal samples on the machine the shipped calibration describes
(its comparisons become perfectly predicted branches). Integer inputs (token ids) are
kept."""

RUNTIME_RESERVE_BYTES = 0.5e9
"""Memory the Python process, torch and its allocator take before any weight."""

SHIPPED = Path(__file__).resolve().parents[2] / "calibrations"
"""Where shipped calibration files live (the repository's ``calibrations/``)."""

DEVICES = ("host", "host-analytic")

MEASURED_STATISTIC = "median"
"""What ``host`` reports of its timed steps; a calibration is used by default only when
its kernels were reduced the same way (:data:`xpusim.plugins.cpu.calibrate.STATISTICS`)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class CpuOptions(BaseModel):
    """``systems[].options`` of the cpu backend (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(default=None, ge=1, le=4096)
    """torch threads (default: every core this process may run on)."""
    repeats: int = Field(default=5, ge=1, le=10_000)
    """Timed calls per shape."""
    warmup: int = Field(default=2, ge=0, le=10_000)
    """Untimed calls before the timed ones."""
    dtype: Literal["fp32", "tf32", "bf16", "fp16"] | None = None
    """The dtype the module runs in (default: the model's)."""
    profile: bool = True
    """Split the measured time with ``torch.profiler``."""
    clock: Literal["wall", "cpu"] = "wall"
    """``wall`` or ``cpu`` (process CPU time of each call)."""
    calibration: str | None = None
    """A calibration file (default: this machine's cached or a matching shipped one)."""


class CpuBackend(Backend):
    """This machine's CPU: device ``host`` measures, ``host-analytic`` predicts."""

    name = "cpu"
    description = (
        "this machine's CPU: 'host' executes the torch model and measures; "
        "'host-analytic' prices it with a roofline calibrated on this machine"
    )
    options = CpuOptions
    can_calibrate = True

    def __init__(self) -> None:
        super().__init__()
        self._cals: dict[tuple[int, str], CpuCalibration] = {}
        self._catalog: dict[str, DeviceSpec] | None = None

    # -- calibration -----------------------------------------------------------------

    def default_calibration(
        self, threads: int | None = None, clock: str = "wall"
    ) -> CpuCalibration:
        """This machine's calibration at ``threads`` (default all cores) and ``clock``:
        the cached file, else a shipped one measured on a matching machine, else a quick
        calibration measured now and cached (see module doc)."""
        n = int(threads or cal_mod.logical_cores())
        if (n, clock) in self._cals:
            return self._cals[(n, clock)]
        mach = cal_mod.machine(n)
        found: CpuCalibration | None = None
        cached = cal_mod.default_path(n, clock)
        cands = [cached, *sorted(SHIPPED.glob("*.json"))] if SHIPPED.is_dir() else [cached]
        for p in cands:
            if not p.is_file():
                continue
            try:
                c = cal_mod.load(p)
            except XpusimError:
                continue
            if c.matches(mach) and c.clock == clock and c.statistic == MEASURED_STATISTIC:
                found = c
                break
        if found is None:
            found = cal_mod.calibrate(
                cached,
                quick=True,
                threads=n,
                clock=clock,
                command="automatic quick calibration on first use (xpusim cpu backend)",
            )
        self._cals[(n, clock)] = found
        return found

    def calibration_for(self, system: System) -> CpuCalibration:
        """The calibration a system uses: ``options.calibration`` or the default."""
        path = system.options.get("calibration")
        if path:
            return cal_mod.load(path)
        return self.default_calibration(_threads(system.options), _clock(system.options))

    def calibration_applies(self, path: Path, system: System) -> bool:
        """Whether the CPU calibration at ``path`` describes this machine at the system's
        thread count (its analytic device prices with it)."""
        try:
            cal = cal_mod.load(path)
        except XpusimError:
            return False
        n = int(_threads(system.options) or cal_mod.logical_cores())
        return system.device.name == "host-analytic" and cal.matches(cal_mod.machine(n))

    def calibrate(self, out_file: Path | None = None, points: Path | None = None) -> Path:
        """``xpusim calibrate --backend cpu``: the full microbenchmark set at every core,
        written to ``out_file`` (default: this machine's cache file, which later runs
        use). The cpu backend measures this machine and takes no ``points`` file."""
        if points is not None:
            raise XpusimError(
                "--points: backend 'cpu' calibrates by measuring this machine and "
                "takes no points file; drop --points, or use --backend gpu for a GPU "
                "points file."
            )
        n = cal_mod.logical_cores()
        out = Path(out_file) if out_file else cal_mod.default_path(n)
        cmd = "xpusim calibrate --backend cpu" + (f" --out {out_file}" if out_file else "")
        cal = cal_mod.calibrate(out, threads=n, command=cmd, log=lambda s: print(s, flush=True))
        self._cals[(n, "wall")] = cal
        self._catalog = None
        return out

    # -- catalog ---------------------------------------------------------------------

    def catalog(self) -> Mapping[str, DeviceSpec]:
        """``host`` and ``host-analytic``, described from the default calibration."""
        if self._catalog is None:
            cal = self.default_calibration()
            self._catalog = {d: host_spec(cal, d) for d in DEVICES}
        return self._catalog

    # -- compile ---------------------------------------------------------------------

    def supports(self, model: ModelGraph, workload: str) -> Support:
        """Inference workloads of any model with a torch module; not training (the
        measured device runs forward steps only) and not spiking networks."""
        if workload == "training":
            return Support(
                False,
                "the cpu backend measures and prices inference steps only; "
                "training steps are not run on the host.",
            )
        if model.kind == "spiking" or workload == "spiking":
            return Support(
                False, "spiking networks are run by the spinnaker backend, not the cpu backend."
            )
        return Support(True)

    def compile(self, model: ModelGraph, system: System) -> Compiled:
        """``host``: a :class:`MeasuredCompiled`; ``host-analytic``: an analytic one."""
        cal = self.calibration_for(system)
        twin = analytic_compiled(model, system, cal)
        if system.device.name == "host-analytic":
            return twin
        return MeasuredCompiled(system, model, twin)

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """Over the system's topology (a single host has none: zero)."""
        return collective_seconds(kind, nbytes, group, system.topology)


def _threads(options: Mapping[str, Any]) -> int:
    t = options.get("threads")
    if t is None:
        return cal_mod.logical_cores()
    try:
        n = int(t)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise XpusimError(f"cpu backend option threads must be a positive integer, got {t!r}.")
    return n


def _clock(options: Mapping[str, Any]) -> str:
    c = str(options.get("clock", "wall"))
    if c not in cal_mod.CLOCKS:
        raise XpusimError(
            f"cpu backend option clock must be one of {', '.join(cal_mod.CLOCKS)}, got {c!r}."
        )
    return c


def host_spec(cal: CpuCalibration, device: str = "host") -> DeviceSpec:
    """The :class:`DeviceSpec` of this machine from calibration ``cal``."""
    total, _ = cal_mod.memory_bytes()
    src = cal.cited()
    peaks = {dt: Figure(v, src) for dt, v in cal.peak_flops().items()}
    threads = cal.threads
    max_w = WATTS_PER_CORE * threads
    power = PowerSpec(
        max_w=Figure(
            max_w,
            assumption=(
                f"{WATTS_PER_CORE:g} W per core in use x {threads} (TDP of this CPU unknown here; "
                f"EPYC 9654 3.75 W/core, Xeon 8480+ 6.25 W/core at TDP)"
            ),
        ),
        idle_w=Figure(
            IDLE_FRACTION * max_w,
            assumption=(
                f"{IDLE_FRACTION:g} x busy power: uncore, caches and memory controller stay on"
            ),
        ),
    )
    kind = (
        "measured: executes the torch model"
        if device == "host"
        else "analytic: roofline calibrated on this machine"
    )
    return DeviceSpec(
        name=device,
        backend="cpu",
        vendor=str(cal.machine.get("cpu_model", "")),
        description=f"{cal.machine.get('cpu_model')} ({threads} threads), {kind}",
        peak_flops=peaks,
        memory_bytes=Figure(
            total or float(cal.machine.get("memory_bytes", 0.0)) or 1.0,
            "/proc/meminfo MemTotal on this machine",
        ),
        memory_bw=Figure(cal.memory_bandwidth, src),
        power=power,
        devices_per_node=1,
        extra={
            "threads": Figure(float(threads), src),
            "cache_bandwidth": Figure(cal.streams["copy"].peak_bandwidth, src),
            "dispatch_s": Figure(cal.dispatch_s, src),
        },
    )


def analytic_compiled(
    model: ModelGraph,
    system: System,
    cal: CpuCalibration,
    catalog: Mapping[str, DeviceSpec] | None = None,
) -> AnalyticCompiled:
    """The ``host-analytic`` compilation of ``model`` on ``system`` under ``cal``."""
    spec = host_spec(cal, "host-analytic")
    return CpuAnalyticCompiled(
        system,
        model,
        cal=cal,
        price_op=CpuOpPricer(cal, weight_bytes=float(model.info.param_bytes)),
        collective=lambda kind, nbytes, group: collective_seconds(
            kind, nbytes, group, system.topology
        ),
        power=PowerModel.from_device(spec, idle_fraction=IDLE_FRACTION),
        catalog=catalog,
        reserve_bytes=RUNTIME_RESERVE_BYTES,
        reserve_note="Python, torch and allocator",
    )


_TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class MeasuredCompiled(Compiled):
    """A model executed on this machine (device ``host``; see module doc).

    ``twin`` is the analytic compilation of the same model on the same machine: it
    answers :meth:`fit` and gives the FLOPs of a step.
    """

    def __init__(self, system: System, model: ModelGraph, twin: AnalyticCompiled) -> None:
        super().__init__(system, model)
        self.twin = twin
        opts = system.options
        self.threads = _threads(opts)
        self.repeats = max(1, int(opts.get("repeats", 5)))
        self.warmup = max(0, int(opts.get("warmup", 2)))
        self.profile = bool(opts.get("profile", True))
        self.clock = _clock(opts)
        self.dtype = str(opts.get("dtype", model.info.dtype or "fp32"))
        if self.dtype not in _TORCH_DTYPES:
            raise XpusimError(
                f"cpu backend option dtype {self.dtype!r} cannot run on the host; valid: "
                f"{', '.join(_TORCH_DTYPES)}."
            )
        self.rapl = Rapl.open()
        self.power = twin.power
        self.timings: dict[Shape, StepTiming] = {}
        self.splits: dict[Shape, dict[str, float]] = {}
        self.op_profiles: dict[Shape, Any] = {}

    @cached_property
    def module(self) -> Any:
        """The model's module on the CPU, in eval mode, in the run dtype."""
        import torch

        try:
            mod = self.model.module("cpu")
        except XpusimError:
            raise
        except Exception as exc:
            raise XpusimError(
                f"model {self.model.name!r}: building its torch module failed: {_first_line(exc)}"
            ) from None
        tdt = getattr(torch, _TORCH_DTYPES[self.dtype])
        mod = mod.to(dtype=tdt) if any(p.is_floating_point() for p in mod.parameters()) else mod
        return mod.eval()

    def inputs(self, shape: Shape) -> Any:
        """The model's example inputs for ``shape`` on the CPU, floating-point ones
        replaced by standard-normal samples in the run dtype (:data:`INPUT_SEED`)."""
        import torch

        try:
            ins = self.model.example_inputs(shape, "cpu")
        except XpusimError:
            raise
        except Exception as exc:
            raise XpusimError(
                f"model {self.model.name!r}: building inputs for {shape.phase} batch "
                f"{shape.batch} failed: {_first_line(exc)}"
            ) from None
        tdt = getattr(torch, _TORCH_DTYPES[self.dtype])
        gen = torch.Generator().manual_seed(INPUT_SEED)

        def cast(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                # data like real data: see INPUT_SEED
                return torch.randn(x.shape, generator=gen).to(tdt)
            if isinstance(x, tuple):
                return tuple(cast(v) for v in x)
            if isinstance(x, list):
                return [cast(v) for v in x]
            if isinstance(x, dict):
                return {k: cast(v) for k, v in x.items()}
            return x

        return cast(ins)

    def measure(self, shape: Shape) -> StepTiming:
        """Run and time one step of ``shape`` (not memoized; :meth:`cost` is)."""
        mod = self.module
        ins = self.inputs(shape)
        try:
            t = time_steps(
                mod,
                ins,
                n_threads=self.threads,
                warmup=self.warmup,
                repeats=self.repeats,
                rapl=self.rapl,
                clock=self.clock,
            )
            if self.profile:
                prof = profile_ops(mod, ins, n_threads=self.threads)
                self.op_profiles[shape] = prof
                self.splits[shape] = prof.split()
        except Exception as exc:
            raise XpusimError(
                f"model {self.model.name!r} failed on the cpu backend at {shape.phase} "
                f"batch {shape.batch}: {_first_line(exc)}"
            ) from None
        self.timings[shape] = t
        return t

    def _cost(self, shape: Shape) -> Cost:
        if shape.parts:  # a mixed serving iteration: its parts run one after another
            parts = [self.cost(p) for p in shape.parts]
            bd: dict[str, float] = {}
            for c in parts:
                for k, v in c.breakdown.items():
                    bd[k] = bd.get(k, 0.0) + v
            return Cost(
                sum(c.seconds for c in parts),
                sum(c.joules for c in parts),
                bd,
                sum(c.flops for c in parts),
            )
        if shape.phase in (Phase.TRAIN, Phase.BACKWARD):
            raise XpusimError("the cpu backend measures inference steps only.")
        t = self.measure(shape)
        seconds = t.median
        split = self.splits.get(shape)
        total = sum(split.values()) if split else 0.0
        if split and total > 0:
            breakdown = {k: seconds * v / total for k, v in split.items()}
        else:
            breakdown = {"busy": seconds}
        joules = t.joules if t.joules is not None else self.power.joules(breakdown, devices=1)
        try:
            flops = self.model.build(shape, self.system.parallelism).flops
        except Exception:
            flops = 0.0
        return Cost(seconds, max(0.0, joules), breakdown, flops)

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """Memory fit against this machine's memory (the analytic twin's estimate)."""
        return self.twin.fit(kv_tokens=kv_tokens, batch=batch, training=training)

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """KV-cache tokens that fit in this machine's memory (the twin's estimate)."""
        return self.twin.kv_capacity_tokens(reserve_fraction)

    def figures_used(self) -> dict[str, Figure]:
        """Device figures plus how energy was obtained (RAPL or the stated model)."""
        out = dict(self.system.device.figures())
        if self.rapl is not None:
            out["energy.method"] = Figure(
                float(len(self.rapl.domains)), "RAPL package counters (/sys/class/powercap)"
            )
        else:
            out["energy.method"] = Figure(
                self.power.max_w,
                assumption=(
                    "energy modelled, not measured: no readable RAPL counter on this machine; "
                    f"{WATTS_PER_CORE:g} W per busy core x {self.threads} threads"
                ),
            )
        out["threads"] = Figure(float(self.threads), "torch.set_num_threads on this machine")
        return out


__all__ = ["DEVICES", "CpuBackend", "MeasuredCompiled", "analytic_compiled", "host_spec"]
