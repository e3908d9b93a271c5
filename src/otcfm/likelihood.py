"""Log-likelihoods of data under a trained flow, by the instantaneous change of variables.

A CFM model is a continuous normalizing flow (Chen et al. 2018; Tong et al., Sec. 2): the
ODE dx/dt = v(x, t) carries the source density p0 at t = 0 to the model density p1 at t = 1,
and along a solution

    d/dt log p_t(x_t) = -div v(x_t, t),   so   log p1(x1) = log p0(x0) - int_0^1 div v(x_t, t) dt.

:func:`log_likelihood` integrates x from t = 1 back to t = 0 jointly with a(t), da/dt =
div v(x_t, t), a(1) = 0; then a(0) = -int_0^1 div v dt and log p1(x) = log p0(x0) + a(0).

The divergence (:func:`divergence`) is the trace of the Jacobian of v with respect to the
flattened event (all of its C x H x W entries for an image):

- ``"exact"``: D vector-Jacobian products (autograd), one per coordinate: exact for any event
  shape, O(D) backward passes per evaluation; the batch is processed in chunks of
  ``chunk_size`` samples to bound memory.
- ``"hutchinson"``: Hutchinson's estimator E[eps^T J eps] with ``n_probes`` probes eps
  (Rademacher or Gaussian) drawn ONCE per solve from ``generator`` and held fixed along the
  path, so the right-hand side is a deterministic function of (t, x) and adaptive solvers
  work as usual (Grathwohl et al. 2019, FFJORD); one backward pass per probe, batched over the
  samples. Unbiased for log p1 in expectation over the probes.

:func:`bits_per_dim` turns log p1 of data scaled to [-1, 1] into bits per dimension of the
discrete data (uniform dequantization), optionally through a logit transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from otcfm.sampling import SOLVERS, integrate

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "Likelihood",
    "bits_per_dim",
    "divergence",
    "draw_probes",
    "log_likelihood",
    "logit_log_det",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class Likelihood:
    """The result of :func:`log_likelihood` for a batch of B points.

    logp: (B,) log p1(x) under the flow. x0: (B, ``*event``) the source points the flow maps to
    x (the ODE solved back to t = 0). source_logp: (B,) log p0(x0). delta: (B,) a(0) =
    -int_0^1 div v dt, so logp = source_logp + delta. nfe: evaluations of the augmented field
    (each takes one model call and the divergence's backward passes), summed over chunks.
    """

    logp: Tensor
    x0: Tensor
    source_logp: Tensor
    delta: Tensor
    nfe: int


def draw_probes(
    shape: Sequence[int], n_probes: int, *, probe: str = "rademacher",
    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``n_probes`` Hutchinson probes of ``shape``.

    ``n_probes`` Hutchinson probes of ``shape`` (B, ``*event``), drawn from ``generator`` (on
    the CPU, then moved): Rademacher (+-1 with equal odds) or standard Gaussian; both have
    E[eps eps^T] = I. Returns (n_probes, ``*shape``).
    """
    _check_choice("probe", probe, PROBES)
    _check_count("n_probes", n_probes)
    size = (int(n_probes), *(int(s) for s in shape))
    if probe == "rademacher":
        eps = torch.randint(0, 2, size, generator=generator).mul_(2).sub_(1)
    else:
        eps = torch.randn(size, generator=generator, dtype=torch.float64)
    return eps.to(device=device, dtype=dtype)


def divergence(
    v: Tensor, x: Tensor, *, probes: Tensor | None = None, create_graph: bool = False
) -> Tensor:
    """Exact divergence tr(dv/dx) per sample, (B,), by automatic differentiation.

    Div v = tr(dv/dx) per sample, (B,), for ``v = f(x)`` computed from ``x`` (B, ``*event``)
    with ``x.requires_grad``.

    Without ``probes``: exact, one vector-Jacobian product per coordinate of the flattened
    event (D of them). With ``probes`` (K, B, ``*event``): Hutchinson's estimate, the mean over the
    K probes of eps^T (dv/dx) eps, one vector-Jacobian product per probe.
    """
    if v.shape != x.shape:
        raise ValueError(f"v must have x's shape {tuple(x.shape)}, got {tuple(v.shape)}")
    if not x.requires_grad:
        raise ValueError("x must require grad (v computed from x under torch.enable_grad())")
    batch = x.shape[0]
    if probes is not None:
        if probes.shape[1:] != x.shape:
            raise ValueError(f"probes must have shape (K, *{tuple(x.shape)}), got "
                             f"{tuple(probes.shape)}")
        total = torch.zeros(batch, dtype=v.dtype, device=v.device)
        k = probes.shape[0]
        for i, eps in enumerate(probes):
            (vjp,) = torch.autograd.grad(v, x, eps, retain_graph=create_graph or i < k - 1,
                                         create_graph=create_graph)
            total = total + (vjp * eps).reshape(batch, -1).sum(dim=1)
        return total / k
    flat_v = v.reshape(batch, -1)
    d = flat_v.shape[1]
    total = torch.zeros(batch, dtype=v.dtype, device=v.device)
    for i in range(d):
        (g,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=create_graph or i < d - 1,
                                   create_graph=create_graph)
        total = total + g.reshape(batch, -1)[:, i]
    return total


class _Augmented:
    """The field of (x, a): dx/dt = v(x, t), da/dt = div v(x, t), on a flat state (B, D + 1)."""

    def __init__(self, model: Callable[..., Tensor], event: tuple[int, ...],
                 probes: Tensor | None) -> None:
        self.model, self.event, self.probes = model, event, probes

    def __call__(self, z: Tensor, t: Tensor, **cond: Any) -> Tensor:
        batch = z.shape[0]
        with torch.enable_grad():
            x = z[:, :-1].detach().reshape(batch, *self.event).requires_grad_(True)
            v = self.model(x, t, **cond)
            if not isinstance(v, Tensor) or v.shape != x.shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"model must return a velocity of shape {tuple(x.shape)}, "
                                 f"got {got}")
            div = divergence(v, x, probes=self.probes)
        return torch.cat([v.detach().reshape(batch, -1), div.detach()[:, None]], dim=1)


def log_likelihood(
    model: Callable[..., Tensor],
    x: Tensor,
    *,
    source: Any = "gaussian",
    divergence: str = "exact",  # noqa: A002 - the name users pass
    n_probes: int = 1,
    probe: str = "rademacher",
    solver: str = "dopri5",
    steps: int = 100,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    **cond: Any,
) -> Likelihood:
    """Log p1(x) of points or images ``x`` (B, ``*event``) under the flow of ``model``.

    Args:
        model: the velocity field ``model(x, t, **cond)`` (t in [0, 1], x at t = 1 is data).
        x: (B, ``*event``) floating-point points or images.
        source: "gaussian" (N(0, I) over all D coordinates) or any object with
            ``log_prob(x0)`` returning (B,) (e.g. a ``torch.distributions`` distribution with
            event shape).
        divergence: "exact" or "hutchinson" (``n_probes`` probes of kind ``probe``, drawn once
            per solve from ``generator``: the same generator state gives the same answer, also
            inside adaptive solvers).
        n_probes: number of Hutchinson probes.
        probe: kind of Hutchinson probe, "rademacher" or "gaussian".
        solver: any of :data:`otcfm.sampling.SOLVERS`; fixed-step solvers take ``steps``
            steps, adaptive ones ``atol`` / ``rtol`` (on the joint state).
        steps: number of steps of a fixed-step solver.
        atol: absolute tolerance of an adaptive solver.
        rtol: relative tolerance of an adaptive solver.
        generator: source of the Hutchinson probes (only with ``divergence="hutchinson"``).
        chunk_size: solve the batch in chunks of this many samples (default: all at once for
            Hutchinson; for exact divergences max(1, 4096 // D) for events of D coordinates,
            so 2-D points go at once and CIFAR-10 images one by one); each chunk is its own
            solve, so an adaptive solver's steps depend on the chunk.
        **cond: per-sample conditions for the model (e.g. ``y=labels``).

    Returns:
        A :class:`Likelihood`: log p1(x), the source points, their log p0, the change of
        log-density and the NFE.

    Examples:
        The field v(x, t) = log(2) x doubles N(0, I) into N(0, 4 I), whose log-density at
        the origin of the plane is -log(8 pi) = -3.2242:

        >>> import math
        >>> import torch
        >>> from otcfm.likelihood import log_likelihood
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> out = log_likelihood(lambda x, t: math.log(2) * x, x)
        >>> out.logp.round(decimals=3)
        tensor([-3.2240, -3.7240])
        >>> out.delta.round(decimals=3)  # -log det of the doubling in 2-D: -2 log 2
        tensor([-1.3860, -1.3860])
    """
    _check_choice("divergence", divergence, DIVERGENCES)
    _check_choice("solver", solver, SOLVERS)
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(f"x must be a non-empty floating tensor (B, *event), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if source != "gaussian" and not callable(getattr(source, "log_prob", None)):
        raise TypeError(f"source must be 'gaussian' or have a log_prob method, got {source!r}")
    batch, event = x.shape[0], tuple(x.shape[1:])
    if chunk_size is None:
        chunk_size = batch if divergence == "hutchinson" else max(1, 4096 // x[0].numel())
    _check_count("chunk_size", chunk_size)
    probes = None
    if divergence == "hutchinson":
        probes = draw_probes(x.shape, n_probes, probe=probe, generator=generator,
                             dtype=x.dtype, device=x.device)
    elif generator is not None or n_probes != 1:
        raise ValueError("n_probes and generator apply to divergence='hutchinson'")
    out_x0, out_delta, nfe = [], [], 0
    for lo in range(0, batch, chunk_size):
        part = slice(lo, min(batch, lo + chunk_size))
        field = _Augmented(model, event, None if probes is None else probes[:, part])
        z1 = torch.cat([x[part].detach().reshape(part.stop - lo, -1),
                        x.new_zeros(part.stop - lo, 1)], dim=1)
        sub = {k: (v[part] if isinstance(v, Tensor) else v) for k, v in cond.items()}
        traj = integrate(field, z1, method=solver, steps=steps, t0=1.0, t1=0.0, atol=atol,
                         rtol=rtol, save="ends", energy=False, cond=sub)
        z0 = traj.x_final
        out_x0.append(z0[:, :-1].reshape(part.stop - lo, *event))
        out_delta.append(z0[:, -1])
        nfe += traj.nfe
    x0, delta = torch.cat(out_x0), torch.cat(out_delta)
    if source == "gaussian":
        d = x0[0].numel()
        source_logp = -0.5 * x0.reshape(batch, -1).pow(2).sum(dim=1) - 0.5 * d * math.log(
            2 * math.pi)
    else:
        source_logp = source.log_prob(x0)
        if not isinstance(source_logp, Tensor) or source_logp.shape != (batch,):
            raise ValueError(f"source.log_prob(x0) must return shape ({batch},), got "
                             f"{getattr(source_logp, 'shape', type(source_logp).__name__)}: "
                             "give the source an event shape equal to x's")
    return Likelihood(logp=source_logp + delta, x0=x0, source_logp=source_logp, delta=delta,
                      nfe=nfe)


def logit_log_det(x: Tensor, *, alpha: float = 0.05) -> Tensor:
    """Log-determinant per sample of the logit transform of data x in [-1, 1].

    Log ``|det dy/dx|`` per sample of the logit transform of data x in [-1, 1]:
    u = (x + 1) / 2 in [0, 1], y = logit(alpha + (1 - 2 alpha) u) (Dinh et al. 2017's
    transform). A flow trained on y gives log p(x) = log p(y) + this.
    """
    if not 0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
    u = alpha + (1 - 2 * alpha) * (x.double() + 1) / 2
    per = math.log((1 - 2 * alpha) / 2) - torch.log(u) - torch.log1p(-u)
    return per.reshape(x.shape[0], -1).sum(dim=1).to(x.dtype)


def bits_per_dim(
    logp: Tensor,
    event_shape: Sequence[int],
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    levels: int = 256,
    log_det: Tensor | None = None,
) -> Tensor:
    """Bits per dimension, (B,), of discrete data from the density of its continuous version.

    Bits per dimension, (B,), of discrete data from the density ``logp`` of its continuous
    version (uniform dequantization).

    Data with ``levels`` values evenly spaced over ``data_range`` (8-bit pixels p scaled to
    [-1, 1] by p / 127.5 - 1, as the image loaders do: spacing w = 2 / 255) are dequantized by
    adding u ~ U[0, w) per coordinate; then P(p) >= exp(E_u log p(x + u) + D log w) (Jensen),
    and bits/dim = -(log p(x) + D log w) / (D log 2), D the size of ``event_shape``. For
    8-bit data in [-1, 1] that is -log p / (D log 2) + log2(127.5), i.e. 6.994 bits plus the
    density term. ``log_det``: add a per-sample log-determinant first, e.g.
    :func:`logit_log_det` when the flow was trained on logit-transformed data.
    """
    d = math.prod(int(s) for s in event_shape)
    if d < 1:
        raise ValueError(f"event_shape must have at least one coordinate, got {event_shape}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo or isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"need data_range low < high and levels >= 2, got {data_range}, "
                         f"{levels}")
    width = (hi - lo) / (levels - 1)
    total = logp.double() + (0.0 if log_det is None else log_det.double())
    return (-(total + d * math.log(width)) / (d * math.log(2))).to(logp.dtype)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")

