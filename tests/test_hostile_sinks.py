"""User text reaches every output as text: never markup, script, TeX or a terminal escape.

A system named with rich markup (``[/]``, ``[link=...]``), HTML and a script, a Markdown
link, TeX dollars and an ANSI escape runs to the end (exit 0), and each sink shows the
name without acting on it: the terminal table, ``report.md``, ``report.html``, the charts
(matplotlib would parse ``$...$`` as TeX) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xpusim.engine.cli import app
from xpusim.engine.report import escape

CORPUS = Path(__file__).parent / "bad_inputs"
NAME = "a$x^2$ [/] [link=https://e.x]l[/link] <script>alert(1)</script> [m](javascript:x) \x1b[2J"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The corpus's base scenario with its one system renamed to :data:`NAME`."""
    out = tmp_path_factory.mktemp("sinks") / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(CORPUS / "base.yaml"),
            "--out",
            str(out),
            "-q",
            "--set",
            f"systems.0.name={json.dumps(NAME)}",
        ],
    )
    assert result.exit_code == 0, (result.exception, result.stderr[-2000:])
    return out, result.stdout


def test_terminal_shows_markup_and_escapes_as_text(run: tuple[Path, str]) -> None:
    """The table shows ``[/]`` and ``[link=...]`` literally; the escape byte never reaches
    the terminal."""
    _, stdout = run
    assert "[/]" in stdout and "[link=https://e.x]" in stdout
    assert "\x1b" not in stdout and "\\x1b[2J" in stdout


def test_report_md_has_no_live_markup(run: tuple[Path, str]) -> None:
    """In ``report.md`` the script is entities and the link's brackets are escaped."""
    folder, _ = run
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "[m](javascript:x)" not in md and "\\[m\\](javascript:x)" in md
    assert "\x1b" not in md


def test_report_html_and_charts_escape_the_name(run: tuple[Path, str]) -> None:
    """``report.html`` (tables and inline SVG charts) holds no live script, and the TeX
    in the name did not stop the charts from being drawn."""
    folder, _ = run
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<svg" in page


def test_no_control_character_reaches_report_html_or_a_chart(run: tuple[Path, str]) -> None:
    """The ANSI escape in the name is shown as ``\\x1b`` in ``report.html``'s tables and in
    the label text of its inline SVG charts: no file but ``summary.json`` holds the byte."""
    folder, _ = run
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "\x1b" not in page
    charts = page[page.index("<svg") :]
    assert "\\x1b[2J" in charts  # a legend or a label drew the name, escaped
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".html", ".svg", ".txt"):
            assert "\x1b" not in path.read_text(encoding="utf-8", errors="replace"), path


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<b>\x1b[2J</b>", "&lt;b&gt;\\x1b[2J&lt;/b&gt;"),
        ('"q"\x00', "&quot;q&quot;\\x00"),
        ("bidi\u202eevil", "bidi?evil"),
    ],
)
def test_html_escape(text: str, shown: str) -> None:
    """HTML escaping makes no tag, closes no attribute and writes no control character."""
    assert escape.html(text) == shown


def test_svg_escape_keeps_layout() -> None:
    """A chart's control characters are shown by their code; its newlines stay."""
    assert escape.svg("<text>a\x1bb</text>\n") == "<text>a\\x1bb</text>\n"


def test_summary_json_keeps_the_name_exactly(run: tuple[Path, str]) -> None:
    """JSON escapes by itself: the name reads back byte for byte."""
    folder, _ = run
    doc = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert doc["systems"][0]["name"] == NAME


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("[bold]x[/]", "\\[bold]x\\[/]"),
        ("tab\tand\nline", "tab and line"),
        ("bidi\u202eevil", "bidi?evil"),
        ("bell\x07", "bell\\x07"),
    ],
)
def test_terminal_escape(text: str, shown: str) -> None:
    """Markup is escaped, line breaks and tabs become spaces, control characters are
    shown by their code."""
    assert escape.terminal(text) == shown


def test_markdown_escape() -> None:
    """Markdown punctuation that makes links, emphasis, tables or HTML is neutralised."""
    assert escape.markdown("*a* _b_ `c` [d](e) |f| <g> &h") == (
        "\\*a\\* \\_b\\_ \\`c\\` \\[d\\](e) \\|f\\| &lt;g&gt; &amp;h"
    )
