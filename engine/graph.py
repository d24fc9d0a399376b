"""The op graph: what one step of a model asks of hardware.

A model plugin turns a model configuration and a :class:`Shape` into an :class:`OpGraph`;
a backend prices each :class:`Op`. An op carries the quantities every cost model needs
(FLOPs, bytes read and written, parameter bytes) plus the GEMM dimensions that tiling
models need. Ops are per device: a tensor-parallel graph holds the shard one device runs
and explicit :attr:`OpKind.COLLECTIVE` ops where devices exchange data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum


class OpKind(StrEnum):
    """What an op does, which decides how a backend prices it."""

    MATMUL = "matmul"  # dense GEMM, dims (m, n, k), repeated `batch` times
    ATTENTION = "attention"  # softmax(QK^T)V core; dims (queries, keys, head_dim), batch=heads*seqs
    CONV = "conv"  # convolution; dims as the GEMM it lowers to (m, n, k)
    ELEMENTWISE = "elementwise"
    NORM = "norm"
    SOFTMAX = "softmax"
    EMBEDDING = "embedding"
    POOL = "pool"
    SPIKING = "spiking"  # one LIF layer timestep: neurons, synapses, spikes
    COLLECTIVE = "collective"  # data exchanged between devices; see Op.collective
    OPTIMIZER = "optimizer"
    OTHER = "other"


class Phase(StrEnum):
    """Which kind of step a graph describes."""

    FORWARD = "forward"  # inference forward pass (vision, encoder, offline)
    PREFILL = "prefill"  # prompt processing of a decoder
    DECODE = "decode"  # one generated token per sequence
    MIXED = "mixed"  # one serving iteration that mixes prefill chunks and decodes
    TRAIN = "train"  # forward + backward + optimizer step
    BACKWARD = "backward"
    SPIKING = "spiking"  # one sample of a spiking network over its timesteps


class Collective(StrEnum):
    """Collective communication patterns a backend prices over its links."""

    ALL_REDUCE = "all-reduce"
    ALL_GATHER = "all-gather"
    REDUCE_SCATTER = "reduce-scatter"
    ALL_TO_ALL = "all-to-all"
    SEND_RECV = "send-recv"


STRIDED = "strided"
"""The :attr:`Op.attrs` key (value 1.0) of an elementwise op one of whose tensors is not
contiguous at the output's shape (a view, a transpose, a broadcast source): a GPU runs it
on its elementwise kernels' unvectorized path (``strided_elementwise_fraction`` of the
GPU backend)."""

ROWS_MEAN = "rows_mean"
"""The :attr:`Op.attrs` key of a grouped MATMUL over routed rows (an MoE layer's experts,
``batch`` groups of ``dims[0]`` rows at most): the mean rows a group receives."""

ROWS_STD = "rows_std"
"""The :attr:`Op.attrs` key of the standard deviation of a group's rows about
:data:`ROWS_MEAN` (the spread of tokens over experts); a backend that pads each group to
whole tiles prices the expected padding from it."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of one device's step.

    ``flops`` counts multiply and add separately (a GEMM of m×n×k is ``2·m·n·k``).
    ``bytes_read``/``bytes_written`` are the unfused HBM traffic; a backend that fuses
    (XLA, CUDA graphs) may drop intermediate traffic. ``param_bytes`` is the weight
    traffic included in ``bytes_read``. ``dims`` are ``(m, n, k)`` for MATMUL/CONV,
    ``(queries, keys, head_dim)`` for ATTENTION, ``(elements,)`` otherwise; ``batch``
    repeats the op (heads × sequences for attention, experts for MoE).
    ``count`` repeats the whole op (for example once per layer) so graphs stay small.
    For COLLECTIVE ops ``collective`` names the pattern, ``comm_bytes`` the payload per
    device and ``group`` the number of devices taking part.
    """

    name: str
    kind: OpKind
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    param_bytes: float = 0.0
    dims: tuple[int, ...] = ()
    batch: int = 1
    count: int = 1
    dtype: str = "bf16"
    collective: Collective | None = None
    comm_bytes: float = 0.0
    group: int = 1
    layer: str = ""
    attrs: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        # one comparison each on the common path (a NaN fails `v >= 0`); the loop with
        # the message only when one fails: graphs build thousands of ops a run
        if not (
            self.flops >= 0
            and self.bytes_read >= 0
            and self.bytes_written >= 0
            and self.param_bytes >= 0
            and self.comm_bytes >= 0
        ):
            for fld in ("flops", "bytes_read", "bytes_written", "param_bytes", "comm_bytes"):
                v = getattr(self, fld)
                if not v >= 0:
                    raise ValueError(f"op {self.name!r}: {fld} must be >= 0, got {v}")
        if self.count < 1 or self.batch < 1:
            raise ValueError(f"op {self.name!r}: count and batch must be >= 1")
        if self.kind is OpKind.COLLECTIVE and self.collective is None:
            raise ValueError(f"op {self.name!r}: a collective op needs `collective`")

    @property
    def bytes(self) -> float:
        """Total memory traffic of one instance (read plus written)."""
        return self.bytes_read + self.bytes_written

    def attr(self, key: str, default: float = 0.0) -> float:
        """Return a numeric attribute from :attr:`attrs` (spikes, synapses ...)."""
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Shape:
    """The size of one step, the key under which backends memoize costs.

    * ``batch`` sequences or samples; ``tokens`` new tokens per sequence (the prompt chunk
      in prefill, 1 in decode, the sequence length in training); ``context`` tokens already
      in the KV cache per sequence.
    * A serving iteration that mixes work is a :attr:`Phase.MIXED` shape listing its parts
      in ``parts`` (each a PREFILL or DECODE shape); the model builds one fused graph.
    * ``timesteps`` is for spiking networks.
    * ``recompute`` (``none``, ``selective``, ``full``, or ``selective:<modules>``,
      :mod:`xpusim.engine.recompute`) is the activation recomputation of a TRAIN step: a
      recomputing graph holds the extra forward work it costs.
    """

    phase: Phase
    batch: int = 1
    tokens: int = 1
    context: int = 0
    timesteps: int = 1
    parts: tuple[Shape, ...] = ()
    recompute: str = "none"

    def __post_init__(self) -> None:
        if self.batch < 0 or self.tokens < 0 or self.context < 0 or self.timesteps < 1:
            raise ValueError(f"invalid shape {self}")

    @property
    def new_tokens(self) -> int:
        """Tokens processed by this step across all sequences."""
        if self.parts:
            return sum(p.new_tokens for p in self.parts)
        return self.batch * self.tokens


@dataclass(frozen=True, slots=True)
class OpGraph:
    """The ops one device runs for one step of a given :class:`Shape`."""

    phase: Phase
    ops: tuple[Op, ...]
    shape: Shape
    dtype: str = "bf16"
    notes: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def flops(self) -> float:
        """Total FLOPs of the step on one device."""
        return sum(o.flops * o.count for o in self.ops)

    @property
    def bytes(self) -> float:
        """Total unfused memory traffic of the step on one device."""
        return sum(o.bytes * o.count for o in self.ops)

    @property
    def comm_bytes(self) -> float:
        """Total collective payload per device."""
        return sum(o.comm_bytes * o.count for o in self.ops)

    def by_kind(self, *kinds: OpKind) -> list[Op]:
        """Return the ops whose kind is one of ``kinds``."""
        return [o for o in self.ops if o.kind in kinds]


DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
    "fp4": 0.5,
}
"""Bytes per element of each dtype name the engine understands."""


def dtype_bytes(dtype: str) -> float:
    """Return bytes per element of ``dtype``, raising ``ValueError`` with the valid names."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None
