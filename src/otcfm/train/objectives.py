"""What the training engine (:mod:`otcfm.train.loop`) minimises: pluggable objectives.

An objective owns the data and the draws of one kind of training; the engine owns the model,
optimizer, EMA, clipping, DDP, step counting, progress, logs and checkpoints. The interface
(:class:`Objective`) is small and makes no assumption on the shape of a point:

- ``event_shape``: the shape of one point, ``needs_score``: whether the network has a score
  head as well (SF2M); the caller builds the model from them.
- ``loss(net, step)``: the scalar loss of optimizer step ``step`` on this process's share of
  the step's batch (a function of the run's seed and ``step`` only, so resuming equals never
  stopping); ``net`` is the network to call (the DDP wrapper under torch.distributed).
- ``metrics`` and ``validate(model)``: the names and values of validation metrics (rank 0
  only; ``None`` when the objective has none). A ``"val_loss"`` selects ``best.pt``.
- ``state()``: extra checkpoint payload (e.g. what a run needs to rebuild its data).
- ``close()``: stop background work (a later ``loss`` starts it again).
- optional: ``log_fields`` and ``coupling_log()``, extra training columns of log.csv and
  their values at each logged row (a coupling's convergence: :class:`ConvergenceTally`).

:class:`PairObjective` is conditional flow matching between two point clouds (Tong et al.,
eqs. (8)-(9) with a minibatch coupling, Sec. 3.2); the time-series objective lives beside the
engine in :mod:`otcfm.trajectory.fit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from otcfm._ot.warm import load_kernels
from otcfm._utils import index_cond
from otcfm.couplings import Pairing
from otcfm.matchers import FlowMatcher
from otcfm.metrics import wasserstein
from otcfm.paths import PathSample
from otcfm.sampling import integrate
from otcfm.train.config import RunConfig
from otcfm.train.datasets import RunData, load_run_data, stream
from otcfm.train.prefetch import (
    CoupledBatch,
    InOrderBatches,
    OwnTurns,
    Prefetcher,
    Shard,
    chunks,
    couple_batch,
    pairs_in_order,
)

__all__ = ["COUPLING_FIELDS", "ConvergenceTally", "Objective", "PairObjective"]

#: log.csv columns of a coupling that reports its convergence (see PairObjective.coupling_log)
COUPLING_FIELDS = ("coupling_calls", "coupling_converged", "coupling_marginal_error_max")


class ConvergenceTally:
    """The convergence of a coupling's solves between two log rows (log.csv columns).

    ``fields``: :data:`COUPLING_FIELDS` when ``coupling`` reports its convergence
    (:attr:`~otcfm.couplings.Coupling.reports_convergence`), else none. :meth:`add` counts a
    solve; :meth:`log` returns ``coupling_calls`` (solves since the last row),
    ``coupling_converged`` (the fraction of them that met the solver's tolerance) and
    ``coupling_marginal_error_max`` (the largest L1 marginal error of their plans, see
    :class:`~otcfm.couplings.Convergence`), then starts over. The last two are NaN when no
    solve happened since the last row (a coupled batch can feed many steps).
    """

    def __init__(self, coupling: Any) -> None:
        self.fields: tuple[str, ...] = COUPLING_FIELDS if coupling.reports_convergence else ()
        self._calls, self._converged, self._worst = 0, 0, 0.0

    def add(self, pair: Pairing) -> None:
        """Count one solve (a pairing whose coupling reports no convergence counts nothing)."""
        c = pair.convergence
        if c is not None:
            self._calls += 1
            self._converged += int(c.converged)
            self._worst = max(self._worst, c.marginal_error)

    def log(self, world: int = 1, device: torch.device | str = "cpu") -> dict[str, float]:
        """The columns since the last call; resets.

        With ``world`` > 1 the counts are summed and the error max-reduced over processes (each
        solve counted by the process that made it): every process must call this at the same step.
        Empty without ``fields``.
        """
        if not self.fields:
            return {}
        calls, converged, worst = self._calls, self._converged, self._worst
        self._calls, self._converged, self._worst = 0, 0, 0.0
        if world > 1:
            t = torch.tensor([calls, converged], dtype=torch.float64, device=device)
            worst_t = torch.tensor([worst], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            dist.all_reduce(worst_t, op=dist.ReduceOp.MAX)
            calls, converged, worst = int(t[0]), int(t[1]), float(worst_t[0])
        nan = float("nan")
        return {
            "coupling_calls": calls,
            "coupling_converged": converged / calls if calls else nan,
            "coupling_marginal_error_max": worst if calls else nan,
        }


@runtime_checkable
class Objective(Protocol):
    """The interface between the training engine and what it trains (see the module doc)."""

    event_shape: tuple[int, ...]
    needs_score: bool
    metrics: tuple[str, ...]

    def loss(self, net: nn.Module, step: int) -> Tensor:
        """The training loss of optimizer step ``step`` for the network ``net``."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float] | None:
        """Validation metrics of ``model`` (with ``val_loss``), or None without validation."""
        ...

    def state(self) -> dict[str, Any]:
        """The objective's state to save in a checkpoint."""
        ...

    def close(self) -> None:
        """Stop any background work (threads, prefetching) of the objective."""
        ...


def sample_rows(s: PathSample, part: slice) -> PathSample:
    """The rows ``part`` of a path sample, conditions included.

    One process's share of a global batch under torch.distributed.
    """
    k = torch.arange(part.start, part.stop, device=s.t.device)
    return PathSample(
        t=s.t[part], x0=s.x0[part], x1=s.x1[part], xt=s.xt[part], ut=s.ut[part],
        noise=s.noise[part], cond=index_cond(s.cond, k),
    )


class PairObjective:
    """Flow matching between two point clouds.

    Flow matching from ``cfg.data.source`` to ``cfg.data.target`` with the configured
    matcher and minibatch coupling.

    Couplings are made ahead by background threads (``couplings.workers``, see
    :mod:`otcfm.train.prefetch`): coupled batch k comes from a generator derived from (seed,
    k) and step s's times and path noise from one derived from (seed, s), so results are the
    same for any number of workers, with prefetch off and across a resume. A coupled batch of
    ``couplings.ot_batch`` pairs feeds ot_batch / batch_size consecutive optimizer steps.
    ``optim.batch_size`` and ``couplings.ot_batch`` are global: process ``rank`` of ``world``
    trains on its consecutive share of every step's batch.

    The training loss and ``val_loss`` are the same CFM loss (eq. (9)) on different
    couplings: each step's pairs come from one coupling of ``couplings.ot_batch`` points,
    ``val_loss`` couples the whole validation set (``data.n_val`` points) at once. For an OT
    coupling a larger coupled batch pairs points closer to the population OT plan, so the
    regression targets vary less and the loss is lower: with the defaults (512 against
    1,000 points) the training loss sits well above ``val_loss`` although nothing is wrong.
    The independent coupling's loss does not depend on it. Couplings that report their
    convergence (:attr:`~otcfm.couplings.Coupling.reports_convergence`) add the
    :data:`COUPLING_FIELDS` to the log (:meth:`coupling_log`).
    """

    metrics = ("val_loss", "val_w2")

    def __init__(
        self,
        cfg: RunConfig,
        matcher: FlowMatcher,
        *,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.matcher = matcher
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        for key, value in (("optim.batch_size", cfg.optim.batch_size),
                           ("couplings.ot_batch", cfg.ot_batch)):
            if value % world:
                raise ValueError(
                    f"{key} {value} is the global batch; it must be a multiple of the "
                    f"{world} processes"
                )
        self.data: RunData = load_run_data(cfg.data, cfg.seed)
        n_min = min(self.data.source.train.shape[0], self.data.target.train.shape[0])
        for key, value in (("optim.batch_size", cfg.optim.batch_size),
                           ("couplings.ot_batch", cfg.ot_batch)):
            if value > n_min:
                raise ValueError(
                    f"{key} {value} exceeds the smaller training set ({n_min} points)"
                )
        self.event_shape: tuple[int, ...] = self.data.event_shape
        self.needs_score = bool(matcher.needs_score)
        self.chunks_per_batch = cfg.ot_batch // cfg.optim.batch_size
        # coupled batches are broadcast in a group of their own (see Shard)
        group = dist.new_group(backend="gloo") if world > 1 else None
        self.shard = Shard(rank, world, cfg.couplings.scope, group)
        # whether each process couples (and draws times and noise for) only its own share
        self._local = world > 1 and self.shard.scope == "local"
        self._size = cfg.optim.batch_size // (world if self._local else 1)
        self._rank_label = str(rank) if self._local else "0"
        self._prefetcher: Prefetcher[CoupledBatch] | None = None
        self._coupled: CoupledBatch | None = None
        self._chunks: list[Pairing] = []
        self._turns: OwnTurns | None = None
        self._tally = ConvergenceTally(matcher.coupling)
        #: extra log.csv columns: COUPLING_FIELDS when the coupling reports convergence
        self.log_fields: tuple[str, ...] = self._tally.fields
        # one-time loads here, before the run's clock starts, not in its first batch and
        # validation: the coupling's compiled solver and the exact W2 of validation
        matcher.coupling.prepare()
        load_kernels("exact")

    # ------------------------------------------------------------------ couplings
    def couple(
        self, index: int, solved: Callable[[int], Pairing] | None = None
    ) -> CoupledBatch:
        """Coupled batch ``index``.

        A function of (seed, index) and the coupling scope only (``solved``: this process's turns of
        the global solve, see :class:`OwnTurns`).
        """
        return couple_batch(
            self.matcher.coupling,
            self.data.source.train,
            self.data.target.train,
            self.cfg.ot_batch,
            index,
            seed=self.cfg.seed,
            shard=self.shard,
            device=self.device,
            paired=self.cfg.data.paired,
            checked=True,  # load_run_data checked the sets, __init__ the sizes
            solved=solved,
        )

    def _solve_alone(self, index: int) -> Pairing:
        """The pairing one process makes of coupled batch ``index``.

        A turn of the global solve, made ahead by :class:`OwnTurns`.
        """
        return couple_batch(
            self.matcher.coupling, self.data.source.train, self.data.target.train,
            self.cfg.ot_batch, index, seed=self.cfg.seed, device=self.device,
            paired=self.cfg.data.paired, checked=True,
        ).pair

    def next_pairs(self, step: int) -> Pairing:
        """The pairs of step ``step``.

        The pairs of ``step`` (chunk step % m of coupled batch step // m): the global
        batch_size pairs, or this process's share of them with scope "local".
        """
        index, part = divmod(step, self.chunks_per_batch)
        if self._coupled is None or self._coupled.index != index:
            p = self._prefetcher
            if p is None or p.next_index != index:  # first step, after a resume or past the end
                self.close()
                c = self.cfg.couplings
                stop = max(index + 1, -(-self.cfg.optim.steps // self.chunks_per_batch))
                # one coupling thread per process under DDP: its broadcasts stay in order;
                # none for in-order couplings (I-CFM): drawing rows costs less than a handoff
                workers = min(c.workers, 1) if self.world > 1 else c.workers
                make: Callable[[int], CoupledBatch] = self.couple
                if self.matcher.coupling.in_order:
                    workers = 0
                    if pairs_in_order(self.matcher.coupling):  # the same batches as couple
                        make = InOrderBatches(
                            self.data.source.train,
                            self.data.target.train,
                            self.cfg.ot_batch,
                            seed=self.cfg.seed,
                            shard=self.shard,
                            device=self.device,
                            paired=self.cfg.data.paired,
                            stop=stop,
                        )
                elif self.world > 1 and not self._local:  # the processes' turns overlap
                    self._turns = OwnTurns(self._solve_alone, self.shard, stop=stop)
                    make = functools.partial(self.couple, solved=self._turns)
                p = Prefetcher(make, index, stop, workers=workers, depth=c.prefetch)
                self._prefetcher = p
            self._coupled = p.next()
            if self._coupled.index != index:  # pragma: no cover - guards the bookkeeping
                raise RuntimeError(f"coupled batch {self._coupled.index} != expected {index}")
            self._count_solve(self._coupled.pair)
            self._chunks = chunks(self._coupled.pair, self._size)
        return self._chunks[part]

    def step_sample(self, step: int) -> PathSample:
        """This process's share of the path sample of ``step``.

        Times and noise are drawn for the whole global batch from ``stream(seed, "step", "0",
        step)`` and sliced, so every world size trains on the same samples (scope "local"
        draws them per process instead).
        """
        pair = self.next_pairs(step)
        # the pairs come from the checked training sets: the matcher need not re-check them
        s = self.matcher._sample_pairing(
            pair, stream(self.cfg.seed, "step", self._rank_label, str(step))
        )
        if self.world == 1 or self._local:
            return s
        return sample_rows(s, self.shard.rows(s.t.shape[0]))

    def loss(self, net: nn.Module, step: int) -> Tensor:
        """The matcher's regression loss (eq. (9)) on this process's share of ``step``."""
        return self.matcher.regress(net, self.step_sample(step))

    def _count_solve(self, pair: Pairing) -> None:
        """Add a coupled batch's convergence (when this process solved it) to the tally."""
        self._tally.add(pair)

    def coupling_log(self) -> dict[str, float]:
        """The coupling's convergence since the last call, as log.csv columns.

        The coupling's convergence since the last call, as log.csv columns
        (:class:`ConvergenceTally`), summed over processes; resets.
        """
        return self._tally.log(self.world, self.device)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation loss and W2 of pushed-forward validation sources.

        Validation loss (fixed seed, whole validation set) and W2 of pushed-forward
        validation sources against the validation targets.
        """
        x0 = self.data.source.val.to(self.device)
        x1 = self.data.target.val.to(self.device)
        n = min(x0.shape[0], x1.shape[0])
        val_loss = float(
            self.matcher.loss(model, x0[:n], x1[:n], generator=stream(self.cfg.seed, "val"))
        )
        e = self.cfg.eval
        traj = integrate(model, x0, method=e.solver, steps=e.ode_steps, save="ends", energy=False)
        val_w2 = wasserstein(traj.x_final.cpu(), x1.cpu(), p=2)
        return {"val_loss": val_loss, "val_w2": val_w2}

    def state(self) -> dict[str, Any]:
        """The objective's checkpoint state: the run config as a dict."""
        return {"config": self.cfg.to_dict()}

    def close(self) -> None:
        """Stop the coupling workers (a later step starts them again)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
        if self._turns is not None:
            self._turns.close()
        self._prefetcher, self._coupled, self._chunks, self._turns = None, None, [], None
