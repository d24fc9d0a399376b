"""Validate the serving techniques against published measurements, and time them.

Each row of :data:`ROWS` is a measurement someone published of a technique's effect
(with and without it, on stated hardware), with its source. It is replayed through the
path a user's scenario takes (``xpusim.engine.scenario.resolve`` of a ``serving``
workload on the ``gpu`` backend, then ``xpusim.engine.run.simulate``) once without and
once with the technique, and the predicted ratio (with / without) is compared with the
measured one. No parameter is fitted to any row.

Speed (``--speed``): the whole Azure LLM 2023 conversation trace (19,366 requests) on two
H100s (Llama-2-7B) with plain continuous batching and with each technique on, and on
eight (Mixtral-8x7B) as tensor-parallel replicas and as one expert-parallel group, wall
seconds each and the ratio to plain; and, when the Mooncake conversation trace is in the trace cache
(``xpusim traces fetch mooncake-conversation``), its full replay with prefix caching on
8 H100s. The figures are written to ``benchmarks/out/validate_techniques.json``.

Usage::

    python benchmarks/validate_techniques.py [--speed] [--json OUT]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine import tracereg  # noqa: E402
from xpusim.engine.host import Host, build_host  # noqa: E402
from xpusim.engine.run import simulate  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402

AZURE_CONV = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"

VLLM_1983 = {
    "title": "vLLM pull request #1983, 'Prefix prompt cache' (Dec 2023), performance table",
    "url": "https://github.com/vllm-project/vllm/pull/1983",
    "setup": "Llama 13B on one A100 80GB; every request: a 200-token shared prefix, 30 "
    "more input tokens, 50 output tokens; vLLM of Dec 2023, with and without its prefix cache",
}
"""The source of the prefix-caching rows."""

ROWS: list[dict[str, Any]] = [
    {
        "id": "prefix-cache-vllm1983-10qps-ttft",
        "technique": "prefix_caching",
        "source": VLLM_1983,
        "rate": "10/s",
        "metric": "ttft_mean_s",
        "measured": {"with": 0.29, "without": 0.45},
    },
    {
        "id": "prefix-cache-vllm1983-10qps-latency",
        "technique": "prefix_caching",
        "source": VLLM_1983,
        "rate": "10/s",
        "metric": "e2e_mean_s",
        "measured": {"with": 1.97, "without": 2.87},
    },
    {
        "id": "prefix-cache-vllm1983-15qps-ttft",
        "technique": "prefix_caching",
        "source": VLLM_1983,
        "rate": "15/s",
        "metric": "ttft_mean_s",
        "measured": {"with": 0.39, "without": 1.02},
    },
    {
        "id": "prefix-cache-vllm1983-15qps-latency",
        "technique": "prefix_caching",
        "source": VLLM_1983,
        "rate": "15/s",
        "metric": "e2e_mean_s",
        "measured": {"with": 2.98, "without": 8.65},
    },
]
"""Published with/without measurements, one figure each."""

PREFIX_1983 = {"memory_fraction": 0.05, "shared_prefix": {"tokens": 200, "prompts": 1}}
"""The PR's workload as a prefix cache: one 200-token prefix shared by every request."""


def scenario(row: dict[str, Any], technique_on: bool) -> dict[str, Any]:
    """The scenario a user would write for ``row``, with or without its technique."""
    workload: dict[str, Any] = {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": row["rate"],
            "count": 2000,
            "prompt_tokens": {"dist": "constant", "value": 230},
            "output_tokens": {"dist": "constant", "value": 50},
        },
        # the oldest vLLM profile; the PR predates it (its host cost per step was larger)
        "stack": "vllm-0.5",
    }
    if technique_on:
        workload["prefix_caching"] = PREFIX_1983
    return {
        "name": f"validate-{row['id']}",
        "seed": 0,
        "model": {"family": "llama", "preset": "llama-2-13b", "dtype": "fp16"},
        "workload": workload,
        "systems": [{"name": "a100", "backend": "gpu", "device": "a100-sxm-80gb", "count": 1}],
    }


def run(host: Host, data: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Simulate one scenario; its first system's metrics and the wall seconds."""
    sc = resolve(data, Source(data["name"]), host, base_dir=REPO)
    t0 = time.perf_counter()
    res = simulate(sc, host).systems[0]
    wall = time.perf_counter() - t0
    if res.status != "ok":
        raise SystemExit(f"{data['name']}: {res.status}: {res.reason}")
    return res.metrics, wall


def validate(host: Host) -> list[dict[str, Any]]:
    """Every row: predicted and measured ratios (with / without) and the error."""
    out = []
    for row in ROWS:
        on, _ = run(host, scenario(row, True))
        off, _ = run(host, scenario(row, False))
        pred = float(on[row["metric"]]) / float(off[row["metric"]])
        meas = row["measured"]["with"] / row["measured"]["without"]
        out.append(
            {
                "id": row["id"],
                "technique": row["technique"],
                "metric": row["metric"],
                "source": row["source"]["url"],
                "predicted_with": float(on[row["metric"]]),
                "predicted_without": float(off[row["metric"]]),
                "measured_with": row["measured"]["with"],
                "measured_without": row["measured"]["without"],
                "predicted_ratio": pred,
                "measured_ratio": meas,
                "ratio_error": pred / meas - 1.0,
                "same_direction": (pred < 1) == (meas < 1),
            }
        )
    return out


def azure(
    technique: dict[str, Any] | None,
    model: str = "llama-2-7b",
    parallelism: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The whole Azure conversation trace on two H100s, plain or with a technique."""
    workload: dict[str, Any] = {
        "kind": "serving",
        "trace": {"path": str(AZURE_CONV), "format": "azure-llm"},
        "scheduler": {"kind": "continuous", "max_batch": 256, "max_batch_tokens": 8192},
    }
    workload.update(technique or {})
    family = "mixtral" if model.startswith("mixtral") else "llama"
    count = 8 if family == "mixtral" else 2
    system: dict[str, Any] = {
        "name": "h100",
        "backend": "gpu",
        "device": "h100-sxm",
        "count": count,
    }
    if parallelism:
        system["parallelism"] = parallelism
    return {
        "name": "speed-azure-conv",
        "seed": 1,
        "model": {"family": family, "preset": model, "dtype": "bf16"},
        "workload": workload,
        "systems": [system],
    }


TECHNIQUES: dict[str, dict[str, Any]] = {
    "prefix_caching": {
        "prefix_caching": {
            "memory_fraction": 0.2,
            "shared_prefix": {"tokens": 512, "prompts": 8},
        }
    },
    "speculative_decoding": {
        "speculative_decoding": {
            "draft": {"family": "llama", "preset": "llama-2-7b", "layers": 4},
            "k": 4,
            "acceptance": 0.7,
        }
    },
    "lora": {
        "lora": {"adapters": 100, "rank": 16, "zipf": 1.0, "gpu_slots": 16, "host_link": "25 GB/s"}
    },
    "disaggregation": {"disaggregation": {"prefill": {"count": 1}, "decode": {"count": 1}}},
}
"""Each technique as it is switched on for the speed comparison (Llama-2-7B, two H100s)."""


def speed(host: Host) -> dict[str, Any]:
    """Wall seconds of the Azure conv replay, plain and per technique, and the Mooncake
    replay with prefix caching when that trace is cached."""
    out: dict[str, Any] = {}
    if AZURE_CONV.is_file():
        _, plain = run(host, azure(None))
        out["azure_conv_plain_s"] = plain
        for name, tech in TECHNIQUES.items():
            _, wall = run(host, azure(tech))
            out[f"azure_conv_{name}_s"] = wall
            out[f"azure_conv_{name}_vs_plain"] = wall / plain
        # expert parallelism: Mixtral-8x7B on 8 H100s, 4 TP-2 replicas against one EP-8 group
        _, tp = run(host, azure(None, "mixtral-8x7b", {"tensor": 2}))
        _, ep = run(host, azure(None, "mixtral-8x7b", {"expert": 8}))
        out["azure_conv_mixtral_tp2x4_s"] = tp
        out["azure_conv_expert_parallel_s"] = ep
        out["azure_conv_expert_parallel_vs_plain"] = ep / tp
    else:
        out["azure_conv"] = f"absent: {AZURE_CONV} is not there"
    e = tracereg.entry("mooncake-conversation")
    if tracereg.status(e) == "verified":
        data = {
            "name": "speed-mooncake-conv",
            "seed": 1,
            "model": {"family": "llama", "preset": "llama-3-8b", "dtype": "bf16"},
            "workload": {
                "kind": "serving",
                "trace": {"name": e.name},
                "prefix_caching": {"memory_fraction": 0.3, "block_tokens": 512},
            },
            "systems": [{"name": "h100x8", "backend": "gpu", "device": "h100-sxm", "count": 8}],
        }
        m, wall = run(host, data)
        out["mooncake_conv_prefix_caching_s"] = wall
        out["mooncake_conv_hit_rate_tokens"] = m.get("prefix_hit_rate_tokens")
    else:
        out["mooncake_conv"] = (
            "absent: the Mooncake conversation trace is not in the trace cache "
            f"({tracereg.cache_dir()}); `xpusim traces fetch mooncake-conversation`"
        )
    for routing in ("round-robin", "cache-aware"):
        data = json.loads(json.dumps(MOONCAKE_SHAPED))
        data["workload"]["prefix_caching"]["routing"] = routing
        m, wall = run(host, data)
        out[f"mooncake_shaped_synthetic_{routing}_s"] = wall
        out[f"mooncake_shaped_synthetic_{routing}_hit_rate_tokens"] = m.get(
            "prefix_hit_rate_tokens"
        )
    return out


MOONCAKE_SHAPED: dict[str, Any] = {
    "name": "speed-mooncake-shaped",
    "seed": 1,
    "model": {"family": "llama", "preset": "llama-3-8b", "dtype": "bf16"},
    "workload": {
        "kind": "serving",
        # a synthetic stand-in of the Mooncake conversation trace's size, NOT the trace:
        # 12,031 requests with lognormal prompts of mean 12,035 tokens (median 8,740,
        # sigma 0.8) over an hour, in multi-turn conversations hashed in 512-token blocks
        "arrivals": {
            "process": "poisson",
            "rate": "3.342/s",
            "count": 12031,
            "prompt_tokens": {"dist": "lognormal", "median": 8740, "sigma": 0.8, "max": 131072},
            "output_tokens": {"dist": "lognormal", "median": 300, "sigma": 0.8, "max": 4096},
        },
        "scheduler": {"kind": "chunked-prefill", "max_batch": 256, "chunk": 8192},
        "prefix_caching": {
            "memory_fraction": 0.3,
            "block_tokens": 512,
            "routing": "cache-aware",
            "conversations": {"sessions": 400, "turns": 5},
        },
    },
    "systems": [{"name": "h100x8", "backend": "gpu", "device": "h100-sxm", "count": 8}],
}
"""The size of the Mooncake target (requests, mean prompt, 8 H100s) on synthetic
requests, timed while the real trace is not at hand."""


def main(argv: list[str] | None = None) -> int:
    """Print each row's error (and the speed figures with ``--speed``); write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speed", action="store_true", help="also time the Azure conv replay")
    ap.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "out" / "validate_techniques.json"
    )
    args = ap.parse_args(argv)
    host = build_host()
    rows = validate(host)
    for r in rows:
        print(
            f"{r['id']:40s} predicted {r['predicted_with']:.4g}/{r['predicted_without']:.4g} "
            f"= {r['predicted_ratio']:.3f}  measured {r['measured_ratio']:.3f}  "
            f"ratio error {r['ratio_error']:+.1%}  direction {'ok' if r['same_direction'] else 'WRONG'}"
        )
    result: dict[str, Any] = {"rows": rows}
    if args.speed:
        result["speed"] = speed(host)
        for k, v in result["speed"].items():
            print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
