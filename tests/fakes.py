"""Small, explicit plugins for testing the engine's mechanics without real hardware models.

The cost formulas here are deliberately simple and stated, so tests can predict them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from xpusim import hookimpl
from xpusim.engine.backend import Backend, Compiled, Cost, Fit, Support
from xpusim.engine.device import DeviceSpec, Figure, PowerSpec, PriceSpec
from xpusim.engine.graph import Collective, Op, OpGraph, OpKind, Phase, Shape
from xpusim.engine.metrics import STEP_TIME_S, THROUGHPUT_SAMPLES_PER_S
from xpusim.engine.model import ModelFamily, ModelGraph, ModelInfo
from xpusim.engine.system import Parallelism, System
from xpusim.engine.workload import SystemRun, Workload, WorkloadContext

SRC = "test fixture"


def fake_device(name: str = "chip-a", memory_gb: float = 16.0, tflops: float = 100.0) -> DeviceSpec:
    """A device with round numbers."""
    return DeviceSpec(
        name=name,
        backend="fake",
        vendor="Test",
        description="test device",
        peak_flops={"bf16": Figure(tflops * 1e12, SRC)},
        memory_bytes=Figure(memory_gb * 1e9, SRC),
        memory_bw=Figure(1e12, SRC),
        power=PowerSpec(max_w=Figure(400.0, SRC), idle_w=Figure(100.0, SRC)),
        price=PriceSpec(on_demand=Figure(2.0 / 3600, SRC)),  # 2 USD/h in SI
    )


class FakeModel(ModelGraph):
    """A model of ``params`` parameters whose step is one GEMM per token."""

    def __init__(self, params: float = 1e9, kind: str = "decoder") -> None:
        self.info = ModelInfo(
            name="fake",
            family="fake",
            kind=kind,
            dtype="bf16",
            params=params,
            active_params=params,
            param_bytes=2 * params,
            kv_bytes_per_token=1e5,
            flops_per_token=2 * params,
            layers=1,
        )

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        t = max(1, shape.new_tokens)
        op = Op(
            "gemm",
            OpKind.MATMUL,
            flops=2 * self.info.params * t,
            bytes_read=self.info.param_bytes,
            dims=(t, 1, 1),
        )
        return OpGraph(shape.phase, (op,), shape)

    def module(self, device: str = "meta") -> Any:
        raise NotImplementedError(self)

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        raise NotImplementedError(self)


class FakeFamily(ModelFamily):
    """Family ``fake`` with presets ``small`` (1e9 params) and ``huge`` (1e12)."""

    name = "fake"
    description = "test family"
    presets: Mapping[str, Mapping[str, Any]] = {"small": {"params": 1e9}, "huge": {"params": 1e12}}

    def configure(self, spec: Mapping[str, Any]) -> ModelGraph:
        preset = spec.get("preset", "small")
        from xpusim.engine.errors import ScenarioError
        from xpusim.engine.registry import unknown_message

        if preset not in self.presets:
            raise ScenarioError(unknown_message("preset", preset, list(self.presets)))
        return FakeModel(float(self.presets[preset]["params"]))


class FakeCompiled(Compiled):
    """Step time = max(FLOPs / peak, bytes / bandwidth); energy = max power x time."""

    def _cost(self, shape: Shape) -> Cost:
        g = self.model.build(shape, self.system.parallelism)
        d = self.system.device
        t = max(g.flops / d.flops("bf16"), g.bytes / d.memory_bw.value)
        return Cost(t, t * 400.0, {"compute": t})

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        need = self.model.info.param_bytes + kv_tokens * self.model.kv_bytes_per_token
        have = self.system.device.memory_bytes.value
        return Fit(need <= have, need, have, reason="" if need <= have else "too big")


class FakeBackend(Backend):
    """Backend ``fake`` with devices chip-a (16 GB) and chip-b (80 GB)."""

    name = "fake"

    def catalog(self) -> Mapping[str, DeviceSpec]:
        return {"chip-a": fake_device("chip-a", 16), "chip-b": fake_device("chip-b", 80)}

    def supports(self, model: ModelGraph, workload: str) -> Support:
        return Support(model.kind != "spiking", "fake chips cannot run spiking models")

    def compile(self, model: ModelGraph, system: System) -> Compiled:
        return FakeCompiled(system, model)

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        return 0.0 if group <= 1 else nbytes / 1e11


class BatchConfig(BaseModel):
    """Schema of workload ``batch``: ``steps`` forward steps of ``batch`` tokens."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(default=3, ge=1)
    batch: int = Field(default=8, ge=1)


class BatchWorkload(Workload):
    """Runs ``steps`` forward steps back to back and reports samples per second."""

    name = "batch"
    schema = BatchConfig
    metrics = (THROUGHPUT_SAMPLES_PER_S, STEP_TIME_S)

    def simulate(self, config: BaseModel, ctx: WorkloadContext) -> SystemRun:
        assert isinstance(config, BatchConfig)
        c = ctx.compiled.cost(Shape(Phase.FORWARD, batch=config.batch))
        total = c.seconds * config.steps
        steps = pl.DataFrame(
            {
                "system": [ctx.system.name] * config.steps,
                "step": list(range(config.steps)),
                "start_s": [i * c.seconds for i in range(config.steps)],
                "end_s": [(i + 1) * c.seconds for i in range(config.steps)],
            }
        )
        devices = pl.DataFrame(
            {
                "system": [ctx.system.name],
                "replica": [0],
                "device": [0],
                "start_s": [0.0],
                "end_s": [total],
                "state": [c.state],
                "joules": [c.joules * config.steps],
            }
        )
        return SystemRun(
            metrics={
                "throughput_samples_per_s": config.batch * config.steps / total,
                "step_time_s": c.seconds,
            },
            frames={"steps": steps, "devices": devices},
            simulated_s=total,
        )


class FakePlugin:
    """A plugin object registering the fakes."""

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(FakeBackend())

    @hookimpl
    def register_models(self, register: Any) -> None:
        register(FakeFamily())

    @hookimpl
    def register_workloads(self, register: Any) -> None:
        register(BatchWorkload())
