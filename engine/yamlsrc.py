"""YAML loading that remembers where every value came from.

:func:`load_yaml` returns the plain data and a :class:`Source` that maps a key path
(``("systems", 0, "device")``) to its line in the file, so validation errors can name the
file and line. Duplicate keys are an error rather than a silent overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine.errors import ScenarioError
from xpusim.engine.safeio import read_limited

Path_ = tuple[str | int, ...]

MAX_BYTES = 16 * 2**20
"""Largest scenario file accepted (a scenario is hand-written configuration)."""

MAX_VALUES = 1_000_000
"""Most values (mappings, lists and scalars) a scenario may expand to. YAML aliases
(``*name``) repeat a node without repeating its text, so a few lines can otherwise expand
to billions of values (the "billion laughs" file)."""

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists a scenario may have."""


class NotYamlError(ScenarioError):
    """Text that is not valid YAML (the message names the file and line)."""


@dataclass
class Source:
    """Where a scenario's values came from: file name and line per key path."""

    file: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def where(self, path: Path_) -> str:
        """``file:line, at key a.b.0.c`` for messages."""
        line = self.line(path)
        loc = f"{self.file}:{line}" if line else self.file
        return f"{loc}, at {dotted(path)}" if path else loc


def dotted(path: Path_) -> str:
    """Render a key path as ``systems.0.device``; a key with a character that does not
    print (a newline, a control character) is shown quoted and escaped, so a message
    stays one line."""
    return ".".join(_shown(str(p)) for p in path) or "(top level)"


def _shown(key: str) -> str:
    """``key`` as is, or its escaped ``repr`` when some character of it does not print."""
    return key if key.isprintable() else repr(key)


def load_yaml(text: str, file: str) -> tuple[Any, Source]:
    """Parse ``text`` and record the line of every key; errors name ``file`` and line."""
    if len(text) > MAX_BYTES:
        raise ScenarioError(
            f"{file}: the file is {len(text) / 2**20:.1f} MiB; a scenario is at most "
            f"{MAX_BYTES // 2**20} MiB. Put large data (traces) in separate files it points to."
        )
    src = Source(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ScenarioError(
            f"{file}: mappings and lists are nested too deeply to read (a scenario nests at "
            f"most {MAX_DEPTH} levels); check for unbalanced brackets."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NotYamlError(
            f"{file}{line}: this is not valid YAML ({problem}). Check the indentation and "
            f"quoting on that line; a value with ':' or '#' must be quoted."
        ) from None
    if node is None:
        return None, src
    _check_expansion(node, file)
    data = _build(node, (), src)
    return data, src


def load_value(text: str, label: str) -> Any:
    """Parse one command-line value (``--set key=VALUE``) with the limits of a file.

    Text that is not valid YAML is kept as the string it is (``--set name=a: b``); an
    alias bomb, a self-referencing alias, too deep a nesting or an over-long value is an
    error naming ``label``, as it would be in a scenario file.
    """
    try:
        return load_yaml(text, label)[0]
    except NotYamlError:
        return text


def _expanded_size(node: yaml.Node, memo: dict[int, int], file: str) -> int:
    """How many values ``node`` becomes once every alias is expanded (shared nodes are
    counted once per use but measured once, so this is fast even for an alias bomb).
    A node that contains an alias of itself is an error."""
    key = id(node)
    size = memo.get(key)
    if size == -1:
        raise ScenarioError(
            f"{file}:{node.start_mark.line + 1}: this value contains an alias (*name) of "
            f"itself, so it never ends; a scenario value cannot refer to itself."
        )
    if size is None:
        memo[key] = -1  # being measured
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(
                _expanded_size(k, memo, file) + _expanded_size(v, memo, file) for k, v in node.value
            )
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo, file) for v in node.value)
        else:
            size = 1
        memo[key] = size
    return size


def _check_expansion(node: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_VALUES` values,
    before building any of it, naming the top-level key that grows largest."""
    memo: dict[int, int] = {}
    if _expanded_size(node, memo, file) <= MAX_VALUES:
        return
    worst, line = "(top level)", node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode) and node.value:
        k, _ = max(node.value, key=lambda kv: memo.get(id(kv[1]), 1))
        worst, line = str(getattr(k, "value", k)), k.start_mark.line + 1
    raise ScenarioError(
        f"{file}:{line}: the scenario expands to more than {MAX_VALUES:,} values at "
        f"{worst}, which YAML aliases (*name) repeated over and over produce; write the "
        f"values out or reference them less often."
    )


def _build(node: yaml.Node, path: Path_, src: Source) -> Any:
    """Turn a composed node into plain data (aliases expanded), recording each key's line."""
    src.lines.setdefault(path, node.start_mark.line + 1)
    if len(path) > MAX_DEPTH:
        raise ScenarioError(
            f"{src.file}:{node.start_mark.line + 1}: mappings and lists are nested more than "
            f"{MAX_DEPTH} levels deep at {dotted(path[:3])}...; flatten them."
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _scalar(knode, src, path)
            if key in out:
                raise ScenarioError(
                    f"{src.file}:{knode.start_mark.line + 1}: key {dotted((*path, key))} appears "
                    f"twice in the same mapping; keep one of them."
                )
            sub = (*path, key)
            src.lines[sub] = knode.start_mark.line + 1
            out[key] = _build(vnode, sub, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), src) for i, v in enumerate(node.value)]
    return _scalar(node, src, path)


def _scalar(node: yaml.Node, src: Source, path: Path_) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ScenarioError(
            f"{src.file}:{node.start_mark.line + 1}: a mapping key at {dotted(path)} must be a "
            f"plain name, not a list or mapping."
        )
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(
            f"{src.file}:{node.start_mark.line + 1}: cannot read the value at {dotted(path)} "
            f"({problem}). Quote it if it is text."
        ) from None
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """Read a scenario file as UTF-8, with clear errors for missing, binary, oversized
    or non-regular files (a FIFO or ``/dev/zero`` is refused before anything is read)."""
    raw = read_limited(
        path,
        "scenario file",
        MAX_BYTES,
        f"A scenario is at most {MAX_BYTES // 2**20} MiB of YAML; put large data (traces) "
        f"in separate files it points to.",
        ScenarioError,
    )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(
            f"{path}:{line}: the file is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}). Save it as UTF-8."
        ) from None
