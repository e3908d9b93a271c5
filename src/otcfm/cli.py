"""Command line: one parser tree for every ``otcfm`` command.

Command line: one parser tree, ``otcfm train | sample | evaluate | trajectory | bench | demo
| list``.

Thin by design: parse flags -> build a config (``otcfm._cli_config``) -> call the library.
Building the parser imports neither torch nor any recipe (``otcfm --help`` answers at once):
config classes are read when a flag is given and each command imports what it runs
(``train``, ``sample`` and ``evaluate`` from :mod:`otcfm.train.cli`, ``trajectory`` from
:mod:`otcfm.trajectory.cli`).

Errors: every config value and flag is checked before any work; an error a user can cause
(:func:`user_error`) ends in one line ``otcfm <command>: error: ...`` naming the flag or config
key, exit code 2 (1 when a process of a multi-process run failed). ``--debug`` (before or
after the command) lets the traceback through; an unexpected error (a bug) always keeps it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from otcfm._cli_config import (
    FLAG_FIELDS,
    FLAG_HELP,
    TRAJECTORY_FLAGS,
    TRAJECTORY_METHODS,
    ConfigType,
    config_from_args,
    naming_flags,
    run_defaults,
    trajectory_config_from_args,
    trajectory_defaults,
)


def _bench_two_dim() -> Callable[[list[str]], int]:
    from otcfm.experiments.two_dim_cli import main

    return main


def _bench_gaussian_sb() -> Callable[[list[str]], int]:
    from otcfm.experiments.gaussian_sb_cli import main

    return main


def _bench_single_cell() -> Callable[[list[str]], int]:
    from otcfm.experiments.single_cell import main

    return main


def _bench_images() -> Callable[[list[str]], int]:
    from otcfm.experiments.images_cli import main

    return main


def _bench_translation() -> Callable[[list[str]], int]:
    from otcfm.experiments.translation import main

    return main


# `otcfm bench NAME`: the recipe's main(argv) -> exit code, imported when that recipe runs
BENCHES: dict[str, Callable[[], Callable[[list[str]], int]]] = {
    "two-dim": _bench_two_dim,
    "gaussian-sb": _bench_gaussian_sb,
    "single-cell": _bench_single_cell,
    "images": _bench_images,
    "translation": _bench_translation,
}








class Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one line and exit with code 2.

    argparse with one-line errors: ``otcfm train: error: ... (see otcfm train --help)``,
    exit code 2 (the usage is shown by --help, not after every mistake).
    """

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line with a pointer to ``--help`` and exit with code 2."""
        text = _one_line(message)
        self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


def _one_line(message: object) -> str:
    """``message`` on one line, printable in any encoding (lone surrogates escaped)."""
    text = " ".join(str(message).split())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def seed(text: str) -> int:
    """Argparse ``type`` of a seed flag: an integer in [0, 2^63)."""
    value = _integer(text, 0)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"must be below 2^63, got {value}")
    return value


def count(text: str) -> int:
    """Argparse ``type`` of a count flag: a positive integer."""
    return _integer(text, 1)


def index(text: str) -> int:
    """Argparse ``type`` of an index flag: an integer >= 0."""
    return _integer(text, 0)


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
        need = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise argparse.ArgumentTypeError(f"must be {need}, got {value}")
    return value


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after any subcommand too (``otcfm train ... --debug``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name == "bench":  # its options go to the recipe's own parser
                    continue
                if "--debug" not in sub._option_string_actions:
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help=DEBUG_HELP)
                _add_debug_everywhere(sub)


DEBUG_HELP = "show the full traceback of an error (default: one line)"


def _flag_help(flag: str, section: str | None, key: str) -> str:
    where = f"{section}.{key}" if section else key
    return f"{FLAG_HELP[flag]} [{where}]" if flag in FLAG_HELP else f"[{where}]"


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (imports no torch)."""
    parser = Parser(
        prog="otcfm", description="Conditional flow matching with minibatch optimal transport."
    )
    from otcfm import __version__  # the package's __init__ imports nothing (no torch)

    parser.add_argument("--version", action="version", version=f"otcfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_evaluate(sub)
    _add_trajectory(sub)

    p = sub.add_parser("demo", help="the main job: OT-CFM vs I-CFM on moons -> 8gaussians")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--steps", type=count, default=None, help="optimizer steps per method")
    p.add_argument("--seed", type=seed, default=42)
    p.add_argument("--fresh", action="store_true", help="retrain even if finished runs exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("list", help="list methods, couplings, solvers, distributions and tasks")

    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite a TRUSTED checkpoint of an older otcfm as plain tensors and numbers",
        description="otcfm reads checkpoints that hold only tensors, numbers and strings and "
        "refuses any other (a pickle of other objects can run code when loaded). This command "
        "converts a checkpoint written by an older otcfm, once: it unpickles the file in full, "
        "which RUNS ANY CODE THE FILE CARRIES. Use it only on files you made yourself or "
        "trust.",
    )
    p.add_argument("path", type=Path, help="the checkpoint (.pt) to convert")
    p.add_argument("--out", type=Path, default=None,
                   help="write the converted checkpoint here (default: replace PATH)")
    p.add_argument("--i-trust-this-file", dest="trusted", action="store_true",
                   help="required: confirm that PATH comes from a source you trust")

    p = sub.add_parser(
        "bench",
        help="run a benchmark recipe: " + ", ".join(BENCHES),
        description="Benchmark recipes over the library; `otcfm bench NAME --help` for options.",
    )
    p.add_argument("name", choices=tuple(BENCHES), help="benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark")

    p = sub.add_parser(
        "translate",
        help="translate images of one class group into another in an autoencoder's latent "
        "space (`otcfm translate --help` for options)",
        add_help=False,  # its options, --help included, go to otcfm.experiments.translation
    )
    _add_debug_everywhere(parser)
    return parser


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a flow; writes runs/<name>/",
        description="Train a flow between two point clouds (built-in names or "
        ".npy/.npz/.csv/.tsv/.txt files, FILE.npz:KEY for one array of an archive), or from "
        "noise to an image set (--target digits, fashion-mnist, cifar10:DIR, a folder; see "
        "configs/*.toml). The run "
        "records its data files (path, size, SHA-256) in data.json. Flags override the "
        "--config file.",
    )
    p.add_argument("--config", type=Path, help="TOML config (see `otcfm train --print-config`)")
    p.add_argument("--task", help="a benchmark task name, sets --source and --target")
    for flag, (section, key) in FLAG_FIELDS.items():
        p.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=ConfigType(run_defaults, section, key),
            default=None,
            help=_flag_help(flag, section, key),
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=V",
        help="override any config value, e.g. --set optim.ema_decay=0.999",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, metavar="DIR",
        help="image runs: the folder of a named image set (cifar10 -> cifar10:DIR, "
        "fashion-mnist -> fashion-mnist:DIR)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue OUT/NAME from its checkpoint, its "
        "saved config the base (without --config): give --name, --out and what changes, "
        "e.g. --steps"
    )
    p.add_argument("--no-eval", action="store_true", help="skip the test evaluation after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--nproc",
        type=count,
        default=None,
        metavar="N",
        help="train on N processes of this machine (torch.distributed: gloo on the CPU, nccl "
        "on GPUs), as `torchrun --standalone --nproc_per_node N -m otcfm train ...` does",
    )


SAMPLE_N = 1_000  # samples ``otcfm sample`` draws without --n (and without --x0)


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", type=Path, help="run folder, e.g. runs/demo/otcfm")
    p.add_argument("--n", type=count, default=None,
                   help=f"number of samples (default {SAMPLE_N:,}): the run's test sources, "
                   "then (built-in sources) fresh draws; with --x0, its first N points "
                   "(default all)")
    p.add_argument("--x0", help="push these source points instead (.npy/.npz/.csv/.tsv/.txt, "
                   "FILE.npz:KEY); the run's data files are then not needed")
    p.set_defaults(sample_n=SAMPLE_N)  # what --n means when it is not given (without --x0)
    p.add_argument("--solver", default=None, help="euler, midpoint, heun, rk4, dopri5, ...")
    p.add_argument("--ode-steps", type=count, default=None, help="fixed-step solver steps")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    p.add_argument("--out", type=Path, required=True,
                   help="output file: .npy, .npz, .csv or .pt; image runs: .png (a grid), "
                   ".npz (uint8 pixels and labels) or .pt")
    _add_sde_flags(p)
    p.add_argument(
        "--seed", type=seed, default=None,
        help="seed of the SDE noise, or of an image run's source noise (default: the run's seed)",
    )
    _add_image_flags(p)
    p.add_argument("--class", dest="klass", default=None, metavar="K",
                   help="image runs trained with class labels: samples of this class (an index "
                   "or a name; none = unconditional); default: the classes in turn")
    _add_data_flags(p)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a trained run: W2, MMD, path energy, NPE, NFE")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--checkpoint", default=None, choices=("best", "latest"))
    p.add_argument("--adaptive", default="dopri5", help="adaptive solver for NFE ('none' skips)")
    p.add_argument("--no-plots", action="store_true")
    _add_sde_flags(p, also="also score SDE samples (w2_sde, ...) beside the ODE metrics; ")
    p.add_argument("--nll", action="store_true",
                   help="also the negative log-likelihood of the test data under the flow "
                   "(nats; image runs: bits per dimension too), by the change of variables")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), default=None,
                   help="the divergence of --nll (default: exact for points, hutchinson for "
                   "images)")
    p.add_argument("--probes", type=count, default=None,
                   help="Hutchinson probes per point (default 1)")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="atol = rtol of the adaptive solver of --nll and of an image run's "
                   "--solver (default 1e-5, as the paper's FID)")
    p.add_argument("--gaussian-source", action="store_true",
                   help="for --nll: declare that a point run's source file holds draws of "
                   "N(0, I) (a built-in source's own density is used without it)")
    g = p.add_argument_group(
        "image runs", "samples from noise scored by the Fréchet distance of a feature network "
        "(digits, Fashion-MNIST: 'FD (... features)'), the class accuracy of class-conditional "
        "runs, and FID with your Inception file (--fid)")
    g.add_argument("--n", type=count, default=None,
                   help="samples to draw (default: the run's data.n_test; the paper's FID: 50000)")
    g.add_argument("--solver", default=None,
                   help="euler, midpoint, heun, rk4, dopri5, ... (default: the run's eval.solver)")
    g.add_argument("--ode-steps", type=count, default=None,
                   help="fixed-step solver steps (default: the run's eval.ode_steps)")
    g.add_argument("--fid", action="store_true",
                   help="compute FID; needs --inception and --fid-stats (nothing is downloaded)")
    g.add_argument("--inception", type=Path, default=None, metavar="FILE",
                   help="the Inception TorchScript file, e.g. inception-2015-12-05.pt")
    g.add_argument("--fid-stats", type=Path, default=None, metavar="FILE",
                   help="reference statistics: a .npz with mu and sigma (clean-fid's format)")
    _add_image_flags(g)
    _add_data_flags(p)


def _add_image_flags(p: Any) -> None:
    """Sampling flags of image runs (``sample`` and ``evaluate``)."""
    p.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance scale w: v = (1 + w) v(x|y) - w v(x|null) "
                   "(class-conditional runs; 0 = the conditional model)")
    p.add_argument("--device", default=None,
                   help="image runs: the device to sample on (cpu, cuda, cuda:N; default cpu)")
    p.add_argument("--batch-size", type=count, default=None,
                   help="images per model call (default 500)")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """--data-root and --allow-changed-data: how a trained run finds and checks its data."""
    p.add_argument(
        "--data-root", type=Path, default=None, metavar="DIR",
        help="the run's data files moved: look each up by its recorded file name in DIR "
        "(its size and SHA-256 must still match the run's data.json)",
    )
    p.add_argument(
        "--allow-changed-data", action="store_true",
        help="use data files whose size or SHA-256 differ from the run's record (with a "
        "warning) instead of refusing them",
    )


def _add_sde_flags(p: argparse.ArgumentParser, also: str = "") -> None:
    p.add_argument(
        "--sde",
        action="store_true",
        help=also + "sample the bridge SDE dx = [v + sigma^2/2 s] dt + sigma dW (Euler-Maruyama, "
        "the run's sigma) instead of the probability-flow ODE; SF2M runs only",
    )
    p.add_argument(
        "--sde-steps", type=count, default=None, help="Euler-Maruyama steps (default: ode_steps)"
    )
    _add_diffusion_flag(p)


def _add_diffusion_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--diffusion", default=None, metavar="SCHEDULE",
        help="with --sde: the noise schedule g(t) that replaces sigma in dW and in the score "
        "term: 'constant' (g = sigma, the bridge's own SDE; the default) or 'tapered' (g = 2 "
        "sigma sqrt(u (1 - u)), u the position between two snapshot times: sigma half-way, 0 "
        "at the snapshots, where the learned score is least accurate; the same marginals; "
        "docs/results/gaussian_sb.md measures both)",
    )


def _add_trajectory(sub: Any) -> None:
    group = sub.add_parser(
        "trajectory",
        help="trajectory inference from time-course snapshots: fit | predict | evaluate",
        description="Trajectory inference from time-course snapshots; "
        "`otcfm trajectory {fit,predict,evaluate} --help` for options.",
    )
    tsub = group.add_subparsers(dest="trajectory_command", required=True)

    p = tsub.add_parser(
        "fit",
        help="train a flow through all time points; writes a run folder",
        description="Fit one flow through all populations of a time course (optionally "
        "holding one time point out). Flags override the --config file.",
    )
    p.add_argument("--config", type=Path, help="TOML config (see --print-config)")
    for flag, (section, key, text) in TRAJECTORY_FLAGS.items():
        where = f"{section}.{key}" if section else key
        if flag == "method":
            p.add_argument("--method", choices=TRAJECTORY_METHODS, default=None,
                           help=f"{', '.join(TRAJECTORY_METHODS)} [{where}]")
            continue
        p.add_argument("--" + flag.replace("_", "-"), dest=flag,
                       type=ConfigType(trajectory_defaults, section, key), default=None,
                       help=f"{text} [{where}]")
    p.add_argument("--no-pca", action="store_true",
                   help="keep the first --dims columns instead of PCA (e.g. TrajectoryNet pcs)")
    p.add_argument("--no-standardize", action="store_true", help="skip the StandardScaler")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=V", help="override any config value, e.g. --set "
                   "eval.checkpoint_every=100")
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")

    p = tsub.add_parser("predict", help="populations at any times, or cell paths, from a run")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--time", dest="times", type=float, nargs="+", required=True,
                   help="observation time(s) to predict (in the data's units, e.g. days)")
    p.add_argument("--start", type=index, default=None,
                   help="push the cells of this time index (default: the last at or before "
                        "each time)")
    p.add_argument("--paths", type=count, default=None, metavar="N",
                   help="instead, follow N cells of --start (default 0) through the times "
                        "(writes .npz or .pt: xs (T, N, d), times)")
    p.add_argument("--extrapolate", action="store_true",
                   help="allow --time outside the time range of the data")
    p.add_argument("--original", action="store_true",
                   help="map predictions back to the original features (inverse preprocessing)")
    p.add_argument("--sde", action="store_true",
                   help="SF2M runs: move cells along the bridge SDE (stochastic paths, the "
                   "fit's sigma) instead of the probability-flow ODE")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the SDE's Brownian increments (default: the run's seed)")
    _add_diffusion_flag(p)
    p.add_argument("--out", type=Path, required=True, help=".npz, .csv, .tsv or .pt")
    _add_data_flags(p)

    p = tsub.add_parser("evaluate", help="leave-one-out W1 / MMD, every interval, plots, report")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--ode-steps", type=count, default=None, help="Euler steps per unit of time")
    p.add_argument("--no-plots", action="store_true")
    _add_data_flags(p)












def cmd_train(args: argparse.Namespace) -> int:
    """``otcfm train``: resolve the config, check the device and train.

    With ``--print-config`` the resolved config is printed as TOML instead.
    """
    from otcfm.train import cli as train_cli
    from otcfm.train.config import check_device_available

    cfg = config_from_args(args).resolve()
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    with naming_flags({"device": "device"}):
        check_device_available(cfg.device)
    return train_cli.cmd_train(args, cfg, scorer=_scorer)


def _scorer(spec: str) -> Any:
    """The feature network that scores samples of an image set (None: none trained for it)."""
    from otcfm.experiments.feature_nets import scorer_for

    return scorer_for(spec)


def cmd_sample(args: argparse.Namespace) -> int:
    """``otcfm sample``: draw samples of a trained run (see :mod:`otcfm.train.cli`)."""
    from otcfm.train import cli as train_cli

    return train_cli.cmd_sample(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``otcfm evaluate``: score a trained run, image runs with their data set's feature network."""
    from otcfm.train import cli as train_cli

    return train_cli.cmd_evaluate(args, scorer=_scorer)


def cmd_demo(args: argparse.Namespace) -> int:
    """``otcfm demo``: train and compare the methods on the demo task, printing one line each."""
    import shutil

    from otcfm.experiments.demo import run_demo
    from otcfm.train.config import check_folder

    check_folder(args.out, "--out")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    kwargs = {"steps": args.steps} if args.steps is not None else {}
    report = run_demo(args.out, seed=args.seed, progress=not args.quiet, **kwargs)
    for method, m in report["methods"].items():
        print(
            f"{method:>6}: W2 {m['w2']:.3f}  NPE {m['npe']:.3f}  NFE(dopri5) "
            f"{m.get('nfe_dopri5', '-')}  train {m['train_seconds']:.0f} s"
        )
    print(f"report: {args.out / 'report.md'}")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    """``otcfm list``: print the registered methods, couplings, time samplers, solvers and data."""
    from otcfm.couplings import COUPLINGS
    from otcfm.data import toy
    from otcfm.matchers import MATCHERS
    from otcfm.sampling import SOLVERS
    from otcfm.time_samplers import TIME_SAMPLERS

    print("methods:       ", ", ".join(MATCHERS.names()))
    print("couplings:     ", ", ".join(COUPLINGS.names()))
    print("time samplers: ", ", ".join(TIME_SAMPLERS.names()))
    print("solvers:       ", ", ".join(SOLVERS))
    print("distributions: ", ", ".join(toy.names()))
    print("tasks:         ", ", ".join(toy.TASKS))
    return 0


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    """``otcfm convert-checkpoint``: rewrite a trusted old checkpoint as plain values."""
    from otcfm.train.checkpoint import convert_checkpoint

    if not args.trusted:
        raise ValueError(
            f"convert-checkpoint unpickles {args.path} in full, which runs any code it carries; "
            "if you trust the file, run again with --i-trust-this-file"
        )
    out = convert_checkpoint(args.path, args.out)
    print(f"wrote {out}: plain tensors, numbers and strings")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``otcfm bench NAME ...``: run the named benchmark on the remaining arguments."""
    return BENCHES[args.name]()(args.args)


def cmd_translate(args: argparse.Namespace) -> int:
    """``otcfm translate ...``: run the latent translation recipe on the remaining arguments."""
    from otcfm.experiments.translation import translate_main

    return translate_main(args.args)


def cmd_trajectory(args: argparse.Namespace) -> int:
    """``otcfm trajectory fit | predict | evaluate``: the time-course commands."""
    from otcfm.trajectory import cli as trajectory

    if args.trajectory_command == "fit":
        return trajectory.cmd_fit(args, trajectory_config_from_args(args))
    if args.trajectory_command == "predict":
        return trajectory.cmd_predict(args)
    return trajectory.cmd_evaluate(args)


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "translate": cmd_translate,
    "list": cmd_list,
    "bench": cmd_bench,
    "convert-checkpoint": cmd_convert_checkpoint,
    "trajectory": cmd_trajectory,
}


# optional packages -> the extra that installs them (pyproject.toml)
EXTRAS = {
    "matplotlib": "plot", "tqdm": "progress", "lap": "fast", "numba": "fast",
    "anndata": "singlecell", "sklearn": "singlecell", "h5py": "singlecell",
    "torchcfm": "bench",
}
# errno of an OSError that is about the user's paths or disk, not a bug
PATH_ERRNOS = {
    errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM,
    errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EDQUOT,
}


def user_error(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) of an error a user can cause, or None for a bug.

    User errors: bad values (ValueError, TypeError, e.g. a config key, a flag, a file's
    content), paths (FileNotFoundError, IsADirectoryError, PermissionError, a full disk, ...),
    a missing optional package (named with its extra), memory (a batch too large): exit 2.
    A process of a multi-process run that died: exit 1.
    """
    text = _one_line(err) or type(err).__name__
    if _is(err, "otcfm.train.launch", "LaunchFailure") or _is(err, "otcfm.train.loop",
                                                              "RankFailure"):
        return 1, text
    if isinstance(err, ImportError):
        root = (err.name or "").partition(".")[0]
        if "pip install" in text:
            return 2, text
        if isinstance(err, ModuleNotFoundError) and root in EXTRAS:
            return 2, f"the optional package {root!r} is not installed: pip install " \
                      f"'otcfm[{EXTRAS[root]}]'"
        return None
    if isinstance(err, OSError) and not isinstance(err, (ConnectionError, TimeoutError)):
        if err.errno is None and isinstance(err, (FileNotFoundError, FileExistsError,
                                                  IsADirectoryError, NotADirectoryError,
                                                  PermissionError)):
            return 2, text  # raised by otcfm with a message of its own
        if err.errno in PATH_ERRNOS or err.filename is not None:
            where = f": {err.filename}" if err.filename is not None else ""
            if err.filename2 is not None:
                where += f" -> {err.filename2}"
            return 2, f"{err.strerror or text}{where}"
        return None
    if isinstance(err, (ValueError, TypeError)):
        return 2, text
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "can't allocate memory" in text
    ):
        return 2, f"out of memory ({text}); lower optim.batch_size (--batch-size) or " \
                  "couplings.ot_batch (--ot-batch)"
    return None


def _is(err: BaseException, module: str, name: str) -> bool:
    """Whether ``err`` is an instance of ``module.name``, without importing the module.

    ``isinstance(err, module.name)``, without importing the module (if it is not loaded,
    none of its errors was raised).
    """
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(err, getattr(loaded, name))


def main(argv: list[str] | None = None) -> int:
    """Run ``otcfm ARGV`` and return its exit code.

    ``otcfm ARGV``: the exit code (0; 2 for a user error, told in one line on stderr; 1
    when a process of a multi-process run failed). With ``--debug`` errors propagate with
    their traceback; an unexpected error (a bug) always does.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "translate":  # the recipe parses its own options
        args.args = extra
    elif extra:
        parser.parse_args(argv)  # the usual one-line error naming what was not recognised
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    command = args.command
    if command == "trajectory":
        command = f"trajectory {args.trajectory_command}"
    if getattr(args, "debug", False):
        return COMMANDS[args.command](args)
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(command)
    try:
        return COMMANDS[args.command](args)
    except Exception as err:
        known = user_error(err)
        if known is None:
            print(
                f"otcfm {command}: unexpected error (a bug in otcfm? please report it); its "
                "traceback follows, as with --debug",
                file=sys.stderr,
            )
            raise
        code, message = known
        print(f"otcfm {command}: error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = previous


def _one_line_warning(command: str) -> Callable[..., str]:
    """Format warnings the way the command's errors are told, on one line.

    Warnings as the command's errors are told: ``otcfm CMD: warning: MESSAGE`` on one line
    (Python's default adds the file, line and source of the code that warned).
    """

    def format_warning(message: Warning | str, *_: Any, **__: Any) -> str:
        return f"otcfm {command}: warning: {' '.join(str(message).split())}\n"

    return format_warning


if __name__ == "__main__":
    sys.exit(main())
