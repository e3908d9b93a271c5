"""Independent, exact OT and exact partial OT couplings (network simplex / assignment)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch
from torch import Tensor

from otcfm._ot.assignment import auto_solver, available_solvers, check_solver
from otcfm._ot.assignment import solve as solve_assignment
from otcfm._ot.warm import load_kernels
from otcfm._utils import check_positive
from otcfm.couplings._base import (
    ConvergenceWarning,
    Coupling,
    MemoryNeed,
    ceil_count,
    centred,
    check_choice,
    check_cost_dtype,
    check_inputs,
    check_max_iter,
    check_n_pairs,
    cost_bytes,
    draw_cells,
    draw_rows,
    overflow_error,
    require_equal_batches,
    resolve_n_pairs,
    sq_cost,
)

_RESULT_CODES = {0: "infeasible", 1: "optimal", 2: "unbounded", 3: "iteration cap reached"}
# Host bytes per cost entry beyond the float64 copy of the cost, measured as the peak RSS
# growth of one call at B = 2048, d = 2 (network simplex: 29 for the arcs' costs, flows and
# states and the dense plan; the auction: 8 for its row-reduced copy; scipy / lap: under 4;
# the plan path also keeps and samples the plan, 37).
_EMD_BYTES, _AUCTION_BYTES, _ASSIGNMENT_BYTES, _PLAN_BYTES = 29, 8, 4, 37


class Independent(Coupling):
    """q(x0, x1) = q0 x q1: the inputs are already independent draws, so pair them in order.

    ``i = j = arange(B)``, and ``pair.x0``, ``pair.x1`` (and the conditions) are the input
    tensors themselves, not copies. Batches of different sizes raise ValueError (slice them
    first).
    """

    name = "independent"
    in_order = True

    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        idx = torch.arange(require_equal_batches("Independent", x0, x1), device=x0.device)
        return idx, idx.clone(), {}


# --------------------------------------------------------------------------- solvers
def _uniform_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _assignment(cost: np.ndarray, *, simplex_first: bool = False) -> np.ndarray:
    """Column matched to each row by an optimal assignment of a square float64 cost.

    Network simplex (``simplex_first``) or scipy, each with the permutation check and scipy
    fallback of ``otcfm._ot.assignment.solve``.
    """
    return solve_assignment(cost, "emd" if simplex_first else "scipy")


def emd(
    a: np.ndarray, b: np.ndarray, cost: np.ndarray, *, max_iter: int | None, on_fail: str
) -> np.ndarray:
    """Exact OT plan by POT's network simplex, with its result code and marginals checked.

    ``max_iter=None`` lifts the iteration cap. A non-optimal or infeasible result raises
    RuntimeError (on_fail="raise") or warns (on_fail="warn"); it is never returned silently.
    """
    import ot  # POT imports scikit-learn and more: load it on first use, not with the package

    cap = sys.maxsize if max_iter is None else max_iter
    plan, log = ot.emd(a, b, cost, numItermax=cap, log=True)
    code = int(log["result_code"])
    err = float(np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum())
    if code != 1 or not err <= 1e-8:
        msg = (
            f"exact OT solver did not reach optimality on a {cost.shape[0]}x{cost.shape[1]} "
            f"cost: result code {code} ({_RESULT_CODES.get(code, 'unknown')}), "
            f"max_iter={max_iter}, marginal L1 error {err:.3g}"
        )
        if on_fail == "raise":
            raise RuntimeError(msg + "; raise max_iter (None = no cap)")
        warnings.warn(msg, ConvergenceWarning, stacklevel=5)
    return plan


def _dim(x: Tensor) -> int:
    return x[0].numel()


def _cost_np(x0: Tensor, x1: Tensor, dtype: torch.dtype) -> np.ndarray:
    """Squared-distance cost computed in ``dtype`` on the data's device, as float64 numpy."""
    return sq_cost(x0, x1, dtype).detach().to("cpu", torch.float64).numpy()


# --------------------------------------------------------------------------- exact OT
class ExactOT(Coupling):
    """Minibatch exact OT for squared Euclidean cost: the coupling of OT-CFM.

    Minibatch exact OT for squared Euclidean cost: q(z) = pi of OT-CFM (Tong et al. 2024,
    Prop. 3.4).

    - Equal batch sizes, ``sampling=None``: a one-to-one pairing, ``i = arange(B)`` and ``j`` a
      permutation minimising sum_i ||x0_i - x1_j(i)||^2, exact on a float64 copy of the cost
      with no iteration cap. ``solver`` picks the assignment code: ``"auto"`` (default: the
      fastest measured for (B, d), see docs/results/exact_solvers.md), ``"auction"`` (our
      compiled float64 auction, each answer certified by a feasible dual to a relative gap of
      at most 1e-9, else solved by network simplex; extra ``fast``), ``"emd"`` (POT network
      simplex), ``"scipy"`` (linear_sum_assignment), ``"lap"`` / ``"lapjv"`` (Jonker-Volgenant,
      optional packages; extra ``fast``). An answer that is not a permutation falls back to
      scipy; a missing optional package warns and falls back to ``"auto"``.
    - Unequal sizes (with ``sampling=None``) or ``sampling="plan"`` (alias ``"joint"``): the
      exact plan pi (uniform marginals) is solved, then ``n_pairs`` cells (i, j) are drawn
      with probability pi_ij, with replacement, or without (``replace=False``: distinct cells,
      n_pairs <= number of non-zero cells, which is always >= max(n0, n1)). Default n_pairs
      = max(n0, n1).
    - ``sampling="rows"``: every x0 kept once, j ~ pi(j | i).

    Unequal sizes use POT's network simplex with no iteration cap by default
    (``max_iter=None``); a non-optimal result raises (``on_fail="raise"``) or warns.

    "Exact" is exact for the costs as computed: squared distances in ``cost_dtype`` (float32
    by default; centred data, expanded form, see :func:`sq_cost`), rounded there and then
    copied to float64 for the solver. If the computed costs differ from the true ones by at
    most delta, the returned pairing's mean true cost is within 2 delta of the optimum
    (pairings closer than that may come out either way). In float32 delta is about 3e-7
    times the largest squared norm of the centred points (Gaussian batches, d = 2 to 3072);
    ``cost_dtype=torch.float64`` makes it about 1e-16 relative.

    Examples:
        On equal batches the pairing is a permutation whose cost is the brute-force minimum:

        >>> import itertools
        >>> import torch
        >>> from otcfm.couplings import ExactOT
        >>> g = torch.Generator().manual_seed(0)
        >>> x0, x1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
        >>> pair = ExactOT()(x0, x1)
        >>> pair.i.tolist(), sorted(pair.j.tolist())
        ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
        >>> cost = torch.cdist(x0.double(), x1.double()) ** 2
        >>> brute = min(sum(cost[i, p[i]] for i in range(5))
        ...             for p in itertools.permutations(range(5)))
        >>> print(f"{float(cost[pair.i, pair.j].sum()):.4f} {float(brute):.4f}")
        8.3741 8.3741
    """

    name = "exact"
    lighter = "the approximate coupling (--coupling approx, ApproxOT)"

    def __init__(
        self,
        sampling: str | None = None,
        replace: bool = True,
        n_pairs: int | None = None,
        cost_dtype: torch.dtype = torch.float32,
        *,
        max_iter: int | None = None,
        on_fail: str = "raise",
        solver: str = "auto",
    ) -> None:
        self.solver = check_solver(solver)
        sampling = check_choice("sampling", sampling, (None, "plan", "joint", "rows"))
        self.sampling = "plan" if sampling == "joint" else sampling
        self.replace = bool(replace)
        self.n_pairs = check_n_pairs(n_pairs)
        if self.sampling == "rows" and self.n_pairs is not None:
            raise ValueError("n_pairs applies to sampling='plan'; 'rows' draws one pair per x0")
        self.cost_dtype = check_cost_dtype(cost_dtype)
        self.max_iter = check_max_iter(max_iter, allow_none=True)
        self.on_fail = check_choice("on_fail", on_fail, ("raise", "warn"))

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """The cost on the data's device; its float64 copy and the solver on the host."""
        entries = n0 * n1
        if self.sampling is None and n0 == n1:
            solver = self.solver
            if solver == "auto":
                solver = auto_solver(n0, dim) if dim else "emd"
            work = {"emd": _EMD_BYTES, "auction": _AUCTION_BYTES}.get(solver, _ASSIGNMENT_BYTES)
        else:
            work = _PLAN_BYTES
        return MemoryNeed(device=cost_bytes(self.cost_dtype, device) * entries,
                          host=(8 + work) * entries)

    def prepare(self) -> None:
        """Load the certified auction's kernels (``solver`` "auto" or "auction", numba)."""
        if self.solver in ("auto", "auction"):
            load_kernels("exact")

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The exact OT plan, float64 (n0, n1), marginals 1/n0 and 1/n1, on x0's device."""
        check_inputs(x0, x1)
        cost = _cost_np(x0, x1, self.cost_dtype)
        return torch.from_numpy(self._solve(cost, _dim(x0))).to(x0.device)

    def _solve(self, cost: np.ndarray, dim: int) -> np.ndarray:
        n0, n1 = cost.shape
        if n0 == n1:  # an optimal vertex of the Birkhoff polytope is a permutation
            plan = np.zeros((n0, n1))
            plan[np.arange(n0), solve_assignment(cost, self.solver, dim=dim)] = 1.0 / n0
            return plan
        a, b = _uniform_weights(n0), _uniform_weights(n1)
        return emd(a, b, cost, max_iter=self.max_iter, on_fail=self.on_fail)

    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        n0, n1 = x0.shape[0], x1.shape[0]
        if self.sampling is None and n0 == n1:
            if self.n_pairs not in (None, n0):
                raise ValueError(
                    f"n_pairs={self.n_pairs} needs sampling='plan'; the one-to-one pairing of "
                    f"equal batches has exactly {n0} pairs"
                )
            if self._fused(x0):
                return self._pair_fused(x0, x1)
            cost = _cost_np(x0, x1, self.cost_dtype)
            j = solve_assignment(cost, self.solver, dim=_dim(x0))
            info = {"cost": float(cost[np.arange(n0), j].mean())}
            return torch.arange(n0), torch.from_numpy(j), info
        cost = _cost_np(x0, x1, self.cost_dtype)
        plan = self._solve(cost, _dim(x0))
        if self.sampling == "rows":
            i, j = draw_rows(torch.from_numpy(plan), generator)
        else:
            n = resolve_n_pairs(self.n_pairs, max(n0, n1))
            i, j = draw_cells(torch.from_numpy(plan), n, replace=self.replace, generator=generator)
        info = {
            "cost": float((plan * cost).sum()),
            "pair_cost": float(cost[i.numpy(), j.numpy()].mean()),
        }
        return i, j, info


    def _fused(self, x0: Tensor) -> bool:
        """Whether the certified auction takes the points' float32 Gram matrix directly."""
        if x0.device.type != "cpu" or self.cost_dtype != torch.float32:
            return False
        solver = auto_solver(x0.shape[0], _dim(x0)) if self.solver == "auto" else self.solver
        return solver == "auction" and "auction" in available_solvers()

    def _pair_fused(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The one-to-one pairing by the certified auction, the cost built in its kernel.

        The same float32 costs as :func:`sq_cost` (bitwise), made, copied to float64 and
        row-reduced in one pass; without a certificate network simplex solves the reduced cost
        (row minima change no assignment's rank).
        """
        from otcfm._ot.auction import exact_assignment_gram

        n = x0.shape[0]
        a, b = centred(x0.detach(), x1.detach(), torch.float32)
        na, nb = (a * a).sum(1), (b * b).sum(1)
        gram = (a @ b.T).numpy()
        found, reduced, lo = exact_assignment_gram(gram, na.numpy(), nb.numpy())
        del gram
        if found is None:
            if not bool(np.isfinite(reduced).all()):
                raise overflow_error(torch.float32, a, b)
            j = solve_assignment(reduced, "emd", dim=_dim(x0))
            cost = float(reduced[np.arange(n), j].sum() + lo.sum())
            return torch.arange(n), torch.from_numpy(j), {"cost": cost / n}
        return torch.arange(n), torch.from_numpy(found.cols), {"cost": found.cost / n}


# --------------------------------------------------------------------------- partial OT
class PartialOT(Coupling):
    """Exact partial OT: transport only a fraction ``mass`` in (0, 1] of the (unit) mass.

    Solves min <C, P> s.t. P >= 0, P 1 <= 1/n0, P^T 1 <= 1/n1, sum P = mass (the dummy-point
    reduction of Chapel et al. 2020, solved exactly by network simplex with no iteration
    cap), then draws ``n_pairs`` cells with probability P_ij / mass, with or without
    replacement. Default n_pairs = ceil(mass * max(n0, n1)), the transported share of the
    batch, which without replacement is always <= the number of non-zero cells.
    """

    name = "partial"

    def __init__(
        self,
        mass: float = 0.9,
        n_pairs: int | None = None,
        replace: bool = True,
        cost_dtype: torch.dtype = torch.float32,
        *,
        max_iter: int | None = None,
        on_fail: str = "raise",
    ) -> None:
        self.mass = check_positive("mass", mass)
        if self.mass > 1.0:
            raise ValueError(f"mass must be in (0, 1] (a fraction of the unit mass), got {mass!r}")
        self.n_pairs = check_n_pairs(n_pairs)
        self.replace = bool(replace)
        self.cost_dtype = check_cost_dtype(cost_dtype)
        self.max_iter = check_max_iter(max_iter, allow_none=True)
        self.on_fail = check_choice("on_fail", on_fail, ("raise", "warn"))

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """The cost on the data's device; the extended float64 cost and plan on the host."""
        entries = (n0 + 1) * (n1 + 1)
        return MemoryNeed(device=cost_bytes(self.cost_dtype, device) * n0 * n1,
                          host=(8 + _PLAN_BYTES) * entries)

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The partial OT plan, float64 (n0, n1), total mass ``mass``, on x0's device."""
        check_inputs(x0, x1)
        return torch.from_numpy(self._solve(_cost_np(x0, x1, self.cost_dtype))).to(x0.device)

    def _solve(self, cost: np.ndarray) -> np.ndarray:
        n0, n1 = cost.shape
        spare = 1.0 - self.mass  # mass left untransported on each side
        if spare <= 0.0:
            return emd(
                _uniform_weights(n0), _uniform_weights(n1), cost,
                max_iter=self.max_iter, on_fail=self.on_fail,
            )
        # One dummy per side absorbs the untransported mass at zero cost; dummy -> dummy is
        # priced above any real cell so it carries nothing.
        big = 2.0 * float(cost.max()) + 1.0
        ext = np.zeros((n0 + 1, n1 + 1))
        ext[:n0, :n1] = cost
        ext[n0, n1] = big
        a = np.append(_uniform_weights(n0), spare)
        b = np.append(_uniform_weights(n1), spare)
        plan_ext = emd(a, b, ext, max_iter=self.max_iter, on_fail=self.on_fail)
        if plan_ext[n0, n1] > 1e-12:
            raise RuntimeError(
                f"partial OT reduction failed: {plan_ext[n0, n1]:.3g} mass on the dummy cell"
            )
        return np.ascontiguousarray(plan_ext[:n0, :n1])

    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        n0, n1 = x0.shape[0], x1.shape[0]
        cost = _cost_np(x0, x1, self.cost_dtype)
        plan = self._solve(cost)
        n = resolve_n_pairs(self.n_pairs, ceil_count(self.mass * max(n0, n1)))
        i, j = draw_cells(torch.from_numpy(plan), n, replace=self.replace, generator=generator)
        info = {
            "cost": float((plan * cost).sum()),
            "mass": float(plan.sum()),
            "pair_cost": float(cost[i.numpy(), j.numpy()].mean()),
        }
        return i, j, info

