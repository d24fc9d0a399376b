"""A plan's tasks as one stream: a search's next simulation is queued as soon as its
verdict is known, idle workers speculate on the verdicts to come, and the configurations
each search records are the same whatever the number of workers or the order results
arrive in."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import pytest

from tests.test_run_pipeline import Inline
from xpusim.engine.plan.probe import Pruned, ShapeTask, SimPoint, replay
from xpusim.engine.plan.schedule import Outcome, Stream
from xpusim.engine.plan.space import DeviceTask, Price, Shape, Space

NEEDED = {"a": 5, "b": 2, "c": 13}
"""The fewest replicas that meet the SLOs, per fake device."""


def _shape(device: str, start: int) -> Shape:
    return Shape(device, "gpu", 1, 1, 64, Price(1.0, "test", ""), 1.0, start, 32)


def _task(shape: Shape, device: Any) -> ShapeTask:
    return ShapeTask(shape, {}, "plan.yaml", ".", "count", 1.0, None, 8)


def _fake_map_more(
    order: Callable[[list[int]], int],
) -> Callable[[Sequence[Any], Callable[[int, Any], list[Any]]], Iterator[tuple[int, Any]]]:
    """An executor stand-in: a device point gives its shapes, a simulation meets when it
    has at least the device's needed replicas; ``order`` picks which queued point ends
    next (results arrive in any order)."""

    def run(points: Sequence[Any], more: Callable[[int, Any], list[Any]]) -> Iterator[Any]:
        pts = list(points)
        queue = list(range(len(pts)))
        while queue:
            i = queue.pop(order(queue))
            p = pts[i]
            if isinstance(p, SimPoint):
                out: Any = {"met": p.replicas >= NEEDED[p.task.shape.device], "wall_s": 1.0}
                out["replicas"] = p.replicas
            else:
                out = Pruned(Space(shapes=[_shape(p, 1), _shape(p, 9)]), 0.0)
            yield i, out
            for extra in more(i, out):
                pts.append(extra)
                queue.append(len(pts) - 1)

    return run


def _stream(workers: int, order: Callable[[list[int]], int]) -> Outcome:
    devices = cast(list[DeviceTask], ["a", "b", "c"])
    return Stream(devices, _task, workers).run(_fake_map_more(order))


def _probes(out: Outcome) -> list[list[list[int]]]:
    return [[[r["replicas"] for r in shape] for shape in dev] for dev in out.rows]


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_every_search_records_the_same_configurations_for_any_workers(workers: int) -> None:
    """With one worker and in order, and with more workers and results arriving in a
    shuffled order, every search records the same simulations; only the extra workers
    speculate, and what they ran and no search asked for is counted, not recorded."""
    one = _stream(1, lambda q: 0)
    rng = random.Random(workers)
    many = _stream(workers, lambda q: rng.randrange(len(q)))
    assert _probes(one) == _probes(many)
    assert one.unused == 0 and many.unused > 0
    for dev, shapes in zip("abc", _probes(one), strict=True):
        for probes in shapes:
            assert NEEDED[dev] in probes and (NEEDED[dev] == 1 or NEEDED[dev] - 1 in probes)


def test_a_replayed_search_asks_what_the_live_one_asks() -> None:
    """Replaying a search with its verdicts gives the probe it asks for next, so a
    speculation on a supposed verdict is the simulation the search will want."""
    task = _task(_shape("a", 9), None)
    assert replay(task, []) == (9, 1.0)
    assert replay(task, [True]) == (8, 1.0)
    assert replay(task, [False]) == (18, 1.0)


def test_the_default_map_more_runs_added_points_in_waves() -> None:
    """An executor without its own ``map_more`` runs the points ``more`` adds in later
    waves of ``map``, with the next indices, until none are added."""
    seen: list[tuple[int, Any]] = []

    def more(i: int, out: Any) -> list[Any]:
        return [out + 1] if out < 4 else []

    got = list(Inline().map_more(lambda x: x * 1, [0, 2], more))
    seen.extend(got)
    assert sorted(seen) == [(0, 0), (1, 2), (2, 1), (3, 3), (4, 2), (5, 4), (6, 3), (7, 4)]


def _double(x: int) -> int:
    return 2 * x


def test_the_local_pool_takes_points_while_others_run() -> None:
    """The local executor's ``map_more`` queues the points ``more`` returns at once and
    runs them on its started pool, each result under its own index."""
    from xpusim.plugins.executors.local import LocalExecutor

    ex = LocalExecutor()
    ex.start(workers=2)
    points = [1, 2]

    def more(i: int, out: Any) -> list[Any]:
        new = [out] if out < 16 else []
        points.extend(new)
        return new

    got = dict(ex.map_more(_double, [1, 2], more, workers=2))
    assert got == {i: 2 * p for i, p in enumerate(points)}
    assert sorted(got.values()) == [2, 4, 4, 8, 8, 16, 16]
    assert ex.slots(None) >= 1 and ex.slots(2) == 2
    ex._drop(wait=True)


def test_a_prepared_local_pool_runs_points() -> None:
    """``prepare`` starts what the pool needs before any worker count is known (the fork
    server, where the platform has one); a map after it runs on that state, and the
    contract's default ``prepare`` does nothing."""
    from xpusim.engine.executor import Executor
    from xpusim.plugins.executors.local import LocalExecutor

    ex = LocalExecutor()
    ex.prepare()
    ex.prepare()  # a second call finds it running
    assert dict(ex.map(_double, [1, 2, 3], workers=2)) == {0: 2, 1: 4, 2: 6}
    ex._drop(wait=True)

    class Inline(Executor):
        name = "inline"

        def map(self, fn, points, *, workers=None, address=None, retries=2):  # type: ignore[no-untyped-def]
            yield from enumerate(map(fn, points))

    assert Inline().prepare() is None
    assert dict(Inline().map(_double, [5])) == {0: 10}
