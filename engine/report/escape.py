"""Escaping user text for every sink a report writes to.

Names, descriptions, reasons and paths come from scenario files and traces, which may
hold anything. Each sink has its own active characters, and each function here turns
user text into text that sink shows literally:

* :func:`terminal` for rich consoles: ``[...]`` markup is not interpreted and control
  characters (an ANSI escape that clears the screen or retitles the window) are shown as
  ``\\xNN`` instead of being sent to the terminal;
* :func:`markdown` for ``report.md``: CommonMark punctuation is backslash-escaped and
  ``<``, ``>``, ``&`` become entities, so no link, image, HTML tag or script survives.

* :func:`html` for ``report.html`` (and the comparison report): :func:`html.escape` of
  :func:`plain`, so no tag is made and no control character is written;
* :func:`svg` for a chart's SVG document: its control characters shown as ``\\xNN``
  (matplotlib writes label text as it is given, and a control character is not allowed
  in XML). The charts also turn TeX math off (``text.parse_math``), so a ``$`` in a
  name is drawn as written.

JSON needs none: :func:`json.dumps` escapes every string it writes.
"""

from __future__ import annotations

import html as _html
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MD_ACTIVE = re.compile(r"([\\`*_\[\]|~])")


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else "?"


def plain(text: object) -> str:
    """``text`` with control characters (terminal escapes, bidirectional overrides,
    carriage returns) shown as ``\\xNN``; newlines and tabs become spaces."""
    s = str(text).replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub(_visible, s)


def terminal(text: object) -> str:
    """``text`` for a rich console with markup on: shown exactly, never interpreted."""
    from rich.markup import escape

    return escape(plain(text))


def markdown(text: object) -> str:
    """``text`` for a Markdown document (one line, inside a table cell or a list item)."""
    s = plain(text)
    s = _html.escape(s, quote=False)
    return _MD_ACTIVE.sub(r"\\\1", s)


def html(text: object) -> str:
    """``text`` for an HTML document (element text or a quoted attribute): control
    characters shown as ``\\xNN`` (:func:`plain`), then ``<``, ``>``, ``&`` and quotes
    turned into entities."""
    return _html.escape(plain(text), quote=True)


def svg(document: str) -> str:
    """A whole SVG document (a chart) with the control characters of its label text
    shown as ``\\xNN``; its own newlines and tabs are kept."""
    return _CONTROL.sub(_visible, document)
