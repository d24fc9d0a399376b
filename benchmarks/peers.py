"""The tools people would use instead of xpusim, run on the same cases in fresh processes.

Each peer is an optional install, never a dependency of the project: SCALE-Sim 3.0
(``pip install scalesim``; it needs numpy < 2 and pandas < 2.3), llm-analysis
(``pip install llm-analysis``) and GenZ (``pip install genz-llm``). They may live in another
environment than xpusim's: every run names the Python it uses, and a peer that Python
cannot import is reported as not installed, with the command that installs it.

A case is a small program run with ``python -c`` in a fresh process, so its wall time
includes interpreter and import start-up, as a user's command line pays it. The program
prints one JSON line: the predictions and ``inner_s``, the seconds of the computation
itself (imports excluded). :func:`run_case` returns both times and the predictions.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

INSTALL = {
    "scalesim": "pip install scalesim 'numpy<2' 'pandas<2.3'",
    "llm-analysis": "pip install llm-analysis",
    "genz": "pip install genz-llm",
}
"""How each peer is installed (into the Python given to the harness)."""


@dataclass
class CaseRun:
    """One tool on one case: ``status`` is ``ok``, ``not-installed`` or ``failed``;
    ``wall_s`` the whole process (start-up included), ``inner_s`` the computation alone,
    ``predictions`` what the tool answered, ``note`` why it did not run."""

    tool: str
    status: str
    wall_s: float | None = None
    inner_s: float | None = None
    predictions: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def run_case(tool: str, python: str, program: str, timeout: float) -> CaseRun:
    """Run ``program`` (its last stdout line is a JSON object with ``inner_s`` and
    ``predictions``, or ``{"missing": MODULE}``) under ``python`` and time it."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, "-c", textwrap.dedent(program)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CaseRun(tool, "failed", note=f"did not finish within {timeout:.0f} s")
    except OSError as exc:
        return CaseRun(tool, "failed", note=f"cannot start {python}: {exc.strerror}")
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return CaseRun(tool, "failed", wall, note=f"exit {proc.returncode}: {tail[0][:300]}")
    doc = json.loads(lines[-1])
    if "missing" in doc:
        return CaseRun(
            tool,
            "not-installed",
            note=f"{doc['missing']} is not importable by {python} ({INSTALL.get(tool, '')})",
        )
    return CaseRun(tool, "ok", wall, float(doc["inner_s"]), dict(doc["predictions"]))


# --- programs ---------------------------------------------------------------------------
# Each is formatted with the case's parameters and run with `python -c`.

GUARD = """
import json, sys, time
try:
    {imports}
except ImportError:
    print(json.dumps({{"missing": "{module}"}}))
    sys.exit(0)
"""


def _program(module: str, imports: str, body: str) -> str:
    return GUARD.format(module=module, imports=imports) + textwrap.dedent(body)


def xpusim_llm(model: str, device: str, prompt: int) -> str:
    """xpusim's GPU backend: one prefill of ``prompt`` tokens and one decode step over
    ``prompt`` cached tokens, batch 1, bf16."""
    return _program(
        "xpusim",
        "from xpusim.engine.host import build_host",
        f"""
        t0 = time.perf_counter()
        from xpusim.engine.collectives import topology_from_device
        from xpusim.engine.graph import Phase, Shape
        from xpusim.engine.system import Parallelism, System
        host = build_host()
        model = host.models.get("llama").configure({{"preset": "{model}", "dtype": "bf16"}})
        dev = host.device("gpu", "{device}")
        system = System("x", "gpu", dev, 1, Parallelism(), topology_from_device(dev))
        compiled = host.backends.get("gpu").compile(model, system)
        pre = compiled.cost(Shape(Phase.PREFILL, batch=1, tokens={prompt}, context=0)).seconds
        dec = compiled.cost(Shape(Phase.DECODE, batch=1, tokens=1, context={prompt})).seconds
        inner = time.perf_counter() - t0
        print(json.dumps({{"inner_s": inner, "predictions": {{
            "prefill_s": pre, "decode_step_s": dec}}}}))
        """,
    )


def llm_analysis_llm(model: str, gpu: str, prompt: int) -> str:
    """llm-analysis ``infer``: prefill latency and per-token decode latency."""
    return _program(
        "llm_analysis",
        "from llm_analysis.analysis import infer",
        f"""
        t0 = time.perf_counter()
        r = infer(model_name="{model}", gpu_name="{gpu}", dtype_name="w16a16e16",
                  batch_size_per_gpu=1, seq_len={prompt}, num_tokens_to_generate=1,
                  log_level="ERROR")
        inner = time.perf_counter() - t0
        print(json.dumps({{"inner_s": inner, "predictions": {{
            "prefill_s": r["prefill_latency"], "decode_step_s": r["decode_latency"]}}}}))
        """,
    )


def genz_llm(model: str, system: str, prompt: int) -> str:
    """GenZ ``prefill_moddeling`` and ``decode_moddeling`` (latencies in ms)."""
    return _program(
        "GenZ",
        "from GenZ import decode_moddeling, prefill_moddeling",
        f"""
        t0 = time.perf_counter()
        p = prefill_moddeling(model="{model}", batch_size=1, input_tokens={prompt},
                              system_name="{system}", bits="bf16")
        d = decode_moddeling(model="{model}", batch_size=1, input_tokens={prompt},
                             output_tokens=0, Bb=1, system_name="{system}", bits="bf16")
        inner = time.perf_counter() - t0
        print(json.dumps({{"inner_s": inner, "predictions": {{
            "prefill_s": p["Latency"] / 1e3, "decode_step_s": d["Latency"] / 1e3}}}}))
        """,
    )


def xpusim_tpu(layer: str, args: list[str]) -> str:
    """``xpusim tpu gemm|conv ... --json`` through the command line's own entry point."""
    return _program(
        "xpusim",
        "from xpusim.plugins.tpu.cli import tpu_app",
        f"""
        import contextlib, io
        t0 = time.perf_counter()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                tpu_app([{layer!r}, *{args!r}, "--json"], standalone_mode=False)
            except SystemExit:
                pass
        inner = time.perf_counter() - t0
        rep = json.loads(out.getvalue())
        print(json.dumps({{"inner_s": inner, "predictions": {{
            "compute_cycles": rep["compute_cycles"], "stall_cycles": rep["stall_cycles"],
            "total_cycles": rep["total_cycles"],
            "dram_words": rep.get("dram_words")}}}}))
        """,
    )


SCALESIM_CFG = """[general]
run_name = case

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram}
FilterSramSzkB: {sram}
OfmapSramSzkB: {sram}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: {bandwidth}
Dataflow: {dataflow}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
FilterCustomLayout: False
IfmapSRAMBankBandwidth: {bandwidth}
IfmapSRAMBankNum: 1
IfmapSRAMBankPort: 2
FilterSRAMBankBandwidth: {bandwidth}
FilterSRAMBankNum: 1
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""
"""A SCALE-Sim 3.0 configuration with a user DRAM bandwidth and default SRAM layout."""


def scalesim(
    topology_row: str, gemm: bool, rows: int, cols: int, sram: int, bandwidth: int, dataflow: str
) -> str:
    """SCALE-Sim 3.0 on one layer (a conv row ``name, H, W, R, S, C, M, stride,`` or a
    GEMM row ``name, M, N, K,``); reads its COMPUTE and DETAILED_ACCESS reports."""
    cfg = SCALESIM_CFG.format(
        rows=rows, cols=cols, sram=sram, bandwidth=bandwidth, dataflow=dataflow
    )
    header = "Layer, M, N, K," if gemm else "Layer, H, W, R, S, C, M, Stride,"
    return _program(
        "scalesim",
        "from scalesim.scale_sim import scalesim",
        f"""
        import csv, os, tempfile
        d = tempfile.mkdtemp(prefix="scalesim-")
        open(os.path.join(d, "c.cfg"), "w").write({cfg!r})
        open(os.path.join(d, "t.csv"), "w").write({header!r} + "\\n" + {topology_row!r} + "\\n")
        open(os.path.join(d, "l.csv"), "w").write(
            "Layer, a, b, c, d, e, f, g,\\nL, 1, 1, 1, 1, 1, 1, 1,\\n")
        s = scalesim(save_disk_space=True, verbose=False, config=os.path.join(d, "c.cfg"),
                     topology=os.path.join(d, "t.csv"), layout=os.path.join(d, "l.csv"),
                     input_type_gemm={gemm!r})
        t0 = time.perf_counter()
        s.run_scale(top_path=d)
        inner = time.perf_counter() - t0
        def report(name):
            with open(os.path.join(d, "case", name)) as f:
                rows = [[c.strip() for c in r] for r in csv.reader(f)]
            return dict(zip(rows[0], rows[1]))
        comp = report("COMPUTE_REPORT.csv")
        acc = report("DETAILED_ACCESS_REPORT.csv")
        total = int(float(comp["Total Cycles"]))
        stall = int(float(comp["Stall Cycles"]))
        print(json.dumps({{"inner_s": inner, "predictions": {{
            "compute_cycles": total - stall, "stall_cycles": stall, "total_cycles": total,
            "dram_words": {{"ifmap": int(float(acc["DRAM IFMAP Reads"])),
                            "filter": int(float(acc["DRAM Filter Reads"])),
                            "ofmap": int(float(acc["DRAM OFMAP Writes"]))}}}}}}))
        """,
    )
