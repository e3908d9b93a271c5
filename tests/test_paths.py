"""Tests for otcfm.paths: u_t is d/dt x_t, endpoints, marginals, validation, dtypes."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from torch.func import jvp

from otcfm.paths import (
    PATHS,
    BrownianBridgePath,
    GaussianTargetPath,
    LinearPath,
    PathSample,
    ProbabilityPath,
    TrigPath,
)

PATH_CASES = [
    LinearPath(0.0),
    LinearPath(0.3),
    BrownianBridgePath(1.0),
    BrownianBridgePath(0.2),
    GaussianTargetPath(0.0),
    GaussianTargetPath(0.1),
    TrigPath(0.0),
    TrigPath(0.5),
]
SHAPES = [(7, 1), (6, 2), (5, 3, 4, 4)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(shape, seed=0, dtype=torch.float64):
    g = _gen(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = 2.0 + 1.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    return x0.to(dtype), x1.to(dtype), noise.to(dtype)


def _uses_noise(path: ProbabilityPath) -> bool:
    return not isinstance(path, GaussianTargetPath)


def _draw(path, x0, x1, t, noise):
    return path.sample(x0, x1, t, noise=noise if _uses_noise(path) else None)


# --------------------------------------------------------------------- u_t = d/dt x_t
# torch.func.jvp's first call registers decompositions through the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("path", PATH_CASES, ids=repr)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ut_is_time_derivative_of_xt(path, shape):
    x0, x1, noise = _batch(shape, seed=1)
    t = torch.linspace(0.05, 0.95, shape[0], dtype=torch.float64)

    def xt_of(tt):
        return _draw(path, x0, x1, tt, noise).xt

    xt, dxt = jvp(xt_of, (t,), (torch.ones_like(t),))
    s = _draw(path, x0, x1, t, noise)
    assert s.ut.dtype == torch.float64
    torch.testing.assert_close(s.xt, xt, rtol=0, atol=0)
    torch.testing.assert_close(s.ut, dxt, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATH_CASES, ids=repr)
def test_ut_matches_field_at_xt(path):
    """The noise form of u_t agrees with (sigma'/sigma)(x - mu) + mu' evaluated at xt."""
    x0, x1, noise = _batch((9, 3), seed=2)
    t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    s = _draw(path, x0, x1, t, noise)
    torch.testing.assert_close(path.u_t(s.xt, x0, x1, t), s.ut, rtol=1e-10, atol=1e-10)


def test_gaussian_target_field_matches_lipman_formula():
    path = GaussianTargetPath(sigma_min=0.05)
    x0, x1, _ = _batch((10, 2), seed=3)
    t = torch.linspace(0.0, 0.9, 10, dtype=torch.float64)
    s = path.sample(x0, x1, t)
    expected = (x1 - 0.95 * s.xt) / (1 - 0.95 * t)[:, None]
    torch.testing.assert_close(s.ut, expected, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------- endpoints
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_endpoints(shape):
    x0, x1, noise = _batch(shape, seed=4)
    ones = torch.ones(shape[0], dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    exact = {"rtol": 0.0, "atol": 0.0}

    lin = LinearPath(0.0)
    torch.testing.assert_close(lin.sample(x0, x1, zeros, noise).xt, x0, **exact)
    torch.testing.assert_close(lin.sample(x0, x1, ones, noise).xt, x1, **exact)
    lin = LinearPath(0.3)
    torch.testing.assert_close(lin.sample(x0, x1, zeros, noise).xt, x0 + 0.3 * noise, **exact)
    torch.testing.assert_close(lin.sample(x0, x1, ones, noise).xt, x1 + 0.3 * noise, **exact)

    bridge = BrownianBridgePath(1.0)
    torch.testing.assert_close(bridge.sample(x0, x1, zeros, noise).xt, x0, **exact)
    torch.testing.assert_close(bridge.sample(x0, x1, ones, noise).xt, x1, **exact)

    fm = GaussianTargetPath(sigma_min=0.1)
    torch.testing.assert_close(fm.sample(x0, x1, zeros).xt, x0, **exact)
    torch.testing.assert_close(fm.sample(x0, x1, ones).xt, x1 + 0.1 * x0, rtol=0, atol=1e-14)

    trig = TrigPath(0.0)
    torch.testing.assert_close(trig.sample(x0, x1, zeros, noise).xt, x0, **exact)
    torch.testing.assert_close(trig.sample(x0, x1, ones, noise).xt, x1, rtol=0, atol=1e-14)


# --------------------------------------------------------------------- Brownian bridge clip
@pytest.mark.parametrize("t_value", [0.0, 1e-9, 1e-6, 5e-5, 0.5, 1 - 1e-6, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bridge_target_is_finite_and_bounded_near_endpoints(t_value, dtype):
    sigma, t_clip = 1.0, 1e-4
    path = BrownianBridgePath(sigma, t_clip=t_clip)
    x0, x1, noise = _batch((32, 3), seed=5, dtype=dtype)
    s = path.sample(x0, x1, t_value, noise)
    assert torch.isfinite(s.ut).all() and torch.isfinite(s.xt).all()
    amp = sigma * (1 - 2 * t_clip) / (2 * math.sqrt(t_clip * (1 - t_clip)))  # about 50 sigma
    excess = (s.ut - (x1 - x0)).abs()
    assert bool((excess <= amp * noise.abs() * (1 + 1e-5) + 1e-5).all())
    if t_value in (0.0, 1.0):  # no noise at the pinned ends
        torch.testing.assert_close(s.ut, x1 - x0, rtol=0, atol=1e-6)


def test_bridge_unclipped_in_interior():
    """Between the clips the target is the exact bridge field (checked at x = xt)."""
    path = BrownianBridgePath(0.7, t_clip=1e-4)
    x0, x1, noise = _batch((5, 2), seed=6)
    t = torch.tensor([2e-4, 1e-3, 0.3, 0.999, 1 - 2e-4], dtype=torch.float64)
    s = path.sample(x0, x1, t, noise)
    tt = t[:, None]
    mu = tt * x1 + (1 - tt) * x0
    expected = (1 - 2 * tt) / (2 * tt * (1 - tt)) * (s.xt - mu) + x1 - x0
    torch.testing.assert_close(s.ut, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------- Monte Carlo marginals
def _pair_batch(n: int, d: int = 2):
    x0 = torch.tensor([[-1.0, 0.5][:d]], dtype=torch.float64).expand(n, d)
    x1 = torch.tensor([[2.0, 3.0][:d]], dtype=torch.float64).expand(n, d)
    return x0, x1


@pytest.mark.parametrize("t_value", [0.1, 0.5, 0.8])
def test_bridge_marginal_matches_simulated_brownian_bridge(t_value):
    """Independent oracle: pin sigma W at t = 1, x_t = x0 + t(x1 - x0) + sigma(W_t - t W_1)."""
    n, sigma = 40_000, 0.8
    x0, x1 = _pair_batch(n)
    g = _gen(7)
    w_t = math.sqrt(t_value) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    w_1 = w_t + math.sqrt(1 - t_value) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    bridge = x0 + t_value * (x1 - x0) + sigma * (w_t - t_value * w_1)
    xt = BrownianBridgePath(sigma).sample(x0, x1, t_value, generator=_gen(8)).xt
    se_mean = bridge.std(0).max() / math.sqrt(n)
    torch.testing.assert_close(xt.mean(0), bridge.mean(0), rtol=0, atol=float(8 * se_mean))
    # variance of a sample variance is about 2 var^2 / n
    var = bridge.var(0)
    torch.testing.assert_close(xt.var(0), var, rtol=8 * math.sqrt(2 / n), atol=0)


MARGINAL_CASES = [
    (LinearPath(0.4), lambda t, a, b: t * b + (1 - t) * a, lambda t: 0.4),
    (
        TrigPath(0.3),
        lambda t, a, b: math.cos(math.pi * t / 2) * a + math.sin(math.pi * t / 2) * b,
        lambda t: 0.3,
    ),
    (
        BrownianBridgePath(1.2),
        lambda t, a, b: t * b + (1 - t) * a,
        lambda t: 1.2 * math.sqrt(t * (1 - t)),
    ),
]


@pytest.mark.parametrize(("path", "mean_fn", "std_fn"), MARGINAL_CASES, ids=lambda c: repr(c)[:20])
@pytest.mark.parametrize("t_value", [0.25, 0.6])
def test_marginal_mean_and_variance(path, mean_fn, std_fn, t_value):
    n = 40_000
    x0, x1 = _pair_batch(n)
    xt = path.sample(x0, x1, t_value, generator=_gen(9)).xt
    mean = mean_fn(t_value, x0[0], x1[0])
    sd = std_fn(t_value)
    torch.testing.assert_close(xt.mean(0), mean, rtol=0, atol=6 * sd / math.sqrt(n))
    expected_var = torch.full((2,), sd**2, dtype=torch.float64)
    torch.testing.assert_close(xt.var(0), expected_var, rtol=6 * math.sqrt(2 / n), atol=0)


@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.9])
def test_gaussian_target_marginal(t_value):
    """With x0 ~ N(0, I): x_t | x1 ~ N(t x1, (1 - (1 - sigma_min) t)^2 I)."""
    n, smin = 40_000, 0.1
    x0 = torch.randn(n, 2, generator=_gen(10), dtype=torch.float64)
    x1 = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(n, 2)
    xt = GaussianTargetPath(smin).sample(x0, x1, t_value).xt
    sd = 1 - (1 - smin) * t_value
    torch.testing.assert_close(xt.mean(0), t_value * x1[0], rtol=0, atol=6 * sd / math.sqrt(n))
    expected_var = torch.full((2,), sd**2, dtype=torch.float64)
    torch.testing.assert_close(xt.var(0), expected_var, rtol=6 * math.sqrt(2 / n), atol=0)


# --------------------------------------------------------------------- FM source check
@pytest.mark.parametrize(
    ("loc", "scale", "shape"),
    [(3.0, 1.0, (256, 2)), (0.0, 0.5, (256, 2)), (0.0, 2.0, (64, 3, 4, 4)), (0.5, 1.0, (512, 8))],
)
def test_gaussian_target_warns_for_non_normal_source(loc, scale, shape):
    x0 = loc + scale * torch.randn(shape, generator=_gen(11))
    x1 = torch.randn(shape, generator=_gen(12))
    with pytest.warns(RuntimeWarning, match="standard normal") as record:
        GaussianTargetPath().sample(x0, x1, 0.5)
    assert str(shape[0]) in str(record[0].message)


def test_gaussian_target_warns_for_uniform_source():
    x0 = torch.rand(128, 2, generator=_gen(13))
    with pytest.warns(RuntimeWarning, match="standard normal"):
        GaussianTargetPath().sample(x0, torch.zeros(128, 2), 0.5)


def test_gaussian_target_silent_for_standard_normal_source():
    g = _gen(14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in [(64, 2), (64, 3, 4, 4), (200, 1), (1000, 5)]:
            for _ in range(50):
                x0 = torch.randn(shape, generator=g)
                GaussianTargetPath().sample(x0, torch.zeros(shape), 0.5)
        # small batches and check_source=False are never tested
        GaussianTargetPath().sample(5 + torch.zeros(63, 2), torch.zeros(63, 2), 0.5)
        GaussianTargetPath(check_source=False).sample(
            5 + torch.zeros(256, 2), torch.zeros(256, 2), 0.5
        )


def test_gaussian_target_rejects_noise():
    x0, x1, noise = _batch((4, 2))
    with pytest.raises(ValueError, match="noise"):
        GaussianTargetPath().sample(x0, x1, 0.5, noise=noise)


# --------------------------------------------------------------------- SF2M helpers
def test_bridge_score_matches_autograd_log_density():
    path = BrownianBridgePath(0.9)
    x0, x1, noise = _batch((6, 3), seed=15)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    s = path.sample(x0, x1, t, noise)
    x = s.xt.clone().requires_grad_(True)
    sd = (0.9 * torch.sqrt(t * (1 - t)))[:, None].expand_as(x)
    logp = torch.distributions.Normal(t[:, None] * x1 + (1 - t[:, None]) * x0, sd).log_prob(x)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    torch.testing.assert_close(path.score(s.xt, x0, x1, t), grad, rtol=1e-10, atol=1e-10)
    # lambda^2 ||s - score||^2 = ||lambda s + (2 / sigma^2) eps||^2: zero at s = score itself
    lam = path.lambda_t(t)[:, None]
    torch.testing.assert_close(lam * grad, -(2 / 0.9**2) * noise, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lam, 2 * sd[:, :1] / 0.9**2, rtol=1e-12, atol=0.0)
    with pytest.raises(ValueError, match="sigma"):
        BrownianBridgePath(0.0).lambda_t(t)


# --------------------------------------------------------------------- dtypes and t handling
@pytest.mark.parametrize("path", PATH_CASES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_computed_in_float32(path, dtype):
    x0, x1, noise = _batch((8, 3, 2), seed=16, dtype=torch.float32)
    x0, x1, noise = x0.to(dtype), x1.to(dtype), noise.to(dtype)
    t = torch.linspace(0.1, 0.9, 8)
    s = _draw(path, x0, x1, t, noise)
    assert s.t.dtype == torch.float32 and s.t.shape == (8,)
    assert s.xt.dtype == dtype and s.ut.dtype == dtype and s.noise.dtype == dtype
    ref = _draw(path, x0.double(), x1.double(), t.double(), noise.double())
    tol = {torch.bfloat16: 4e-2, torch.float16: 4e-3, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(s.xt.double(), ref.xt, rtol=tol, atol=tol)
    torch.testing.assert_close(s.ut.double(), ref.ut, rtol=tol, atol=tol)


def test_float32_t_for_float64_data():
    x0, x1, noise = _batch((4, 2))
    s = LinearPath(0.1).sample(x0, x1, torch.rand(4, dtype=torch.float64), noise)
    assert s.t.dtype == torch.float32 and s.xt.dtype == torch.float64


@pytest.mark.parametrize("t", [0.3, torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64)])
def test_scalar_t_is_broadcast(t):
    x0, x1, noise = _batch((5, 2), dtype=torch.float32)
    s = LinearPath(0.2).sample(x0, x1, t, noise)
    full = LinearPath(0.2).sample(x0, x1, torch.full((5,), 0.3), noise)
    assert s.t.shape == (5,)
    torch.testing.assert_close(s.xt, full.xt, rtol=0, atol=0)
    torch.testing.assert_close(s.t, full.t, rtol=0, atol=0)


# --------------------------------------------------------------------- randomness
@pytest.mark.parametrize("path", PATH_CASES, ids=repr)
def test_same_noise_or_seed_is_deterministic(path):
    x0, x1, noise = _batch((6, 2), dtype=torch.float32)
    t = torch.rand(6, generator=_gen(17))
    a, b = _draw(path, x0, x1, t, noise), _draw(path, x0, x1, t, noise)
    torch.testing.assert_close(a.xt, b.xt, rtol=0, atol=0)
    torch.testing.assert_close(a.ut, b.ut, rtol=0, atol=0)
    a = path.sample(x0, x1, t, generator=_gen(3))
    b = path.sample(x0, x1, t, generator=_gen(3))
    torch.testing.assert_close(a.xt, b.xt, rtol=0, atol=0)
    torch.testing.assert_close(a.noise, b.noise, rtol=0, atol=0)
    if _uses_noise(path):
        c = path.sample(x0, x1, t, generator=_gen(4))
        assert not torch.equal(a.noise, c.noise)
        torch.testing.assert_close(a.noise, _draw(path, x0, x1, t, a.noise).noise, rtol=0, atol=0)


# --------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [LinearPath, BrownianBridgePath, TrigPath, GaussianTargetPath])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_sigma_raises(cls, bad):
    with pytest.raises(ValueError, match="sigma"):
        cls(bad)


def test_bad_parameters_raise():
    with pytest.raises(TypeError, match="sigma"):
        LinearPath("big")
    with pytest.raises(ValueError, match="sigma_min"):
        GaussianTargetPath(1.5)
    for t_clip in (0.0, 0.5, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="t_clip"):
            BrownianBridgePath(1.0, t_clip=t_clip)


@pytest.mark.parametrize(
    ("t", "err", "match"),
    [
        (torch.full((4,), 1.5), ValueError, r"\[0, 1\]"),
        (torch.tensor([0.1, -0.2, 0.3, 0.4]), ValueError, r"t\[1\]"),
        (torch.tensor([0.1, float("nan"), 0.3, 0.4]), ValueError, "finite"),
        (torch.rand(3), ValueError, r"shape \(4,\)"),
        (torch.rand(4, 1), ValueError, r"shape \(4,\)"),
        ("0.5", TypeError, "t must"),
        (True, TypeError, "t must"),
    ],
)
def test_bad_t_raises(t, err, match):
    x0, x1, _ = _batch((4, 2), dtype=torch.float32)
    with pytest.raises(err, match=match):
        LinearPath(0.1).sample(x0, x1, t)


def test_bad_data_raises():
    x0, x1, noise = _batch((4, 2), dtype=torch.float32)
    path = LinearPath(0.1)
    with pytest.raises(ValueError, match="trailing shape"):
        path.sample(x0, x1[:, :1], 0.5)
    with pytest.raises(ValueError, match="batch size"):
        path.sample(x0, x1[:3], 0.5)
    bad = x1.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        path.sample(x0, bad, 0.5)
    with pytest.raises(ValueError, match="noise"):
        path.sample(x0, x1, 0.5, noise=noise[:, :1])
    with pytest.raises(TypeError, match="dtype"):
        path.sample(x0, x1.double(), 0.5)
    with pytest.raises(TypeError, match="floating"):
        path.sample(x0.long(), x1.long(), 0.5)
    with pytest.raises(TypeError, match="Tensor"):
        path.sample(x0.numpy(), x1, 0.5)


# --------------------------------------------------------------------- misc
def test_registry_and_repr():
    assert PATHS.names() == ["brownian_bridge", "gaussian_target", "linear", "trig"]
    assert PATHS.get("linear", sigma=0.2) == LinearPath(0.2)
    assert isinstance(PATHS.get("brownian_bridge"), BrownianBridgePath)
    assert "sigma=0.2" in repr(LinearPath(0.2))
    with pytest.raises(ValueError, match="valid names"):
        PATHS.get("straight")
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinearPath(0.2).sigma = 0.3


def test_path_sample_is_frozen():
    s = LinearPath().sample(*_batch((3, 2))[:2], 0.5)
    assert isinstance(s, PathSample) and s.cond is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.xt = s.x0
