"""Validate the training step model against Megatron-LM's published throughput.

Predicts the ten rows of Narayanan et al. 2021, "Efficient Large-Scale Language Model
Training on GPU Clusters Using Megatron-LM" (SC'21, arXiv:2104.04473), Table 1 — the
``megatron_t1_*`` entries of ``shared/reference/figures.yaml`` (model size, GPUs, parallel
configuration, achieved TFLOP/s per GPU) — with the full machinery and one model for all
rows:

* the ``gpt`` transformer (vocabulary 51,200, sequence 2,048, FFN 4h, the row's layers,
  hidden and heads) built per pipeline stage by the model plugin, with
  ``attention: unfused``: the runs predate FlashAttention (Dao et al. 2022), and
  Megatron-LM computed attention with separate kernels that materialize every head's
  ``s × s`` scores (``megatron/model/transformer.py``, ``ParallelSelfAttention``: a
  ``torch.baddbmm`` for ``QKᵀ``, ``FusedScaleMaskSoftmax``, ``attention_dropout`` (0.1
  by default, ``--attention-dropout``), a ``torch.bmm`` for ``PV``); the paper's eq. (3)
  also counts the full ``s²`` of both GEMMs (its ``s/(6h)`` term), i.e. no causal
  skipping. At ``s = 2048`` this traffic matters most where ``h`` is small;
* the GPU backend's per-op costs on ``a100-sxm-80gb`` (its catalog figures: 312 TFLOP/s
  bf16 dense, ``a100_bf16``; NVLink 3, 600 GB/s bidirectional = 300 GB/s per direction,
  ``a100_mem_power_link``) and its default efficiency parameters;
* the DGX A100 topology of the catalog: 8 GPUs per node on NVSwitch, and one 200 Gb/s
  HDR InfiniBand adapter per GPU (8 × 200 Gb/s per node; the paper's §5 describes Selene's
  nodes with "8 NVIDIA 200 Gbps HDR Infiniband HCAs", as NVIDIA's DGX A100 datasheet does);
* the training step model (:mod:`xpusim.plugins.workloads.training.steps`): 1F1B pipeline with its bubble,
  tensor-parallel all-reduces inside each layer, pipeline sends with the scatter/gather
  optimization, and the data-parallel gradient all-reduce after the pipeline flush
  (Megatron-LM 2021 did not overlap it: ``overlap_grad_reduce: false``);
* the fp32 gradient accumulation of the 2021 code (``grad_accumulation: hook``): each
  micro-batch's 16-bit gradients added into the fp32 ``main_grad`` by a backward hook
  (``megatron/model/distributed.py``, ``param.main_grad.add_(param.grad.data)``), a
  memory-bound kernel per micro-batch.

Settings that Table 1 does not list, the same for every row (stated assumptions):
micro-batch 1; full activation recomputation (the paper's FLOP count "includes activation
recomputation" and its §5.1 footnote uses it for all runs); the non-interleaved schedule
(``virtual = 1``); fp16/bf16 at the 312 TFLOP/s peak.

The predicted "achieved TFLOP/s per GPU" uses the paper's own FLOP count (its eq. 3, which
is the hardware FLOPs of :func:`xpusim.plugins.workloads.training.steps.flops_per_token` with full
recomputation): ``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) / (GPUs × step time)``, so the
error of a row is the error of the predicted step time.

A second table, the **public table**, predicts the rows of ``benchmarks/training_rows.yaml``:
published training throughput figures beyond the 2021 table (Korthikanti et al. 2022's
Megatron-LM configurations up to 1T parameters with and without sequence parallelism and
selective recomputation; the Megatron-LM README's GPT-3 175B example on 1,024 A100s;
DeepSeek-V3's MoE / FP8 / expert-parallel / DualPipe pre-training; Nemotron-4 340B on 6,144
H100s; OpenLLaMA 7B on TPU v4 with fully sharded data parallelism; torchtitan's Llama 3.1
8B and 405B at 32K to 256K tokens with context parallelism), each with its full parallel
plan and source. A row's ``options`` are its system's backend options (the torchtitan rows
name ``attention_kernel: torch-sdpa``: torchtitan calls PyTorch's
``scaled_dot_product_attention``, not the flash-attn package). A row's ``workload`` may set ``grad_accumulation`` (default ``fused``) and
``fp8_recipe`` (``te``, the default, or ``torchao``); its ``device`` is a catalog name or,
for a part the catalog lacks, a derived device (``base`` plus the figures its source
gives), which keeps its base's fitted kernel efficiencies. The
prediction of a row is the step time of its plan
(:func:`xpusim.plugins.workloads.training.steps.step_time`) on its device and topology, on
the row's ``backend`` (``gpu`` unless stated); the error is that of the throughput (measured
time over predicted time, minus one). A row states its figure as ``iteration_s`` (seconds a
step), ``tokens_per_gpu_s`` or ``tflops_per_gpu``; the last is turned into a step time with
the FLOPs of the row's ``flops`` convention (``model``: forward and backward over the full
``s × s`` attention; ``hardware``: plus the recomputed forward). None of these rows is used
to fit anything. The table is summarised by ``kind`` (dense, moe, long-context, tpu).

Usage::

    python benchmarks/validate_training.py [--json OUT] [--figures PATH] [--rows PATH]
                                           [--efficiency KEY=VALUE ...] [--virtual V]
                                           [--attention unfused|flash]

``--efficiency`` overrides GPU cost-model parameters for *all* rows (a sensitivity check,
not a per-row constant); ``--attention flash`` prices the attention core as one fused
kernel instead, to show what the unfused implementation costs. Exit status 0 whatever the
errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.collectives import topology_from_device  # noqa: E402
from xpusim.engine.device import DerivedDevice, derive_device  # noqa: E402
from xpusim.engine.host import build_host  # noqa: E402
from xpusim.engine.model import ModelFamily  # noqa: E402
from xpusim.engine.system import Parallelism, System  # noqa: E402
from xpusim.engine.units import Dim, parse  # noqa: E402
from xpusim.plugins.workloads.training.plan import plan_memory  # noqa: E402
from xpusim.plugins.workloads.training.steps import step_time  # noqa: E402
from xpusim.plugins.workloads.training.workload import TrainingConfig, make_plan  # noqa: E402

FIGURES = REPO.parent / "shared" / "reference" / "figures.yaml"
ROWS = REPO / "benchmarks" / "training_rows.yaml"
DEVICE = "a100-sxm-80gb"
ATTENTION = "unfused"
"""The attention implementation the measured runs used (see the module docstring)."""


def megatron_rows(path: Path) -> list[dict[str, Any]]:
    """The ``megatron_t1_*`` entries of the reference figures, in file order."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = doc["entries"] if isinstance(doc, dict) else doc
    return [e for e in entries if str(e.get("id", "")).startswith("megatron_t1_")]


def paper_flops(c: dict[str, Any]) -> float:
    """FLOPs of one step by Narayanan et al. 2021 eq. (3) (with recomputation)."""
    b, s, l_, h, v = (c["global_batch"], c["seq_len"], c["layers"], c["hidden"], c["vocab"])
    return 96.0 * b * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h))


def _gpt_family(host: Any) -> ModelFamily:
    try:
        fam: ModelFamily = host.models.get("gpt")
        return fam
    except Exception:  # registry not wired yet: take the plugin's family directly
        from xpusim.plugins.models.transformer import FAMILIES

        return next(f for f in FAMILIES if f.name == "gpt")


def predict(
    row: dict[str, Any],
    host: Any,
    efficiency: dict[str, float],
    virtual: int = 1,
    attention: str = ATTENTION,
) -> dict[str, Any]:
    """Predict one Table 1 row; returns the row's figures, the prediction and its parts.
    ``attention`` is the model's attention implementation (``unfused``: what the
    measured runs used; ``flash`` only to show what that choice is worth)."""
    c = row["conditions"]
    n, t, p = int(c["GPUs"]), int(c["TP"]), int(c["PP"])
    model = _gpt_family(host).configure(
        {
            "layers": c["layers"],
            "hidden": c["hidden"],
            "heads": c["heads"],
            "vocab": c["vocab"],
            "seq_len": c["seq_len"],
            "dtype": "bf16",
            "attention": attention,
        }
    )
    gpu = host.backends.get("gpu")
    dev = gpu.devices()[DEVICE]
    v = virtual if (p > 1 and c["layers"] % (p * virtual) == 0) else 1
    par = Parallelism(data=n // (t * p), tensor=t, pipeline=p, virtual=v)
    options = {"efficiency": dict(efficiency)} if efficiency else {}
    system = System(f"selene-{n}", "gpu", dev, n, par, topology_from_device(dev), options)
    compiled = gpu.compile(model, system)
    config = TrainingConfig(
        global_batch=int(c["global_batch"]),
        micro_batch=1,
        seq_len=int(c["seq_len"]),
        steps=1,
        recompute="full",
        precision="bf16",
        grad_reduce_dtype="bf16",
        overlap_grad_reduce=False,
        grad_accumulation="hook",
    )
    plan = make_plan(config, model)
    st = step_time(compiled, model, plan, getattr(compiled, "power", None))
    pred = paper_flops(c) / (n * st.seconds) / 1e12
    actual = float(row["value"])
    return {
        "id": row["id"],
        "params_B": c["params_B"],
        "gpus": n,
        "tensor": t,
        "pipeline": p,
        "virtual": v,
        "global_batch": c["global_batch"],
        "actual_tflops_per_gpu": actual,
        "predicted_tflops_per_gpu": pred,
        "error": pred / actual - 1.0,
        "step_time_s": st.seconds,
        "microbatches": st.microbatches,
        "bubble_fraction": st.pipeline.bubble_fraction,
        "parts_s": {
            "compute": st.device_s.get("compute", 0.0),
            "memory": st.device_s.get("memory", 0.0),
            "overhead": st.device_s.get("overhead", 0.0),
            "tp_comm": st.stage_breakdown.get("comm", 0.0) * st.microbatches,
            "pp_comm": st.pipeline.p2p_s,
            "dp_comm_exposed": st.dp_exposed_s,
            "optimizer": st.optimizer_s,
            "bubble": st.bubble_s,
        },
    }


def public_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of the public table (``benchmarks/training_rows.yaml``), in file order."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = doc["rows"]
    return rows


def _row_flops(row: dict[str, Any], model_flops: float, hardware_flops: float) -> float:
    """The FLOPs of one step under the convention the row's source counts its TFLOP/s
    with (``flops: model`` or ``hardware``, i.e. with the recomputed forward; see
    :func:`xpusim.plugins.workloads.training.plan.flops_per_token`)."""
    convention = str(row.get("flops", "model"))
    if convention == "model":
        return model_flops
    if convention == "hardware":
        return hardware_flops
    raise ValueError(f"row {row['id']}: unknown FLOP convention {convention!r}")


def row_device(row: dict[str, Any], backend: Any) -> Any:
    """The device a row ran on: a catalog name, or a mapping as a scenario's derived
    device (:class:`~xpusim.engine.device.DerivedDevice`: ``base`` plus the figures the
    source gives, e.g. memory and bandwidth of a part the catalog lacks), which keeps its
    base's fitted kernel efficiencies as a scenario's does."""
    spec = row["device"]
    if isinstance(spec, str):
        return backend.devices()[spec]
    cfg = DerivedDevice.model_validate(spec)
    return derive_device(backend.devices()[cfg.base], cfg, f"rows.{row['id']}.device")


def predict_public(row: dict[str, Any], host: Any, efficiency: dict[str, float]) -> dict[str, Any]:
    """Predict one public-table row: the step time of its plan on its device and topology,
    compared on the row's metric (``iteration_s`` or ``tokens_per_gpu_s``)."""
    spec = dict(row["model"])
    family: ModelFamily = host.models.get(spec.pop("family"))
    model = family.configure(spec)
    kind = str(row.get("backend", "gpu"))
    backend = host.backends.get(kind)
    dev = row_device(row, backend)
    topo = topology_from_device(dev)
    links = row.get("topology") or {}
    if "scale_up_bandwidth" in links:
        topo = replace(topo, intra_bw=parse(links["scale_up_bandwidth"], Dim.BANDWIDTH))
    if "scale_out_bandwidth" in links:
        topo = replace(topo, inter_bw=parse(links["scale_out_bandwidth"], Dim.BANDWIDTH))
    par = Parallelism(**row["parallelism"])
    n = int(row["gpus"])
    if par.devices != n:
        raise ValueError(f"row {row['id']}: the plan uses {par.devices} devices, not {n}")
    options = dict(row.get("options") or {})
    if efficiency and kind == "gpu":
        options["efficiency"] = efficiency
    system = System(row["id"], kind, dev, n, par, topo, options)
    compiled = backend.compile(model, system)
    # the row's workload as a scenario's training workload: validated by the same model
    # and planned by the same function, so a row is predicted as a user's run would be
    config = TrainingConfig.model_validate({**row["workload"], "steps": 1})
    plan = make_plan(config, model)
    st = step_time(compiled, model, plan, compiled.power_model())
    need = plan_memory(model, par, plan, dev.memory_bytes.value, float(compiled.reserve_bytes))
    tokens = plan.tokens_per_step
    if row["metric"] == "iteration_s":
        actual_s = float(row["measured"])
    elif row["metric"] == "tokens_per_gpu_s":
        actual_s = tokens / (n * float(row["measured"]))
    elif row["metric"] == "tflops_per_gpu":
        flops = _row_flops(row, st.model_flops, st.hardware_flops)
        actual_s = flops / (n * float(row["measured"]) * 1e12)
    else:
        raise ValueError(f"row {row['id']}: unknown metric {row['metric']!r}")
    return {
        "id": row["id"],
        "kind": row["kind"],
        "gpus": n,
        "device": dev.name,
        "plan": {k: v for k, v in row["parallelism"].items()},
        "metric": row["metric"],
        "measured": float(row["measured"]),
        "actual_step_s": actual_s,
        "predicted_step_s": st.seconds,
        "error": actual_s / st.seconds - 1.0,
        "mfu_predicted": st.model_flops / (n * dev.flops("bf16") * st.seconds),
        "fits": need.fits,
        "memory_gb": need.total / 1e9,
        "bubble_fraction": st.pipeline.bubble_fraction,
        "parts_s": {
            "compute": st.device_s.get("compute", 0.0),
            "memory": st.device_s.get("memory", 0.0),
            "comm": st.device_s.get("comm", 0.0),
            "bubble": st.bubble_s,
        },
        "source": row["source"]["url"],
    }


def _public_table(
    path: Path, host: Any, eff: dict[str, float]
) -> tuple[list[dict[str, Any]], float, float]:
    """Predict and print the public table; returns its rows, median and max |error|."""
    out = [predict_public(r, host, eff) for r in public_rows(path)]
    print(
        f"\npublic table ({path.name}): {'row':34s} {'GPUs':>5s} {'actual s':>9s} "
        f"{'pred s':>9s} {'error':>7s} {'MFU':>6s} {'fits':>4s}"
    )
    for r in out:
        print(
            f"  {r['id']:48s} {r['gpus']:5d} {r['actual_step_s']:9.2f} "
            f"{r['predicted_step_s']:9.2f} {100 * r['error']:+6.1f}% "
            f"{100 * r['mfu_predicted']:5.1f}% {'yes' if r['fits'] else 'NO':>4s}"
        )
    errs = [abs(r["error"]) for r in out]
    med = statistics.median(errs) if errs else float("nan")
    worst = max(errs) if errs else float("nan")
    for kind in dict.fromkeys(r["kind"] for r in out):
        part = [abs(r["error"]) for r in out if r["kind"] == kind]
        print(
            f"  {kind:14s} {len(part):2d} rows: median |error| "
            f"{100 * statistics.median(part):.1f}%, max {100 * max(part):.1f}%"
        )
    print(
        f"public table: median |error| {100 * med:.1f}%  max |error| {100 * worst:.1f}%  "
        f"over {len(out)} rows (target: median <= 10%, none above 20%)"
    )
    return out, med, worst


def main(argv: list[str] | None = None) -> int:
    """Run the validation and print one line per row plus the median |error|."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write rows and median_abs_error here")
    ap.add_argument("--figures", type=Path, default=FIGURES)
    ap.add_argument("--rows", type=Path, default=ROWS, help="the public table's rows")
    ap.add_argument(
        "--efficiency",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a GPU efficiency parameter for all rows",
    )
    ap.add_argument("--virtual", type=int, default=1, help="interleaved stages (all rows)")
    ap.add_argument(
        "--attention",
        choices=("unfused", "flash"),
        default=ATTENTION,
        help="attention implementation of the model (all rows; the measured runs used unfused)",
    )
    args = ap.parse_args(argv)
    eff: dict[str, float] = {}
    for item in args.efficiency:
        k, _, val = item.partition("=")
        eff[k.strip()] = float(val)
    host = build_host()
    rows = megatron_rows(args.figures)
    out = [predict(r, host, eff, args.virtual, args.attention) for r in rows]
    print(
        f"{'row':22s} {'GPUs':>5s} {'t':>2s} {'p':>3s} {'actual':>7s} {'pred':>7s} "
        f"{'error':>7s} {'step s':>7s} {'bubble':>6s}  dominant parts (s)"
    )
    for r in out:
        parts = sorted(r["parts_s"].items(), key=lambda kv: -kv[1])[:3]
        print(
            f"{r['id']:22s} {r['gpus']:5d} {r['tensor']:2d} {r['pipeline']:3d} "
            f"{r['actual_tflops_per_gpu']:7.1f} {r['predicted_tflops_per_gpu']:7.1f} "
            f"{100 * r['error']:+6.1f}% {r['step_time_s']:7.2f} {r['bubble_fraction']:6.3f}  "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts)
        )
    errs = [abs(r["error"]) for r in out]
    med = statistics.median(errs) if errs else float("nan")
    worst = max(errs) if errs else float("nan")
    print(
        f"median |error| {100 * med:.1f}%  max |error| {100 * worst:.1f}%  "
        f"(target: median <= 10%, none above 20%)"
        + (f"  efficiency overrides: {eff}" if eff else "")
        + (f"  attention: {args.attention}" if args.attention != ATTENTION else "")
    )
    public, pub_med, pub_worst = _public_table(args.rows, host, eff)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "source": "Narayanan et al. 2021 (arXiv:2104.04473) Table 1, figures.yaml "
                    "megatron_t1_*",
                    "device": DEVICE,
                    "efficiency_overrides": eff,
                    "virtual": args.virtual,
                    "attention": args.attention,
                    "rows": out,
                    "median_abs_error": med,
                    "max_abs_error": worst,
                    "public": {
                        "rows": public,
                        "median_abs_error": pub_med,
                        "max_abs_error": pub_worst,
                    },
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
