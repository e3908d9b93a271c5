"""Sample and score a trained image run: Fréchet distances, FID, class accuracy, NFE.

An image run (``data.target`` an image set, :class:`~otcfm.train.images.ImageObjective`) is
sampled from noise with the ODE solver asked for (Euler ``steps``, or an adaptive solver
whose NFE is measured), with classifier-free guidance when the run is class-conditional.
Samples are quantised as saved images are (``floor(127.5 x + 128)`` clipped to [0, 255]) and
kept as uint8, so 50,000 CIFAR-10 samples take 150 MB.

Scores (each optional):

- ``fd``: the Fréchet distance of a feature network's features (a :class:`FeatureScorer`,
  e.g. the small classifiers of ``otcfm.experiments.feature_nets`` for digits and
  Fashion-MNIST; reported as "FD (<name> features)", never as FID) against the data set's
  test split (all images when it has none); with a class-conditional run the scorer's
  classifier also gives the ``accuracy`` of the samples' labels.
- ``fid``: FID (:func:`otcfm.metrics.fid`) with an Inception TorchScript file and reference
  statistics in clean-fid's .npz format, both given by the user (nothing is downloaded).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from otcfm.data.images import ImageSet, load_images
from otcfm.metrics import fid as fid_of
from otcfm.metrics import load_fid_stats, load_inception
from otcfm.sampling import ADAPTIVE_SOLVERS, SOLVERS, Guided, integrate
from otcfm.train.checkpoint import StagedFiles
from otcfm.train.config import RunConfig
from otcfm.train.datasets import check_image_files, read_data_record, stream
from otcfm.train.evaluate import NllSettings, choose_checkpoint, nll_metrics
from otcfm.train.loop import build_model, needs_score
from otcfm.train.runfolder import RunFolder, merged_metrics

__all__ = [
    "FeatureScorer", "ImageRun", "ImageSamples", "evaluate_image_run", "load_image_run",
    "sample_images", "to_pixels", "from_pixels",
]

#: images per model call when sampling (``--batch-size``)
SAMPLE_BATCH = 500


class FeatureScorer(Protocol):
    """A feature network that scores samples.

    ``name`` ("digits features"), ``distance(samples, reference)`` (the Fréchet distance of its
    features) and ``accuracy(samples, labels)`` (its classifier's accuracy); images in [-1, 1].
    """

    name: str

    def distance(self, samples: Tensor, reference: Tensor) -> float:
        """Fréchet distance between the features of ``samples`` and ``reference`` (images)."""
        ...

    def accuracy(self, samples: Tensor, labels: Tensor) -> float:
        """Fraction of ``samples`` that the network classifies as their ``labels``."""
        ...


def to_pixels(images: Tensor) -> Tensor:
    """Convert images in [-1, 1] to uint8 pixels, as saved images are.

    Images in [-1, 1] -> uint8 pixels, as saved images are: ``floor(127.5 x + 128)``
    clipped to [0, 255] (the quantisation of the paper's FID).
    """
    return (images.detach().float() * 127.5 + 128.0).clamp_(0.0, 255.0).to(torch.uint8).cpu()


def from_pixels(pixels: Tensor) -> Tensor:
    """Convert uint8 pixels to float32 in [-1, 1].

    uint8 pixels -> float32 in [-1, 1] by ``p / 127.5 - 1``: the centre of the interval of
    values that :func:`to_pixels` maps to ``p``, and the data loaders' own scaling.
    """
    return pixels.float() / 127.5 - 1.0


@dataclass(frozen=True)
class ImageRun:
    """A trained image run: config, eval model and what its samples are.

    A trained image run: config, eval model (EMA weights when kept), and what its samples
    are (``event_shape`` (C, H, W), ``classes``, whether it is ``conditional``).
    """

    run_dir: Path
    cfg: RunConfig
    model: nn.Module
    step: int
    checkpoint: str
    event_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    conditional: bool

    @property
    def null_class(self) -> int:
        """The label meaning "no class" (K): unconditional samples of a conditional run."""
        return len(self.classes)

    def label(self, text: str) -> int:
        """Parse a class given by index, by name, or ``none`` (the null class).

        A class given by index (``3``), by name (``Sneaker``), or ``none`` (the null
        class); ValueError listing the classes otherwise.
        """
        if not self.conditional:
            raise ValueError(f"{self.run_dir} is not class-conditional: --class needs a run "
                             "trained with images.conditional = true")
        if text.strip().lower() == "none":
            return self.null_class
        if text.strip().lstrip("-").isdigit():
            k = int(text)
            if 0 <= k < len(self.classes):
                return k
        elif text in self.classes:
            return self.classes.index(text)
        shown = ", ".join(c if c == str(i) else f"{i} {c}"  # digits: "3", not "3 3"
                          for i, c in enumerate(self.classes))
        raise ValueError(f"--class {text!r}: not a class of {self.run_dir.name} (give an index "
                         f"or a name: {shown}; or none for unconditional samples)")


def load_image_run(
    run_dir: str | Path, which: str = "best", *, device: str | torch.device = "cpu"
) -> ImageRun:
    """Rebuild an image run's eval model from checkpoint ``which``.

    Rebuild an image run's eval model (EMA weights when present) from checkpoint ``which``
    ("best" or "latest", see :func:`~otcfm.train.evaluate.choose_checkpoint`), on
    ``device``. No data file is read.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = RunConfig.from_toml(config_path).resolve()
    if not cfg.is_image_run:
        raise ValueError(f"{run_dir} is not an image run (data.target {cfg.data.target!r})")
    state, path = choose_checkpoint(run_dir, which)
    shape = tuple(int(s) for s in state["image_shape"])
    classes = tuple(str(c) for c in state.get("classes", ()))
    conditional = bool(state.get("conditional", False))
    model = build_model(cfg.model, shape, num_classes=len(classes) if conditional else None,
                        score=needs_score(cfg.method))
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    model.to(device).eval().requires_grad_(False)
    return ImageRun(run_dir, cfg, model, int(state["step"]), path.name, shape,  # type: ignore[arg-type]
                    classes, conditional)


@dataclass(frozen=True)
class ImageSamples:
    """A batch of sampled images with its labels, NFE and timing.

    ``pixels`` (n, C, H, W) uint8, their ``labels`` (n,) (None: unconditional), the NFE of
    one solve (the mean over batches for an adaptive solver), and the seconds it took.
    """

    pixels: Tensor
    labels: Tensor | None
    nfe: float
    seconds: float


def sample_images(
    run: ImageRun,
    n: int,
    *,
    solver: str = "euler",
    steps: int = 100,
    tol: float = 1e-5,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = SAMPLE_BATCH,
    progress: bool = False,
) -> ImageSamples:
    """Sample ``n`` images of ``run`` through the model ODE.

    ``n`` samples of ``run``: noise from ``generator`` (default: the run's evaluation
    stream, so repeated calls agree) pushed through the model ODE with ``solver`` (fixed-step:
    ``steps`` steps; adaptive: atol = rtol = ``tol``), in batches of ``batch_size``.

    A class-conditional run takes ``labels`` (n,) in [0, K] (K: no class); default: the
    classes in turn (0, 1, ..., K - 1, 0, ...). ``guidance`` w > 0 samples
    v = (1 + w) v(x | y) - w v(x | null) (:class:`~otcfm.sampling.Guided`).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be finite and >= 0, got {guidance}")
    if not run.conditional and (labels is not None or guidance):
        raise ValueError(f"{run.run_dir} is not class-conditional: classes and guidance need a "
                         "run trained with images.conditional = true")
    if run.conditional:
        if labels is None:
            labels = torch.arange(n) % len(run.classes)
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if labels.shape[0] != n or int(labels.min()) < 0 or int(labels.max()) > run.null_class:
            raise ValueError(f"labels must be {n} integers in [0, {run.null_class}]")
    g = generator if generator is not None else stream(run.cfg.seed, "images", "eval")
    device = next(run.model.parameters()).device
    field = Guided(run.model, guidance) if guidance else run.model
    out, nfes = [], []
    start = time.perf_counter()
    bar = None
    if progress:
        from otcfm.train.progress import Progress

        bar = Progress(total=n, desc=f"sampling ({solver})")
    for lo in range(0, n, batch_size):
        size = min(batch_size, n - lo)
        x0 = torch.randn((size, *run.event_shape), generator=g).to(device)
        cond = {"y": labels[lo:lo + size].to(device)} if labels is not None else None
        with torch.no_grad():
            traj = integrate(field, x0, method=solver, steps=steps, atol=tol, rtol=tol,
                             save="ends", energy=False, cond=cond)
        out.append(to_pixels(traj.x_final))
        nfes.append(traj.nfe)
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    return ImageSamples(torch.cat(out), labels, sum(nfes) / len(nfes),
                        time.perf_counter() - start)


def reference_images(run: ImageRun, *, data_root: str | Path | None = None,
                     allow_changed_data: bool = False) -> tuple[ImageSet, str]:
    """The reference images samples are compared with, and a phrase naming them.

    The images samples are compared with: the data set's test split, or all its images
    when it has none (digits, a folder); and a phrase naming them. The training files are
    checked against the run's data.json first (the test split, never trained on, is not
    recorded).
    """
    spec = _spec(run.cfg.data.target, data_root)
    record = read_data_record(run.run_dir)
    kind = spec.partition(":")[0]
    if kind in ("fashion-mnist", "mnist", "cifar10"):
        if record is not None:
            check_image_files(record, load_images(spec), allow_changed_data=allow_changed_data)
        test = load_images(spec, split="test")
        return test, f"the {len(test):,} test images of {kind}"
    images = load_images(spec)
    if record is not None:
        check_image_files(record, images, allow_changed_data=allow_changed_data)
    return images, f"all {len(images):,} images of {images.name} (it has no test split)"


def _spec(target: str, data_root: str | Path | None) -> str:
    """The run's image spec, read from ``data_root`` when given.

    A named set's folder, or the moved folder of images.
    """
    from otcfm.data.images import NAMED_SETS, with_folder

    kind = target.partition(":")[0]
    if data_root is None or kind == "digits":
        return target
    return with_folder(kind, data_root) if kind in NAMED_SETS else str(data_root)


def evaluate_image_run(
    run_dir: str | Path,
    *,
    which: str = "best",
    n: int | None = None,
    solver: str | None = None,
    steps: int | None = None,
    tol: float = 1e-5,
    guidance: float = 0.0,
    scorer: FeatureScorer | None = None,
    inception: str | Path | None = None,
    fid_stats: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = SAMPLE_BATCH,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
    progress: bool = False,
    nll: NllSettings | None = None,
) -> dict[str, Any]:
    """Sample ``n`` images of a run, score them and write the results.

    Sample ``n`` images (default ``data.n_test``) of a run and score them; write the
    ``test`` section of ``metrics.json``, ``samples/eval.png`` (the first 100 samples) and
    ``report.md``, together and only once all were made (under the run folder's lock).

    ``solver`` / ``steps``: default the run's ``eval.solver`` / ``eval.ode_steps``; an
    adaptive solver uses atol = rtol = ``tol`` and reports its NFE. ``scorer``: the feature
    network of ``fd`` (and, for class-conditional runs, ``accuracy``). ``inception`` and
    ``fid_stats``: FID, both files needed (checked before sampling). ``guidance``: w of
    classifier-free guidance (conditional runs; samples use the classes in turn). ``nll``:
    the negative log-likelihood and bits per dimension of ``n`` reference images (the test
    split) under the flow (:func:`~otcfm.train.evaluate.nll_metrics`; a class-conditional
    run's unconditional density, the null class).
    """
    if (inception is None) != (fid_stats is None):
        raise ValueError("FID needs both --inception FILE (TorchScript Inception network) and "
                         "--fid-stats FILE (reference statistics, clean-fid's .npz)")
    run = load_image_run(run_dir, which, device=device)
    net = stats = None
    if inception is not None:
        stats = load_fid_stats(fid_stats)  # type: ignore[arg-type]
        net = load_inception(inception, device=device)
    solver = solver or run.cfg.eval.solver
    steps = steps or run.cfg.eval.ode_steps
    n = n or run.cfg.data.n_test
    reference, described = (reference_images(run, data_root=data_root,
                                             allow_changed_data=allow_changed_data)
                            if scorer is not None or nll is not None else (None, ""))
    drawn = sample_images(run, n, solver=solver, steps=steps, tol=tol, guidance=guidance,
                          batch_size=batch_size, progress=progress)
    metrics: dict[str, Any] = {
        "checkpoint": run.checkpoint, "step": run.step, "n": n, "solver": solver,
        **({"steps": steps} if solver not in ADAPTIVE_SOLVERS else {"tol": tol}),
        "nfe": drawn.nfe, "guidance": guidance, "sample_seconds": drawn.seconds,
    }
    if scorer is not None and reference is not None:
        samples = from_pixels(drawn.pixels)
        metrics["fd"] = scorer.distance(samples, reference.images)
        metrics["fd_features"] = scorer.name
        metrics["fd_reference"] = described
        if drawn.labels is not None:
            keep = drawn.labels < run.null_class
            metrics["accuracy"] = scorer.accuracy(samples[keep], drawn.labels[keep])
    if nll is not None and reference is not None:
        x = reference.images[:n].to(next(run.model.parameters()).device)
        cond = {"y": torch.full((x.shape[0],), run.null_class, device=x.device)} if (
            run.conditional) else {}
        metrics.update(nll_metrics(run.model, x, nll, seed=run.cfg.seed,
                                   image_shape=run.event_shape, levels=reference.levels, **cond))
        metrics["nll_reference"] = described
    if net is not None:
        metrics["fid"] = fid_of(torch.split(drawn.pixels, batch_size), inception=net,
                                stats=stats, batch_size=batch_size, device=device)
        metrics["fid_inception"] = Path(inception).name  # type: ignore[arg-type]
        metrics["fid_stats"] = Path(fid_stats).name  # type: ignore[arg-type]

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    with RunFolder(run_dir).writing(), StagedFiles() as staged:
        from otcfm.plots import save_image_grid

        nrow = len(run.classes) if run.conditional else None
        save_image_grid(from_pixels(drawn.pixels[:100]), staged.path(run_dir / "samples"
                                                                     / "eval.png"), nrow)
        staged.write_text(merged_metrics(metrics_path, {"test": metrics}), metrics_path)
        staged.write_text(image_report(run, metrics), run_dir / "report.md")
    return metrics


def image_report(run: ImageRun, metrics: dict[str, Any]) -> str:
    """A short markdown report of an image run."""
    cfg = run.cfg
    rows = "\n".join(f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |"
                     for k, v in metrics.items())
    cond = "class-conditional " if run.conditional else ""
    grids = sorted((run.run_dir / "samples").glob("step-*.png"),
                   key=lambda p: int(p.stem.partition("-")[2]))
    last = f"\n\nTraining grid at the last step: ![grid](samples/{grids[-1].name})" if grids else ""
    return (
        f"# Run `{run.run_dir.name}`\n\n"
        f"{cond}{cfg.method.name} (sigma = {cfg.method.sigma}, coupling "
        f"{cfg.method.coupling or 'the method default'}) from noise to `{cfg.data.target}`, "
        f"{cfg.model.arch} model, {cfg.optim.steps} steps of batch {cfg.optim.batch_size}, "
        f"seed {cfg.seed}.\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"Evaluation samples: ![samples](samples/eval.png){last}\n"
    )
