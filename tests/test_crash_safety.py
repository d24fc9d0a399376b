"""Crash safety: a run folder appears whole or not at all, whatever stops the run.

* ``kill -9`` while a run simulates leaves no folder at ``--out`` and nothing beside it.
* ``kill -9`` while a run writes can leave only a hidden temporary sibling
  (``.<name>.partial-<host>-<pid>-<random>``), never a visible run folder; the next run
  written into the same parent removes it (its process is gone), and leaves alone the
  temporary folder of a process that is still alive.
* Ctrl-C (SIGINT) stops the run with exit status 130, says that it stopped and that
  nothing was written, and writes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xpusim.engine.results import (
    PARTIAL_MARK,
    RunResult,
    SystemResult,
    _host_tag,
    remove_stale_partials,
    write_run,
)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "tests" / "bad_inputs" / "base.yaml"

# Runs the real command line in a child process and prints a line once the run has
# started simulating (the run_started observer), so the test signals it mid-run.
DRIVER = textwrap.dedent(
    """
    import sys
    import xpusim.engine.cli as cli
    from xpusim import hookimpl

    class Announce:
        @hookimpl
        def run_started(self, scenario, out_dir):
            print("RUN-STARTED", flush=True)

    host = cli._host()
    host.pm.register(Announce(), name="announce")
    cli.main(sys.argv[1:])
    """
)


def _start_run(out: Path, count: int = 400_000) -> subprocess.Popen[str]:
    """Start ``xpusim run`` on a scenario long enough to be caught mid-simulation."""
    args = [
        "run",
        str(BASE),
        "--out",
        str(out),
        "-q",
        "--set",
        f"workload.arrivals.count={count}",
        "--set",
        "workload.arrivals.rate=400/s",
    ]
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        cwd=out.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_started(proc: subprocess.Popen[str]) -> None:
    """Block until the child announces that the run started simulating."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "RUN-STARTED":
            return
    proc.wait()
    raise AssertionError(f"run never started: {proc.stderr.read() if proc.stderr else ''}")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_sigkill_mid_run_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL during the simulation leaves no run folder and no partial folder."""
    parent = tmp_path / "runs"
    parent.mkdir()
    out = parent / "killed"
    proc = _start_run(out)
    _wait_started(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert _leftovers(parent) == []


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    """Ctrl-C mid-run: exit 130, a message that it stopped and wrote nothing, no folder."""
    parent = tmp_path / "runs"
    parent.mkdir()
    out = parent / "interrupted"
    proc = _start_run(out)
    _wait_started(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted" in err and "nothing was written" in err
    assert not out.exists()
    assert _leftovers(parent) == []


# Writes a run folder whose reporter kills its own process mid-write (SIGKILL cannot be
# caught, so nothing can clean up): the state a power cut or the OOM killer leaves.
KILL_IN_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from xpusim.engine.results import RunResult, SystemResult, write_run

    class Killer:
        name = "killer"
        def write(self, run, folder):
            (Path(folder) / "half.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)

    run = RunResult("s", 0, "0", [SystemResult("a", "gpu", "h100-sxm", 1)])
    write_run(run, Path(sys.argv[1]), [Killer()])
    """
)


def _tiny_run() -> RunResult:
    return RunResult("s", 0, "0", [SystemResult("a", "gpu", "h100-sxm", 1)])


def test_sigkill_during_write_is_hidden_and_cleaned_next_time(tmp_path: Path) -> None:
    """A write killed half-way leaves no visible run folder, only a hidden partial that
    the next write into the same parent removes; the new folder is complete."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_WRITE, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".run" + PARTIAL_MARK), left

    second = write_run(_tiny_run(), tmp_path / "again")
    assert _leftovers(tmp_path) == ["again"]
    assert (second / "summary.json").is_file() and (second / "summary.parquet").is_file()


def test_live_writers_partial_is_left_alone(tmp_path: Path) -> None:
    """A temporary folder whose process is alive (another run writing now) is kept; one
    whose process is gone, or from this host with a dead pid, is removed."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _host_tag()
        live = tmp_path / f".a{PARTIAL_MARK}{host}-{sleeper.pid}-abc123"
        live.mkdir()
        dead_pid = _dead_pid()
        dead = tmp_path / f".b{PARTIAL_MARK}{host}-{dead_pid}-xyz789"
        dead.mkdir()
        (dead / "summary.json").write_text("{}")
        other_host = tmp_path / f".c{PARTIAL_MARK}elsewhere{host}-{dead_pid}-qqq111"
        other_host.mkdir()
        visible = tmp_path / "a-real-run"
        visible.mkdir()
        assert remove_stale_partials(tmp_path) == 1
        assert live.is_dir() and other_host.is_dir() and visible.is_dir()
        assert not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pid = proc.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    pytest.skip("the pid of an exited process was reused at once")
    raise AssertionError  # pragma: no cover


def test_interrupt_inside_write_removes_the_partial(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised while files are being written removes the temporary
    folder before it propagates: nothing visible, nothing hidden."""

    class Interrupter:
        name = "interrupter"

        def write(self, run: RunResult, folder: Path) -> None:
            (Path(folder) / "half.txt").write_text("half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_run(_tiny_run(), tmp_path / "run", [Interrupter()])  # type: ignore[list-item]
    assert _leftovers(tmp_path) == []
