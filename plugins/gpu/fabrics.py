"""Which NCCL/RCCL profile drives a GPU's scale-up fabric, and the scale-out one.

The fitted profiles live in ``plugins/gpu/fabrics.yaml``, written by
``python benchmarks/fit_collectives.py`` from public all-reduce sweeps (NCCL on 8× H200
and 8× A100, RCCL on 8× MI300X from the shared reference kernels; NCCL on 8 PCIe Gen4
GPUs over two CPU sockets from ``benchmarks/kernel_rows.yaml``; each profile records its
in-sample and held-out error). A device's fabric is chosen from its catalog ``scale_up``
link name:

==================  ===================  ==============================================
scale-up link       profile              basis
==================  ===================  ==============================================
NVLink 4            ``nvlink4``          fitted (8× H200 sweep, NCCL 2.27.7, NVLS on)
NVLink 3            ``nvlink3``          fitted (8× A100 nccl-tests sweep)
Infinity Fabric     ``infinity-fabric``  fitted (8× MI300X rccl-tests sweep)
PCIe Gen4           ``pcie4``            fitted (8 GPUs on two sockets, no GPU P2P: the
                                         ring through host memory)
PCIe, other gen.    ``pcie4``            inherited at the link's own rate
NVLink 5            ``nvlink4``          inherited: nearest fitted NVSwitch generation
other               ``nvlink3``          inherited, without NVLS: no public sweep
==================  ===================  ==============================================

:func:`fabric_for` returns the profile and a sentence saying whether it was fitted or
inherited, which the backend lists among a run's assumptions.

The serving engines' own peer-to-peer all-reduce kernels (``p2p_allreduce`` in the file:
vLLM's ``custom_all_reduce``, ``vllm``, and TensorRT-LLM's custom all-reduce, ``trtllm``)
are fitted on NVLink 4 (2 to 8 H100s) with their efficiency relative to the link rate;
:func:`p2p_kernel_for` gives one for a device: fitted on NVLink 4, inherited by the other
NVLink generations (the same kernel, at their own link rate), and none elsewhere (no
public sweep of these kernels on Infinity Fabric or PCIe: such a device's all-reduces stay
priced as its collective library runs them).

The scale-out stage (between nodes) has no fitted sweep: :func:`scale_out_profile` runs
one ``Simple``-protocol ring at ``link_fraction`` of the NIC rate with no extra launch
cost (the call's launch is paid by the intra-node stage), per hop the catalog's network
latency.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine.collectives import FabricProfile, P2PAllReduce, Protocol
from xpusim.engine.device import DeviceSpec

PROFILES_PATH = Path(__file__).with_name("fabrics.yaml")
"""The fitted profiles file shipped with the plugin."""

_BY_LINK: tuple[tuple[str, str, str], ...] = (
    ("nvlink 4", "nvlink4", "fitted"),
    ("nvlink 3", "nvlink3", "fitted"),
    ("infinity fabric", "infinity-fabric", "fitted"),
    ("pcie gen4", "pcie4", "fitted"),
    ("pcie", "pcie4", "inherited from PCIe Gen4 (8 GPUs on two sockets) at this link's rate"),
    ("nvlink 5", "nvlink4", "inherited from NVLink 4, the nearest fitted NVSwitch fabric"),
    ("nvlink", "nvlink4", "inherited from NVLink 4, the nearest fitted NVSwitch fabric"),
)


def _profile(name: str, raw: dict[str, Any], nvls: bool = True) -> FabricProfile:
    err = raw.get("error", {})
    source = (
        f"fitted to {raw.get('fitted_to')} (python benchmarks/fit_collectives.py): "
        f"held-out median |error| {100 * float(err.get('held_out_median_abs_error', 0)):.1f}%"
    )
    return FabricProfile(
        name=name,
        protocols=tuple(
            Protocol(str(p["name"]), float(p["launch_s"]), float(p["efficiency"]))
            for p in raw["protocols"]
        ),
        nvls=bool(raw.get("nvls", False)) and nvls,
        nvls_min_group=int(raw.get("nvls_min_group", 2)),
        nvls_launch_s=float(raw.get("nvls_launch_s", 0.0)),
        nvls_efficiency=float(raw.get("nvls_efficiency", 1.0)),
        mesh_links=int(raw.get("mesh_links", 0)),
        source=source,
        nvls_rank_buffer_bytes=float(raw.get("nvls_rank_buffer_bytes", 0.0)),
        nvls_buffer_min_group=int(raw.get("nvls_buffer_min_group", 3)),
    )


@cache
def _doc(path: Path = PROFILES_PATH) -> dict[str, Any]:
    """The profiles file, parsed once."""
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def profiles(path: Path = PROFILES_PATH) -> dict[str, dict[str, Any]]:
    """The raw fitted profiles by fabric name (read once)."""
    return dict(_doc(path)["fabrics"])


def fabric_for(device: DeviceSpec) -> tuple[FabricProfile, str]:
    """The collective profile of ``device``'s scale-up fabric and how it was obtained
    (table in the module docstring)."""
    link = (device.scale_up.name if device.scale_up is not None else "").lower()
    raw = profiles()
    for prefix, name, how in _BY_LINK:
        if link.startswith(prefix):
            return _profile(name, raw[name]), f"{name} profile, {how}"
    how = (
        f"nvlink3 profile without NVLS, inherited: no public sweep of {link or 'this link'} "
        f"(the nearest fitted fabric without in-switch reduction)"
    )
    return _profile("nvlink3", raw["nvlink3"], nvls=False), how


P2P_KERNELS: tuple[str, ...] = ("vllm", "trtllm")
"""The peer-to-peer all-reduce kernels the profiles file fits (module docstring)."""


def p2p_kernel_for(device: DeviceSpec, kernel: str) -> tuple[P2PAllReduce | None, str]:
    """The fitted peer-to-peer all-reduce ``kernel`` on ``device``'s scale-up fabric, or
    ``None`` where no profile applies, and a sentence saying which (module docstring)."""
    raw = (_doc().get("p2p_allreduce") or {}).get(kernel)
    if raw is None:
        raise ValueError(
            f"unknown p2p all-reduce kernel {kernel!r}; known: {', '.join(P2P_KERNELS)}"
        )
    link = (device.scale_up.name if device.scale_up is not None else "").lower()
    if not link.startswith("nvlink"):
        return None, (
            f"no public sweep of the {kernel} peer-to-peer all-reduce on "
            f"{link or 'this link'}: all-reduces priced as the collective library runs them"
        )
    held = raw["held_out"]
    how = (
        f"{kernel} peer-to-peer all-reduce fitted to {raw['fitted_to']} "
        f"(python benchmarks/fit_collectives.py): held-out median |error| "
        f"{100 * float(held['median_abs_error']):.1f}%"
    )
    if not link.startswith("nvlink 4"):
        how += f"; inherited on {link} from NVLink 4 at its own link rate"
    prof = P2PAllReduce(
        name=kernel,
        one_shot_s=float(raw["one_shot_s"]),
        two_shot_s=float(raw["two_shot_s"]),
        efficiency=float(raw["efficiency"]),
        source=how,
    )
    return prof, how


def scale_out_profile(link_fraction: float) -> FabricProfile:
    """The profile of the inter-node stage: one ``Simple`` ring at ``link_fraction`` of the
    NIC rate, no launch cost of its own (module docstring)."""
    return FabricProfile(
        name="scale-out",
        protocols=(Protocol("Simple", 0.0, link_fraction),),
        source="not fitted: GpuEfficiency.link_fraction of the NIC rate (assumption)",
    )
