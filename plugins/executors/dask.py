"""Run sweep points on a Dask distributed cluster.

With ``--address tcp://HOST:PORT`` the points go to an existing cluster; without one a
``LocalCluster`` of ``--workers`` processes is started for the sweep and closed after it.
Dask itself reschedules the tasks of a worker that dies; ``retries`` bounds how many times
a task whose function raised is tried again. Dask is an optional dependency
(``pip install 'xpusim[dask]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from engine.errors import XpusimError
from engine.executor import Executor, PointFailure


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
                cluster = LocalCluster(
                    n_workers=workers or 2,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                client = Client(cluster)
        except OSError as exc:
            raise XpusimError(
                f"cannot reach the Dask scheduler at {address}: {exc}. Check the address "
                f"(tcp://HOST:PORT) and that the scheduler is running."
            ) from None
        try:
            futures = client.map(fn, list(points), pure=False, retries=retries)
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in as_completed(futures):
                i = index[fut.key]
                if fut.status == "finished":
                    yield i, fut.result()
                else:
                    error = fut.exception()
                    yield i, PointFailure(f"{type(error).__name__}: {error}", retries + 1)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
