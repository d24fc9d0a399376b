"""``xpusim tpu``: the systolic-array model on its own (GEMM and im2col convolution).

Without ``--bandwidth`` the memory interface never stalls the array and the numbers come
from the closed form (:mod:`xpusim.plugins.tpu.cycles`). With ``--bandwidth`` (words per cycle)
the layer's per-cycle demand runs through the SCALE-Sim-style scratchpad model
(:mod:`xpusim.plugins.tpu.memory`) with ``--sram-kb`` SRAMs, which adds stall cycles.
``--emulate`` also runs the cycle-stepped array on random integers and checks the product
against numpy.

The plugin adds this group to every ``xpusim`` command line, so this module imports only
typer; the array model (numpy and the systolic modules) is imported inside the commands
that run it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import numpy as np

    from xpusim.plugins.tpu.systolic import Operands

tpu_app = typer.Typer(
    name="tpu",
    help="Systolic-array (MXU) cycle model: GEMM and convolution layers.",
    no_args_is_help=True,
    add_completion=False,
)

MAX_DEMAND_CELLS = 400_000_000
"""Largest demand (cycles × array edge) the cycle-level stall model is run on."""
MAX_EMULATED_MACS = 50_000_000


class BadInput(Exception):
    """A command-line value that makes no sense (exit code 2)."""


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def parse_array(text: str) -> tuple[int, int]:
    """``"32x32"`` -> ``(32, 32)``."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2:
        raise BadInput(f"--array {text!r} is not ROWSxCOLS (for example 32x32).")
    try:
        r, c = int(parts[0]), int(parts[1])
    except ValueError:
        raise BadInput(
            f"--array {text!r}: rows and columns must be whole numbers, as in 32x32."
        ) from None
    if r < 1 or c < 1:
        raise BadInput(f"--array {text!r}: an array needs at least 1 row and 1 column.")
    return r, c


def parse_ints(text: str, n: int, what: str) -> tuple[int, ...]:
    """A comma list of ``n`` positive integers."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != n:
        raise BadInput(f"{what} {text!r} needs {n} comma-separated values.")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise BadInput(f"{what} {text!r}: every value must be a whole number.") from None
    if any(v < 1 for v in vals):
        raise BadInput(f"{what} {text!r}: every value must be at least 1.")
    return vals


def parse_sram(text: str | None) -> tuple[float, float, float]:
    """``"64,64,64"`` (kB of ifmap, filter, ofmap SRAM)."""
    if text is None:
        return (64.0, 64.0, 64.0)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise BadInput(
            f"--sram-kb {text!r} needs three sizes in kB: IFMAP,FILTER,OFMAP "
            f"(for example 64,64,64)."
        )
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise BadInput(f"--sram-kb {text!r}: sizes must be numbers of kB.") from None
    for name, v in zip(("ifmap", "filter", "ofmap"), vals, strict=True):
        if not (v > 0) or v != v or v == float("inf"):
            raise BadInput(f"--sram-kb {text!r}: the {name} SRAM must be a positive size.")
        if int(1024 * v) < 2:
            raise BadInput(
                f"--sram-kb {text!r}: the {name} SRAM holds fewer than 2 one-byte "
                f"words; double buffering needs at least 2."
            )
    return vals  # type: ignore[return-value]


def check_dataflow(df: str) -> str:
    from xpusim.plugins.tpu.systolic import DATAFLOWS

    d = df.lower()
    if d not in DATAFLOWS:
        raise BadInput(
            f"--dataflow {df!r} is not a dataflow; choose ws (weight stationary), "
            f"os (output stationary) or is (input stationary)."
        )
    return d


def check_bandwidth(bw: int | None) -> int | None:
    if bw is not None and bw < 1:
        raise BadInput(
            f"--bandwidth {bw} must be at least 1 word per cycle (leave it out "
            f"for an interface that never stalls)."
        )
    return bw


def evaluate(
    ops: Operands,
    rows: int,
    cols: int,
    dataflow: str,
    sram: tuple[float, float, float],
    bandwidth: int | None,
    layer: dict[str, Any],
) -> dict[str, Any]:
    """The report of one layer (GEMM dims already in ``ops``)."""
    from xpusim.plugins.tpu.cycles import gemm_cycles
    from xpusim.plugins.tpu.memory import MemoryConfig, simulate_stalls
    from xpusim.plugins.tpu.systolic import demand_trace

    m, n, k = ops.mnk
    cf = gemm_cycles(m, n, k, rows, cols, dataflow)
    out: dict[str, Any] = {
        **layer,
        "gemm": {"m": m, "n": n, "k": k},
        "array": [rows, cols],
        "dataflow": dataflow,
        "sram_kb": list(sram),
        "bandwidth_words_per_cycle": bandwidth,
        "folds": cf.folds,
        "cycles_per_fold": cf.cycles_per_fold,
        "compute_cycles": cf.compute_cycles,
        "stall_cycles": 0,
        "total_cycles": cf.compute_cycles,
        "mapping_efficiency": cf.mapping_efficiency,
        "model": "closed form (ideal memory interface: no stalls)",
    }
    if bandwidth is not None:
        width = max(rows, cols)
        cells = (cf.folds * cf.cycles_per_fold) * width
        if cells > MAX_DEMAND_CELLS:
            raise BadInput(
                f"this layer makes {cf.folds * cf.cycles_per_fold} cycles of demand on a "
                f"{rows}x{cols} array, too large for the cycle-level stall model "
                f"(limit {MAX_DEMAND_CELLS} demand cells); leave out --bandwidth for the "
                f"closed form, or use a smaller layer."
            )
        d = demand_trace(ops, rows, cols, dataflow)
        rep = simulate_stalls(
            d.ifmap,
            d.filter,
            d.ofmap,
            d.ifmap_fetch,
            d.filter_fetch,
            MemoryConfig(*sram, bandwidth=bandwidth),
        )
        if rep.compute_cycles != cf.compute_cycles:  # pragma: no cover - invariant
            raise RuntimeError("closed form and demand trace disagree on compute cycles")
        out.update(
            stall_cycles=rep.stall_cycles,
            total_cycles=rep.total_cycles,
            dram_words={
                "ifmap": rep.ifmap_dram_words,
                "filter": rep.filter_dram_words,
                "ofmap": rep.ofmap_dram_words,
            },
            model="closed-form compute + SCALE-Sim-style scratchpad stall model",
        )
    total = out["total_cycles"]
    out["utilization"] = (m * n * k) / (max(total, 1) * rows * cols)
    return out


def _print(rep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    g = rep["gemm"]
    typer.echo(
        f"GEMM {g['m']}x{g['n']}x{g['k']} (M x N x K) on {rep['array'][0]}x"
        f"{rep['array'][1]} array, dataflow {rep['dataflow']}"
    )
    typer.echo(f"  total cycles    {rep['total_cycles']}")
    typer.echo(
        f"  compute cycles  {rep['compute_cycles']}  ({rep['folds']} folds x "
        f"{rep['cycles_per_fold']} - 1)"
    )
    typer.echo(f"  stall cycles    {rep['stall_cycles']}")
    typer.echo(f"  utilization     {100 * rep['utilization']:.2f} %")
    typer.echo(f"  model           {rep['model']}")
    if "emulated" in rep:
        typer.echo(f"  emulated        {rep['emulated']}")


def _emulate(
    ops: Operands, a: np.ndarray, b: np.ndarray, rows: int, cols: int, dataflow: str
) -> str:
    import numpy as np

    from xpusim.plugins.tpu.systolic import SystolicArray

    m, n, k = ops.mnk
    if m * n * k > MAX_EMULATED_MACS:
        raise BadInput(
            f"--emulate steps every cycle in Python; {m * n * k} MACs is over the "
            f"{MAX_EMULATED_MACS} limit. Drop --emulate or use a smaller layer."
        )
    r = SystolicArray(rows, cols, dataflow).gemm(a, b, operands=ops)
    ok = bool(np.array_equal(r.output, a @ b))
    return (
        f"cycle-stepped array: {r.compute_cycles} compute cycles, product "
        f"{'equals' if ok else 'DIFFERS FROM'} numpy"
    )


@tpu_app.command("gemm")
def gemm_cmd(
    m: int = typer.Option(..., "--m", help="rows of A and of the output"),
    n: int = typer.Option(..., "--n", help="columns of B and of the output"),
    k: int = typer.Option(..., "--k", help="the reduction dimension"),
    array: str = typer.Option("32x32", "--array", help="ROWSxCOLS of the systolic array"),
    dataflow: str = typer.Option("ws", "--dataflow", help="ws, os or is"),
    sram_kb: str | None = typer.Option(
        None, "--sram-kb", help="IFMAP,FILTER,OFMAP SRAM kB (default 64,64,64)"
    ),
    bandwidth: int | None = typer.Option(
        None, "--bandwidth", help="DRAM words per cycle (omit: never stalls)"
    ),
    emulate: bool = typer.Option(False, "--emulate", help="also run the cycle-stepped array"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Cycles of one GEMM ``M×K · K×N`` on a systolic array."""
    import numpy as np

    from xpusim.plugins.tpu.systolic import gemm_operands

    try:
        if min(m, n, k) < 1:
            raise BadInput(f"GEMM dimensions must be at least 1, got M={m} N={n} K={k}.")
        rows, cols = parse_array(array)
        df = check_dataflow(dataflow)
        sram = parse_sram(sram_kb)
        bw = check_bandwidth(bandwidth)
        ops = gemm_operands(m, n, k)
        rep = evaluate(ops, rows, cols, df, sram, bw, {"layer": "gemm"})
        if emulate:
            rng = np.random.default_rng(0)
            rep["emulated"] = _emulate(
                ops, rng.integers(-8, 8, (m, k)), rng.integers(-8, 8, (k, n)), rows, cols, df
            )
    except BadInput as e:
        _fail(str(e))
    _print(rep, as_json)


@tpu_app.command("conv")
def conv_cmd(
    ifmap: str = typer.Option(..., "--ifmap", help="H,W,C of the input feature map"),
    filt: str = typer.Option(..., "--filter", help="H,W of each filter"),
    filters: int = typer.Option(..., "--filters", help="number of filters (output channels)"),
    stride: int = typer.Option(1, "--stride", help="stride in both directions"),
    array: str = typer.Option("32x32", "--array", help="ROWSxCOLS of the systolic array"),
    dataflow: str = typer.Option("ws", "--dataflow", help="ws, os or is"),
    sram_kb: str | None = typer.Option(
        None, "--sram-kb", help="IFMAP,FILTER,OFMAP SRAM kB (default 64,64,64)"
    ),
    bandwidth: int | None = typer.Option(
        None, "--bandwidth", help="DRAM words per cycle (omit: never stalls)"
    ),
    emulate: bool = typer.Option(False, "--emulate", help="also run the cycle-stepped array"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Cycles of a convolution lowered to a GEMM by im2col (as SCALE-Sim does)."""
    import numpy as np

    from xpusim.plugins.tpu.systolic import ConvShape, conv_operands, im2col

    try:
        h, w, c = parse_ints(ifmap, 3, "--ifmap")
        fh, fw = parse_ints(filt, 2, "--filter")
        if filters < 1 or stride < 1:
            raise BadInput(f"--filters ({filters}) and --stride ({stride}) must be at least 1.")
        try:
            conv = ConvShape(h, w, c, fh, fw, filters, stride)
        except ValueError as e:
            raise BadInput(str(e)) from None
        rows, cols = parse_array(array)
        df = check_dataflow(dataflow)
        sram = parse_sram(sram_kb)
        bw = check_bandwidth(bandwidth)
        ops = conv_operands(conv)
        rep = evaluate(
            ops,
            rows,
            cols,
            df,
            sram,
            bw,
            {
                "layer": "conv",
                "conv": {
                    "ifmap": [h, w, c],
                    "filter": [fh, fw],
                    "filters": filters,
                    "stride": stride,
                    "ofmap": [conv.ofmap_h, conv.ofmap_w, filters],
                },
            },
        )
        if emulate:
            rng = np.random.default_rng(0)
            x = rng.integers(-8, 8, (h, w, c))
            a = im2col(x, conv)
            b = rng.integers(-8, 8, (fh * fw * c, filters))
            rep["emulated"] = _emulate(ops, a, b, rows, cols, df)
    except BadInput as e:
        _fail(str(e))
    _print(rep, as_json)


def main() -> None:  # pragma: no cover - convenience entry
    tpu_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(tpu_app())
