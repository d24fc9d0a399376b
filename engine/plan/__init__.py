"""``xpusim plan``: which hardware, how many, at what cost, to meet the SLOs at a load.

:mod:`.spec` validates the ``plan:`` block; :mod:`.bound` prices a replica's closed-form
capacity; :mod:`.space` builds and prunes the configuration shapes; :mod:`.probe` sizes one
shape in a worker by bisection over simulations; :mod:`.rank` ranks the configurations
that meet every SLO and writes the answer; :mod:`.search` runs it all through a sweep
executor (local or Dask). The contract is in ``docs/plan.md``.
"""
