"""Validate the serving techniques against published measurements, and time them.

Each check replays a measurement someone published of a technique's effect (with and
without it, on stated hardware), with its source, through the path a user's scenario
takes (``xpusim.engine.scenario.resolve`` of a ``serving`` workload on the ``gpu``
backend, then ``xpusim.engine.run.simulate``), once without and once with the technique,
and compares the predicted ratio (with / without) with the measured one. No parameter is
fitted to any row: a row's inputs are what its source states (model, hardware, lengths,
rates, the acceptance length of a speculative run), and what the source leaves open is
named in the row's ``setup``.

* prefix caching — vLLM pull request #1983's table (TTFT and latency at 10 and 15 QPS);
* speculative decoding — SpecDecode-Bench (arXiv:2601.11580v2) at batch 1 on H100s and
  EAGLE (arXiv:2401.15077, Table 7) at batch 1 and 4 on A100s, each with its stated
  acceptance length;
* disaggregated prefill and decode — DistServe's worked example (hao-ai-lab blog, Figure
  6): goodput per GPU of one colocated A100 and of two prefill + one decode A100;
* multi-LoRA — S-LoRA's own measurements (the ``benchmarks/paper`` data of its
  repository): Llama-13B on an A100 80GB at 6 req/s with 1, 100 and 400 adapters against
  the same server with none (requests naming no adapter run the base model alone);
* expert parallelism — SGLang's DeepSeek-V3 deployment on H100s (lmsys.org,
  2025-05-05): decode throughput of DP attention with expert parallelism over vanilla
  tensor parallelism on the same GPUs.

Speed (``--speed``): the whole Azure LLM 2023 conversation trace (19,366 requests) on two
H100s (Llama-2-7B) with plain continuous batching and with each technique on, and on
eight (Mixtral-8x7B) as tensor-parallel replicas and as one expert-parallel group, wall
seconds each and the ratio to plain; the Mooncake conversation trace's replay with prefix
caching on 8 H100s when the trace is in the trace cache (``xpusim traces fetch
mooncake-conversation``), and always on a synthetic stand-in of it (:func:`mooncake_standin`:
12,031 requests, mean prompt 12,035 tokens, multi-turn ``hash_ids`` in 512-token blocks,
written as a Mooncake-format JSONL file and read by the ``mooncake`` reader). The figures
are written to ``benchmarks/out/validate_techniques.json``.

Usage::

    python benchmarks/validate_techniques.py [--speed] [--only TECHNIQUE ...] [--json OUT]

Exit status 0 whatever the errors (it reports, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xpusim.engine import tracereg  # noqa: E402
from xpusim.engine.frames import collect  # noqa: E402
from xpusim.engine.host import Host, build_host  # noqa: E402
from xpusim.engine.run import simulate  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402

AZURE_CONV = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"

Row = dict[str, Any]
"""One published with/without figure and how it is replayed (see :data:`ROWS`)."""


def _source(title: str, url: str, setup: str) -> dict[str, str]:
    return {"title": title, "url": url, "setup": setup}


# --- prefix caching -----------------------------------------------------------------------

VLLM_1983 = _source(
    "vLLM pull request #1983, 'Prefix prompt cache' (Dec 2023), performance table",
    "https://github.com/vllm-project/vllm/pull/1983",
    "Llama 13B on one A100 80GB; every request: a 200-token shared prefix, 30 more input "
    "tokens, 50 output tokens; vLLM of Dec 2023, with and without its prefix cache",
)
"""The source of the prefix-caching rows."""

PREFIX_1983 = {"memory_fraction": 0.05, "shared_prefix": {"tokens": 200, "prompts": 1}}
"""The PR's workload as a prefix cache: one 200-token prefix shared by every request."""


def prefix_scenario(row: Row, on: bool) -> dict[str, Any]:
    """vLLM #1983: Poisson arrivals at the row's rate, 230-token prompts, 50 outputs."""
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
    if on:
        workload["prefix_caching"] = PREFIX_1983
    return _one_system(
        row,
        {"family": "llama", "preset": "llama-2-13b", "dtype": "fp16"},
        workload,
        "a100-sxm-80gb",
    )


# --- speculative decoding -----------------------------------------------------------------

SPECDECODE_BENCH = _source(
    "SpecDecode-Bench (arXiv:2601.11580v2, 2026-03-18), 'Tree-Style Verification' section "
    "and Figure 2, chain baseline k=3",
    "https://arxiv.org/abs/2601.11580v2",
    "SGLang v0.5.9 on H100 80GB (8B on one GPU, 70B tensor-parallel over 4); chain drafting "
    "of k=3 tokens by an EAGLE-style head (the text does not say EAGLE or EAGLE-3); batch 1; "
    "the speed-up is generated tokens per second with / without speculation, stated with the "
    "acceptance length of the same run. Prompt and output lengths are not stated per row: "
    "replayed as 512 prompt and 256 output tokens (at batch 1 the ratio barely depends on "
    "them); the head is described as one decoder layer of the target's width with its own "
    "embedding and LM head",
)
EAGLE_1 = _source(
    "EAGLE (Li et al., ICML 2024, arXiv:2401.15077), MT-bench at T=0: acceptance length "
    "(Table 1 / text) and the batch-size ablation (Table 7)",
    "https://arxiv.org/abs/2401.15077",
    "LLaMA2-Chat 70B in fp16 on 4x A100 40GB (replayed as A100 80GB parts derived to 40 GB "
    "and 1,555 GB/s, NVIDIA's A100 40GB SXM datasheet), tensor-parallel over 4; EAGLE's "
    "one-layer head drafting a tree 5 deep of 22 candidates, verified with its root as 23 "
    "tokens (the paper's tree-attention figure), with the acceptance length 3.81 stated at "
    "batch 1 (Table 7 states none per batch size, so the same acceptance is used at batch "
    "4); the baseline is Hugging Face autoregressive decoding, "
    "replayed with the bare-model stack (`none`) and PyTorch attention over a contiguous "
    "cache (`attention_kernel: torch-sdpa`: Hugging Face's Llama and EAGLE's own tree "
    "verification run no paged kernel), and 95 % of device memory for weights and "
    "KV (a Hugging Face run reserves no fixed share; at 90 % the 70B weights and the head "
    "leave no KV on 4x 40 GB); MT-bench lengths are not stated: 512 "
    "prompt and 256 output tokens",
)


def acceptance_for(tau: float, k: int) -> float:
    """The constant per-position acceptance ``a`` whose expected tokens per step
    ``1 + a + ... + a^k`` is the published acceptance length ``tau`` (bisection)."""
    if not 1.0 <= tau <= k + 1:
        raise ValueError(f"an acceptance length of {tau} is outside [1, {k + 1}] for k={k}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        if sum(a**i for i in range(k + 1)) < tau:
            lo = a
        else:
            hi = a
    return (lo + hi) / 2


def spec_scenario(row: Row, on: bool) -> dict[str, Any]:
    """Requests at batch ``row['batch']`` (the scheduler's limit, all arriving at once),
    with or without the draft head at the row's acceptance length."""
    n = 8 * row["batch"]
    workload: dict[str, Any] = {
        "kind": "serving",
        "arrivals": {
            "process": "constant",
            "rate": "1000/s",
            "count": n,
            "prompt_tokens": {"dist": "constant", "value": 512},
            "output_tokens": {"dist": "constant", "value": 256},
        },
        "scheduler": {"kind": "continuous", "max_batch": row["batch"]},
        "stack": row["stack"],
    }
    if "kv_memory_fraction" in row:
        workload["kv_memory_fraction"] = row["kv_memory_fraction"]
    if on:
        workload["speculative_decoding"] = {
            "draft": {**row["model"], "layers": 1},
            "k": row["k"],
            "acceptance": round(acceptance_for(row["tau"], row["k"]), 6),
        }
        if "tree_tokens" in row:
            workload["speculative_decoding"]["tree_tokens"] = row["tree_tokens"]
    return _one_system(row, row["model"], workload, row["device"], row.get("tensor", 1))


QWEN3_8B = {
    "family": "llama",
    "layers": 36,
    "hidden": 4096,
    "heads": 32,
    "kv_heads": 8,
    "ffn_hidden": 12288,
    "vocab": 151936,
    "seq_len": 40960,
    "dtype": "bf16",
}
"""Qwen3-8B's dimensions (its config.json) as a Llama-style decoder (its QK norms, a few
thousand FLOPs a token, are left out)."""

A100_40GB = {
    "base": "a100-sxm-80gb",
    "name": "a100-sxm-40gb",
    "memory": "40 GB",
    "memory_bw": "1555 GB/s",
}
"""NVIDIA A100 40GB SXM (datasheet: 40 GB HBM2, 1,555 GB/s), derived from the 80 GB part."""


# --- disaggregated prefill and decode ----------------------------------------------------

DISTSERVE = _source(
    "DistServe (Zhong et al., OSDI 2024) blog post 'Throughput is Not All You Need', "
    "Figure 6 and its text (hao-ai-lab, 2024-03-17)",
    "https://hao-ai-lab.github.io/blogs/distserve/",
    "a 13B model on A100 80GB GPUs, Poisson arrivals, 512 input and 64 output tokens; "
    "goodput is the highest rate at which the P90 TTFT stays within 0.4 s and the P90 TPOT "
    "within 0.04 s: colocated 1.6 rps on one GPU; disaggregated, one prefill GPU 5.6 rps and "
    "one decode GPU 10 rps, so 2 prefill + 1 decode serve 10 rps on 3 GPUs, 3.3 rps per "
    "GPU. Replayed as OPT-13B's dimensions (the paper's 13B model) in fp16 under the "
    "`vllm-0.5` stack (the blog's colocated system is the vLLM of early 2024) for both "
    "layouts; the pools are joined by the node's NVLink (`link: scale-up`), as DistServe "
    "places them",
)
OPT_13B = {
    "family": "gpt",
    "layers": 40,
    "hidden": 5120,
    "heads": 40,
    "ffn_hidden": 20480,
    "vocab": 50272,
    "seq_len": 2048,
    "dtype": "fp16",
}
"""OPT-13B's dimensions (its config.json) as a GPT-style decoder."""
DISTSERVE_SLO = {"ttft_p90_s": 0.4, "tpot_p90_s": 0.04}


# --- multi-LoRA ------------------------------------------------------------------------

SLORA = _source(
    "S-LoRA (Sheng et al., MLSys 2024): the measurements behind its A100-80GB "
    "number-of-adapters figure, benchmarks/paper/synthetic/slora/"
    "synthetic_num_adapters_a100-80_S4_slora.jsonl of github.com/S-LoRA/S-LoRA",
    "https://github.com/S-LoRA/S-LoRA/blob/main/benchmarks/paper/synthetic/slora/"
    "synthetic_num_adapters_a100-80_S4_slora.jsonl",
    "suite a100-80-S4-num-adapter of benchmarks/exp_suite.py, setting S4: huggyllama/"
    "llama-13b (replayed as Llama-2-13B, the same dimensions) in fp16 on one A100 80GB, the "
    "server launched with --num-adapter 1000 --num-token 65000 (benchmarks/paper/synthetic/"
    "slora/exp_cmds.sh), so a KV pool of 65,000 tokens (replayed as all the memory the "
    "weights leave, 64,048 tokens), batch_max_tokens 65000 / 6 and running_max_req_size "
    "1000 (slora/server/api_server.py defaults); adapters dummy-lora-13b-rank-64, -32, -16 "
    "in turn on q, k, v and o (one adapter: rank 64; N adapters: the first N of that cycle, "
    "their mean rank); each request's adapter int(N * u) with u = numpy.random.power(alpha=1), "
    "which is uniform, so every adapter equally likely (benchmarks/trace.py); Poisson "
    "arrivals (gamma of cv 1) at 6 req/s for 300 s, 1,800 requests, input and output lengths "
    "numpy.random.randint(8, 512), i.e. 8 to 511, output forced (ignore_eos); throughput = "
    "requests finished / time to the last one. 0 adapters is the same S-LoRA server with "
    "requests naming no adapter, which its model_rpc.forward runs on the base model alone "
    "(no LoRA kernels, no adapter in the pool). S-LoRA's scheduler (slora/server/router/"
    "req_queue.py) admits a request only while the KV its running batch will need, every "
    "request to its full output, fits the pool less the adapters, and never preempts: "
    "replayed with the guaranteed-no-evict scheduler (which reserves the sum of the whole "
    "sequences, a little more than S-LoRA's peak). Its LoRA kernels read each sequence's "
    "adapter rows (`kernels: gathered`), its adapters share the KV pool and are loaded "
    "synchronously before each prefill (`pool: unified`) over PCIe 4.0 x16 (25 GB/s). The "
    "engine (a LightLLM derivative of 2023, eager PyTorch) is replayed under `vllm-0.5` "
    "without CUDA graphs",
)
SLORA_THROUGHPUT = {
    0: 5.58607828865562,
    1: 4.429091955904113,
    100: 4.30081289788868,
    400: 4.055518959165358,
}
"""Requests per second S-LoRA measured by number of adapters (the file above)."""


# --- expert parallelism -----------------------------------------------------------------

SGLANG_EP = _source(
    "SGLang, 'Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism "
    "on 96 H100 GPUs' (lmsys.org, 2025-05-05)",
    "https://lmsys.org/blog/2025-05-05-large-scale-ep/",
    "DeepSeek-V3 on H100s, 2,000-token inputs: DP attention with expert parallelism gives "
    "'up to 5x' the output throughput of vanilla tensor parallelism on the same resources, "
    "'largely attributed to 4x larger batch sizes enabled by EP'. The headline system also "
    "disaggregates prefill and decode and overlaps two micro-batches; the replay isolates "
    "the parallelism on a decode node's figure: 2,000 requests of 2,000-token prompts "
    "arriving at once on 16 H100s in fp8, one TP-16 replica (MLA's single KV head is held "
    "whole by every rank) against one EP-16 group of DP-attention ranks, each with the KV "
    "memory its weights leave; the figure is output tokens per second of the decode-only "
    "iterations. A decode node of a PD deployment never prefills, which a colocated replay "
    "matches only where decode iterations dominate: 1,000 output tokens a request (the "
    "blog states none; with 100 the colocated engine's prefills set the batch and the "
    "ratio is 1.7x, with 500 or 2,000 it is 5.5x and 5.8x). "
    "'Up to' makes 5x an upper figure",
)


# --- the rows ----------------------------------------------------------------------------

ROWS: list[Row] = [
    *(
        {
            "id": f"prefix-cache-vllm1983-{rate[:2]}qps-{name}",
            "technique": "prefix_caching",
            "source": VLLM_1983,
            "kind": "ratio",
            "rate": rate,
            "metric": metric,
            "measured": measured,
            "build": prefix_scenario,
        }
        for rate, name, metric, measured in (
            ("10/s", "ttft", "ttft_mean_s", {"with": 0.29, "without": 0.45}),
            ("10/s", "latency", "e2e_mean_s", {"with": 1.97, "without": 2.87}),
            ("15/s", "ttft", "ttft_mean_s", {"with": 0.39, "without": 1.02}),
            ("15/s", "latency", "e2e_mean_s", {"with": 2.98, "without": 8.65}),
        )
    ),
    {
        "id": "spec-decode-specbench-llama3-70b-tp4-bs1",
        "technique": "speculative_decoding",
        "source": SPECDECODE_BENCH,
        "kind": "speedup",
        "model": {"family": "llama", "preset": "llama-3-70b", "dtype": "bf16"},
        "device": "h100-sxm",
        "tensor": 4,
        "stack": "sglang-0.4",
        "batch": 1,
        "k": 3,
        "tau": 2.29,
        "metric": "tpot_mean_s",
        "measured": {"with": 1.81, "without": 1.0},
    },
    {
        "id": "spec-decode-specbench-qwen3-8b-bs1",
        "technique": "speculative_decoding",
        "source": SPECDECODE_BENCH,
        "kind": "speedup",
        "model": QWEN3_8B,
        "device": "h100-sxm",
        "stack": "sglang-0.4",
        "batch": 1,
        "k": 3,
        "tau": 2.25,
        "metric": "tpot_mean_s",
        "measured": {"with": 1.65, "without": 1.0},
    },
    *(
        {
            "id": f"spec-decode-eagle-llama2-70b-a100-bs{batch}",
            "technique": "speculative_decoding",
            "source": EAGLE_1,
            "kind": "speedup",
            "model": {"family": "llama", "preset": "llama-2-70b", "dtype": "fp16"},
            "device": A100_40GB,
            "tensor": 4,
            "stack": "none",
            "options": {"attention_kernel": "torch-sdpa"},
            "kv_memory_fraction": 0.95,
            "batch": batch,
            "k": 5,
            "tree_tokens": 23,
            "tau": 3.81,
            "metric": "tpot_mean_s",
            "measured": {"with": speedup, "without": 1.0},
        }
        for batch, speedup in ((1, 3.01), (4, 2.40))
    ),
    {
        "id": "disagg-distserve-13b-2p1d-goodput-per-gpu",
        "technique": "disaggregation",
        "source": DISTSERVE,
        "kind": "goodput",
        "metric": "goodput_per_gpu_rps",
        "measured": {"with": 10.0 / 3.0, "without": 1.6},
    },
    *(
        {
            "id": f"lora-slora-s4-a100-{n}-adapters",
            "technique": "lora",
            "source": SLORA,
            "kind": "lora",
            "adapters": n,
            "metric": "requests_per_s",
            "measured": {"with": SLORA_THROUGHPUT[n], "without": SLORA_THROUGHPUT[0]},
        }
        for n in (1, 100, 400)
    ),
    {
        "id": "expert-parallel-sglang-deepseek-v3-ep16-vs-tp16",
        "technique": "expert_parallelism",
        "source": SGLANG_EP,
        "kind": "expert",
        "metric": "decode_tokens_per_s",
        "measured": {"with": 5.0, "without": 1.0},
    },
]
"""Published with/without measurements, one figure each. ``kind`` says how a row is
replayed: ``ratio`` (the metric with / without), ``speedup`` (tokens per second of a
request, the inverse TPOT ratio, against the published speed-up), ``goodput`` (the
highest rate within the SLO, per GPU), ``lora`` (requests per second with N adapters /
with none), ``expert`` (decode tokens per second of the EP group / of the TP replica)."""


def _one_system(
    row: Row, model: dict[str, Any], workload: dict[str, Any], device: Any, tensor: int = 1
) -> dict[str, Any]:
    """A scenario of one GPU system of ``tensor`` devices serving ``workload``."""
    system: dict[str, Any] = {"name": "gpu", "backend": "gpu", "device": device, "count": tensor}
    if tensor > 1:
        system["parallelism"] = {"tensor": tensor}
    if row.get("options"):
        system["options"] = dict(row["options"])
    return {
        "name": f"validate-{row['id']}",
        "seed": 0,
        "model": model,
        "workload": workload,
        "systems": [system],
    }


def run(host: Host, data: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Simulate one scenario; its first system's metrics and the wall seconds."""
    res, wall = run_system(host, data)
    return res.metrics, wall


def run_system(host: Host, data: dict[str, Any]) -> tuple[Any, float]:
    """Simulate one scenario; its first system's result and the wall seconds."""
    sc = resolve(data, Source(data["name"]), host, base_dir=REPO)
    t0 = time.perf_counter()
    res = simulate(sc, host).systems[0]
    wall = time.perf_counter() - t0
    if res.status != "ok":
        raise SystemExit(f"{data['name']}: {res.status}: {res.reason}")
    return res, wall


def requests_per_s(res: Any) -> float:
    """Requests finished / the time to the last one (S-LoRA's ``throughput``)."""
    req = collect(res.frames["requests"])
    ok = req.filter(req["status"] == "ok")
    return float(ok.height / ok["finish_s"].max())


def decode_throughput(res: Any) -> float:
    """Output tokens per second of the decode-only iterations (a decode node's figure:
    prefill runs elsewhere in SGLang's deployment)."""
    steps = collect(res.frames["steps"])
    dec = steps.filter(steps["prefill_tokens"] == 0)
    return float(dec["decode_tokens"].sum() / (dec["end_s"] - dec["start_s"]).sum())


def goodput(host: Host, build: Any, gpus: int, lo: float, hi: float) -> float:
    """The highest Poisson rate (requests/s) at which ``build(rate)`` keeps the P90 TTFT
    and P90 TPOT within DistServe's SLO, by bisection over [lo, hi], per GPU."""
    for _ in range(9):
        mid = (lo + hi) / 2
        m, _ = run(host, build(mid))
        ok = all(float(m[k] or float("inf")) <= v for k, v in DISTSERVE_SLO.items())
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo / gpus


def distserve_scenario(rate: float, disaggregated: bool) -> dict[str, Any]:
    """DistServe's example at ``rate``: one colocated A100, or 2 prefill + 1 decode."""
    workload: dict[str, Any] = {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": f"{rate:.6g}/s",
            "count": 600,
            "prompt_tokens": {"dist": "constant", "value": 512},
            "output_tokens": {"dist": "constant", "value": 64},
        },
        "stack": "vllm-0.5",
    }
    count = 1
    if disaggregated:
        count = 3
        workload["disaggregation"] = {
            "prefill": {"count": 2},
            "decode": {"count": 1},
            "link": "scale-up",
        }
    return {
        "name": "validate-distserve",
        "seed": 0,
        "model": OPT_13B,
        "workload": workload,
        "systems": [{"name": "gpu", "backend": "gpu", "device": "a100-sxm-80gb", "count": count}],
    }


def slora_rank(adapters: int) -> int:
    """The mean rank of S-LoRA's first ``adapters`` S4 adapters (ranks 64, 32, 16 in
    turn, ``get_adapter_dirs`` of its ``run_exp.py``), rounded."""
    ranks = [(64, 32, 16)[i % 3] for i in range(adapters)]
    return round(sum(ranks) / len(ranks))


def slora_scenario(adapters: int, rate: str = "6/s") -> dict[str, Any]:
    """S-LoRA's S4 run with ``adapters`` adapters (0: no LoRA); see :data:`SLORA`. A
    ``rate`` above the server's capacity (``12/s``) gives the capacity ratios instead."""
    workload: dict[str, Any] = {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": rate,
            "count": 1800,
            "prompt_tokens": {"dist": "uniform", "low": 8, "high": 511},
            "output_tokens": {"dist": "uniform", "low": 8, "high": 511},
        },
        # eager PyTorch: no CUDA graphs; the pool fills what the weights leave
        "stack": {"name": "vllm-0.5", "cuda_graph_batches": [], "kv_memory_fraction": 1.0},
        "scheduler": {"kind": "guaranteed-no-evict", "max_batch": 1000, "max_batch_tokens": 10833},
    }
    if adapters:
        workload["lora"] = {
            "adapters": adapters,
            "rank": slora_rank(adapters),
            "modules": "attention",
            "kernels": "gathered",
            "pool": "unified",
            "host_link": "25 GB/s",
        }
    return {
        "name": f"validate-slora-{adapters}",
        "seed": 0,
        "model": {"family": "llama", "preset": "llama-2-13b", "dtype": "fp16"},
        "workload": workload,
        "systems": [{"name": "gpu", "backend": "gpu", "device": "a100-sxm-80gb", "count": 1}],
    }


def expert_scenario(expert: bool) -> dict[str, Any]:
    """DeepSeek-V3 on 16 H100s: one TP-16 replica, or one EP-16 group (DP attention)."""
    return {
        "name": f"validate-ep-{'ep' if expert else 'tp'}",
        "seed": 0,
        "model": {"family": "hf", "preset": "deepseek-v3", "dtype": "fp8"},
        "workload": {
            "kind": "serving",
            "arrivals": {
                "process": "constant",
                "rate": "1000/s",
                "count": 2000,
                "prompt_tokens": {"dist": "constant", "value": 2000},
                "output_tokens": {"dist": "constant", "value": 1000},
            },
            "stack": "sglang-0.4",
            "scheduler": {"kind": "chunked-prefill", "max_batch": 4096, "chunk": 8192},
        },
        "systems": [
            {
                "name": "gpu",
                "backend": "gpu",
                "device": "h100-sxm",
                "count": 16,
                "parallelism": {"expert": 16} if expert else {"tensor": 16},
            }
        ],
    }


def replay(host: Host, row: Row) -> tuple[float, float]:
    """The row's predicted figure with and without its technique."""
    kind = row["kind"]
    if kind == "ratio":
        on, _ = run(host, row["build"](row, True))
        off, _ = run(host, row["build"](row, False))
        return float(on[row["metric"]]), float(off[row["metric"]])
    if kind == "speedup":  # tokens per second of a request: 1 / TPOT, normalised
        on, _ = run(host, spec_scenario(row, True))
        off, _ = run(host, spec_scenario(row, False))
        return float(off["tpot_mean_s"]) / float(on["tpot_mean_s"]), 1.0
    if kind == "goodput":
        colocated = goodput(host, lambda r: distserve_scenario(r, False), 1, 0.1, 8.0)
        split = goodput(host, lambda r: distserve_scenario(r, True), 3, 0.3, 30.0)
        return split, colocated
    if kind == "lora":
        with_, _ = run_system(host, slora_scenario(row["adapters"]))
        without, _ = run_system(host, slora_scenario(0))
        return requests_per_s(with_), requests_per_s(without)
    if kind == "expert":
        ep, _ = run_system(host, expert_scenario(True))
        tp, _ = run_system(host, expert_scenario(False))
        return decode_throughput(ep), decode_throughput(tp)
    raise ValueError(f"unknown row kind {kind!r}")


def validate(host: Host, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Every row (of the techniques in ``only``, when given): predicted and measured
    ratios (with / without) and the error."""
    out = []
    for row in ROWS:
        if only and row["technique"] not in only:
            continue
        pw, po = replay(host, row)
        pred = pw / po
        meas = row["measured"]["with"] / row["measured"]["without"]
        out.append(
            {
                "id": row["id"],
                "technique": row["technique"],
                "metric": row["metric"],
                "source": row["source"]["url"],
                "setup": row["source"]["setup"],
                "predicted_with": pw,
                "predicted_without": po,
                "measured_with": row["measured"]["with"],
                "measured_without": row["measured"]["without"],
                "predicted_ratio": pred,
                "measured_ratio": meas,
                "ratio_error": pred / meas - 1.0,
                "same_direction": (pred < 1) == (meas < 1),
            }
        )
        r = out[-1]
        print(
            f"{r['id']:48s} predicted {pw:.4g}/{po:.4g} = {pred:.3f}  measured "
            f"{meas:.3f}  ratio error {r['ratio_error']:+.1%}  direction "
            f"{'ok' if r['same_direction'] else 'WRONG'}",
            flush=True,
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
        for routing in ("round-robin", "cache-aware"):
            m, wall = run(host, mooncake_scenario({"name": e.name}, routing))
            out[f"mooncake_conv_{routing}_s"] = wall
            out[f"mooncake_conv_{routing}_hit_rate_tokens"] = m.get("prefix_hit_rate_tokens")
    else:
        out["mooncake_conv"] = (
            "absent: the Mooncake conversation trace is not in the trace cache "
            f"({tracereg.cache_dir()}); `xpusim traces fetch mooncake-conversation`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mooncake_conversation_standin.jsonl"
        stats = mooncake_standin(path)
        out.update({f"mooncake_standin_{k}": v for k, v in stats.items()})
        for routing in ("round-robin", "cache-aware"):
            t0 = time.perf_counter()
            m, wall = run(
                host, mooncake_scenario({"path": str(path), "format": "mooncake"}, routing)
            )
            out[f"mooncake_standin_{routing}_s"] = wall
            out[f"mooncake_standin_{routing}_with_load_s"] = time.perf_counter() - t0
            out[f"mooncake_standin_{routing}_hit_rate_tokens"] = m.get("prefix_hit_rate_tokens")
    return out


MOONCAKE_REQUESTS = 12031
"""Requests of the Mooncake conversation trace (its dataset card: 12,031 rows)."""
MOONCAKE_MEAN_PROMPT = 12035
"""Mean prompt tokens of the Mooncake conversation trace (the target's figure)."""
MOONCAKE_BLOCK = 512
"""Tokens each hash id covers in the Mooncake traces (FAST25-release README)."""


def mooncake_standin(path: Path, seed: int = 1) -> dict[str, float]:
    """Write a synthetic stand-in of the Mooncake conversation trace to ``path`` (Mooncake
    JSON Lines, read by the ``mooncake`` format) and return its statistics.

    It is NOT the trace: the trace could not be fetched here. It copies what is known of
    the trace's shape, and draws the rest:

    * 12,031 requests over one hour (timestamps 0 to 3,600,000 ms, as the trace's), arriving
      in 3-second ticks as the trace's first rows do, a Poisson count per tick;
    * prompt lengths lognormal (sigma 0.8) rescaled so their mean is exactly 12,035 tokens,
      clipped to [64, 131,072]; output lengths lognormal of median 300 (sigma 0.8, at most
      4,096), an assumption;
    * ``hash_ids`` as the trace builds them: one id per 512-token block
      (``ceil(prompt / 512)``), every prompt opening with block 0 (the shared system prompt
      every row of the trace starts with), and multi-turn sharing: a request continues, with
      probability 0.5, an open conversation whose last prompt is shorter than its own,
      taking that prompt's whole blocks as its prefix and new ids for the rest; otherwise
      it opens a conversation. Ids count up from 1 as new blocks appear.
      The parent is the longest-prompted of the 256 most recently active conversations
      whose last prompt is shorter (a chat's next turn comes minutes after the last, not
      hours). So about half the prompt blocks repeat an earlier prompt's (49 %), as the
      trace's README states "up to 50 % cache hit ratio".

    Returned: ``requests``, ``mean_prompt_tokens``, ``mean_output_tokens``, ``span_s`` and
    ``shared_block_share`` (blocks of a prompt that an earlier prompt already named,
    over all prompt blocks: what an unbounded prefix cache could hit)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = MOONCAKE_REQUESTS
    ticks = 1200  # one hour of 3-second ticks
    counts = rng.multinomial(n, np.full(ticks, 1.0 / ticks))
    stamps = np.repeat(np.arange(ticks) * 3000, counts)
    raw = rng.lognormal(0.0, 0.8, n)
    prompts = np.clip(np.rint(raw * (MOONCAKE_MEAN_PROMPT / raw.mean())), 64, 131072)
    prompts = np.rint(prompts * (MOONCAKE_MEAN_PROMPT / prompts.mean())).astype(np.int64)
    prompts = np.clip(prompts, 64, 131072)
    outputs = np.clip(np.rint(rng.lognormal(np.log(300.0), 0.8, n)), 1, 4096).astype(np.int64)
    cont = rng.random(n) < 0.5
    recent: list[tuple[int, list[int]]] = []  # open conversations, last active last
    next_id = 1
    shared = total = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            plen = int(prompts[i])
            blocks = -(-plen // MOONCAKE_BLOCK)
            prefix = [0]
            if cont[i]:  # the longest of the last 256 conversations a turn can extend
                lo = max(0, len(recent) - 256)
                fit = [j for j in range(lo, len(recent)) if recent[j][0] < plen]
                if fit:
                    parent = recent.pop(max(fit, key=lambda j: recent[j][0]))[1]
                    prefix = parent[: min(len(parent), blocks - 1)] or [0]
            shared += len(prefix)
            new = list(range(next_id, next_id + blocks - len(prefix)))
            next_id += len(new)
            ids = prefix + new
            total += blocks
            # the request's whole blocks are what its next turn shares
            recent.append((plen, ids[: plen // MOONCAKE_BLOCK] or [0]))
            row = {
                "timestamp": int(stamps[i]),
                "input_length": plen,
                "output_length": int(outputs[i]),
                "hash_ids": ids,
            }
            f.write(json.dumps(row) + "\n")
    return {
        "requests": float(n),
        "mean_prompt_tokens": float(prompts.mean()),
        "mean_output_tokens": float(outputs.mean()),
        "span_s": float(stamps.max() / 1000.0),
        "shared_block_share": shared / total,
    }


def mooncake_scenario(trace: dict[str, Any], routing: str) -> dict[str, Any]:
    """The Mooncake target's run: the trace with prefix caching (512-token blocks, 30 %
    of each replica's KV) on 8 H100s serving Llama-3-8B, routed ``routing``."""
    return {
        "name": "speed-mooncake",
        "seed": 1,
        "model": {"family": "llama", "preset": "llama-3-8b", "dtype": "bf16"},
        "workload": {
            "kind": "serving",
            "trace": trace,
            "scheduler": {"kind": "chunked-prefill", "max_batch": 256, "chunk": 8192},
            "prefix_caching": {
                "memory_fraction": 0.3,
                "block_tokens": MOONCAKE_BLOCK,
                "routing": routing,
            },
        },
        "systems": [{"name": "h100x8", "backend": "gpu", "device": "h100-sxm", "count": 8}],
    }


def main(argv: list[str] | None = None) -> int:
    """Print each row's error (and the speed figures with ``--speed``); write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speed", action="store_true", help="also time the Azure conv replay")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="validate only these techniques (prefix_caching, speculative_decoding, "
        "disaggregation, lora, expert_parallelism)",
    )
    ap.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "out" / "validate_techniques.json"
    )
    args = ap.parse_args(argv)
    host = build_host()
    rows = validate(host, set(args.only) if args.only else None)
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
