"""Run the compiled kernels once on a small problem: compiled into, or loaded from, the cache.

numba compiles a kernel on its first call and keeps it in its on-disk cache (``cache=True``):
``python -m otcfm._ot`` (run by ``make setup``) does that for every path up front. A process
still pays, on its first call of each path, numba's import and the loading and type
dispatch of the cached kernels (about a second in all for the exact auction on 2 cores).
:func:`load_kernels` makes those first calls on a small fixed problem, so that a training
run pays them before its clock starts (``Coupling.prepare``) and not inside its first
coupled batch or validation.

Paths (:data:`KERNEL_PATHS`): ``"exact"`` (the certified float64 auction with its candidate
lists and multiscale warm start, from a float32 Gram matrix as ExactOT builds it and from a
cost matrix as the W2 metric does), ``"approx"`` (ApproxOT's float32 auction) and
``"entropic"`` (the near-permutation sparse Sinkhorn, from the exact assignment's duals).
The problem's points come from a numpy generator of fixed seed: no caller's randomness is
used.
"""

from __future__ import annotations

import threading
import time

import numpy as np

KERNEL_PATHS = ("exact", "approx", "entropic")
WARM_N = 512  # points per side: large enough for candidate lists and two coarse levels
_loaded: set[str] = set()
_lock = threading.Lock()


def load_kernels(*paths: str, n: int = WARM_N, force: bool = False) -> float:
    """Call every kernel of ``paths`` once (all of :data:`KERNEL_PATHS` by default).

    Returns the seconds it took. Without numba (extra ``fast``) nothing runs (0.0). A path
    already run in this process is skipped unless ``force``; an unknown path raises
    ValueError.
    """
    wanted = paths or KERNEL_PATHS
    unknown = [p for p in wanted if p not in KERNEL_PATHS]
    if unknown:
        raise ValueError(f"unknown kernel path(s) {unknown}; known: {', '.join(KERNEL_PATHS)}")
    from otcfm._ot import auction_kernels  # numba loads slowly: only when asked to

    if not auction_kernels.available():
        return 0.0
    start = time.perf_counter()
    with _lock:
        todo = [p for p in KERNEL_PATHS if p in wanted and (force or p not in _loaded)]
        if todo:
            _run(todo, n)
            _loaded.update(todo)
    return time.perf_counter() - start


def _run(paths: list[str], n: int) -> None:
    from otcfm._ot.auction import exact_assignment, exact_assignment_gram, solve_auction
    from otcfm._ot.sparse_sinkhorn import sparse_sinkhorn

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, 2)).astype(np.float32)
    b = rng.standard_normal((n, 2)).astype(np.float32)
    found, reduced, lo = exact_assignment_gram(a @ b.T, (a * a).sum(1), (b * b).sum(1))
    if found is None or found.prices is None:  # pragma: no cover - routine on such points
        raise RuntimeError("the certified auction gave no certificate on random points")
    reduced = reduced.copy()  # the solver's workspace: valid until this thread's next call
    if "exact" in paths:  # the metric's entry: a float64 cost matrix, reduced in place
        exact_assignment(reduced + lo[:, None], overwrite=True)
    if "approx" in paths:
        solve_auction(reduced.astype(np.float32), 0.01, scaling=4.0, max_bids=100 * n,
                      warm=True)
    if "entropic" in paths:  # the solve near a permutation, from the duals f0 + g0 <= C
        q = found.prices
        f0 = (reduced + q[None, :]).min(1) + lo
        full = reduced + lo[:, None]
        sparse_sinkhorn(full, float(full.max()) / 2000.0, f0, -q, tol=1e-6, max_iter=200,
                        max_row=64)
