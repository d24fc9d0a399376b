"""Run sweep points on a Dask distributed cluster.

With ``--address tcp://HOST:PORT`` the points go to an existing cluster; without one a
``LocalCluster`` of ``--workers`` processes (one thread each) is started for the sweep
and closed after it. The sweep folder must be reachable at the same path from every
worker (a shared file system), since each point writes its run folder there.

A point whose function raises is recorded as failed at once (it would raise again). A
point whose worker dies is rescheduled by Dask on another worker; Dask gives up on it
once the scheduler's ``distributed.scheduler.allowed-failures`` is spent (``retries`` for
a cluster this executor starts; the scheduler's own setting, 3 by default, for an
existing one), and it is then recorded as failed. Dask is an optional dependency
(``pip install 'xpusim[dask]'``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from xpusim.engine.errors import XpusimError
from xpusim.engine.executor import Executor, PointFailure


def _guarded(fn: Callable[[Any], Any], point: Any) -> Any:
    """Run ``fn(point)`` on a worker, returning a :class:`PointFailure` instead of raising,
    so Dask neither retries a deterministic error nor ships a traceback back."""
    try:
        return fn(point)
    except Exception as exc:  # any error of a point is recorded
        return PointFailure(f"{type(exc).__name__}: {exc}")


class DaskExecutor(Executor):
    """Sweep points as Dask futures."""

    name = "dask"
    description = "Dask distributed cluster (--address, or a LocalCluster of --workers)"

    def map(
        self,
        fn: Callable[[Any], Any],
        points: Sequence[Any],
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = 2,
    ) -> Iterator[tuple[int, Any]]:
        """Submit every point and yield results in completion order."""
        try:
            import dask
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise XpusimError(
                "the dask executor needs Dask distributed; install it with "
                "pip install 'xpusim[dask]' (or pip install 'dask[distributed]')."
            ) from None
        if not points:
            return
        cluster = None
        try:
            if address:
                client = Client(address, timeout="20s")
            else:
                with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
                    cluster = LocalCluster(
                        n_workers=workers or 2,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                    )
                client = Client(cluster)
        except Exception as exc:  # refused, timed out, or something else answered there
            if cluster is not None:
                cluster.close()
            where = f"the Dask scheduler at {address}" if address else "a local Dask cluster"
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            if isinstance(exc, MemoryError):
                why = "what answered there does not speak the Dask protocol"
            raise XpusimError(
                f"cannot reach {where}: {why}. Check the address (tcp://HOST:PORT) and "
                f"that the scheduler is running, e.g. `dask scheduler` on that host."
            ) from None
        try:
            task = functools.partial(_guarded, fn)
            futures = client.map(task, list(points), pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for fut, result in as_completed(futures, with_results=True, raise_errors=False):
                i = index[fut.key]
                if isinstance(result, BaseException):
                    yield i, PointFailure(_died_message(result), retries + 1)
                else:
                    yield i, result
                fut.release()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _died_message(error: BaseException) -> str:
    """The failure text of a point Dask gave up on (its workers kept dying)."""
    if type(error).__name__ == "KilledWorker":
        return (
            "its worker died each time it ran it (killed, or out of memory); Dask gave up "
            f"after the scheduler's allowed failures: {error}"
        )
    return f"{type(error).__name__}: {error}"
