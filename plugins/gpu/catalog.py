"""The GPU device catalog, loaded from ``catalog.yaml`` next to this module.

Every figure in the YAML cites a reference-figures id (``source``) or states an
``assumption``; :func:`load_catalog` turns each entry into a
:class:`~xpusim.engine.device.DeviceSpec` with :func:`xpusim.engine.device.spec_from_mapping`.
:func:`resolve` maps aliases (``h100`` -> ``h100-sxm``, ``a100`` -> ``a100-sxm-80gb``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from xpusim.engine.device import DeviceSpec, spec_from_mapping
from xpusim.engine.errors import UnknownNameError, XpusimError
from xpusim.engine.precision import FORMATS
from xpusim.engine.registry import unknown_message

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
BACKEND = "gpu"


def load_catalog(path: Path | str = CATALOG_PATH) -> dict[str, DeviceSpec]:
    """Parse a GPU catalog YAML (top-level ``devices:`` mapping) into specs by name; an
    ``fp4_formats`` entry that is not a 4-bit float format is refused naming it."""
    p = Path(path)
    raw: Mapping[str, Any] = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    devices = raw.get("devices", {})
    specs = {
        name: spec_from_mapping(name, BACKEND, body, where=f"{p.name}:devices.{name}")
        for name, body in devices.items()
    }
    fp4 = [f.name for f in FORMATS.values() if f.element == "fp4"]
    for spec in specs.values():
        for fmt in spec.fp4_formats:
            if fmt not in fp4:
                where = f"{p.name}:devices.{spec.name}.fp4_formats"
                raise XpusimError(unknown_message("4-bit float format", fmt, fp4, where))
    return specs


@lru_cache(maxsize=1)
def catalog() -> Mapping[str, DeviceSpec]:
    """The built-in catalog (parsed once)."""
    return load_catalog()


def aliases(specs: Mapping[str, DeviceSpec] | None = None) -> dict[str, str]:
    """Alias -> canonical device name."""
    specs = catalog() if specs is None else specs
    return {a: s.name for s in specs.values() for a in s.aliases}


def resolve(name: str, specs: Mapping[str, DeviceSpec] | None = None) -> DeviceSpec:
    """The spec called ``name`` or one of its aliases; unknown names raise
    :class:`~xpusim.engine.errors.UnknownNameError` listing the valid ones."""
    specs = catalog() if specs is None else specs
    if name in specs:
        return specs[name]
    al = aliases(specs)
    if name in al:
        return specs[al[name]]
    raise UnknownNameError(unknown_message("gpu device", name, [*specs, *al]))
