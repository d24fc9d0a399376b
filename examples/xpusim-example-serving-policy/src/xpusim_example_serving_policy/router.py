"""The ``power-of-two-choices`` router: the less loaded of two replicas drawn at random.

For every arriving request the router draws two distinct replicas uniformly at random and
sends the request to the one with fewer outstanding requests (routed there and not yet
finished, waiting plus running); on a tie it keeps the first one drawn. Mitzenmacher
("The power of two choices in randomized load balancing", IEEE TPDS 12(10), 2001) showed
that two random choices bring the longest queue down exponentially compared with one,
to within a constant of asking every server, while reading the load of only two of them;
it is the ``least request`` balancing of proxies such as Envoy and NGINX.

With two replicas both are always drawn, so the router sends every request to the less
loaded one (only ties are broken at random); with more it reads two of them. The draws
come from a generator seeded by the run's seed, so the same scenario routes the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from xpusim.engine.policies import ReplicaState, Route, Router


class PowerOfTwoChoicesRouter(Router):
    """Join the shorter of two randomly drawn replicas (see the module docstring)."""

    name = "power-of-two-choices"
    description = "the replica with fewer outstanding requests of two drawn at random (seeded)"

    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        """A routing function drawing from its own generator seeded by ``seed``."""
        rng = random.Random(seed)

        def power_of_two_choices(replicas: Sequence[ReplicaState]) -> ReplicaState:
            if len(replicas) == 1:
                return replicas[0]
            first, second = rng.sample(range(len(replicas)), 2)
            a, b = replicas[first], replicas[second]
            return b if b.outstanding < a.outstanding else a

        return power_of_two_choices
