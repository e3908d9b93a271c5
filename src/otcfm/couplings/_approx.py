"""Approximate balanced OT with a certified coupling gap: vectorized auction with eps-scaling.

Bertsekas' auction for the assignment problem min_sigma sum_i C[i, sigma(i)], run in torch on
the data's device. All unassigned rows bid at once (Jacobi auction); each column goes to its
highest bidder (ties: the lowest row index, so the result is deterministic).

Certificate. For any column prices p (n,), weak LP duality gives the lower bound

    LB(p) = sum_i min_j (C_ij + p_j) - sum_j p_j  <=  OPT,

and an auction phase that ends with eps-complementary slackness has U - LB(p) <= n * eps,
U the cost of its (complete) assignment. With IND = sum_ij C_ij / n the cost of the
independent coupling q0 x q1 (IND >= OPT), the coupling gap

    gap = (U - OPT) / (IND - OPT)  <=  (U - LB) / (IND - LB)  =: gap_bound,

because the middle ratio decreases in OPT on [LB, U] when U <= IND. The solver stops as soon
as gap_bound <= tol, so the returned permutation provably has gap <= tol (with respect to the
cost matrix as stored in ``cost_dtype``; float rounding of the bound is accounted for).

Backends. On CPU with float32 costs and numba installed (extra ``fast``) the auction runs
compiled, one bid at a time, from a multiscale warm start (module ``otcfm._ot.auction``); elsewhere
(GPU, float64, no numba) it runs in torch as below.

Warm start (torch backend). Zero prices and a large first eps lead to long price wars when
many columns are nearly equivalent (low dimension). By default the prices start instead from
the column potential of a few annealed log-domain Sinkhorn iterations, and eps starts a few
steps above the certifying value. The certificate holds for any starting prices.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import torch
from torch import Tensor

from otcfm._ot.auction import gap_bound, solve_auction
from otcfm._ot.warm import load_kernels
from otcfm._utils import check_positive
from otcfm.couplings._base import (
    ConvergenceWarning,
    Coupling,
    MemoryNeed,
    centred,
    check_cost_dtype,
    check_max_iter,
    cost_bytes,
    overflow_error,
    require_equal_batches,
    sq_cost,
)

BACKENDS = ("auto", "compiled", "torch")
_CHUNK_ELEMS = 1 << 22  # rows are processed in blocks of at most this many cost entries
_SEQUENTIAL = 64  # on CPU, at most this many free rows bid one at a time (Gauss-Seidel)
# Sinkhorn schedule: (regularization as a fraction of the mean cost entry, iterations)
_WARM_SCHEDULE = ((0.3, 3), (0.1, 3), (0.03, 3))
_WARM_EPS = 2.5  # first auction eps after a warm start, in certifying eps (tol >= 0.01)
_WARM_CHUNK = 1 << 16  # cost entries per block in the Sinkhorn sweeps on CPU (cache sized)
_EXP_MIN = -80.0  # exponents are clamped here: exp stays a normal float32


def _kernels():
    """The compiled auction kernels, imported on first use (numba loads slowly)."""
    from otcfm._ot import auction_kernels

    return auction_kernels


def _row_chunks(n_rows: int, n_cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(n_cols, 1))


def _lower_bound(cost: Tensor, prices: Tensor, cost_max: float | None = None) -> float:
    """Certified dual lower bound on the optimal assignment cost (float64 scalar).

    Row potentials u_i = min_j (C_ij + p_j), then column potentials v_j = min_i (C_ij - u_i)
    (a c-transform, v_j >= -p_j, so this is at least LB(p)); u_i + v_j <= C_ij makes
    sum u + sum v a lower bound by weak duality. The minima are taken in ``cost.dtype``; their
    rounding error (one unit of roundoff of the largest entry per row and per column) is
    subtracted so the bound stays valid. ``cost_max``: ``cost.max()`` if already known.
    """
    n = cost.shape[0]
    step = _row_chunks(n, cost.shape[1])
    u = torch.empty(n, dtype=cost.dtype, device=cost.device)
    for s in range(0, n, step):
        u[s : s + step] = (cost[s : s + step] + prices).amin(1)
    v = torch.full_like(prices, math.inf)
    for s in range(0, n, step):
        v = torch.minimum(v, (cost[s : s + step] - u[s : s + step, None]).amin(0))
    cmax = float(cost.max()) if cost_max is None else cost_max
    big = cmax + float(prices.abs().max()) + float(u.abs().max())
    slack = 4.0 * n * torch.finfo(cost.dtype).eps * big
    return float(u.sum(dtype=torch.float64)) + float(v.sum(dtype=torch.float64)) - slack


def _bid_round(
    cost: Tensor, prices: Tensor, owner: Tensor, assigned: Tensor, free: Tensor, eps: float
) -> None:
    """One Jacobi auction round: every free row bids for its best column (in place)."""
    n = cost.shape[1]
    step = _row_chunks(free.numel(), n)
    best_j, bids = [], []
    for s in range(0, free.numel(), step):
        rows = free[s : s + step]
        vals, idx = torch.topk(cost[rows] + prices, 2, dim=1, largest=False)
        j1 = idx[:, 0]
        best_j.append(j1)
        bids.append(prices[j1] + (vals[:, 1] - vals[:, 0]) + eps)
    j1 = torch.cat(best_j)
    bid = torch.cat(bids)
    top = torch.full((n,), -math.inf, dtype=bid.dtype, device=bid.device)
    top.scatter_reduce_(0, j1, bid, reduce="amax")
    won = bid >= top[j1]
    winner = torch.full((n,), n, dtype=torch.long, device=bid.device)
    winner.scatter_reduce_(0, j1[won], free[won], reduce="amin")
    cols = torch.nonzero(winner < n).squeeze(1)
    rows = winner[cols]
    prev = owner[cols]
    assigned[prev[prev >= 0]] = -1
    owner[cols] = rows
    assigned[rows] = cols
    prices[cols] = top[cols]


def _auction_phase(
    cost: Tensor, prices: Tensor, eps: float, max_rounds: int, start: Tensor | None = None
) -> tuple[Tensor | None, int]:
    """Auction at this eps (prices kept and updated in place).

    ``start`` (a previous complete assignment) keeps the rows that already satisfy
    eps-complementary slackness at the new eps; the others bid again. Returns the column of
    every row (None if ``max_rounds`` ran out) and the rounds used.
    """
    n = cost.shape[0]
    owner = torch.full((n,), -1, dtype=torch.long, device=cost.device)
    assigned = torch.full((n,), -1, dtype=torch.long, device=cost.device)
    if start is not None:
        keep = _slack(cost, prices, start) <= eps
        rows = torch.nonzero(keep).squeeze(1)
        assigned[rows] = start[rows]
        owner[start[rows]] = rows
    for r in range(1, max_rounds + 1):
        free = torch.nonzero(assigned < 0).squeeze(1)
        if free.numel() == 0:
            return assigned, r - 1
        if cost.device.type == "cpu" and free.numel() <= _SEQUENTIAL:
            used = _bid_sequential(cost, prices, owner, assigned, free, eps, max_rounds - r + 1)
            done = bool((assigned >= 0).all())
            return (assigned if done else None), r - 1 + used
        _bid_round(cost, prices, owner, assigned, free, eps)
    done = bool((assigned >= 0).all())
    return (assigned if done else None), max_rounds


def _bid_sequential(
    cost: Tensor, prices: Tensor, owner: Tensor, assigned: Tensor, free: Tensor, eps: float,
    budget: int,
) -> int:
    """Gauss-Seidel auction for the few last free rows on CPU (one bid at a time, in place).

    The tail of a Jacobi auction is many rounds of one or two bidders, where per-round
    overhead dominates; on CPU single bids on numpy views of the same storage are far
    cheaper. Each bid counts as one round against ``budget``; returns the bids made.
    """
    c, p = cost.numpy(), prices.numpy()
    own, asg = owner.tolist(), assigned.tolist()  # list items are cheaper than numpy scalars
    queue = deque(free.tolist())
    step = c.dtype.type(eps)
    row = np.empty_like(p)
    inf = c.dtype.type(np.inf)
    bids = 0
    while queue and bids < budget:
        i = queue.popleft()
        np.add(c[i], p, out=row)
        j1 = int(row.argmin())
        v1 = row[j1]
        row[j1] = inf
        p[j1] += row.min() - v1 + step
        prev = own[j1]
        if prev >= 0:
            asg[prev] = -1
            queue.append(prev)
        own[j1] = i
        asg[i] = j1
        bids += 1
    owner.copy_(torch.tensor(own))
    assigned.copy_(torch.tensor(asg))
    return bids


def _warm_prices(cost: Tensor, mean: float) -> tuple[Tensor, float] | None:
    """Auction prices and dual value from an annealed log-domain Sinkhorn dual.

    Auction prices (n,) from an annealed log-domain Sinkhorn dual, and the dual value
    sum f + sum g (an estimate of the optimal cost, not a bound); None if it broke down.

    Entropic OT with unit marginals, regularization reg: alternately
    f_i <- f_i - reg log sum_j exp((f_i + g_j - C_ij) / reg), and the same for g over i.
    Writing the update relative to the current potentials keeps the exponents below
    log n (3 log n right after reg shrinks), so no max pass is needed against overflow.
    The auction minimizes C_ij + p_j, so p = -g (shifted to min 0).
    Any prices give a valid auction and lower bound; these only make them start near optimal.
    """
    n = cost.shape[0]
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)  # row minima are 0
    g = torch.zeros_like(f)
    chunk = _WARM_CHUNK if cost.device.type == "cpu" else _CHUNK_ELEMS
    step = max(1, chunk // n)
    ones = torch.ones(n, dtype=cost.dtype, device=cost.device)
    for frac, iters in _WARM_SCHEDULE:
        scale = -1.0 / (frac * mean)
        for _ in range(iters):
            col = torch.zeros_like(g)
            gs = g * -scale
            for s in range(0, n, step):  # row update, then accumulate the column sums
                blk = torch.add(gs, cost[s : s + step], alpha=scale)
                blk = blk.sub_(f[s : s + step, None] * scale)
                blk = blk.clamp_(min=_EXP_MIN).exp_()  # no denormals (slow on CPU)
                r = torch.mv(blk, ones)
                f[s : s + step] += torch.log(r) / scale
                col += torch.mv(blk.T, r.reciprocal())  # rows rescaled to sum to one
            g += torch.log(col) / scale
    value = float(f.sum(dtype=torch.float64)) + float(g.sum(dtype=torch.float64))
    if not (math.isfinite(value) and bool(torch.isfinite(g).all())):
        return None
    p = g.neg_()
    return p.sub_(p.min()), value


def _slack(cost: Tensor, prices: Tensor, cols: Tensor) -> Tensor:
    """Per row, C[i, cols_i] + p[cols_i] - min_j (C_ij + p_j) (>= 0)."""
    n = cost.shape[0]
    step = _row_chunks(n, cost.shape[1])
    out = torch.empty(n, dtype=cost.dtype, device=cost.device)
    for s in range(0, n, step):
        block = cost[s : s + step] + prices
        out[s : s + step] = block.gather(1, cols[s : s + step, None]).squeeze(1) - block.amin(1)
    return out


class ApproxOT(Coupling):
    """Approximate minibatch OT for equal batches: a one-to-one pairing with a certified gap.

    Returns ``i = arange(B)`` and a permutation ``j`` whose coupling gap
    ``(cost - optimal) / (independent cost - optimal)`` is at most ``tol``, certified by
    the auction's dual prices (module docstring), without solving the problem exactly.
    Runs in torch on the data's device (vectorized auction with eps-scaling, Bertsekas).

    Args:
        tol: bound on the coupling gap, in (0, 1).
        scaling: factor by which eps shrinks between auction phases (> 1).
        max_iter: cap on the total number of bidding rounds; reaching it warns
            (ConvergenceWarning, with the certified bound reached) and returns the best
            complete pairing found, or raises if there is none.
        cost_dtype: dtype of the cost matrix and prices (float32 or float64).
        warm_start: start the auction from near-optimal prices at a small eps instead of
            zero prices at a large eps: the prices of the same problem on a random half of
            the points (compiled backend) or the column potential of a few annealed
            log-domain Sinkhorn iterations (torch backend). Only the starting point changes;
            the certificate does not depend on it.
        backend: "auto" (compiled when the costs are float32 on CPU and numba is installed,
            else torch), "compiled" (numba, CPU, float32 costs) or "torch" (any device).
            A bidding round is one bid per row on the compiled backend.

    ``info``: ``cost`` (mean pair cost), ``gap_bound`` (certified), ``lower_bound`` (mean),
    ``independent_cost`` (mean), ``iterations`` (bidding rounds), ``phases``, ``eps``,
    ``seconds``, ``compiled`` (1.0 when the compiled backend ran).
    """

    name = "approx"

    def __init__(
        self,
        tol: float = 0.01,
        *,
        scaling: float = 4.0,
        max_iter: int = 100_000,
        cost_dtype: torch.dtype = torch.float32,
        warm_start: bool = True,
        backend: str = "auto",
    ) -> None:
        self.tol = check_positive("tol", tol)
        if self.tol >= 1.0:
            raise ValueError(f"tol must be in (0, 1) (a bound on the coupling gap), got {tol!r}")
        self.scaling = check_positive("scaling", scaling)
        if self.scaling <= 1.0:
            raise ValueError(f"scaling must be > 1, got {scaling!r}")
        self.max_iter = check_max_iter(max_iter)
        self.cost_dtype = check_cost_dtype(cost_dtype)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {warm_start!r}")
        self.warm_start = warm_start
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "compiled" and not _kernels().available():
            raise ImportError(
                "ApproxOT(backend='compiled') needs numba: pip install 'otcfm[fast]'"
            )
        if backend == "compiled" and self.cost_dtype != torch.float32:
            raise ValueError("ApproxOT(backend='compiled') needs cost_dtype=torch.float32")
        self.backend = backend

    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        n = require_equal_batches("ApproxOT", x0, x1)
        if self._compiled_for(x0.device, self.cost_dtype):
            # Gram matrix in torch, then distances and row reduction fused in one pass
            a, b = centred(x0.detach(), x1.detach(), torch.float32)
            na, nb = (a * a).sum(1), (b * b).sum(1)
            if not 2.0 * (float(na.max()) + float(nb.max())) < float(torch.finfo().max):
                raise overflow_error(torch.float32, a, b)
            gram = (a @ b.T).numpy()
            reduced = _kernels().sq_cost_reduced(gram, na.numpy(), nb.numpy(),
                                                  _kernels().top_bits(np.float32))
            j, info = self._solve_compiled(gram, *reduced)
        else:
            j, info = self._solve(sq_cost(x0, x1, self.cost_dtype).detach())
        return torch.arange(n, device=x0.device), j, info

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """Estimated peak memory of one call: the compiled backend's or the torch backend's.

        The compiled backend: the float32 Gram matrix and its reduced copy (8 bytes per
        entry); torch: the cost and two blocks of its size (prices, temporaries).
        """
        entries = n0 * n1
        if self._compiled_for(torch.device(device), self.cost_dtype):
            return MemoryNeed(device=8 * entries)
        item = torch.empty((), dtype=self.cost_dtype).element_size()
        return MemoryNeed(device=(cost_bytes(self.cost_dtype, device) + 2 * item) * entries)

    def prepare(self) -> None:
        """Load the compiled auction's kernels (backend "auto" or "compiled", numba)."""
        if self.backend != "torch":
            load_kernels("approx")

    def solve(self, cost: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Column assigned to each row of a square cost (n, n), and diagnostics."""
        if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
            raise ValueError(f"cost must be a square matrix, got shape {tuple(cost.shape)}")
        return self._solve(cost.detach().to(self.cost_dtype, copy=True))

    def _compiled_for(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether costs of this dtype on this device go to the compiled backend."""
        if self.backend == "auto":
            return _kernels().available() and device.type == "cpu" and dtype == torch.float32
        if self.backend == "compiled" and device.type != "cpu":
            raise ValueError(f"ApproxOT(backend='compiled') runs on CPU; the data is on {device}")
        return self.backend == "compiled"

    def _solve(self, cost: Tensor) -> tuple[Tensor, dict[str, float]]:
        """As :meth:`solve`, overwriting ``cost`` (no extra B x B copy)."""
        if self._compiled_for(cost.device, cost.dtype):
            c = cost.contiguous().numpy()
            return self._solve_compiled(c, *_kernels().reduce_rows(c, _kernels().top_bits(c.dtype)))
        n = cost.shape[0]
        # Subtracting row minima changes every assignment's cost by the same constant.
        shift = cost.amin(1, keepdim=True)
        cost.sub_(shift)
        const = float(shift.sum(dtype=torch.float64))
        ind = _sum64(cost) / n
        if n == 1 or ind <= 0.0:  # one point, or every assignment costs the same
            j = torch.zeros(n, dtype=torch.long, device=cost.device) if n == 1 else (
                torch.arange(n, device=cost.device)
            )
            return j, self._info(const, 0.0, 0.0, ind, 0.0, 0, 0, 0.0, n)
        cmax = float(cost.max())
        floor = 8.0 * torch.finfo(cost.dtype).eps * cmax
        best_j, best_u, best_lb = None, math.inf, -math.inf
        warm = _warm_prices(cost, ind / n) if self.warm_start else None
        if warm is None:
            prices = torch.zeros(n, dtype=cost.dtype, device=cost.device)
            eps = ind / n / 2.0  # mean entry of the reduced cost, halved
        else:
            # Near-optimal prices: start eps-scaling a few steps above the certifying eps
            # n * eps = tol * (IND - OPT) (OPT estimated by the entropic dual value), but not
            # so low that a first complete pairing takes long at tight tol.
            prices, opt = warm
            spread = ind - opt if 0.0 <= opt < ind else ind
            eps = max(_WARM_EPS * max(self.tol, 0.01) * spread / n, floor)
        rounds = phases = 0
        bound = math.inf
        while rounds < self.max_iter:
            j, used = _auction_phase(cost, prices, eps, self.max_iter - rounds, best_j)
            rounds += used
            phases += 1
            best_lb = max(best_lb, _lower_bound(cost, prices, cmax))
            if j is not None:
                u = float(cost.gather(1, j[:, None]).sum(dtype=torch.float64))
                if u < best_u:
                    best_j, best_u = j, u
            bound = gap_bound(best_u, best_lb, ind)
            if bound <= self.tol or eps <= floor:
                break
            # n * eps <= tol * (IND - U) certifies the next phase (LB' <= OPT <= U): no need
            # to go finer than that.
            target = self.tol * (ind - best_u) / n if math.isfinite(best_u) else 0.0
            eps = max(eps / self.scaling, target, floor)
        if best_j is None:
            raise RuntimeError(
                f"ApproxOT found no complete pairing within max_iter={self.max_iter} bidding "
                "rounds; raise max_iter"
            )
        if bound > self.tol:
            self._warn(bound, rounds, phases, eps, depth=5)
        return best_j, self._info(const, best_u, best_lb, ind, bound, rounds, phases, eps, n)

    def _solve_compiled(
        self, c: np.ndarray, const: float, total: float, cmax: float
    ) -> tuple[Tensor, dict[str, float]]:
        """The compiled CPU backend (module ``otcfm._ot.auction``), same certificate and info.

        ``c``: float32 (n, n) costs with row minima subtracted (their sum ``const``), whose
        sum and max are ``total`` and ``cmax``; overwritten.
        """
        n = c.shape[0]
        ind = total / n
        if n == 1 or ind <= 0.0:
            j = torch.arange(n)
            return j, self._info(const, 0.0, 0.0, ind, 0.0, 0, 0, 0.0, n) | {"compiled": 1.0}
        r = solve_auction(
            c, self.tol, scaling=self.scaling, max_bids=self.max_iter * n,
            warm=self.warm_start, ind=ind, cmax=float(cmax),
        )
        if r.cols is None:
            raise RuntimeError(
                f"ApproxOT found no complete pairing within max_iter={self.max_iter} bidding "
                "rounds; raise max_iter"
            )
        bound = gap_bound(r.cost, r.lower_bound, ind)
        if bound > self.tol:
            self._warn(bound, r.bids / n, r.phases, r.eps, depth=6)
        info = self._info(const, r.cost, r.lower_bound, ind, bound, r.bids / n, r.phases, r.eps, n)
        return torch.from_numpy(r.cols), info | {"compiled": 1.0}

    def _warn(self, bound: float, rounds: float, phases: int, eps: float, depth: int) -> None:
        warnings.warn(
            f"ApproxOT stopped with certified gap bound {bound:.3g} > tol={self.tol:g} after "
            f"{rounds:.0f} bidding rounds ({phases} phases, eps={eps:.3g}); raise max_iter or "
            "use cost_dtype=torch.float64",
            ConvergenceWarning,
            stacklevel=depth,
        )

    @staticmethod
    def _info(
        const: float, u: float, lb: float, ind: float, bound: float,
        rounds: int, phases: int, eps: float, n: int,
    ) -> dict[str, float]:
        return {
            "cost": (u + const) / n,
            "lower_bound": (lb + const) / n,
            "independent_cost": (ind + const) / n,
            "gap_bound": bound,
            "iterations": rounds,
            "phases": phases,
            "eps": eps,
            "compiled": 0.0,
        }


def _sum64(cost: Tensor) -> float:
    """Sum of a matrix accumulated in float64, by row blocks (no float64 copy of it)."""
    step = _row_chunks(cost.shape[0], cost.shape[1])
    return sum(
        float(cost[s : s + step].sum(1, dtype=torch.float64).sum())
        for s in range(0, cost.shape[0], step)
    )
