"""Evaluate and sample a finished run (docs/reference.md §3 protocol).

W2 and MMD of model samples against the target test set, path energy along the model ODE,
the normalized path energy NPE = ``|PE - W2^2(q0, q1)|`` / W2^2(q0, q1) with W2^2 taken between
source and target test sets of the same size as the samples, and the NFE of the fixed-step
solver and of an adaptive one. Runs with a score network (SF2M) are sampled with the
probability-flow ODE by default, or with the bridge SDE (Euler-Maruyama, the run's sigma) when
asked (``sde=True``).
"""

from __future__ import annotations

import csv
import functools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from otcfm.metrics import mmd, normalized_path_energy, wasserstein
from otcfm.sampling import DEFAULT_DIFFUSION, Trajectory, integrate, integrate_sde
from otcfm.train.checkpoint import CorruptCheckpoint, StagedFiles, load_checkpoint
from otcfm.train.config import RunConfig
from otcfm.train.datasets import RunData, load_run_data, read_data_record, stream
from otcfm.train.loop import build_matcher, build_model, needs_score
from otcfm.train.runfolder import RunFolder, merged_metrics, newest_checkpoint

log = logging.getLogger("otcfm.train")


@dataclass(frozen=True)
class LoadedRun:
    """A trained run's config and model; its data (:attr:`data`) are loaded on first use.

    ``event_shape``: the shape of one point the model takes (from the run's data.json, so
    sampling given points never needs the training files).
    """

    cfg: RunConfig
    model: nn.Module
    step: int
    checkpoint: str
    event_shape: tuple[int, ...]
    load_data: Callable[[], RunData] = field(repr=False, compare=False)

    @property
    def data(self) -> RunData:
        """The run's data splits, read at the first use, then kept.

        The run's data splits, read at the first use (files checked against the run's
        data.json), then kept.
        """
        return self.load_data()


def load_run(
    run_dir: str | Path,
    which: str = "best",
    *,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> LoadedRun:
    """Rebuild a run's model from its checkpoint ``which``.

    :func:`choose_checkpoint`; EMA weights when present. ``checkpoint`` of the result names the file
    used.

    The data are read only when :attr:`LoadedRun.data` is first used: from the paths recorded
    in the run's ``data.json`` (or by file name under ``data_root`` when they moved), and
    refused when a file's size or SHA-256 differs from the record unless
    ``allow_changed_data`` (see :func:`otcfm.train.datasets.load_run_data`). A run written
    before runs recorded their data loads its data now (from its config, unverified: a
    warning says so).
    """
    run_dir = Path(run_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = RunConfig.from_toml(config_path).resolve()  # runs written before sigma was recorded
    cfg.out_dir, cfg.name = str(run_dir.parent), run_dir.name
    state, path = choose_checkpoint(run_dir, which)
    record = read_data_record(run_dir)

    @functools.cache
    def load_data() -> RunData:
        return load_run_data(cfg.data, cfg.seed, record=record, data_root=data_root,
                             allow_changed_data=allow_changed_data)

    data = None
    if record is None or record.event_shape is None:
        warnings.warn(
            f"{run_dir} has no data record (data.json, written by runs since this version): "
            "its data files cannot be verified",
            stacklevel=2,
        )
        data = load_data()
    shape = data.event_shape if data is not None else record.event_shape
    model = build_model(cfg.model, shape, score=needs_score(cfg.method))
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    model.eval().requires_grad_(False)
    return LoadedRun(cfg, model, int(state["step"]), path.name, shape, load_data)


def choose_checkpoint(run_dir: Path, which: str = "best") -> tuple[dict[str, Any], Path]:
    """The checkpoint ``which`` ("best" or "latest") of a run and its path.

    ``latest``: the newest readable checkpoint (corrupt ones are reported by name, see
    :func:`~otcfm.train.runfolder.newest_checkpoint`). ``best``: best.pt; when it is missing
    (no validation yet) or corrupt, a warning says so and the newest readable one is used.
    FileNotFoundError when the run has no checkpoint.
    """
    folder = run_dir / "checkpoints"
    if which == "best":
        best = folder / "best.pt"
        try:
            return load_checkpoint(best), best
        except (FileNotFoundError, CorruptCheckpoint) as err:
            why = str(err) if isinstance(err, CorruptCheckpoint) else f"{run_dir} has no best.pt"
            log.warning("%s; using the newest readable checkpoint instead", why)
        found = newest_checkpoint(folder)
        if found is not None:
            log.warning("%s: using %s (step %s), not best.pt", run_dir, found[1].name,
                        found[0]["step"])
    else:
        found = newest_checkpoint(folder)
    if found is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (was it trained?)")
    return found


def sde_sigma(cfg: RunConfig) -> float:
    """The diffusion coefficient of the run's bridge SDE, read from its matcher (SF2M)."""
    return float(build_matcher(cfg.method).path.sigma)


def sample_run(
    run: LoadedRun,
    x0: Tensor | None = None,
    *,
    n: int | None = None,
    solver: str | None = None,
    steps: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    save: str = "all",
    sde: bool = False,
    sde_steps: int | None = None,
    generator: torch.Generator | None = None,
    diffusion: str = DEFAULT_DIFFUSION,
) -> Trajectory:
    """Push source points (the test set by default) through the model ODE.

    With ``sde`` (runs with a score network only, i.e. SF2M) sample the bridge SDE
    dx = [v + (sigma^2/2) s] dt + sigma dW instead, by Euler-Maruyama with the run's sigma in
    ``sde_steps`` steps (default: the run's ``eval.ode_steps``); the noise comes from
    ``generator`` (default: a stream derived from the run's seed, so repeated calls agree);
    ``diffusion``: the schedule of :data:`otcfm.sampling.DIFFUSIONS` (sigma in place of g).
    """
    if x0 is None:
        x0 = run.data.source.test if n is None else run.data.source.test[:n]
    if sde:
        if not callable(getattr(run.model, "score", None)):
            raise ValueError(
                f"SDE sampling needs a run with a score network (method sf2m); this run's "
                f"method is {run.cfg.method.name!r}"
            )
        return integrate_sde(
            run.model,
            x0,
            sigma=sde_sigma(run.cfg),
            steps=run.cfg.eval.ode_steps if sde_steps is None else sde_steps,
            generator=generator if generator is not None else stream(run.cfg.seed, "sde"),
            save=save,
            diffusion=diffusion,
        )
    return integrate(
        run.model,
        x0,
        method=solver or run.cfg.eval.solver,
        steps=steps or run.cfg.eval.ode_steps,
        atol=atol,
        rtol=rtol,
        save=save,
    )


@dataclass(frozen=True)
class NllSettings:
    """How ``otcfm evaluate --nll`` integrates log p1.

    How ``otcfm evaluate --nll`` integrates log p1 (:func:`otcfm.likelihood.log_likelihood`):
    the ``divergence`` ("exact" or "hutchinson" with ``probes`` Rademacher probes drawn from
    the run's seed), dopri5 at atol = rtol = ``tol``; ``gaussian_source`` declares a point
    run's source N(0, I) (a file of its draws), else the built-in source's own density.
    """

    divergence: str = "exact"
    probes: int = 1
    tol: float = 1e-5
    gaussian_source: bool = False


def source_density(spec: str, settings: NllSettings) -> tuple[Any, str]:
    """The source density of a point run's flow for :func:`nll_metrics`, and its name.

    A run from a built-in distribution with a known density (:func:`otcfm.data.toy.log_prob`)
    uses it; any other source must be declared (``settings.gaussian_source``), since log p1(x) =
    log p0(x0) + int div v, and a wrong p0 gives a wrong NLL without any sign of it.
    """
    from otcfm.data import toy

    if settings.gaussian_source:
        return "gaussian", "gaussian (declared)"
    if toy.has_density(spec):
        return ("gaussian" if spec == "gaussian" else toy.Density(spec)), spec
    known = ", ".join(n for n in toy.DENSITIES.names())
    raise ValueError(
        f"--nll needs the density of the run's source {spec!r}, which otcfm does not know "
        f"(built-in sources with one: {known}); if it holds draws of N(0, I), add "
        "--gaussian-source")


def nll_metrics(
    model: nn.Module, x: Tensor, settings: NllSettings, *, seed: int,
    image_shape: tuple[int, ...] | None = None, levels: int = 256, source: Any = "gaussian",
    **cond: Any,
) -> dict[str, Any]:
    """The negative log-likelihood of ``x`` under the model's flow from ``source``.

    The negative log-likelihood of ``x`` under the model's flow from ``source`` (N(0, I),
    or an object with ``log_prob``): its mean and standard error over the points (nats), the
    NFE; for images (``image_shape``) also bits per
    dimension of the discrete data, whose pixels take ``levels`` values evenly spaced over
    [-1, 1] (:func:`otcfm.likelihood.bits_per_dim`; 256 for 8-bit images).
    """
    from otcfm.likelihood import bits_per_dim, log_likelihood

    hutch = settings.divergence == "hutchinson"
    out = log_likelihood(
        model, x, source=source, divergence=settings.divergence,
        n_probes=settings.probes if hutch else 1,
        generator=stream(seed, "nll") if hutch else None, atol=settings.tol, rtol=settings.tol,
        **cond,
    )
    n = x.shape[0]
    nll = -out.logp.double()
    res: dict[str, Any] = {
        "nll": float(nll.mean()), "nll_se": float(nll.std() / n**0.5) if n > 1 else 0.0,
        "nll_n": n, "nll_divergence": settings.divergence, "nll_nfe": out.nfe,
    }
    if hutch:
        res["nll_probes"] = settings.probes
    if image_shape is not None:
        bpd = bits_per_dim(out.logp.double(), image_shape, levels=levels)
        res["levels"] = levels
        res["bits_per_dim"] = float(bpd.mean())
        res["bits_per_dim_se"] = float(bpd.std() / n**0.5) if n > 1 else 0.0
    return res


def evaluate_run(
    run_dir: str | Path,
    *,
    which: str | None = None,
    adaptive: str = "dopri5",
    tol: float = 1e-4,
    plots: bool = True,
    sde: bool = False,
    sde_steps: int | None = None,
    diffusion: str = DEFAULT_DIFFUSION,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
    nll: NllSettings | None = None,
) -> dict[str, Any]:
    """Score a run on its test sets and write its metrics, samples, plots and report.

    Score a run on its test sets; write ``metrics.json``, ``samples.pt``, plots and
    ``report.md``, each atomically and only once all of them were made (under the run
    folder's lock).

    ``data_root``, ``allow_changed_data``: where moved data files are, and whether changed
    ones are used (see :func:`load_run`); the data are checked before anything is written.

    The ODE metrics (W2, MMD, path energy, NPE of the probability flow) are always computed;
    with ``sde`` (SF2M runs) the bridge SDE's samples are scored as well (``w2_sde``,
    ``w1_sde``, ``mmd_sde``, ``nfe_sde``, ``sde_steps``, ``sde_diffusion``: the schedule
    ``diffusion``). With ``nll`` the negative
    log-likelihood of the target test points under the flow (:func:`nll_metrics`).
    """
    run_dir = Path(run_dir)
    probe = (
        RunConfig.from_toml(run_dir / "config.toml")
        if (run_dir / "config.toml").is_file()
        else None
    )
    use_best = probe.eval.use_best if probe is not None else True
    run = load_run(run_dir, which or ("best" if use_best else "latest"), data_root=data_root,
                   allow_changed_data=allow_changed_data)
    density = source_density(run.cfg.data.source, nll) if nll is not None else None
    source, target = run.data.source.test, run.data.target.test
    n = min(source.shape[0], target.shape[0])
    source, target = source[:n], target[:n]

    start = time.perf_counter()
    traj = sample_run(run, source)
    sample_seconds = time.perf_counter() - start
    samples = traj.x_final
    w2_ref = wasserstein(source, target, p=2)
    pe = float(traj.energy.mean())
    metrics: dict[str, Any] = {
        "checkpoint": run.checkpoint,
        "step": run.step,
        "n_test": n,
        "solver": run.cfg.eval.solver,
        "ode_steps": run.cfg.eval.ode_steps,
        "w2": wasserstein(samples, target, p=2),
        "w1": wasserstein(samples, target, p=1),
        "mmd": mmd(samples, target),
        "path_energy": pe,
        "w2_source_target": w2_ref,
        "npe": normalized_path_energy(pe, w2_ref**2),
        "nfe": traj.nfe,
        "sample_seconds": sample_seconds,
    }
    if adaptive:
        adaptive_traj = integrate(
            run.model, source, method=adaptive, atol=tol, rtol=tol, save="ends", energy=False
        )
        metrics[f"nfe_{adaptive}"] = adaptive_traj.nfe
        metrics[f"w2_{adaptive}"] = wasserstein(adaptive_traj.x_final, target, p=2)
    if nll is not None:
        assert density is not None
        metrics.update(nll_metrics(run.model, target, nll, seed=run.cfg.seed,
                                   source=density[0]), nll_source=density[1])
    if sde:
        sde_traj = sample_run(run, source, sde=True, sde_steps=sde_steps, save="ends",
                              diffusion=diffusion)
        sde_samples = sde_traj.x_final
        metrics["sde_steps"] = run.cfg.eval.ode_steps if sde_steps is None else sde_steps
        metrics["w2_sde"] = wasserstein(sde_samples, target, p=2)
        metrics["w1_sde"] = wasserstein(sde_samples, target, p=1)
        metrics["mmd_sde"] = mmd(sde_samples, target)
        metrics["nfe_sde"] = sde_traj.nfe
        metrics["sde_diffusion"] = diffusion

    history = read_log(run_dir / "log.csv")
    # every output is written only once all of them were made, each atomically
    metrics_path = run_dir / "metrics.json"
    with RunFolder(run_dir).writing(), StagedFiles() as staged:
        staged.save({"x0": source, "samples": samples, "target": target, "ts": traj.ts},
                    run_dir / "samples.pt")
        if plots:
            write_run_plots(run, traj, target, history,
                            overview=staged.path(run_dir / "plots" / "overview.png"),
                            training=staged.path(run_dir / "plots" / "training.png"))
        staged.write_text(merged_metrics(metrics_path, {"test": metrics}), metrics_path)
        staged.write_text(run_report(run_dir, metrics), run_dir / "report.md")
    return metrics


def read_log(path: Path) -> list[dict[str, float]]:
    """The numeric cells of a run's log.csv, row by row (others left out; no file: no rows)."""
    if not path.is_file():
        return []

    def number(text: str | None) -> float | None:
        try:
            return float(text) if text else None
        except ValueError:
            return None

    with path.open(newline="") as handle:
        rows = [{k: number(v) for k, v in row.items() if k} for row in csv.DictReader(handle)]
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def write_run_plots(
    run: LoadedRun, traj: Trajectory, target: Tensor, history: list[dict[str, float]], *,
    overview: Path, training: Path,
) -> None:
    """Draw a run's overview figure and training history.

    The overview figure (source, target, samples, paths) and the training history (from
    log.csv rows; drawn when there is at least one row).
    """
    from otcfm import plots

    title = plots.run_title(run.cfg.method.name, run.cfg.data.source, run.cfg.data.target)
    plots.plot_overview(traj.xs[0], target, traj.x_final, traj.xs, overview, title)
    if history:
        plots.plot_history(history, training, title)


def run_report(run_dir: Path, metrics: dict[str, Any]) -> str:
    """A short markdown report of one run."""
    cfg = RunConfig.from_toml(run_dir / "config.toml")
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items())
    return (
        f"# Run `{run_dir.name}`\n\n"
        f"{cfg.method.name} (sigma = {cfg.method.sigma}) from `{cfg.data.source}` to "
        f"`{cfg.data.target}`, {cfg.optim.steps} steps of batch {cfg.optim.batch_size}, "
        f"seed {cfg.seed}.\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        "![overview](plots/overview.png)\n\n![training](plots/training.png)\n"
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
