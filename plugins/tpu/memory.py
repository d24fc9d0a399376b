"""SRAM / DRAM-bandwidth stall model of a systolic array's scratchpads.

This follows the memory model of SCALE-Sim v2 (Samajdar et al., scalesim-project/scale-sim-v2,
``scalesim/memory/double_buffered_scratchpad_mem.py``, ``read_buffer.py``, ``write_buffer.py``)
so that its stall counts can be checked against SCALE-Sim's golden reports. It is an
independent implementation of the same rules, not a copy:

* Each operand (ifmap, filter) has a double-buffered read SRAM of ``words`` words split into
  an *active* half (``active_fraction``) that serves the array and a *prefetch* half that is
  filled from DRAM. Words arrive from DRAM in *lines* of ``bandwidth`` words (one line per
  cycle), in the operand's *fetch order* (the order the compute model says data is needed).
* Residency is tracked in *sets*: consecutive runs of words in fetch order. The active window
  is ``ceil(active_words / set_words)`` sets and slides by ``ceil(prefetch_words / set_words)``
  sets, so the set size decides exactly which words a window holds at its edges: a demand row
  that straddles the edge of a window of DRAM-line sets may fall inside a window of
  hundredth-of-the-SRAM sets. SCALE-Sim has both rules (see :data:`SET_RULES`).
* Before the first cycle the active half is filled (this fill is not counted as a stall: it
  happens at negative cycle numbers, as in SCALE-Sim).
* When the array asks for a word that is not in the active window, the window slides forward
  by the prefetch half, and a new DRAM fetch of ``ceil(prefetch_words / bandwidth)`` lines is
  issued back-to-back after the previous one. If that fetch completes after the cycle the
  word was wanted, the array stalls. SCALE-Sim counts such a wait twice (its
  ``service_reads`` adds the potential stall to the offset and then adds it again when it is
  positive; a negative potential stall reduces the offset). We keep that accounting because
  SCALE-Sim's reference outputs are built on it; :attr:`ReadBuffer.double_count` turns it off.
* The output SRAM is a write buffer: outputs accumulate until the buffer holds more than its
  active part, then the drain part is written to DRAM at ``bandwidth`` words per cycle in
  the background; the array waits only when the buffer is completely full while a drain is
  still in flight.
* A cycle's stall is the largest of the three operand waits, and every later cycle shifts by
  it.

With ``bandwidth=None`` the interface is ideal and nothing ever stalls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WORD_BYTES = 1
"""SCALE-Sim's word size: one byte per operand element (its ``word_size``)."""

ACTIVE_FRACTION = 0.5
"""SCALE-Sim's active share of each double-buffered SRAM (``active_buf_frac``)."""

READ_LATENCY = 1
"""Cycles for a read hit and for a DRAM read response (SCALE-Sim ``read_port``)."""

SRAM_SETS = 100
"""Sets a read SRAM is split into under the ``"hundredth"`` rule (SCALE-Sim's default)."""

SET_RULES = ("hundredth", "line")
"""How a read SRAM's words are grouped into sets (SCALE-Sim ``read_buffer.prepare_hashed_buffer``):

* ``"hundredth"`` (default): the SRAM is split into 100 sets of ``ceil(words / 100)`` words.
  This is SCALE-Sim's default (layout evaluation off). The golden reports of its test suite
  (``golden_trace_user_{os,ws,is}``) were produced with it: it reproduces all three stall
  counts and the SRAM-trace cycles where the two rules part (see ``docs/backends/tpu.md``).
* ``"line"``: one set per DRAM line, ``bandwidth`` words. This is SCALE-Sim's rule when SRAM
  layout evaluation is enabled, and the only rule in the source at commit ``18975c2``; the
  golden files checked in at that commit do not follow it (they follow ``"hundredth"``).
"""


def set_words(rule: str, words: int, bandwidth: int) -> int:
    """Words per residency set of a ``words``-word read SRAM under ``rule`` (see
    :data:`SET_RULES`)."""
    if rule == "line":
        return bandwidth
    if rule == "hundredth":
        return math.ceil(words / SRAM_SETS)
    raise ValueError(f"set rule {rule!r} is not one of {', '.join(SET_RULES)}")


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """SRAM sizes (kB, 1024 bytes) per operand and the DRAM interface bandwidth.

    ``bandwidth`` is words per cycle per operand interface (SCALE-Sim's USER ``Bandwidth``);
    ``None`` means an ideal interface that never stalls the array. ``set_rule`` picks how the
    read SRAMs group words into residency sets (:data:`SET_RULES`): ``"hundredth"`` is
    SCALE-Sim's default and reproduces its golden reports, ``"line"`` its layout-evaluation
    mode.
    """

    ifmap_kb: float = 64.0
    filter_kb: float = 64.0
    ofmap_kb: float = 64.0
    bandwidth: int | None = None
    set_rule: str = "hundredth"

    def __post_init__(self) -> None:
        for name in ("ifmap_kb", "filter_kb", "ofmap_kb"):
            v = getattr(self, name)
            if not (v > 0) or not math.isfinite(v):
                raise ValueError(f"SRAM size {name}={v} must be a positive number of kB")
            if int(1024 * v / WORD_BYTES) < 2:
                raise ValueError(f"SRAM size {name}={v} kB holds fewer than 2 words")
        if self.bandwidth is not None and self.bandwidth < 1:
            raise ValueError(f"bandwidth {self.bandwidth} must be at least 1 word per cycle")
        if self.set_rule not in SET_RULES:
            raise ValueError(f"set rule {self.set_rule!r} is not one of {', '.join(SET_RULES)}")

    def words(self, kb: float) -> int:
        """Words held by an SRAM of ``kb`` kilobytes."""
        return math.floor(1024 * kb / WORD_BYTES)


class ReadBuffer:
    """A double-buffered read SRAM in front of a DRAM port (see module docstring).

    ``fetch_order`` is the sequence of addresses (``-1`` for holes) the DRAM side streams in.
    Addresses are small non-negative integers (an operand's element index). ``set_words`` is
    the residency-set size (default: one DRAM line, ``bandwidth`` words; :func:`set_words`
    gives it for a :data:`SET_RULES` rule).

    An address is resident while any of its occurrences in the fetch order (im2col repeats
    an ifmap element many times) lies in a set of the active window. The buffer keeps, per
    address, the count of its occurrences inside the window and updates it only for the
    sets a slide moves out and in, so each occurrence is counted in and out once per pass
    of the window: the work is linear in the fetch order, and a cycle whose reads all hit
    costs one vector lookup.
    """

    def __init__(
        self,
        words: int,
        bandwidth: int,
        fetch_order: np.ndarray,
        double_count: bool = True,
        set_words: int | None = None,
    ) -> None:
        self.bandwidth = int(bandwidth)
        self.double_count = double_count
        self.set_words = self.bandwidth if set_words is None else int(set_words)
        if self.set_words < 1:
            raise ValueError(f"set size {self.set_words} must be at least 1 word")
        self.active_words = math.ceil(words * ACTIVE_FRACTION)
        self.prefetch_words = words - self.active_words
        # Valid words in fetch order: set `s` holds positions [s * set_words, (s + 1) *
        # set_words) of this array.
        self.valid = fetch_order[fetch_order >= 0].astype(np.int64)
        # DRAM lines of the fetch order (holes included), as SCALE-Sim lays out its fetch matrix.
        self.dram_lines = max(math.ceil(len(fetch_order) / self.bandwidth), 1)
        # Sets of `set_words` valid words in fetch order; a trailing partial (possibly empty)
        # set always exists, as in SCALE-Sim's hashed buffer.
        self.n_lines = len(self.valid) // self.set_words + 1
        self.size = int(self.valid.max()) + 1 if len(self.valid) else 1
        self.fetched = np.bincount(self.valid, minlength=self.size) > 0
        self.active_lines = min(math.ceil(self.active_words / self.set_words), self.n_lines)
        self.prefetch_lines = min(
            math.ceil(self.prefetch_words / self.set_words), self.n_lines - self.active_lines
        )
        # A prefetch always moves whole DRAM lines of `bandwidth` words, one per cycle.
        self.fetch_lines = math.ceil(self.prefetch_words / self.bandwidth)
        self.start = 0
        # occurrences of each address inside the active window
        self.resident = self._count(self._window(self.start))
        self.started = False
        self.last_fetch = -1
        self.dram_words = 0
        self.fetches = 0

    def _window(self, start: int) -> np.ndarray:
        """The set indices of the active window that begins at set ``start``."""
        return (start + np.arange(self.active_lines, dtype=np.int64)) % self.n_lines

    def _count(self, sets: np.ndarray) -> np.ndarray:
        """Occurrences of every address in ``sets`` (one count per address)."""
        sw = self.set_words
        pos = (sets[:, None] * sw + np.arange(sw, dtype=np.int64)).ravel()
        pos = pos[pos < len(self.valid)]
        return np.bincount(self.valid[pos], minlength=self.size)

    def _slide(self) -> None:
        if self.active_lines < self.n_lines and self.prefetch_lines:
            old = self._window(self.start)
            self.start = (self.start + self.prefetch_lines) % self.n_lines
            new = self._window(self.start)
            self.resident -= self._count(np.setdiff1d(old, new, assume_unique=True))
            self.resident += self._count(np.setdiff1d(new, old, assume_unique=True))
        self.last_fetch += self.fetch_lines + READ_LATENCY
        self.fetches += 1
        self.dram_words += self.fetch_lines * self.bandwidth

    def serve(self, cycle: int, addrs: np.ndarray) -> int:
        """Serve one cycle's reads (``addrs`` without holes) issued at ``cycle``; return the
        stall cycles this operand causes."""
        if not self.started:
            self.started = True
            self.last_fetch = cycle - 1
            self.dram_words += (
                min(math.ceil(self.active_words / self.bandwidth), self.dram_lines) * self.bandwidth
            )
        if len(addrs) == 0:
            return 0
        resident = self.resident
        misses = np.flatnonzero(resident[addrs] == 0)
        if len(misses) == 0:
            return 0
        offset = READ_LATENCY
        i = int(misses[0])
        while True:
            # reads before `i` hit; slide until address `i` is in, then look further on
            a = int(addrs[i])
            if a >= self.size or not self.fetched[a]:
                raise ValueError(f"address {a} is read but never fetched from DRAM")
            while resident[a] == 0:
                self._slide()
                resident = self.resident
                wait = self.last_fetch - (cycle + offset)
                if self.double_count:
                    offset += wait
                    if wait > 0:
                        offset += wait
                elif wait > 0:
                    offset += wait
            rest = np.flatnonzero(resident[addrs[i + 1 :]] == 0)
            if len(rest) == 0:
                return offset - READ_LATENCY
            i += 1 + int(rest[0])


class WriteBuffer:
    """A double-buffered output SRAM draining to DRAM (see module docstring)."""

    def __init__(self, words: int, bandwidth: int) -> None:
        self.total = int(words)
        self.bandwidth = int(bandwidth)
        self.active = math.ceil(words * ACTIVE_FRACTION)
        self.drain_words = self.total - self.active
        self.free = self.total
        self.drain_end = 0
        # Trace lines: number of valid words in each full or force-closed line.
        self.lines: list[int] = []
        self.open_line = 0
        self.drained_upto = 0
        self.dram_words = 0

    def _close_open_line(self) -> None:
        if self.open_line:
            self.lines.append(self.open_line)
            self.open_line = 0

    def _drain(self, start_cycle: int) -> int:
        n = math.ceil(self.drain_words / self.bandwidth)
        end = min(self.drained_upto + n, len(self.lines))
        chunk = self.lines[self.drained_upto : end]
        if not chunk:
            return start_cycle
        # SCALE-Sim counts full lines as `bandwidth` words except for the holes of the last.
        words = (len(chunk) - 1) * self.bandwidth + chunk[-1]
        self.free += words
        self.dram_words += words
        self.drained_upto = end
        return start_cycle + len(chunk) - 1

    def serve(self, cycle: int, n_words: int) -> int:
        """Accept ``n_words`` outputs written at ``cycle``; return the stall they cause."""
        cur = cycle
        for _ in range(n_words):
            self.open_line += 1
            self.free -= 1
            if self.open_line >= self.bandwidth:
                self.lines.append(self.open_line)
                self.open_line = 0
            if cur < self.drain_end:
                if self.free <= 0:
                    cur = self.drain_end
            elif self.free < self.total - self.drain_words:
                self._close_open_line()
                self.drain_end = self._drain(cur)
        return cur - cycle

    def flush(self, cycle: int) -> int:
        """Drain everything left after the last cycle; return the cycle the DRAM write ends."""
        self._close_open_line()
        while self.drained_upto < len(self.lines):
            cycle = self._drain(cycle) + 1
        return cycle


@dataclass(frozen=True, slots=True)
class StallReport:
    """What the memory model found for one layer.

    ``issue_cycles[i]`` is the cycle demand row ``i`` is issued at (``i`` plus the stalls of
    the rows before it); SCALE-Sim's SRAM traces print it plus the read latency, plus the
    row's own wait where that operand waits.
    """

    compute_cycles: int
    stall_cycles: int
    ifmap_dram_words: int
    filter_dram_words: int
    ofmap_dram_words: int
    issue_cycles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def total_cycles(self) -> int:
        return self.compute_cycles + self.stall_cycles


def simulate_stalls(
    ifmap_demand: np.ndarray,
    filter_demand: np.ndarray,
    ofmap_demand: np.ndarray,
    ifmap_fetch: np.ndarray,
    filter_fetch: np.ndarray,
    config: MemoryConfig,
    double_count: bool = True,
) -> StallReport:
    """Run the per-cycle demand rows (one row per compute cycle, ``-1`` for no access)
    through the scratchpads and return the stall cycles.

    The three demand matrices have one row per compute cycle of the array (as the emulator
    produces them). Compute cycles are reported as SCALE-Sim does: the index of the last
    cycle (``rows - 1``).
    """
    rows = ifmap_demand.shape[0]
    if config.bandwidth is None:
        return StallReport(
            rows - 1,
            0,
            int((ifmap_fetch >= 0).sum()),
            int((filter_fetch >= 0).sum()),
            int((ofmap_demand >= 0).sum()),
            np.arange(rows, dtype=np.int64),
        )
    bw = config.bandwidth
    i_words, f_words = config.words(config.ifmap_kb), config.words(config.filter_kb)
    ibuf = ReadBuffer(
        i_words, bw, ifmap_fetch, double_count, set_words(config.set_rule, i_words, bw)
    )
    fbuf = ReadBuffer(
        f_words, bw, filter_fetch, double_count, set_words(config.set_rule, f_words, bw)
    )
    obuf = WriteBuffer(config.words(config.ofmap_kb), bw)
    ofmap_counts = (ofmap_demand >= 0).sum(axis=1)
    stalls = 0
    issue = np.empty(rows, dtype=np.int64)
    for i in range(rows):
        now = i + stalls
        issue[i] = now
        irow = ifmap_demand[i]
        frow = filter_demand[i]
        s_i = ibuf.serve(now, irow[irow >= 0])
        s_f = fbuf.serve(now, frow[frow >= 0])
        s_o = obuf.serve(now, int(ofmap_counts[i])) if ofmap_counts[i] else 0
        stalls += max(s_i, s_f, s_o, 0)
    obuf.flush(rows - 1 + stalls)
    return StallReport(rows - 1, stalls, ibuf.dram_words, fbuf.dram_words, obuf.dram_words, issue)
