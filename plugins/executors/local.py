"""The default executor: a local process pool, nothing to start or configure.

Workers are started by a fork server where the platform has one: a clean,
single-threaded process that imports the engine and every installed plugin (torch
among them) once, then forks each worker from that warm state, so a worker is ready in
a fraction of a second instead of re-importing for seconds, and a pool rebuilt after a
worker died starts as fast. Elsewhere workers are spawned. Either way a worker builds
its plugin host once and reuses it for every point it runs.

The pool outlives one :meth:`LocalExecutor.map`: the next call with no more workers runs
on the same warm processes (their imports and caches kept), so a caller that maps in
rounds pays for starting workers once. :meth:`LocalExecutor.prepare` starts the fork
server alone (``xpusim plan`` calls it first thing, so that the server's imports run while
the command imports the planner and loads the scenario); :meth:`LocalExecutor.start`
starts the pool in a background thread, so a caller that starts it before preparing its
points finds its workers ready. :meth:`LocalExecutor.map_more` takes new points
while others run: each starts as soon as a worker is free.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from importlib.metadata import entry_points
from multiprocessing.context import BaseContext
from typing import Any

from xpusim.engine.executor import Executor, PointFailure

# Imported by the fork server before it forks workers (besides the plugins themselves).
_PRELOAD = [
    "xpusim.engine.host",
    "xpusim.engine.run",
    "xpusim.engine.scenario",
    "xpusim.engine.sweep",
    "polars",
]


def _plugin_modules() -> list[str]:
    """The modules of every installed ``xpusim`` entry point."""
    return sorted({ep.value.split(":")[0] for ep in entry_points(group="xpusim")})


def pool_context() -> BaseContext:
    """A fork server preloaded with the engine and plugins, or spawn where there is none."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # A plugin that fails to import is skipped by the fork server; the worker then
    # reports it the same way the command line does.
    ctx.set_forkserver_preload(_PRELOAD + _plugin_modules())
    return ctx


def _warm() -> None:
    """Pool initializer: build the worker's plugin host before its first point.

    A failure here is left for the first point to meet and report as its own error.
    """
    try:
        from xpusim.engine.sweep import worker_host

        worker_host()
    except Exception:  # reported by the point that needs the host
        pass


class LocalExecutor(Executor):
    """Runs points in a pool of worker processes on this machine.

    ``workers`` defaults to the CPU count. A point whose worker process dies (killed, out
    of memory) breaks the pool: the pool is rebuilt and the points that were in flight
    are retried, each at most ``retries`` times before it is recorded as failed. A point
    whose function raises is recorded as failed at once (a retry would raise again).
    """

    name = "local"
    description = "local process pool (default)"

    def __init__(self) -> None:
        self._kept: ProcessPoolExecutor | None = None
        self._kept_size = 0
        self._starting: threading.Thread | None = None

    def slots(self, workers: int | None = None, address: str | None = None) -> int:
        """Points run at once: ``workers``, else the CPU count."""
        return max(1, workers or os.cpu_count() or 1)

    def prepare(self) -> None:
        """Start the fork server (where the platform has one): its imports of the engine
        and the plugins run in its own process while the caller loads its scenario, so
        the first workers fork from a warm state sooner. Pools made later connect to it."""
        ctx = pool_context()
        if ctx.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def start(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        warmup: Callable[[], Any] | None = None,
    ) -> None:
        """Start the pool of ``workers`` processes: a background thread submits one
        warm-up task per worker (``warmup``, else an empty one), which forks each worker
        from the fork server (whose imports run meanwhile in its own process) and builds
        its plugin host. A map on the same pool does not wait for it: its points queue
        behind the warm-ups, and each worker takes them as soon as it is warm."""
        if self._starting is not None:
            return
        size = workers or os.cpu_count() or 1
        pool = self._pool(size)
        self._starting = threading.Thread(
            target=_prestart, args=(pool, size, warmup), name="xpusim-pool-start", daemon=True
        )
        self._starting.start()

    def _join_start(self, size: int) -> None:
        """Wait for a background start to have submitted its warm-ups before the pool is
        replaced (a map with another number of workers)."""
        if self._starting is not None and size != self._kept_size:
            self._starting.join()
        if self._starting is not None and not self._starting.is_alive():
            self._starting = None

    def map(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn`` over ``points`` in worker processes, yielding results as they end."""
        return self.map_more(fn, points, _nothing, workers=workers, retries=retries)

    def map_more(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        more: Callable[[int, Any], Iterable[Any]],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """:meth:`map` taking the points ``more(index, result)`` returns as each result
        is taken (see :meth:`Executor.map_more`): each is queued at once and starts as
        soon as a worker is free."""
        points = list(points)
        if not points:
            return
        size = workers or os.cpu_count() or 1
        self._join_start(size)
        attempts = [0] * len(points)
        pending = list(range(len(points)))
        while pending:
            pool = self._pool(size)
            broken = False
            futures: dict[Future[Any], int] = {}
            try:
                queue, pending = list(pending), []
                self._submit(pool, fn, points, queue, futures, attempts, 2 * size)
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = futures.pop(fut)
                        outcome = self._outcome(fut, attempts[i])
                        if outcome is _DIED:
                            broken = True
                            if attempts[i] <= retries:
                                pending.append(i)
                            else:
                                yield (
                                    i,
                                    PointFailure(
                                        f"its worker process died {attempts[i]} times "
                                        f"(killed, or out of memory)",
                                        attempts[i],
                                    ),
                                )
                            continue
                        yield i, outcome
                        for extra in more(i, outcome):
                            points.append(extra)
                            attempts.append(0)
                            queue.append(len(points) - 1)
                    if broken:
                        pending.extend(futures.values())
                        futures.clear()
                        pending.extend(queue)
                        break
                    self._submit(pool, fn, points, queue, futures, attempts, 2 * size)
            finally:
                if broken or futures:  # a dead worker, or a caller that stopped early
                    self._drop(wait=not broken)

    def _pool(self, size: int) -> ProcessPoolExecutor:
        """The kept pool when it has ``size`` workers, else a new one of that size (the
        old one shut down)."""
        if self._kept is not None and self._kept_size == size:
            return self._kept
        self._drop(wait=True)
        self._kept = ProcessPoolExecutor(
            max_workers=size, mp_context=pool_context(), initializer=_warm
        )
        self._kept_size = size
        return self._kept

    def _drop(self, wait: bool) -> None:
        """Shut the kept pool down (its queued points cancelled)."""
        if self._kept is not None:
            self._kept.shutdown(wait=wait, cancel_futures=True)
        self._kept, self._kept_size = None, 0

    @staticmethod
    def _outcome(fut: Future[Any], attempts: int) -> Any:
        """The future's result, a :class:`PointFailure`, or ``_DIED`` for a dead worker."""
        try:
            return fut.result()
        except BrokenProcessPool:
            return _DIED
        except Exception as exc:  # any error of a point is recorded
            return PointFailure(f"{type(exc).__name__}: {exc}", attempts)

    @staticmethod
    def _submit(
        pool: ProcessPoolExecutor,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        queue: list[int],
        futures: dict[Future[Any], int],
        attempts: list[int],
        limit: int,
    ) -> None:
        """Keep at most ``limit`` points in flight, taking them from ``queue``."""
        while queue and len(futures) < limit:
            i = queue.pop(0)
            attempts[i] += 1
            futures[pool.submit(fn, points[i])] = i


_DIED = object()
"""Marker: the point's worker process died before it finished."""


def _prestart(pool: ProcessPoolExecutor, size: int, warmup: Callable[[], Any] | None) -> None:
    """Submit one warm-up task per worker to ``pool`` (each submit forks a worker; errors
    are left for the next map to meet)."""
    with contextlib.suppress(Exception):  # a pool shut down meanwhile, or a failed fork
        for _ in range(size):
            pool.submit(_ready, warmup)


def _ready(warmup: Callable[[], Any] | None) -> None:
    """The task :meth:`LocalExecutor.start` runs once per worker: ``warmup``, if any, its
    errors ignored (the points that need what it loads will meet them)."""
    if warmup is None:
        return
    with contextlib.suppress(Exception):  # reported by the point that meets it
        warmup()


def _nothing(index: int, result: Any) -> list[Any]:
    """``more`` of a plain :meth:`LocalExecutor.map`: no further points."""
    return []
