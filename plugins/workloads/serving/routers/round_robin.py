"""The ``round-robin`` router: replica ``i mod R`` for the ``i``-th routed request."""

from __future__ import annotations

from collections.abc import Sequence

from xpusim.engine.policies import ReplicaState, Route, Router


class RoundRobinRouter(Router):
    """Requests go to the replicas in turn, whatever their load."""

    name = "round-robin"
    description = "replica i mod R for the i-th routed request"

    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        """A routing function counting the requests it routed (``seed`` is not used:
        the policy draws nothing)."""
        counter = [0]

        def round_robin(replicas: Sequence[ReplicaState]) -> ReplicaState:
            i = counter[0]
            counter[0] = i + 1
            return replicas[i % len(replicas)]

        return round_robin

    def planned(self, routed: int, replicas: int) -> Sequence[int]:
        """Replica ``i mod R`` of the ``i``-th routed request: known before the run."""
        return [i % replicas for i in range(routed)]
