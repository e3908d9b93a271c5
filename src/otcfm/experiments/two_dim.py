"""``otcfm bench two-dim``: the paper's 2-D benchmark (Table 2).

Cells are (task, method, seed). Each cell is one training run (``otcfm.train.train``) under
``--runs DIR/<task>/<method>-seed<seed>``, evaluated from the weights ``Protocol.checkpoint``
names (default: the lowest validation loss, as the paper's runner) on the task's 10,000-point
test sets: W2 and NPE with 100 Euler steps, the NFE of dopri5
(atol = rtol = 1e-4), W2 against the number of Euler steps, and the test NLL of the flow
(exact divergence, dopri5 at 1e-5 in float64, the source's own density) beside the target's
NLL under its true density on the same points. A cell whose ``cell.json``
matches the protocol is skipped; a killed cell resumes from its latest checkpoint.

2-rectified flow ("rf") is the reflow of the I-CFM cell of the same task and seed: that cell's
ODE (dopri5) pushes its training and validation sources to endpoints, and "rf" trains on the
pairs (``data.paired``). Results: ``OUT/two_dim.json`` (one record per cell), ``two_dim.md``
and figures under ``OUT/two_dim/`` (see :mod:`otcfm.experiments.two_dim_report`); the
command line is :mod:`otcfm.experiments.two_dim_cli`. Cells of other libraries (the TorchCFM
side by side in ``benchmarks/two_dim_torchcfm.py``) pass their own ``runner`` to
:func:`run_cells`; this module never imports them.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from otcfm.couplings import Independent
from otcfm.data import save_points, toy
from otcfm.experiments import _cells
from otcfm.experiments._cells import CellResult
from otcfm.likelihood import log_likelihood
from otcfm.matchers import MATCHERS
from otcfm.metrics import normalized_path_energy, wasserstein
from otcfm.models import DriftScore
from otcfm.sampling import integrate, integrate_sde
from otcfm.train.checkpoint import save_atomic, write_text_atomic
from otcfm.train.config import (
    CouplingsConfig,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from otcfm.train.datasets import RunData, data_seed, load_run_data, stream
from otcfm.train.evaluate import load_run
from otcfm.train.loop import build_matcher, train
from otcfm.train.runfolder import newest_checkpoint

TASKS: tuple[str, ...] = tuple(toy.TASKS)
METHODS: tuple[str, ...] = ("icfm", "otcfm", "sbcfm", "fm", "vpcfm", "rf")
FIRST_SEED = 42
EULER_STEPS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 100)
CHECKPOINTS: tuple[str, ...] = ("best", "final", "ema")  # see Protocol.checkpoint
# sigma of the paper's protocol (Table 2); other registered methods use their default
# (sf2m: the paper gives no sigma for its 2-D SF2M row; 0.1 reproduces that row's W2 and NPE
# on all four tasks and sigma 1 does not, docs/results/checkpoint_choice.md)
SIGMA = {"icfm": 0.1, "otcfm": 0.1, "fm": 0.1, "vpcfm": 0.1, "sbcfm": 1.0, "rf": 0.0,
         "sf2m": 0.1}
GAUSSIAN_SOURCE_ONLY = ("fm",)  # Lipman's path assumes x0 ~ N(0, I)
RELATIVE_COST = {"otcfm": 8, "sbcfm": 10, "sf2m": 10}  # scheduling order: long cells first
TRAJECTORY_PATHS = 300  # flow lines kept per cell for the trajectory figure


@dataclass(frozen=True)
class Protocol:
    """Budget and evaluation settings shared by every cell.

    Defaults: the paper's, except the weights tested: the final EMA weights, decay 0.999, where the
    paper's runner tests the raw weights of the best validation loss;
    docs/results/checkpoint_choice.md measured the four choices; ``ema=0.0, checkpoint="best"`` is
    the paper's.
    """

    steps: int = 20_000
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 10_000
    batch_size: int = 512
    val_every: int = 1_000
    curve_points: int = 2_000  # test points for W2 against Euler steps (10k: 36 s per W2)
    euler_steps: tuple[int, ...] = EULER_STEPS
    tol: float = 1e-4  # dopri5 atol = rtol for the NFE
    reflow_tol: float = 1e-5  # dopri5 tolerance of the I-CFM ODE that makes the rf pairs
    workers: int = 1  # coupling threads of cells with a non-trivial coupling (no effect on results)
    couplings: tuple[tuple[str, str], ...] = ()  # (method, coupling name) overrides
    sigmas: tuple[tuple[str, float], ...] = ()  # (method, sigma) overrides of SIGMA
    ema: float = 0.999  # EMA decay of the weights that are validated and tested (0 = off)
    nll_tol: float = 1e-5  # dopri5 atol = rtol of the test NLL (float64)
    #: the weights tested (CHECKPOINTS): "best" (lowest validation loss, the paper's reference
    #: runner's choice), "final" (after the last step) or "ema" (the final EMA weights)
    checkpoint: str = "ema"
    #: the seed that draws every cell's train / validation / test sets; -1 = the cell's own
    #: seed (the default: seeds vary the data too). Fixed, seeds vary only the training.
    data_seed: int = -1

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got "
                             f"{self.checkpoint!r}")
        if (self.checkpoint == "ema") != (self.ema > 0) and self.checkpoint != "best":
            raise ValueError(
                f"checkpoint {self.checkpoint!r} with ema {self.ema:g}: 'ema' tests the EMA "
                "weights and needs an EMA decay > 0; 'final' tests the raw weights (ema 0)")

    @property
    def tested(self) -> str:
        """The checkpoint file :func:`~otcfm.train.evaluate.load_run` reads.

        Best or latest (which holds the EMA weights when an EMA is kept).
        """
        return "best" if self.checkpoint == "best" else "latest"

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a cell's numbers.

        Everything that changes a cell's numbers (workers do not), with the package version
        and the hash of the code a cell runs (``otcfm.experiments._cells.code_fingerprint``).
        """
        d = asdict(self)
        d.pop("workers")
        d["euler_steps"] = list(self.euler_steps)
        d["couplings"] = [list(c) for c in self.couplings]
        d["sigmas"] = [list(c) for c in self.sigmas]
        # the paper's settings leave no key: cells run before these options existed stay valid
        if not self.sigmas:
            d.pop("sigmas")
        if not self.ema:
            d.pop("ema")
        if self.checkpoint == "best":
            d.pop("checkpoint")
        if self.data_seed == -1:
            d.pop("data_seed")
        d["code"] = _cells.code_fingerprint(__name__)  # a changed line of code: a stale cell
        return d

    def sigma(self, method: str) -> float:
        """The sigma of ``method`` in this protocol (an override, else :func:`sigma_of`)."""
        return dict(self.sigmas).get(method, sigma_of(method))


QUICK = {"steps": 200, "n_train": 1_000, "n_val": 200, "n_test": 500, "batch_size": 128,
         "val_every": 50, "curve_points": 300, "ema": 0.9}  # 0.999 over 200 steps: the init
QUICK_TASKS = ("gaussian-8gaussians", "moons-8gaussians")
QUICK_METHODS = ("icfm", "otcfm", "fm", "rf")


@dataclass(frozen=True)
class Cell:
    """One (task, method, seed) of the benchmark.

    ``library`` names who trained it ("otcfm", or another library's side-by-side runner, e.g.
    "torchcfm").
    """

    task: str
    method: str
    seed: int
    library: str = "otcfm"

    @property
    def name(self) -> str:
        """The cell's folder name (prefixed by the library when not otcfm)."""
        prefix = "" if self.library == "otcfm" else f"{self.library}-"
        return f"{prefix}{self.method}-seed{self.seed}"

    @property
    def label(self) -> str:
        """The cell's name in progress lines."""
        lib = "" if self.library == "otcfm" else f" [{self.library}]"
        return f"{self.task} {self.method}{lib} seed {self.seed}"

    def run_dir(self, runs: Path) -> Path:
        """The cell's run folder under ``runs``."""
        return Path(runs) / self.task / self.name

    def depends_on(self) -> Cell | None:
        """Rf is the reflow of the I-CFM cell of the same task and seed."""
        return Cell(self.task, "icfm", self.seed) if self.method == "rf" else None


# --------------------------------------------------------------------------- choosing cells
def parse_tasks(text: str) -> tuple[str, ...]:
    """Parse ``--tasks``: names of :data:`otcfm.data.toy.TASKS`; ValueError otherwise."""
    tasks = _split_list(text, "--tasks")
    bad = [t for t in tasks if t not in toy.TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(TASKS)}")
    return tasks


def parse_methods(text: str) -> tuple[str, ...]:
    """Method names from the matcher registry (so "sf2m" works once it is registered)."""
    methods = _split_list(text, "--methods")
    for m in methods:
        if m not in MATCHERS:
            hint = " (SF2M is not available in this version)" if m == "sf2m" else ""
            raise ValueError(
                f"unknown method {m!r}{hint}: not registered in otcfm.matchers.MATCHERS; "
                f"valid methods: {', '.join(MATCHERS.names())}"
            )
    return methods


def _split_list(text: str, flag: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not items:
        raise ValueError(f"{flag} needs at least one name, got {text!r}")
    return items


def parse_skip(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--skip METHOD@TASK`` items (comma-separated or repeated) -> (method, task) pairs."""
    pairs = []
    for item in (s for text in items for s in _split_list(text, "--skip")):
        method, sep, task = item.partition("@")
        if not sep:
            raise ValueError(f"--skip must look like METHOD@TASK (e.g. sbcfm@moons-8gaussians), "
                             f"got {item!r}")
        parse_tasks(task)
        pairs.append((method, task))
    return tuple(pairs)


def plan_cells(
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    skip: Sequence[tuple[str, str]] = (),
) -> tuple[list[Cell], list[str]]:
    """The cells to run (rf pulls in its I-CFM cell) and notes on the cells skipped."""
    cells: list[Cell] = []
    notes: list[str] = []
    for task in tasks:
        for method in methods:
            if method in GAUSSIAN_SOURCE_ONLY and toy.task(task)[0] != "gaussian":
                notes.append(f"{method} skipped on {task}: it needs a standard normal source")
                continue
            if (method, task) in skip:
                notes.append(f"{method} skipped on {task} (--skip)")
                continue
            for seed in seeds:
                cells.append(Cell(task, method, seed))
    for cell in list(cells):
        dep = cell.depends_on()
        if dep is not None and dep not in cells:
            cells.append(dep)
            notes.append(f"{dep.label} added: rf is the reflow of that I-CFM run")
    return cells, notes


# --------------------------------------------------------------------------- one cell
def sigma_of(method: str) -> float:
    """The benchmark's sigma of ``method``: the paper's, else the matcher's default."""
    if method in SIGMA:
        return SIGMA[method]
    default = inspect.signature(MATCHERS.factory(method)).parameters.get("sigma")
    if default is None or default.default is inspect.Parameter.empty:
        raise ValueError(f"method {method!r} has no default sigma; the benchmark needs one")
    return float(default.default)


def task_data_config(task: str, p: Protocol) -> DataConfig:
    """The data config of ``task`` with the protocol's split sizes."""
    source, target = toy.task(task)
    return DataConfig(
        source=source, target=target, n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
        seed=p.data_seed,
    )


def cell_config(cell: Cell, p: Protocol, runs: Path, data: DataConfig | None = None) -> RunConfig:
    """The run of one cell: the paper's MLP, AdamW 1e-3 / 1e-5, validation every val_every."""
    coupling = dict(p.couplings).get(cell.method, "")
    method = MethodConfig(name=cell.method, sigma=p.sigma(cell.method), coupling=coupling)
    # a background coupling thread only pays off when the coupling costs something
    independent = isinstance(build_matcher(method).coupling, Independent)
    return RunConfig(
        name=cell.name,
        out_dir=str(Path(runs) / cell.task),
        seed=cell.seed,
        data=data or task_data_config(cell.task, p),
        method=method,
        model=ModelConfig(width=64, depth=3, activation="selu"),
        optim=OptimConfig(steps=p.steps, batch_size=p.batch_size, lr=1e-3, weight_decay=1e-5,
                          ema_decay=p.ema),
        couplings=CouplingsConfig(workers=0 if independent else p.workers),
        eval=EvalConfig(val_every=p.val_every, checkpoint_every=p.val_every, ode_steps=100),
    )


def cached_record(cell: Cell, p: Protocol, runs: Path) -> dict[str, Any] | None:
    """The cell's record if it was finished under this protocol, else None."""
    path = cell.run_dir(runs) / "cell.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    stored = record.get("protocol")
    if not isinstance(stored, dict):
        return None
    same = for_cell(stored, cell) == for_cell(p.fingerprint(), cell)
    return record if same else None


def for_cell(fingerprint: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The part of a protocol fingerprint that can change ``cell``'s numbers.

    Coupling and sigma overrides count only for the cell's own method and, for rf, its
    I-CFM teacher's: ``--coupling otcfm=approx`` leaves the cached SB-CFM cells valid.
    """
    dep = cell.depends_on()
    methods = {cell.method} | ({dep.method} if dep is not None else set())
    out = dict(fingerprint)
    for key in ("couplings", "sigmas"):
        out[key] = [item for item in out.get(key, []) if item[0] in methods]
    return out


def run_cell(cell: Cell, p: Protocol, runs: str | Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell of this library; write and return its record."""
    runs = Path(runs)
    if cell.library != "otcfm":
        raise ValueError(f"{cell.label}: run_cell trains otcfm's cells; a {cell.library!r} "
                         "cell needs its library's runner (run_cells(..., runner=...))")
    extra: dict[str, Any] = {}
    if cell.method == "rf":
        data, extra = reflow_pairs(cell, p, runs)
        cfg = cell_config(cell, p, runs, data)
    else:
        cfg = cell_config(cell, p, runs)
    _train_cell(cfg, cell)
    summary = json.loads((cfg.run_dir / "metrics.json").read_text())["train"]
    run = load_run(cfg.run_dir, p.tested)
    history = _newest_state(cfg.run_dir)["history"]
    record = {
        "task": cell.task,
        "method": cell.method,
        "seed": cell.seed,
        "library": cell.library,
        "sigma": cfg.method.sigma,
        "coupling": cfg.method.coupling or "default",
        "steps": summary["steps"],
        "best_step": run.step,  # the step of the weights tested (the last, unless "best")
        "train_seconds": summary["train_seconds"],
        **extra,
        "val_curve": [[int(r["step"]), float(r["val_w2"])] for r in history],
    }
    return finish_record(cell, p, runs, run.model, record)


def finish_record(
    cell: Cell, p: Protocol, runs: Path, model: nn.Module, record: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate ``model`` on the task's test sets, add the numbers and write ``cell.json``."""
    start = time.perf_counter()
    data = load_run_data(task_data_config(cell.task, p), cell.seed)
    sde_sigma = p.sigma(cell.method) if isinstance(model, DriftScore) else None
    metrics, paths = evaluate_model(model, data, p, reference_w2(cell, p, runs, data),
                                    sde_sigma=sde_sigma, seed=cell.seed)
    metrics.update(test_nll(model, data.target.test, *toy.task(cell.task), tol=p.nll_tol))
    record.update(metrics, eval_seconds=time.perf_counter() - start, protocol=p.fingerprint())
    out = cell.run_dir(runs)
    save_atomic({"xs": paths, "target": data.target.test[:2_000]}, out / "trajectories.pt")
    write_text_atomic(json.dumps(record, indent=1) + "\n", out / "cell.json")
    return record


def _train_cell(cfg: RunConfig, cell: Cell) -> None:
    done = _trained_steps(cfg.run_dir)
    if done > cfg.optim.steps:
        raise ValueError(
            f"{cell.label}: {cfg.run_dir} was trained for {done} steps, more than --steps "
            f"{cfg.optim.steps}; use another --runs folder"
        )
    try:
        train(cfg, resume=True, progress=False)
    except ValueError as err:
        if "config differs" not in str(err):
            raise
        raise ValueError(
            f"{cell.label}: {cfg.run_dir} holds a run with other settings; use another "
            f"--runs folder or delete it"
        ) from None


def _newest_state(run_dir: Path) -> dict[str, Any]:
    """The newest readable checkpoint of a trained cell."""
    found = newest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint")
    return found[0]


def _trained_steps(run_dir: Path) -> int:
    found = newest_checkpoint(run_dir / "checkpoints")
    return int(found[0]["step"]) if found is not None else 0


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_model(
    model: nn.Module, data: RunData, p: Protocol, w2_ref: float,
    *, sde_sigma: float | None = None, seed: int = 0,
) -> tuple[dict[str, Any], Tensor]:
    """W2, NPE (100 Euler steps), dopri5 NFE and W2 per Euler step count; plus flow lines.

    With ``sde_sigma`` (a :class:`DriftScore` model, SF2M) also ``w2_sde``: W2 of the bridge
    SDE dx = [v + (sigma^2/2) s] dt + sigma dW, 100 Euler-Maruyama steps (noise seeded by
    ``seed``). Returns the metrics and (101, TRAJECTORY_PATHS, 2) states of the first test
    points (probability-flow ODE).
    """
    model.eval()
    x0, x1 = data.source.test, data.target.test
    traj = integrate(model, x0, method="euler", steps=100, save="all")
    pe = float(traj.energy.mean())
    adaptive = integrate(model, x0, method="dopri5", atol=p.tol, rtol=p.tol, save="ends",
                         energy=False)
    m = min(p.curve_points, x0.shape[0])
    curve = {}
    for k in p.euler_steps:
        end = integrate(model, x0[:m], method="euler", steps=k, save="ends", energy=False)
        curve[str(k)] = wasserstein(end.x_final, x1[:m], p=2)
    metrics = {
        "w2": wasserstein(traj.x_final, x1, p=2),
        "npe": normalized_path_energy(pe, w2_ref**2),
        "nfe": adaptive.nfe,
        "path_energy": pe,
        "w2_source_target": w2_ref,
        "n_test": int(x0.shape[0]),
        "w2_euler": curve,
        "curve_points": m,
    }
    if sde_sigma is not None:
        noise = torch.Generator().manual_seed(seed)
        sde = integrate_sde(model, x0, sigma=sde_sigma, steps=100, generator=noise, save="ends")
        metrics["w2_sde"] = wasserstein(sde.x_final, x1, p=2)
    return metrics, traj.xs[:, :TRAJECTORY_PATHS].clone()


def test_nll(model: nn.Module, x1: Tensor, source: str, target: str, *,
              tol: float) -> dict[str, float]:
    """The flow's test NLL in nats and the target's NLL under its true density.

    The flow's test NLL, -log q1(x1) in nats (exact divergence, dopri5 at atol = rtol =
    ``tol``, on a float64 copy of the model; log p0 of the source's density at the flow's
    source points), and the target's NLL under its true density on the same points.

    Their per-point difference log p1 - log q1 averages to an estimate of KL(p1 || q1) >= 0
    (``kl``, with its standard error ``kl_se`` over the points): the part of the NLL that the
    model can still remove, where the NLL alone mixes it with the target's entropy.
    """
    start = time.perf_counter()
    model64 = copy.deepcopy(model).double().eval()
    x = x1.double()
    result = log_likelihood(model64, x, source=toy.Density(source), divergence="exact",
                            solver="dopri5", atol=tol, rtol=tol)
    nll = -result.logp
    nll_true = -toy.log_prob(target, x)
    gap = nll - nll_true
    n = x.shape[0]
    return {
        "nll": float(nll.mean()),
        "nll_se": float(nll.std()) / n**0.5,
        "nll_target": float(nll_true.mean()),
        "kl": float(gap.mean()),
        "kl_se": float(gap.std()) / n**0.5,
        "nll_nfe": result.nfe,
        "nll_seconds": time.perf_counter() - start,
    }


def reference_w2(cell: Cell, p: Protocol, runs: Path, data: RunData) -> float:
    """W2(source test, target test) of a (task, data seed): the NPE's denominator, cached."""
    seed = data_seed(task_data_config(cell.task, p), cell.seed)
    path = Path(runs) / cell.task / f"w2_source_target-seed{seed}-n{p.n_test}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["w2"])
    w2 = wasserstein(data.source.test, data.target.test, p=2)
    write_text_atomic(json.dumps({"w2": w2}) + "\n", path)
    return w2


FLOOR_DRAWS = 2


def target_floor(task: str, n: int, draws: int, label: str) -> list[float]:
    """W2 between two independent ``n``-point samples of the task's target.

    W2 between two independent ``n``-point samples of the task's target, for ``draws``
    pairs; pair k is drawn from the stream (0, label, task, k).
    """
    target = toy.task(task)[1]
    out = []
    for k in range(draws):
        g = stream(0, label, task, str(k))
        out.append(wasserstein(toy.sample(target, n, g), toy.sample(target, n, g), p=2))
    return out


def sampling_floor(task: str, p: Protocol, runs: Path) -> list[float]:
    """The W2 a perfect model would still score against ``n_test`` target points.

    W2 between two independent ``n_test``-point samples of the task's target, for
    FLOOR_DRAWS pairs of draws (cached): the W2 a perfect model would still score.
    """
    path = Path(runs) / task / f"w2_floor-n{p.n_test}.json"
    if path.is_file():
        return [float(v) for v in json.loads(path.read_text())["w2"]]
    draws = target_floor(task, p.n_test, FLOOR_DRAWS, "two-dim-floor")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps({"w2": draws}) + "\n", path)
    return draws


# --------------------------------------------------------------------------- reflow
def reflow_pairs(cell: Cell, p: Protocol, runs: Path) -> tuple[DataConfig, dict[str, Any]]:
    """(x0, ODE_icfm(x0)) pairs for the rf cell, from the I-CFM cell's tested checkpoint.

    Rows: the I-CFM run's train and validation sources plus n_val fresh ones, so the paired
    file splits into n_train / n_val / n_val rows. Regenerated (and the rf run restarted)
    when the I-CFM run changed.
    """
    teacher = cell.depends_on()
    assert teacher is not None
    record = cached_record(teacher, p, runs)
    if record is None:
        raise RuntimeError(f"{cell.label} needs the finished cell {teacher.label}")
    out = cell.run_dir(runs)
    pairs = out / "pairs"
    meta = {"icfm_steps": record["steps"], "icfm_best_step": record["best_step"],
            "tol": p.reflow_tol, "n_train": p.n_train, "n_val": p.n_val}
    meta_path = pairs / "meta.json"
    if not meta_path.is_file() or json.loads(meta_path.read_text())["meta"] != meta:
        if out.exists():
            shutil.rmtree(out)  # a reflow of another teacher: start over
        start = time.perf_counter()
        run = load_run(teacher.run_dir(runs), p.tested)
        source = toy.task(cell.task)[0]
        fresh = toy.sample(source, p.n_val, generator=stream(cell.seed, "reflow", "extra"))
        x0 = torch.cat([run.data.source.train, run.data.source.val, fresh])
        x1 = integrate(run.model, x0, method="dopri5", atol=p.reflow_tol, rtol=p.reflow_tol,
                       save="ends", energy=False).x_final
        save_points(pairs / "x0.npy", x0)
        save_points(pairs / "x1.npy", x1)
        seconds = time.perf_counter() - start
        write_text_atomic(json.dumps({"meta": meta, "seconds": seconds}) + "\n", meta_path)
    seconds = json.loads(meta_path.read_text())["seconds"]
    n = p.n_train + 2 * p.n_val
    data = DataConfig(
        source=str((pairs / "x0.npy").resolve()),
        target=str((pairs / "x1.npy").resolve()),
        n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
        val_fraction=p.n_val / n,
        paired=True,
    )
    extra = {"reflow_seconds": seconds, "teacher_train_seconds": record["train_seconds"]}
    return data, extra


# --------------------------------------------------------------------------- scheduling
def run_cells(
    cells: Sequence[Cell],
    p: Protocol,
    runs: str | Path,
    *,
    jobs: int = 1,
    on_done: Callable[[CellResult], None] | None = None,
    runner: Callable[..., dict[str, Any]] = run_cell,
) -> list[CellResult]:
    """Run the cells not cached yet (``jobs`` processes), dependencies first; in cell order.

    ``runner(cell, p=..., runs=...)`` trains and evaluates one cell (default :func:`run_cell`);
    a module-level function, so that worker processes can unpickle it.
    """
    runs = Path(runs)
    return _cells.run_cells(
        cells,
        partial(runner, p=p, runs=str(runs)),
        partial(cached_record, p=p, runs=runs),
        jobs=jobs,
        cost=lambda c: RELATIVE_COST.get(c.method, 1),
        depends_on=Cell.depends_on,
        on_done=on_done,
    )


def cached_results(cells: Sequence[Cell], p: Protocol, runs: str | Path) -> list[CellResult]:
    """The finished cells among ``cells`` (nothing is run)."""
    records = ((c, cached_record(c, p, Path(runs))) for c in cells)
    return [CellResult(c, r, cached=True) for c, r in records if r is not None]


# --------------------------------------------------------------------------- progress
def describe(result: CellResult) -> str:
    """One progress line on a finished cell: W2, NPE, NFE and training time, or its failure."""
    if result.record is None:
        return f"FAILED ({result.error})"
    r = result.record
    tag = " (cached)" if result.cached else ""
    return (f"W2 {r['w2']:.3f}  NPE {r['npe']:.3f}  NFE {r['nfe']}  "
            f"train {r['train_seconds']:.0f} s{tag}")


def records_of(results: Iterable[CellResult], library: str = "otcfm") -> list[dict[str, Any]]:
    """The JSON records of finished cells of one library (for two_dim.json)."""
    keep = ("task", "method", "seed", "w2", "npe", "nfe", "train_seconds")
    out = []
    for r in results:
        if r.record is None or r.cell.library != library:
            continue
        rec = dict(r.record)
        rec.pop("protocol", None)
        out.append({**{k: rec.pop(k) for k in keep}, **rec})
    return out

