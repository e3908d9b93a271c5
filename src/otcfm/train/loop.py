"""The training loop shared by every recipe.

data -> coupling -> matcher.sample -> loss -> optimizer step -> EMA -> periodic validation,
checkpoint and log. It counts optimizer steps (not epochs), seeds everything from the run's
seed, writes nothing outside ``cfg.run_dir`` and keeps no globals.

Couplings are made ahead by background threads (``couplings.workers``, see
:mod:`otcfm.train.prefetch`): coupled batch k comes from a generator derived from (seed, rank,
k) and step s's time and path noise from one derived from (seed, rank, s), so results are the
same for any number of workers, with prefetch off (workers = 0), and across a resume. A coupled
batch of ``couplings.ot_batch`` pairs feeds ot_batch / batch_size consecutive optimizer steps.

Under torch.distributed (the caller initialises the process group, e.g. ``otcfm train`` under
``torchrun``) ``optim.batch_size`` and ``couplings.ot_batch`` are global: the sequence of
global batches and of each step's times and path noise is a function of the seed alone, each
process trains on its consecutive share of every step's batch, DDP averages the gradients, and
an optimizer step is one step of the whole job. So a run on N processes follows the same
trajectory as on one (up to float rounding in the gradient sum), and a checkpoint resumes on
any number of processes. With ``couplings.scope = "global"`` one process couples each global
batch (:mod:`otcfm.train.prefetch`); only rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from otcfm._utils import index_cond
from otcfm.couplings import Pairing
from otcfm.matchers import FlowMatcher, matcher
from otcfm.metrics import wasserstein
from otcfm.models import MLP, DriftScore
from otcfm.paths import PathSample
from otcfm.sampling import integrate
from otcfm.train.checkpoint import load_checkpoint, save_atomic, write_text_atomic
from otcfm.train.config import MethodConfig, ModelConfig, RunConfig
from otcfm.train.datasets import RunData, load_run_data, stream
from otcfm.train.ema import EMA
from otcfm.train.prefetch import CoupledBatch, Prefetcher, Shard, chunks, couple_batch
from otcfm.train.progress import Progress

log = logging.getLogger("otcfm.train")

LOG_FIELDS = ("step", "loss", "val_loss", "val_w2", "seconds")


def build_matcher(cfg: MethodConfig) -> FlowMatcher:
    """The configured flow matcher from the registry (sigma -1: the preset's default)."""
    kwargs: dict[str, Any] = {"time_sampler": cfg.time_sampler}
    if cfg.sigma != -1:
        kwargs["sigma"] = cfg.sigma
    if cfg.coupling:
        kwargs["coupling"] = cfg.coupling
    return matcher(cfg.name, **kwargs)


def build_model(
    cfg: ModelConfig,
    event_shape: tuple[int, ...],
    *,
    score: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The vector-field network for points of shape ``event_shape``.

    With ``score`` (methods whose matcher ``needs_score``, i.e. SF2M) a :class:`DriftScore`
    of two such MLPs: its forward is the drift, so ODE sampling and validation are unchanged.
    ``generator``: the initial weights are drawn from it (PyTorch's default init).
    """
    kwargs = {"width": cfg.width, "depth": cfg.depth, "activation": cfg.activation}
    if score:
        return DriftScore.mlp(event_shape, generator=generator, **kwargs)
    return MLP(dim=event_shape, generator=generator, **kwargs)


def needs_score(cfg: MethodConfig) -> bool:
    """Whether the configured method trains a score network as well (SF2M)."""
    return bool(build_matcher(cfg).needs_score)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_step: int
    best_val_loss: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class RankFailure(RuntimeError):
    """Another process of a torch.distributed run died or stopped answering."""


class Trainer:
    """Owns the model, optimizer, EMA and RNG state of one run; ``run()`` trains to the budget.

    Under an initialised torch.distributed process group every process builds a Trainer with
    the same config; the model is wrapped in DDP and the global batch split among processes.
    """

    def __init__(
        self, cfg: RunConfig, *, device: str | torch.device | None = None, progress: bool = True
    ) -> None:
        cfg = cfg.validate().resolve()
        self.cfg = cfg
        self.rank = dist.get_rank() if _distributed() else 0
        self.world = dist.get_world_size() if _distributed() else 1
        self.device = process_device(device or cfg.device)
        self.progress = progress and self.rank == 0
        for key, value in (("optim.batch_size", cfg.optim.batch_size),
                           ("couplings.ot_batch", cfg.ot_batch)):
            if value % self.world:
                raise ValueError(
                    f"{key} {value} is the global batch; it must be a multiple of the "
                    f"{self.world} processes"
                )
        self.run_dir = cfg.run_dir
        self.matcher = build_matcher(cfg.method)
        self.data: RunData = load_run_data(cfg.data, cfg.seed)
        n_min = min(self.data.source.train.shape[0], self.data.target.train.shape[0])
        if cfg.optim.batch_size > n_min:
            raise ValueError(
                f"optim.batch_size {cfg.optim.batch_size} exceeds the smaller training set "
                f"({n_min} points)"
            )
        if cfg.ot_batch > n_min:
            raise ValueError(
                f"couplings.ot_batch {cfg.ot_batch} exceeds the smaller training set "
                f"({n_min} points)"
            )
        self.chunks_per_batch = cfg.ot_batch // cfg.optim.batch_size
        self.shard = Shard(
            self.rank,
            self.world,
            cfg.couplings.scope,
            dist.new_group(backend="gloo") if self.world > 1 else None,
        )
        self.model = build_model(
            cfg.model,
            self.data.event_shape,
            score=self.matcher.needs_score,
            generator=torch.Generator().manual_seed(cfg.seed),
        ).to(self.device)
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self._prefetcher: Prefetcher[CoupledBatch] | None = None
        self._coupled: CoupledBatch | None = None
        self._chunks: list[Pairing] = []
        self.best_val_loss = math.inf
        self.best_step = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "train_seconds": self.train_seconds,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.close()  # coupled batches made ahead belong to the old step count
        self.step = int(state["step"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_step = int(state["best_step"])
        self.train_seconds = float(state["train_seconds"])
        self.history = list(state["history"])

    def eval_model(self) -> nn.Module:
        """The network used for validation and sampling (EMA weights when enabled)."""
        return self.ema.shadow if self.ema is not None else self.model

    # ------------------------------------------------------------------ couplings
    @property
    def _local(self) -> bool:
        """Whether each process couples (and draws times and noise for) only its own share."""
        return self.world > 1 and self.shard.scope == "local"

    def couple(self, index: int) -> CoupledBatch:
        """Coupled batch ``index``: a function of (seed, index) and the coupling scope only."""
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
        )

    def next_pairs(self) -> Pairing:
        """The pairs of the current step (chunk step % m of coupled batch step // m): the global
        batch_size pairs, or this process's share of them with scope "local"."""
        index, part = divmod(self.step, self.chunks_per_batch)
        if self._coupled is None or self._coupled.index != index:
            p = self._prefetcher
            if p is None or p.next_index != index:  # first step, after a resume or past the end
                self.close()
                c = self.cfg.couplings
                stop = max(index + 1, -(-self.cfg.optim.steps // self.chunks_per_batch))
                # one coupling thread per process under DDP: its broadcasts stay in order
                workers = min(c.workers, 1) if self.world > 1 else c.workers
                p = Prefetcher(self.couple, index, stop, workers=workers, depth=c.prefetch)
                self._prefetcher = p
            self._coupled = p.next()
            if self._coupled.index != index:  # pragma: no cover - guards the bookkeeping
                raise RuntimeError(f"coupled batch {self._coupled.index} != expected {index}")
            size = self.cfg.optim.batch_size // (self.world if self._local else 1)
            self._chunks = chunks(self._coupled.pair, size)
        return self._chunks[part]

    def step_sample(self) -> PathSample:
        """This process's share of the current step's path sample.

        Times and noise are drawn for the whole global batch from ``stream(seed, "step", "0",
        step)`` and sliced, so every world size trains on the same samples (scope "local"
        draws them per process instead).
        """
        pair = self.next_pairs()
        rank = str(self.rank) if self._local else "0"
        s = self.matcher.sample(pair, generator=stream(self.cfg.seed, "step", rank, str(self.step)))
        if self.world == 1 or self._local:
            return s
        part = self.shard.rows(s.t.shape[0])
        k = torch.arange(part.start, part.stop, device=s.t.device)
        return PathSample(
            t=s.t[part], x0=s.x0[part], x1=s.x1[part], xt=s.xt[part], ut=s.ut[part],
            noise=s.noise[part], cond=index_cond(s.cond, k),
        )

    def close(self) -> None:
        """Stop the coupling workers (a later step starts them again)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
        self._prefetcher, self._coupled, self._chunks = None, None, []

    # ------------------------------------------------------------------ steps
    def train_step(self) -> float:
        o = self.cfg.optim
        if not self.net.training:  # validation leaves it in eval mode; a call walks every module
            self.net.train()
        loss = self.matcher.regress(self.net, self.step_sample())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: the gradient all-reduce, before any process can stop
        if not torch.isfinite(loss):
            where = f" on rank {self.rank}" if self.world > 1 else ""
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.step}{where}; lower optim.lr "
                f"(now {o.lr}) or set optim.grad_clip"
            )
        if o.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (fixed seed, whole validation set) and W2 of pushed-forward samples."""
        model = self.eval_model().eval()
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

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cfg.to_toml(), self.run_dir / "config.toml")
        bar = Progress(
            total=cfg.optim.steps,
            initial=self.step,
            enabled=self.progress,
            desc=f"{cfg.name} ({cfg.method.name})",
        )
        running, count = 0.0, 0
        start = time.perf_counter() - self.train_seconds
        try:
            while self.step < cfg.optim.steps:
                running += self._guarded(self.train_step)
                count += 1
                bar.update(1, loss=running / count)
                last = self.step == cfg.optim.steps
                if self.step % cfg.eval.val_every == 0 or last:
                    self.train_seconds = time.perf_counter() - start
                    mean = self._guarded(self._mean_over_processes, running / count)
                    running, count = 0.0, 0
                    if self.rank == 0:
                        row = {"step": self.step, "loss": mean, **self.validate(),
                               "seconds": self.train_seconds}
                        self._record(row)
                        bar.update(0, loss=mean, val_loss=row["val_loss"], val_w2=row["val_w2"])
                if self.step % cfg.eval.checkpoint_every == 0 or last:
                    self.train_seconds = time.perf_counter() - start
                    self._save("latest.pt")
        finally:
            bar.close()
            self.close()
        self.train_seconds = time.perf_counter() - start
        result = TrainResult(
            self.run_dir,
            self.step,
            self.best_step,
            self.best_val_loss,
            self.train_seconds,
            self.history,
        )
        if self.rank == 0:
            summary = {
                "steps": self.step,
                "best_step": self.best_step,
                "best_val_loss": self.best_val_loss,
                "train_seconds": self.train_seconds,
                "processes": self.world,
            }
            _merge_json(self.run_dir / "metrics.json", {"train": summary})
        return result

    def _mean_over_processes(self, value: float) -> float:
        """The mean of ``value`` over all processes (the value itself in a single process)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def _guarded(self, work: Any, *args: Any) -> Any:
        """``work(*args)``; under torch.distributed a lost peer becomes :class:`RankFailure`."""
        if self.world == 1:
            return work(*args)
        try:
            return work(*args)
        except (RuntimeError, ConnectionError) as err:
            if isinstance(err, (RankFailure, FloatingPointError)):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RankFailure(
                f"rank {self.rank} of {self.world} lost contact with another process at step "
                f"{self.step} ({first[:200]}); the run stopped, its last checkpoint is "
                f"{self.run_dir / 'checkpoints' / 'latest.pt'}: continue it with --resume"
            ) from err

    def _record(self, row: dict[str, float]) -> None:
        self.history.append(row)
        if row["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.best_step = row["val_loss"], self.step
            self._save("best.pt")
        _write_log(self.run_dir / "log.csv", self.history)
        log.debug(
            "step %d loss %.4f val_loss %.4f val_w2 %.4f",
            self.step,
            row["loss"],
            row["val_loss"],
            row["val_w2"],
        )

    def _save(self, name: str) -> None:
        if self.rank == 0:
            save_atomic(self.state_dict(), self.run_dir / "checkpoints" / name)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite log.csv from the history (kept in the checkpoint, so resume never duplicates)."""
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in LOG_FIELDS})
    write_text_atomic("".join(lines), path)


def _merge_json(path: Path, update: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(update)
    write_text_atomic(json.dumps(data, indent=2, default=float) + "\n", path)


def process_device(device: str | torch.device) -> torch.device:
    """The device of this process: ``cuda`` means ``cuda:LOCAL_RANK`` under a launcher."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        import os

        d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def train(
    cfg: RunConfig, *, resume: bool = False, device: str | None = None, progress: bool = True
) -> TrainResult:
    """Train a run to ``cfg.optim.steps``; with ``resume``, continue from checkpoints/latest.pt.

    Under torch.distributed every process calls this with the same config; rank 0 reads the
    checkpoint and sends it to the others (no shared file system needed), so a run resumes
    on any number of processes.
    """
    trainer = Trainer(cfg, device=device, progress=progress)
    cfg = trainer.cfg
    outcome: list[Any] = [None]
    if trainer.rank == 0:
        try:
            outcome = [("state", _resume_state(cfg, resume))]
        except (ValueError, FileExistsError, FileNotFoundError) as err:
            outcome = [("error", err)]
    if trainer.world > 1:
        dist.broadcast_object_list(outcome, src=0, group=trainer.shard.group)
    kind, value = outcome[0]
    if kind == "error":
        trainer.close()
        raise value
    if value is not None:
        trainer.load_state_dict(value)
        if trainer.rank == 0:
            log.info("resumed %s at step %d", cfg.run_dir, trainer.step)
    return trainer.run()


def _resume_state(cfg: RunConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from (None: start from step 0); errors for a config
    mismatch or an existing run without ``resume``."""
    latest = cfg.run_dir / "checkpoints" / "latest.pt"
    if not latest.is_file():
        return None
    if not resume:
        raise FileExistsError(
            f"{cfg.run_dir} already holds a run; pass --resume to continue it or choose "
            "another --name"
        )
    state = load_checkpoint(latest)
    saved = RunConfig.from_dict(state["config"]).resolve()
    if _without_steps(saved) != _without_steps(cfg):
        raise ValueError(
            f"cannot resume {cfg.run_dir}: its config differs from the one given "
            "(only optim.steps may change on resume)"
        )
    return state


def _without_steps(cfg: RunConfig) -> dict[str, Any]:
    """The config keys a resume must keep (steps may grow; workers, prefetch and the
    distributed settings change nothing)."""
    d = cfg.to_dict()
    d["optim"] = {k: v for k, v in d["optim"].items() if k != "steps"}
    d["couplings"] = {k: v for k, v in d["couplings"].items() if k in ("ot_batch", "scope")}
    for key in ("distributed", "device", "out_dir"):  # a moved run folder still resumes
        d.pop(key, None)
    return d
