"""The ``serving`` workload and its world: arrivals, a router, replicas with batch
schedulers and paged KV caches, and the serving metrics.

* :mod:`~xpusim.plugins.workloads.serving.workload` — the ``serving`` kind and its scenario block;
* :mod:`~xpusim.plugins.workloads.serving.arrivals` — arrival processes and length laws;
* :mod:`~xpusim.plugins.workloads.serving.world` — the SimPy world (:func:`simulate_serving`);
* :mod:`~xpusim.plugins.workloads.serving.cluster` — replicas, step pricing, request state;
* :mod:`~xpusim.plugins.workloads.serving.kvcache` — paged KV-cache block accounting;
* :mod:`~xpusim.plugins.workloads.serving.schedulers` — the built-in batch schedulers;
* :mod:`~xpusim.plugins.workloads.serving.routers` — the built-in request routers;
* :mod:`~xpusim.plugins.workloads.serving.steplog` — the columnar step log of a replica;
* :mod:`~xpusim.plugins.workloads.serving.schemas` — the serving frames' schemas;
* :mod:`~xpusim.plugins.workloads.serving.metrics` — summary metrics from the frames;
* :mod:`~xpusim.plugins.workloads.serving.reference` — the continuous-batching world
  written plainly on SimPy resources, the oracle the fast world is tested against.

Importing this package imports none of them; the workload plugin registers them by name
and they load when a scenario uses them.
"""
