"""Entropic (SB-CFM) and unbalanced entropic couplings, solved in torch on the data's device."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from otcfm._ot.warm import load_kernels
from otcfm._utils import check_positive
from otcfm.couplings._base import (
    ConvergenceError,
    ConvergenceWarning,
    Coupling,
    MemoryNeed,
    check_choice,
    check_cost_dtype,
    check_inputs,
    check_max_iter,
    check_n_pairs,
    cost_bytes,
    draw_cells,
    draw_rows,
    resolve_n_pairs,
    sq_cost,
)
from otcfm.couplings._sinkhorn import (
    EPS_SCALING,
    SinkhornResult,
    log_sinkhorn,
)


def _check_scaling(scaling: Any) -> float | None:
    if scaling is None:
        return None
    s = check_positive("eps_scaling", scaling)
    if s >= 1.0:
        raise ValueError(f"eps_scaling must be None or in (0, 1), got {scaling!r}")
    return s


def _plan_of(res: SinkhornResult) -> Tensor:
    """The plan of a Sinkhorn result: the one it formed, else exp(log_plan)."""
    return res.log_plan.exp() if res.plan is None else res.plan


class _SinkhornCoupling(Coupling):
    """Shared plumbing: cost -> Sinkhorn -> checks -> pairs drawn from the plan."""

    reports_convergence = True
    _rho: tuple[float, float] = (math.inf, math.inf)
    # bytes per entry beyond the cost, all on the data's device: the scaled cost, the float64
    # cost, kernel and log-plan temporaries of Sinkhorn, then plan, weights and the float64
    # cost of the pairs' info (peak RSS growth of one call at B = 2048, d = 2, on a CPU)
    _work_bytes: int = 41

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """Everything on the data's device: cost, Sinkhorn's float64 matrices and the plan.

        The Newton polish's conjugate-gradient steps need only vectors; its formed-Hessian fallback
        runs only when its own memory is free then (``DENSE_NEWTON_BYTES``).
        """
        need = (cost_bytes(self.cost_dtype, device) + self._work_bytes) * n0 * n1
        return MemoryNeed(device=need)

    def prepare(self) -> None:
        """Load the kernels of the near-permutation solve (balanced plans, numba)."""
        if self._rho == (math.inf, math.inf):
            load_kernels("exact", "entropic")

    def __init__(
        self,
        reg: float,
        *,
        max_iter: int,
        tol: float,
        sampling: str,
        n_pairs: int | None,
        replace: bool,
        on_fail: str,
        cost_dtype: torch.dtype,
        normalize_cost: bool,
        eps_scaling: float | None,
    ) -> None:
        self.reg = check_positive("reg", reg)
        self.max_iter = check_max_iter(max_iter)
        self.tol = check_positive("tol", tol)
        sampling = check_choice("sampling", sampling, ("rows", "joint", "plan"))
        self.sampling = "joint" if sampling == "plan" else sampling
        self.n_pairs = check_n_pairs(n_pairs)
        if self.sampling == "rows" and self.n_pairs is not None:
            raise ValueError("n_pairs applies to sampling='joint'; 'rows' draws one pair per x0")
        self.replace = bool(replace)
        self.on_fail = check_choice("on_fail", on_fail, ("warn", "raise"))
        self.cost_dtype = check_cost_dtype(cost_dtype)
        self.normalize_cost = bool(normalize_cost)
        self.eps_scaling = _check_scaling(eps_scaling)

    # ---------------------------------------------------------------- solving
    def _solve(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, SinkhornResult, float]:
        cost = sq_cost(x0, x1, self.cost_dtype)
        scale = float(cost.max()) if self.normalize_cost else 1.0
        scaled = cost / scale if scale > 0 else cost
        res = log_sinkhorn(
            scaled, self.reg, rho=self._rho, max_iter=self.max_iter, tol=self.tol,
            scaling=self.eps_scaling,
        )
        if not res.converged:
            self._not_converged(res)
        return cost, res, scale

    def _not_converged(self, res: SinkhornResult) -> None:
        if self._rho == (math.inf, math.inf):
            reached = f"L1 marginal error {res.marginal_error:.3g} > tol={self.tol:.3g}"
        else:
            reached = (f"potential change {res.err:.3g} > tol={self.tol:.3g}, L1 marginal error "
                       f"{res.marginal_error:.3g}")
        msg = (
            f"{type(self).__name__} did not converge: reg={self.reg:.3g}, {res.iterations} "
            f"iterations (max_iter={self.max_iter}), {reached}; raise max_iter or reg "
            f"(coupling spec '{self.name}:reg=...,max_iter=...')"
        )
        if self.on_fail == "raise":
            raise ConvergenceError(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=5)

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The entropic plan (n0, n1) on the data's device (float64; float32 on MPS)."""
        check_inputs(x0, x1)
        return _plan_of(self._solve(x0, x1)[1])

    # ---------------------------------------------------------------- pairing
    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        cost, res, scale = self._solve(x0, x1)
        log_plan = res.log_plan
        plan = _plan_of(res)
        mass = float(plan.sum())
        if self.sampling == "rows":
            # rows of the plan itself, unless one is so light (below sqrt of the smallest
            # normal number) that underflow could cost it precision: then each row rescaled
            # by its largest entry
            light = not float(plan.sum(1).min()) > torch.finfo(plan.dtype).tiny ** 0.5
            weights = (log_plan - log_plan.amax(1, keepdim=True)).exp() if light else plan
            i, j = draw_rows(weights, generator)
        else:
            n = resolve_n_pairs(self.n_pairs, max(x0.shape[0], x1.shape[0]))
            i, j = draw_cells(plan, n, replace=self.replace, generator=generator)
        cost64 = cost.to(plan.dtype)
        info = {
            "cost": float(torch.vdot(plan.reshape(-1), cost64.reshape(-1))) / mass,
            "pair_cost": float(cost64[i, j].mean()),
            "mass": mass,
            "iterations": res.iterations,
            "newton_steps": res.newton_steps,
            "err": res.err,
            "converged": float(res.converged),
            "marginal_error": res.marginal_error,
            "tol": self.tol,
            "reg": self.reg,
            "cost_scale": scale,
        }
        return i, j, info


class EntropicOT(_SinkhornCoupling):
    """Entropic OT coupling: the coupling of SB-CFM.

    Entropic OT coupling: q(z) = pi_reg of SB-CFM with reg = 2 sigma^2 (Tong et al. 2024,
    Prop. 3.5); reg -> 0 gives exact OT, reg -> inf the independent coupling.

    The plan solves min_P <C, P> - reg H(P) with uniform marginals, C the squared Euclidean
    cost (divided by its max when ``normalize_cost``, making reg relative). Solved in torch
    on the data's device by stabilised log-domain Sinkhorn (float64 potentials; the early
    epsilon-scaling stages iterate on float32 kernels) with epsilon scaling (factor
    ``eps_scaling`` per stage, from ``eps_scaling`` max C down to reg; None disables) and a
    Newton polish.

    Stopping rule: the L1 marginal error ``|P 1 - a|_1`` + ``|P^T 1 - b|_1`` against the uniform
    weights a = 1/n0, b = 1/n1 (the plan's mass is 1, so the error lies in [0, 2]; columns
    are exact after every column update, so each iteration measures the rows), below ``tol``
    at reg itself (the intermediate epsilon-scaling stages stop at max(tol, 1e-2)).
    ``max_iter`` counts iterations and Newton steps over all stages. Every pairing reports
    how the solve ended (:attr:`Pairing.convergence`: converged, the marginal error of the
    returned plan, iterations, tol). If ``max_iter`` runs out first it warns
    (:class:`ConvergenceWarning`, ``on_fail="warn"``) or raises :class:`ConvergenceError`
    (``"raise"``), naming reg, the error reached and the iterations; a non-finite plan
    always raises.

    ``sampling="rows"``: each x0_i once, j ~ P(j | i) (the pairs are distributed as P
    because P's row marginal is uniform). ``sampling="joint"`` (alias ``"plan"``):
    ``n_pairs`` (default max(n0, n1)) cells (i, j) ~ P, with or without replacement.
    """

    name = "entropic"

    def __init__(
        self,
        reg: float,
        max_iter: int = 10_000,
        tol: float = 1e-6,
        sampling: str = "rows",
        cost_dtype: torch.dtype = torch.float32,
        normalize_cost: bool = False,
        *,
        on_fail: str = "warn",
        n_pairs: int | None = None,
        replace: bool = True,
        eps_scaling: float | None = EPS_SCALING,
    ) -> None:
        super().__init__(
            reg, max_iter=max_iter, tol=tol, sampling=sampling, n_pairs=n_pairs,
            replace=replace, on_fail=on_fail, cost_dtype=cost_dtype,
            normalize_cost=normalize_cost, eps_scaling=eps_scaling,
        )


class UnbalancedOT(_SinkhornCoupling):
    """Entropic unbalanced OT: marginals relaxed by KL penalties of weight ``reg_m``.

    The plan solves min_P <C, P> + reg KL(P | a b^T) + reg_m0 KL(P 1 | a) + reg_m1 KL(P^T 1 | b)
    (Chizat et al. 2018; the objective of POT's ``sinkhorn_unbalanced`` with reg_type="kl").
    ``reg_m`` is a number or a pair (reg_m0, reg_m1); ``float("inf")`` on one side keeps that
    marginal exact. Log-domain Sinkhorn in torch; converged when the potentials change by
    less than ``tol`` (max ``|delta log u|``) in one iteration. The reported marginal error
    (:attr:`Pairing.convergence`) is
    ``|P 1 - a e^{-f / reg_m0}|_1`` + ``|P^T 1 - b e^{-g / reg_m1}|_1`` for the final
    potentials f, g: the plan's marginals against those its fixed point prescribes, zero at
    the solution. ``on_fail`` as for :class:`EntropicOT`.

    Pairs: ``sampling="joint"`` (default) draws ``n_pairs`` (default max(n0, n1)) cells from
    P / sum(P), so outliers the plan leaves out are rarely paired; ``"rows"`` keeps every x0
    once.
    """

    name = "unbalanced"
    _work_bytes = 49

    def __init__(
        self,
        reg: float,
        reg_m: float | tuple[float, float],
        max_iter: int = 10_000,
        tol: float = 1e-6,
        sampling: str = "joint",
        cost_dtype: torch.dtype = torch.float32,
        normalize_cost: bool = False,
        *,
        on_fail: str = "warn",
        n_pairs: int | None = None,
        replace: bool = True,
        eps_scaling: float | None = EPS_SCALING,
    ) -> None:
        super().__init__(
            reg, max_iter=max_iter, tol=tol, sampling=sampling, n_pairs=n_pairs,
            replace=replace, on_fail=on_fail, cost_dtype=cost_dtype,
            normalize_cost=normalize_cost, eps_scaling=eps_scaling,
        )
        pair = tuple(reg_m) if isinstance(reg_m, (tuple, list)) else (reg_m, reg_m)
        if len(pair) != 2:
            raise ValueError(f"reg_m must be a number or a pair of numbers, got {reg_m!r}")
        self.reg_m = tuple(_check_reg_m(v) for v in pair)
        self._rho = self.reg_m


def _check_reg_m(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"reg_m must be a number, got {value!r}") from None
    if math.isnan(v) or v <= 0:
        raise ValueError(f"reg_m must be > 0 (inf for an exact marginal), got {value!r}")
    return v
