"""The fault suite of the command line: a table of bad command lines, each run in-process
through ``otcfm.cli.main``.

Every case must end in exit code 2 with exactly one line on stderr, ``otcfm <command>:
error: ...`` naming the problem (and the flag or config key), no traceback, and nothing
written outside the case's own run folder. The checks happen before any training, so each
case is fast; two tiny runs (a point-cloud run and a time course over days 0-2) are trained
once for the cases that need one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from otcfm.cli import main
from otcfm.couplings import _base

TINY = ["--task", "moons-8gaussians", "--steps", "4", "--batch-size", "32", "--n-train", "128",
        "--n-test", "32", "--val-every", "2", "--checkpoint-every", "2", "--ode-steps", "3",
        "--width", "8", "--quiet", "--set", "data.n_val=32"]
TRAJ = ["--steps", "4", "--batch-size", "8", "--width", "8", "--depth", "1", "--ode-steps", "3",
        "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A sandbox: runs/trained (4 steps), runs/course (a time course over days 0, 1, 2 of
    3-feature cells), a plain file, config files good and bad, and a working folder."""
    root = tmp_path_factory.mktemp("faults")
    runs = root / "runs"
    assert main(["train", "--name", "trained", "--out", str(runs), *TINY, "--no-eval"]) == 0
    g = torch.Generator().manual_seed(0)
    lines = ["day,a,b,c"]
    for day in (0, 1, 2):
        for row in (torch.randn(24, 3, generator=g) + day).tolist():
            lines.append(f"{day}," + ",".join(f"{v:.5f}" for v in row))
    (root / "cells.csv").write_text("\n".join(lines) + "\n")
    assert main(["trajectory", "fit", "--data", str(root / "cells.csv"), "--time-key", "day",
                 "--dims", "0", "--no-standardize", "--out", str(runs), "--name", "course",
                 *TRAJ, "--no-eval"]) == 0
    (root / "a-file").write_text("not a folder\n")
    (runs / "file-run").write_text("not a run\n")
    (root / "bad.toml").write_text("seed = [\n")
    (root / "binary.toml").write_bytes(b"\x80\x81\xfe\xff")
    (root / "typo.toml").write_text("[optim]\nstepz = 3\n")
    (root / "solver.toml").write_text('[eval]\nsolver = "dopri"\n')
    (root / "cwd").mkdir()
    return root


# every case trains (if it wrongly got that far) into a run folder of its own, runs/case-ID
TRAIN = ["train", "--out", "{runs}", "--name", "{name}", *TINY]
FIT = ["trajectory", "fit", "--data", "{root}/cells.csv", "--time-key", "day", "--dims", "0",
       "--no-standardize", "--out", "{runs}", "--name", "{name}", *TRAJ]
SAMPLE = ["sample", "{runs}/trained", "--out", "s.npy"]
PREDICT = ["trajectory", "predict", "{runs}/course", "--out", "p.npz"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

CASES = [
    # ---- train: the cases of the issue
    ("lr-diverges", [*TRAIN, "--lr", "1e6"], "training loss is"),
    pytest.param("device-cuda", [*TRAIN, "--device", "cuda"], "CUDA is not available",
                 marks=NO_CUDA),
    ("device-foo", [*TRAIN, "--device", "foo"], "device (--device): 'foo' is not a device"),
    ("out-is-a-file", [*TRAIN, "--out", "{root}/a-file"], "out_dir (--out) "),
    ("out-in-a-file", [*TRAIN, "--out", "{root}/a-file/runs"], "is inside"),
    ("run-is-a-file", [*TRAIN, "--name", "file-run"], "is a file, not a folder"),
    ("solver-typo", [*TRAIN, "--set", "eval.solver=dopri"],
     "eval.solver: unknown solver 'dopri' (choose from euler"),
    ("resume-differs", [*TRAIN, "--name", "trained", "--resume", "--lr", "0.01", "--width", "16"],
     "model.width: 8 -> 16; optim.lr: 0.001 -> 0.01"),
    ("resume-missing", [*TRAIN, "--name", "nope", "--resume"], "--resume: there is no run"),
    ("too-large-for-memory", [*TRAIN, "--batch-size", "512", "--ot-batch", "16384",
                              "--n-train", "20000"], "--coupling approx"),
    # ---- train: registry names, each with its key and flag
    ("method", [*TRAIN, "--method", "nosuch"], "method.name (--method): unknown method"),
    ("coupling", [*TRAIN, "--coupling", "nosuch"], "method.coupling (--coupling)"),
    ("coupling-option", [*TRAIN, "--coupling", "approx:tol=5"], "tol must be in (0, 1)"),
    ("coupling-on-icfm", [*TRAIN, "--method", "icfm", "--coupling", "exact"], "method.coupling"),
    ("time-sampler", [*TRAIN, "--time-sampler", "x"], "method.time_sampler (--time-sampler)"),
    ("activation", [*TRAIN, "--activation", "x"], "model.activation (--activation)"),
    ("scope", [*TRAIN, "--coupling-scope", "x"], "couplings.scope (--coupling-scope)"),
    ("backend", [*TRAIN, "--set", "distributed.backend=mpi"], "distributed.backend"),
    ("task", [*TRAIN, "--task", "nosuch"], "nosuch"),
    ("source-file", [*TRAIN, "--source", "{root}/missing.npy"], "missing.npy"),
    # ---- train: counts and rates
    *[(f"{flag}={value}", [*TRAIN, f"--{flag}", value], f"(--{flag}) must be {need}")
      for flag, value, need in [
          ("steps", "0", "a positive integer, got 0"), ("steps", "-3", "a positive integer"),
          ("batch-size", "0", "a positive integer"), ("n-train", "1", "an integer >= 2"),
          ("n-test", "0", "an integer >= 2"), ("val-every", "0", "a positive integer"),
          ("checkpoint-every", "0", "a positive integer"), ("ode-steps", "0", "a positive"),
          ("workers", "-1", "an integer >= 0"), ("ot-batch", "-64", "0 (= optim.batch_size)"),
          ("ot-batch", "100", "0 (= optim.batch_size) or a positive multiple"),
          ("width", "0", "a positive integer"), ("depth", "0", "a positive integer"),
          ("lr", "0", "a finite number > 0"), ("lr", "-1", "a finite number > 0"),
          ("lr", "inf", "a finite number > 0"), ("lr", "nan", "a finite number > 0"),
          ("sigma", "-2", "a finite number >= 0"), ("sigma", "nan", "a finite number >= 0"),
          ("weight-decay", "-1", "a finite number >= 0"), ("grad-clip", "-1", "a finite"),
          ("ema-decay", "1", "a finite number in [0, 1)"), ("seed", "-1", "an integer in"),
      ]],
    ("timeout", [*TRAIN, "--set", "distributed.timeout=0"], "distributed.timeout must be"),
    ("val-fraction", [*TRAIN, "--set", "data.val_fraction=2"], "data.val_fraction must be"),
    ("nproc-0", [*TRAIN, "--nproc", "0"], "argument --nproc: must be a positive integer"),
    ("nproc-odd", [*TRAIN, "--nproc", "3"], "must be a multiple of --nproc 3"),
    ("steps-text", [*TRAIN, "--steps", "many"], "argument --steps: invalid int value"),
    # ---- train: config files and overrides
    ("config-missing", [*TRAIN, "--config", "{root}/none.toml"], "config file not found"),
    ("config-folder", [*TRAIN, "--config", "{root}"], "is a folder, not a TOML file"),
    ("config-syntax", [*TRAIN, "--config", "{root}/bad.toml"], "cannot parse config"),
    ("config-binary", [*TRAIN, "--config", "{root}/binary.toml"], "not a UTF-8"),
    ("config-key", [*TRAIN, "--config", "{root}/typo.toml"],
     "unknown key(s) 'stepz' in [optim] (did you mean 'steps'?)"),
    ("config-value", [*TRAIN, "--config", "{root}/solver.toml"], "eval.solver: unknown solver"),
    ("set-key", [*TRAIN, "--set", "optim.nosuch=1"], "unknown key(s) 'nosuch' in [optim]"),
    ("set-syntax", [*TRAIN, "--set", "optim.steps"], "must look like section.key=value"),
    ("set-section", [*TRAIN, "--set", "optimm.steps=3"], "unknown config section 'optimm'"),
    ("set-table", [*TRAIN, "--set", "optim=3"], "[optim] must be a table"),
    ("unknown-flag", [*TRAIN, "--nosuch"], "unrecognized arguments: --nosuch"),
    # ---- sample and evaluate
    ("sample-n-negative", [*SAMPLE, "--n", "-5"], "argument --n: must be a positive integer"),
    ("sample-n-zero", [*SAMPLE, "--n", "0"], "argument --n: must be a positive integer, got 0"),
    ("sample-x0-word", [*SAMPLE, "--x0", "nosuch"], "--x0: unknown 'nosuch': not a file"),
    ("sample-ode-steps", [*SAMPLE, "--ode-steps", "0"], "argument --ode-steps: must be a pos"),
    ("sample-sde-steps", [*SAMPLE, "--sde", "--sde-steps", "0"], "argument --sde-steps"),
    ("sample-sde-steps-alone", [*SAMPLE, "--sde-steps", "3"], "add --sde"),
    ("sample-sde-not-sf2m", [*SAMPLE, "--n", "8", "--sde"], "needs a run with a score"),
    ("sample-solver", [*SAMPLE, "--solver", "nosuch"], "--solver: unknown solver 'nosuch'"),
    ("sample-out-folder", [*SAMPLE, "--out", "{root}/cwd"], "is a folder; give a file name"),
    ("sample-out-suffix", [*SAMPLE, "--out", "s.xyz"], "the extension must be one of"),
    ("sample-out-in-file", [*SAMPLE, "--out", "{root}/a-file/s.npy"], "is inside"),
    ("sample-checkpoint", [*SAMPLE, "--checkpoint", "nosuch"], "invalid choice: 'nosuch'"),
    ("sample-seed", [*SAMPLE, "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    ("sample-x0-missing", [*SAMPLE, "--x0", "{root}/none.npy"], "--x0: file not found"),
    ("sample-no-run", ["sample", "{runs}/nope", "--out", "s.npy"], "is not a run folder"),
    ("evaluate-adaptive", ["evaluate", "{runs}/trained", "--adaptive", "nosuch"],
     "--adaptive: unknown adaptive solver 'nosuch'"),
    ("evaluate-sde-steps", ["evaluate", "{runs}/trained", "--sde-steps", "0"], "--sde-steps"),
    ("evaluate-no-run", ["evaluate", "{runs}/nope"], "is not a run folder"),
    # ---- trajectory fit
    ("fit-dims", [*FIT, "--dims", "10"], "data.dims (--dims) is 10 but"),
    ("fit-steps", [*FIT, "--steps", "0"], "optim.steps (--steps) must be a positive integer"),
    ("fit-batch", [*FIT, "--batch-size", "1"], "optim.batch_size (--batch-size)"),
    ("fit-left-out", [*FIT, "--left-out", "-2"], "eval.left_out (--left-out)"),
    ("fit-left-out-end", [*FIT, "--left-out", "2"], "intermediate time index in [1, 1]"),
    ("fit-data", [*FIT, "--data", "{root}/none.csv"], "data.path: time-series file not found"),
    ("fit-method", [*FIT, "--method", "nosuch"], "argument --method: invalid choice"),
    ("fit-device", [*FIT, "--device", "foo"], "device (--device): 'foo' is not a device"),
    pytest.param("fit-cuda", [*FIT, "--device", "cuda"], "CUDA is not available",
                 marks=NO_CUDA),
    ("fit-out", [*FIT, "--out", "{root}/a-file"], "is a file, not a folder"),
    ("fit-lr", [*FIT, "--lr", "0"], "optim.lr (--lr) must be a finite number > 0"),
    ("fit-ode-steps", [*FIT, "--ode-steps", "0"], "eval.ode_steps (--ode-steps)"),
    ("fit-time-key", [*FIT, "--time-key", "hour"], "no time column 'hour'"),
    ("fit-config", [*FIT, "--config", "{root}/none.toml"], "config file not found"),
    ("fit-resume-differs", [*FIT, "--name", "course", "--resume", "--lr", "0.01"],
     "optim.lr: 0.001 -> 0.01"),
    # ---- trajectory predict and evaluate
    ("predict-paths-negative", [*PREDICT, "--time", "1", "--paths", "-3"],
     "argument --paths: must be a positive integer, got -3"),
    ("predict-paths-zero", [*PREDICT, "--time", "1", "--paths", "0"], "--paths: must be a"),
    ("predict-range", [*PREDICT, "--time", "-5", "99"],
     "--time -5 is outside the time range of the data [0, 2]; pass --extrapolate"),
    ("predict-range-paths", [*PREDICT, "--time", "1", "3", "--paths", "2"], "[0, 2]"),
    ("predict-nan", [*PREDICT, "--time", "nan"], "--time must be finite"),
    ("predict-start", [*PREDICT, "--time", "1", "--start", "-1"], "argument --start"),
    ("predict-start-late", [*PREDICT, "--time", "1", "--start", "7"], "--start must be a time"),
    ("predict-suffix", [*PREDICT, "--time", "1", "--out", "p.txt"], "extension must be one of"),
    ("predict-folder", [*PREDICT, "--time", "1", "--out", "{root}/cwd"], "is a folder"),
    ("predict-no-run", ["trajectory", "predict", "{runs}/nope", "--time", "1", "--out", "p.npz"],
     "is not a trajectory run folder"),
    ("traj-evaluate-steps", ["trajectory", "evaluate", "{runs}/course", "--ode-steps", "0"],
     "argument --ode-steps"),
    ("traj-evaluate-no-run", ["trajectory", "evaluate", "{runs}/nope"], "not a trajectory run"),
    # ---- demo and the command tree
    ("demo-steps-zero", ["demo", "--steps", "0", "--out", "{runs}/{name}"], "argument --steps"),
    ("demo-steps-negative", ["demo", "--steps", "-1", "--out", "{runs}/{name}"], "got -1"),
    ("demo-out", ["demo", "--steps", "1", "--out", "{root}/a-file"], "is a file, not a folder"),
    ("no-command", [], "the following arguments are required: command"),
    ("unknown-command", ["nosuch"], "invalid choice: 'nosuch'"),
    ("unknown-global", ["--nosuch", "list"], "unrecognized arguments: --nosuch"),
    ("bench-name", ["bench", "nosuch"], "invalid choice: 'nosuch'"),
    ("trajectory-alone", ["trajectory"], "required: trajectory_command"),
    ("list-extra", ["list", "extra"], "unrecognized arguments: extra"),
]


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case, argv, message", CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_bad_command_line(root, case, argv, message, capsys, monkeypatch):
    runs = root / "runs"
    argv = [a.format(root=root, runs=runs, name=f"case-{case}") for a in argv]
    monkeypatch.chdir(root / "cwd")
    monkeypatch.setattr(_base, "available_memory", lambda device="cpu": 2 * 10**9)
    before = snapshot(root)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("otcfm") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert message in err, err
    # the run folders the command names (--name NAME under runs/, or a run path): its lock
    own = {runs / b for a, b in zip(argv, argv[1:], strict=False) if a == "--name"}
    own |= {Path(a) for a in argv if Path(a).parent == runs}
    changed = [p for p, stat in snapshot(root).items() if before.get(p) != stat]
    assert all(own & set(p.parents) for p in changed), changed


def test_a_diverged_run_is_left_resumable(root, capsys, monkeypatch):
    """--lr 1e6: one line naming the step, the loss and --lr; the folder holds no checkpoint
    of the diverged weights, so --resume of the same --name starts again with a sane --lr."""
    runs = root / "runs"
    monkeypatch.chdir(root / "cwd")
    argv = ["train", "--out", str(runs), "--name", "diverged", *TINY]
    assert main([*argv, "--lr", "1e6"]) == 2
    err = capsys.readouterr().err
    assert "training loss is" in err and "at step" in err and "--lr, now 1e+06" in err
    assert "rerun with --resume and a lower --lr" in err
    assert not (runs / "diverged" / "checkpoints" / "latest.pt").exists()
    # the run's own config (lr 1e6) is the base of a resume: the lower --lr is given
    assert main([*argv, "--resume", "--lr", "1e-3", "--no-eval"]) == 0
    assert (runs / "diverged" / "checkpoints" / "latest.pt").is_file()
