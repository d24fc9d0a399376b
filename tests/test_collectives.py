"""Alpha-beta collective formulas (engine.collectives)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from xpusim.engine.collectives import (
    collective_seconds,
    hierarchical_seconds,
    ring_seconds,
    topology_from_device,
    torus_collective_seconds,
    tree_seconds,
)
from xpusim.engine.graph import Collective
from xpusim.engine.system import Topology

AR, RS, AG, A2A, SR = (
    Collective.ALL_REDUCE,
    Collective.REDUCE_SCATTER,
    Collective.ALL_GATHER,
    Collective.ALL_TO_ALL,
    Collective.SEND_RECV,
)

NODE = Topology(
    devices_per_node=8, intra_bw=450e9, intra_latency=1e-6, inter_bw=50e9, inter_latency=5e-6
)


def test_ring_all_reduce_formula() -> None:
    """Ring collectives follow the alpha-beta formulas: all-reduce 2(p-1)a + 2(p-1)/p n/B,
    reduce-scatter and all-gather half that, send/recv a + n/B."""
    p, n, bw, a = 8, 1e9, 100e9, 2e-6
    ring_ar = 2 * (p - 1) * a + 2 * (p - 1) / p * n / bw
    assert ring_seconds(AR, n, p, bw, a) == pytest.approx(ring_ar)
    assert ring_seconds(RS, n, p, bw, a) == pytest.approx((p - 1) * a + (p - 1) / p * n / bw)
    assert ring_seconds(AG, n, p, bw, a) == pytest.approx(ring_seconds(RS, n, p, bw, a))
    assert ring_seconds(SR, n, 2, bw, a) == pytest.approx(a + n / bw)


def test_tree_formula_and_auto_picks_cheaper() -> None:
    """A tree all-reduce costs 2 log2(p) a + 2n/B: it beats the ring on small messages and loses
    on large ones, and the automatic choice takes the cheaper."""
    p, bw, a = 64, 100e9, 5e-6
    assert tree_seconds(AR, 1e6, p, bw, a) == pytest.approx(2 * 6 * a + 2 * 1e6 / bw)
    small, big = 1e3, 1e10
    # small messages: latency dominates, the tree wins; big: the ring's bandwidth wins
    assert tree_seconds(AR, small, p, bw, a) < ring_seconds(AR, small, p, bw, a)
    assert ring_seconds(AR, big, p, bw, a) < tree_seconds(AR, big, p, bw, a)
    wide = Topology(devices_per_node=64, intra_bw=bw, intra_latency=a, inter_bw=bw, inter_latency=a)
    for n in (small, big):
        auto = collective_seconds(AR, n, p, wide)
        best = min(ring_seconds(AR, n, p, bw, a), tree_seconds(AR, n, p, bw, a))
        assert auto == pytest.approx(best)


def test_group_of_one_and_empty_payload_are_free() -> None:
    """A collective over one device or of zero bytes takes no time."""
    assert collective_seconds(AR, 1e9, 1, NODE) == 0.0
    assert collective_seconds(AR, 0.0, 8, NODE) == 0.0


@pytest.mark.parametrize("kind", [AR, RS, AG, A2A])
def test_grows_with_bytes_and_group(kind: Collective) -> None:
    """A collective's time never decreases as its payload or its group grows."""
    sizes = [1e3, 1e6, 1e8, 1e9]
    times = [collective_seconds(kind, n, 8, NODE) for n in sizes]
    assert times == sorted(times) and times[0] < times[-1]
    groups = [2, 4, 8, 16, 32]
    tg = [collective_seconds(kind, 1e8, g, NODE) for g in groups]
    assert tg == sorted(tg)


def test_crossing_nodes_pays_the_slow_link() -> None:
    """A group spanning two nodes pays the slow inter-node link and costs the cheapest of
    hierarchical (intra RS, inter AR of n/8, intra AG), flat ring and flat tree."""
    inside = collective_seconds(AR, 1e9, 8, NODE)
    across = collective_seconds(AR, 1e9, 16, NODE)
    assert across > 1.5 * inside  # the inter-node stage runs on the 50 GB/s NIC
    flat_slow = ring_seconds(AR, 1e9, 16, 50e9, 5e-6)
    hier = hierarchical_seconds(AR, 1e9, 16, NODE)
    flat_tree = collective_seconds(AR, 1e9, 16, NODE, "tree")
    assert across == pytest.approx(min(hier, flat_slow, flat_tree))
    # hierarchical: intra RS + inter AR of n/8 over 2 nodes + intra AG
    expect = (
        ring_seconds(RS, 1e9, 8, 450e9, 1e-6)
        + ring_seconds(AR, 1e9 / 8, 2, 50e9, 5e-6)
        + ring_seconds(AG, 1e9, 8, 450e9, 1e-6)
    )
    assert hierarchical_seconds(AR, 1e9, 16, NODE, "ring") == pytest.approx(expect)
    assert hier <= expect * (1 + 1e-12)
    assert collective_seconds(AR, 1e9, 16, NODE, "ring") == pytest.approx(flat_slow)


def test_unknown_algorithm_raises() -> None:
    """An unknown collective algorithm name raises a ValueError."""
    with pytest.raises(ValueError, match="algorithm"):
        collective_seconds(AR, 1.0, 4, NODE, "butterfly")


def test_torus_bidirectional_rings() -> None:
    """Torus collectives run bidirectional rings (twice the link bandwidth) per dimension, each
    later dimension on the shrunk payload; size-1 dimensions cost nothing."""
    n, bw, a = 1e9, 50e9, 1e-6
    # a 1-D torus of 4: reduce-scatter over a bidirectional ring (2 x link bandwidth)
    rs = torus_collective_seconds(RS, n, (4,), bw, a)
    assert rs == pytest.approx(3 * a + 3 / 4 * n / (2 * bw))
    assert torus_collective_seconds(AR, n, (4,), bw, a) == pytest.approx(2 * rs)
    assert torus_collective_seconds(AG, n, (4,), bw, a) == pytest.approx(rs)
    # dimensions of size 1 cost nothing; 2-D: second dimension works on n/d1
    assert torus_collective_seconds(AR, n, (4, 1), bw, a) == pytest.approx(2 * rs)
    two_d = torus_collective_seconds(RS, n, (4, 4), bw, a)
    assert two_d == pytest.approx(rs + 3 * a + 3 / 4 * (n / 4) / (2 * bw))
    # more chips on the torus: all-reduce bandwidth term approaches 2n/(2 bw) from below
    big = torus_collective_seconds(AR, n, (16, 16, 16), bw, 0.0)
    assert big < n / bw
    assert torus_collective_seconds(A2A, n, (4,), bw, a) == pytest.approx(3 * a + n * 4 / (8 * bw))
    assert torus_collective_seconds(SR, n, (4, 4), bw, a) == pytest.approx(a + n / bw)
    assert torus_collective_seconds(AR, n, (1, 1), bw, a) == 0.0


def test_topology_from_device() -> None:
    """An H100's default topology is 8 GPUs per node on 450 GB/s, 1 us NVLink, with a slower
    link between nodes."""
    from xpusim.plugins.gpu.catalog import resolve

    t = topology_from_device(resolve("h100"))
    assert t.devices_per_node == 8
    assert t.intra_bw == pytest.approx(450e9)
    assert t.inter_bw < t.intra_bw
    assert math.isclose(t.intra_latency, 1e-6)


# -- collectives as NCCL and RCCL run them ------------------------------------------

from xpusim.engine.collectives import (  # noqa: E402
    FabricProfile,
    Protocol,
    nccl_collective_seconds,
    nccl_flat_seconds,
)

LL = Protocol("LL", 10e-6, 0.5)
SIMPLE = Protocol("Simple", 30e-6, 0.9)
SWITCH = FabricProfile(
    "switch", (LL, SIMPLE), nvls=True, nvls_min_group=4, nvls_launch_s=50e-6, nvls_efficiency=0.6
)


def test_nccl_picks_protocol_by_size() -> None:
    """A small all-reduce pays the low-latency protocol's launch plus one hop per ring step
    at half the link rate; a large one the bandwidth protocol's efficiency, whichever is
    cheaper (NCCL's tuner choice)."""
    p, bw, hop = 8, 100e9, 1e-6
    small, big = 4096.0, 1e9
    ring_ll = LL.launch_s + 2 * (p - 1) * hop + 2 * (p - 1) / p * small / (bw * 0.5)
    assert nccl_flat_seconds(AR, small, p, bw, hop, SWITCH, "ring") == pytest.approx(ring_ll)
    ring_simple = SIMPLE.launch_s + 2 * (p - 1) * hop + 2 * (p - 1) / p * big / (bw * 0.9)
    assert nccl_flat_seconds(AR, big, p, bw, hop, SWITCH, "ring") == pytest.approx(ring_simple)


def test_nvls_only_for_all_reduce_on_large_enough_groups() -> None:
    """In-switch reduction moves the buffer once: it wins large all-reduces on groups of at
    least ``nvls_min_group``, never prices a smaller group or another collective."""
    bw, hop, n = 100e9, 1e-6, 1e9
    nvls = SWITCH.nvls_launch_s + n / (bw * SWITCH.nvls_efficiency)
    assert nccl_flat_seconds(AR, n, 8, bw, hop, SWITCH) == pytest.approx(nvls)
    assert nccl_flat_seconds(AR, n, 2, bw, hop, SWITCH) < nvls  # ring on 2 GPUs
    assert nccl_flat_seconds(AR, n, 3, bw, hop, SWITCH, "nvls") == pytest.approx(
        nccl_flat_seconds(AR, n, 3, bw, hop, SWITCH, "ring")
    )
    assert nccl_flat_seconds(AG, n, 8, bw, hop, SWITCH, "nvls") == pytest.approx(
        nccl_flat_seconds(AG, n, 8, bw, hop, SWITCH, "ring")
    )


def test_mesh_group_drives_only_its_links() -> None:
    """On a full mesh of 7 peer links a pair of devices uses one link: a 2-device ring moves
    its bytes at 1/7 of the catalog's total rate, an 8-device ring at all of it."""
    mesh = FabricProfile("mesh", (SIMPLE,), mesh_links=7)
    bw, n = 448e9, 1e10
    two = nccl_flat_seconds(AR, n, 2, bw, 0.0, mesh, "ring") - SIMPLE.launch_s
    assert two == pytest.approx(n / (bw / 7 * 0.9))
    eight = nccl_flat_seconds(AR, n, 8, bw, 0.0, mesh, "ring") - SIMPLE.launch_s
    assert eight == pytest.approx(2 * 7 / 8 * n / (bw * 0.9))


def test_nccl_across_nodes_is_hierarchical_or_flat() -> None:
    """A group spanning nodes costs no more than the two-level schedule and is at least the
    intra-node stage it contains; a group of one is free."""
    inter = FabricProfile("net", (Protocol("Simple", 0.0, 0.8),))
    n = 64e6
    hier = nccl_collective_seconds(AR, n, 16, NODE, SWITCH, inter, "hierarchical")
    auto = nccl_collective_seconds(AR, n, 16, NODE, SWITCH, inter)
    assert 0 < auto <= hier
    assert nccl_collective_seconds(AR, n, 1, NODE, SWITCH, inter) == 0.0
    assert nccl_collective_seconds(A2A, n, 16, NODE, SWITCH, inter) > (
        nccl_collective_seconds(A2A, n, 8, NODE, SWITCH, inter)
    )


def test_nccl_rejects_unknown_algorithm() -> None:
    """An unknown algorithm name raises and lists the valid ones."""
    with pytest.raises(ValueError, match="valid: auto, ring, tree, nvls"):
        nccl_flat_seconds(AR, 1e6, 8, 1e11, 1e-6, SWITCH, "bogus")


def test_fitted_fabrics_match_public_sweeps() -> None:
    """The shipped NVLink 4 profile reproduces the 8x H200 NCCL floor of about 40 us at
    32 KiB and the NVLS bus bandwidth of about 480 GB/s at 16 GiB (the sweeps it was fitted
    to, ``plugins/gpu/fabrics.yaml``); an L40S runs the fitted PCIe Gen4 profile, whose ring
    through host memory reaches about 15 GB/s of bus bandwidth on 8 GPUs at 32 MiB as the
    two-socket sweep measured, and the PCIe Gen5 H100 inherits it at its own link rate."""
    from xpusim.plugins.gpu.catalog import catalog
    from xpusim.plugins.gpu.fabrics import fabric_for, scale_out_profile

    dev = catalog()["h100-sxm"]
    prof, how = fabric_for(dev)
    assert how.endswith("fitted")
    topo = topology_from_device(dev)
    out = scale_out_profile(0.8)
    assert nccl_collective_seconds(AR, 32768, 8, topo, prof, out) == pytest.approx(40e-6, rel=0.1)
    n = 16 * 2**30
    busbw = n / nccl_collective_seconds(AR, n, 8, topo, prof, out) * 14 / 8
    assert busbw == pytest.approx(482e9, rel=0.05)
    l40s = catalog()["l40s"]
    pcie, how = fabric_for(l40s)
    assert pcie.name == "pcie4" and how.endswith("fitted")
    n = 32 * 2**20
    t = nccl_collective_seconds(AR, n, 8, topology_from_device(l40s), pcie, out)
    assert n / t * 14 / 8 == pytest.approx(15.04e9, rel=0.1)
    gen5, how5 = fabric_for(catalog()["h100-pcie"])
    assert gen5.name == "pcie4" and "inherited" in how5


def test_nvls_buffers_grow_with_the_group_from_three_devices() -> None:
    """A fabric with NVLS binds its per-rank buffer for every device of a communicator of
    three or more; a pair, or a fabric without NVLS, binds none; a negative size is refused."""
    prof = FabricProfile(
        "f", (Protocol("Simple", 1e-5, 0.8),), nvls=True, nvls_rank_buffer_bytes=1e6
    )
    assert [prof.buffer_bytes(p) for p in (1, 2, 3, 8)] == [0.0, 0.0, 3e6, 8e6]
    assert dataclasses.replace(prof, nvls=False).buffer_bytes(8) == 0.0
    with pytest.raises(ValueError, match="nvls_rank_buffer_bytes"):
        FabricProfile("g", (Protocol("Simple", 1e-5, 0.8),), nvls_rank_buffer_bytes=-1)
