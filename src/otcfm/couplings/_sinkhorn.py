"""Stabilised Sinkhorn in torch (balanced and KL-unbalanced) with epsilon scaling.

Plan parametrisation (uniform weights a = 1/n0, b = 1/n1, potentials f, g in cost units)::

    log P_ij = log a_i + log b_j + (f_i + g_j - C_ij) / eps

which solves min <C, P> + eps KL(P | a b^T) [+ rho KL(P 1 | a) + rho KL(P^T 1 | b)]
(Chizat et al. 2018; rho = inf is the balanced problem). The fixed point is::

    f_i = -(rho / (rho + eps)) eps LSE_j(log b_j + (g_j - C_ij) / eps)      and likewise g.

Numerics:

- log-stabilised scaling (Schmitzer 2019): the potentials stay in the log domain and are
  absorbed into a kernel K = exp(log P) (the current plan, so no entry that matters can
  underflow); between absorptions the iterations are cheap matrix-vector products on
  scalings u, v with P = diag(u) K diag(v), and (f, g) absorb eps log(u, v) as soon as u or v
  leave [e^-30, e^30];
- epsilon scaling (only when max C / reg > 128): eps_1 = s max C, s^2 max C, ..., reg in
  turn, warm-starting the potentials (they live in cost units, so they carry over); a stage
  at max C itself would start from the independent plan and end near it, so the scaling
  starts one step below it; the first kernel is plain exp(-C / eps_1) (it cannot
  underflow: C / eps_1 <= 1 / s, at most ``_ABSORB_LOG``; else the log-domain start), and the
  intermediate stages stop at an L1 marginal error of 1e-2 (only the last one needs tol)
  and, balanced on a float64 cost, iterate on a float32 kernel (half the memory traffic;
  the potentials absorb the scalings in float64, and a stage that crawls towards Newton
  gets a float64 kernel first); a balanced stage starts from the kernel of the previous
  stage's potentials (one exp pass; each row's largest entry multiplies its log-deficit of
  at most log n by 1/s, so with the default s = 0.1 it stays above n^-10, far from float64
  underflow, and from float32's up to n of about 6,000) and falls back to the log-domain
  restart if a row or column did underflow;
- near a permutation (balanced, float64 on a CPU, equal sizes, max C / reg >= 1000, numba
  installed): the plan lives where the optimal assignment's reduced costs are small, so the
  solve starts at that assignment's duals (the certified auction) and runs Sinkhorn-Newton on
  that sparse support (``otcfm._ot.sparse_sinkhorn``); its dense plan's marginal error is
  measured here, and the dense solver below takes over when the support is not sparse (over
  64 entries a row) or the result misses the tolerance;
- Newton polish (balanced, float64, n <= 2048 on the smaller side): where Sinkhorn crawls
  (clustered plans at small eps converge sublinearly), Newton steps on the concave
  semi-dual in f (columns kept exact; pseudo-inverse Hessian, Levenberg-Marquardt damping
  when the full step fails an Armijo test) finish the stage in a few steps. The first
  candidate step is solved matrix-free by preconditioned conjugate gradients (products with
  P and P^T only; in float32 where its digits suffice, and deflated by the Ritz vectors of
  the stage's first step: ``otcfm.couplings._newton_cg``); if the Armijo test refuses it,
  the Hessian is formed and solved by Cholesky (its null vector 1 shifted away), with an
  eigendecomposition as the fallback when no Cholesky step passes. Every 10 Sinkhorn
  iterations of a stage the error's decay over the last 5 predicts how many more it needs;
  above 60, Newton takes over. The steps move the
  scalings of the stage's kernel (P = diag(u) K diag(v)), so trying one costs
  matrix-vector products, not an exponential of the whole cost matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from otcfm.couplings._base import available_memory
from otcfm.couplings._newton_cg import Recycled, cg_step

_STAGE_TOL = 1e-2  # stopping threshold of the intermediate epsilon-scaling stages
_ABSORB_LOG = 30.0  # absorb u, v into the potentials once |log u| or |log v| exceeds this
_CHECK_EVERY = 10  # Sinkhorn iterations between two checks of whether it crawls
_RATE_WINDOW = 5  # the last iterations of such a chunk, whose error decay predicts the rest
_CRAWL = 60  # predicted iterations still needed above which Newton takes over
_NEWTON_STEPS = 30  # most Newton steps per stage
_NEWTON_MAX_N = 2048  # the (n0, n0) eigendecomposition gets too costly beyond this
_DIRECT_RATIO = 128.0  # max C / reg up to which one stage at reg beats epsilon scaling
_EIG_CUTOFF = 1e-13  # relative eigenvalue cutoff of the Hessian pseudo-inverse
_SPARSE_RATIO = 1000.0  # max C / reg from which the near-permutation solve is tried
_SPARSE_ROW = 64  # most support entries per row (on average) of the near-permutation solve
_DAMPING = (0.0, 1e-6, 1e-3)  # Levenberg-Marquardt damping, relative to the top eigenvalue
DENSE_NEWTON_BYTES = 72
"""Bytes per (n0, n0) entry of the formed Newton steps' float64 Hessian, its factorisation and
eigendecomposition (peak resident growth, measured on a CPU). They are the fallback when the
conjugate-gradient step is refused, and run only when that much memory is free at the time."""
EPS_SCALING = 0.1
"""Default factor by which epsilon shrinks between the stages of epsilon scaling (measured in
docs/results/entropic.md: fewer, larger stages cost less, the Newton polish finishing
each one)."""


@dataclass(frozen=True)
class SinkhornResult:
    log_plan: Tensor  # (n0, n1) log P in the work dtype
    iterations: int  # Sinkhorn iterations plus Newton steps, over all stages
    newton_steps: int
    err: float  # the stopping rule's error: balanced L1 marginal error; unbalanced max |d log u|
    converged: bool  # the stopping rule held at the last iteration (err < tol)
    stages: int
    marginal_error: float  # L1 distance of the plan's marginals to their fixed point's
    sparse: bool = False  # answered by the near-permutation solve (see the module doc)
    plan: Tensor | None = None  # exp(log_plan), formed once to measure the marginals


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the iterations everywhere it exists (MPS lacks it)."""
    return torch.float32 if device.type == "mps" else torch.float64


def eps_schedule(reg: float, top: float, scaling: float | None) -> list[float]:
    """Decreasing regularisations from ``scaling * top`` (top: the largest cost) down to ``reg``.

    Up to ``top / reg = 128`` a single stage at ``reg`` converges in tens of iterations and
    the stages' kernel rebuilds cost more than they save (2 to 2.5x slower on the 2-D tasks
    at reg = 2, batch 512), so the schedule is just ``[reg]`` there. Beyond, the stages are
    ``top * scaling^k`` for k = 1, 2, ... while above ``reg``, then ``reg``: a stage at ``top``
    itself (k = 0) only moves the independent plan slightly and costs a kernel (dropping it
    saved 2 to 7% of a solve on moons->8gaussians, batch 256 to 1024).
    """
    if scaling is None or top <= reg * _DIRECT_RATIO:
        return [reg]
    steps = math.ceil(math.log(reg / top) / math.log(scaling))
    return [top * scaling**k for k in range(1, steps)] + [reg]


def _fraction(rho: float, eps: float) -> float:
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


class _State:
    """Potentials (f, g) plus the kernel K and scalings (u, v) at one epsilon."""

    def __init__(self, C: Tensor) -> None:
        n0, n1 = C.shape
        self.C = C
        self.la = torch.full((n0,), -math.log(n0), dtype=C.dtype, device=C.device)
        self.lb = torch.full((n1,), -math.log(n1), dtype=C.dtype, device=C.device)
        self.a, self.b = self.la.exp(), self.lb.exp()
        self.f = torch.zeros(n0, dtype=C.dtype, device=C.device)
        self.g = torch.zeros(n1, dtype=C.dtype, device=C.device)
        self.C_w = C
        self.precision(C.dtype)

    def precision(self, dtype: torch.dtype) -> None:
        """The dtype of the kernel, the scalings and their iterations from the next kernel on.

        The potentials f, g and the cost stay in the cost's dtype (they absorb the scalings
        there); a lower one halves the memory traffic of the stages that stop early.
        """
        self.w = dtype
        self.a_w, self.b_w = self.a.to(dtype), self.b.to(dtype)
        if self.C_w.dtype != dtype:  # one copy of C in the lower dtype, kept while used
            self.C_w = self.C.to(dtype)

    # (n0, n1) expressions are written as one broadcast add and one scaled subtraction of
    # C: each temporary is a full pass over memory (about 5x faster than the naive form)
    def log_plan(self, eps: float, dtype: torch.dtype | None = None) -> Tensor:
        row, col, C = self.la + self.f / eps, self.lb + self.g / eps, self.C
        if dtype is not None and dtype != C.dtype:
            row, col, C = row.to(dtype), col.to(dtype), self.C_w
        return torch.sub(row[:, None] + col[None, :], C, alpha=1.0 / eps)

    def update_f(self, eps: float, fi0: float = 1.0) -> None:
        col = (self.lb + self.g / eps)[None, :]
        self.f = -fi0 * eps * torch.logsumexp(torch.sub(col, self.C, alpha=1.0 / eps), dim=1)

    def update_g(self, eps: float, fi1: float = 1.0) -> None:
        row = (self.la + self.f / eps)[:, None]
        lse = torch.logsumexp(torch.sub(row, self.C, alpha=1.0 / eps), dim=0)
        self.g = -fi1 * eps * lse

    def restart(self, eps: float, fi0: float, fi1: float) -> None:
        """Log-domain f- then g-update (safe from any potentials), then a fresh kernel.

        Afterwards the column marginal is exact, as after every scaling iteration, and no
        row or column of K has underflowed.
        """
        self.update_f(eps, fi0)
        self.update_g(eps, fi1)
        self.K = self.log_plan(eps, self.w).exp()
        self.u = self.f.new_ones(self.f.shape, dtype=self.w)
        self.v = self.g.new_ones(self.g.shape, dtype=self.w)

    def rekernel(self, eps: float) -> bool:
        """Rebuild the kernel of the current potentials at a new eps.

        Kernel of the current potentials at a new eps, columns made exact; False (and
        nothing changed) if a row or column of it underflowed or overflowed.
        """
        K = self.log_plan(eps, self.w).exp()
        rows, cols = K.sum(1), K.sum(0)
        ok = torch.stack([rows.min(), cols.min(), rows.max(), cols.max()])
        lo_r, lo_c, hi_r, hi_c = ok.tolist()
        if not (min(lo_r, lo_c) > 0 and math.isfinite(max(hi_r, hi_c))):
            return False
        self.K = K
        self.u = self.f.new_ones(self.f.shape, dtype=self.w)
        self.v = self.b_w / cols
        return True

    def absorb(self, eps: float) -> None:
        """Move the scalings into the potentials, unless they blew up (then drop them)."""
        log_u, log_v = self.u.log(), self.v.log()
        if bool(torch.isfinite(log_u).all() and torch.isfinite(log_v).all()):
            self.f = self.f + eps * log_u
            self.g = self.g + eps * log_v
        self.u = self.f.new_ones(self.f.shape, dtype=self.w)
        self.v = self.g.new_ones(self.g.shape, dtype=self.w)


def log_sinkhorn(
    cost: Tensor,
    reg: float,
    *,
    rho: tuple[float, float] = (math.inf, math.inf),
    max_iter: int = 10_000,
    tol: float = 1e-6,
    scaling: float | None = EPS_SCALING,
    newton: bool = True,
    cg: bool = True,
    sparse: bool = True,
) -> SinkhornResult:
    """Solve (unbalanced) entropic OT between uniform weights for ``cost`` (n0, n1).

    ``cg=False`` skips the conjugate-gradient candidate of the Newton steps (the Hessian is
    formed for every step), ``sparse=False`` the near-permutation solve: the same fixed
    point, for comparing speed.
    """
    if cost.shape[0] > cost.shape[1]:  # Newton's Hessian lives on the first (smaller) side
        res = log_sinkhorn(
            cost.T, reg, rho=(rho[1], rho[0]), max_iter=max_iter, tol=tol, scaling=scaling,
            newton=newton, cg=cg, sparse=sparse,
        )
        return replace(res, log_plan=res.log_plan.T,
                       plan=None if res.plan is None else res.plan.T)
    s = _State(cost.to(work_dtype(cost.device)))
    balanced = math.isinf(rho[0]) and math.isinf(rho[1])
    newton = newton and balanced and s.C.dtype == torch.float64
    top = float(s.C.max())
    if sparse and newton and scaling is not None and top >= reg * _SPARSE_RATIO:
        near = _near_permutation(s, reg, tol, max_iter)
        if near is not None:
            return near
    newton = newton and s.C.shape[0] <= _NEWTON_MAX_N
    schedule = eps_schedule(reg, top, scaling)
    it, steps, err, converged = 0, 0, math.inf, False
    for k, eps in enumerate(schedule):
        last_stage = k == len(schedule) - 1
        limit = max_iter if last_stage else max_iter // 2
        stop = tol if last_stage else max(tol, _STAGE_TOL)
        fi0, fi1 = _fraction(rho[0], eps), _fraction(rho[1], eps)
        # a stage that stops at _STAGE_TOL iterates in float32 (its rounding is far below)
        low = balanced and not last_stage and s.C.dtype == torch.float64
        s.precision(torch.float32 if low else s.C.dtype)
        # zero potentials and costs within _ABSORB_LOG eps: the plain kernel cannot underflow
        fresh = k == 0 and top > eps * _ABSORB_LOG
        if fresh or not balanced or not s.rekernel(eps):
            s.restart(eps, fi0, fi1)
        converged = False
        while not converged and it < limit:
            # Sinkhorn for a while; where it crawls, Newton steps; repeat
            if not newton:
                it, err, converged = _iterate(s, eps, fi0, fi1, it, limit, stop, balanced, reg)
                break
            chunk = min(limit, it + _CHECK_EVERY)
            it, before, converged = _iterate(s, eps, fi0, fi1, it, chunk - _RATE_WINDOW, stop,
                                             balanced, reg)
            err = before
            if not converged:
                it, err, converged = _iterate(s, eps, fi0, fi1, it, chunk, stop, balanced, reg)
            if not converged and it < limit and _crawls(before, err, stop):
                if s.w != s.C.dtype:  # Newton works in the cost's dtype: a kernel there
                    s.absorb(eps)
                    s.precision(s.C.dtype)
                    if not s.rekernel(eps):
                        s.restart(eps, fi0, fi1)
                    continue
                done, err, converged, stale = _newton(
                    s, eps, stop, min(_NEWTON_STEPS, limit - it), cg)
                it, steps = it + done, steps + done
                if stale:  # the steps left the kernel's range: a fresh one
                    s.restart(eps, fi0, fi1)
        s.absorb(eps)
    log_plan = s.log_plan(reg)
    plan = log_plan.exp()
    marginal = marginal_error(plan, s.a, s.b, s.f, s.g, rho)
    if not _finite(marginal, s):
        raise RuntimeError(f"Sinkhorn produced a non-finite plan (reg={reg:.3g}, {it} iterations)")
    if balanced:
        err = marginal
        converged = converged or err <= tol
    return SinkhornResult(log_plan, it, steps, err, converged, len(schedule), marginal,
                          plan=plan)


def _near_permutation(s: _State, reg: float, tol: float, max_iter: int
                      ) -> SinkhornResult | None:
    """The sparse solve from the optimal assignment's duals (see the module doc), or None.

    None where it does not apply (not a square CPU problem, numba missing, no certified
    assignment, a support denser than ``_SPARSE_ROW`` a row) or where its dense plan's
    marginal error exceeds ``tol``: the caller then solves densely.
    """
    from otcfm._ot import auction_kernels

    n0, n1 = s.C.shape
    if n0 != n1 or n0 < 2 or s.C.device.type != "cpu" or not auction_kernels.available():
        return None
    from otcfm._ot.auction import certified_assignment
    from otcfm._ot.sparse_sinkhorn import sparse_sinkhorn

    c = s.C.detach().contiguous().numpy()
    lo = c.min(1)
    reduced = c - lo[:, None]
    found = certified_assignment(reduced, float(lo.sum()), float(reduced.sum()),
                                 float(reduced.max()))
    if found is None:
        return None
    q = found.prices
    f0 = (reduced + q[None, :]).min(1) + lo  # with g0 = -q: f0_i + g0_j <= C_ij
    del reduced
    res = sparse_sinkhorn(c, reg, f0, -q, tol=tol, max_iter=max_iter, max_row=_SPARSE_ROW)
    if res is None:
        return None
    s.f, s.g = torch.from_numpy(res.f), torch.from_numpy(res.g)
    log_plan = s.log_plan(reg)
    plan = log_plan.exp()
    marginal = marginal_error(plan, s.a, s.b, s.f, s.g, (math.inf, math.inf))
    if not (marginal <= tol and _finite(marginal, s)):
        return None
    return SinkhornResult(log_plan, res.iterations, res.newton_steps, marginal, True, 1, marginal,
                          sparse=True, plan=plan)


def _finite(marginal: float, s: _State) -> bool:
    """Whether log P = (f + g - C) / eps is finite, from its marginal error and potentials.

    A NaN or +inf entry of log P makes a marginal of P non-finite; a -inf one (from a
    finite cost) needs a non-finite potential. O(n) where a check of log P is O(n0 n1).
    """
    return math.isfinite(marginal) and bool(torch.isfinite(s.f).all() & torch.isfinite(s.g).all())


def marginal_error(
    plan: Tensor, a: Tensor, b: Tensor, f: Tensor, g: Tensor, rho: tuple[float, float]
) -> float:
    """``|P 1 - a e^{-f / rho0}|_1`` + ``|P^T 1 - b e^{-g / rho1}|_1`` (e^{-f/inf} = 1).

    At the fixed point the plan's marginals are exactly a e^{-f / rho0} and b e^{-g / rho1}
    (balanced: a and b), so this is zero at the solution and, balanced, the L1 marginal error
    ``|P 1 - a|_1`` + ``|P^T 1 - b|_1`` (the total mass is 1, so it lies in [0, 2]).
    """
    rows = a if math.isinf(rho[0]) else a * torch.exp(-f / rho[0])
    cols = b if math.isinf(rho[1]) else b * torch.exp(-g / rho[1])
    return float((plan.sum(1) - rows).abs().sum() + (plan.sum(0) - cols).abs().sum())


def _iterate(
    s: _State, eps: float, fi0: float, fi1: float, it: int, limit: int, stop: float,
    balanced: bool, reg: float,
) -> tuple[int, float, bool]:
    """Scaling iterations until the error drops below ``stop`` or ``it`` reaches ``limit``.

    Balanced error: L1 row-marginal error of the plan before the update (its columns are
    exact after every v-update). Unbalanced: max ``|delta log u|`` of the update.
    """
    err = math.inf
    while it < limit:
        it += 1
        Kv = s.K @ s.v
        if balanced:
            u = s.a_w / Kv
            v = s.b_w / (s.K.T @ u)
            err_t = torch.linalg.vector_norm(s.u * Kv - s.a_w, 1)
        else:  # the total potential f + eps log u shrinks by fi as well
            log_u = fi0 * (s.la - Kv.log()) - (1.0 - fi0) * s.f / eps
            u = log_u.exp()
            v = (fi1 * (s.lb - (s.K.T @ u).log()) - (1.0 - fi1) * s.g / eps).exp()
            err_t = (log_u - s.u.log()).abs().max()
        # one device sync per iteration: the error and the scalings' extremes
        err, *ends = torch.stack([err_t, *torch.aminmax(u), *torch.aminmax(v)]).tolist()
        big = max(abs(math.log(e)) if e > 0.0 else math.inf for e in ends)  # NaN: inf
        if not math.isfinite(err):
            raise RuntimeError(f"Sinkhorn diverged (error {err}) at iteration {it}, reg={reg:.3g}")
        if balanced and err < stop:
            return it, err, True
        s.u, s.v = u, v
        if err < stop:
            return it, err, True
        if not big <= _ABSORB_LOG:  # also on NaN: absorb drops non-finite scalings
            s.absorb(eps)
            s.restart(eps, fi0, fi1)
    return it, err, False


def _crawls(before: float, after: float, stop: float) -> bool:
    """Whether Sinkhorn needs more than ``_CRAWL`` more iterations to reach ``stop``.

    Predicted from the error's geometric decay from ``before`` to ``after`` over the last
    ``_RATE_WINDOW`` iterations (a plan that converges fast is left to Sinkhorn; a clustered
    one that crawls goes to Newton).
    """
    if not after < before:
        return True
    per_iteration = math.log(after / before) / _RATE_WINDOW
    return math.log(stop / after) / per_iteration > _CRAWL


def _semi_dual(s: _State, f: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Column log-sums of the semi-dual at f (g(f) = -eps lse makes columns exact); plan.

    The concave semi-dual is F(f) = <a, f> - eps <b, lse(f)>.
    """
    Z = torch.sub((s.la + f / eps)[:, None], s.C, alpha=1.0 / eps)
    lse = torch.logsumexp(Z, dim=0)
    return lse, (Z - (lse - s.lb)[None, :]).exp_()


def _newton(s: _State, eps: float, stop: float, max_steps: int, cg: bool = True
            ) -> tuple[int, float, bool, bool]:
    """Damped Newton ascent on the semi-dual in f (balanced), on the current kernel.

    The plan stays P = diag(u) K diag(v) with v = b / (K^T u) (columns exact), so a step d
    in f is u <- u e^(d / eps), and the semi-dual's change is
    F(f + d) - F(f) = <a, d> - eps <b, log(K^T u_new) - log(K^T u)>: matrix-vector products,
    no exponential of the (n0, n1) cost (entries of K that underflowed stay below
    e^(-700) of a row's mass while u stays within e^(+-``_ABSORB_LOG``), as in the scaling
    iterations). A step that would take u out of that range moves the rest of the solve to
    the log domain (``_newton_log``). Each step tries the (pseudo-inverse) Newton step, then
    Levenberg-Marquardt damped ones until one passes the Armijo test (``_newton_steps``);
    gives up (back to Sinkhorn) when none passes. Returns (steps, error, converged, whether
    the kernel must be rebuilt); leaves s.u, s.v (or s.f, s.g) at the last accepted step.
    """
    state = {"u": s.u, "col": s.K.T @ s.u}

    def plan_of(u: Tensor, col: Tensor) -> Tensor:
        return u[:, None] * s.K * (s.b / col)[None, :]

    def trial(d: Tensor) -> tuple[float, Callable[[], Tensor]] | None:
        new_log_u = state["u"].log() + d / eps
        if not float(new_log_u.abs().max()) <= _ABSORB_LOG:
            return None
        new_u = new_log_u.exp()
        new_col = s.K.T @ new_u
        gain = float(s.a @ d) - eps * float(s.b @ (new_col / state["col"]).log())

        def accept() -> Tensor:
            state.update(u=new_u, col=new_col)
            return plan_of(new_u, new_col)

        return gain, accept

    plan = plan_of(state["u"], state["col"])
    step, err, leave = _damped_newton(s, eps, stop, max_steps, cg, plan, trial)
    s.u, s.v = state["u"], s.b / state["col"]
    if leave:
        s.absorb(eps)
        done, err, converged = _newton_log(s, eps, stop, max_steps - step, cg)
        return step + done, err, converged, True
    return step, err, err < stop, False


def _newton_log(s: _State, eps: float, stop: float, max_steps: int, cg: bool = True
                ) -> tuple[int, float, bool]:
    """``_newton`` in the log domain from s.f (no kernel; each trial is an exp of the cost).

    For steps too long for the kernel's scalings; updates s.f, s.g.
    """
    lse, plan = _semi_dual(s, s.f, eps)
    state = {"f": s.f, "lse": lse}

    def trial(d: Tensor) -> tuple[float, Callable[[], Tensor]]:
        new_lse, new_plan = _semi_dual(s, state["f"] + d, eps)
        gain = float(s.a @ d) - eps * float(s.b @ (new_lse - state["lse"]))

        def accept() -> Tensor:
            state.update(f=state["f"] + d, lse=new_lse)
            return new_plan

        return gain, accept

    step, err, _ = _damped_newton(s, eps, stop, max_steps, cg, plan, trial)
    s.f = state["f"]
    s.update_g(eps)
    return step, err, err < stop


def _damped_newton(
    s: _State, eps: float, stop: float, max_steps: int, cg: bool, plan: Tensor,
    trial: Callable[[Tensor], tuple[float, Callable[[], Tensor]] | None],
) -> tuple[int, float, bool]:
    """The Newton loop of both domains: (steps, error, whether a step left the domain).

    Each step offers the candidates of ``_newton_steps`` to ``trial(d)``, which returns the
    semi-dual's gain F(f + d) - F(f) and an ``accept()`` giving the new plan, or None when the
    step cannot be evaluated in its domain (the loop stops there); the first candidate that
    passes the Armijo test is accepted. Stops at ``stop`` (L1 row error), after ``max_steps``,
    or when no candidate passes.
    """
    err = math.inf
    recycled = Recycled()  # the conjugate-gradient steps pass their slow directions on
    for step in range(max_steps + 1):
        grad = s.a - plan.sum(1)
        err = float(grad.abs().sum())
        if err < stop or step == max_steps:
            break
        for d in _newton_steps(plan, s.b, eps, grad, cg, recycled):
            tried = trial(d)
            if tried is None:
                return step, err, True
            gain, accept = tried
            if gain >= 1e-4 * float(grad @ d):
                break
        else:
            break
        plan = accept()
    return step, err, False


def _newton_steps(plan: Tensor, b: Tensor, eps: float, grad: Tensor, cg: bool = True,
                  recycled: Recycled | None = None) -> Iterator[Tensor]:
    """Candidate Newton ascent steps for the Hessian of the entropic dual.

    Candidate ascent steps for the Hessian H = (diag(P 1) - P diag(1/b) P^T) / eps of -F
    (PSD, null vector 1): first H^+ grad by conjugate gradients, then, formed, H^+ grad and
    (H + damping top I)^+ grad for each damping.

    The conjugate-gradient step (``_newton_cg.cg_step``) needs only products with P and P^T
    (O(n0 n1) each, against n0^2 n1 to form H). ``grad`` sums to 0 (columns exact) and H's
    null vector is 1, so H + (top/n) 1 1^T is positive definite on a connected plan and its
    Cholesky solve is the pseudo-inverse step (n^3/3 flops). If every such step is refused
    (or the factorisation fails, e.g. a nearly disconnected plan), the steps are recomputed
    from an eigendecomposition that drops the eigenvalues below a relative cutoff (about 20
    times dearer). The formed steps need ``DENSE_NEWTON_BYTES`` per (n0, n0) entry and are
    skipped (back to Sinkhorn) when that much memory is not free.
    """
    if cg:
        yield cg_step(plan, b, eps, grad, recycled)
    n = plan.shape[0]
    free = available_memory(plan.device)
    if free is not None and free < DENSE_NEWTON_BYTES * n * n:
        return
    hess = (torch.diag(plan.sum(1)) - (plan / b) @ plan.T) / eps
    scale = float(hess.diagonal().max())  # the top eigenvalue lies in [scale, 2 scale]
    shifted = hess + scale / n
    eye = torch.eye(n, dtype=hess.dtype, device=hess.device)
    for damping in _DAMPING:
        chol, info = torch.linalg.cholesky_ex(shifted + (damping * scale) * eye)
        if int(info) == 0:
            yield torch.cholesky_solve(grad[:, None], chol)[:, 0]
    w, V = torch.linalg.eigh(hess)
    top = float(w.max())
    keep = w > top * _EIG_CUTOFF
    w, V = w[keep], V[:, keep]
    proj = V.T @ grad
    for damping in _DAMPING:
        yield V @ (proj / (w + damping * top))
