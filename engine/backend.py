"""The contract between the engine and a hardware backend.

A backend is an object registered through ``register_backends``. It owns a device catalog,
decides whether it can run a model for a workload kind (:meth:`Backend.supports`), and
compiles a model onto a system into a :class:`Compiled`, which prices one step of a given
:class:`~xpusim.engine.graph.Shape` as a :class:`Cost`. The SimPy world calls :meth:`Compiled.cost`
many thousands of times, so implementations memoize per shape (:class:`MemoCompiled`
does this for you).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from xpusim.engine.apiversion import API_VERSION as API_VERSION
from xpusim.engine.collectives import P2PSchedule
from xpusim.engine.device import DeviceSpec, Figure
from xpusim.engine.errors import UnsupportedError
from xpusim.engine.graph import Collective, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one step on one replica.

    ``seconds`` of wall time; ``joules`` of device energy during those seconds for all the
    replica's devices (busy power, not idle power of other devices); ``breakdown`` splits
    the seconds by cause (``compute``, ``memory``, ``comm``, ``overhead`` ...), and the
    keys are what the power-state timeline records.
    """

    seconds: float
    joules: float
    breakdown: Mapping[str, float] = field(default_factory=dict)
    flops: float = 0.0

    def __post_init__(self) -> None:
        if not (self.seconds >= 0 and self.joules >= 0):
            raise ValueError(f"negative or NaN cost: {self.seconds} s, {self.joules} J")

    @property
    def state(self) -> str:
        """The dominant cause of time: the device power state for this step."""
        if not self.breakdown:
            return "busy"
        return max(self.breakdown.items(), key=lambda kv: kv[1])[0]


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether a model fits a system's memory, by how much, and what would fit.

    ``need_bytes``/``have_bytes`` are per device; ``reason`` and ``suggestion`` are full
    sentences when ``fits`` is false.
    """

    fits: bool
    need_bytes: float
    have_bytes: float
    breakdown: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    suggestion: str = ""


@dataclass(frozen=True, slots=True)
class Support:
    """A backend's answer to "can you run this model for this workload kind?"."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Seconds by cause of one training micro-batch on one pipeline-stage device, split
    into its ``forward`` pass, its ``backward`` pass (recomputation included) and the
    ``optimizer`` update; ``how`` says in words how the split was made (for the report)."""

    forward: Mapping[str, float]
    backward: Mapping[str, float]
    optimizer: Mapping[str, float]
    how: str


class NoOptions(BaseModel):
    """The options schema of a backend that takes none: every key is unknown."""

    model_config = ConfigDict(extra="forbid")


class Compiled(ABC):
    """A model compiled onto one system: prices steps and reports memory fit.

    Subclasses implement :meth:`_cost`; :meth:`cost` memoizes it per shape. The other
    methods are optional capabilities with documented defaults that a backend overrides
    where it knows better: :meth:`stage_costs` (training's forward/backward split),
    :meth:`collective_seconds` (collectives at the backend's link rates),
    :meth:`with_allreduce_kernel` (a serving engine's own all-reduce kernel),
    :meth:`with_engine_settings` (the backend options a serving engine sets),
    :attr:`reserve_bytes` (fixed runtime memory per device),
    :attr:`collective_buffer_bytes` (the collective library's buffers), :attr:`samples_in_turn`
    (a batch's samples run one after the other), :attr:`replicas` and
    :meth:`rebind` (event-driven backends whose cost depends on a workload's run
    settings), :meth:`mapping_facts` (what a placing backend decided),
    :meth:`power_model` and :meth:`figures_used`.
    """

    reserve_bytes: float = 0.0
    """Fixed runtime memory per device (runtime context, library workspaces) that every
    plan needs besides weights, activations and optimizer state; default none."""

    collective_buffer_bytes: float = 0.0
    """Memory per device the collective library binds for the model-parallel group's
    communicator (NCCL's NVLink SHARP buffers on NVSwitch GPUs), held beside the runtime
    reserve when an inference run sizes its KV cache; default none."""

    samples_in_turn: bool = False
    """Whether a step of a batch runs its samples in turn, the k-th finished when a step
    of k samples would have ended (an event-driven chip running copies of a network in
    real time), rather than all together at the end of the step; default false."""

    def __init__(self, system: System, model: ModelGraph) -> None:
        self.system = system
        self.model = model
        self._memo: dict[Shape, Cost] = {}

    def cost(self, shape: Shape) -> Cost:
        """Return the cost of one step of ``shape`` on one replica (memoized)."""
        c = self._memo.get(shape)
        if c is None:
            c = self._cost(shape)
            self._memo[shape] = c
        return c

    @abstractmethod
    def _cost(self, shape: Shape) -> Cost:
        """Price one step of ``shape``; called once per distinct shape."""
        raise NotImplementedError(self)

    @abstractmethod
    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        """Memory need per device for weights plus ``kv_tokens`` of KV cache (serving)
        or the activations of ``batch`` (training), against device memory."""
        raise NotImplementedError(self)

    def kv_capacity_tokens(self, reserve_fraction: float = 0.9) -> int:
        """KV-cache tokens that fit per replica after weights, using ``reserve_fraction``
        of device memory (the rest is activations and allocator slack)."""
        f = self.fit(kv_tokens=0)
        free = self.system.device.memory_bytes.value * reserve_fraction - f.need_bytes
        per_tok = self.model.kv_bytes_per_token / max(1, self.system.parallelism.tensor)
        if per_tok <= 0:
            return 0
        return max(0, int(free // per_tok))

    def power_model(self) -> PowerModel | None:
        """The power model that energy accounting integrates over this system's device
        timeline. The default builds it from the device's catalog figures and returns
        ``None`` when the device publishes no maximum power (energy is then "not known").
        Backends with their own power model (measured, per-chip) override it."""
        if self.system.device.power.max_w is None:
            return None
        return PowerModel.from_device(self.system.device)

    def figures_used(self) -> dict[str, Figure]:
        """Catalog figures this compilation relied on (for 'Assumptions and sources')."""
        return self.system.device.figures()

    @property
    def replicas(self) -> int:
        """Independent copies of the model the system runs at once. The default is the
        system's data-parallel replicas; a backend whose devices together run one copy
        (a neuromorphic machine of several boards) says 1."""
        return self.system.replicas

    def rebind(self, model: ModelGraph) -> Compiled:
        """This system compiled for ``model``, a copy of the compiled model with a
        workload's run settings applied (a spiking workload's input rate or timestep).
        The default keeps this compilation: its costs do not depend on those settings.
        A backend whose costs do (an event-driven chip counting spikes) compiles anew."""
        del model
        return self

    def mapping_facts(self) -> Mapping[str, float | bool]:
        """What the backend decided when it placed the model on the system, by summary
        key (a neuromorphic backend: ``boards``, ``network_copies``, ``chips_used``,
        ``cores_used``, ``neurons_per_core``, ``routing_entries``, ``real_time_factor``,
        ``required_time_scale_factor``, ``fits_real_time``), for the run's summary. The
        default: nothing, an analytic backend places nothing beyond its cost model."""
        return {}

    def collective_seconds(self, kind: Collective, nbytes: float, group: int) -> float | None:
        """Seconds of one ``kind`` collective of ``nbytes`` per device over ``group``
        devices at the link rates this compilation achieves, or ``None`` (the default)
        when the backend prices no collectives itself; the engine then uses the
        system's topology at its catalog link rates."""
        del kind, nbytes, group
        return None

    def with_allreduce_kernel(
        self, kernel: str, max_bytes: float, *, schedule: P2PSchedule = "cheaper"
    ) -> tuple[Compiled, str]:
        """This compilation with its all-reduces of at most ``max_bytes`` per device over
        a group inside one node run by a serving engine's own peer-to-peer kernel
        ``kernel`` (``vllm``: vLLM's ``custom_all_reduce``, which SGLang also runs;
        ``trtllm``: TensorRT-LLM's custom all-reduce) on ``schedule`` (the cheaper of
        its one-shot and two-shot schedules, or one-shot only:
        :data:`~xpusim.engine.collectives.P2PSchedule`) instead of the collective
        library, and a sentence saying how they are priced. The default keeps this
        compilation and says so: a backend with no model of such kernels prices every
        collective as it does."""
        del max_bytes, schedule
        return self, (
            f"{kernel} peer-to-peer all-reduce not modelled by the {self.system.backend} "
            "backend: collectives priced as the backend prices them"
        )

    def with_engine_settings(self, settings: Mapping[str, Any]) -> tuple[Compiled, str]:
        """This compilation with the backend options a serving engine sets, ``settings``
        (option name to value: the GPU backend's ``nccl_nvls``, which SGLang turns off,
        and ``decode_attention``, the engine's decode kernel), and a sentence saying what
        applied. The default keeps this compilation: a backend without such settings has
        nothing to change."""
        names = ", ".join(sorted(settings)) or "none"
        return self, f"the {self.system.backend} backend has no engine settings ({names})"

    def stage_costs(self, shape: Shape) -> StageCosts:
        """The forward, backward and optimizer seconds by cause of one training
        micro-batch of ``shape`` on one pipeline-stage device. The default divides
        :meth:`cost` by the pipeline depth and splits it forward:backward 1:2 (the
        backward pass computes gradients of both activations and weights); analytic
        backends price the model's stage graphs instead."""
        cost = self.cost(shape)
        p = max(1, self.system.parallelism.pipeline)
        br = dict(cost.breakdown) if cost.breakdown else {"compute": cost.seconds}
        scale = cost.seconds / max(sum(br.values()), 1e-300) / p
        stage = {k: v * scale for k, v in br.items()}
        return StageCosts(
            forward={k: v / 3 for k, v in stage.items()},
            backward={k: 2 * v / 3 for k, v in stage.items()},
            optimizer={},
            how="Compiled.cost / pipeline; forward:backward split 1:2",
        )


class Backend(ABC):
    """A hardware backend.

    Contract: ``name`` is the registered key; ``api_version`` the engine API targeted;
    :meth:`devices` is the catalog (the host adds devices registered by other plugins
    through :meth:`add_device`); :meth:`supports` answers without raising;
    :meth:`compile` returns a :class:`Compiled`; :meth:`collective_seconds` prices one
    collective over the system's links.

    Declared, with defaults: :attr:`options`, the schema of ``systems[].options`` (a
    pydantic model with ``extra="forbid"``; the scenario loader validates every system's
    options against its backend's and reports an unknown key with the valid ones);
    :attr:`can_calibrate` and :meth:`calibrate`, measuring this machine into a
    calibration file; :meth:`calibration_applies`, whether a calibration file belongs to
    a system (``xpusim run --calibration FILE``).
    """

    name: str = ""
    api_version: str = API_VERSION
    description: str = ""
    options: ClassVar[type[BaseModel]] = NoOptions
    """The schema of ``systems[].options`` for this backend (default: no options)."""
    can_calibrate: ClassVar[bool] = False
    """Whether :meth:`calibrate` measures anything (``xpusim calibrate --backend NAME``)."""

    def __init__(self) -> None:
        self._extra_devices: dict[str, DeviceSpec] = {}

    @abstractmethod
    def catalog(self) -> Mapping[str, DeviceSpec]:
        """The backend's own devices by name."""
        raise NotImplementedError(self)

    def devices(self) -> dict[str, DeviceSpec]:
        """Every device this backend can simulate: its catalog plus added ones."""
        out = dict(self.catalog())
        out.update(self._extra_devices)
        return out

    def add_device(self, spec: DeviceSpec) -> None:
        """Add a device registered by another plugin (``register_devices``)."""
        self._extra_devices[spec.name] = spec

    @abstractmethod
    def supports(self, model: ModelGraph, workload: str) -> Support:
        """Whether this backend can run ``model`` for workload kind ``workload``."""
        raise NotImplementedError(self)

    @abstractmethod
    def compile(self, model: ModelGraph, system: System) -> Compiled:
        """Compile ``model`` for ``system``; never raises for a model that does not fit
        (that is :meth:`Compiled.fit`'s answer)."""
        raise NotImplementedError(self)

    @abstractmethod
    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """Seconds for one ``kind`` collective of ``nbytes`` per device over ``group``
        devices of ``system``, on the slowest link it crosses."""
        raise NotImplementedError(self)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` validated against :attr:`options`: the keys given, with their values
        as the schema reads them. Raises pydantic's ``ValidationError`` naming an unknown
        key or a bad value (the scenario loader turns it into a located message)."""
        return self.options.model_validate(dict(options)).model_dump(exclude_unset=True)

    def calibrate(self, out_file: Path | None = None, points: Path | None = None) -> Path:
        """Measure this machine (or fit the measured kernel times in ``points``) and write
        the backend's calibration file to ``out_file`` (default: the backend's own
        place); return its path. Raises :class:`~xpusim.engine.errors.XpusimError` with
        the fix when the backend cannot (the default: it measures nothing), or when it
        takes no ``points`` file and one is given."""
        del out_file, points
        raise UnsupportedError(
            f"backend {self.name!r} has no calibration: it measures nothing on this machine"
        )

    def calibration_applies(self, path: Path, system: System) -> bool:
        """Whether the calibration file ``path`` was measured for ``system``'s device, so
        ``xpusim run --calibration FILE`` attaches it there. Default: no file applies."""
        del path, system
        return False
