"""Entropic and unbalanced couplings: marginals, limits in reg, POT oracles, failure modes."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.spatial.distance import cdist

from otcfm.couplings import (
    ConvergenceError,
    ConvergenceWarning,
    EntropicOT,
    ExactOT,
    UnbalancedOT,
    _newton_cg,
    _sinkhorn,
    coupling,
)
from otcfm.couplings._newton_cg import CG_RTOL as _CG_RTOL
from otcfm.couplings._newton_cg import cg_step as _cg_step
from otcfm.couplings._sinkhorn import eps_schedule, log_sinkhorn


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def sqdist(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    return cdist(x0.double().numpy(), x1.double().numpy(), "sqeuclidean")


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def marginal_l1(P: torch.Tensor) -> float:
    n0, n1 = P.shape
    return float((P.sum(1) - 1 / n0).abs().sum() + (P.sum(0) - 1 / n1).abs().sum())


# data of scale ~10: squared distances up to ~2000
X0, X1 = randn(40, 2, seed=1, scale=10.0), randn(30, 2, seed=2, scale=10.0) + 3.0
REGS = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


@pytest.fixture(scope="module")
def plans() -> dict[float, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return {r: EntropicOT(reg=r, cost_dtype=torch.float64).plan(X0, X1) for r in REGS}


def test_small_reg_underflows_a_plain_kernel():
    # the regime the log-domain solver must handle: exp(-C / reg) is zero on whole rows
    kernel = np.exp(-sqdist(X0, X1) / 1e-3)
    assert (kernel.sum(1) == 0).sum() >= 30


@pytest.mark.parametrize("reg", REGS)
def test_marginals_within_tol(plans, reg):
    P = plans[reg]
    assert P.dtype == torch.float64 and P.shape == (40, 30)
    assert bool(torch.isfinite(P).all()) and bool((P >= 0).all())
    assert marginal_l1(P) <= 1e-6


def test_cost_tends_to_exact_ot_as_reg_shrinks(plans):
    C = sqdist(X0, X1)
    exact = ot.emd2(uniform(40), uniform(30), C)
    costs = [float((plans[r].numpy() * C).sum()) for r in REGS]
    assert (costs[0] - exact) / exact < 1e-2
    assert costs[0] >= exact * (1 - 1e-6)
    # <C, P_eps> is non-decreasing in eps
    assert all(b >= a * (1 - 1e-6) for a, b in zip(costs, costs[1:], strict=False))


def test_large_reg_tends_to_independent():
    P = EntropicOT(reg=1e8).plan(X0, X1)
    assert torch.allclose(P * 40 * 30, torch.ones(40, 30, dtype=torch.float64), atol=1e-3)


def test_agrees_with_pot_sinkhorn():
    x0, x1 = randn(30, 3, seed=3), randn(20, 3, seed=4) + 0.5
    C = sqdist(x0, x1)
    ref = ot.sinkhorn(
        uniform(30), uniform(20), C, 0.5, method="sinkhorn_log", stopThr=1e-13, numItermax=10**5
    )
    ours = EntropicOT(reg=0.5, tol=1e-11, cost_dtype=torch.float64).plan(x0, x1).numpy()
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-12)


def test_normalize_cost_makes_reg_relative():
    C = sqdist(X0, X1)
    rel = EntropicOT(reg=0.01, normalize_cost=True, cost_dtype=torch.float64).plan(X0, X1)
    absolute = EntropicOT(reg=0.01 * C.max(), cost_dtype=torch.float64).plan(X0, X1)
    assert torch.allclose(rel, absolute, rtol=1e-5, atol=1e-12)


def test_eps_scaling_is_only_a_speedup():
    a = EntropicOT(reg=1.0, tol=1e-10, cost_dtype=torch.float64).plan(X0[:20], X1[:15])
    b = EntropicOT(reg=1.0, tol=1e-10, eps_scaling=None, cost_dtype=torch.float64).plan(
        X0[:20], X1[:15]
    )
    # both within tol = 1e-10 (L1 marginal error) of the same fixed point: entries agree at
    # that scale (the single stage crawls and stops just under tol)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-10)


def clustered_cost(n: int, seed: int) -> torch.Tensor:
    """Squared distances from N(0, I) to 8 tight clusters at radius 12 (float64): the
    clustered plans at small reg on which Sinkhorn crawls and the Newton polish runs."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(8, dtype=torch.float64) * (torch.pi / 4)
    centres = 12.0 * torch.stack([ang.cos(), ang.sin()], 1)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x1 = centres[torch.randint(0, 8, (n,), generator=g)] + 0.3 * torch.randn(
        n, 2, generator=g, dtype=torch.float64)
    return torch.cdist(x0, x1).pow(2)


def test_cg_newton_step_solves_the_hessian_system():
    """The matrix-free step against the formed Hessian H = (diag(P 1) - P diag(1/b) P^T) /
    eps: relative residual |H d - grad| / |grad| within the CG tolerance, d of mean 0, and
    close to the pseudo-inverse solution (the same system solved by eigendecomposition)."""
    cost, eps = clustered_cost(96, 0), 0.5
    plan = log_sinkhorn(cost, eps, tol=1e-9).log_plan.exp()
    b = plan.sum(0)
    hess = (torch.diag(plan.sum(1)) - (plan / b) @ plan.T) / eps
    grad = torch.randn(96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad -= grad.mean()  # in the range of H (its null vector is 1)
    d = _cg_step(plan, b, eps, grad)
    residual = float((hess @ d - grad).norm() / grad.norm())
    assert residual <= _CG_RTOL * 1.0001, residual
    assert abs(float(d.mean())) < 1e-12
    exact = torch.linalg.pinv(hess, hermitian=True, rtol=1e-12) @ grad
    rel = float((d - exact).norm() / exact.norm())
    assert rel < 0.05, rel  # an inexact solve: its error is at most cond(H) times the residual


def test_formed_newton_steps_wait_for_their_memory(monkeypatch):
    """With less free memory than the formed Hessian needs, only the conjugate-gradient step
    is offered (the formed ones would allocate DENSE_NEWTON_BYTES per (n, n) entry); with
    enough, the formed steps follow, the first of them the pseudo-inverse solution."""
    cost, eps = clustered_cost(64, 0), 0.5
    plan = log_sinkhorn(cost, eps, tol=1e-9).log_plan.exp()
    b = plan.sum(0)
    grad = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad -= grad.mean()
    need = _sinkhorn.DENSE_NEWTON_BYTES * 64 * 64
    monkeypatch.setattr(_sinkhorn, "available_memory", lambda device: need - 1)
    assert len(list(_sinkhorn._newton_steps(plan, b, eps, grad))) == 1
    monkeypatch.setattr(_sinkhorn, "available_memory", lambda device: need)
    steps = list(_sinkhorn._newton_steps(plan, b, eps, grad))
    assert len(steps) > 1
    hess = (torch.diag(plan.sum(1)) - (plan / b) @ plan.T) / eps
    exact = torch.linalg.pinv(hess, hermitian=True, rtol=1e-12) @ grad
    assert float((steps[1] - steps[1].mean() - exact).norm() / exact.norm()) < 1e-6


def _log_semi_dual(cost: torch.Tensor, f: torch.Tensor, eps: float) -> float:
    """F(f) = <a, f> - eps <b, lse_j(log a_i + (f_i - C_ij) / eps)> in the log domain."""
    n0, n1 = cost.shape
    z = (f[:, None] - cost) / eps - np.log(n0)
    return float(f.mean() - eps * torch.logsumexp(z, dim=0).mean())


def test_newton_on_the_kernel_scalings_reaches_the_fixed_point():
    """``_newton`` moves only the scalings of a fixed kernel (P = diag(u) K diag(v)). Oracle:
    the same problem solved by plain Sinkhorn (no Newton) to 1e-11. The Newton plan, built
    from K, u, v, matches it; the log-domain semi-dual at f + eps log u rose; the row
    marginal error fell below the stop asked."""
    cost, eps = clustered_cost(64, 3), 0.5
    s = _sinkhorn._State(cost)
    s.restart(eps, 1.0, 1.0)
    _sinkhorn._iterate(s, eps, 1.0, 1.0, 0, 20, 1e-12, True, eps)  # crawling: error ~0.1
    before = _log_semi_dual(cost, s.f + eps * s.u.log(), eps)
    steps, err, converged, stale = _sinkhorn._newton(s, eps, 1e-10, 30)
    assert converged and not stale and err < 1e-10 and 0 < steps <= 30
    plan = s.u[:, None] * s.K * s.v[None, :]
    assert float((plan.sum(1) - 1 / 64).abs().sum()) < 1e-10
    assert float((plan.sum(0) - 1 / 64).abs().sum()) < 1e-12  # columns exact by construction
    after = _log_semi_dual(cost, s.f + eps * s.u.log(), eps)
    assert after > before
    ref = log_sinkhorn(cost, eps, tol=1e-11, newton=False, max_iter=1_000_000)
    assert ref.converged and ref.newton_steps == 0
    assert float((plan - ref.log_plan.exp()).abs().sum()) < 1e-8


def test_newton_steps_too_long_for_the_kernel_go_to_the_log_domain(monkeypatch):
    """A Newton step that would take the scalings beyond e^(+-_ABSORB_LOG) is not tried on
    the kernel: the potentials absorb the scalings, the log-domain Newton continues, and the
    caller is told to rebuild the kernel; the solve still ends at the dense fixed point."""
    cost, eps = clustered_cost(64, 3), 0.5
    s = _sinkhorn._State(cost)
    s.restart(eps, 1.0, 1.0)
    _sinkhorn._iterate(s, eps, 1.0, 1.0, 0, 20, 1e-12, True, eps)
    monkeypatch.setattr(_sinkhorn, "_ABSORB_LOG", 1e-3)  # every step is too long
    steps, err, converged, stale = _sinkhorn._newton(s, eps, 1e-10, 30)
    assert stale and converged and err < 1e-10
    assert bool((s.u == 1).all() and (s.v == 1).all())  # absorbed into f, g
    plan = s.log_plan(eps).exp()
    assert float((plan.sum(1) - 1 / 64).abs().sum()) < 1e-10
    ref = log_sinkhorn(cost, eps, tol=1e-11, newton=False, max_iter=1_000_000)
    assert float((plan - ref.log_plan.exp()).abs().sum()) < 1e-8


@pytest.mark.parametrize(("scaling", "cg"), [(0.1, True), (0.1, False), (0.5, True),
                                             (None, True)])
def test_clustered_small_reg_plan_matches_pot_whatever_the_scaling(scaling, cg):
    """Where Newton steps finish the stages (clustered plan, max C / reg ~ 400), every
    epsilon scaling, with or without the conjugate-gradient Newton step, converges to POT's
    log-domain Sinkhorn plan."""
    cost = clustered_cost(64, 2)
    reg = float(cost.max()) / 400.0
    res = log_sinkhorn(cost, reg, tol=1e-10, scaling=scaling, cg=cg)
    assert res.converged and res.marginal_error < 1e-10
    if scaling is not None:
        assert res.newton_steps > 0  # the path under test
    pot = ot.bregman.sinkhorn_log(uniform(64), uniform(64), cost.numpy(), reg,
                                  stopThr=1e-13, numItermax=200_000)
    np.testing.assert_allclose(res.log_plan.exp().numpy(), pot, rtol=1e-5, atol=1e-11)


def test_eps_schedule_one_stage_up_to_ratio_128_then_halving_down_to_reg():
    assert eps_schedule(2.0, 256.0, 0.5) == [2.0]  # max C / reg = 128: one stage
    stages = eps_schedule(1.0, 1000.0, 0.5)
    assert stages[0] == 500.0 and stages[-1] == 1.0  # from scaling * max C
    assert all(b / a == pytest.approx(0.5) for a, b in zip(stages[:-2], stages[1:-1], strict=True))
    assert 0.5 <= stages[-1] / stages[-2] < 1.0
    assert eps_schedule(1.0, 1000.0, None) == [1.0]


def test_one_stage_plan_matches_pot_at_ratio_below_128():
    reg = float(sqdist(X0, X1).max()) / 100.0
    ours = EntropicOT(reg=reg, tol=1e-10, cost_dtype=torch.float64).plan(X0, X1)
    pot = ot.sinkhorn(uniform(40), uniform(30), sqdist(X0, X1), reg, stopThr=1e-12,
                      numItermax=100_000)
    np.testing.assert_allclose(ours.numpy(), pot, rtol=1e-5, atol=1e-12)


def test_not_converging_warns_or_raises_with_numbers():
    # reg 0.01 on costs up to ~2000 cannot converge in 3 iterations
    with pytest.warns(ConvergenceWarning) as caught:
        p = EntropicOT(reg=0.01, max_iter=3)(X0, X1, generator=torch.Generator().manual_seed(0))
    c = p.convergence
    assert c is not None and not c.converged and c.iterations == 3 and c.tol == 1e-6
    # the warning gives reg, the iterations, the marginal error reached and the advice
    msg = str(caught[0].message)
    assert f"reg=0.01, 3 iterations (max_iter=3), L1 marginal error {c.marginal_error:.3g} > " \
        "tol=1e-06; raise max_iter or reg" in msg
    # the reported error is the plan's: row and column sums against the uniform weights
    with pytest.warns(ConvergenceWarning):
        P = EntropicOT(reg=0.01, max_iter=3).plan(X0, X1)
    assert c.marginal_error == pytest.approx(marginal_l1(P), rel=1e-9) and c.marginal_error > 0.1
    for err in (ConvergenceError, RuntimeError, ValueError):  # a one-line error in the CLI
        with pytest.raises(err, match=r"did not converge: reg=0.01, 3 iterations .*error "
                                      r"[0-9.]+ > tol=1e-06; raise max_iter or reg"):
            EntropicOT(reg=0.01, max_iter=3, on_fail="raise")(X0, X1)


def test_converged_solve_reports_its_marginal_error():
    cpl = EntropicOT(reg=1.0, cost_dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        p = cpl(X0, X1, generator=torch.Generator().manual_seed(0))
        P = cpl.plan(X0, X1)
    c = p.convergence
    assert c.converged and 1 <= c.iterations <= cpl.max_iter and c.tol == 1e-6
    # independent: the plan's row and column sums against 1/40 and 1/30
    rows, cols = P.sum(1), P.sum(0)
    independent = float((rows - 1 / 40).abs().sum() + (cols - 1 / 30).abs().sum())
    assert c.marginal_error == pytest.approx(independent, rel=1e-6, abs=1e-15)
    assert c.marginal_error <= 1e-6
    assert p.info["converged"] == 1.0 and p.info["reg"] == 1.0  # the raw diagnostics agree


def test_on_fail_is_keyword_only_and_validated():
    for cls in (EntropicOT, UnbalancedOT):
        kind = inspect.signature(cls).parameters["on_fail"].kind
        assert kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(ValueError, match="on_fail must be one of"):
        UnbalancedOT(reg=1.0, reg_m=1.0, on_fail="ignore")
    # the spec form configs and --coupling use
    assert coupling("entropic:reg=0.5,on_fail=raise").on_fail == "raise"


def test_unbalanced_reports_the_fixed_point_marginal_error():
    # finite reg_m: the plan's marginals are a e^{-f/reg_m}, b e^{-g/reg_m}, not a and b
    cpl = UnbalancedOT(reg=10.0, reg_m=5.0, tol=1e-9, cost_dtype=torch.float64)
    p = cpl(X0, X1, generator=torch.Generator().manual_seed(0))
    c = p.convergence
    assert c.converged and c.marginal_error <= 1e-6
    assert marginal_l1(cpl.plan(X0, X1)) > 1e-2  # so the check above is not the balanced one
    with pytest.warns(ConvergenceWarning, match=r"potential change .* L1 marginal error"):
        short = UnbalancedOT(reg=10.0, reg_m=5.0, max_iter=2)(X0, X1)
    assert not short.convergence.converged and short.convergence.marginal_error > 1e-4
    # balanced in the limit reg_m = inf: the error is the one against the uniform weights
    inf = UnbalancedOT(reg=10.0, reg_m=float("inf"), tol=1e-9, cost_dtype=torch.float64)
    q = inf(X0, X1)
    assert q.convergence.marginal_error == pytest.approx(marginal_l1(inf.plan(X0, X1)),
                                                          rel=1e-6, abs=1e-15)


def test_couplings_without_a_tolerance_report_no_convergence():
    assert ExactOT()(X0[:30], X1).convergence is None
    assert not ExactOT.reports_convergence and EntropicOT.reports_convergence


# --------------------------------------------------------------------------- sampling
def test_rows_sampling_keeps_every_source_and_follows_conditionals():
    # 2 distinct sources, each repeated 3000 times: one call gives 3000 draws per row
    base0 = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    x0 = base0.repeat_interleave(3000, dim=0)
    x1 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    cpl = EntropicOT(reg=1.0, cost_dtype=torch.float64)
    p = cpl(x0, x1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p.i, torch.arange(6000))
    P = cpl.plan(x0, x1)
    for k in range(2):
        rows = slice(3000 * k, 3000 * (k + 1))
        freq = torch.bincount(p.j[rows], minlength=3).double() / 3000
        cond = P[3000 * k] / P[3000 * k].sum()
        assert torch.allclose(freq, cond, atol=0.03)  # binomial std <= 0.009


def test_joint_sampling_frequencies_match_plan():
    x0, x1 = randn(6, 2, seed=5), randn(4, 2, seed=6)
    n = 200_000
    cpl = EntropicOT(reg=0.5, sampling="joint", n_pairs=n)
    p = cpl(x0, x1, generator=torch.Generator().manual_seed(2))
    freq = torch.zeros(6, 4, dtype=torch.float64)
    freq.index_put_((p.i, p.j), torch.ones(n, dtype=torch.float64), accumulate=True)
    assert torch.allclose(freq / n, cpl.plan(x0, x1), atol=6e-3)


def test_joint_sampling_without_replacement_gives_distinct_cells():
    cpl = EntropicOT(reg=1.0, sampling="joint", replace=False, n_pairs=500)
    p = cpl(X0, X1, generator=torch.Generator().manual_seed(3))
    assert len(set(zip(p.i.tolist(), p.j.tolist(), strict=True))) == 500
    with pytest.raises(ValueError, match="n_pairs applies to sampling='joint'"):
        EntropicOT(reg=1.0, n_pairs=5)


# --------------------------------------------------------------------------- unbalanced
@pytest.mark.parametrize("reg_m", [1.0, (float("inf"), 0.5), (2.0, 0.3)])
def test_unbalanced_agrees_with_pot(reg_m):
    x0, x1 = randn(12, 2, seed=7), randn(9, 2, seed=8) + 1.0
    C = sqdist(x0, x1)
    ref = ot.unbalanced.sinkhorn_unbalanced(
        uniform(12), uniform(9), C, 0.5, reg_m, reg_type="kl", stopThr=1e-14, numItermax=10**5
    )
    cpl = UnbalancedOT(reg=0.5, reg_m=reg_m, tol=1e-12, cost_dtype=torch.float64)
    ours = cpl.plan(x0, x1).numpy()
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-14)
    if isinstance(reg_m, tuple) and reg_m[0] == float("inf"):
        assert np.allclose(ours.sum(1), uniform(12), atol=1e-10)  # exact source marginal


def test_unbalanced_large_reg_m_is_balanced():
    x0, x1 = randn(12, 2, seed=9), randn(9, 2, seed=10)
    ub = UnbalancedOT(reg=0.5, reg_m=1e7, cost_dtype=torch.float64).plan(x0, x1)
    bal = EntropicOT(reg=0.5, cost_dtype=torch.float64).plan(x0, x1)
    assert torch.allclose(ub, bal, atol=1e-6)


def test_unbalanced_pairs_avoid_outliers():
    x0 = torch.cat([randn(30, 2, seed=11), torch.full((2, 2), 40.0)])
    x1 = randn(32, 2, seed=12)
    p = UnbalancedOT(reg=0.1, reg_m=5.0, n_pairs=5000)(
        x0, x1, generator=torch.Generator().manual_seed(4)
    )
    assert int((p.i >= 30).sum()) <= 5  # each outlier row carries ~nothing
    balanced = EntropicOT(reg=0.1, sampling="joint", n_pairs=5000)(
        x0, x1, generator=torch.Generator().manual_seed(4)
    )
    assert int((balanced.i >= 30).sum()) > 100  # balanced OT must transport them


def _near_permutation_case(n: int = 160, seed: int = 3) -> tuple[torch.Tensor, float]:
    """Costs between two 5-d Gaussian clouds with reg = max C / 3000 (the regime of reg 0.02
    on standardized data): the entropic plan is nearly a permutation."""
    cost = torch.from_numpy(sqdist(randn(n, 5, seed=seed), randn(n, 5, seed=seed + 1) + 1.0))
    return cost, float(cost.max()) / 3000.0


def _assignment_duals(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from otcfm._ot.auction import certified_assignment

    lo = cost.min(1)
    reduced = cost - lo[:, None]
    q = certified_assignment(reduced, lo.sum(), reduced.sum(), reduced.max()).prices
    return (reduced + q[None, :]).min(1) + lo, -q


def test_near_permutation_solve_runs_and_matches_the_dense_solver(monkeypatch):
    """At max C / reg = 3000 the sparse solve from the assignment's duals answers (counted),
    its dense plan meets the tolerance, and it is the dense solver's plan (forced) to well
    under the tolerance's order."""
    pytest.importorskip("numba")
    cost, reg = _near_permutation_case()
    answers = []
    real = _sinkhorn._near_permutation
    monkeypatch.setattr(_sinkhorn, "_near_permutation",
                        lambda *a: answers.append(real(*a)) or answers[-1])
    res = log_sinkhorn(cost, reg, tol=1e-8)
    assert len(answers) == 1 and answers[0] is res
    assert res.converged and res.stages == 1 and marginal_l1(res.log_plan.exp()) <= 1e-8
    monkeypatch.setattr(_sinkhorn, "_SPARSE_RATIO", float("inf"))
    dense = log_sinkhorn(cost, reg, tol=1e-8)
    assert len(answers) == 1 and dense.converged
    assert float((res.log_plan.exp() - dense.log_plan.exp()).abs().sum()) < 1e-6


def test_sparse_sinkhorn_rebuilds_its_support_when_the_potentials_move():
    """Started 15 eps below the duals (more drift than the support allows), the solve rebuilds
    its support and still reaches the plan of a good start, marginals within tol densely."""
    pytest.importorskip("numba")
    from otcfm._ot.sparse_sinkhorn import KEEP, TRUNCATE, sparse_sinkhorn

    cost, reg = _near_permutation_case(n=120, seed=5)
    c = cost.numpy()
    f0, g0 = _assignment_duals(c)
    assert TRUNCATE - KEEP < 15.0
    good = sparse_sinkhorn(c, reg, f0, g0, tol=1e-9, max_iter=20_000)
    moved = sparse_sinkhorn(c, reg, f0 - 15.0 * reg, g0, tol=1e-9, max_iter=20_000)
    assert good.rebuilds >= 1 and moved.rebuilds > good.rebuilds
    n = c.shape[0]

    def plan(r):
        return torch.exp(torch.from_numpy(
            (r.f[:, None] + r.g[None, :] - c) / reg - 2 * np.log(n)))

    assert marginal_l1(plan(moved)) <= 1e-8
    assert float((plan(moved) - plan(good)).abs().sum()) < 1e-7


def test_sparse_sinkhorn_declines_a_dense_support():
    pytest.importorskip("numba")
    from otcfm._ot.sparse_sinkhorn import sparse_sinkhorn

    cost, reg = _near_permutation_case(n=80)
    c = cost.numpy()
    f0, g0 = _assignment_duals(c)
    assert sparse_sinkhorn(c, 200 * reg, f0, g0, tol=1e-6, max_iter=100, max_row=8) is None
    assert sparse_sinkhorn(c, reg, f0, g0, tol=1e-6, max_iter=100, max_row=80) is not None


def test_near_permutation_answer_missing_tol_falls_back_to_the_dense_solve(monkeypatch):
    """A sparse answer whose dense plan misses the tolerance is never returned: the dense
    solver takes over and meets it."""
    pytest.importorskip("numba")
    from otcfm._ot import sparse_sinkhorn as sparse

    cost, reg = _near_permutation_case(n=100, seed=7)
    real = sparse.sparse_sinkhorn

    def off(c, eps, f0, g0, **kw):
        r = real(c, eps, f0, g0, **kw)
        return r if r is None else sparse.SparseSinkhornResult(
            r.f + 3.0 * eps * (np.arange(len(r.f)) % 2), r.g, r.iterations, r.newton_steps,
            r.err, r.nnz, r.rebuilds)

    monkeypatch.setattr(sparse, "sparse_sinkhorn", off)
    res = log_sinkhorn(cost, reg, tol=1e-8)
    assert res.converged and res.stages > 1 and marginal_l1(res.log_plan.exp()) <= 1e-8


def test_sparse_newton_falls_back_to_formed_hessian_steps(monkeypatch):
    """With the conjugate-gradient step refused every time (a zero step), the formed-Hessian
    Cholesky steps carry the Newton iterations and the solve still meets the tolerance."""
    pytest.importorskip("numba")
    from otcfm._ot import sparse_sinkhorn as sparse

    cost, reg = _near_permutation_case(n=100, seed=11)
    c = cost.numpy()
    f0, g0 = _assignment_duals(c)
    formed = []
    real = sparse._dense_steps

    def counted(*a):
        for d in real(*a):
            formed.append(1)
            yield d

    monkeypatch.setattr(sparse, "_cg", lambda *a: np.zeros(a[3].shape[0]))
    monkeypatch.setattr(sparse, "_dense_steps", counted)
    res = sparse.sparse_sinkhorn(c, reg, f0, g0, tol=1e-9, max_iter=5_000)
    assert formed and res.newton_steps > 0 and res.err <= 1e-9


def test_early_stages_iterate_in_float32_and_newton_gets_float64(monkeypatch):
    """The epsilon-scaling stages that stop at _STAGE_TOL build float32 kernels, the last one
    a float64 kernel; a float32 stage that crawls (here every stage is asked for 1e-10) is
    moved to a float64 kernel before Newton. Oracle: POT's log-domain plan."""
    cost = clustered_cost(64, 2)
    reg = float(cost.max()) / 400.0
    seen = []
    original = _sinkhorn._State.precision

    def spy(self, dtype):
        seen.append(dtype)
        original(self, dtype)

    monkeypatch.setattr(_sinkhorn._State, "precision", spy)
    stages = len(eps_schedule(reg, float(cost.max()), 0.1))
    res = log_sinkhorn(cost, reg, tol=1e-10)
    assert seen == [torch.float64] + [torch.float32] * (stages - 1) + [torch.float64]
    seen.clear()
    monkeypatch.setattr(_sinkhorn, "_STAGE_TOL", 1e-10)
    crawled = log_sinkhorn(cost, reg, tol=1e-10)
    assert seen.count(torch.float32) == stages - 1
    assert seen.count(torch.float64) > 2  # a float32 stage handed Newton a float64 kernel
    pot = ot.bregman.sinkhorn_log(uniform(64), uniform(64), cost.numpy(), reg,
                                  stopThr=1e-13, numItermax=200_000)
    for r in (res, crawled):
        assert r.converged and r.newton_steps > 0
        np.testing.assert_allclose(r.log_plan.exp().numpy(), pot, rtol=1e-5, atol=1e-11)


@pytest.mark.parametrize("force_float32", [False, True])
def test_cg_step_near_a_permutation_still_solves_the_system(monkeypatch, force_float32):
    """Near a permutation (eps small against the cost), H's diagonal cancels more digits
    than float32 holds: the step is solved in float64 (or, forced through float32, float64
    finishes or redoes it). Oracle: the formed Hessian's residual, within the CG tolerance."""
    cost, eps = clustered_cost(96, 0), 0.02
    plan = log_sinkhorn(cost, eps, tol=1e-9).log_plan.exp()
    b = plan.sum(0)
    rows = plan.sum(1)
    assert float(((rows - (plan * plan) @ (1 / b)) / rows).min()) < _newton_cg.CG_LOW_SPREAD
    if force_float32:
        monkeypatch.setattr(_newton_cg, "CG_LOW_SPREAD", 0.0)
    hess = (torch.diag(rows) - (plan / b) @ plan.T) / eps
    grad = torch.randn(96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad -= grad.mean()
    d = _cg_step(plan, b, eps, grad)
    residual = float((hess @ d - grad).norm() / grad.norm())
    assert residual <= _CG_RTOL * 1.0001, residual


def test_recycled_ritz_vectors_deflate_the_next_newton_solves():
    """One clustered plan's Newton system solved three times with a recycled space: the
    first solve leaves Ritz vectors (unit norm, orthogonal to H's null vector 1), the next
    two, deflated by them, reach the tolerance (residual against the formed Hessian) in
    fewer iterations than the first; the same solves without recycling match it."""
    cost, eps = clustered_cost(128, 0), 0.5
    plan = log_sinkhorn(cost, eps, tol=1e-9).log_plan.exp()
    b, rows = plan.sum(0), plan.sum(1)
    hess = (torch.diag(rows) - (plan / b) @ plan.T) / eps
    gen = torch.Generator().manual_seed(3)
    recycled = _newton_cg.Recycled()
    for _ in range(3):
        grad = torch.randn(128, generator=gen, dtype=torch.float64)
        grad -= grad.mean()
        d = _cg_step(plan, b, eps, grad, recycled)
        assert float((hess @ d - grad).norm() / grad.norm()) <= _CG_RTOL * 1.0001
        plain = _cg_step(plan, b, eps, grad)
        assert float((d - plain).norm() / plain.norm()) < 1e-2  # both solve to 1e-3
    w = recycled.vectors
    assert w is not None and w.shape == (_newton_cg.CG_RECYCLE, 128)
    assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0], dtype=w.dtype), atol=1e-5)
    assert float(w.sum(1).abs().max()) < 1e-3  # orthogonal to 1
    first, *later = recycled.iterations
    assert all(k < first for k in later), recycled.iterations


def test_non_finite_potentials_or_marginals_mean_a_non_finite_plan():
    """The O(n) check that replaces scanning log P: a NaN or +inf entry of log P makes a
    marginal non-finite, a -inf one (from a finite cost) a potential; finite passes."""
    cost = torch.rand(6, 5, dtype=torch.float64)
    s = _sinkhorn._State(cost)
    assert _sinkhorn._finite(0.1, s)
    assert not _sinkhorn._finite(float("nan"), s) and not _sinkhorn._finite(math.inf, s)
    s.g = s.g.clone()
    s.g[2] = -math.inf
    assert not _sinkhorn._finite(0.1, s)
    s.f, s.g = torch.full_like(s.f, math.nan), torch.zeros_like(s.g)
    assert not _sinkhorn._finite(0.1, s)
    # what the check stands in for: NaN in f gives NaN rows of P and a NaN marginal error
    plan = s.log_plan(1.0).exp()
    assert math.isnan(_sinkhorn.marginal_error(plan, s.a, s.b, s.f, s.g, (math.inf, math.inf)))
