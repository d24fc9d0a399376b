"""Fit the NCCL/RCCL fabric profiles to the public all-reduce sweeps.

Reads the all-reduce sweeps of the shared reference kernels file (``kernels.yaml``):

* ``h200_8gpu_allreduce_sweep_nvls`` — 8× H200, NVLink 4 through NVSwitch, NCCL 2.27.7
  through ``torch.distributed`` (NVLS on): fits the ``nvlink4`` profile (H100 and H200
  share the fabric). The 16 GiB ring figure with NVLS off
  (``h200_8gpu_collectives_16gib_comparison``) is fitted with it;
* ``a100_8gpu_nccl_tests_allreduce_sweep`` — 8× A100, NVLink 3, nccl-tests: ``nvlink3``;
* ``mi300x_rccl_tests_allreduce_1node_8gpu`` — 8× MI300X, Infinity Fabric full mesh,
  rccl-tests: ``infinity-fabric``;
* ``rtx4090_8gpu_2socket_pcie4_allreduce_no_p2p`` of this project's
  ``benchmarks/kernel_rows.yaml`` — 8 PCIe Gen4 GPUs over two CPU sockets without GPU
  peer-to-peer, nccl-tests: ``pcie4`` (the ring through host memory, as NCCL runs the
  hops that cross the sockets of a PCIe server).

Every third row of each sweep (the 2nd, 5th, 8th …) is held out of the fit and reported
separately. Held-out checks of other mechanisms: the NVLS-on/off bus bandwidth of 4 to 8
H200s at 8 GiB (``h200_b200_allreduce_nvls_vs_gpu_count``: how NVLS and the ring scale
with the group) and 2 against 8 MI300Xs at 4 GiB (``mi300x_allreduce_2_vs_8_gpus``: the
full mesh drives only ``p-1`` of its 7 links).

Model (:func:`xpusim.engine.collectives.nccl_flat_seconds`): per protocol ``LL`` and
``Simple`` a fixed launch cost and a bandwidth efficiency, per-hop latency the catalog's
link latency (1 µs), NVLS a fixed cost and an efficiency. Parameters are fitted by least
squares on log time.

The serving engines' own peer-to-peer all-reduce kernels
(:class:`xpusim.engine.collectives.P2PAllReduce`: vLLM's ``custom_all_reduce``, which
SGLang also runs, and TensorRT-LLM's custom all-reduce) are fitted to
``sglang_pr2904_custom_allreduce_h100`` of this project's ``benchmarks/kernel_rows.yaml``
(2, 4 and 8 H100s, NVLink 4): a one-shot and a two-shot fixed cost and one link
efficiency per kernel, on the rows of 1 MiB and more (the smaller ones were timed by a
host-launch-bound loop); the 2- and 8-GPU rows in sample, the 4-GPU rows held out. The
host-bound rows bound the fixed costs from above, which the fit checks.

Usage::

    python benchmarks/fit_collectives.py [--kernels PATH] [--extra PATH] [--out plugins/gpu/fabrics.yaml]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.collectives import (  # noqa: E402
    FabricProfile,
    P2PAllReduce,
    Protocol,
    nccl_flat_seconds,
    p2p_allreduce_seconds,
)
from xpusim.engine.graph import Collective  # noqa: E402

KERNELS = REPO.parent / "shared" / "reference" / "kernels.yaml"
EXTRA = REPO / "benchmarks" / "kernel_rows.yaml"
P2P_ENTRY = "sglang_pr2904_custom_allreduce_h100"
P2P_BW = 450e9
"""NVLink 4's rate per H100 and direction (the catalog's ``h100-sxm`` scale-up link), which
the p2p kernels' efficiencies are relative to."""
P2P_MIN_BYTES = 2**20
"""Rows below this size were timed by a host-launch-bound loop (the entry's notes)."""
P2P_KERNELS: dict[str, str] = {
    "vllm": "vLLM's custom_all_reduce (vllm-project/vllm#2192), run by vLLM and SGLang",
    "trtllm": "TensorRT-LLM's custom all-reduce plugin, as SGLang's port of it (sgl-kernel)",
}
OUT = REPO / "plugins" / "gpu" / "fabrics.yaml"
HOP_S = 1e-6
"""Per-hop latency: the catalog's NVLink/Infinity Fabric step latency (an assumption
stated in ``plugins/gpu/catalog.yaml``)."""

FABRICS: dict[str, dict[str, Any]] = {
    "nvlink4": {
        "sweep": "h200_8gpu_allreduce_sweep_nvls",
        "bw": 450e9,
        "nvls": True,
        "nvls_min_group": 5,
        "mesh_links": 0,
        "devices": "H100 SXM, H200 (NVLink 4 through NVSwitch)",
        "nvls_rank_buffer_bytes": 301989888,
        "nvls_buffer_min_group": 3,
        "nvls_buffers_source": "vllm-project/vllm#9699 (2024-10-25, 8x H200): NCCL's log "
        "'NVLS comm ... nHeads 8 buffSize 4194304 memSize 2097152 nvlsPerRankSize 301989888 "
        "nvlsTotalSize 2415919104' (nvlsTotalSize = nvlsPerRankSize x nHeads, bound on each "
        "GPU), and 'NVLS is only enabled for n > 2 GPUs'; disabling NVLS "
        "(NCCL_NVLS_ENABLE=0) left vLLM more KV-cache blocks than the 17,595 it had with it",
    },
    "nvlink3": {
        "sweep": "a100_8gpu_nccl_tests_allreduce_sweep",
        "bw": 300e9,
        "nvls": False,
        "nvls_min_group": 2,
        "mesh_links": 0,
        "devices": "A100 SXM (NVLink 3 through NVSwitch)",
    },
    "pcie4": {
        "sweep": "rtx4090_8gpu_2socket_pcie4_allreduce_no_p2p",
        "bw": 32e9,
        "nvls": False,
        "nvls_min_group": 2,
        "mesh_links": 0,
        "devices": "PCIe Gen4 x16 servers of up to 8 GPUs over two CPU sockets (L40S, L4): "
        "NCCL's ring through host memory where it crosses the sockets",
    },
    "infinity-fabric": {
        "sweep": "mi300x_rccl_tests_allreduce_1node_8gpu",
        "bw": 448e9,
        "nvls": False,
        "nvls_min_group": 2,
        "mesh_links": 7,
        "devices": "MI300X (Infinity Fabric full mesh, 7 peer links)",
    },
}
"""The fabrics fitted, the sweep each is fitted to, the catalog's per-direction link rate
and the fabric's structure (NVLS from NCCL's own algorithm report in the sweep's notes;
NVLS from 5 GPUs as the GPU-count table shows; the MI300X mesh of 7 peer links)."""


def entries(path: Path) -> dict[str, dict[str, Any]]:
    """The reference kernel entries by id."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {str(e["id"]): e for e in doc}


def sweep_rows(entry: dict[str, Any]) -> list[tuple[float, float]]:
    """(bytes, seconds) of an all-reduce sweep: ``time_us`` where printed, else the
    ``derived_time_us`` of ``size_B / algbw``; rows under 1 KiB are left out (their
    time is NCCL's floor, the 1 KiB row carries it)."""
    out = []
    for r in entry["rows"]:
        n = float(r["size_B"])
        t = r.get("time_us", r.get("derived_time_us"))
        if n >= 1024 and t is not None:
            out.append((n, float(t) * 1e-6))
    return out


def profile(name: str, spec: dict[str, Any], x: np.ndarray, source: str = "") -> FabricProfile:
    """The fabric profile of parameter vector ``x`` (launch times in µs)."""
    ll = Protocol("LL", float(x[0]) * 1e-6, float(x[1]))
    simple = Protocol("Simple", float(x[2]) * 1e-6, float(x[3]))
    return FabricProfile(
        name=name,
        protocols=(ll, simple),
        nvls=bool(spec["nvls"]),
        nvls_min_group=int(spec["nvls_min_group"]),
        nvls_launch_s=float(x[4]) * 1e-6 if spec["nvls"] else 0.0,
        nvls_efficiency=float(x[5]) if spec["nvls"] else 1.0,
        mesh_links=int(spec["mesh_links"]),
        source=source,
    )


def predict(prof: FabricProfile, bw: float, n: float, p: int = 8, algo: str = "auto") -> float:
    """Predicted all-reduce seconds."""
    return nccl_flat_seconds(Collective.ALL_REDUCE, n, p, bw, HOP_S, prof, algo)


def fit_one(
    name: str, spec: dict[str, Any], rows: list[tuple[float, float]], ring_rows: list
) -> tuple[FabricProfile, dict[str, Any]]:
    """Fit one fabric; returns the profile and its error report."""
    train = [r for i, r in enumerate(rows) if i % 3 != 1]
    held = [r for i, r in enumerate(rows) if i % 3 == 1]
    bw = float(spec["bw"])

    def resid(x: np.ndarray) -> np.ndarray:
        prof = profile(name, spec, x)
        res = [math.log(predict(prof, bw, n) / t) for n, t in train]
        res += [math.log(predict(prof, bw, n, 8, "ring") / t) for n, t in ring_rows]
        return np.array(res)

    x0 = np.array([10.0, 0.4, 20.0, 0.8, 30.0, 0.6])
    lo = np.array([0.0, 0.05, 0.0, 0.3, 0.0, 0.2])
    hi = np.array([200.0, 1.0, 400.0, 1.0, 400.0, 1.5])
    sol = least_squares(resid, x0, bounds=(lo, hi))
    prof = profile(name, spec, sol.x)

    def errs(rs: list[tuple[float, float]], algo: str = "auto") -> list[float]:
        return [predict(prof, bw, n, 8, algo) / t - 1 for n, t in rs]

    ins, out = errs(train) + errs(ring_rows, "ring"), errs(held)
    report = {
        "in_sample_rows": len(ins),
        "in_sample_median_abs_error": statistics.median(abs(e) for e in ins),
        "in_sample_max_abs_error": max(abs(e) for e in ins),
        "held_out_rows": len(out),
        "held_out_median_abs_error": statistics.median(abs(e) for e in out),
        "held_out_max_abs_error": max(abs(e) for e in out),
    }
    return prof, report


def check_group_scaling(ref: dict[str, dict[str, Any]], profs: dict[str, FabricProfile]) -> list:
    """Held-out checks of how the fitted profiles scale with the group size."""
    out = []
    nv = profs["nvlink4"]
    n = 8 * 2**30
    for r in ref["h200_b200_allreduce_nvls_vs_gpu_count"]["rows"]:
        if r["gpu"] != "H200":
            continue
        p = int(r["gpus"])
        for key, algo in (("busbw_GBps", "auto"), ("busbw_nvls_off_GBps", "ring")):
            t = predict(nv, 450e9, n, p, algo)
            bus = n / t * 2 * (p - 1) / p / 1e9
            out.append(
                {
                    "case": f"H200 x{p} 8 GiB {'NVLS on' if algo == 'auto' else 'NVLS off'}",
                    "measured_busbw_GBps": float(r[key]),
                    "predicted_busbw_GBps": round(bus, 1),
                    "error": bus / float(r[key]) - 1,
                }
            )
    mi = profs["infinity-fabric"]
    n = 4 * 2**30
    for r in ref["mi300x_allreduce_2_vs_8_gpus"]["rows"]:
        p = int(r["gpus"])
        t = predict(mi, 448e9, n, p)
        bus = n / t * 2 * (p - 1) / p / 1e9
        out.append(
            {
                "case": f"MI300X x{p} 4 GiB",
                "measured_busbw_GBps": float(r["busbw_GBps"]),
                "predicted_busbw_GBps": round(bus, 1),
                "error": bus / float(r["busbw_GBps"]) - 1,
            }
        )
    return out


def fit_p2p(name: str, rows: list[dict[str, Any]]) -> tuple[P2PAllReduce, dict[str, Any]]:
    """Fit kernel ``name``'s fixed costs and link efficiency to its rows of ``rows`` (least
    squares on log time over the GPU-bound rows at 2 and 8 GPUs; 4 GPUs held out)."""
    mine = [r for r in rows if r["kernel"] == name]
    timed = [(int(r["tp"]), float(r["bytes"]), float(r["ms"]) * 1e-3) for r in mine]
    bound = [t for t in timed if t[1] >= P2P_MIN_BYTES]
    fit = [t for t in bound if t[0] != 4]
    held = [t for t in bound if t[0] == 4]

    def kernel(x: np.ndarray) -> P2PAllReduce:
        return P2PAllReduce(name, float(x[0]), float(x[1]), float(min(1.0, x[2])))

    def resid(x: np.ndarray) -> np.ndarray:
        k = kernel(x)
        return np.array([math.log(p2p_allreduce_seconds(n, p, P2P_BW, k) / t) for p, n, t in fit])

    sol = least_squares(resid, x0=[5e-6, 10e-6, 0.5], bounds=([0, 0, 1e-3], [1e-4, 1e-4, 1.0]))
    k = kernel(sol.x)

    def errs(ts: list[tuple[int, float, float]]) -> list[float]:
        return [p2p_allreduce_seconds(n, p, P2P_BW, k) / t - 1 for p, n, t in ts]

    def summary(e: list[float]) -> dict[str, float | int]:
        a = [abs(x) for x in e]
        return {"rows": len(a), "median_abs_error": statistics.median(a), "max_abs_error": max(a)}

    small = errs([t for t in timed if t[1] < P2P_MIN_BYTES])
    report = {
        "fitted_to": f"{P2P_ENTRY} (benchmarks/kernel_rows.yaml), kernel {name!r}: the rows of "
        "1 MiB and more at 2 and 8 GPUs; the 4-GPU rows held out",
        "in_sample": summary(errs(fit)),
        "held_out": summary(errs(held)),
        "host_bound_rows": {
            "rows": len(small),
            "model_above_measured": sum(e > 0 for e in small),
            "largest_excess": max(small),
        },
    }
    return k, report


def main(argv: list[str] | None = None) -> int:
    """Fit every fabric, print the errors and write the profiles file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", type=Path, default=KERNELS)
    ap.add_argument("--extra", type=Path, default=EXTRA)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    ref = {**entries(args.kernels), **entries(args.extra)}
    profs: dict[str, FabricProfile] = {}
    reports: dict[str, dict[str, Any]] = {}
    for name, spec in FABRICS.items():
        rows = sweep_rows(ref[spec["sweep"]])
        ring_rows: list[tuple[float, float]] = []
        if name == "nvlink4":
            for r in ref["h200_8gpu_collectives_16gib_comparison"]["rows"]:
                if r["collective"] == "all_reduce" and not r["nvls"]:
                    n = 16 * 2**30
                    alg = float(r["busbw_GBps"]) * 8 / 14 * 1e9
                    ring_rows.append((n, n / alg))
        prof, rep = fit_one(name, spec, rows, ring_rows)
        profs[name] = prof
        reports[name] = rep
        print(
            f"{name:16s} in-sample {rep['in_sample_rows']:2d} rows median "
            f"{100 * rep['in_sample_median_abs_error']:.1f}% max "
            f"{100 * rep['in_sample_max_abs_error']:.1f}% | held-out {rep['held_out_rows']:2d} "
            f"rows median {100 * rep['held_out_median_abs_error']:.1f}% max "
            f"{100 * rep['held_out_max_abs_error']:.1f}%"
        )
    p2p_rows = list(entries(args.extra)[P2P_ENTRY]["rows"])
    p2p: dict[str, Any] = {}
    for kname, what in P2P_KERNELS.items():
        kern, rep = fit_p2p(kname, p2p_rows)
        p2p[kname] = {
            "kernel": what,
            "fabric": "nvlink4",
            "one_shot_s": kern.one_shot_s,
            "two_shot_s": kern.two_shot_s,
            "efficiency": kern.efficiency,
            **rep,
        }
        print(
            f"p2p {kname:12s} one-shot {1e6 * kern.one_shot_s:.1f} us, two-shot "
            f"{1e6 * kern.two_shot_s:.1f} us, {100 * kern.efficiency:.0f}% of the link | in-sample "
            f"median {100 * rep['in_sample']['median_abs_error']:.1f}% | held-out median "
            f"{100 * rep['held_out']['median_abs_error']:.1f}% max "
            f"{100 * rep['held_out']['max_abs_error']:.1f}%"
        )
    checks = check_group_scaling(ref, profs)
    for c in checks:
        print(
            f"  held-out {c['case']:26s} busbw measured {c['measured_busbw_GBps']:6.1f} "
            f"predicted {c['predicted_busbw_GBps']:6.1f} ({100 * c['error']:+.1f}%)"
        )
    doc: dict[str, Any] = {
        "format": "xpusim-fabric-profiles/1",
        "fitted": str(date.today()),
        "command": "python benchmarks/fit_collectives.py",
        "hop_s": HOP_S,
        "fabrics": {},
        "p2p_allreduce": p2p,
        "checks": checks,
    }
    for name, prof in profs.items():
        spec = FABRICS[name]
        doc["fabrics"][name] = {
            "devices": spec["devices"],
            "fitted_to": spec["sweep"],
            "protocols": [
                {"name": p.name, "launch_s": p.launch_s, "efficiency": p.efficiency}
                for p in prof.protocols
            ],
            "nvls": prof.nvls,
            "nvls_min_group": prof.nvls_min_group,
            "nvls_launch_s": prof.nvls_launch_s,
            "nvls_efficiency": prof.nvls_efficiency,
            "mesh_links": prof.mesh_links,
            **{
                k: spec[k]
                for k in ("nvls_rank_buffer_bytes", "nvls_buffer_min_group", "nvls_buffers_source")
                if k in spec
            },
            "error": reports[name],
        }
    args.out.write_text(
        "# Written by `python benchmarks/fit_collectives.py`; do not edit by hand.\n"
        + yaml.safe_dump(doc, sort_keys=False),
        encoding="utf-8",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
