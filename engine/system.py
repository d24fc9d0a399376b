"""A candidate system under test: a backend's device, how many, wired how, split how."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from xpusim.engine.device import DeviceSpec, LinkSpec


@dataclass(frozen=True, slots=True)
class Parallelism:
    """How a model is split over the devices of one replica and across replicas.

    ``data`` replicas (in serving: independent replicas behind the router), ``tensor``
    (Megatron intra-layer), ``pipeline`` stages (``virtual`` interleaved stages per device),
    ``sequence`` parallel on or off, ``zero`` optimizer sharding stage 0-3,
    ``expert`` parallel degree for MoE models and ``context`` parallel degree (training:
    each sequence split over that many devices, which multiply the device count).
    """

    data: int = 1
    tensor: int = 1
    pipeline: int = 1
    virtual: int = 1
    sequence: bool = False
    zero: int = 0
    expert: int = 1
    context: int = 1

    @property
    def model_parallel(self) -> int:
        """Devices one model replica spans (tensor × pipeline)."""
        return self.tensor * self.pipeline

    @property
    def devices(self) -> int:
        """Devices the whole plan uses."""
        return self.data * self.tensor * self.pipeline * self.context


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in ascending order (the parallel degrees that split ``n``),
    found by trial up to the square root. Above 10^12 (only an absurd size from a
    scenario, named in a message) the trial stops at 10^6: the divisors up to 10^6 and
    their cofactors are listed, so no value can make this slow."""
    top = min(math.isqrt(n), 10**6) if n > 0 else 0
    small = [i for i in range(1, top + 1) if n % i == 0]
    return small + [n // i for i in reversed(small) if i * i != n]


def near_divisors(n: int, x: int) -> list[int]:
    """The (up to) three divisors of ``n`` closest to ``x``, closest first."""
    return sorted(divisors(n), key=lambda d: abs(d - x))[:3]


@dataclass(frozen=True, slots=True)
class Topology:
    """Nodes of ``devices_per_node`` devices joined by a fast local fabric, and a slower
    scale-out network between nodes. Bandwidths are per device, one direction, bytes/s;
    latencies in seconds. ``torus`` gives a TPU-style ICI torus shape when set.
    """

    devices_per_node: int
    intra_bw: float
    intra_latency: float
    inter_bw: float
    inter_latency: float
    intra_name: str = "scale-up"
    inter_name: str = "scale-out"
    torus: tuple[int, ...] = ()

    @classmethod
    def from_links(
        cls,
        devices_per_node: int,
        scale_up: LinkSpec,
        scale_out: LinkSpec,
        torus: tuple[int, ...] = (),
    ) -> Topology:
        """A two-level topology from a node's fast link and the network between nodes."""
        return cls(
            devices_per_node=devices_per_node,
            intra_bw=scale_up.bandwidth.value,
            intra_latency=scale_up.latency.value,
            inter_bw=scale_out.bandwidth.value,
            inter_latency=scale_out.latency.value,
            intra_name=scale_up.name,
            inter_name=scale_out.name,
            torus=torus,
        )


@dataclass(frozen=True, slots=True)
class System:
    """A named candidate: ``count`` devices of ``device`` on ``backend``.

    ``options`` carries backend-specific settings from the scenario (a calibration file,
    a SpiNNaker time-scale factor ...) untouched by the engine.
    """

    name: str
    backend: str
    device: DeviceSpec
    count: int
    parallelism: Parallelism
    topology: Topology
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        """Independent model replicas (data-parallel groups)."""
        return max(1, self.count // self.parallelism.model_parallel)
