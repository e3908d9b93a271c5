"""Exact assignment solvers behind ExactOT(solver=...): optimality, ties, auto, fallbacks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from otcfm._ot import assignment as asg
from otcfm.couplings import (
    ApproxOT,
    ByClass,
    EntropicOT,
    ExactOT,
    Independent,
    UnbalancedOT,
)

ALL = list(asg.SOLVERS)


def _need(solver: str) -> None:
    if solver not in asg.available_solvers():
        pytest.skip(f"optional package for solver {solver!r} not installed")


def _cloud_cost(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((n, d))
    x1 = 1.0 + 2.0 * rng.standard_normal((n, d))
    return ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)


def _scipy_total(cost: np.ndarray) -> float:
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].sum())


def _total(cost: np.ndarray, j: np.ndarray) -> float:
    return float(cost[np.arange(cost.shape[0]), j].sum())


def _assert_perm(j: np.ndarray, n: int) -> None:
    assert j.dtype == np.int64 and j.shape == (n,)
    np.testing.assert_array_equal(np.sort(j), np.arange(n))


def _ties_costs() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((5, 2))
    dup0 = np.repeat(pts, 6, axis=0)  # 30 points, each repeated 6 times
    dup1 = rng.permutation(dup0)
    grid = rng.integers(0, 3, size=(40, 2)).astype(float)  # many equal distances
    return [
        ((dup0[:, None] - dup1[None]) ** 2).sum(-1),
        ((grid[:, None] - rng.permutation(grid)[None]) ** 2).sum(-1),
        np.zeros((25, 25)),  # every permutation is optimal
        np.ones((1, 1)),
    ]


@pytest.mark.parametrize("solver", ALL)
def test_solver_matches_brute_force_on_tiny_problems(solver):
    _need(solver)
    for n, seed in itertools.product((1, 2, 3, 5, 6), (0, 1)):
        cost = _cloud_cost(n, 2, seed)
        brute = min(_total(cost, np.array(p)) for p in itertools.permutations(range(n)))
        j = asg.solve(cost, solver)
        _assert_perm(j, n)
        assert abs(_total(cost, j) - brute) <= 1e-9 * max(1.0, brute)


@pytest.mark.parametrize("solver", ALL)
@pytest.mark.parametrize("n,d", [(17, 2), (64, 2), (100, 3), (64, 64), (128, 784)])
def test_solver_optimal_like_scipy(solver, n, d):
    _need(solver)
    cost = _cloud_cost(n, d, seed=n + d)
    j = asg.solve(cost, solver, check=False)  # no fallback: the solver's own answer
    _assert_perm(np.asarray(j, dtype=np.int64), n)
    ref = _scipy_total(cost)
    assert abs(_total(cost, j) - ref) <= 1e-9 * ref


@pytest.mark.parametrize("solver", ALL)
def test_solver_optimal_with_ties_and_duplicates(solver):
    _need(solver)
    for cost in _ties_costs():
        n = cost.shape[0]
        j = asg.solve(cost, solver, check=False)
        _assert_perm(np.asarray(j, dtype=np.int64), n)
        ref = _scipy_total(cost)
        assert abs(_total(cost, j) - ref) <= 1e-9 * max(1.0, ref)


@pytest.mark.parametrize("solver", ["auto", *ALL])
@pytest.mark.parametrize("shape", [(48, 2), (48, 3, 4, 4), (300, 70)])
def test_exact_ot_solver_option_pairs_optimally(solver, shape):
    if solver != "auto":
        _need(solver)
    if solver == "lapjv" and shape[1] == 2:
        shape = (24, 2)  # lapjv is very slow on degenerate 2-D costs; keep the test quick
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(*shape, generator=g)
    x1 = torch.randn(*shape, generator=g) * 2 + 1
    pair = ExactOT(solver=solver, cost_dtype=torch.float64)(x0, x1)
    n = shape[0]
    _assert_perm(pair.j.numpy(), n)
    np.testing.assert_array_equal(pair.i.numpy(), np.arange(n))
    cost = torch.cdist(x0.reshape(n, -1).double(), x1.reshape(n, -1).double()).square().numpy()
    ref = _scipy_total(cost)
    assert abs(_total(cost, pair.j.numpy()) - ref) <= 1e-9 * ref
    assert pair.x1.shape == x1.shape


def test_exact_ot_solver_matters_not_for_plan():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    costs = []
    for solver in asg.available_solvers():
        plan = ExactOT(solver=solver, cost_dtype=torch.float64).plan(x0, x1)
        assert torch.allclose(plan.sum(1), torch.full((30,), 1 / 30, dtype=torch.float64))
        assert torch.allclose(plan.sum(0), torch.full((30,), 1 / 30, dtype=torch.float64))
        costs.append(float((plan * torch.cdist(x0.double(), x1.double()).square()).sum()))
    assert max(costs) - min(costs) <= 1e-12 * max(costs)


def test_auto_rule_follows_the_measured_crossovers(monkeypatch):
    """docs/results/exact_solvers.md and performance.md: the auction from B = 96 (d <= 8, or
    no lap), from 256 at d > 8 with lap; below, lap at d > 8, else scipy under 96 and
    network simplex above."""
    pytest.importorskip("lap")
    pytest.importorskip("numba")
    real = asg._module
    for hidden, expect in [
        ((), {(64, 2): "scipy", (95, 2): "scipy", (96, 2): "auction", (8192, 8): "auction",
              (64, 64): "lap", (255, 784): "lap", (256, 64): "auction", (4096, 9): "auction"}),
        (("lap",), {(64, 2): "scipy", (96, 2): "auction", (64, 64): "scipy",
                    (96, 784): "auction"}),
        (("numba",), {(64, 2): "scipy", (96, 2): "emd", (4096, 2): "emd", (95, 64): "lap",
                      (8192, 784): "lap"}),
        (("numba", "lap"), {(95, 784): "scipy", (96, 784): "emd", (50, 2): "scipy"}),
    ]:
        monkeypatch.setattr(asg, "_module",
                            lambda name, hidden=hidden: None if name in hidden else real(name))
        for (n, d), solver in expect.items():
            assert asg.auto_solver(n, d) == solver, (hidden, n, d)


@pytest.mark.parametrize("n,d", [(1, 784), (10, 64), (256, 64), (700, 784), (600, 2)])
def test_auto_returns_a_permutation(n, d):
    cost = _cloud_cost(n, min(d, 16), seed=n)  # dim only steers the choice
    j = asg.solve(cost, "auto", dim=d)
    _assert_perm(j, n)
    assert abs(_total(cost, j) - _scipy_total(cost)) <= 1e-9 * max(1.0, _scipy_total(cost))


def test_auto_chosen_solver_is_available():
    for n, d in itertools.product((64, 256, 4096), (2, 64, 784)):
        assert asg.auto_solver(n, d) in asg.available_solvers()


def _hide_optional(monkeypatch):
    real = asg._module
    hidden = ("lap", "lapjv", "numba")
    monkeypatch.setattr(asg, "_module", lambda name: None if name in hidden else real(name))


def test_missing_optional_package_falls_back(monkeypatch):
    _hide_optional(monkeypatch)
    assert asg.available_solvers() == ("emd", "scipy")
    assert asg.auto_solver(4096, 784) == "emd"
    assert asg.auto_solver(40, 784) == "scipy"
    cost = _cloud_cost(40, 8, seed=2)
    for name, package in (("lap", "lap"), ("lapjv", "lapjv"), ("auction", "numba")):
        j = asg.solve(cost, name)  # solver returns nothing -> scipy
        _assert_perm(j, 40)
        assert abs(_total(cost, j) - _scipy_total(cost)) <= 1e-9 * _scipy_total(cost)
        with pytest.warns(RuntimeWarning, match=f"optional package '{package}'.*fast"):
            coupling = ExactOT(solver=name)
        assert coupling.solver == "auto"
        pair = coupling(torch.randn(40, 784), torch.randn(40, 784))
        _assert_perm(pair.j.numpy(), 40)


def test_non_permutation_answer_falls_back_to_scipy(monkeypatch):
    monkeypatch.setitem(asg.SOLVERS, "emd", lambda cost: np.zeros(cost.shape[0], dtype=np.int64))
    cost = _cloud_cost(20, 2, seed=5)
    j = asg.solve(cost, "emd")
    _assert_perm(j, 20)
    assert abs(_total(cost, j) - _scipy_total(cost)) <= 1e-9 * _scipy_total(cost)


@pytest.mark.parametrize("bad", ["hungarian", "", None, 3])
def test_unknown_solver_raises(bad):
    with pytest.raises(ValueError, match="solver must be one of"):
        ExactOT(solver=bad)
    with pytest.raises(ValueError, match="solver must be one of"):
        asg.solve(np.zeros((2, 2)), bad)


# ------------------------------------------------------------------ the certified auction
def _eight_gaussians_cost(n: int, seed: int) -> np.ndarray:
    """N(0, I) -> 8 Gaussians of radius 5 (the 2-D benchmark's most degenerate costs)."""
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    x1 = 5.0 * np.stack([np.cos(angle), np.sin(angle)], 1) + rng.standard_normal((n, 2))
    x0 = rng.standard_normal((n, 2))
    return ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("kind,n", [("8g", 300), ("8g", 700), ("cloud64", 400)])
def test_auction_answers_carry_a_certified_bound(kind, n):
    """The certified bound holds against the network simplex's optimum, and is the
    optimum's own certificate (the corrected prices reach float64 rounding, not 1e-9)."""
    _need("auction")
    from otcfm._ot.auction import EXACT_RTOL, exact_assignment

    cost = _eight_gaussians_cost(n, n) if kind == "8g" else _cloud_cost(n, 64, seed=n)
    found = exact_assignment(cost)
    cols, bound = found.cols, found.bound
    _assert_perm(cols, n)
    opt = _total(cost, asg.solve(cost, "emd"))
    gap = (_total(cost, cols) - opt) / opt
    assert -1e-14 <= gap <= bound + 1e-14 <= EXACT_RTOL + 1e-14
    assert bound < 1e-12
    assert found.cost == pytest.approx(_total(cost, cols), rel=1e-13)
    work = cost.copy()
    again = exact_assignment(work, overwrite=True)  # the same answer from the reduced matrix
    np.testing.assert_array_equal(again.cols, cols)
    assert again.cost == found.cost and work.min() == 0.0 and (work.min(1) == 0.0).all()


def test_tighten_certifies_an_optimum_and_refuses_a_worse_assignment():
    """Bellman-Ford on the columns: from an auction's eps-optimal prices (eps = 1e-3 of the
    mean cost) on an optimal assignment it converges to prices under which each row's column
    is its cheapest (checked by brute force); on a worse assignment (one swap away from the
    optimum: a negative cycle) it gives up."""
    _need("auction")
    from otcfm._ot import auction_kernels as kernels
    from otcfm._ot.auction import solve_auction

    n = 60
    cost = _cloud_cost(n, 3, seed=4)
    cost -= cost.min(1, keepdims=True)
    eps = 1e-3 * cost.mean()
    auction = solve_auction(cost, 0.0, scaling=4.0, max_bids=10**6, warm=False)
    prices = auction.prices
    top = kernels.top_bits(np.float64)
    owner = np.full(n, -1, np.int64)
    j = np.full(n, -1, np.int64)
    kernels.bid(cost, prices, eps, owner, j, 10**6, top)
    assert _total(cost, j) == pytest.approx(_scipy_total(cost), rel=1e-12)
    d = np.zeros(n)
    assert kernels.tighten(cost, prices, j, owner, 0.0, 100 * n, d) > 0
    q = prices - d
    reduced = cost + q[None, :]
    assert (reduced - reduced[np.arange(n), j][:, None]).min() >= -1e-12
    worse = j.copy()
    worse[[0, 1]] = worse[[1, 0]]
    assert _total(cost, worse) > _total(cost, j)
    owner[worse] = np.arange(n)
    assert kernels.tighten(cost, prices, worse, owner, 0.0, 100 * n, np.zeros(n)) == -1


def test_auction_without_a_certificate_falls_back_to_network_simplex(monkeypatch):
    _need("auction")
    from otcfm._ot import auction

    monkeypatch.setattr(auction, "EXACT_MAX_BIDS", 1)  # no complete pairing: no answer
    cost = _eight_gaussians_cost(200, 1)
    assert auction.exact_assignment(cost) is None
    called = []
    real = asg._solve_emd
    monkeypatch.setattr(asg, "_solve_emd", lambda c: called.append(1) or real(c))
    j = asg.solve(cost, "auction", check=False)
    assert called and abs(_total(cost, j) - _scipy_total(cost)) <= 1e-9 * _scipy_total(cost)


@pytest.mark.parametrize("k,ties", [(2, True), (5, True), (32, True), (32, False)])
def test_rescan_lists_the_cheapest_columns_and_bounds_the_rest(k, ties):
    """Brute force: the list holds the m (2 <= m <= K) least values C_ij + p_j of the row,
    each at most the returned bound, and every column left out is at least the bound (ties
    wider than the list take the sorted path)."""
    _need("auction")
    from otcfm._ot import auction_lists as lists

    rng = np.random.default_rng(k)
    n = 200
    row = rng.integers(0, 40, n).astype(np.float64) if ties else rng.random(n) * 40
    p = rng.integers(0, 10, n).astype(np.float64)
    win = np.zeros(n + 1)
    for i in range(3):  # the window carried from row to row
        cand, costs = np.zeros(k, np.int64), np.zeros(k)
        m, thr = lists.rescan(row, p, cand, costs, np.empty(n), win, i)
        values = row + p
        listed = cand[:m]
        assert 2 <= m <= k and len(set(listed.tolist())) == m
        np.testing.assert_array_equal(costs[:m], row[listed])
        assert values[listed].max() <= thr
        assert values[np.setdiff1d(np.arange(n), listed)].min() >= thr
        assert np.sort(values)[m - 1] == values[listed].max()  # the m least
        p = p + rng.integers(0, 2, n)  # prices rise between scans
    full = np.zeros(n, np.int64)
    assert lists.rescan(row, p, full, np.zeros(n), np.empty(n), win, 0) == (n, np.inf)
    np.testing.assert_array_equal(full, np.arange(n))


@pytest.mark.parametrize("kind", ["8g", "ties", "cloud64"])
def test_candidate_lists_change_the_cost_of_a_bid_not_the_answer(kind, monkeypatch):
    """The certified auction with candidate lists (n >= LISTS_MIN) and with full row scans
    (lists switched off) both reach the network simplex's optimum, certified."""
    _need("auction")
    from otcfm._ot import auction

    n = 400
    if kind == "8g":
        cost = _eight_gaussians_cost(n, 7)
    elif kind == "ties":
        cost = np.random.default_rng(3).integers(0, 4, (n, n)).astype(np.float64)
    else:
        cost = _cloud_cost(n, 64, seed=5)
    opt = _scipy_total(cost)
    assert n >= auction.LISTS_MIN
    with_lists = auction.exact_assignment(cost)
    monkeypatch.setattr(auction, "LISTS_MIN", 10**9)
    scans = auction.exact_assignment(cost)
    for found in (with_lists, scans):
        _assert_perm(found.cols, n)
        assert found.bound <= auction.EXACT_RTOL
        assert _total(cost, found.cols) - opt <= 1e-9 * max(opt, 1.0)


def test_tighten_over_lists_certifies_only_what_holds_outside_them():
    """On an optimal assignment the list-restricted correction converges and its prices make
    every row's column its cheapest over all columns (brute force); when a row's column
    lies above its list's bound it reports -2 (the caller then corrects over every arc)."""
    _need("auction")
    from otcfm._ot import auction_kernels as kernels
    from otcfm._ot import auction_lists as lists

    n, k = 80, 8
    cost = _cloud_cost(n, 2, seed=8)
    cost -= cost.min(1, keepdims=True)
    r, c = linear_sum_assignment(cost)
    j = np.empty(n, np.int64)
    j[r] = c
    owner = np.empty(n, np.int64)
    owner[j] = np.arange(n)
    # optimal duals from a fine auction, then the lists at those prices
    prices = np.zeros(n)
    o2, a2 = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    kernels.bid(cost, prices, 1e-9 * cost.mean(), o2, a2, 10**7, kernels.top_bits(np.float64))
    cand, cand_c, thr = np.zeros((n, k), np.int64), np.zeros((n, k)), np.zeros(n)
    cnt, win = np.zeros(n, np.int64), np.zeros(n + 1)
    for i in range(n):
        cnt[i], thr[i] = lists.rescan(cost[i], prices, cand[i], cand_c[i], np.empty(n),
                                        win, i)
    d = np.zeros(n)
    done = lists.tighten_lists(cost, prices, a2, o2, 0.0, 100 * n, d, cand, cand_c, cnt,
                                 thr)
    assert done > 0
    q = prices - d
    values = cost + q[None, :]
    assert (values - values[np.arange(n), a2][:, None]).min() >= -1e-12
    thr[:] = -1.0  # every list's bound below its row's column: not certified here
    assert lists.tighten_lists(
        cost, prices, a2, o2, 0.0, 100 * n, np.zeros(n), cand, cand_c, cnt, thr) == -2


def test_fused_cost_is_bitwise_sq_cost_row_reduced():
    """sq_cost_reduced64 (the ExactOT auction's cost) equals float64(sq_cost(float32)) minus
    its row minima bit for bit, and flags a non-finite cost through its sum."""
    _need("auction")
    from otcfm._ot import auction_kernels as kernels
    from otcfm.couplings._base import centred, sq_cost

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(130, 7, generator=g) * 3
    x1 = torch.randn(120, 7, generator=g) + 2
    x1[:5] = x0[:5]  # zero distances: the clamp at 0
    a, b = centred(x0, x1, torch.float32)
    gram = (a @ b.T).numpy()
    out, lo = np.empty((130, 120)), np.empty(130)
    offset, total, cmax = kernels.sq_cost_reduced64(
        gram, (a * a).sum(1).numpy(), (b * b).sum(1).numpy(), out, lo)
    c32 = sq_cost(x0, x1, torch.float32).numpy()
    np.testing.assert_array_equal(lo, c32.min(1).astype(np.float64))
    np.testing.assert_array_equal(out, c32.astype(np.float64) - lo[:, None])
    assert offset == pytest.approx(lo.sum(), rel=1e-15)
    assert total == pytest.approx(out.sum(), rel=1e-12) and cmax == out.max()
    bad = gram.copy()
    bad[3, 4] = np.nan
    assert not np.isfinite(kernels.sq_cost_reduced64(
        bad, (a * a).sum(1).numpy(), (b * b).sum(1).numpy(), out, lo)[1])


def test_exact_ot_auction_path_matches_scipy_on_the_float32_costs(monkeypatch):
    """ExactOT's auction path (cost built in its kernel) pairs optimally for the float32
    costs sq_cost computes, reports their mean, and without a certificate falls back to
    network simplex on the reduced cost with the same answer."""
    _need("auction")
    from otcfm._ot import auction
    from otcfm.couplings._base import sq_cost

    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) * 2 + 1
    c = sq_cost(x0, x1, torch.float32).double().numpy()
    opt = _scipy_total(c)
    calls = []
    real = auction.exact_assignment_gram
    monkeypatch.setattr(auction, "exact_assignment_gram",
                        lambda *a: calls.append(1) or real(*a))
    i, j, info = ExactOT(solver="auction").pair(x0, x1)
    assert calls  # the fused path ran
    assert _total(c, j.numpy()) - opt <= 1e-9 * opt
    assert info["cost"] == pytest.approx(_total(c, j.numpy()) / 300, rel=1e-12)
    monkeypatch.setattr(auction, "certified_assignment", lambda *a: None)
    i2, j2, info2 = ExactOT(solver="auction").pair(x0, x1)
    assert _total(c, j2.numpy()) - opt <= 1e-9 * opt
    assert info2["cost"] == pytest.approx(_total(c, j2.numpy()) / 300, rel=1e-12)


def test_exact_ot_auction_path_refuses_an_overflowing_cost():
    _need("auction")
    x0 = torch.full((260, 2), 3e19)
    x0[0] = -3e19
    with pytest.raises(ValueError, match="overflow|float32"):
        ExactOT(solver="auction").pair(x0, torch.zeros(260, 2))


def test_auction_workspace_is_per_thread_and_resized():
    """The float64 cost matrix is reused by the same thread for same-sized batches, never
    shared with another thread, and replaced when the batch grows or shrinks far."""
    _need("auction")
    import threading

    from otcfm._ot import auction

    a = auction._workspace((100, 100))
    assert auction._workspace((100, 100)).base is a.base
    assert auction._workspace((90, 90)).base is a.base
    assert auction._workspace((200, 200)).base is not a.base
    other = []
    t = threading.Thread(target=lambda: other.append(auction._workspace((200, 200))))
    t.start()
    t.join()
    assert other[0].base is not auction._workspace((200, 200)).base
    assert auction._workspace((20, 20)).base is not auction._workspace((200, 200)).base


def test_load_kernels_runs_each_path_once_per_process(monkeypatch):
    """``load_kernels`` calls each asked path's entry point once; a path already run is
    skipped unless forced; unknown paths raise; without numba nothing runs."""
    pytest.importorskip("numba")
    from otcfm._ot import auction, auction_kernels, sparse_sinkhorn, warm

    seen = []

    def spy(module, name):
        real = getattr(module, name)

        def call(*args, **kwargs):
            seen.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, call)

    for module, name in ((auction, "exact_assignment"), (auction, "solve_auction"),
                         (sparse_sinkhorn, "sparse_sinkhorn")):
        spy(module, name)
    monkeypatch.setattr(warm, "_loaded", set())
    assert warm.load_kernels("exact", n=256) > 0.0
    assert "exact_assignment" in seen and "sparse_sinkhorn" not in seen
    seen.clear()
    warm.load_kernels("exact", n=256)
    assert seen == []  # already loaded in this process
    warm.load_kernels("exact", "entropic", n=256)
    assert "sparse_sinkhorn" in seen and "exact_assignment" not in seen
    seen.clear()
    warm.load_kernels("exact", n=256, force=True)
    assert "exact_assignment" in seen
    with pytest.raises(ValueError, match="unknown kernel path"):
        warm.load_kernels("simplex")
    monkeypatch.setattr(auction_kernels, "available", lambda: False)
    assert warm.load_kernels("approx", force=True) == 0.0


@pytest.mark.parametrize("make, paths", [
    (lambda: ExactOT(), [("exact",)]),
    (lambda: ExactOT(solver="auction"), [("exact",)]),
    (lambda: ExactOT(solver="emd"), []),
    (lambda: ApproxOT(), [("approx",)]),
    (lambda: ApproxOT(backend="torch"), []),
    (lambda: EntropicOT(reg=0.1), [("exact", "entropic")]),
    (lambda: UnbalancedOT(reg=0.1, reg_m=1.0), []),
    (lambda: ByClass(ExactOT()), [("exact",)]),
    (lambda: Independent(), []),
])
def test_prepare_loads_the_kernels_the_coupling_runs(monkeypatch, make, paths):
    """``Coupling.prepare`` loads the compiled paths its solver may call, and only those."""
    from otcfm.couplings import _approx, _entropic, _exact

    loaded = []
    for module in (_approx, _entropic, _exact):
        monkeypatch.setattr(module, "load_kernels", lambda *p: loaded.append(p))
    make().prepare()
    assert loaded == paths


def test_compile_kernels_module_runs_every_compiled_path(monkeypatch, capsys):
    """``python -m otcfm._ot`` (run by ``make setup``) goes through the exact auction with
    lists, ApproxOT's float32 auction and the near-permutation entropic solve: each entry
    point is seen called; without numba it says so and compiles nothing."""
    pytest.importorskip("numba")
    from otcfm._ot import __main__ as warm
    from otcfm._ot import auction, auction_lists, sparse_sinkhorn

    seen = []

    def spy(module, name):
        real = getattr(module, name)

        def call(*args, **kwargs):
            seen.append(name if name != "solve_auction" else f"{name} {args[0].dtype}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, call)

    spy(auction_lists, "bid_lists")
    spy(auction, "solve_auction")
    spy(sparse_sinkhorn, "sparse_sinkhorn")
    assert warm.compile_kernels(n=256) > 0.0
    assert {"bid_lists", "solve_auction float32", "solve_auction float64",
            "sparse_sinkhorn"} <= set(seen)
    assert warm.main() == 0
    assert "compiled and cached" in capsys.readouterr().out
    monkeypatch.setattr(warm.auction_kernels, "available", lambda: False)
    assert warm.main() == 0
    assert "nothing to compile" in capsys.readouterr().out
