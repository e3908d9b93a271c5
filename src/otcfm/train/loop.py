"""The one training engine: every recipe trains through :class:`Engine`.

An objective (:mod:`otcfm.train.objectives`) -> loss -> optimizer step (AdamW, optional
gradient clipping) -> EMA -> periodic logging and validation, checkpoint. The engine counts
optimizer steps (not epochs), takes each step's draws from the objective as a function of
(seed, step), writes files only through a :class:`~otcfm.train.runfolder.RunFolder` and keeps
no globals; the same loop trains pairs of point clouds (:class:`Trainer`, built from a
:class:`RunConfig`) and time-course populations (:class:`otcfm.trajectory.fit.Fitter`).

Under torch.distributed (the caller initialises the process group, e.g. ``otcfm train`` under
``torchrun``) the model is wrapped in DDP, each process computes the loss of its share of the
global batch (the objective's ``loss``), DDP averages the gradients, and an optimizer step is
one step of the whole job: a run on N processes follows the same trajectory as on one (up to
float rounding in the gradient sum), and a checkpoint resumes on any number of processes. The
logged training loss is the mean over processes; only rank 0 validates and writes files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from otcfm.couplings import Pairing
from otcfm.data.images import load_images
from otcfm.matchers import FlowMatcher, matcher
from otcfm.models import MLP, DriftScore, UNet
from otcfm.paths import PathSample
from otcfm.train.config import (
    LR_SCHEDULES,
    ConfigError,
    MethodConfig,
    ModelConfig,
    RunConfig,
    config_differences,
)
from otcfm.train.datasets import (
    DATA_RECORD,
    RunData,
    check_same_data,
    record_image_data,
    record_run_data,
)
from otcfm.train.ema import EMA
from otcfm.train.images import ImageObjective
from otcfm.train.objectives import Objective, PairObjective
from otcfm.train.prefetch import CoupledBatch, Shard
from otcfm.train.progress import Progress
from otcfm.train.runfolder import RunFolder

log = logging.getLogger("otcfm.train")

LOG_FIELDS = ("step", "loss", *PairObjective.metrics, "seconds")
"""log.csv columns of a run (:class:`Trainer`): ``loss`` is the mean training loss since the
previous row, ``val_loss``/``val_w2`` the validation of the eval model (``val_loss`` couples
the whole validation set at once, the training loss ``couplings.ot_batch`` points: see
:class:`PairObjective`). A coupling that reports convergence adds
:data:`~otcfm.train.objectives.COUPLING_FIELDS` before ``seconds``."""


def build_matcher(cfg: MethodConfig, **extra: Any) -> FlowMatcher:
    """The configured flow matcher from the registry.

    Sigma -1: the preset's default. ``extra``: further keywords of :func:`~otcfm.matchers.matcher`
    (the condition dropout of a class-conditional image run, :func:`image_matcher`).
    """
    return matcher(cfg.name, **cfg.matcher_kwargs(), **extra)


def image_matcher(cfg: RunConfig, num_classes: int | None) -> FlowMatcher:
    """The matcher of an image run.

    A class-conditional one drops ``images.cond_dropout`` of the labels to the null class
    ``num_classes`` (classifier-free guidance).
    """
    if not cfg.images.conditional:
        return build_matcher(cfg.method)
    return build_matcher(cfg.method, cond_dropout=cfg.images.cond_dropout,
                         null_class=num_classes)


def build_model(
    cfg: ModelConfig,
    event_shape: tuple[int, ...],
    *,
    score: bool = False,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """The vector-field network for points (or images) of shape ``event_shape``.

    ``model.arch = "mlp"``: the MLP (on images: the flattened pixels); with ``score``
    (methods whose matcher ``needs_score``, i.e. SF2M) a :class:`DriftScore` of two such MLPs:
    its forward is the drift, so ODE sampling and validation are unchanged. ``"unet"``: the
    UNet of ``model.preset`` on images of shape ``event_shape`` (its channels and dropout when
    set). ``num_classes``: class-conditional, with a null class. ``generator``: the initial
    weights are drawn from it (PyTorch's default init).
    """
    if cfg.arch == "unet":
        if score:
            raise ValueError("model.arch 'unet' has no score network (SF2M needs the MLP)")
        options: dict[str, Any] = {"dim": tuple(event_shape)}
        if cfg.channels:
            options["channels"] = cfg.channels
        if cfg.dropout != -1:
            options["dropout"] = cfg.dropout
        return UNet.preset(cfg.preset, num_classes=num_classes, generator=generator, **options)
    kwargs = {"width": cfg.width, "depth": cfg.depth, "activation": cfg.activation}
    if score:
        if num_classes is not None:
            raise ValueError("SF2M's drift-and-score network takes no class labels")
        return DriftScore.mlp(event_shape, generator=generator, **kwargs)
    return MLP(dim=event_shape, generator=generator, num_classes=num_classes, **kwargs)


def needs_score(cfg: MethodConfig) -> bool:
    """Whether the configured method trains a score network as well (SF2M)."""
    return bool(build_matcher(cfg).needs_score)


@dataclass
class TrainResult:
    """What a training run produced: folder, step counts, best validation loss, time, history."""

    run_dir: Path
    steps: int
    best_step: int
    best_val_loss: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class RankFailure(RuntimeError):
    """Another process of a torch.distributed run died or stopped answering."""


class NonFiniteLoss(FloatingPointError, ValueError):
    """The training loss became NaN or inf.

    The message names the step, the loss, the learning rate and the last checkpoint kept. A
    ValueError too: a setting to change.
    """


@dataclass(frozen=True)
class LoopSettings:
    """How the engine optimises.

    AdamW(lr, weight_decay) to ``steps`` optimizer steps, the gradient norm clipped at ``grad_clip``
    (0: off), an EMA of the weights with ``ema_decay`` (0: off; validation then uses the EMA
    weights). The mean training loss is logged (and the objective validated) every ``log_every``
    steps and a checkpoint written every ``checkpoint_every`` steps (0: only at the end;
    ``checkpoints/step-N.pt`` and ``latest.pt``, see :class:`~otcfm.train.runfolder.RunFolder`);
    both happen at the last step.

    ``warmup``: the learning rate rises linearly over the first ``warmup`` steps, then stays
    at ``lr`` (:meth:`lr_at`; 0: constant, the 2-D recipes; the paper's CIFAR-10 recipe warms
    up over 5,000 steps). ``schedule`` (``otcfm.train.config.LR_SCHEDULES``), after the
    warmup: "constant" stays at ``lr``; "cosine" decays as ``lr (1 + cos(pi k / n)) / 2``
    over the n = steps - warmup remaining steps (k = 0 .. n - 1), which averages out the noise
    of a noisy regression target (SF2M's score, docs/results/gaussian_sb.md). ``bf16``: the
    loss (forward pass) runs under ``torch.autocast`` with bfloat16 on the run's device;
    parameters, gradients and the optimizer stay float32.
    """

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    log_every: int = 100
    checkpoint_every: int = 1_000
    warmup: int = 0
    schedule: str = LR_SCHEDULES[0]
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0 or self.grad_clip < 0 or not self.lr > 0:
            raise ValueError(
                f"need lr > 0, grad_clip >= 0 and checkpoint_every >= 0, got lr {self.lr}, "
                f"grad_clip {self.grad_clip}, checkpoint_every {self.checkpoint_every}"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0 (steps), got {self.warmup!r}")
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                             f"{self.schedule!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based).

        Warm-up: ``lr * min(1, (step + 1) / warmup)``, so the first step already moves and
        step ``warmup - 1`` reaches ``lr``; after it, ``lr`` ("constant") or
        ``lr (1 + cos(pi k / n)) / 2`` with k = step - warmup, n = steps - warmup ("cosine").
        """
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "cosine":
            k, n = step - self.warmup, max(1, self.steps - self.warmup)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(k, n) / n))
        return self.lr

    @property
    def varies(self) -> bool:
        """Whether the learning rate changes during the run (warm-up or a decaying schedule)."""
        return self.warmup > 0 or self.schedule != "constant"


class Engine:
    """Model, optimizer, EMA and step count of one run of ``objective``; :meth:`run` trains.

    ``model`` is built by the caller (from ``objective.event_shape``) and already on
    ``device``. ``folder``: where the run's files go (None: nowhere); ``config_toml`` becomes
    its ``config.toml``, ``files`` (name -> text, e.g. ``data.json``) are written beside it when
    training starts; ``extra_state`` is added to every checkpoint beside the objective's
    :meth:`~otcfm.train.objectives.Objective.state`. Under an initialised torch.distributed
    process group every process builds an Engine alike; the model is wrapped in DDP.
    """

    def __init__(
        self,
        objective: Objective,
        model: nn.Module,
        settings: LoopSettings,
        *,
        device: str | torch.device = "cpu",
        folder: RunFolder | None = None,
        config_toml: str | None = None,
        files: dict[str, str] | None = None,
        extra_state: dict[str, Any] | None = None,
        progress: bool = False,
        desc: str = "",
    ) -> None:
        self.objective = objective
        self.settings = settings
        self.rank, self.world = _rank_world()
        self.device = torch.device(device)
        self.folder = folder
        if folder is not None:
            folder.add_fields(getattr(objective, "log_fields", ()))
        self.config_toml = config_toml
        self.files = dict(files or {})
        self.extra_state = dict(extra_state or {})
        self.progress = progress and self.rank == 0
        self.desc = desc
        self.model = model
        s = settings
        self.ema = EMA(self.model, s.ema_decay) if s.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay
        )
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.saved_step: int | None = None  # step of the last checkpoints/latest.pt written
        self.best_val_loss = math.inf
        self.best_step = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, float]] = []
        #: names shown for the logged values on the progress line (default: their keys)
        self.labels: dict[str, str] = {}
        #: (every, hook): ``hook(engine)`` runs on rank 0 after every ``every``-th step and
        #: after the last (every = 0: after the last only), e.g. a sample grid
        self.periodic: list[tuple[int, Callable[[Engine], None]]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The engine's state for a checkpoint.

        Step, model, EMA, optimizer, best validation loss, time, history and the objective's.
        """
        return {
            **self.objective.state(),
            **self.extra_state,
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
        """Restore the state saved by :meth:`state_dict` (batches made ahead are dropped)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.close()  # batches made ahead belong to the old step count
        self.step = self.saved_step = int(state["step"])
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.best_step = int(state.get("best_step", 0))
        self.train_seconds = float(state["train_seconds"])
        self.history = [dict(row) for row in state["history"]]

    def eval_model(self) -> nn.Module:
        """The network used for validation and sampling (EMA weights when enabled)."""
        return self.ema.shadow if self.ema is not None else self.model

    def close(self) -> None:
        """Stop the objective's background work (a later step starts it again)."""
        self.objective.close()

    # ------------------------------------------------------------------ steps
    def train_step(self) -> float:
        """One optimizer step on the objective's loss at step ``step``; returns it."""
        s = self.settings
        if not self.model.training:  # validation leaves it in eval mode; .train() walks modules
            self.net.train()
        if s.bf16:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss = self.objective.loss(self.net, self.step)
        else:
            loss = self.objective.loss(self.net, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: the gradient all-reduce, before any process can stop
        value = loss.item()
        if not math.isfinite(value):
            where = f" on rank {self.rank}" if self.world > 1 else ""
            kept = ""
            if self.folder is not None:
                kept = (f"; the run folder keeps its checkpoint of step {self.saved_step} (a "
                        "lower --lr needs another --name)" if self.saved_step is not None else
                        "; no checkpoint was written: rerun with --resume and a lower --lr")
            raise NonFiniteLoss(
                f"training loss is {value} at step {self.step}{where}: lower the "
                f"learning rate (--lr, now {s.lr:g}) or clip the gradient norm (grad_clip, "
                f"now {s.grad_clip:g}){kept}"
            )
        if s.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        if s.varies:
            for group in self.optimizer.param_groups:
                group["lr"] = s.lr_at(self.step)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return value

    def run(
        self,
        until: int | None = None,
        *,
        log_every: int | None = None,
        checkpoint_every: int | None = None,
        callback: Callable[[Engine], None] | None = None,
    ) -> None:
        """Train to step ``until`` (default ``settings.steps``).

        Every ``log_every`` steps and at the last: the mean training loss since the last row
        (over all processes) and the objective's validation metrics become a history row
        (rank 0; log.csv; best.pt when ``val_loss`` improves). Every ``checkpoint_every``
        steps (0: never) and at the last: a checkpoint (:meth:`RunFolder.save_checkpoint`),
        then ``callback(self)``. The run folder's lock is held throughout (taken here unless
        the caller holds it; a fresh engine, at step 0, refuses a folder that holds a run).
        """
        s = self.settings
        until = s.steps if until is None else until
        log_every = s.log_every if log_every is None else log_every
        save_every = s.checkpoint_every if checkpoint_every is None else checkpoint_every
        took = False
        if self.folder is not None:
            took = self.folder.open(resume=self.step > 0)
            self.folder.start(self.config_toml, self.files)
        bar = Progress(total=until, initial=self.step, enabled=self.progress, desc=self.desc)
        shown = ("loss", *self.objective.metrics)
        running, count = 0.0, 0
        start = time.perf_counter() - self.train_seconds
        try:
            while self.step < until:
                running += self._guarded(self.train_step)
                count += 1
                bar.update(1, **{self.labels.get("loss", "loss"): running / count})
                last = self.step == until
                if self.step % log_every == 0 or last:
                    self.train_seconds = time.perf_counter() - start
                    mean = self._guarded(self._mean_over_processes, running / count)
                    logged = self._guarded(self._train_log)
                    running, count = 0.0, 0
                    if self.rank == 0:
                        row = {"step": self.step, "loss": mean, **logged}
                        row.update(self.objective.validate(self.eval_model().eval()) or {})
                        row["seconds"] = self.train_seconds
                        self._record(row)
                        bar.update(0, **{self.labels.get(k, k): row[k] for k in shown})
                if self.rank == 0:
                    for every, hook in self.periodic:
                        if last or (every and self.step % every == 0):
                            hook(self)
                if last or (save_every and self.step % save_every == 0):
                    self.train_seconds = time.perf_counter() - start
                    if self.folder is not None:
                        self.folder.save_checkpoint(self.step, self.state_dict)
                        self.saved_step = self.step
                    if callback is not None:
                        callback(self)
            self.train_seconds = time.perf_counter() - start
            if self.folder is not None:
                self.folder.merge_metrics({"train": self.summary()})
        finally:
            bar.close()
            self.close()
            if took:
                self.folder.close()

    def summary(self) -> dict[str, Any]:
        """The ``train`` section of metrics.json."""
        out: dict[str, Any] = {
            "steps": self.step,
            "train_seconds": self.train_seconds,
            "processes": self.world,
            "final_loss": self.history[-1]["loss"] if self.history else None,
        }
        if "val_loss" in self.objective.metrics:
            out.update(best_step=self.best_step, best_val_loss=self.best_val_loss)
        return out

    def _record(self, row: dict[str, float]) -> None:
        self.history.append(row)
        if row.get("val_loss", math.inf) < self.best_val_loss:
            self.best_val_loss, self.best_step = row["val_loss"], self.step
            if self.folder is not None:
                self.folder.save("best.pt", self.state_dict)
        if self.folder is not None:
            self.folder.log(self.history)
        log.debug("step %d %s", self.step, " ".join(f"{k} {v:.4g}" for k, v in row.items()))

    def _train_log(self) -> dict[str, float]:
        """Extra training columns of a log row.

        Extra training columns of a log row (every process calls it at each row): the
        objective's optional ``coupling_log()``, whose keys it lists in ``log_fields``.
        """
        coupling_log = getattr(self.objective, "coupling_log", None)
        return coupling_log() if coupling_log is not None else {}

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
            if isinstance(err, (RankFailure, FloatingPointError, ValueError)):
                raise  # its own error (a diverged loss, a coupling that did not converge)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            where = (f", its last checkpoint is {self.folder.checkpoints / 'latest.pt'}: "
                     "continue it with --resume") if self.folder is not None else ""
            raise RankFailure(
                f"rank {self.rank} of {self.world} lost contact with another process at step "
                f"{self.step} ({first[:200]}); the run stopped{where}"
            ) from err


class Trainer(Engine):
    """The engine on a :class:`RunConfig`: flow matching between two point clouds.

    The engine on a :class:`RunConfig`: flow matching between two point clouds
    (:class:`~otcfm.train.objectives.PairObjective`), files in ``cfg.run_dir``.

    ``run()`` trains to ``cfg.optim.steps``. Under an initialised torch.distributed process
    group every process builds a Trainer with the same config.
    """

    def __init__(
        self, cfg: RunConfig, *, device: str | torch.device | None = None, progress: bool = True
    ) -> None:
        cfg = cfg.validate().resolve()
        self.cfg = cfg
        rank, world = _rank_world()
        dev = process_device(device or cfg.device)
        self.run_dir = cfg.run_dir
        generator = torch.Generator().manual_seed(cfg.seed)
        objective: PairObjective | ImageObjective
        if cfg.is_image_run:
            images = load_images(cfg.data.target)
            classes = images.num_classes if cfg.images.conditional else None
            if cfg.images.conditional and images.labels is None:
                raise ConfigError("images.conditional", f"images.conditional: {images.name} "
                                  "has no class labels (a folder needs one subfolder per class)")
            self.matcher = image_matcher(cfg, classes)
            flips = {"auto": None, "on": True, "off": False}[cfg.images.flips]
            try:
                objective = ImageObjective(
                    images, self.matcher, batch_size=cfg.optim.batch_size, seed=cfg.seed,
                    n_val=cfg.data.n_val, flips=flips, conditional=cfg.images.conditional,
                    device=dev, rank=rank, world=world,
                )
            except ValueError as err:
                key = "data.n_val" if str(err).startswith("n_val") else "optim.batch_size"
                raise ConfigError(key, f"{key}: {err}") from None
            model = build_model(cfg.model, objective.event_shape, generator=generator,
                                num_classes=classes, score=self.matcher.needs_score).to(dev)
            # the data record (data.json) is hashed once, by the process that writes it
            self.data_record = record_image_data(cfg.data, images) if rank == 0 else None
        else:
            self.matcher = build_matcher(cfg.method)
            objective = PairObjective(cfg, self.matcher, rank=rank, world=world, device=dev)
            model = build_model(
                cfg.model, objective.event_shape, score=objective.needs_score,
                generator=generator,
            ).to(dev)
            self.data_record = (record_run_data(cfg.data, objective.event_shape) if rank == 0
                                else None)
        o = cfg.optim
        settings = LoopSettings(
            steps=o.steps, lr=o.lr, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
            ema_decay=o.ema_decay, warmup=o.warmup, schedule=o.schedule, bf16=o.bf16,
            log_every=cfg.eval.val_every, checkpoint_every=cfg.eval.checkpoint_every,
        )
        super().__init__(
            objective, model, settings, device=dev,
            folder=RunFolder(cfg.run_dir, fields=("step", "loss", *objective.metrics, "seconds"),
                             rank=rank, keep=cfg.eval.keep_checkpoints),
            config_toml=cfg.to_toml(), progress=progress,
            files={DATA_RECORD: self.data_record.to_json()} if self.data_record else None,
            desc=f"{cfg.name} ({cfg.method.name})",
        )
        self.objective: PairObjective | ImageObjective = objective  # type: ignore[assignment]
        if isinstance(objective, ImageObjective):
            self.extra_state["config"] = cfg.to_dict()
            im = cfg.images
            nrow = objective.num_classes if im.conditional else None

            def grid(engine: Engine) -> None:
                images = objective.sample_grid(engine.eval_model().eval(), im.grid_size,
                                               steps=im.grid_steps)
                engine.folder.save_grid(engine.step, images, nrow)  # type: ignore[union-attr]

            self.periodic.append((im.grid_every, grid))
        elif not self.matcher.coupling.in_order:  # the loss depends on how many are coupled
            local = world > 1 and self.shard.scope == "local"
            n_val = min(self.data.source.val.shape[0], self.data.target.val.shape[0])
            self.labels = {"loss": f"loss (OT batch {cfg.ot_batch // (world if local else 1)})",
                           "val_loss": f"val_loss (OT batch {n_val})"}

    @property
    def data(self) -> RunData:
        """The run's split data (the objective's)."""
        return self.objective.data

    @property
    def object_group(self) -> Any:
        """The gloo process group that Python objects (a resumed state) are broadcast in."""
        if isinstance(self.objective, ImageObjective):
            return self.objective.group
        return self.objective.shard.group

    @property
    def shard(self) -> Shard:
        """This process's share of a global batch (the objective's)."""
        return self.objective.shard

    @property
    def chunks_per_batch(self) -> int:
        """Chunks per coupled batch (the objective's)."""
        return self.objective.chunks_per_batch

    def couple(self, index: int) -> CoupledBatch:
        """Coupled batch ``index`` (see :meth:`PairObjective.couple`)."""
        return self.objective.couple(index)

    def next_pairs(self) -> Pairing:
        """The pairs of the current step (see :meth:`PairObjective.next_pairs`)."""
        return self.objective.next_pairs(self.step)

    def step_sample(self) -> PathSample:
        """This process's share of the current step's path sample."""
        return self.objective.step_sample(self.step)

    def validate(self) -> dict[str, float]:
        """Validation loss and W2 of the eval model (see :meth:`PairObjective.validate`)."""
        return self.objective.validate(self.eval_model().eval())

    def run(self) -> TrainResult:  # type: ignore[override]
        """Train to ``cfg.optim.steps``; write the run folder (rank 0)."""
        super().run()
        return TrainResult(
            self.run_dir,
            self.step,
            self.best_step,
            self.best_val_loss,
            self.train_seconds,
            self.history,
        )


def _rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
    """Train a run to ``cfg.optim.steps``, optionally resuming it.

    Train a run to ``cfg.optim.steps``; with ``resume``, continue from its newest readable
    checkpoint (see :func:`otcfm.train.runfolder.newest_checkpoint`; none yet: from step 0).

    The run folder's lock is held from before the checkpoint is read to the end (a second
    writer is refused, naming this process); without ``resume`` a folder that already holds a
    run is refused. Under torch.distributed every process calls this with the same config;
    rank 0 reads the checkpoint and sends it to the others (no shared file system needed), so
    a run resumes on any number of processes.
    """
    trainer = Trainer(cfg, device=device, progress=progress)
    cfg = trainer.cfg
    folder = trainer.folder
    assert folder is not None
    try:
        outcome: list[Any] = [None]
        if trainer.rank == 0:
            try:
                folder.open(resume=resume)
                state = _resume_state(cfg, folder)
                if state is not None:
                    check_same_data(cfg.run_dir, trainer.data_record)
                outcome = [("state", state)]
            except (ValueError, FileExistsError, FileNotFoundError) as err:
                outcome = [("error", err)]
        if trainer.world > 1:
            dist.broadcast_object_list(outcome, src=0, group=trainer.object_group)
        kind, value = outcome[0]
        if kind == "error":
            trainer.close()
            raise value
        if value is not None:
            trainer.load_state_dict(value)
            if trainer.rank == 0:
                log.info("resumed %s at step %d", cfg.run_dir, trainer.step)
        return trainer.run()
    finally:
        folder.close()


def _resume_state(cfg: RunConfig, folder: RunFolder) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run, checked against ``cfg``.

    The newest readable checkpoint of the run (None: start from step 0); ValueError when
    its config differs from ``cfg``.
    """
    found = folder.load_latest()
    if found is None:
        if folder.holds_run():
            log.info("%s has no checkpoint yet; training from step 0", cfg.run_dir)
        return None
    state, path = found
    saved = RunConfig.from_dict(state["config"]).resolve()
    changed = config_differences(_without_steps(saved), _without_steps(cfg))
    if changed:
        raise ValueError(
            f"cannot resume {cfg.run_dir}: its config differs from the one given: "
            f"{'; '.join(changed)} (the run's value -> the given one; a resume may change "
            "optim.steps, eval.keep_checkpoints, the coupling workers and prefetch, the "
            "device, out_dir and the distributed settings)"
        )
    if cfg.optim.schedule != "constant" and saved.optim.steps != cfg.optim.steps:
        raise ValueError(
            f"cannot resume {cfg.run_dir} with optim.steps {saved.optim.steps} -> "
            f"{cfg.optim.steps}: its {cfg.optim.schedule} learning-rate schedule is planned "
            "over the run's steps; resume with the same steps, or train a new run"
        )
    if path.name != "latest.pt":
        log.warning("%s: resuming from %s (step %d)", cfg.run_dir, path.name, state["step"])
    return state


def _without_steps(cfg: RunConfig) -> dict[str, Any]:
    """The config keys a resume must keep.

    Steps may grow; workers, prefetch and the distributed settings change nothing.
    """
    d = cfg.to_dict()
    d["optim"] = {k: v for k, v in d["optim"].items() if k != "steps"}
    d["eval"] = {k: v for k, v in d["eval"].items() if k != "keep_checkpoints"}
    d["couplings"] = {k: v for k, v in d["couplings"].items() if k in ("ot_batch", "scope")}
    for key in ("distributed", "device", "out_dir"):  # a moved run folder still resumes
        d.pop(key, None)
    return d
