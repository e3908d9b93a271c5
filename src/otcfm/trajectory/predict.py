"""Predictions of a trained flow.

Populations at any time, single-cell trajectories, and the leave-one-out score of docs/reference.md
§6 (push every cell of time k-1 forward one unit of index time with 100 Euler steps; W1 and MMD
against the true cells at k).

Times given as ``tau`` are index times (tau = k is the k-th observed population); functions
taking ``t`` use the observation times of a :class:`TimeSeries` and convert with
``ts.to_index``.

Every function moves cells along the probability-flow ODE by default. An SF2M fit (a drift and
a score network) can instead move them along its SDE, dx = [v + (sigma^2 / 2) s] dtau +
sigma dW (backwards in time: the time reversal), with ``sde=SDE(sigma, generator)``: Euler-
Maruyama at the same steps per unit of index time, the Brownian increments drawn from the
generator only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from otcfm.couplings import ExactOT
from otcfm.data.timeseries import TimeSeries
from otcfm.metrics import mmd, wasserstein
from otcfm.sampling import (
    DEFAULT_DIFFUSION,
    Trajectory,
    check_diffusion,
    integrate,
    integrate_sde,
)

__all__ = [
    "SDE",
    "Score",
    "evaluate_intervals",
    "evaluate_left_out",
    "interpolation_baseline",
    "predict_at",
    "predict_left_out",
    "push",
    "score",
    "trajectories",
]

Model = Callable[..., Tensor]


@dataclass(frozen=True)
class Score:
    """Distances between predicted and true cells: exact W1, MMD^2 (RBF mixture), sizes."""

    w1: float
    mmd: float
    n_pred: int
    n_true: int


def score(pred: Tensor, true: Tensor) -> Score:
    """W1 (exact EMD, Euclidean cost) and biased MMD^2 between two populations."""
    return Score(wasserstein(pred, true, p=1), mmd(pred, true), int(pred.shape[0]),
                 int(true.shape[0]))


@dataclass(frozen=True, eq=False)
class SDE:
    """Sample the bridge SDE of a drift-and-score model (SF2M) instead of its ODE.

    Diffusion ``sigma`` per unit of index time (the fit's sigma), increments from ``generator``,
    ``diffusion`` a schedule of :data:`otcfm.sampling.DIFFUSIONS` ("tapered": the noise vanishes at
    every snapshot time, a whole index time).
    """

    sigma: float
    generator: torch.Generator | None = None
    diffusion: str = DEFAULT_DIFFUSION

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma)
                and self.sigma > 0):
            raise ValueError(f"SDE sigma must be a positive number, got {self.sigma!r}")
        check_diffusion(self.diffusion)


def _check_sde(model: Model, sde: SDE | None) -> None:
    if sde is not None and not callable(getattr(model, "score", None)):
        raise ValueError("SDE sampling needs a model with a score (an SF2M fit); this one has "
                         "only a drift: use the ODE")


def _sde_leg(model: Model, x: Tensor, tau0: float, tau1: float, steps: int, sde: SDE
             ) -> Trajectory:
    return integrate_sde(model, x, sigma=sde.sigma, steps=steps, t0=tau0, t1=tau1,
                         reverse=tau1 < tau0, generator=sde.generator, save="ends",
                         diffusion=sde.diffusion)


def _steps(steps_per_unit: int, span: float) -> int:
    if isinstance(steps_per_unit, bool) or not isinstance(steps_per_unit, int) or (
        steps_per_unit < 1
    ):
        raise ValueError(f"steps_per_unit must be an int >= 1, got {steps_per_unit!r}")
    return max(1, math.ceil(steps_per_unit * abs(span) - 1e-9))


def push(
    model: Model, x: Tensor, tau0: float, tau1: float, *, steps_per_unit: int = 100,
    sde: SDE | None = None,
) -> Tensor:
    """Move cells from index time tau0 to tau1 along the flow or the SDE.

    Cells x (n, d) at index time tau0 moved along the flow to tau1 (Euler,
    ``steps_per_unit`` steps per unit of tau; backwards when tau1 < tau0), or along the SDE
    (``sde``). (n, d).
    """
    _check_sde(model, sde)
    if tau0 == tau1:
        return x.clone()
    steps = _steps(steps_per_unit, tau1 - tau0)
    if sde is not None:
        return _sde_leg(model, x, tau0, tau1, steps, sde).x_final
    traj = integrate(model, x, method="euler", steps=steps, t0=tau0, t1=tau1, save="ends",
                     energy=False)
    return traj.x_final


def trajectories(
    model: Model,
    x: Tensor,
    tau0: float,
    taus: Sequence[float],
    *,
    steps_per_unit: int = 100,
    sde: SDE | None = None,
) -> Trajectory:
    """Paths of individual cells through the index times ``taus``.

    Paths of individual cells x (n, d) from tau0 through the index times ``taus``
    (monotone, all on one side of tau0); ``xs[m]`` is the state at ``ts[m]``, ``xs[0] = x``.
    With ``sde``: stochastic paths, each leg between consecutive times its own steps.
    """
    _check_sde(model, sde)
    out = [float(tau0), *(float(t) for t in taus)]
    if len(out) < 2:
        raise ValueError("taus needs at least one time")
    span = out[-1] - out[0]
    legs = list(zip(out[:-1], out[1:], strict=True))
    if any((b - a) * span <= 0 for a, b in legs):
        raise ValueError(f"taus must move away from tau0 = {out[0]:g} monotonically, got "
                         f"{[float(f'{t:g}') for t in out[1:]]}; the start is the first point "
                         "of every path by itself: leave it out of taus")
    if sde is not None:
        xs, nfe = [x.clone()], 0
        for a, b in legs:
            leg = _sde_leg(model, xs[-1], a, b, _steps(steps_per_unit, b - a), sde)
            xs.append(leg.x_final)
            nfe += leg.nfe
        return Trajectory(xs=torch.stack(xs),
                          ts=torch.tensor(out, dtype=torch.float32, device=x.device),
                          nfe=nfe, energy=None)
    return integrate(model, x, method="euler", steps=_steps(steps_per_unit, span), times=out,
                     energy=False)


def predict_left_out(
    model: Model, ts: TimeSeries, k: int, *, steps_per_unit: int = 100, sde: SDE | None = None
) -> Tensor:
    """Every cell of time k-1 pushed forward one unit of index time: the prediction at k."""
    if not 0 < k < ts.n_times:
        raise ValueError(f"k must be in [1, {ts.n_times - 1}], got {k!r}")
    return push(model, ts.at(k - 1), k - 1, k, steps_per_unit=steps_per_unit, sde=sde)


def evaluate_left_out(
    model: Model,
    ts: TimeSeries,
    k: int,
    *,
    steps_per_unit: int = 100,
    reference: Tensor | None = None,
    sde: SDE | None = None,
) -> Score:
    """Leave-one-out score: prediction at k against the true cells at k (or ``reference``)."""
    pred = predict_left_out(model, ts, k, steps_per_unit=steps_per_unit, sde=sde)
    return score(pred, ts.at(k) if reference is None else reference)


def evaluate_intervals(
    model: Model, ts: TimeSeries, *, steps_per_unit: int = 100
) -> dict[int, Score]:
    """For every k >= 1: cells of k-1 pushed to k against the cells at k (fit quality)."""
    return {k: evaluate_left_out(model, ts, k, steps_per_unit=steps_per_unit)
            for k in range(1, ts.n_times)}


def interpolation_baseline(
    ts: TimeSeries, k: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Linear interpolation at k of the exact OT pairing between all cells of k-1 and k+1.

    Every cell of k-1 is paired (one-to-one for equal populations, else j ~ pi(j | i) of the
    exact plan) and the midpoint of each pair is returned, (n_{k-1}, d): the prediction of
    displacement interpolation with no model, scored like the flows.
    """
    if not 0 < k < ts.n_times - 1:
        raise ValueError(f"k must be an intermediate index in [1, {ts.n_times - 2}], got {k!r}")
    x0, x1 = ts.at(k - 1), ts.at(k + 1)
    coupling = ExactOT() if x0.shape[0] == x1.shape[0] else ExactOT(sampling="rows")
    pair = coupling(x0, x1, generator=generator)
    return 0.5 * (pair.x0 + pair.x1)


def predict_at(
    model: Model,
    ts: TimeSeries,
    t: float,
    *,
    start: int | None = None,
    steps_per_unit: int = 100,
    sde: SDE | None = None,
) -> Tensor:
    """The predicted population at observation time ``t``.

    The population at observation time ``t`` (any real value): the cells of observed time
    index ``start`` (default: the last observed time at or before t, or the first one when t
    precedes every observation) pushed along the flow.
    """
    tau = float(ts.to_index(t))
    if start is None:
        start = max(0, min(int(math.floor(tau + 1e-9)), ts.n_times - 1))
    if not 0 <= start < ts.n_times:
        raise ValueError(f"start must be a time index in [0, {ts.n_times - 1}], got {start!r}")
    return push(model, ts.at(start), float(start), tau, steps_per_unit=steps_per_unit,
                sde=sde)
