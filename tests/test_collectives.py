"""Alpha-beta collective formulas (engine.collectives)."""

from __future__ import annotations

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
