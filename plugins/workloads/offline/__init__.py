"""The ``offline`` workload: batch inference of a fixed set of inputs.

* :mod:`~xpusim.plugins.workloads.offline.workload` — the ``offline`` kind and its scenario
  block (decoder models reuse the serving world with every request present at t = 0);
* :mod:`~xpusim.plugins.workloads.offline.world` — batched forward passes of other models
  (:func:`~xpusim.plugins.workloads.offline.world.simulate_forward`).
"""
