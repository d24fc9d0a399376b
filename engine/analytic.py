"""Reusable roofline machinery for analytic backends (GPU, TPU, any chip priced by formula).

A backend supplies three small functions and gets a full :class:`~xpusim.engine.backend.Compiled`:

* ``price_op(op) -> OpTime``: the compute-bound and memory-bound times of one instance of
  a non-collective op on one device, plus a fixed overhead (kernel launch, pipeline
  fill). The op's time is ``max(compute_s, memory_s) + overhead_s``: compute and memory
  traffic overlap inside a kernel (the roofline), fixed costs do not.
* ``collective(kind, nbytes, group) -> seconds``: one collective of ``nbytes`` per device
  over ``group`` devices (normally :func:`xpusim.engine.collectives.collective_seconds` over the
  system's topology).
* a :class:`~xpusim.engine.power.PowerModel` for energy.

Pricing one step (:meth:`AnalyticCompiled._cost`):

1. ``graph = model.build(shape, system.parallelism)`` (one device's ops of one pipeline
   stage), then the optional ``fuse(graph)``.
2. Every op is priced once per distinct :class:`~xpusim.engine.graph.Op` (cached across shapes)
   and multiplied by ``op.count``. Its bound time goes to ``breakdown["compute"]`` when
   ``compute_s >= memory_s``, else to ``breakdown["memory"]``; ``overhead_s`` goes to
   ``breakdown["overhead"]``; collective ops go to ``breakdown["comm"]`` (communication
   is not overlapped with compute: tensor-parallel all-reduces sit on the critical path).
3. With ``pipeline = P > 1`` stages, one step of one replica runs the stages one after
   another (no micro-batching inside a step), so ``seconds = P × stage seconds`` and the
   breakdown is scaled by ``P``; each of the ``tensor × P`` devices is busy for one stage,
   so ``joules = power.joules(stage breakdown, devices=tensor × P)``.
4. ``flops`` = graph FLOPs × model-parallel devices (the whole replica's work).

Memory fit (:meth:`AnalyticCompiled.fit`, :meth:`AnalyticCompiled.memory_need`): per
device, weights ``model.weight_bytes_per_device(parallelism)`` (``param_bytes / (tensor ×
pipeline)``, routed experts also split over ``expert``), KV cache ``kv_tokens ×
model.kv_bytes_per_token_per_device(parallelism)`` (``kv_bytes_per_token / (tensor ×
pipeline)`` unless the model's cache does not split so), live activations (twice the
largest op output of a step of ``batch``) and a fixed runtime reserve the backend states (CUDA context,
library workspaces). When it does not fit the reason says by how many GB, and the
suggestion names how many devices of this kind with tensor parallelism would hold it and
which catalog devices of the same backend have enough memory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xpusim.engine.backend import Compiled, Cost, Fit, StageCosts
from xpusim.engine.collectives import P2PSchedule
from xpusim.engine.device import DeviceSpec, Figure
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System

P2PPrice = Callable[[float, int, P2PSchedule], float]
"""The seconds of one all-reduce of ``(bytes per device, group, schedule)`` inside a node
by one peer-to-peer kernel (:data:`~xpusim.engine.collectives.P2PSchedule`)."""

P2PPricer = Callable[[str], tuple[P2PPrice | None, str]]
"""A backend's model of the serving engines' peer-to-peer all-reduce kernels: for a kernel
name, its :data:`P2PPrice`, or ``None`` where the backend has no profile of it on this
system, and a sentence saying which (:meth:`AnalyticCompiled.with_allreduce_kernel`)."""

__all__ = ["BREAKDOWN_KEYS", "AnalyticCompiled", "OpTime", "roofline"]

BREAKDOWN_KEYS = ("compute", "memory", "comm", "overhead")
"""The cause keys of an analytic step's breakdown (and the power states they map to)."""

GB = 1e9


@dataclass(frozen=True, slots=True)
class OpTime:
    """Time of one op instance on one device.

    ``seconds = max(compute_s, memory_s) + overhead_s``: math and memory traffic overlap
    within a kernel (roofline); ``overhead_s`` (launch, prologue, synchronisation) does not.
    """

    compute_s: float
    memory_s: float
    overhead_s: float = 0.0

    @property
    def seconds(self) -> float:
        """Wall time of the op: ``max(compute_s, memory_s) + overhead_s``."""
        return max(self.compute_s, self.memory_s) + self.overhead_s

    @property
    def bound(self) -> str:
        """``"compute"`` when compute time dominates (ties count as compute), else ``"memory"``."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


def roofline(
    flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead_s: float = 0.0
) -> OpTime:
    """The plain roofline of an op: ``flops / peak_flops`` against ``nbytes / bandwidth``."""
    return OpTime(
        flops / peak_flops if flops else 0.0, nbytes / bandwidth if nbytes else 0.0, overhead_s
    )


class AnalyticCompiled(Compiled):
    """A model compiled onto a system and priced by formula (see module docstring).

    ``catalog`` (the backend's devices) lets :meth:`fit` suggest a device with enough
    memory; ``reserve_bytes``/``reserve_note`` are the fixed per-device runtime memory the
    backend states (for example CUDA context and cuBLAS workspace) and why;
    ``collective_buffer_bytes``/``collective_buffer_note`` the collective library's buffers
    for the model-parallel communicator, held in an inference fit (not a training one:
    a training plan's reserve is its own) and why; ``recompile`` the backend's way to
    compile the same model with some system options changed, and ``engine_settings`` the
    options a serving engine may set that way with their defaults
    (:meth:`with_engine_settings`);
    ``p2p_allreduce`` the backend's model of the serving engines' own all-reduce kernels
    (:data:`P2PPricer`), which :meth:`with_allreduce_kernel` switches to.
    """

    def __init__(
        self,
        system: System,
        model: ModelGraph,
        *,
        price_op: Callable[[Op], OpTime],
        collective: Callable[[Collective, float, int], float],
        power: PowerModel,
        fuse: Callable[[OpGraph], OpGraph] | None = None,
        catalog: Mapping[str, DeviceSpec] | None = None,
        reserve_bytes: float = 0.0,
        reserve_note: str = "",
        assumptions: Mapping[str, Figure] | None = None,
        p2p_allreduce: P2PPricer | None = None,
        collective_buffer_bytes: float = 0.0,
        collective_buffer_note: str = "",
        recompile: Callable[[Mapping[str, Any]], Compiled] | None = None,
        engine_settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(system, model)
        self.price_op = price_op
        self.collective = collective
        self.power = power
        self.fuse = fuse
        self.catalog = dict(catalog or {})
        self.reserve_bytes = float(reserve_bytes)
        self.reserve_note = reserve_note
        self.collective_buffer_bytes = float(collective_buffer_bytes)
        self.collective_buffer_note = collective_buffer_note
        self.recompile = recompile
        self.engine_settings = dict(engine_settings or {})
        self._variants: dict[tuple[tuple[str, Any], ...], Compiled] = {}
        self.assumptions = dict(assumptions or {})
        self.p2p_allreduce = p2p_allreduce
        self._op_memo: dict[Op, OpTime] = {}
        self._coll_memo: dict[tuple[Collective, float, int], float] = {}
        self._act_memo: dict[tuple[int, bool], float] = {}

    def power_model(self) -> PowerModel:
        """The power model this compilation prices energy with."""
        return self.power

    def figures_used(self) -> dict[str, Figure]:
        """Device figures, the power model's numbers and the backend's stated
        assumptions (cost-model parameters), by dotted name."""
        out = self.system.device.figures()
        out.update(self.power.figures())
        if self.reserve_bytes:
            out["memory.runtime_reserve"] = Figure(
                self.reserve_bytes, assumption=self.reserve_note or "runtime memory reserve"
            )
        if self.collective_buffer_bytes:
            out["memory.collective_buffers"] = Figure(
                self.collective_buffer_bytes,
                assumption=self.collective_buffer_note or "collective library buffers",
            )
        out.update(self.assumptions)
        return out

    # -- pricing ----------------------------------------------------------------------

    def op_time(self, op: Op) -> OpTime:
        """The (cached) :class:`OpTime` of one instance of a non-collective ``op``."""
        t = self._op_memo.get(op)
        if t is None:
            t = self.price_op(op)
            self._op_memo[op] = t
        return t

    def collective_time(self, op: Op) -> float:
        """The (cached) seconds of one instance of a collective ``op``."""
        assert op.collective is not None
        key = (op.collective, op.comm_bytes, op.group)
        t = self._coll_memo.get(key)
        if t is None:
            t = self.collective(op.collective, op.comm_bytes, op.group)
            self._coll_memo[key] = t
        return t

    def with_allreduce_kernel(
        self, kernel: str, max_bytes: float, *, schedule: P2PSchedule = "cheaper"
    ) -> tuple[Compiled, str]:
        """A copy whose all-reduces of at most ``max_bytes`` per device over a group
        inside one node are priced by the backend's ``p2p_allreduce`` model of
        ``kernel`` on ``schedule``, the rest as before; this compilation itself where the
        backend gives no such model (see :meth:`Compiled.with_allreduce_kernel`)."""
        if self.p2p_allreduce is None:
            return super().with_allreduce_kernel(kernel, max_bytes, schedule=schedule)
        price, how = self.p2p_allreduce(kernel)
        if price is None:
            return self, how
        library = self.collective
        per_node = self.system.topology.devices_per_node

        def collective(kind: Collective, nbytes: float, group: int) -> float:
            if kind is Collective.ALL_REDUCE and 1 < group <= per_node and nbytes <= max_bytes:
                return price(nbytes, group, schedule)
            return library(kind, nbytes, group)

        clone = copy.copy(self)
        clone.collective = collective
        clone._memo = {}
        clone._coll_memo = {}
        clone._variants = {}
        shots = "one-shot only" if schedule == "one-shot" else "one-shot or two-shot, the cheaper"
        return clone, (
            f"{how}; all-reduces of at most {max_bytes:.0f} B per device in a node, {shots}"
        )

    def with_engine_settings(self, settings: Mapping[str, Any]) -> tuple[Compiled, str]:
        """This model compiled anew (through the backend's ``recompile``) with the
        options of ``settings`` that the backend takes (``engine_settings``) where they
        differ from the system's, or this compilation where none does or the backend gives
        no way to recompile; the sentence names each setting and whether it applied."""
        if self.recompile is None:
            return super().with_engine_settings(settings)
        known = self.engine_settings
        changes = {
            k: v
            for k, v in settings.items()
            if k in known and self.system.options.get(k, known[k]) != v
        }
        how = "; ".join(
            f"{k} {v!r} (the engine's)"
            if k in changes
            else f"{k} {v!r} as the system has it"
            if k in known
            else f"{k}: not a setting of the {self.system.backend} backend"
            for k, v in sorted(settings.items())
        )
        if not changes:
            return self, how
        key = tuple(sorted(changes.items()))  # compiled once, shared by the fit and stacks
        if key not in self._variants:
            self._variants[key] = self.recompile(changes)
        return self._variants[key], how

    def graph(self, shape: Shape) -> OpGraph:
        """The (optionally fused) per-device graph of one pipeline stage for ``shape``."""
        g = self.model.build(shape, self.system.parallelism)
        return self.fuse(g) if self.fuse is not None else g

    def stage_breakdown(self, graph: OpGraph) -> dict[str, float]:
        """Seconds by cause of one pipeline stage running ``graph``."""
        compute = memory = comm = overhead = 0.0
        for op in graph.ops:
            n = op.count
            if op.kind is OpKind.COLLECTIVE:
                comm += self.collective_time(op) * n
                continue
            t = self.op_time(op)
            if t.compute_s >= t.memory_s:
                compute += t.compute_s * n
            else:
                memory += t.memory_s * n
            overhead += t.overhead_s * n
        return {"compute": compute, "memory": memory, "comm": comm, "overhead": overhead}

    def collective_seconds(self, kind: Collective, nbytes: float, group: int) -> float:
        """Seconds of one ``kind`` collective of ``nbytes`` per device over ``group``
        devices, priced by the backend's collective function."""
        return float(self.collective(kind, nbytes, group))

    def stage_costs(self, shape: Shape) -> StageCosts:
        """The stage graph of ``shape`` priced op by op, split into passes by the model's
        :meth:`~xpusim.engine.model.ModelGraph.training_stages`; a graph without listed
        backward ops splits its forward time 1:2."""
        stages = self.model.training_stages(self.graph(shape))
        fwd = self.stage_breakdown(stages.forward)
        opt = self.stage_breakdown(stages.optimizer)
        if not stages.backward.ops:
            return StageCosts(
                forward={k: v / 3 for k, v in fwd.items()},
                backward={k: 2 * v / 3 for k, v in fwd.items()},
                optimizer=opt,
                how="stage graph priced op by op; forward:backward split 1:2",
            )
        return StageCosts(
            forward=fwd,
            backward=self.stage_breakdown(stages.backward),
            optimizer=opt,
            how="stage graph priced op by op; forward/backward split by the model's passes",
        )

    def _cost(self, shape: Shape) -> Cost:
        graph = self.graph(shape)
        stage = self.stage_breakdown(graph)
        par = self.system.parallelism
        pp = max(1, par.pipeline)
        breakdown = {k: v * pp for k, v in stage.items()} if pp > 1 else stage
        seconds = sum(breakdown.values())
        joules = self.power.joules(stage, devices=par.model_parallel)
        return Cost(
            seconds=seconds,
            joules=joules,
            breakdown=breakdown,
            flops=graph.flops * par.model_parallel,
        )

    # -- memory -----------------------------------------------------------------------

    def activation_bytes(self, batch: int, training: bool = False) -> float:
        """Live activation memory per device for a step of ``batch`` (inference): twice the
        largest single op output of that step (one buffer being read, one written). For
        ``training`` the model's own :meth:`~xpusim.engine.model.ModelGraph.activation_bytes`."""
        key = (batch, training)
        if key in self._act_memo:
            return self._act_memo[key]
        par = self.system.parallelism
        info = self.model.info
        try:
            if training:
                seq = max(1, int(info.max_seq_len or 1))
                shape = Shape(Phase.TRAIN, batch=max(1, batch), tokens=seq)
                v = float(self.model.activation_bytes(shape, par, "none"))
            else:
                shape = (
                    Shape(Phase.DECODE, batch=max(1, batch), tokens=1, context=0)
                    if self.model.kind == "decoder"
                    else Shape(Phase.FORWARD, batch=max(1, batch))
                )
                g = self.model.build(shape, par)
                v = 2.0 * max((o.bytes_written for o in g.ops), default=0.0)
        except Exception:  # a model that cannot build this shape has no estimate
            v = 0.0
        self._act_memo[key] = v
        return v

    def memory_need(
        self,
        extra_bytes: float | Mapping[str, float] = 0.0,
        *,
        kv_tokens: int = 0,
        batch: int = 1,
        training: bool = False,
    ) -> Fit:
        """Per-device memory need of this compilation plus ``extra_bytes`` per device
        (a number, or named parts such as ``{"gradients": ..., "optimizer": ...}`` that
        are added to the breakdown), against the device's memory, with the not-fit
        reason and suggestion sentences."""
        par = self.system.parallelism
        parts: dict[str, float] = {
            "weights": self.model.weight_bytes_per_device(par),
            "kv_cache": kv_tokens * self.model.kv_bytes_per_token_per_device(par),
            "activations": self.activation_bytes(batch, training),
            "runtime_reserve": self.reserve_bytes,
        }
        if self.collective_buffer_bytes and not training:
            parts["collective_buffers"] = self.collective_buffer_bytes
        if isinstance(extra_bytes, Mapping):
            for k, v in extra_bytes.items():
                parts[k] = parts.get(k, 0.0) + float(v)
        elif extra_bytes:
            parts["extra"] = float(extra_bytes)
        need = sum(parts.values())
        dev = self.system.device
        have = dev.memory_bytes.value
        if need <= have:
            return Fit(True, need, have, parts)
        return Fit(
            False, need, have, parts, self._reason(need, have, parts), self._suggest(need, parts)
        )

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """Inference memory fit: weights, ``kv_tokens`` of KV cache, activations of
        ``batch`` and the runtime reserve, per device. With ``training`` the activations
        are the model's training activations; gradients and optimizer states are *not*
        included here (the training module adds them through :meth:`memory_need`)."""
        return self.memory_need(0.0, kv_tokens=kv_tokens, batch=batch, training=training)

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """KV-cache tokens per replica that fit after weights, activations and reserve in
        ``reserve_fraction`` of device memory; the cache is split over tensor × pipeline."""
        f = self.fit(kv_tokens=0)
        free = self.system.device.memory_bytes.value * reserve_fraction - f.need_bytes
        per_tok = self.model.kv_bytes_per_token_per_device(self.system.parallelism)
        if per_tok <= 0:
            return 0
        return max(0, int(free // per_tok))

    def _reason(self, need: float, have: float, parts: Mapping[str, float]) -> str:
        dev = self.system.device
        par = self.system.parallelism
        detail = ", ".join(
            f"{k.replace('_', ' ')} {v / GB:.1f} GB" for k, v in parts.items() if v >= 0.05 * GB
        )
        plan = (
            f" with tensor={par.tensor}, pipeline={par.pipeline}" if par.model_parallel > 1 else ""
        )
        return (
            f"{self.model.name} needs {need / GB:.1f} GB per device on {dev.name}{plan} "
            f"({detail}) but one {dev.name} has {have / GB:.1f} GB: it is short by "
            f"{(need - have) / GB:.1f} GB."
        )

    def _suggest(self, need: float, parts: Mapping[str, float]) -> str:
        dev = self.system.device
        par = self.system.parallelism
        mp = max(1, par.model_parallel)
        have = dev.memory_bytes.value
        fixed = parts.get("runtime_reserve", 0.0)
        sharded = need - fixed  # weights, KV, activations and extras shrink with more devices
        sentences: list[str] = []
        n_fit = 0
        n = 1
        while n <= 4096:
            if n > mp and sharded * mp / n + fixed <= have:
                n_fit = n
                break
            n *= 2
        if n_fit:
            tp = n_fit // max(1, par.pipeline)
            nodes = math.ceil(n_fit / max(1, dev.devices_per_node))
            where = (
                f"within one node of {dev.devices_per_node}"
                if nodes <= 1
                else f"across {nodes} nodes of {dev.devices_per_node}, so its all-reduces "
                f"cross the slower scale-out network"
            )
            per = sharded * mp / n_fit + fixed
            sentences.append(
                f"Use {n_fit}×{dev.name} with tensor parallel (tensor={tp}"
                f"{f', pipeline={par.pipeline}' if par.pipeline > 1 else ''}): "
                f"{per / GB:.1f} GB per device, {where}."
            )
        bigger = sorted(
            (
                d
                for d in self.catalog.values()
                if d.name != dev.name and d.memory_bytes.value >= need
            ),
            key=lambda d: d.memory_bytes.value,
        )
        if bigger:
            names = ", ".join(f"{d.name} ({d.memory_bytes.value / GB:.0f} GB)" for d in bigger[:3])
            sentences.append(
                f"{'Or use' if sentences else 'Use'} a {dev.backend} device with at least "
                f"{need / GB:.0f} GB at the same plan: {names}."
            )
        elif self.catalog:
            sentences.append(
                f"No {dev.backend} device in the catalog holds {need / GB:.0f} GB per device at "
                f"this plan; split the model over more devices."
            )
        if not sentences:
            sentences.append("Split the model over more devices with tensor or pipeline parallel.")
        return " ".join(sentences)
