"""Serving-engine profiles: the per-iteration cost a serving stack adds to the model's.

A profile (``plugins/workloads/serving/stacks.yaml``, every figure with its source) says
what an engine such as vLLM, SGLang or TensorRT-LLM does around the model on every
iteration:

* ``host_step_s`` and ``host_per_seq_s`` — host (CPU) time per iteration: scheduling,
  input preparation, sampling and output processing, ``host_step_s + host_per_seq_s *
  b`` for an iteration of ``b`` sequences (the per-sequence part is the loops over the
  batch: scheduling each running request, updating it from the sampled token). With
  ``host_overlap: false`` it sits on the critical path, so an iteration takes ``gpu +
  host``; with ``host_overlap: true`` (SGLang's overlap scheduler, which prepares batch
  ``i+1`` while the GPU runs batch ``i``) it takes ``max(gpu, host)``;
* ``cuda_graph_batches`` — the decode batch sizes captured as CUDA graphs: a decode-only
  iteration of ``b`` sequences, ``b`` at most the largest captured size, runs the graph of
  the smallest captured size ``>= b`` (the padded rows cost what real rows cost); larger
  batches and iterations that prefill run eagerly at their own size;
* ``fp8_context_attention`` — whether the engine computes an FP8 checkpoint's context
  (prefill) attention in FP8 (TensorRT-LLM's FP8 context FMHA, which ``trtllm-bench``
  builds for FP8 models); :func:`stack_model` gives the model so;
* ``allreduce`` and ``allreduce_max_bytes`` — the kernel that runs the tensor-parallel
  all-reduces of at most ``allreduce_max_bytes`` per device inside one node (on two GPUs,
  ``allreduce_max_bytes_two`` where the engine sizes its buffer otherwise for them,
  :meth:`StackProfile.allreduce_limit`): ``vllm``
  (vLLM's ``custom_all_reduce``, which SGLang also runs), ``trtllm`` (TensorRT-LLM's
  custom all-reduce plugin) or ``library`` (NCCL/RCCL for every all-reduce); the
  backend prices the kernel where it has a profile of it on the system's fabric and says
  so otherwise (:meth:`~xpusim.engine.backend.Compiled.with_allreduce_kernel`); larger
  all-reduces and groups spanning nodes run on the library. The kernel runs the cheaper
  of its one-shot and two-shot schedules unless the profile gives
  ``allreduce_one_shot_below`` (largest group size to bytes): the engine then runs
  one-shot alone, on messages below that size for the group, and hands larger ones to
  the library (TensorRT-LLM's AUTO strategy from v0.12.0, which disabled two-shot;
  :meth:`StackProfile.allreduce_plan`). Where the profile gives ``workspace_copies``,
  the engine holds that many buffers of the kernel's limit times the group on each
  device (TensorRT-LLM's ping and pong workspaces), counted in its runtime memory
  (:meth:`StackProfile.allreduce_workspace_bytes`);
* ``nccl_nvls`` — whether the engine leaves NCCL's NVLink SHARP on (NCCL's default) or
  turns it off (SGLang's ``enable_nccl_nvls`` is false by default): on an NVSwitch
  fabric that has NVLS the backend then prices NCCL's all-reduces without it and holds
  no NVLS buffers;
* ``decode_attention`` — the engine's decode-attention kernel where the profile states
  it (``per-head``: TensorRT-LLM before XQA, whose masked MHA kernel reads each K/V head
  once per query head); unstated, the backend's default (``grouped``) stands. This and
  ``nccl_nvls`` are backend options the engine sets
  (:meth:`~xpusim.engine.backend.Compiled.with_engine_settings`); a system whose
  ``options`` set one keeps its own;
* ``kv_memory_fraction``, ``scheduler`` and ``kv_block_tokens`` (the paged cache's block:
  vLLM's ``--block-size``, TensorRT-LLM's ``tokens_per_block``, SGLang's ``page_size``)
  — the engine's defaults, used when the scenario does not set them;
  ``kv_fraction_of`` says what the fraction is of: ``total`` device
  memory that weights, activations and KV cache share (vLLM's
  ``--gpu-memory-utilization``, SGLang's ``mem_fraction_static``) or the memory ``free``
  once the weights and runtime are loaded, all of it KV cache (TensorRT-LLM's
  ``kv_cache_free_gpu_mem_fraction``);
* ``runtime_memory`` — what the engine holds per device besides weights and KV cache for
  the limits it runs with (its ``max_batch``, token budget and longest sequence):
  a fixed context, build-time activations and per-slot buffers over the vocabulary
  (:mod:`~xpusim.plugins.workloads.serving.engine_memory`); stated where the engine's
  source and logs were read (TensorRT-LLM's executor), else the backend's generic
  runtime reserve stands.

A scenario writes ``stack: vllm-0.6`` or overrides fields inline::

    stack: {name: sglang-0.4, host_step_s: 1 ms, host_overlap: true}

:func:`resolve_stack` returns the :class:`StackProfile`; :class:`StackCompiled` wraps the
backend's :class:`~xpusim.engine.backend.Compiled` so every step the serving world prices
carries the stack's cost (host seconds count as ``overhead`` time at the power of that
state). The default profile (:data:`DEFAULT_STACK`) is stated, with why, at the top of the
YAML file and in ``docs/workloads/serving.md``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.backend import Compiled, Cost, Fit
from xpusim.engine.collectives import P2PSchedule
from xpusim.engine.device import Figure
from xpusim.engine.errors import DoesNotFitError
from xpusim.engine.graph import Collective, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.precision import FORMATS, QuantizedModel
from xpusim.engine.qty import Duration
from xpusim.plugins.workloads.serving.engine_memory import (
    EngineLimits,
    EngineMemory,
    EngineMemoryOverride,
    engine_memory,
    override_engine_memory,
)

STACKS_PATH = Path(__file__).with_name("stacks.yaml")
"""The shipped profiles."""


@cache
def _doc() -> dict[str, Any]:
    return dict(yaml.safe_load(STACKS_PATH.read_text(encoding="utf-8")))


def stack_names() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(_doc()["stacks"])


KERNEL_MAX_BYTES: dict[str, float] = {"library": 0.0, "vllm": 8 * 2**20, "trtllm": 8e6}
"""The largest all-reduce, bytes per device, each kernel takes when a scenario names it
without ``allreduce_max_bytes``: vLLM's ``CustomAllreduce(max_size=8192 * 1024)``
(``vllm/distributed/device_communicators/custom_all_reduce.py``); TensorRT-LLM's
custom all-reduce workspace for more than two GPUs
(``CustomAllReduceHelper.max_workspace_size_auto``, ``tensorrt_llm/plugin/plugin.py``:
8,000,000 bytes, 16,000,000 for two)."""

KERNEL_MAX_BYTES_TWO: dict[str, float] = {"trtllm": 16e6}
"""The kernels whose buffer is larger on two GPUs, and its size there (TensorRT-LLM's
``max_workspace_size_auto``: ``if tp_size <= 2: return 16_000_000``)."""

DEFAULT_STACK: str = str(_doc()["default"])
"""The profile a serving or offline scenario gets when it names none (see the YAML)."""


@dataclass(frozen=True)
class StackProfile:
    """One serving engine's per-iteration behaviour (module docstring) and the sources
    of its figures (``sources``: field name to a sentence)."""

    name: str
    engine: str
    version: str
    host_step_s: float
    host_overlap: bool
    cuda_graph_batches: tuple[int, ...]
    kv_memory_fraction: float
    scheduler: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    kv_fraction_of: str = "total"
    host_per_seq_s: float = 0.0
    fp8_context_attention: bool = False
    allreduce: str = "library"
    allreduce_max_bytes: float = 0.0
    allreduce_max_bytes_two: float = 0.0
    allreduce_one_shot_below: tuple[tuple[int, float], ...] = ()
    allreduce_workspace_copies: float = 0.0
    nccl_nvls: bool = True
    runtime_memory: EngineMemory | None = None
    kv_block_tokens: int | None = None
    decode_attention: str | None = None

    def engine_settings(self) -> dict[str, Any]:
        """The backend options the engine sets: NCCL's NVLS always, the decode-attention
        kernel where the profile states it."""
        out: dict[str, Any] = {"nccl_nvls": self.nccl_nvls}
        if self.decode_attention is not None:
            out["decode_attention"] = self.decode_attention
        return out

    def allreduce_limit(self, group: int) -> float:
        """The largest all-reduce, bytes per device, the stack's kernel takes in a
        tensor-parallel group of ``group`` devices: ``allreduce_max_bytes_two`` on two
        (or one) devices where the profile gives it, else ``allreduce_max_bytes``."""
        if group <= 2 and self.allreduce_max_bytes_two > 0:
            return self.allreduce_max_bytes_two
        return self.allreduce_max_bytes

    def allreduce_workspace_bytes(self, group: int) -> float:
        """Bytes per device the engine's all-reduce kernel holds for a tensor-parallel
        group of ``group`` devices: ``allreduce_workspace_copies`` buffers of
        :meth:`allreduce_limit` bytes for each device of the group; none on one device,
        on the library or where the profile gives no copies."""
        if group < 2 or self.allreduce == "library":
            return 0.0
        return self.allreduce_workspace_copies * self.allreduce_limit(group) * group

    def allreduce_plan(self, group: int) -> tuple[float, P2PSchedule]:
        """The largest all-reduce, bytes per device, the stack's kernel runs in a group
        of ``group`` devices, and on which schedule: within :meth:`allreduce_limit` on
        the cheaper of one-shot and two-shot; where ``allreduce_one_shot_below`` is
        given, one-shot alone below the bytes of its first entry whose group size is at
        least ``group`` (the last entry beyond them), the rest on the library."""
        limit = self.allreduce_limit(group)
        if not self.allreduce_one_shot_below:
            return limit, "cheaper"
        below = next(
            (b for g, b in self.allreduce_one_shot_below if group <= g),
            self.allreduce_one_shot_below[-1][1],
        )
        return min(limit, below), "one-shot"

    def graph_batch(self, batch: int) -> int | None:
        """The captured batch size a decode of ``batch`` sequences runs at, or ``None``
        when it runs eagerly (no capture that large)."""
        sizes = self.cuda_graph_batches
        i = bisect.bisect_left(sizes, batch)
        return sizes[i] if i < len(sizes) else None

    def host_seconds(self, sequences: int) -> float:
        """Host time of an iteration of ``sequences`` sequences."""
        return self.host_step_s + self.host_per_seq_s * sequences

    def step_seconds(self, gpu_s: float, sequences: int = 0, share: float = 1.0) -> float:
        """Wall time of an iteration of ``sequences`` sequences whose GPU work takes
        ``gpu_s``, carrying ``share`` of the host time of an iteration (``1 / steps`` for
        the decode steps of a multi-step round, which schedule and prepare inputs once)."""
        host = self.host_seconds(sequences) * share
        if self.host_overlap:
            return max(gpu_s, host)
        return gpu_s + host


class StackOverride(BaseModel):
    """``workload.stack`` written as a mapping: a profile ``name`` and fields to override."""

    model_config = ConfigDict(extra="forbid")

    name: str = DEFAULT_STACK
    host_step_s: Duration | None = Field(default=None, description="host time per iteration")
    host_per_seq_s: Duration | None = Field(
        default=None, description="host time per iteration and sequence in it"
    )
    host_overlap: bool | None = None
    cuda_graph_batches: list[int] | None = None
    kv_memory_fraction: float | None = Field(default=None, gt=0, le=1)
    fp8_context_attention: bool | None = Field(
        default=None, description="an FP8 checkpoint's context attention computed in FP8"
    )
    allreduce: Literal["library", "vllm", "trtllm"] | None = Field(
        default=None, description="kernel of the small tensor-parallel all-reduces"
    )
    allreduce_max_bytes: int | None = Field(
        default=None, ge=0, description="largest all-reduce, bytes per device, the kernel runs"
    )
    allreduce_one_shot_below: dict[int, float] | None = Field(
        default=None,
        description="largest group size to bytes: the kernel runs one-shot alone, below "
        "those bytes, the rest on the library ({} for the cheaper of one- and two-shot)",
    )
    nccl_nvls: bool | None = Field(
        default=None, description="whether the engine leaves NCCL's NVLink SHARP on"
    )
    decode_attention: Literal["grouped", "per-head"] | None = Field(
        default=None, description="the engine's decode-attention kernel"
    )
    runtime_memory: EngineMemoryOverride | None = Field(
        default=None, description="the engine's memory besides weights and KV cache"
    )
    kv_block_tokens: int | None = Field(
        default=None, ge=1, description="tokens per block of the engine's paged KV cache"
    )


def _value(raw: Any) -> Any:
    return raw["value"] if isinstance(raw, Mapping) and "value" in raw else raw


def _cited(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return "stack profile"
    parts = [str(raw[k]) for k in ("source", "derivation") if raw.get(k)]
    return "; ".join(parts) or "stack profile"


def _optional(raw: Mapping[str, Any], key: str, kind: Callable[[Any], Any]) -> Any:
    """The profile's ``key`` as ``kind``, or ``None`` where the profile does not state it."""
    return kind(_value(raw[key])) if key in raw else None


UNSTATED: dict[str, str] = {
    "host_per_seq_s": "host time per iteration taken as constant",
    "fp8_context_attention": "context attention in 16 bits",
    "allreduce": "every all-reduce on the collective library",
    "nccl_nvls": "NCCL's default (NVLS on where the fabric has it)",
    "kv_block_tokens": "the workload's kv_block_tokens",
    "decode_attention": "the backend's decode-attention kernel",
}
"""The optional profile fields with a source of their own, and what stands where a
profile leaves one out (what the field's source then says)."""


def load_profile(name: str) -> StackProfile:
    """The shipped profile ``name``; an unknown name raises ``ValueError`` listing the
    valid ones."""
    stacks = _doc()["stacks"]
    if name not in stacks:
        raise ValueError(f"unknown serving stack {name!r}; valid: {', '.join(stack_names())}")
    raw = stacks[name]
    sizes = tuple(sorted(int(b) for b in _value(raw["cuda_graph_batches"])))
    ar = raw.get("allreduce", "library")
    sizes_of = ar if isinstance(ar, Mapping) else {}
    return StackProfile(
        name=name,
        engine=str(raw["engine"]),
        version=str(raw["version"]),
        host_step_s=float(_value(raw["host_step_s"])),
        host_per_seq_s=float(_value(raw.get("host_per_seq_s", 0.0))),
        host_overlap=bool(_value(raw["host_overlap"])),
        cuda_graph_batches=sizes,
        kv_memory_fraction=float(_value(raw["kv_memory_fraction"])),
        kv_fraction_of=str(raw.get("kv_fraction_of", "total")),
        fp8_context_attention=bool(_value(raw.get("fp8_context_attention", False))),
        allreduce=str(_value(ar)),
        allreduce_max_bytes=float(sizes_of.get("max_bytes", 0)),
        allreduce_max_bytes_two=float(sizes_of.get("max_bytes_two_gpus", 0)),
        allreduce_one_shot_below=one_shot_table(sizes_of.get("one_shot_below") or {}),
        allreduce_workspace_copies=float(sizes_of.get("workspace_copies", 0)),
        nccl_nvls=bool(_value(raw.get("nccl_nvls", True))),
        scheduler=dict(raw["scheduler"]),
        runtime_memory=load_runtime_memory(raw.get("runtime_memory")),
        kv_block_tokens=_optional(raw, "kv_block_tokens", int),
        decode_attention=_optional(raw, "decode_attention", str),
        sources={
            "host_step_s": _cited(raw["host_step_s"]),
            "cuda_graph_batches": _cited(raw["cuda_graph_batches"]),
            "kv_memory_fraction": _cited(raw["kv_memory_fraction"]),
            "scheduler": str(raw.get("scheduler_source", "stack profile")),
            "runtime_memory": "the profile's runtime_memory block, a source per figure"
            if "runtime_memory" in raw
            else "not stated in the profile: the backend's runtime reserve and activations",
            **{
                key: _cited(raw[key]) if key in raw else f"not stated in the profile: {why}"
                for key, why in UNSTATED.items()
            },
        },
    )


def one_shot_table(raw: Mapping[Any, Any]) -> tuple[tuple[int, float], ...]:
    """``allreduce_one_shot_below`` from its mapping of largest group size to bytes,
    sorted by group; a group under 2 or a size not above 0 raises ``ValueError``."""
    table = tuple(sorted((int(g), float(b)) for g, b in raw.items()))
    for g, b in table:
        if g < 2 or not b > 0:
            raise ValueError(
                f"allreduce one_shot_below: {g}: {b} needs a group of at least 2 devices "
                "and a size above 0 bytes (.inf for every size the kernel takes)"
            )
    return table


def load_runtime_memory(raw: Mapping[str, Any] | None) -> EngineMemory | None:
    """A profile's ``runtime_memory`` block (each figure ``{value, source}``, read as
    every profile field is), or ``None`` where it states none; a stated block lacking a
    figure raises ``ValueError`` naming it."""
    block = dict(raw or {})
    return engine_memory(
        {k: float(_value(v)) for k, v in block.items()},
        {k: _cited(v) for k, v in block.items()},
    )


def resolve_stack(spec: str | StackOverride | None) -> StackProfile:
    """The profile a scenario's ``stack`` names, with its inline overrides applied (each
    overridden field's source says so)."""
    if spec is None:
        return load_profile(DEFAULT_STACK)
    if isinstance(spec, str):
        return load_profile(spec)
    prof = load_profile(spec.name)
    changes: dict[str, Any] = {}
    for key in (
        "host_step_s",
        "host_per_seq_s",
        "host_overlap",
        "kv_memory_fraction",
        "fp8_context_attention",
        "allreduce",
        "allreduce_max_bytes",
        "nccl_nvls",
        "kv_block_tokens",
        "decode_attention",
    ):
        v = getattr(spec, key)
        if v is not None:
            changes[key] = v
    kernel_changed = spec.allreduce != prof.allreduce or prof.allreduce_max_bytes <= 0
    if spec.allreduce is not None and spec.allreduce_max_bytes is None and kernel_changed:
        changes["allreduce_max_bytes"] = KERNEL_MAX_BYTES[spec.allreduce]
        changes["allreduce_max_bytes_two"] = KERNEL_MAX_BYTES_TWO.get(spec.allreduce, 0.0)
    elif spec.allreduce_max_bytes is not None:  # the scenario's size, on any group
        changes["allreduce_max_bytes_two"] = 0.0
    if spec.allreduce is not None and spec.allreduce != prof.allreduce:
        changes["allreduce_one_shot_below"] = ()  # the profile's rule was its own kernel's
        changes["allreduce_workspace_copies"] = 0.0  # and so were its buffers
    if spec.allreduce_one_shot_below is not None:
        changes["allreduce_one_shot_below"] = one_shot_table(spec.allreduce_one_shot_below)
    if "allreduce_max_bytes" in changes:
        changes["allreduce_max_bytes"] = float(changes["allreduce_max_bytes"])
    if spec.runtime_memory is not None:
        changes["runtime_memory"] = override_engine_memory(prof.runtime_memory, spec.runtime_memory)
    if spec.cuda_graph_batches is not None:
        if any(b < 1 for b in spec.cuda_graph_batches):
            raise ValueError("stack.cuda_graph_batches: every batch size must be >= 1")
        changes["cuda_graph_batches"] = tuple(sorted(set(spec.cuda_graph_batches)))
    if not changes:
        return prof
    sources = dict(prof.sources)
    sources.update({k: "scenario override (workload.stack)" for k in changes})
    return replace(prof, sources=sources, **changes)


STACK_BACKENDS = frozenset({"gpu"})
"""Backends whose systems the shipped profiles describe (GPU serving engines): a system
of another backend (a TPU, the measured CPU) runs under ``none`` unless the scenario
names a stack."""


def stack_for(config: Any, backend: str) -> StackProfile:
    """The profile a system of ``backend`` runs ``config`` (a serving or offline workload
    block holding ``stack``) under: the scenario's stack when it names one, else
    :data:`DEFAULT_STACK` on the backends of :data:`STACK_BACKENDS` and ``none`` on
    others."""
    if "stack" not in config.model_fields_set and backend not in STACK_BACKENDS:
        return load_profile("none")
    resolved = getattr(config, "_stack", None)
    return resolved if isinstance(resolved, StackProfile) else resolve_stack(config.stack)


def stack_model(stack: StackProfile, model: ModelGraph) -> ModelGraph:
    """``model`` as ``stack`` runs it: an FP8 checkpoint (a model whose GEMM inputs are
    FP8) with its context attention in FP8 too when the profile says the engine builds
    such kernels (``fp8_context_attention``) and the scenario's precision states no
    attention format of its own; any other model unchanged."""
    if (
        stack.fp8_context_attention
        and isinstance(model, QuantizedModel)
        and model.precision.activations.element == "fp8"
        and model.precision.attention is None
    ):
        return model.with_attention(FORMATS["fp8"])
    return model


def with_stack_settings(compiled: Compiled, stack: StackProfile) -> tuple[Compiled, str]:
    """``compiled`` with the backend options ``stack``'s engine sets
    (:meth:`StackProfile.engine_settings`, through
    :meth:`~xpusim.engine.backend.Compiled.with_engine_settings`) but those the system's
    ``options`` set themselves, and a sentence saying which applied."""
    wanted = stack.engine_settings()
    own = sorted(k for k in wanted if k in compiled.system.options)  # the system's win
    settings = {k: v for k, v in wanted.items() if k not in own}
    compiled, how = compiled.with_engine_settings(settings) if settings else (compiled, "")
    kept = [f"{k} as the system's options set it" for k in own]
    return compiled, "; ".join([how, *kept] if how else kept)


def sequences(shape: Shape) -> int:
    """Sequences an iteration of ``shape`` runs (its parts' summed for a mixed one); the
    real ones, before CUDA-graph padding, since the host handles only those."""
    if shape.parts:
        return sum(p.batch for p in shape.parts)
    return shape.batch


class StackCompiled(Compiled):
    """A compiled model seen through a serving stack: the same memory fit and figures,
    and step costs with the stack's CUDA-graph padding and host time (module docstring).

    ``steps`` is the scheduler's decode steps per scheduling round (``prefill-first``'s
    multi-step rounds): the host schedules and prepares inputs once a round, so each
    decode-only step carries ``1 / steps`` of an iteration's host time.

    ``limits`` are the engine's build limits; where the profile states the engine's
    runtime memory (``runtime_memory``), the KV cache is what is left once that memory
    for these limits is held (:meth:`engine_memory_parts`), in place of the backend's
    generic runtime reserve and batch-1 activations.
    """

    def __init__(
        self,
        inner: Compiled,
        stack: StackProfile,
        steps: int = 1,
        limits: EngineLimits | None = None,
    ) -> None:
        super().__init__(inner.system, inner.model)
        self.limits = limits
        inner, self.settings_how = with_stack_settings(inner, stack)
        self.allreduce_how = "every all-reduce on the collective library"
        self.allreduce_max_bytes, schedule = stack.allreduce_plan(inner.system.parallelism.tensor)
        if stack.allreduce != "library" and self.allreduce_max_bytes > 0:
            inner, self.allreduce_how = inner.with_allreduce_kernel(
                stack.allreduce, self.allreduce_max_bytes, schedule=schedule
            )
        self.inner = inner
        self.stack = stack
        self.steps = steps
        self.reserve_bytes = inner.reserve_bytes
        self.collective_buffer_bytes = inner.collective_buffer_bytes
        self._power = inner.power_model()

    def padded(self, shape: Shape) -> Shape:
        """``shape`` with a decode-only batch raised to its captured CUDA-graph size."""
        if shape.phase is not Phase.DECODE:
            return shape
        b = self.stack.graph_batch(shape.batch)
        return shape if b is None or b == shape.batch else replace(shape, batch=b)

    def _cost(self, shape: Shape) -> Cost:
        c = self.inner.cost(self.padded(shape))
        share = 1.0 / self.steps if shape.phase is Phase.DECODE else 1.0
        seconds = self.stack.step_seconds(c.seconds, sequences(shape), share)
        extra = seconds - c.seconds
        if extra <= 0:
            return c
        breakdown = dict(c.breakdown)
        breakdown["overhead"] = breakdown.get("overhead", 0.0) + extra
        joules = c.joules
        if self._power is not None:
            devices = max(1, self.system.parallelism.model_parallel)
            joules += self._power.joules({"overhead": extra}, devices=devices)
        return Cost(seconds=seconds, joules=joules, breakdown=breakdown, flops=c.flops)

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """The wrapped model's memory fit."""
        return self.inner.fit(kv_tokens=kv_tokens, batch=batch, training=training)

    def engine_memory_parts(self) -> dict[str, float]:
        """Bytes per device of the engine's runtime memory for its limits (empty where
        the profile states none or no limits are set)."""
        mem = self.stack.runtime_memory
        if mem is None or self.limits is None:
            return {}
        group = self.system.parallelism.tensor
        parts = mem.parts(self.limits, self.model.info, group)
        workspace = self.stack.allreduce_workspace_bytes(group)
        if workspace > 0:
            parts["allreduce_workspace"] = workspace
        return parts

    def _engine_extra_bytes(self, held: Mapping[str, float]) -> float:
        """The engine's runtime memory less what the backend's fit (``held``, its
        breakdown) already holds for the runtime (its reserve and batch-1 activations),
        per device."""
        parts = self.engine_memory_parts()
        if not parts:
            return 0.0
        return sum(parts.values()) - held.get("runtime_reserve", 0.0) - held.get("activations", 0.0)

    def check_cache(self, capacity_tokens: int, block_tokens: int) -> None:
        """Raise :class:`~xpusim.engine.errors.DoesNotFitError` when a KV cache of
        ``capacity_tokens`` holds no block of ``block_tokens`` because the engine's
        runtime memory took the room, naming its size and the fix; otherwise leave the
        world's own check to speak."""
        parts = self.engine_memory_parts()
        if capacity_tokens >= block_tokens or not parts or self.limits is None:
            return
        lim = self.limits
        slot = parts["engine_slots"] / max(1, lim.max_batch)
        raise DoesNotFitError(
            f"system {self.system.name!r}: the weights and the {self.stack.name} engine's "
            f"runtime memory for its limits ({sum(parts.values()) / 1e9:.1f} GB a device at "
            f"max_batch {lim.max_batch}, {slot / 1e6:.1f} MB a sequence slot) leave no room "
            "for a KV cache; lower workload.scheduler.max_batch, use more devices per "
            "replica (tensor parallelism) or a device with more memory."
        )

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """The wrapped model's KV capacity with ``reserve_fraction`` read as the stack
        reads its KV fraction: of total memory, or (``kv_fraction_of: free``) of what the
        weights, activations and runtime leave, converted to the share of total memory
        that gives the same cache. The engine's runtime memory for its limits
        (:meth:`engine_memory_parts`) is held first."""
        f = reserve_fraction
        have = self.system.device.memory_bytes.value
        fit = self.inner.fit(kv_tokens=0)
        extra = self._engine_extra_bytes(fit.breakdown)
        if self.stack.kv_fraction_of == "free" and have > 0:
            f = min(1.0, f + (1.0 - f) * (fit.need_bytes + extra) / have)
        if have > 0:
            f -= extra / have
        return self.inner.kv_capacity_tokens(f) if f > 0 else 0

    def power_model(self) -> PowerModel | None:
        """The wrapped model's power model."""
        return self._power

    def collective_seconds(self, kind: Collective, nbytes: float, group: int) -> float | None:
        """The wrapped model's collective pricing."""
        return self.inner.collective_seconds(kind, nbytes, group)

    @property
    def replicas(self) -> int:
        """The wrapped model's replicas."""
        return self.inner.replicas

    def figures_used(self) -> dict[str, Figure]:
        """The wrapped model's figures plus the stack's, each with its source."""
        out = dict(self.inner.figures_used())
        out.update(self.stack_figures())
        return out

    def stack_figures(self) -> dict[str, Figure]:
        """The stack's own figures, each with its source: host time, CUDA-graph sizes,
        all-reduce kernel (and how the backend priced it), KV fraction."""
        out: dict[str, Figure] = {}
        s = self.stack
        out["stack.host_step_s"] = Figure(
            s.host_step_s, assumption=f"{s.name}: {s.sources.get('host_step_s', '')}"
        )
        out["stack.host_per_seq_s"] = Figure(
            s.host_per_seq_s, assumption=f"{s.name}: {s.sources.get('host_per_seq_s', '')}"
        )
        out["stack.cuda_graph_max_batch"] = Figure(
            float(s.cuda_graph_batches[-1] if s.cuda_graph_batches else 0),
            assumption=f"{s.name}: {s.sources.get('cuda_graph_batches', '')}",
        )
        out["stack.allreduce_max_bytes"] = Figure(
            self.allreduce_max_bytes if s.allreduce != "library" else 0.0,
            assumption=f"{s.name}: {s.allreduce} all-reduce ({s.sources.get('allreduce', '')}); "
            f"priced: {self.allreduce_how}",
        )
        out["stack.nccl_nvls"] = Figure(
            1.0 if s.nccl_nvls else 0.0,
            assumption=f"{s.name}: {s.sources.get('nccl_nvls', '')}; applied: {self.settings_how}",
        )
        if s.decode_attention is not None:
            out["stack.decode_attention_grouped"] = Figure(
                1.0 if s.decode_attention == "grouped" else 0.0,
                assumption=f"{s.name}: {s.decode_attention} "
                f"({s.sources.get('decode_attention', '')}); applied: {self.settings_how}",
            )
        parts = self.engine_memory_parts()
        if parts and s.runtime_memory is not None and self.limits is not None:
            lim = self.limits
            out["stack.runtime_memory_bytes"] = Figure(
                sum(parts.values()),
                assumption=f"{s.name}: per device, for max_batch {lim.max_batch}, max_tokens "
                f"{lim.max_tokens}, max_seq_len {lim.max_seq_len}: "
                + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in parts.items())
                + f"; {s.runtime_memory.describe()}",
            )
        out["stack.kv_memory_fraction"] = Figure(
            s.kv_memory_fraction,
            assumption=f"{s.name}: {s.sources.get('kv_memory_fraction', '')}",
        )
        return out
