"""Collectives of a training step priced with their placement on the system.

Ranks are ordered tensor, context, expert, data, then pipeline (Megatron-Core's order):
a tensor group is ``t`` consecutive devices; the context-parallel group strides by
``t``; the data-parallel group (which includes the context ranks for gradients, since
they hold the same weights) has ``devices_per_node // t`` members per node; the
expert-data-parallel group of routed experts strides by ``t·expert``; a pipeline
boundary crosses nodes once ``t·c·d·p`` exceeds a node.

Collectives are priced by :func:`xpusim.engine.collectives.collective_seconds` over the
system's two-level topology with the group's members per node, at the link rates the
backend's own collective function achieves (probed with two send-recv sizes per link
class, so a backend's achievable fraction of link rate carries over); on a TPU-style
torus (``topology.torus`` set, or a device whose catalog declares ``extra.torus_dims``)
the backend's collective function prices them directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from xpusim.engine.backend import Compiled
from xpusim.engine.collectives import collective_seconds
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Collective
from xpusim.engine.system import System, Topology

__all__ = ["Comms", "backend_collective", "bucketed_exposed", "effective_topology"]


def _probe(fn: Callable[[Collective, float, int], float], group: int) -> tuple[float, float]:
    """(bandwidth, latency) of a send-recv over ``group`` measured on ``fn``."""
    n1, n2 = 1e6, 1e9
    t1, t2 = fn(Collective.SEND_RECV, n1, group), fn(Collective.SEND_RECV, n2, group)
    if t2 <= t1:
        raise ValueError("collective function does not grow with size")
    bw = (n2 - n1) / (t2 - t1)
    return bw, max(0.0, t1 - n1 / bw)


def backend_collective(compiled: Compiled) -> Callable[[Collective, float, int], float] | None:
    """The compilation's own collective pricing
    (:meth:`~xpusim.engine.backend.Compiled.collective_seconds`), or ``None`` when it
    prices none and the system topology's catalog link rates apply."""
    if compiled.collective_seconds(Collective.SEND_RECV, 1.0, 2) is None:
        return None

    def fn(kind: Collective, nbytes: float, group: int) -> float:
        return float(compiled.collective_seconds(kind, nbytes, group) or 0.0)

    return fn


def effective_topology(compiled: Compiled, system: System) -> Topology:
    """The system topology at the link rates the backend's collectives achieve."""
    topo = system.topology
    fn = backend_collective(compiled)
    if fn is None:
        return topo
    try:
        ibw, ilat = _probe(fn, 2)
        obw, olat = _probe(fn, topo.devices_per_node + 1)
    except (ValueError, XpusimError):  # no size-linear send-recv to read rates from
        return topo
    return replace(topo, intra_bw=ibw, intra_latency=ilat, inter_bw=obw, inter_latency=olat)


def bucketed_exposed(
    total_bytes: float, bucket: float, window: float, price: Callable[[float], float]
) -> tuple[float, float]:
    """(total collective seconds, seconds exposed after ``window``) of reducing
    ``total_bytes`` in buckets that become ready uniformly over ``window``."""
    if total_bytes <= 0:
        return 0.0, 0.0
    n = max(1, math.ceil(total_bytes / max(bucket, 1.0)))
    size = total_bytes / n
    each = price(size)
    end = 0.0
    for i in range(n):
        ready = window * (i + 1) / n
        end = max(end, ready) + each
    return n * each, max(0.0, end - window)


class Comms:
    """Prices the data-parallel, expert-data-parallel, context-parallel and pipeline
    collectives of one system's plan with their placement (module docstring)."""

    def __init__(self, compiled: Compiled, system: System) -> None:
        self.system = system
        self.topo = effective_topology(compiled, system)
        fn = backend_collective(compiled)
        torus = bool(system.topology.torus) or "torus_dims" in system.device.extra
        self.torus_fn = fn if torus else None

    def group(self, kind: Collective, nbytes: float, size: int, stride: int) -> float:
        """One collective of ``nbytes`` per device over ``size`` devices whose ranks are
        ``stride`` apart (so ``devices_per_node // stride`` of them share a node)."""
        if size <= 1 or nbytes <= 0:
            return 0.0
        if self.torus_fn is not None:
            return float(self.torus_fn(kind, nbytes, size))
        per_node = max(1, min(size, self.topo.devices_per_node // max(1, stride)))
        return collective_seconds(kind, nbytes, size, replace(self.topo, devices_per_node=per_node))

    def dp(self, kind: Collective, nbytes: float) -> float:
        """Over the data-parallel group of dense weights (``data × context`` ranks)."""
        par = self.system.parallelism
        return self.group(kind, nbytes, par.data * par.context, par.tensor)

    def expert_dp(self, kind: Collective, nbytes: float) -> float:
        """Over the expert-data-parallel group of routed experts
        (``data × context / expert`` ranks, strided by ``tensor × expert``)."""
        par = self.system.parallelism
        size = max(1, par.data * par.context // max(1, par.expert))
        return self.group(kind, nbytes, size, par.tensor * max(1, par.expert))

    def context(self, kind: Collective, nbytes: float) -> float:
        """Over the context-parallel group (``context`` ranks strided by ``tensor``); a
        send-recv is one hop between ring neighbours."""
        par = self.system.parallelism
        cp = par.context
        if cp <= 1 or nbytes <= 0:
            return 0.0
        if kind is Collective.SEND_RECV:
            spans = par.tensor * cp > self.topo.devices_per_node
            return self._hop(nbytes, spans)
        return self.group(kind, nbytes, cp, par.tensor)

    def _hop(self, nbytes: float, spans: bool) -> float:
        if self.torus_fn is not None:
            return float(self.torus_fn(Collective.SEND_RECV, nbytes, 2))
        if spans:
            return self.topo.inter_latency + nbytes / self.topo.inter_bw
        return self.topo.intra_latency + nbytes / self.topo.intra_bw

    def p2p(self, nbytes: float, sequence_split: bool) -> float:
        """One pipeline-boundary transfer of an activation of ``nbytes`` (with
        Megatron's scatter/gather over the tensor group unless sequence parallel)."""
        par = self.system.parallelism
        if par.pipeline <= 1 or nbytes <= 0:
            return 0.0
        t = max(1, par.tensor)
        spans = par.tensor * par.context * par.data * par.pipeline > self.topo.devices_per_node
        send = self._hop(nbytes / t, spans)
        gather = 0.0
        if t > 1 and not sequence_split:
            if self.torus_fn is not None:
                gather = float(self.torus_fn(Collective.ALL_GATHER, nbytes, t))
            else:
                gather = collective_seconds(
                    Collective.ALL_GATHER,
                    nbytes,
                    t,
                    replace(self.topo, devices_per_node=max(t, self.topo.devices_per_node)),
                )
        return send + gather
