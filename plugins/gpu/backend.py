"""``GpuBackend``: NVIDIA/AMD GPUs priced analytically.

Compilation builds an :class:`~xpusim.engine.analytic.AnalyticCompiled` whose ops are priced by
:class:`~xpusim.plugins.gpu.efficiency.GpuCostModel` (tile and wave quantization, split-K,
flash attention, memory-bound vector ops, per-kernel overhead), whose collectives
(tensor-parallel all-reduces the model graph holds) run over the system's topology
(NVLink/NVSwitch, Infinity Fabric or PCIe inside a node, the NIC between nodes) as the
NCCL or RCCL runs them (:mod:`xpusim.plugins.gpu.fabrics`: per-call launch cost,
protocol and NVLS choice by size, fitted to public NCCL/RCCL sweeps), and
whose energy comes from :class:`~xpusim.engine.power.PowerModel`.

``system.options``:

* ``calibration``: path to a fitted efficiency JSON (:mod:`xpusim.plugins.gpu.calibration`);
* ``efficiency``: a mapping of :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` fields to
  override inline (applied after the calibration file);
* ``collective_algorithm``: ``auto`` (default), ``ring``, ``tree`` or ``hierarchical``;
* ``decode_attention``: the decode-attention kernel, ``grouped`` (default: a K/V head is
  loaded once for its query-head group, as FlashAttention-2, vLLM and TensorRT-LLM >= v0.8
  XQA do) or ``per-head`` (the masked MHA kernel of FasterTransformer and TensorRT-LLM
  <= v0.7, one thread block per query head); see :mod:`xpusim.plugins.gpu.efficiency`;
* ``nccl_nvls``: whether NCCL sets up NVLink SHARP (NVLS) on a fabric that has it (H100
  and H200 through NVSwitch): ``true`` (default, NCCL's own) prices NVLS all-reduces where
  the fabric's tuner picks them and holds the buffers NCCL binds on each GPU of a
  tensor-parallel group of three or more (:meth:`FabricProfile.buffer_bytes
  <xpusim.engine.collectives.FabricProfile.buffer_bytes>`: 288 MiB per GPU of the group);
  ``false`` (``NCCL_NVLS_ENABLE=0``, SGLang's setting) neither;
* ``attention_kernel``: the build of the fused attention kernel, ``flash-attn`` (default:
  the flash-attn package's kernels, as Megatron-LM and the serving engines call them) or
  ``torch-sdpa`` (PyTorch's ``scaled_dot_product_attention`` flash backend, as torchtitan
  and plain PyTorch training loops call it; its backward measured slower).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from xpusim.engine import collectives
from xpusim.engine.analytic import AnalyticCompiled, P2PPrice, P2PPricer
from xpusim.engine.backend import Backend, Support
from xpusim.engine.collectives import FabricProfile, P2PSchedule
from xpusim.engine.device import DeviceSpec, Figure
from xpusim.engine.errors import XpusimError
from xpusim.engine.graph import Collective
from xpusim.engine.model import ModelGraph
from xpusim.engine.power import PowerModel
from xpusim.engine.system import System, Topology
from xpusim.plugins.gpu import calibration as cal_mod
from xpusim.plugins.gpu.builtin_params import builtin_params
from xpusim.plugins.gpu.catalog import catalog as builtin_catalog
from xpusim.plugins.gpu.efficiency import (
    ATTENTION_KERNELS,
    DECODE_ATTENTION,
    AttentionKernel,
    DecodeAttention,
    GpuCostModel,
    GpuEfficiency,
)
from xpusim.plugins.gpu.fabrics import fabric_for, p2p_kernel_for, scale_out_profile
from xpusim.plugins.gpu.measure import calibrate_from_points, calibrate_gpu
from xpusim.plugins.gpu.vectorwork import WithVectorWork

SUPPORTED_KINDS = ("decoder", "encoder", "vision", "mlp", "spiking", "custom")
"""Model kinds the GPU backend runs (spiking networks as time-stepped dense ops)."""


class GpuOptions(BaseModel):
    """``systems[].options`` of the gpu backend (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    calibration: str | None = None
    """Path to a fitted efficiency JSON."""
    efficiency: dict[str, float | int] | None = None
    """:class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` fields overridden inline."""
    collective_algorithm: Literal["auto", "ring", "tree", "hierarchical"] = "auto"
    """The collective algorithm (``auto`` picks the fastest)."""
    decode_attention: DecodeAttention = "grouped"
    """The decode-attention kernel."""
    attention_kernel: AttentionKernel = "flash-attn"
    """The build of the fused attention kernel."""
    nccl_nvls: bool = True
    """Whether NCCL sets up NVLink SHARP where the fabric has it (NCCL's default;
    ``false`` is ``NCCL_NVLS_ENABLE=0``, as SGLang sets)."""


ENGINE_SETTINGS: dict[str, Any] = {
    k: GpuOptions.model_fields[k].default for k in ("nccl_nvls", "decode_attention")
}
"""The options a serving engine sets on the GPU it runs (NCCL's NVLS, its decode
kernel), with their defaults: what a stack profile may change by recompiling
(:meth:`~xpusim.engine.analytic.AnalyticCompiled.with_engine_settings`)."""


def _kernel_option(system: System, key: str, choices: tuple[str, ...]) -> str:
    """``system.options[key]``, one of ``choices`` (the first is the default)."""
    kind = str(system.options.get(key, choices[0]))
    if kind not in choices:
        raise XpusimError(
            f"system {system.name!r}: options.{key} must be one of "
            f"{', '.join(choices)}, got {kind!r}."
        )
    return kind


class GpuBackend(Backend):
    """The ``gpu`` backend (see module docstring)."""

    name = "gpu"
    description = (
        "NVIDIA and AMD data-centre GPUs and Intel Gaudi: roofline with GEMM tile/wave "
        "quantization, flash attention and NCCL-style collectives"
    )
    options = GpuOptions
    can_calibrate = True

    def catalog(self) -> Mapping[str, DeviceSpec]:
        """The built-in GPU catalog (``plugins/gpu/catalog.yaml``)."""
        return builtin_catalog()

    def supports(self, model: ModelGraph, workload: str) -> Support:
        """Every model kind with an op graph: decoder, encoder, vision, mlp, spiking and
        custom (a user module priced op by op from its traced graph)."""
        if model.kind in SUPPORTED_KINDS:
            return Support(True)
        return Support(
            False,
            f"the gpu backend prices models of kind {', '.join(SUPPORTED_KINDS)}; "
            f"{model.name!r} is of kind {model.kind!r}.",
        )

    # -- parameters -------------------------------------------------------------------

    def efficiency(self, system: System) -> tuple[GpuEfficiency, str]:
        """The efficiency parameters for ``system`` and where they came from."""
        eff, sources = self.efficiency_sources(system)
        return eff, "; ".join(dict.fromkeys(sources.values()))

    def efficiency_sources(self, system: System) -> tuple[GpuEfficiency, dict[str, str]]:
        """The efficiency parameters for ``system`` and, for each field, where its value
        came from: the stated defaults, the calibration file that fitted it, or the
        system's inline ``options.efficiency``."""
        eff, sources = builtin_params(system.device)
        path = system.options.get("calibration")
        if path:
            cal = cal_mod.load(path)
            names = {system.device.name, *system.device.aliases}
            if cal.device not in names:
                raise XpusimError(
                    f"system {system.name!r}: calibration {str(path)!r} was measured on "
                    f"{cal.device!r}, not on {system.device.name!r}; use a calibration of "
                    f"this device or remove options.calibration."
                )
            eff = cal.apply(eff)
            sources.update({name: f"fitted: {cal.cited()}" for name in cal.params})
        inline = system.options.get("efficiency")
        if inline:
            valid = GpuEfficiency.param_names()
            bad = [k for k in inline if k not in valid]
            if bad:
                raise XpusimError(
                    f"system {system.name!r}: unknown options.efficiency key(s) "
                    f"{', '.join(map(repr, bad))}; valid: {', '.join(valid)}."
                )
            eff = cal_mod.apply(eff, cal_mod.Calibration("", "", "", "", dict(inline)))
            sources.update({name: f"system {system.name!r} options.efficiency" for name in inline})
        return eff, sources

    @staticmethod
    def decode_attention(system: System) -> str:
        """The decode-attention kernel ``system.options.decode_attention`` names
        (``grouped`` by default), checked against :data:`DECODE_ATTENTION`."""
        return _kernel_option(system, "decode_attention", DECODE_ATTENTION)

    @staticmethod
    def attention_kernel(system: System) -> str:
        """The fused attention kernel ``system.options.attention_kernel`` names
        (``flash-attn`` by default), checked against :data:`ATTENTION_KERNELS`."""
        return _kernel_option(system, "attention_kernel", ATTENTION_KERNELS)

    def link_topology(self, system: System, eff: GpuEfficiency | None = None) -> Topology:
        """The system topology at the bandwidth collectives achieve (``link_fraction``)."""
        f = (eff or self.efficiency(system)[0]).link_fraction
        t = system.topology
        return replace(t, intra_bw=t.intra_bw * f, inter_bw=t.inter_bw * f)

    # -- compile ----------------------------------------------------------------------

    def compile(self, model: ModelGraph, system: System) -> AnalyticCompiled:
        """Compile ``model`` onto ``system`` (never raises for a model that does not fit)."""
        eff, sources = self.efficiency_sources(system)
        collective = self.collective_pricer(system, eff)
        assumptions = {
            f"gpu.efficiency.{f.name}": Figure(
                float(getattr(eff, f.name)),
                assumption=f"GPU cost-model parameter; {sources.get(f.name, 'default')}",
            )
            for f in fields(eff)
            if isinstance(getattr(eff, f.name), (int, float))
        }
        intra, how = self.fabric(system)
        group = self.node_group(system)
        assumptions["gpu.collectives.fabric"] = Figure(
            float(intra.protocols[0].launch_s),
            assumption=f"NCCL/RCCL fabric profile (LL launch seconds): {how}; {intra.source}",
        )
        return AnalyticCompiled(
            system,
            model,
            price_op=WithVectorWork(
                GpuCostModel(
                    system.device,
                    eff,
                    self.decode_attention(system),
                    self.attention_kernel(system),
                )
            ),
            collective=collective,
            power=PowerModel.from_device(system.device),
            catalog=self.devices(),
            reserve_bytes=eff.runtime_reserve_bytes,
            reserve_note="CUDA context, cuBLAS/attention workspaces and NCCL buffers "
            "(GpuEfficiency.runtime_reserve_bytes, assumption)",
            assumptions=assumptions,
            p2p_allreduce=self.p2p_pricer(system),
            recompile=lambda changes: self.compile(
                model, replace(system, options={**system.options, **changes})
            ),
            engine_settings=ENGINE_SETTINGS,
            collective_buffer_bytes=intra.buffer_bytes(group),
            collective_buffer_note=f"NCCL's NVLS buffers for the tensor-parallel group of "
            f"{group} GPUs ({intra.name} profile; options.nccl_nvls: "
            f"false drops them): {intra.nvls_rank_buffer_bytes:.0f} B per GPU of the group "
            "(NCCL's log in vllm-project/vllm#9699)",
        )

    @staticmethod
    def fabric(system: System) -> tuple[FabricProfile, str]:
        """The device fabric's NCCL/RCCL profile (:func:`fabric_for`), without NVLS
        where ``options.nccl_nvls`` is false, and how it was obtained."""
        intra, how = fabric_for(system.device)
        if intra.nvls and not bool(system.options.get("nccl_nvls", True)):
            return replace(intra, nvls=False), how + "; NVLS off (options.nccl_nvls: false)"
        return intra, how

    @staticmethod
    def node_group(system: System) -> int:
        """Devices of the tensor-parallel group inside one node (its communicator's
        share of the node's fabric)."""
        return max(1, min(system.parallelism.tensor, system.topology.devices_per_node))

    @staticmethod
    def p2p_pricer(system: System) -> P2PPricer:
        """The serving engines' peer-to-peer all-reduce kernels on ``system``'s scale-up
        fabric (:func:`~xpusim.plugins.gpu.fabrics.p2p_kernel_for`), at the catalog link
        rate."""
        bw = system.topology.intra_bw

        def pricer(kernel: str) -> tuple[P2PPrice | None, str]:
            prof, how = p2p_kernel_for(system.device, kernel)
            if prof is None:
                return None, how

            def price(nbytes: float, group: int, schedule: P2PSchedule) -> float:
                return collectives.p2p_allreduce_seconds(nbytes, group, bw, prof, schedule)

            return price, how

        return pricer

    def calibration_applies(self, path: Path, system: System) -> bool:
        """Whether the fitted file at ``path`` was measured on ``system``'s device."""
        cal = cal_mod.load(path)
        return cal.device in {system.device.name, *system.device.aliases}

    def calibrate(self, out_file: Path | None = None, points: Path | None = None) -> Path:
        """``xpusim calibrate --backend gpu``: measure kernels on ``cuda:0`` and fit
        :class:`~xpusim.plugins.gpu.efficiency.GpuEfficiency` (refuses clearly without CUDA);
        with ``points``, fit to that points file instead, on any machine."""
        if points is not None:
            _cal, path = calibrate_from_points(self.devices(), points, out_file)
        else:
            _cal, path = calibrate_gpu(self.devices(), out_file)
        return path

    def collective_seconds(
        self, kind: Collective, nbytes: float, group: int, system: System
    ) -> float:
        """One collective over ``system``'s topology, priced as NCCL/RCCL run it."""
        eff, _ = self.efficiency(system)
        return self.collective_pricer(system, eff)(kind, nbytes, group)

    def collective_pricer(
        self, system: System, eff: GpuEfficiency
    ) -> Callable[[Collective, float, int], float]:
        """Seconds of one collective on ``system``: the device fabric's fitted NCCL/RCCL
        profile inside a node (:mod:`xpusim.plugins.gpu.fabrics`), the scale-out link at
        ``link_fraction`` between nodes (:func:`xpusim.engine.collectives.nccl_collective_seconds`)."""
        intra, _how = self.fabric(system)
        inter = scale_out_profile(eff.link_fraction)
        topo = system.topology
        algorithm = str(system.options.get("collective_algorithm", "auto"))

        def price(kind: Collective, nbytes: float, group: int) -> float:
            return collectives.nccl_collective_seconds(
                kind, nbytes, group, topo, intra, inter, algorithm
            )

        return price
