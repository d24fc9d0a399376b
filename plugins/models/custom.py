"""The ``torch`` family: any user ``nn.Module``, costed by tracing it on ``meta``.

.. code-block:: yaml

    model:
      family: torch
      module: "mypkg.models:make_net"    # importable "package.module:factory"
      kwargs: {width: 256}               # passed to the factory
      inputs:                            # keyword inputs (a list gives positional ones)
        x: {shape: [8, 3, 224, 224], dtype: fp32}

The module must be allowed (``--allow-module mypkg`` or ``XPUSIM_ALLOW_MODULES``) and is
looked up in the scenario file's folder first: see :mod:`xpusim.engine.trust`, which
also runs the factory so that ``sys.exit()`` inside it is an input error. The factory runs
under ``torch.device("meta")``, so a module built the usual way
allocates no weights. The first dimension of every input is the batch: a graph for a
shape of ``batch`` B replaces it with B. Ops the tracer has no rule for are kept, priced by
their bytes, and listed by name and count in :attr:`TorchModel.unknown_ops` and in the
graph's notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from xpusim.engine.graph import Phase, Shape
from xpusim.engine.model import ModelFamily
from xpusim.engine.trust import load_factory, run_user
from xpusim.plugins.models.common import ModelDtype, TracedModelGraph, validate_spec

__all__ = ["FAMILIES", "InputSpec", "TorchModel", "TorchModelConfig"]

INPUT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Input tensor dtypes a ``torch`` model's ``inputs`` may name."""


class InputSpec(BaseModel):
    """One input tensor: its shape (first dimension = batch) and dtype."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[PositiveInt] = Field(min_length=1)
    dtype: Literal["fp32", "fp16", "bf16", "fp64", "int64", "int32", "int8", "uint8", "bool"] = (
        "fp32"
    )


class TorchModelConfig(BaseModel):
    """A user module: ``module: "pkg.mod:factory"``, factory ``kwargs`` and ``inputs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "torch"
    module: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputSpec] | list[InputSpec]
    dtype: ModelDtype = "bf16"

    @field_validator("module")
    @classmethod
    def _path(cls, v: str) -> str:
        mod, sep, attr = v.partition(":")
        if not sep or not mod or not attr:
            raise ValueError(f"expected 'package.module:factory', got {v!r}")
        return v


class TorchModel(TracedModelGraph):
    """A user's module; FORWARD/TRAIN graphs from its meta trace (per batch)."""

    family_name = "torch"
    model_kind = "custom"

    def __init__(self, cfg: TorchModelConfig) -> None:
        name = cfg.name if cfg.name != "torch" else cfg.module
        super().__init__(name, cfg.dtype, cfg.model_dump())
        self.cfg = cfg
        self._factory = load_factory(cfg.module, "model.module")
        # build and trace once now, so a bad factory or bad inputs fail at validation
        self.meta_module()
        batch = self._specs()[0].shape[0]
        self.trace(Shape(Phase.FORWARD, batch=batch))

    def _specs(self) -> list[InputSpec]:
        ins = self.cfg.inputs
        return list(ins.values()) if isinstance(ins, dict) else list(ins)

    def _make_module(self, device: str) -> torch.nn.Module:
        def make() -> torch.nn.Module:
            with torch.device(device):
                m = self._factory(**self.cfg.kwargs)
            if not isinstance(m, torch.nn.Module):
                raise TypeError(f"factory returned {type(m).__name__}, not a torch.nn.Module")
            return m

        return run_user(make, f"model.module: factory {self.cfg.module!r} failed")

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """The declared inputs with the first dimension set to ``shape.batch``; a mapping
        of keyword inputs is returned as a one-element tuple holding the dict."""

        def make(spec: InputSpec) -> torch.Tensor:
            dims = [max(1, shape.batch), *spec.shape[1:]]
            return torch.zeros(dims, dtype=INPUT_DTYPES[spec.dtype], device=device)

        ins = self.cfg.inputs
        if isinstance(ins, dict):
            return ({k: make(v) for k, v in ins.items()},)
        return tuple(make(s) for s in ins)

    def trace(self, shape: Shape) -> Any:
        """Trace with keyword inputs unpacked."""
        from xpusim.plugins.models.tracing import trace_module

        key = self._trace_key(shape)
        if key not in self._traces:
            args = self.example_inputs(shape, "meta")
            inputs: Any = args[0] if isinstance(self.cfg.inputs, dict) else args
            module = self.meta_module()
            tr = run_user(
                lambda: trace_module(module, inputs, self.dtype),
                f"model.inputs: module {self.cfg.module!r} failed on the given inputs",
            )
            self._traces[key] = tr
            for n, c in tr.unknown_ops.items():
                self.unknown_ops[n] = max(self.unknown_ops.get(n, 0), c)
        return self._traces[key]


class TorchFamily(ModelFamily):
    """The ``torch`` family: any importable ``nn.Module`` factory."""

    name = "torch"
    description = "Any user torch.nn.Module ('package.module:factory'), traced on meta"

    def configure(self, spec: Mapping[str, Any]) -> TorchModel:
        """Validate, import the factory, build the module on meta and trace it once."""
        cfg, _ = validate_spec(TorchModelConfig, spec, self.name, self.presets)
        return TorchModel(cfg)


FAMILIES: list[ModelFamily] = [TorchFamily()]
"""The custom-model families this module registers."""
