"""Memory a serving engine holds on each device besides the weights and the KV cache.

An engine that sizes its KV cache out of the memory left free once it is loaded
(TensorRT-LLM's ``kv_cache_free_gpu_mem_fraction``) first allocates, per device:

* ``context_bytes`` — a fixed amount: the CUDA context, the libraries' kernels and
  workspaces, the allocator's pool;
* ``token_hidden_bytes`` per token of the engine's ``max_num_tokens`` and unit of the
  model's hidden size — the activation memory TensorRT fixes at build time for the largest
  iteration ("activation size will be close to max number of input tokens * some constant
  factor", TensorRT-LLM ``docs/source/reference/memory.md``);
* per sequence slot of the engine's ``max_batch_size``: ``slot_vocab_bytes`` per entry of
  the vocabulary (the logits of every slot and the sampling and penalty workspaces over
  them), ``slot_token_bytes`` per position of ``max_seq_len`` (output ids, log-probs and
  the cache indirection of every slot) and ``slot_bytes`` more (the top-k workspace).

So the cache an engine gets depends on the limits it was built with
(:class:`EngineLimits`): a larger ``max_batch_size`` can leave fewer sequences room.
:meth:`EngineMemory.parts` gives the three parts for a model and those limits; the
serving stack (:class:`~xpusim.plugins.workloads.serving.stacks.StackCompiled`) takes
them in place of the backend's generic runtime reserve and batch-1 activations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from xpusim.engine.model import ModelInfo

FIELDS: tuple[str, ...] = (
    "context_bytes",
    "token_hidden_bytes",
    "slot_vocab_bytes",
    "slot_token_bytes",
    "slot_bytes",
)
"""The figures of an engine's runtime memory, each with a source in the profile."""


@dataclass(frozen=True)
class EngineLimits:
    """The limits an engine is built or started with: ``max_batch`` sequence slots,
    ``max_tokens`` tokens an iteration and ``max_seq_len`` positions a sequence."""

    max_batch: int
    max_tokens: int
    max_seq_len: int


@dataclass(frozen=True)
class EngineMemory:
    """An engine's runtime memory per device (module docstring); ``sources`` maps each
    field of :data:`FIELDS` to the sentence that states where its figure comes from."""

    context_bytes: float
    token_hidden_bytes: float
    slot_vocab_bytes: float
    slot_token_bytes: float
    slot_bytes: float
    sources: Mapping[str, str]

    def parts(self, limits: EngineLimits, info: ModelInfo, tensor: int) -> dict[str, float]:
        """Bytes per device of each part for a model (``info``: its ``hidden`` and
        ``vocab``, the vocabulary padded to a multiple of the ``tensor`` group as
        TensorRT-LLM pads it) run under ``limits``."""
        hidden = float(info.config.get("hidden", 0) or 0)
        vocab = float(info.config.get("vocab", 0) or 0)
        group = max(1, tensor)
        vocab = math.ceil(vocab / group) * group
        per_slot = (
            self.slot_vocab_bytes * vocab
            + self.slot_token_bytes * max(0, limits.max_seq_len)
            + self.slot_bytes
        )
        return {
            "engine_context": self.context_bytes,
            "engine_activations": self.token_hidden_bytes * max(0, limits.max_tokens) * hidden,
            "engine_slots": per_slot * max(0, limits.max_batch),
        }

    def describe(self) -> str:
        """One sentence per figure, with its source."""
        return "; ".join(
            f"{k} {getattr(self, k):g} ({self.sources.get(k, 'stack profile')})" for k in FIELDS
        )


class EngineMemoryOverride(BaseModel):
    """``workload.stack.runtime_memory``: any of the figures, replacing the profile's."""

    model_config = ConfigDict(extra="forbid")

    context_bytes: float | None = Field(default=None, ge=0, description="fixed bytes per device")
    token_hidden_bytes: float | None = Field(
        default=None, ge=0, description="bytes per max_num_tokens token per hidden unit"
    )
    slot_vocab_bytes: float | None = Field(
        default=None, ge=0, description="bytes per max_batch_size slot per vocabulary entry"
    )
    slot_token_bytes: float | None = Field(
        default=None, ge=0, description="bytes per max_batch_size slot per max_seq_len position"
    )
    slot_bytes: float | None = Field(
        default=None, ge=0, description="bytes per max_batch_size slot"
    )


def engine_memory(values: Mapping[str, float], sources: Mapping[str, str]) -> EngineMemory | None:
    """The runtime memory a profile states as ``values`` (with ``sources``) by figure, or
    ``None`` where it states none. A stated block lacking a figure raises ``ValueError``
    naming it."""
    if not values:
        return None
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise ValueError(f"runtime_memory lacks {', '.join(missing)}")
    return EngineMemory(
        sources={k: sources.get(k, "stack profile") for k in FIELDS},
        **{k: float(values[k]) for k in FIELDS},
    )


def override_engine_memory(memory: EngineMemory | None, spec: EngineMemoryOverride) -> EngineMemory:
    """``memory`` with the figures ``spec`` sets replaced (each marked as the scenario's);
    a profile that states no runtime memory starts from zeros."""
    base = memory or EngineMemory(0.0, 0.0, 0.0, 0.0, 0.0, {})
    values = {k: getattr(base, k) for k in FIELDS}
    sources = dict(base.sources)
    for k in FIELDS:
        v = getattr(spec, k)
        if v is not None:
            values[k] = float(v)
            sources[k] = "scenario override (workload.stack.runtime_memory)"
    return EngineMemory(sources=sources, **values)
