"""Validate the serving model against published serving measurements, row by row.

Every row of ``benchmarks/serving_rows.yaml`` is a measurement someone published, with
its source (title, address, the table and row) and setup (engine and version, GPU,
tensor parallelism, model, dtypes, batch, lengths, benchmark tool). Each is replayed
through the path a user's scenario takes (``xpusim.engine.scenario.resolve`` of an
``offline`` workload on the ``gpu`` backend, then ``xpusim.engine.run.simulate``) under
the serving-engine profile of its stack (``workload.stack``), and the predicted figure is
compared with the measured one. No parameter is fitted to any row.

Kinds of run (``run`` in a row):

* ``static-batch`` — TensorRT-LLM's ``gptSessionBenchmark``: one static batch of
  ``batch`` sequences, prefill then ``output - 1`` decode steps; the figure is output
  tokens per second per GPU;
* ``first-token`` — batch 1, one output token: the time to first token;
* ``batch-latency`` — vLLM's ``benchmark_latency.py``: one batch of ``batch`` prompts
  run to completion under vLLM's default limits (256 sequences, 8,192 tokens per
  iteration); the figure is the batch's wall time;
* ``vllm-throughput`` — vLLM's ``benchmark_throughput.py``: ``count`` prompts queued at
  once under the same limits; the figure is output tokens per second;
* ``trtllm-bench`` — TensorRT-LLM's ``trtllm-bench throughput``: ``count`` requests
  queued at once on the in-flight batching executor (stack ``tensorrt-llm``), under the
  engine's build limits where the row gives them (``max_batch``, ``max_batch_tokens``),
  else under the limits the offline workload picks to fit memory, as ``trtllm-bench
  build`` sizes an engine from its dataset; the figure is output tokens per second;
* ``poisson-server`` — a serving benchmark (``sglang.bench_serving``, vLLM's
  ``benchmark_serving.py``): ``count`` requests arriving as a Poisson process at
  ``rate`` requests per second, with the row's ``prompt_tokens`` and ``output_tokens``
  length laws (the serving workload's ``arrivals`` block) and the scheduler and KV
  fraction of the row's stack; the figure is a latency statistic over the requests
  (``ttft_p50_s``, ``tpot_p50_s``, ``ttft_mean_s``, ``itl_mean_s``, ...).

The kind of load (``kind``) is one of ``offline``, ``prefill-heavy``, ``decode-heavy``,
``single-request``, ``batch-latency`` or ``server``; the summary gives the median and
largest |error| overall, per kind, per source table and per GPU.

Usage::

    python benchmarks/validate_serving.py [--rows PATH] [--json OUT] [--only SUBSTRING]
                                          [--calibration FILE]

Exit status 0 whatever the errors (it reports, it does not gate); 2 when a
``poisson-server`` row lacks what it needs (its rate, count, length laws or a latency
statistic to compare), naming the row and the key, or when a table cannot be expanded
(a key missing, a cell's lengths without a request count, a column it does not
declare), naming the table, the cell and the fix; either before any row runs.
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

from xpusim.engine.errors import DoesNotFitError  # noqa: E402
from xpusim.engine.host import Host, build_host  # noqa: E402
from xpusim.engine.run import simulate  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402
from xpusim.plugins.gpu.calibration import load as load_calibration  # noqa: E402
from xpusim.plugins.models.presets import DECODER_PRESETS  # noqa: E402
from xpusim.plugins.workloads.serving.stacks import load_profile  # noqa: E402

ROWS = Path(__file__).with_name("serving_rows.yaml")
VLLM_LIMITS = {"kind": "continuous", "max_batch": 256, "max_batch_tokens": 8192}
"""vLLM's default scheduler limits (``--max-num-seqs 256``, ``--max-num-batched-tokens``
8192), which its benchmark scripts run under."""


class TableError(ValueError):
    """A ``tables`` entry of a validation file that cannot be expanded into rows."""


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a validation file: its ``rows``, then the cells of its ``tables``
    (:func:`table_rows`); :class:`TableError` naming the table and what to fix when one
    is malformed (:func:`table_problems`)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = list(doc.get("rows") or [])
    for table in doc.get("tables") or []:
        bad = table_problems(table)
        if bad:
            raise TableError(f"{path}: table {table.get('id')!r}: " + "; ".join(bad))
        rows.extend(table_rows(table))
    return rows


TABLE_KEYS = ("id", "source", "setup", "run", "stack", "metric", "columns", "counts", "cells")
"""What a ``tables`` entry must give (:func:`table_rows`)."""


def table_problems(table: dict[str, Any]) -> list[str]:
    """What a ``tables`` entry lacks or gets wrong, each naming the key and the fix
    (empty for a good table)."""
    out = [f"missing `{k}`" for k in TABLE_KEYS if k not in table]
    if out:
        return out
    cols, counts = table["columns"], table["counts"]
    for i, cell in enumerate(table["cells"]):
        where = f"cells[{i}]"
        if not (isinstance(cell, list) and len(cell) == 5 and isinstance(cell[4], dict)):
            out.append(f"{where}: give [model, label, tp, 'in/out', {{column: measured}}]")
            continue
        lengths = str(cell[3])
        parts = lengths.split("/")
        if len(parts) != 2 or not all(x.isdigit() for x in parts):
            out.append(f"{where}: lengths {lengths!r}: write them as 'input/output', e.g. 128/2048")
        elif lengths not in counts:
            out.append(f"{where}: no request count for {lengths}: add it under `counts`")
        unknown = sorted(set(cell[4]) - set(cols))
        if unknown:
            out.append(f"{where}: columns {unknown} are not under `columns` ({', '.join(cols)})")
    return out


def _kind(isl: int, osl: int) -> str:
    """The kind of load of a throughput cell: decode-heavy when the output is at least
    eight times the input, prefill-heavy when the input is, offline otherwise."""
    if osl >= 8 * isl:
        return "decode-heavy"
    if isl >= 8 * osl:
        return "prefill-heavy"
    return "offline"


def table_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a published throughput table, one per filled cell.

    A table gives its source and setup once, its ``columns`` (a GPU and precision each:
    ``gpu``, ``device``, ``dtype``, ``kv_dtype``, ``label`` as the table heads it), the
    request ``counts`` by ``input/output`` lengths, the engine ``limits`` its build used
    (by model, ``tpN``, then the longest sequence or ``general``: ``max_batch`` and
    ``max_batch_tokens``), and ``cells``: ``[model, label, tp, "in/out",
    {column: measured}]``. Each cell becomes a row as a hand-written one would be."""
    out: list[dict[str, Any]] = []
    cols = table["columns"]
    limits = table.get("limits") or {}
    for model, label, tp, lengths, values in table["cells"]:
        isl, osl = (int(x) for x in str(lengths).split("/"))
        for col, measured in values.items():
            c = cols[col]
            row: dict[str, Any] = {
                "id": f"{table['id']}-{col}-{model}-tp{tp}-{isl}-{osl}",
                "table": table["id"],
                "kind": _kind(isl, osl),
                "gpu": c["gpu"],
                "device": c["device"],
                "tp": int(tp),
                "model": model,
                "dtype": c["dtype"],
                "kv_dtype": c.get("kv_dtype"),
                "stack": table["stack"],
                "run": table["run"],
                "count": int(table["counts"][f"{isl}/{osl}"]),
                "input": isl,
                "output": osl,
                "metric": table["metric"],
                "measured": float(measured),
                "source": {
                    **table["source"],
                    "location": f"{table['source']['location']}, row {label} "
                    f"{isl}/{osl} TP {tp}, column {c['label']}",
                },
                "setup": table["setup"],
            }
            by_len = limits.get(model, {}).get(f"tp{tp}", {})
            row.update(by_len.get(isl + osl, by_len.get("general", {})))
            out.append(row)
    return out


def scenario_data(row: dict[str, Any], calibration: Path | None = None) -> dict[str, Any]:
    """The plain scenario a user would write to reproduce ``row``."""
    family = DECODER_PRESETS[row["model"]]["family"]
    model: dict[str, Any] = {"family": family, "preset": row["model"], "dtype": row["dtype"]}
    if row.get("kv_dtype"):
        model["kv_dtype"] = row["kv_dtype"]
    run = row["run"]
    if run == "poisson-server":
        return server_scenario(row, model, calibration)
    if run == "trtllm-bench":
        return trtllm_bench_scenario(row, model, calibration)
    batch, count = int(row["batch"]), int(row.get("count", row["batch"]))
    if run == "static-batch":
        scheduler: dict[str, Any] = {"kind": "static", "max_batch": batch}
    elif run == "first-token":
        scheduler = {"kind": "static", "max_batch": 1}
    else:
        scheduler = dict(VLLM_LIMITS)
    workload = _offline(row, count)
    workload["scheduler"] = scheduler
    return _scenario(row, model, workload, calibration)


def _offline(row: dict[str, Any], count: int) -> dict[str, Any]:
    """An ``offline`` workload of ``count`` requests of the row's lengths under its stack."""
    return {
        "kind": "offline",
        "count": count,
        "prompt_tokens": {"dist": "constant", "value": int(row["input"])},
        "output_tokens": {"dist": "constant", "value": int(row["output"])},
        "stack": row["stack"],
    }


def trtllm_bench_scenario(
    row: dict[str, Any], model: dict[str, Any], calibration: Path | None = None
) -> dict[str, Any]:
    """The offline scenario of a ``trtllm-bench`` row: its requests queued at once under
    its stack, with the engine's build limits when the row gives them (the stack's
    capacity policy kept), else none, so that the run picks them to fit memory."""
    workload = _offline(row, int(row["count"]))
    if "max_batch" in row or "max_batch_tokens" in row:
        scheduler = dict(load_profile(row["stack"]).scheduler)
        scheduler.update({k: int(row[k]) for k in ("max_batch", "max_batch_tokens") if k in row})
        workload["scheduler"] = scheduler
    return _scenario(row, model, workload, calibration)


def _scenario(
    row: dict[str, Any],
    model: dict[str, Any],
    workload: dict[str, Any],
    calibration: Path | None,
) -> dict[str, Any]:
    """The scenario of ``row`` around its ``model`` and ``workload`` blocks."""
    return {
        "name": f"validate-{row['id']}",
        "seed": 0,
        "model": model,
        "workload": workload,
        "systems": [_system(row, calibration)],
    }


def _system(row: dict[str, Any], calibration: Path | None) -> dict[str, Any]:
    """The one system of ``row``: its GPUs under tensor parallelism, with the
    calibration when it is of the row's device."""
    options: dict[str, Any] = {}
    if row.get("decode_attention"):  # else the stack's engine, or the backend, picks it
        options["decode_attention"] = row["decode_attention"]
    if calibration is not None and load_calibration(calibration).device == row["device"]:
        options["calibration"] = str(calibration)
    tp = int(row["tp"])
    return {
        "name": f"{row['gpu']}-tp{tp}",
        "backend": "gpu",
        "device": row["device"],
        "count": tp,
        "parallelism": {"tensor": tp},
        "options": options,
    }


def server_scenario(
    row: dict[str, Any], model: dict[str, Any], calibration: Path | None = None
) -> dict[str, Any]:
    """The serving scenario of a ``poisson-server`` row: Poisson arrivals at the row's
    rate with its length laws, under its stack's scheduler and KV fraction, or the
    row's own ``scheduler`` where the engine ran with other limits or policy (vLLM's
    multi-step rounds)."""
    workload: dict[str, Any] = {
        "kind": "serving",
        "arrivals": {
            "process": "poisson",
            "rate": f"{float(row['rate'])}/s",
            "count": int(row["count"]),
            "prompt_tokens": dict(row["prompt_tokens"]),
            "output_tokens": dict(row["output_tokens"]),
        },
        "stack": row["stack"],
    }
    if row.get("scheduler"):
        workload["scheduler"] = dict(row["scheduler"])
    return _scenario(row, model, workload, calibration)


SERVER_METRICS = frozenset(
    {
        *(f"{n}_{s}_s" for n in ("ttft", "tpot", "e2e") for s in ("mean", "p50", "p90", "p99")),
        "itl_mean_s",
        "itl_p90_s",
        "tbt_p50_s",
        "tbt_p99_s",
    }
)
"""Latency statistics a ``poisson-server`` row may compare (the serving metrics' keys;
the median and 99th-percentile inter-token latency are ``tbt_p50_s`` and ``tbt_p99_s``)."""


def predict(host: Host, row: dict[str, Any], calibration: Path | None = None) -> dict[str, Any]:
    """Simulate ``row`` and return its predicted figure (same unit as ``measured``)."""
    sc = resolve(scenario_data(row, calibration), Source("validate_serving"), host, base_dir=REPO)
    try:
        res = simulate(sc, host).systems[0]
    except DoesNotFitError as e:  # the model says the published setup cannot run
        return {"status": "does-not-fit", "reason": str(e)}
    if res.status != "ok":
        return {"status": res.status, "reason": res.reason}
    m = res.metrics
    metric = row["metric"]
    if metric == "output_tok_s_per_gpu":
        value = float(m["throughput_tokens_per_s"]) / int(row["tp"])
    elif metric == "output_tok_s":
        value = float(m["throughput_tokens_per_s"])
    elif metric == "ttft_s":
        value = float(m["ttft_p50_s"])
    elif metric == "latency_s":
        value = float(m["simulated_s"])
    elif metric in SERVER_METRICS:
        if m.get(metric) is None:
            return {"status": "no-figure", "reason": f"the run gives no {metric}"}
        value = float(m[metric])
    else:
        raise ValueError(f"row {row['id']}: unknown metric {metric!r}")
    return {"status": "ok", "predicted": value, "j_per_token": m.get("energy_per_token_j")}


BEYOND = 0.25
"""The |error| a row must stay within (the target: no row beyond 25%)."""


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and largest |error| of the rows that ran, the rows beyond :data:`BEYOND`
    and those the model could not run (a published setup it says does not fit counts
    as a miss, not as a row left out), over all rows, per kind of load, per source table
    (``table -`` for the rows written one by one) and per GPU."""
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[dict[str, Any]]] = {"all": list(rows)}
    for key in ("kind", "table", "gpu"):
        for r in rows:
            name = r["kind"] if key == "kind" else f"{key} {r.get(key) or '-'}"
            groups.setdefault(name, []).append(r)
    for name, members in groups.items():
        if not members:
            continue
        errs = [abs(r["error"]) for r in members if r.get("status") == "ok"]
        out[name] = {
            "rows": len(members),
            "median": statistics.median(errs) if errs else float("nan"),
            "max": max(errs) if errs else float("nan"),
            "beyond_25": sum(1 for e in errs if e > BEYOND) + len(members) - len(errs),
            "not_run": len(members) - len(errs),
        }
    return out


SERVER_KEYS = {
    "rate": "the stated request rate, requests per second",
    "count": "the number of requests the benchmark sent",
    "prompt_tokens": "the prompt-length law, as a serving workload's arrivals take it",
    "output_tokens": "the output-length law, as a serving workload's arrivals take it",
}
"""What a ``poisson-server`` row must state besides the common fields."""


def row_problems(row: dict[str, Any]) -> list[str]:
    """What a ``poisson-server`` row lacks or gets wrong, each naming the key and the fix
    (empty for a good row and for the other kinds of run)."""
    if row.get("run") != "poisson-server":
        return []
    out = [f"missing `{k}`: add {what}" for k, what in SERVER_KEYS.items() if k not in row]
    if "rate" in row and not (isinstance(row["rate"], int | float) and row["rate"] > 0):
        out.append(f"`rate` is {row['rate']!r}: give a positive number of requests per second")
    if row.get("metric") not in SERVER_METRICS:
        out.append(
            f"`metric` is {row.get('metric')!r}: give one of {', '.join(sorted(SERVER_METRICS))}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every row and print per-row errors and the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--json", type=Path, help="write rows and summary here")
    ap.add_argument("--only", help="run the rows whose id contains this")
    ap.add_argument("--calibration", type=Path, help="a GPU calibration for its device's rows")
    args = ap.parse_args(argv)
    try:
        rows = [r for r in load_rows(args.rows) if not args.only or args.only in r["id"]]
    except TableError as e:
        print(e, file=sys.stderr)
        return 2
    bad = [f"{args.rows}: row {r.get('id')!r}: {msg}" for r in rows for msg in row_problems(r)]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 2
    host = build_host()
    out: list[dict[str, Any]] = []
    print(
        f"{'row':52s} {'kind':15s} {'metric':20s} {'measured':>10s} {'predicted':>10s} {'error':>7s}"
    )
    for row in rows:
        p = predict(host, row, args.calibration)
        rec = {k: row[k] for k in ("id", "kind", "gpu", "tp", "model", "stack", "metric")}
        rec["table"] = row.get("table")
        rec.update(measured=row["measured"], status=p["status"], source=row["source"])
        head = (
            f"{row['id']:52s} {row['kind']:15s} {row['metric']:20s} {float(row['measured']):10.4g} "
        )
        if p["status"] != "ok":
            rec["reason"] = p.get("reason")
            print(head + f"{p['status']}: {p.get('reason')}")
        else:
            rec.update(predicted=p["predicted"], error=p["predicted"] / float(row["measured"]) - 1)
            print(head + f"{p['predicted']:10.4g} {100 * rec['error']:+6.1f}%")
        out.append(rec)
    summary = summarize(out)
    for name, s in summary.items():
        print(
            f"{name:16s} {int(s['rows']):3d} rows  median |error| {100 * s['median']:5.1f}%  "
            f"max {100 * s['max']:5.1f}%  beyond 25% {int(s['beyond_25']):3d}"
            + (f" (not run {int(s['not_run'])})" if s["not_run"] else "")
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rows": out, "summary": summary}, indent=2) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
