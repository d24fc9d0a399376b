"""Validate GPU serving throughput against TensorRT-LLM v0.6.1's published static-batch runs.

Predicts every ``trtllm_*`` entry of ``shared/reference/figures.yaml`` — NVIDIA
TensorRT-LLM ``docs/source/performance.md`` (commit 138f96d4), "Peak Throughput": Llama-2
7B/70B on H100 (FP8), A100 (FP16) and L40S (FP8, v0.5), each with its batch size, tensor
parallelism and input/output lengths — through the same path a user's scenario takes:
``xpusim.engine.scenario.resolve`` of an ``offline`` workload (``count = batch`` requests of
constant input/output length, the ``static`` scheduler with ``max_batch = batch``) on the
``gpu`` backend, then ``xpusim.engine.run.simulate``. The static scheduler runs one prefill of all
prompts (which yields the first token) and ``output - 1`` decode steps, which is what
``gptSessionBenchmark`` times: its throughput is ``output_len · batch / total_latency / tp``
with the context phase inside ``total_latency`` (``docs/source/blogs/XQA-kernel.md``).

Per-row settings, all from the source's own build commands (performance.md, "Benchmarking
per Model" and "Running on A100"), none fitted:

* model ``llama`` preset ``llama-2-7b`` / ``llama-2-70b``; ``dtype`` fp8 on H100 and L40S
  (the tables' "(FP8)" headings, ``--enable_fp8``), fp16 on A100;
* ``kv_dtype`` fp8 where the build used ``--fp8_kv_cache`` (H100, L40S), fp16 on A100
  ("remove the ``--enable_fp8 --fp8_kv_cache`` options");
* ``decode_attention: per-head``: v0.6.1 generates with the masked MHA kernel, one thread
  block per query head (v0.6.1 ``docs/source/gpt_attention.md``, "Generation Phase"); the
  GQA kernel XQA came later (``TRTLLM_ENABLE_XQA``, experimental, and by default from v0.8,
  ``docs/source/blogs/XQA-kernel.md``).

Units: the H100 table is "out tok/s/GPU". The A100 and L40S tables of commit 138f96d4 say
"out tok/s", but a later revision of the same file with the same numbers (commit 77d24b5f)
labels them "out tok/s/GPU"; every row is therefore compared per GPU. Only the A100 70B
TP=4 row depends on this (its total would be 4 × 670).

``--mechanisms`` also prints each row under the model's defaults (16-bit KV cache for fp8
weights, grouped decode attention) and with only one of the two settings above, so the
effect of each mechanism on each row is visible.

Energy: Samsi et al. 2023 (``samsi_joules_per_token``, 3-4 J per output token) measured
Hugging Face ``generate`` of LLaMA 7B-65B on V100/A100 at small batch; the rows here are
TensorRT-LLM at batch 64-1280, so the conditions are *not* comparable (batching amortizes
the weight reads over hundreds of sequences). The predicted J/token is printed next to it
as an order-of-magnitude reference only.

Usage::

    python benchmarks/validate_serving.py [--json OUT] [--figures PATH] [--mechanisms]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine.host import Host, build_host  # noqa: E402
from xpusim.engine.run import simulate  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402
from xpusim.plugins.gpu.calibration import load as load_calibration  # noqa: E402

FIGURES = REPO.parent / "shared" / "reference" / "figures.yaml"

DEVICES = {"h100": "h100-sxm", "a100": "a100-sxm-80gb", "l40s": "l40s"}
"""Catalog device of each row's GPU (the ids name h100/a100/l40s; all SXM 80 GB or L40S)."""
DTYPE = {"h100": ("fp8", "fp8"), "a100": ("fp16", "fp16"), "l40s": ("fp8", "fp8")}
"""(weights/math dtype, KV-cache dtype) per GPU, from the source's build commands."""
PRESETS = {"7b": "llama-2-7b", "70b": "llama-2-70b"}
SOURCE_KERNEL = "per-head"
"""Decode attention of TensorRT-LLM v0.6.1 (masked MHA, one block per query head)."""

VARIANTS: dict[str, tuple[bool, str]] = {
    "defaults": (False, "grouped"),
    "kv_dtype": (True, "grouped"),
    "per_head": (False, SOURCE_KERNEL),
    "source": (True, SOURCE_KERNEL),
}
"""Mechanism variants: (use the build's KV dtype, decode-attention kernel). ``source`` is
the configuration of the published runs and the headline prediction."""


def trtllm_rows(path: Path) -> list[dict[str, Any]]:
    """The ``trtllm_*`` entries of the reference figures, in file order."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = doc["entries"] if isinstance(doc, dict) else doc
    return [e for e in entries if str(e.get("id", "")).startswith("trtllm_")]


def samsi_range(path: Path) -> tuple[float, float] | None:
    """(low, high) J/token of ``samsi_joules_per_token``, if present."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = doc["entries"] if isinstance(doc, dict) else doc
    for e in entries:
        if e.get("id") == "samsi_joules_per_token":
            v = e["value"]
            return float(v["low"]), float(v["high"])
    return None


def row_setup(row: dict[str, Any]) -> dict[str, Any]:
    """Device, preset, dtypes and shape of one row, from its id and conditions."""
    _, gpu, size, *_ = str(row["id"]).split("_")
    c = row["conditions"]
    dtype, kv = DTYPE[gpu]
    return {
        "gpu": gpu,
        "device": DEVICES[gpu],
        "preset": PRESETS[size],
        "dtype": dtype,
        "kv_dtype": kv,
        "batch": int(c["batch_size"]),
        "tp": int(c["TP"]),
        "input": int(c["input_len"]),
        "output": int(c["output_len"]),
    }


def scenario_data(
    s: dict[str, Any], kv_dtype: str | None, kernel: str, calibration: Path | None = None
) -> dict[str, Any]:
    """The plain scenario a user would write for one row (with ``calibration`` as the
    system's ``options.calibration`` when it was measured on the row's device)."""
    options: dict[str, Any] = {"decode_attention": kernel}
    if calibration is not None and load_calibration(calibration).device == s["device"]:
        options["calibration"] = str(calibration)
    model: dict[str, Any] = {"family": "llama", "preset": s["preset"], "dtype": s["dtype"]}
    if kv_dtype is not None:
        model["kv_dtype"] = kv_dtype
    return {
        "name": "trtllm-static-batch",
        "seed": 0,
        "model": model,
        "workload": {
            "kind": "offline",
            "count": s["batch"],
            "prompt_tokens": {"dist": "constant", "value": s["input"]},
            "output_tokens": {"dist": "constant", "value": s["output"]},
            "scheduler": {"kind": "static", "max_batch": s["batch"]},
        },
        "systems": [
            {
                "name": f"{s['gpu']}-tp{s['tp']}",
                "backend": "gpu",
                "device": s["device"],
                "count": s["tp"],
                "parallelism": {"tensor": s["tp"]},
                "options": options,
            }
        ],
    }


def run_row(
    host: Host,
    s: dict[str, Any],
    kv_dtype: str | None,
    kernel: str,
    calibration: Path | None = None,
) -> dict[str, Any]:
    """Simulate one row; output tok/s per GPU, J per output token, simulated span."""
    sc = resolve(
        scenario_data(s, kv_dtype, kernel, calibration),
        Source("validate_serving"),
        host,
        base_dir=REPO,
    )
    res = simulate(sc, host).systems[0]
    if res.status != "ok":
        return {"status": res.status, "reason": res.reason}
    m = res.metrics
    return {
        "status": "ok",
        "per_gpu": float(m["throughput_tokens_per_s"]) / s["tp"],
        "j_per_token": m.get("energy_per_token_j"),
        "span_s": float(m["simulated_s"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the validation and print one line per row plus the median |error|."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write rows and median_abs_error here")
    ap.add_argument("--figures", type=Path, default=FIGURES)
    ap.add_argument(
        "--mechanisms",
        action="store_true",
        help="also print every row under each mechanism variant",
    )
    ap.add_argument(
        "--calibration",
        type=Path,
        help="a GPU calibration file, applied to the rows of its device",
    )
    args = ap.parse_args(argv)
    host = build_host()
    out: list[dict[str, Any]] = []
    for row in trtllm_rows(args.figures):
        s = row_setup(row)
        measured = float(row["value"])
        variants = VARIANTS if args.mechanisms else {"source": VARIANTS["source"]}
        preds = {
            name: run_row(host, s, s["kv_dtype"] if use_kv else None, kernel, args.calibration)
            for name, (use_kv, kernel) in variants.items()
        }
        p = preds["source"]
        rec: dict[str, Any] = {
            "id": row["id"],
            **s,
            "decode_attention": SOURCE_KERNEL,
            "measured_tok_s_per_gpu": measured,
            "source_unit": row.get("unit"),
            "status": p["status"],
        }
        if p["status"] == "ok":
            rec.update(
                predicted_tok_s_per_gpu=p["per_gpu"],
                error=p["per_gpu"] / measured - 1,
                j_per_token=p["j_per_token"],
                span_s=p["span_s"],
            )
        else:
            rec["reason"] = p.get("reason")
        if args.mechanisms:
            rec["variants"] = {
                k: (
                    {"predicted_tok_s_per_gpu": v["per_gpu"], "error": v["per_gpu"] / measured - 1}
                    if v["status"] == "ok"
                    else {"status": v["status"]}
                )
                for k, v in preds.items()
            }
        out.append(rec)

    print(
        f"{'row':34s} {'GPU':5s} {'TP':>2s} {'batch':>5s} {'in/out':>9s} {'measured':>9s} "
        f"{'predicted':>9s} {'error':>7s} {'J/tok':>6s}   (output tok/s per GPU)"
    )
    for r in out:
        head = (
            f"{r['id']:34s} {r['gpu']:5s} {r['tp']:2d} {r['batch']:5d} "
            f"{r['input']:>4d}/{r['output']:<4d} {r['measured_tok_s_per_gpu']:9.0f} "
        )
        if r["status"] != "ok":
            print(head + f"{r['status']}: {r.get('reason')}")
            continue
        print(
            head + f"{r['predicted_tok_s_per_gpu']:9.0f} {100 * r['error']:+6.1f}% "
            f"{r['j_per_token']:6.3f}"
        )
    if args.mechanisms:
        print(
            "\nerror by mechanism (defaults = 16-bit KV for fp8 weights + grouped decode "
            "attention; kv_dtype = the build's KV dtype; per_head = masked MHA; "
            "source = both):"
        )
        print(f"{'row':34s} " + " ".join(f"{k:>9s}" for k in VARIANTS))
        for r in out:
            cells = []
            for k in VARIANTS:
                v = r["variants"][k]
                cells.append(f"{100 * v['error']:+8.1f}%" if "error" in v else f"{v['status']:>9s}")
            print(f"{r['id']:34s} " + " ".join(cells))
    ok = [r for r in out if r["status"] == "ok"]
    errs = [abs(r["error"]) for r in ok]
    med = statistics.median(errs) if errs else float("nan")
    worst = max(errs) if errs else float("nan")
    print(
        f"median |error| {100 * med:.1f}%  max |error| {100 * worst:.1f}%  "
        f"({len(ok)} of {len(out)} rows simulated)"
    )
    samsi = samsi_range(args.figures)
    if samsi and ok:
        jt = [r["j_per_token"] for r in ok if r.get("j_per_token") is not None]
        print(
            f"energy: predicted {min(jt):.3f}-{max(jt):.3f} J/output token vs "
            f"samsi_joules_per_token {samsi[0]:g}-{samsi[1]:g} J/token — NOT comparable "
            "(HF generate at small batch on V100/A100 vs TensorRT-LLM at batch 64-1280); "
            "order-of-magnitude reference only"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "source": "NVIDIA/TensorRT-LLM docs/source/performance.md @138f96d4 (v0.6.1), "
                    "figures.yaml trtllm_*",
                    "unit": "output tokens/s per GPU",
                    "rows": out,
                    "median_abs_error": med,
                    "max_abs_error": worst,
                    "energy_reference": {
                        "id": "samsi_joules_per_token",
                        "j_per_token": list(samsi) if samsi else None,
                        "comparable": False,
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
