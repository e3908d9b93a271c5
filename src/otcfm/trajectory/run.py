"""Run folders for trajectory inference, laid out like :mod:`otcfm.train` runs.

``runs/<name>/``: ``config.toml`` (fully resolved), ``data.json`` (the data file's absolute
path, size and SHA-256, or "synthetic": checked before predict and evaluate use the data),
``checkpoints/`` (atomic; model, optimizer, step, the fitted preprocessor; the layout of
:mod:`otcfm.train.runfolder`), ``log.csv`` (training loss), ``metrics.json`` (train summary
and evaluation), ``plots/time_course.png`` and ``report.md``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from otcfm.data.files import DataSpec, parse_spec
from otcfm.data.preprocess import Preprocessor, fit_preprocessor
from otcfm.data.provenance import DataRecord, FileRecord
from otcfm.data.synthetic_cells import SyntheticCells
from otcfm.data.timeseries import TimeSeries
from otcfm.data.timeseries_files import load_timeseries
from otcfm.sampling import DEFAULT_DIFFUSION, DIFFUSIONS
from otcfm.train.checkpoint import StagedFiles
from otcfm.train.config import ConfigError, config_differences
from otcfm.train.datasets import (
    DATA_RECORD,
    check_same_data,
    read_data_record,
    recorded_file,
    stream,
)
from otcfm.train.runfolder import RunFolder, merged_metrics, newest_checkpoint
from otcfm.trajectory.config import DataSection, TrajectoryConfig
from otcfm.trajectory.fit import FitSpec, Fitter, model_from_state
from otcfm.trajectory.predict import (
    SDE,
    evaluate_intervals,
    evaluate_left_out,
    interpolation_baseline,
    predict_left_out,
    score,
    trajectories,
)

log = logging.getLogger("otcfm.trajectory")

LOG_FIELDS = ("step", "loss", "seconds")
SYNTHETIC = "synthetic"  # data.path of the built-in synthetic time course

__all__ = [
    "LoadedData",
    "TrajectoryRun",
    "evaluate_trajectory_run",
    "fit_run",
    "load_data",
    "load_trajectory_run",
    "spec_from_config",
]


@dataclass(frozen=True, eq=False)
class LoadedData:
    """Raw populations, the model's representation of them, and how one maps to the other."""

    raw: TimeSeries
    ts: TimeSeries
    preprocessor: Preprocessor | None
    synthetic: SyntheticCells | None = None

    def truth(self, t: float, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Synthetic data only: n fresh cells at observation time t, in the model's features."""
        if self.synthetic is None:
            raise ValueError("ground truth at arbitrary times exists only for synthetic data")
        x = self.synthetic.truth(t, n, generator)
        return self.preprocessor.transform(x) if self.preprocessor is not None else x


def synthetic_process(cfg: DataSection) -> SyntheticCells:
    return SyntheticCells(obs_dim=cfg.obs_dim)


def data_spec(cfg: DataSection) -> DataSpec:
    """``data.path`` parsed (:func:`~otcfm.data.files.parse_spec`): "synthetic" or a file."""
    return parse_spec(cfg.path, builtins=(SYNTHETIC,), name="data.path")


def record_data(cfg: DataSection, dim: int) -> DataRecord:
    """The run's data record (data.json).

    The file's absolute path, size and SHA-256 (or "synthetic") and the model's feature count.
    """
    spec = data_spec(cfg)
    entry = SYNTHETIC if spec.path is None else FileRecord.of(spec.path, spec.key)
    return DataRecord({"data.path": entry}, (dim,))


def load_data(
    cfg: DataSection,
    preprocessor: Preprocessor | None = None,
    *,
    record: DataRecord | None = None,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> LoadedData:
    """Load (or simulate) the populations and represent them as the config says.

    A given ``preprocessor`` (from a checkpoint) is applied as is; otherwise one is fitted on
    all cells when ``dims`` or ``standardize`` asks for it. With the ``record`` of a trained
    run the file is read from its recorded path (or by name under ``data_root``) and must
    match its recorded size and SHA-256 (see :func:`otcfm.train.datasets.recorded_file`).
    """
    synthetic = None
    spec = data_spec(cfg)
    if spec.path is None:
        synthetic = synthetic_process(cfg)
        raw = synthetic.snapshots(cfg.n_cells, stream(cfg.data_seed, "synthetic-cells"))
    else:
        path, key = spec.path, spec.key
        if record is not None:
            path, key = recorded_file(record, "data.path", spec, data_root=data_root,
                                      allow_changed_data=allow_changed_data)
        if key is not None and cfg.npz_key not in (key, DataSection.npz_key):
            raise ValueError(
                f"data.path {cfg.path!r} names the feature array {key!r} but data.npz_key "
                f"(--npz-key) is {cfg.npz_key!r}; give one of them"
            )
        try:
            raw = load_timeseries(
                path,
                time_key=cfg.time_key or None,
                obsm_key=cfg.obsm_key or None,
                npz_key=key or cfg.npz_key,
                time_order=cfg.time_labels,
            )
        except (ValueError, FileNotFoundError) as err:  # name the config key too
            raise type(err)(f"data.path: {err}") from None
    if preprocessor is None and cfg.dims > raw.dim:
        raise ConfigError(
            "data.dims", f"data.dims (--dims) is {cfg.dims} but {cfg.path} has {raw.dim} "
            f"features; use --dims {raw.dim} or fewer (0 = all)"
        )
    if preprocessor is None and (cfg.dims or cfg.standardize):
        dims = cfg.dims or None
        preprocessor = fit_preprocessor(raw.x, dims=dims, pca=cfg.pca, standardize=cfg.standardize)
    ts = raw if preprocessor is None else raw.map(preprocessor.transform)
    return LoadedData(raw, ts, preprocessor, synthetic)


def spec_from_config(cfg: TrajectoryConfig) -> FitSpec:
    """The :class:`FitSpec` of a trajectory config (-1 settings become None)."""
    return FitSpec(
        method=cfg.method.name,
        sigma=None if cfg.method.sigma < 0 else cfg.method.sigma,
        left_out=None if cfg.eval.left_out < 0 else cfg.eval.left_out,
        steps=cfg.optim.steps,
        batch_size=cfg.optim.batch_size,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        width=cfg.model.width,
        depth=cfg.model.depth,
        activation=cfg.model.activation,
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------- fitting
def fit_run(
    cfg: TrajectoryConfig, *, resume: bool = False, progress: bool = True, evaluate: bool = True
) -> Path:
    """Train the run of ``cfg``, then evaluate it; return the run folder.

    Train the run of ``cfg`` (continuing its newest readable checkpoint with ``resume``),
    then evaluate it (metrics.json, plots, report.md). Returns the run folder.

    The run folder's lock is held while training: a second writer is refused; without
    ``resume`` a folder that already holds a run is refused.
    """
    cfg.validate()
    run_dir = cfg.run_dir
    folder = RunFolder(run_dir, fields=LOG_FIELDS, keep=cfg.eval.keep_checkpoints)
    with folder.writing(resume=resume):  # refuses a second writer, and a fresh run over one
        _fit(cfg, folder, progress)
    if evaluate:
        evaluate_trajectory_run(run_dir)
    return run_dir


def _fit(cfg: TrajectoryConfig, folder: RunFolder, progress: bool) -> None:
    """Train (continuing the newest readable checkpoint of ``folder``, if any)."""
    run_dir = folder.path
    found = folder.load_latest()
    state = found[0] if found is not None else None
    if state is not None:
        saved = TrajectoryConfig.from_dict(state["config"]).to_dict()
        mine = cfg.to_dict()
        for d in (saved, mine):
            d["optim"].pop("steps")
            d["eval"].pop("keep_checkpoints", None)
        changed = config_differences(saved, mine)
        if changed:
            raise ValueError(
                f"cannot resume {run_dir}: its config differs from the one given: "
                f"{'; '.join(changed)} (the run's value -> the given one; only optim.steps "
                "may change on resume)"
            )
    pre = Preprocessor.from_dict(state["preprocessor"]) if state and state["preprocessor"] else None
    data = load_data(cfg.data, pre)
    record = record_data(cfg.data, data.ts.dim)
    if state is not None:
        check_same_data(run_dir, record)
    spec = spec_from_config(cfg)
    if spec.left_out is not None and not 0 < spec.left_out < data.ts.n_times - 1:
        raise ValueError(
            f"eval.left_out must be an intermediate time index in [1, {data.ts.n_times - 2}] "
            f"(the data has times {list(data.ts.times)}), got {spec.left_out}"
        )
    fitter = Fitter(
        data.ts, spec, device=cfg.device, folder=folder,
        config_toml=cfg.to_toml(), files={DATA_RECORD: record.to_json()}, progress=progress,
        desc=f"{cfg.name} ({spec.method})",
        extra_state={
            "config": cfg.to_dict(),
            "preprocessor": data.preprocessor.to_dict() if data.preprocessor else None,
        },
    )
    if state is not None:
        fitter.load_state_dict(state.get("fit", state))  # "fit": a folder of before the engine
        log.info("resumed %s at step %d", run_dir, fitter.step)
    fitter.run(log_every=cfg.eval.log_every, callback_every=cfg.eval.checkpoint_every)


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True, eq=False)
class TrajectoryRun:
    """A loaded trajectory run: config, model, data, step and folder."""

    cfg: TrajectoryConfig
    model: nn.Module
    data: LoadedData
    step: int
    run_dir: Path

    @property
    def left_out(self) -> int | None:
        """The held-out time index of the run, or None."""
        return None if self.cfg.eval.left_out < 0 else self.cfg.eval.left_out


def load_trajectory_run(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> TrajectoryRun:
    """Rebuild a run's model and data (with its saved preprocessor) from its folder.

    The data file is read from the path recorded in the run's ``data.json`` (or by its name
    under ``data_root`` when it moved) and refused when its size or SHA-256 changed, unless
    ``allow_changed_data``. A run written before runs recorded their data is read from its
    config, unverified (a warning says so).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a trajectory run folder (no config.toml)")
    cfg = TrajectoryConfig.from_toml(run_dir / "config.toml")
    cfg.out_dir, cfg.name = str(run_dir.parent), run_dir.name
    found = newest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (was it trained?)")
    state, path = found
    if path.name != "latest.pt":
        log.warning("%s: using %s (step %d)", run_dir, path.name, state.get("step", -1))
    pre = Preprocessor.from_dict(state["preprocessor"]) if state["preprocessor"] else None
    record = read_data_record(run_dir)
    if record is None:
        warnings.warn(
            f"{run_dir} has no data record (data.json, written by runs since this version): "
            "its data file cannot be verified",
            stacklevel=2,
        )
    data = load_data(cfg.data, pre, record=record, data_root=data_root,
                     allow_changed_data=allow_changed_data)
    if data.ts.dim != int(state["dim"]):
        raise ValueError(
            f"{run_dir}: the data now has {data.ts.dim} features, the model {state['dim']}"
        )
    fit = state.get("fit", state)  # "fit": a folder of before the engine
    model = model_from_state(fit, data.ts.dim)
    return TrajectoryRun(cfg, model, data, int(fit["step"]), run_dir)


# --------------------------------------------------------------------------- evaluation
def evaluate_trajectory_run(
    run_dir: str | Path,
    *,
    ode_steps: int | None = None,
    plots: bool = True,
    data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> dict[str, Any]:
    """Score a run and write metrics.json, plots and report.md.

    Score a run (the leave-one-out protocol of Tong et al. 2024) and write metrics.json,
    plots and report.md.

    With a left-out time k: W1 and MMD of the cells of k-1 pushed to k against the true cells
    at k, beside the linear-interpolation baseline (and, for synthetic data, against fresh
    ground-truth cells). Always: the same score for every observed interval (fit quality).
    """
    run = load_trajectory_run(run_dir, data_root=data_root, allow_changed_data=allow_changed_data)
    steps = ode_steps or run.cfg.eval.ode_steps
    ts, k = run.data.ts, run.left_out
    start = time.perf_counter()
    ev: dict[str, Any] = {"step": run.step, "ode_steps": steps, "left_out": k}
    ev["intervals"] = {
        str(j): {"w1": s.w1, "mmd": s.mmd}
        for j, s in evaluate_intervals(run.model, ts, steps_per_unit=steps).items()
    }
    if k is not None:
        s = evaluate_left_out(run.model, ts, k, steps_per_unit=steps)
        base = score(interpolation_baseline(ts, k, generator=stream(run.cfg.seed, "baseline")),
                     ts.at(k))
        ev.update(w1=s.w1, mmd=s.mmd, baseline_w1=base.w1, baseline_mmd=base.mmd)
        truth = None
        if run.data.synthetic is not None:
            truth = run.data.truth(ts.times[k], ts.counts[k], stream(run.cfg.seed, "truth"))
            pred = predict_left_out(run.model, ts, k, steps_per_unit=steps)
            ev["w1_truth"] = score(pred, truth).w1
        if callable(getattr(run.model, "score", None)):  # SF2M: its SDE as well, each schedule
            for diffusion in DIFFUSIONS:
                tag = "" if diffusion == DEFAULT_DIFFUSION else f"_{diffusion}"
                pred = predict_left_out(run.model, ts, k, steps_per_unit=steps,
                                        sde=run_sde(run, None, diffusion))
                s = score(pred, ts.at(k))
                ev.update({f"w1_sde{tag}": s.w1, f"mmd_sde{tag}": s.mmd})
                if truth is not None:
                    ev[f"w1_truth_sde{tag}"] = score(pred, truth).w1
    ev["eval_seconds"] = time.perf_counter() - start
    run_dir = run.run_dir
    # every output is written only once all of them were made, each atomically
    with RunFolder(run_dir).writing(), StagedFiles() as staged:
        if plots:
            _plot(run, steps, staged.path(run_dir / "plots" / "time_course.png"))
        staged.write_text(merged_metrics(run_dir / "metrics.json", {"eval": ev}),
                          run_dir / "metrics.json")
        staged.write_text(_report(run, ev), run_dir / "report.md")
    return ev


def run_sde(run: TrajectoryRun, seed: int | None, diffusion: str = DEFAULT_DIFFUSION) -> SDE:
    """The SDE of an SF2M run.

    The SDE of an SF2M run (its sigma; ``diffusion`` a schedule of
    :data:`otcfm.sampling.DIFFUSIONS`), noise from ``stream(seed or the run's, "sde")``;
    a clear error for a run without a score.
    """
    if not callable(getattr(run.model, "score", None)):
        raise ValueError(f"{run.run_dir} is a {run.cfg.method.name} run without a score "
                         "network: only SF2M runs (--method sf2m) sample the SDE")
    return SDE(spec_from_config(run.cfg).sigma,
               stream(run.cfg.seed if seed is None else seed, "sde"), diffusion)


def _plot(run: TrajectoryRun, steps: int, path: Path) -> None:
    from otcfm.trajectory.plots import Panel, View2D, plot_time_course

    ts, k = run.data.ts, run.left_out
    g = stream(run.cfg.seed, "plot")
    start = ts.at(0)
    cells = start[torch.randperm(start.shape[0], generator=g)[:60]]
    grid = torch.linspace(0, ts.n_times - 1, 10 * (ts.n_times - 1) + 1)[1:].tolist()
    full = trajectories(run.model, cells, 0.0, grid, steps_per_unit=steps)
    pred = predict_left_out(run.model, ts, k, steps_per_unit=steps) if k is not None else None
    title = f"{run.cfg.method.name}" + (f", time {ts.time_names[k]} held out" if k else "")
    view = View2D.first_two(ts.dim) if run.data.preprocessor is not None else None
    plot_time_course(ts, [Panel(title, full.xs, pred)], path, left_out=k, view=view)


def _report(run: TrajectoryRun, ev: dict[str, Any]) -> str:
    cfg, ts = run.cfg, run.data.ts
    pre = run.data.preprocessor.description if run.data.preprocessor else "raw features"
    lines = [
        f"# Trajectory inference: {cfg.name}",
        "",
        f"Data: `{cfg.data.path}`, {ts.x.shape[0]} cells at times "
        f"{', '.join(ts.time_names)} (counts {', '.join(map(str, ts.counts))}); "
        f"representation: {pre} ({ts.dim} dims).",
        f"Method {cfg.method.name}, sigma {spec_from_config(cfg).sigma:g}, MLP {cfg.model.depth}x"
        f"{cfg.model.width} {cfg.model.activation}, {run.step} steps, batch "
        f"{cfg.optim.batch_size} per time, seed {cfg.seed}.",
        "",
    ]
    k = ev["left_out"]
    if k is not None:
        lines += [
            f"Held-out time {ts.time_names[k]}: cells of time {ts.time_names[k - 1]} pushed one "
            f"unit forward ({ev['ode_steps']} Euler steps) against the {ts.counts[k]} true cells.",
            "",
            "| prediction | W1 | MMD |",
            "|---|---|---|",
            f"| {cfg.method.name} | {ev['w1']:.4f} | {ev['mmd']:.4g} |",
            *([f"| {cfg.method.name}, SDE (Euler-Maruyama) | {ev['w1_sde']:.4f} | "
               f"{ev['mmd_sde']:.4g} |"] if "w1_sde" in ev else []),
            *([f"| {cfg.method.name}, SDE with tapered noise (--diffusion tapered) | "
               f"{ev['w1_sde_tapered']:.4f} | {ev['mmd_sde_tapered']:.4g} |"]
              if "w1_sde_tapered" in ev else []),
            f"| linear interpolation of exact OT pairs | {ev['baseline_w1']:.4f} | "
            f"{ev['baseline_mmd']:.4g} |",
        ]
        if "w1_truth" in ev:
            lines += ["", f"W1 against fresh ground-truth cells: {ev['w1_truth']:.4f}."]
        lines.append("")
    lines += ["Every interval (cells of k-1 pushed to k):", "", "| k | W1 | MMD |", "|---|---|---|"]
    for j, s in ev["intervals"].items():
        mark = " (held out)" if k is not None and int(j) == k else ""
        lines.append(f"| {ts.time_names[int(j)]}{mark} | {s['w1']:.4f} | {s['mmd']:.4g} |")
    lines += ["", "![time course](plots/time_course.png)", ""]
    return "\n".join(lines)
