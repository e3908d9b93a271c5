"""Predictions along a flow: exact answers for analytic velocity fields, arbitrary times,
trajectories of cells, the leave-one-out score and the linear-interpolation baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from otcfm.data.timeseries import TimeSeries
from otcfm.metrics import wasserstein
from otcfm.trajectory import (
    SDE,
    evaluate_intervals,
    evaluate_left_out,
    interpolation_baseline,
    predict_at,
    push,
    trajectories,
)

C = torch.tensor([1.0, -2.0, 0.5])


class Constant(nn.Module):
    def forward(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        return C.expand_as(x).clone()


class Rotation(nn.Module):
    """dx/dt = J x in the first two coordinates: x(t) = R(t) x(0)."""

    def forward(self, x, t):
        return torch.stack([-x[:, 1], x[:, 0], torch.zeros_like(x[:, 2])], dim=1)


def series(times=(0.0, 1.0, 2.0, 3.0), n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TimeSeries.from_populations([torch.randn(n, 3, generator=g) + k * C
                                        for k in range(len(times))], times)


def test_push_constant_field_exact_forwards_and_backwards():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    tol = {"rtol": 0, "atol": 1e-5}
    torch.testing.assert_close(push(Constant(), x, 1.0, 2.5, steps_per_unit=4), x + 1.5 * C,
                               **tol)
    torch.testing.assert_close(push(Constant(), x, 2.0, 0.0, steps_per_unit=4), x - 2 * C, **tol)
    torch.testing.assert_close(push(Constant(), x, 1.0, 1.0), x, rtol=0, atol=0)


def test_push_rotation_converges_to_exact_solution():
    x = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, -1.0]], dtype=torch.float64)
    angle = 0.5 * math.pi
    exact = torch.stack([x[:, 0] * math.cos(angle) - x[:, 1] * math.sin(angle),
                         x[:, 0] * math.sin(angle) + x[:, 1] * math.cos(angle), x[:, 2]], 1)
    err100 = (push(Rotation(), x, 0.0, angle, steps_per_unit=100) - exact).abs().max()
    err400 = (push(Rotation(), x, 0.0, angle, steps_per_unit=400) - exact).abs().max()
    assert float(err400) < 0.01
    assert float(err100 / err400) == pytest.approx(4.0, rel=0.1)  # Euler: first order


def test_predict_at_observation_times_between_and_beyond():
    ts = series(times=(0.0, 2.0, 3.0))
    m = Constant()
    tol = {"rtol": 0, "atol": 1e-4}  # float32 sums of 50-200 Euler increments
    # t = 1 day is index time 0.5: the cells of time 0 moved half a unit
    torch.testing.assert_close(predict_at(m, ts, 1.0), ts.at(0) + 0.5 * C, **tol)
    torch.testing.assert_close(predict_at(m, ts, 2.5), ts.at(1) + 0.5 * C, **tol)
    torch.testing.assert_close(predict_at(m, ts, 3.0), ts.at(2), rtol=0, atol=0)
    torch.testing.assert_close(predict_at(m, ts, 4.0), ts.at(2) + C, **tol)  # extrapolation
    torch.testing.assert_close(predict_at(m, ts, 3.0, start=0), ts.at(0) + 2 * C, **tol)
    with pytest.raises(ValueError, match="start must be a time index"):
        predict_at(m, ts, 1.0, start=3)


def test_trajectories_of_cells():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    traj = trajectories(Constant(), x, 1.0, [1.5, 2.0, 3.0], steps_per_unit=10)
    assert traj.xs.shape == (4, 5, 3)
    torch.testing.assert_close(traj.ts, torch.tensor([1.0, 1.5, 2.0, 3.0]))
    for m, tau in enumerate(traj.ts.tolist()):
        torch.testing.assert_close(traj.xs[m], x + (tau - 1.0) * C, rtol=0, atol=1e-5)


def test_left_out_score_and_every_interval():
    ts = series()
    s = evaluate_left_out(Constant(), ts, 2, steps_per_unit=5)
    assert s.w1 == pytest.approx(wasserstein(ts.at(1) + C, ts.at(2), p=1), rel=1e-6)
    assert s.n_pred == s.n_true == 30 and s.mmd >= 0
    scores = evaluate_intervals(Constant(), ts, steps_per_unit=5)
    assert sorted(scores) == [1, 2, 3]


def test_interpolation_baseline_recovers_a_translation():
    """Cells moved by 2C between k-1 and k+1 (shuffled): exact OT pairs each cell with its own
    copy, and the midpoints are the cells moved by C."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 3, generator=g)
    later = (base + 2 * C)[torch.randperm(40, generator=g)]
    ts = TimeSeries.from_populations([base, torch.randn(40, 3, generator=g), later])
    mid = interpolation_baseline(ts, 1)
    assert mid.shape == (40, 3)
    assert wasserstein(mid, base + C, p=1) == pytest.approx(0.0, abs=1e-5)
    unequal = TimeSeries.from_populations([base, base, later[:25]])
    assert interpolation_baseline(unequal, 1, generator=g).shape == (40, 3)
    with pytest.raises(ValueError, match="intermediate index"):
        interpolation_baseline(ts, 2)


class DriftAndScore(nn.Module):
    """A drift-and-score model of known SDE: drift ``v``, score -x / var (N(0, var I))."""

    def __init__(self, v, var=None):
        super().__init__()
        self.v, self.var = v, var

    def forward(self, x, t, head="drift"):
        drift = self.v.expand_as(x).clone()
        if head == "both":
            return drift, self.score(x, t)
        return drift

    def score(self, x, t):
        return torch.zeros_like(x) if self.var is None else -x / self.var


@pytest.mark.parametrize(("diffusion", "units"), [("constant", 2.5), ("tapered", 5 / 3)])
def test_sde_push_has_the_closed_form_moments_both_ways(diffusion, units):
    """dx = C dtau + g dW from tau 1 to 3.5 (score 0): mean shift 2.5 C and variance
    sigma^2 int g^2 / sigma^2 per coordinate (constant: 2.5; tapered: 2/3 per whole unit and
    1/3 for the half, 5/3), within 5 standard errors; backwards likewise (the reversal with a
    zero score is the same SDE run back)."""
    sigma, n = 0.7, 20_000
    x = torch.zeros(n, 3)
    g = torch.Generator().manual_seed(0)
    for tau0, tau1 in ((1.0, 3.5), (3.5, 1.0)):
        out = push(DriftAndScore(C), x, tau0, tau1, steps_per_unit=8,
                   sde=SDE(sigma, g, diffusion))
        span = tau1 - tau0
        var = sigma**2 * units
        se_mean = math.sqrt(var / n)
        assert (out.mean(0) - span * C).abs().max() < 5 * se_mean
        se_var = var * math.sqrt(2 / n)
        assert (out.var(0) - var).abs().max() < 5 * se_var


@pytest.mark.parametrize("diffusion", ["constant", "tapered"])
def test_sde_with_the_stationary_score_keeps_its_law(diffusion):
    """v = 0, s = -x (N(0, I)): dx = -(sigma^2 / 2) x dtau + sigma dW is the OU process with
    stationary law N(0, I); started there it stays (variance within 5 SE after 3 units; the
    Euler-Maruyama bias at 50 steps per unit, sigma 1, is ~sigma^2 dt / 4 = 0.005)."""
    n = 20_000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    out = push(DriftAndScore(torch.zeros(2), var=1.0), x, 0.0, 3.0, steps_per_unit=50,
               sde=SDE(1.0, g, diffusion))
    assert (out.var(0) - 1.0).abs().max() < 5 * math.sqrt(2 / n) + 0.005
    assert (out.mean(0)).abs().max() < 5 / math.sqrt(n)


def test_sde_paths_and_their_checks():
    model = DriftAndScore(C)
    x = torch.zeros(50, 3)
    a = trajectories(model, x, 0.0, [0.5, 2.0], steps_per_unit=10,
                     sde=SDE(0.5, torch.Generator().manual_seed(3)))
    b = trajectories(model, x, 0.0, [0.5, 2.0], steps_per_unit=10,
                     sde=SDE(0.5, torch.Generator().manual_seed(3)))
    assert a.xs.shape == (3, 50, 3) and a.ts.tolist() == [0.0, 0.5, 2.0]
    torch.testing.assert_close(a.xs, b.xs, rtol=0, atol=0)  # the generator is the only noise
    assert float(a.xs[2].std(0).min()) > 0.3  # stochastic: cells spread
    with pytest.raises(ValueError, match="monotonically"):
        trajectories(model, x, 0.0, [2.0, 0.5], sde=SDE(0.5))
    with pytest.raises(ValueError, match="only a drift"):
        push(Constant(), x, 0.0, 1.0, sde=SDE(0.5))
    with pytest.raises(ValueError, match="positive"):
        SDE(0.0)
    with pytest.raises(ValueError, match="unknown diffusion 'linear'; valid schedules"):
        SDE(0.5, diffusion="linear")
