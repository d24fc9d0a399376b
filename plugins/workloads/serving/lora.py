"""Multi-LoRA serving (Punica, S-LoRA, vLLM's multi-LoRA): many adapters over one model.

Each request names one of ``adapters`` low-rank adapters of rank ``rank`` (drawn from
the seed: uniformly, or by a Zipf law of exponent ``zipf`` over the adapters' ranks). An
adapter adds ``A`` (``in × r``) and ``B`` (``r × out``) beside each adapted weight of every
layer: the attention projections (``modules: attention``: q, k, v, o) or those and the
MLP's (``modules: all``).

Costs, per iteration of ``b`` sequences and ``n`` new tokens: ``2 n P`` extra FLOPs (``P``
the adapter's parameters), run as the kernels Punica and S-LoRA launch: per adapted
projection of every layer a shrink GEMM (``n x r x in``) and an expand GEMM (``n x out x
r``) adding into the projection's output, each priced by the backend's own op model (its
GEMM efficiency by shape, which is low for a rank-thin GEMM, and its per-kernel launch
cost), split over the replica's devices as the projections are, and added to the step.
How often the kernels read the adapters' weights is ``kernels``:

* ``shared`` (default; Punica's SGMV, vLLM's grouped LoRA kernels): each distinct adapter
  in the batch once (``E(b) = sum_i 1 - (1 - p_i)^b`` distinct adapters expected among
  ``b`` requests drawn with probabilities ``p_i``);
* ``gathered`` (S-LoRA's MBGMV for decodes and MBGMM for prompts, ``slora/csrc/bgmv`` and
  ``slora/models/peft/triton_kernel/lora/lora_prefill.py`` of github.com/S-LoRA/S-LoRA):
  a thread block per (sequence, rank row) gathers that sequence's adapter row from the
  unified pool, so every decoding sequence reads its adapter's weights once whoever else
  uses the same adapter, and every prompt once per 32-token block (MBGMM's ``BLOCK_M``).
  The backend prices those reads at memory bandwidth: rows another sequence just read may
  come from L2 instead, which the backend does not model, so with few adapters this is an
  upper bound.

A backend that does not price single ops gets the peak-rate bound (the larger of the FLOP
and ``shared`` weight-read times at the device's peaks).

Adapter memory, ``pool``:

* ``slots`` (default): each replica keeps ``gpu_slots`` adapters resident, least recently
  used evicted, their weights out of the KV memory; a request whose adapter is not
  resident waits for it to load over the host link (``adapter bytes / host_link``) before
  it can be scheduled, replayed in arrival order ahead of the run (every load its own,
  none queues behind another). The world then sees the request arrive when its adapter is
  in; the ``requests`` frame keeps the real arrival, so TTFT includes the load.
* ``unified`` (S-LoRA's unified paging, ``slora/server/router``): adapters live in the KV
  cache's pool (a rank-``r`` adapter on ``m`` projections takes the pool cells of ``m r``
  tokens on a model whose projections are all ``d`` wide), and the server keeps exactly
  the adapters of its running batch: after every finished request it offloads the
  others (``offload_adapters(batch.adapter_dirs)``), and before every prefill it loads
  the new requests' missing adapters synchronously on the GPU's stream
  (``load_adapters``, pinned host memory). So the KV cache gives up the expected
  distinct adapters of the batch it can hold, ``E(B)`` with ``B`` the whole sequences
  (mean prompt + output) the rest of it holds (solved for ``B``), and a prefill of ``k``
  new requests beside ``b - k`` running ones pays, on its own time, a load of ``adapter
  bytes / host_link`` for each distinct adapter of the new requests that no running one
  uses (``sum_i (1 - p_i)^(b - k) (1 - (1 - p_i)^k)`` expected). Requests do not wait
  outside the step; ``gpu_slots`` is not used.

Routing: the replay assigns replicas round-robin in arrival order, and the world follows
that assignment.

Not modelled: adapters of mixed ranks (give their mean), kernels that fuse several
projections' LoRA work into one launch, the host's launch cost of the extra kernels
(S-LoRA runs eagerly; its steps are long enough that the GPU, not the launches, sets
their time), and loads that contend for the link.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xpusim.engine.analytic import AnalyticCompiled
from xpusim.engine.backend import Compiled, Cost
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Op, OpKind, Phase, Shape
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import ServingRun, ServingTechnique
from xpusim.engine.qty import Bandwidth
from xpusim.plugins.workloads.serving.kvcache import KVLayout, PagedKVCache
from xpusim.plugins.workloads.serving.prefix_cache import AssignedRouter
from xpusim.plugins.workloads.serving.wrapped import WrappedCompiled

ADAPTER_BYTES_PER_PARAM = 2.0
"""Adapters are kept in 16-bit (vLLM loads LoRA weights in the model's 16-bit dtype)."""

MBGMM_BLOCK_M = 32
"""Prompt tokens per thread block of S-LoRA's prefill LoRA kernels (``BLOCK_M = 32`` in
``lora_get_qkvo_fwd_shrink`` and ``lora_get_qkvo_fwd_expand``): each block reads its
sequence's adapter rows once."""


class Lora(BaseModel):
    """``workload.lora``: the adapters, their popularity, the GPU slots and the host link."""

    model_config = ConfigDict(extra="forbid")

    adapters: int = Field(ge=1)
    rank: int = Field(ge=1)
    modules: Literal["attention", "all"] = "attention"
    zipf: float | None = Field(default=None, gt=0, description="Zipf exponent; none: uniform")
    kernels: Literal["shared", "gathered"] = "shared"
    pool: Literal["slots", "unified"] = "slots"
    gpu_slots: int | None = Field(default=None, ge=1)
    host_link: Bandwidth

    @model_validator(mode="after")
    def _slots_need_a_count(self) -> Lora:
        if self.pool == "slots" and self.gpu_slots is None:
            raise ValueError("lora.gpu_slots: `pool: slots` needs the resident adapter count")
        return self

    def popularity(self) -> np.ndarray:
        """Each adapter's probability of being a request's."""
        if self.zipf is None:
            return np.full(self.adapters, 1.0 / self.adapters)
        w = 1.0 / np.arange(1, self.adapters + 1, dtype=np.float64) ** self.zipf
        return w / w.sum()


LORA_METRICS: tuple[Metric, ...] = (
    detail(
        "lora_adapter_loads",
        "LoRA adapter loads",
        better="lower",
        description="adapters loaded from host memory because they were not resident",
    ),
    detail(
        "lora_load_wait_mean_s",
        "LoRA load wait (mean)",
        "s",
        better="lower",
        description="mean time a request waited for its adapter to load",
    ),
)
"""The metrics a multi-LoRA run adds."""


def adapter_params(model: ModelGraph, rank: int, modules: str) -> float:
    """Parameters of one adapter of ``rank`` on ``model`` (a decoder's dimensions)."""
    layers, pairs = adapted_projections(model, modules)
    return float(layers * rank * sum(i + o for i, o, _ in pairs))


def adapted_projections(model: ModelGraph, modules: str) -> tuple[int, list[tuple[int, int, bool]]]:
    """The model's layers and, per layer, each adapted projection as ``(in, out,
    row_parallel)``: q, k, v (column-parallel) and o (row-parallel), and with ``all`` the
    MLP's up and gate (column) and down (row) projections."""
    cfg = model.info.config
    try:
        d, layers = int(cfg["hidden"]), int(cfg["layers"])
        heads, kvh = int(cfg["heads"]), int(cfg.get("kv_heads") or cfg["heads"])
        hd = int(cfg.get("head_dim") or d // heads)
        f = int(cfg["ffn_hidden"])
    except (KeyError, TypeError, ValueError):
        raise XpusimError(
            f"workload.lora: the model {model.info.name!r} does not state a decoder's "
            f"dimensions (hidden, layers, heads, ffn_hidden); multi-LoRA serving needs them."
        ) from None
    pairs = [(d, heads * hd, False), (d, kvh * hd, False), (d, kvh * hd, False)]
    pairs.append((heads * hd, d, True))
    if modules == "all":
        pairs += [(d, f, False), (f, d, True)] + ([(d, f, False)] if cfg.get("gated_mlp") else [])
    return layers, pairs


class LoraCompiled(WrappedCompiled):
    """The model with adapters: every step pays the adapters' extra GEMMs and weight reads
    (module docstring), shared by the replica's ``devices`` (default: its tensor ×
    pipeline devices); the resident adapters' weights leave the KV memory."""

    def __init__(
        self,
        inner: Compiled,
        params: float,
        spec: Lora,
        devices: int = 0,
        sequence_tokens: float = 0.0,
    ) -> None:
        super().__init__(inner)
        self.devices = devices or max(1, inner.system.parallelism.model_parallel)
        self.params = params
        self.bytes = params * ADAPTER_BYTES_PER_PARAM
        self.spec = spec
        self.p = spec.popularity()
        self.sequence_tokens = sequence_tokens
        """Mean prompt + output tokens of a request: what a whole sequence holds in the KV
        cache, for the running batch a unified pool shares with (0: not known)."""

    def distinct(self, batch: float) -> float:
        """Expected distinct adapters among ``batch`` requests."""
        return float(np.sum(1.0 - (1.0 - self.p) ** batch))

    def missing(self, new: float, running: float) -> float:
        """Expected distinct adapters among ``new`` requests that none of ``running``
        requests uses: ``sum_i (1 - p_i)^running (1 - (1 - p_i)^new)``."""
        q = 1.0 - self.p
        return float(np.sum(q ** max(0.0, running) * (1.0 - q ** max(0.0, new))))

    def adapter_tokens(self) -> float:
        """KV tokens whose memory one adapter's weights take (0: the model keeps no KV)."""
        per_token = self.inner.model.info.kv_bytes_per_token
        return self.bytes / per_token if per_token > 0 else 0.0

    def resident(self, cap_tokens: int) -> float:
        """Adapters resident on one replica whose KV cache holds ``cap_tokens`` tokens
        before them: ``gpu_slots``, or (``pool: unified``) the expected distinct adapters
        ``E(B)`` of the batch ``B`` the rest holds, ``B * s + E(B) * a = cap`` (``s`` the
        mean sequence, ``a`` an adapter's tokens), solved by bisection."""
        if self.spec.pool == "slots":
            return float(self.spec.gpu_slots or 0)
        a, s = self.adapter_tokens(), self.sequence_tokens
        if a <= 0 or s <= 0 or cap_tokens <= 0:
            return 0.0
        lo, hi = 0.0, cap_tokens / s
        for _ in range(60):
            mid = (lo + hi) / 2
            if mid * s + self.distinct(mid) * a > cap_tokens:
                hi = mid
            else:
                lo = mid
        return self.distinct(lo)

    def running_batch(self, kv_tokens: int) -> float:
        """Whole sequences a replica's KV cache of ``kv_tokens`` (adapters taken out)
        holds: the running batch a unified pool's residents are drawn from."""
        return kv_tokens / self.sequence_tokens if self.sequence_tokens > 0 else 0.0

    def _analytic(self) -> AnalyticCompiled | None:
        """The backend's op-priced model under the wrappers, if it prices single ops."""
        c: Compiled = self.inner
        while isinstance(c, WrappedCompiled):
            c = c.inner
        return c if isinstance(c, AnalyticCompiled) else None

    def kernels(self, tokens: int, distinct: float) -> list[Op]:
        """The LoRA kernels of one iteration on one device (Punica's and S-LoRA's layout):
        per adapted projection of every layer a shrink GEMM (tokens x rank x in) and an
        expand GEMM (tokens x out x rank) that adds into the projection's output, reading
        the weights of ``distinct`` adapters once each (the distinct adapters of the
        batch; with ``kernels: gathered``, the weight reads of :meth:`reads`).
        Column-parallel projections split ``out`` over the replica's devices, row-parallel
        ones ``in``."""
        layers, pairs = adapted_projections(self.inner.model, self.spec.modules)
        r, n_dev = self.spec.rank, self.devices
        w = ADAPTER_BYTES_PER_PARAM
        dtype = self.inner.model.info.dtype
        ops: list[Op] = []
        for j, (d_in, d_out, row) in enumerate(pairs):
            i = -(-d_in // n_dev) if row else d_in
            o = d_out if row else -(-d_out // n_dev)
            ops.append(
                Op(
                    f"lora_shrink_{j}",
                    OpKind.MATMUL,
                    flops=2.0 * tokens * r * i,
                    bytes_read=w * (distinct * i * r + tokens * i),
                    bytes_written=w * tokens * r,
                    param_bytes=w * distinct * i * r,
                    dims=(tokens, r, i),
                    count=layers,
                    dtype=dtype,
                )
            )
            ops.append(
                Op(
                    f"lora_expand_{j}",
                    OpKind.MATMUL,
                    flops=2.0 * tokens * o * r,
                    bytes_read=w * (distinct * r * o + tokens * r + tokens * o),
                    bytes_written=w * tokens * o,
                    param_bytes=w * distinct * r * o,
                    dims=(tokens, o, r),
                    count=layers,
                    dtype=dtype,
                )
            )
        return ops

    def _cost(self, shape: Shape) -> Cost:
        c = self.inner.cost(shape)
        parts = shape.parts if shape.phase is Phase.MIXED else (shape,)
        batch = sum(p.batch for p in parts)
        if batch == 0:
            return c
        dev = self.system.device
        n_dev = self.devices
        flops = 2.0 * shape.new_tokens * self.params
        distinct = self.distinct(batch)
        priced = self._analytic()
        if priced is not None:  # the backend's GEMM model, by shape, with each launch
            reads = self.reads(parts) if self.spec.kernels == "gathered" else distinct
            times = [
                (priced.op_time(op), op.count)
                for op in self.kernels(max(1, shape.new_tokens), reads)
            ]
            t_flops = sum(t.compute_s * n for t, n in times)
            t_bytes = sum(t.memory_s * n for t, n in times)
            extra = sum(t.seconds * n for t, n in times)
        else:  # the device's peak rates: a lower bound
            t_flops = flops / (dev.flops(self.inner.model.info.dtype) * n_dev)
            t_bytes = distinct * self.bytes / (dev.memory_bw.value * n_dev)
            extra = max(t_flops, t_bytes)
        breakdown = dict(c.breakdown)
        key = "compute" if t_flops >= t_bytes else "memory"
        breakdown[key] = breakdown.get(key, 0.0) + extra
        load = self.load_seconds(parts, batch)
        if load > 0:
            breakdown["overhead"] = breakdown.get("overhead", 0.0) + load
            extra += load
        joules = c.joules * (c.seconds + extra) / c.seconds if c.seconds > 0 else c.joules
        return Cost(
            seconds=c.seconds + extra, joules=joules, breakdown=breakdown, flops=c.flops + flops
        )

    def reads(self, parts: Sequence[Shape]) -> float:
        """Adapter weight reads of one iteration with ``kernels: gathered`` (S-LoRA's
        MBGMV and MBGMM): one per decoding sequence, one per :data:`MBGMM_BLOCK_M`-token
        block of every prompt chunk."""
        n = 0.0
        for p in parts:
            if p.phase is Phase.PREFILL:
                n += p.batch * -(-max(1, p.tokens) // MBGMM_BLOCK_M)
            else:
                n += p.batch
        return n

    def load_seconds(self, parts: Sequence[Shape], batch: int) -> float:
        """Adapter loads an iteration waits for with ``pool: unified``: the distinct
        adapters of its new prompts (prefills from the start of their sequence) that no
        running request uses are loaded over the host link before the iteration runs
        (S-LoRA's ``load_adapters`` of the new batch's adapter set)."""
        if self.spec.pool != "unified":
            return 0.0
        new = sum(p.batch for p in parts if p.phase is Phase.PREFILL and p.context == 0)
        if new == 0:
            return 0.0
        return self.missing(new, batch - new) * self.bytes / self.spec.host_link

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """The base model's KV capacity less the resident adapters' weights
        (:meth:`resident`)."""
        cap = self.inner.kv_capacity_tokens(reserve_fraction)
        a = self.adapter_tokens()
        if a <= 0:
            return cap
        return max(0, cap - int(np.ceil(self.resident(cap) * a)))


@dataclass
class LoraRun:
    """The adapter replay of one system: the frame the world serves (arrivals moved to
    when each adapter is in), the replica assignment in the world's routing order, and
    what restores the real arrivals."""

    frame: pl.DataFrame
    assignment: list[int]
    arrival: np.ndarray
    order: np.ndarray
    metrics: dict[str, float]

    def restore(self, requests: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        """The ``requests`` frame with each request's real arrival, TTFT and E2E."""
        real = pl.lit(pl.Series(self.arrival[self.order])).gather(pl.col("request_id"))
        return requests.with_columns(real.alias("arrival_s")).with_columns(
            (pl.col("first_token_s") - pl.col("arrival_s")).alias("ttft_s"),
            (pl.col("finish_s") - pl.col("arrival_s")).alias("e2e_s"),
        )


def replay(
    spec: Lora,
    frame: pl.DataFrame,
    compiled: LoraCompiled,
    *,
    replicas: int,
    kv_capacity_tokens: int,
    kv_block_tokens: int,
    seed: int,
    layout: KVLayout | None = None,
) -> LoraRun:
    """Draw each request's adapter, replay every replica's resident slots in arrival
    order, and move each arrival to when its adapter is loaded. ``layout`` is the model's
    KV layout: a request is left unrouted exactly when the world drops it, by the peak KV
    it holds (a sliding window's layers keeping only their window)."""
    if not frame["arrival_s"].is_sorted():
        frame = frame.sort("arrival_s", maintain_order=True)
    n = frame.height
    rng = np.random.default_rng([seed, 0x10A])
    adapter = rng.choice(spec.adapters, size=n, p=compiled.p)
    arrival = frame["arrival_s"].to_numpy().astype(np.float64)
    kv = PagedKVCache(kv_capacity_tokens // kv_block_tokens, kv_block_tokens, layout)
    need = kv.peak_blocks_of(
        frame["prompt_tokens"].to_numpy() + frame["output_tokens"].to_numpy() - 1
    )
    fits = need <= kv.total_blocks
    load_s = compiled.bytes / spec.host_link
    if spec.pool == "unified":  # the running batch's adapters; loads are in the steps
        held = compiled.distinct(compiled.running_batch(kv_capacity_tokens))
        gpu_slots, wait_s = max(1, round(held)), 0.0
    else:
        gpu_slots, wait_s = int(spec.gpu_slots or 1), load_s
    slots: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(replicas)]
    replica = np.full(n, -1, dtype=np.int64)
    ready = arrival.copy()
    loads = 0
    k = 0
    for i in range(n):
        if not fits[i]:
            continue  # the world drops it unrouted
        r = k % replicas
        k += 1
        replica[i] = r
        s, a = slots[r], int(adapter[i])
        if a in s:
            s.move_to_end(a)
            continue
        loads += 1
        ready[i] = arrival[i] + wait_s
        s[a] = None
        if len(s) > gpu_slots:
            s.popitem(last=False)
    order = np.argsort(ready, kind="stable")
    moved = frame.with_columns(pl.Series("arrival_s", ready)).sort("arrival_s", maintain_order=True)
    assignment = [int(replica[i]) for i in order.tolist() if replica[i] >= 0]
    routed = max(k, 1)
    return LoraRun(
        frame=moved,
        assignment=assignment,
        arrival=arrival,
        order=order,
        metrics={
            "lora_adapter_loads": float(loads),
            "lora_load_wait_mean_s": loads * wait_s / routed,
        },
    )


class LoraTechnique(ServingTechnique):
    """``lora``: many adapters over one model, their GEMMs in every step and their loads
    replayed ahead of the run (module docstring); registered by the built-in workload
    plugin."""

    name = "lora"
    description = "multi-LoRA serving: adapters' extra GEMMs, resident slots, loads from host"
    kind = "step"
    schema = Lora
    metrics = LORA_METRICS
    order = 140

    def check(self, spec: Lora, config: Any, others: Sequence[str]) -> None:
        """The adapter replay routes round-robin, and is not combined with prefix caching;
        resident slots move arrivals ahead of the run, so they take no client concurrency
        limit (whose sending instants are known only as the run goes)."""
        if "prefix_caching" in others or config.router != "round-robin":
            raise ValueError(
                "multi-LoRA serving replays adapter loads ahead of the run over round-robin "
                "routing: set `router: round-robin`, and leave `prefix_caching` out (the two "
                "replays are not combined)"
            )
        if spec.pool == "slots" and config.client_limit() is not None:
            raise ValueError(
                "multi-LoRA serving with resident slots replays each adapter load from the "
                "request's arrival ahead of the run, which a client concurrency limit "
                "(`concurrency`, process: closed) moves during it: use `pool: unified`, or "
                "replay the traffic without `concurrency`"
            )

    def price(self, spec: Lora, run: ServingRun) -> None:
        """Add the adapters' GEMMs and weight reads to every step of a replica."""
        params = adapter_params(run.ctx.model, spec.rank, spec.modules)
        f = run.frame
        both = (f["prompt_tokens"] + f["output_tokens"]).to_numpy()
        seq = float(np.mean(both)) if both.size else 0.0
        compiled = LoraCompiled(
            run.compiled, params, spec, devices=run.devices_per_replica, sequence_tokens=seq
        )
        run.compiled = run.state[self.name] = compiled

    def replay(self, spec: Lora, run: ServingRun) -> None:
        """Replay the adapter slots: delay requests until their adapter is in, route by
        the replay's assignment, restore the real arrivals after the run."""
        adapters = replay(
            spec,
            run.frame,
            run.state[self.name],
            replicas=run.replicas,
            kv_capacity_tokens=run.kv_capacity_tokens,
            kv_block_tokens=run.config.kv_block_tokens,
            seed=run.ctx.seed,
            layout=KVLayout.of(run.compiled.model.info),
        )
        run.frame = adapters.frame
        run.router = AssignedRouter(adapters.assignment)
        run.metrics.update(adapters.metrics)
        run.restore(adapters.restore)
