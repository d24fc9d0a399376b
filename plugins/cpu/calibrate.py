"""Microbenchmarks of this machine's CPU and the fitted cost model they feed.

``xpusim calibrate --backend cpu [--out FILE]`` (or :func:`calibrate`) times, with torch
on this machine at a fixed thread count:

* **GEMM** (``torch.mm``) over a grid of shapes, for ``fp32`` and ``bf16``, with the
  weights hot in cache (``gemm``) and, for small ``m`` (decode), cycling through 96 MiB of
  weight copies so each call reads them from DRAM (``gemm_cold``: packing a weight for a
  few rows costs far more than streaming it once);
* **convolution** (``F.conv2d``) over ResNet-like shapes (``fp32``);
* **attention** (``F.scaled_dot_product_attention``) at prefill and decode shapes;
* **streaming** kernels over working sets from 2 KiB to 256 MiB: ``copy`` (``copy_`` into
  an existing tensor: the bandwidth of memory already mapped, as weights are),
  ``elementwise`` (``a + b`` into a new tensor, as eager ops allocate their outputs),
  ``transcendental`` (``gelu``), ``norm`` (``layer_norm``),
  ``batchnorm`` (inference ``batch_norm``), ``softmax`` and ``maxpool`` (``max_pool2d``
  2×2 over 32×32 images: a window reduction, far slower per byte than ``a + b``), each as
  a table of (bytes moved, seconds per call);
* **dispatch overhead**: one aten call on a one-element tensor, one tiny ``linear``, one
  view op and one empty ``nn.Module`` call.

The fit (:func:`fit_gemm`): a GEMM-like kernel (GEMM, convolution lowered to its GEMM,
attention) of ``m × n × k`` repeated ``batch`` times takes

``t = max(F / (P · e), B / (μ · bw(B))) + t0``  with  ``e = Π_{x ∈ (m·batch, n, k)} x / (x + x0)``

where ``F`` are its FLOPs, ``B`` its bytes, ``bw(B)`` the measured streaming bandwidth at
that working set (cache effects included), ``t0`` the measured call overhead, and
``(P, m0, n0, k0, μ)`` are fitted by least squares on ``log t`` over the measured shapes
(grid search, no SciPy). ``P`` is the kernel family's asymptotic peak; ``e`` how far a
small dimension keeps it from that peak (vector-width padding, too few blocks for the
cores, short inner loops); ``μ`` the fraction of streaming bandwidth a memory-bound call
(a GEMV in decode) reaches. Streaming kernels are priced by log-log interpolation of their
measured tables.

The smooth fit misses the jumps a kernel library's blocking makes between nearby shapes
(20-50 % at some measured shapes), so each fit also keeps its measured residuals and
corrects a prediction by those of nearby shapes (:meth:`KernelFit.correction`).

Every point is the *median* of its samples by default (``statistic``, :data:`STATISTICS`),
the statistic the measured device reports of whole steps.

A calibration is JSON (:class:`CpuCalibration`) that records the machine it describes
(CPU model from ``/proc/cpuinfo``, logical cores, memory, torch version, threads), the
date and the command, so every figure derived from it can say "measured on this machine
by xpusim calibrate (date)".
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xpusim.engine.errors import XpusimError

FORMAT = "xpusim-cpu-calibration/1"
"""The ``format`` field of a CPU calibration file."""

STREAM_KINDS = ("copy", "elementwise", "transcendental", "norm", "batchnorm", "softmax", "maxpool")

_DTYPE_TORCH = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# --- the machine ---------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def logical_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> tuple[float, float]:
    """``(MemTotal, MemAvailable)`` in bytes from ``/proc/meminfo`` (0 when unreadable)."""
    total = avail = 0.0
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if not parts:
                continue
            v = float(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
            if key == "MemTotal":
                total = v
            elif key == "MemAvailable":
                avail = v
    except OSError:
        pass
    return total, avail


def torch_version() -> str:
    """The installed torch's version, read from its package metadata (importing torch
    takes seconds, and describing the machine runs nothing of it), else from the module
    itself where no metadata is installed."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        import torch

        return str(torch.__version__)


def machine(threads: int) -> dict[str, Any]:
    """A description of this machine as a calibration records it."""
    total, _ = memory_bytes()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": logical_cores(),
        "memory_bytes": total,
        "threads": int(threads),
        "torch_version": torch_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def fingerprint(mach: Mapping[str, Any]) -> str:
    """What must match for a calibration to describe this machine: CPU model, cores,
    threads and torch version."""
    return (
        f"{mach.get('cpu_model')}|{mach.get('logical_cores')}|{mach.get('threads')}|"
        f"{mach.get('torch_version')}"
    )


def cache_dir() -> Path:
    """Where automatic calibrations are cached: ``$XDG_CACHE_HOME/xpusim`` when that is
    set, else ``<system temp>/xpusim-cache-<uid>`` (never the user's home otherwise)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "xpusim"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"xpusim-cache-{uid}"


def default_path(threads: int, clock: str = "wall") -> Path:
    """The cache file of this machine's calibration at ``threads`` threads (and ``clock``)."""
    return cache_dir() / f"cpu-calibration-{threads}t{'' if clock == 'wall' else '-' + clock}.json"


# --- the calibration data model ----------------------------------------------------------


RESIDUAL_OCTAVES = 0.5
"""Width σ (in octaves of each of ``m``, ``n``, ``k``) over which a measured GEMM-like
point corrects the smooth fit (:meth:`KernelFit.correction`): a shape twice as large in
one dimension is two σ away and keeps e^-2 of the point's weight."""

RESIDUAL_PRIOR = math.exp(-2.0)
"""Weight of the smooth fit against the measured points in :meth:`KernelFit.correction`:
that of a single point two σ (one octave) away."""


@dataclass(frozen=True)
class KernelFit:
    """The fitted model of one GEMM-like kernel family at one dtype (see module doc)."""

    peak_flops: float
    m0: float
    n0: float
    k0: float
    overhead_s: float
    rms_log_error: float = 0.0
    mem_eff: float = 1.0
    residuals: tuple[tuple[float, float, float, float], ...] = ()

    def efficiency(self, m: float, n: float, k: float) -> float:
        """``e(m, n, k)``: the fraction of :attr:`peak_flops` a kernel of these dims gets."""
        return (m / (m + self.m0)) * (n / (n + self.n0)) * (k / (k + self.k0))

    def correction(self, m: float, n: float, k: float) -> float:
        """The factor the measured points near ``(m, n, k)`` say the smooth fit is off by
        there: ``exp(Σ wᵢ rᵢ / (W0 + Σ wᵢ))`` over the stored :attr:`residuals`
        ``rᵢ = ln(measured / fitted)``, ``wᵢ = exp(-dᵢ² / 2σ²)`` with ``dᵢ`` the distance
        in octaves of ``(m, n, k)`` and ``σ`` = :data:`RESIDUAL_OCTAVES`. ``W0`` =
        :data:`RESIDUAL_PRIOR` weighs the fit itself, so far from every measured shape the
        factor tends to 1 and at a measured shape it recovers most of its residual (the
        library's blocking makes a kernel's efficiency jump between nearby shapes in ways
        no smooth formula follows)."""
        if not self.residuals:
            return 1.0
        lm, ln_, lk = (math.log2(max(x, 1.0)) for x in (m, n, k))
        num = den = 0.0
        for pm, pn, pk, r in self.residuals:
            d2 = (lm - pm) ** 2 + (ln_ - pn) ** 2 + (lk - pk) ** 2
            w = math.exp(-d2 / (2.0 * RESIDUAL_OCTAVES**2))
            num += w * r
            den += w
        return math.exp(num / (RESIDUAL_PRIOR + den))

    def to_json(self) -> dict[str, Any]:
        """The fit as a JSON object."""
        return {
            "peak_flops": self.peak_flops,
            "m0": self.m0,
            "n0": self.n0,
            "k0": self.k0,
            "overhead_s": self.overhead_s,
            "rms_log_error": self.rms_log_error,
            "mem_eff": self.mem_eff,
            "residuals": [list(r) for r in self.residuals],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> KernelFit:
        """Read a fit written by :meth:`to_json`."""
        res = tuple(
            (float(a), float(b), float(c), float(d)) for a, b, c, d in raw.get("residuals", [])
        )
        return cls(
            float(raw["peak_flops"]),
            float(raw["m0"]),
            float(raw["n0"]),
            float(raw["k0"]),
            float(raw["overhead_s"]),
            float(raw.get("rms_log_error", 0.0)),
            float(raw.get("mem_eff", 1.0)),
            res,
        )


@dataclass(frozen=True)
class StreamTable:
    """Measured (bytes moved, seconds per call) of one streaming kernel, sorted by bytes.

    :meth:`seconds` interpolates linearly in log-log between points; below the smallest
    size the time is the smallest point's (the call overhead floor), above the largest the
    largest point's bandwidth holds.
    """

    nbytes: tuple[float, ...]
    seconds: tuple[float, ...]

    def seconds_for(self, nbytes: float) -> float:
        """Seconds one call moving ``nbytes`` takes."""
        xs, ys = self.nbytes, self.seconds
        if nbytes <= xs[0]:
            return ys[0]
        if nbytes >= xs[-1]:
            return ys[-1] * nbytes / xs[-1]
        lx = math.log(nbytes)
        for i in range(1, len(xs)):
            if nbytes <= xs[i]:
                x0, x1 = math.log(xs[i - 1]), math.log(xs[i])
                y0, y1 = math.log(ys[i - 1]), math.log(ys[i])
                w = (lx - x0) / (x1 - x0) if x1 > x0 else 0.0
                return math.exp(y0 + w * (y1 - y0))
        return ys[-1]

    def bandwidth(self, nbytes: float) -> float:
        """Effective bytes/s at a working set of ``nbytes`` (overhead included)."""
        return nbytes / self.seconds_for(nbytes) if nbytes > 0 else float("inf")

    @property
    def peak_bandwidth(self) -> float:
        """The best bytes/s of any measured size."""
        return max(b / s for b, s in zip(self.nbytes, self.seconds, strict=True))

    @property
    def dram_bandwidth(self) -> float:
        """Bytes/s at the largest measured working set (beyond the last-level cache)."""
        return self.nbytes[-1] / self.seconds[-1]

    def to_json(self) -> list[list[float]]:
        """The table as ``[[bytes, seconds], ...]``."""
        return [[b, s] for b, s in zip(self.nbytes, self.seconds, strict=True)]

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]]) -> StreamTable:
        """Build from ``[[bytes, seconds], ...]`` in any order (duplicate sizes averaged,
        times made non-decreasing in bytes)."""
        pts = sorted((float(b), float(s)) for b, s in points)
        if not pts:
            raise ValueError("a stream table needs at least one point")
        xs: list[float] = []
        ys: list[float] = []
        for b, s in pts:
            if xs and b == xs[-1]:
                ys[-1] = (ys[-1] + s) / 2
                continue
            xs.append(b)
            ys.append(max(s, ys[-1] if ys else s))
        return cls(tuple(xs), tuple(ys))


@dataclass(frozen=True)
class CpuCalibration:
    """One machine's measured kernels and fitted cost model (see the module docstring).

    ``kernels[family][dtype]`` is a :class:`KernelFit` (``family`` in ``gemm``, ``conv``,
    ``attention``); ``streams[kind]`` a :class:`StreamTable`; ``dispatch_s`` the time of
    one aten call on a one-element tensor; ``points`` keeps the raw measurements.
    """

    machine: Mapping[str, Any]
    date: str
    command: str
    threads: int
    quick: bool
    kernels: Mapping[str, Mapping[str, KernelFit]]
    streams: Mapping[str, StreamTable]
    dispatch_s: float
    points: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""
    clock: str = "wall"
    statistic: str = "median"

    # -- figures ----------------------------------------------------------------------

    def cited(self) -> str:
        """Provenance for every figure derived from this calibration."""
        where = f" ({self.path})" if self.path else ""
        mode = (
            (", quick mode" if self.quick else "")
            + (", CPU-time clock" if self.clock == "cpu" else "")
            + f", {self.statistic} of samples"
        )
        return (
            f"measured on this machine by xpusim calibrate ({self.date}{mode}): "
            f"{self.machine.get('cpu_model')}, {self.threads} threads, torch "
            f"{self.machine.get('torch_version')}{where}"
        )

    @property
    def view_s(self) -> float:
        """Seconds of one view dispatch (``view``, ``transpose``: no data moved); the
        aten call time for files measured before it was recorded."""
        return float(dict(self.points.get("dispatch", {})).get("view_call_s", self.dispatch_s))

    @property
    def module_call_s(self) -> float:
        """Seconds of one empty ``nn.Module`` call (zero for files without it)."""
        return float(dict(self.points.get("dispatch", {})).get("module_call_s", 0.0))

    def peak_flops(self) -> dict[str, float]:
        """Fitted asymptotic GEMM FLOP/s per dtype."""
        return {dt: f.peak_flops for dt, f in self.kernels.get("gemm", {}).items()}

    @property
    def memory_bandwidth(self) -> float:
        """Streaming-copy bandwidth beyond the last-level cache (bytes/s, read + write)."""
        return self.streams["copy"].dram_bandwidth

    def kernel(self, family: str, dtype: str) -> KernelFit:
        """The fit of ``family`` at ``dtype``, falling back to fp32 (then any dtype) and,
        for a family not measured, to the GEMM fit."""
        fams = [family, "gemm"] if family != "gemm" else ["gemm"]
        for fam in fams:
            fits = self.kernels.get(fam, {})
            for dt in (dtype, {"fp16": "bf16", "bf16": "fp16"}.get(dtype, dtype), "fp32"):
                if dt in fits:
                    return fits[dt]
            if fits:
                return next(iter(fits.values()))
        raise XpusimError(
            f"calibration {self.path or ''} holds no GEMM fit; re-run "
            f"`xpusim calibrate --backend cpu`."
        )

    def matches(self, mach: Mapping[str, Any]) -> bool:
        """Whether this calibration describes machine ``mach`` (see :func:`fingerprint`)."""
        return fingerprint(self.machine) == fingerprint(mach)

    # -- JSON -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "format": FORMAT,
            "backend": "cpu",
            "measured_on": f"{self.machine.get('cpu_model')}, {self.machine.get('logical_cores')}"
            f" logical cores, {self.threads} threads, torch "
            f"{self.machine.get('torch_version')}",
            "date": self.date,
            "command": self.command,
            "quick": self.quick,
            "threads": self.threads,
            "clock": self.clock,
            "statistic": self.statistic,
            "machine": dict(self.machine),
            "dispatch_s": self.dispatch_s,
            "kernels": {
                fam: {dt: f.to_json() for dt, f in fits.items()}
                for fam, fits in self.kernels.items()
            },
            "streams": {k: t.to_json() for k, t in self.streams.items()},
            "summary": {
                "peak_flops": self.peak_flops(),
                "memory_bandwidth": self.memory_bandwidth,
                "cache_bandwidth": self.streams["copy"].peak_bandwidth,
            },
            "points": dict(self.points),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], path: str = "") -> CpuCalibration:
        """Read a calibration object; a missing field raises :class:`XpusimError`."""
        where = f"calibration file {path!r}" if path else "calibration"
        if raw.get("format") != FORMAT:
            raise XpusimError(
                f"{where} is not a CPU calibration (format {raw.get('format')!r}, expected "
                f"{FORMAT!r}); write one with `xpusim calibrate --backend cpu --out FILE`."
            )
        try:
            kernels = {
                fam: {dt: KernelFit.from_json(v) for dt, v in fits.items()}
                for fam, fits in raw["kernels"].items()
            }
            streams = {k: StreamTable.from_points(v) for k, v in raw["streams"].items()}
            missing = [k for k in ("copy", "elementwise") if k not in streams]
            if missing or "gemm" not in kernels:
                raise KeyError(", ".join(missing or ["kernels.gemm"]))
            return cls(
                machine=dict(raw["machine"]),
                date=str(raw["date"]),
                command=str(raw["command"]),
                threads=int(raw["threads"]),
                quick=bool(raw.get("quick", False)),
                kernels=kernels,
                streams=streams,
                dispatch_s=float(raw["dispatch_s"]),
                points=dict(raw.get("points", {})),
                path=path,
                clock=str(raw.get("clock", "wall")),
                # files written before the field existed took the fastest sample
                statistic=str(raw.get("statistic", "min")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise XpusimError(
                f"{where} lacks or has a malformed field: {exc}. Re-run "
                f"`xpusim calibrate --backend cpu`."
            ) from None


def load(path: str | Path) -> CpuCalibration:
    """Read a CPU calibration file, raising :class:`XpusimError` naming the file."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XpusimError(f"calibration file {str(p)!r} does not exist.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise XpusimError(f"calibration file {str(p)!r} cannot be read: {exc}.") from None
    if not isinstance(raw, dict):
        raise XpusimError(f"calibration file {str(p)!r} must hold a JSON object.")
    return CpuCalibration.from_json(raw, str(p))


def save(cal: CpuCalibration, path: str | Path) -> Path:
    """Write ``cal`` to ``path`` whole (temporary file, then rename) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cal.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


# --- timing ---------------------------------------------------------------------------


CLOCKS = ("wall", "cpu")
"""``wall``: elapsed time (``time.perf_counter``); ``cpu``: CPU time of this process
(``time.process_time``), which on a machine shared with other work excludes the time the
scheduler gave to other processes (meaningful at one thread, where a step's CPU time is
its wall time on an idle core)."""

_CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_current_clock = ["wall"]

STATISTICS = ("median", "min")
"""How :func:`time_call` reduces its samples: ``median`` (the default, the statistic the
measured device reports of whole steps) or ``min`` (the fastest sample)."""

_STATISTIC: dict[str, Callable[[Sequence[float]], float]] = {
    "median": lambda xs: float(statistics.median(xs)),
    "min": lambda xs: float(min(xs)),
}
_current_statistic = ["median"]


def statistic_fn(name: str) -> Callable[[Sequence[float]], float]:
    """The reduction of samples named ``name`` (see :data:`STATISTICS`)."""
    try:
        return _STATISTIC[name]
    except KeyError:
        raise XpusimError(f"unknown statistic {name!r}; valid: {', '.join(STATISTICS)}.") from None


def clock_fn(clock: str) -> Callable[[], float]:
    """The timer of clock ``clock`` (see :data:`CLOCKS`)."""
    try:
        return _CLOCK[clock]
    except KeyError:
        raise XpusimError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}.") from None


def time_call(
    fn: Callable[[], Any],
    *,
    min_sample_s: float = 2e-4,
    samples: int = 15,
    warmup: int = 2,
    budget_s: float = 0.5,
    clock: str | None = None,
    statistic: str | None = None,
) -> float:
    """Seconds of one ``fn()`` call.

    ``warmup`` calls, then up to ``samples`` samples (fewer when ``budget_s`` runs out,
    at least three), each looping ``fn`` just enough times to last ``min_sample_s`` so a
    microsecond call is not lost in the clock's resolution. ``statistic`` (see
    :data:`STATISTICS`; default: the one of the calibration being measured, else
    ``median``) reduces the samples to one figure. The median is what the measured
    device reports of whole model steps, so a kernel priced from it carries the same
    share of interference from other processes (shared caches, memory bandwidth, a busy
    sibling hyperthread) as the step it is compared with; the fastest sample is the
    kernel's time on an otherwise idle machine, which a step of many milliseconds on a
    shared machine cannot reach. ``clock`` picks the timer (:data:`CLOCKS`; default: the
    clock of the calibration being measured, else ``wall``).
    """
    now = clock_fn(clock or _current_clock[0])
    reduce = statistic_fn(statistic or _current_statistic[0])
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    loops = max(1, min(100_000, int(min_sample_s / one)))
    out: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(out) < samples and (len(out) < 3 or time.perf_counter() < deadline):
        t = now()
        for _ in range(loops):
            fn()
        out.append((now() - t) / loops)
    return reduce(out)


# --- the fit --------------------------------------------------------------------------

_X0_GRID = np.array(
    [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
        6.0,
        8.0,
        12.0,
        16.0,
        24.0,
        32.0,
        48.0,
        64.0,
        96.0,
        128.0,
        192.0,
        256.0,
    ]
)


def kernel_time(
    fit: KernelFit, flops: float, m: float, n: float, k: float, nbytes: float, mem: StreamTable
) -> tuple[float, float]:
    """``(compute_s, memory_s)`` of one GEMM-like call under ``fit`` (module doc); the
    call overhead ``fit.overhead_s`` comes on top."""
    e = fit.efficiency(max(m, 1.0), max(n, 1.0), max(k, 1.0))
    c = fit.correction(m, n, k)
    compute = c * flops / (fit.peak_flops * e) if flops else 0.0
    memory = c * nbytes / (mem.bandwidth(nbytes) * fit.mem_eff) if nbytes else 0.0
    return compute, memory


_MU_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def fit_gemm(
    points: Sequence[Mapping[str, float]], mem: StreamTable, overhead_s: float
) -> KernelFit:
    """Fit ``(P, m0, n0, k0, μ)`` to measured points (keys ``m``, ``n``, ``k``, ``flops``,
    ``bytes``, ``seconds``; ``m`` already multiplied by any batch) by least squares on
    ``log t`` (see module doc)."""
    if not points:
        raise ValueError("no points to fit")
    m = np.array([p["m"] for p in points], dtype=float)
    n = np.array([p["n"] for p in points], dtype=float)
    k = np.array([p["k"] for p in points], dtype=float)
    fl = np.array([p["flops"] for p in points], dtype=float)
    by = np.array([p["bytes"] for p in points], dtype=float)
    ts = np.array([p["seconds"] for p in points], dtype=float)
    memt0 = np.array([b / mem.bandwidth(b) for b in by])
    lt = np.log(ts)
    # the best single rate bounds the search for P
    rate = fl / ts
    p_grid = np.exp(np.linspace(np.log(rate.max() * 0.9), np.log(rate.max() * 4.0), 40))
    best: tuple[float, ...] | None = None
    em = m[None, :] / (m[None, :] + _X0_GRID[:, None])  # (g, N)
    en = n[None, :] / (n[None, :] + _X0_GRID[:, None])
    ek = k[None, :] / (k[None, :] + _X0_GRID[:, None])
    for mu in _MU_GRID:
        memt = memt0 / mu
        for i in range(len(_X0_GRID)):
            for j in range(len(_X0_GRID)):
                e = (em[i] * en[j])[None, :] * ek  # (g, N)
                comp = fl[None, None, :] / (p_grid[:, None, None] * e[None, :, :])  # (P, g, N)
                pred = np.maximum(comp, memt[None, None, :]) + overhead_s
                err = ((np.log(pred) - lt[None, None, :]) ** 2).mean(axis=2)  # (P, g)
                a, b = np.unravel_index(int(np.argmin(err)), err.shape)
                val = float(err[a, b])
                if best is None or val < best[0]:
                    best = (
                        val,
                        float(p_grid[a]),
                        float(_X0_GRID[i]),
                        float(_X0_GRID[j]),
                        float(_X0_GRID[b]),
                        mu,
                    )
    assert best is not None
    smooth = KernelFit(best[1], best[2], best[3], best[4], overhead_s, math.sqrt(best[0]), best[5])
    res = []
    for p in points:
        c, mm = kernel_time(smooth, p["flops"], p["m"], p["n"], p["k"], p["bytes"], mem)
        res.append(
            (
                math.log2(max(p["m"], 1.0)),
                math.log2(max(p["n"], 1.0)),
                math.log2(max(p["k"], 1.0)),
                math.log(p["seconds"] / (max(c, mm) + overhead_s)),
            )
        )
    return replace(smooth, residuals=tuple(res))


# --- microbenchmarks --------------------------------------------------------------------

_GEMM_FULL = [
    (1, 768, 768),
    (1, 3072, 768),
    (1, 768, 3072),
    (1, 4096, 4096),
    (4, 768, 768),
    (16, 768, 768),
    (16, 256, 256),
    (32, 1024, 1024),
    (64, 64, 64),
    (128, 768, 768),
    (128, 3072, 768),
    (128, 768, 3072),
    (128, 2304, 768),
    (256, 256, 256),
    (256, 1024, 64),
    (512, 512, 512),
    (512, 64, 512),
    (1024, 1024, 1024),
    (2048, 512, 512),
    (8, 64, 4096),
    (1, 50257, 768),
    (128, 128, 64),
    (2, 1000, 2048),
    (32, 32, 32),
]
_GEMM_QUICK = [
    (1, 768, 768),
    (16, 256, 256),
    (128, 768, 768),
    (256, 256, 256),
    (64, 64, 64),
    (512, 512, 512),
]
_GEMM_COLD = [
    (1, 768, 768),
    (1, 3072, 768),
    (1, 768, 3072),
    (4, 768, 3072),
    (4, 3072, 768),
    (16, 768, 768),
    (1, 4096, 4096),
    (8, 2304, 768),
    (32, 1024, 1024),
]
_GEMM_COLD_QUICK = [(1, 768, 768), (4, 3072, 768)]
_GEMM_BF16 = [
    (1, 768, 768),
    (128, 768, 768),
    (128, 3072, 768),
    (512, 512, 512),
    (1024, 1024, 1024),
    (16, 256, 256),
]
# (batch, in channels, size, out channels, kernel, stride)
_CONV_FULL = [
    (1, 3, 224, 64, 7, 2),
    (1, 64, 56, 64, 3, 1),
    (1, 64, 56, 256, 1, 1),
    (1, 256, 56, 64, 1, 1),
    (1, 128, 28, 128, 3, 1),
    (1, 512, 28, 128, 1, 1),
    (1, 256, 14, 256, 3, 1),
    (1, 1024, 14, 256, 1, 1),
    (1, 512, 7, 512, 3, 1),
    (1, 2048, 7, 512, 1, 1),
    (2, 64, 56, 64, 3, 1),
    (2, 256, 14, 256, 3, 1),
    (4, 16, 32, 32, 3, 1),
    (8, 3, 32, 16, 3, 1),
    (1, 256, 56, 512, 1, 2),
]
_CONV_QUICK = [
    (1, 64, 56, 64, 3, 1),
    (1, 256, 14, 256, 3, 1),
    (4, 16, 32, 32, 3, 1),
    (1, 512, 7, 512, 1, 1),
]
# (batch·heads, queries, keys, head dim, causal)
_ATTN_FULL = [
    (12, 128, 128, 64, False),
    (12, 128, 128, 64, True),
    (12, 512, 512, 64, True),
    (12, 1, 128, 64, False),
    (12, 1, 512, 64, False),
    (24, 1, 1024, 64, False),
    (12, 32, 32, 64, True),
    (24, 128, 128, 64, False),
    (8, 256, 256, 128, True),
    (4, 16, 16, 32, True),
]
_ATTN_QUICK = [(12, 128, 128, 64, False), (12, 1, 128, 64, False), (4, 16, 16, 32, True)]


def _stream_sizes(quick: bool) -> list[int]:
    """Elements per tensor (fp32) for the streaming tables."""
    top = 20 if quick else 25  # 4 MiB or 128 MiB per fp32 tensor
    return [2**e for e in range(10 if quick else 8, top + 1, 2 if quick else 1)]


def _measure_streams(quick: bool, log: Callable[[str], None]) -> dict[str, StreamTable]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    tables: dict[str, list[list[float]]] = {k: [] for k in STREAM_KINDS}
    for n in _stream_sizes(quick):
        a = torch.randn(n)
        b = torch.randn(n)
        samples = 5 if n >= 2**22 else 9
        eb = 4.0
        dst = torch.empty(n)
        tables["copy"].append([2 * n * eb, time_call(partial(dst.copy_, a), samples=samples)])
        tables["elementwise"].append(
            [3 * n * eb, time_call(partial(torch.add, a, b), samples=samples)]
        )
        tables["transcendental"].append(
            [2 * n * eb, time_call(partial(F.gelu, a), samples=samples)]
        )
        h = 768 if n >= 768 * 4 else 64
        rows = max(1, n // h)
        x = a[: rows * h].view(rows, h)
        w = torch.ones(h)
        tables["norm"].append(
            [
                2 * rows * h * eb + 2 * h * eb,
                time_call(partial(F.layer_norm, x, (h,), w, w), samples=samples),
            ]
        )
        c = 64 if n >= 64 * 16 else 4
        hw = max(1, n // c)
        z = a[: c * hw].view(1, c, hw, 1)
        st = torch.ones(c)
        tables["batchnorm"].append(
            [
                2 * c * hw * eb,
                time_call(partial(F.batch_norm, z, st, st, st, st, False), samples=samples),
            ]
        )
        s = 128 if n >= 128 * 4 else 16
        rows = max(1, n // s)
        y = a[: rows * s].view(rows, s)
        tables["softmax"].append(
            [2 * rows * s * eb, time_call(partial(torch.softmax, y, -1), samples=samples)]
        )
        side = 32 if n >= 64 * 32 * 32 else 4
        ch = max(1, n // (side * side))
        img = a[: ch * side * side].view(1, ch, side, side)
        tables["maxpool"].append(
            [
                1.25 * ch * side * side * eb,
                time_call(partial(F.max_pool2d, img, 2), samples=samples),
            ]
        )
        del a, b, dst
    out = {k: StreamTable.from_points(v) for k, v in tables.items()}
    log(
        f"  streaming: copy {out['copy'].peak_bandwidth / 1e9:.1f} GB/s in cache, "
        f"{out['copy'].dram_bandwidth / 1e9:.1f} GB/s at {out['copy'].nbytes[-1] / 2**20:.0f} MiB"
    )
    return out


COLD_POOL_BYTES = 96 * 2**20
"""Weights cycled through by the cold-GEMM benchmark: larger than any last-level cache of
the machines we run on, so every call reads its weights from DRAM."""


def _mm_cycle(a: Any, ws: Sequence[Any]) -> Callable[[], Any]:
    """A call of ``torch.mm(a, w)`` for the next ``w`` of ``ws`` each time."""
    import itertools

    import torch

    it = itertools.cycle(ws)
    return lambda: torch.mm(a, next(it))


def _gemm_points(
    shapes: Sequence[tuple[int, int, int]], dtype: str, cold: bool = False
) -> list[dict[str, float]]:
    import torch

    tdt = getattr(torch, _DTYPE_TORCH[dtype])
    eb = torch.empty((), dtype=tdt).element_size()
    pts = []
    for m, n, k in shapes:
        a = torch.randn(m, k, dtype=tdt)
        copies = max(1, int(COLD_POOL_BYTES // (n * k * eb))) if cold else 1
        ws = [torch.randn(n, k, dtype=tdt).t() for _ in range(copies)]  # x @ W^T layout
        t = time_call(_mm_cycle(a, ws), samples=9, min_sample_s=2e-4 if not cold else 0.0)
        del ws
        pts.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "flops": 2.0 * m * n * k,
                "bytes": float((m * k + n * k + m * n) * eb),
                "seconds": t,
            }
        )
    return pts


def _conv_points(shapes: Sequence[tuple[int, ...]]) -> list[dict[str, float]]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    pts = []
    for nb, cin, hw, cout, ks, stride in shapes:
        x = torch.randn(nb, cin, hw, hw)
        w = torch.randn(cout, cin, ks, ks)
        pad = ks // 2
        t = time_call(partial(F.conv2d, x, w, None, stride, pad), samples=9)
        ho = (hw + 2 * pad - ks) // stride + 1
        m, n, k = nb * ho * ho, cout, cin * ks * ks
        pts.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "flops": 2.0 * m * n * k,
                "bytes": 4.0 * (x.numel() + w.numel() + nb * cout * ho * ho),
                "seconds": t,
            }
        )
    return pts


def _attention_points(shapes: Sequence[tuple[int, int, int, int, bool]]) -> list[dict[str, float]]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    pts = []
    for bh, q, kv, d, causal in shapes:
        qq = torch.randn(1, bh, q, d)
        kk = torch.randn(1, bh, kv, d)
        vv = torch.randn(1, bh, kv, d)
        t = time_call(
            partial(F.scaled_dot_product_attention, qq, kk, vv, is_causal=causal), samples=9
        )
        # CPU flash attention computes whole key blocks of a causal mask: charge every pair
        pts.append(
            {
                "m": float(q * bh),
                "n": float(kv),
                "k": float(d),
                "flops": 4.0 * bh * q * kv * d,
                "causal": float(causal),
                "bytes": 4.0 * bh * (2 * q * d + 2 * kv * d),
                "seconds": t,
            }
        )
    return pts


def _dispatch() -> dict[str, float]:
    """Fixed costs of eager execution (see :class:`CpuCalibration`): one aten call on a
    one-element tensor, a tiny ``linear``, one view (``view``: a dispatch and a new tensor
    header, no data) and the cost of calling a layer as an ``nn.Module`` rather than its
    function: a tiny ``nn.Linear`` call less ``F.linear`` on plain tensors, which is the
    Python ``__call__`` machinery plus the parameter look-ups every layer of a model pays
    (an ``nn.Identity`` call, the machinery alone, is kept as ``identity_call_s``)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    a = torch.ones(1)
    x = torch.ones(1, 8)
    w = torch.ones(8, 8)
    bias = torch.ones(8)
    ident = torch.nn.Identity()
    layer = torch.nn.Linear(8, 8)
    with torch.inference_mode():
        linear_s = time_call(partial(F.linear, x, w, bias), min_sample_s=5e-3)
        layer_s = time_call(partial(layer, x), min_sample_s=5e-3)
        identity_s = time_call(partial(ident, x), min_sample_s=5e-3)
        return {
            "aten_call_s": time_call(partial(torch.add, a, a), min_sample_s=5e-3),
            "linear_call_s": linear_s,
            "view_call_s": time_call(partial(x.view, -1), min_sample_s=5e-3),
            "module_call_s": max(identity_s, layer_s - linear_s),
            "identity_call_s": identity_s,
        }


def calibrate(
    out: str | Path | None = None,
    *,
    quick: bool = False,
    threads: int | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
    clock: str = "wall",
    statistic: str = "median",
) -> CpuCalibration:
    """Run the microbenchmarks at ``threads`` torch threads (default: every core this
    process may use), fit the model, write the JSON to ``out`` when given, and return it.

    ``quick`` measures a reduced set of shapes and sizes (a few seconds), for tests and for
    the automatic first-use calibration. ``clock`` is the timer (:data:`CLOCKS`),
    ``statistic`` how each point's samples are reduced (:data:`STATISTICS`).
    """
    import torch

    clock_fn(clock)
    statistic_fn(statistic)

    say = log or (lambda _s: None)
    threads = int(threads or logical_cores())
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    prev_clock, prev_stat = _current_clock[0], _current_statistic[0]
    _current_clock[0], _current_statistic[0] = clock, statistic
    try:
        with torch.inference_mode():
            torch.manual_seed(0)
            say(
                f"calibrating cpu: {cpu_model()}, {threads} threads, "
                f"{'quick' if quick else 'full'} set"
            )
            fixed = _dispatch()
            dispatch_s, linear_s = fixed["aten_call_s"], fixed["linear_call_s"]
            streams = _measure_streams(quick, say)
            mem = streams["copy"]
            gemm32 = _gemm_points(_GEMM_QUICK if quick else _GEMM_FULL, "fp32")
            kernels: dict[str, dict[str, KernelFit]] = {"gemm": {}, "conv": {}, "attention": {}}
            kernels["gemm"]["fp32"] = fit_gemm(gemm32, mem, linear_s)
            points: dict[str, Any] = {"gemm.fp32": gemm32}
            cold = _gemm_points(_GEMM_COLD_QUICK if quick else _GEMM_COLD, "fp32", cold=True)
            kernels["gemm_cold"] = {"fp32": fit_gemm(cold, mem, linear_s)}
            points["gemm_cold.fp32"] = cold
            bf_shapes = _GEMM_BF16[:3] if quick else _GEMM_BF16
            gemm16 = _gemm_points(bf_shapes, "bf16")
            kernels["gemm"]["bf16"] = fit_gemm(gemm16, _scaled(mem, 0.5), linear_s)
            points["gemm.bf16"] = gemm16
            conv = _conv_points(_CONV_QUICK if quick else _CONV_FULL)
            kernels["conv"]["fp32"] = fit_gemm(conv, mem, linear_s)
            points["conv.fp32"] = conv
            attn = _attention_points(_ATTN_QUICK if quick else _ATTN_FULL)
            kernels["attention"]["fp32"] = fit_gemm(attn, mem, linear_s)
            points["attention.fp32"] = attn
            for fam, fits in kernels.items():
                for dt, f in fits.items():
                    say(
                        f"  {fam} {dt}: peak {f.peak_flops / 1e9:.1f} GFLOP/s, m0={f.m0:g} "
                        f"n0={f.n0:g} k0={f.k0:g}, rms log error {f.rms_log_error:.2f}"
                    )
            points["dispatch"] = fixed
    finally:
        torch.set_num_threads(prev)
        _current_clock[0], _current_statistic[0] = prev_clock, prev_stat
    cal = CpuCalibration(
        machine=machine(threads),
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command
        or " ".join(
            ["xpusim", "calibrate", "--backend", "cpu"] + (["--out", str(out)] if out else [])
        ),
        threads=threads,
        quick=quick,
        kernels=kernels,
        streams=streams,
        dispatch_s=dispatch_s,
        points=points,
        clock=clock,
        statistic=statistic,
    )
    if out is not None:
        save(cal, out)
        cal = replace(cal, path=str(out))
    return cal


def _scaled(t: StreamTable, factor: float) -> StreamTable:
    """A table for an element ``factor`` times as wide (bf16: 0.5): same time per element."""
    return StreamTable(tuple(b * factor for b in t.nbytes), t.seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xpusim.plugins.cpu.calibrate [--quick] [--threads N] [--clock wall|cpu]
    [--statistic median|min] [--out FILE]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=CLOCKS, default="wall")
    ap.add_argument("--statistic", choices=STATISTICS, default="median")
    args = ap.parse_args(argv)
    out = args.out or default_path(int(args.threads or logical_cores()), args.clock)
    calibrate(
        out,
        quick=args.quick,
        threads=args.threads,
        command="python -m xpusim.plugins.cpu.calibrate " + " ".join(argv or sys.argv[1:]),
        log=lambda s: print(s, flush=True),
        clock=args.clock,
        statistic=args.statistic,
    )
    print(f"calibration written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
