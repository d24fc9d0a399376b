"""The ``training`` workload and its world.

* :mod:`~xpusim.plugins.workloads.training.workload` — the ``training`` kind, its scenario
  block, the memory fit and the metrics;
* :mod:`~xpusim.plugins.workloads.training.steps` — the step model (1F1B with its bubble,
  collectives and overlap), the failure world with checkpoint/restart, and the frames;
* :mod:`~xpusim.plugins.workloads.training.pipeline` — the 1F1B and interleaved schedule;
* :mod:`~xpusim.plugins.workloads.training.memory` — memory per device.
"""
