"""Assignment solvers shared by the couplings and the metrics.

A helper layer: it imports no other otcfm module.

- ``otcfm._ot.assignment``: the registry of exact square-assignment solvers.
- ``otcfm._ot.auction``: the compiled auction (ApproxOT's CPU backend and the certified
  exact solver).
- ``otcfm._ot.auction_kernels``: its numba kernels (extra ``fast``).
- ``otcfm._ot.warm``: runs the compiled kernels once, so that a process loads them ahead of use.
- ``python -m otcfm._ot``: compiles the numba kernels into numba's cache (``make setup``).
"""
