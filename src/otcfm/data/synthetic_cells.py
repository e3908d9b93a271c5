"""A synthetic single-cell time course with known ground truth at every time.

Latent cell state z = (progression, fate[, z3]) follows the SDE

    dz = -grad V(z) dt + g dW,        z(0) ~ N(0, s0^2 I),

in a branching (Waddington-like) landscape: cells drift along the progression axis at speed
``speed``; the fate coordinate sits in V = k (z2^4 / 4 - a(z1) z2^2 / 2) with
a(z1) = depth * tanh((z1 - branch_at) / width), a single valley before ``branch_at`` that
splits into two (z2 -> +-sqrt(depth)) after it; z3 (3-D latent) is an Ornstein-Uhlenbeck
coordinate (restoring rate ``ou_rate``). Cells are observed in D dimensions through a fixed
random map x = A z + nonlinearity * B tanh(C z) + noise * eps (A, B with orthonormal columns,
drawn once from ``embedding_seed``).

A snapshot at time t is a cohort of fresh cells simulated from 0 to t (Euler-Maruyama with step
``dt``), so no cell is seen twice and :meth:`SyntheticCells.truth` gives exact samples of the
observed distribution at ANY time t >= 0 against which predictions are scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from otcfm._utils import check_positive
from otcfm.data.timeseries import TimeSeries

__all__ = ["SyntheticCells"]


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # unique, sign-fixed Q


@dataclass(frozen=True)
class SyntheticCells:
    """The process definition; every draw takes a ``torch.Generator`` (no global RNG).

    obs_dim: observed features D (>= latent_dim); latent_dim: 2 or 3.
    times: observation times of :meth:`snapshots` (default 0, 1, 2, 3, 4).
    speed, branch_at, width, depth, restoring: the landscape (see module docstring).
    diffusion: g, the latent noise level; init_std: s0.
    noise: std of the measurement noise per observed feature.
    nonlinearity: weight of the tanh term of the embedding (0 = linear).
    embedding_seed: fixes A, B, C (the dataset's identity); dt: Euler-Maruyama step.
    """

    obs_dim: int = 20
    latent_dim: int = 3
    times: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    speed: float = 1.0
    branch_at: float = 1.5
    width: float = 1.0
    depth: float = 2.0
    restoring: float = 2.0
    ou_rate: float = 1.0
    diffusion: float = 0.3
    init_std: float = 0.2
    scale: tuple[float, ...] = (1.5, 1.5, 0.5)
    noise: float = 0.1
    nonlinearity: float = 0.5
    embedding_seed: int = 0
    dt: float = 0.01
    _maps: tuple[Tensor, Tensor, Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.latent_dim not in (2, 3):
            raise ValueError(f"latent_dim must be 2 or 3, got {self.latent_dim!r}")
        if isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int) or (
            self.obs_dim < self.latent_dim
        ):
            raise ValueError(
                f"obs_dim must be an int >= latent_dim ({self.latent_dim}), got {self.obs_dim!r}"
            )
        times = tuple(float(t) for t in self.times)
        if len(times) < 2 or any(b <= a for a, b in zip(times[:-1], times[1:], strict=True)):
            raise ValueError(f"times must be >= 2 strictly increasing values, got {self.times}")
        if times[0] < 0:
            raise ValueError(f"times must be >= 0 (cells start at t = 0), got {times[0]}")
        object.__setattr__(self, "times", times)
        for name in ("width", "dt", "init_std"):
            check_positive(name, getattr(self, name))
        for name in ("depth", "restoring", "ou_rate", "diffusion", "noise", "nonlinearity"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if len(self.scale) < self.latent_dim or any(s <= 0 for s in self.scale):
            raise ValueError(
                f"scale needs {self.latent_dim} positive entries, got {self.scale}"
            )
        g = torch.Generator().manual_seed(int(self.embedding_seed))
        a = _orthonormal(self.obs_dim, self.latent_dim, g)
        b = _orthonormal(self.obs_dim, self.latent_dim, g)
        c = torch.randn(self.latent_dim, self.latent_dim, generator=g, dtype=torch.float64)
        c = c / math.sqrt(self.latent_dim)
        s = torch.tensor(self.scale[: self.latent_dim], dtype=torch.float64)
        object.__setattr__(self, "_maps", (a * s, b, c))

    # ------------------------------------------------------------------ dynamics
    def drift(self, z: Tensor) -> Tensor:
        """-grad V at latent states z (n, latent_dim), float64."""
        z1, z2 = z[:, 0], z[:, 1]
        a = self.depth * torch.tanh((z1 - self.branch_at) / self.width)
        cols = [
            torch.full_like(z1, self.speed),
            -self.restoring * (z2**3 - a * z2),
        ]
        if self.latent_dim == 3:
            cols.append(-self.ou_rate * z[:, 2])
        return torch.stack(cols, dim=1)

    def latent(self, t: float, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, latent_dim) float64 latent states of n fresh cells at time t >= 0."""
        t = check_positive("t", t, allow_zero=True)
        n = _count(n)
        z = self.init_std * torch.randn(n, self.latent_dim, generator=generator,
                                        dtype=torch.float64)
        steps = math.ceil(t / self.dt - 1e-9)
        h = t / steps if steps else 0.0
        root = math.sqrt(h) * self.diffusion
        for _ in range(steps):
            noise = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
            z = z + h * self.drift(z) + root * noise
        return z

    def embed(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Observed (n, obs_dim) float32 features of latent states z, with measurement noise."""
        a, b, c = self._maps
        z = z.to(torch.float64)
        x = z @ a.T + self.nonlinearity * torch.tanh(z @ c.T) @ b.T
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        return x.float()

    # ------------------------------------------------------------------ data
    def truth(self, t: float, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, obs_dim) fresh cells observed at ANY time t >= 0: the ground truth at t."""
        return self.embed(self.latent(t, n, generator), generator)

    def snapshots(
        self,
        n: int | Sequence[int] = 1000,
        generator: torch.Generator | None = None,
        times: Sequence[float] | None = None,
    ) -> TimeSeries:
        """Independent populations at ``times`` (default ``self.times``): a new cohort each.

        n: cells per time, or one count per time.
        """
        times = self.times if times is None else tuple(float(t) for t in times)
        counts = [n] * len(times) if isinstance(n, int) else list(n)
        if len(counts) != len(times):
            raise ValueError(f"n needs one count per time ({len(times)}), got {len(counts)}")
        pops = [self.truth(t, k, generator) for t, k in zip(times, counts, strict=True)]
        names = tuple(f"x{j}" for j in range(self.obs_dim))
        return TimeSeries.from_populations(pops, times, feature_names=names)


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return n
