"""Entropic couplings in the Schrodinger-bridge regime: reg = 2 sigma^2 for sigma from 0.05 to
2 on the 2-D benchmark data scales and in 50 dimensions. No collapse, marginals within
tolerance, the cost against exact OT and POT, and time / iterations reported."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.spatial.distance import cdist

from otcfm.couplings import ConvergenceWarning, EntropicOT
from otcfm.data import toy

N = 200
SIGMAS = [0.05, 0.3, 1.0, 2.0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def task_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(0)
    if name == "gaussians-50d":  # the Gaussian bridge benchmark's data (a = 0.1)
        return torch.randn(N, 50, generator=g) - 0.1, torch.randn(N, 50, generator=g) + 0.1
    source, target = toy.task(name)
    return toy.sample(source, N, generator=g), toy.sample(target, N, generator=g)


TASKS = ["gaussian-8gaussians", "moons-8gaussians", "gaussian-moons", "gaussians-50d"]


def sqdist(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    return cdist(x0.double().numpy(), x1.double().numpy(), "sqeuclidean")


@pytest.fixture(scope="module")
def solved() -> dict:
    """Plan and pairing for every (task, sigma); any ConvergenceWarning fails the module."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        for task in TASKS:
            x0, x1 = task_data(task)
            for sigma in SIGMAS:
                cpl = EntropicOT(reg=2 * sigma**2, cost_dtype=torch.float64)
                out[task, sigma] = (x0, x1, cpl.plan(x0, x1), cpl(x0, x1, generator=gen(1)))
    return out


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_marginals_and_no_collapse(solved, task, sigma):
    x0, x1, plan, pair = solved[task, sigma]
    assert bool(torch.isfinite(plan).all()) and bool((plan >= 0).all())
    err = float((plan.sum(1) - 1 / N).abs().sum() + (plan.sum(0) - 1 / N).abs().sum())
    assert err <= 1e-6
    # every target keeps its mass: no column collapses onto a few pairs ...
    assert float(plan.sum(0).min()) > (1 - 1e-4) / N
    # ... and the plan is neither the independent one nor mass on a few rows: its cost lies
    # between exact OT and exact OT + reg log N (entropy bound for uniform marginals), up to
    # what its marginal error allows (moving err of mass changes a cost by at most err max C)
    C = sqdist(x0, x1)
    exact = ot.emd2(np.full(N, 1 / N), np.full(N, 1 / N), C)
    cost = float((plan.numpy() * C).sum())
    reg = 2 * sigma**2
    slack = err * float(C.max())
    assert exact * (1 - 1e-9) - slack <= cost <= exact + reg * math.log(N) + slack + 1e-9
    indep = C.mean()
    if reg * math.log(N) < 0.5 * (indep - exact):
        assert cost < indep - 0.5 * (indep - exact)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_plan_matches_pot_at_moderate_reg(solved, task, sigma):
    x0, x1, plan, _ = solved[task, sigma]
    ref = ot.sinkhorn(
        np.full(N, 1 / N), np.full(N, 1 / N), sqdist(x0, x1), 2 * sigma**2,
        method="sinkhorn_log", stopThr=1e-9, numItermax=100_000,
    )
    assert np.abs(plan.numpy() - ref).sum() < 1e-4


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_pairs_and_diagnostics(solved, task, sigma):
    x0, x1, plan, pair = solved[task, sigma]
    info = pair.info
    # time and iterations are reported, and the solve converged
    assert info["seconds"] > 0 and info["iterations"] >= 1 and info["converged"] == 1.0
    assert 0 <= info["newton_steps"] <= info["iterations"]
    assert info["err"] <= 1e-6 and info["reg"] == pytest.approx(2 * sigma**2)
    # rows sampling: every source once; the pairs' mean cost estimates the plan's cost
    assert torch.equal(pair.i.sort().values, torch.arange(N))
    C = torch.tensor(sqdist(x0, x1))
    per_row = (plan * C).sum(1) * N  # E[C_ij | i]
    sd = float(((plan * C**2).sum(1) * N - per_row**2).clamp_min(0).mean().sqrt())
    assert abs(info["pair_cost"] - info["cost"]) <= 5 * sd / math.sqrt(N) + 1e-9
