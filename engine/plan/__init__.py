"""``xpusim plan``: which hardware, how many, at what cost, to meet the SLOs at a load.

:mod:`.spec` validates the ``plan:`` block; :mod:`.bound` prices a replica's closed-form
capacity; :mod:`.space` builds and prunes the configuration shapes; :mod:`.probe` holds
each shape's search (bisection over simulations) and the tasks a worker runs;
:mod:`.schedule` streams those tasks through a sweep executor (local or Dask), keeping
every worker busy; :mod:`.rank` ranks the configurations that meet every SLO, writes the
answer and flags the prices compared; :mod:`.search` runs it all. A workload is read only
through its declared plan knobs. The contract is in ``docs/plan.md``.
"""
