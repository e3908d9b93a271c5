"""Tests for otcfm.data.toy: shapes, seeding, and the benchmark laws against analytic oracles.

Monte Carlo checks use fixed seeds and tolerances of ``K`` standard errors of the estimated
statistic (``K = 5``), so each assertion states how much sampling noise it allows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from otcfm.data import toy

K = 5.0  # standard errors allowed in Monte Carlo comparisons
N_MC = 200_000
BENCHMARK = ("gaussian", "8gaussians", "8gaussians-r12", "moons-std7", "moons", "scurve")
OTHERS = ("checkerboard", "circles", "rings", "swissroll", "spirals", "pinwheel")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean(values: torch.Tensor, expected: float, k: float = K) -> None:
    """Sample mean of ``values`` equals ``expected`` within ``k`` standard errors."""
    v = values.double()
    se = float(v.std()) / math.sqrt(v.numel())
    assert abs(float(v.mean()) - expected) <= k * se + 1e-12, (float(v.mean()), expected, se)


def expect_uniform(a: float, b: float, f) -> float:
    """E f(a) for a ~ U[a, b], by quadrature (an oracle independent of the sampler)."""
    return integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-13)[0] / (b - a)


def moon_moments(noise: float) -> dict[str, float]:
    """Mean / second moment of each coordinate of two moons (half per moon) by quadrature."""
    outer = (math.cos, math.sin)
    inner = (lambda a: 1 - math.cos(a), lambda a: 0.5 - math.sin(a))
    out = {}
    for i, axis in enumerate("xy"):
        m = [expect_uniform(0, math.pi, moon[i]) for moon in (outer, inner)]
        s = [expect_uniform(0, math.pi, lambda a, f=moon[i]: f(a) ** 2) for moon in (outer, inner)]
        out[f"m{axis}"] = sum(m) / 2
        out[f"s{axis}"] = sum(s) / 2 + noise**2
    return out


# --------------------------------------------------------------------------- registry / API
def test_names_cover_benchmark_and_other_toys():
    assert set(BENCHMARK) | set(OTHERS) <= set(toy.names())
    assert toy.names() == sorted(toy.names())


@pytest.mark.parametrize("name", sorted(set(BENCHMARK) | set(OTHERS)))
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_shape_dtype_finite(name, n):
    x = toy.sample(name, n, generator=gen(1))
    assert x.shape == (n, 2)
    assert x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("name", toy.names())
def test_seeded_reproducibility(name):
    a = toy.sample(name, 500, generator=gen(3))
    b = toy.sample(name, 500, generator=gen(3))
    c = toy.sample(name, 500, generator=gen(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("name", toy.names())
def test_direct_call_matches_registry_and_default_generator(name):
    fn = toy.DISTRIBUTIONS.factory(name)
    assert torch.equal(fn(50, generator=gen(9)), toy.sample(name, 50, generator=gen(9)))
    torch.manual_seed(0)
    a = toy.sample(name, 20)
    torch.manual_seed(0)
    assert torch.equal(a, toy.sample(name, 20))


@pytest.mark.parametrize("name", OTHERS)
def test_other_toys_have_sensible_scale(name):
    x = toy.sample(name, 20_000, generator=gen(5))
    assert float(x.abs().max()) <= 5.5
    assert float(x.std()) >= 0.5  # not collapsed


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown distribution 'nope'.*8gaussians.*scurve"):
        toy.sample("nope", 10)


@pytest.mark.parametrize("n", [0, -3])
def test_bad_n_value(n):
    with pytest.raises(ValueError, match="n must be >= 1"):
        toy.sample("moons", n)


@pytest.mark.parametrize("n", [2.5, True, "10"])
def test_bad_n_type(n):
    with pytest.raises(TypeError, match="n must be an integer"):
        toy.sample("8gaussians", n)


def test_numpy_integer_n_is_accepted():
    assert toy.sample("gaussian", np.int64(5), generator=gen()).shape == (5, 2)


def test_tasks_and_task_lookup():
    assert dict(toy.TASKS) == {
        "gaussian-8gaussians": ("gaussian", "8gaussians"),
        "moons-8gaussians": ("moons-std7", "8gaussians-r12"),
        "gaussian-moons": ("gaussian", "moons"),
        "gaussian-scurve": ("gaussian", "scurve"),
    }
    for name, pair in toy.TASKS.items():
        assert toy.task(name) == pair
        assert all(p in toy.names() for p in pair)
    with pytest.raises(ValueError, match="valid task names: gaussian-8gaussians"):
        toy.task("moons-scurve")
    with pytest.raises(TypeError):
        toy.TASKS["x"] = ("a", "b")  # read-only mapping


# --------------------------------------------------------------------------- gaussian(n, dim)
def test_gaussian_dim_mean_std():
    mean = torch.tensor([1.0, -2.0, 0.5])
    std = torch.tensor([0.5, 2.0, 1.0])
    x = toy.gaussian(N_MC, 3, generator=gen(2), mean=mean, std=std)
    assert x.shape == (N_MC, 3) and x.dtype == torch.float32
    for j in range(3):
        assert_mean(x[:, j], float(mean[j]))
        # E (x - mu)^2 = std^2
        assert_mean((x[:, j].double() - float(mean[j])) ** 2, float(std[j]) ** 2)
    corr = torch.corrcoef(x.T.double())
    assert float((corr - torch.eye(3, dtype=torch.float64)).abs().max()) <= K / math.sqrt(N_MC)


def test_gaussian_scalar_mean_and_std():
    x = toy.gaussian(N_MC, 1, generator=gen(2), mean=3.0, std=0.1)
    assert_mean(x[:, 0], 3.0)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"std": 0.0}, ValueError, "std must be > 0"),
        ({"std": [1.0, -1.0]}, ValueError, "std must be > 0"),
        ({"mean": [0.0, 1.0, 2.0]}, ValueError, "mean must be a scalar or have length dim=2"),
        ({"mean": float("nan")}, ValueError, "mean must be finite"),
    ],
)
def test_gaussian_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        toy.gaussian(10, 2, **kwargs)


def test_gaussian_bad_dim():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        toy.gaussian(10, 0)


# --------------------------------------------------------------------------- benchmark laws
def _circle_mixture_checks(x: torch.Tensor, radius: float, std: float) -> None:
    x = x.double()
    sq = (x**2).sum(1)
    assert_mean(x[:, 0], 0.0)
    assert_mean(x[:, 1], 0.0)
    assert_mean(sq, radius**2 + 2 * std**2)  # E|c + e|^2 = |c|^2 + E|e|^2
    # 8 centres equally spaced: E[c c^T] = (r^2 / 2) I, so Cov = (r^2/2 + std^2) I
    var = radius**2 / 2 + std**2
    assert_mean(x[:, 0] ** 2, var)
    assert_mean(x[:, 1] ** 2, var)
    assert_mean(x[:, 0] * x[:, 1], 0.0)
    # each of the 8 angular sectors around a centre holds 1/8 of the mass (symmetry)
    sector = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)).long() % 8
    freq = torch.bincount(sector, minlength=8).double() / x.shape[0]
    se = math.sqrt((1 / 8) * (7 / 8) / x.shape[0])
    assert float((freq - 1 / 8).abs().max()) <= K * se


def test_8gaussians_moments():
    _circle_mixture_checks(toy.sample("8gaussians", N_MC, generator=gen(10)), 5.0, 1.0)


def test_8gaussians_r12_moments_and_spread():
    x = toy.sample("8gaussians-r12", N_MC, generator=gen(11))
    _circle_mixture_checks(x, 12.0, 1.5)
    # components are 3 std apart at worst, so the distance to the nearest centre is Rayleigh(1.5)
    ang = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centres = 12.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    d = torch.cdist(x.double(), centres).min(1).values
    median = 1.5 * math.sqrt(2 * math.log(2))
    # a sample median's standard error is about 1 / (2 f(m) sqrt(n)); Rayleigh f(m) = ln2 * m/s^2
    se = 1.0 / (2 * (math.log(2) * median / 1.5**2) * math.sqrt(N_MC))
    assert abs(float(d.median()) - median) <= K * se + 1e-3  # + small bias from far components


def test_moons_std7_constants_match_quadrature():
    mom = moon_moments(0.1)
    mean = (mom["mx"] + mom["my"]) / 2
    var = (mom["sx"] + mom["sy"]) / 2 - mean**2
    assert abs(toy.MOONS_STD7_MEAN - mean) <= 1e-12
    assert abs(toy.MOONS_STD7_STD - math.sqrt(var)) <= 1e-12


def test_moons_std7_scalar_mean_0_std_7():
    x = toy.sample("moons-std7", N_MC, generator=gen(12)).double().reshape(-1)
    assert_mean(x, 0.0)
    assert_mean(x**2, 49.0)  # pooled variance 7^2 since the pooled mean is 0


def test_moons_moments():
    x = toy.sample("moons", N_MC, generator=gen(13)).double()
    mom = moon_moments(0.05)
    # x' = 2 x - 1 (x-coordinate), y' = 2 y
    assert_mean(x[:, 0], 2 * mom["mx"] - 1)
    assert abs(2 * mom["mx"] - 1) <= 1e-12  # the x-coordinate is centred
    assert_mean(x[:, 1], 2 * mom["my"])
    assert_mean(x[:, 0] ** 2, 4 * mom["sx"] - 4 * mom["mx"] + 1)
    assert_mean(x[:, 1] ** 2, 4 * mom["sy"])


def test_two_moons_noise_free_points_lie_on_the_two_half_circles():
    n = 1001
    x = toy.two_moons(n, noise=0.0, generator=gen(14)).double()
    on_outer = ((x.norm(dim=1) - 1).abs() <= 1e-6) & (x[:, 1] >= -1e-6)
    shifted = x - torch.tensor([1.0, 0.5], dtype=torch.float64)
    on_inner = ((shifted.norm(dim=1) - 1).abs() <= 1e-6) & (shifted[:, 1] <= 1e-6)
    assert bool((on_outer | on_inner).all())
    assert int(on_outer.sum()) == n // 2  # sklearn's split: n // 2 outer, the rest inner
    # the angle along each moon is uniform on [0, pi]: its mean is pi/2
    a = torch.atan2(x[on_outer, 1], x[on_outer, 0])
    assert abs(float(a.mean()) - math.pi / 2) <= K * (math.pi / math.sqrt(12)) / math.sqrt(n // 2)
    # rows are shuffled: the first half is not all on the outer moon
    assert 0 < int(on_outer[: n // 2].sum()) < n // 2


def test_two_moons_matches_sklearn_make_moons():
    datasets = pytest.importorskip("sklearn.datasets")
    n = 100_000
    ref, _ = datasets.make_moons(n_samples=n, noise=0.1, random_state=0)
    ours = toy.two_moons(n, noise=0.1, generator=gen(15)).double().numpy()
    np.testing.assert_allclose(ours.mean(0), ref.mean(0), atol=0.01)
    np.testing.assert_allclose(np.cov(ours.T), np.cov(ref.T), atol=0.01)


def test_s_curve_noise_free_points_lie_on_the_curve():
    x = toy.s_curve(2000, noise=0.0, generator=gen(16)).double()
    px, py, pz = x.unbind(1)
    # z <= 0: circle of radius 1 centred (x, z) = (0, -1); z >= 0: centred (0, +1)
    centre = torch.where(pz <= 0, -1.0, 1.0)
    assert float((px**2 + (pz - centre) ** 2 - 1).abs().max()) <= 1e-5
    assert float(py.min()) >= 0.0 and float(py.max()) <= 2.0
    # t in [-3pi/2, 3pi/2]: on the z <= 0 branch x = sin t runs over [-1, 1] with z from 0 to -2
    assert float(pz.min()) >= -2 - 1e-6 and float(pz.max()) <= 2 + 1e-6


def test_scurve_moments_and_distance_to_curve():
    x = toy.sample("scurve", N_MC, generator=gen(17)).double()
    t_range = (-1.5 * math.pi, 1.5 * math.pi)
    ex2 = expect_uniform(*t_range, lambda t: math.sin(t) ** 2)
    ez2 = expect_uniform(*t_range, lambda t: (math.cos(t) - 1) ** 2)
    s2 = 0.05**2
    assert_mean(x[:, 0], 0.0)
    assert_mean(x[:, 1], 0.0)
    assert_mean(x[:, 0] ** 2, 1.5**2 * (ex2 + s2))
    assert_mean(x[:, 1] ** 2, 1.5**2 * (ez2 + s2))
    # unscaled points are within 6 noise std of the S (union of its two circles)
    y = x / 1.5
    d = torch.minimum(
        ((y - torch.tensor([0.0, -1.0], dtype=torch.float64)).norm(dim=1) - 1).abs(),
        ((y - torch.tensor([0.0, 1.0], dtype=torch.float64)).norm(dim=1) - 1).abs(),
    )
    assert float(d.max()) <= 6 * 0.05


# --------------------------------------------------------------------------- other toys
def test_checkerboard_uniform_on_dark_squares():
    x = toy.sample("checkerboard", N_MC, generator=gen(18)).double()
    assert float(x.min()) >= -4 and float(x.max()) <= 4
    ij = torch.floor((x + 4) / 2).long().clamp(0, 3)
    assert bool(((ij[:, 0] + ij[:, 1]) % 2 == 0).all())
    freq = torch.bincount(ij[:, 0] * 4 + ij[:, 1], minlength=16).double() / N_MC
    dark = freq[(torch.arange(16) // 4 + torch.arange(16) % 4) % 2 == 0]
    se = math.sqrt((1 / 8) * (7 / 8) / N_MC)
    assert float((dark - 1 / 8).abs().max()) <= K * se
    # uniform within a square: offset mean 1, variance 4/12
    off = x - 2 * torch.floor(x / 2)
    assert_mean(off[:, 0], 1.0)
    assert_mean((off[:, 1] - 1) ** 2, 4 / 12)


@pytest.mark.parametrize(
    ("name", "radii", "noise"),
    [("circles", (2.0, 4.0), 0.1), ("rings", (1.0, 2.0, 3.0, 4.0), 0.08)],
)
def test_rings_radii_and_shares(name, radii, noise):
    n = 40_000
    x = toy.sample(name, n, generator=gen(19)).double()
    r = x.norm(dim=1)
    ring = torch.tensor(radii, dtype=torch.float64)
    nearest = (r[:, None] - ring).abs().argmin(1)
    assert float((r - ring[nearest]).abs().max()) <= 6 * noise
    counts = torch.bincount(nearest, minlength=len(radii))
    assert int(counts.max() - counts.min()) <= 1  # equal shares (rings are > 6 noise apart)
    # the angle is uniform: mean of cos and sin 0
    assert_mean(x[:, 0] / r, 0.0)
    assert_mean(x[:, 1] / r, 0.0)


def test_spirals_are_point_symmetric_pair():
    n = 20_000
    x = toy.sample("spirals", n, generator=gen(20)).double()
    # two spirals, one the rotation by pi of the other: the law is symmetric under x -> -x
    assert_mean(x[:, 0], 0.0)
    assert_mean(x[:, 1], 0.0)
    assert float(x.norm(dim=1).max()) <= 4 + 6 * 0.1 * math.sqrt(2)


def test_swissroll_radius_tracks_angle():
    x = toy.sample("swissroll", 20_000, generator=gen(21)).double()
    r = x.norm(dim=1)
    assert float(r.min()) >= 1.5 * math.pi / 3 - 0.6
    assert float(r.max()) <= 4.5 * math.pi / 3 + 0.6


def test_display_names_are_the_readme_task_names():
    from otcfm.plots import run_title

    src, tgt = toy.task("moons-8gaussians")
    assert (toy.display_name(src), toy.display_name(tgt)) == ("moons", "8gaussians")
    assert toy.display_name("gaussian") == "gaussian" and toy.display_name("moons") == "moons"
    assert toy.display_name("/data/runs/x0.npy") == "x0.npy"
    assert toy.display_name("cells.npz:pcs") == "cells.npz:pcs"
    assert run_title("otcfm", src, tgt) == "otcfm: moons -> 8gaussians"


# --------------------------------------------------------------------------- log-densities
def _grid(lim: float, k: int) -> tuple[torch.Tensor, float]:
    u = torch.linspace(-lim, lim, k, dtype=torch.float64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1), float(u[1] - u[0]) ** 2


# grid half-widths that hold all but ~1e-12 of each law's mass (5 noise stds past the support)
LIMITS = {"gaussian": 8.0, "8gaussians": 11.0, "8gaussians-r12": 20.0, "moons-std7": 22.0,
          "moons": 3.5, "scurve": 3.5}


@pytest.mark.parametrize("name", BENCHMARK)
def test_density_integrates_to_one_and_matches_the_sampler(name):
    """The density against two oracles: it integrates to 1 on a grid, and the grid integrals
    of test functions (moments and a quadrant's probability) equal the sampler's means within
    K standard errors."""
    pts, area = _grid(LIMITS[name], 260)
    p = toy.log_prob(name, pts).exp()
    assert abs(float(p.sum()) * area - 1.0) < 1e-6
    x = toy.sample(name, 40_000, gen(3)).double()
    tests = {
        "x": lambda z: z[:, 0], "y": lambda z: z[:, 1], "x^2": lambda z: z[:, 0] ** 2,
        "y^2": lambda z: z[:, 1] ** 2, "xy": lambda z: z[:, 0] * z[:, 1],
        "quadrant": lambda z: ((z[:, 0] > 0.3) & (z[:, 1] > 0.1)).double(),
    }
    for label, f in tests.items():
        expected = float((f(pts) * p).sum()) * area
        assert_mean(f(x), expected), label


def test_moons_std7_density_has_the_closed_form_moments():
    """Population mean per coordinate 7 (1/2 - 3/8) / std and 7 (1/4 - 3/8) / std, pooled
    variance 49 (the standardisation's constants), by grid integration of the density (the
    variance to 1e-5 relative: the curve quadrature's h^2 error)."""
    pts, area = _grid(LIMITS["moons-std7"], 300)
    p = toy.log_prob("moons-std7", pts).exp() * area
    mean = (pts * p[:, None]).sum(0)
    scale = 7.0 / toy.MOONS_STD7_STD
    assert torch.allclose(mean, torch.tensor([0.125, -0.125], dtype=torch.float64) * scale,
                          atol=1e-8)
    assert abs(float((pts.pow(2).sum(1) * p).sum()) / 2 / 49.0 - 1.0) < 1e-5


def test_mixture_densities_equal_a_direct_sum():
    """8gaussians (std 1, radius 5) and 8gaussians-r12 (std 1.5, radius 12) against the
    mixture formula written out with numpy."""
    x = toy.sample("8gaussians", 50, gen(1)).double()
    for name, radius, std in (("8gaussians", 5.0, 1.0), ("8gaussians-r12", 12.0, 1.5)):
        z = x.numpy() * radius / 5.0
        total = np.zeros(len(z))
        for k in range(8):
            c = radius * np.array([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)])
            total += np.exp(-((z - c) ** 2).sum(1) / (2 * std**2)) / (2 * math.pi * std**2) / 8
        got = toy.log_prob(name, torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(got, np.log(total), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ("moons-std7", "moons", "scurve"))
def test_curve_density_quadrature_converges(name, monkeypatch):
    """Midpoint rule at NODES_PER_STD against four times the nodes: pointwise within 3e-3
    nats (the far tails), mean over samples within 1e-6 nats."""
    x = toy.sample(name, 5_000, gen(2))
    coarse = toy.log_prob(name, x)
    monkeypatch.setattr(toy, "NODES_PER_STD", 4 * toy.NODES_PER_STD)
    fine = toy.log_prob(name, x)
    assert float((coarse - fine).abs().max()) < 3e-3
    assert abs(float((coarse - fine).mean())) < 1e-6


def test_density_errors_and_density_object():
    with pytest.raises(ValueError, match="valid names: .*moons"):
        toy.log_prob("checkerboard", torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        toy.log_prob("moons", torch.zeros(3, 3))
    with pytest.raises(ValueError, match="unknown"):
        toy.Density("spiral")
    assert toy.has_density("scurve") and not toy.has_density("pinwheel")
    x = torch.randn(4, 2, generator=gen(0))
    lp = toy.Density("gaussian").log_prob(x)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, -0.5 * x.pow(2).sum(1) - math.log(2 * math.pi))
