"""Condition-aware couplings (ByClass, the ``within=`` spec option): pairs never cross
classes, each class block is the inner coupling's own pairing, costs bracketed by the exact
OT and the within-class independent pairing (scipy oracles), determinism and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from otcfm.couplings import (
    ApproxOT,
    ByClass,
    EntropicOT,
    ExactOT,
    Independent,
    Pairing,
    coupling,
)
from otcfm.couplings._by_class import merge_info
from otcfm.matchers import matcher

INNERS = {
    "exact": ExactOT,
    "approx": lambda: ApproxOT(tol=1e-3, backend="torch"),
    "independent": Independent,
    "exact-plan": lambda: ExactOT(sampling="plan"),
}


def batch(n: int, k: int, seed: int, d: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source noise, targets clustered by class (centre 3 * e_class), target labels."""
    g = torch.Generator().manual_seed(seed)
    y1 = torch.randint(0, k, (n,), generator=g)
    centres = 3.0 * torch.eye(max(k, d))[:k, :d]
    x1 = centres[y1] + 0.5 * torch.randn(n, d, generator=g)
    x0 = torch.randn(n, d, generator=g)
    return x0, x1, y1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sqcost(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Independent float64 squared distances (scipy)."""
    return cdist(a.double().reshape(len(a), -1).numpy(), b.double().reshape(len(b), -1).numpy(),
                 "sqeuclidean")


def assigned_labels(y1: torch.Tensor, seed: int) -> torch.Tensor:
    """The documented source labels when cond0 has none: y1[randperm(B)], first draw."""
    return y1[torch.randperm(y1.shape[0], generator=gen(seed))]


# --------------------------------------------------------------------------- never across
@pytest.mark.parametrize("inner", sorted(INNERS))
@pytest.mark.parametrize("source_labels", [True, False])
def test_never_pairs_across_classes(inner, source_labels):
    for seed in range(4):
        n, k = 30 + 7 * seed, 2 + seed
        x0, x1, y1 = batch(n, k, seed)
        cond0 = None
        y0 = assigned_labels(y1, 100 + seed)
        if source_labels:
            y0 = y1[torch.randperm(n, generator=gen(50 + seed))]
            cond0 = {"y": y0}
        p = ByClass(INNERS[inner]())(x0, x1, generator=gen(100 + seed), cond0=cond0,
                                     cond1={"y": y1})
        assert isinstance(p, Pairing)
        assert torch.equal(y0[p.i], y1[p.j]), f"pairs across classes (seed {seed})"
        assert torch.equal(p.cond1["y"], y1[p.j])
        assert torch.equal(p.x0, x0[p.i]) and torch.equal(p.x1, x1[p.j])
        assert bool((p.i[1:] >= p.i[:-1]).all()), "pairs sorted by i"
        if inner != "exact-plan":  # one-to-one inner couplings: one-to-one overall
            assert torch.equal(p.i, torch.arange(n))
            assert torch.equal(p.j.sort().values, torch.arange(n))
        assert p.info["pairs"] == p.i.shape[0] and p.info["classes"] == len(torch.unique(y1))


# --------------------------------------------------------------------------- per class
@pytest.mark.parametrize("inner", sorted(INNERS))
def test_each_class_block_is_the_inner_coupling_of_that_block(inner):
    x0, x1, y1 = batch(48, 3, seed=7)
    y0 = y1[torch.randperm(48, generator=gen(8))]
    cpl = INNERS[inner]()
    p = ByClass(cpl)(x0, x1, generator=gen(9), cond0={"y": y0}, cond1={"y": y1})
    got = set(zip(p.i.tolist(), p.j.tolist(), strict=True))
    want = set()
    g = gen(9)  # the inner coupling on each class, in increasing label order, one generator
    for c in sorted(set(y1.tolist())):
        r0, r1 = torch.nonzero(y0 == c).squeeze(1), torch.nonzero(y1 == c).squeeze(1)
        q = cpl(x0[r0], x1[r1], generator=g)
        want |= set(zip(r0[q.i].tolist(), r1[q.j].tolist(), strict=True))
    assert got == want
    assert len(got) == p.i.shape[0] or inner == "exact-plan"  # plan draws may repeat cells


def test_cost_between_exact_ot_and_within_class_independent():
    for seed in range(3):
        x0, x1, y1 = batch(40, 4, seed=20 + seed)
        y0 = assigned_labels(y1, seed)
        cost = sqcost(x0, x1)
        byc = ByClass(ExactOT(cost_dtype=torch.float64))(
            x0, x1, generator=gen(seed), cond1={"y": y1})
        ind = ByClass(Independent())(x0, x1, generator=gen(seed), cond1={"y": y1})
        c_byc = cost[byc.i.numpy(), byc.j.numpy()].mean()
        c_ind = cost[ind.i.numpy(), ind.j.numpy()].mean()
        rows, cols = linear_sum_assignment(cost)
        c_ot = cost[rows, cols].mean()
        assert c_ot <= c_byc + 1e-9 and c_byc <= c_ind + 1e-9
        # the within-class optimum is scipy's assignment restricted to the class blocks
        block = np.where(y0.numpy()[:, None] == y1.numpy()[None, :], cost, 1e9)
        r, c = linear_sum_assignment(block)
        assert c_byc == pytest.approx(block[r, c].mean(), rel=1e-9)
        assert byc.info["cost"] == pytest.approx(c_byc, rel=1e-9)  # merged: the batch mean
        assert torch.equal(ind.cond1["y"], y1[ind.j])
    # on class-clustered targets, condition-aware OT pays for staying in class
    assert c_ot < c_byc


# --------------------------------------------------------------------------- randomness
def test_same_generator_same_pairing_other_seed_other_labels():
    x0, x1, y1 = batch(36, 3, seed=3)
    cpl = ByClass(ExactOT())
    a = cpl(x0, x1, generator=gen(5), cond1={"y": y1})
    b = cpl(x0, x1, generator=gen(5), cond1={"y": y1})
    c = cpl(x0, x1, generator=gen(6), cond1={"y": y1})
    assert torch.equal(a.i, b.i) and torch.equal(a.j, b.j) and torch.equal(a.x0, b.x0)
    assert not torch.equal(a.j, c.j)


# --------------------------------------------------------------------------- info
def test_info_merge_rules_and_convergence():
    infos = [
        {"cost": 1.0, "converged": 1.0, "marginal_error": 1e-6, "iterations": 10, "tol": 1e-5},
        {"cost": 4.0, "converged": 0.0, "marginal_error": 3e-3, "iterations": 7, "tol": 1e-5},
    ]
    out = merge_info(infos, [0.75, 0.25])
    assert out == {"cost": pytest.approx(1.75, rel=1e-12), "converged": 0.0,
                   "marginal_error": 3e-3, "iterations": 17.0, "tol": 1e-5}
    x0, x1, y1 = batch(30, 2, seed=11)
    cpl = ByClass(EntropicOT(reg=1.0))
    assert cpl.reports_convergence
    p = cpl(x0, x1, generator=gen(1), cond1={"y": y1})
    conv = p.convergence
    assert conv is not None and conv.converged and 0 <= conv.marginal_error <= conv.tol
    assert math.isfinite(p.info["seconds"])


# --------------------------------------------------------------------------- spec grammar
def test_within_option_of_the_coupling_spec():
    cpl = coupling("approx:tol=0.001,within=y")
    assert isinstance(cpl, ByClass) and isinstance(cpl.inner, ApproxOT)
    assert cpl.inner.tol == 0.001 and cpl.key == "y"
    assert isinstance(coupling("exact", within="label").inner, ExactOT)
    assert isinstance(coupling("exact"), ExactOT)
    fm = matcher("otcfm", coupling="exact:within=y")
    assert isinstance(fm.coupling, ByClass) and isinstance(fm.coupling.inner, ExactOT)
    sb = matcher("sbcfm", sigma=0.5, coupling="entropic:within=y")
    assert isinstance(sb.coupling.inner, EntropicOT)
    assert sb.coupling.inner.reg == pytest.approx(2 * 0.5**2, rel=1e-12)  # SB reg kept
    x0, x1, y1 = batch(32, 3, seed=12)
    s = fm.sample(x0, x1, generator=gen(2), y=y1)
    # every path sample joins a source to a target of the label it is trained with
    y0 = assigned_labels(y1, 2)
    pair = fm.coupling(x0, x1, generator=gen(2), cond1={"y": y1})
    assert torch.equal(s.x1, pair.x1) and torch.equal(s.cond["y"], y1[pair.j])
    assert torch.equal(y0[pair.i], s.cond["y"])


# --------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    x0, x1, y1 = batch(20, 2, seed=13)
    cpl = ByClass(ExactOT())
    with pytest.raises(ValueError, match=r"cond1\['y'\]"):
        cpl(x0, x1)
    with pytest.raises(ValueError, match="integer tensor"):
        cpl(x0, x1, cond1={"y": y1.float()})
    with pytest.raises(ValueError, match="as many source as target samples in every class"):
        cpl(x0, x1, cond0={"y": torch.zeros(20, dtype=torch.long)}, cond1={"y": y1})
    with pytest.raises(ValueError, match="batches of one size"):
        cpl(x0[:15], x1, cond1={"y": y1})
    with pytest.raises(ValueError, match="one row per sample"):
        cpl(x0, x1, cond1={"y": y1[:5]})
    with pytest.raises(TypeError, match="call it with"):
        cpl.pair(x0, x1)
    with pytest.raises(ValueError, match="within"):
        coupling("exact:within=3")
    with pytest.raises(ValueError, match="ByClass of a ByClass"):
        ByClass(cpl)
    with pytest.raises(TypeError, match="inner must be a Coupling"):
        ByClass("exact")
