"""Vision models: the ``resnet`` family (He et al. 2016), written here in plain torch.

Graphs come from tracing the real module on ``meta`` (cached per batch size): each
convolution becomes a CONV op with the GEMM it lowers to (im2col: ``m = N·Ho·Wo``,
``n = C_out``, ``k = C_in·kh·kw``), batch norms NORM ops, ReLUs and residual adds
ELEMENTWISE ops, the pools POOL ops and the classifier a MATMUL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from xpusim.engine.graph import Shape
from xpusim.engine.model import ModelFamily
from xpusim.plugins.models.common import ModelDtype, TracedModelGraph, torch_dtype, validate_spec
from xpusim.plugins.models.presets import VISION_SOURCES

__all__ = ["FAMILIES", "ResNet", "ResNetConfig", "ResNetModel"]

RESNET_PRESETS: dict[str, dict[str, Any]] = {
    "resnet-18": {"blocks": [2, 2, 2, 2], "bottleneck": False},
    "resnet-50": {"blocks": [3, 4, 6, 3], "bottleneck": True},
}


class ResNetConfig(BaseModel):
    """A ResNet: blocks per stage, basic or bottleneck blocks, input and classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "resnet"
    blocks: list[PositiveInt] = Field(min_length=1)
    bottleneck: bool = True
    width: PositiveInt = 64
    image_size: PositiveInt = 224
    in_channels: PositiveInt = 3
    num_classes: PositiveInt = 1000
    dtype: ModelDtype = "bf16"


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    """ResNet v1.5 (stride in the 3x3 convolution, as torchvision): stem 7x7/2 conv, 3x3/2
    max pool, four stages, global average pool, linear classifier."""

    def __init__(self, c: ResNetConfig) -> None:
        super().__init__()
        block = _Bottleneck if c.bottleneck else _Basic
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, c.width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(c.width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        cin = c.width
        for i, n in enumerate(c.blocks):
            width = c.width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class ImageModelGraph(TracedModelGraph):
    """A traced image classifier: its configuration names ``in_channels``, ``image_size``
    and ``dtype``, and :attr:`network` builds the torch module from it.

    Subclasses set ``family_name`` and ``network``; graphs come from the meta trace.
    """

    network: type[nn.Module]

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg.name, cfg.dtype, cfg.model_dump())
        self.cfg = cfg

    def _make_module(self, device: str) -> nn.Module:
        with torch.device(device):
            m = self.network(self.cfg)
        return m.to(torch_dtype(self.cfg.dtype))

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """``(images,)`` of ``[batch, in_channels, image_size, image_size]``."""
        c = self.cfg
        return (
            torch.zeros(
                max(1, shape.batch),
                c.in_channels,
                c.image_size,
                c.image_size,
                dtype=torch_dtype(c.dtype),
                device=device,
            ),
        )


class ResNetModel(ImageModelGraph):
    """A configured ResNet; FORWARD/TRAIN graphs from its meta trace (per batch)."""

    family_name = "resnet"
    model_kind = "vision"
    network = ResNet
    cfg: ResNetConfig


class ResNetFamily(ModelFamily):
    """The ``resnet`` family."""

    name = "resnet"
    description = "ResNet image classifiers (basic or bottleneck residual blocks)"
    presets: Mapping[str, Mapping[str, Any]] = RESNET_PRESETS
    presets_sources: Mapping[str, str] = VISION_SOURCES

    def configure(self, spec: Mapping[str, Any]) -> ResNetModel:
        """Validate ``preset`` + overrides into a :class:`ResNetModel`."""
        cfg, _ = validate_spec(ResNetConfig, spec, self.name, self.presets)
        return ResNetModel(cfg)


FAMILIES: list[ModelFamily] = [ResNetFamily()]
"""The vision families this module registers."""
