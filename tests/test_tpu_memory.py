"""The scratchpad stall model's residency tracking against a plain per-address oracle.

The read buffer keeps a per-address count of occurrences inside the active window, updated
set by set as the window slides. The oracle below is the direct reading of the rule: for
each read, look up every set holding the address and ask whether one of them is in the
window. Both must give the same stall cycles, issue cycles and DRAM words, on convolutions
(im2col repeats ifmap addresses, so residency depends on every occurrence) and GEMMs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpusim.plugins.tpu.memory import (
    ACTIVE_FRACTION,
    READ_LATENCY,
    MemoryConfig,
    ReadBuffer,
    StallReport,
    WriteBuffer,
    set_words,
    simulate_stalls,
)
from xpusim.plugins.tpu.systolic import (
    ConvShape,
    Demand,
    conv_operands,
    demand_trace,
    gemm_operands,
)


class OracleReadBuffer:
    """The residency rule read literally: an address hits when any set holding it lies in
    the circular window of ``active_lines`` sets from ``start``."""

    def __init__(
        self, words: int, bandwidth: int, fetch: np.ndarray, double_count: bool, sw: int
    ) -> None:
        self.bandwidth = bandwidth
        self.double_count = double_count
        self.active_words = math.ceil(words * ACTIVE_FRACTION)
        self.prefetch_words = words - self.active_words
        valid = [int(a) for a in fetch if a >= 0]
        self.dram_lines = max(math.ceil(len(fetch) / bandwidth), 1)
        self.n_lines = len(valid) // sw + 1
        self.sets: dict[int, list[int]] = {}
        for pos, a in enumerate(valid):
            self.sets.setdefault(a, []).append(pos // sw)
        self.active_lines = min(math.ceil(self.active_words / sw), self.n_lines)
        self.prefetch_lines = min(
            math.ceil(self.prefetch_words / sw), self.n_lines - self.active_lines
        )
        self.fetch_lines = math.ceil(self.prefetch_words / bandwidth)
        self.start = 0
        self.started = False
        self.last_fetch = -1
        self.dram_words = 0

    def hit(self, a: int) -> bool:
        return any((s - self.start) % self.n_lines < self.active_lines for s in self.sets[a])

    def serve(self, cycle: int, addrs: np.ndarray) -> int:
        if not self.started:
            self.started = True
            self.last_fetch = cycle - 1
            first = min(math.ceil(self.active_words / self.bandwidth), self.dram_lines)
            self.dram_words += first * self.bandwidth
        offset = READ_LATENCY
        for a in addrs.tolist():
            while not self.hit(a):
                self.start = (self.start + self.prefetch_lines) % self.n_lines
                self.last_fetch += self.fetch_lines + READ_LATENCY
                self.dram_words += self.fetch_lines * self.bandwidth
                wait = self.last_fetch - (cycle + offset)
                if self.double_count:
                    offset += wait + max(wait, 0)
                else:
                    offset += max(wait, 0)
        return offset - READ_LATENCY


def oracle_stalls(
    ifmap: np.ndarray,
    filt: np.ndarray,
    ofmap: np.ndarray,
    ifmap_fetch: np.ndarray,
    filter_fetch: np.ndarray,
    config: MemoryConfig,
    double_count: bool,
) -> StallReport:
    """:func:`simulate_stalls` with the oracle read buffers."""
    assert config.bandwidth is not None
    bw = config.bandwidth
    iw, fw = config.words(config.ifmap_kb), config.words(config.filter_kb)
    ibuf = OracleReadBuffer(iw, bw, ifmap_fetch, double_count, set_words(config.set_rule, iw, bw))
    fbuf = OracleReadBuffer(fw, bw, filter_fetch, double_count, set_words(config.set_rule, fw, bw))
    obuf = WriteBuffer(config.words(config.ofmap_kb), bw)
    stalls = 0
    issue = np.empty(ifmap.shape[0], dtype=np.int64)
    for i in range(ifmap.shape[0]):
        now = i + stalls
        issue[i] = now
        s_i = ibuf.serve(now, ifmap[i][ifmap[i] >= 0])
        s_f = fbuf.serve(now, filt[i][filt[i] >= 0])
        n_out = int((ofmap[i] >= 0).sum())
        s_o = obuf.serve(now, n_out) if n_out else 0
        stalls += max(s_i, s_f, s_o, 0)
    obuf.flush(ifmap.shape[0] - 1 + stalls)
    rows = ifmap.shape[0]
    return StallReport(rows - 1, stalls, ibuf.dram_words, fbuf.dram_words, obuf.dram_words, issue)


def _check(d: Demand, config: MemoryConfig, double_count: bool) -> StallReport:
    """Run ``d`` through the model and the oracle; assert they agree; return the model's."""
    args = (d.ifmap, d.filter, d.ofmap, d.ifmap_fetch, d.filter_fetch, config)
    got = simulate_stalls(*args, double_count=double_count)
    want = oracle_stalls(*args, double_count=double_count)
    assert got.stall_cycles == want.stall_cycles
    assert got.compute_cycles == want.compute_cycles
    assert (got.ifmap_dram_words, got.filter_dram_words, got.ofmap_dram_words) == (
        want.ifmap_dram_words,
        want.filter_dram_words,
        want.ofmap_dram_words,
    )
    np.testing.assert_array_equal(got.issue_cycles, want.issue_cycles)
    return got


@settings(max_examples=40, deadline=None)
@given(
    hw=st.integers(3, 12),
    c=st.integers(1, 3),
    f=st.integers(1, 3),
    filters=st.integers(1, 12),
    stride=st.integers(1, 2),
    side=st.sampled_from([2, 4, 8]),
    dataflow=st.sampled_from(["os", "ws", "is"]),
    bw=st.integers(1, 6),
    kb=st.sampled_from([0.01, 0.03, 0.1, 0.5]),
    rule=st.sampled_from(["hundredth", "line"]),
    double_count=st.booleans(),
)
def test_conv_stalls_equal_the_oracle(
    hw: int,
    c: int,
    f: int,
    filters: int,
    stride: int,
    side: int,
    dataflow: str,
    bw: int,
    kb: float,
    rule: str,
    double_count: bool,
) -> None:
    """On im2col convolutions (repeated ifmap addresses) the counted residency gives the
    oracle's stall cycles, issue cycle of every row and DRAM words."""
    f = min(f, hw)
    ops = conv_operands(ConvShape(hw, hw, c, f, f, filters, stride))
    d = demand_trace(ops, side, side, dataflow)
    _check(d, MemoryConfig(kb, kb, kb, bandwidth=bw, set_rule=rule), double_count)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    k=st.integers(1, 40),
    side=st.sampled_from([2, 4, 8]),
    dataflow=st.sampled_from(["os", "ws", "is"]),
    bw=st.integers(1, 6),
    kb=st.sampled_from([0.01, 0.05, 0.5]),
    rule=st.sampled_from(["hundredth", "line"]),
)
def test_gemm_stalls_equal_the_oracle(
    m: int, n: int, k: int, side: int, dataflow: str, bw: int, kb: float, rule: str
) -> None:
    """On GEMMs (every address fetched once) the counted residency gives the oracle's
    stalls too."""
    d = demand_trace(gemm_operands(m, n, k), side, side, dataflow)
    _check(d, MemoryConfig(kb, kb, kb, bandwidth=bw, set_rule=rule), True)


def test_small_sram_conv_stalls() -> None:
    """A convolution whose SRAMs hold a few sets stalls, and the oracle agrees on how much."""
    ops = conv_operands(ConvShape(16, 16, 3, 3, 3, 8, 1))
    d = demand_trace(ops, 4, 4, "ws")
    rep = _check(d, MemoryConfig(0.05, 0.05, 0.05, bandwidth=2), True)
    assert rep.stall_cycles > 0


def test_read_of_an_address_never_fetched_is_an_error() -> None:
    """A read of an address the fetch order never brings in cannot be served: it raises
    instead of sliding forever."""
    fetch = np.array([a for a in range(20) if a != 7], dtype=np.int64)
    buf = ReadBuffer(8, 1, fetch)
    with pytest.raises(ValueError, match="never fetched"):
        buf.serve(0, np.array([3, 7]))
