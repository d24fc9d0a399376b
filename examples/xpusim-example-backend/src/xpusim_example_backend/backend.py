"""``WaferBackend``: Cerebras-style wafer-scale engines priced by
:mod:`xpusim_example_backend.costmodel`.

Memory fit follows the regime. Resident: weights, KV cache and activations share the
SRAM, exactly like an accelerator's HBM. Weight streaming: the weights live in MemoryX
(catalog ``extra.memoryx_bytes``) and only the KV cache and activations need SRAM; a
model whose weights exceed MemoryX does not fit, and the reason says so.

``system.options``: ``regime`` (``auto`` — the default, decided by SRAM capacity —,
``resident`` or ``weight-streaming``) to force one; a forced ``resident`` whose weights
do not fit the SRAM is reported as not fitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from xpusim.engine import API_VERSION
from xpusim.engine.analytic import GB, AnalyticCompiled
from xpusim.engine.backend import Backend, Fit, Support
from xpusim.engine.collectives import collective_seconds
from xpusim.engine.device import DeviceSpec, Figure, spec_from_mapping
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Collective
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System
from xpusim_example_backend.costmodel import (
    REGIMES,
    RESIDENT,
    STREAMING,
    WaferOpPricer,
    WaferParams,
    choose_regime,
)

CATALOG = Path(__file__).with_name("catalog.yaml")
SUPPORTED_KINDS = ("decoder", "encoder", "vision", "mlp")
"""Model kinds made of GEMMs and vector ops, which the wafer's dataflow cores run."""


@lru_cache(maxsize=1)
def load_catalog(path: Path = CATALOG) -> Mapping[str, DeviceSpec]:
    """Parse the catalog YAML's ``devices:`` into specs of backend ``wafer``."""
    raw: Mapping[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {
        name: spec_from_mapping(name, "wafer", body, where=f"{path.name}:devices.{name}")
        for name, body in raw.get("devices", {}).items()
    }


class WaferCompiled(AnalyticCompiled):
    """An analytic compilation whose memory need depends on the regime."""

    regime: str = RESIDENT

    def memory_need(
        self,
        extra_bytes: float | Mapping[str, float] = 0.0,
        *,
        kv_tokens: int = 0,
        batch: int = 1,
        training: bool = False,
    ) -> Fit:
        """Resident: the engine's accounting (weights in SRAM). Streaming: weights are
        checked against MemoryX and left out of the SRAM need."""
        fit = super().memory_need(extra_bytes, kv_tokens=kv_tokens, batch=batch, training=training)
        if self.regime == RESIDENT:
            return fit
        parts = dict(fit.breakdown)
        weights = parts.pop("weights", 0.0)
        store = self.system.device.extra["memoryx_bytes"].value
        need = sum(parts.values())
        have = fit.have_bytes
        if weights > store:
            need += weights  # nowhere to keep them: counted against the wafer, and refused
            return Fit(
                False,
                need,
                have,
                {**parts, "weights": weights},
                f"{self.model.name} has {weights / GB:.1f} GB of weights per system, more "
                f"than the {store / GB:.0f} GB MemoryX store of {self.system.device.name}.",
                "Split the model over more systems with tensor or pipeline parallel.",
            )
        parts["weights_in_memoryx"] = 0.0
        if need <= have:
            return Fit(True, need, have, parts)
        return Fit(
            False,
            need,
            have,
            parts,
            f"with weights streamed from MemoryX, {self.model.name} still needs "
            f"{need / GB:.1f} GB of on-wafer SRAM (KV cache and activations) but "
            f"{self.system.device.name} has {have / GB:.1f} GB.",
            "Serve fewer concurrent tokens, or split over more systems.",
        )


class WaferOptions(BaseModel):
    """``systems[].options`` of the wafer backend; any other key is refused at load."""

    model_config = ConfigDict(extra="forbid")

    regime: Literal["auto", "resident", "weight-streaming"] = "auto"
    """``auto`` (decided by SRAM capacity), or a forced ``resident``/``weight-streaming``."""


class WaferBackend(Backend):
    """The ``wafer`` backend (see module docstring and ``costmodel``)."""

    name = "wafer"
    api_version = API_VERSION
    description = (
        "wafer-scale engines (Cerebras CS-2/CS-3): SRAM-resident or "
        "weight-streaming from MemoryX, decided by SRAM capacity"
    )
    options = WaferOptions

    def __init__(self, params: WaferParams | None = None) -> None:
        super().__init__()
        self.params = params or WaferParams()

    def catalog(self) -> Mapping[str, DeviceSpec]:
        """``wse-2`` and ``wse-3`` from ``catalog.yaml``."""
        return load_catalog()

    def supports(self, model: ModelGraph, workload: str) -> Support:
        """GEMM-based model kinds; spiking and unknown kinds are refused."""
        if model.kind in SUPPORTED_KINDS:
            return Support(True)
        return Support(
            False,
            f"the wafer backend runs models of kind "
            f"{', '.join(SUPPORTED_KINDS)}; {model.name!r} is of kind "
            f"{model.kind!r}.",
        )

    def regime(self, model: ModelGraph, system: System) -> str:
        """The regime ``system.options.regime`` asks for, or the one SRAM capacity picks."""
        asked = str(system.options.get("regime", "auto"))
        if asked not in ("auto", *REGIMES):
            raise XpusimError(
                f"system {system.name!r}: options.regime {asked!r} is not one of "
                f"auto, {', '.join(REGIMES)}."
            )
        if asked != "auto":
            return asked
        per_device = model.info.param_bytes / max(1, system.parallelism.model_parallel)
        return choose_regime(per_device, system.device, self.params)

    def compile(self, model: ModelGraph, system: System) -> WaferCompiled:
        """An analytic compilation in the chosen regime (never raises for size)."""
        regime = self.regime(model, system)

        def collective(kind: Collective, nbytes: float, group: int) -> float:
            return self.collective_seconds(kind, nbytes, group, system)

        compiled = WaferCompiled(
            system,
            model,
            price_op=WaferOpPricer(system.device, self.params, regime, model.info.dtype),
            collective=collective,
            power=PowerModel.from_device(system.device),
            catalog=self.devices(),
            assumptions={
                **self.params.figures(),
                "wafer.regime": Figure(
                    float(regime == STREAMING),
                    assumption=f"1 = weight streaming, 0 = resident; this compilation: {regime}",
                ),
            },
        )
        compiled.regime = regime
        return compiled

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """Collectives between systems over the SwarmX Ethernet fabric (alpha-beta)."""
        return collective_seconds(kind, nbytes, group, system.topology)
