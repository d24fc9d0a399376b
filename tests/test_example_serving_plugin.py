"""The out-of-tree serving-policy example (examples/xpusim-example-serving-policy) installs
like a stranger's package, and a scenario that names its scheduler and router runs them.

The package is pip-installed (a real wheel build, no dependencies) into a temporary
folder that only the ``xpusim`` processes of these tests see through ``PYTHONPATH``, as
``tests/test_example_plugin.py`` does for the example backend; the shared environment is
never changed. What the policies did is read back from ``requests.parquet`` and
``steps.parquet``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from xpusim.engine.testing import shared_host

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "xpusim-example-serving-policy"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the installed example package and its dist-info."""
    root = tmp_path_factory.mktemp("example-serving-plugin")
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


# 60 Poisson arrivals at 40/s on two H100 replicas of 8 sequences each: requests queue,
# so the scheduler's admission order and the router's choices both matter.
SCENARIO = """\
name: sjf-p2c
seed: 5
model: {{family: llama, preset: llama-2-7b, dtype: bf16}}
workload:
  kind: serving
  arrivals:
    process: poisson
    rate: 40/s
    count: 60
    prompt_tokens: {{dist: lognormal, median: 600, sigma: 0.8, min: 16, max: 3072}}
    output_tokens: {{dist: lognormal, median: 80, sigma: 0.5, min: 1, max: 512}}
  scheduler: {{kind: {kind}, max_batch: 8}}
{router}systems:
  - {{name: h100, backend: gpu, device: h100-sxm, count: 2}}
"""

P2C = "  router: power-of-two-choices\n"


def run_scenario(site: Path, tmp_path: Path, name: str, kind: str, router: str) -> Path:
    """Write the scenario with scheduler ``kind`` and ``router`` lines, run it and return
    its run folder; the run must succeed."""
    if "llama" not in shared_host().models:
        pytest.skip("model family `llama` is not registered (plugin `models` not installed)")
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(SCENARIO.format(kind=kind, router=router), encoding="utf-8")
    out = tmp_path / name
    proc = xpusim(
        site,
        "run",
        str(scenario),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "results.detail=steps",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def sjf_p2c(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the scenario under ``shortest-prompt-first`` and
    ``power-of-two-choices``."""
    tmp = tmp_path_factory.mktemp("sjf-p2c")
    return run_scenario(site, tmp, "sjf-p2c", "shortest-prompt-first", P2C)


@pytest.mark.slow
def test_installed_example_registers_its_scheduler_and_router(site: Path, tmp_path: Path) -> None:
    """After pip install, `xpusim plugins --json` lists plugin `example-serving-policy`
    without error, with its version, scheduler `shortest-prompt-first` and router
    `power-of-two-choices`; the built-in policies stay registered beside them."""
    proc = xpusim(site, "plugins", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)}
    mine = plugins["example-serving-policy"]
    assert mine["error"] is None
    assert mine["version"] == "0.1.0"
    assert mine["registered"] == {
        "schedulers": ["shortest-prompt-first"],
        "routers": ["power-of-two-choices"],
    }
    assert set(mine["hooks"]) == {"register_schedulers", "register_routers"}
    assert "continuous" in plugins["workloads"]["registered"]["schedulers"]
    assert "round-robin" in plugins["workloads"]["registered"]["routers"]


@pytest.mark.slow
def test_every_request_finishes_and_the_step_log_accounts_for_every_token(
    sjf_p2c: Path,
) -> None:
    """Under the example scheduler every request finishes `ok` after its first token,
    which comes after its scheduling and its arrival; the step log holds every prompt
    token once and one decode token per output token after the first; a replica's
    iterations never overlap."""
    requests = pl.read_parquet(sjf_p2c / "requests.parquet")
    steps = pl.read_parquet(sjf_p2c / "steps.parquet")
    assert requests.height == 60
    assert requests["status"].to_list() == ["ok"] * 60
    assert requests["preemptions"].sum() == 0
    ordered = requests.filter(
        (pl.col("arrival_s") <= pl.col("first_scheduled_s"))
        & (pl.col("first_scheduled_s") < pl.col("first_token_s"))
        & (pl.col("first_token_s") <= pl.col("finish_s"))
    )
    assert ordered.height == 60
    assert steps["prefill_tokens"].sum() == requests["prompt_tokens"].sum()
    assert steps["decode_tokens"].sum() == (requests["output_tokens"] - 1).sum()
    assert (steps["batch"] <= 8).all()
    gaps = steps.sort("replica", "step").with_columns(
        (pl.col("start_s") - pl.col("end_s").shift(1).over("replica")).alias("idle_s")
    )
    assert (gaps["idle_s"].drop_nulls() >= 0).all()


@pytest.mark.slow
def test_waiting_requests_are_scheduled_shortest_prompt_first(sjf_p2c: Path) -> None:
    """Whenever request `a` is scheduled while request `b` waits on the same replica (`b`
    arrived before `a` was scheduled and is scheduled later), `b`'s prompt is at least as
    long as `a`'s (ties by request id); the run has such pairs, and some of them overtook
    a request that arrived earlier, which first-come-first-served never does."""
    requests = pl.read_parquet(sjf_p2c / "requests.parquet").select(
        "replica", "request_id", "arrival_s", "first_scheduled_s", "prompt_tokens"
    )
    pairs = (
        requests.join(requests, on="replica", suffix="_b")
        .filter(
            (pl.col("arrival_s_b") < pl.col("first_scheduled_s"))
            & (pl.col("first_scheduled_s_b") > pl.col("first_scheduled_s"))
        )
        .with_columns(
            (
                (pl.col("prompt_tokens_b") > pl.col("prompt_tokens"))
                | (
                    (pl.col("prompt_tokens_b") == pl.col("prompt_tokens"))
                    & (pl.col("request_id_b") > pl.col("request_id"))
                )
            ).alias("shorter_first")
        )
    )
    assert pairs.height >= 20
    assert pairs["shorter_first"].all(), pairs.filter(~pl.col("shorter_first"))
    overtaken = pairs.filter(pl.col("arrival_s_b") < pl.col("arrival_s"))
    assert overtaken.height >= 5


def outstanding_at_arrival(requests: pl.DataFrame) -> pl.DataFrame:
    """For every request, the outstanding requests (arrived and not finished) of replicas
    0 and 1 at its arrival instant, as columns ``load_0`` and ``load_1``."""
    spans = requests.select("replica", "arrival_s", "finish_s")
    rows = []
    for t in requests["arrival_s"].to_list():
        live = spans.filter((pl.col("arrival_s") < t) & (pl.col("finish_s") > t))
        rows.append(
            {
                "load_0": live.filter(pl.col("replica") == 0).height,
                "load_1": live.filter(pl.col("replica") == 1).height,
            }
        )
    return pl.concat([requests, pl.DataFrame(rows)], how="horizontal")


@pytest.mark.slow
def test_two_choices_join_the_less_loaded_replica_unlike_round_robin(
    site: Path, sjf_p2c: Path, tmp_path: Path
) -> None:
    """With two replicas both are always drawn, so `power-of-two-choices` sends every
    request to a replica with no more outstanding requests than the other at its
    arrival; the same scenario with the default router alternates (request `i` on
    replica `i mod 2`), and the two assignments differ."""
    requests = outstanding_at_arrival(
        pl.read_parquet(sjf_p2c / "requests.parquet").sort("request_id")
    )
    mine = pl.when(pl.col("replica") == 0).then(pl.col("load_0")).otherwise(pl.col("load_1"))
    other = pl.when(pl.col("replica") == 0).then(pl.col("load_1")).otherwise(pl.col("load_0"))
    loads = requests.select(mine.alias("mine"), other.alias("other"))
    assert (loads["mine"] <= loads["other"]).all()
    assert (loads["mine"] < loads["other"]).sum() >= 10  # the choice was not a tie

    default = run_scenario(site, tmp_path, "sjf-round-robin", "shortest-prompt-first", "")
    rr = pl.read_parquet(default / "requests.parquet").sort("request_id")
    assert rr["status"].to_list() == ["ok"] * 60
    assert (rr["replica"] == rr["request_id"] % 2).all()
    assert (requests["replica"] != requests["request_id"] % 2).sum() >= 5


@pytest.mark.slow
def test_a_misspelt_scheduler_kind_names_the_nearest(site: Path, tmp_path: Path) -> None:
    """`workload.scheduler.kind: shortest-prompt-frist` exits 2 before running, naming
    the unknown kind and the registered `shortest-prompt-first` as the nearest."""
    scenario = tmp_path / "typo.yaml"
    scenario.write_text(SCENARIO.format(kind="shortest-prompt-frist", router=P2C), encoding="utf-8")
    proc = xpusim(site, "run", str(scenario), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'shortest-prompt-frist'" in proc.stderr
    assert "Did you mean 'shortest-prompt-first'?" in proc.stderr
    assert not (tmp_path / "run" / "requests.parquet").exists()
