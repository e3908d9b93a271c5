"""ApproxOT on CPU: compiled Gauss-Seidel auction, eps-scaling, multiscale warm start.

Multiscale warm start. The optimal dual potentials of a random subset of the points
approximate those of the whole problem (both estimate the potentials of the underlying
distributions). So a batch of n >= ``COARSE_MIN`` points first solves the problem on n / 4
random rows and columns (recursively, to the same tolerance), extends those column prices to
every column by a c-transform pair (f_i = min over the subset of C_ij + p_j, then
p_j = max_i f_i - C_ij, a certified lower bound on the optimum), and runs the auction from
there at an eps a few times the certifying one. Measured on the 2-D benchmark tasks this cuts
the bids per row from about 10-20 (cold eps-scaling) to 2-4.

The subsets come from a generator seeded by n: the same cost matrix gives the same pairing.
The certificate (module ``_approx``) holds whatever the starting prices.

Candidate lists (the certified exact solver, n >= ``LISTS_MIN``). After the first phase each
row keeps its cheapest columns (up to ``EXACT_LISTS``) and a bound under every other one's value;
prices only rise, so the bound stays valid and a bid reads the list instead of the row until
the list no longer decides (``auction_lists.rescan``). The shortest-path correction runs
over the lists' arcs after every phase and is checked against the bounds; the prices keep
its correction even where it did not converge (the assignment is not optimal yet), so the
next, finer phase frees fewer rows.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

COARSE_MIN = 128  # smallest batch solved with a multiscale warm start
# the coarse problem has n / COARSE_RATIO points: 4 measured faster than 2 at n = 512 to 4,096
# in 2-D and d = 64 (fewer levels, each as good a start; ApproxOT 16-22%, the certified exact
# solver 5-13% less CPU time per solve); 8 no better
COARSE_RATIO = 4
WARM_EPS = 3.0  # first eps after a warm start, in certifying eps
COARSE_TOL = 0.01  # coupling gap of the coarse problem when the answer must be tighter
EXACT_RTOL = 1e-9  # certified relative gap of exact_assignment
EXACT_SCALING = 12.0  # eps shrinks by this factor between the phases of exact_assignment
EXACT_MAX_BIDS = 500  # exact_assignment gives up after this many bids per row
EXACT_LISTS = 64  # most candidate columns per row in exact_assignment (auction_lists)
LISTS_MIN = 256  # smallest n solved with candidate lists (below, rows are cheap to scan)
LISTS_FROM = 1  # phases run with full row scans before the lists (prices still move far)
TIGHTEN_SCANS = 3  # most row scans of one price correction, in multiples of n


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


def relative_gap_bound(u: float, lb: float, offset: float) -> float:
    """Upper bound on the relative gap of an assignment's cost to the optimum.

    (U - LB) / (offset + LB): an upper bound on (U - OPT) / (offset + OPT) given
    0 <= LB <= OPT <= U; with ``offset`` the sum of the subtracted row minima, the relative
    gap of the unreduced problem's assignment cost.
    """
    if not math.isfinite(u):
        return math.inf
    lb = max(min(lb, u), 0.0)
    base = offset + lb
    return 0.0 if u == lb else ((u - lb) / base if base > 0.0 else math.inf)


def solve_auction(
    cost: np.ndarray,
    tol: float,
    *,
    scaling: float,
    max_bids: int,
    warm: bool,
    ind: float | None = None,
    cmax: float | None = None,
    offset: float | None = None,
    rng: np.random.Generator | None = None,
    lists: int = 0,
) -> AuctionResult:
    """Certified assignment of a float32 or float64 (n, n) cost with row minima 0.

    Stops when the certified bound is at most ``tol``: the coupling gap bound
    (U - LB) / (IND - LB), or with ``offset`` given the relative gap bound
    (U - LB) / (offset + LB) (:func:`relative_gap_bound`); or when eps reaches the rounding
    floor of the cost's type, or ``max_bids`` bids are spent (then ``cols`` is the best complete
    assignment found, or None). ``ind`` (sum of the costs / n) and ``cmax``: if already known.
    ``warm``: start from the prices of the problem on n / ``COARSE_RATIO`` random rows and
    columns (n >= ``COARSE_MIN``).
    """
    from otcfm._ot import auction_kernels as kernels  # numba: loaded on first use
    from otcfm._ot import auction_lists as lists_kernels

    n = cost.shape[0]
    top = kernels.top_bits(cost.dtype)
    rng = np.random.default_rng(n) if rng is None else rng
    if ind is None or cmax is None:
        ind, cmax = float(cost.sum(dtype=np.float64)) / n, float(cost.max())
    floor = 8.0 * float(np.finfo(cost.dtype).eps) * cmax

    def bound(u: float, lb: float) -> float:
        return gap_bound(u, lb, ind) if offset is None else relative_gap_bound(u, lb, offset)

    lb = -math.inf
    owner = np.full(n, -1, np.int64)
    assigned = np.full(n, -1, np.int64)
    if warm and n >= COARSE_MIN:
        coarse_tol = tol if offset is None else max(tol, COARSE_TOL)
        prices, lb = _coarse_prices(cost, coarse_tol, scaling, max_bids, rng, cmax, lists)
        spread = ind - lb if 0.0 <= lb < ind else ind
        # a few times the certifying eps n * eps = tol * (IND - OPT), but not so small that
        # the first complete pairing takes long at a tight tol (later phases refine)
        eps = max(WARM_EPS * max(tol, COARSE_TOL) * spread / n, floor)
    else:
        prices = np.zeros(n, cost.dtype)
        eps = ind / n / 2.0
    best_cols, best_u = None, math.inf
    bids = phases = 0
    rows = np.arange(n)
    duals = None  # the column prices of the certificate, when a correction gave it
    k = min(lists, n) if lists >= 2 else 0
    if k:
        cand = np.zeros((n, k), np.int64)
        cand_c = np.zeros((n, k), cost.dtype)
        cnt = np.zeros(n, np.int64)
        thr = np.full(n, -np.inf, cost.dtype)  # every list starts stale
        win = np.zeros(n + 1)  # rescan's window per row, and the last one
    while True:
        if k and phases >= LISTS_FROM:
            bids += lists_kernels.bid_lists(
                cost, prices, eps, owner, assigned, max_bids - bids, cand, cand_c, cnt, thr, win
            )
        else:
            bids += kernels.bid(cost, prices, eps, owner, assigned, max_bids - bids, top)
        phases += 1
        last = eps <= floor or bids >= max_bids
        if offset is None:  # relative mode: the bound comes from the tightening (or below)
            lb = max(lb, kernels.dual_value(cost, prices, top) - _slack(n, cmax, prices))
        if assigned.min() >= 0:
            u = float(cost[rows, assigned].sum(dtype=np.float64))
            if u < best_u:
                best_cols, best_u = assigned.copy(), u
            # the correction is cheap over the lists; a full one only where no lists run
            lists_on = k and phases > LISTS_FROM
            if (offset is not None and bound(best_u, lb) > tol and u == best_u
                    and (lists_on or not k)):
                lists_ = (cand, cand_c, cnt, thr) if lists_on else None
                tight, q, d = _tightened_bound(cost, prices, assigned, owner, cmax, top,
                                               lists_)
                if tight > lb:
                    lb, duals = tight, q
                # converged or not, the correction moves the prices towards exact CS (it only
                # raises them, so the lists' bounds hold): the next phase frees fewer rows
                prices -= d
        # n * eps at most the gap allowed certifies the next phase: no need to go finer
        if not math.isfinite(best_u):
            target = 0.0
        elif offset is None:
            target = tol * (ind - best_u) / n
        else:
            target = tol * (offset + max(lb, 0.0)) / n
        finer = max(eps / scaling, target, floor)
        if offset is not None and bound(best_u, lb) > tol and (
                last or finer >= eps or n * eps <= tol * (offset + best_u)):
            # the eps-complementary slackness itself may certify: the prices' dual bound
            lb = max(lb, kernels.dual_value(cost, prices, top) - _slack(n, cmax, prices))
        if bound(best_u, lb) <= tol or last:
            break
        if offset is not None:
            finer = max(eps / scaling, tol * (offset + max(lb, 0.0)) / n, floor)
        if finer >= eps:  # eps is already as fine as the certificate needs: rounding blocks it
            break
        eps = finer
        if k and phases >= LISTS_FROM:
            lists_kernels.prune_lists(
                cost, prices, owner, assigned, eps, cand, cand_c, cnt, thr, win
            )
        else:
            kernels.prune(cost, prices, owner, assigned, eps, top)
    return AuctionResult(best_cols, best_u, lb, prices if duals is None else duals, bids,
                         phases, eps)


@dataclass(frozen=True)
class ExactAssignment:
    """An optimal assignment with its certificate."""

    cols: np.ndarray  # column of each row, int64 (n,)
    cost: float  # its total cost sum_i C[i, cols[i]] (float64 sums)
    bound: float  # certified upper bound on (cost - OPT) / OPT
    prices: np.ndarray | None = None  # column prices q of the certificate (row-reduced cost)


def exact_assignment(cost: np.ndarray, *, overwrite: bool = False) -> ExactAssignment | None:
    """Optimal assignment of a finite square float64 ``cost``, certified.

    The compiled auction runs in float64 on the row-reduced cost from a multiscale warm start
    with eps-scaling; after each phase the prices are corrected by shortest paths
    (``auction_kernels.tighten``) towards exact complementary slackness. Every answer
    carries the dual bound LB of a feasible dual (u_i + v_j <= C_ij, float rounding
    subtracted), and is returned only when bound = (U - LB) / (offset + LB) <= ``EXACT_RTOL``,
    which bounds the relative gap (U - OPT) / OPT of its total cost U. When the corrected
    prices certify the optimum itself the bound is at the float64 rounding level (about
    1e-14). Returns None when no certificate was reached within ``EXACT_MAX_BIDS`` bids per
    row or at the rounding floor of eps (the caller solves otherwise). ``overwrite``: reduce
    ``cost`` in place instead of a copy (its entries are then lost, C-contiguous only).
    """
    n = cost.shape[0]
    if n == 0 or not bool(np.isfinite(cost).all()):
        return None
    lo = cost.min(axis=1)
    if overwrite and cost.flags.c_contiguous:
        reduced = np.subtract(cost, lo[:, None], out=cost)
    else:
        reduced = cost - lo[:, None]
    # >= 0 exactly, as the kernels need (they order floats by their bits)
    return certified_assignment(reduced, float(lo.sum()), float(reduced.sum()),
                                float(reduced.max()))


def exact_assignment_gram(
    gram: np.ndarray, na: np.ndarray, nb: np.ndarray
) -> tuple[ExactAssignment | None, np.ndarray, np.ndarray]:
    """:func:`exact_assignment` of the float32 squared distances of a float32 Gram matrix.

    The costs are (gram_ij * -2 + na_i) + nb_j in float32, clamped at 0: bitwise those of
    ``otcfm.couplings.sq_cost`` on the same centred points (``na``, ``nb``: squared norms);
    distances, float64 copy and row reduction are one pass
    (``auction_kernels.sq_cost_reduced64``) into this thread's workspace (kept between
    calls, see ``_workspace``). Returns the certified answer (or None, also for a non-finite
    cost), the reduced float64 cost (valid until this thread's next call) and its row
    minima, for a fallback solver.
    """
    from otcfm._ot import auction_kernels as kernels

    reduced = _workspace(gram.shape)
    lo = np.empty(gram.shape[0], np.float64)
    offset, total, cmax = kernels.sq_cost_reduced64(gram, na, nb, reduced, lo)
    if not (math.isfinite(offset) and math.isfinite(total)):
        return None, reduced, lo
    return certified_assignment(reduced, offset, total, cmax), reduced, lo


_LOCAL = threading.local()


def _workspace(shape: tuple[int, int]) -> np.ndarray:
    """A float64 matrix of ``shape`` for this thread, kept between calls.

    A training loop solves same-sized batches step after step: reusing the memory spares the
    page faults of a fresh B x B float64 matrix on every call (a sizeable share of the solve
    at B >= 1024). One per thread, so that coupling workers never share it.
    """
    size = shape[0] * shape[1]
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.size < size or buf.size > 4 * size:
        buf = np.empty(size, np.float64)
        _LOCAL.buf = buf
    return buf[:size].reshape(shape)


def certified_assignment(
    reduced: np.ndarray, offset: float, total: float, cmax: float
) -> ExactAssignment | None:
    """The certified auction of :func:`exact_assignment` on a row-reduced float64 cost.

    ``reduced``: C minus its row minima (>= 0, C-contiguous); ``offset``: the sum of those
    minima; ``total`` and ``cmax``: the sum and largest entry of ``reduced``.
    """
    n = reduced.shape[0]
    if n == 1 or cmax == 0.0:
        return ExactAssignment(np.arange(n), offset, 0.0, np.zeros(n))
    r = solve_auction(
        reduced, EXACT_RTOL, scaling=EXACT_SCALING, max_bids=EXACT_MAX_BIDS * n, warm=True,
        ind=total / n, cmax=cmax, offset=offset, lists=EXACT_LISTS if n >= LISTS_MIN else 0,
    )
    if r.cols is None:
        return None
    bound = relative_gap_bound(r.cost, r.lower_bound, offset)
    if bound > EXACT_RTOL:
        return None
    return ExactAssignment(r.cols, offset + r.cost, bound, r.prices)


def _coarse_prices(
    cost: np.ndarray, tol: float, scaling: float, max_bids: int, rng: np.random.Generator,
    cmax: float, lists: int = 0,
) -> tuple[np.ndarray, float]:
    """Column prices (n,) from a random n / ``COARSE_RATIO`` subset, and their lower bound.

    The lower bound those prices certify; ``cmax``: the largest entry of ``cost``.
    """
    from otcfm._ot import auction_kernels as kernels  # numba: loaded on first use

    n = cost.shape[0]
    m = n // COARSE_RATIO
    rows = np.sort(rng.choice(n, m, replace=False))
    cols = np.sort(rng.choice(n, m, replace=False))
    sub = kernels.gather(cost, rows, cols)
    bits = kernels.top_bits(cost.dtype)
    _, total, top = kernels.reduce_rows(sub, bits)
    coarse = solve_auction(
        sub, tol, scaling=scaling, max_bids=max_bids, warm=True, ind=total / m,
        cmax=float(top), rng=rng, lists=lists,
    )
    prices = np.empty(n, cost.dtype)
    lb = kernels.extend_prices(cost, cols, coarse.prices, prices, bits)
    lb -= _slack(n, cmax, prices)
    prices -= prices.min()  # a common shift changes no decision; the kernels need p >= 0
    return prices, lb


def _tightened_bound(cost, prices, assigned, owner, cmax, top, lists=None):
    """The lower bound of the prices after the shortest-path correction, those prices, and d.

    The lower bound of the prices corrected by ``auction_kernels.tighten`` (-inf and None if
    the correction did not converge: the assignment may not be optimal), and the correction
    d <= 0 itself (as far as it got when it did not converge: its passes still lowered the
    reduced costs along the assignment).
    """
    from otcfm._ot import auction_kernels as kernels
    from otcfm._ot import auction_lists as lists_kernels

    n = cost.shape[0]
    d = np.zeros(n, prices.dtype)
    rounding = 4.0 * float(np.finfo(prices.dtype).eps) * (cmax + float(prices.max()))
    scans = TIGHTEN_SCANS * n
    if lists is not None:
        done = lists_kernels.tighten_lists(cost, prices, assigned, owner, rounding, scans, d,
                                           *lists)
        if done == -1:
            return -math.inf, None, d  # no convergence on the lists' arcs: not optimal yet
        if done == -2:  # converged, but an arc outside the lists may be violated
            d[:] = 0.0
            done = kernels.tighten(cost, prices, assigned, owner, rounding, scans, d)
    else:
        done = kernels.tighten(cost, prices, assigned, owner, rounding, scans, d)
    if done < 0:
        return -math.inf, None, d
    q = prices - d
    q -= q.min()  # the kernels need p >= 0; a common shift changes no bound
    return kernels.dual_value(cost, q, top) - _slack(n, cmax, q), q, d


def _slack(n: int, cmax: float, prices: np.ndarray) -> float:
    """Bound on the rounding error in a dual value over n rows and n columns.

    Bound on the rounding (in the prices' float type) in a dual value over n rows and n
    columns.
    """
    return 8.0 * n * float(np.finfo(prices.dtype).eps) * (cmax + float(np.abs(prices).max()))
