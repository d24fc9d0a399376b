"""Scenario files: YAML into validated models, with overrides and clear errors.

:func:`load_scenario` reads a scenario file, applies ``--set`` overrides, validates the
top level with pydantic (``extra="forbid"``), then asks the registered plugins to validate
their parts: the model family its ``model:`` block, the workload kind its ``workload:``
block, each backend its device. Every error names the file and line, the key path, what
was expected and what was found, and for a misspelled name the nearest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xpusim.engine.detail import ResultsConfig
from xpusim.engine.device import (
    DerivedDevice,
    DeviceSpec,
    Figure,
    LinkSpec,
    PriceSpec,
    derive_device,
)
from xpusim.engine.economics import EconomicsConfig
from xpusim.engine.errors import ScenarioError, XpusimError
from xpusim.engine.host import Host
from xpusim.engine.model import ModelGraph
from xpusim.engine.precision import (
    QuantizedModel,
    dtype_precision,
    model_block,
    parse_precision,
    scheme_in_dtype,
)
from xpusim.engine.qty import Bandwidth, DurationOrZero, Money, PricePerTime
from xpusim.engine.registry import nearest
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.trust import scenario_folder
from xpusim.engine.workload import Workload
from xpusim.engine.yamlsrc import Path_, Source, dotted, load_value, load_yaml, read_text

# --- schema -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParallelismConfig(_Strict):
    """``systems[].parallelism``: how a model is split over the system's devices."""

    data: int | None = Field(default=None, ge=1)
    tensor: int = Field(default=1, ge=1)
    pipeline: int = Field(default=1, ge=1)
    virtual: int = Field(default=1, ge=1)
    sequence: bool = False
    zero: int = Field(default=0, ge=0, le=3)
    expert: int = Field(default=1, ge=1)
    context: int = Field(default=1, ge=1)


class LinkConfig(_Strict):
    """A link override: per-device one-way bandwidth and latency."""

    bandwidth: Bandwidth
    latency: DurationOrZero


class TopologyConfig(_Strict):
    """``systems[].topology``: nodes, their fast fabric and the network between them."""

    devices_per_node: int | None = Field(default=None, ge=1)
    scale_up: LinkConfig | None = None
    scale_out: LinkConfig | None = None
    torus: list[int] | None = None


class PricingConfig(_Strict):
    """``systems[].pricing``: prices that replace the catalog's for this system."""

    cloud: PricePerTime | None = None
    spot: PricePerTime | None = None
    reserved: PricePerTime | None = None
    list: Money | None = None


class SystemConfig(_Strict):
    """One candidate system as written in ``systems:``."""

    name: str = Field(min_length=1, max_length=100)
    backend: str
    device: str | DerivedDevice
    """A catalog device name, or a device derived from one (engine/device.py)."""
    count: int = Field(default=1, ge=1, le=1_000_000)
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    options: dict[str, Any] = Field(default_factory=dict)
    precision: str | dict[str, Any] | None = None
    """Weight, activation and KV-cache formats (engine/precision.py); default 16-bit."""


class ScenarioConfig(_Strict):
    """The top level of a scenario file (see docs/scenarios.md)."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    seed: int = Field(default=0, ge=0, lt=2**63)
    model: dict[str, Any]
    workload: dict[str, Any]
    systems: list[SystemConfig] = Field(min_length=1, max_length=1000)
    economics: EconomicsConfig = Field(default_factory=EconomicsConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    sweep: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    capacity: dict[str, Any] | None = None
    extends: str | None = None


# --- the loaded scenario ----------------------------------------------------------------


@dataclass
class Scenario:
    """A validated scenario with its plugins resolved.

    ``systems`` are resolved :class:`~xpusim.engine.system.System` objects in file order;
    ``data`` is the plain mapping after overrides (what a sweep varies and what the run
    folder records).
    """

    config: ScenarioConfig
    data: dict[str, Any]
    source: Source
    base_dir: Path
    model: ModelGraph
    workload: Workload
    workload_config: BaseModel
    systems: list[System]
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    system_models: dict[str, ModelGraph] = field(default_factory=dict)
    """The model of each system that runs at its own precision, by system name."""

    def model_for(self, system: System) -> ModelGraph:
        """The model ``system`` runs: its quantized model, or the scenario's."""
        return self.system_models.get(system.name, self.model)

    @property
    def name(self) -> str:
        """The scenario's ``name``."""
        return self.config.name

    @property
    def seed(self) -> int:
        """The scenario's ``seed`` (after ``--seed``)."""
        return self.config.seed


# --- overrides --------------------------------------------------------------------------

_SET = re.compile(r"^([A-Za-z_][\w\-]*(?:\.(?:[A-Za-z_][\w\-]*|\d+))*)=(.*)$", re.S)


def set_label(item: str) -> str:
    """``--set ITEM`` for messages: as typed when it is one short printable line, else
    quoted and shortened (a line break or a control character never reaches a message)."""
    if item.isprintable() and len(item) <= 80:
        return f"--set {item}"
    return f"--set {_describe(item)}"


def parse_set(item: str) -> tuple[list[str | int], Any]:
    """Parse one ``--set key.path=value`` into a key path and a YAML-typed value."""
    m = _SET.match(item.strip())
    if not m:
        raise ScenarioError(
            f"--set {item!r}: expected KEY.PATH=VALUE, for example "
            f"--set workload.arrivals.rate=20/s or --set systems.0.count=2."
        )
    path: list[str | int] = [int(p) if p.isdigit() else p for p in m.group(1).split(".")]
    value = load_value(m.group(2), set_label(item)) if m.group(2).strip() else ""
    return path, value


def apply_override(data: dict[str, Any], path: Sequence[str | int], value: Any, label: str) -> None:
    """Set ``value`` at ``path`` in ``data``; a number indexes a list. New keys are allowed
    (validation then rejects unknown ones with the valid names)."""
    node: Any = data
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ScenarioError(
                    f"{label}: {dotted(tuple(path[: i + 1]))} indexes a list of {len(node)} "
                    f"items; use an index from 0 to {len(node) - 1}."
                )
            node = node[key]
        elif isinstance(node, dict):
            if key not in node or node[key] is None:
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
        else:
            raise ScenarioError(
                f"{label}: {dotted(tuple(path[:i]))} is a single value, so it has no field {key!r}."
            )
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last > len(node):
            raise ScenarioError(f"{label}: index {last} is outside a list of {len(node)} items.")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ScenarioError(f"{label}: {dotted(tuple(path[:-1]))} is a single value.")


# --- errors -----------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_TAG = re.compile(r"(str|int|float|bool|(list|dict|tuple)\[.*\])")


def _model_names(cls: type[BaseModel] = BaseModel) -> set[str]:
    """The class names of every pydantic model defined so far (a union member's tag)."""
    out: set[str] = set()
    for sub in cls.__subclasses__():
        out.add(sub.__name__)
        out |= _model_names(sub)
    return out


def _is_tag(segment: str) -> bool:
    """Whether a location segment names a union member (``str``, ``DerivedDevice``) rather
    than a key: a built-in type's name or a pydantic model's class name."""
    return _TAG.fullmatch(segment) is not None or segment in _model_names()


_SHAPES = {
    "str": "a name",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
}


def _one_branch(errors: list[Any]) -> list[Any]:
    """Keep, for a value that may take one of several shapes (``device: h100-sxm`` or
    ``device: {base: ...}``), only the errors of the shape the value has: a mapping given
    where a name is also accepted is not also told it "should be a valid string"."""

    def split(err: Any) -> tuple[tuple[Any, ...], str] | None:
        loc = err["loc"]
        for i, seg in enumerate(loc):
            if isinstance(seg, str) and _is_tag(seg):
                return tuple(loc[:i]), seg
        return None

    deeper = {
        (where[0], where[1])
        for err in errors
        if (where := split(err)) is not None and not err["type"].endswith("_type")
    }
    kept: list[Any] = []
    shapes: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        where = split(err)
        if where is not None and err["type"].endswith("_type"):
            if any(p == where[0] and t != where[1] for p, t in deeper):
                continue  # not of this member's shape; another member's errors say why
            # of no member's shape: one error listing the shapes the value may take
            merged = shapes.get(where[0])
            if merged is None:
                merged = {**err, "loc": where[0], "type": "union_shape", "shapes": []}
                shapes[where[0]] = merged
                kept.append(merged)
            merged["shapes"].append(_SHAPES.get(where[1], "a mapping"))
            continue
        kept.append(err)
    return kept


def validation_message(exc: ValidationError, src: Source, prefix: Path_ = ()) -> str:
    """One paragraph for the first problems pydantic found, with file, line and key path."""
    parts: list[str] = []
    errors = _one_branch(exc.errors(include_url=False))
    for err in errors[:3]:
        keys = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-")]
        untagged = [p for p in keys if not isinstance(p, str) or not _is_tag(p)]
        loc: Path_ = (*prefix, *(untagged if untagged else keys))
        kind = err["type"]
        where = src.where(loc)
        if kind == "extra_forbidden":
            key = loc[-1]
            allowed = _allowed_keys(exc, tuple(err["loc"]))
            near = nearest(str(key), allowed) if allowed else None
            hint = f" Did you mean {near!r}?" if near else ""
            valid = f" Valid keys here: {', '.join(allowed)}." if allowed else ""
            parts.append(f"{where}: unknown key {key!r}.{hint}{valid}")
        elif kind == "missing":
            parts.append(f"{where}: this required field is missing; add it.")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            got = err.get("input")
            near = nearest(str(got), re.findall(r"'([^']+)'", str(expected)))
            hint = f" Did you mean {near!r}?" if near else ""
            parts.append(f"{where}: expected one of {expected}, got {_describe(got)}.{hint}")
        elif kind == "union_shape":
            parts.append(
                f"{where}: expected {' or '.join(err['shapes'])}, got {_describe(err.get('input'))}."
            )
        elif kind == "int_parsing_size":
            parts.append(
                f"{where}: {_describe(err.get('input'))} is far too large for this field; "
                f"give a realistic whole number."
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg} (got {_describe(err.get('input'))}).")
    more = len(errors) - 3
    tail = f" ({more} more problem{'s' if more > 1 else ''} after these.)" if more > 0 else ""
    return " ".join(parts) + tail


def _flat_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``Optional``, unions and ``Annotated``
    unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flat_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_flat_types(a) for a in typing.get_args(annotation)))
    return {annotation}


BOOL_NUMBER = (
    "expected a number, got {value}; YAML reads yes/no/true/false as booleans, so write the "
    "number itself"
)
"""What is wrong with ``true``/``false`` written where a number is expected."""


def first_bool_number(
    model: type[BaseModel], raw: Any, path: Path_ = ()
) -> tuple[Path_, bool] | None:
    """The key path and value of the first ``true``/``false`` in ``raw`` where ``model``
    expects a number (pydantic would read ``count: true`` as 1); nested models, lists and
    mappings of models are followed. ``None`` when there is none."""
    if not isinstance(raw, Mapping):
        return None
    for name, fld in model.model_fields.items():
        key = fld.alias or name
        if key not in raw:
            continue
        value, here = raw[key], (*path, key)
        kinds = _flat_types(fld.annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            return here, value
        for kind in kinds:
            sub = submodel(kind)
            if sub is None:
                continue
            found: tuple[Path_, bool] | None = None
            if isinstance(value, Mapping) and typing.get_origin(kind) is None:
                found = first_bool_number(sub, value, here)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    found = found or first_bool_number(sub, item, (*here, i))
            elif isinstance(value, Mapping):
                for k, item in value.items():
                    found = found or first_bool_number(sub, item, (*here, k))
            if found is not None:
                return found
    return None


def check_no_bool_numbers(model: type[BaseModel], raw: Any, src: Source, path: Path_) -> None:
    """Refuse ``true``/``false`` where ``model`` expects a number
    (:func:`first_bool_number`), naming the key."""
    found = first_bool_number(model, raw, path)
    if found is not None:
        here, value = found
        raise ScenarioError(
            f"{src.where(here)}: " + BOOL_NUMBER.format(value=str(value).lower()) + "."
        )


def _model_by_title(title: str) -> type[BaseModel] | None:
    """Find the pydantic model a ValidationError came from by its title (class name)."""
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title and cls is not BaseModel:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _allowed_keys(exc: ValidationError, loc: Path_) -> list[str]:
    """Valid keys of the mapping that held the unknown key at ``loc`` (relative to the
    model that raised)."""
    model = _model_by_title(exc.title)
    return [] if model is None else keys_at(model, loc[:-1])


def keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys of the sub-model of ``model`` at key path ``loc`` (list indexes skipped);
    empty where ``loc`` leads to no model."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fld = getattr(cur, "model_fields", {}).get(part)
        if fld is None:
            return []
        cur = submodel(fld.annotation)
        if cur is None:
            return []
    return sorted(getattr(cur, "model_fields", {}))


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through ``Optional``, unions and
    containers), or ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        sub = submodel(arg)
        if sub is not None:
            return sub
    return None


# --- loading ----------------------------------------------------------------------------

MAX_EXTENDS = 8


def read_scenario_data(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Source]:
    """Read a scenario file (following ``extends:``) into plain data and its source map."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        chain = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ScenarioError(
            f"{path}: the scenario extends itself ({chain}); remove the `extends:` that "
            f"closes the loop."
        )
    if len(_chain) >= MAX_EXTENDS:
        raise ScenarioError(f"{path}: more than {MAX_EXTENDS} levels of `extends:`; flatten them.")
    data, src = load_yaml(read_text(path), str(path))
    if data is None:
        raise ScenarioError(
            f"{path}: the file is empty; a scenario needs name, model, workload and systems."
        )
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{path}:1: a scenario is a mapping of keys (name, model, workload, systems ...), "
            f"not a {type(data).__name__}."
        )
    base = data.get("extends")
    if base is not None:
        if not isinstance(base, str):
            raise ScenarioError(
                f"{src.where(('extends',))}: `extends` is the path of another scenario file."
            )
        base_path = path.parent / base
        if not base_path.is_file():
            raise ScenarioError(
                f"{src.where(('extends',))}: `extends: {base}` names {base_path}, which is "
                f"not a scenario file; the path is relative to this file's folder."
            )
        base_data, _ = read_scenario_data(base_path, (*_chain, resolved))
        base_data.pop("extends", None)
        data = _deep_merge(base_data, {k: v for k, v in data.items() if k != "extends"})
    return data, src


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_scenario(
    path: str | Path,
    host: Host,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> Scenario:
    """Load, override, validate and resolve a scenario file against ``host``'s plugins."""
    path = Path(path)
    data, src = read_scenario_data(path)
    for item in overrides:
        key, value = parse_set(item)
        apply_override(data, key, value, set_label(item))
    if seed is not None:
        data["seed"] = seed
    return resolve(data, src, host, base_dir=path.parent, path=path)


def resolve(
    data: dict[str, Any], src: Source, host: Host, base_dir: Path, path: Path | None = None
) -> Scenario:
    """Validate plain scenario ``data`` and resolve its plugins (model, workload, devices)."""
    check_no_bool_numbers(ScenarioConfig, data, src, ())
    try:
        cfg = ScenarioConfig.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, src)) from None

    names = [s.name for s in cfg.systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        i = names.index(dupes[0], names.index(dupes[0]) + 1)
        raise ScenarioError(
            f"{src.where(('systems', i, 'name'))}: system name {dupes[0]!r} is used twice; "
            f"every system needs its own name."
        )

    cfg = _with_model_config(cfg, base_dir)
    default = scheme_in_dtype(cfg.model)  # model.dtype: fp4, int4 ... for every system
    if default is not None:
        cfg = cfg.model_copy(update={"model": {**cfg.model, "dtype": "bf16"}})
    with scenario_folder(base_dir):  # a torch model's module resolves from here
        model = _resolve_model(cfg, src, host)
    workload, wcfg = _resolve_workload(cfg, src, host)
    systems = [_resolve_system(i, s, src, host) for i, s in enumerate(cfg.systems)]
    with scenario_folder(base_dir):
        quantized = _system_models(cfg, src, host, systems, model, default)
    for system in systems:  # the workload's software may build kernels of its own
        mine = quantized.get(system.name, model)
        ran = workload.runtime_model(wcfg, system, mine)
        if ran is not mine:
            quantized[system.name] = ran
    return Scenario(
        config=cfg,
        data=data,
        source=src,
        base_dir=base_dir,
        model=model,
        workload=workload,
        workload_config=wcfg,
        systems=systems,
        path=path,
        system_models=quantized,
    )


def _with_model_config(cfg: ScenarioConfig, base_dir: Path) -> ScenarioConfig:
    """``model: {config: PATH}`` names a Hugging Face ``config.json`` (or its folder): the
    family is ``hf`` unless the block names one, and a relative path is relative to the
    scenario file's folder."""
    block = dict(cfg.model)
    if "config" not in block or block.setdefault("family", "hf") != "hf":
        return cfg
    path = block["config"]
    if isinstance(path, str) and not Path(path).is_absolute():
        block["config"] = str(base_dir / path)
    return cfg.model_copy(update={"model": block})


def _system_models(
    cfg: ScenarioConfig,
    src: Source,
    host: Host,
    systems: list[System],
    model: ModelGraph,
    default: str | None,
) -> dict[str, ModelGraph]:
    """The quantized model of each system whose ``precision`` (or the scheme ``model.dtype``
    names, ``default``) is not 16-bit: a 16-bit base model, configured with the precision's
    KV-cache format, wrapped by :class:`~xpusim.engine.precision.QuantizedModel`."""
    out: dict[str, ModelGraph] = {}
    bases: dict[str, ModelGraph] = {}
    for i, (s, system) in enumerate(zip(cfg.systems, systems, strict=True)):
        raw = s.precision if s.precision is not None else default
        here: Path_ = ("systems", i, "precision") if s.precision is not None else ("model",)
        if raw is None:  # model.dtype: fp8 (a checkpoint's format) and no precision
            here = ("model", "dtype")
            try:
                raw = dtype_precision(
                    model.info.dtype,
                    system.device,
                    training=cfg.workload.get("kind") == "training",
                    where=f"{src.where(here)} (system {s.name!r})",
                )
            except XpusimError as exc:
                raise ScenarioError(str(exc)) from None
        if raw is None:
            continue
        try:
            precision = parse_precision(raw, src.where(here))
        except XpusimError as exc:
            raise ScenarioError(str(exc)) from None
        if cfg.workload.get("kind") == "training":
            raise ScenarioError(
                f"{src.where(here)}: a precision sets inference formats; for FP8 training "
                "set model.dtype: fp8 and remove the precision."
            )
        if precision.kv_cache is not None and model.kv_bytes_per_token <= 0:
            raise ScenarioError(
                f"{src.where(here)}: kv_cache is set but {model.name} keeps no KV cache; "
                "remove kv_cache."
            )
        block = model_block(cfg.model, precision)
        key = repr(sorted(block.items()))
        if key not in bases:
            bases[key] = _resolve_model(cfg.model_copy(update={"model": block}), src, host)
        try:
            base = bases[key]
            out[s.name] = (
                base if precision.is_default else QuantizedModel(base, precision, system.device)
            )
        except XpusimError as exc:
            raise ScenarioError(f"{src.where(here)}: {exc}") from None
    return out


def _resolve_model(cfg: ScenarioConfig, src: Source, host: Host) -> ModelGraph:
    block = dict(cfg.model)
    fam_name = block.pop("family", None)
    if fam_name is None:
        raise ScenarioError(
            f"{src.where(('model',))}: `model.family` is missing; name one of: "
            f"{', '.join(host.models.names())}."
        )
    family = host.models.get(str(fam_name), where=src.where(("model", "family")))
    preset = block.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ScenarioError(
            f"{src.where(('model', 'preset'))}: a preset is a name, got {_describe(preset)}; "
            f"{fam_name} presets: {', '.join(sorted(family.presets)) or 'none'}."
        )
    try:
        return family.configure(block)
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, src, ("model",))) from None
    except XpusimError as exc:
        raise ScenarioError(f"{src.where(('model',))}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        # the family's reader choked on a value of the wrong shape: still bad input
        raise ScenarioError(
            f"{src.where(('model',))}: model family {fam_name!r} (plugin "
            f"{host.models.owner(str(fam_name))!r}) cannot read this model block "
            f"({type(exc).__name__}: {exc}); check the types of its fields."
        ) from None


def _resolve_workload(cfg: ScenarioConfig, src: Source, host: Host) -> tuple[Workload, BaseModel]:
    block = dict(cfg.workload)
    kind = block.pop("kind", None)
    if kind is None:
        raise ScenarioError(
            f"{src.where(('workload',))}: `workload.kind` is missing; name one of: "
            f"{', '.join(host.workloads.names())}."
        )
    workload = host.workloads.get(str(kind), where=src.where(("workload", "kind")))
    check_no_bool_numbers(workload.schema, block, src, ("workload",))
    try:
        wcfg = workload.schema.model_validate(block, context={"host": host})
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, src, ("workload",))) from None
    except XpusimError as exc:
        raise ScenarioError(f"{src.where(('workload',))}: {exc}") from None
    return workload, wcfg


def _resolve_system(i: int, s: SystemConfig, src: Source, host: Host) -> System:
    here: Path_ = ("systems", i)
    backend = host.backends.get(s.backend, where=src.where((*here, "backend")))
    try:
        options = backend.check_options(s.options)
    except ValidationError as exc:
        none = "" if backend.options.model_fields else f" Backend {s.backend!r} takes no options."
        raise ScenarioError(validation_message(exc, src, (*here, "options")) + none) from None
    if isinstance(s.device, DerivedDevice):
        base = host.device(s.backend, s.device.base, where=src.where((*here, "device", "base")))
        try:
            spec = derive_device(base, s.device, f"systems.{i}.device")
        except XpusimError as exc:
            raise ScenarioError(f"{src.where((*here, 'device'))}: {exc}") from None
    else:
        spec = host.device(s.backend, s.device, where=src.where((*here, "device")))
    spec = _with_pricing(spec, s.pricing, f"scenario systems.{i}.pricing")

    p = s.parallelism
    mp = p.tensor * p.pipeline * p.context
    ctx = f" x context {p.context}" if p.context > 1 else ""
    if s.count % mp:
        raise ScenarioError(
            f"{src.where((*here, 'parallelism'))}: tensor x pipeline{ctx} = {p.tensor} x "
            f"{p.pipeline} = {mp} does not divide count {s.count}. "
            f"{_nearest_plans(s.count, p.tensor, p.pipeline)}"
        )
    data = p.data if p.data is not None else s.count // mp
    if data * mp != s.count:
        raise ScenarioError(
            f"{src.where((*here, 'parallelism'))}: data x tensor x pipeline{ctx} = "
            f"{data} x {p.tensor} x {p.pipeline} = {data * mp} devices, but count is "
            f"{s.count}. Set data to {s.count // mp} or count to {data * mp}."
        )
    par = Parallelism(
        data=data,
        tensor=p.tensor,
        pipeline=p.pipeline,
        virtual=p.virtual,
        sequence=p.sequence,
        zero=p.zero,
        expert=p.expert,
        context=p.context,
    )
    topo = _topology(spec, s, src, here)
    return System(
        name=s.name,
        backend=s.backend,
        device=spec,
        count=s.count,
        parallelism=par,
        topology=topo,
        options=options,
    )


def _nearest_plans(count: int, tensor: int, pipeline: int) -> str:
    plans = []
    for t in (tensor, *(d for d in (1, 2, 4, 8, 16) if d != tensor)):
        for pp in (pipeline, *(d for d in (1, 2, 4, 8, 16) if d != pipeline)):
            if count % (t * pp) == 0:
                plans.append(f"tensor={t}, pipeline={pp} (data={count // (t * pp)})")
            if len(plans) == 3:
                return "Plans that divide it: " + "; ".join(plans) + "."
    return ("Plans that divide it: " + "; ".join(plans) + ".") if plans else ""


def _with_pricing(spec: DeviceSpec, pricing: PricingConfig, source: str) -> DeviceSpec:
    changes: dict[str, Figure] = {}
    for key, attr in (
        ("cloud", "on_demand"),
        ("spot", "spot"),
        ("reserved", "reserved"),
        ("list", "list_price"),
    ):
        value = getattr(pricing, key)
        if value is not None:
            changes[attr] = Figure(value, source=f"{source}.{key}")  # SI, like the catalog
    if not changes:
        return spec
    return dataclasses.replace(
        spec,
        price=dataclasses.replace(spec.price, **changes) if spec.price else PriceSpec(**changes),
    )


def _topology(spec: DeviceSpec, s: SystemConfig, src: Source, here: Path_) -> Topology:
    t = s.topology
    per_node = t.devices_per_node or spec.devices_per_node
    up = _link(t.scale_up, spec.scale_up, f"scenario systems.{here[1]}.topology.scale_up")
    out = _link(t.scale_out, spec.scale_out, f"scenario systems.{here[1]}.topology.scale_out")
    if up is None:
        up = out
    if out is None:
        if s.count > per_node:
            raise ScenarioError(
                f"{src.where((*here, 'topology'))}: {s.count} devices span "
                f"{-(-s.count // per_node)} nodes, but device {spec.name!r} has no published "
                f"scale-out network figure; set topology.scale_out: {{bandwidth: 50 GB/s, "
                f"latency: 5 us}} (for example)."
            )
        out = up
    if up is None:
        # a single device with no links: collectives never happen
        zero = LinkSpec(
            "none",
            Figure(1.0, assumption="single device: no links"),
            Figure(0.0, assumption="single device: no links"),
        )
        up = out = zero
    assert out is not None
    return Topology.from_links(per_node, up, out, tuple(t.torus or ()))


def _link(cfg: LinkConfig | None, spec: LinkSpec | None, source: str) -> LinkSpec | None:
    if cfg is not None:
        return LinkSpec(
            "scenario", Figure(cfg.bandwidth, source=source), Figure(cfg.latency, source=source)
        )
    return spec
