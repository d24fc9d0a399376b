"""Trace readers: the real Azure and Alibaba files, generic CSV/JSONL, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TRACES
from xpusim.engine.errors import TraceError
from xpusim.engine.traces import JOB_SCHEMA, REQUEST_SCHEMA
from xpusim.plugins.traces.readers import AlibabaGpuTrace, AzureLLMTrace, CsvTrace, JsonlTrace

CONV = TRACES / "azure_llm_2023_conv.csv"
CODE = TRACES / "azure_llm_2023_code.csv"
ALI = TRACES / "alibaba_gpu_v2023_openb_pod_list_default.csv"
AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"


def write(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.skipif(not CONV.exists(), reason="shared Azure conv trace absent")
def test_azure_conv_real_file() -> None:
    """The complete conv trace: 19,366 rows, medians 1,020 prompt and 129 output tokens,
    about 58 minutes long, starting at 0."""
    f = AzureLLMTrace().read(CONV, {})
    assert dict(f.schema) == REQUEST_SCHEMA
    assert f.height == 19366
    assert f["prompt_tokens"].median() == 1020
    assert f["output_tokens"].median() == 129
    assert f["prompt_tokens"].min() == 2 and f["prompt_tokens"].max() == 14050
    assert f["arrival_s"][0] == 0.0
    assert 57 * 60 < f["arrival_s"][-1] < 59 * 60


@pytest.mark.skipif(not CODE.exists(), reason="shared Azure code trace absent")
def test_azure_code_real_file() -> None:
    """The code trace: 8,819 rows, medians 1,469 and 13."""
    f = AzureLLMTrace().read(CODE, {})
    assert f.height == 8819
    assert f["prompt_tokens"].median() == 1469 and f["output_tokens"].median() == 13


@pytest.mark.skipif(not ALI.exists(), reason="shared Alibaba trace absent")
def test_alibaba_jobs() -> None:
    """8,152 tasks; median duration 540 s; shared GPUs become fractions."""
    f = AlibabaGpuTrace().read(ALI, {})
    assert dict(f.schema) == JOB_SCHEMA
    assert f.height == 8152
    assert f["duration_s"].median() == 540
    assert f["devices"].max() == 8
    assert ((f["devices"] > 0) & (f["devices"] < 1)).any()


def test_azure_fraction_digits_limit_and_scale(tmp_path: Path) -> None:
    """7 fractional digits are read to 100 ns; limit and time_scale apply."""
    p = write(
        tmp_path,
        "a.csv",
        AZ_HEAD + "2023-11-16 18:15:46.6805900,374,44\r\n"
        "2023-11-16 18:15:47.6805901,10,2\r\n2023-11-16 18:15:50.0000000,5,5",
    )
    f = AzureLLMTrace().read(p, {})
    assert f["arrival_s"].to_list()[1] == pytest.approx(1.0000001, abs=1e-9)
    g = AzureLLMTrace().read(p, {"limit": 2, "time_scale": 2.0})
    assert g.height == 2 and g["arrival_s"][1] == pytest.approx(0.50000005)


def test_duplicate_timestamps_are_legal(tmp_path: Path) -> None:
    """Two requests at the same instant are both kept, in file order."""
    p = write(
        tmp_path, "a.csv", AZ_HEAD + "2023-11-16 18:00:00.0,1,2\r\n2023-11-16 18:00:00.0,3,4\r\n"
    )
    f = AzureLLMTrace().read(p, {})
    assert f["arrival_s"].to_list() == [0.0, 0.0] and f["prompt_tokens"].to_list() == [1, 3]


def test_generic_csv_mapping_and_ms(tmp_path: Path) -> None:
    """A CSV with its own column names and millisecond times."""
    p = write(tmp_path, "t.csv", "ts,inp,out\n1000,10,5\n1500,20,6\n")
    f = CsvTrace().read(
        p,
        {
            "columns": {"arrival": "ts", "prompt_tokens": "inp", "output_tokens": "out"},
            "time_unit": "ms",
        },
    )
    assert f["arrival_s"].to_list() == [0.0, 0.5]
    assert f["output_tokens"].to_list() == [5, 6]


def test_generic_jsonl_datetime(tmp_path: Path) -> None:
    """JSON Lines with ISO date-times and a blank line."""
    p = write(
        tmp_path,
        "t.jsonl",
        '{"timestamp": "2024-01-01T00:00:00", "input_length": 5, "output_length": 7}\n\n'
        '{"timestamp": "2024-01-01T00:00:02.5", "input_length": 6, "output_length": 8}\n',
    )
    f = JsonlTrace().read(
        p,
        {
            "columns": {
                "arrival": "timestamp",
                "prompt_tokens": "input_length",
                "output_tokens": "output_length",
            },
            "time_unit": "datetime",
        },
    )
    assert f["arrival_s"].to_list() == [0.0, 2.5]


# --- malformed input -----------------------------------------------------------------


def err(tmp_path: Path, text: str | bytes, reader=None, opts=None, name="t.csv") -> str:
    p = write(tmp_path, name, text)
    with pytest.raises(TraceError) as e:
        (reader or AzureLLMTrace()).read(p, opts or {})
    msg = str(e.value)
    assert str(p) in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    """A missing file names the path and the relative-path rule."""
    with pytest.raises(TraceError, match=r"does not exist.*relative to the scenario file"):
        AzureLLMTrace().read(tmp_path / "nope.csv", {})


def test_empty_and_header_only(tmp_path: Path) -> None:
    """An empty file and a header without rows are errors."""
    assert "empty" in err(tmp_path, "")
    assert "no rows" in err(tmp_path, AZ_HEAD)


def test_missing_column_lists_found(tmp_path: Path) -> None:
    """A missing column lists the columns that are there."""
    msg = err(tmp_path, "TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:00:00,1,2\n")
    assert "'ContextTokens'" in msg and "'Context'" in msg


@pytest.mark.parametrize(
    "row,needle",
    [
        ("2023-11-16 18:00:01,abc,2", "not a number"),
        ("2023-11-16 18:00:01,-5,2", "at least 1"),
        ("2023-11-16 18:00:01,5,nan", "not a finite number"),
        ("2023-11-16 18:00:01,5,inf", "not a finite number"),
        ("2023-11-16 18:00:01,5,", "missing"),
        ("2023-11-16 18:00:01,5.5,2", "whole number"),
        ("yesterday,5,2", "not a date-time"),
        ("2023-11-16 17:59:59,5,2", "goes backwards"),
    ],
)
def test_bad_row_names_line(tmp_path: Path, row: str, needle: str) -> None:
    """A bad third data row is reported at line 4 (header is line 1) with the cause."""
    text = AZ_HEAD + "2023-11-16 18:00:00,1,2\r\n2023-11-16 18:00:00.5,1,2\r\n" + row + "\r\n"
    msg = err(tmp_path, text)
    assert "line 4" in msg and needle in msg


def test_non_utf8_names_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their line."""
    msg = err(tmp_path, AZ_HEAD.encode() + b"2023-11-16 18:00:00,1,2\r\n2023-11-16 18:\xff,1,2\r\n")
    assert "line 3" in msg and "UTF-8" in msg


def test_unknown_option_and_unit(tmp_path: Path) -> None:
    """Misspelled options and unknown time units are refused with the valid ones."""
    assert "valid options" in err(tmp_path, "a\n1\n", CsvTrace(), {"colums": {}})
    assert "time_unit" in err(
        tmp_path,
        "arrival_s,prompt_tokens,output_tokens\n1,1,1\n",
        CsvTrace(),
        {"time_unit": "fortnights"},
    )


def test_jsonl_bad_line(tmp_path: Path) -> None:
    """A broken JSON line is reported by its number."""
    msg = err(
        tmp_path,
        '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n{oops\n',
        JsonlTrace(),
        name="t.jsonl",
    )
    assert "line 2" in msg


@pytest.mark.skipif(not CONV.exists(), reason="shared Azure conv trace absent")
def test_reader_plugin_registers_formats(host) -> None:  # type: ignore[no-untyped-def]
    """The built-in plugin registers all four formats."""
    assert {"azure-llm", "csv", "jsonl", "alibaba-gpu"} <= set(host.trace_formats.names())
