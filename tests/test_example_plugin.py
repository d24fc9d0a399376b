"""The out-of-tree example plugin (examples/xpusim-example-backend) installs like a
stranger's package and is compared with the built-ins on one scenario.

The package is pip-installed (a real wheel build, no dependencies) into a temporary
folder that only the ``xpusim`` processes of these tests see through ``PYTHONPATH``, so
the shared environment is never changed and nothing needs uninstalling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpusim.engine.testing import shared_host

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "xpusim-example-backend"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the installed example package and its dist-info."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "source"
    # build from a copy so the build leaves nothing behind in the repository
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__", ".pytest_cache"),
    )
    target = root / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield target
    shutil.rmtree(root, ignore_errors=True)


def xpusim(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the xpusim command line in a fresh process that sees the installed example."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("XPUSIM_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "xpusim.engine.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )


SCENARIO = """\
name: wafer-vs-h100
seed: 3
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  arrivals:
    process: poisson
    rate: 4/s
    count: 60
    prompt_tokens: {dist: lognormal, median: 500, sigma: 0.5, min: 16, max: 2048}
    output_tokens: {dist: lognormal, median: 100, sigma: 0.5, min: 8, max: 512}
  scheduler: {kind: continuous, max_batch: 64}
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
  - {name: cs3, backend: wafer, device: wse-3, count: 1}
economics: {pricing: owned, electricity: 0.12 USD/kWh, pue: 1.2}
"""


@pytest.mark.slow
def test_installed_example_registers_its_backend_and_devices(site: Path, tmp_path: Path) -> None:
    """After pip install, `xpusim plugins` lists plugin `wafer` with its version and
    backend, and `xpusim devices --json` shows wse-2 and wse-3 with a source for every
    figure."""
    plugins = json.loads(xpusim(site, "plugins", "--json", cwd=tmp_path).stdout)
    wafer = next(p for p in plugins if p["name"] == "wafer")
    assert wafer["error"] is None
    assert wafer["version"] == "0.1.0" and wafer["registered"]["backends"] == ["wafer"]

    proc = xpusim(site, "devices", "--backend", "wafer", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    devices = {d["name"]: d for d in json.loads(proc.stdout)}
    assert set(devices) == {"wse-2", "wse-3"}
    wse3 = devices["wse-3"]
    assert wse3["memory_bytes"] == 44e9 and wse3["memory_bw"] == 21e15
    assert wse3["peak_flops"]["bf16"] == 125e15 and wse3["max_w"] == 23e3
    assert "[TH-2024]" in wse3["sources"]["memory_bytes"]
    assert "[ALCF-2024]" in wse3["sources"]["memory_bw"]
    assert all(src for d in devices.values() for src in d["sources"].values())


@pytest.mark.slow
def test_scenario_compares_the_example_with_an_h100(site: Path, tmp_path: Path) -> None:
    """`xpusim run` on a scenario with an H100 and a CS-3 runs both `ok`; the wafer,
    with Llama-2-7B resident in SRAM, decodes faster than the H100."""
    if "llama" not in shared_host().models:
        pytest.skip("model family `llama` is not registered (plugin `models` not installed)")
    scenario = tmp_path / "wafer-vs-h100.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    proc = xpusim(
        site, "run", str(scenario), "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    systems = {s["name"]: s for s in summary["systems"]}
    assert systems["h100"]["status"] == "ok", systems["h100"].get("reason")
    assert systems["cs3"]["status"] == "ok", systems["cs3"].get("reason")
    assert systems["cs3"]["backend"] == "wafer" and systems["cs3"]["device"] == "wse-3"
    assert systems["cs3"]["tbt_p50_s"] < systems["h100"]["tbt_p50_s"]
    assert systems["cs3"]["energy_j"] > 0
