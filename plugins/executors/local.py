"""The default executor: a local process pool, nothing to start or configure."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from engine.executor import Executor, PointFailure


class LocalExecutor(Executor):
    """Runs points in a pool of worker processes on this machine.

    ``workers`` defaults to the CPU count. A point whose worker process dies (killed, out
    of memory) breaks the pool: the pool is rebuilt and the points that were in flight
    are retried, each at most ``retries`` times before it is recorded as failed.
    """

    name = "local"
    description = "local process pool (default)"

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
        if not points:
            return
        n = max(1, min(workers or os.cpu_count() or 1, len(points)))
        attempts = [0] * len(points)
        pending = list(range(len(points)))
        ctx = mp.get_context("spawn")
        while pending:
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
                futures: dict[Future[Any], int] = {}
                queue = list(pending)
                pending = []
                broken = False

                self._submit(pool, fn, points, queue, futures, attempts, 2 * n)
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = futures.pop(fut)
                        try:
                            yield i, fut.result()
                        except BrokenProcessPool:
                            broken = True
                            if attempts[i] <= retries:
                                pending.append(i)
                            else:
                                yield i, PointFailure("its worker process died", attempts[i])
                        except Exception as exc:
                            yield i, PointFailure(f"{type(exc).__name__}: {exc}", attempts[i])
                    if broken:
                        for fut, i in futures.items():
                            fut.cancel()
                            pending.append(i)
                        futures.clear()
                        pending.extend(queue)
                        break
                    self._submit(pool, fn, points, queue, futures, attempts, 2 * n)

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
