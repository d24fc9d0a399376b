"""Property-based fuzzing of the command line's path and ``--set`` handling (hypothesis).

Whatever text arrives as a ``--set`` item, a scenario path, an ``--out`` folder or a
``compare --out`` file, the answer is a result or an input error (exit 2, one paragraph),
never another exception or traceback, and an error writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from xpusim.engine.cli import app
from xpusim.engine.errors import XpusimError
from xpusim.engine.host import Host
from xpusim.engine.outpaths import check_report_file
from xpusim.engine.results import check_out_dir
from xpusim.engine.scenario import load_scenario, parse_set

CORPUS = Path(__file__).parent / "bad_inputs"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

KEYS = st.sampled_from(
    [
        "name",
        "seed",
        "description",
        "model",
        "model.family",
        "model.preset",
        "workload.arrivals.rate",
        "workload.arrivals.count",
        "workload.scheduler.max_batch",
        "systems.0.count",
        "systems.0.name",
        "systems.0.device",
        "systems.1.count",
        "systems.0.parallelism.tensor",
        "economics.pue",
        "sweep",
        "extends",
    ]
) | st.from_regex(r"[A-Za-z_][\w\-]{0,8}(\.([A-Za-z_]\w{0,6}|\d{1,3})){0,4}", fullmatch=True)

YAMLISH = st.text(
    alphabet=st.sampled_from([*list("ab01 .-:,[]{}&*!|>'\"#%@?\\/\n\t$~"), "μ", "\x00", "é"]),
    max_size=60,
)
VALUES = (
    YAMLISH
    | st.text(max_size=40)
    | st.sampled_from(
        ["true", "yes", "null", ".inf", ".nan", "-1", "1e308", "&a [*a]", "[/]", "!!python/none"]
    )
)

PATHS = st.text(max_size=120) | st.lists(
    st.sampled_from(["..", ".", "a", "/", "\x00", "x" * 300, "run", "summary.json", "~"]),
    max_size=8,
).map("/".join)


@contextlib.contextmanager
def _fresh_folder() -> Iterator[Path]:
    """Work in a fresh empty folder for one example (hypothesis reruns a test many times,
    so pytest's per-test folder would be shared), removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="xpusim-fuzz-"))
    cwd = os.getcwd()
    try:
        os.chdir(work)
        yield work
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(key=KEYS, value=VALUES)
@example(key="A", value="")  # a capitalised unknown key is a key, not a union member's tag
@example(key="DerivedDevice", value="1")
def test_set_items_give_a_scenario_or_an_input_error(host: Host, key: str, value: str) -> None:
    """Any ``--set KEY=VALUE`` on a valid scenario loads or raises an input error."""
    item = f"{key}={value}"
    try:
        parse_set(item)
        load_scenario(CORPUS / "base.yaml", host, [item])
    except XpusimError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


@FUZZ
@given(item=st.text(max_size=80))
def test_any_set_text_through_validate_is_exit_0_or_2(item: str) -> None:
    """Through the command line, any ``--set`` text ends in exit 0 or exit 2 with one
    paragraph, never a traceback."""
    result = CliRunner().invoke(app, ["validate", str(CORPUS / "base.yaml"), "--set", item])
    assert result.exit_code in (0, 2), (item, result.exception, result.stderr[-500:])
    if result.exit_code == 2:
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: "), result.stderr[:300]


@FUZZ
@given(text=PATHS)
def test_any_out_path_is_accepted_or_refused_writing_nothing(text: str) -> None:
    """``--out`` text of any kind is accepted or refused with an input error, and the
    check creates nothing."""
    with _fresh_folder() as work:
        try:
            check_out_dir(Path(text))
        except XpusimError as exc:
            assert "\n" not in str(exc).strip()
        assert list(work.iterdir()) == []


@FUZZ
@given(text=PATHS)
def test_any_compare_out_never_overwrites_an_input(text: str) -> None:
    """``compare --out`` text of any kind is accepted or refused; it never accepts a path
    that is the compared run folder or a file in it."""
    with _fresh_folder() as work:
        run = work / "run"
        run.mkdir()
        (run / "summary.json").write_text("{}\n", encoding="utf-8")
        try:
            check_report_file(Path(text), [Path("run")])
        except XpusimError:
            pass
        else:
            target = Path(os.path.abspath(text))
            assert target != run and run not in target.parents
        assert sorted(p.name for p in work.rglob("*")) == ["run", "summary.json"]


@FUZZ
@given(text=PATHS)
def test_any_scenario_path_through_validate_is_exit_2(text: str) -> None:
    """A scenario path of any kind (none of them a scenario) ends in exit 2."""
    with _fresh_folder():
        result = CliRunner().invoke(app, ["validate", text or "."])
        assert result.exit_code == 2, (text, result.exception, result.stderr[-300:])
        assert "Traceback" not in result.stderr
