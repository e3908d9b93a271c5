"""Multi-marginal flow matching through populations at times 0, 1, ..., K.

See Tong et al. 2024, single-cell trajectory inference.

One time-conditioned network v(x, tau) serves every interval. Index time tau = k is the
population at ``times[k]``. For each pair (a, b) of consecutive *kept* populations a batch of
``batch_size`` cells is drawn from each, coupled by the method's minibatch coupling (exact OT
for OT-CFM and SF2M, independent for I-CFM, entropic for SB-CFM), and a conditional path
sample (x_t, u_t) with t ~ U[0, 1] is regressed at network time tau = a + (b - a) t with target
u_t / (b - a). With one time point k left out, the skip pair (k-1, k+1) thus uses time
2t + (k-1) and target u/2, so the flow still takes one unit of tau per observed interval.
The loss is the mean squared error over all intervals' samples together.

SF2M also learns the score s(x, tau) of the populations between the observations (its score
term, :meth:`otcfm.matchers.SF2M.score_residual`, pooled over the intervals like the flow
term). Its reference process is sigma W in index time, so the interval (a, b) is the Brownian
bridge of sigma sqrt(b - a) over t in [0, 1]: the SDE dx = [v + (sigma^2 / 2) s] dtau +
sigma dW_tau has one diffusion coefficient across every interval, the skip pair included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from otcfm.couplings import Pairing
from otcfm.data import sample_batch
from otcfm.data.timeseries import TimeSeries
from otcfm.matchers import SF2M, FlowMatcher, matcher, preset_defaults
from otcfm.paths import BrownianBridgePath
from otcfm.train.config import ModelConfig
from otcfm.train.datasets import stream
from otcfm.train.loop import Engine, LoopSettings, build_model
from otcfm.train.objectives import ConvergenceTally
from otcfm.train.runfolder import RunFolder

__all__ = [
    "FitSpec",
    "Fitter",
    "FlowFit",
    "TimeSeriesObjective",
    "build_matcher",
    "fit_flow",
    "intervals",
    "multimarginal_loss",
]

METHODS = ("otcfm", "icfm", "sbcfm", "sf2m")
# sigma when none is given: the presets' own (otcfm.matchers, the one home of the defaults): the
# paper's 0.1 for OT-CFM and I-CFM, 1.0 for SB-CFM (entropic reg 2 sigma^2 = 2)
DEFAULT_SIGMA: dict[str, float] = {m: float(preset_defaults(m)["sigma"]) for m in METHODS}
SCORE_METHODS = ("sf2m",)  # fits that learn a score too (a drift-and-score network; SDE)
# SB-CFM's plan at a small sigma (0.1: reg 0.02, costs ~1-50 on whitened data) converges
# slowly: the default tol 1e-6 costs ~80 ms per 128 x 128 coupling, 1e-2 (1% of the mass off
# the uniform marginals) ~20 ms, which keeps a 5-seed benchmark affordable on a CPU.
SB_SINKHORN_TOL = 1e-2


@dataclass(frozen=True)
class FitSpec:
    """Hyper-parameters of one fit (paper: MLP 3x64 SELU, AdamW 1e-3 / 1e-5, batch 128 per time).

    ``sigma=None`` takes :data:`DEFAULT_SIGMA` of the method.
    """

    method: str = "otcfm"
    sigma: float | None = None
    left_out: int | None = None
    steps: int = 5_000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    width: int = 64
    depth: int = 3
    activation: str = "selu"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "batch_size"
                                                                     else 1):
                raise ValueError(f"{name} must be an int >= {2 if name == 'batch_size' else 1}, "
                                 f"got {v!r}")
        if self.sigma is None:
            object.__setattr__(self, "sigma", DEFAULT_SIGMA[self.method])
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {self.sigma!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as a dict."""
        return asdict(self)


def build_matcher(method: str, sigma: float) -> FlowMatcher:
    """The registry preset of each trajectory method.

    The registry preset: otcfm (exact OT), icfm (independent), sbcfm (Brownian bridge,
    entropic OT with the preset's reg 2 sigma^2, Sinkhorn stopped at marginal L1 error
    :data:`SB_SINKHORN_TOL`), sf2m (Brownian bridge and score, exact OT as its preset).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "sbcfm":
        return matcher(method, sigma=sigma, coupling=f"entropic:tol={SB_SINKHORN_TOL}")
    return matcher(method, sigma=sigma)


def intervals(n_times: int, left_out: int | None = None) -> list[tuple[int, int]]:
    """Consecutive pairs of kept time indices; the left-out index k gives the pair (k-1, k+1).

    Only an intermediate time (0 < k < n_times - 1) can be left out.
    """
    if isinstance(n_times, bool) or not isinstance(n_times, int) or n_times < 2:
        raise ValueError(f"n_times must be an int >= 2, got {n_times!r}")
    if left_out is not None and (
        isinstance(left_out, bool) or not isinstance(left_out, int)
        or not 0 < left_out < n_times - 1
    ):
        raise ValueError(
            f"left_out must be an intermediate time index in [1, {n_times - 2}] "
            f"(first and last times cannot be interpolated), got {left_out!r}"
        )
    kept = [k for k in range(n_times) if k != left_out]
    return list(zip(kept[:-1], kept[1:], strict=True))


def multimarginal_loss(
    model: Callable[..., Tensor],
    fm: FlowMatcher,
    populations: list[Tensor],
    pairs: list[tuple[int, int]],
    batch_size: int,
    generator: torch.Generator | None = None,
    on_pair: Callable[[Pairing], None] | None = None,
) -> Tensor:
    """Mean over every interval's samples of ||v(x_t, a + (b-a) t) - u_t / (b-a)||^2.

    populations[k]: (n_k, d) cells at index time k; pairs: (a, b) intervals. Each interval
    draws min(batch_size, n_a, n_b) cells from both ends. ``on_pair``: called with each
    interval's :class:`~otcfm.couplings.Pairing` (e.g. to record the coupling's
    convergence). Returns a 0-dim float32 tensor.
    """
    xs, taus, targets, samples, spans = [], [], [], [], []
    for a, b in pairs:
        n = min(batch_size, populations[a].shape[0], populations[b].shape[0])
        x0 = sample_batch(populations[a], n, generator)
        x1 = sample_batch(populations[b], n, generator)
        span = float(b - a)
        interval = _for_span(fm, span)
        pair = interval.coupling(x0, x1, generator=generator)  # what sample(x0, x1) would draw
        if on_pair is not None:
            on_pair(pair)
        s = interval.sample(pair, generator=generator)
        xs.append(s.xt)
        taus.append(a + span * s.t)
        targets.append(s.ut / span)
        samples.append((interval, s))
        spans.append(span)
    if not isinstance(fm, SF2M):
        v = model(torch.cat(xs), torch.cat(taus))
        return (v.float() - torch.cat(targets).float()).pow(2).mean()
    v, score = model(torch.cat(xs), torch.cat(taus), head="both")
    flow = (v.float() - torch.cat(targets).float()).pow(2).mean()
    residuals = [m.score_residual(part, s)
                 for (m, s), part in zip(samples, score.split([len(x) for x in xs]),
                                         strict=True)]
    return flow + torch.cat(residuals).pow(2).mean()


def _for_span(fm: FlowMatcher, span: float) -> FlowMatcher:
    """The matcher of an interval of ``span`` index-time units.

    ``fm`` itself, except SF2M, whose bridge over the interval is sigma sqrt(span) (the reference
    sigma W in index time).
    """
    if not isinstance(fm, SF2M) or span == 1.0:
        return fm
    return SF2M(BrownianBridgePath(fm.sigma * math.sqrt(span)), fm.coupling, fm.time_sampler,
                name=fm.name)


@dataclass(frozen=True, eq=False)
class FlowFit:
    """A trained flow: ``model(x, tau)`` over index time [0, n_times - 1]."""

    model: nn.Module
    spec: FitSpec
    n_times: int
    history: tuple[tuple[int, float], ...] = ()
    train_seconds: float = 0.0

    @property
    def left_out(self) -> int | None:
        """The held-out time index of the fit, or None."""
        return self.spec.left_out


class TimeSeriesObjective:
    """Multi-marginal flow matching through the populations of ``ts``.

    An objective of the engine, :class:`otcfm.train.objectives.Objective`.

    Step s draws its cells, times and path noise from ``stream(seed, "trajectory", "step", s)``
    and returns :func:`multimarginal_loss` over the kept intervals. Every process computes the
    whole loss (the batch is small), so under torch.distributed the processes agree.
    """

    metrics: tuple[str, ...] = ()

    def __init__(self, ts: TimeSeries, spec: FitSpec, *, device: str | torch.device = "cpu"
                 ) -> None:
        if not isinstance(ts, TimeSeries):
            raise TypeError(f"ts must be a TimeSeries, got {type(ts).__name__}")
        self.spec = spec
        self.ts = ts
        self.pairs = intervals(ts.n_times, spec.left_out)
        self.populations = [p.to(device) for p in ts.populations()]
        self.matcher = build_matcher(spec.method, spec.sigma)
        self.needs_score = spec.method in SCORE_METHODS
        self.event_shape: tuple[int, ...] = (ts.dim,)
        self._tally = ConvergenceTally(self.matcher.coupling)
        #: log.csv columns of the coupling's convergence (SB-CFM's entropic plans)
        self.log_fields: tuple[str, ...] = self._tally.fields
        self.matcher.coupling.prepare()  # its compiled solver loads before the clock starts

    def loss(self, net: nn.Module, step: int) -> Tensor:
        """Multi-marginal flow matching loss of step ``step`` for the network ``net``."""
        g = stream(self.spec.seed, "trajectory", "step", str(step))
        return multimarginal_loss(net, self.matcher, self.populations, self.pairs,
                                  self.spec.batch_size, g, on_pair=self._tally.add)

    def coupling_log(self) -> dict[str, float]:
        """The coupling's convergence since the last row.

        :class:`ConvergenceTally`. Every process solves the same plans, so each counts its own.
        """
        return self._tally.log()

    def validate(self, model: nn.Module) -> None:
        """No validation: always None."""
        return None

    def state(self) -> dict[str, Any]:
        """What rebuilds the network and its time axis: the spec, times and feature count."""
        return {"spec": self.spec.to_dict(), "times": list(self.ts.times),
                "time_names": list(self.ts.time_names), "dim": self.ts.dim}

    def close(self) -> None:
        """Release nothing: the objective holds no threads or files."""
        pass


class Fitter:
    """One fit on the training engine with a :class:`TimeSeriesObjective`.

    One fit on the training engine (:class:`otcfm.train.loop.Engine`) with a
    :class:`TimeSeriesObjective`: model (initialised from ``stream(seed, "trajectory",
    "init")``), AdamW and step count; each step's draws come from a generator derived from
    (seed, step), so a resumed fit equals an uninterrupted one.

    ``folder``, ``config_toml``, ``files``, ``extra_state``, ``progress``, ``desc``: passed to the
    engine (a run folder's files and checkpoint payload; none by default).
    """

    def __init__(
        self,
        ts: TimeSeries,
        spec: FitSpec,
        *,
        device: str | torch.device = "cpu",
        folder: RunFolder | None = None,
        config_toml: str | None = None,
        files: dict[str, str] | None = None,
        extra_state: dict[str, Any] | None = None,
        progress: bool = False,
        desc: str = "",
    ) -> None:
        self.objective = TimeSeriesObjective(ts, spec, device=device)
        self.spec = spec
        self.device = torch.device(device)
        self.n_times = ts.n_times
        model = _network(spec, ts.dim, stream(spec.seed, "trajectory", "init")).to(self.device)
        settings = LoopSettings(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay)
        self.engine = Engine(self.objective, model, settings, device=self.device, folder=folder,
                             config_toml=config_toml, files=files, extra_state=extra_state,
                             progress=progress, desc=desc)

    # the engine's state, under the names of a fit
    model = property(lambda self: self.engine.model)
    optimizer = property(lambda self: self.engine.optimizer)
    step = property(lambda self: self.engine.step)
    train_seconds = property(lambda self: self.engine.train_seconds)
    matcher = property(lambda self: self.objective.matcher)
    pairs = property(lambda self: self.objective.pairs)
    populations = property(lambda self: self.objective.populations)

    @property
    def history(self) -> list[tuple[int, float]]:
        """(step, mean training loss since the previous entry) pairs."""
        return [(int(r["step"]), float(r["loss"])) for r in self.engine.history]

    def train_step(self) -> float:
        """One optimizer step on the engine; return its loss."""
        return self.engine.train_step()

    def run(
        self,
        until: int | None = None,
        *,
        log_every: int = 100,
        callback: Callable[[Fitter], None] | None = None,
        callback_every: int = 0,
    ) -> FlowFit:
        """Train to step ``until``, logging, checkpointing and calling back on the way.

        Train to step ``until`` (default spec.steps); record the mean loss every
        ``log_every`` steps; checkpoint (with a run folder) and call ``callback(self)`` every
        ``callback_every`` steps (0: never) and at the last.
        """
        self.engine.run(until, log_every=log_every, checkpoint_every=callback_every,
                        callback=None if callback is None else lambda _: callback(self))
        self.model.eval()
        return self.result()

    def result(self) -> FlowFit:
        """The fit so far as a :class:`FlowFit`."""
        return FlowFit(self.model, self.spec, self.n_times, tuple(self.history),
                       self.train_seconds)

    def state_dict(self) -> dict[str, Any]:
        """The engine's state for a checkpoint."""
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`.

        Also a checkpoint of before the engine, whose history holds [step, loss] pairs.
        """
        history = [r if isinstance(r, dict) else {"step": int(r[0]), "loss": float(r[1])}
                   for r in state["history"]]
        self.engine.load_state_dict({**state, "history": history})


def fit_flow(
    ts: TimeSeries, spec: FitSpec | None = None, *, device: str | torch.device = "cpu",
    **overrides: Any,
) -> FlowFit:
    """Train one flow through the populations of ``ts`` (``overrides`` replace spec fields).

    Example: ``fit_flow(ts, method="otcfm", left_out=2, steps=3000)``.
    """
    spec = FitSpec(**{**(spec.to_dict() if spec else {}), **overrides})
    return Fitter(ts, spec, device=device).run()


def model_from_state(state: dict[str, Any], dim: int) -> nn.Module:
    """Rebuild the network of a saved :meth:`Fitter.state_dict` (eval mode, no grads)."""
    model = _network(FitSpec(**state["spec"]), dim)
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def _network(spec: FitSpec, dim: int, generator: torch.Generator | None = None) -> nn.Module:
    """The paper's MLP v(x, tau) of the spec's width, depth and activation.

    SF2M: a :class:`otcfm.models.DriftScore` of two such MLPs.
    """
    cfg = ModelConfig(width=spec.width, depth=spec.depth, activation=spec.activation)
    return build_model(cfg, (dim,), score=spec.method in SCORE_METHODS, generator=generator)
