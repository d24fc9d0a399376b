"""Output paths under attack: links, run folders, overwrites, races and spill folders.

Every check here is made before anything is simulated and ends in an input error (exit 2
through the command line) that writes nothing; two runs given one ``--out`` leave one
whole run folder and one input error; spill folders of killed runs are removed by the
next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpusim.engine.errors import XpusimError
from xpusim.engine.outpaths import REPORT_MARK, check_report_file
from xpusim.engine.procs import host_tag
from xpusim.engine.results import (
    _move_into_place,
    check_out_dir,
    check_spill_settings,
    remove_stale_spills,
)

CORPUS = Path(__file__).parent / "bad_inputs"
XPUSIM = Path(sys.executable).with_name("xpusim")


def _dead_pid() -> int:
    """The id of a process that has finished."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_out_links_are_refused_dangling_or_not(tmp_path: Path) -> None:
    """A symbolic link at ``--out``, to nothing or to an empty folder, is refused: a run
    never writes through a link."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "to-empty").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    for name in ("to-empty", "dangling"):
        with pytest.raises(XpusimError, match="symbolic link"):
            check_out_dir(tmp_path / name)
    assert not any((tmp_path / "empty").iterdir())


def test_out_inside_a_run_folder_is_refused(tmp_path: Path) -> None:
    """A run folder (one holding summary.json) is never written into."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}\n", encoding="utf-8")
    with pytest.raises(XpusimError, match="inside the run folder"):
        check_out_dir(run / "deeper" / "out")


@pytest.mark.parametrize("path", ["a\x00b", "x" * 300, "/".join(["abcdefgh"] * 700)])
def test_out_paths_no_file_system_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A NUL byte, an over-long name or an over-long path is an input error, not an
    ``OSError`` or ``ValueError`` from deep in the writing."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(XpusimError, match="--out"):
        check_out_dir(Path(path))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_is_refused(tmp_path: Path) -> None:
    """A parent that cannot be written (here ``/proc``, which refuses new folders even
    to root) is found by a probe before any work."""
    with pytest.raises(XpusimError, match="cannot write in /proc"):
        check_out_dir(Path("/proc/xpusim-test/run"))


def test_a_run_that_lost_the_race_for_out_is_an_input_error(tmp_path: Path) -> None:
    """When another run filled ``--out`` after this one checked it, moving the finished
    folder into place is refused (exit 2) and the other run's files stay as they were."""
    out, mine = tmp_path / "out", tmp_path / ".mine"
    out.mkdir()
    (out / "summary.json").write_text('{"winner": true}\n', encoding="utf-8")
    mine.mkdir()
    (mine / "summary.json").write_text('{"loser": true}\n', encoding="utf-8")
    with pytest.raises(XpusimError, match="another run wrote this folder"):
        _move_into_place(mine, out)
    assert (out / "summary.json").read_text(encoding="utf-8") == '{"winner": true}\n'


def test_an_empty_out_folder_is_replaced(tmp_path: Path) -> None:
    """An empty ``--out`` folder made beforehand is replaced by the run folder."""
    out, mine = tmp_path / "out", tmp_path / ".mine"
    out.mkdir()
    mine.mkdir()
    (mine / "summary.json").write_text("{}\n", encoding="utf-8")
    _move_into_place(mine, out)
    assert (out / "summary.json").is_file() and not mine.exists()


def test_compare_out_replaces_only_its_own_reports(tmp_path: Path) -> None:
    """``compare --out`` may replace an HTML report xpusim wrote; a scenario, another
    HTML file, a link or a path inside a compared run folder is refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}\n", encoding="utf-8")
    ours = tmp_path / "comparison.html"
    ours.write_bytes(b"<!DOCTYPE html><html><head>" + REPORT_MARK + b' 0.1">')
    check_report_file(ours, [run])
    theirs = tmp_path / "page.html"
    theirs.write_text("<html>someone else's page</html>", encoding="utf-8")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("name: x\n", encoding="utf-8")
    link = tmp_path / "link.html"
    link.symlink_to(ours)
    for bad, why in [
        (theirs, "not overwritten"),
        (scenario, "not overwritten"),
        (link, "symbolic link"),
        (run / "report.html", "run folder being compared"),
        (run, "run folder being compared"),
    ]:
        with pytest.raises(XpusimError, match=why):
            check_report_file(bad, [run])


def test_spill_folders_of_dead_runs_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next run removes the spill folders that killed runs of this machine left, and
    keeps those of live processes and of other machines."""
    host = host_tag()
    dead = tmp_path / f"xpusim-spill-{host}-{_dead_pid()}-abc"
    live = tmp_path / f"xpusim-spill-{host}-{os.getpid()}-def"
    other = tmp_path / f"xpusim-spill-elsewhere{host}-{_dead_pid()}-ghi"
    unrelated = tmp_path / "xpusim-spill-notours"
    for d in (dead, live, other, unrelated):
        d.mkdir()
        (d / "part-000001.parquet").write_bytes(b"PAR1")
    monkeypatch.setenv("XPUSIM_SPILL_DIR", str(tmp_path))
    monkeypatch.delenv("XPUSIM_SPILL_ROWS", raising=False)
    check_spill_settings()
    assert not dead.exists()
    assert live.exists() and other.exists() and unrelated.exists()
    assert remove_stale_spills(tmp_path) == 0


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("XPUSIM_SPILL_ROWS", "1e999", "not an integer"),
        ("XPUSIM_SPILL_ROWS", "-5", "at least 1"),
        ("XPUSIM_SPILL_DIR", "{tmp}/file", "not a folder"),
        ("XPUSIM_SPILL_DIR", "/proc/xpusim-spill", "cannot write"),
    ],
)
def test_junk_spill_settings_are_input_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, match: str
) -> None:
    """Junk spill settings stop the run before it starts, naming the variable."""
    (tmp_path / "file").write_text("x", encoding="utf-8")
    monkeypatch.delenv("XPUSIM_SPILL_ROWS", raising=False)
    monkeypatch.delenv("XPUSIM_SPILL_DIR", raising=False)
    monkeypatch.setenv(name, value.replace("{tmp}", str(tmp_path)))
    with pytest.raises(XpusimError, match=match) as err:
        check_spill_settings()
    assert name in str(err.value)


@pytest.mark.slow
def test_two_runs_to_one_out(tmp_path: Path) -> None:
    """Two ``xpusim run`` processes given the same ``--out`` at once: one writes the
    folder whole (exit 0), the other ends with exit 2 and one paragraph, whichever check
    it lost (before simulating or when moving its folder into place)."""
    if not XPUSIM.exists():
        pytest.skip("the xpusim console script is not installed beside this interpreter")
    out = tmp_path / "out"
    argv = [str(XPUSIM), "run", str(CORPUS / "base.yaml"), "--out", str(out), "-q"]
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs if p.stderr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "Traceback" not in loser
    assert loser.startswith("error: ") and "\n" not in loser.strip(), loser
    assert (out / "summary.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
