"""SDE sampling: weak order on an Ornstein-Uhlenbeck process, the bridge SDE and its time
reversal against a Gaussian family with known marginals, seeding, NFE and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from otcfm.models import DriftScore
from otcfm.sampling import DIFFUSIONS, SDE_SOLVERS, integrate, integrate_sde


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------- OU weak order
THETA, SIG, X_START = 1.0, 1.0, 1.0
N_PATHS = 1_000_000


def ou_exact(t: float) -> tuple[float, float]:
    """Mean and variance of dx = -theta x dt + sigma dW from x(0) = X_START (closed form)."""
    mean = X_START * math.exp(-THETA * t)
    var = SIG**2 / (2 * THETA) * (1 - math.exp(-2 * THETA * t))
    return mean, var


def ou_errors(method: str, steps: int, seed: int) -> tuple[float, float]:
    x0 = torch.full((N_PATHS, 1), X_START, dtype=torch.float64)
    traj = integrate_sde(
        lambda x, t: -THETA * x, x0, sigma=SIG, steps=steps, method=method, save="ends",
        generator=gen(seed),
    )
    x = traj.x_final.double()
    mean, var = ou_exact(1.0)
    return abs(float(x.mean()) - mean), abs(float(x.var()) - var)


def slope(steps: list[int], errs: list[float]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


def test_euler_maruyama_weak_order_one_on_ou():
    steps = [4, 8, 16, 32]
    errs = [ou_errors("euler_maruyama", n, seed=n) for n in steps]
    mean_errs, var_errs = [e[0] for e in errs], [e[1] for e in errs]
    # Monte Carlo noise: std of the mean ~ 7e-4, of the variance ~ 6e-4 (1e6 paths), against
    # errors from ~5e-2 (4 steps) to ~6e-3 (32 steps): the fitted slopes are good to ~0.1
    # (pre-asymptotic slope of the exact Euler-Maruyama moments: ~1.05)
    assert 0.85 <= slope(steps, mean_errs) <= 1.2, mean_errs
    assert 0.85 <= slope(steps, var_errs) <= 1.2, var_errs
    assert all(b < a for a, b in zip(mean_errs, mean_errs[1:], strict=False)), mean_errs
    assert all(b < a for a, b in zip(var_errs, var_errs[1:], strict=False)), var_errs
    assert mean_errs[-1] < 0.012 and var_errs[-1] < 0.015


def test_sde_heun_is_more_accurate_than_euler_maruyama_on_ou():
    em = ou_errors("euler_maruyama", 8, seed=1)
    heun = ou_errors("heun", 8, seed=1)
    # Heun's mean error is second order: (1 - h th + (h th)^2 / 2)^8 vs e^-1, 8 steps
    assert heun[0] < 0.25 * em[0], (heun, em)
    assert heun[1] < 0.5 * em[1], (heun, em)


def test_ou_stationary_variance_reversed_in_time():
    # started in the stationary law, the OU process keeps it; the reverse-time SDE of a
    # stationary process with v = 0 and score -x / var is the same OU process
    var = SIG**2 / (2 * THETA)
    n = 100_000
    x1 = math.sqrt(var) * torch.randn(n, 1, generator=gen(3), dtype=torch.float64)
    traj = integrate_sde(
        lambda x, t: torch.zeros_like(x), x1, sigma=SIG, score=lambda x, t: -x / var,
        steps=100, reverse=True, generator=gen(4), save="ends",
    )
    assert traj.ts[0] == 1.0 and traj.ts[-1] == 0.0
    # Euler-Maruyama's stationary variance is 1 / (2 theta - theta^2 h): 1% high at h = 0.01
    assert abs(float(traj.x_final.var()) - var) < 0.015 * var + 4 * var * math.sqrt(2 / n)


# --------------------------------------------------------------------- bridge SDE, Gaussian
A, SIGMA_B, DIM = 1.0, 1.0, 2
ROOT = math.sqrt(4 + SIGMA_B**4)


def gauss_moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian family p_t = N(m_t 1, v_t I) from N(-A 1, I) to N(A 1, I) and its time
    derivatives: the Schrodinger bridge marginals of docs/reference.md §5."""
    m = (2 * t - 1) * A
    v = ROOT * t * (1 - t) + (1 - t) ** 2 + t**2
    return m, v


def pf_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The probability-flow velocity of p_t (moves mean and spread): m' + v'/(2v) (x - m)."""
    m, v = gauss_moments(t)
    dm = 2 * A
    dv = ROOT * (1 - 2 * t) - 2 * (1 - t) + 2 * t
    return dm + (dv / (2 * v))[:, None] * (x - m[:, None])


def gauss_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    m, v = gauss_moments(t)
    return -(x - m[:, None]) / v[:, None]


def check_marginals(traj, times, n: int) -> None:
    for tq in times:
        k = int(torch.argmin((traj.ts - tq).abs()))
        x = traj.xs[k].double()
        m, v = gauss_moments(torch.tensor(float(traj.ts[k]), dtype=torch.float64))
        mean_err = float((x.mean(0) - m).abs().max())
        var_err = float((x.var(0) - v).abs().max())
        # Monte Carlo (~4 std) + Euler bias O(dt) with dt = 1/100
        assert mean_err < 4 * math.sqrt(float(v) / n) + 0.02, (tq, mean_err)
        assert var_err < 4 * float(v) * math.sqrt(2 / n) + 0.03, (tq, var_err)


@pytest.mark.parametrize("diffusion", list(DIFFUSIONS))
def test_forward_bridge_sde_keeps_the_gaussian_marginals(diffusion):
    n = 20_000
    x0 = -A + torch.randn(n, DIM, generator=gen(5), dtype=torch.float64)
    traj = integrate_sde(
        pf_velocity, x0, sigma=SIGMA_B, score=gauss_score, steps=100, generator=gen(6),
        diffusion=diffusion,
    )
    assert traj.nfe == 100 and traj.energy is None and traj.xs.shape == (101, n, DIM)
    check_marginals(traj, [0.25, 0.5, 0.75, 1.0], n)


@pytest.mark.parametrize("diffusion", list(DIFFUSIONS))
def test_reverse_bridge_sde_goes_back_to_the_source(diffusion):
    n = 20_000
    x1 = A + torch.randn(n, DIM, generator=gen(7), dtype=torch.float64)
    traj = integrate_sde(
        pf_velocity, x1, sigma=SIGMA_B, score=gauss_score, steps=100, reverse=True,
        generator=gen(8), diffusion=diffusion,
    )
    assert float(traj.ts[0]) == 1.0 and float(traj.ts[-1]) == 0.0
    check_marginals(traj, [0.75, 0.5, 0.0], n)


def test_wrong_sign_would_be_caught():
    # the same check rejects the reverse drift used forwards: the variance grows by ~2 sigma^2
    n = 20_000
    x0 = -A + torch.randn(n, DIM, generator=gen(9), dtype=torch.float64)
    wrong = integrate_sde(
        lambda x, t: pf_velocity(x, t) - SIGMA_B**2 * gauss_score(x, t), x0, sigma=SIGMA_B,
        score=gauss_score, steps=100, generator=gen(10), save="ends",
    )
    assert float(wrong.x_final.var(0).min()) > 1.5


def test_tapered_score_term_is_needed():
    # without its score term the tapered SDE adds (2/3) sigma^2 of variance: the check sees it
    n = 20_000
    x0 = -A + torch.randn(n, DIM, generator=gen(9), dtype=torch.float64)
    plain = integrate_sde(pf_velocity, x0, sigma=SIGMA_B, steps=100, generator=gen(10),
                          diffusion="tapered", save="ends")
    assert float(plain.x_final.var(0).min()) > 1.4


@pytest.mark.parametrize(("t0", "t1", "steps"), [(0.0, 1.0, 7), (0.5, 1.5, 3), (1.0, 3.0, 5)])
def test_tapered_noise_variance_is_exact_per_step(t0, t1, steps):
    # pure noise (v = 0, no score): Var x(t1) = sigma^2 int_t0^t1 4 u (1 - u) dt, u = t mod 1,
    # in closed form whatever the step count: 2/3 per whole unit interval, 1/3 per half
    n, sigma = 400_000, 0.8
    exact = sigma**2 * {(0.0, 1.0): 2 / 3, (0.5, 1.5): 2 / 3, (1.0, 3.0): 4 / 3}[(t0, t1)]
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    traj = integrate_sde(lambda x, t: torch.zeros_like(x), x0, sigma=sigma, steps=steps,
                         t0=t0, t1=t1, generator=gen(12), diffusion="tapered", save="ends")
    var = float(traj.x_final.var())
    assert abs(var - exact) < 4 * exact * math.sqrt(2 / n), (var, exact)


def test_diffusion_schedules_rate_and_integral_agree():
    # integral' = rate (midpoint quadrature on a fine grid), integral(0) = 0, rate in [0, 1],
    # the tapered rate vanishes at every whole time and is 1 half-way
    grid = np.linspace(0.0, 3.0, 30_001)
    for name, sched in DIFFUSIONS.items():
        rates = np.array([sched.rate(float(t)) for t in (grid[:-1] + grid[1:]) / 2])
        quad = np.concatenate([[0.0], np.cumsum(rates * np.diff(grid))])
        integ = np.array([sched.integral(float(t)) for t in grid])
        assert sched.integral(0.0) == 0.0
        # midpoint rule error h^2 T max|rate''| / 24 = 1e-8 (h = 1e-4, T = 3, |rate''| = 8)
        np.testing.assert_allclose(integ, quad, rtol=0, atol=3e-8, err_msg=name)
        assert rates.min() >= 0.0 and rates.max() <= 1.0
    tapered = DIFFUSIONS["tapered"]
    assert [tapered.rate(t) for t in (0.0, 1.0, 2.0, 0.5, 1.5)] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_probability_flow_ode_has_the_same_marginals():
    n = 20_000
    x0 = -A + torch.randn(n, DIM, generator=gen(11), dtype=torch.float64)
    traj = integrate(pf_velocity, x0, method="rk4", steps=50)
    check_marginals(traj, [0.5, 1.0], n)


# --------------------------------------------------------------------- API behaviour
class Affine(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x, t):
        return self.scale * x + t[:, None]


def test_drift_score_model_uses_its_score_by_default():
    model = DriftScore(Affine(-1.0), Affine(0.5))
    x0 = torch.randn(64, 2, generator=gen(0))
    auto = integrate_sde(model, x0, sigma=0.7, steps=10, generator=gen(1))
    explicit = integrate_sde(
        model.drift, x0, sigma=0.7, score=model.score, steps=10, generator=gen(1)
    )
    no_score = integrate_sde(model.drift, x0, sigma=0.7, steps=10, generator=gen(1))
    torch.testing.assert_close(auto.xs, explicit.xs, rtol=0, atol=0)
    assert not torch.allclose(auto.x_final, no_score.x_final)


@pytest.mark.parametrize("method", list(SDE_SOLVERS))
def test_seeded_repeatable_and_nfe(method):
    x0 = torch.randn(32, 3, generator=gen(0))
    runs = [
        integrate_sde(lambda x, t: -x, x0, sigma=1.0, steps=7, method=method, generator=gen(s))
        for s in (5, 5, 6)
    ]
    torch.testing.assert_close(runs[0].xs, runs[1].xs, rtol=0, atol=0)
    assert not torch.allclose(runs[0].x_final, runs[2].x_final)
    per_step = {"euler_maruyama": 1, "heun": 2}[method]
    assert runs[0].nfe == 7 * per_step
    assert runs[0].xs.shape == (8, 32, 3)
    torch.testing.assert_close(runs[0].ts, torch.linspace(0, 1, 8), rtol=0, atol=1e-7)


def test_zero_sigma_is_the_euler_ode():
    x0 = torch.randn(16, 2, generator=gen(0))
    field = lambda x, t: torch.sin(x) * t[:, None]  # noqa: E731
    sde = integrate_sde(field, x0, sigma=0.0, steps=12, generator=gen(1))
    ode = integrate(field, x0, method="euler", steps=12)
    torch.testing.assert_close(sde.xs, ode.xs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 1), (6, 3, 4, 4)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_shapes_and_dtypes(shape, dtype):
    seen = {}

    def field(x, t):
        seen["x"], seen["t"] = x.dtype, t
        return -x

    x0 = torch.randn(shape, generator=gen(0)).to(dtype)
    traj = integrate_sde(field, x0, sigma=0.5, steps=3, generator=gen(1), save="ends")
    assert traj.xs.shape == (2, *shape) and traj.xs.dtype == dtype
    assert seen["x"] == dtype and seen["t"].dtype == torch.float32
    assert seen["t"].shape == (shape[0],)
    assert bool(torch.isfinite(traj.xs.float()).all())


def test_conditions_reach_both_networks():
    got = []

    def drift(x, t, y):
        got.append(("drift", y))
        return torch.zeros_like(x)

    def score(x, t, y):
        got.append(("score", y))
        return torch.zeros_like(x)

    y = torch.arange(4)
    integrate_sde(drift, torch.zeros(4, 2), sigma=1.0, score=score, steps=2, cond={"y": y})
    assert [k for k, _ in got] == ["drift", "score"] * 2
    assert all(torch.equal(v, y) for _, v in got)


def test_errors():
    x0 = torch.zeros(4, 2)
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown SDE method 'rk4'; valid methods"):
        integrate_sde(f, x0, sigma=1.0, method="rk4")
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        integrate_sde(f, x0, sigma=-1.0)
    with pytest.raises(ValueError, match="t0 < t1"):
        integrate_sde(f, x0, sigma=1.0, t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="t0 > t1"):
        integrate_sde(f, x0, sigma=1.0, reverse=True, t0=0.0, t1=1.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        integrate_sde(f, x0, sigma=1.0, steps=0)
    with pytest.raises(ValueError, match="save must be one of"):
        integrate_sde(f, x0, sigma=1.0, save="some")
    with pytest.raises(ValueError, match="unknown diffusion 'linear'; valid schedules: constant"):
        integrate_sde(f, x0, sigma=1.0, diffusion="linear")
    with pytest.raises(ValueError, match="NaN or inf"):
        integrate_sde(f, torch.full((2, 2), float("nan")), sigma=1.0)
    with pytest.raises(ValueError, match="velocity of the state's shape"):
        integrate_sde(lambda x, t: x[:, :1], x0, sigma=1.0, steps=1)
