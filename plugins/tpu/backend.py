"""The TPU backend: Cloud TPU v4, v5e, v5p and v6e priced from their systolic arrays up.

See ``docs/backends/tpu.md``. Compilation builds an
:class:`~xpusim.engine.analytic.AnalyticCompiled` whose pieces are:

* **Matrix ops** (MATMUL, CONV, the two GEMMs of ATTENTION) cost the closed-form cycles of
  :mod:`xpusim.plugins.tpu.cycles` on one ``mxu_rows × mxu_cols`` MXU, after splitting the work
  over the chip's ``mxu_count`` MXUs (:func:`split_over_mxus`), divided by the MXU clock.
  For each GEMM the compiler is assumed to pick the dataflow (weight-, output- or
  input-stationary mapping) with the fewest cycles, and the chip sustains
  :data:`XLA_MXU_EFFICIENCY` of those closed-form cycles' rate (what XLA's own matmuls
  reach, measured; the closed form assumes every operand already in the array). A dtype
  with a higher published peak than bf16 (int8) runs that many times more MACs per
  cycle; fp32 runs as :data:`FP32_PASSES` bf16 pass (XLA's ``DEFAULT`` precision).
* **Vector work** (elementwise, norms, softmax, and the FLOPs fused into a matrix op) runs on
  the vector unit at ``extra.vector_flops``.
* **Memory**: every op is bounded by its HBM traffic after fusion (:mod:`xpusim.plugins.tpu.fusion`)
  at ``memory_bw``: ``time = max(MXU + vector time, HBM time)``.
* **Collectives** run over the ICI torus of the slice (:func:`xpusim.engine.collectives.
  torus_collective_seconds`, bidirectional rings per dimension); groups larger than a pod
  add a ring over the data-centre network between pods.
* **Power**: :class:`xpusim.engine.power.PowerModel` from the catalog (measured for v4, a stated
  scaling assumption for v5e/v5p/v6e).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine import collectives
from xpusim.engine.analytic import AnalyticCompiled, OpTime
from xpusim.engine.backend import Backend, Support
from xpusim.engine.device import DeviceSpec, Figure, spec_from_mapping
from xpusim.engine.errors import UnknownNameError, XpusimError
from xpusim.engine.graph import Collective, Op, OpKind
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System
from xpusim.plugins.tpu.cycles import gemm_compute_cycles
from xpusim.plugins.tpu.fusion import VECTOR_ATTR, fuse

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
BACKEND = "tpu"
SUPPORTED_KINDS = ("decoder", "encoder", "vision", "mlp", "spiking", "custom")
WORKLOADS = ("serving", "offline", "training", "spiking")
RUNTIME_RESERVE_BYTES = 0.5e9
FP32_PASSES = 1
"""bf16 MXU passes of one fp32 matmul: XLA's ``DEFAULT`` precision, what ``jnp.dot`` and
``flax.linen.Dense`` use unless told otherwise, rounds fp32 operands to bf16 and
accumulates in fp32 in one pass (JAX documentation, "Matmul precision": "float32 dot
products may be computed with reduced-precision arithmetic internally (bfloat16 on
TPU)"; ``HIGH`` is 3 passes, ``HIGHEST`` 6)."""
XLA_MXU_EFFICIENCY = 0.9605
"""Sustained fraction of the closed-form MXU cycle rate that XLA's matmuls reach. Fitted
to the JAX documentation's timings of ``jnp.matmul`` on a TPU v5e ("Pallas TPU: Matrix
Multiplication", section "Performance of pipelined kernels", bf16 square matmuls:
4096³ in 0.8273 ms and 8192³ in 6.0471 ms, 84.3 % and 92.3 % of the 197 TFLOP/s peak):
the closed form gives 0.7409 ms and 5.7543 ms, and the line ``t = t0 + closed /
efficiency`` through both points gives efficiency 0.9605 and ``t0`` = 0.056 ms, the
Python dispatch the notebook's ``timeit`` includes (absent inside one compiled training
step). The 1024³ point (0.119 ms, dispatch-dominated) is not used. Applied to every chip
and dtype: the same compiler emits the same MXU pipelines."""


def load_catalog(path: Path | str = CATALOG_PATH) -> dict[str, DeviceSpec]:
    """Parse a TPU catalog YAML (top-level ``devices:``) into specs by name."""
    p = Path(path)
    raw: Mapping[str, Any] = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return {
        name: spec_from_mapping(name, BACKEND, body, where=f"{p.name}:devices.{name}")
        for name, body in raw.get("devices", {}).items()
    }


@lru_cache(maxsize=1)
def builtin_catalog() -> Mapping[str, DeviceSpec]:
    """The built-in catalog (parsed once)."""
    return load_catalog()


def resolve(name: str, specs: Mapping[str, DeviceSpec] | None = None) -> DeviceSpec:
    """The TPU spec called ``name`` or one of its aliases."""
    specs = builtin_catalog() if specs is None else specs
    if name in specs:
        return specs[name]
    for s in specs.values():
        if name in s.aliases:
            return s
    names = sorted([*specs, *(a for s in specs.values() for a in s.aliases)])
    raise UnknownNameError(f"unknown tpu device {name!r}; known: {', '.join(names)}")


def _extra(dev: DeviceSpec, key: str) -> float:
    fig = dev.extra.get(key)
    if fig is None:
        raise XpusimError(f"tpu device {dev.name!r} lacks extra.{key} in its catalog entry")
    return fig.value


# --- MXU pricing ---------------------------------------------------------------------------


def split_over_mxus(m: int, n: int, k: int, batch: int, mxus: int) -> tuple[int, int, int, int]:
    """How one op's ``batch`` GEMMs of ``m×k·k×n`` spread over ``mxus`` MXUs.

    Independent GEMMs (heads, experts) go to different MXUs first: each MXU gets
    ``ceil(batch / mxus)`` of them. When there are fewer GEMMs than MXUs, each GEMM is cut
    into ``mxus // batch`` pieces along its larger output dimension (``m`` rows of
    activations or ``n`` columns of weights), since output tiles are independent.
    Returns ``(m', n', k, gemms per MXU)``; the slowest MXU sets the time.
    """
    if batch >= mxus:
        return m, n, k, math.ceil(batch / mxus)
    parts = max(1, mxus // batch)
    if n >= m:
        return m, math.ceil(n / parts), k, 1
    return math.ceil(m / parts), n, k, 1


def mxu_cycles(m: int, n: int, k: int, rows: int, cols: int) -> int:
    """Cycles of one GEMM on one MXU with the best dataflow (closed form, ideal memory)."""
    return min(gemm_compute_cycles(m, n, k, rows, cols, d) for d in ("ws", "os", "is")) + 1


class TpuCostModel:
    """``price_op`` for :class:`~xpusim.engine.analytic.AnalyticCompiled` (see module docstring)."""

    def __init__(self, device: DeviceSpec) -> None:
        self.device = device
        self.mxus = int(_extra(device, "mxu_count"))
        self.rows = int(_extra(device, "mxu_rows"))
        self.cols = int(_extra(device, "mxu_cols"))
        self.clock = _extra(device, "clock_hz")
        self.vector = _extra(device, "vector_flops")
        self.bw = device.memory_bw.value
        self.bf16 = device.flops("bf16")

    def rate(self, dtype: str) -> float:
        """MACs per MXU cycle relative to bf16 for ``dtype``."""
        if dtype in ("fp32", "tf32"):
            return 1.0 / FP32_PASSES
        for key in (dtype, "int8" if dtype in ("int4", "fp4", "fp8") else dtype):
            if key in self.device.peak_flops:
                return self.device.peak_flops[key].value / self.bf16
        return 1.0

    def gemm_seconds(self, m: int, n: int, k: int, batch: int, dtype: str) -> float:
        """MXU seconds of ``batch`` GEMMs ``m×k·k×n`` on one chip."""
        mm, nn, kk, per = split_over_mxus(m, n, k, batch, self.mxus)
        cycles = per * mxu_cycles(mm, nn, kk, self.rows, self.cols)
        return cycles / (self.clock * self.rate(dtype) * XLA_MXU_EFFICIENCY)

    def __call__(self, op: Op) -> OpTime:
        memory = op.bytes / self.bw
        vector = op.attr(VECTOR_ATTR) / self.vector
        if op.kind in (OpKind.MATMUL, OpKind.CONV) and len(op.dims) == 3:
            m, n, k = (max(1, int(d)) for d in op.dims)
            compute = self.gemm_seconds(m, n, k, op.batch, op.dtype) + vector
        elif op.kind is OpKind.ATTENTION and len(op.dims) == 3:
            q, keys, d = (max(1, int(x)) for x in op.dims)
            full = 4.0 * d * q * keys * op.batch
            frac = min(1.0, op.flops / full) if op.flops and full else 1.0
            mxu = (
                self.gemm_seconds(q, keys, d, op.batch, op.dtype)
                + self.gemm_seconds(q, d, keys, op.batch, op.dtype)
            ) * frac
            softmax = 5.0 * q * keys * op.batch * frac / self.vector
            compute = mxu + softmax + vector
        else:
            compute = (op.flops / self.vector) if op.flops else 0.0
            if op.attr(VECTOR_ATTR):
                compute = vector
        return OpTime(compute, memory, 0.0)


# --- ICI torus -----------------------------------------------------------------------------


def slice_shape(chips: int, ndims: int) -> tuple[int, ...]:
    """A near-balanced torus shape of ``chips`` chips in ``ndims`` dimensions (largest
    dimension first), as Cloud TPU slices are shaped (2x2, 4x4, 2x2x2, 4x4x4 ...)."""
    if chips < 1 or ndims < 1:
        raise ValueError(f"a slice needs >= 1 chip and dimension, got {chips} in {ndims}D")
    dims = [1] * ndims
    rest = chips
    for i in range(ndims, 0, -1):
        target = round(rest ** (1.0 / i))
        best = 1
        for d in range(1, rest + 1):
            if rest % d == 0 and abs(d - target) <= abs(best - target):
                best = d
            if d > 2 * target + 1:
                break
        dims[ndims - i] = best
        rest //= best
    dims[-1] *= rest
    return tuple(sorted(dims, reverse=True))


class TpuBackend(Backend):
    """The ``tpu`` backend (see module docstring)."""

    name = BACKEND
    description = (
        "Google Cloud TPU v4/v5e/v5p/v6e: closed-form systolic-array (MXU) cycles, "
        "XLA-style fusion, HBM roofline and ICI torus collectives"
    )

    def catalog(self) -> Mapping[str, DeviceSpec]:
        """The built-in TPU catalog (``plugins/tpu/catalog.yaml``)."""
        return builtin_catalog()

    def supports(self, model: ModelGraph, workload: str) -> Support:
        """Decoder, encoder, vision, MLP, spiking and user (``family: torch``) models
        (spiking networks as time-stepped dense matmuls and vector-unit LIF updates; a
        user module op by op from its traced graph, unknown ops by their bytes) for every
        workload kind."""
        if model.kind not in SUPPORTED_KINDS:
            return Support(
                False,
                f"the tpu backend prices models of kind "
                f"{', '.join(SUPPORTED_KINDS)}; {model.name!r} is of kind "
                f"{model.kind!r}.",
            )
        if workload not in WORKLOADS:
            return Support(
                False,
                f"the tpu backend serves workload kinds {', '.join(WORKLOADS)}, not {workload!r}.",
            )
        return Support(True)

    def torus(self, system: System, group: int) -> tuple[int, ...]:
        """The torus a collective of ``group`` chips runs on: the scenario's ``torus`` when
        it holds exactly the group, else a balanced slice of the chip's dimensionality."""
        t = tuple(int(d) for d in system.topology.torus)
        if t and math.prod(t) == group:
            return t
        return slice_shape(group, int(_extra(system.device, "torus_dims")))

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """One collective of ``nbytes`` per chip over ``group`` chips: bidirectional rings
        per torus dimension inside a pod; between pods, a ring over the DCN."""
        if group <= 1:
            return 0.0
        dev = system.device
        if dev.scale_up is None:
            raise XpusimError(f"tpu device {dev.name!r} has no ICI link in its catalog")
        link = dev.scale_up.bandwidth.value
        lat = dev.scale_up.latency.value
        pod = int(_extra(dev, "pod_chips"))
        if group <= pod:
            return collectives.torus_collective_seconds(
                kind, nbytes, self.torus(system, group), link, lat
            )
        pods = math.ceil(group / pod)
        inner = collectives.torus_collective_seconds(
            kind, nbytes, self.torus(system, pod), link, lat
        )
        out = dev.scale_out if dev.scale_out is not None else dev.scale_up
        outer = collectives.ring_seconds(
            kind,
            nbytes / pod if kind is Collective.ALL_REDUCE else nbytes,
            pods,
            out.bandwidth.value,
            out.latency.value,
        )
        return inner + outer

    def compile(self, model: ModelGraph, system: System) -> AnalyticCompiled:
        """Compile ``model`` onto ``system`` (never raises for a model that does not fit)."""
        cost = TpuCostModel(system.device)

        def collective(kind: Collective, nbytes: float, group: int) -> float:
            return self.collective_seconds(kind, nbytes, group, system)

        assumptions = {
            "tpu.dataflow": Figure(
                1.0,
                assumption="each GEMM uses the dataflow (ws/os/is) "
                "with the fewest closed-form cycles",
            ),
            "tpu.fp32_passes": Figure(
                FP32_PASSES,
                assumption="fp32 matmuls as one bf16 pass (XLA's DEFAULT precision, "
                "JAX documentation 'Matmul precision')",
            ),
            "tpu.mxu_efficiency": Figure(
                XLA_MXU_EFFICIENCY,
                assumption="sustained fraction of the closed-form MXU cycle rate, fitted "
                "to jnp.matmul timings on v5e in JAX's Pallas matmul guide (4096^3, 8192^3)",
            ),
            "tpu.fusion": Figure(
                1.0,
                assumption="elementwise/norm/softmax ops fused into "
                "their producer (plugins/tpu/fusion.py)",
            ),
        }
        return AnalyticCompiled(
            system,
            model,
            price_op=cost,
            collective=collective,
            power=PowerModel.from_device(system.device),
            fuse=fuse,
            catalog=self.devices(),
            reserve_bytes=RUNTIME_RESERVE_BYTES,
            reserve_note="XLA program, scratch and infeed buffers per chip (assumption)",
            assumptions=assumptions,
        )
