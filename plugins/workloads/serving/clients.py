"""Clients that keep at most a fixed number of requests in flight.

A benchmark client with a concurrency limit (vLLM's ``benchmark_serving.py
--max-concurrency N``, genai-perf's ``--concurrency N``) sends a request only while fewer
than ``N`` of its requests are in flight, sent and not finished; the ones that come due
meanwhile wait for a free slot in the order they came due (an ``asyncio.Semaphore``
wakes its waiters first come, first served). With every request due at once, that is
``N`` closed-loop clients, each sending its next request the moment the previous one
finishes.

The serving world gates its arrival process on :class:`ClientSlots`: a slot is taken when
a request is sent and given back when the replica that served it finishes it. A
scheduler reports a finished request by raising the request table's finished count,
``done`` (:func:`xpusim.engine.policies.finish_request`, or the built-in loops' own
arithmetic), at the instant the request finishes, so :class:`ClientRequestTable` turns
that count into given-back slots and wakes the waiting arrival process at that same
instant. A run without a limit uses the plain table, whose ``done`` is an attribute: the
hot loops pay nothing for this.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
import simpy

from xpusim.plugins.workloads.serving.cluster import RequestTable
from xpusim.plugins.workloads.serving.metrics import quantile


class ClientSlots:
    """``size`` slots for requests in flight; :attr:`free` counts the idle ones.

    The arrival process takes a slot per request it sends (:meth:`take`) and, when none is
    free, waits on :meth:`wait`'s event, which :meth:`give_back` triggers.
    """

    __slots__ = ("_waiter", "env", "free", "size", "waits")

    def __init__(self, env: simpy.Environment, size: int) -> None:
        if size < 1:
            raise ValueError(f"a client keeps at least one request in flight, got {size}")
        self.env = env
        self.size = size
        self.free = size
        self._waiter: simpy.Event | None = None
        self.waits = array("d")
        """Seconds each request sent waited for its slot after it came due, in order."""

    def take(self, waited: float = 0.0) -> None:
        """Take a free slot for a request sent now, ``waited`` seconds after it came due."""
        if self.free < 1:
            raise AssertionError("a request was sent with every client slot taken")
        self.free -= 1
        self.waits.append(waited)

    def wait(self) -> simpy.Event:
        """An event that succeeds at the next instant a slot is given back."""
        if self._waiter is None:
            self._waiter = self.env.event()
        return self._waiter

    def give_back(self, count: int) -> None:
        """``count`` requests finished now: their slots are free again."""
        self.free += count
        if self.free > self.size:
            raise AssertionError(f"{self.free} client slots free of {self.size}")
        ev = self._waiter
        if ev is not None and count > 0:
            self._waiter = None
            ev.succeed()


class ClientRequestTable(RequestTable):
    """A :class:`~.cluster.RequestTable` whose finished count gives back client slots:
    each increase of :attr:`done` frees that many of ``slots``."""

    def __init__(
        self,
        arrival: Sequence[float],
        prompt: Sequence[int],
        output: Sequence[int],
        slots: ClientSlots,
        replicas: int | None = None,
    ) -> None:
        self._done = 0
        self.slots = slots
        super().__init__(arrival, prompt, output, replicas)

    @property
    def done(self) -> int:
        """Requests finished so far."""
        return self._done

    @done.setter
    def done(self, value: int) -> None:
        gone = value - self._done
        self._done = value
        if gone > 0:
            self.slots.give_back(gone)


def wait_metrics(waits: Sequence[float]) -> dict[str, float | None]:
    """Summary keys of the waits for a client slot (:attr:`ClientSlots.waits`):
    ``client_wait_mean_s`` and ``client_wait_p99_s`` over the requests sent, and
    ``client_waited_share``, the share that waited at all."""
    w = np.asarray(waits, dtype=np.float64)
    if not w.size:
        return {"client_wait_mean_s": None, "client_wait_p99_s": None, "client_waited_share": None}
    return {
        "client_wait_mean_s": float(w.mean()),
        "client_wait_p99_s": quantile(w, 0.99),
        "client_waited_share": float(np.count_nonzero(w > 0.0) / w.size),
    }
