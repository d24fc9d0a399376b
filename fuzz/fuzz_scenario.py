"""Fuzz the scenario loader: YAML text through parsing, validation and plugin resolution.

The property: whatever the bytes, loading ends in a resolved scenario or an
:class:`~xpusim.engine.errors.XpusimError` whose message is one paragraph. Any other exception
(or a hang, or runaway memory, which libFuzzer reports) is a bug.

Run: ``python fuzz/fuzz_scenario.py -max_total_time=60`` (needs ``pip install atheris``).
Seeds: the bad-input corpus and the shipped scenarios. Half of the inputs are taken as
whole files; the other half replace one field of a valid scenario with a fuzzed value, so
the fuzzer also reaches the schemas behind a well-formed file.
"""

from __future__ import annotations

import copy
from typing import Any

import atheris
from _common import BAD_INPUTS, REPO, libfuzzer_argv

with atheris.instrument_imports(include=["engine"]):
    from xpusim.engine.errors import XpusimError
    from xpusim.engine.host import Host, build_host
    from xpusim.engine.scenario import read_scenario_data, resolve
    from xpusim.engine.yamlsrc import Source, load_yaml

BASE = BAD_INPUTS / "base.yaml"
HOST: Host | None = None
BASE_DATA: dict[str, Any] = {}
BASE_SRC = Source(str(BASE))
PATHS: list[tuple[Any, ...]] = []


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _check(exc: XpusimError) -> None:
    text = str(exc)
    if not text or "\n" in text or "Traceback" in text:
        raise AssertionError(f"not a one-paragraph message: {text[:500]!r}")


def test_one_input(data: bytes) -> None:
    """Load one fuzzed scenario; only input errors are allowed.

    An input starting with a zero byte replaces one field of the base scenario with the
    YAML value that follows (the next byte picks the field); any other input is a whole
    scenario file, so raw YAML files are meaningful seeds.
    """
    assert HOST is not None
    try:
        if data[:1] != b"\x00":
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return  # read_text refuses it before parsing (see the bad-input corpus)
            parsed, src = load_yaml(text, "fuzz.yaml")
            if isinstance(parsed, dict):
                resolve(parsed, src, HOST, base_dir=BAD_INPUTS)
            return
        path = PATHS[data[1] % len(PATHS)] if len(data) > 1 else PATHS[0]
        text = data[2:].decode("utf-8", errors="replace")
        value, _ = load_yaml(f"v: {text}" if text.strip() else "v: null", "value.yaml")
        doc = copy.deepcopy(BASE_DATA)
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value["v"] if isinstance(value, dict) and "v" in value else value
        resolve(doc, BASE_SRC, HOST, base_dir=BASE.parent)
    except XpusimError as exc:
        _check(exc)


def main() -> None:
    """Build the host once, then fuzz until libFuzzer's limits stop it."""
    global HOST, BASE_DATA, BASE_SRC, PATHS
    HOST = build_host()
    BASE_DATA, BASE_SRC = read_scenario_data(BASE)
    PATHS = _paths(BASE_DATA)
    seeds = [*BAD_INPUTS.glob("**/*.yaml"), *(REPO / "scenarios").glob("*.yaml")]
    atheris.Setup(libfuzzer_argv(seeds), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
