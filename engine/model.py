"""The contract between the engine and a model plugin.

A model family (registered through ``register_models``) turns a scenario's ``model:``
block into a :class:`ModelGraph`: the object backends compile. It knows the model's
static facts (parameters, KV-cache bytes per token) and builds the per-device
:class:`~xpusim.engine.graph.OpGraph` of a step for any :class:`~xpusim.engine.graph.Shape` and
:class:`~xpusim.engine.system.Parallelism` without re-tracing, and it can build the real
``torch.nn.Module`` for backends that execute (the CPU backend) and for checking the
parametric graph against a trace.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Shape
from xpusim.engine.system import Parallelism

if TYPE_CHECKING:  # torch is heavy; only type checkers need it here
    import torch


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Static facts about a configured model.

    ``kind`` is the structural class backends use to decide support: ``decoder``,
    ``encoder``, ``vision``, ``mlp``, ``spiking`` (plugins may add others).
    ``params`` counts all parameters; ``active_params`` those used per token (MoE).
    ``kv_bytes_per_token`` is the KV cache of one token over all layers, unsharded.
    ``kv_window`` is the number of most recent tokens a sliding-window layer's cache keeps
    (0: the model has no such layers) and ``kv_window_bytes_per_token`` the share of
    ``kv_bytes_per_token`` those layers hold, so a sequence of ``c`` tokens caches
    :meth:`kv_sequence_bytes` ``= (kv_bytes_per_token - kv_window_bytes_per_token) × c +
    kv_window_bytes_per_token × min(c, kv_window)`` bytes.
    ``flops_per_token`` is forward FLOPs per token at zero context (2·active params plus
    attention projections; attention over context is added per shape).
    """

    name: str
    family: str
    kind: str
    dtype: str
    params: float
    active_params: float
    param_bytes: float
    kv_bytes_per_token: float = 0.0
    flops_per_token: float = 0.0
    layers: int = 0
    max_seq_len: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    kv_window: int = 0
    kv_window_bytes_per_token: float = 0.0

    @property
    def kv_full_bytes_per_token(self) -> float:
        """KV bytes per token of the layers that keep every token (all of them when the
        model has no sliding-window layers)."""
        return self.kv_bytes_per_token - self.kv_window_bytes_per_token

    def kv_sequence_bytes(self, tokens: int) -> float:
        """KV-cache bytes of one sequence of ``tokens`` tokens over all layers, unsharded:
        full-attention layers keep every token, sliding-window layers at most
        ``kv_window``."""
        kept = min(tokens, self.kv_window) if self.kv_window else tokens
        return self.kv_full_bytes_per_token * tokens + self.kv_window_bytes_per_token * kept


BACKWARD = "bwd."
"""Name prefix of a training graph's gradient ops (a backend prices a fused attention's
backward by it)."""
RECOMPUTE = "recompute."
"""Name prefix of the forward ops a training graph recomputes for the backward."""
BACKWARD_PREFIXES = (BACKWARD, RECOMPUTE)
"""Name prefixes that mark an op of a training graph as backward work (gradients, and the
forward ops recomputed for them): the naming contract of :meth:`ModelGraph.training_stages`."""


@dataclass(frozen=True, slots=True)
class StageGraphs:
    """A training step's per-device graph split by pass: ``forward``, ``backward``
    (recomputation included; empty when the model does not list its backward ops) and
    ``optimizer``. Pipeline send/receive ops belong to none: the training model prices
    them with their placement."""

    forward: OpGraph
    backward: OpGraph
    optimizer: OpGraph


def _is_pipeline_comm(op: Op) -> bool:
    return op.kind is OpKind.COLLECTIVE and (
        op.layer == "pipeline" or op.collective is Collective.SEND_RECV
    )


@dataclass(frozen=True)
class EagerCalls:
    """Work one eager step makes that an op graph does not list: ``views`` view or
    metadata ops (reshape, transpose, slicing: no arithmetic, but one dispatch each) and
    ``modules`` ``nn.Module`` calls (one Python call each)."""

    views: int = 0
    modules: int = 0


class ModelGraph(ABC):
    """A configured model that builds op graphs for shapes and parallel plans.

    Optional, with documented defaults: :meth:`weight_bytes_per_device` (weights on one
    device of a parallel plan), :meth:`activation_bytes` (training memory),
    :meth:`training_stages` (which ops of a training graph are forward, backward and
    optimizer work) and :meth:`eager_calls` (the view ops and module calls an eager step
    makes besides its graph's ops).
    """

    info: ModelInfo

    @property
    def name(self) -> str:
        """The model's display name (preset or family)."""
        return self.info.name

    @property
    def kind(self) -> str:
        """Structural class (``decoder``, ``encoder``, ``vision``, ``mlp``, ``spiking``)."""
        return self.info.kind

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token over all layers, before tensor-parallel sharding."""
        return self.info.kv_bytes_per_token

    @abstractmethod
    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """The op graph one device runs for one step of ``shape`` under ``parallel``
        (tensor-parallel shards and their collectives; a pipeline stage holds
        ``layers / pipeline`` layers)."""
        raise NotImplementedError(self)

    @abstractmethod
    def module(self, device: str = "meta") -> torch.nn.Module:
        """A real ``torch.nn.Module`` of this configuration on ``device``."""
        raise NotImplementedError(self)

    @abstractmethod
    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """Inputs for :meth:`module` matching ``shape`` (token ids, images, spikes)."""
        raise NotImplementedError(self)

    def weight_bytes_per_device(self, parallel: Parallelism) -> float:
        """Weight bytes one device of a replica holds under ``parallel``. The default
        splits :attr:`ModelInfo.param_bytes` evenly over ``tensor × pipeline``; a mixture
        of experts also splits its routed experts over ``parallel.expert`` devices."""
        return self.info.param_bytes / max(1, parallel.model_parallel)

    def kv_bytes_per_token_per_device(self, parallel: Parallelism) -> float:
        """KV-cache bytes one device holds per cached token under ``parallel``. The
        default splits :attr:`kv_bytes_per_token` evenly over ``tensor × pipeline``; a
        model whose cache a tensor split cannot divide (fewer KV heads than the degree, or
        one latent shared by all heads) keeps more on each device."""
        return self.kv_bytes_per_token / max(1, parallel.model_parallel)

    def eager_calls(self, shape: Shape) -> EagerCalls:
        """The view ops and module calls one eager step of ``shape`` makes (backends that
        price eager execution charge them as dispatch overhead). The default counts none;
        a model that can trace its own module counts them."""
        return EagerCalls()

    def recomputable(self) -> frozenset[str]:
        """The modules (:data:`~xpusim.engine.recompute.RECOMPUTE_MODULES`) whose selective
        recomputation this model prices: its training graph reruns them and
        :meth:`activation_bytes` drops what they keep under ``selective:<modules>``. The
        default: the attention core alone, plain ``selective``."""
        return frozenset({"core_attn"})

    def activation_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """Activation memory per device kept for the backward pass of a micro-batch of
        ``shape`` under ``recompute`` (``none``, ``selective``, ``full``, or
        ``selective:<modules>`` of :meth:`recomputable`). The default counts the graph's
        written bytes once, a coarse but safe upper bound."""
        g = self.build(shape, parallel)
        total = sum(o.bytes_written * o.count for o in g.ops)
        return total if recompute == "none" else total * (0.5 if recompute == "selective" else 0.1)

    def head_activation_bytes(self, shape: Shape, parallel: Parallelism) -> float:
        """Activation memory per device that the last pipeline stage's output layer and loss
        keep for the backward pass of a micro-batch of ``shape`` (its logits' loss, for a
        language model), beside :meth:`activation_bytes`. The default counts none."""
        return 0.0

    def linear_input_bytes(self, shape: Shape, parallel: Parallelism, recompute: str) -> float:
        """The part of :meth:`activation_bytes` that is the inputs of linear layers, kept
        for their weight gradients. An FP8 training stack that keeps those inputs in FP8
        (Transformer Engine's ``Linear`` saves its quantized input) stores that part at
        one byte an element. The default says none is known (nothing is scaled)."""
        return 0.0

    def training_stages(self, graph: OpGraph) -> StageGraphs:
        """``graph``, a training step this model built, split into forward, backward and
        optimizer ops. The default reads the op contract: :attr:`OpKind.OPTIMIZER` ops are
        the optimizer's, ops whose names start with one of :data:`BACKWARD_PREFIXES` are
        backward work, the rest forward; pipeline send/receive ops are left out. A model
        that marks its passes another way overrides this."""
        ops = [o for o in graph.ops if not _is_pipeline_comm(o)]

        def sub(chosen: list[Op]) -> OpGraph:
            return OpGraph(graph.phase, tuple(chosen), graph.shape, graph.dtype)

        opt = [o for o in ops if o.kind is OpKind.OPTIMIZER]
        rest = [o for o in ops if o.kind is not OpKind.OPTIMIZER]
        bwd = [o for o in rest if o.name.startswith(BACKWARD_PREFIXES)]
        fwd = [o for o in rest if not o.name.startswith(BACKWARD_PREFIXES)]
        return StageGraphs(sub(fwd), sub(bwd), sub(opt))


def model_facts(model: ModelGraph, parallel: Parallelism) -> dict[str, float]:
    """The model figures every system's summary carries: total and active parameters,
    the weight bytes one device holds under ``parallel`` and, for a model with a KV cache,
    its bytes per token over all layers; for a model with sliding-window layers also the
    bytes per token of its full-attention layers (what each token past the window adds)
    and the window those layers' caches stop at."""
    info = model.info
    facts = {
        "model_params": float(info.params),
        "model_active_params": float(info.active_params),
        "weight_bytes_per_device": float(model.weight_bytes_per_device(parallel)),
    }
    if info.kv_bytes_per_token > 0:
        facts["kv_bytes_per_token"] = float(info.kv_bytes_per_token)
        if info.kv_window:
            facts["kv_bytes_per_token_full_layers"] = float(info.kv_full_bytes_per_token)
            facts["kv_window_tokens"] = float(info.kv_window)
    return facts


class ModelFamily(ABC):
    """A family of models (``llama``, ``resnet``, ``snn`` ...) with named presets.

    Contract: ``name`` is the registered key; ``presets`` maps a preset name to its
    architecture fields (each citing its source in ``presets_sources``); :meth:`configure`
    validates a scenario's ``model:`` block (``preset`` plus field overrides) and returns a
    :class:`ModelGraph`, raising :class:`~xpusim.engine.errors.ScenarioError` naming the field.
    """

    name: str = ""
    description: str = ""
    api_version: str = "1"
    presets: Mapping[str, Mapping[str, Any]] = {}
    presets_sources: Mapping[str, str] = {}

    @abstractmethod
    def configure(self, spec: Mapping[str, Any]) -> ModelGraph:
        """Build a configured model from a scenario ``model:`` mapping (without
        ``family``): ``preset``, ``dtype`` and architecture fields."""
        raise NotImplementedError(self)
