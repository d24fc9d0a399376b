"""The ``least-outstanding`` router: the replica with the fewest requests routed and not
yet finished (waiting plus running), the lowest index on a tie."""

from __future__ import annotations

from collections.abc import Sequence

from xpusim.engine.policies import ReplicaState, Route, Router


class LeastOutstandingRouter(Router):
    """Join-the-shortest-queue over every replica's outstanding requests."""

    name = "least-outstanding"
    description = "the replica with the fewest outstanding requests, lowest index on a tie"

    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        """A stateless routing function (``seed`` is not used: the policy draws nothing)."""

        def least_outstanding(replicas: Sequence[ReplicaState]) -> ReplicaState:
            best = replicas[0]
            low = best.outstanding
            for r in replicas:
                if r.outstanding < low:
                    best, low = r, r.outstanding
            return best

        return least_outstanding
