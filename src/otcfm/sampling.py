"""ODE integration of a learned velocity field, with exact NFE counts and path energy.

``integrate(model, x0, method=..., steps=...)`` solves ``dx/dt = model(x, t, **cond)`` from
``t0`` to ``t1`` (forward, or backward in time when ``t0 > t1``) and returns a frozen
:class:`Trajectory`. Fixed-step Runge-Kutta schemes (euler, midpoint, heun, rk4) are written
here; adaptive ones (dopri5, dopri8, bosh3, adaptive_heun) come from ``torchdiffeq.odeint``.

Calling convention seen by the model: ``x`` of the caller's shape and dtype (``x0.dtype``) and
per-sample times ``t`` of shape (B,) -- float32, or float64 when ``x0`` is float64 -- never a
Python scalar. Internally the state is kept in float32 (float64 if ``x0`` is float64) so that
bf16/fp16 inputs do not lose the small increments ``dt * v``; the saved states are returned in
``x0.dtype`` (pass ``x0.float()`` to get float32 states).

Path energy (docs/reference.md §3): ``E = integral ||v(t, x_t)||^2 |dt|`` per sample, summed
over every trailing coordinate. Fixed-step methods use their own quadrature weights on the
evaluations made anyway; adaptive methods integrate it as an extra ODE component.

``integrate_sde(drift, x0, sigma=..., score=...)`` samples the SDE of a Schrodinger bridge
learned by SF2M (docs/reference.md §2), dx = [v + (sigma^2/2) s] dt + sigma dW from t = 0 to
1, or its time reversal dx = [v - (sigma^2/2) s] dt + sigma dW integrated from t = 1 down to 0
(dt < 0). All three (forward SDE, reverse SDE and the probability-flow ODE dx = v dt, which
is ``integrate(drift, ...)``) share the marginals p_t when s = grad log p_t. So does every
SDE dx = [v + (g(t)^2/2) s] dt + g(t) dW: :data:`DIFFUSIONS` holds the schedules g(t) (the
bridge's constant sigma, and one tapered to 0 at the snapshot times). The SDE schemes are in
:data:`SDE_SOLVERS`; the Brownian increments come from the ``generator`` only.

:class:`Guided` wraps a class-conditional model for classifier-free guidance,
v = (1 + w) v(x | y) - w v(x | null), one batched model call per evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._utils import check_cond, check_positive, check_tensor, flat, randn_like

__all__ = [
    "ADAPTIVE_SOLVERS",
    "DEFAULT_DIFFUSION",
    "DIFFUSIONS",
    "FIXED_STEP_SOLVERS",
    "Diffusion",
    "check_diffusion",
    "Guided",
    "SDE_SOLVERS",
    "SOLVERS",
    "Trajectory",
    "integrate",
    "integrate_sde",
]

# Butcher tableaux of the explicit fixed-step schemes: (c, a, b); stage i is evaluated at
# t + c[i] dt and x + dt * sum_j a[i][j] k_j; the step is x + dt * sum_i b[i] k_i.
_TABLEAUX: dict[str, tuple[tuple[float, ...], tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "rk4": (
        (0.0, 0.5, 0.5, 1.0),
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    ),
}
FIXED_STEP_SOLVERS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4")
ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
SOLVERS: tuple[str, ...] = FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS
_SAVE = ("all", "ends")


@dataclass(frozen=True)
class Trajectory:
    """Result of :func:`integrate`.

    Attributes:
        xs: (T, B, ``*event``) states at the saved times, in ``x0.dtype``.
        ts: (T,) float32 saved times (``ts[0]`` is the start time).
        nfe: exact number of model evaluations that ran (including rejected adaptive steps);
            for :func:`integrate_sde`, evaluations of the SDE drift (each one drift call plus,
            with a score, one score call).
        energy: (B,) float32 path energy ``integral ||v||^2 |dt|`` per sample, or None (always
            None for SDEs).
    """

    xs: Tensor
    ts: Tensor
    nfe: int
    energy: Tensor | None

    @property
    def x_final(self) -> Tensor:
        """State at the last saved time, (B, ``*event``)."""
        return self.xs[-1]


# --------------------------------------------------------------------------- model wrapper
class _Field:
    """Calls ``model(x, t, **cond)`` with the library's convention and counts evaluations."""

    def __init__(self, model: Callable[..., Tensor], x0: Tensor, state_dtype: torch.dtype,
                 cond: Mapping[str, Any]) -> None:
        self.model = model
        self.shape = x0.shape
        self.x_dtype = x0.dtype
        self.state_dtype = state_dtype
        self.t_dtype = torch.float64 if state_dtype == torch.float64 else torch.float32
        self.device = x0.device
        self.cond = dict(cond)
        self.nfe = 0
        self.t_lo, self.t_hi = -math.inf, math.inf

    def clamp_times(self, times: Sequence[float]) -> None:
        """Clamp the model's time to [min(times), max(times)].

        Never evaluate the model outside [min(times), max(times)] (the adaptive solvers'
        initial-step probe may ask for a time past the end).
        """
        self.t_lo, self.t_hi = min(times), max(times)

    def __call__(self, t: float | Tensor, x: Tensor) -> Tensor:
        """Velocity at scalar time ``t`` and state ``x`` (B, ``*event``), in the state dtype."""
        batch = self.shape[0]
        if isinstance(t, Tensor):
            tt = t.detach().reshape(()).to(device=self.device, dtype=self.t_dtype)
            tt = tt.clamp(self.t_lo, self.t_hi).expand(batch)
        else:
            tv = min(max(float(t), self.t_lo), self.t_hi)
            tt = torch.full((batch,), tv, device=self.device, dtype=self.t_dtype)
        v = self.model(x.to(self.x_dtype), tt.contiguous(), **self.cond)
        self.nfe += 1
        if not isinstance(v, Tensor) or v.shape != self.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"model must return a velocity of the state's shape {tuple(self.shape)}, got {got}"
            )
        return v.to(self.state_dtype)


def _sq_norm(v: Tensor) -> Tensor:
    """Per-sample squared norm over all trailing coordinates, (B,)."""
    return flat(v).pow(2).sum(dim=1)


# --------------------------------------------------------------------------- validation
def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(SOLVERS)}")
    return method


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _check_time(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _output_times(times: Any, t0: float, t1: float) -> list[float] | None:
    """Validate ``times``: >= 2 finite values, strictly monotone. None if not given."""
    if times is None:
        if t0 == t1:
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
        return None
    if isinstance(times, Tensor):
        vals = [float(v) for v in times.detach().reshape(-1).cpu().tolist()]
    elif isinstance(times, Sequence) or hasattr(times, "__iter__"):
        vals = [_check_time("times[i]", v) for v in times]
    else:
        raise TypeError(f"times must be a 1-D sequence or tensor, got {type(times).__name__}")
    if len(vals) < 2:
        raise ValueError(f"times needs at least 2 values (start and end), got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"times must be finite, got {vals}")
    diffs = [b - a for a, b in zip(vals[:-1], vals[1:], strict=True)]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError(f"times must be strictly increasing or strictly decreasing, got {vals}")
    return vals


def _state_dtype(x0: Tensor) -> torch.dtype:
    return torch.float64 if x0.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- fixed step
def _fixed_grid(t0: float, t1: float, steps: int, times: list[float] | None) -> list[float]:
    """Uniform grid of ``steps`` steps; with ``times``, its union with the requested times."""
    if times is None:
        return [t0 + (t1 - t0) * k / steps for k in range(steps)] + [t1]
    a, b = times[0], times[-1]
    grid = [a + (b - a) * k / steps for k in range(steps)] + [b]
    merge = 1e-9 * abs(b - a)
    pts = sorted(set(grid) | set(times), reverse=b < a)
    out: list[float] = []
    for p in pts:  # drop grid points that nearly coincide with a requested time (no tiny steps)
        if out and abs(p - out[-1]) <= merge and not (p in times and out[-1] in times):
            if p in times:
                out[-1] = p
            continue
        out.append(p)
    return out


def _rk_step(field: _Field, name: str, t: float, dt: float, x: Tensor,
             energy: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One explicit Runge-Kutta step; accumulates ``|dt| * sum_i b_i ||k_i||^2`` into energy."""
    c, a, b = _TABLEAUX[name]
    ks: list[Tensor] = []
    for ci, ai in zip(c, a, strict=True):
        xi = x
        for aij, kj in zip(ai, ks, strict=True):
            if aij != 0.0:
                xi = xi + (dt * aij) * kj
        ks.append(field(t + ci * dt, xi))
    x_new = x
    for bi, ki in zip(b, ks, strict=True):
        if bi != 0.0:
            x_new = x_new + (dt * bi) * ki
    if energy is not None:
        for bi, ki in zip(b, ks, strict=True):
            if bi != 0.0:
                energy = energy + (abs(dt) * bi) * _sq_norm(ki)
    return x_new, energy


def _integrate_fixed(field: _Field, x: Tensor, method: str, grid: list[float],
                     keep: list[bool], want_energy: bool) -> tuple[list[Tensor], Tensor | None]:
    energy = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) if want_energy else None
    saved = [x] if keep[0] else []
    for k in range(len(grid) - 1):
        x, energy = _rk_step(field, method, grid[k], grid[k + 1] - grid[k], x, energy)
        if keep[k + 1]:
            saved.append(x)
    return saved, energy


# --------------------------------------------------------------------------- adaptive
def _integrate_adaptive(field: _Field, x: Tensor, method: str, out_times: list[float],
                        want_energy: bool, atol: float, rtol: float,
                        options: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
    from torchdiffeq import odeint  # the only consumer; keeps import of this module cheap

    t = torch.tensor(out_times, dtype=torch.float64, device=x.device)
    opts = dict(options)
    if "step_t" not in opts and "jump_t" not in opts:
        # land a step exactly on the end time: no overshoot past it (models may be undefined
        # there) and the final state is a genuine step, not an interpolant
        opts["step_t"] = t[-1:]
    sign = 1.0 if out_times[-1] > out_times[0] else -1.0

    def augmented(tt: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        v = field(tt, state[0])
        return v, sign * _sq_norm(v)

    try:
        if not want_energy:
            return odeint(field, x, t, method=method, atol=atol, rtol=rtol, options=opts), None
        e0 = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        xs, es = odeint(augmented, (x, e0), t, method=method, atol=atol, rtol=rtol, options=opts)
    except AssertionError as err:  # torchdiffeq reports step-count/underflow failures by assert
        raise RuntimeError(
            f"adaptive solver {method!r} failed after {field.nfe} evaluations: {err}"
        ) from err
    return xs, es[-1]


# --------------------------------------------------------------------------- public entry
def integrate(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    method: str = "euler",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    save: str = "all",
    times: Sequence[float] | Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    energy: bool = True,
    grad: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Trajectory:
    """Solve ``dx/dt = model(x, t, **cond)``, ``x(t0) = x0`` (B, ``*event``) up to ``t1``.

    Args:
        model: the velocity field, called as ``model(x, t, **cond)``.
        x0: (B, ``*event``) floating-point start states at ``t0``.
        method: one of :data:`SOLVERS`. Fixed-step methods take ``steps`` uniform steps (NFE =
            steps x stages: euler 1, midpoint 2, heun 2, rk4 4); adaptive ones (torchdiffeq)
            use ``atol``/``rtol`` and ``options`` (passed to ``torchdiffeq.odeint``, e.g.
            ``{"max_num_steps": 10_000}``). ``t0 > t1`` integrates backwards in time.
        steps: number of uniform steps of a fixed-step method.
        t0: start time.
        t1: end time.
        atol: absolute tolerance of an adaptive method.
        rtol: relative tolerance of an adaptive method.
        save: "all" keeps ``steps + 1`` evenly spaced states; "ends" keeps the first and last.
            Adaptive methods read intermediate states from torchdiffeq's dense-output
            interpolant (no extra NFE; 4th order, so less accurate than dopri8's steps); their
            last state is always a genuine step (``step_t`` at the end time, unless options set
            step_t/jump_t), and the model is never evaluated outside the integration interval.
        times: explicit output times (strictly monotone, >= 2 values); overrides t0, t1 and
            save. Fixed-step methods then step on the uniform ``steps`` grid merged with
            ``times``.
        cond: per-sample conditions passed to the model as keyword arguments.
        energy: also return the path energy per sample (see module docstring).
        grad: if False (default) the model runs under ``torch.no_grad()``.
        options: extra options of an adaptive method, passed to ``torchdiffeq.odeint``.

    Returns:
        A :class:`Trajectory` of the saved states, their times, the NFE and the path energy.

    dtypes: the model gets x in ``x0.dtype`` and t as (B,) float32 (float64 if x0 is float64);
    the state is accumulated in float32 (float64) and ``xs`` is returned in ``x0.dtype``;
    ``ts`` and ``energy`` are float32.

    Examples:
        A constant field moves every point by (1, 1) over unit time, with energy ||v||^2 = 2:

        >>> import torch
        >>> from otcfm.sampling import integrate
        >>> x0 = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
        >>> traj = integrate(lambda x, t: torch.ones_like(x), x0, method="euler", steps=10)
        >>> traj.xs.shape, traj.nfe
        (torch.Size([11, 2, 2]), 10)
        >>> traj.x_final.round(decimals=4)
        tensor([[1., 2.],
                [3., 0.]])
        >>> traj.energy.round(decimals=4)
        tensor([2., 2.])

        RK4 on dx/dt = -x from x = 1 reaches exp(-1) = 0.3679 with 4 evaluations a step:

        >>> traj = integrate(lambda x, t: -x, torch.ones(1, 1), method="rk4", steps=20)
        >>> traj.nfe, round(float(traj.x_final), 4)
        (80, 0.3679)
    """
    method = _check_method(method)
    steps = _check_steps(steps)
    check_tensor("x0", x0)
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    t0 = _check_time("t0", t0)
    t1 = _check_time("t1", t1)
    atol = _check_time("atol", atol)
    rtol = _check_time("rtol", rtol)
    if atol <= 0 or rtol <= 0:
        raise ValueError(f"atol and rtol must be > 0, got atol={atol}, rtol={rtol}")
    if save not in _SAVE:
        raise ValueError(f"save must be one of {_SAVE}, got {save!r}")
    if cond is None:
        cond = {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a dict of per-sample conditions, got {type(cond).__name__}")
    check_cond(dict(cond), x0.shape[0])
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    if options and method in FIXED_STEP_SOLVERS:
        raise ValueError(
            f"options are only used by adaptive methods {ADAPTIVE_SOLVERS}; "
            f"method {method!r} got {sorted(options)}"
        )
    requested = _output_times(times, t0, t1)

    state_dtype = _state_dtype(x0)
    field = _Field(model, x0, state_dtype, cond)
    x = x0.detach().to(state_dtype) if not grad else x0.to(state_dtype)
    with nullcontext() if grad else torch.no_grad():
        if method in FIXED_STEP_SOLVERS:
            grid = _fixed_grid(t0, t1, steps, requested)
            if requested is not None:
                out_times = requested
                keep = [p in requested for p in grid]
            elif save == "all":
                out_times, keep = grid, [True] * len(grid)
            else:
                out_times = [grid[0], grid[-1]]
                keep = [k in (0, len(grid) - 1) for k in range(len(grid))]
            saved, e = _integrate_fixed(field, x, method, grid, keep, energy)
            xs = torch.stack(saved)
        else:
            if requested is not None:
                out_times = requested
            elif save == "all":
                out_times = _fixed_grid(t0, t1, steps, None)
            else:
                out_times = [t0, t1]
            field.clamp_times(out_times)
            xs, e = _integrate_adaptive(field, x, method, out_times, energy, atol, rtol, options)

    _warn_nonfinite(xs, e)
    return Trajectory(
        xs=xs.to(x0.dtype),
        ts=torch.tensor(out_times, dtype=torch.float32, device=x0.device),
        nfe=field.nfe,
        energy=None if e is None else e.to(torch.float32),
    )


def _warn_nonfinite(xs: Tensor, energy: Tensor | None) -> None:
    bad = int((~torch.isfinite(xs)).sum())
    if bad:
        warnings.warn(
            f"integration produced {bad} non-finite value(s) out of {xs.numel()} saved "
            "states; the velocity field may blow up (try smaller steps or an adaptive method)",
            RuntimeWarning,
            stacklevel=3,
        )
    elif energy is not None and not bool(torch.isfinite(energy).all()):
        warnings.warn(
            f"path energy overflowed for {int((~torch.isfinite(energy)).sum())} sample(s)",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- guidance
class Guided(torch.nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) of a class-conditional velocity field.

    The guided field is::

        v_w(x, t | y) = (1 + w) v(x, t | y) - w v(x, t | null),

    a model in the library's convention, ``Guided(model, scale=w)(x, t, y=labels)``, to pass
    to :func:`integrate` (``integrate(Guided(model, 2.0), x0, cond={"y": labels})``).

    ``model`` was trained with condition dropout (``FlowMatcher(cond_dropout=0.1,
    null_class=K)``), so it knows v(x | y) and the unconditional v(x | null) under the label
    ``null_class`` (default: ``model.null_class``, K for a model built with ``num_classes=K``).
    ``scale`` w >= 0 (this convention's w; w = 0 is the conditional model itself, larger w
    pushes samples toward their class; for unconditional samples pass ``y`` = null to the
    model directly). Other conditions are passed to both halves unchanged.

    Each evaluation is ONE model call on a doubled batch: ``cat([x, x])``, ``cat([t, t])`` and
    labels ``cat([y, full(null)])``; the first half gives v(x | y), the second v(x | null).
    With w = 0 the model is called once on the batch as it is and its output returned as is.
    :func:`integrate` counts one NFE per evaluation of this field.
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        scale: float,
        *,
        null_class: int | None = None,
        key: str = "y",
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        try:
            w = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"guidance scale must be a number, got {scale!r}") from None
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(
                f"guidance scale must be finite and >= 0 (v = (1 + w) v(x | y) - w v(x | null); "
                f"0 = the conditional model), got {scale!r}"
            )
        if null_class is None:
            null_class = getattr(model, "null_class", None)
            if null_class is None:
                raise ValueError(
                    "guidance needs the model's null class: pass null_class=K (the label its "
                    "condition dropout used) or use a model with a null_class attribute"
                )
        if isinstance(null_class, bool) or not isinstance(null_class, int) or null_class < 0:
            raise ValueError(f"null_class must be an int >= 0, got {null_class!r}")
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"key must be a condition name such as 'y', got {key!r}")
        self.model = model
        self.scale = w
        self.null_class = null_class
        self.key = key

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """Guided velocity at (x, t); ``cond[key]`` must hold integer class labels of shape (B,)."""
        key, n = self.key, x.shape[0]
        y = cond.get(key)
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() \
                or y.dtype == torch.bool or tuple(y.shape) != (n,):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else repr(y)
            raise ValueError(
                f"guidance needs class labels {key}= as an integer tensor of shape ({n},) "
                f"(e.g. integrate(model, x0, cond={{{key!r}: labels}})), got {got}"
            )
        if self.scale == 0:
            return self.model(x, t, **cond)
        both = {k: _doubled(v, n) for k, v in cond.items() if k != key}
        both[key] = torch.cat([y, torch.full_like(y, self.null_class)])
        v = self.model(torch.cat([x, x]), torch.cat([t, t]), **both)
        if not isinstance(v, Tensor) or v.shape[:1] != (2 * n,):
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"model must return a velocity of batch {2 * n}, got {got}")
        w = self.scale
        return (1.0 + w) * v[:n] - w * v[n:]

    def extra_repr(self) -> str:
        """The guidance settings shown in the module's repr."""
        return f"scale={self.scale!r}, null_class={self.null_class!r}, key={self.key!r}"


def _doubled(value: Any, n: int) -> Any:
    """Repeat a per-sample condition for both halves of the guided batch.

    A per-sample condition (batch ``n``) repeated for both halves of the guided batch;
    anything else (a setting, not per sample) as it is.
    """
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return torch.cat([value, value])
    if isinstance(value, Mapping):
        return {k: _doubled(v, n) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) == n:
        return type(value)([*value, *value])
    return value


# --------------------------------------------------------------------------- SDEs
@dataclass(frozen=True)
class Diffusion:
    """A diffusion schedule g(t) of the SDE family that shares the flow's marginals.

    A diffusion schedule g(t) = sigma * sqrt(rate(t)) of the SDE family
    dx = [v + (g(t)^2 / 2) s] dt + g(t) dW, all of whose members have the marginals p_t of the
    flow v when s = grad log p_t.

    Attributes:
        rate: g(t)^2 / sigma^2 at time t.
        integral: int_0^t rate(r) dr, so that the Brownian increment over a step [t, t + dt] has
            the exact variance sigma^2 ``|integral(t + dt) - integral(t)|`` per coordinate.
    """

    rate: Callable[[float], float]
    integral: Callable[[float], float]


def _tapered_rate(t: float) -> float:
    u = t - math.floor(t)
    return 4.0 * u * (1.0 - u)


def _tapered_integral(t: float) -> float:
    k = math.floor(t)
    u = t - k
    return k * (2.0 / 3.0) + 2.0 * u * u - (4.0 / 3.0) * u**3


DEFAULT_DIFFUSION = "constant"
"""The schedule of :func:`integrate_sde` and of every SDE sampler built on it."""
DIFFUSIONS: dict[str, Diffusion] = {
    "constant": Diffusion(rate=lambda t: 1.0, integral=lambda t: t),
    "tapered": Diffusion(rate=_tapered_rate, integral=_tapered_integral),
}
"""Diffusion schedules by name. "constant": g = sigma, the bridge's own SDE (its path law is
the Brownian bridge mixture the model was trained on). "tapered": g(t)^2 = 4 sigma^2 u (1 - u),
u = t - floor(t) (the position inside each unit interval between snapshots), i.e. g = 2 sigma_t
with sigma_t the bridge's standard deviation (docs/reference.md §2): sigma at the middle of the
interval and 0 at its ends, where the SF2M score regression
has no weight (lambda(t) = 2 sigma_t / sigma^2) and the score is least accurate. Same marginals,
less noise near the snapshots; the score error enters the drift as (g^2 / (2 sigma_t)) times the
error of sigma_t s, which the loss controls, bounded for "tapered" and growing as 1 / sigma_t for
"constant"."""


def check_diffusion(name: Any) -> Diffusion:
    """The schedule of :data:`DIFFUSIONS` called ``name``; a clear error for any other."""
    if not isinstance(name, str) or name not in DIFFUSIONS:
        raise ValueError(f"unknown diffusion {name!r}; valid schedules: {', '.join(DIFFUSIONS)}")
    return DIFFUSIONS[name]


class _SDEDrift:
    """b(x, t) = v(x, t) + sign (g(t)^2 / 2) s(x, t), counted once per evaluation."""

    def __init__(self, drift: _Field, score: _Field | None, coef: float,
                 rate: Callable[[float], float]) -> None:
        self.drift, self.score, self.coef, self.rate = drift, score, coef, rate
        self.nfe = 0

    def __call__(self, t: float, x: Tensor) -> Tensor:
        self.nfe += 1
        b = self.drift(t, x)
        coef = self.coef * self.rate(t)
        if self.score is not None and coef != 0.0:
            b = b + coef * self.score(t, x)
        return b


def _euler_maruyama(b: _SDEDrift, t: float, dt: float, x: Tensor, dw: Tensor) -> Tensor:
    """X + b(x, t) dt + g dW (weak order 1, strong order 1 for additive noise)."""
    return x + dt * b(t, x) + dw


def _sde_heun(b: _SDEDrift, t: float, dt: float, x: Tensor, dw: Tensor) -> Tensor:
    """Stochastic Heun for additive noise: predictor with the same dW, trapezoidal drift."""
    k1 = b(t, x)
    k2 = b(t + dt, x + dt * k1 + dw)
    return x + (0.5 * dt) * (k1 + k2) + dw


_SDEStep = Callable[[_SDEDrift, float, float, Tensor, Tensor], Tensor]
SDE_SOLVERS: dict[str, _SDEStep] = {"euler_maruyama": _euler_maruyama, "heun": _sde_heun}
"""SDE schemes by name -> one step (drift evaluations per step: euler_maruyama 1, heun 2)."""


def integrate_sde(
    drift: Callable[..., Tensor],
    x0: Tensor,
    *,
    sigma: float,
    score: Callable[..., Tensor] | None = None,
    steps: int = 100,
    method: str = "euler_maruyama",
    diffusion: str = DEFAULT_DIFFUSION,
    reverse: bool = False,
    generator: torch.Generator | None = None,
    t0: float | None = None,
    t1: float | None = None,
    save: str = "all",
    cond: Mapping[str, Any] | None = None,
    grad: bool = False,
) -> Trajectory:
    """Sample the bridge SDE with drift network v and score network s from ``x0`` (B, ``*event``).

    Forward (default, t0 = 0 -> t1 = 1):   dx = [v + (sigma^2 / 2) s] dt + sigma dW.
    ``reverse=True`` (t0 = 1 -> t1 = 0):   dx = [v - (sigma^2 / 2) s] dt + sigma dW, dt < 0,
    the time reversal: started from p_1 it ends in p_0. ``x0`` is the state at t0 either way.

    Args:
        drift: ``drift(x, t, **cond) -> v`` (the probability-flow velocity).
        x0: (B, ``*event``) floating-point state at ``t0``.
        sigma: the diffusion coefficient g (>= 0; SF2M: the bridge's sigma).
        score: ``score(x, t, **cond) -> s ~ grad_x log p_t``; by default ``drift.score`` when
            the drift has one (:class:`otcfm.models.DriftScore`), otherwise no score term.
        steps: number of uniform steps.
        method: the scheme, one of :data:`SDE_SOLVERS`.
        diffusion: a schedule from :data:`DIFFUSIONS`: "constant" (g = sigma, the equations
            above) or "tapered" (g(t) = sigma sqrt(4 u (1 - u)), u = t - floor(t), in place of
            sigma in both the drift and the noise; same marginals, exact noise variance per
            step).
        reverse: integrate the time reversal, from t0 = 1 to t1 = 0 by default.
        generator: the only source of the Brownian increments (same seed, same paths).
        t0: start of the interval (forward needs t0 < t1, reverse t0 > t1).
        t1: end of the interval.
        save: "all" keeps the ``steps + 1`` states on the grid, "ends" the first and last.
        cond: as for :func:`integrate`.
        grad: as for :func:`integrate`.

    Returns a :class:`Trajectory` (``energy`` None, ``nfe`` = SDE drift evaluations). dtypes
    as for :func:`integrate`: float32 state (float64 for float64 ``x0``), ``xs`` in x0's dtype.
    """
    if not isinstance(method, str) or method not in SDE_SOLVERS:
        raise ValueError(f"unknown SDE method {method!r}; valid methods: {', '.join(SDE_SOLVERS)}")
    schedule = check_diffusion(diffusion)
    steps = _check_steps(steps)
    sigma = check_positive("sigma", sigma, allow_zero=True)
    check_tensor("x0", x0)
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    start = _check_time("t0", (1.0 if reverse else 0.0) if t0 is None else t0)
    end = _check_time("t1", (0.0 if reverse else 1.0) if t1 is None else t1)
    if (end <= start) if not reverse else (end >= start):
        want = "t0 > t1 (reverse time)" if reverse else "t0 < t1 (use reverse=True to go back)"
        raise ValueError(f"integrate_sde needs {want}, got t0={start}, t1={end}")
    if save not in _SAVE:
        raise ValueError(f"save must be one of {_SAVE}, got {save!r}")
    cond = {} if cond is None else cond
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a dict of per-sample conditions, got {type(cond).__name__}")
    check_cond(dict(cond), x0.shape[0])
    if score is None:
        score = getattr(drift, "score", None)
        score = score if callable(score) else None

    state_dtype = _state_dtype(x0)
    coef = (-0.5 if reverse else 0.5) * sigma**2
    b = _SDEDrift(
        _Field(drift, x0, state_dtype, cond),
        None if score is None else _Field(score, x0, state_dtype, cond),
        coef,
        schedule.rate,
    )
    step = SDE_SOLVERS[method]
    grid = _fixed_grid(start, end, steps, None)
    x = x0.detach().to(state_dtype) if not grad else x0.to(state_dtype)
    saved = [x]
    with nullcontext() if grad else torch.no_grad():
        for k in range(steps):
            dt = grid[k + 1] - grid[k]
            var = abs(schedule.integral(grid[k + 1]) - schedule.integral(grid[k]))
            dw = (sigma * math.sqrt(var)) * randn_like(x, generator)
            x = step(b, grid[k], dt, x, dw)
            if save == "all" or k == steps - 1:
                saved.append(x)
    xs = torch.stack(saved)
    out_times = grid if save == "all" else [grid[0], grid[-1]]
    _warn_nonfinite(xs, None)
    return Trajectory(
        xs=xs.to(x0.dtype),
        ts=torch.tensor(out_times, dtype=torch.float32, device=x0.device),
        nfe=b.nfe,
        energy=None,
    )
