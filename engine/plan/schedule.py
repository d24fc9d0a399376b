"""Running a plan's tasks through an executor as a stream, every worker kept busy.

One executor call (:meth:`~xpusim.engine.executor.Executor.map_more`) runs the whole
search: first one task per device (or device and tensor degree) that builds and prunes
its shapes, then the simulations of every shape's search. There are no rounds and no
barriers: the moment a device's shapes are known their first simulations are queued, and
the moment a simulation's verdict is known its search's next simulation is queued, so a
worker never waits for a slower task of another search.

When fewer simulations are wanted than there are workers (a few searches left, each
waiting on its verdict), the idle workers *speculate*: they run the simulations a
waiting search will ask for next under either verdict (and the ones after, two verdicts
deep), found by replaying the search with the supposed verdicts
(:func:`~xpusim.engine.plan.probe.replay`). A search takes a result only when it asks for
that configuration itself, so the configurations recorded, the ranking and the answer
are the same for any number of workers; a speculation it never asks for is counted
(``unused``) and dropped. With one worker nothing is ever speculated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from xpusim.engine.executor import PointFailure
from xpusim.engine.plan.probe import (
    Pruned,
    ShapeTask,
    SimPoint,
    Steps,
    advance,
    failed_row,
    replay,
    shape_steps,
)
from xpusim.engine.plan.space import DeviceTask, Shape

Probe = tuple[int, float | None]
"""``(replicas, rate)``: one configuration of a shape."""

MapMore = Callable[[Sequence[Any], Callable[[int, Any], list[Any]]], Iterator[tuple[int, Any]]]
"""``map_more(points, more)``: the executor's :meth:`map_more` with the plan's function,
workers and address bound."""

SPECULATION_DEPTH = 2
"""How many supposed verdicts ahead of a waiting search idle workers may simulate."""


@dataclass
class _Search:
    """One shape's search: its task, live generator, verdicts so far, the rows it took,
    and the probe it waits for (``None`` once it has ended)."""

    task: ShapeTask
    device: int
    steps: Steps
    want: Probe | None
    verdicts: list[bool] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    """What the stream produced: each device task's result (in task order), each shape's
    configurations simulated (per device task, in shape order), and how many speculative
    simulations ran and were not needed (``unused``, with their wall and CPU seconds)."""

    pruned: list[Pruned | PointFailure]
    rows: list[list[list[dict[str, Any]]]]
    unused: int
    unused_s: float
    unused_cpu_s: float


class Stream:
    """The state of one plan's stream of tasks (see the module docstring).

    ``make_task(shape, device_task)`` builds a shape's sizing task; ``workers`` is how
    many tasks the executor runs at once (speculation fills up to it);
    ``on_progress(done)`` hears, after each result, the device tasks whose searches have
    all ended (by index)."""

    def __init__(
        self,
        device_tasks: Sequence[DeviceTask],
        make_task: Callable[[Shape, DeviceTask], ShapeTask],
        workers: int,
        on_progress: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.device_tasks = list(device_tasks)
        self.make_task = make_task
        self.workers = max(1, workers)
        self.on_progress = on_progress
        self.points: list[Any] = list(self.device_tasks)
        self.pruned: dict[int, Pruned | PointFailure] = {}
        self.searches: list[_Search] = []
        self.sid_of: dict[int, int] = {}
        self.by_device: dict[int, list[int]] = {}
        self.inflight: set[tuple[int, Probe]] = set()
        self.results: dict[tuple[int, Probe], dict[str, Any]] = {}
        self._out: list[Any] = []

    def run(self, map_more: MapMore) -> Outcome:
        """Run every task through ``map_more`` and gather the outcome in task order."""
        for _ in map_more(list(self.points), self.more):
            pass
        for s in self.searches:  # a result the executor never gave back ends its search
            s.want = None
        unused = list(self.results.values())
        pruned = [
            self.pruned.get(d, PointFailure("its task gave no result"))
            for d in range(len(self.device_tasks))
        ]
        rows = [
            [self.searches[i].rows for i in self.by_device.get(d, [])]
            for d in range(len(self.device_tasks))
        ]
        return Outcome(
            pruned,
            rows,
            len(unused),
            sum(float(r.get("wall_s", 0.0)) for r in unused),
            sum(float(r.get("cpu_s", 0.0)) for r in unused),
        )

    def more(self, index: int, result: Any) -> list[Any]:
        """Take the result of point ``index`` and return the points to run next."""
        self._out = []
        point = self.points[index]
        if isinstance(point, SimPoint):
            key = (self._sid(point), (point.replicas, point.rate))
            self.inflight.discard(key)
            row = failed_row(point, result) if isinstance(result, PointFailure) else result
            self.results[key] = row
            self._serve(key[0])
        else:
            self._shapes(index, result)
        self._speculate()
        if self.on_progress is not None:
            self.on_progress(self.devices_done())
        self.points.extend(self._out)
        return self._out

    def devices_done(self) -> set[int]:
        """Device tasks pruned whose searches have all ended."""
        return {
            d
            for d in self.pruned
            if all(self.searches[i].want is None for i in self.by_device.get(d, []))
        }

    def _sid(self, point: SimPoint) -> int:
        """The search a simulation belongs to (its task object is the search's own)."""
        return self.sid_of[id(point.task)]

    def _shapes(self, device: int, result: Any) -> None:
        """A device task's result: start a search for each of its shapes."""
        self.pruned[device] = result
        if isinstance(result, PointFailure):
            return
        task = self.device_tasks[device]
        ids = []
        for shape in result.space.shapes:
            st = self.make_task(shape, task)
            gen = shape_steps(st)
            self.searches.append(_Search(st, device, gen, advance(gen, None)))
            ids.append(len(self.searches) - 1)
            self.sid_of[id(st)] = ids[-1]
        self.by_device[device] = ids
        for i in ids:
            self._serve(i)

    def _serve(self, sid: int) -> None:
        """Feed search ``sid`` every result it waits for that is already known, and queue
        the simulation it then waits for unless it is already running."""
        s = self.searches[sid]
        while s.want is not None and (sid, s.want) in self.results:
            row = self.results.pop((sid, s.want))
            s.rows.append(row)
            s.verdicts.append(bool(row["met"]))
            s.want = advance(s.steps, bool(row["met"]))
        if s.want is not None and (sid, s.want) not in self.inflight:
            self._run(sid, s.want)

    def _run(self, sid: int, probe: Probe) -> None:
        """Queue one simulation of search ``sid``."""
        self.inflight.add((sid, probe))
        self._out.append(SimPoint(self.searches[sid].task, *probe))

    def _speculate(self) -> None:
        """Fill idle workers with the simulations waiting searches may ask for next."""
        if len(self.inflight) >= self.workers:
            return
        for cand in self._candidates():
            if len(self.inflight) >= self.workers:
                return
            self._run(*cand)

    def _candidates(self) -> Iterator[tuple[int, Probe]]:
        """Supposed next probes of the waiting searches, nearest first: one verdict ahead
        (a miss before a pass), then two; none already run or running."""
        waiting = [
            i
            for i, s in enumerate(self.searches)
            if s.want is not None and (i, s.want) in self.inflight
        ]
        seen: set[tuple[int, Probe]] = set()
        for depth in range(1, SPECULATION_DEPTH + 1):
            for i in waiting:
                s = self.searches[i]
                for supposed in product((False, True), repeat=depth):  # misses first
                    probe = replay(s.task, [*s.verdicts, *supposed])
                    if probe is None or (i, probe) in seen:
                        continue
                    seen.add((i, probe))
                    if (i, probe) not in self.inflight and (i, probe) not in self.results:
                        yield i, probe
