"""Run a torch module on this machine and measure it: whole steps, per-op times, energy.

* :func:`time_steps` runs ``module(*inputs)`` under ``torch.inference_mode`` at a fixed
  thread count: at least ``warmup`` untimed calls and :data:`MIN_WARMUP_S` of them, then
  at least ``repeats`` timed calls and :data:`MIN_SAMPLED_S` of them (so a 50 µs step is
  sampled hundreds of times in steady state, as the calibration's microbenchmarks are,
  while a 100 ms step is sampled ``repeats`` times); it reports the median (the figure
  the backend uses), the fastest and every sample, and the energy over the timed calls
  from RAPL when this machine exposes a readable counter.
* :func:`profile_ops` runs one more call under ``torch.profiler`` and returns the self CPU
  time of every aten op by name (with call counts), which the backend uses to split a
  step's seconds into compute (GEMM, convolution, attention), memory (everything else
  the profiler sees) and overhead (the rest: Python, dispatch, allocation).
* :class:`Rapl` reads ``/sys/class/powercap/intel-rapl:N/energy_uj`` (package domains;
  AMD Zen machines expose theirs under the same name), handling counter wrap-around.
  Unreadable (no such folder, a VM, no permission): :meth:`Rapl.open` returns ``None``
  and the caller falls back to a stated power model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")

GEMM_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::matmul",
        "aten::linear",
        "aten::mv",
        "aten::addmv",
        "aten::dot",
        "aten::convolution",
        "aten::_convolution",
        "aten::conv2d",
        "aten::conv1d",
        "aten::mkldnn_convolution",
        "aten::_mkldnn_convolution",
        "aten::scaled_dot_product_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_attention_math",
        "aten::einsum",
    }
)
"""Profiler op names counted as compute (the GEMM-like kernels)."""


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL package domain: its ``energy_uj`` file and wrap range."""

    path: Path
    max_uj: float

    def read(self) -> float:
        """Microjoules now."""
        return float(self.path.read_text().strip())


@dataclass(frozen=True)
class Rapl:
    """The readable RAPL package domains of this machine."""

    domains: tuple[RaplDomain, ...]

    @classmethod
    def open(cls, root: Path = POWERCAP) -> Rapl | None:
        """The package domains under ``root`` whose counters can be read, or ``None``."""
        doms: list[RaplDomain] = []
        try:
            cands = sorted(root.glob("intel-rapl:*"))
        except OSError:
            return None
        for d in cands:
            if d.name.count(":") != 1:  # sub-domains (core, dram) are inside the package
                continue
            f = d / "energy_uj"
            try:
                float(f.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                mx = float((d / "max_energy_range_uj").read_text().strip())
            except (OSError, ValueError):
                mx = 2.0**32
            doms.append(RaplDomain(f, mx))
        return cls(tuple(doms)) if doms else None

    def read(self) -> list[float]:
        """Every domain's counter (µJ)."""
        return [d.read() for d in self.domains]

    def joules_since(self, start: Sequence[float]) -> float:
        """Joules used since the counters read ``start`` (wrap-around handled)."""
        total = 0.0
        for d, s in zip(self.domains, start, strict=True):
            now = d.read()
            delta = now - s if now >= s else now + d.max_uj - s
            total += delta
        return total * 1e-6


@dataclass(frozen=True)
class StepTiming:
    """Timed calls of one step: ``samples`` seconds each by ``clock`` (``wall`` or
    ``cpu``; ``wall_samples`` and ``cpu_samples`` keep both), ``joules`` per call from
    RAPL (``None`` when no counter is readable)."""

    samples: tuple[float, ...]
    threads: int
    joules: float | None = None
    clock: str = "wall"
    wall_samples: tuple[float, ...] = ()
    cpu_samples: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        """Median seconds of one call."""
        return statistics.median(self.samples)

    @property
    def fastest(self) -> float:
        """Fastest call (seconds)."""
        return min(self.samples)


@dataclass(frozen=True)
class OpProfile:
    """Per-op self CPU time of one profiled call: ``ops[name] = (seconds, calls)``."""

    ops: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    step_s: float = 0.0

    def split(self) -> dict[str, float]:
        """Seconds by cause: ``compute`` (GEMM-like ops), ``memory`` (other ops) and
        ``overhead`` (the step's wall time not inside any op)."""
        comp = sum(t for n, (t, _) in self.ops.items() if n in GEMM_OPS)
        mem = sum(t for n, (t, _) in self.ops.items() if n not in GEMM_OPS)
        return {"compute": comp, "memory": mem, "overhead": max(0.0, self.step_s - comp - mem)}


@contextmanager
def threads(n: int | None) -> Any:
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when ``None``)."""
    import torch

    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def _quiet_stderr() -> Any:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the block."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def call(module: Callable[..., Any], inputs: Any) -> Any:
    """``module(*inputs)``, ``module(**inputs)`` for a mapping, ``module(inputs)`` else."""
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


MIN_WARMUP_S = 0.02
"""Untimed calls continue for at least this long, so short steps reach steady state."""
MIN_SAMPLED_S = 0.05
"""Timed calls continue until their sum reaches this, so short steps get many samples."""
MAX_SAMPLES = 2000
"""An upper bound on timed calls of one step."""


def time_steps(
    module: Callable[..., Any],
    inputs: Any,
    *,
    n_threads: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    rapl: Rapl | None = None,
    clock: str = "wall",
) -> StepTiming:
    """Time ``repeats`` calls after ``warmup`` (see module doc). Both the wall time and
    the process CPU time of every call are kept; ``clock`` picks which one is the
    step's ``samples`` (CPU time is the robust figure at one thread on a shared machine)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"unknown clock {clock!r}; valid: wall, cpu")
    import torch

    with threads(n_threads), torch.inference_mode():
        began, done = time.perf_counter(), 0
        while done < max(0, warmup) or time.perf_counter() - began < MIN_WARMUP_S:
            call(module, inputs)
            done += 1
        start = rapl.read() if rapl is not None else None
        wall: list[float] = []
        cpu: list[float] = []
        while len(wall) < max(1, repeats) or (
            sum(wall) < MIN_SAMPLED_S and len(wall) < MAX_SAMPLES
        ):
            t = time.perf_counter()
            c = time.process_time()
            call(module, inputs)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - t)
        joules = (
            rapl.joules_since(start) / len(wall) if rapl is not None and start is not None else None
        )
        samples = wall if clock == "wall" else cpu
        return StepTiming(
            tuple(samples), torch.get_num_threads(), joules, clock, tuple(wall), tuple(cpu)
        )


def profile_ops(
    module: Callable[..., Any], inputs: Any, *, n_threads: int | None = None
) -> OpProfile:
    """Self CPU time per top-level aten op of one call (see module doc)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with threads(n_threads), torch.inference_mode(), _quiet_stderr():
        call(module, inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            call(module, inputs)
            step = time.perf_counter() - t
    ops: dict[str, tuple[float, int]] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        # self time only, so nested aten calls (linear -> addmm) are not double counted
        s = float(ev.self_cpu_time_total) * 1e-6
        if s <= 0:
            continue
        prev_s, prev_n = ops.get(ev.key, (0.0, 0))
        ops[ev.key] = (prev_s + s, prev_n + int(ev.count))
    return OpProfile(ops, step)
