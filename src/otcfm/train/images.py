"""Flow matching from Gaussian noise to images: the objective of the image recipes.

:class:`ImageObjective` plugs into the training engine (:class:`~otcfm.train.loop.Engine`,
which owns the model, AdamW with warmup, EMA, clipping, bf16 autocast, logs and checkpoints).
Step ``s`` draws, in this order, from ``stream(seed, "images", "step", s)``: ``batch_size``
distinct training images (:func:`~otcfm.data.sample_indices`), their horizontal flips when the
data set uses them (:func:`~otcfm.data.images.hflip`), the source noise x0 ~ N(0, I) of the
images' shape, then the coupling's, time's and path's draws (:meth:`FlowMatcher.sample`). So
a step is a function of the seed and the step number alone, and a resumed run equals one that
never stopped.

With ``conditional=True`` the class labels travel as the target condition ``y``: the model is
called ``model(x, t, y=labels)``, a coupling spec with ``within=y`` pairs noise and images
only within a class, and the matcher's ``cond_dropout`` replaces labels by the null class for
classifier-free guidance. Couplings pair the flattened pixels (Tong et al., Sec. 3.2: the
minibatch OT plan of eq. (9) on the images as vectors).

Logged beside the loss: the coupling's share of the training time since the previous row
(``coupling_share``; the paper's concern that exact OT on images costs too much is measured
here, not assumed) and, for couplings that report it, their convergence
(:class:`~otcfm.train.objectives.ConvergenceTally`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from otcfm.couplings import Pairing
from otcfm.data import sample_indices
from otcfm.data.images import ImageSet, hflip
from otcfm.matchers import FlowMatcher
from otcfm.sampling import Guided, integrate
from otcfm.train.datasets import stream
from otcfm.train.objectives import ConvergenceTally, sample_rows

__all__ = ["ImageObjective"]


class ImageObjective:
    """Flow matching from noise to ``data.images`` with ``matcher``.

    Noise -> ``data.images`` with ``matcher``; ``n_val`` images are held out (a fixed
    choice from the seed) for the validation loss.

    ``flips``: horizontal flips of the training images (default: ``data.flips``, True only
    for CIFAR-10). ``conditional``: pass the labels as ``y`` (the data set must have labels).

    Under torch.distributed (``rank`` of ``world`` processes) ``batch_size`` is the global
    batch: every process draws and couples the same whole batch (the draws are a function of
    the seed and the step) and trains on its consecutive share of the path sample, so a run
    follows the same trajectory on any number of processes.
    """

    metrics = ("val_loss",)
    needs_score = False

    def __init__(
        self,
        data: ImageSet,
        matcher: FlowMatcher,
        *,
        batch_size: int,
        seed: int,
        n_val: int = 500,
        flips: bool | None = None,
        conditional: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not isinstance(data, ImageSet):
            raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
        if conditional and data.labels is None:
            raise ValueError(f"{data.name} has no class labels: conditional training needs them")
        n = len(data)
        if not 1 <= n_val < n:
            raise ValueError(f"n_val must be in [1, {n - 1}] ({data.name} has {n} images), "
                             f"got {n_val}")
        if not 1 <= batch_size <= n - n_val:
            raise ValueError(f"batch_size must be in [1, {n - n_val}] (the training images), "
                             f"got {batch_size}")
        if batch_size % world:
            raise ValueError(f"optim.batch_size {batch_size} is the global batch; it must be a "
                             f"multiple of the {world} processes")
        self.rank, self.world = int(rank), int(world)
        #: a gloo group of all processes, for Python objects (e.g. a resumed state)
        self.group = (dist.new_group(backend="gloo") if world > 1 and dist.is_initialized()
                      else None)
        self.matcher = matcher
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.flips = data.flips if flips is None else bool(flips)
        self.conditional = bool(conditional)
        self.device = torch.device(device)
        perm = torch.randperm(n, generator=stream(seed, "images", "split"))
        val, train = perm[:n_val], perm[n_val:]
        self.train_images, self.val_images = data.images[train], data.images[val]
        labels = data.labels
        self.train_labels = labels[train] if labels is not None else None
        self.val_labels = labels[val] if labels is not None else None
        self.event_shape: tuple[int, ...] = tuple(data.shape)
        self.num_classes = data.num_classes if labels is not None else None
        self.classes = tuple(data.classes)
        self._tally = ConvergenceTally(matcher.coupling)
        #: log.csv columns beside the loss
        self.log_fields: tuple[str, ...] = ("coupling_share", *self._tally.fields)
        self._coupling_seconds = 0.0
        matcher.coupling.prepare()  # its compiled solver loads before the clock starts
        self._since = time.perf_counter()

    # ------------------------------------------------------------------ training
    def batch(self, step: int) -> tuple[Tensor, Tensor, dict[str, Tensor], torch.Generator]:
        """The batch of step ``step`` and the generator for its coupling and path.

        Step ``step``'s noise x0, images x1 and conditions, and the generator whose next
        draws are the coupling's and the path's.
        """
        g = stream(self.seed, "images", "step", str(step))
        idx = sample_indices(self.train_images.shape[0], self.batch_size, generator=g)
        x1 = self.train_images[idx]
        if self.flips:
            x1 = hflip(x1, g)
        x0 = torch.randn(x1.shape, generator=g)
        cond = {"y": self.train_labels[idx]} if self.conditional else {}
        return x0, x1, cond, g

    def pair(self, step: int) -> tuple[Pairing, torch.Generator]:
        """Step ``step``'s coupled batch (on the objective's device) and its generator."""
        x0, x1, cond, g = self.batch(step)
        start = time.perf_counter()
        pair = self.matcher.coupling(x0.to(self.device), x1.to(self.device), generator=g,
                                     cond1={k: v.to(self.device) for k, v in cond.items()}
                                     or None)
        self._coupling_seconds += time.perf_counter() - start
        self._tally.add(pair)
        return pair, g

    def loss(self, net: nn.Module, step: int) -> Tensor:
        """The CFM loss (eq. (9)) of step ``step``'s coupled batch (this process's share)."""
        pair, g = self.pair(step)
        s = self.matcher.sample(pair, generator=g)
        if self.world > 1:
            size = self.batch_size // self.world
            s = sample_rows(s, slice(self.rank * size, (self.rank + 1) * size))
        return self.matcher.regress(net, s)

    def coupling_log(self) -> dict[str, float]:
        """Extra log columns: the coupling's share of the wall time and its convergence.

        ``coupling_share``: the coupling's share of the wall time since the previous row
        (of this process); then the coupling's convergence, when it reports it (counted once:
        every process solves the same batch).
        """
        now = time.perf_counter()
        share = self._coupling_seconds / max(now - self._since, 1e-12)
        self._coupling_seconds, self._since = 0.0, now
        return {"coupling_share": min(share, 1.0), **self._tally.log()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, *, steps: int = 100, method: str = "euler",
               generator: torch.Generator | None = None, y: Tensor | None = None,
               guidance: float = 0.0) -> Tensor:
        """Sample ``n`` images through the model ODE.

        ``n`` images: noise from ``generator`` pushed through the model ODE with ``steps``
        steps of ``method``. A class-conditional model takes labels ``y`` (n,); ``guidance``
        w > 0 samples v = (1 + w) v(x | y) - w v(x | null) (:class:`~otcfm.sampling.Guided`).
        """
        if guidance and y is None:
            raise ValueError("guidance needs class labels y")
        x0 = torch.randn((n, *self.event_shape), generator=generator).to(self.device)
        field = Guided(model, guidance) if guidance else model
        cond = {"y": y.to(self.device)} if y is not None else None
        return integrate(field, x0, method=method, steps=steps, cond=cond).x_final

    def grid_labels(self, n: int) -> Tensor | None:
        """Labels of a sample grid of ``n`` images: the classes in turn.

        Labels of a sample grid of ``n`` images: the classes in turn (0, 1, ..., K-1, 0,
        ...), so a grid of K columns has one class per column; None when unconditional.
        """
        if not self.conditional:
            return None
        return torch.arange(n) % int(self.num_classes or 1)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, n: int, *, steps: int) -> Tensor:
        """Sample ``n`` grid images of ``model`` from the same noise at every call.

        ``n`` images of ``model`` from the same noise at every call (the run's grid
        stream), ``steps`` Euler steps, labels :meth:`grid_labels`: grids of one run are
        comparable across steps.
        """
        g = stream(self.seed, "images", "grid")
        return self.sample(model, n, steps=steps, generator=g, y=self.grid_labels(n)).cpu()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """The CFM loss on the held-out images, the same draws at every validation."""
        g = stream(self.seed, "images", "val")
        x1 = self.val_images.to(self.device)
        x0 = torch.randn(x1.shape, generator=g).to(self.device)
        cond = {"y": self.val_labels.to(self.device)} if self.conditional else {}
        return {"val_loss": float(self.matcher.loss(model, x0, x1, generator=g, **cond))}

    def state(self) -> dict[str, Any]:
        """What rebuilds the model and reads its samples: image shape and classes."""
        return {"image_shape": list(self.event_shape), "num_classes": self.num_classes,
                "classes": list(self.classes), "conditional": self.conditional}

    def close(self) -> None:
        """Release nothing: the objective holds no threads or files."""
        pass
