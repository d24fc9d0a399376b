"""``xpusim tpu gemm|conv``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xpusim.plugins.tpu.cli import tpu_app

runner = CliRunner()


def _json(args: list[str]) -> dict:
    res = runner.invoke(tpu_app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_gemm_without_bandwidth_never_stalls() -> None:
    """Without --bandwidth a GEMM never stalls: total cycles equal the closed-form compute
    cycles (11,199 for 256x128x256 on a 32x32 weight-stationary array)."""
    out = _json(
        [
            "gemm",
            "--m",
            "256",
            "--n",
            "128",
            "--k",
            "256",
            "--array",
            "32x32",
            "--dataflow",
            "ws",
            "--json",
        ]
    )
    assert out["compute_cycles"] == 11199
    assert out["stall_cycles"] == 0 and out["total_cycles"] == 11199
    assert 0 < out["utilization"] <= 1


@pytest.mark.parametrize("dataflow,total,stall", [("os", 52447, 42272), ("ws", 52447, 41248)])
def test_gemm_golden_with_bandwidth(dataflow: str, total: int, stall: int) -> None:
    """With a bandwidth limit, a GEMM's compute cycles match SCALE-Sim's exactly and its stall
    cycles within 5%."""
    out = _json(
        [
            "gemm",
            "--m",
            "256",
            "--n",
            "128",
            "--k",
            "256",
            "--array",
            "32x32",
            "--dataflow",
            dataflow,
            "--sram-kb",
            "64,64,64",
            "--bandwidth",
            "10",
            "--json",
        ]
    )
    assert out["total_cycles"] - out["stall_cycles"] == total - stall
    assert abs(out["stall_cycles"] - stall) <= 0.05 * stall


def test_conv_lowers_by_im2col() -> None:
    """A convolution lowers by im2col to a GEMM of output pixels x filters x window (36x16x27
    for an 8x8x3 input and 16 3x3 filters)."""
    out = _json(
        [
            "conv",
            "--ifmap",
            "8,8,3",
            "--filter",
            "3,3",
            "--filters",
            "16",
            "--stride",
            "1",
            "--array",
            "8x8",
            "--dataflow",
            "os",
            "--json",
        ]
    )
    assert out["gemm"] == {"m": 36, "n": 16, "k": 27}
    assert out["conv"]["ofmap"] == [6, 6, 16]
    assert out["stall_cycles"] == 0


def test_emulate_checks_the_product() -> None:
    """--emulate runs the cycle-stepped array and reports that its product equals numpy's."""
    res = runner.invoke(
        tpu_app,
        [
            "gemm",
            "--m",
            "9",
            "--n",
            "5",
            "--k",
            "7",
            "--array",
            "3x4",
            "--dataflow",
            "is",
            "--emulate",
        ],
    )
    assert res.exit_code == 0 and "equals numpy" in res.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--array", "0x8"], "at least 1 row"),
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--array", "big"], "ROWSxCOLS"),
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--dataflow", "rs"], "not a dataflow"),
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--sram-kb", "64,64"], "three sizes"),
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--sram-kb", "64,-1,64"], "positive"),
        (["gemm", "--m", "4", "--n", "4", "--k", "4", "--bandwidth", "0"], "at least 1 word"),
        (["gemm", "--m", "0", "--n", "4", "--k", "4"], "at least 1"),
        (["conv", "--ifmap", "4,4,3", "--filter", "5,5", "--filters", "2"], "larger than"),
    ],
)
def test_bad_input_exits_2_with_reason(args: list[str], needle: str) -> None:
    """Invalid arguments exit with code 2 and a message stating why."""
    res = runner.invoke(tpu_app, args)
    assert res.exit_code == 2
    assert needle in res.output
