"""A cycle-stepped emulator of an R×C systolic array that really computes a GEMM.

The array follows the dataflows of SCALE-Sim v2 (Samajdar et al., "A Systematic Methodology
for Characterizing Scalability of DNN Accelerators using SCALE-Sim", ISPASS 2020;
scalesim-project/scale-sim-v2), so its cycle counts can be checked against SCALE-Sim's
reference outputs. A GEMM ``O[M,N] = A[M,K] · B[K,N]`` is mapped as SCALE-Sim maps a GEMM
topology row ``M, N, K`` (an ifmap of ``M×K``, ``N`` filters of ``1×K``):

===========  ==========================  ============  ===========  ==================
dataflow     held in the PEs             spatial rows  spatial cols  streamed (time T)
===========  ==========================  ============  ===========  ==================
``os``       outputs O (accumulators)    M             N            K
``ws``       weights B                   K             N            M
``is``       inputs Aᵀ                   K             M            N
===========  ==========================  ============  ===========  ==================

The spatial dimensions are cut into *folds* of R rows × C columns (column folds outer, row
folds inner, as SCALE-Sim orders them). Per fold:

* **OS**: row ``r`` of A enters the left edge skewed by ``r`` cycles and moves right; column
  ``j`` of B enters the top skewed by ``j`` and moves down; PE ``(r, j)`` multiplies and
  accumulates what meets there. The last PE does its last MAC at cycle ``T+R+C-3``, so a fold
  takes ``T + R + C - 2`` cycles; finished outputs leave on a separate drain path.
* **WS / IS**: for ``R`` cycles the stationary block shifts in from the top (bottom row first);
  then streamed row ``t`` enters row ``r`` at cycle ``R + t + r``, moves right, and partial sums
  move down, leaving the bottom of column ``j`` at cycle ``2R - 1 + t + j``. A fold takes
  ``2R + C + T - 2`` cycles.

Folds do not overlap (each fold drains before the next starts), which is SCALE-Sim's model.
Cycle counts are reported the way SCALE-Sim reports them: the number of the last cycle of the
run, ``folds · cycles_per_fold - 1``, plus stalls.

Each cycle the emulator records which operand elements the array edges read and which
outputs it writes (the *demand*); :mod:`xpusim.plugins.tpu.memory` turns that demand into SRAM/DRAM
stalls. :func:`demand_trace` builds the same demand without doing arithmetic (for large
layers); the tests check that the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xpusim.plugins.tpu.memory import MemoryConfig, StallReport, simulate_stalls

DATAFLOWS = ("os", "ws", "is")


def check_array(rows: int, cols: int, dataflow: str) -> None:
    """Raise ``ValueError`` with the reason if the array or dataflow make no sense."""
    if not (isinstance(rows, int) and isinstance(cols, int)) or rows < 1 or cols < 1:
        raise ValueError(f"array size {rows}x{cols}: rows and columns must be integers >= 1")
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow {dataflow!r}: choose one of {', '.join(DATAFLOWS)}")


def check_gemm(m: int, n: int, k: int) -> None:
    """Raise ``ValueError`` if a GEMM shape is not three positive integers."""
    for name, v in (("M", m), ("N", n), ("K", k)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"GEMM dimension {name}={v} must be an integer >= 1")


def spatial_temporal(m: int, n: int, k: int, dataflow: str) -> tuple[int, int, int]:
    """SCALE-Sim's ``(S_r, S_c, T)`` of a GEMM under ``dataflow``."""
    if dataflow == "os":
        return m, n, k
    if dataflow == "ws":
        return k, n, m
    if dataflow == "is":
        return k, m, n
    raise ValueError(f"dataflow {dataflow!r}: choose one of {', '.join(DATAFLOWS)}")


def fold_cycles(rows: int, cols: int, t: int, dataflow: str) -> int:
    """Cycles of one fold (fill, stream, drain) on an ``rows × cols`` array."""
    if dataflow == "os":
        return t + rows + cols - 2
    return 2 * rows + cols + t - 2


# --- operand address matrices (SCALE-Sim's operand_matrix layout) ------------------------


@dataclass(frozen=True)
class Operands:
    """Element addresses of the three GEMM operands (``-1`` for a padding hole).

    ``a`` is ``M×K`` (ifmap after im2col), ``b`` is ``K×N`` (filters), ``o`` is ``M×N``.
    Addresses index each operand's own SRAM address space.
    """

    a: np.ndarray
    b: np.ndarray
    o: np.ndarray

    @property
    def mnk(self) -> tuple[int, int, int]:
        return self.a.shape[0], self.b.shape[1], self.a.shape[1]


def gemm_operands(m: int, n: int, k: int) -> Operands:
    """Addresses of a GEMM as SCALE-Sim lays it out (ifmap ``M×K`` row-major, filter ``n``
    contiguous over ``k``, ofmap ``M×N`` row-major)."""
    check_gemm(m, n, k)
    a = np.arange(m * k, dtype=np.int64).reshape(m, k)
    b = np.arange(n, dtype=np.int64)[None, :] * k + np.arange(k, dtype=np.int64)[:, None]
    o = np.arange(m * n, dtype=np.int64).reshape(m, n)
    return Operands(a, b, o)


@dataclass(frozen=True)
class ConvShape:
    """A convolution layer as SCALE-Sim describes it (no padding; ``stride`` both ways)."""

    ifmap_h: int
    ifmap_w: int
    channels: int
    filter_h: int
    filter_w: int
    filters: int
    stride: int = 1

    def __post_init__(self) -> None:
        for name in ("ifmap_h", "ifmap_w", "channels", "filter_h", "filter_w", "filters", "stride"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"convolution {name}={v} must be an integer >= 1")
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise ValueError(
                f"filter {self.filter_h}x{self.filter_w} is larger than the ifmap "
                f"{self.ifmap_h}x{self.ifmap_w}"
            )

    @property
    def ofmap_h(self) -> int:
        return math.ceil((self.ifmap_h - self.filter_h + self.stride) / self.stride)

    @property
    def ofmap_w(self) -> int:
        return math.ceil((self.ifmap_w - self.filter_w + self.stride) / self.stride)

    def gemm_dims(self) -> tuple[int, int, int]:
        """``(M, N, K)`` of the im2col GEMM: output pixels, filters, window size."""
        return (
            self.ofmap_h * self.ofmap_w,
            self.filters,
            self.filter_h * self.filter_w * self.channels,
        )


def conv_operands(conv: ConvShape) -> Operands:
    """im2col addresses of a convolution (SCALE-Sim ``operand_matrix``): row ``p`` of A is the
    window of output pixel ``p``; column ``w`` walks filter rows, filter columns, channels.
    Window elements that fall outside the ifmap (a stride that does not divide) are holes."""
    m, n, k = conv.gemm_dims()
    p = np.arange(m)
    orow, ocol = p // conv.ofmap_w, p % conv.ofmap_w
    w = np.arange(k)
    crow = w // (conv.filter_w * conv.channels)
    rem = w % (conv.filter_w * conv.channels)
    ccol, cch = rem // conv.channels, rem % conv.channels
    irow = orow[:, None] * conv.stride + crow[None, :]
    icol = ocol[:, None] * conv.stride + ccol[None, :]
    a = (irow * conv.ifmap_w + icol) * conv.channels + cch[None, :]
    a = np.where((irow < conv.ifmap_h) & (icol < conv.ifmap_w), a, -1).astype(np.int64)
    b = (np.arange(n, dtype=np.int64)[None, :] * k + w[:, None]).astype(np.int64)
    o = np.arange(m * n, dtype=np.int64).reshape(m, n)
    return Operands(a, b, o)


def im2col(x: np.ndarray, conv: ConvShape) -> np.ndarray:
    """Lower an ``H×W×C`` input to the ``M×K`` matrix of :func:`conv_operands` (holes → 0)."""
    ops = conv_operands(conv)
    flat = x.reshape(-1)
    return np.where(ops.a >= 0, flat[np.maximum(ops.a, 0)], 0)


# --- demand and fetch order ---------------------------------------------------------------


def diagonal_order(mat: np.ndarray) -> np.ndarray:
    """Elements of ``mat`` along anti-diagonals (bottom-left first within a diagonal): the
    order a skewed array consumes them, which is how SCALE-Sim orders DRAM prefetches."""
    rows, cols = mat.shape
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    order = np.lexsort((-i.ravel(), (i + j).ravel()))
    return mat.ravel()[order]


def _pad_cols(block: np.ndarray, width: int) -> np.ndarray:
    if block.shape[1] == width:
        return block
    out = np.full((block.shape[0], width), -1, dtype=np.int64)
    out[:, : block.shape[1]] = block
    return out


@dataclass(frozen=True)
class Demand:
    """Per-cycle operand accesses of a layer: one row per compute cycle, ``-1`` = none."""

    ifmap: np.ndarray
    filter: np.ndarray
    ofmap: np.ndarray
    ifmap_fetch: np.ndarray
    filter_fetch: np.ndarray

    @property
    def cycles(self) -> int:
        return self.ifmap.shape[0]


def _roles(ops: Operands, dataflow: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (first, second, output) matrices in the dataflow's own orientation."""
    if dataflow == "os":
        return ops.a, ops.b, ops.o  # Sr×T, T×Sc, Sr×Sc
    if dataflow == "ws":
        return ops.b, ops.a, ops.o  # W: Sr×Sc, X: T×Sr, out: T×Sc
    return ops.a.T, ops.b.T, ops.o.T  # W = Aᵀ (K×M), X = Bᵀ (N×K), out N×M


def demand_trace(ops: Operands, rows: int, cols: int, dataflow: str) -> Demand:
    """The demand the array makes, built without arithmetic (same rows as the emulator)."""
    check_array(rows, cols, dataflow)
    m, n, k = ops.mnk
    sr, sc, t = spatial_temporal(m, n, k, dataflow)
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    per = fold_cycles(rows, cols, t, dataflow)
    total = rf * cf * per
    first, second, out = _roles(ops, dataflow)
    iw, fw = (cols, rows) if dataflow == "is" else (rows, cols)
    ifm = np.full((total, iw), -1, dtype=np.int64)
    fil = np.full((total, fw), -1, dtype=np.int64)
    ofm = np.full((total, cols), -1, dtype=np.int64)
    rr = np.arange(rows)
    cc = np.arange(cols)
    tt = np.arange(t)
    fold = 0
    for fc in range(cf):
        c0, c1 = fc * cols, min((fc + 1) * cols, sc)
        for fr in range(rf):
            r0, r1 = fr * rows, min((fr + 1) * rows, sr)
            base = fold * per
            nr, nc = r1 - r0, c1 - c0
            if dataflow == "os":
                # row r of A (Sr×T) enters at cycle tt + r; column j of B at tt + j
                a_blk = first[r0:r1, :]  # nr × T
                ifm[base + tt[:, None] + rr[None, :nr], rr[None, :nr]] = a_blk.T
                b_blk = second[:, c0:c1]  # T × nc
                fil[base + tt[:, None] + cc[None, :nc], cc[None, :nc]] = b_blk
                # PE (i, j) finishes (and writes) at cycle T-1+i+j
                o_blk = out[r0:r1, c0:c1]
                ofm[base + t - 1 + rr[:nr, None] + cc[None, :nc], cc[None, :nc]] = o_blk
            else:
                w_blk = first[r0:r1, c0:c1]  # nr × nc stationary
                # cycle q loads stationary row R-1-q (bottom row first)
                q = rows - 1 - rr[:nr]
                stat = ifm if dataflow == "is" else fil
                stat[base + q[:, None], cc[None, :nc]] = w_blk
                x_blk = second[:, r0:r1]  # T × nr streamed
                strm = fil if dataflow == "is" else ifm
                strm[base + rows + tt[:, None] + rr[None, :nr], rr[None, :nr]] = x_blk
                o_blk = out[:, c0:c1]  # T × nc
                ofm[base + 2 * rows - 1 + tt[:, None] + cc[None, :nc], cc[None, :nc]] = o_blk
            fold += 1
    i_fetch, f_fetch = demand_trace_fetch(ops, rows, cols, dataflow)
    return Demand(ifm, fil, ofm, i_fetch, f_fetch)


# --- the cycle-stepped array --------------------------------------------------------------


@dataclass
class EmulationResult:
    """What one emulated layer produced."""

    output: np.ndarray
    compute_cycles: int
    stall_cycles: int
    macs: int
    rows: int
    cols: int
    folds: int
    pe_busy_cycles: int
    demand: Demand
    memory: StallReport | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total_cycles(self) -> int:
        return self.compute_cycles + self.stall_cycles

    @property
    def utilization(self) -> float:
        """MACs done over MACs the array could have done in the total cycles."""
        return self.macs / (self.total_cycles * self.rows * self.cols) if self.total_cycles else 0.0


class SystolicArray:
    """An ``rows × cols`` array of multiply-accumulate PEs running one dataflow.

    :meth:`gemm` steps the array cycle by cycle: every cycle operands shift one PE right or
    down, each PE multiplies what it holds, and the cycle's edge reads and output writes are
    recorded as the layer's demand.
    """

    def __init__(self, rows: int, cols: int, dataflow: str = "os") -> None:
        check_array(rows, cols, dataflow)
        self.rows = rows
        self.cols = cols
        self.dataflow = dataflow

    def gemm(
        self,
        a: np.ndarray,
        b: np.ndarray,
        memory: MemoryConfig | None = None,
        operands: Operands | None = None,
    ) -> EmulationResult:
        """Compute ``a @ b`` on the array; with ``memory`` also run the stall model."""
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"GEMM operands do not conform: {a.shape} x {b.shape}")
        m, k = a.shape
        n = b.shape[1]
        ops = operands if operands is not None else gemm_operands(m, n, k)
        dtype = np.result_type(a.dtype, b.dtype, np.int64 if a.dtype.kind in "iub" else a.dtype)
        if self.dataflow == "os":
            out, demand, busy = self._run_os(a.astype(dtype), b.astype(dtype), ops)
        elif self.dataflow == "ws":
            o, demand, busy = self._run_stationary(
                b.astype(dtype), a.astype(dtype), ops, stationary_is_ifmap=False
            )
            out = o
        else:
            o, demand, busy = self._run_stationary(
                a.T.astype(dtype), b.T.astype(dtype), ops, stationary_is_ifmap=True
            )
            out = o.T
        if memory is None:
            memory = MemoryConfig()
        report = simulate_stalls(
            demand.ifmap,
            demand.filter,
            demand.ofmap,
            demand.ifmap_fetch,
            demand.filter_fetch,
            memory,
        )
        folds = demand.cycles // fold_cycles(
            self.rows, self.cols, spatial_temporal(m, n, k, self.dataflow)[2], self.dataflow
        )
        return EmulationResult(
            output=out,
            compute_cycles=demand.cycles - 1,
            stall_cycles=report.stall_cycles,
            macs=m * n * k,
            rows=self.rows,
            cols=self.cols,
            folds=folds,
            pe_busy_cycles=busy,
            demand=demand,
            memory=report,
        )

    # OS: outputs stay in the PEs ------------------------------------------------------------
    def _run_os(
        self, a: np.ndarray, b: np.ndarray, ops: Operands
    ) -> tuple[np.ndarray, Demand, int]:
        ar, ac = self.rows, self.cols
        m, k = a.shape
        n = b.shape[1]
        per = fold_cycles(ar, ac, k, "os")
        rf, cf = math.ceil(m / ar), math.ceil(n / ac)
        total = rf * cf * per
        out = np.zeros((m, n), dtype=a.dtype)
        ifm = np.full((total, ar), -1, dtype=np.int64)
        fil = np.full((total, ac), -1, dtype=np.int64)
        ofm = np.full((total, ac), -1, dtype=np.int64)
        busy = 0
        cyc = 0
        rr, cc = np.arange(ar), np.arange(ac)
        for fc in range(cf):
            c0, nc = fc * ac, min(ac, n - fc * ac)
            for fr in range(rf):
                r0, nr = fr * ar, min(ar, m - fr * ar)
                a_reg = np.zeros((ar, ac), dtype=a.dtype)
                b_reg = np.zeros((ar, ac), dtype=a.dtype)
                a_ok = np.zeros((ar, ac), dtype=bool)
                b_ok = np.zeros((ar, ac), dtype=bool)
                acc = np.zeros((ar, ac), dtype=a.dtype)
                macs_left = np.zeros((ar, ac), dtype=np.int64)
                macs_left[:nr, :nc] = k
                for c in range(per):
                    # shift: A moves right, B moves down
                    a_reg[:, 1:] = a_reg[:, :-1]
                    a_ok[:, 1:] = a_ok[:, :-1]
                    b_reg[1:, :] = b_reg[:-1, :]
                    b_ok[1:, :] = b_ok[:-1, :]
                    # edge injection, skewed: row r gets A[r0+r, c-r]; column j gets B[c-j, c0+j]
                    ta = c - rr
                    va = (ta >= 0) & (ta < k) & (rr < nr)
                    a_reg[:, 0] = 0
                    a_reg[va, 0] = a[r0 + rr[va], ta[va]]
                    a_ok[:, 0] = va
                    ifm[cyc, va] = ops.a[r0 + rr[va], ta[va]]
                    tb = c - cc
                    vb = (tb >= 0) & (tb < k) & (cc < nc)
                    b_reg[0, :] = 0
                    b_reg[0, vb] = b[tb[vb], c0 + cc[vb]]
                    b_ok[0, :] = vb
                    fil[cyc, vb] = ops.b[tb[vb], c0 + cc[vb]]
                    fire = a_ok & b_ok
                    acc += np.where(fire, a_reg * b_reg, 0)
                    busy += int(fire.sum())
                    macs_left -= fire
                    # outputs that completed this cycle leave on the drain path
                    done = fire & (macs_left == 0)
                    if done.any():
                        ii, jj = np.nonzero(done)
                        out[r0 + ii, c0 + jj] = acc[ii, jj]
                        ofm[cyc, jj] = ops.o[r0 + ii, c0 + jj]
                    cyc += 1
        return out, Demand(ifm, fil, ofm, *self._fetch(ops)), busy

    # WS / IS: one operand stays in the PEs ----------------------------------------------------
    def _run_stationary(
        self, w: np.ndarray, x: np.ndarray, ops: Operands, stationary_is_ifmap: bool
    ) -> tuple[np.ndarray, Demand, int]:
        """``w`` (Sr×Sc) is held in the PEs, ``x`` (T×Sr) streams; returns ``x @ w``."""
        ar, ac = self.rows, self.cols
        sr, sc = w.shape
        t = x.shape[0]
        first, second, o_addr = _roles(ops, "is" if stationary_is_ifmap else "ws")
        per = fold_cycles(ar, ac, t, "ws")
        rf, cf = math.ceil(sr / ar), math.ceil(sc / ac)
        total = rf * cf * per
        out = np.zeros((t, sc), dtype=w.dtype)
        stat_w, strm_w = (ac, ar)
        stat_d = np.full((total, stat_w), -1, dtype=np.int64)
        strm_d = np.full((total, strm_w), -1, dtype=np.int64)
        ofm = np.full((total, ac), -1, dtype=np.int64)
        busy = 0
        cyc = 0
        rr, cc = np.arange(ar), np.arange(ac)
        for fc in range(cf):
            c0, nc = fc * ac, min(ac, sc - fc * ac)
            for fr in range(rf):
                r0, nr = fr * ar, min(ar, sr - fr * ar)
                wreg = np.zeros((ar, ac), dtype=w.dtype)
                x_reg = np.zeros((ar, ac), dtype=w.dtype)
                x_ok = np.zeros((ar, ac), dtype=bool)
                x_t = np.full((ar, ac), -1, dtype=np.int64)
                psum = np.zeros((ar, ac), dtype=w.dtype)
                p_ok = np.zeros((ar, ac), dtype=bool)
                p_t = np.full((ar, ac), -1, dtype=np.int64)
                for c in range(per):
                    if c < ar:
                        # stationary block shifts in from the top, bottom row first
                        wreg[1:, :] = wreg[:-1, :]
                        wreg[0, :] = 0
                        src = ar - 1 - c
                        if src < nr:
                            wreg[0, :nc] = w[r0 + src, c0 : c0 + nc]
                            stat_d[cyc, :nc] = first[r0 + src, c0 : c0 + nc]
                    # streamed operand moves right; partial sums move down
                    x_reg[:, 1:] = x_reg[:, :-1]
                    x_ok[:, 1:] = x_ok[:, :-1]
                    x_t[:, 1:] = x_t[:, :-1]
                    tx = c - ar - rr
                    vx = (tx >= 0) & (tx < t) & (rr < nr)
                    x_reg[:, 0] = 0
                    x_reg[vx, 0] = x[tx[vx], r0 + rr[vx]]
                    x_ok[:, 0] = vx
                    x_t[:, 0] = np.where(vx, tx, -1)
                    strm_d[cyc, vx] = second[tx[vx], r0 + rr[vx]]
                    new_psum = np.zeros_like(psum)
                    new_ok = np.zeros_like(p_ok)
                    new_t = np.full_like(p_t, -1)
                    new_psum[1:] = psum[:-1]
                    new_ok[1:] = p_ok[:-1]
                    new_t[1:] = p_t[:-1]
                    fire = x_ok & (cc[None, :] < nc)
                    new_psum = new_psum + np.where(fire, wreg * x_reg, 0)
                    new_ok |= fire
                    new_t = np.where(fire, x_t, new_t)
                    busy += int(fire.sum())
                    psum, p_ok, p_t = new_psum, new_ok, new_t
                    # outputs: the bottom row's psum is complete when it has passed all rows
                    j_out = np.nonzero(p_ok[ar - 1])[0]
                    if len(j_out):
                        ts = p_t[ar - 1, j_out]
                        out[ts, c0 + j_out] += psum[ar - 1, j_out]
                        ofm[cyc, j_out] = o_addr[ts, c0 + j_out]
                    cyc += 1
        if stationary_is_ifmap:
            ifm, fil = stat_d, strm_d
        else:
            ifm, fil = strm_d, stat_d
        return out, Demand(ifm, fil, ofm, *self._fetch(ops)), busy

    def _fetch(self, ops: Operands) -> tuple[np.ndarray, np.ndarray]:
        return demand_trace_fetch(ops, self.rows, self.cols, self.dataflow)


def demand_trace_fetch(
    ops: Operands, rows: int, cols: int, dataflow: str
) -> tuple[np.ndarray, np.ndarray]:
    """DRAM fetch order of ifmap and filter (see :func:`demand_trace`)."""
    m, n, k = ops.mnk
    sr, sc, _ = spatial_temporal(m, n, k, dataflow)
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    first, second, _ = _roles(ops, dataflow)
    if dataflow == "os":
        a_stack = np.concatenate(
            [_pad_cols(first[fr * rows : (fr + 1) * rows, :].T, rows) for fr in range(rf)]
        )
        b_stack = np.concatenate(
            [_pad_cols(second[:, fc * cols : (fc + 1) * cols], cols) for fc in range(cf)]
        )
        return diagonal_order(a_stack), diagonal_order(b_stack)
    w_stack = np.concatenate(
        [_pad_cols(first[:, fc * cols : (fc + 1) * cols], cols) for fc in range(cf)]
    )
    x_stack = np.concatenate(
        [_pad_cols(second[:, fr * rows : (fr + 1) * rows], rows) for fr in range(rf)]
    )
    stat_fetch, strm_fetch = w_stack.ravel(), diagonal_order(x_stack)
    return (strm_fetch, stat_fetch) if dataflow == "ws" else (stat_fetch, strm_fetch)
