"""ApproxOT on CPU: compiled Gauss-Seidel auction, eps-scaling, multiscale warm start.

Multiscale warm start. The optimal dual potentials of a random half of the points
approximate those of the whole problem (both estimate the potentials of the underlying
distributions). So a batch of n >= ``COARSE_MIN`` points first solves the problem on n / 2
random rows and columns (recursively, to the same tolerance), extends those column prices to
every column by a c-transform pair (f_i = min over the subset of C_ij + p_j, then
p_j = max_i f_i - C_ij, a certified lower bound on the optimum), and runs the auction from
there at an eps a few times the certifying one. Measured on the 2-D benchmark tasks this cuts
the bids per row from about 10-20 (cold eps-scaling) to 2-4.

The subsets come from a generator seeded by n: the same cost matrix gives the same pairing.
The certificate (module ``_approx``) holds whatever the starting prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COARSE_MIN = 128  # smallest batch solved with a multiscale warm start
COARSE_RATIO = 2  # the coarse problem has n / COARSE_RATIO points
WARM_EPS = 3.0  # first eps after a warm start, in certifying eps
_F32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class AuctionResult:
    """Column of each row, its cost U and a certified lower bound LB (reduced units, sums)."""

    cols: np.ndarray | None
    cost: float
    lower_bound: float
    prices: np.ndarray
    bids: int
    phases: int
    eps: float


def gap_bound(u: float, lb: float, ind: float) -> float:
    """(U - LB) / (IND - LB): an upper bound on the coupling gap given LB <= OPT <= U."""
    if not math.isfinite(u):
        return math.inf
    lb = min(lb, u)
    if u >= ind:
        return 1.0 if ind > lb else 0.0
    return max(0.0, (u - lb) / (ind - lb))


def solve_auction(
    cost: np.ndarray,
    tol: float,
    *,
    scaling: float,
    max_bids: int,
    warm: bool,
    ind: float | None = None,
    cmax: float | None = None,
    rng: np.random.Generator | None = None,
) -> AuctionResult:
    """Certified approximate assignment of a float32 (n, n) cost with row minima 0.

    Stops when the gap bound (U - LB) / (IND - LB) is at most ``tol``, eps reaches the float32
    floor, or ``max_bids`` bids are spent (then ``cols`` is the best complete assignment
    found, or None). ``ind`` (sum of the costs / n) and ``cmax``: if already known.
    """
    from otcfm.couplings import _auction_kernels as kernels  # numba: loaded on first use

    n = cost.shape[0]
    rng = np.random.default_rng(n) if rng is None else rng
    if ind is None or cmax is None:
        ind, cmax = float(cost.sum(dtype=np.float64)) / n, float(cost.max())
    floor = 8.0 * _F32 * cmax
    lb = -math.inf
    if warm and n >= COARSE_MIN:
        prices, lb = _coarse_prices(cost, tol, scaling, max_bids, rng)
        spread = ind - lb if 0.0 <= lb < ind else ind
        # a few times the certifying eps n * eps = tol * (IND - OPT), but not so small that
        # the first complete pairing takes long at a tight tol (later phases refine)
        eps = max(WARM_EPS * max(tol, 0.01) * spread / n, floor)
    else:
        prices = np.zeros(n, np.float32)
        eps = ind / n / 2.0
    owner = np.full(n, -1, np.int64)
    assigned = np.full(n, -1, np.int64)
    best_cols, best_u = None, math.inf
    bids = phases = 0
    rows = np.arange(n)
    while True:
        bids += kernels.bid(cost, prices, eps, owner, assigned, max_bids - bids)
        phases += 1
        lb = max(lb, kernels.dual_value(cost, prices) - _slack(n, cmax, prices))
        if assigned.min() >= 0:
            u = float(cost[rows, assigned].sum(dtype=np.float64))
            if u < best_u:
                best_cols, best_u = assigned.copy(), u
        if gap_bound(best_u, lb, ind) <= tol or eps <= floor or bids >= max_bids:
            break
        # n * eps <= tol * (IND - U) certifies the next phase: no need to go finer.
        target = tol * (ind - best_u) / n if math.isfinite(best_u) else 0.0
        eps = max(eps / scaling, target, floor)
        kernels.prune(cost, prices, owner, assigned, eps)
    return AuctionResult(best_cols, best_u, lb, prices, bids, phases, eps)


def _coarse_prices(
    cost: np.ndarray, tol: float, scaling: float, max_bids: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Column prices (n,) from the problem on a random n / 2 subset, and their lower bound."""
    from otcfm.couplings import _auction_kernels as kernels  # numba: loaded on first use

    n = cost.shape[0]
    m = n // COARSE_RATIO
    rows = np.sort(rng.choice(n, m, replace=False))
    cols = np.sort(rng.choice(n, m, replace=False))
    sub = kernels.gather(cost, rows, cols)
    _, total, top = kernels.reduce_rows(sub)
    coarse = solve_auction(
        sub, tol, scaling=scaling, max_bids=max_bids, warm=True, ind=total / m,
        cmax=float(top), rng=rng,
    )
    prices = np.empty(n, np.float32)
    lb = kernels.extend_prices(cost, cols, coarse.prices, prices)
    lb -= _slack(n, float(cost.max()), prices)
    prices -= prices.min()  # a common shift changes no decision; the kernels need p >= 0
    return prices, lb


def _slack(n: int, cmax: float, prices: np.ndarray) -> float:
    """Bound on the float32 rounding in a dual value over n rows and n columns."""
    return 8.0 * n * _F32 * (cmax + float(np.abs(prices).max()))
