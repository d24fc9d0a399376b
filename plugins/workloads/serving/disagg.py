"""Disaggregated prefill and decode (Splitwise, DistServe, Mooncake, Dynamo).

The system's devices are split into a **prefill pool** and a **decode pool**, each of its
own replicas (``count`` devices of ``tensor``-parallel replicas each; the two counts add
up to the system's). A request is prefilled in the prefill pool, which produces its first
token; its KV cache (``prompt × KV bytes per token``) then crosses the link that joins the
pools, and the decode pool generates the other tokens. Both pools are serving worlds of
their own with their queues, batching and KV caches:

* the prefill pool serves each request as a one-token request (its scheduler is the
  scenario's);
* the KV transfer takes ``latency + bytes / bandwidth`` over the chosen link (``scale-out``,
  the network between nodes, by default; ``scale-up``, the node's fabric; or a stated
  ``{bandwidth, latency}``). With ``layerwise: true`` (Mooncake, DistServe) each layer's
  KV is sent as soon as the layer is prefilled, so the transfer overlaps the prefill and
  only what outlasts it is exposed: ``latency + max(bytes / bandwidth − prefill time,
  bytes / (bandwidth × layers))``;
* the decode pool receives the request when its KV has arrived and generates ``output −
  1`` tokens under continuous batching (``max_batch`` from the scenario's scheduler; the
  token budget does not apply since no prompt is computed). The iteration that admits a
  request is priced as its first decode step over the prompt's context, not a prefill.

The ``requests`` frame joins both: arrival, first scheduling and first token from the
prefill pool, finish from the decode pool, ``replica`` the decode replica (numbered after
the prefill replicas); the ``steps`` and ``devices`` frames hold both pools (prefill
replicas first), so energy and cost count every device; the token gaps are the decode
pool's plus each request's hand-off gap (first token to second).

Pools of different devices: a pool may name its own ``device`` (and ``backend``), so the
prefill pool runs on one chip and the decode pool on another (H100s prefilling for H200s,
say); each pool is compiled on its own device with that device's links, and the KV then
crosses the network between nodes, the slower of the two devices' ``scale-out`` links
(a ``scale-up`` link is refused: no node fabric joins two kinds of device). The
``devices`` frame then names each row's device (its ``device_name`` column,
:data:`~xpusim.engine.frames.DEVICE_NAME`), so the economics prices each pool on its own
device: its busy joules, its idle power, its nodes' host power and its device-seconds at
its device's price (the system's own device keeps the scenario's price for it). A
misspelled pool device is refused when the scenario is validated.

Not modelled: a transfer's contention with other transfers on the link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from xpusim.engine.backend import Compiled, Cost
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.frames import DEVICE_NAME, FrameMap, collect
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.metrics import Metric, detail
from xpusim.engine.model import ModelGraph
from xpusim.engine.policies import SchedulerSpec, ServingRun, ServingTechnique, context_host
from xpusim.engine.qty import Bandwidth, DurationOrZero
from xpusim.engine.registry import nearest
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads.serving.schemas import tbt_mean
from xpusim.plugins.workloads.serving.world import ServingResult, simulate_serving
from xpusim.plugins.workloads.serving.wrapped import WrappedCompiled

BIG_BUDGET = 1 << 40
"""The decode pool's token budget: no prompt is computed there, so none limits a batch."""


class Pool(BaseModel):
    """One pool: its devices and the tensor parallelism of its replicas.

    ``device`` names the pool's device (a device of ``backend``, by default the system's
    backend); left out, the pool runs on the system's device. Pools of different devices
    sit in different nodes: the KV crosses the network between them.
    """

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1)
    tensor: int = Field(default=1, ge=1)
    backend: str | None = Field(
        default=None, description="the backend of `device`; the system's if left out"
    )
    device: str | None = Field(
        default=None, description="the pool's device; the system's if left out"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Refuse, at load, a device no backend has (the nearest named), so ``xpusim
        validate`` catches a misspelled one; inside a scenario only (the validation
        context holds the plugin host)."""
        host = context_host(info)
        if value is None or host is None:
            return value
        try:
            known_device(host, value, info.data.get("backend"))
        except XpusimError as exc:
            raise ValueError(str(exc)) from None
        return value


def known_device(host: Any, name: str, backend: str | None) -> None:
    """Raise :class:`XpusimError` unless ``name`` is a device of ``backend`` or, with no
    backend named (the system's, not known at load), of some backend. The message is the
    backend's own, with its devices and the nearest: the named backend's, else that of the
    backend whose devices hold the nearest name."""
    if backend is not None:
        host.device(backend, name)
        return
    owner: dict[str, str] = {}
    for other in host.backends.names():
        try:
            devs = host.backends.get(other).devices()
        except XpusimError:  # a plugin that fails to load has no devices to offer
            continue
        for n in (*devs, *(a for spec in devs.values() for a in spec.aliases)):
            owner.setdefault(n, other)
        if name in owner:
            return
    near = nearest(name, list(owner))
    if near is not None:
        host.device(owner[near], name)
    raise XpusimError(
        f"unknown device {name!r}: no backend has it (`xpusim devices` lists them); name "
        f"the pool's `backend` with it if it is another backend's than the system's."
    )


class Link(BaseModel):
    """A stated link between the pools."""

    model_config = ConfigDict(extra="forbid")

    bandwidth: Bandwidth
    latency: DurationOrZero = 0.0


class Disaggregation(BaseModel):
    """``workload.disaggregation``: the two pools, the link joining them, and which
    systems of the scenario are disaggregated (all when ``systems`` is left out)."""

    model_config = ConfigDict(extra="forbid")

    prefill: Pool
    decode: Pool
    link: Literal["scale-out", "scale-up"] | Link = "scale-out"
    layerwise: bool = True
    systems: list[str] | None = None

    def applies(self, system: str) -> bool:
        """Whether ``system`` runs disaggregated."""
        return self.systems is None or system in self.systems


DISAGG_METRICS: tuple[Metric, ...] = (
    detail(
        "kv_transfer_mean_s",
        "KV transfer exposed (mean)",
        "s",
        better="lower",
        description="mean time a request's KV transfer to the decode pool added",
    ),
    detail("prefill_replicas", "Prefill replicas", description="replicas of the prefill pool"),
    detail("decode_replicas", "Decode replicas", description="replicas of the decode pool"),
    detail(
        "prefill_device_s",
        "Prefill pool device-seconds",
        "s",
        description="devices of the prefill pool x the run's span, priced at its device's price",
    ),
    detail(
        "decode_device_s",
        "Decode pool device-seconds",
        "s",
        description="devices of the decode pool x the run's span, priced at its device's price",
    ),
)
"""The metrics a disaggregated run adds."""


class DecodePoolCompiled(WrappedCompiled):
    """The decode pool's prices: a prompt part (a request that arrives with its KV) is
    its first decode step over that context, not a prefill."""

    def _cost(self, shape: Shape) -> Cost:
        def as_decode(p: Shape) -> Shape:
            if p.phase is not Phase.PREFILL:
                return p
            return Shape(Phase.DECODE, batch=p.batch, tokens=1, context=p.context + p.tokens)

        if shape.phase is Phase.MIXED:
            parts = [as_decode(p) for p in shape.parts]
            batch = sum(p.batch for p in parts)
            ctx = sum(p.batch * p.context for p in parts) // max(1, batch)
            return self.inner.cost(Shape(Phase.DECODE, batch=batch, tokens=1, context=ctx))
        return self.inner.cost(as_decode(shape))


@dataclass
class Pools:
    """The two compiled pools of one system; ``named``: whether a pool runs on another
    device than the system's, so the ``devices`` frame names each row's device."""

    prefill: Compiled
    decode: Compiled
    prefill_system: System
    decode_system: System
    bandwidth: float
    latency: float
    named: bool = False


def pool_system(system: System, role: str, pool: Pool, where: str) -> System:
    """The sub-system of one pool: its devices (the system's, or the pool's ``device`` of
    its ``backend``), count and tensor parallelism; a pool of another device gets that
    device's own links (its node fabric inside a replica)."""
    from xpusim.engine.host import default_host

    sub = replace(
        system,
        name=f"{system.name}-{role}",
        count=pool.count,
        parallelism=Parallelism(tensor=pool.tensor),
    )
    backend = pool.backend or system.backend
    if pool.device is None and backend == system.backend:
        return sub
    if pool.device is None:
        raise XpusimError(
            f"system {system.name!r}: {where} names backend {backend!r} but no device; add "
            f"`device:` (a device of {backend!r}, `xpusim devices --backend {backend}`)."
        )
    spec = default_host().device(backend, pool.device, where=f"{where}.device")
    up = spec.scale_up or spec.scale_out
    out = spec.scale_out or spec.scale_up
    if up is None or out is None:
        if pool.tensor > 1:
            raise XpusimError(
                f"system {system.name!r}: {where}: device {spec.name!r} has no published "
                f"link, so its replicas of tensor={pool.tensor} cannot be priced; use "
                f"tensor: 1 or a device with a scale-up fabric."
            )
        topo = replace(system.topology, devices_per_node=spec.devices_per_node)
    else:
        topo = Topology.from_links(spec.devices_per_node, up, out)
    return replace(sub, backend=backend, device=spec, topology=topo)


def _between(spec: Disaggregation, system: System, ps: System, ds: System) -> tuple[float, float]:
    """Bandwidth and latency of the link joining the pools: a stated one; the system's
    ``scale-up`` fabric (pools of one device only); or the network between nodes, the
    slower end's when the pools' devices differ."""
    if isinstance(spec.link, Link):
        return float(spec.link.bandwidth), float(spec.link.latency)
    same = ps.device.name == ds.device.name and ps.backend == ds.backend
    if spec.link == "scale-up":
        if not same:
            raise XpusimError(
                f"system {system.name!r}: workload.disaggregation.link is scale-up, but the "
                f"pools are {ps.device.name!r} and {ds.device.name!r} devices, which no node "
                f"fabric joins; use `link: scale-out` or state one: {{bandwidth: 50 GB/s, "
                f"latency: 5 us}}."
            )
        topo = system.topology
        return float(topo.intra_bw), float(topo.intra_latency)
    ends = [system.topology] if same else [ps.topology, ds.topology]
    return (
        float(min(t.inter_bw for t in ends)),
        float(max(t.inter_latency for t in ends)),
    )


def pools(spec: Disaggregation, system: System, model: ModelGraph) -> Pools:
    """Compile ``model`` on each pool of ``system`` (each on its own device); refuse
    pools that do not add up to the system or do not divide into replicas."""
    from xpusim.engine.host import default_host

    p, d = spec.prefill, spec.decode
    if p.count + d.count != system.count:
        raise XpusimError(
            f"system {system.name!r}: workload.disaggregation puts {p.count} device(s) in the "
            f"prefill pool and {d.count} in the decode pool, {p.count + d.count} in all, but "
            f"the system has {system.count}; make the two counts add up to {system.count}."
        )
    for name, pool in (("prefill", p), ("decode", d)):
        if pool.count % pool.tensor:
            raise XpusimError(
                f"system {system.name!r}: workload.disaggregation.{name} has {pool.count} "
                f"device(s) for replicas of tensor={pool.tensor}; use a multiple of {pool.tensor}."
            )
    host = default_host()

    def compiled(name: str, pool: Pool) -> tuple[System, Compiled]:
        sub = pool_system(system, name, pool, f"workload.disaggregation.{name}")
        try:
            return sub, host.backends.get(sub.backend).compile(model, sub)
        except XpusimError as exc:
            if sub.device is system.device:
                raise
            raise XpusimError(
                f"system {system.name!r}: the {name} pool on {sub.device.name!r}: {exc}"
            ) from None

    ps, pc = compiled("prefill", p)
    ds, dc = compiled("decode", d)
    bw, lat = _between(spec, system, ps, ds)
    named = ps.device is not system.device or ds.device is not system.device
    return Pools(pc, DecodePoolCompiled(dc), ps, ds, bw, lat, named)


def serve(
    spec: Disaggregation,
    pool: Pools,
    frame: pl.DataFrame,
    *,
    wrap: Any,
    scheduler: SchedulerSpec,
    kv_block_tokens: int,
    kv_memory_fraction: float,
    system: str,
    seed: int,
) -> tuple[dict[str, pl.DataFrame], float, dict[str, float]]:
    """Run the prefill pool, move each KV cache, run the decode pool, and join the frames.

    ``wrap`` puts a compiled pool under the serving stack. Returns the frames, the
    simulated span and the pool metrics.
    """
    if not frame["arrival_s"].is_sorted():
        frame = frame.sort("arrival_s", maintain_order=True)
    prefill_c, decode_c = wrap(pool.prefill), wrap(pool.decode)
    pf_kv = prefill_c.kv_capacity_tokens(kv_memory_fraction)
    longest = int(frame["prompt_tokens"].to_numpy().max(initial=0))
    if pf_kv < longest:
        raise XpusimError(
            f"system {system!r}: a prefill replica of workload.disaggregation.prefill holds "
            f"{pf_kv:,} KV tokens, less than the longest prompt ({longest:,} tokens), so it "
            f"cannot hold a single such prompt; give the prefill pool larger replicas "
            f"(`tensor`) or a device with more memory."
        )
    ones = frame.with_columns(pl.lit(1, dtype=pl.Int64).alias("output_tokens"))

    def run(reqs: pl.DataFrame, c: Compiled, sub: System, sched: SchedulerSpec) -> ServingResult:
        return simulate_serving(
            reqs,
            c,
            system=system,
            replicas=sub.replicas,
            devices_per_replica=sub.parallelism.model_parallel,
            scheduler=sched,
            kv_block_tokens=kv_block_tokens,
            kv_capacity_tokens=c.kv_capacity_tokens(kv_memory_fraction),
            seed=seed,
        )

    pre = run(ones, prefill_c, pool.prefill_system, scheduler)
    preq = collect(pre.frames["requests"])
    model = pool.prefill.model.info
    prompt = frame["prompt_tokens"].to_numpy()
    out = frame["output_tokens"].to_numpy()
    first = preq["first_token_s"].to_numpy()
    began = preq["first_scheduled_s"].to_numpy()
    nbytes = (  # a window's layers send only the window's tokens (model.kv_sequence_bytes)
        prompt * model.kv_bytes_per_token
        if not model.kv_window
        else model.kv_full_bytes_per_token * prompt
        + model.kv_window_bytes_per_token * np.minimum(prompt, model.kv_window)
    )
    wire = nbytes / pool.bandwidth
    if spec.layerwise:
        exposed = np.maximum(wire - (first - began), wire / max(1, model.layers))
    else:
        exposed = wire
    transfer = pool.latency + exposed
    ok = preq["status"].to_numpy() == "ok"
    go = ok & (out > 1)
    at = np.where(go, first + np.nan_to_num(transfer), np.inf)
    order = np.argsort(at, kind="stable")
    keep = order[: int(go.sum())]
    dec_in = pl.DataFrame(
        {
            "arrival_s": at[keep],
            "prompt_tokens": prompt[keep],
            "output_tokens": out[keep] - 1,
        },
        schema={"arrival_s": pl.Float64, "prompt_tokens": pl.Int64, "output_tokens": pl.Int64},
    )
    dec_spec = SchedulerSpec(
        kind="continuous", max_batch=scheduler.max_batch, max_batch_tokens=BIG_BUDGET
    )
    if dec_in.height:
        dec = run(dec_in, decode_c, pool.decode_system, dec_spec)
        dreq = collect(dec.frames["requests"])
    else:
        dec, dreq = None, None
    span = max(pre.simulated_s, dec.simulated_s if dec is not None else 0.0)
    frames = _join(
        frame,
        preq,
        dreq,
        keep,
        first,
        pool.prefill_system.replicas,
        pool.prefill_system.count,
        pre,
        dec,
        span,
        system,
    )
    if pool.named:
        frames["devices"] = name_devices(
            frames["devices"],
            pool.prefill_system.replicas,
            pool.prefill_system.device.name,
            pool.decode_system.device.name,
        )
    moved = transfer[go]
    metrics = {
        "kv_transfer_mean_s": float(moved.mean()) if moved.size else 0.0,
        "prefill_replicas": float(pool.prefill_system.replicas),
        "decode_replicas": float(pool.decode_system.replicas),
        "prefill_device_s": float(pool.prefill_system.count * span),
        "decode_device_s": float(pool.decode_system.count * span),
    }
    return frames, span, metrics


def name_devices(devices: pl.DataFrame, offset: int, prefill: str, decode: str) -> pl.DataFrame:
    """``devices`` with each row's device named (:data:`DEVICE_NAME`): ``prefill`` for the
    prefill pool's replicas (numbered below ``offset``), ``decode`` for the others."""
    return devices.with_columns(
        pl.when(pl.col("replica") < offset)
        .then(pl.lit(prefill, pl.String))
        .otherwise(pl.lit(decode, pl.String))
        .alias(DEVICE_NAME)
    )


def _idle_until(devices: pl.DataFrame, span: float) -> pl.DataFrame:
    """``devices`` with each device's timeline carried on, idle, to ``span`` (a pool that
    finished early idles while the other works)."""
    last = devices.group_by("system", "replica", "device", maintain_order=True).agg(
        pl.col("end_s").max()
    )
    tail = (
        last.filter(pl.col("end_s") < span)
        .with_columns(
            pl.col("end_s").alias("start_s"),
            pl.lit(span).alias("end_s"),
            pl.lit("idle").alias("state"),
            pl.lit(0.0).alias("joules"),
        )
        .select(devices.columns)
        .cast(devices.schema)
    )
    return pl.concat([devices, tail]) if tail.height else devices


def _join(
    frame: pl.DataFrame,
    preq: pl.DataFrame,
    dreq: pl.DataFrame | None,
    keep: np.ndarray,
    first: np.ndarray,
    offset: int,
    first_device: int,
    pre: ServingResult,
    dec: ServingResult | None,
    span: float,
    system: str,
) -> dict[str, pl.DataFrame]:
    """The joined ``requests``, ``steps``, ``devices`` and ``tbt`` frames, every device's
    timeline carried on to ``span``, the run's."""
    req = preq.with_columns(pl.Series("output_tokens", frame["output_tokens"].to_numpy()))
    handoff: list[float] = []
    if dreq is not None:
        rows = keep[dreq["request_id"].to_numpy()]
        d_first = dreq["first_token_s"].to_numpy()
        gap = d_first - first[rows]
        handoff = gap[~np.isnan(gap)].tolist()
        d = pl.DataFrame(
            {
                "request_id": rows.astype(np.int64),
                "d_replica": (dreq["replica"] + offset).cast(pl.Int32),
                "d_finish": dreq["finish_s"],
                "d_status": dreq["status"],
                "d_reason": dreq["reason"],
                "d_pre": dreq["preemptions"],
                "d_gapmax": pl.Series(
                    np.fmax(dreq["tbt_max_s"].fill_null(np.nan).to_numpy(), gap)
                ).fill_nan(None),
            }
        )
        req = (
            req.join(d, on="request_id", how="left")
            .with_columns(
                pl.coalesce("d_replica", "replica").alias("replica"),
                pl.coalesce("d_finish", "finish_s").alias("finish_s"),
                pl.when(pl.col("d_status") == "dropped")
                .then(pl.lit("dropped"))
                .otherwise(pl.col("status"))
                .alias("status"),
                pl.coalesce("d_reason", "reason").alias("reason"),
                (pl.col("preemptions") + pl.col("d_pre").fill_null(0)).alias("preemptions"),
                pl.col("d_gapmax").alias("tbt_max_s"),
            )
            .drop("d_replica", "d_finish", "d_status", "d_reason", "d_pre", "d_gapmax")
        )
    req = req.with_columns(
        (pl.col("finish_s") - pl.col("arrival_s")).alias("e2e_s"),
        tbt_mean(),
    ).select(preq.columns)
    steps = [collect(pre.frames["steps"])]
    devices = [_idle_until(collect(pre.frames["devices"]), span)]
    tbt = [collect(pre.frames["tbt"])]
    if dec is not None:
        f = collect(dec.frames["steps"])
        steps.append(f.with_columns((pl.col("replica") + offset).cast(f.schema["replica"])))
        f = _idle_until(collect(dec.frames["devices"]), span)
        devices.append(
            f.with_columns(
                (pl.col("replica") + offset).cast(f.schema["replica"]),
                (pl.col("device") + first_device).cast(f.schema["device"]),
            )
        )
        tbt.append(collect(dec.frames["tbt"]))
    if handoff:
        tbt.append(
            pl.DataFrame(
                {"system": [system] * len(handoff), "gap_s": handoff, "tokens": [1] * len(handoff)},
                schema=tbt[0].schema,
            )
        )
    return {
        "requests": req,
        "steps": pl.concat(steps),
        "devices": pl.concat(devices),
        "tbt": pl.concat(tbt),
    }


class DisaggregationTechnique(ServingTechnique):
    """``disaggregation``: a prefill pool and a decode pool joined by a link (module
    docstring), a pool layout that serves the run itself; registered by the built-in
    workload plugin."""

    name = "disaggregation"
    description = "disaggregated prefill and decode: two pools, KV moved over the link"
    kind = "pool-layout"
    schema = Disaggregation
    metrics = DISAGG_METRICS
    order = 300

    def check(self, spec: Disaggregation, config: Any, others: Sequence[str]) -> None:
        """The pools are plain serving worlds: no other technique block beside them, and
        no client concurrency limit (the pools run one after the other, so the sending
        instants cannot wait for the decode pool's finishes)."""
        if others:
            raise ValueError(
                f"disaggregated serving is not combined with {', '.join(others)} yet: "
                f"compare them in separate scenarios"
            )
        if config.client_limit() is not None:
            raise ValueError(
                "disaggregated serving is not combined with a client concurrency limit yet "
                "(`concurrency`, process: closed): its pools are simulated one after the "
                "other, so a request cannot be sent when another finishes decoding; replay "
                "the traffic without `concurrency`"
            )

    def check_system(self, spec: Disaggregation | None, system: System, model: ModelGraph) -> None:
        """Each pool of a system the block applies to resolves and compiles (its device
        on its backend, its counts and tensor degree), so that ``xpusim validate`` refuses
        what the run would."""
        if spec is None or not spec.applies(system.name):
            return
        try:
            pools(spec, system, model)
        except ScenarioError:
            raise
        except XpusimError as exc:
            raise ScenarioError(str(exc)) from None

    def active(self, spec: Disaggregation | None, ctx: WorkloadContext) -> bool:
        """On for the systems the block names (every system when it names none)."""
        return spec is not None and spec.applies(ctx.system.name)

    def serve(self, spec: Disaggregation, run: ServingRun) -> tuple[FrameMap, float]:
        """Serve on the prefill pool, move each KV cache, serve on the decode pool."""
        system = run.ctx.system
        if system.parallelism.expert > 1:
            raise XpusimError(
                f"system {system.name!r}: disaggregated pools are tensor-parallel "
                f"replicas; expert parallelism is not combined with them yet."
            )
        config = run.config
        frames, span, extra = serve(
            spec,
            pools(spec, system, run.ctx.model),
            run.frame,
            wrap=run.stack,
            scheduler=config.scheduler,
            kv_block_tokens=config.kv_block_tokens,
            kv_memory_fraction=config.kv_memory_fraction,
            system=system.name,
            seed=run.ctx.seed,
        )
        run.metrics.update(extra)
        run.metrics["replicas"] = extra["prefill_replicas"] + extra["decode_replicas"]
        return dict(frames), span
