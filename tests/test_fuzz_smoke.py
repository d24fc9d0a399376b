"""CI smoke step for the fuzz harnesses: each runs for a few seconds and finds nothing.

The harnesses (fuzz/fuzz_scenario.py, fuzz/fuzz_traces.py) need ``atheris``, which ships
binary wheels for CPython on Linux and macOS (``pip install atheris``; no compiler needed).
Where it is not installed these tests are skipped with that reason. Longer campaigns are
run by hand: ``python fuzz/fuzz_traces.py -max_total_time=600``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECONDS = 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris is not installed (pip install atheris) - fuzz smoke skipped",
    ),
]


@pytest.mark.parametrize("harness", ["fuzz_scenario.py", "fuzz_traces.py"])
def test_harness_runs_clean(harness: str, tmp_path: Path) -> None:
    """The harness fuzzes from its seed corpus for a few seconds without a crash: every
    input ends in a valid result or a one-paragraph input error."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the seed corpus copy lands here
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / harness),
            f"-max_total_time={SECONDS}",
            f"-artifact_prefix={artifacts}/",
            "-rss_limit_mb=4096",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Done " in log and " runs in " in log, log[-2000:]
    assert not list(artifacts.iterdir()), log[-4000:]
