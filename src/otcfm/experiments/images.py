"""``otcfm bench images``: the CPU image benchmark (issue 16; the paper's Table 5 in miniature).

Cells are (dataset, method, seed). Each cell trains one flow from Gaussian noise to the
images (:class:`~otcfm.train.images.ImageObjective` in the training engine, EMA weights for
sampling) and scores its samples with the committed feature network of the data set
(:mod:`otcfm.experiments.feature_nets`): the Fréchet distance of the features, "FD (digits
features)" or "FD (Fashion-MNIST features)", never FID, for Euler 1, 2, 4, 8, 16, 32 and
100 steps and dopri5 (its NFE as measured). Every evaluation of a seed starts from the same
noise, so the methods and step counts of a seed are compared on equal draws.

Methods (:data:`METHODS`): I-CFM, OT-CFM with exact and with approximate minibatch OT, FM
(Lipman's Gaussian path) and class-conditional OT-CFM with condition-aware OT (pairs only
within a class, ``exact:within=y``) and condition dropout, sampled with classifier-free
guidance. Its guidance scale w is chosen per cell by a small sweep scored against the
cell's held-out validation images (never the FD reference); it is evaluated at w = 0 and at
the chosen w, with balanced labels, and the feature network's class accuracy is recorded.

The FD reference: for Fashion-MNIST the 10,000 test images (the flows train on the 60,000
training images); for digits, which have no test split, a fixed choice of
:data:`DIGITS_REFERENCE` of the 1,797 images, held out from training in every cell.

A finished cell writes ``RUNS/<dataset>/<method>-seed<seed>/cell.json`` with the protocol's
fingerprint; a rerun with the same protocol reuses it. Pages and figures:
:mod:`otcfm.experiments.images_report`; command line: :mod:`otcfm.experiments.images_cli`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otcfm.data.images import ImageSet, load_images
from otcfm.experiments import _cells
from otcfm.experiments._cells import CellResult
from otcfm.experiments.feature_nets import features, load_feature_net
from otcfm.matchers import matcher
from otcfm.metrics import frechet_distance
from otcfm.models import MLP
from otcfm.sampling import Guided, integrate
from otcfm.train.checkpoint import save_atomic, write_text_atomic
from otcfm.train.datasets import stream
from otcfm.train.evaluate import NllSettings, nll_metrics
from otcfm.train.images import ImageObjective
from otcfm.train.loop import Engine, LoopSettings

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist")
#: method -> (matcher preset, coupling spec or "" for the preset's own, class-conditional)
METHODS: dict[str, tuple[str, str, bool]] = {
    "icfm": ("icfm", "", False),
    "otcfm": ("otcfm", "exact", False),
    "otcfm-approx": ("otcfm", "approx:tol=0.01", False),
    "fm": ("fm", "", False),
    "otcfm-cond": ("otcfm", "exact:within=y", True),
}
LABELS = {"icfm": "I-CFM", "otcfm": "OT-CFM (exact)", "otcfm-approx": "OT-CFM (approx, tol 0.01)",
          "fm": "FM", "otcfm-cond": "OT-CFM class-conditional (OT within classes)"}
EULER_STEPS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 100)
SEEDS: tuple[int, ...] = (0, 1, 2)
#: digits held out of every cell's training as the FD reference (digits have no test split)
DIGITS_REFERENCE = 500
#: Euler step counts whose first samples are kept for the sample grids
GRID_STEPS: tuple[int, ...] = (2, 8, 100)
GRID_N = 64
COND_GRID_N = 100  # ten per class, one class per column


@dataclass(frozen=True)
class Protocol:
    """Budget, model and evaluation settings shared by every cell of one data set."""

    dataset: str = "digits"
    steps: int = 10_000
    batch_size: int = 128
    width: int = 256  # the MLP on flattened pixels: depth hidden layers of this width
    depth: int = 3
    lr: float = 1e-3
    ema: float = 0.999  # EMA decay of the weights that are sampled
    grad_clip: float = 1.0
    sigma: float = 0.0  # of the I-CFM and OT-CFM paths
    fm_sigma: float = 0.01  # FM's sigma_min (at 0 its path and draws equal I-CFM's at 0)
    cond_dropout: float = 0.1
    n_val: int = 200  # held-out training images: validation loss and the guidance sweep
    n_samples: int = 2_000  # generated images per evaluation
    euler_steps: tuple[int, ...] = EULER_STEPS
    tol: float = 1e-5  # dopri5 atol = rtol
    guidance: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)  # the sweep's w
    sweep_steps: int = 32  # Euler steps of the sweep
    sweep_samples: int = 1_000
    log_every: int = 500
    # reference images whose bits/dim the flow is scored on (Hutchinson, one Rademacher probe
    # per image, dopri5 at atol = rtol = tol; a conditional model's null class); 0 = off
    nll_images: int = 500

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        for name in ("steps", "batch_size", "width", "depth", "n_val", "n_samples",
                     "sweep_steps", "sweep_samples", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nll_images < 0:
            raise ValueError(f"nll_images must be >= 0, got {self.nll_images}")
        if not self.euler_steps or min(self.euler_steps) < 1:
            raise ValueError(f"euler_steps must be positive integers, got {self.euler_steps}")
        if not self.guidance or min(self.guidance) < 0:
            raise ValueError(f"guidance scales must be >= 0, got {self.guidance}")

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a cell's numbers.

        Everything that changes a cell's numbers, with the package version and the hash of
        the code a cell runs (``otcfm.experiments._cells.code_fingerprint``).
        """
        d = asdict(self)
        d["euler_steps"] = list(self.euler_steps)
        d["guidance"] = list(self.guidance)
        d["code"] = _cells.code_fingerprint(__name__)
        return d

    def digest(self) -> str:
        """A short hash of :meth:`fingerprint` (in every record)."""
        text = json.dumps(self.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: the full protocol of each data set (3 seeds); Fashion-MNIST sized for about an hour on
#: 2 shared CPU cores: a wider MLP on the 784 pixels, fewer steps
FULL: dict[str, dict[str, Any]] = {
    "digits": {},
    "fashion-mnist": {"steps": 6_000, "width": 512, "n_val": 1_000, "log_every": 1_000},
}
#: --quick (digits: well under 15 minutes on 2 cores)
QUICK: dict[str, dict[str, Any]] = {
    "digits": {"steps": 1_500, "ema": 0.995, "n_samples": 1_000, "sweep_samples": 500,
               "guidance": (0.0, 1.0, 2.0), "nll_images": 200},
    "fashion-mnist": {"steps": 500, "ema": 0.99, "width": 512, "n_val": 1_000, "n_samples": 500,
                      "sweep_samples": 500, "guidance": (0.0, 1.0, 2.0)},
}


def protocol_for(dataset: str, quick: bool = False, **over: Any) -> Protocol:
    """The protocol of ``dataset``: the full or quick budget, any field overridden by ``over``."""
    base = (QUICK if quick else FULL)[dataset] if dataset in DATASETS else {}
    return Protocol(dataset=dataset, **{**base, **over})


@dataclass(frozen=True)
class Cell:
    """One (dataset, method, seed) of the benchmark."""

    dataset: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name."""
        return f"{self.method}-seed{self.seed}"

    @property
    def label(self) -> str:
        """The cell's name in progress lines."""
        return f"{self.dataset} {self.method} seed {self.seed}"

    def run_dir(self, runs: Path) -> Path:
        """The cell's run folder under ``runs``."""
        return Path(runs) / self.dataset / self.name


def parse_methods(text: str) -> tuple[str, ...]:
    """Parse ``--methods``: names of :data:`METHODS`, in order, repeats dropped.

    Raises ValueError for an empty list or an unknown name.
    """
    items = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not items:
        raise ValueError(f"--methods needs at least one name, got {text!r}")
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    """Parse ``--seeds``: comma-separated integers >= 0."""
    return _cells.int_list(text, "--seeds", low=0)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Split:
    """The images a cell trains on and the FD reference (never trained on)."""

    train: ImageSet
    reference: Tensor
    reference_name: str
    extra: dict[str, Any] = field(default_factory=dict)


def load_split(dataset: str) -> Split:
    """The training images of ``dataset`` and its FD reference images (never trained on)."""
    if dataset == "digits":
        data = load_images("digits")
        perm = torch.randperm(len(data), generator=stream(0, "images-bench", "digits-reference"))
        ref, train = perm[:DIGITS_REFERENCE], perm[DIGITS_REFERENCE:]
        assert data.labels is not None
        train_set = replace(data, images=data.images[train], labels=data.labels[train])
        return Split(train_set, data.images[ref],
                     f"{DIGITS_REFERENCE} of the 1,797 digits, a fixed random choice held out "
                     f"of training in every cell ({len(train)} images left for training and "
                     f"validation)")
    if dataset == "fashion-mnist":
        train_set = load_images("fashion-mnist", split="train")
        test = load_images("fashion-mnist", split="test")
        return Split(train_set, test.images,
                     f"the {len(test):,} Fashion-MNIST test images (the flows train on the "
                     f"{len(train_set):,} training images)")
    raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def real_fd(dataset: str, n: int) -> dict[str, Any]:
    """FD of ``n`` real training images against the FD reference.

    FD of ``n`` real training images (a fixed random choice; all of them when fewer)
    against the FD reference: what a generator of the training set itself scores at this
    sample size (the FD's finite-sample floor, and the train/reference gap).
    """
    split = load_split(dataset)
    net, _ = load_feature_net(dataset)
    images = split.train.images
    k = min(n, images.shape[0])
    pick = torch.randperm(images.shape[0], generator=stream(0, "images-bench", "real"))[:k]
    fd = frechet_distance(features(net, images[pick]), features(net, split.reference))
    return {"n": int(k), "fd": fd}


# --------------------------------------------------------------------------- one cell
def build(cell: Cell, p: Protocol, data: ImageSet) -> tuple[ImageObjective, MLP]:
    """The objective and the MLP of ``cell`` under protocol ``p`` on ``data``."""
    preset, coupling, conditional = METHODS[cell.method]
    k = data.num_classes
    kw: dict[str, Any] = {"sigma": p.fm_sigma if preset == "fm" else p.sigma}
    if coupling:
        kw["coupling"] = coupling
    if conditional:
        kw.update(cond_dropout=p.cond_dropout, null_class=k)
    fm = matcher(preset, **kw)
    objective = ImageObjective(data, fm, batch_size=p.batch_size, seed=cell.seed, n_val=p.n_val,
                               conditional=conditional)
    model = MLP(dim=data.shape, width=p.width, depth=p.depth, activation="selu",
                num_classes=k if conditional else None,
                generator=stream(cell.seed, "images-bench", "init"))
    return objective, model


def noise(p: Protocol, seed: int, shape: Sequence[int], n: int, what: str = "eval") -> Tensor:
    """The seed's source noise: the same draws for every method and solver."""
    return torch.randn((n, *shape), generator=stream(seed, "images-bench", what))


def balanced_labels(n: int, k: int) -> Tensor:
    """0, 1, ..., k-1, 0, 1, ...: n labels, every class (almost) equally often."""
    return torch.arange(n) % k


@torch.no_grad()
def push(model: torch.nn.Module, x0: Tensor, solver: str, steps: int | None, p: Protocol,
         y: Tensor | None = None, guidance: float = 0.0) -> tuple[Tensor, int]:
    """Samples and NFE of the model ODE from ``x0``."""
    field_ = Guided(model, guidance) if guidance else model
    cond = {"y": y} if y is not None else None
    if solver == "euler":
        traj = integrate(field_, x0, method="euler", steps=steps, cond=cond)
    else:
        traj = integrate(field_, x0, method=solver, atol=p.tol, rtol=p.tol, cond=cond)
    return traj.x_final, int(traj.nfe)


def guidance_sweep(model: torch.nn.Module, objective: ImageObjective, net: torch.nn.Module,
                   p: Protocol, seed: int) -> tuple[float, dict[str, float]]:
    """Choose the guidance weight w of ``p.guidance`` with the lowest FD.

    The w of ``p.guidance`` with the lowest FD against the cell's validation images
    (``p.sweep_steps`` Euler steps, ``p.sweep_samples`` samples with balanced labels).
    """
    ref = features(net, objective.val_images)
    x0 = noise(p, seed, objective.event_shape, p.sweep_samples, "sweep")
    y = balanced_labels(p.sweep_samples, objective.num_classes or 1)
    scores = {}
    for w in p.guidance:
        x, _ = push(model, x0, "euler", p.sweep_steps, p, y=y, guidance=w)
        scores[str(w)] = frechet_distance(features(net, x.clamp(-1, 1)), ref)
    best = min(p.guidance, key=lambda w: (scores[str(w)], w))
    return float(best), scores


def evaluate(model: torch.nn.Module, cell: Cell, p: Protocol, net: torch.nn.Module,
             ref_features: Tensor, shape: Sequence[int], num_classes: int,
             conditional: bool, guidance: Sequence[float]) -> tuple[list[dict], dict[str, Tensor]]:
    """One evaluation per (guidance, solver): FD, NFE (and class accuracy); plus grids."""
    x0 = noise(p, cell.seed, shape, p.n_samples)
    y = balanced_labels(p.n_samples, num_classes) if conditional else None
    evals, grids = [], {}
    solvers = [("euler", k) for k in p.euler_steps] + [("dopri5", None)]
    for w in guidance:
        for solver, steps in solvers:
            start = time.perf_counter()
            x, nfe = push(model, x0, solver, steps, p, y=y, guidance=w)
            x = x.clamp(-1, 1)  # images live in [-1, 1]; the feature net saw only those
            row: dict[str, Any] = {"solver": solver, "steps": steps, "nfe": nfe,
                                   "fd": frechet_distance(features(net, x), ref_features)}
            if conditional:
                assert y is not None
                with torch.no_grad():
                    right = (net(x).argmax(1) == y).float().mean()
                row.update(guidance=w, accuracy=float(right))
            row["seconds"] = time.perf_counter() - start
            evals.append(row)
            key = f"{solver}{'' if steps is None else steps}"
            if conditional:
                grids[f"w{w:g}-{key}"] = x[:COND_GRID_N].clone()
            elif steps in GRID_STEPS or solver != "euler":
                grids[key] = x[:GRID_N].clone()
    return evals, grids


def likelihood(model: torch.nn.Module, images: Tensor, p: Protocol, seed: int,
               null_class: int | None, levels: int) -> dict[str, Any]:
    """Bits per dimension (and NLL in nats) of ``images`` under the model's flow.

    Bits per dimension (and NLL in nats) of ``images`` under the model's flow from N(0, I)
    (:func:`otcfm.train.evaluate.nll_metrics`: Hutchinson, one Rademacher probe per image drawn
    from the seed, dopri5 at atol = rtol = ``p.tol``); a class-conditional model is scored
    with its null class, its unconditional density. ``levels``: the values a pixel takes
    (17 for digits, 256 for Fashion-MNIST), the dequantization of bits/dim. The SE is over the
    images: it holds the images' spread and the probes' noise together.
    """
    settings = NllSettings("hutchinson", 1, p.tol)
    cond = {} if null_class is None else {"y": torch.full((images.shape[0],), null_class)}
    start = time.perf_counter()
    out = nll_metrics(model, images, settings, seed=seed, image_shape=tuple(images.shape[1:]),
                      levels=levels, **cond)
    return {**out, "seconds": time.perf_counter() - start}


def run_cell(cell: Cell, p: Protocol, runs: str | Path) -> dict[str, Any]:
    """Train and evaluate one cell; write ``cell.json`` and ``grids.pt``; return the record."""
    if cell.dataset != p.dataset:
        raise ValueError(f"{cell.label}: the protocol is for {p.dataset}")
    out = cell.run_dir(Path(runs))
    split = load_split(cell.dataset)
    net, net_record = load_feature_net(cell.dataset)
    objective, model = build(cell, p, split.train)
    settings = LoopSettings(steps=p.steps, lr=p.lr, grad_clip=p.grad_clip, ema_decay=p.ema,
                            log_every=p.log_every, checkpoint_every=0)
    engine = Engine(objective, model, settings)
    engine.run()
    sampler = engine.eval_model().eval()
    start = time.perf_counter()
    conditional = METHODS[cell.method][2]
    record: dict[str, Any] = {
        "dataset": cell.dataset, "method": cell.method, "seed": cell.seed,
        "coupling": METHODS[cell.method][1] or "independent",
        "sigma": p.fm_sigma if METHODS[cell.method][0] == "fm" else p.sigma,
        "steps_trained": engine.step,
        "train_seconds": engine.train_seconds,
        "val_curve": [[int(r["step"]), float(r["val_loss"])] for r in engine.history],
        # the engine logs the coupling's share of each logging interval
        "coupling_share_mean": sum(r.get("coupling_share", 0.0) for r in engine.history)
        / max(len(engine.history), 1),
    }
    guidance: list[float] = [0.0]
    if conditional:
        chosen, sweep = guidance_sweep(sampler, objective, net, p, cell.seed)
        record.update(guidance_chosen=chosen, guidance_sweep=sweep)
        if chosen != 0.0:
            guidance.append(chosen)
    ref = features(net, split.reference)
    evals, grids = evaluate(sampler, cell, p, net, ref, split.train.shape,
                            split.train.num_classes, conditional, guidance)
    if p.nll_images:
        record["likelihood"] = likelihood(sampler, split.reference[:p.nll_images], p, cell.seed,
                                          split.train.num_classes if conditional else None,
                                          split.train.levels)
    record.update(
        evaluations=evals,
        eval_seconds=time.perf_counter() - start,
        reference=split.reference_name, n_reference=int(split.reference.shape[0]),
        feature_net_accuracy=net_record["heldout_accuracy"],
        protocol=p.fingerprint(), fingerprint=p.digest(),
    )
    save_atomic({k: v.to(torch.float16) for k, v in grids.items()}, out / "grids.pt")
    save_atomic(sampler.state_dict(), out / "model.pt")  # the EMA weights, for later scores
    write_text_atomic(json.dumps(record, indent=1) + "\n", out / "cell.json")
    return record


def cached_record(cell: Cell, p: Protocol, runs: str | Path) -> dict[str, Any] | None:
    """The cell's saved record when it was made under the same protocol, else None."""
    path = cell.run_dir(Path(runs)) / "cell.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("protocol") == p.fingerprint() else None


def run_cells(cells: Sequence[Cell], p: Protocol, runs: str | Path, *, jobs: int = 1,
              on_done: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Run the cells not cached under ``p`` (``jobs`` processes); in cell order.

    With one job the cells run in the order given (so a run cut short has the methods named
    first); with more, the costliest first (the conditional cells sample three times as much).
    """
    cost = {"otcfm-cond": 3.0, "otcfm-approx": 1.2, "otcfm": 1.2}
    return _cells.run_cells(cells, partial(run_cell, p=p, runs=str(runs)),
                            partial(cached_record, p=p, runs=runs), jobs=jobs,
                            cost=lambda c: cost.get(c.method, 1.0) if jobs > 1 else 1.0,
                            on_done=on_done)


def cached_results(cells: Sequence[Cell], p: Protocol, runs: str | Path) -> list[CellResult]:
    """The finished cells among ``cells`` (nothing is run)."""
    records = ((c, cached_record(c, p, runs)) for c in cells)
    return [CellResult(c, r, cached=True) for c, r in records if r is not None]


def describe(result: CellResult) -> str:
    """One progress line on a finished cell: FD at 2 and 100 Euler steps, times; or its failure."""
    if result.record is None:
        return f"FAILED ({result.error})"
    r = result.record
    fd = {(e["solver"], e["steps"], e.get("guidance", 0.0)): e["fd"] for e in r["evaluations"]}
    tag = " (cached)" if result.cached else ""
    w = f"  w {r['guidance_chosen']:g}" if "guidance_chosen" in r else ""
    return (f"FD Euler 2 {fd[('euler', 2, 0.0)]:.2f}  Euler 100 {fd[('euler', 100, 0.0)]:.2f}"
            f"{w}  train {r['train_seconds']:.0f} s  eval {r['eval_seconds']:.0f} s{tag}"
            if ("euler", 2, 0.0) in fd and ("euler", 100, 0.0) in fd else
            f"train {r['train_seconds']:.0f} s  eval {r['eval_seconds']:.0f} s{tag}")


def flat_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per evaluation (images.json): the cell's keys beside the evaluation's."""
    keep = ("dataset", "method", "coupling", "seed", "sigma", "train_seconds", "eval_seconds",
            "steps_trained", "fingerprint")
    out = []
    for r in records:
        for e in r["evaluations"]:
            row = {k: r[k] for k in keep[:4]}
            row.update(solver=e["solver"], steps=e["steps"], nfe=e["nfe"], fd=e["fd"])
            if "guidance" in e:
                row.update(guidance=e["guidance"], accuracy=e["accuracy"])
            row.update({k: r[k] for k in keep[4:]}, seconds=e["seconds"])
            out.append(row)
    return out


def cell_summaries(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: what images.json keeps beside the evaluations (times, sweep, val curve)."""
    keep = ("dataset", "method", "seed", "coupling", "train_seconds", "eval_seconds",
            "steps_trained", "coupling_share_mean", "guidance_chosen", "guidance_sweep",
            "val_curve", "reference", "n_reference", "feature_net_accuracy", "likelihood",
            "fingerprint")
    return [{k: r[k] for k in keep if k in r} for r in records]
