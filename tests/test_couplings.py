"""Couplings: exact OT optimality against independent oracles, plan sampling, contracts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from otcfm.couplings import (
    COUPLINGS,
    ConvergenceWarning,
    Coupling,
    EntropicOT,
    ExactOT,
    Independent,
    Pairing,
    PartialOT,
    UnbalancedOT,
    coupling,
)

# keyword arguments that make every registered coupling constructible
KWARGS = {
    "approx": {},
    "independent": {},
    "exact": {},
    "entropic": {"reg": 1.0},
    "unbalanced": {"reg": 1.0, "reg_m": 10.0},
    "partial": {"mass": 0.75},
}


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def sqdist(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """Independent float64 squared-distance matrix (scipy)."""
    a = x0.double().reshape(len(x0), -1).numpy()
    b = x1.double().reshape(len(x1), -1).numpy()
    return cdist(a, b, "sqeuclidean")


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


# --------------------------------------------------------------------------- registry
def test_registry_names_and_factories():
    assert COUPLINGS.names() == sorted(KWARGS)
    assert COUPLINGS.factory("exact") is ExactOT
    assert COUPLINGS.factory("entropic") is EntropicOT
    for name, kw in KWARGS.items():
        c = coupling(name, **kw)
        assert isinstance(c, Coupling)
        assert c.name == name
        assert name in repr(c) or type(c).__name__ in repr(c)


def test_unknown_registry_name():
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'.*entropic, exact"):
        coupling("sinkhorn")


# --------------------------------------------------------------------------- exact OT
@pytest.mark.parametrize("b", [1, 2, 3, 5, 7])
def test_exact_equal_batches_is_optimal_permutation_brute_force(b):
    x0, x1 = randn(b, 3, seed=b), randn(b, 3, seed=100 + b)
    p = ExactOT()(x0, x1)
    assert torch.equal(p.i, torch.arange(b))
    assert torch.equal(p.j.sort().values, torch.arange(b))
    C = sqdist(x0, x1)
    perms = np.array(list(itertools.permutations(range(b))))
    best = C[np.arange(b), perms].sum(1).min()
    got = C[p.i.numpy(), p.j.numpy()].sum()
    assert got == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert p.info["cost"] == pytest.approx(best / b, rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6),
    d=st.integers(1, 3),
    data=st.data(),
)
def test_exact_brute_force_property(b, d, data):
    values = st.floats(-100, 100, allow_nan=False, width=32)
    x0 = torch.tensor(data.draw(st.lists(values, min_size=b * d, max_size=b * d))).reshape(b, d)
    x1 = torch.tensor(data.draw(st.lists(values, min_size=b * d, max_size=b * d))).reshape(b, d)
    p = ExactOT(cost_dtype=torch.float64)(x0, x1)
    C = sqdist(x0, x1)
    perms = np.array(list(itertools.permutations(range(b))))
    best = C[np.arange(b), perms].sum(1).min()
    assert C[p.i.numpy(), p.j.numpy()].sum() == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_exact_matches_emd2_at_300():
    x0, x1 = randn(300, 5, seed=1), randn(300, 5, seed=2, scale=2.0) + 1.0
    p = ExactOT()(x0, x1)
    C = sqdist(x0, x1)
    optimum = ot.emd2(uniform(300), uniform(300), C, numItermax=10**8)
    got = C[p.i.numpy(), p.j.numpy()].mean()
    assert got == pytest.approx(optimum, rel=1e-6)


def test_exact_matches_assignment_at_2000():
    x0, x1 = randn(2000, 8, seed=3), randn(2000, 8, seed=4) * 0.5 + 0.3
    p = ExactOT()(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(2000))  # one-to-one, no duplicates
    C = sqdist(x0, x1)
    rows, cols = linear_sum_assignment(C)
    got = C[p.i.numpy(), p.j.numpy()].sum()
    assert got == pytest.approx(C[rows, cols].sum(), rel=1e-6)


def test_both_assignment_solvers_agree():
    # low-dimensional batches try network simplex first; scipy's solver is the fallback
    from otcfm.couplings._exact import _assignment

    C = sqdist(randn(400, 2, seed=43), randn(400, 2, seed=44))
    simplex, lsa = _assignment(C, simplex_first=True), _assignment(C)
    assert np.array_equal(np.sort(simplex), np.arange(400))
    rows = np.arange(400)
    assert C[rows, simplex].sum() == pytest.approx(C[rows, lsa].sum(), rel=1e-12)


def test_exact_1d_is_sorted_matching():
    x0, x1 = randn(100, 1, seed=5), randn(100, 1, seed=6, scale=3.0) + 2.0
    p = ExactOT()(x0, x1)
    order0, order1 = x0[:, 0].argsort(), x1[:, 0].argsort()
    # the k-th smallest source goes to the k-th smallest target
    assert torch.equal(p.j[order0], order1)


def test_exact_with_duplicate_points_is_still_a_permutation():
    x0 = torch.zeros(6, 2)
    x1 = torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 3)
    p = ExactOT()(x0, x1)
    assert torch.equal(p.j.sort().values, torch.arange(6))
    assert p.info["cost"] == pytest.approx(1.0, abs=1e-6)


def test_exact_pairs_far_from_origin_in_float32():
    # the cost is centred before the expanded |a|^2 + |b|^2 - 2ab form: no cancellation
    x0, x1 = randn(64, 2, seed=7), randn(64, 2, seed=8)
    ref = ExactOT(cost_dtype=torch.float64)(x0, x1).j
    shifted = ExactOT()(x0 + 1e4, x1 + 1e4).j
    assert torch.equal(shifted, ref)


# --------------------------------------------------------------------------- plan sampling
def test_exact_plan_unequal_sizes_marginals_and_optimality():
    x0, x1 = randn(9, 2, seed=9), randn(6, 2, seed=10)
    P = ExactOT().plan(x0, x1)
    assert P.dtype == torch.float64 and P.shape == (9, 6)
    assert torch.allclose(P.sum(1), torch.full((9,), 1 / 9, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(P.sum(0), torch.full((6,), 1 / 6, dtype=torch.float64), atol=1e-12)
    C = sqdist(x0, x1)
    assert float((P.numpy() * C).sum()) == pytest.approx(
        ot.emd2(uniform(9), uniform(6), C), rel=1e-9
    )


def test_exact_plan_sampling_frequencies_match_plan():
    x0, x1 = randn(6, 2, seed=11), randn(4, 2, seed=12)
    n = 200_000
    cpl = ExactOT(n_pairs=n)  # unequal sizes: plan sampling with replacement
    p = cpl(x0, x1, generator=torch.Generator().manual_seed(0))
    freq = torch.zeros(6, 4, dtype=torch.float64)
    freq.index_put_((p.i, p.j), torch.ones(n, dtype=torch.float64), accumulate=True)
    # binomial std <= 0.5 / sqrt(n) ~ 1.1e-3 per cell
    assert torch.allclose(freq / n, cpl.plan(x0, x1), atol=6e-3)
    assert bool(((freq > 0) <= (cpl.plan(x0, x1) > 0)).all())  # never off the support


def test_exact_plan_default_pair_count_and_rows_sampling():
    x0, x1 = randn(10, 3, seed=13), randn(7, 3, seed=14)
    g = torch.Generator().manual_seed(1)
    assert ExactOT()(x0, x1, generator=g).i.shape == (10,)
    assert ExactOT()(x1, x0, generator=g).i.shape == (10,)
    rows = ExactOT(sampling="rows")(x0, x1, generator=g)
    assert torch.equal(rows.i, torch.arange(10))
    P = ExactOT().plan(x0, x1)
    assert bool((P[rows.i, rows.j] > 0).all())


def test_exact_plan_without_replacement():
    x0, x1 = randn(10, 2, seed=15), randn(7, 2, seed=16)
    P = ExactOT().plan(x0, x1)
    support = int((P > 0).sum())
    g = torch.Generator().manual_seed(2)
    p = ExactOT(replace=False)(x0, x1, generator=g)
    cells = set(zip(p.i.tolist(), p.j.tolist(), strict=True))
    assert len(cells) == 10  # default max(n0, n1), all distinct
    assert all(float(P[i, j]) > 0 for i, j in cells)
    full = ExactOT(replace=False, n_pairs=support)(x0, x1, generator=g)
    assert set(zip(full.i.tolist(), full.j.tolist(), strict=True)) == {
        tuple(c) for c in torch.nonzero(P > 0).tolist()
    }
    with pytest.raises(ValueError, match="non-zero cells"):
        ExactOT(replace=False, n_pairs=support + 1)(x0, x1, generator=g)


def test_equal_batches_plan_sampling_is_opt_in():
    x0, x1 = randn(32, 2, seed=17), randn(32, 2, seed=18)
    perm = ExactOT()(x0, x1)
    g = torch.Generator().manual_seed(3)
    drawn = ExactOT(sampling="plan")(x0, x1, generator=g)
    # with replacement from a permutation plan: every drawn pair is an optimal pair
    assert torch.equal(drawn.j, perm.j[drawn.i])
    distinct = ExactOT(sampling="plan", replace=False)(x0, x1, generator=g)
    assert torch.equal(distinct.i, torch.arange(32)) and torch.equal(distinct.j, perm.j)
    with pytest.raises(ValueError, match="n_pairs=8 needs sampling='plan'"):
        ExactOT(n_pairs=8)(x0, x1)


@pytest.mark.filterwarnings("ignore:numItermax reached:UserWarning")  # POT's own, duplicated
def test_exact_iteration_cap_is_reported_never_silent():
    x0, x1 = randn(60, 2, seed=19), randn(50, 2, seed=20)
    with pytest.raises(RuntimeError, match=r"result code 3 .*max_iter=5"):
        ExactOT(max_iter=5)(x0, x1)
    with pytest.warns(ConvergenceWarning, match="did not reach optimality"):
        ExactOT(max_iter=5, on_fail="warn")(x0, x1, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- partial OT
def test_partial_plan_matches_pot_and_mass_constraint():
    x0, x1 = randn(12, 2, seed=21), randn(9, 2, seed=22) + 1.5
    cpl = PartialOT(mass=0.6)
    P = cpl.plan(x0, x1).numpy()
    C = sqdist(x0, x1)
    ref = ot.partial.partial_wasserstein(uniform(12), uniform(9), C, m=0.6)
    assert P.sum() == pytest.approx(0.6, abs=1e-12)
    assert (P.sum(1) <= 1 / 12 + 1e-12).all() and (P.sum(0) <= 1 / 9 + 1e-12).all()
    assert (P * C).sum() == pytest.approx((ref * C).sum(), rel=1e-6)
    assert np.allclose(P, ref, atol=1e-6)


def test_partial_pairs_drop_the_unmatched_share():
    x0 = torch.cat([randn(8, 2, seed=23), torch.full((2, 2), 50.0)])  # two far outliers
    x1 = randn(10, 2, seed=24)
    g = torch.Generator().manual_seed(4)
    p = PartialOT(mass=0.8, replace=False)(x0, x1, generator=g)
    assert p.i.shape == (8,)  # ceil(0.8 * 10) pairs
    assert set(p.i.tolist()) == set(range(8))  # outliers (rows 8, 9) left out
    assert len(set(p.j.tolist())) == 8  # a partial one-to-one matching
    assert p.info["mass"] == pytest.approx(0.8, abs=1e-12)


def test_partial_full_mass_is_exact_ot():
    x0, x1 = randn(8, 2, seed=25), randn(5, 2, seed=26)
    assert torch.allclose(PartialOT(mass=1.0).plan(x0, x1), ExactOT().plan(x0, x1), atol=1e-12)


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.5, float("nan")])
def test_partial_bad_mass(mass):
    with pytest.raises(ValueError, match="mass"):
        PartialOT(mass=mass)


# --------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("name", sorted(KWARGS))
@pytest.mark.parametrize("shape", [(1,), (2,), (3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contract_shapes_and_dtypes(name, shape, dtype):
    x0 = randn(12, *shape, seed=27).to(dtype)
    x1 = (randn(12, *shape, seed=28) + 0.5).to(dtype)
    p = coupling(name, **KWARGS[name])(x0, x1, generator=torch.Generator().manual_seed(0))
    assert isinstance(p, Pairing)
    n = p.i.shape[0]
    assert p.i.dtype == p.j.dtype == torch.int64 and p.j.shape == (n,)
    assert p.x0.shape == (n, *shape) and p.x1.shape == (n, *shape)
    assert p.x0.dtype == dtype and p.x1.dtype == dtype
    assert torch.equal(p.x0, x0[p.i]) and torch.equal(p.x1, x1[p.j])
    assert math.isfinite(p.info["seconds"]) and p.info["pairs"] == n


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_same_seed_same_pairing(name):
    x0, x1 = randn(20, 3, seed=29), randn(20, 3, seed=30)
    cpl = coupling(name, **KWARGS[name])
    a = cpl(x0, x1, generator=torch.Generator().manual_seed(7))
    b = cpl(x0, x1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.i, b.i) and torch.equal(a.j, b.j)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.x1, b.x1)


def test_different_seeds_differ_for_sampled_couplings():
    x0, x1 = randn(40, 2, seed=31), randn(30, 2, seed=32)
    cpl = EntropicOT(reg=5.0, sampling="joint")
    a = cpl(x0, x1, generator=torch.Generator().manual_seed(1))
    b = cpl(x0, x1, generator=torch.Generator().manual_seed(2))
    assert not (torch.equal(a.i, b.i) and torch.equal(a.j, b.j))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cpl", [ExactOT(), EntropicOT(reg=0.5), PartialOT(mass=0.7)])
def test_low_precision_inputs_pair_like_their_float32_cast(dtype, cpl):
    x0, x1 = randn(24, 3, 2, 2, seed=33).to(dtype), randn(24, 3, 2, 2, seed=34).to(dtype)
    low = cpl(x0, x1, generator=torch.Generator().manual_seed(5))
    ref = cpl(x0.float(), x1.float(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(low.i, ref.i) and torch.equal(low.j, ref.j)
    assert low.x0.dtype == dtype


def test_conditions_follow_indices():
    x0, x1 = randn(10, 2, seed=35), randn(7, 2, seed=36)
    labels0 = torch.arange(10) * 10
    cond1 = {"y": torch.arange(7), "meta": {"name": [f"t{k}" for k in range(7)]}}
    p = ExactOT()(x0, x1, generator=torch.Generator().manual_seed(6), cond0=labels0, cond1=cond1)
    assert torch.equal(p.cond0, labels0[p.i])
    assert torch.equal(p.cond1["y"], p.j)
    assert p.cond1["meta"]["name"] == [f"t{k}" for k in p.j.tolist()]
    q = ExactOT()(x0[:7], x1, cond1=torch.arange(7)[:, None].float())
    assert torch.equal(q.cond1[:, 0].long(), q.j) and q.cond0 is None


def test_independent_pairs_in_order():
    x0, x1 = randn(5, 2, seed=37), randn(5, 2, seed=38)
    p = Independent()(x0, x1, cond1=torch.arange(5))
    assert torch.equal(p.i, torch.arange(5)) and torch.equal(p.j, torch.arange(5))
    assert torch.equal(p.x1, x1)
    with pytest.raises(ValueError, match="same size, got 5 and 4"):
        Independent()(x0, x1[:4])


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", sorted(KWARGS))
def test_bad_inputs_raise_clear_errors(name):
    cpl = coupling(name, **KWARGS[name])
    x = randn(6, 2)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x0 contains 1 NaN or inf"):
        cpl(bad, x)
    with pytest.raises(ValueError, match="x1 contains 1 NaN or inf"):
        cpl(x, bad.masked_fill(bad.isnan(), float("inf")))
    with pytest.raises(ValueError, match="trailing shape"):
        cpl(x, randn(6, 3))
    with pytest.raises(ValueError, match="empty"):
        cpl(x[:0], x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        cpl(x.numpy(), x)
    with pytest.raises(ValueError, match="cond1 must have one row per sample"):
        cpl(x, x, cond1=torch.arange(5))
    with pytest.raises(TypeError, match="generator"):
        cpl(x, x, generator=0)


@pytest.mark.parametrize("reg", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_reg(reg):
    with pytest.raises(ValueError, match="reg must be finite and > 0"):
        EntropicOT(reg=reg)
    with pytest.raises(ValueError, match="reg must be finite and > 0"):
        UnbalancedOT(reg=reg, reg_m=1.0)


def test_bad_options():
    with pytest.raises(ValueError, match="sampling must be one of"):
        ExactOT(sampling="random")
    with pytest.raises(ValueError, match="sampling must be one of"):
        EntropicOT(reg=1.0, sampling="column")
    with pytest.raises(ValueError, match="cost_dtype must be"):
        ExactOT(cost_dtype=torch.float16)
    with pytest.raises(ValueError, match="n_pairs must be"):
        ExactOT(n_pairs=0)
    with pytest.raises(ValueError, match="n_pairs applies to sampling='plan'"):
        ExactOT(sampling="rows", n_pairs=3)
    with pytest.raises(ValueError, match="on_fail must be one of"):
        EntropicOT(reg=1.0, on_fail="ignore")
    with pytest.raises(ValueError, match="max_iter must be"):
        EntropicOT(reg=1.0, max_iter=0)
    with pytest.raises(ValueError, match="reg_m must be > 0"):
        UnbalancedOT(reg=1.0, reg_m=-1.0)
    with pytest.raises(ValueError, match="eps_scaling"):
        EntropicOT(reg=1.0, eps_scaling=1.5)


def test_cost_overflow_in_float32_is_an_error():
    x0, x1 = randn(4, 2) * 1e20, randn(4, 2) * 1e20
    with pytest.raises(ValueError, match="overflowed in torch.float32"):
        ExactOT()(x0, x1)
    assert ExactOT(cost_dtype=torch.float64)(x0, x1).j.shape == (4,)


# --------------------------------------------------------------------------- devices
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", sorted(KWARGS))
def test_cuda_inputs_stay_on_device(name, gen_device):
    n1 = 64 if name in ("independent", "approx") else 48
    x0, x1 = randn(64, 3, seed=39).cuda(), randn(n1, 3, seed=40).cuda()
    g = torch.Generator(device=gen_device).manual_seed(0)
    p = coupling(name, **KWARGS[name])(x0, x1, generator=g, cond0=torch.arange(64).cuda())
    assert p.x0.is_cuda and p.i.is_cuda and p.j.is_cuda
    assert torch.equal(p.cond0, p.i)
    assert torch.equal(p.x0, x0[p.i]) and torch.equal(p.x1, x1[p.j])


@cuda
def test_cuda_matches_cpu():
    x0, x1 = randn(256, 5, seed=41), randn(256, 5, seed=42) + 0.5
    assert torch.equal(ExactOT()(x0.cuda(), x1.cuda()).j.cpu(), ExactOT()(x0, x1).j)
    cpl = EntropicOT(reg=0.1, cost_dtype=torch.float64)
    assert torch.allclose(cpl.plan(x0.cuda(), x1.cuda()).cpu(), cpl.plan(x0, x1), atol=1e-9)


def test_row_draws_follow_the_weights_and_skip_zero_cells():
    """``draw_rows``: j ~ w(i, .) / sum w(i, .). Oracle: the exact inverse CDF of each row at
    hand-picked uniforms (u = 0 draws the first positive cell, u -> 1 the last positive one,
    never a zero cell before, between or after), and over many draws the empirical frequencies
    within 4 standard errors of the weights."""
    from otcfm.couplings._base import _inverse_cdf, draw_rows

    w = torch.tensor([[0.0, 2.0, 0.0, 1.0, 0.0],
                      [3.0, 0.0, 0.0, 0.0, 1.0],
                      [0.0, 0.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
    for u, want in ((0.0, [1, 0, 2]), (0.5, [1, 0, 2]), (0.7, [3, 0, 2]), (0.8, [3, 4, 2]),
                    (1.0 - 1e-16, [3, 4, 2]), (1.0, [3, 4, 2])):
        got = _inverse_cdf(w, torch.full((3,), u, dtype=torch.float64))
        assert got.tolist() == want, (u, got.tolist())
    g = torch.Generator().manual_seed(0)
    big = w.repeat(4000, 1)
    i, j = draw_rows(big, g)
    assert i.tolist() == list(range(big.shape[0]))
    for r in range(3):
        picks = j[r::3]
        p = w[r] / w[r].sum()
        freq = torch.bincount(picks, minlength=5).double() / picks.numel()
        se = (p * (1 - p) / picks.numel()).sqrt()
        assert bool(((freq - p).abs() <= 4 * se + 1e-12).all()), (r, freq, p)
