"""Small networks: the ``mlp`` and ``cnn`` families.

Both build a real torch module and take their graphs from its meta trace (cached per
batch size), so they cost exactly what the module runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from xpusim.engine.graph import Shape
from xpusim.engine.model import ModelFamily
from xpusim.plugins.models.common import ModelDtype, TracedModelGraph, torch_dtype, validate_spec
from xpusim.plugins.models.vision import ImageModelGraph

__all__ = ["FAMILIES", "CNNConfig", "MLPConfig"]

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLPConfig(BaseModel):
    """A multi-layer perceptron: ``sizes`` lists the input, hidden and output widths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "mlp"
    sizes: list[PositiveInt] = Field(default=[784, 512, 512, 10], min_length=2)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    bias: bool = True
    dtype: ModelDtype = "bf16"


class MLP(nn.Module):
    """``Linear → act → … → Linear`` over ``sizes``."""

    def __init__(self, c: MLPConfig) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(c.sizes[:-1], c.sizes[1:], strict=True)):
            mods.append(nn.Linear(a, b, bias=c.bias))
            if i < len(c.sizes) - 2:
                mods.append(_ACT[c.activation]())
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNConfig(BaseModel):
    """A small convolutional classifier: per entry of ``channels`` one ``conv3x3 → ReLU →
    maxpool2`` stage, then a linear classifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "cnn"
    channels: list[PositiveInt] = Field(default=[32, 64], min_length=1)
    in_channels: PositiveInt = 3
    image_size: PositiveInt = 32
    kernel: PositiveInt = 3
    num_classes: PositiveInt = 10
    dtype: ModelDtype = "bf16"

    @model_validator(mode="after")
    def _check(self) -> CNNConfig:
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"image_size={self.image_size} is too small for {len(self.channels)} "
                f"pooling stages (needs >= {2 ** len(self.channels)})"
            )
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {self.kernel}")
        return self


class CNN(nn.Module):
    """``[conv → ReLU → maxpool] × len(channels) → flatten → linear``."""

    def __init__(self, c: CNNConfig) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        cin, size = c.in_channels, c.image_size
        for ch in c.channels:
            mods += [
                nn.Conv2d(cin, ch, c.kernel, padding=c.kernel // 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin, size = ch, size // 2
        self.features = nn.Sequential(*mods)
        self.fc = nn.Linear(cin * size * size, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class MLPModel(TracedModelGraph):
    """A configured MLP; graphs from its meta trace."""

    family_name = "mlp"
    model_kind = "mlp"

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__(cfg.name, cfg.dtype, cfg.model_dump())
        self.cfg = cfg

    def _make_module(self, device: str) -> nn.Module:
        with torch.device(device):
            m = MLP(self.cfg)
        return m.to(torch_dtype(self.cfg.dtype))

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """``(x,)`` of ``[batch, sizes[0]]``."""
        return (
            torch.zeros(
                max(1, shape.batch),
                self.cfg.sizes[0],
                dtype=torch_dtype(self.cfg.dtype),
                device=device,
            ),
        )


class CNNModel(ImageModelGraph):
    """A configured small CNN; graphs from its meta trace."""

    family_name = "cnn"
    model_kind = "vision"
    network = CNN
    cfg: CNNConfig


class MLPFamily(ModelFamily):
    """The ``mlp`` family (no presets; ``sizes`` describes the network)."""

    name = "mlp"
    description = "Multi-layer perceptron over a list of layer sizes"

    def configure(self, spec: Mapping[str, Any]) -> MLPModel:
        """Validate the fields into an :class:`MLPModel`."""
        cfg, _ = validate_spec(MLPConfig, spec, self.name, self.presets)
        return MLPModel(cfg)


class CNNFamily(ModelFamily):
    """The ``cnn`` family (no presets)."""

    name = "cnn"
    description = "Small convolutional classifier (conv-ReLU-maxpool stages, linear head)"

    def configure(self, spec: Mapping[str, Any]) -> CNNModel:
        """Validate the fields into a :class:`CNNModel`."""
        cfg, _ = validate_spec(CNNConfig, spec, self.name, self.presets)
        return CNNModel(cfg)


FAMILIES: list[ModelFamily] = [MLPFamily(), CNNFamily()]
"""The small-network families this module registers."""
