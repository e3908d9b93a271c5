"""Time samplers for the CFM loss: t ~ q(t) on [0, 1], one time per sample.

Every sampler returns float32 (n,) tensors in [0, 1] whatever the data dtype, draws only from
the optional ``torch.Generator`` (same seed, same times), and draws on the generator's device
before moving to ``device``.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from otcfm._utils import Registry, cast, check_positive

__all__ = [
    "TIME_SAMPLERS",
    "BetaTime",
    "LogitNormalTime",
    "StratifiedUniformTime",
    "TimeSampler",
    "UniformTime",
]


class TimeSampler(ABC):
    """Draws n training times in [0, 1]: ``sampler(n, generator=g, device=d) -> (n,) float32``."""

    #: whether ``_draw`` already returns float32 times in [0, 1] (no clamp needed)
    _in_unit_interval: ClassVar[bool] = False

    def __call__(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``n`` times in [0, 1] as a (n,) float32 tensor, on ``device`` when given."""
        n = _check_n(n)
        src = generator.device if generator is not None else torch.device(device or "cpu")
        t = self._draw(n, generator, src)
        if not self._in_unit_interval:
            t = t.to(torch.float32).clamp_(0.0, 1.0)
        return cast(t, device=torch.device(device)) if device is not None else t

    @abstractmethod
    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """N times on ``device`` from ``generator``."""

    def __repr__(self) -> str:  # dataclass subclasses override this
        return f"{type(self).__name__}()"


@dataclass(frozen=True, repr=True)
class UniformTime(TimeSampler):
    """t ~ U[0, 1) (the paper's choice)."""

    _in_unit_interval: ClassVar[bool] = True  # torch.rand: float32 in [0, 1)

    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return torch.rand(n, generator=generator, device=device)


@dataclass(frozen=True, repr=True)
class StratifiedUniformTime(TimeSampler):
    """Stratified U[0, 1): one uniform in each stratum [k/n, (k+1)/n), then shuffled.

    Each t_i is still marginally U[0, 1), but the batch covers [0, 1] evenly, which lowers the
    variance of the minibatch loss over t.
    """

    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
        perm = torch.randperm(n, generator=generator, device=device)
        return t[perm]


@dataclass(frozen=True, repr=True)
class LogitNormalTime(TimeSampler):
    """t = sigmoid(mean + std * z), z ~ N(0, 1): concentrates times in the middle of [0, 1]."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        try:
            mean = float(self.mean)
        except (TypeError, ValueError):
            raise TypeError(f"mean must be a number, got {self.mean!r}") from None
        if not math.isfinite(mean):
            raise ValueError(f"mean must be finite, got {self.mean!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", check_positive("std", self.std))

    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(self.mean + self.std * z)


@dataclass(frozen=True, repr=True)
class BetaTime(TimeSampler):
    """t ~ Beta(a, b), as the first coordinate of a Dirichlet(a, b) draw from the generator."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", check_positive("a", self.a))
        object.__setattr__(self, "b", check_positive("b", self.b))

    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        conc = torch.tensor([self.a, self.b], dtype=torch.float64, device=device).expand(n, 2)
        # torch.distributions.Beta cannot take a generator; its sampler can.
        return torch._sample_dirichlet(conc.contiguous(), generator=generator)[:, 0]


def _check_n(n: object) -> int:
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {n!r}") from None
    if isinstance(n, bool) or value < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return value


TIME_SAMPLERS: Registry[TimeSampler] = Registry("time sampler")
TIME_SAMPLERS.register("uniform")(UniformTime)
TIME_SAMPLERS.register("stratified")(StratifiedUniformTime)
TIME_SAMPLERS.register("logit_normal")(LogitNormalTime)
TIME_SAMPLERS.register("beta")(BetaTime)
