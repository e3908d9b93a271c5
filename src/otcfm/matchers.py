"""Flow matchers: a coupling, a time sampler and a probability path, composed.

``FlowMatcher.sample`` draws z = (x0, x1) from the minibatch coupling q(z), t from the time
sampler and x ~ p_t(x | z) from the path; ``FlowMatcher.loss`` is the CFM regression loss
E ||v(xt, t) - u_t(xt | z)||^2. ``matcher(name, **kw)`` builds the paper's
variants (docs/reference.md §2) by name. :class:`SF2M` adds a score regression to the
Brownian-bridge flow loss, for a model with a drift and a score head (``models.DriftScore``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from otcfm._utils import Registry, check_cond, check_pair, check_positive, pad_t
from otcfm.couplings import (
    COUPLINGS,
    Coupling,
    EntropicOT,
    ExactOT,
    Independent,
    Pairing,
    build_coupling,
    coupling_spec,
)
from otcfm.paths import (
    BrownianBridgePath,
    GaussianTargetPath,
    LinearPath,
    PathSample,
    ProbabilityPath,
    TrigPath,
)
from otcfm.time_samplers import TIME_SAMPLERS, TimeSampler, UniformTime

__all__ = [
    "DROPOUT_OPTIONS", "MATCHERS", "SF2M", "FlowMatcher", "SF2MLoss", "matcher", "preset_defaults",
]


class FlowMatcher:
    """Coupling -> time -> path: draws CFM training samples and computes the CFM loss.

    Args:
        path: the conditional probability path p_t(x | x0, x1).
        coupling: minibatch coupling q(x0, x1); default :class:`Independent`.
        time_sampler: distribution of t; default :class:`UniformTime`.
        name: a label shown in the repr (the registry name for presets).
        cond_dropout: probability p in [0, 1] of replacing each training sample's class label
            ``cond[cond_key]`` by ``null_class`` (condition dropout for classifier-free
            guidance, Ho & Salimans 2022: one model learns v(x | y) and v(x | null); sample
            with :class:`otcfm.sampling.Guided`). Default 0: labels kept, nothing drawn.
        null_class: the label meaning "no condition" (K for a model built with
            ``num_classes=K``, its ``model.null_class``); required when cond_dropout > 0.
            Data labels must lie in [0, K): a label equal to K would read as unconditional.
        cond_key: the condition that holds the class labels, default ``"y"``.
    """

    #: whether the model must also have a score head (see :class:`SF2M`)
    needs_score: ClassVar[bool] = False

    def __init__(
        self,
        path: ProbabilityPath,
        coupling: Coupling | None = None,
        time_sampler: TimeSampler | None = None,
        *,
        name: str = "custom",
        cond_dropout: float = 0.0,
        null_class: int | None = None,
        cond_key: str = "y",
    ) -> None:
        if not isinstance(path, ProbabilityPath):
            raise TypeError(f"path must be a ProbabilityPath, got {type(path).__name__}")
        coupling = Independent() if coupling is None else coupling
        if not callable(coupling):
            raise TypeError(f"coupling must be a Coupling, got {type(coupling).__name__}")
        time_sampler = UniformTime() if time_sampler is None else time_sampler
        if not isinstance(time_sampler, TimeSampler):
            raise TypeError(
                f"time_sampler must be a TimeSampler, got {type(time_sampler).__name__}"
            )
        self.path = path
        self.coupling = coupling
        self.time_sampler = time_sampler
        self.name = str(name)
        self._set_dropout(cond_dropout, null_class, cond_key)

    def _set_dropout(self, cond_dropout: Any, null_class: Any, cond_key: Any) -> None:
        """Validate and set the condition-dropout options (see the class docstring)."""
        if isinstance(cond_dropout, bool):
            raise ValueError(f"cond_dropout must be a probability in [0, 1], got {cond_dropout!r}")
        p = check_positive("cond_dropout", cond_dropout, allow_zero=True)
        if p > 1.0:
            raise ValueError(f"cond_dropout must be a probability in [0, 1], got {cond_dropout!r}")
        if null_class is not None and (
            isinstance(null_class, bool) or not isinstance(null_class, int) or null_class < 0
        ):
            raise ValueError(
                f"null_class must be None or an int >= 0 (the model's null label, K for "
                f"num_classes=K), got {null_class!r}"
            )
        if p > 0 and null_class is None:
            raise ValueError(
                f"cond_dropout={cond_dropout!r} needs null_class, the label that means no "
                f"condition (model.null_class, K for a model with num_classes=K)"
            )
        if not isinstance(cond_key, str) or not cond_key.isidentifier():
            raise ValueError(f"cond_key must be a condition name such as 'y', got {cond_key!r}")
        self.cond_dropout = p
        self.null_class = null_class
        self.cond_key = cond_key

    def _drop_conditions(self, s: PathSample, generator: torch.Generator | None) -> PathSample:
        """Replace labels by the null class with probability ``cond_dropout``.

        ``s`` with each label ``cond[cond_key]`` replaced by ``null_class`` with probability
        ``cond_dropout`` (one uniform per sample from ``generator``); ``s`` itself when
        cond_dropout is 0 (no draw).
        """
        p = self.cond_dropout
        if p == 0:
            return s
        cond, key = s.cond, self.cond_key
        if not isinstance(cond, Mapping) or key not in cond:
            have = ", ".join(cond) if isinstance(cond, Mapping) else "none"
            raise ValueError(
                f"cond_dropout={p:g} needs the targets' class labels {key}= (e.g. "
                f"fm.sample(x0, x1, {key}=labels)); conditions given: {have}"
            )
        y = cond[key]
        n = s.xt.shape[0]
        if (not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex()
                or y.dtype == torch.bool or tuple(y.shape) != (n,)):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"cond_dropout needs class labels {key}= as an integer tensor of shape ({n},), "
                f"got {got}"
            )
        gen_device = generator.device if generator is not None else y.device
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        dropped = y.masked_fill(u.to(y.device) < p, self.null_class)
        return replace(s, cond={**cond, key: dropped})

    def sample(
        self,
        x0: Tensor | Pairing,
        x1: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> PathSample:
        """Pair the batch, draw t and xt; returns a :class:`PathSample` with ``cond`` filled.

        Args:
            x0: (B0, ``*event``) source samples, or a :class:`Pairing` already made by a coupling
                (``pair.x0[k]`` goes with ``pair.x1[k]``; then x1 and cond are not given and
                no coupling runs: the training pipeline couples ahead in background workers).
            x1: (B1, ``*event``) target samples.
            generator: the only source of randomness (coupling, then t, then noise).
            **cond: per-sample conditions of the TARGET samples x1 (e.g. ``y=labels``),
                reindexed with the pairing and returned as ``PathSample.cond`` (a dict).

        ``sample(x0, x1, g)`` equals ``sample(coupling(x0, x1, generator=g), generator=g)``.
        With ``cond_dropout`` > 0 the labels ``cond[cond_key]`` are then dropped to
        ``null_class`` (one more uniform per sample from the generator, after the noise).
        """
        pair = self._pairs(x0, x1, generator, cond)
        n = pair.x1.shape[0]
        t = self.time_sampler(n, generator=generator, device=pair.x1.device)
        s = self.path.sample(pair.x0, pair.x1, t, generator=generator)
        return self._drop_conditions(replace(s, cond=pair.cond1), generator)

    def _sample_pairing(self, pair: Pairing, generator: torch.Generator | None) -> PathSample:
        """:meth:`sample` for a pairing the library made of checked data, without the checks.

        ``sample(pair, generator=generator)`` for a pairing the library made of checked
        data (the training pipeline's coupled batches: finite floating x0, x1 of one shape,
        dtype and device): the same draws and values, without validating them again.
        """
        if (
            type(self).sample is not FlowMatcher.sample
            or type(self.path).sample is not ProbabilityPath.sample
        ):  # a subclass draws its own way: take the public route
            return self.sample(pair, generator=generator)
        x1 = pair.x1
        # times on the generator's device are on x1's when those agree: no move to ask for
        same = generator is not None and generator.device == x1.device
        t = self.time_sampler(x1.shape[0], generator=generator, device=None if same else x1.device)
        s = self.path._sample_valid(pair.x0, x1, t, generator, pair.cond1)
        return self._drop_conditions(s, generator)

    def _pairs(
        self,
        x0: Tensor | Pairing,
        x1: Tensor | None,
        generator: torch.Generator | None,
        cond: dict[str, Any],
    ) -> Pairing:
        """The coupled batch: ``x0`` itself when it is a Pairing, else the coupling of x0, x1."""
        if isinstance(x0, Pairing):
            if x1 is not None or cond:
                raise TypeError(
                    "a Pairing carries its own targets and conditions; pass it alone, "
                    "e.g. fm.sample(pair, generator=g)"
                )
            return x0
        if x1 is None:
            raise TypeError("x1 is missing: pass x0 and x1 tensors, or one Pairing")
        check_pair(x0, x1, same_batch=False)
        cond1 = cond or None
        check_cond(cond1, x1.shape[0], "cond")
        return self.coupling(x0, x1, generator=generator, cond1=cond1)

    def loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor | Pairing,
        x1: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        """CFM loss mean((model(xt, t, ``**cond``) - ut)^2) over batch and coordinates, in float32.

        ``x0, x1`` as for :meth:`sample` (tensors, or one coupled :class:`Pairing`).
        ``model(x, t, **cond)`` gets xt (B, ``*event``) in the data dtype and t (B,) float32.
        Returns a 0-dim float32 tensor.
        """
        return self.regress(model, self.sample(x0, x1, generator=generator, **cond))

    def regress(self, model: Callable[..., Tensor], s: PathSample) -> Tensor:
        """The training loss on a drawn :class:`PathSample` (the total loss for SF2M).

        The training loop draws the path sample of the global batch and regresses each
        process's shard of it (``s`` may be any slice of a sample along the batch).
        """
        return self._regress(model, s)

    def _regress(self, model: Callable[..., Tensor], s: PathSample) -> Tensor:
        kwargs = s.cond if isinstance(s.cond, Mapping) else {}
        v = model(s.xt, s.t, **kwargs)
        if not isinstance(v, Tensor) or v.shape != s.ut.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"model output must have the shape of x {tuple(s.ut.shape)}, got {got}"
            )
        ut = s.ut
        if v.dtype != torch.float32:
            v = v.float()
        if ut.dtype != torch.float32:
            ut = ut.float()
        return (v - ut).pow(2).mean()

    def __repr__(self) -> str:
        dropout = (f", cond_dropout={self.cond_dropout!r}, null_class={self.null_class!r}"
                   if self.cond_dropout else "")
        return (
            f"FlowMatcher(name={self.name!r}, path={self.path!r}, "
            f"coupling={self.coupling!r}, time_sampler={self.time_sampler!r}{dropout})"
        )


# ---------------------------------------------------------------------- SF2M
@dataclass(frozen=True)
class SF2MLoss:
    """The SF2M loss and its two terms, 0-dim float32 tensors: ``total = flow + score``."""

    total: Tensor
    flow: Tensor
    score: Tensor


class SF2M(FlowMatcher):
    """Simulation-free score and flow matching (SF2M; Tong et al., AISTATS 2024).

    Same coupling -> time -> Brownian-bridge path as SB-CFM, plus a score regression
    (docs/reference.md §2), per sample and averaged over coordinates:

        ||v(xt, t) - u_t(xt | z)||^2 + lambda(t)^2 ||s(xt, t) - grad log p_t(xt | z)||^2,

    with lambda(t) = 2 sigma_t / sigma^2 and grad log p_t(xt | z) = -eps / sigma_t. The score
    term is evaluated as (2 / sigma^2)^2 ||sigma_t s + eps||^2, the same number written
    without the division, so it stays finite at t = 0 and 1. The network s learns the score
    grad_x log p_t itself; the bridge is then sampled with
    ``sampling.integrate_sde(model, x0, sigma=sigma)``: dx = [v + (sigma^2/2) s] dt + sigma dW.

    The model is called once per loss as ``model(xt, t, head="both", **cond) -> (v, s)``;
    :class:`otcfm.models.DriftScore` (two networks, ``forward`` = drift) does this.

    Args:
        path: a :class:`BrownianBridgePath` with sigma > 0.
        coupling, time_sampler, name: as for :class:`FlowMatcher`.
    """

    needs_score: ClassVar[bool] = True

    def __init__(
        self,
        path: BrownianBridgePath,
        coupling: Coupling | None = None,
        time_sampler: TimeSampler | None = None,
        *,
        name: str = "sf2m",
    ) -> None:
        if not isinstance(path, BrownianBridgePath):
            raise TypeError(f"SF2M needs a BrownianBridgePath, got {type(path).__name__}")
        if path.sigma <= 0:
            raise ValueError(
                f"SF2M needs sigma > 0 (score weight lambda = 2 sigma_t / sigma^2), got "
                f"sigma={path.sigma!r}"
            )
        super().__init__(path, coupling, time_sampler, name=name)

    @property
    def sigma(self) -> float:
        """The diffusion coefficient g = sigma of the bridge and of its SDE."""
        return float(self.path.sigma)

    def score_target(self, s: PathSample) -> Tensor:
        """Conditional score grad_x log p_t(xt | x0, x1) = -eps / sigma_t, (B, ``*event``) float32.

        Infinite where sigma_t = 0 (t = 0 or 1); the loss never divides by sigma_t.
        """
        sig = pad_t(self.path.sigma_t(s.t.to(torch.float32)), s.noise)
        return -s.noise.float() / sig

    def losses(
        self,
        model: Callable[..., Any],
        x0: Tensor | Pairing,
        x1: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> SF2MLoss:
        """Both loss terms, flow and score.

        Both loss terms (same draws as :meth:`loss` with the same seed); ``x0, x1`` as for
        :meth:`sample` (tensors, or one coupled :class:`Pairing`).
        """
        return self._losses(model, self.sample(x0, x1, generator=generator, **cond))

    def _regress(self, model: Callable[..., Any], s: PathSample) -> Tensor:
        return self._losses(model, s).total

    def _losses(self, model: Callable[..., Any], s: PathSample) -> SF2MLoss:
        _check_score_model(model)
        kwargs = s.cond if isinstance(s.cond, Mapping) else {}
        out = model(s.xt, s.t, head="both", **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "model(x, t, head='both') must return the pair (drift, score), got "
                f"{type(out).__name__}"
            )
        for name, value in zip(("drift", "score"), out, strict=True):
            if not isinstance(value, Tensor) or value.shape != s.ut.shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"model {name} output must have the shape of x {tuple(s.ut.shape)}, got {got}"
                )
        v, score = out
        flow = (v.float() - s.ut.float()).pow(2).mean()
        score_loss = self.score_residual(score, s).pow(2).mean()
        return SF2MLoss(total=flow + score_loss, flow=flow, score=score_loss)

    def score_residual(self, score: Tensor, s: PathSample) -> Tensor:
        """Per-element weighted score residual (float32) of the score-matching term.

        lambda(t) (s(xt, t) - grad log p_t(xt | z)) = (2 / sigma^2) (sigma_t s + eps), per
        element (float32): the score term is its mean square (see the class docstring).
        """
        sig = pad_t(self.path.sigma_t(s.t.to(torch.float32)), score)
        return (2.0 / self.sigma**2) * (sig * score.float() + s.noise.float())


def _check_score_model(model: Any) -> None:
    """A clear error for a model without a score head (DDP-style wrappers are unwrapped)."""
    inner = getattr(model, "module", model)
    if not callable(getattr(inner, "score", None)):
        raise TypeError(
            "SF2M needs a model with a drift and a score head, called as "
            "model(x, t, head='both') -> (v, s), e.g. otcfm.models.DriftScore.mlp(dim); "
            f"got {type(inner).__name__}"
        )


# ---------------------------------------------------------------------- presets
MATCHERS: Registry[FlowMatcher] = Registry("matcher")
#: keywords of :func:`matcher` that every preset accepts (FlowMatcher's condition dropout)
DROPOUT_OPTIONS = ("cond_dropout", "null_class")


def matcher(name: str, **kw: Any) -> FlowMatcher:
    """Build a preset FlowMatcher by name: icfm, otcfm, sbcfm, fm, vpcfm, rf, sf2m (MATCHERS).

    Common keywords: ``sigma``, ``time_sampler`` (instance or TIME_SAMPLERS name) and, where
    meaningful, ``coupling`` (instance, COUPLINGS name or spec ``"name:key=value,..."``, see
    :func:`otcfm.couplings.coupling_spec`; ``"exact:within=y"`` pairs within classes). Every
    preset also takes :data:`DROPOUT_OPTIONS` (``cond_dropout``, ``null_class``: condition
    dropout for classifier-free guidance, see :class:`FlowMatcher`). Unknown names raise
    ValueError, unknown keywords TypeError.

    Examples:
        OT-CFM pairs the batches by exact OT, then regresses onto straight lines:

        >>> import torch
        >>> from otcfm.matchers import matcher
        >>> fm = matcher("otcfm", sigma=0.0)
        >>> g = torch.Generator().manual_seed(0)
        >>> x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g) + 4
        >>> s = fm.sample(x0, x1, generator=g)
        >>> s.xt.shape, s.t.shape
        (torch.Size([8, 2]), torch.Size([8]))
        >>> bool(torch.allclose(s.ut, s.x1 - s.x0))
        True
        >>> sorted(s.x1.tolist()) == sorted(x1.tolist())  # every target used once
        True
        >>> loss = fm.loss(lambda x, t: torch.zeros_like(x), x0, x1, generator=g)
        >>> loss.shape, loss.dtype
        (torch.Size([]), torch.float32)
    """
    factory = MATCHERS.factory(name)
    allowed = [*inspect.signature(factory).parameters, *DROPOUT_OPTIONS]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(
            f"matcher {name!r} got unknown keyword argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    dropout = {k: kw.pop(k) for k in DROPOUT_OPTIONS if k in kw}
    fm = factory(**kw)
    if dropout:  # a new matcher of our own: set its options before anyone sees it
        fm._set_dropout(dropout.get("cond_dropout", fm.cond_dropout),
                        dropout.get("null_class", fm.null_class), fm.cond_key)
    return fm


def preset_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of preset ``name`` (e.g. ``{"sigma": 1.0, ...}`` for sbcfm).

    The presets are the one home of these defaults: configs and command lines that leave a
    value unset resolve it here, so a run records what its matcher actually used.
    """
    params = inspect.signature(MATCHERS.factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _time_sampler(value: TimeSampler | str | None) -> TimeSampler:
    if value is None:
        return UniformTime()
    if isinstance(value, str):
        return TIME_SAMPLERS.get(value)
    if isinstance(value, TimeSampler):
        return value
    raise TypeError(
        f"time_sampler must be a TimeSampler or one of {', '.join(TIME_SAMPLERS.names())}, "
        f"got {type(value).__name__}"
    )


def _coupling(value: Coupling | str | None, default: Callable[[], Coupling]) -> Coupling:
    if value is None:
        return default()
    if isinstance(value, str):
        name, kwargs = coupling_spec(value)
        return _coupling_of(COUPLINGS.factory(name), kwargs, value)
    if callable(value):
        return value
    raise TypeError(
        f"coupling must be a Coupling or one of {', '.join(COUPLINGS.names())}, "
        f"got {type(value).__name__}"
    )


@MATCHERS.register("icfm")
def _icfm(*, sigma: float = 0.1, time_sampler: TimeSampler | str | None = None) -> FlowMatcher:
    """I-CFM: linear path with constant sigma, independent coupling."""
    return FlowMatcher(LinearPath(sigma), Independent(), _time_sampler(time_sampler), name="icfm")


@MATCHERS.register("otcfm")
def _otcfm(
    *,
    sigma: float = 0.1,
    time_sampler: TimeSampler | str | None = None,
    coupling: Coupling | str | None = None,
) -> FlowMatcher:
    """OT-CFM: linear path with constant sigma, exact minibatch OT coupling."""
    return FlowMatcher(
        LinearPath(sigma), _coupling(coupling, ExactOT), _time_sampler(time_sampler), name="otcfm"
    )


def _entropic_options(coupling: Coupling | str | None) -> dict[str, Any] | None:
    """The spec's keywords if ``coupling`` names the entropic coupling, else None."""
    if not isinstance(coupling, str):
        return None
    name, kwargs = coupling_spec(coupling)
    return kwargs if COUPLINGS.factory(name) is EntropicOT else None


def _coupling_of(factory: Callable[..., Coupling], kwargs: dict[str, Any], spec: str) -> Coupling:
    """Call ``factory(**kwargs)`` with errors that name the spec and its syntax.

    ``factory(**kwargs)`` (in a :class:`~otcfm.couplings.ByClass` for ``within=``); a
    missing or unknown keyword names the spec and the syntax.
    """
    try:
        return build_coupling(factory, kwargs)
    except TypeError as err:
        raise TypeError(
            f"coupling {spec!r}: {err}; give options as 'name:key=value,...' or pass an "
            f"instance, e.g. coupling={factory.__name__}(...)"
        ) from None


def _bridge_coupling(name: str, sigma: float, coupling: Coupling | str | None,
                     default: Callable[[], Coupling]) -> Coupling:
    """The coupling of a Brownian-bridge preset.

    The entropic coupling, by name or spec without ``reg``, gets the Schrodinger bridge's reg = 2
    sigma^2 (the one place this is written); ``coupling=None`` means ``default``.
    """
    options = _entropic_options(coupling)
    if options is None:
        return _coupling(coupling, default)
    if "reg" not in options and sigma == 0:
        raise ValueError(
            f"{name} needs sigma > 0 for its entropic coupling (reg = 2 sigma^2), got "
            f"sigma=0.0; use matcher('otcfm') or pass coupling='exact'"
        )
    return _coupling_of(EntropicOT, {"reg": 2 * sigma**2, **options}, str(coupling))


@MATCHERS.register("sbcfm")
def _sbcfm(
    *,
    sigma: float = 1.0,
    time_sampler: TimeSampler | str | None = None,
    coupling: Coupling | str | None = None,
) -> FlowMatcher:
    """SB-CFM: Brownian bridge of sigma W, entropic OT with reg = 2 sigma^2 by default.

    ``coupling="entropic"`` by name (or a spec such as ``"entropic:tol=1e-4"``) also gets
    reg = 2 sigma^2 unless the spec sets ``reg``.
    """
    sigma = check_positive("sigma", sigma, allow_zero=True)
    cpl = _bridge_coupling("sbcfm", sigma, "entropic" if coupling is None else coupling, ExactOT)
    return FlowMatcher(BrownianBridgePath(sigma), cpl, _time_sampler(time_sampler), name="sbcfm")


@MATCHERS.register("fm")
def _fm(*, sigma: float = 0.1, time_sampler: TimeSampler | str | None = None) -> FlowMatcher:
    """FM (Lipman et al.): Gaussian-target path with sigma_min = sigma; x0 must be N(0, I)."""
    return FlowMatcher(
        GaussianTargetPath(sigma_min=sigma), Independent(), _time_sampler(time_sampler), name="fm"
    )


@MATCHERS.register("vpcfm")
def _vpcfm(
    *,
    sigma: float = 0.1,
    time_sampler: TimeSampler | str | None = None,
    coupling: Coupling | str | None = None,
) -> FlowMatcher:
    """VP-CFM: trigonometric path with constant sigma, independent coupling by default."""
    return FlowMatcher(
        TrigPath(sigma), _coupling(coupling, Independent), _time_sampler(time_sampler), name="vpcfm"
    )


@MATCHERS.register("rf")
def _rf(*, sigma: float = 0.0, time_sampler: TimeSampler | str | None = None) -> FlowMatcher:
    """Rectified flow (reflow): linear path, pairs kept as given (Liu et al. 2023).

    Train it on paired data (``data.paired``): x0 and the endpoint x1 = ODE(x0) of a trained
    flow, row for row. Its coupling is the identity on a batch, i.e. ``Independent``.
    """
    return FlowMatcher(LinearPath(sigma), Independent(), _time_sampler(time_sampler), name="rf")


@MATCHERS.register("sf2m")
def _sf2m(
    *,
    sigma: float = 1.0,
    time_sampler: TimeSampler | str | None = None,
    coupling: Coupling | str | None = None,
) -> SF2M:
    """SF2M: SB-CFM's Brownian bridge plus a score loss; exact minibatch OT by default.

    ``coupling="entropic"`` by name (or an ``"entropic:..."`` spec without ``reg``) gets
    reg = 2 sigma^2 (the Schrodinger bridge coupling).
    """
    value = check_positive("sigma", sigma, allow_zero=True)
    if value == 0:
        raise ValueError(
            "sf2m needs sigma > 0 (the SDE noise and the score weight 2 sigma_t / sigma^2), "
            "got sigma=0.0; use matcher('otcfm') for a deterministic flow"
        )
    cpl = _bridge_coupling("sf2m", value, coupling, ExactOT)
    return SF2M(BrownianBridgePath(value), cpl, _time_sampler(time_sampler), name="sf2m")
