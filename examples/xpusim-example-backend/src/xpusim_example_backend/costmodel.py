"""The wafer-scale cost model: where the weights live decides what a step costs.

A wafer-scale engine keeps its working memory in SRAM spread over the wafer (44 GB at
21 PB/s on a WSE-3), next to the cores. A model runs in one of two regimes:

**resident** — the weights of one device's shard fit on the wafer next to room for
activations and KV cache (``weights_per_device <= resident_fraction × SRAM``). Every op
is a roofline against the SRAM: ``compute = flops / (peak × dense_fraction)``,
``memory = bytes / SRAM bandwidth``; decode steps, which on a GPU wait on HBM, become
cheap.

**weight streaming** — the weights do not fit. They live in the external MemoryX store
and stream onto the wafer layer by layer over the system I/O (150 GB/s) while the
activations and the KV cache stay on the wafer (the mode Cerebras documents for large
models). A GEMM's weight bytes then cross the I/O: ``memory = max(activation bytes /
SRAM bandwidth, param_bytes / io_bw)`` (both streams run at once). Each step re-streams
every weight, so decode is bound by ``param_bytes / io_bw`` and batching amortises it.

Every op instance also pays ``op_overhead_s``, one traversal of the wafer's fabric to
distribute its operands and collect its result. The parameters are stated assumptions
(:class:`WaferParams`), listed with the catalog figures under "Assumptions and sources".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from xpusim.engine.analytic import OpTime
from xpusim.engine.device import DeviceSpec, Figure
from xpusim.engine.graph import Op, OpKind

RESIDENT = "resident"
STREAMING = "weight-streaming"
REGIMES = (RESIDENT, STREAMING)
"""The two execution regimes (see the module docstring)."""


@dataclass(frozen=True)
class WaferParams:
    """Cost-model parameters, each a stated assumption.

    * ``dense_fraction`` 0.5 — the fraction of the published peak dense GEMMs reach.
      Secondary sources describe the 125 PFLOP/s figure as including sparsity, the
      vendor page does not say; half is the middle ground until a measurement exists.
    * ``vector_fraction`` 0.25 — elementwise, norm and softmax ops run on the cores'
      vector path without the tensor datapath's fused multiply-add width; a quarter of
      peak is an assumption.
    * ``resident_fraction`` 0.8 — the share of SRAM weights may take and still count as
      resident; the rest holds activations, KV cache and the runtime's buffers.
    * ``op_overhead_s`` 1 µs — one crossing of the ~950×950 core mesh at one hop per
      cycle near 1 GHz, to fan operands out and gather results, per op instance.
    """

    dense_fraction: float = 0.5
    vector_fraction: float = 0.25
    resident_fraction: float = 0.8
    op_overhead_s: float = 1e-6

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (v > 0 and (f.name == "op_overhead_s" or v <= 1)):
                raise ValueError(
                    f"WaferParams.{f.name} must be in (0, 1] (seconds > 0 for "
                    f"op_overhead_s), got {v}"
                )

    def figures(self) -> dict[str, Figure]:
        """The parameters as figures for the report's 'Assumptions and sources'."""
        return {
            f"wafer.{f.name}": Figure(
                float(getattr(self, f.name)), assumption="wafer cost-model parameter (WaferParams)"
            )
            for f in fields(self)
        }


VECTOR_KINDS = frozenset(
    {
        OpKind.ELEMENTWISE,
        OpKind.NORM,
        OpKind.SOFTMAX,
        OpKind.POOL,
        OpKind.EMBEDDING,
        OpKind.OPTIMIZER,
        OpKind.OTHER,
    }
)
"""Op kinds priced on the vector path."""


def io_bandwidth(device: DeviceSpec) -> float:
    """Bytes/s weights stream from MemoryX (catalog ``extra.io_bw``)."""
    fig = device.extra.get("io_bw")
    if fig is None:
        raise ValueError(f"wafer device {device.name!r} has no extra.io_bw figure")
    return fig.value


def choose_regime(weights_per_device: float, device: DeviceSpec, params: WaferParams) -> str:
    """``resident`` when the weights fit in ``resident_fraction`` of SRAM, else streaming."""
    budget = params.resident_fraction * device.memory_bytes.value
    return RESIDENT if weights_per_device <= budget else STREAMING


class WaferOpPricer:
    """Prices one op instance on one wafer in a regime (a ``price_op`` callable)."""

    def __init__(self, device: DeviceSpec, params: WaferParams, regime: str, dtype: str) -> None:
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; valid: {', '.join(REGIMES)}")
        self.device = device
        self.params = params
        self.regime = regime
        self.peak = device.flops(dtype)
        self.sram_bw = device.memory_bw.value
        self.io_bw = io_bandwidth(device)

    def __call__(self, op: Op) -> OpTime:
        """``max(compute, memory) + op_overhead_s`` of one instance of ``op``."""
        rate = self.peak * (
            self.params.vector_fraction if op.kind in VECTOR_KINDS else self.params.dense_fraction
        )
        compute = op.flops / rate if op.flops else 0.0
        if self.regime == STREAMING and op.param_bytes > 0:
            on_wafer = max(0.0, op.bytes - op.param_bytes)
            memory = max(on_wafer / self.sram_bw, op.param_bytes / self.io_bw)
        else:
            memory = op.bytes / self.sram_bw if op.bytes else 0.0
        return OpTime(compute, memory, self.params.op_overhead_s)
