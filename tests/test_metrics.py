"""Tests for otcfm.metrics against independent oracles (closed forms, scipy, brute force, LP)."""

from __future__ import annotations

import itertools
import math
import warnings
from types import SimpleNamespace

import numpy as np
import ot
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats
import torch

from otcfm import metrics
from otcfm.metrics import (
    MMD_BANDWIDTHS,
    frechet_distance,
    frechet_distance_from_stats,
    mmd,
    normalized_path_energy,
    path_energy,
    wasserstein,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
                       ).to(dtype)


# --------------------------------------------------------------------------- Wasserstein
@pytest.mark.parametrize("p", [1, 2])
def test_translation(p):
    # W_p(mu, mu + c) = |c| for every p >= 1 (translation is the optimal map)
    x = randn(200, 2)
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert wasserstein(x, x + c, p=p) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_permuted_copy_is_zero(p):
    x = randn(150, 3, 2, seed=1)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(2))
    assert wasserstein(x, x[perm], p=p) == pytest.approx(0.0, abs=1e-7)


def test_one_dimensional_w2_is_sorted_matching():
    x, y = randn(300, seed=3), randn(300, seed=4) * 2 + 1
    expected = math.sqrt(float(((x.sort().values - y.sort().values) ** 2).mean()))
    assert wasserstein(x, y, p=2) == pytest.approx(expected, rel=1e-9)
    assert wasserstein(x[:, None], y[:, None], p=2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("n", "m"), [(120, 120), (90, 131)])
def test_one_dimensional_w1_matches_scipy(n, m):
    x, y = randn(n, seed=5).numpy(), (randn(m, seed=6) * 0.5 + 0.3).numpy()
    expected = scipy.stats.wasserstein_distance(x, y)
    assert wasserstein(x, y, p=1) == pytest.approx(expected, rel=1e-9)


def test_one_dimensional_weighted_w1_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=25) + 0.5
    a, b = rng.uniform(0.1, 1.0, 40), rng.uniform(0.1, 1.0, 25)
    expected = scipy.stats.wasserstein_distance(x, y, a, b)
    assert wasserstein(x, y, p=1, a=a, b=b) == pytest.approx(expected, rel=1e-9)
    # weights are normalised: scaling them changes nothing
    assert wasserstein(x, y, p=1, a=3 * a, b=b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", [1, 2])
def test_equal_size_matches_brute_force_permutations(p):
    x, y = randn(6, 2, seed=7), randn(6, 2, seed=8) + 0.5
    d = torch.cdist(x, y).numpy() ** p
    best = min(sum(d[i, s[i]] for i in range(6)) / 6 for s in itertools.permutations(range(6)))
    assert wasserstein(x, y, p=p) == pytest.approx(best ** (1 / p), rel=1e-10)


def test_equal_size_matches_linear_sum_assignment():
    x, y = randn(80, 5, seed=9), randn(80, 5, seed=10) * 1.5
    d2 = torch.cdist(x, y).pow(2).numpy()
    r, c = scipy.optimize.linear_sum_assignment(d2)
    assert wasserstein(x, y) == pytest.approx(math.sqrt(d2[r, c].mean()), rel=1e-9)


@pytest.mark.parametrize("p", [1, 2])
def test_large_equal_batches_use_the_certified_auction_and_match_scipy(monkeypatch, p):
    """From n = 256 (with numba) W_p comes from the certified auction: it equals scipy's
    optimal assignment to 1e-9 relative; without a certificate it falls back to network
    simplex (same value)."""
    from otcfm._ot import assignment, auction

    if "auction" not in assignment.available_solvers():
        pytest.skip("needs numba (extra fast)")
    x, y = randn(300, 2, seed=15), randn(300, 2, seed=16) * 2 + 3
    d = torch.cdist(x.double(), y.double()).numpy() ** p
    r, c = scipy.optimize.linear_sum_assignment(d)
    expected = d[r, c].mean() ** (1 / p)
    calls = []
    real = auction.solve_auction
    monkeypatch.setattr(auction, "solve_auction", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert wasserstein(x, y, p=p) == pytest.approx(expected, rel=1e-9)
    assert calls  # the auction answered
    monkeypatch.setattr(auction, "EXACT_MAX_BIDS", 1)  # no certificate: network simplex
    assert wasserstein(x, y, p=p) == pytest.approx(expected, rel=1e-9)


def test_unequal_sizes_match_transport_linear_program():
    # independent oracle: the Kantorovich LP solved by scipy's HiGHS
    x, y = randn(7, 2, seed=11), randn(5, 2, seed=12) + 1.0
    n, m = 7, 5
    cost = torch.cdist(x, y).pow(2).numpy().reshape(-1)
    rows = np.kron(np.eye(n), np.ones(m))
    cols = np.kron(np.ones(n), np.eye(m))
    res = scipy.optimize.linprog(cost, A_eq=np.vstack([rows, cols]),
                                 b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]),
                                 bounds=(0, None), method="highs")
    assert res.success
    assert wasserstein(x, y) == pytest.approx(math.sqrt(res.fun), rel=1e-7)


def test_unequal_sizes_agree_with_pot():
    x, y = randn(60, 3, seed=13), randn(85, 3, seed=14) * 0.7
    a, b = np.full(60, 1 / 60), np.full(85, 1 / 85)
    expected = ot.emd2(a, b, ot.dist(x.numpy(), y.numpy()), numItermax=10**7)
    assert wasserstein(x, y) ** 2 == pytest.approx(expected, rel=1e-9)


def test_gaussians_near_closed_form():
    # W2^2(N(0, I), N(m, s^2 I)) = |m|^2 + d (1 - s)^2 in d = 2; large samples, loose tolerance
    m, s = torch.tensor([3.0, 0.0], dtype=torch.float64), 2.0
    x = randn(1000, 2, seed=15)
    y = randn(1000, 2, seed=16) * s + m
    closed = math.sqrt(9.0 + 2 * (1 - s) ** 2)
    assert wasserstein(x, y) == pytest.approx(closed, abs=0.15)


def test_trailing_shapes_dtypes_and_numpy():
    x, y = randn(40, 3, 4, 4, seed=17), randn(40, 3, 4, 4, seed=18)
    flat = wasserstein(x.reshape(40, -1), y.reshape(40, -1))
    assert wasserstein(x, y) == pytest.approx(flat, rel=1e-12)
    assert wasserstein(x.numpy(), y.numpy()) == pytest.approx(flat, rel=1e-12)
    x32, y32 = x.float(), y.float()
    assert wasserstein(x32, y32) == pytest.approx(flat, rel=1e-6)
    xb, yb = x.bfloat16(), y.bfloat16()
    assert wasserstein(xb, yb) == pytest.approx(wasserstein(xb.double(), yb.double()), rel=1e-12)


def test_high_dimensional_cost_path_matches_exact_differences(monkeypatch):
    x, y = randn(50, 100, seed=19) + 5.0, randn(50, 100, seed=20) + 5.0
    big = wasserstein(x, y)  # 100 features > 64: expanded |x|^2 + |y|^2 - 2 x.y form
    monkeypatch.setattr(metrics, "_CDIST_MAX_DIM", 10**6)
    assert wasserstein(x, y) == pytest.approx(big, rel=1e-10)


def test_solver_warns_when_not_optimal():
    x, y = randn(60, 2, seed=21), randn(60, 2, seed=22)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = wasserstein(x, y, max_iter=3)
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "result_code=" in str(caught[0].message) and "60 x 60" in str(caught[0].message)
    assert math.isfinite(value)


def test_wasserstein_bad_inputs():
    x = randn(5, 2)
    with pytest.raises(ValueError, match="p must"):
        wasserstein(x, x, p=0.5)
    with pytest.raises(TypeError, match="p must"):
        wasserstein(x, x, p="two")
    with pytest.raises(ValueError, match="features"):
        wasserstein(x, randn(5, 3))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wasserstein(bad, x)
    with pytest.raises(ValueError, match="empty"):
        wasserstein(x[:0], x)
    with pytest.raises(TypeError, match="numpy"):
        wasserstein([[0.0, 1.0]], x)
    with pytest.raises(ValueError, match="one weight per sample"):
        wasserstein(x, x, a=np.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein(x, x, a=np.array([1.0, -1.0, 1.0, 1.0, 1.0]))


# --------------------------------------------------------------------------- MMD
def naive_mmd2(x, y, bandwidths):
    def k(u, v):
        d2 = sum((ui - vi) ** 2 for ui, vi in zip(u, v, strict=True))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)

    xs, ys = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
    kyy = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
    kxy = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
    return kxx + kyy - 2 * kxy


def test_mmd_matches_naive_double_loop():
    x, y = randn(7, 3, seed=23), randn(5, 3, seed=24) * 0.5 + 0.2
    expected = naive_mmd2(x, y, MMD_BANDWIDTHS)
    assert mmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert mmd(x, y, squared=False) == pytest.approx(math.sqrt(expected), rel=1e-10)
    assert mmd(x, y, bandwidths=(0.5,)) == pytest.approx(naive_mmd2(x, y, (0.5,)), rel=1e-10)


def test_mmd_identity_positivity_symmetry():
    x, y = randn(300, 2, seed=25), randn(300, 2, seed=26) + 1.0
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert mmd(x, y) > 1e-2
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-12)
    # same distribution, independent samples: much smaller than a unit shift
    assert mmd(x, randn(300, 2, seed=27)) < 0.1 * mmd(x, y)


def test_mmd_wide_kernel_limit_is_mean_difference():
    # s >> |x - y|: exp(-d^2 / 2 s^2) ~ 1 - d^2 / 2 s^2, so MMD^2 ~ |mean x - mean y|^2 / s^2
    x, y = randn(200, 3, seed=28), randn(150, 3, seed=29) + torch.tensor([0.5, -1.0, 0.2])
    s = 1000.0
    expected = float((x.mean(0) - y.mean(0)).pow(2).sum()) / s**2
    assert mmd(x, y, bandwidths=(s,)) == pytest.approx(expected, rel=1e-3)


def test_mmd_blockwise_equals_single_block(monkeypatch):
    x, y = randn(53, 4, seed=30), randn(41, 4, seed=31)
    whole = mmd(x, y)
    monkeypatch.setattr(metrics, "_BLOCK", 50)  # one row per block
    assert mmd(x, y) == pytest.approx(whole, rel=1e-10)


def test_mmd_inputs():
    x = randn(10, 3, 2, seed=32)
    y = randn(12, 3, 2, seed=33)
    assert mmd(x.float(), y.numpy()) == pytest.approx(mmd(x, y), rel=1e-6)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=(1.0, 0.0))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=())
    with pytest.raises(ValueError, match="features"):
        mmd(x, randn(12, 5))


# --------------------------------------------------------------------------- path energy
def test_path_energy_from_trajectory_or_tensor():
    e = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert path_energy(e) == pytest.approx(3.0, abs=1e-12)
    assert path_energy(SimpleNamespace(energy=e)) == pytest.approx(3.0, abs=1e-12)
    assert path_energy(e.numpy()) == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(ValueError, match="energy=True"):
        path_energy(SimpleNamespace(energy=None))
    with pytest.raises(ValueError, match=">= 0"):
        path_energy(torch.tensor([1.0, -1.0]))


def test_path_energy_of_integrated_translation_flow_gives_zero_npe():
    # the constant field v = c transports x0 to x0 + c along straight lines: it is the dynamic
    # OT solution, so PE = W2^2 = |c|^2 and NPE = 0
    from otcfm.sampling import integrate

    c = torch.tensor([[1.0, -2.0]])

    class Shift(torch.nn.Module):
        def forward(self, x, t):
            return c.to(x.dtype).expand_as(x).clone()

    x0 = randn(100, 2, seed=34).float()
    traj = integrate(Shift(), x0, method="euler", steps=10)
    pe = path_energy(traj)
    w2 = wasserstein(x0, x0 + c)
    assert pe == pytest.approx(5.0, rel=1e-6)
    assert normalized_path_energy(pe, w2**2) == pytest.approx(0.0, abs=1e-5)


def test_normalized_path_energy_formula():
    assert normalized_path_energy(2.0, 2.0) == 0.0
    assert normalized_path_energy(4.0, 2.0) == pytest.approx(1.0, abs=1e-15)
    assert normalized_path_energy(0.0, 2.0) == pytest.approx(1.0, abs=1e-15)
    assert normalized_path_energy(2.5, 2.0) == pytest.approx(0.25, abs=1e-15)
    assert normalized_path_energy(1.5, 2.0) == pytest.approx(0.25, abs=1e-15)
    with pytest.raises(ValueError, match="w2_squared"):
        normalized_path_energy(1.0, 0.0)
    with pytest.raises(ValueError, match="pe"):
        normalized_path_energy(float("nan"), 1.0)


# --------------------------------------------------------------------------- Fréchet distance
def random_cov(d, seed, rank=None):
    """A random PSD covariance (d, d) of the given rank (full by default), float64 numpy."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(d, rank or d))
    return f @ f.T / (rank or d) + (0.0 if rank else 0.1 * np.eye(d))


def sqrtm_fd(mu_a, cov_a, mu_b, cov_b):
    """Oracle: the textbook formula with scipy's general matrix square root of A B."""
    cross = np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


@pytest.mark.parametrize("d", [1, 5, 64])
def test_frechet_commuting_covariances_closed_form(d):
    # diagonal A, B: d^2 = |mu_a - mu_b|^2 + sum_i (sqrt a_i - sqrt b_i)^2
    rng = np.random.default_rng(d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(a), mu_b, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_two_dimensional_non_commuting_closed_form():
    # for 2 x 2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M = A^1/2 B A^1/2,
    # tr M = tr(AB) and det M = det A det B: a formula with no matrix square root at all
    a = np.array([[2.0, 0.9], [0.9, 1.0]])
    b = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(a @ b, b @ a)
    mu_a, mu_b = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    cross = math.sqrt(np.trace(a @ b) + 2 * math.sqrt(np.linalg.det(a) * np.linalg.det(b)))
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(a) + np.trace(b) - 2 * cross
    got = frechet_distance_from_stats(mu_a, a, mu_b, b)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(frechet_distance_from_stats(mu_b, b, mu_a, a), rel=1e-12)


def test_frechet_non_commuting_matches_scipy_sqrtm_and_is_symmetric():
    d = 20
    a, b = random_cov(d, 1), random_cov(d, 2) * 2.0
    rng = np.random.default_rng(3)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d) * 0.1
    expected = sqrtm_fd(mu_a, a, mu_b, b)
    got = frechet_distance_from_stats(mu_a, a, mu_b, b)
    assert got == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_stats(mu_b, b, mu_a, a) == pytest.approx(got, rel=1e-10)
    # tensors (float32) are read as their float64 values
    ta = [torch.as_tensor(v, dtype=torch.float32) for v in (mu_a, a, mu_b, b)]
    f64 = [t.double().numpy() for t in ta]
    assert frechet_distance_from_stats(*ta) == pytest.approx(
        frechet_distance_from_stats(*f64), rel=1e-12)


def test_frechet_zero_for_identical_inputs_and_translation():
    x = np.random.default_rng(4).normal(size=(300, 12)) @ random_cov(12, 5)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x.T)))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance_from_stats(mu, cov, mu, cov) < 1e-9 * np.trace(cov)
    # a shift c of one set adds exactly |c|^2
    c = np.linspace(-1, 1, 12)
    assert frechet_distance(x, x + c) == pytest.approx((c**2).sum(), rel=1e-9)


def test_frechet_from_features_equals_from_stats_with_unbiased_covariance():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(150, 8)), rng.normal(size=(90, 8)) * 1.3 + 0.2
    got = frechet_distance(x, y)
    mx, cx = x.mean(0), np.cov(x, rowvar=False, ddof=1)
    my, cy = y.mean(0), np.cov(y, rowvar=False, ddof=1)
    assert got == pytest.approx(frechet_distance_from_stats(mx, cx, my, cy), rel=1e-12)
    assert got == pytest.approx(sqrtm_fd(mx, cx, my, cy), rel=1e-8)
    st = metrics.feature_stats(torch.as_tensor(x))
    assert st.n == 150 and np.allclose(st.cov, cx, rtol=1e-13, atol=1e-15)
    # ddof = 1 matters: the biased covariance gives a different value
    biased = frechet_distance_from_stats(mx, np.cov(x.T, ddof=0), my, np.cov(y.T, ddof=0))
    assert abs(biased - got) > 1e-3 * got


def test_frechet_rank_deficient_features_equal_their_low_dimensional_value():
    # 3-D features embedded in 50-D by an orthonormal frame: covariances of rank 3 (n = 30 < D
    # for the second set); the distance is that of the 3-D features (orthogonal invariance)
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=(30, 3)) * 0.7 + 0.5
    frame = np.linalg.qr(rng.normal(size=(50, 3)))[0]
    low = frechet_distance(x, y)
    high = frechet_distance(x @ frame.T, y @ frame.T)
    assert math.isfinite(high) and high == pytest.approx(low, rel=1e-10)
    # duplicated columns: covariances J (x) A with J = [[1, 1], [1, 1]]: exactly twice the value
    dup = frechet_distance(np.hstack([x, x]), np.hstack([y, y]))
    assert dup == pytest.approx(2 * low, rel=1e-8)


def test_frechet_finite_and_non_negative_on_degenerate_features():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 40))  # fewer samples than dimensions
    y = rng.normal(size=(6, 40))
    x[:, 3] = 1.0  # a constant column
    y[:, 7] = y[:, 8]  # duplicated columns
    for a, b in [(x, y), (y, x), (x, x), (x[:2], y[:2])]:
        v = frechet_distance(a, b)
        assert math.isfinite(v) and v >= 0.0
    assert frechet_distance(x, x) < 1e-9 * np.trace(np.cov(x.T))
    # a rank-1 covariance against itself is 0, not a NaN from a square root of -1e-17
    u = rng.normal(size=40)
    r1 = np.outer(u, u)
    assert frechet_distance_from_stats(np.zeros(40), r1, np.zeros(40), r1) < 1e-9 * u @ u


def test_frechet_bad_inputs():
    good = np.eye(3)
    with pytest.raises(ValueError, match="feature dimension"):
        frechet_distance(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.ones((1, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.ones((4, 3)))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance_from_stats(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), good)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance_from_stats(np.zeros(3), good, np.zeros(3), -good)
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), good)
