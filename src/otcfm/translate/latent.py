"""Unpaired translation between two groups of images by a latent flow.

Unpaired translation between two groups of images by a flow in an autoencoder's latent
space (Tong et al. 2024, §5.4: CelebA attribute groups in a VAE's latent space).

The images of both groups are encoded by an :class:`~otcfm.translate.autoencoder.AutoEncoderFit`
(standardised codes); a flow from the source group's codes to the target group's codes is
trained by the library's engine like any point-cloud run (``otcfm train`` on two point files:
the codes are written as ``.npy`` files in the translation's folder, the flow's run folder
sits beside them); held-out source images are then encoded, pushed through the flow's ODE
(100 Euler steps) and decoded.

Scores (:func:`translation_scores`): MMD between the translated codes and the codes of
held-out target images (RBF mixture of bandwidths 0.01, 0.1, 1, 10, 100 on the standardised
codes, docs/reference.md §3), the mean Euclidean distance each code moved (an OT flow should
move them less than an independent coupling's), and, given a classifier, the share of
decoded images it puts in a target class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from otcfm.data.files import save_points
from otcfm.data.images import ImageSet
from otcfm.metrics import mmd
from otcfm.sampling import integrate
from otcfm.train.config import (
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from otcfm.train.evaluate import load_run
from otcfm.train.loop import train
from otcfm.translate.autoencoder import AutoEncoderFit

__all__ = ["FlowSpec", "Translation", "class_indices", "group_images", "translate",
           "translation_scores"]

ODE_STEPS = 100  # Euler steps of the translation ODE (the paper's evaluation, §3 of the docs)
SIGMA = 0.1  # the paper's sigma for the latent translation experiment


def class_indices(images: ImageSet, classes: Sequence[str | int]) -> tuple[int, ...]:
    """Indices of ``classes`` (names or indices) among ``images.classes``.

    ValueError for an unlabelled set, an empty list, an unknown or repeated class.
    """
    if images.labels is None:
        raise ValueError(f"{images.name} has no class labels: groups need them")
    if isinstance(classes, str | int):
        classes = [classes]
    if len(classes) == 0:
        raise ValueError("a group needs at least one class")
    out = []
    for c in classes:
        if isinstance(c, str) and c in images.classes:
            k = images.classes.index(c)
        elif isinstance(c, str) and c.isdigit() and int(c) < images.num_classes:
            k = int(c)
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < images.num_classes:
            k = c
        else:
            raise ValueError(f"unknown class {c!r} of {images.name}; its classes: "
                             f"{', '.join(images.classes)} (or their indices 0.."
                             f"{images.num_classes - 1})")
        if k in out:
            raise ValueError(f"class {c!r} is listed twice")
        out.append(k)
    return tuple(out)


def group_images(images: ImageSet, classes: Sequence[int]) -> Tensor:
    """The images (N, C, H, W) of the given class indices; ValueError if there are none."""
    keep = torch.isin(images.labels, torch.tensor(list(classes)))
    if not bool(keep.any()):
        names = ", ".join(images.classes[k] for k in classes)
        raise ValueError(f"no images of {names} in {images.name}")
    return images.images[keep]


@dataclass(frozen=True)
class FlowSpec:
    """The latent flow's settings.

    The latent flow: matcher ``method`` (I-CFM ``icfm``, OT-CFM ``otcfm``, SB-CFM
    ``sbcfm``, ...), its ``sigma`` (-1: the preset's), the paper's MLP of ``width`` x 3 SELU
    units with time concatenated, AdamW (lr 1e-3, weight decay 1e-5, EMA 0.999) for ``steps``
    steps of ``batch_size`` pairs, ``seed``.
    """

    method: str = "otcfm"
    sigma: float = SIGMA
    steps: int = 5_000
    batch_size: int = 256
    width: int = 256
    seed: int = 0

    def config(self, source: Path, target: Path, out_dir: Path) -> RunConfig:
        """The flow's run config: from the source codes file to the target codes file."""
        return RunConfig(
            name=self.method,
            out_dir=str(out_dir),
            seed=self.seed,
            data=DataConfig(source=str(source), target=str(target), val_fraction=0.1),
            method=MethodConfig(name=self.method, sigma=self.sigma),
            model=ModelConfig(width=self.width),
            optim=OptimConfig(steps=self.steps, batch_size=self.batch_size, lr=1e-3,
                              weight_decay=1e-5, ema_decay=0.999),
            eval=EvalConfig(val_every=max(1, self.steps // 10),
                            checkpoint_every=max(1, self.steps // 5)),
        )


@dataclass(frozen=True, eq=False)
class Translation:
    """Held-out source images translated to the target group.

    Their codes before (``source``) and after (``mapped``) the flow, the codes of held-out target
    images (``target``), the decoded translations (``images``), the flow's run folder and its scores
    (:func:`translation_scores`).
    """

    source: Tensor
    mapped: Tensor
    target: Tensor
    images: Tensor
    run_dir: Path
    scores: dict[str, float] = field(default_factory=dict)


def translation_scores(
    source: Tensor,
    mapped: Tensor,
    target: Tensor,
    *,
    images: Tensor | None = None,
    classifier: Callable[[Tensor], Tensor] | None = None,
    target_classes: Sequence[int] = (),
) -> dict[str, float]:
    """Scores of a translation: MMD to the target codes and distance moved.

    ``mmd``: squared MMD between ``mapped`` and ``target`` codes (the metrics' RBF
    mixture); ``moved``: mean ``|mapped - source|`` (Euclidean, standardised codes), with its
    standard error ``moved_se``; ``moved_sq``: mean ``|mapped - source|^2`` (the transport
    cost that OT minimises among maps with the same image), with ``moved_sq_se``;
    ``target_rate``: the share of ``images`` whose ``classifier`` logits peak at one of
    ``target_classes`` (when a classifier is given).
    """
    if source.shape != mapped.shape:
        raise ValueError(f"source and mapped codes differ in shape: {tuple(source.shape)} "
                         f"and {tuple(mapped.shape)}")
    step = (mapped - source).double().norm(dim=1)
    out = {
        "mmd": mmd(mapped, target),
        "moved": float(step.mean()),
        "moved_se": float(step.std() / math.sqrt(step.numel())) if step.numel() > 1 else 0.0,
        "moved_sq": float(step.pow(2).mean()),
        "moved_sq_se": (float(step.pow(2).std() / math.sqrt(step.numel()))
                        if step.numel() > 1 else 0.0),
        "n": int(source.shape[0]),
    }
    if classifier is not None:
        if images is None or not target_classes:
            raise ValueError("target_rate needs the decoded images and the target classes")
        with torch.no_grad():
            logits = torch.cat([classifier(images[k:k + 1024])
                                for k in range(0, images.shape[0], 1024)])
        hit = torch.isin(logits.argmax(1), torch.tensor(list(target_classes)))
        out["target_rate"] = float(hit.double().mean())
    return out


def translate(
    fit: AutoEncoderFit,
    source_train: Tensor,
    target_train: Tensor,
    source_test: Tensor,
    target_test: Tensor,
    spec: FlowSpec,
    out_dir: str | Path,
    *,
    classifier: Callable[[Tensor], Tensor] | None = None,
    target_classes: Sequence[int] = (),
    progress: bool = False,
    resume: bool = True,
) -> Translation:
    """Train the latent flow of ``spec`` and translate ``source_test``.

    Train (or, with ``resume``, finish) the latent flow of ``spec`` from the codes of
    ``source_train`` to those of ``target_train`` in ``out_dir/<method>`` and translate
    ``source_test``; scores against ``target_test`` (see the module's docstring).
    """
    out_dir = Path(out_dir)
    codes = out_dir / "codes"
    codes.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, images in (("source", source_train), ("target", target_train)):
        path = codes / f"{name}.npy"
        array = fit.encode(images).numpy().astype(np.float32)
        if not path.is_file():
            save_points(path, array)
        elif not np.array_equal(np.load(path, allow_pickle=False), array):
            raise ValueError(f"{path} holds other codes than this autoencoder gives: the "
                             f"flows in {out_dir} belong to another; use another folder")
        paths[name] = path
    cfg = spec.config(paths["source"], paths["target"], out_dir)
    if not _finished(cfg):
        train(cfg, resume=resume and cfg.run_dir.exists(), progress=progress)
    run = load_run(cfg.run_dir)
    x0 = fit.encode(source_test)
    with torch.no_grad():
        mapped = integrate(run.model, x0, method="euler", steps=ODE_STEPS, save="ends",
                           energy=False).x_final
    decoded = fit.decode(mapped)
    target = fit.encode(target_test)
    scores = translation_scores(x0, mapped, target, images=decoded, classifier=classifier,
                                target_classes=target_classes)
    return Translation(x0, mapped, target, decoded, cfg.run_dir, scores)


def _finished(cfg: RunConfig) -> bool:
    path = cfg.run_dir / "metrics.json"
    if not path.is_file():
        return False
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary.get("train", {}).get("steps") == cfg.optim.steps
