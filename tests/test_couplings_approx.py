"""ApproxOT: certified coupling gap against the exact optimum (scipy), pairing contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from otcfm._ot import auction_kernels as kernels
from otcfm.couplings import COUPLINGS, ApproxOT, Pairing, coupling
from otcfm.matchers import matcher


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def true_gap(x0: torch.Tensor, x1: torch.Tensor, j: torch.Tensor) -> float:
    """(cost - optimal) / (independent - optimal), all in float64 from scipy."""
    c = cdist(x0.double().flatten(1).numpy(), x1.double().flatten(1).numpy(), "sqeuclidean")
    n = c.shape[0]
    r, col = linear_sum_assignment(c)
    opt = c[r, col].sum()
    ind = c.sum() / n
    return float((c[np.arange(n), j.numpy()].sum() - opt) / (ind - opt))


BACKENDS = [
    "torch",
    pytest.param(
        "compiled", marks=pytest.mark.skipif(not kernels.available(), reason="needs numba")
    ),
]
CASES = [(64, 2, 0), (200, 2, 1), (150, 16, 2), (300, 5, 3), (128, 64, 4)]


@pytest.mark.parametrize(("n", "d", "seed"), CASES)
@pytest.mark.parametrize("tol", [0.05, 0.01, 0.001])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gap_within_tol_and_certificate_is_an_upper_bound(n, d, seed, tol, backend):
    x0 = randn(n, d, seed=seed)
    x1 = randn(n, d, seed=seed + 100) * 1.5 + 1.0
    p = ApproxOT(tol=tol, backend=backend)(x0, x1)
    gap = true_gap(x0, x1, p.j)
    assert -1e-6 <= gap <= tol
    assert p.info["gap_bound"] <= tol
    assert gap <= p.info["gap_bound"] + 1e-6
    # the reported bounds bracket the optimum (mean pair cost)
    c = cdist(x0.double().numpy(), x1.double().numpy(), "sqeuclidean")
    r, col = linear_sum_assignment(c)
    opt = c[r, col].mean()
    assert p.info["lower_bound"] <= opt + 1e-5 * (1 + opt)
    assert p.info["cost"] == pytest.approx(c[np.arange(n), p.j.numpy()].mean(), rel=1e-5)
    assert p.info["independent_cost"] == pytest.approx(c.mean(), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clustered_data_and_duplicates_are_permutations(backend):
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x0 = centres[torch.arange(90) % 3] + 0.01 * randn(90, 2, seed=5)
    x1 = torch.cat([x0[:45], x0[:45]]) + 0.5  # duplicated targets
    p = ApproxOT(tol=0.01, backend=backend)(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(90))
    assert true_gap(x0, x1, p.j) <= 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_matches_sorted_matching_within_tol(backend):
    x0, x1 = randn(257, 1, seed=6), randn(257, 1, seed=7) * 2.0
    p = ApproxOT(tol=0.01, backend=backend)(x0, x1)
    assert torch.equal(p.i, torch.arange(257))
    assert torch.equal(p.j.sort().values, torch.arange(257))
    assert true_gap(x0, x1, p.j) <= 0.01


@pytest.mark.parametrize("shape", [(1,), (2,), (3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contract_shapes_and_dtypes(shape, dtype):
    x0 = randn(40, *shape, seed=8).to(dtype)
    x1 = (randn(40, *shape, seed=9) + 0.5).to(dtype)
    p = ApproxOT()(x0, x1, generator=torch.Generator().manual_seed(0))
    assert isinstance(p, Pairing)
    assert p.i.dtype == p.j.dtype == torch.int64 and p.j.shape == (40,)
    assert torch.equal(p.i, torch.arange(40))
    assert torch.equal(p.j.sort().values, torch.arange(40))
    assert p.x0.shape == (40, *shape) and p.x0.dtype == dtype and p.x1.dtype == dtype
    assert torch.equal(p.x0, x0[p.i]) and torch.equal(p.x1, x1[p.j])
    assert true_gap(x0.float(), x1.float(), p.j) <= 0.01
    for key in ("cost", "gap_bound", "iterations", "seconds", "lower_bound", "phases"):
        assert math.isfinite(p.info[key])


def test_bf16_pairs_like_its_float32_cast():
    x0 = randn(64, 3, 2, 2, seed=10).to(torch.bfloat16)
    x1 = randn(64, 3, 2, 2, seed=11).to(torch.bfloat16)
    low, ref = ApproxOT()(x0, x1), ApproxOT()(x0.float(), x1.float())
    assert torch.equal(low.j, ref.j)


def test_float64_costs_reach_tight_tolerances():
    x0, x1 = randn(100, 3, seed=12), randn(100, 3, seed=13) + 0.3
    p = ApproxOT(tol=1e-5, cost_dtype=torch.float64)(x0, x1)
    assert true_gap(x0, x1, p.j) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_determinism(backend):
    x0, x1 = randn(150, 2, seed=14), randn(150, 2, seed=15)
    a = ApproxOT(backend=backend)(x0, x1, generator=torch.Generator().manual_seed(1))
    b = ApproxOT(backend=backend)(x0, x1, generator=torch.Generator().manual_seed(1))
    c = ApproxOT(backend=backend)(x0, x1)
    assert torch.equal(a.j, b.j) and torch.equal(a.j, c.j)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trivial_batches(backend):
    x = randn(1, 3, seed=16)
    assert ApproxOT(backend=backend)(x, x + 1).j.tolist() == [0]
    same = torch.zeros(5, 2)
    p = ApproxOT(backend=backend)(same, same)
    assert torch.equal(p.j.sort().values, torch.arange(5)) and p.info["gap_bound"] == 0.0


def test_conditions_follow_indices():
    x0, x1 = randn(30, 2, seed=17), randn(30, 2, seed=18)
    p = ApproxOT()(x0, x1, cond0=torch.arange(30), cond1={"y": torch.arange(30) * 2})
    assert torch.equal(p.cond0, p.i) and torch.equal(p.cond1["y"], 2 * p.j)


@pytest.mark.parametrize("tol", [0.0, -0.1, 1.0, 2.0, float("nan"), float("inf")])
def test_bad_tol(tol):
    with pytest.raises(ValueError, match="tol"):
        ApproxOT(tol=tol)


def test_bad_options_and_inputs():
    with pytest.raises(TypeError, match="tol must be a number"):
        ApproxOT(tol="small")
    with pytest.raises(ValueError, match="scaling must be > 1"):
        ApproxOT(scaling=1.0)
    with pytest.raises(ValueError, match="max_iter"):
        ApproxOT(max_iter=0)
    with pytest.raises(ValueError, match="cost_dtype"):
        ApproxOT(cost_dtype=torch.float16)
    with pytest.raises(ValueError, match="same size, got 6 and 5"):
        ApproxOT()(randn(6, 2), randn(5, 2))
    bad = randn(6, 2)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ApproxOT()(bad, randn(6, 2))


def test_iteration_cap_warns_with_numbers():
    x0, x1 = randn(200, 2, seed=19), randn(200, 2, seed=20)
    with pytest.warns(RuntimeWarning, match="certified gap bound .* > tol"):
        p = ApproxOT(tol=1e-4, max_iter=300, backend="torch")(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(200))
    with pytest.raises(RuntimeError, match="no complete pairing"):
        ApproxOT(max_iter=1, backend="torch")(x0, x1)


def test_registry_and_matcher():
    assert COUPLINGS.factory("approx") is ApproxOT
    assert isinstance(coupling("approx", tol=0.02), ApproxOT)
    fm = matcher("otcfm", sigma=0.1, coupling=ApproxOT(tol=0.01))
    x0, x1 = randn(32, 2, seed=21), randn(32, 2, seed=22)
    a = fm.sample(x0, x1, generator=torch.Generator().manual_seed(3))
    b = fm.sample(x0, x1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x1, b.x1) and torch.equal(a.xt, b.xt)
    j = ApproxOT(tol=0.01)(x0, x1).j
    assert torch.equal(a.x1, x1[j])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x0, x1 = randn(256, 5, seed=23), randn(256, 5, seed=24)
    p = ApproxOT(cost_dtype=torch.float64)(x0.cuda(), x1.cuda())
    assert p.j.is_cuda and true_gap(x0, x1, p.j.cpu()) <= 0.01


@pytest.mark.parametrize(("n", "seed"), [(256, 30), (400, 31), (512, 32)])
@pytest.mark.parametrize("tol", [0.05, 0.01, 0.002])
@pytest.mark.parametrize("warm_start", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_dimension_warm_start_keeps_certificate(n, seed, tol, warm_start, backend):
    # d = 2: long auction price wars without the entropic warm start.
    x0 = randn(n, 2, seed=seed)
    x1 = randn(n, 2, seed=seed + 100) + 0.5
    p = ApproxOT(tol=tol, warm_start=warm_start, backend=backend)(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(n))
    gap = true_gap(x0, x1, p.j)
    assert -1e-6 <= gap <= tol
    assert gap <= p.info["gap_bound"] + 1e-6 <= tol + 1e-6
    c = cdist(x0.double().numpy(), x1.double().numpy(), "sqeuclidean")
    r, col = linear_sum_assignment(c)
    assert p.info["lower_bound"] <= c[r, col].mean() + 1e-5 * (1 + c[r, col].mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_shortens_the_low_dimensional_auction(backend):
    x0, x1 = randn(400, 2, seed=33), randn(400, 2, seed=34) + 0.5
    warm = ApproxOT(tol=0.01, backend=backend)(x0, x1)
    cold = ApproxOT(tol=0.01, warm_start=False, backend=backend)(x0, x1)
    assert warm.info["iterations"] < cold.info["iterations"]
    assert true_gap(x0, x1, warm.j) <= 0.01 and true_gap(x0, x1, cold.j) <= 0.01


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_warm_start_on_general_and_badly_scaled_costs(scale):
    # non-metric random costs with a wide range: whatever the Sinkhorn prices, the
    # certificate must hold against scipy's exact assignment.
    g = torch.Generator().manual_seed(35)
    cost = torch.rand(300, 300, generator=g, dtype=torch.float64) ** 4 * scale
    cost[:, :7] += 50.0 * scale  # a few columns far from every row
    j, info = ApproxOT(tol=0.01, cost_dtype=torch.float64).solve(cost)
    c = cost.numpy()
    r, col = linear_sum_assignment(c)
    opt, ind = c[r, col].sum(), c.sum() / 300
    gap = (c[np.arange(300), j.numpy()].sum() - opt) / (ind - opt)
    assert torch.equal(j.sort().values, torch.arange(300))
    assert -1e-9 <= gap <= info["gap_bound"] + 1e-9 <= 0.01 + 1e-9
    assert info["lower_bound"] * 300 <= opt * (1 + 1e-9)


def test_bad_warm_start():
    with pytest.raises(TypeError, match="warm_start must be a bool"):
        ApproxOT(warm_start=1)


compiled_only = pytest.mark.skipif(not kernels.available(), reason="needs numba")


@compiled_only
def test_compiled_bidding_cap_warns_or_raises():
    x0, x1 = randn(200, 2, seed=19), randn(200, 2, seed=20)
    with pytest.warns(RuntimeWarning, match="certified gap bound .* > tol"):
        p = ApproxOT(tol=1e-4, max_iter=20, backend="compiled")(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(200))
    with pytest.raises(RuntimeError, match="no complete pairing"):
        ApproxOT(max_iter=1, backend="compiled", warm_start=False)(x0, x1)


@compiled_only
def test_compiled_tolerance_below_the_float32_floor_stops_and_warns():
    """A tol the float32 rounding slack cannot certify: the auction stops once eps is as fine
    as the certificate needs (it used to repeat that phase forever) and warns."""
    g = torch.Generator().manual_seed(40)
    angle = torch.randint(0, 8, (512,), generator=g) * (torch.pi / 4)
    x1 = 5 * torch.stack([angle.cos(), angle.sin()], 1) + torch.randn(512, 2, generator=g)
    x0 = torch.randn(512, 2, generator=g)
    with pytest.warns(RuntimeWarning, match="certified gap bound .* > tol=1e-07"):
        p = ApproxOT(tol=1e-7, backend="compiled")(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(512))
    assert 1e-7 < p.info["gap_bound"] < 1e-3 and p.info["phases"] < 40


@compiled_only
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_compiled_certificate_on_general_and_badly_scaled_costs(scale):
    g = torch.Generator().manual_seed(36)
    cost = torch.rand(300, 300, generator=g) ** 4 * scale
    cost[:, :7] += 50.0 * scale
    j, info = ApproxOT(tol=0.01, backend="compiled").solve(cost)
    c = cost.double().numpy()
    r, col = linear_sum_assignment(c)
    opt, ind = c[r, col].sum(), c.sum() / 300
    gap = (c[np.arange(300), j.numpy()].sum() - opt) / (ind - opt)
    assert info["compiled"] == 1.0
    assert torch.equal(j.sort().values, torch.arange(300))
    assert -1e-6 <= gap <= info["gap_bound"] + 1e-6 <= 0.01 + 1e-6
    assert info["lower_bound"] * 300 <= opt * (1 + 1e-6)


@compiled_only
def test_auto_backend_choice():
    x0, x1 = randn(40, 3, seed=37), randn(40, 3, seed=38)
    assert ApproxOT()(x0, x1).info["compiled"] == 1.0
    assert ApproxOT(cost_dtype=torch.float64)(x0, x1).info["compiled"] == 0.0
    assert ApproxOT(backend="torch")(x0, x1).info["compiled"] == 0.0


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ApproxOT(backend="gpu")
    if kernels.available():
        with pytest.raises(ValueError, match="cost_dtype=torch.float32"):
            ApproxOT(backend="compiled", cost_dtype=torch.float64)
