"""The trust boundary of a scenario: which code it can make xpusim import and run.

Nothing is imported before the allow-list admits the module; the standard library, torch
and xpusim are never admitted; a factory is looked up beside the scenario first; user
code cannot end the process with a fake success or a fake Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xpusim.engine import trust
from xpusim.engine.cli import app
from xpusim.engine.errors import ScenarioError, XpusimError

CORPUS = Path(__file__).parent / "bad_inputs"


@pytest.fixture(autouse=True)
def no_allowed_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with nothing allowed and leaves no module of its own behind."""
    monkeypatch.setenv(trust.ALLOW_ENV, "")
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("sidemods", "beside"):
            del sys.modules[name]


def _package(folder: Path, name: str, body: str) -> None:
    """Write a one-module package ``name`` with ``body`` into ``folder``."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")


@pytest.mark.parametrize(
    "path",
    [
        "os:system",
        "subprocess:run",
        "builtins:exec",
        "shutil:rmtree",
        "importlib:import_module",
        "pickle:loads",
        "torch:load",
        "torch.hub:load",
        "yaml:unsafe_load",
        "numpy:load",
        "xpusim.engine.results:write_run",
    ],
)
def test_never_importable_whatever_is_allowed(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard library's process, file and import callables, torch and xpusim are
    refused before anything is imported, even with everything else allowed."""
    monkeypatch.setenv(trust.ALLOW_ENV, "sidemods")
    with pytest.raises(ScenarioError, match="never import"):
        trust.load_factory(path, "model.module")


@pytest.mark.parametrize("name", ["os", "subprocess.run", "torch", "xpusim", "a/b", "", "1x"])
def test_allow_list_refuses_what_it_can_never_hold(name: str) -> None:
    """``--allow-module`` refuses the standard library, torch, xpusim and non-names, and
    changes nothing when it does."""
    with pytest.raises(XpusimError, match="--allow-module"):
        trust.allow([name])
    assert os.environ[trust.ALLOW_ENV] == ""


def test_nothing_is_imported_before_it_is_allowed(tmp_path: Path) -> None:
    """A module that is not allowed is never imported: its top-level code (here, one that
    writes a file) does not run, and the message says how to allow it."""
    marker = tmp_path / "RAN"
    _package(tmp_path, "sidemods", f"open({str(marker)!r}, 'w').close()\ndef make(): pass\n")
    with trust.scenario_folder(tmp_path), pytest.raises(ScenarioError, match="--allow-module"):
        trust.load_factory("sidemods:make", "model.module")
    assert not marker.exists() and "sidemods" not in sys.modules


def test_validate_runs_no_user_code_unless_allowed(tmp_path: Path) -> None:
    """``xpusim validate`` on a scenario naming a user factory exits 2 without importing
    it; with ``--allow-module`` the factory is imported and traced (and the folder stays
    as it was: no bytecode is written beside the module)."""
    _package(
        tmp_path,
        "beside",
        """
        from torch import nn
        open(__file__ + ".ran", "w").close()
        def make():
            return nn.Linear(4, 2)
        """,
    )
    base = (CORPUS / "base.yaml").read_text(encoding="utf-8")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        base.replace(
            "model: {family: gpt, preset: gpt2, dtype: bf16}",
            "model: {family: torch, module: 'beside:make', inputs: [{shape: [1, 4]}]}",
        ),
        encoding="utf-8",
    )
    ran = tmp_path / "beside" / "__init__.py.ran"
    refused = CliRunner().invoke(app, ["validate", str(scenario)])
    assert refused.exit_code == 2 and "--allow-module beside" in refused.stderr
    assert not ran.exists()
    allowed = CliRunner().invoke(app, ["validate", str(scenario), "--allow-module", "beside"])
    assert allowed.exit_code == 0, allowed.stderr
    assert ran.exists()  # found in the scenario's folder, with no sys.path change
    assert not (tmp_path / "beside" / "__pycache__").exists()
    assert str(tmp_path) not in sys.path


def test_a_name_imported_into_an_allowed_module_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allowed module cannot be a door to what it imported: ``pkg:os.system``,
    ``pkg:system`` (imported with ``from os import system``) and private names are
    refused."""
    _package(tmp_path, "sidemods", "import os\nfrom os import system\ndef _p(): pass\n")
    monkeypatch.setenv(trust.ALLOW_ENV, "sidemods")
    with trust.scenario_folder(tmp_path):
        for path, why in [
            ("sidemods:os.system", "reaches the module 'os'"),
            ("sidemods:system", "not in an allowed module"),
            ("sidemods:_p", "not a public name"),
            ("sidemods:__builtins__", "not a public name"),
        ]:
            with pytest.raises(ScenarioError, match=why):
                trust.load_factory(path, "model.module")


def test_user_code_cannot_fake_an_exit_or_an_interrupt() -> None:
    """``sys.exit()`` and a self-raised ``KeyboardInterrupt`` become input errors; any
    other exception keeps its first line."""

    def exits() -> None:
        sys.exit(0)

    def interrupts() -> None:
        raise KeyboardInterrupt

    def fails() -> None:
        raise RuntimeError("weights missing\nsecond line")

    with pytest.raises(ScenarioError, match=r"sys\.exit\(0\)"):
        trust.run_user(exits, "factory")
    with pytest.raises(ScenarioError, match="without an interrupt being sent"):
        trust.run_user(interrupts, "factory")
    with pytest.raises(ScenarioError, match=r"RuntimeError: weights missing$"):
        trust.run_user(fails, "factory")


def test_a_real_ctrl_c_inside_user_code_still_interrupts() -> None:
    """A SIGINT that really arrives while user code runs is passed on as the
    interrupt it is (exit 130 through the command line)."""

    def pressed() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000_000):  # the Python-level handler runs between bytecodes
            pass

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh process has it
    try:
        with pytest.raises(KeyboardInterrupt):
            trust.run_user(pressed, "factory")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
