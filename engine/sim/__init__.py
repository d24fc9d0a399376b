"""The SimPy worlds of each workload kind over a shared cluster model.

* :mod:`xpusim.engine.sim.cluster` — replicas, step pricing with shape buckets, request state;
* :mod:`xpusim.engine.sim.kvcache` — paged KV-cache block accounting;
* :mod:`xpusim.engine.sim.schedulers` — static, continuous and chunked-prefill batching;
* :mod:`xpusim.engine.sim.router` — round-robin and least-outstanding routing;
* :mod:`xpusim.engine.sim.serving` — the LLM serving world (:func:`simulate_serving`);
* :mod:`xpusim.engine.sim.offline` — offline/batch inference (:func:`simulate_forward`);
* :mod:`xpusim.engine.sim.events` — the columnar event log and the frame schemas.
"""

from xpusim.engine.sim.events import DEVICES_SCHEMA, REQUESTS_SCHEMA, STEPS_SCHEMA, TBT_SCHEMA
from xpusim.engine.sim.schedulers import SCHEDULERS, SchedulerSpec
from xpusim.engine.sim.serving import ServingResult, simulate_serving

__all__ = [
    "DEVICES_SCHEMA",
    "REQUESTS_SCHEMA",
    "SCHEDULERS",
    "STEPS_SCHEMA",
    "TBT_SCHEMA",
    "SchedulerSpec",
    "ServingResult",
    "simulate_serving",
]
