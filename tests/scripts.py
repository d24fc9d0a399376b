"""Load a benchmark script (``benchmarks/NAME.py``) as a module, for the tests of its
functions: the scripts are run from the command line and are not a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
"""The benchmark scripts' folder."""


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/{name}.py`` imported as the module ``name`` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
