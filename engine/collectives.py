"""Hardware-agnostic collective communication times (the alpha-beta model).

Every formula prices one collective as ``steps · α + bytes_on_the_wire / B`` where ``α`` is
the per-step latency of a link (seconds) and ``B`` its bandwidth per device in one
direction (bytes/s), both taken from :class:`~xpusim.engine.system.Topology`. ``n`` is the buffer
size **per device** in bytes, following NCCL's convention:

* all-reduce: the buffer every device holds before and after (``n`` in, ``n`` out);
* reduce-scatter: the full input each device holds (each ends with ``n/p``);
* all-gather: the full output each device ends with (each contributes ``n/p``);
* all-to-all: everything one device sends and keeps (``n/p`` to each peer);
* send-recv: the message one device sends to one peer.

Flat algorithms over ``p`` devices on one link class (α, B):

=================  ===========================================  ==========================
collective         ring                                         tree / recursive
=================  ===========================================  ==========================
all-reduce         ``2(p-1)·α + 2(p-1)/p · n/B``                ``2⌈log2 p⌉·α + 2·n/B``
                                                                (pipelined double binary
                                                                tree, as NCCL's ``Tree``)
reduce-scatter     ``(p-1)·α + (p-1)/p · n/B``                  ``⌈log2 p⌉·α + (p-1)/p·n/B``
                                                                (recursive halving)
all-gather         ``(p-1)·α + (p-1)/p · n/B``                  ``⌈log2 p⌉·α + (p-1)/p·n/B``
                                                                (recursive doubling)
all-to-all         ``(p-1)·α + (p-1)/p · n/B`` (pairwise exchange; the same for both)
send-recv          ``α + n/B``
=================  ===========================================  ==========================

The ring is bandwidth-optimal; the tree pays ``log p`` latency steps instead of ``p`` and
wins for small messages or large groups, which is why ``algorithm="auto"`` takes the
cheaper of the two (NCCL's tuner makes the same choice).

Hierarchical (a group that spans ``m`` nodes of ``g`` devices, ``p = g·m``): the intra-node
stage runs on the scale-up link (``α_i``, ``B_i``), the inter-node stage on the scale-out
network (``α_o``, ``B_o``, per device: every device drives its own share of the NICs):

* all-reduce = reduce-scatter(n, g, intra) + all-reduce(n/g, m, inter) + all-gather(n, g, intra)
* reduce-scatter = reduce-scatter(n, g, intra) + reduce-scatter(n/g, m, inter)
* all-gather = all-gather(n/g, m, inter) + all-gather(n, g, intra)
* all-to-all = ``(g-1)·α_i + (g-1)/p·n/B_i`` + ``(m-1)·α_o + (p-g)/p·n/B_o``
* send-recv across nodes = ``α_o + n/B_o``

A flat ring over a group that spans nodes pays the slowest link it crosses (the smallest
bandwidth and the largest latency); ``auto`` compares that with the hierarchical schedule
and returns the cheaper.

Torus (TPU ICI): see :func:`torus_collective_seconds`.

As NCCL and RCCL run them (:func:`nccl_flat_seconds`,
:func:`nccl_collective_seconds`): NCCL and RCCL pay a fixed cost per call that
depends on the wire protocol (``LL`` for small buffers, ``Simple`` for large ones; tens
of microseconds on 8 GPUs, far above a hop latency), move the payload at a
protocol-dependent share of the link rate, reduce in the switch where the fabric has
NVLink SHARP (NVLS: the buffer crosses the links once instead of ``2(p-1)/p`` times), and
on a full mesh drive only the ``p-1`` links a group of ``p`` spans. A
:class:`FabricProfile` holds those figures for one fabric; the tuner's choice (the
fastest algorithm and protocol for the size) is the minimum over them. Backends fit the
profiles to measured sweeps (the GPU plugin's ``fabrics.yaml``).

Serving engines run small tensor-parallel all-reduces with their own peer-to-peer kernel
instead (:class:`P2PAllReduce`, :func:`p2p_allreduce_seconds`): each device reads its
peers' buffers directly, one-shot or two-shot, with a fixed cost of a few microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from xpusim.engine.device import DeviceSpec
from xpusim.engine.graph import Collective
from xpusim.engine.system import Topology

ALGORITHMS = ("auto", "ring", "tree", "hierarchical")
"""Values accepted by ``algorithm`` in :func:`collective_seconds`."""

__all__ = [
    "ALGORITHMS",
    "LIBRARY_ALGORITHMS",
    "P2P_SCHEDULES",
    "FabricProfile",
    "P2PAllReduce",
    "P2PSchedule",
    "Protocol",
    "collective_seconds",
    "flat_seconds",
    "hierarchical_seconds",
    "nccl_collective_seconds",
    "nccl_flat_seconds",
    "p2p_allreduce_seconds",
    "ring_seconds",
    "topology_from_device",
    "torus_collective_seconds",
    "tree_seconds",
]


def _kind(kind: Collective | str) -> Collective:
    return kind if isinstance(kind, Collective) else Collective(kind)


def _check(nbytes: float, p: int, bw: float) -> None:
    if nbytes < 0 or nbytes != nbytes:
        raise ValueError(f"collective payload must be >= 0 bytes, got {nbytes}")
    if p < 1:
        raise ValueError(f"collective group must have >= 1 device, got {p}")
    if bw <= 0:
        raise ValueError(f"link bandwidth must be > 0 bytes/s, got {bw}")


def ring_seconds(kind: Collective | str, nbytes: float, p: int, bw: float, alpha: float) -> float:
    """Seconds for a flat ring collective of ``nbytes`` per device over ``p`` devices on
    links of ``bw`` bytes/s (per device, one direction) and ``alpha`` seconds per step.

    Formulas in the module docstring; a group of one device costs nothing.
    """
    k = _kind(kind)
    _check(nbytes, p, bw)
    if p == 1 or (nbytes == 0 and k is not Collective.SEND_RECV):
        return 0.0
    if k is Collective.ALL_REDUCE:
        return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / bw
    if k in (Collective.REDUCE_SCATTER, Collective.ALL_GATHER, Collective.ALL_TO_ALL):
        return (p - 1) * alpha + (p - 1) / p * nbytes / bw
    return alpha + nbytes / bw  # SEND_RECV


def tree_seconds(kind: Collective | str, nbytes: float, p: int, bw: float, alpha: float) -> float:
    """Seconds for the logarithmic-depth variant of a collective (pipelined double binary
    tree for all-reduce, recursive halving/doubling for reduce-scatter/all-gather).
    All-to-all and send-recv have no tree variant and equal :func:`ring_seconds`."""
    k = _kind(kind)
    _check(nbytes, p, bw)
    if p == 1 or (nbytes == 0 and k is not Collective.SEND_RECV):
        return 0.0
    steps = math.ceil(math.log2(p))
    if k is Collective.ALL_REDUCE:
        return 2 * steps * alpha + 2 * nbytes / bw
    if k in (Collective.REDUCE_SCATTER, Collective.ALL_GATHER):
        return steps * alpha + (p - 1) / p * nbytes / bw
    return ring_seconds(k, nbytes, p, bw, alpha)


def flat_seconds(
    kind: Collective | str,
    nbytes: float,
    p: int,
    bw: float,
    alpha: float,
    algorithm: str = "auto",
) -> float:
    """A flat collective on one link class: ``ring``, ``tree`` or the cheaper (``auto``)."""
    if algorithm == "ring":
        return ring_seconds(kind, nbytes, p, bw, alpha)
    if algorithm == "tree":
        return tree_seconds(kind, nbytes, p, bw, alpha)
    return min(ring_seconds(kind, nbytes, p, bw, alpha), tree_seconds(kind, nbytes, p, bw, alpha))


def hierarchical_seconds(
    kind: Collective | str,
    nbytes: float,
    group: int,
    topology: Topology,
    algorithm: str = "auto",
) -> float:
    """Intra-node then inter-node schedule for a group spanning nodes (module docstring).

    ``algorithm`` (``ring``/``tree``/``auto``) applies to each stage. A group that fits in
    one node is priced flat on the scale-up link.
    """
    k = _kind(kind)
    t = topology
    stage = "auto" if algorithm == "hierarchical" else algorithm
    g = max(1, min(group, t.devices_per_node))
    m = math.ceil(group / g)
    if m <= 1:
        return flat_seconds(k, nbytes, group, t.intra_bw, t.intra_latency, stage)
    p = g * m

    def intra(kk: Collective, n: float) -> float:
        return flat_seconds(kk, n, g, t.intra_bw, t.intra_latency, stage)

    def inter(kk: Collective, n: float) -> float:
        return flat_seconds(kk, n, m, t.inter_bw, t.inter_latency, stage)

    if k is Collective.ALL_REDUCE:
        return (
            intra(Collective.REDUCE_SCATTER, nbytes)
            + inter(Collective.ALL_REDUCE, nbytes / g)
            + intra(Collective.ALL_GATHER, nbytes)
        )
    if k is Collective.REDUCE_SCATTER:
        return intra(Collective.REDUCE_SCATTER, nbytes) + inter(
            Collective.REDUCE_SCATTER, nbytes / g
        )
    if k is Collective.ALL_GATHER:
        return inter(Collective.ALL_GATHER, nbytes / g) + intra(Collective.ALL_GATHER, nbytes)
    if k is Collective.ALL_TO_ALL:
        if nbytes == 0:
            return 0.0
        local = (g - 1) * t.intra_latency + (g - 1) / p * nbytes / t.intra_bw if g > 1 else 0.0
        remote = (m - 1) * t.inter_latency + (p - g) / p * nbytes / t.inter_bw
        return local + remote
    return t.inter_latency + nbytes / t.inter_bw  # SEND_RECV across nodes


def collective_seconds(
    kind: Collective | str,
    nbytes: float,
    group: int,
    topology: Topology,
    algorithm: str = "auto",
) -> float:
    """Seconds for one ``kind`` collective of ``nbytes`` per device over ``group`` devices.

    * ``group <= topology.devices_per_node``: flat on the scale-up link; ``ring``, ``tree``
      or ``auto`` (the cheaper of the two).
    * A group spanning nodes: ``ring``/``tree`` run flat and pay the slowest link crossed
      (min bandwidth, max latency); ``hierarchical`` runs the two-level schedule; ``auto``
      takes the cheapest of the three.
    * A send-recv with ``group > devices_per_node`` is taken to cross nodes.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown collective algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}"
        )
    k = _kind(kind)
    t = topology
    if group <= 1:
        return 0.0
    if group <= t.devices_per_node:
        stage = "auto" if algorithm == "hierarchical" else algorithm
        return flat_seconds(k, nbytes, group, t.intra_bw, t.intra_latency, stage)
    slow_bw = min(t.intra_bw, t.inter_bw)
    slow_lat = max(t.intra_latency, t.inter_latency)
    if algorithm in ("ring", "tree"):
        return flat_seconds(k, nbytes, group, slow_bw, slow_lat, algorithm)
    hier = hierarchical_seconds(k, nbytes, group, t, "auto")
    if algorithm == "hierarchical":
        return hier
    return min(hier, flat_seconds(k, nbytes, group, slow_bw, slow_lat, "auto"))


def torus_collective_seconds(
    kind: Collective | str,
    nbytes: float,
    dims: Sequence[int],
    link_bw: float,
    latency: float,
) -> float:
    """Seconds for one collective over a wrap-around torus of shape ``dims`` (TPU ICI).

    ``link_bw`` is one link's bandwidth in one direction (bytes/s); every chip has two
    links per dimension (``+`` and ``-``), so each dimension runs a **bidirectional ring**:
    the buffer is split in halves that travel opposite ways, doubling the ring bandwidth
    to ``2·link_bw``. Dimensions are processed one after another (dimension-ordered), so a
    dimension of size 1 costs nothing. With ``s_1 = n`` and ``s_{i+1} = s_i / d_i``:

    * reduce-scatter = Σ_i [ (d_i-1)·α + (d_i-1)/d_i · s_i / (2·link_bw) ]
    * all-gather = the same sum in reverse order (buffers grow back to ``n``)
    * all-reduce = reduce-scatter + all-gather
      (= Σ_i 2(d_i-1)·α + 2(d_i-1)/d_i · s_i / (2·link_bw))
    * all-to-all = Σ_i [ (d_i-1)·α + n·d_i / (8·link_bw) ]: per dimension the full
      buffer crosses the ring's bisection (2 links each way, half of the data crosses),
      which bounds a bidirectional ring's all-to-all at ``d·n/8`` bytes per link-second
    * send-recv (neighbour) = α + n / link_bw

    The model assumes wrap-around links in every dimension (a torus, not a mesh) and no
    contention from other traffic.
    """
    k = _kind(kind)
    ds = [int(d) for d in dims if int(d) > 1]
    _check(nbytes, max(1, math.prod(ds) if ds else 1), link_bw)
    if k is Collective.SEND_RECV:
        return latency + nbytes / link_bw
    if not ds or nbytes == 0:
        return 0.0
    ring_bw = 2 * link_bw

    def rs() -> float:
        s = nbytes
        total = 0.0
        for d in ds:
            total += (d - 1) * latency + (d - 1) / d * s / ring_bw
            s /= d
        return total

    if k in (Collective.REDUCE_SCATTER, Collective.ALL_GATHER):
        return rs()  # all-gather mirrors reduce-scatter exactly
    if k is Collective.ALL_REDUCE:
        return 2 * rs()
    return sum((d - 1) * latency + nbytes * d / (8 * link_bw) for d in ds)  # ALL_TO_ALL


def topology_from_device(device: DeviceSpec, devices_per_node: int | None = None) -> Topology:
    """The default two-level topology of a device's catalog links.

    Scale-up (NVLink, Infinity Fabric, PCIe) inside a node of ``devices_per_node``
    (default: the spec's), scale-out between nodes; a device without a scale-out link uses
    its scale-up link for both (a single-node part).
    """
    up = device.scale_up
    out = device.scale_out or up
    if up is None or out is None:
        raise ValueError(f"device {device.name!r} declares no scale_up link to build a topology")
    return Topology.from_links(devices_per_node or device.devices_per_node, up, out)


# -- collectives as NCCL and RCCL run them -------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """One wire protocol of NCCL or RCCL (NCCL's ``LL``, ``LL128``, ``Simple``).

    ``launch_s`` is the fixed cost of one call with this protocol (kernel launch, the
    first flag exchange, the host-side call); every algorithm step then pays the fabric's
    per-hop latency, and the payload moves at ``efficiency`` of the link rate (``LL``
    sends a flag with every 4-byte word, so it carries about half; ``Simple`` carries
    nearly all but synchronises in large chunks).
    """

    name: str
    launch_s: float
    efficiency: float

    def __post_init__(self) -> None:
        if self.launch_s < 0 or not 0 < self.efficiency <= 1:
            raise ValueError(
                f"protocol {self.name!r}: launch_s must be >= 0 and efficiency in (0, 1], "
                f"got {self.launch_s} and {self.efficiency}"
            )


@dataclass(frozen=True)
class FabricProfile:
    """How NCCL or RCCL drives one scale-up fabric, fitted to its public sweeps.

    * ``protocols``: the wire protocols the tuner chooses among (per size, the fastest);
    * ``nvls``: in-switch reduction (NVLink SHARP) for all-reduce on groups of at least
      ``nvls_min_group`` devices: one fixed cost ``nvls_launch_s`` and the buffer moved
      once at ``nvls_efficiency`` of the link rate (each device sends its buffer to the
      switch, which reduces and multicasts the result), instead of a ring's
      ``2(p-1)/p`` of it;
    * ``mesh_links``: a full mesh with a dedicated link to each of ``mesh_links`` peers
      (MI300X Infinity Fabric): the catalog bandwidth is the sum over all peers, so a
      group of ``p`` devices drives only ``p-1`` of the links;
    * ``nvls_rank_buffer_bytes``: the memory the library binds on each device, per device
      of the communicator, for NVLS buffers when it sets NVLS up (groups of at least
      ``nvls_buffer_min_group`` devices), whether or not its tuner then picks NVLS for a
      given size (:meth:`buffer_bytes`);
    * ``source``: the sweeps it was fitted to, with in-sample and held-out error.
    """

    name: str
    protocols: tuple[Protocol, ...]
    nvls: bool = False
    nvls_min_group: int = 2
    nvls_launch_s: float = 0.0
    nvls_efficiency: float = 1.0
    mesh_links: int = 0
    source: str = ""
    nvls_rank_buffer_bytes: float = 0.0
    nvls_buffer_min_group: int = 3

    def __post_init__(self) -> None:
        if not self.protocols:
            raise ValueError(f"fabric profile {self.name!r} has no protocol")
        if self.nvls and not 0 < self.nvls_efficiency <= 2:
            raise ValueError(f"fabric profile {self.name!r}: nvls_efficiency must be in (0, 2]")
        if self.mesh_links < 0:
            raise ValueError(f"fabric profile {self.name!r}: negative mesh_links")
        if self.nvls_rank_buffer_bytes < 0:
            raise ValueError(f"fabric profile {self.name!r}: negative nvls_rank_buffer_bytes")

    def buffer_bytes(self, group: int) -> float:
        """Bytes the library binds on each device for the NVLS buffers of one
        communicator of ``group`` devices inside a node: ``nvls_rank_buffer_bytes`` per
        device of the group where the fabric has NVLS and the group has at least
        ``nvls_buffer_min_group`` devices, else none."""
        if not self.nvls or group < self.nvls_buffer_min_group:
            return 0.0
        return self.nvls_rank_buffer_bytes * group

    def group_bandwidth(self, bw: float, p: int) -> float:
        """Per-device bandwidth a group of ``p`` devices drives on a link of ``bw``: all of
        it on a switched fabric, ``min(p-1, mesh_links)/mesh_links`` of it on a full mesh."""
        if self.mesh_links > 0:
            return bw * min(max(p - 1, 1), self.mesh_links) / self.mesh_links
        return bw


def _wire(kind: Collective, nbytes: float, p: int, algorithm: str) -> tuple[float, float]:
    """(algorithm steps, bytes each device moves) of a flat ring or tree collective."""
    if kind is Collective.ALL_REDUCE:
        if algorithm == "tree":
            return 2 * math.ceil(math.log2(p)), 2 * nbytes
        return 2 * (p - 1), 2 * (p - 1) / p * nbytes
    if kind in (Collective.REDUCE_SCATTER, Collective.ALL_GATHER):
        if algorithm == "tree":
            return math.ceil(math.log2(p)), (p - 1) / p * nbytes
        return p - 1, (p - 1) / p * nbytes
    if kind is Collective.ALL_TO_ALL:
        # every peer is sent its share at once over the switch or the mesh: one step
        return 1, (p - 1) / p * nbytes
    return 1, nbytes  # SEND_RECV


LIBRARY_ALGORITHMS = ("auto", "ring", "tree", "nvls")
"""Values accepted by ``algorithm`` in :func:`nccl_flat_seconds`."""


def nccl_flat_seconds(
    kind: Collective | str,
    nbytes: float,
    p: int,
    bw: float,
    hop_s: float,
    profile: FabricProfile,
    algorithm: str = "auto",
) -> float:
    """Seconds of one collective over ``p`` devices of one fabric, as NCCL/RCCL run it.

    Each (algorithm, protocol) pair costs ``protocol.launch_s + steps · hop_s + wire /
    (B_p · protocol.efficiency)`` (``B_p``: :meth:`FabricProfile.group_bandwidth`; steps
    and wire bytes as in the module docstring), and NVLS all-reduce ``nvls_launch_s +
    n / (B · nvls_efficiency)`` where the fabric has it. ``auto`` takes the fastest pair,
    as NCCL's tuner picks one per call size (``LL`` rings for small buffers, ``Simple``
    or NVLS for large ones); ``ring``/``tree``/``nvls`` restrict the algorithm (``nvls``
    falls back to the ring where the fabric or the collective has none).
    """
    k = _kind(kind)
    _check(nbytes, p, bw)
    if algorithm not in LIBRARY_ALGORITHMS:
        raise ValueError(
            f"unknown collective algorithm {algorithm!r}; valid: {', '.join(LIBRARY_ALGORITHMS)}"
        )
    if p == 1 or (nbytes == 0 and k is not Collective.SEND_RECV):
        return 0.0
    bw_p = profile.group_bandwidth(bw, p)
    nvls_ok = profile.nvls and k is Collective.ALL_REDUCE and p >= profile.nvls_min_group
    candidates: list[float] = []
    if nvls_ok and algorithm in ("auto", "nvls"):
        candidates.append(profile.nvls_launch_s + nbytes / (bw * profile.nvls_efficiency))
    algos = {"auto": ("ring", "tree"), "tree": ("tree",)}.get(algorithm, ("ring",))
    if algorithm == "nvls" and candidates:
        algos = ()
    for algo in algos:
        steps, wire = _wire(k, nbytes, p, algo)
        for proto in profile.protocols:
            candidates.append(proto.launch_s + steps * hop_s + wire / (bw_p * proto.efficiency))
    return min(candidates)


def nccl_collective_seconds(
    kind: Collective | str,
    nbytes: float,
    group: int,
    topology: Topology,
    intra: FabricProfile,
    inter: FabricProfile,
    algorithm: str = "auto",
) -> float:
    """One collective over ``group`` devices of ``topology`` priced as NCCL or RCCL runs it.

    Inside a node: :func:`nccl_flat_seconds` on the scale-up link with the ``intra``
    profile (per-hop latency ``topology.intra_latency``). Across nodes: the two-level
    schedule of :func:`hierarchical_seconds` with each stage priced the same way (the
    inter-node stage on the scale-out link with the ``inter`` profile), or a flat ring
    over the slowest link when that is cheaper; ``algorithm`` ``hierarchical`` forces the
    two-level schedule.
    """
    k = _kind(kind)
    t = topology
    if group <= 1:
        return 0.0
    flat_algo = "auto" if algorithm == "hierarchical" else algorithm
    if group <= t.devices_per_node:
        return nccl_flat_seconds(k, nbytes, group, t.intra_bw, t.intra_latency, intra, flat_algo)
    g = max(1, t.devices_per_node)
    m = math.ceil(group / g)

    def up(kk: Collective, n: float) -> float:
        return nccl_flat_seconds(kk, n, g, t.intra_bw, t.intra_latency, intra, flat_algo)

    def out(kk: Collective, n: float) -> float:
        algo = "auto" if flat_algo == "nvls" else flat_algo
        return nccl_flat_seconds(kk, n, m, t.inter_bw, t.inter_latency, inter, algo)

    if k is Collective.ALL_REDUCE:
        hier = (
            up(Collective.REDUCE_SCATTER, nbytes)
            + out(Collective.ALL_REDUCE, nbytes / g)
            + up(Collective.ALL_GATHER, nbytes)
        )
    elif k is Collective.REDUCE_SCATTER:
        hier = up(k, nbytes) + out(k, nbytes / g)
    elif k is Collective.ALL_GATHER:
        hier = out(k, nbytes / g) + up(k, nbytes)
    elif k is Collective.ALL_TO_ALL:
        hier = up(k, nbytes / m) + out(k, nbytes) if nbytes else 0.0
    else:
        return out(Collective.SEND_RECV, nbytes) if nbytes else 0.0
    if algorithm == "hierarchical":
        return hier
    slow = nccl_flat_seconds(
        k,
        nbytes,
        group,
        min(t.intra_bw, t.inter_bw),
        max(t.intra_latency, t.inter_latency),
        inter,
        "auto" if flat_algo == "nvls" else flat_algo,
    )
    return min(hier, slow)


@dataclass(frozen=True, slots=True)
class P2PAllReduce:
    """A serving engine's own all-reduce kernel for small tensor-parallel messages inside
    one node: every device reads its peers' buffers directly over the scale-up fabric
    (CUDA IPC peer-to-peer), with no collective library in between (vLLM's
    ``custom_all_reduce``, which SGLang also runs; TensorRT-LLM's custom all-reduce
    plugin). Two schedules:

    * one-shot: each device reads the whole buffer of each of its ``p - 1`` peers and
      reduces locally, ``one_shot_s + (p - 1)·n / (efficiency·B)``;
    * two-shot: a reduce-scatter then an all-gather through the peers' buffers, each
      device moving ``2(p - 1)/p · n``, ``two_shot_s + 2(p - 1)/p · n / (efficiency·B)``
      (two barriers, so a larger fixed cost);

    the kernel runs the cheaper (the engines switch from one-shot to two-shot as the
    buffer grows). ``B`` is the scale-up link rate per device and direction;
    ``efficiency`` the share of it the kernel's loads reach (a few dozen thread blocks
    issue them). ``source`` names the measurements it was fitted to.
    """

    name: str
    one_shot_s: float
    two_shot_s: float
    efficiency: float
    source: str = ""

    def __post_init__(self) -> None:
        if self.one_shot_s < 0 or self.two_shot_s < 0:
            raise ValueError(f"p2p all-reduce {self.name!r}: negative fixed cost")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"p2p all-reduce {self.name!r}: efficiency must be in (0, 1]")


P2PSchedule = Literal["cheaper", "one-shot"]
"""Which of a peer-to-peer kernel's schedules an engine runs: ``cheaper`` (the engine
switches from one-shot to two-shot as the buffer grows, as vLLM's ``custom_all_reduce``
does) or ``one-shot`` only (TensorRT-LLM's AUTO strategy from v0.12.0, its two-shot
disabled: messages too large for one-shot go to the collective library instead)."""

P2P_SCHEDULES: tuple[P2PSchedule, ...] = ("cheaper", "one-shot")
"""The values of :data:`P2PSchedule`."""


def p2p_allreduce_seconds(
    nbytes: float,
    p: int,
    bw: float,
    kernel: P2PAllReduce,
    schedule: P2PSchedule = "cheaper",
) -> float:
    """One all-reduce of ``nbytes`` per device over ``p`` devices of one node by the
    peer-to-peer ``kernel`` on a scale-up link of ``bw`` bytes/s per device and direction
    (:class:`P2PAllReduce`), run on ``schedule``: the cheaper of one-shot and two-shot, or
    one-shot."""
    _check(nbytes, p, bw)
    if schedule not in P2P_SCHEDULES:
        raise ValueError(f"unknown p2p schedule {schedule!r}; known: {', '.join(P2P_SCHEDULES)}")
    if p <= 1:
        return 0.0
    rate = kernel.efficiency * bw
    one = kernel.one_shot_s + (p - 1) * nbytes / rate
    if schedule == "one-shot":
        return one
    two = kernel.two_shot_s + 2.0 * (p - 1) / p * nbytes / rate
    return min(one, two)
