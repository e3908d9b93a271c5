"""Conditional probability paths p_t(x | z) = N(mu_t(z), sigma_t^2 I) and their vector fields.

Every path here is Gaussian given z = (x0, x1) (docs/reference.md §1-2), so a sample is::

    x_t = mu_t(x0, x1) + sigma_t * eps,          eps ~ N(0, I),
    u_t = d/dt x_t (eps fixed) = mu_t' + sigma_t' * eps
        = (sigma_t' / sigma_t) (x_t - mu_t) + mu_t'          (docs/reference.md §1).

``u_t`` is computed in the first (noise) form, which stays finite where sigma_t = 0.
Convention: t = 0 is the source x0, t = 1 the target x1; tensors are batch-first with any
trailing (event) shape; times are per-sample, shape (B,).

This module is pure tensor maths: it imports only torch and ``otcfm._utils``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from otcfm._utils import Registry, cast, check_pair, check_positive, check_tensor, flat, pad_t

__all__ = [
    "PATHS",
    "BrownianBridgePath",
    "GaussianTargetPath",
    "LinearPath",
    "PathSample",
    "ProbabilityPath",
    "TrigPath",
]


@dataclass(frozen=True)
class PathSample:
    """One draw from a conditional path, ready for the regression ``model(xt, t) ~ ut``.

    Attributes:
        t: (B,) float32 times.
        x0, x1: (B, ``*event``) the (paired) endpoints, as given.
        xt: (B, ``*event``) sample of p_t(x | x0, x1), in the dtype of x0/x1.
        ut: (B, ``*event``) conditional vector field u_t(xt | x0, x1), in the dtype of x0/x1.
        noise: (B, ``*event``) the standard normal eps with xt = mu_t + sigma_t * eps.
        cond: per-sample conditions for the model (tensors / lists / dicts), set by a matcher.
    """

    t: Tensor
    x0: Tensor
    x1: Tensor
    xt: Tensor
    ut: Tensor
    noise: Tensor
    cond: Any = None


class ProbabilityPath(ABC):
    """A Gaussian conditional path p_t(x | x0, x1) = N(mu_t, sigma_t^2 I).

    Subclasses give mu_t, sigma_t and their time derivatives; :meth:`sample` and :meth:`u_t`
    are shared. The tensor methods take t of shape (B,) and return tensors in the dtype of
    their inputs; :meth:`sample` adds validation, noise drawing and low-precision handling.
    """

    @abstractmethod
    def mu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean of p_t(x | x0, x1); (B, ``*event``)."""

    @abstractmethod
    def sigma_t(self, t: Tensor) -> Tensor:
        """Standard deviation of p_t(x | x0, x1); (B,)."""

    @abstractmethod
    def dmu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Time derivative of :meth:`mu_t`; (B, ``*event``)."""

    @abstractmethod
    def dsigma_t(self, t: Tensor) -> Tensor:
        """Time derivative of :meth:`sigma_t`; (B,)."""

    # ------------------------------------------------------------------ shared maths
    def u_t(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Conditional field at any x: (sigma_t'/sigma_t)(x - mu_t) + mu_t'.

        Where sigma_t = 0 the path is a point mass and only mu_t' is returned.
        """
        sig, dsig = self.sigma_t(t), self.dsigma_t(t)
        positive = sig > 0
        ratio = torch.where(positive, dsig / torch.where(positive, sig, torch.ones_like(sig)), 0.0)
        return self.dmu_t(x0, x1, t) + pad_t(ratio, x) * (x - self.mu_t(x0, x1, t))

    def sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor | float,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PathSample:
        """Draw xt ~ p_t(x | x0, x1) and its target ut for a batch of pairs.

        Args:
            x0: (B, ``*event``) finite floating tensor: the source points.
            x1: (B, ``*event``) finite floating tensor of x0's shape and dtype: the targets.
            t: (B,) times in [0, 1], or a float / 0-dim tensor used for every sample.
            noise: optional (B, ``*event``) standard normal eps; drawn from ``generator`` if None.
            generator: torch.Generator for the noise (same seed, same sample).

        bf16/fp16 inputs are computed in float32 and xt/ut cast back; float64 stays float64.
        The returned ``t`` is always float32.
        """
        x0, x1, t_c, work = _prepare(x0, x1, t)
        return self._draw(x0, x1, t_c, self._noise(x0, x1, noise, generator, work), work)

    def _sample_valid(
        self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None, cond: Any
    ) -> PathSample:
        """:meth:`sample` with fresh noise for inputs known to be valid, with ``cond`` set.

        For the training pipeline (via ``FlowMatcher``): x0, x1 finite floating (B, ``*event``)
        batches of one shape, dtype and device, t (B,) in [0, 1] on that device. The same
        draws and values as ``sample(x0, x1, t, generator=generator)``, without its checks.
        """
        work = torch.float64 if x1.dtype == torch.float64 else torch.float32
        eps = self._noise(x0, x1, None, generator, work)
        return self._draw(x0, x1, cast(t, dtype=work), eps, work, cond)

    def _draw(
        self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor, work: torch.dtype, cond: Any = None
    ) -> PathSample:
        """The sample for checked inputs: t (B,) and eps in the working dtype ``work``."""
        xt, ut = self._fields(cast(x0, dtype=work), cast(x1, dtype=work), t, eps)
        dtype = x1.dtype
        return PathSample(
            t=cast(t, dtype=torch.float32),
            x0=x0,
            x1=x1,
            xt=cast(xt, dtype=dtype),
            ut=cast(ut, dtype=dtype),
            noise=cast(eps, dtype=dtype),
            cond=cond,
        )

    def _fields(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Xt = mu_t + sigma_t eps and ut = mu_t' + sigma_t' eps (a subclass may simplify)."""
        xt = self.mu_t(x0, x1, t) + pad_t(self.sigma_t(t), x0) * eps
        ut = self.dmu_t(x0, x1, t) + pad_t(self.dsigma_t(t), x0) * eps
        return xt, ut

    def _noise(
        self,
        x0: Tensor,
        x1: Tensor,
        noise: Tensor | None,
        generator: torch.Generator | None,
        work: torch.dtype,
    ) -> Tensor:
        """The standard normal eps in the working dtype: given, or drawn from ``generator``."""
        if noise is None:
            device = generator.device if generator is not None else x1.device
            eps = torch.randn(x1.shape, generator=generator, device=device, dtype=torch.float32)
            return cast(eps, device=x1.device, dtype=work)
        check_tensor("noise", noise)
        if noise.shape != x1.shape:
            raise ValueError(
                f"noise must have the shape of x1 {tuple(x1.shape)}, got {tuple(noise.shape)}"
            )
        return cast(noise, device=x1.device, dtype=work)

    def __repr__(self) -> str:  # dataclass subclasses override this
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------- the paths
@dataclass(frozen=True, repr=True)
class LinearPath(ProbabilityPath):
    """I-CFM / OT-CFM path: mu_t = t x1 + (1 - t) x0, sigma_t = sigma, u_t = x1 - x0.

    With sigma = 0, xt is exactly x0 at t = 0 and x1 at t = 1.

    Examples:
        >>> import torch
        >>> from otcfm.paths import LinearPath
        >>> s = LinearPath(sigma=0.0).sample(torch.zeros(2, 2), torch.ones(2, 2),
        ...                                  t=torch.tensor([0.25, 0.5]))
        >>> s.xt
        tensor([[0.2500, 0.2500],
                [0.5000, 0.5000]])
        >>> s.ut
        tensor([[1., 1.],
                [1., 1.]])
    """

    sigma: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_positive("sigma", self.sigma, allow_zero=True))

    def mu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean x_t of the path: t x1 + (1 - t) x0."""
        tp = pad_t(t, x0)
        return tp * x1 + (1 - tp) * x0

    def sigma_t(self, t: Tensor) -> Tensor:
        """Standard deviation of the path: the constant sigma, shaped like ``t``."""
        return torch.full_like(t, self.sigma)

    def dmu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Time derivative of the mean: x1 - x0."""
        return x1 - x0

    def dsigma_t(self, t: Tensor) -> Tensor:
        """Time derivative of the standard deviation: zero."""
        return torch.zeros_like(t)

    def _fields(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        # The shared formulas with sigma_t = sigma and sigma_t' = 0 written out: the same
        # numbers (sigma is rounded to the working dtype either way) in 3 fewer tensor ops.
        return self.mu_t(x0, x1, t) + self.sigma * eps, x1 - x0


@dataclass(frozen=True, repr=True)
class BrownianBridgePath(ProbabilityPath):
    """SB-CFM path: the Brownian bridge of sigma W between x0 and x1.

    mu_t = t x1 + (1 - t) x0, sigma_t = sigma sqrt(t (1 - t)),
    u_t = (1 - 2t) / (2 t (1 - t)) (x - mu_t) + x1 - x0.

    The coefficient (1 - 2t) / (2t(1 - t)) is singular at t = 0 and 1, and at x = xt the noise
    term (1 - 2t) sigma eps / (2 sqrt(t(1 - t))) grows like 1/sqrt(t(1 - t)). To keep the
    regression target finite the coefficient is evaluated at t clipped to
    [t_clip, 1 - t_clip] (sigma_t itself is not clipped), so :meth:`dsigma_t` and the target
    differ from the exact ones only for t within t_clip of an endpoint. There the noise in ut
    is at most sigma (1 - 2 t_clip) / (2 sqrt(t_clip (1 - t_clip))) times eps (about 50 sigma
    for the default 1e-4), and it is exactly 0 at t = 0 and 1, where xt = x0 and x1. A uniform
    time sampler lands in the clipped region with probability 2 t_clip (2e-4 by default).
    """

    sigma: float = 1.0
    t_clip: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_positive("sigma", self.sigma, allow_zero=True))
        t_clip = check_positive("t_clip", self.t_clip)
        if not t_clip < 0.5:
            raise ValueError(f"t_clip must be in (0, 0.5), got {self.t_clip!r}")
        object.__setattr__(self, "t_clip", t_clip)

    def mu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean x_t of the path: t x1 + (1 - t) x0."""
        tp = pad_t(t, x0)
        return tp * x1 + (1 - tp) * x0

    def sigma_t(self, t: Tensor) -> Tensor:
        """Standard deviation of the bridge: sigma sqrt(t (1 - t))."""
        return self.sigma * torch.sqrt((t * (1 - t)).clamp_min(0))

    def dmu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Time derivative of the mean: x1 - x0."""
        return x1 - x0

    def dsigma_t(self, t: Tensor) -> Tensor:
        """sigma_t * (1 - 2t) / (2t(1 - t)) with the ratio taken at clipped t (see class doc)."""
        tc = t.clamp(self.t_clip, 1 - self.t_clip)
        return self.sigma_t(t) * (1 - 2 * tc) / (2 * tc * (1 - tc))

    # ------------------------------------------------------------ SF2M helpers
    def score(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Conditional score grad_x log p_t(x | x0, x1) = -(x - mu_t) / sigma_t^2; (B, ``*event``).

        At x = xt this is -eps / sigma_t; infinite where sigma_t = 0 (t = 0, 1 or sigma = 0).
        """
        var = pad_t(self.sigma_t(t), x) ** 2
        return -(x - self.mu_t(x0, x1, t)) / var

    def lambda_t(self, t: Tensor) -> Tensor:
        """SF2M score-loss weight lambda(t) = 2 sigma_t / sigma^2; (B,).

        The SF2M score term (docs/reference.md §2, :class:`otcfm.matchers.SF2M`) is

            lambda(t)^2 ||s(xt, t) - grad log p_t(xt | z)||^2
                = ||lambda(t) s(xt, t) + (2 / sigma^2) eps||^2,

        minimised by s = :meth:`score` = -eps / sigma_t: the network s learns the score
        grad_x log p_t itself (over z, the marginal score), and the SDE is sampled with that
        s as dx = [v + (sigma^2 / 2) s] dt + sigma dW (``sampling.integrate_sde``). (A loss
        ||lambda(t) s + eps||^2, as in TorchCFM's SF2M example, trains s to
        (sigma^2 / 2) grad log p_t instead, for a sampler that adds s unscaled: do not mix
        the two conventions.)
        """
        if self.sigma == 0:
            raise ValueError("lambda_t needs sigma > 0, got sigma=0.0")
        return 2 * self.sigma_t(t) / self.sigma**2


@dataclass(frozen=True, repr=True)
class GaussianTargetPath(ProbabilityPath):
    """FM path of Lipman et al. (2023): the source x0 IS the Gaussian noise.

    mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t, xt = t x1 + sigma_t x0, and
    u_t = (x1 - (1 - sigma_min) x) / (1 - (1 - sigma_min) t) = x1 - (1 - sigma_min) x0 at xt.

    The source must be standard normal N(0, I): x0 plays the role of eps, so ``noise`` is not
    accepted and ``PathSample.noise`` is x0. With ``check_source`` (default) a batch of >= 64
    samples is tested coordinate-wise: z-scores of the mean (sqrt(B) mean) and of the variance
    (Wilson-Hilferty cube-root transform of the chi-square statistic) are compared with a
    Bonferroni threshold for a family-wise false-alarm rate of 1e-6, and a warning with the
    numbers is issued when they are clearly inconsistent with N(0, 1). Not every non-Gaussian
    source is caught (a standardised one passes); the check costs one device sync per call.
    """

    sigma_min: float = 0.0
    check_source: bool = True

    def __post_init__(self) -> None:
        smin = check_positive("sigma_min", self.sigma_min, allow_zero=True)
        if smin > 1:
            raise ValueError(f"sigma_min must be in [0, 1], got {self.sigma_min!r}")
        object.__setattr__(self, "sigma_min", smin)

    def mu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean x_t of the path: t x1."""
        return pad_t(t, x1) * x1

    def sigma_t(self, t: Tensor) -> Tensor:
        """Standard deviation of the path: 1 - (1 - sigma_min) t."""
        return 1 - (1 - self.sigma_min) * t

    def dmu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Time derivative of the mean: x1."""
        return x1

    def dsigma_t(self, t: Tensor) -> Tensor:
        """Time derivative of the standard deviation: -(1 - sigma_min)."""
        return torch.full_like(t, -(1 - self.sigma_min))

    def _noise(
        self,
        x0: Tensor,
        x1: Tensor,
        noise: Tensor | None,
        generator: torch.Generator | None,
        work: torch.dtype,
    ) -> Tensor:
        if noise is not None:
            raise ValueError(
                "GaussianTargetPath uses the source x0 as its noise; pass noise=None "
                "and give the standard normal draw as x0"
            )
        if self.check_source:
            _warn_if_not_standard_normal(x0)
        return x0.to(work)


_NORMAL_CHECK_MIN_BATCH = 64
_NORMAL_CHECK_ALPHA = 1e-6


def _warn_if_not_standard_normal(x0: Tensor) -> None:
    """Warn when a batch (B >= 64) is clearly not i.i.d. N(0, 1) per coordinate."""
    b = x0.shape[0]
    if b < _NORMAL_CHECK_MIN_BATCH:
        return
    x = flat(x0.detach()).to(torch.float64)
    d, k = x.shape[1], b - 1
    mean, var = x.mean(0), x.var(0, unbiased=True)
    z_mean = mean * math.sqrt(b)
    # Wilson-Hilferty: (chi2_k / k)^(1/3) ~ N(1 - 2/(9k), 2/(9k)) accurately, tails included.
    c = 2.0 / (9.0 * k)
    z_var = (var.clamp_min(0) ** (1.0 / 3.0) - (1 - c)) / math.sqrt(c)
    p_each = _NORMAL_CHECK_ALPHA / (4 * d)  # two statistics, two sides, d coordinates
    thresh = float(torch.special.ndtri(torch.tensor(1 - p_each, dtype=torch.float64)))
    zm, zv = z_mean.abs(), z_var.abs()
    worst_m, worst_v = int(zm.argmax()), int(zv.argmax())
    if float(zm[worst_m]) <= thresh and float(zv[worst_v]) <= thresh:
        return
    i = worst_m if float(zm[worst_m]) >= float(zv[worst_v]) else worst_v
    warnings.warn(
        "GaussianTargetPath needs a standard normal source x0, but coordinate "
        f"{i} of a batch of {b} has mean {float(mean[i]):.4g} and std "
        f"{math.sqrt(float(var[i])):.4g} (|z| mean {float(zm[i]):.1f}, variance "
        f"{float(zv[i]):.1f}; threshold {thresh:.1f}). Use a N(0, I) source or another path.",
        RuntimeWarning,
        stacklevel=4,
    )


@dataclass(frozen=True, repr=True)
class TrigPath(ProbabilityPath):
    """VP-CFM / trigonometric interpolant: mu_t = cos(pi t/2) x0 + sin(pi t/2) x1, sigma const.

    u_t = (pi/2)(cos(pi t/2) x1 - sin(pi t/2) x0) (Albergo & Vanden-Eijnden).
    """

    sigma: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_positive("sigma", self.sigma, allow_zero=True))

    def mu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean x_t of the path: cos(pi t / 2) x0 + sin(pi t / 2) x1."""
        a = pad_t(t, x0) * (math.pi / 2)
        return torch.cos(a) * x0 + torch.sin(a) * x1

    def sigma_t(self, t: Tensor) -> Tensor:
        """Standard deviation of the path: the constant sigma, shaped like ``t``."""
        return torch.full_like(t, self.sigma)

    def dmu_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Time derivative of the mean: (pi / 2) (cos(pi t / 2) x1 - sin(pi t / 2) x0)."""
        a = pad_t(t, x0) * (math.pi / 2)
        return (math.pi / 2) * (torch.cos(a) * x1 - torch.sin(a) * x0)

    def dsigma_t(self, t: Tensor) -> Tensor:
        """Time derivative of the standard deviation: zero."""
        return torch.zeros_like(t)


# ---------------------------------------------------------------------- validation
def _prepare(x0: Any, x1: Any, t: Any) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """Validate a batch of pairs and times; return t (B,) in the working dtype on x's device."""
    check_pair(x0, x1)
    if not x1.is_floating_point():
        raise TypeError(f"x0 and x1 must be floating point tensors, got {x1.dtype}")
    if x0.dtype != x1.dtype:
        raise TypeError(f"x0 and x1 must share a dtype, got {x0.dtype} and {x1.dtype}")
    if x0.device != x1.device:
        raise ValueError(f"x0 and x1 must be on one device, got {x0.device} and {x1.device}")
    work = torch.float64 if x1.dtype == torch.float64 else torch.float32
    return x0, x1, _as_times(t, x1.shape[0], x1.device, work), work


def _as_times(t: Any, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """T as a (batch,) tensor of ``dtype``; accepts a number or 0-dim tensor (broadcast)."""
    if isinstance(t, bool) or not isinstance(t, (int, float, Tensor)):
        raise TypeError(f"t must be a tensor of shape ({batch},) or a number, got {t!r}")
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be real-valued, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"t must have shape ({batch},) (one time per sample), got {tuple(t.shape)}"
        )
    t = cast(t, device=device, dtype=dtype)
    lo, hi = torch.aminmax(t)  # NaN propagates to both; one reduction instead of five ops
    if not (lo.item() >= 0.0 and hi.item() <= 1.0):
        bad = ~torch.isfinite(t) | (t < 0) | (t > 1)
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"t must be finite and in [0, 1], got t[{i}] = {float(t[i])!r}")
    return t


# ---------------------------------------------------------------------- registry
PATHS: Registry[ProbabilityPath] = Registry("probability path")
PATHS.register("linear")(LinearPath)
PATHS.register("brownian_bridge")(BrownianBridgePath)
PATHS.register("gaussian_target")(GaussianTargetPath)
PATHS.register("trig")(TrigPath)
