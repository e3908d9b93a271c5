"""Toy 2-D distributions, including the four tasks of the paper's 2-D benchmark (Table 2).

Every distribution is a function ``fn(n, generator=None) -> Tensor`` of shape ``(n, 2)`` and
dtype float32, registered by name in :data:`DISTRIBUTIONS`::

    from otcfm.data import toy
    x1 = toy.sample("8gaussians", 512, generator=torch.Generator().manual_seed(0))
    src, tgt = toy.task("moons-8gaussians")        # ("moons-std7", "8gaussians-r12")

All randomness comes from the optional ``torch.Generator`` (its device is the output device);
the same seed gives the same tensor. The benchmark distributions also have their log-density,
``log_prob(name, x)`` (in :data:`DENSITIES`), for likelihoods and their floors. Mixtures
draw each point's component independently and uniformly (a true mixture, not a fixed split),
except the two-moons and circles shapes, which
split ``n`` into halves as ``sklearn.datasets.make_moons`` does and then shuffle the rows.

Benchmark distributions (docs/reference.md §4):

- ``gaussian``: N(0, I_2), the source of three tasks.
- ``8gaussians``: 8 Gaussians of std 1, centres on the circle of radius 5 at angles 2 pi k / 8.
- ``8gaussians-r12``: 8 Gaussians of std 1.5, centres on the circle of radius 12 (moons->8g).
- ``moons-std7``: two moons (noise 0.1), standardised with the population scalar mean and
  std of all coordinates, times 7 (moons->8g source).
- ``moons``: two moons (noise 0.05) times 2, shifted by -1 along x (N->moons target).
- ``scurve``: the 3-D S-curve (noise 0.05), coordinates (x, z), times 1.5 (N->scurve target).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor

from otcfm._utils import Registry, check_positive

__all__ = [
    "DENSITIES",
    "DISTRIBUTIONS",
    "Density",
    "MOONS_STD7_MEAN",
    "MOONS_STD7_STD",
    "TASKS",
    "checkerboard",
    "circles",
    "display_name",
    "eight_gaussians",
    "eight_gaussians_r12",
    "gaussian",
    "has_density",
    "log_prob",
    "moons",
    "moons_std7",
    "names",
    "pinwheel",
    "rings",
    "s_curve",
    "sample",
    "scurve",
    "spirals",
    "standard_gaussian",
    "swissroll",
    "task",
    "two_moons",
]

DISTRIBUTIONS: Registry[Tensor] = Registry("distribution")

# Population scalar mean / std (over both coordinates pooled) of two moons with noise 0.1, used
# to standardise ``moons-std7``. With a ~ U[0, pi], half the points on each moon, noise s:
#   E[x] = (E cos a + E(1 - cos a)) / 2 = 1/2,   E[y] = (E sin a + E(1/2 - sin a)) / 2 = 1/4,
#   so the pooled mean is (1/2 + 1/4) / 2 = 3/8 (independent of s).
#   E[x^2] = (1/2 + 3/2) / 2 + s^2 = 1 + s^2,   E[y^2] = (1/2 + 3/4 - 2/pi) / 2 + s^2,
#   pooled second moment 13/16 - 1/(2 pi) + s^2, variance 43/64 - 1/(2 pi) + s^2.
# (E cos a = 0, E sin a = 2/pi, E cos^2 a = E sin^2 a = 1/2.) The paper's code standardises each
# sample with its own mean/std instead; constants make a sample's scale independent of its size.
# Values: mean 0.375, std 0.7229938...; checked against quadrature and Monte Carlo in the tests.
_MOONS_STD7_NOISE = 0.1
MOONS_STD7_MEAN: float = 3.0 / 8.0
MOONS_STD7_STD: float = math.sqrt(43.0 / 64.0 - 1.0 / (2.0 * math.pi) + _MOONS_STD7_NOISE**2)


# --------------------------------------------------------------------------- helpers
def _check_n(n: int, name: str = "n") -> int:
    """Return ``n`` as an int >= 1 or raise."""
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {n!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """U[0, 1) float32 samples."""
    return torch.rand(shape, generator=generator, device=_device(generator), dtype=torch.float32)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """N(0, 1) float32 samples."""
    return torch.randn(shape, generator=generator, device=_device(generator), dtype=torch.float32)


def _randint(high: int, n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randint(high, (n,), generator=generator, device=_device(generator))


def _shuffle(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return x[torch.randperm(x.shape[0], generator=generator, device=_device(generator))]


def _circle_mixture(n: int, k: int, radius: float, std: float, generator) -> Tensor:
    """Mixture of ``k`` isotropic Gaussians (std ``std``), centres at radius, angles 2 pi j / k."""
    comp = _randint(k, n, generator).to(torch.float32)
    angle = comp * (2.0 * math.pi / k)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * _randn((n, 2), generator)


# --------------------------------------------------------------------------- building blocks
def gaussian(
    n: int,
    dim: int,
    generator: torch.Generator | None = None,
    mean: float | Sequence[float] | Tensor = 0.0,
    std: float | Sequence[float] | Tensor = 1.0,
) -> Tensor:
    """``n`` samples of N(mean, diag(std^2)) in ``dim`` dimensions, shape (n, dim), float32.

    ``mean`` and ``std`` are scalars or length-``dim`` vectors; ``std`` must be > 0.
    """
    n = _check_n(n)
    dim = _check_n(dim, "dim")
    dev = _device(generator)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=dev)
    for name, v in (("mean", mean_t), ("std", std_t)):
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] != dim):
            raise ValueError(
                f"{name} must be a scalar or have length dim={dim}, got shape {tuple(v.shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite, got {v.tolist()}")
    if not bool((std_t > 0).all()):
        raise ValueError(f"std must be > 0, got {std_t.tolist()}")
    return mean_t + std_t * _randn((n, dim), generator)


def two_moons(n: int, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaving half circles, shape (n, 2), as ``sklearn.datasets.make_moons``.

    Outer moon (cos a, sin a) for n // 2 points, inner moon (1 - cos a, 1/2 - sin a) for the
    rest, plus isotropic N(0, noise^2); rows shuffled. ``a`` is drawn uniformly from [0, pi]
    (the continuous law that sklearn's evenly spaced ``linspace`` grid discretises).
    """
    n = _check_n(n)
    noise = check_positive("noise", noise, allow_zero=True)
    n_out = n // 2
    a = math.pi * _rand((n,), generator)
    c, s = torch.cos(a), torch.sin(a)
    outer = torch.stack([c[:n_out], s[:n_out]], dim=1)
    inner = torch.stack([1.0 - c[n_out:], 0.5 - s[n_out:]], dim=1)
    x = torch.cat([outer, inner], dim=0)
    if noise > 0:
        x = x + noise * _randn((n, 2), generator)
    return _shuffle(x, generator)


def s_curve(n: int, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """The 3-D S-curve, shape (n, 3), as ``sklearn.datasets.make_s_curve``.

    t = 3 pi (u - 1/2), v ~ U(0, 1): (sin t, 2 v, sign(t) (cos t - 1)) + N(0, noise^2 I_3).
    """
    n = _check_n(n)
    noise = check_positive("noise", noise, allow_zero=True)
    t = 3.0 * math.pi * (_rand((n,), generator) - 0.5)
    v = _rand((n,), generator)
    x = torch.stack([torch.sin(t), 2.0 * v, torch.sign(t) * (torch.cos(t) - 1.0)], dim=1)
    if noise > 0:
        x = x + noise * _randn((n, 3), generator)
    return x


# --------------------------------------------------------------------------- benchmark tasks
@DISTRIBUTIONS.register("gaussian")
def standard_gaussian(n: int, generator: torch.Generator | None = None) -> Tensor:
    """N(0, I_2)."""
    return gaussian(n, 2, generator=generator)


@DISTRIBUTIONS.register("8gaussians")
def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """8 Gaussians of std 1, centres at radius 5, angles 2 pi k / 8 (N->8gaussians target)."""
    return _circle_mixture(_check_n(n), 8, 5.0, 1.0, generator)


@DISTRIBUTIONS.register("8gaussians-r12")
def eight_gaussians_r12(n: int, generator: torch.Generator | None = None) -> Tensor:
    """moons->8gaussians target: 3 * (4 * unit centre + N(0, 0.5^2)): radius 12, std 1.5.

    The centres (+-1, 0), (0, +-1), (+-1/sqrt2, +-1/sqrt2) are the angles 2 pi k / 8.
    """
    return 3.0 * _circle_mixture(_check_n(n), 8, 4.0, 0.5, generator)


@DISTRIBUTIONS.register("moons-std7")
def moons_std7(n: int, generator: torch.Generator | None = None) -> Tensor:
    """moons->8gaussians source: 7 * (two_moons(noise=0.1) - mean) / std, population mean/std.

    See :data:`MOONS_STD7_MEAN` / :data:`MOONS_STD7_STD` (scalars pooled over both coordinates).
    """
    x = two_moons(n, noise=_MOONS_STD7_NOISE, generator=generator)
    return 7.0 * (x - MOONS_STD7_MEAN) / MOONS_STD7_STD


@DISTRIBUTIONS.register("moons")
def moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """N->moons target: 2 * two_moons(noise=0.05), then x[:, 0] -= 1."""
    x = 2.0 * two_moons(n, noise=0.05, generator=generator)
    return x - torch.tensor([1.0, 0.0], device=x.device)


@DISTRIBUTIONS.register("scurve")
def scurve(n: int, generator: torch.Generator | None = None) -> Tensor:
    """N->scurve target: 1.5 * s_curve(noise=0.05)[:, [0, 2]].

    The unused middle coordinate (2 v) is not drawn; the law of columns [0, 2] is the same.
    """
    n = _check_n(n)
    t = 3.0 * math.pi * (_rand((n,), generator) - 0.5)
    x = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1.0)], dim=1)
    return 1.5 * (x + 0.05 * _randn((n, 2), generator))


# --------------------------------------------------------------------------- other 2-D toys
@DISTRIBUTIONS.register("checkerboard")
def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 dark squares (side 2) of a 4 x 4 board covering [-4, 4]^2."""
    n = _check_n(n)
    i = _randint(4, n, generator)
    j = 2 * _randint(2, n, generator) + i % 2  # i + j even: the dark squares
    corner = torch.stack([i, j], dim=1).to(torch.float32) * 2.0 - 4.0
    return corner + 2.0 * _rand((n, 2), generator)


def _rings(n: int, radii: Sequence[float], noise: float, generator) -> Tensor:
    """Equal shares of ``n`` (remainder to the first rings) on circles, uniform angle, noise."""
    k = len(radii)
    counts = [n // k + (1 if r < n % k else 0) for r in range(k)]
    dev = _device(generator)
    radius = torch.cat(
        [torch.full((c,), float(r), device=dev) for c, r in zip(counts, radii, strict=True)]
    )
    angle = 2.0 * math.pi * _rand((n,), generator)
    x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return _shuffle(x + noise * _randn((n, 2), generator), generator)


@DISTRIBUTIONS.register("circles")
def circles(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two concentric circles of radii 4 and 2 (half the points each), noise std 0.1."""
    return _rings(_check_n(n), (4.0, 2.0), 0.1, generator)


@DISTRIBUTIONS.register("rings")
def rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Four concentric circles of radii 4, 3, 2, 1 (a quarter of the points each), noise 0.08."""
    return _rings(_check_n(n), (4.0, 3.0, 2.0, 1.0), 0.08, generator)


@DISTRIBUTIONS.register("swissroll")
def swissroll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Swiss roll (t cos t, t sin t) / 3, t = 1.5 pi (1 + 2u), u ~ U(0, 1), noise std 0.1."""
    n = _check_n(n)
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand((n,), generator))
    x = t[:, None] * torch.stack([torch.cos(t), torch.sin(t)], dim=1) / 3.0
    return x + 0.1 * _randn((n, 2), generator)


@DISTRIBUTIONS.register("spirals")
def spirals(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved Archimedean spirals r = (4 / 3pi) theta, theta in [0, 3 pi], noise 0.1.

    theta = 3 pi sqrt(u) spreads points about evenly along the arc; the second spiral is the
    first rotated by pi (half the points each, rows shuffled).
    """
    n = _check_n(n)
    theta = 3.0 * math.pi * torch.sqrt(_rand((n,), generator))
    x = (
        (4.0 / (3.0 * math.pi))
        * theta[:, None]
        * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    )
    sign = torch.ones(n, 1, device=x.device)
    sign[n // 2 :] = -1.0
    return _shuffle(sign * x + 0.1 * _randn((n, 2), generator), generator)


@DISTRIBUTIONS.register("pinwheel")
def pinwheel(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Five curved arms (the pinwheel).

    Five curved arms: point (r, s), r ~ N(1, 0.3^2), s ~ N(0, 0.1^2), rotated by
    2 pi k / 5 + 0.25 exp(r) for a uniform arm k, times 2.
    """
    n = _check_n(n)
    r = 1.0 + 0.3 * _randn((n,), generator)
    s = 0.1 * _randn((n,), generator)
    angle = 2.0 * math.pi * _randint(5, n, generator).to(torch.float32) / 5.0
    angle = angle + 0.25 * torch.exp(r)
    c, sn = torch.cos(angle), torch.sin(angle)
    return 2.0 * torch.stack([c * r - sn * s, sn * r + c * s], dim=1)


# --------------------------------------------------------------------------- log-densities
# A curve plus isotropic noise, x = c(a) + s * eps with a ~ U[lo, hi], has the density
#   p(x) = 1 / (hi - lo) * int_lo^hi N(x; c(a), s^2 I) da,
# a 1-D integral evaluated with the midpoint rule, nodes NODES_PER_STD per noise std along the
# curve (the tests compare it with twice the nodes and check that it integrates to 1 and has
# the closed-form mean).
NODES_PER_STD = 16
_CHUNK = 1024  # rows of x per kernel block

DENSITIES: Registry[Tensor] = Registry("distribution with a density")


def _gauss_log_kernel(x: Tensor, centres: Tensor, std: float) -> Tensor:
    """(n, m) log N(x_i; centre_j, std^2 I_2), float64."""
    sq = (x[:, None, :] - centres[None, :, :]).pow(2).sum(-1)
    return -0.5 * sq / std**2 - math.log(2.0 * math.pi * std**2)


def _mixture_log_prob(x: Tensor, centres: Tensor, std: float) -> Tensor:
    """Log of the equal-weight mixture of N(centre_j, std^2 I_2), for rows of x (float64)."""
    out = [torch.logsumexp(_gauss_log_kernel(chunk, centres, std), dim=1)
           for chunk in x.split(_CHUNK)]
    return torch.cat(out) - math.log(centres.shape[0])


def _circle_centres(k: int, radius: float) -> Tensor:
    angle = torch.arange(k, dtype=torch.float64) * (2.0 * math.pi / k)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _midpoints(lo: float, hi: float, length: float, std: float) -> Tensor:
    """Midpoint nodes on [lo, hi] along a curve traversed at constant speed.

    Midpoint nodes on [lo, hi] for a curve of arc length ``length`` traversed at constant
    speed, spaced at most std / NODES_PER_STD along it.
    """
    k = max(1, math.ceil(NODES_PER_STD * length / std))
    return lo + (hi - lo) * (torch.arange(k, dtype=torch.float64) + 0.5) / k


def _moons_curve(scale: float, shift: Tensor, std: float) -> Tensor:
    """Mixture nodes along both moons' curves as drawn by :func:`two_moons`.

    Both moons' curves as drawn by :func:`two_moons`, times ``scale`` plus ``shift``, as
    (2 k, 2) nodes: each moon carries half the mass, so one equal-weight mixture covers both.
    """
    a = _midpoints(0.0, math.pi, math.pi * scale, std)
    outer = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    inner = torch.stack([1.0 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    return scale * torch.cat([outer, inner]) + shift


def _as_points(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a (n, 2) tensor, got {getattr(x, 'shape', type(x))}")
    return x.detach().to(device="cpu", dtype=torch.float64)


@DENSITIES.register("gaussian")
def _log_prob_gaussian(x: Tensor) -> Tensor:
    return -0.5 * x.pow(2).sum(1) - math.log(2.0 * math.pi)


@DENSITIES.register("8gaussians")
def _log_prob_8gaussians(x: Tensor) -> Tensor:
    return _mixture_log_prob(x, _circle_centres(8, 5.0), 1.0)


@DENSITIES.register("8gaussians-r12")
def _log_prob_8gaussians_r12(x: Tensor) -> Tensor:
    return _mixture_log_prob(x, _circle_centres(8, 12.0), 1.5)


@DENSITIES.register("moons-std7")
def _log_prob_moons_std7(x: Tensor) -> Tensor:
    scale = 7.0 / MOONS_STD7_STD
    std = _MOONS_STD7_NOISE * scale
    shift = torch.full((2,), -MOONS_STD7_MEAN * scale, dtype=torch.float64)
    return _mixture_log_prob(x, _moons_curve(scale, shift, std), std)


@DENSITIES.register("moons")
def _log_prob_moons(x: Tensor) -> Tensor:
    std = 2.0 * 0.05
    curve = _moons_curve(2.0, torch.tensor([-1.0, 0.0], dtype=torch.float64), std)
    return _mixture_log_prob(x, curve, std)


@DENSITIES.register("scurve")
def _log_prob_scurve(x: Tensor) -> Tensor:
    std = 1.5 * 0.05  # the curve (sin t, sign(t) (cos t - 1)) has unit speed in t
    t = _midpoints(-1.5 * math.pi, 1.5 * math.pi, 1.5 * 3.0 * math.pi, std)
    curve = 1.5 * torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1.0)], dim=1)
    return _mixture_log_prob(x, curve, std)


def has_density(name: str) -> bool:
    """Whether :func:`log_prob` knows the registered distribution ``name``."""
    return name in DENSITIES


def log_prob(name: str, x: Tensor) -> Tensor:
    """Log p(x) (nats) of the registered distribution ``name`` at the rows of ``x`` (n, 2).

    Exact for the Gaussians and mixtures; for the curves with noise (moons, scurve) the 1-D
    integral over the curve's parameter by the midpoint rule (:data:`NODES_PER_STD`).
    Returns float64 on the CPU.
    """
    return DENSITIES.factory(name)(_as_points(x))


@dataclass(frozen=True)
class Density:
    """A registered distribution as a density object with ``log_prob``.

    A registered distribution as a density object: ``Density("moons").log_prob(x)``
    (the ``source`` of :func:`otcfm.likelihood.log_likelihood`; same dtype and device as x).
    """

    name: str

    def __post_init__(self) -> None:
        DENSITIES.factory(self.name)  # unknown names fail here, with the valid ones

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the distribution at ``x`` (N, 2), (N,), in x's dtype and on its device."""
        return log_prob(self.name, x).to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------- public lookup
TASKS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "gaussian-8gaussians": ("gaussian", "8gaussians"),
        "moons-8gaussians": ("moons-std7", "8gaussians-r12"),
        "gaussian-moons": ("gaussian", "moons"),
        "gaussian-scurve": ("gaussian", "scurve"),
    }
)
"""Benchmark task name -> (source distribution, target distribution) (paper Table 2)."""


_DISPLAY_NAMES: Mapping[str, str] = MappingProxyType(
    {"moons-std7": "moons", "8gaussians-r12": "8gaussians"}
)


def display_name(spec: str) -> str:
    """The name a person reads for a data source (plot titles; the README's task names).

    The moons->8gaussians task's rescaled distributions go by the task's names
    (``"moons-std7"`` -> ``"moons"``, ``"8gaussians-r12"`` -> ``"8gaussians"``), other built-in
    names stay as they are, and a file by its file name (``"data/x0.npy"`` -> ``"x0.npy"``).
    """
    if spec in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[spec]
    if spec in DISTRIBUTIONS.names():
        return spec
    return Path(spec).name or spec


def names() -> list[str]:
    """Sorted names of the registered 2-D distributions."""
    return DISTRIBUTIONS.names()


def sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points (n, 2) float32 from the registered distribution ``name``.

    Examples:
        >>> import torch
        >>> from otcfm.data import toy
        >>> x = toy.sample("moons", 1000, generator=torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype
        (torch.Size([1000, 2]), torch.float32)
        >>> y = toy.sample("moons", 1000, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.equal(x, y))  # the same seed gives the same points
        True
    """
    return DISTRIBUTIONS.factory(name)(n, generator=generator)


def task(name: str) -> tuple[str, str]:
    """``(source_name, target_name)`` of a benchmark task, e.g. ``task("gaussian-moons")``."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid task names: {', '.join(sorted(TASKS))}")
    return TASKS[name]
