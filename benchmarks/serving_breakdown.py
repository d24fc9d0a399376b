"""Where a serving world's CPU time goes: timers around the functions that take it.

``benchmarks/serving.py --breakdown`` installs :class:`Breakdown` before the synthetic
case, so each world it simulates reports CPU seconds by part (``breakdown_cpu_s``):

- ``numba load``: importing the compiled loop's module (numba with it) and the calls
  that set up numba's compiler context and load its cached code for the table growth
  (``_Table.reserve``); the first world of a process pays it, a later one almost nothing;
- ``corner pricing``: grid corners priced through the backend (``CostTable.corner``);
- ``compiled loop``: the compiled loop's calls (``_advance``) less the corner pricing
  they call back into, its first call's loading of its own cached code included;
- ``hand-overs``: step rows and counts moved from the loop's buffers (``_hand_over``);
- ``spill checks``: step rows spilled while the world runs (``_StepSpill.check``);
- ``frames``: building the frames once the world is over (``_frames``);
- ``other``: the rest of the call (request table, routing, SimPy, the world's set-up).

The compiled loop's module is patched when it is first imported (an import hook), so
installing the timers imports nothing and the first world still pays numba's load where
it would. Timing costs two ``process_time`` calls a timed call (a few thousand a world).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

NATIVE = "xpusim.plugins.workloads.serving.schedulers.native"
"""The compiled loop's module, patched on import."""


class Breakdown:
    """CPU seconds spent in the timed functions, by part, while installed."""

    def __init__(self) -> None:
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any]] = []
        self._hook: _PatchOnImport | None = None

    def install(self) -> None:
        """Wrap the timed functions (the compiled loop's when its module is imported)."""
        from xpusim.plugins.workloads.serving import cluster, world

        self._wrap(cluster.CostTable, "corner", "corner pricing")
        self._wrap(world._StepSpill, "check", "spill checks")
        self._wrap(world, "_frames", "frames")
        loaded = sys.modules.get(NATIVE)
        if loaded is not None:
            self._native(loaded)
        else:
            self._hook = _PatchOnImport(NATIVE, self._native, self.cpu)
            sys.meta_path.insert(0, self._hook)

    def uninstall(self) -> None:
        """Put every wrapped function back and remove the import hook."""
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()
        if self._hook is not None and self._hook in sys.meta_path:
            sys.meta_path.remove(self._hook)
        self._hook = None

    def take(self, total_cpu_s: float) -> dict[str, float]:
        """The parts of a call of ``total_cpu_s`` CPU seconds timed since the last take,
        rounded to milliseconds, ``other`` the rest; the counters start again."""
        cpu = dict(self.cpu)
        self.cpu.clear()
        loop = cpu.pop("compiled loop calls", 0.0)
        corners = cpu.get("corner pricing", 0.0)
        if loop:
            cpu["compiled loop"] = loop - corners  # the corners are priced from inside it
        cpu["other"] = total_cpu_s - sum(cpu.values())
        return {k: round(v, 3) for k, v in cpu.items()}

    def _native(self, module: ModuleType) -> None:
        self._wrap(module._Table, "reserve", "numba load")
        self._wrap(module, "_advance", "compiled loop calls")
        self._wrap(module, "_hand_over", "hand-overs")

    def _wrap(self, owner: Any, name: str, part: str) -> None:
        original = getattr(owner, name)
        cpu = self.cpu

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                cpu[part] += time.process_time() - c0

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Times the import of module ``name`` (as ``numba load``) and hands the module to
    ``then`` once it has run, then steps aside."""

    def __init__(
        self, name: str, then: Callable[[ModuleType], None], cpu: defaultdict[str, float]
    ) -> None:
        self.name = name
        self.then = then
        self.cpu = cpu

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            c0 = time.process_time()
            run(module)
            self.cpu["numba load"] += time.process_time() - c0
            self.then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
