"""Compile the numba kernels into numba's on-disk cache: ``python -m otcfm._ot``.

Each kernel is compiled on its first call and cached beside its module (``cache=True``), so
the first exact or approximate coupling of a fresh install would otherwise pay the
compilation (about 10 s on 2 cores). ``make setup`` runs this once after installing. It
solves small random problems through every compiled path: the certified exact auction (with
candidate lists and its multiscale warm start), the float32 auction of ApproxOT, and the
near-permutation entropic solve.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from otcfm._ot import auction_kernels

# a batch large enough for every path: candidate lists (auction.LISTS_MIN) and coarse levels
_N = 512


def compile_kernels(n: int = _N, seed: int = 0) -> float:
    """Run every compiled path once on random points; returns the seconds it took."""
    from otcfm._ot.auction import exact_assignment_gram, solve_auction
    from otcfm._ot.sparse_sinkhorn import sparse_sinkhorn

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 2)).astype(np.float32)
    b = rng.standard_normal((n, 2)).astype(np.float32)
    found, reduced, lo = exact_assignment_gram(a @ b.T, (a * a).sum(1), (b * b).sum(1))
    if found is None or found.prices is None:  # pragma: no cover - routine on such points
        raise RuntimeError("the certified auction gave no certificate on random points")
    reduced = reduced.copy()  # the solver's workspace: valid until its next call
    solve_auction(reduced.astype(np.float32), 0.01, scaling=4.0, max_bids=100 * n, warm=True)
    # the entropic solve near a permutation, from the assignment's duals (f0 + g0 <= C)
    q = found.prices
    f0 = (reduced + q[None, :]).min(1) + lo
    full = reduced + lo[:, None]
    sparse_sinkhorn(full, float(full.max()) / 2000.0, f0, -q, tol=1e-6, max_iter=200,
                    max_row=64)
    return time.perf_counter() - start


def main() -> int:
    if not auction_kernels.available():
        print("numba is not installed (extra 'fast'): nothing to compile")
        return 0
    seconds = compile_kernels()
    print(f"numba kernels compiled and cached in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
