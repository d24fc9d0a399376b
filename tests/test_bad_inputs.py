"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the command line.

Every case must end the same calm way: exit status 2, one paragraph on standard error that
names the place (file and line with the key path, the trace file and line, or the option)
and says what is wrong, no traceback, and nothing written: no run folder at ``--out``, no
hidden ``.partial`` folder beside it, no ``results/`` folder, the inputs untouched.

Cases run in-process through typer's runner with one host (building the plugin host costs
seconds); one test runs a few of them through the installed ``xpusim`` console script to
prove the real entry point behaves the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from xpusim.engine.cli import app

CORPUS = Path(__file__).parent / "bad_inputs"
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text("utf-8"))
REPO = Path(__file__).resolve().parents[1]
XPUSIM = Path(sys.executable).with_name("xpusim")


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` (hidden ones included) with its size."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_dir()
    }


def _prepare(case: dict[str, Any], work: Path) -> tuple[list[str], Path, dict[str, int]]:
    """Copy the corpus into ``work/in``, generate large files, set up ``--out``; return the
    command line, the --out path and a snapshot of ``work`` before the run."""
    shutil.copytree(CORPUS, work / "in")
    gen = case.get("generate")
    if gen:
        with open(work / "in" / gen["path"], "w", encoding="utf-8") as fh:
            fh.write(gen.get("head", ""))
            chunk = gen["repeat"] * 1_000_000
            full, rest = divmod(int(gen["times"]), 1_000_000)
            for _ in range(full):
                fh.write(chunk)
            fh.write(gen["repeat"] * rest)
            fh.write(gen.get("tail", ""))
    fifo = case.get("fifo")
    if fifo:
        os.mkfifo(work / "in" / fifo)
    out = work / "out" / "run"
    kind = case.get("out", "absent")
    if kind == "file":
        out.parent.mkdir()
        out.write_text("not a folder\n", encoding="utf-8")
    elif kind == "full":
        out.mkdir(parents=True)
        (out / "summary.json").write_text("{}\n", encoding="utf-8")
    elif kind == "dangling":
        out.parent.mkdir()
        out.symlink_to(work / "nowhere")
    elif kind == "link-to-empty":
        (work / "elsewhere").mkdir()
        out.parent.mkdir()
        out.symlink_to(work / "elsewhere")
    extra = [a.replace("{out}", str(out)).replace("{in}", "in") for a in case.get("args", [])]
    command = case.get("command", "run")
    target = str(Path("in") / case["scenario"])
    argv = [command, target]
    if command == "calibrate":
        argv = ["calibrate", "--backend", "gpu", "--points", target]
    if argv[0] == "run":
        if "--out" not in extra:
            argv += ["--out", str(out)]
        argv.append("-q")
    return argv + extra, out, _tree(work)


def _check(
    case: dict[str, Any], code: int, stderr: str, stdout: str, work: Path, before: dict[str, int]
) -> None:
    """The contract every case must meet (see the module docstring)."""
    assert code == 2, f"exit {code}; stderr: {stderr[-2000:]!r}; stdout: {stdout[-500:]!r}"
    assert "Traceback" not in stderr + stdout
    message = stderr.strip()
    assert message.startswith("error: "), message[:500]
    assert "\n" not in message, f"more than one paragraph: {message[:1000]!r}"
    assert len(message) < 3000, f"message of {len(message)} characters"
    assert case["place"] in message, f"place {case['place']!r} not named in {message!r}"
    for fragment in case.get("expect", []):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    for fragment in case.get("absent", []):
        assert fragment not in stderr + stdout, f"{fragment!r} echoed in {message!r}"
    after = _tree(work)
    assert after == before, (
        f"files changed: added {sorted(set(after) - set(before))}, "
        f"removed {sorted(set(before) - set(after))}"
    )
    assert not any(".partial" in p for p in after)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each corpus case exits 2 with one paragraph naming the place, and writes nothing."""
    work = tmp_path / "work"
    work.mkdir()
    argv, _, before = _prepare(case, work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("XPUSIM_ALLOW_MODULES", "")  # --allow-module sets it: undone after
    monkeypatch.setenv("XPUSIM_MAX_EVENTS", "")  # the default; --max-events sets it: undone
    for key, value in case.get("env", {}).items():
        monkeypatch.setenv(key, value.replace("{in}", str(work / "in")))
    result = CliRunner().invoke(app, argv)
    for name in [m for m in sys.modules if m.split(".")[0] == "usermods"]:
        del sys.modules[name]  # the corpus's user package, imported from this case's copy
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"internal fault: {result.exception!r}") from result.exception
    _check(case, result.exit_code, result.stderr, result.stdout, work, before)


def test_corpus_is_large_and_well_formed() -> None:
    """The corpus holds at least 40 cases with unique ids, each naming an existing input
    (or one it generates) and the place its message must name."""
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    known = {"id", "scenario", "command", "args", "out", "generate", "place", "expect"}
    known |= {"env", "fifo", "absent"}
    for c in CASES:
        assert set(c) <= known, (c["id"], set(c) - known)
        assert c["place"], c["id"]
        target = CORPUS / c["scenario"]
        generated = c.get("generate", {}).get("path") == c["scenario"] or c.get("fifo")
        assert target.exists() or generated or "no_such" in c["scenario"], c["id"]


@pytest.mark.slow
def test_real_console_script(tmp_path: Path) -> None:
    """Through the installed ``xpusim`` executable (its own process, its own exit-status
    mapping), a YAML error, a unit error and a trace error each exit 2 without traceback
    and write nothing."""
    if not XPUSIM.exists():
        pytest.skip("the xpusim console script is not installed beside this interpreter")
    picks = ["yaml-unclosed-flow-mapping", "rate-in-gigabytes", "trace-unsorted"]
    for case in (c for c in CASES if c["id"] in picks):
        work = tmp_path / case["id"]
        work.mkdir()
        argv, _, before = _prepare(case, work)
        env = {**os.environ, "COLUMNS": "80"}
        proc = subprocess.run(
            [str(XPUSIM), *argv], cwd=work, capture_output=True, text=True, env=env, check=False
        )
        _check(case, proc.returncode, proc.stderr, proc.stdout, work, before)
