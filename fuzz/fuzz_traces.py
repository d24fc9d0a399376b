"""Fuzz the trace readers: arbitrary bytes read as every built-in trace format.

The property: whatever the bytes and options, a reader returns a valid frame (arrivals
finite, starting at 0 and never going backwards; token counts at least 1) or raises
:class:`~xpusim.engine.errors.TraceError` with a one-paragraph message naming the file. Any
other exception, a hang or runaway memory is a bug.

Run: ``python fuzz/fuzz_traces.py -max_total_time=60`` (needs ``pip install atheris``).
Seeds: the bad-input corpus's traces.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import atheris
from _common import BAD_INPUTS, libfuzzer_argv

with atheris.instrument_imports(include=["xpusim.plugins.traces", "xpusim.engine.traces"]):
    import numpy as np
    import polars as pl

    from xpusim.engine.errors import TraceError
    from xpusim.engine.traces import REQUEST_SCHEMA
    from xpusim.plugins.traces.readers import TRACE_FORMATS

READERS = [cls() for cls in TRACE_FORMATS]
WORK = Path(tempfile.mkdtemp(prefix="xpusim-fuzz-traces-"))
atexit.register(shutil.rmtree, WORK, True)  # the scratch file of the harness itself
TIME_UNITS = ["s", "ms", "us", "ns", "datetime"]


def _options(data: bytes, fmt: str) -> dict[str, Any]:
    """Options for ``fmt`` chosen by the input's last byte (so raw trace files are
    meaningful seeds): a time unit for the generic formats, sometimes a limit or a
    time scale (odd values included)."""
    opts: dict[str, Any] = {}
    b = data[-1] if data else 0
    if fmt in ("csv", "jsonl") and b & 0x80:
        opts["time_unit"] = TIME_UNITS[b % len(TIME_UNITS)]
    if b & 0x40:
        opts["limit"] = (b & 0x0F) - 2
    if b & 0x20:
        opts["time_scale"] = [0.5, 2.0, 0.0, -1.0, float("nan"), float("inf")][b % 6]
    return opts


def _check_frame(frame: pl.DataFrame) -> None:
    """The guarantees of a frame a reader returned."""
    assert frame.height >= 1
    if set(REQUEST_SCHEMA) <= set(frame.columns):
        t = frame["arrival_s"].to_numpy()
        assert np.isfinite(t).all() and t[0] == 0 and (np.diff(t) >= 0).all(), t[:10]
        assert (frame["prompt_tokens"] >= 1).all() and (frame["output_tokens"] >= 1).all()
    else:  # a job trace
        assert (frame["duration_s"] >= 0).all() and (frame["devices"] >= 0).all()


def test_one_input(data: bytes) -> None:
    """Read one fuzzed file with every reader; only trace errors are allowed."""
    for reader in READERS:
        path = WORK / f"trace.{'jsonl' if reader.name == 'jsonl' else 'csv'}"
        path.write_bytes(data)
        try:
            frame = reader.read(path, _options(data, reader.name))
        except TraceError as exc:
            text = str(exc)
            if str(path) not in text or "\n" in text:
                raise AssertionError(
                    f"message does not name the file in one line: {text[:300]!r}"
                ) from None
            continue
        _check_frame(frame)


def main() -> None:
    """Fuzz until libFuzzer's limits stop it."""
    seeds = [*(BAD_INPUTS / "traces").iterdir()]
    atheris.Setup(libfuzzer_argv(seeds), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
