"""``otcfm bench gaussian-sb``: the closed-form Schrodinger bridge between two Gaussians.

Source N(-a 1, I), target N(a 1, I) in d dimensions, reference process sigma W. The bridge's
marginals are known in closed form:

    q_t = N((2t - 1) a 1, [sqrt(4 + sigma^4) t (1 - t) + (1 - t)^2 + t^2] I).

Cells are (method, coupling, dim, seed): SB-CFM sampled with the probability-flow ODE and SF2M
sampled with the bridge SDE (Euler-Maruyama), each with the exact and the entropic
(reg = 2 sigma^2) minibatch coupling. Each cell is one training run (``otcfm.train.train``,
the run folder under ``--runs``); its tested weights (``Protocol.checkpoint``) push 10,000
fresh source points through 20 Euler(-Maruyama) steps, and a Gaussian (mean and full
covariance) fitted to the samples at each of the 21 grid times t = 0, 0.05, ..., 1 is
compared with q_t by the Gaussian KL(fit || q_t). A cell whose ``cell.json`` matches the
protocol is skipped.

Results: ``OUT/gaussian_sb.json`` (one record per cell), ``OUT/gaussian_sb.md`` and the figure
``OUT/gaussian_sb/kl_vs_t.png`` (see :mod:`otcfm.experiments.gaussian_sb_report`); the command
line is :mod:`otcfm.experiments.gaussian_sb_cli`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otcfm.data import save_points
from otcfm.experiments import _cells
from otcfm.experiments._cells import CellResult
from otcfm.sampling import DEFAULT_DIFFUSION, Trajectory, integrate, integrate_sde
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.config import (
    CouplingsConfig,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from otcfm.train.datasets import stream
from otcfm.train.evaluate import load_run
from otcfm.train.loop import train
from otcfm.train.runfolder import newest_checkpoint

METHODS: tuple[str, ...] = ("sbcfm", "sf2m")
COUPLINGS: tuple[str, ...] = ("exact", "entropic")
SAMPLER = {"sbcfm": "ode", "sf2m": "sde"}  # how each method is sampled for its KL
DIMS: tuple[int, ...] = (2, 5, 20, 50, 100)
CHECKPOINTS: tuple[str, ...] = ("final", "best")  # the weights a cell tests
FIRST_SEED = 42


# --------------------------------------------------------------------------- closed form
def sb_marginal(t: float, a: float, sigma: float) -> tuple[float, float]:
    """Mean coordinate and variance of q_t: N(m 1, v I), the closed-form bridge marginal.

    m = (2t - 1) a, v = sqrt(4 + sigma^4) t (1 - t) + (1 - t)^2 + t^2; the same in every
    coordinate (the bridge between isotropic Gaussians factorises over coordinates).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    mean = (2 * t - 1) * a
    var = math.sqrt(4 + sigma**4) * t * (1 - t) + (1 - t) ** 2 + t**2
    return mean, var


def gaussian_kl(mean: Tensor, cov: Tensor, mean_q: Tensor, var_q: float) -> float:
    """KL(N(mean, cov) || N(mean_q, var_q I)) in nats; mean (d,), cov (d, d), float64.

    0.5 [tr(cov) / v + ``|mean_q - mean|^2`` / v - d + d log v - log det cov].
    """
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov must be ({d}, {d}), got {tuple(cov.shape)}")
    sign, logdet = torch.linalg.slogdet(cov)
    if float(sign) <= 0:
        raise ValueError("the fitted covariance is not positive definite (too few samples?)")
    diff = (mean_q - mean).pow(2).sum()
    kl = 0.5 * (torch.trace(cov) / var_q + diff / var_q - d + d * math.log(var_q) - logdet)
    return float(kl)


def fitted_kl(x: Tensor, t: float, a: float, sigma: float) -> float:
    """KL(Gaussian fitted to samples x (n, d): mean + unbiased full covariance || q_t)."""
    x = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    mean = x.mean(0)
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    m, v = sb_marginal(t, a, sigma)
    return gaussian_kl(mean, cov, torch.full_like(mean, m), v)


SCORE_POINTS = 4_000  # samples of q_t on which a learned score is compared with q_t's


def score_check(model: torch.nn.Module, t: float, dim: int, p: Protocol,
                generator: torch.Generator) -> tuple[float, float]:
    """Compare the learned score with the exact score of q_t.

    The learned score s(x, t) against the exact score of q_t = N(m 1, v I), -(x - m) / v,
    on SCORE_POINTS samples of q_t: the slope fraction -E[s . (x - m)] v / E|x - m|^2 (1 for
    the exact score, below 1 for a score shrunk towards 0) and the relative squared error
    ``E|s - s*|^2 / E|s*|^2``.
    """
    m, v = sb_marginal(t, p.a, p.sigma)
    x = m + math.sqrt(v) * torch.randn(SCORE_POINTS, dim, generator=generator)
    with torch.no_grad():
        s = model.score(x, torch.full((SCORE_POINTS,), t)).double()
    x = x.double()
    exact = -(x - m) / v
    slope = float(-(s * (x - m)).sum() * v / (x - m).pow(2).sum())
    error = float((s - exact).pow(2).sum() / exact.pow(2).sum())
    return slope, error


def sample_gaussians(
    n: int, dim: int, a: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """N points of N(-a 1, I) and then n of N(a 1, I), float32 (n, dim) each."""
    x0 = torch.randn(n, dim, generator=generator) - a
    x1 = torch.randn(n, dim, generator=generator) + a
    return x0, x1


# --------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """Budget and evaluation shared by every cell (defaults: SF2M's protocol, our budget).

    The data, batch, sample count and step count of the sampler are the protocol's
    (SF2M, Table 3); sigma, the network, optimizer and training budget are ours.
    """

    a: float = 0.1
    sigma: float = 1.0
    n_train: int = 10_000
    n_val: int = 500
    n_test: int = 10_000  # model samples the Gaussians are fitted to
    batch_size: int = 500
    steps: int = 2_000
    # the learning rate decays to 0 over the steps: the score's regression target has noise of
    # std 1 / sigma_t per coordinate, which a constant rate leaves in the weights (see the page)
    schedule: str = "cosine"
    # the weights tested: "final" (the EMA weights after the last step, where the cosine
    # schedule has annealed) or "best" (the best validation loss: on this noisy loss it
    # picked steps 400-1,800 of 2,000, before the annealing had done its work)
    checkpoint: str = CHECKPOINTS[0]
    lr: float = 5e-3
    weight_decay: float = 1e-5
    ema_decay: float = 0.98
    width: int = 128
    depth: int = 3
    val_every: int = 100
    euler_steps: int = 20  # Euler (SB-CFM) / Euler-Maruyama (SF2M) steps; 21 grid times
    workers: int = 0  # coupling threads per cell (numbers do not depend on it)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a cell's numbers.

        Everything that changes a cell's numbers (workers do not), with the package version
        and the hash of the code a cell runs (``otcfm.experiments._cells.code_fingerprint``).
        """
        d = asdict(self)
        d.pop("workers")
        d["code"] = _cells.code_fingerprint(__name__)
        return d

    @property
    def times(self) -> list[float]:
        """The evaluation times k / euler_steps, k = 0 .. euler_steps."""
        return [k / self.euler_steps for k in range(self.euler_steps + 1)]


QUICK = {"n_train": 1_000, "n_val": 200, "n_test": 2_000, "batch_size": 100, "steps": 60,
         "width": 32, "val_every": 30, "euler_steps": 10}
QUICK_DIMS = (2, 5)


@dataclass(frozen=True)
class Cell:
    """One (method, coupling, dimension, seed) of the Gaussian Schrödinger-bridge benchmark."""

    method: str
    coupling: str
    dim: int
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name."""
        return f"{self.method}-{self.coupling}-d{self.dim}-seed{self.seed}"

    @property
    def label(self) -> str:
        """The cell's name in progress lines."""
        return f"{self.method} ({self.coupling}) d={self.dim} seed {self.seed}"

    def run_dir(self, runs: Path) -> Path:
        """The cell's run folder under ``runs``."""
        return Path(runs) / f"d{self.dim}" / self.name


def plan_cells(
    methods: Sequence[str], couplings: Sequence[str], dims: Sequence[int], seeds: Sequence[int]
) -> list[Cell]:
    """Every cell of the grid, by dimension, then method, coupling and seed."""
    return [Cell(m, c, d, s) for d in dims for m in methods for c in couplings for s in seeds]


# --------------------------------------------------------------------------- one cell
def data_dir(runs: Path, dim: int, seed: int, p: Protocol) -> Path:
    """The folder of the data files of one (dimension, seed) under ``runs``."""
    return Path(runs) / "data" / f"d{dim}-seed{seed}-n{p.n_train}-{p.n_val}-a{p.a:g}"


def write_data(runs: Path, dim: int, seed: int, p: Protocol) -> DataConfig:
    """Source and target files: n_train + 2 n_val rows each, split train / val / (unused).

    The run's own split holds out n_val rows for validation and n_val more it never uses
    (the test points of the KL are drawn afresh, see :func:`test_sources`).
    """
    folder = data_dir(runs, dim, seed, p)
    n = p.n_train + 2 * p.n_val
    src, tgt = folder / "source.npy", folder / "target.npy"
    if not (src.is_file() and tgt.is_file()):
        x0, x1 = sample_gaussians(n, dim, p.a, stream(seed, "gaussian-sb", "data", str(dim)))
        save_points(src, x0)
        save_points(tgt, x1)
    return DataConfig(
        source=str(src.resolve()), target=str(tgt.resolve()), n_train=p.n_train,
        n_val=p.n_val, n_test=p.n_val, val_fraction=p.n_val / n,
    )


def test_sources(dim: int, seed: int, p: Protocol) -> Tensor:
    """The n_test fresh N(-a 1, I) points pushed through the model, (n_test, dim)."""
    g = stream(seed, "gaussian-sb", "test", str(dim))
    return torch.randn(p.n_test, dim, generator=g) - p.a


def cell_config(cell: Cell, p: Protocol, runs: Path, data: DataConfig) -> RunConfig:
    """The training run config of ``cell`` under protocol ``p`` on ``data``."""
    return RunConfig(
        name=cell.name,
        out_dir=str(cell.run_dir(runs).parent),
        seed=cell.seed,
        data=data,
        method=MethodConfig(name=cell.method, sigma=p.sigma, coupling=cell.coupling),
        model=ModelConfig(width=p.width, depth=p.depth, activation="selu"),
        optim=OptimConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr,
                          weight_decay=p.weight_decay, ema_decay=p.ema_decay,
                          schedule=p.schedule),
        couplings=CouplingsConfig(workers=p.workers),
        eval=EvalConfig(val_every=min(p.val_every, p.steps),
                        checkpoint_every=min(p.val_every, p.steps), ode_steps=p.euler_steps),
    )


def sample_cell(model: torch.nn.Module, x0: Tensor, cell: Cell, p: Protocol,
                sampler: str, diffusion: str = DEFAULT_DIFFUSION) -> Trajectory:
    """The states of the ODE or of the SDE from x0 on the Euler grid.

    The 21 (euler_steps + 1) states of the ODE or of the SDE (diffusion schedule
    ``diffusion`` of :data:`otcfm.sampling.DIFFUSIONS`) from x0; every schedule gets the same
    Brownian increments' seed.
    """
    if sampler == "ode":
        return integrate(model, x0, method="euler", steps=p.euler_steps, energy=False)
    g = stream(cell.seed, "gaussian-sb", "sde", str(cell.dim))
    return integrate_sde(model, x0, sigma=p.sigma, steps=p.euler_steps, generator=g,
                         diffusion=diffusion)


def kl_curve(traj: Trajectory, p: Protocol) -> list[float]:
    """KL of the fitted Gaussian of each state of ``traj`` to the exact marginal at its time."""
    return [fitted_kl(traj.xs[k], t, p.a, p.sigma) for k, t in enumerate(p.times)]


def cached_record(cell: Cell, p: Protocol, runs: Path) -> dict[str, Any] | None:
    """The cell's saved record when it was made under the same protocol, else None."""
    path = cell.run_dir(runs) / "cell.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("protocol") == p.fingerprint() else None


def run_cell(cell: Cell, p: Protocol, runs: str | Path) -> dict[str, Any]:
    """Train (or resume) one cell, evaluate its KL curve, write and return its record."""
    runs = Path(runs)
    data = write_data(runs, cell.dim, cell.seed, p)
    cfg = cell_config(cell, p, runs, data)
    found = newest_checkpoint(cfg.run_dir / "checkpoints")
    done = int(found[0]["step"]) if found is not None else 0
    if done > p.steps:
        raise ValueError(f"{cell.label}: {cfg.run_dir} has {done} steps > --steps {p.steps}; "
                         "use another --runs folder")
    try:
        train(cfg, resume=True, progress=False)
    except ValueError as err:
        if "config differs" not in str(err):
            raise
        raise ValueError(f"{cell.label}: {cfg.run_dir} holds a run with other settings; use "
                         "another --runs folder or delete it") from None
    summary = json.loads((cfg.run_dir / "metrics.json").read_text())["train"]
    start = time.perf_counter()
    run = load_run(cfg.run_dir, "latest" if p.checkpoint == "final" else "best")
    x0 = test_sources(cell.dim, cell.seed, p)
    sampler = SAMPLER[cell.method]
    kl_t = kl_curve(sample_cell(run.model, x0, cell, p, sampler), p)
    record: dict[str, Any] = {
        "method": cell.method,
        "coupling": cell.coupling,
        "dim": cell.dim,
        "seed": cell.seed,
        "kl_t1": kl_t[-1],
        "kl_mean": sum(kl_t) / len(kl_t),
        "kl_t": kl_t,
        "sampler": f"{sampler} ({'euler' if sampler == 'ode' else 'euler_maruyama'}, "
                   f"{p.euler_steps} steps)",
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "best_step": run.step,
        "sigma": p.sigma,
    }
    if sampler == "sde":  # the same model's probability flow, for comparison
        kl_ode = kl_curve(sample_cell(run.model, x0, cell, p, "ode"), p)
        record.update(kl_ode_t1=kl_ode[-1], kl_ode_mean=sum(kl_ode) / len(kl_ode))
        kl_tap = kl_curve(sample_cell(run.model, x0, cell, p, "sde", "tapered"), p)
        record.update(kl_tapered_t1=kl_tap[-1], kl_tapered_mean=sum(kl_tap) / len(kl_tap),
                      kl_tapered_t=kl_tap)
        g = stream(cell.seed, "gaussian-sb", "score", str(cell.dim))
        checks = [score_check(run.model, t, cell.dim, p, g) for t in p.times]
        record.update(score_slope_t=[c[0] for c in checks], score_error_t=[c[1] for c in checks])
    record["eval_seconds"] = time.perf_counter() - start
    record["protocol"] = p.fingerprint()
    write_text_atomic(json.dumps(record, indent=1) + "\n", cell.run_dir(runs) / "cell.json")
    return record


# --------------------------------------------------------------------------- scheduling
def _cost(cell: Cell) -> float:
    """Rough relative cost for scheduling long cells first."""
    per_step = (2 if cell.method == "sf2m" else 1) + (2 if cell.coupling == "entropic" else 1)
    return (10 + cell.dim) * per_step


def run_cells(
    cells: Sequence[Cell],
    p: Protocol,
    runs: str | Path,
    *,
    jobs: int = 1,
    on_done: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Run the cells not cached yet in ``jobs`` processes (1 torch thread each); cell order."""
    runs = Path(runs)
    for dim, seed in dict.fromkeys((c.dim, c.seed) for c in cells):
        write_data(runs, dim, seed, p)  # once, before the workers share the files
    return _cells.run_cells(
        cells,
        partial(run_cell, p=p, runs=str(runs)),
        partial(cached_record, p=p, runs=runs),
        jobs=jobs,
        cost=_cost,
        on_done=on_done,
    )


def describe(result: CellResult) -> str:
    """One progress line on a finished cell: its KL numbers and training time, or its failure."""
    if result.record is None:
        return f"FAILED ({result.error})"
    r = result.record
    tag = " (cached)" if result.cached else ""
    return (f"KL(t=1) {r['kl_t1']:.4f}  mean KL {r['kl_mean']:.4f}  "
            f"train {r['train_seconds']:.0f} s{tag}")
