"""GPU microbenchmarks written as a points file: the measuring half of a GPU calibration.

``benchmarks/gpu_measure.sh`` runs ``python -m xpusim.plugins.gpu.microbench`` on a GPU
machine (under 8 minutes on an H100 or H200) and writes a points file
(:mod:`xpusim.plugins.gpu.points`, ``format: xpusim-gpu-points/1``) that ``xpusim
calibrate --backend gpu --points FILE`` fits. It times:

* GEMMs over decode-to-prefill shapes in ``bf16`` (``torch.mm``) and ``fp8``
  (``torch._scaled_mm`` with per-tensor scales, where the GPU has FP8 tensor cores);
* attention through ``torch.nn.functional.scaled_dot_product_attention``: causal
  prefills by length and head dim, forward and backward (the gradients of Q, K and V,
  as training runs it), and decodes (one query over a KV cache);
* a streaming copy (``copy_bytes_per_s``), the back-to-back cost of a tiny kernel
  (``kernel_overhead_s``) and the host cost of launching one when the GPU waits for it
  (``launch_gap_s``);
* one decode step of a small Llama-shaped model (RMSNorm, fused QKV, SDPA over a KV cache,
  gated MLP), eager and replayed as a CUDA graph (``decode_step``): the difference is the
  per-iteration launch cost a serving stack without CUDA graphs pays.

Every measurement goes through a :class:`Timer`, so the same code runs on the CPU
(``--device cpu``: tiny shapes, wall-clock timing, no FP8 and no graphs) for a dry run
that checks the script and the file it writes without a GPU; such a file says so in its
``measured_on`` and must not be used as a calibration.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from xpusim.engine.device import DeviceSpec
from xpusim.engine.errors import XpusimError
from xpusim.plugins.gpu import points as points_mod
from xpusim.plugins.gpu.catalog import catalog
from xpusim.plugins.gpu.points import (
    Point,
    Points,
    attention_backward_op,
    attention_op,
    gemm_op,
)

GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 4096, 4096),
    (16, 4096, 4096),
    (64, 4096, 14336),
    (128, 14336, 4096),
    (256, 4096, 4096),
    (512, 6144, 4096),
    (1024, 4096, 4096),
    (2048, 28672, 4096),
    (4096, 4096, 14336),
    (8192, 8192, 8192),
    # Llama-70B layers split four ways (tensor parallel): a 2,048-token prefill's QKV,
    # output, gate-up and down projections, and the gate-up projection of one decode batch
    (2048, 2560, 8192),
    (2048, 8192, 2048),
    (2048, 14336, 8192),
    (2048, 8192, 7168),
    (32, 14336, 8192),
)
"""GEMM shapes (m, n, k) on a GPU: Llama-3-8B-sized layers at 1 to 8,192 tokens, and
Llama-70B layers under four-way tensor parallelism."""

LINEAR_MAX_M = 128
"""GEMMs of at most this many rows are timed in ``F.linear``'s layout too."""

ROTATE_BYTES = 512 * 2**20
"""Operand bytes a memory-bound kernel cycles through on a GPU, so that repeated calls read
device memory rather than an L2 cache that holds one call's operands (50 MB on an H100,
126 MB on a B200); serving reads each layer's weights once per step."""

PREFILL: tuple[tuple[int, int, int], ...] = (
    (32, 512, 128),
    (16, 2048, 128),
    (8, 8192, 128),
    (32, 2048, 64),
)
"""Causal prefills (sequences x heads, tokens, head dim)."""

DECODE: tuple[tuple[int, int, int], ...] = ((256, 1024, 128), (1024, 2048, 128), (64, 8192, 128))
"""Decodes (sequences x heads, cached keys, head dim): one query each."""

GQA_DECODE = {"batch": 8, "heads": 64, "kv_heads": 8, "context": 4096, "head_dim": 128}
"""A grouped-query decode (Llama-70B's 64 query and 8 KV heads) timed three ways: grouped
(``enable_gqa``), with the KV heads repeated in memory (a kernel that streams each KV head
once per query head), and with one query head per KV head (the KV bytes once)."""

CPU_GEMM = ((1, 64, 64), (32, 64, 128))
CPU_PREFILL = ((2, 32, 16),)
CPU_DECODE = ((4, 64, 16),)
"""Tiny shapes of a ``--device cpu`` dry run."""


@dataclass(frozen=True)
class Timer:
    """How one callable is timed: on a GPU, ``reps`` back-to-back calls captured once in a
    CUDA graph and its replays timed with CUDA events (the GPU's time alone, as a serving
    stack that replays graphs sees it; eager calls, timed the same way, where capture
    fails or ``graphs`` is off); wall clock on the CPU. Each after ``warmup`` calls."""

    torch: Any
    cuda: bool
    reps: int = 20
    warmup: int = 3
    graphs: bool = True
    replays: int = 5

    def __call__(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        """Seconds per call of ``fn``."""
        return self.measure(fn, reps)[0]

    def measure(self, fn: Callable[[], Any], reps: int | None = None) -> tuple[float, str]:
        """Seconds per call of ``fn`` and how they were timed (``graph``, ``eager`` or
        ``wall``)."""
        n = reps or self.reps
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n, "wall"
        if self.graphs:
            try:
                return self._graph(fn, n), "graph"
            except RuntimeError:  # an op that cannot be captured: time it eagerly
                self.torch.cuda.synchronize()
        return self._events(lambda: [fn() for _ in range(n)]) / n, "eager"

    def _events(self, run: Callable[[], Any]) -> float:
        torch = self.torch
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end)) * 1e-3

    def _graph(self, fn: Callable[[], Any], n: int) -> float:
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                fn()
        graph.replay()

        def replays() -> None:
            for _ in range(self.replays):
                graph.replay()

        return self._events(replays) / (n * self.replays)


def rotating(fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]]) -> Callable[[], Any]:
    """A callable that runs ``fn`` on the next of ``argsets`` each call."""
    it = itertools.cycle(argsets)
    return lambda: fn(*next(it))


def copies(one_set_bytes: int, rotate_bytes: int) -> int:
    """How many operand sets of ``one_set_bytes`` cover ``rotate_bytes`` (1 to 32)."""
    return max(1, min(32, -(-rotate_bytes // max(1, one_set_bytes))))


def fp8_supported(torch: Any, cuda: bool) -> bool:
    """Whether this device runs ``torch._scaled_mm`` in FP8 (compute capability 8.9+)."""
    if not cuda or not hasattr(torch, "float8_e4m3fn"):
        return False
    major, minor = torch.cuda.get_device_capability(0)
    return (major, minor) >= (8, 9)


def time_gemms(
    torch: Any, timer: Timer, dev: Any, shapes: Any, fp8: bool, rotate_bytes: int = 0
) -> list[Point]:
    """GEMM points in bf16 (and fp8 where ``fp8``), each cycling through enough operand
    sets to cover ``rotate_bytes``."""
    out = []
    dt = torch.bfloat16 if timer.cuda else torch.float32
    label_dt = "bf16" if timer.cuda else "fp32"
    for m, n, k in shapes:
        size = (m * k + k * n) * (2 if timer.cuda else 4)
        sets = [
            (torch.randn(m, k, dtype=dt, device=dev), torch.randn(k, n, dtype=dt, device=dev))
            for _ in range(copies(size, rotate_bytes))
        ]
        t, how = timer.measure(rotating(torch.mm, sets))
        out.append(Point(gemm_op(m, n, k, label_dt), t, f"mm ({how})"))
        if m <= LINEAR_MAX_M:
            # a model's layer multiplies by its (n, k) weight transposed (F.linear); a
            # few-token GEMM may get another kernel in that layout than in torch.mm's
            weights = [(a, b.t().contiguous()) for a, b in sets]
            t, how = timer.measure(rotating(torch.nn.functional.linear, weights))
            out.append(Point(gemm_op(m, n, k, label_dt), t, f"linear ({how})"))
            del weights
        if fp8 and m % 16 == 0:
            one = torch.ones((), device=dev)
            sets8 = [
                (a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t())
                for a, b in sets[: copies(size // 2, rotate_bytes)]
            ]

            def scaled(a8: Any, b8: Any, one: Any = one) -> Any:
                return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=dt)

            t8, how = timer.measure(rotating(scaled, sets8))
            out.append(Point(gemm_op(m, n, k, "fp8"), t8, f"_scaled_mm per-tensor ({how})"))
        del sets
    return out


def time_attention(
    torch: Any, timer: Timer, dev: Any, prefill: Any, decode: Any, rotate_bytes: int = 0
) -> list[Point]:
    """SDPA points: causal prefills, forward and backward, and one-query decodes (the
    decodes, bound by reading the KV cache, cycle through enough caches to cover
    ``rotate_bytes``). A backward is one ``torch.autograd.grad`` of the call's output
    (kept with its graph) into Q, K and V."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dt = torch.bfloat16 if timer.cuda else torch.float32
    label_dt = "bf16" if timer.cuda else "fp32"
    width = 2 if timer.cuda else 4
    out = []
    for bh, s, d in prefill:
        q, k, v = (torch.randn(1, bh, s, d, dtype=dt, device=dev) for _ in range(3))
        op = attention_op(bh, s, s, d, label_dt, causal=True)
        t, how = timer.measure(partial(sdpa, q, k, v, is_causal=True))
        out.append(Point(op, t, f"sdpa prefill causal ({how})"))
        for x in (q, k, v):
            x.requires_grad_(True)
        o = sdpa(q, k, v, is_causal=True)
        grad = torch.randn_like(o)
        backward = partial(torch.autograd.grad, o, (q, k, v), grad, retain_graph=True)
        t, how = timer.measure(backward)
        out.append(Point(attention_backward_op(op), t, f"sdpa backward causal ({how})"))
        del o, grad, backward
    for bh, kv, d in decode:
        sets = [
            tuple(torch.randn(1, bh, n, d, dtype=dt, device=dev) for n in (1, kv, kv))
            for _ in range(copies(2 * bh * kv * d * width, rotate_bytes))
        ]
        op = attention_op(bh, 1, kv, d, label_dt)
        t, how = timer.measure(rotating(sdpa, sets))
        out.append(Point(op, t, f"sdpa decode ({how})"))
    return out


def time_gqa_decode(torch: Any, timer: Timer, dev: Any, cfg: Mapping[str, int]) -> dict[str, Any]:
    """Seconds of one grouped-query decode (:data:`GQA_DECODE`) three ways: ``grouped``
    (``enable_gqa``), ``repeated`` (KV heads copied per query head beforehand) and
    ``kv_once`` (one query head per KV head), with the KV-cache bytes each reads at least."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dt = torch.bfloat16 if timer.cuda else torch.float32
    b, h, g, s, d = (cfg[k] for k in ("batch", "heads", "kv_heads", "context", "head_dim"))
    q = torch.randn(b, h, 1, d, dtype=dt, device=dev)
    q_once = torch.randn(b, g, 1, d, dtype=dt, device=dev)
    k, v = (torch.randn(b, g, s, d, dtype=dt, device=dev) for _ in range(2))
    out: dict[str, Any] = dict(cfg)
    kv_bytes = 2 * b * g * s * d * k.element_size()
    out["kv_bytes"] = kv_bytes
    try:
        out["grouped_s"] = timer(partial(sdpa, q, k, v, enable_gqa=True))
    except (TypeError, RuntimeError) as exc:  # a torch without enable_gqa
        out["grouped_error"] = str(exc).splitlines()[0]
    out["kv_once_s"] = timer(partial(sdpa, q_once, k, v))
    kr, vr = (x.repeat_interleave(h // g, dim=1) for x in (k, v))
    out["repeated_s"] = timer(partial(sdpa, q, kr, vr))
    out["repeated_kv_bytes"] = kv_bytes * (h // g)
    return out


def time_memory(torch: Any, timer: Timer, dev: Any, nbytes: int) -> dict[str, float]:
    """A streaming copy's rate (``copy_bytes_per_s``, launched eagerly) and three costs of a
    tiny kernel: back to back on the GPU (``kernel_overhead_s``, replayed from a CUDA
    graph), issued one by one from Python (``eager_dispatch_s``: the host's rate of
    launching, when the GPU keeps up) and the round trip of one launch and a synchronize
    (``launch_gap_s``)."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(src)
    eager = replace(timer, graphs=False)
    # eagerly: a copy captured in a CUDA graph becomes a memcpy node, which moved 2.46 TB/s
    # on an H100 where the same copy launched eagerly moved 3.03 TB/s (2026-12-06)
    copy = 2 * n * 4 / eager(partial(dst.copy_, src))
    one = torch.ones(1, device=dev)
    overhead = timer(partial(one.add_, 1.0), reps=200)
    dispatch = eager(partial(one.add_, 1.0), reps=200)

    def synced() -> None:
        one.add_(1.0)
        if timer.cuda:
            torch.cuda.synchronize()

    gap = Timer(torch, False, reps=200)(synced)
    return {
        "copy_bytes_per_s": copy,
        "kernel_overhead_s": overhead,
        "eager_dispatch_s": dispatch,
        "launch_gap_s": gap,
    }


def time_elementwise(
    torch: Any, timer: Timer, dev: Any, rows_cols: tuple[int, int]
) -> dict[str, Any]:
    """Seconds and bytes of the elementwise kernels a model written in plain torch runs,
    on a ``rows x cols`` bf16 activation: a contiguous copy and multiply, and the same
    work on the views a layer hands them (the gated MLP's ``chunk`` halves, a
    ``repeat_interleave`` of four, which is a broadcast copy). PyTorch vectorizes an
    elementwise kernel's loads only when every operand is contiguous, so the views show
    what the strided path costs."""
    dt = torch.bfloat16 if timer.cuda else torch.float32
    rows, cols = rows_cols
    width = torch.empty((), dtype=dt).element_size()
    a, b = (torch.randn(rows, cols, dtype=dt, device=dev) for _ in range(2))
    both = torch.randn(rows, 2 * cols, dtype=dt, device=dev)
    g, u = both.chunk(2, dim=-1)
    small = torch.randn(rows // 4, cols, dtype=dt, device=dev)
    one = rows * cols * width
    eager = replace(timer, graphs=False)
    return {
        "rows": rows,
        "cols": cols,
        "dtype": "bf16" if timer.cuda else "fp32",
        "copy_s": eager(partial(torch.clone, a)),
        "copy_bytes": 2 * one,
        "mul_s": eager(partial(torch.mul, a, b)),
        "mul_bytes": 3 * one,
        "mul_chunks_s": eager(partial(torch.mul, g, u)),
        "mul_chunks_bytes": 3 * one,
        "silu_chunk_s": eager(partial(torch.nn.functional.silu, g)),
        "silu_chunk_bytes": 2 * one,
        "repeat_interleave_s": eager(partial(small.repeat_interleave, 4, 0)),
        "repeat_interleave_bytes": one + one // 4,
    }


def small_llama(torch: Any, layers: int, hidden: int, heads: int, kv_heads: int) -> Any:
    """A Llama-shaped decoder stack in plain torch (no weights loaded: random init)."""
    from torch import nn

    head = hidden // heads

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.RMSNorm(hidden)
            self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * head, bias=False)
            self.o = nn.Linear(heads * head, hidden, bias=False)
            self.norm2 = nn.RMSNorm(hidden)
            self.up = nn.Linear(hidden, 2 * 4 * hidden, bias=False)
            self.down = nn.Linear(4 * hidden, hidden, bias=False)

        def forward(self, x: Any, k_cache: Any, v_cache: Any) -> Any:
            b = x.shape[0]
            qkv = self.qkv(self.norm1(x))
            # the new token's K and V are projected (their cost counts) but the timed step
            # reads a fixed cache: one more cached token does not change the step's time
            q, _k, _v = qkv.split([heads * head, kv_heads * head, kv_heads * head], dim=-1)
            q = q.view(b, heads, 1, head)
            k_all = k_cache.repeat_interleave(heads // kv_heads, dim=1)
            v_all = v_cache.repeat_interleave(heads // kv_heads, dim=1)
            a = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all)
            x = x + self.o(a.reshape(b, heads * head))
            return self.mlp(x)

        def mlp(self, x: Any) -> Any:
            g, u = self.up(self.norm2(x)).chunk(2, dim=-1)
            return x + self.down(torch.nn.functional.silu(g) * u)

        def prefill(self, x: Any) -> Any:
            b, s, _ = x.shape
            qkv = self.qkv(self.norm1(x))
            q, k, v = qkv.split([heads * head, kv_heads * head, kv_heads * head], dim=-1)
            q = q.view(b, s, heads, head).transpose(1, 2)
            k, v = (
                t.view(b, s, kv_heads, head).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
                for t in (k, v)
            )
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, s, heads * head))
            return self.mlp(x)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, x: Any, k_cache: Any, v_cache: Any) -> Any:
            for layer in self.layers:
                x = layer(x, k_cache, v_cache)
            return x

        def prefill(self, x: Any) -> Any:
            for layer in self.layers:
                assert isinstance(layer, Layer)
                x = layer.prefill(x)
            return x

    return Model()


def time_decode_step(torch: Any, timer: Timer, dev: Any, cfg: dict[str, int]) -> dict[str, Any]:
    """One decode step of :func:`small_llama`, eager and (on a GPU) replayed as a CUDA
    graph, and the prefill of ``prefill_tokens`` tokens for one sequence, eager."""
    dt = torch.bfloat16 if timer.cuda else torch.float32
    model = small_llama(torch, cfg["layers"], cfg["hidden"], cfg["heads"], cfg["kv_heads"])
    model = model.to(device=dev, dtype=dt).eval()
    head = cfg["hidden"] // cfg["heads"]
    x = torch.randn(cfg["batch"], cfg["hidden"], dtype=dt, device=dev)
    kc = torch.randn(cfg["batch"], cfg["kv_heads"], cfg["context"], head, dtype=dt, device=dev)
    vc = torch.randn_like(kc)
    prompt = torch.randn(1, cfg["prefill_tokens"], cfg["hidden"], dtype=dt, device=dev)
    eager = replace(timer, graphs=False)
    out: dict[str, Any] = dict(cfg)
    with torch.no_grad():
        out["eager_s"] = eager(partial(model, x, kc, vc))
        if timer.cuda:
            out["graph_s"] = replace(timer, reps=1, replays=20)(partial(model, x, kc, vc))
        out["prefill_eager_s"] = eager(partial(model.prefill, prompt), reps=5)
        out["decode_kernels"] = kernel_breakdown(torch, partial(model, x, kc, vc), timer.cuda)
    return out


def kernel_breakdown(torch: Any, fn: Callable[[], Any], cuda: bool, steps: int = 5) -> Any:
    """The kernels of ``fn`` by name, from the profiler over ``steps`` eager calls (GPU
    kernels on a GPU, operators' own CPU time in a dry run): ``[{"kernel", "calls",
    "us"}]`` per call of ``fn``, the longest first, or ``{"error": ...}`` where the
    profiler cannot run."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    try:
        fn()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=[activity]) as prof:
            for _ in range(steps):
                fn()
            if cuda:
                torch.cuda.synchronize()
        rows = []
        for ev in prof.key_averages():
            if cuda:
                us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            else:
                us = ev.self_cpu_time_total
            if us:
                rows.append({"kernel": ev.key, "calls": ev.count / steps, "us": us / steps})
        return sorted(rows, key=lambda r: -r["us"])
    except (RuntimeError, AttributeError) as exc:
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def measure(device: str = "cuda", quick: bool = False) -> Points:
    """Run every microbenchmark on ``device`` (``cuda`` or ``cpu``) and return the points."""
    import torch

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_measure: no CUDA device is visible to torch; run it on the GPU machine, or "
            "pass --device cpu for a dry run of the script on tiny shapes."
        )
    dev = torch.device("cuda:0" if cuda else "cpu")
    # the memory CUDA gives a process, and what is free once this one's context is made
    # and before it allocates anything (the difference is the context's own share)
    memory: dict[str, int] = {}
    if cuda:
        free_at_start, total_memory = torch.cuda.mem_get_info(dev)
        memory = {
            "memory_total_bytes": int(total_memory),
            "memory_free_at_start_bytes": int(free_at_start),
        }
    timer = Timer(torch, cuda, reps=20 if cuda else 3, warmup=3 if cuda else 1)
    fp8 = fp8_supported(torch, cuda)
    rotate = ROTATE_BYTES if cuda else 0
    gemm_shapes = (GEMM_SHAPES[::3] if quick else GEMM_SHAPES) if cuda else CPU_GEMM
    gemm = time_gemms(torch, timer, dev, gemm_shapes, fp8, rotate)
    attn = time_attention(
        torch,
        timer,
        dev,
        PREFILL if cuda else CPU_PREFILL,
        DECODE if cuda else CPU_DECODE,
        rotate,
    )
    gqa = time_gqa_decode(
        torch,
        timer,
        dev,
        GQA_DECODE
        if cuda
        else {**GQA_DECODE, "batch": 1, "heads": 4, "kv_heads": 2, "context": 32},
    )
    mem = time_memory(torch, timer, dev, (1024 if cuda else 1) * 2**20)
    elementwise = time_elementwise(torch, timer, dev, (8192, 4096) if cuda else (64, 32))
    cfg = (
        {
            "layers": 8,
            "hidden": 4096,
            "heads": 32,
            "kv_heads": 8,
            "batch": 8,
            "context": 1024,
            "prefill_tokens": 2048,
        }
        if cuda
        else {
            "layers": 2,
            "hidden": 64,
            "heads": 4,
            "kv_heads": 2,
            "batch": 2,
            "context": 16,
            "prefill_tokens": 16,
        }
    )
    step = time_decode_step(torch, timer, dev, cfg)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        where = (
            f"1x {props.name} ({props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, torch "
            f"{torch.__version__}"
        )
    else:
        where = f"DRY RUN on the CPU (torch {torch.__version__}): not a GPU measurement"
    return Points(
        device="",
        measured_on=where,
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source="benchmarks/gpu_measure.sh",
        gemm=tuple(gemm),
        attention=tuple(attn),
        copy_bytes_per_s=mem["copy_bytes_per_s"],
        kernel_overhead_s=mem["kernel_overhead_s"],
        extra={
            "launch_gap_s": mem["launch_gap_s"],
            "eager_dispatch_s": mem["eager_dispatch_s"],
            "timing": "CUDA graph replays" if cuda else "wall clock",
            "decode_step": step,
            "gqa_decode": gqa,
            "elementwise": elementwise,
            "fp8_measured": fp8,
            "operand_rotation_bytes": rotate,
            **memory,
        },
    )


_VARIANTS = ("pcie", "nvl")
"""Board variants a CUDA device name may state; a catalog device matches only when it is of
the same variant (an A100 PCIe is not the catalog's A100 SXM: other bandwidth and power)."""
_VENDOR_WORDS = frozenset({"nvidia", "amd", "instinct", "tesla", "geforce"})


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[\s\-_/]+", name.lower()) if t and t not in _VENDOR_WORDS]


def _variant(tokens: Sequence[str]) -> str:
    return next((v for v in _VARIANTS if v in tokens), "")


def match_device(catalog: Mapping[str, DeviceSpec], gpu_name: str) -> DeviceSpec:
    """The catalog device a CUDA device name describes: the same model (``H100``,
    ``A100``, ``L40S``, ...; the first word of a catalog name or alias), the same board
    variant (PCIe, NVL, or neither), and, when the name states a memory size such as
    ``40GB``, a catalog memory within 10% of it. No match is an
    :class:`~xpusim.engine.errors.XpusimError` saying which part did not fit."""
    tokens = _tokens(gpu_name)
    variant = _variant(tokens)
    sizes = [float(t[:-2]) * 1e9 for t in tokens if re.fullmatch(r"\d+gb", t)]
    model_hits: list[DeviceSpec] = []
    for spec in catalog.values():
        for name in (spec.name, *spec.aliases):
            words = _tokens(name)
            if words and words[0] in tokens and _variant(words) == variant:
                model_hits.append(spec)
                break
    fits = [
        s for s in model_hits if not sizes or abs(s.memory_bytes.value / sizes[0] - 1.0) <= 0.10
    ]
    if fits:
        return fits[0]
    what = {"pcie": "PCIe ", "nvl": "NVL "}.get(variant, "")
    if model_hits:
        why = (
            f"its {sizes[0] / 1e9:.0f} GB differ from the catalog's "
            f"{', '.join(f'{s.name} ({s.memory_bytes.value / 1e9:.0f} GB)' for s in model_hits)}"
        )
    else:
        why = f"no catalog device is a {what}board of that model"
    raise XpusimError(
        f"the CUDA device {gpu_name!r} matches no GPU catalog device: {why}; known: "
        f"{', '.join(sorted(catalog))}. Add it with a plugin's register_devices first "
        f"(docs/writing-a-backend.md), its name starting with the model as CUDA reports it."
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and write the points file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="points file to write")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument(
        "--catalog-device",
        default="",
        help="GPU catalog name the points describe (default: matched from the CUDA name)",
    )
    ap.add_argument("--quick", action="store_true", help="a third of the GEMM shapes")
    args = ap.parse_args(argv)
    pts = measure(args.device, args.quick)
    name = args.catalog_device
    if not name:
        if args.device != "cuda":
            raise SystemExit("gpu_measure: --device cpu needs --catalog-device NAME")
        import torch

        name = match_device(catalog(), torch.cuda.get_device_name(0)).name
    points_mod.save(Points(**{**pts.__dict__, "device": name}), args.out)
    print(
        f"wrote {args.out}: {len(pts.gemm)} GEMM and {len(pts.attention)} attention points; "
        f"copy {pts.copy_bytes_per_s or 0:.3g} B/s; decode step {pts.extra['decode_step']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
