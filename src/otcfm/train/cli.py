"""The commands of ``otcfm train | sample | evaluate``.

The parser and the error handling live in :mod:`otcfm.cli`, which imports this module when one of
them runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from otcfm.couplings import check_memory
from otcfm.data import load_points, parse_spec, save_points, toy
from otcfm.data.files import SUPPORTED_EXTENSIONS
from otcfm.sampling import ADAPTIVE_SOLVERS, DIFFUSIONS, SOLVERS
from otcfm.train.checkpoint import StagedFiles
from otcfm.train.config import (
    RunConfig,
    check_device_available,
    check_folder,
    check_output_file,
)
from otcfm.train.datasets import data_seed, stream
from otcfm.train.evaluate import NllSettings, evaluate_run, load_run, sample_run, sde_sigma
from otcfm.train.evaluate_images import (
    SAMPLE_BATCH,
    FeatureScorer,
    evaluate_image_run,
    from_pixels,
    load_image_run,
    sample_images,
)
from otcfm.train.launch import launch, launched_world, process_group
from otcfm.train.loop import build_matcher, process_device, train

#: the feature network that scores samples of an image spec (None: none for that data set)
Scorers = Callable[[str], FeatureScorer | None]


def _check_nproc(nproc: int, device: str) -> None:
    """--nproc on this machine: one GPU per process on CUDA, at most one process per core."""
    if torch.device(device).type == "cuda":
        have, what = torch.cuda.device_count(), "CUDA devices"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if nproc > have:
        raise ValueError(f"--nproc {nproc} exceeds the {have} {what} of this machine")


def _local_processes(world: int) -> int:
    """The processes of this job on this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def check_coupling_memory(cfg: RunConfig, world: int, processes: int) -> None:
    """Refuse a run whose couplings would not fit in memory, before any data is loaded.

    Each of ``processes`` processes on this machine (of ``world`` in the job) solves
    couplings of ``couplings.ot_batch`` points (scope "local": its share of them) in its
    coupling threads at once; see :func:`otcfm.couplings.check_memory`.
    """
    c = cfg.couplings
    n = cfg.ot_batch // world if (world > 1 and c.scope == "local") else cfg.ot_batch
    threads = max(1, c.workers if world == 1 else min(c.workers, 1))
    check_memory(build_matcher(cfg.method).coupling, n, n, device=process_device(cfg.device),
                 copies=threads * processes)


def cmd_train(args: argparse.Namespace, cfg: RunConfig, scorer: Scorers | None = None) -> int:
    """Run ``otcfm train`` with the resolved config ``cfg``.

    ``otcfm train`` with the resolved config ``cfg`` of its flags (device checked);
    ``scorer``: the feature network of an image set's spec, for the evaluation after
    training (see :func:`cmd_evaluate`).
    """
    check_folder(Path(cfg.out_dir), "out_dir (--out)")
    check_folder(cfg.run_dir, "the run folder (--out/--name)")
    rank = int(os.environ.get("RANK", "0"))
    if args.resume and rank == 0 and not cfg.run_dir.is_dir():
        raise FileNotFoundError(f"--resume: there is no run {cfg.run_dir} (check --name, --out)")
    if args.nproc is not None:
        if launched_world() > 1:
            raise ValueError("--nproc starts the processes itself; under torchrun leave it out")
        if args.nproc > 1:
            for key, value in (("--batch-size", cfg.optim.batch_size),
                               ("--ot-batch", cfg.ot_batch)):
                if value % args.nproc:
                    raise ValueError(
                        f"{key} {value} is the global batch; it must be a multiple of "
                        f"--nproc {args.nproc}"
                    )
            _check_nproc(args.nproc, cfg.device)
            check_coupling_memory(cfg, args.nproc, args.nproc)
            launch(_without_nproc(args.argv), args.nproc, timeout=cfg.distributed.timeout)
            return 0
    world = launched_world()
    check_coupling_memory(cfg, world, _local_processes(world))
    with process_group(cfg.device, cfg.distributed.backend, cfg.distributed.timeout):
        result = train(cfg, resume=args.resume, progress=not args.quiet)
    if rank != 0:
        return 0
    print(
        f"trained {result.steps} steps in {result.train_seconds:.1f} s "
        f"(best validation loss {result.best_val_loss:.4g} at step {result.best_step})"
    )
    if not args.no_eval:
        if cfg.is_image_run:
            _print_metrics(evaluate_image_run(
                result.run_dir, scorer=scorer(cfg.data.target) if scorer else None,
                device=cfg.device))
        else:
            _print_metrics(evaluate_run(result.run_dir))
    print(f"run written to {result.run_dir}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line of each launched process: ``argv`` less ``--nproc N``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def _is_image_run(run: Path) -> bool:
    """Whether the run folder holds an image run (its config.toml names an image set)."""
    path = Path(run) / "config.toml"
    return path.is_file() and RunConfig.from_toml(path).is_image_run


IMAGE_FLAGS = {"klass": "--class", "guidance": "--guidance", "device": "--device",
               "batch_size": "--batch-size", "n": "--n", "solver": "--solver",
               "ode_steps": "--ode-steps", "fid": "--fid", "inception": "--inception",
               "fid_stats": "--fid-stats"}


def _refuse_image_flags(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Refuse the flags of image runs for a point run.

    A point run refuses the flags of image runs (given with a value other than their
    default).
    """
    for dest, flag in IMAGE_FLAGS.items():
        if dest in defaults and getattr(args, dest, defaults[dest]) != defaults[dest]:
            raise ValueError(f"{flag} applies to image runs; {args.run} is a point-cloud run")


def diffusion_option(args: argparse.Namespace) -> dict[str, str]:
    """``--diffusion`` as keyword arguments of the SDE samplers, checked.

    ``--diffusion`` as keyword arguments of the SDE samplers ({} when not given), checked:
    it needs ``--sde`` and a schedule of :data:`otcfm.sampling.DIFFUSIONS`.
    """
    if args.diffusion is None:
        return {}
    if not args.sde:
        raise ValueError("--diffusion sets the SDE's noise schedule; add --sde")
    if args.diffusion not in DIFFUSIONS:
        raise ValueError(f"--diffusion: unknown schedule {args.diffusion!r} (choose from "
                         f"{', '.join(DIFFUSIONS)})")
    return {"diffusion": args.diffusion}


def cmd_sample_images(args: argparse.Namespace) -> int:
    """``otcfm sample RUN`` of an image run: a PNG grid, or the images as .npz / .pt."""
    if args.sde or args.sde_steps is not None or args.x0 is not None or args.diffusion:
        raise ValueError("--sde, --sde-steps, --diffusion and --x0 apply to point-cloud runs; "
                         f"{args.run} is an image run (it samples from noise)")
    out = Path(args.out)
    check_output_file(out, "--out", (".png", ".npz", ".pt"))
    if args.solver is not None and args.solver not in SOLVERS:
        raise ValueError(f"--solver: unknown solver {args.solver!r} (choose from "
                         f"{', '.join(SOLVERS)})")
    device = args.device or "cpu"
    check_device_available(device, "--device")
    run = load_image_run(args.run, args.checkpoint, device=device)
    n = args.sample_n if args.n is None else args.n
    labels = None
    if args.klass is not None:
        labels = torch.full((n,), run.label(args.klass), dtype=torch.int64)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    drawn = sample_images(
        run, n, solver=args.solver or run.cfg.eval.solver,
        steps=args.ode_steps or run.cfg.eval.ode_steps, labels=labels, guidance=args.guidance,
        generator=generator, batch_size=args.batch_size or SAMPLE_BATCH,
    )
    with StagedFiles() as staged:  # written whole or not at all
        if out.suffix == ".png":
            from otcfm.plots import save_image_grid

            nrow = len(run.classes) if run.conditional and args.klass is None else None
            save_image_grid(from_pixels(drawn.pixels), staged.path(out), nrow)
        elif out.suffix == ".npz":
            import numpy as np

            arrays = {"images": drawn.pixels.numpy()}
            if drawn.labels is not None:
                arrays["labels"] = drawn.labels.numpy()
            with open(staged.path(out), "wb") as handle:
                np.savez_compressed(handle, **arrays)
        else:
            staged.save({"images": from_pixels(drawn.pixels), "labels": drawn.labels,
                         "nfe": drawn.nfe}, out)
    what = "" if labels is None else f", class {run.classes[int(labels[0])]}" if int(
        labels[0]) < run.null_class else ", unconditional"
    guided = f", guidance {args.guidance:g}" if args.guidance else ""
    print(f"wrote {n} images to {out} (NFE {drawn.nfe:g}{what}{guided}; "
          f"{run.checkpoint}, step {run.step})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``otcfm sample``: draw samples of a trained run by its ODE (or SDE) and save them."""
    if _is_image_run(args.run):
        return cmd_sample_images(args)
    _refuse_image_flags(args, {"klass": None, "guidance": 0.0, "device": None,
                               "batch_size": None})


    if args.sde_steps is not None and not args.sde:
        raise ValueError("--sde-steps applies to SDE sampling; add --sde")
    if args.sde and (args.solver or args.ode_steps):
        raise ValueError("--solver and --ode-steps set the ODE; with --sde use --sde-steps")
    if args.solver is not None and args.solver not in SOLVERS:
        raise ValueError(f"--solver: unknown solver {args.solver!r} (choose from "
                         f"{', '.join(SOLVERS)})")
    diffusion = diffusion_option(args)
    check_output_file(args.out, "--out", (*SUPPORTED_EXTENSIONS, ".pt"))
    x0_spec = None
    if args.x0 is not None:
        x0_spec = parse_spec(args.x0, builtins=(), name="--x0")
        if not x0_spec.path.is_file():
            raise FileNotFoundError(f"--x0: file not found: {x0_spec.path}")
    run = load_run(args.run, args.checkpoint, data_root=args.data_root,
                   allow_changed_data=args.allow_changed_data)
    x0 = None
    if x0_spec is not None:
        x0 = load_points(x0_spec.path, key=x0_spec.key)
        if tuple(x0.shape[1:]) != run.event_shape:
            raise ValueError(
                f"--x0 {args.x0}: points of shape {tuple(x0.shape[1:])}, the run's model takes "
                f"{run.event_shape}"
            )
    n = args.n
    if x0 is not None and n is not None:
        if n > x0.shape[0]:
            raise ValueError(f"--n {n} is more than the {x0.shape[0]} points of --x0 {args.x0}")
        x0 = x0[:n]
    if x0 is None:
        n = args.sample_n if n is None else n
        if n > run.data.source.test.shape[0]:
            x0 = _more_sources(run, n)
    generator = None
    if args.seed is not None:
        generator = torch.Generator().manual_seed(args.seed)
    traj = sample_run(
        run, x0, n=n, solver=args.solver, steps=args.ode_steps, save="ends",
        sde=args.sde, sde_steps=args.sde_steps, generator=generator, **diffusion,
    )
    out = Path(args.out)
    with StagedFiles() as staged:  # written whole or not at all
        if out.suffix == ".pt":
            staged.save({"x0": traj.xs[0], "samples": traj.x_final, "nfe": traj.nfe}, out)
        else:
            save_points(staged.path(out), traj.x_final)
    how = f"SDE, sigma {sde_sigma(run.cfg)}" if args.sde else "ODE"
    how += f", {diffusion['diffusion']} diffusion" if diffusion else ""
    print(f"wrote {traj.x_final.shape[0]} samples to {out} ({how}, NFE {traj.nfe}; "
          f"{run.checkpoint}, step {run.step})")
    return 0


def _more_sources(run: Any, n: int) -> Any:
    """``n`` > n_test source points: the run's test sources, then fresh draws.

    ``n`` > n_test source points: the run's test sources, then fresh draws of its built-in
    source distribution from a stream of their own (a file source has no more points).
    """
    test, spec = run.data.source.test, run.cfg.data.source
    if parse_spec(spec, name="data.source").is_file:
        raise ValueError(
            f"--n {n} exceeds the {test.shape[0]} test sources held out of {spec}; "
            "pass --x0 FILE with the points to push"
        )
    more = stream(data_seed(run.cfg.data, run.cfg.seed), "source", "more")
    fresh = toy.sample(spec, n - test.shape[0], generator=more)
    return torch.cat([test, fresh.to(test.dtype)])


def _nll_settings(args: argparse.Namespace, image: bool) -> NllSettings | None:
    """The --nll settings (None without --nll)."""
    if not args.nll:
        if args.divergence is not None or args.probes is not None or args.gaussian_source:
            raise ValueError("--divergence, --probes and --gaussian-source go with --nll")
        return None
    if image and args.gaussian_source:
        raise ValueError("--gaussian-source applies to point runs; an image run's source "
                         "is N(0, I)")
    divergence = args.divergence or ("hutchinson" if image else "exact")
    if args.probes is not None and divergence != "hutchinson":
        raise ValueError("--probes applies to --divergence hutchinson")
    tol = getattr(args, "tol", 1e-5)
    if not (isinstance(tol, float) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"--tol must be a positive number, got {tol}")
    return NllSettings(divergence, args.probes or 1, tol, args.gaussian_source)


def cmd_evaluate(args: argparse.Namespace, scorer: Scorers | None = None) -> int:
    """Run ``otcfm evaluate RUN``.

    ``otcfm evaluate RUN``; an image run is scored by ``scorer(spec)`` (the feature
    network of its data set, or None) and, with --fid, by FID; --nll adds the negative
    log-likelihood of the test data (:class:`~otcfm.train.evaluate.NllSettings`).
    """
    if _is_image_run(args.run):
        if args.sde or args.sde_steps is not None or args.diffusion:
            raise ValueError(f"--sde applies to SF2M point-cloud runs; {args.run} is an image run")
        if args.fid and (args.inception is None or args.fid_stats is None):
            raise ValueError("--fid needs --inception FILE (the Inception TorchScript file) and "
                             "--fid-stats FILE (reference statistics, clean-fid's .npz); "
                             "otcfm downloads neither")
        if not args.fid and (args.inception is not None or args.fid_stats is not None):
            raise ValueError("--inception and --fid-stats go with --fid")
        if args.solver is not None and args.solver not in SOLVERS:
            raise ValueError(f"--solver: unknown solver {args.solver!r} (choose from "
                             f"{', '.join(SOLVERS)})")
        if not (args.tol > 0 and math.isfinite(args.tol)):
            raise ValueError(f"--tol must be a positive number, got {args.tol}")
        device = args.device or "cpu"
        check_device_available(device, "--device")
        cfg = RunConfig.from_toml(Path(args.run) / "config.toml")
        metrics = evaluate_image_run(
            args.run, which=args.checkpoint or "best", n=args.n, solver=args.solver,
            steps=args.ode_steps, tol=args.tol, guidance=args.guidance,
            scorer=scorer(cfg.data.target) if scorer else None,
            inception=args.inception, fid_stats=args.fid_stats, device=device,
            batch_size=args.batch_size or SAMPLE_BATCH, data_root=args.data_root,
            allow_changed_data=args.allow_changed_data, progress=True,
            nll=_nll_settings(args, image=True),
        )
        _print_metrics(metrics)
        return 0
    _refuse_image_flags(args, {"guidance": 0.0, "device": None, "batch_size": None, "n": None,
                               "solver": None, "ode_steps": None, "fid": False,
                               "inception": None, "fid_stats": None})
    adaptive = "" if args.adaptive.lower() == "none" else args.adaptive
    if adaptive and adaptive not in ADAPTIVE_SOLVERS:
        raise ValueError(f"--adaptive: unknown adaptive solver {adaptive!r} (choose from "
                         f"{', '.join(ADAPTIVE_SOLVERS)} or none)")
    if args.sde_steps is not None and not args.sde:
        raise ValueError("--sde-steps applies to SDE sampling; add --sde")
    metrics = evaluate_run(
        args.run, which=args.checkpoint, adaptive=adaptive, plots=not args.no_plots,
        sde=args.sde, sde_steps=args.sde_steps, **diffusion_option(args), data_root=args.data_root,
        allow_changed_data=args.allow_changed_data, nll=_nll_settings(args, image=False),
    )
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    print(json.dumps(metrics, indent=2))
