"""Per-op GPU cost model: how fast one op instance runs on one GPU.

The mechanisms, each with a calibratable parameter of :class:`GpuEfficiency`:

GEMM (``MATMUL``, ``CONV`` lowered to GEMM, dense ``SPIKING`` layers with GEMM dims)
    A GEMM of ``m × n × k`` (``batch`` times) is cut into output tiles of ``tm × tn``;
    ``m`` and ``n`` are padded up to tile multiples (**tile quantization**) and ``k`` to
    the K-step ``k_tile``. Each tile runs on one SM; the SMs process tiles in **waves**
    of ``sm_count`` tiles, so ``waves = ⌈tiles / SMs⌉`` (**wave quantization**: 133 tiles
    on 132 SMs take two waves). One tile's main loop takes ``2·tm·tn·(k_pad + k_fill) /
    (per-SM peak × tensor_fraction × tile_efficiency)``, with per-SM peak = dense peak /
    SMs: ``k_fill`` is the **K-loop pipeline fill** and drain, the K-steps' worth of time
    a tile spends loading its first stages before the first MMA and finishing the last.
    After the main loop the tile's **epilogue** stores C; where it does not overlap the
    main loop (``epilogue_exposed``: register accumulators, Ampere, Hopper, CDNA), the op's
    C bytes over the achieved bandwidth add to the compute side (a short-K GEMM whose
    output is large, 4096×32768×512, spends half its time there:
    ``deepgemm_fp8_dense_gemm_h800_2025_04``). When there are fewer tiles than SMs the K
    dimension may be split (**split-K**) into ``s`` slices that run on idle SMs, at the
    price of writing and reading ``s`` fp32 partial tiles. Every (tile shape, split) pair
    in :attr:`GpuEfficiency.tiles` × :attr:`GpuEfficiency.split_k` is tried and the
    fastest kept, as cuBLAS/CUTLASS heuristics do; since each candidate's time is
    non-decreasing in m, n and k, so is the minimum. Memory time is the op's bytes (A, B
    and C once: tiles share operands through L2) plus split-K partials over ``memory_bw ×
    memory_fraction`` (the roofline: a small-M GEMM streams its weights at the achieved
    bandwidth). A grouped GEMM over routed rows (the experts of an MoE layer: the op's
    ``rows_mean`` and ``rows_std`` attributes, rows per group) pads each group to whole
    tiles on its own, as CUTLASS's grouped MoE GEMM and vLLM's ``moe_align_block_size``
    do, so its row tiles are the expectation of ``⌈rows / tm⌉`` over the groups' spread of
    rows (:func:`expected_row_tiles`) rather than the tiles of the mean. The tiles
    include **narrow-M** ones (8 and 16 rows): with few tokens, weight-only and GEMV-like kernels (Marlin, AWQ, TensorRT-LLM's swap-AB FP8/FP4
    kernels) put the weights on the MMA's wide side and the tokens on its narrow one, so
    a decode GEMM pads its tokens to 8 or 16 rows, not 64, and streams its weights at the
    format's bytes.

    ``tensor_fraction`` is the **best-shape asymptote**: fitted per GPU so that the
    model's fastest shape over a search like the one that measured the best-shape
    ``torch.matmul`` rate runs at that rate (``benchmarks/fit_kernels.py``); real shapes
    come out lower by their own tile, wave, fill and epilogue losses.

ATTENTION (flash-attention style)
    Q, K and V are read once and O written once: ``batch·(2·q·d·bytes + 2·keys·d·kv_bytes)``
    per query head (``kv_bytes`` from the op's ``kv_bytes`` attribute: the KV cache may be
    8-bit under 16-bit math), or the op's own bytes when smaller (grouped-query attention,
    where a K/V head is loaded once for its group of query heads); the score matrix never
    touches HBM. Compute runs on tensor cores at ``attention_fraction`` of peak, query rows
    padded to the MMA granularity of 16; for a decode step (one query per sequence) of
    grouped-query attention the query heads of a group are packed as the MMA rows
    (FlashAttention-2's ``seqlenq_ngroups_swapped``, TensorRT-LLM's XQA), so ``q × group``
    rows are padded, not ``q``. Work units of ``attention_block_q`` query rows per (head,
    sequence) run in waves over the SMs, and with fewer units than SMs the keys are split
    over SMs (flash-decoding), so no wave loss is charged. A decode launch over a paged
    cache (the ``flash-attn`` build, as serving engines call it) also pays
    ``decode_attention_latency_s`` once (the split-KV combine pass, the page walk), fitted
    to paged decode kernels timed by context length; PyTorch's SDPA over a contiguous
    cache (``torch-sdpa``) does not.

    Decode kernel without group sharing (``decode_attention="per-head"``): the masked
    multi-head attention kernel of FasterTransformer and TensorRT-LLM up to v0.7 runs one
    thread block per *query* head on CUDA cores (v0.6.1 ``docs/source/gpt_attention.md``,
    "Generation Phase"; the GQA-sharing XQA kernel arrived experimental in v0.7 and by
    default in v0.8, ``docs/source/blogs/XQA-kernel.md``). Every query head then streams
    its K/V head itself: the KV traffic is ``group`` times the grouped kernel's, and the
    math runs at the vector rate without MMA padding.

Everything else (elementwise, norm, softmax, embedding, pool, optimizer, other)
    Memory-bound: bytes over ``memory_bw × memory_fraction``; math at the non-tensor
    (vector) rate, the catalog's ``extra.vector_flops`` or ``vector_ratio × bf16 peak``.

A causal prefill (the op's ``causal`` attribute) computes whole the key blocks that
straddle the diagonal (:func:`causal_block_factor`): at 512 tokens with 128-row blocks it
does 25 % more work than the attended pairs, at 16k tokens under 1 %, which is why causal
attention runs at a lower rate on short sequences (``fa3_fp16_forward_h100_by_seqlen``).

The **backward** of a fused attention op (named ``bwd.…``, the engine's backward prefix)
does what FlashAttention-2's backward does (Dao 2023, arXiv:2307.08691, Algorithm 2; the
FlashAttention-3 and cuDNN backwards share the scheme): it keeps no ``s × s`` matrix, so it
recomputes ``S = QKᵀ`` and ``P`` from the saved log-sum-exp and then computes ``dV = PᵀdO``,
``dP = dO·Vᵀ``, ``dQ = dS·K`` and ``dK = dSᵀQ``: five ``s × s × d`` GEMMs against the
forward's two, 2.5 times the forward's FLOPs (:data:`FLASH_BACKWARD_FLOPS`, the convention
of the FlashAttention benchmarks, ``bwd = 2.5 × fwd``), not the twice a generic op's
backward is built with; at the same ``attention_fraction``, which the
forward-plus-backward H100 table (``fa2_fwd_bwd_h100_by_seqlen``) checks out of sample
(``benchmarks/fit_kernels.py``).

Which build of the kernel runs matters for the backward (``attention_kernel``):
``flash-attn`` (the default) is the kernels as the flash-attn package ships and benchmarks
them, which the fits above describe. ``torch-sdpa`` is PyTorch's
``scaled_dot_product_attention`` on its flash backend, the FlashAttention-2 sources built
into PyTorch, which torchtitan and plain PyTorch training loops call: its backward was
measured at 183 TFLOP/s on an H100 for Llama 3 8B's inputs (pytorch/pytorch#135431),
where the model prices the flash-attn package's backward at 295, so its backward runs at
``sdpa_backward_ratio`` of the package's rate (0.62 on H100; ``benchmarks/kernel_rows.yaml``,
``benchmarks/fit_kernels.py``). Its forward measured 329 TFLOP/s on a 4,608-token
non-causal call (pytorch/pytorch#142132), 12 % above the model's forward of that call,
within the forward fit's held-out spread (median 6.9 %, max 19 %), so the forward is
priced as the package's.

8-bit and narrower GEMMs run at ``lowp_tensor_fraction`` of their peak where it is set.

Every op instance pays ``kernel_overhead_s`` (one kernel launch on the GPU timeline).

Dtypes without a published tensor rate on a device fall back to the next wider one
(``int4``/``fp4`` → ``int8``/``fp8`` → ``bf16``: weight-only quantization computes in the
wider type); ``fp32``/``tf32`` without a figure run at half the bf16 rate (the TF32
tensor rate of Ampere and Hopper is half of BF16's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

from xpusim.engine.analytic import OpTime
from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import ROWS_MEAN, ROWS_STD, STRIDED, Op, OpKind, dtype_bytes
from xpusim.engine.model import BACKWARD

Tile = tuple[int, int, float]

FLASH_BACKWARD_FLOPS = 2.5
"""FLOPs of a fused attention backward over its forward's: five ``s × s × d`` GEMMs (the
recomputed ``QKᵀ``, ``dV``, ``dP``, ``dQ``, ``dK``) against two (module docstring)."""


@dataclass(frozen=True)
class GpuEfficiency:
    """Calibratable parameters of the GPU cost model (see the module docstring).

    Defaults are stated assumptions, bracketed by the public measurements the reference
    figures hold; a fitted calibration file replaces them (:mod:`xpusim.plugins.gpu.calibration`).
    """

    lowp_tensor_fraction: float | None = None
    """Fraction of dense tensor peak a large 8-bit or narrower GEMM (fp8, int8, fp4, int4)
    sustains, when it differs from ``tensor_fraction`` (``None``: the same). Fitted per GPU
    from public measurements (``plugins/gpu/kernel_fits.yaml``): FP8 matmuls reach a
    smaller share of their doubled peak than BF16 ones (H100: 71 % against 80 % in
    ``mamf_fp8_matmul_multi_gpu``/``mamf_bf16_matmul_multi_gpu``)."""

    tensor_fraction: float = 0.70
    """Fraction of dense tensor peak a large, well-shaped GEMM tile sustains.

    Assumption. Bracketed by: the B200 microbenchmark note in ``b200_compute`` (sustained
    1,100-1,400 of 2,250 TFLOP/s, 0.49-0.62); Megatron-LM end-to-end training on A100
    at 44-52 % of peak (``megatron_t1_*``), which also pays attention, communication and
    pipeline bubbles, so a GEMM alone runs above it; and 1.0, which no GEMM reaches
    (power capping and clock throttling under sustained tensor load). 0.70 is a mid value
    for big cuBLAS GEMMs on Hopper/Ampere; not fitted to any row of the reference figures.
    """

    memory_fraction: float = 0.80
    """Fraction of datasheet memory bandwidth kernels achieve.

    Assumption. The B200 note in ``b200_compute`` reports a microbenchmark sustaining
    6.8-7.1 of 8.0 TB/s (0.85-0.89), a STREAM-like upper bound; short GEMV and attention
    kernels of a decode step do not reach it, hence 0.80.
    """

    attention_fraction: float = 0.55
    """Fraction of tensor peak a fused (flash) attention kernel sustains: lower than a GEMM
    because softmax, masking and rescaling run between the two MMAs. Assumption."""

    decode_attention_latency_s: float = 0.0
    """Fixed time of one decode-attention launch (one query per sequence, grouped kernel)
    of a paged KV cache, as serving engines run it, beyond ``kernel_overhead_s``: the
    split-KV kernel's second pass that combines the partial results, the page-table walk,
    the ramp before the KV stream reaches its rate. A paged decode of 64 sequences of 32
    tokens takes 21 us on an H100 where its bytes alone need 4
    (``fa2_paged_decode_h100_a100_ort_pr21414``). PyTorch's SDPA over a contiguous cache
    (the ``torch-sdpa`` build) does not pay it: its decode calls timed on an H100 come out
    within 3% without it (``calibrations/points/h100-sxm-2026-12-06.points.json``). 0
    where no fit applies."""

    strided_elementwise_fraction: float = 1.0
    """Fraction of the streaming rate (``memory_fraction`` of the datasheet bandwidth) an
    elementwise op with a non-contiguous operand reaches (ops marked
    :data:`~xpusim.engine.graph.STRIDED`: a ``chunk`` half, a transpose, a broadcast
    source). PyTorch's CUDA elementwise kernels vectorize their loads and stores only when
    every operand is contiguous. 1.0 (no penalty) until measured: ``xpusim calibrate
    --points`` fits it from a points file's ``elementwise`` entry
    (``benchmarks/gpu_measure.sh`` times the same kernels on contiguous tensors and on
    views)."""

    kernel_overhead_s: float = 2e-6
    """Fixed GPU-timeline cost per kernel: launch gap, prologue and tail. With CUDA graphs
    (TensorRT-LLM, vLLM) the ~5 us CPU launch is hidden but ~1-3 us between dependent
    kernels remains. Assumption, calibratable."""

    vector_ratio: float = 0.135
    """Non-tensor (vector) math rate as a fraction of the bf16 tensor peak, used when the
    catalog has no ``extra.vector_flops``: H100 SXM's 133.8 VFMA vs 989.4 tensor TFLOP/s
    (``h100sxm_bf16_dense``)."""

    tiles: tuple[Tile, ...] = (
        (128, 256, 1.00),
        (256, 128, 1.00),
        (128, 128, 0.92),
        (64, 256, 0.85),
        (64, 128, 0.80),
        (128, 64, 0.80),
        (64, 64, 0.60),
        (16, 128, 0.60),
        (8, 128, 0.60),
    )
    """Candidate CTA tiles ``(tm, tn, tile_efficiency)``. Smaller tiles re-read operands
    more per FLOP and keep fewer tensor cores fed, so they sustain a smaller fraction of
    ``tensor_fraction``. The relative efficiencies are assumptions (CUTLASS's default
    Hopper/Ampere tiles are 128×128 and 128×256). The 16- and 8-row tiles are the
    narrow-M (swap-AB) tiles of weight-streaming kernels: the weights fill the MMA's
    16-row side and the tokens its 8-wide side (``mma.m16n8k16``; Hopper's ``wgmma``
    takes N down to 8), as Marlin's 16-token blocks and TensorRT-LLM's small-batch FP8
    and FP4 GEMMs do; they are taken at the smallest wide tile's share (assumption). A
    decode GEMM of a few tokens then pads to 8 or 16 rows and is bound by its weight
    bytes; in the tightest case of the catalog, 4-bit weights dequantized into an A100
    bf16 GEMM, that holds for any share above about 0.25 at 8 tokens and 0.5 at 16."""

    k_tile: int = 64
    """K-step of the main loop; K is padded to a multiple of it."""

    epilogue_exposed: float = 1.0
    """Share of a tile's epilogue (storing C) that does not overlap the main loop: 1 where
    the accumulators live in registers and a tile's store ends before its SM starts the
    next tile (Ampere, Hopper, Ada and CDNA kernels; DeepGEMM's FP8 GEMMs:
    ``deepgemm_fp8_dense_gemm_h800_2025_04``); 0 where they live in Blackwell's tensor
    memory, double-buffered, so one tile's store runs under the next tile's MMAs (a 1 there
    would cap B300's best-shape BF16 matmul, 12288x18432x1024, below its measured 1,769
    TFLOP/s at any tensor fraction: ``mamf_bf16_matmul_multi_gpu``)."""

    k_fill: float = 0.0
    """K-loop pipeline fill and drain of one tile, in K elements of main-loop time: the
    loads of the first pipeline stages before the first MMA and the last MMAs after the
    last load, which a short K cannot amortize. Fitted to how DeepGEMM's FP8 GEMMs change
    with shape (``benchmarks/fit_kernels.py``): 0, their short-K rows fall exactly as far
    as the epilogue explains (persistent kernels load a tile's first stages under the
    previous tile)."""

    split_k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Split-K factors the heuristic may pick when tiles are fewer than SMs."""

    sdpa_backward_ratio: float = 1.0
    """Rate of PyTorch SDPA's flash backward (``attention_kernel="torch-sdpa"``) over the
    flash-attn package's backward the model prices at ``attention_fraction``, per FLOP of
    the same convention (module docstring); above 1 where PyTorch's build is the faster.
    Fitted on H100 to pytorch/pytorch#135431 (``benchmarks/fit_kernels.py``); 1.0 (no
    difference) where nothing is fitted."""

    attention_block_q: int = 128
    """Query rows per flash-attention work unit (FlashAttention-2's block size)."""

    link_fraction: float = 0.80
    """Fraction of NVLink/PCIe/network bandwidth NCCL collectives achieve (bus bandwidth
    of all-reduce is typically 75-85 % of the link's per-direction rate for large
    messages). Assumption."""

    runtime_reserve_bytes: float = 1.5e9
    """Per-GPU memory the runtime holds before any weight: CUDA context (~0.5 GB), cuBLAS
    and attention workspaces, NCCL buffers. Assumption."""

    default_sm_count: int = 108
    """SMs assumed for a device whose catalog has no ``extra.sm_count`` (an A100's)."""

    def __post_init__(self) -> None:
        for name in (
            "tensor_fraction",
            "memory_fraction",
            "attention_fraction",
            "link_fraction",
            "vector_ratio",
            "strided_elementwise_fraction",
        ):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise XpusimError(f"GPU efficiency parameter {name} must be in (0, 1], got {v}.")
        lowp = self.lowp_tensor_fraction
        if lowp is not None and not 0 < lowp <= 1:
            raise XpusimError(
                f"GPU efficiency parameter lowp_tensor_fraction must be in (0, 1], got {lowp}."
            )
        if not self.sdpa_backward_ratio > 0:
            raise XpusimError(
                "GPU efficiency parameter sdpa_backward_ratio must be above 0, "
                f"got {self.sdpa_backward_ratio}."
            )
        if (
            self.kernel_overhead_s < 0
            or self.runtime_reserve_bytes < 0
            or self.decode_attention_latency_s < 0
        ):
            raise XpusimError("GPU efficiency overheads must not be negative.")
        if not self.tiles or any(tm < 1 or tn < 1 or not 0 < e <= 1 for tm, tn, e in self.tiles):
            raise XpusimError("GPU efficiency tiles must be (tm >= 1, tn >= 1, 0 < eff <= 1).")
        if self.k_fill < 0:
            raise XpusimError("GPU efficiency k_fill must not be negative.")
        if not 0 <= self.epilogue_exposed <= 1:
            raise XpusimError("GPU efficiency epilogue_exposed must be in [0, 1].")
        if not self.split_k or 1 not in self.split_k:
            raise XpusimError("GPU efficiency split_k must include 1 (no split).")

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the parameters a calibration file may set."""
        return [f.name for f in fields(cls)]


LOW_PRECISION = frozenset({"fp8", "int8", "fp4", "int4", "fp6"})
"""Dtypes whose GEMMs run at ``lowp_tensor_fraction`` when it is set."""

_FALLBACK = {
    "int4": ("int8", "fp8", "bf16"),
    "fp4": ("fp8", "bf16"),
    "int8": ("fp8", "bf16"),
    "fp8": ("bf16",),
    "tf32": ("fp32",),
    "fp32": ("tf32",),
}


def tensor_peak(device: DeviceSpec, dtype: str) -> float:
    """Dense tensor FLOP/s of ``device`` for ``dtype``, with the documented fallbacks."""
    for dt in (dtype, *_FALLBACK.get(dtype, ())):
        try:
            return device.flops(dt)
        except XpusimError:
            continue
    if dtype in ("fp32", "tf32"):
        return device.flops("bf16") / 2
    return device.flops(dtype)  # raises with the list of known dtypes


def causal_block_factor(q: int, keys: int, block: int) -> float:
    """Work a block-tiled causal kernel does over the attended pairs: query blocks of
    ``block`` rows visit every key block up to their last row, so blocks straddling the
    diagonal are computed whole (FlashAttention skips only fully masked blocks). The
    queries sit at the end of ``keys`` positions (a prefill over a cached prefix)."""
    q, keys, block = max(1, q), max(1, keys), max(1, block)
    prefix = max(0, keys - q)
    computed = 0.0
    for start in range(0, q, block):
        rows = min(block, q - start)
        last_key = prefix + start + rows  # keys the block's last row attends to
        computed += rows * min(keys, math.ceil(last_key / block) * block)
    pairs = q * keys - q * (q - 1) / 2 if keys >= q else keys * (keys + 1) / 2
    return max(1.0, computed / pairs)


def expected_row_tiles(mean: float, std: float, tile: int) -> float:
    """Expected ``⌈rows / tile⌉`` of one group of a grouped GEMM whose rows are spread
    about ``mean`` with standard deviation ``std`` (an MoE expert's share of routed
    tokens): ``Σ_j P(rows > j·tile)`` under a normal law with continuity correction, the
    tiles of the mean when ``std`` is 0. A group that receives no row launches no tile,
    so a sparse layer's idle experts cost nothing."""
    if std <= 0.0:
        return float(math.ceil(mean / tile)) if mean > 0 else 0.0
    scale = std * math.sqrt(2.0)
    total, j = 0.0, 0
    while j * tile < mean + 8.0 * std:
        total += 0.5 * math.erfc((j * tile + 0.5 - mean) / scale)
        j += 1
    return total


DecodeAttention = Literal["grouped", "per-head"]
"""A decode-attention kernel (:data:`DECODE_ATTENTION`)."""

DECODE_ATTENTION: tuple[str, ...] = get_args(DecodeAttention)
"""Decode-attention kernels the cost model knows (see the module docstring): ``grouped``
loads each K/V head once for its query-head group (FlashAttention-2/FlashDecoding, vLLM,
TensorRT-LLM >= v0.8 XQA); ``per-head`` is the masked MHA kernel with one thread block per
query head (FasterTransformer, TensorRT-LLM <= v0.7 by default)."""


AttentionKernel = Literal["flash-attn", "torch-sdpa"]
"""A build of the fused attention kernel (:data:`ATTENTION_KERNELS`)."""

ATTENTION_KERNELS: tuple[str, ...] = get_args(AttentionKernel)
"""Builds of the fused attention kernel the cost model knows (see the module docstring):
``flash-attn``, the flash-attn package's kernels as fitted; ``torch-sdpa``, PyTorch's
``scaled_dot_product_attention`` flash backend, whose backward runs at
``sdpa_backward_ratio`` of the package's."""


class GpuCostModel:
    """Prices ops for one device under one :class:`GpuEfficiency`; callable as
    ``price_op`` for :class:`~xpusim.engine.analytic.AnalyticCompiled`. ``decode_attention`` picks
    the decode-attention kernel (:data:`DECODE_ATTENTION`), ``attention_kernel`` the build
    of the fused attention kernel (:data:`ATTENTION_KERNELS`)."""

    def __init__(
        self,
        device: DeviceSpec,
        eff: GpuEfficiency | None = None,
        decode_attention: str = "grouped",
        attention_kernel: str = "flash-attn",
    ) -> None:
        if decode_attention not in DECODE_ATTENTION:
            raise XpusimError(
                f"decode_attention must be one of {', '.join(DECODE_ATTENTION)}, "
                f"got {decode_attention!r}."
            )
        if attention_kernel not in ATTENTION_KERNELS:
            raise XpusimError(
                f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, "
                f"got {attention_kernel!r}."
            )
        self.decode_attention = decode_attention
        self.attention_kernel = attention_kernel
        self.device = device
        self.eff = eff or GpuEfficiency()
        sm = device.extra.get("sm_count")
        self.sms = int(sm.value) if sm is not None else self.eff.default_sm_count
        self.bw = device.memory_bw.value * self.eff.memory_fraction
        vf = device.extra.get("vector_flops")
        self.vector_flops = (
            vf.value if vf is not None else tensor_peak(device, "bf16") * self.eff.vector_ratio
        )
        self._peaks: dict[str, float] = {}

    def peak(self, dtype: str) -> float:
        """Dense tensor peak for ``dtype`` (cached)."""
        p = self._peaks.get(dtype)
        if p is None:
            p = tensor_peak(self.device, dtype)
            self._peaks[dtype] = p
        return p

    # -- GEMM -------------------------------------------------------------------------

    def gemm_fraction(self, dtype: str) -> float:
        """The share of tensor peak a large GEMM of ``dtype`` sustains."""
        lowp = self.eff.lowp_tensor_fraction
        if lowp is not None and dtype in LOW_PRECISION:
            return lowp
        return self.eff.tensor_fraction

    def gemm(
        self,
        m: int,
        n: int,
        k: int,
        batch: int,
        dtype: str,
        nbytes: float,
        out_bytes: float = 0.0,
        rows: tuple[float, float] | None = None,
    ) -> tuple[OpTime, dict[str, float]]:
        """Time of a (batched) GEMM and the chosen configuration (``tm``, ``tn``,
        ``split``, ``tiles``, ``waves``). ``nbytes`` is every byte the op moves, of which
        ``out_bytes`` are C, stored by the epilogue after the main loop. ``rows`` is
        ``(mean, std)`` of the rows of each of the ``batch`` groups of a grouped GEMM over
        routed rows, whose row tiles are then :func:`expected_row_tiles`."""
        e = self.eff
        per_sm = self.peak(dtype) * self.gemm_fraction(dtype) / self.sms
        m, n, k = max(1, m), max(1, n), max(1, k)
        c_bytes = min(max(0.0, out_bytes), max(0.0, nbytes))
        ktiles = math.ceil(k / e.k_tile)
        best: tuple[float, float, float, dict[str, float]] | None = None
        for tm, tn, te in e.tiles:
            row_tiles = math.ceil(m / tm) if rows is None else expected_row_tiles(*rows, tm)
            tiles = row_tiles * math.ceil(n / tn) * batch
            for split in e.split_k:
                if split > 1 and tiles * split > self.sms:
                    continue
                waves = math.ceil(tiles * split / self.sms)
                k_per = math.ceil(ktiles / split) * e.k_tile + e.k_fill
                main = waves * 2.0 * tm * tn * k_per / (per_sm * te)
                partial = tiles * tm * tn * 4.0 * 2 * split if split > 1 else 0.0
                epilogue = e.epilogue_exposed * (c_bytes + partial) / self.bw
                compute = main + epilogue
                memory = (nbytes + partial) / self.bw
                t = max(compute, memory)
                if best is None or t < best[0] - 1e-15:
                    best = (
                        t,
                        compute,
                        memory,
                        {"tm": tm, "tn": tn, "split": split, "tiles": tiles, "waves": waves},
                    )
        assert best is not None
        return OpTime(best[1], best[2], e.kernel_overhead_s), best[3]

    # -- attention --------------------------------------------------------------------

    def attention(self, op: Op) -> OpTime:
        """Flash-attention time of one attention op (module docstring)."""
        e = self.eff
        q, keys, d = [*op.dims, 1, 1, 1][:3] if op.dims else (1, 1, 1)
        q, keys, d = max(1, int(q)), max(1, int(keys)), max(1, int(d))
        b = dtype_bytes(op.dtype)
        kv_b = op.attr("kv_bytes", b)
        q_heads, kv_heads = op.attr("q_heads"), op.attr("kv_heads")
        group = max(1, round(q_heads / kv_heads)) if q_heads > 0 and kv_heads > 0 else 1
        per_head = op.batch * (2.0 * q * d * b + 2.0 * keys * d * kv_b)
        flops = op.flops if op.flops > 0 else 4.0 * q * keys * d * op.batch
        rate = self.peak(op.dtype) * e.attention_fraction
        if op.name.startswith(BACKWARD):
            # built as twice the forward; the kernel recomputes QKᵀ: 5 GEMMs, not 4
            flops *= FLASH_BACKWARD_FLOPS / 2.0
            if self.attention_kernel == "torch-sdpa":
                rate *= e.sdpa_backward_ratio
        decode = q == 1
        if decode and self.decode_attention == "per-head":
            # masked MHA: one block per query head on CUDA cores, K/V not shared
            return OpTime(flops / self.vector_flops, per_head / self.bw, e.kernel_overhead_s)
        nbytes = min(op.bytes, per_head) if op.bytes > 0 else per_head
        if not decode and op.attr("causal", 0.0) > 0:
            flops *= causal_block_factor(q, keys, e.attention_block_q)
        rows = q * group if decode else q  # a decode's group packed as MMA rows
        pad = math.ceil(rows / 16) * 16 / rows
        units = max(1, op.batch // (group if decode else 1)) * math.ceil(rows / e.attention_block_q)
        wave_factor = 1.0
        if units >= self.sms:
            wave_factor = math.ceil(units / self.sms) * self.sms / units
        compute = flops * pad * wave_factor / rate
        paged = decode and self.attention_kernel != "torch-sdpa"  # SDPA: contiguous, one pass
        overhead = e.kernel_overhead_s + (e.decode_attention_latency_s if paged else 0.0)
        return OpTime(compute, nbytes / self.bw, overhead)

    # -- everything -------------------------------------------------------------------

    def __call__(self, op: Op) -> OpTime:
        """Price one instance of ``op``."""
        k = op.kind
        if k is OpKind.COLLECTIVE:
            return OpTime(0.0, 0.0)
        if k in (OpKind.MATMUL, OpKind.CONV) or (k is OpKind.SPIKING and len(op.dims) == 3):
            if len(op.dims) >= 3:
                m, n, kk = (int(x) for x in op.dims[:3])
                spread = op.attr(ROWS_STD) if op.attrs else 0.0
                rows = (op.attr(ROWS_MEAN), spread) if spread > 0 else None
                return self.gemm(m, n, kk, op.batch, op.dtype, op.bytes, op.bytes_written, rows)[0]
            return OpTime(
                op.flops / (self.peak(op.dtype) * self.gemm_fraction(op.dtype)),
                op.bytes / self.bw,
                self.eff.kernel_overhead_s,
            )
        if k is OpKind.ATTENTION:
            return self.attention(op)
        bw = self.bw
        if k is OpKind.ELEMENTWISE and op.attrs and op.attr(STRIDED) > 0:
            bw *= self.eff.strided_elementwise_fraction
        return OpTime(
            op.flops / self.vector_flops if op.flops else 0.0,
            op.bytes / bw,
            self.eff.kernel_overhead_s,
        )
