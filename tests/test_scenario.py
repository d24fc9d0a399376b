"""Scenario loading: validation, overrides, and errors that name the place and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xpusim.engine.errors import ScenarioError, UnknownNameError
from xpusim.engine.host import Host
from xpusim.engine.scenario import apply_override, load_scenario, parse_set
from xpusim.engine.yamlsrc import dotted

GOOD = """\
name: fake-run
seed: 3
model: {family: fake, preset: small}
workload: {kind: batch, steps: 2, batch: 4}
systems:
  - {name: a, backend: fake, device: chip-a, count: 1}
  - name: b
    backend: fake
    device: chip-b
    count: 4
    parallelism: {tensor: 2}
economics: {pricing: cloud, electricity: 0.12 USD/kWh, pue: 1.2, carbon_intensity: 380 g/kWh}
"""

Writer = Callable[..., Path]


def test_good_scenario_resolves(fake_host: Host, write_yaml: Writer) -> None:
    """A valid file resolves its model, workload and systems with parallel plans."""
    sc = load_scenario(write_yaml(GOOD), fake_host)
    assert sc.name == "fake-run" and sc.seed == 3
    assert [s.name for s in sc.systems] == ["a", "b"]
    b = sc.systems[1]
    assert (b.parallelism.data, b.parallelism.tensor) == (2, 2)
    assert sc.config.economics.electricity == pytest.approx(0.12 / 3.6e6)
    assert sc.workload.name == "batch"


def test_set_overrides_any_field(fake_host: Host, write_yaml: Writer) -> None:
    """--set reaches nested keys and list items by index, values typed as YAML."""
    sc = load_scenario(
        write_yaml(GOOD), fake_host, ["workload.steps=7", "systems.0.device=chip-b", "seed=11"]
    )
    assert sc.workload_config.steps == 7  # type: ignore[attr-defined]
    assert sc.systems[0].device.name == "chip-b"
    assert sc.seed == 11


def test_parse_set_rejects_malformed() -> None:
    """An override without '=' is refused with an example."""
    with pytest.raises(ScenarioError, match=r"KEY\.PATH=VALUE"):
        parse_set("workload.rate")
    assert parse_set("a.0.b=2 GB") == (["a", 0, "b"], "2 GB")


def test_override_index_out_of_range() -> None:
    """An index past the list names the valid range."""
    with pytest.raises(ScenarioError, match="0 to 1"):
        apply_override({"systems": [{}, {}]}, ["systems", 5, "count"], 1, "--set")


def test_unknown_key_names_line_and_nearest(fake_host: Host, write_yaml: Writer) -> None:
    """A misspelled key gives file:line, the key path, and the nearest valid key."""
    text = GOOD.replace("    count: 4\n", "    cuont: 4\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(write_yaml(text), fake_host)
    msg = str(exc.value)
    assert "scenario.yaml:10" in msg and "systems.1.cuont" in msg and "'count'" in msg


def test_unknown_device_lists_valid_ones(fake_host: Host, write_yaml: Writer) -> None:
    """A typo'd device names the backend's devices and the nearest one."""
    text = GOOD.replace("device: chip-a", "device: chip-c")
    with pytest.raises(UnknownNameError) as exc:
        load_scenario(write_yaml(text), fake_host)
    msg = str(exc.value)
    assert "scenario.yaml:6" in msg and "chip-a" in msg and "chip-b" in msg


def test_unknown_model_family_suggests(fake_host: Host, write_yaml: Writer) -> None:
    """A typo'd model family suggests the registered one."""
    with pytest.raises(UnknownNameError, match="Did you mean 'fake'"):
        load_scenario(write_yaml(GOOD.replace("family: fake", "family: faek")), fake_host)


def test_quantity_errors_carry_units(fake_host: Host, write_yaml: Writer) -> None:
    """A wrong-dimension quantity names the key path and the accepted units."""
    text = GOOD.replace("0.12 USD/kWh", "0.12 GB")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(write_yaml(text), fake_host)
    msg = str(exc.value)
    assert "economics.electricity" in msg and "USD/kWh" in msg


def test_plan_that_does_not_divide(fake_host: Host, write_yaml: Writer) -> None:
    """tensor x pipeline that does not divide count suggests plans that do."""
    text = GOOD.replace("parallelism: {tensor: 2}", "parallelism: {tensor: 3}")
    with pytest.raises(ScenarioError, match="Plans that divide it"):
        load_scenario(write_yaml(text), fake_host)


def test_duplicate_system_names(fake_host: Host, write_yaml: Writer) -> None:
    """Two systems with one name are refused at the second one's line."""
    with pytest.raises(ScenarioError, match="used twice"):
        load_scenario(write_yaml(GOOD.replace("name: b", "name: a")), fake_host)


def test_extends_merges_and_detects_cycles(fake_host: Host, write_yaml: Writer) -> None:
    """`extends:` deep-merges a base file; a file that extends itself is refused."""
    write_yaml(GOOD, "base.yaml")
    child = write_yaml("extends: base.yaml\nname: child\nworkload: {steps: 9}\n", "child.yaml")
    sc = load_scenario(child, fake_host)
    assert sc.name == "child" and sc.workload_config.steps == 9  # type: ignore[attr-defined]
    loop = write_yaml("extends: loop.yaml\nname: x\n", "loop.yaml")
    with pytest.raises(ScenarioError, match="extends itself"):
        load_scenario(loop, fake_host)


def test_yaml_syntax_error_names_line(fake_host: Host, write_yaml: Writer) -> None:
    """Broken YAML gives the line of the problem, not a parser traceback."""
    with pytest.raises(ScenarioError, match=r"scenario.yaml:\d+: this is not valid YAML"):
        load_scenario(write_yaml("name: x\nmodel: {family: fake\nworkload: 1\n"), fake_host)


def test_non_utf8_file(fake_host: Host, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are refused with the offset."""
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(p, fake_host)


def test_booleans_for_numbers_are_found_through_lists_mappings_and_aliases() -> None:
    """``first_bool_number`` returns the key path of the first ``true``/``false`` where a
    number is expected, following nested models, lists and mappings of models and field
    aliases; ``keys_at`` lists the keys of the sub-model a key path leads to."""
    from pydantic import BaseModel, Field

    from xpusim.engine.scenario import first_bool_number, keys_at, submodel

    class Leaf(BaseModel):
        count: int = 1
        flag: bool = False
        share: float | None = None

    class Root(BaseModel):
        one: Leaf | None = None
        many: list[Leaf] = []
        named: dict[str, Leaf] = {}
        renamed: int = Field(default=0, alias="as")

    assert first_bool_number(Root, {"one": {"flag": True, "count": 2}}) is None
    assert first_bool_number(Root, {"one": {"share": True}}) == (("one", "share"), True)
    assert first_bool_number(Root, {"many": [{"count": 1}, {"count": False}]}) == (
        ("many", 1, "count"),
        False,
    )
    assert first_bool_number(Root, {"named": {"x": {"count": True}}}, ("w",)) == (
        ("w", "named", "x", "count"),
        True,
    )
    assert first_bool_number(Root, {"as": True}) == (("as",), True)
    assert first_bool_number(Root, "not a mapping") is None
    assert keys_at(Root, ("many", 0)) == ["count", "flag", "share"]
    assert keys_at(Root, ("one",)) == ["count", "flag", "share"]
    assert keys_at(Root, ("renamed",)) == [] and keys_at(Root, ("nowhere",)) == []
    assert submodel(list[Leaf]) is Leaf and submodel(int | None) is None


def test_a_key_that_does_not_print_is_named_escaped_on_one_line() -> None:
    """A place in a message names a key with a newline or control character quoted and
    escaped, so the one-paragraph message stays one line; ordinary keys stay bare."""
    assert dotted(("workload", "arrivals", "prompt_tokens")) == "workload.arrivals.prompt_tokens"
    assert dotted(("workload", "\n", 0)) == "workload.'\\n'.0"
    assert "\n" not in dotted(("a\x1bb", "c\rd"))
    assert dotted(()) == "(top level)"
