"""The synthetic branching time course: seeded, snapshots independent, truth consistent with
the SDE's closed-form moments, branching, and an embedding of the right rank."""

from __future__ import annotations

import math

import pytest
import torch

from otcfm.data.synthetic_cells import SyntheticCells
from otcfm.metrics import wasserstein


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_data_other_seed_other_data():
    s = SyntheticCells(obs_dim=8)
    a = s.snapshots(50, gen(1))
    b = s.snapshots(50, gen(1))
    c = s.snapshots(50, gen(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.allclose(a.x, c.x)
    assert a.times == (0.0, 1.0, 2.0, 3.0, 4.0) and a.counts == (50,) * 5 and a.dim == 8
    # the embedding is part of the process, fixed by embedding_seed
    assert not torch.allclose(SyntheticCells(obs_dim=8, embedding_seed=1).snapshots(50, gen(1)).x,
                              a.x)


def test_snapshots_are_distinct_cohorts():
    """Row i of two snapshots is not the same cell followed in time: tracked cells would have
    strongly correlated progression (corr ~ 0.7 between t = 1 and t = 2)."""
    s = SyntheticCells(obs_dim=6, noise=0.0)
    ts = s.snapshots(2000, gen(3))
    a, _, _ = s._maps
    direction = a[:, 0] / a[:, 0].norm()
    p1 = ts.at(1).double() @ direction
    p2 = ts.at(2).double() @ direction
    corr = torch.corrcoef(torch.stack([p1, p2]))[0, 1]
    assert abs(float(corr)) < 0.1  # independent: |corr| ~ N(0, 1/sqrt(2000)) = 0.022
    z1 = s.latent(1.0, 2000, gen(4))[:, 0]
    # the same cells followed one more unit: corr(z1(1), z1(2)) = sd(1) / sd(2)
    z_next = z1 + s.speed + s.diffusion * torch.randn(2000, generator=gen(5), dtype=torch.float64)
    tracked = torch.corrcoef(torch.stack([z1, z_next]))[0, 1]
    assert float(tracked) > 0.5


def test_progression_and_ou_coordinates_match_closed_form():
    """z1 is Brownian motion with drift: mean speed t, var s0^2 + g^2 t; z3 is an OU process:
    var s0^2 e^{-2 a t} + g^2 (1 - e^{-2 a t}) / (2 a)."""
    s = SyntheticCells(obs_dim=5, dt=0.02)  # Euler-Maruyama is exact for z1, O(dt) for z3
    t, n = 2.5, 4000
    z = s.latent(t, n, gen(6))
    mean_sd = math.sqrt(s.init_std**2 + s.diffusion**2 * t)
    assert abs(float(z[:, 0].mean()) - s.speed * t) < 4 * mean_sd / math.sqrt(n)
    assert float(z[:, 0].std()) == pytest.approx(mean_sd, rel=0.05)
    e = math.exp(-2 * s.ou_rate * t)
    ou_var = s.init_std**2 * e + s.diffusion**2 * (1 - e) / (2 * s.ou_rate)
    assert float(z[:, 2].var()) == pytest.approx(ou_var, rel=0.08)


def test_fate_coordinate_branches_symmetrically():
    s = SyntheticCells(obs_dim=5)
    early = s.latent(0.5, 2000, gen(7))[:, 1]
    late = s.latent(4.0, 2000, gen(8))[:, 1]
    assert float((early.abs() < 0.5).double().mean()) > 0.95  # one valley before the branch
    assert float((late.abs() > 0.5).double().mean()) > 0.8  # two valleys after
    well = math.sqrt(s.depth * math.tanh((4.0 * s.speed - s.branch_at) / s.width))
    assert float(late.abs().median()) == pytest.approx(well, rel=0.15)
    assert abs(float((late > 0).double().mean()) - 0.5) < 0.05


def test_truth_at_any_time_matches_snapshots_in_distribution():
    s = SyntheticCells(obs_dim=6)
    snap = s.snapshots(600, gen(9), times=[1.5, 3.0])
    truth_mid = s.truth(1.5, 600, gen(10))
    truth_late = s.truth(3.0, 600, gen(11))
    same = wasserstein(snap.at(0), truth_mid, p=1)
    other = wasserstein(snap.at(0), truth_late, p=1)
    assert same < 0.5 * other


def test_linear_noiseless_embedding_has_latent_rank():
    s = SyntheticCells(obs_dim=12, latent_dim=3, noise=0.0, nonlinearity=0.0)
    x = s.truth(0.5, 500, gen(12)).double()
    sv = torch.linalg.svdvals(x - x.mean(0))
    assert float(sv[3] / sv[0]) < 1e-5
    noisy = SyntheticCells(obs_dim=12, noise=0.2, nonlinearity=0.0).truth(0.0, 4000, gen(13))
    a, _, _ = s._maps
    q, _ = torch.linalg.qr(a)
    resid = noisy.double() - noisy.double() @ q @ q.T  # the noise outside the latent span
    assert float(resid.pow(2).sum(1).mean() / (12 - 3)) == pytest.approx(0.04, rel=0.05)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"latent_dim": 4}, "latent_dim must be 2 or 3"),
        ({"obs_dim": 2}, "obs_dim must be an int >= latent_dim"),
        ({"times": (1.0, 0.5)}, "strictly increasing"),
        ({"times": (-1.0, 0.5)}, ">= 0"),
        ({"noise": -0.1}, "noise must be finite"),
    ],
)
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        SyntheticCells(**kw)


def test_two_latent_dims_and_counts_per_time():
    s = SyntheticCells(obs_dim=5, latent_dim=2)
    ts = s.snapshots([10, 20, 30, 40, 50], gen(14))
    assert ts.counts == (10, 20, 30, 40, 50)
    with pytest.raises(ValueError, match="one count per time"):
        s.snapshots([10, 20], gen(14))
