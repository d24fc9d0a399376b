"""Routers: which replica an arriving request joins.

* ``round-robin`` — replica ``i mod R`` for the ``i``-th routed request;
* ``least-outstanding`` — the replica with the fewest requests routed and not yet
  finished (waiting plus running), the lowest index on a tie.

A router is a callable ``route(replicas) -> Replica`` called once per request at its
arrival instant; it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xpusim.plugins.workloads.serving.cluster import Replica

ROUTERS = ("round-robin", "least-outstanding")
"""Router names a scenario may use in ``workload.router``."""

Route = Callable[[Sequence[Replica]], Replica]


def make_router(name: str) -> Route:
    """The routing function called ``name`` (one of :data:`ROUTERS`)."""
    if name == "round-robin":
        counter = [0]

        def round_robin(replicas: Sequence[Replica]) -> Replica:
            i = counter[0]
            counter[0] = i + 1
            return replicas[i % len(replicas)]

        return round_robin
    if name == "least-outstanding":

        def least_outstanding(replicas: Sequence[Replica]) -> Replica:
            best = replicas[0]
            low = best.outstanding
            for r in replicas:
                if r.outstanding < low:
                    best, low = r, r.outstanding
            return best

        return least_outstanding
    raise ValueError(f"unknown router {name!r}; valid routers: {', '.join(ROUTERS)}")
