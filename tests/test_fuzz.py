"""Fuzzing of the config loader and the command line (issue 15's fault suite).

Hypothesis draws config files and command lines from the real vocabulary (every key, every
flag) mixed with hostile values: negative and zero counts, NaN and infinities, huge numbers,
wrong types, unknown names, path tricks, text that is not TOML. The oracles:

- the library's config loader either returns a config or raises ``ValueError`` naming the
  problem (``FileNotFoundError`` for a missing file) -- never another exception;
- ``otcfm`` ends with exit code 0 or 2, prints no traceback, and writes nothing outside the
  folders the command line names (the run folder under ``--out``, the ``--out`` file).

Examples are bounded and derandomized for ``make test`` (profile ``ci``, the default);
``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py`` draws many more, afresh each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otcfm._cli_config import (
    FLAG_FIELDS,
    TRAJECTORY_FLAGS,
    TRAJECTORY_METHODS,
    ConfigType,
    run_defaults,
    trajectory_defaults,
)
from otcfm.cli import main
from otcfm.couplings import COUPLINGS
from otcfm.data import load_points, toy
from otcfm.matchers import MATCHERS
from otcfm.time_samplers import TIME_SAMPLERS
from otcfm.train.config import RunConfig
from otcfm.trajectory.config import TrajectoryConfig

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# hostile scalars: every kind a TOML file or a flag can carry
NUMBERS = st.one_of(
    st.sampled_from([0, -1, -5, 1, 2, 3, 2**31, 2**63 - 1, -(2**63)]),
    st.integers(-10**6, 10**6),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e6, 0.5, 1.5, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXT = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "/tmp", "a/b", "cuda", "cuda:7", "foo", "mps",
                     "dopri", "euler", "dopri5", "otcfm", "icfm", "sf2m", "uniform", "relu",
                     "8gaussians", "moons", "x.npz:key", "missing.csv", "nan", "-1", "1e6",
                     "gloo", "nccl", "local", "global", "exact", "approx", "otcfm=approx"]),
    st.text(max_size=12),
)
SCALARS = st.one_of(NUMBERS, TEXT, st.booleans())


def _sections(cls: type) -> dict[str | None, list[str]]:
    """Every (section, key) of a config dataclass: {None: top-level keys, section: keys}."""
    out: dict[str | None, list[str]] = {None: []}
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = [g.name for g in dataclasses.fields(value)]
        else:
            out[None].append(f.name)
    return out


def _toml_value(v: object) -> str:
    """TOML for a hostile scalar (NaN and infinities included, which TOML spells nan / inf)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    escaped = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


@st.composite
def config_texts(draw, cls: type) -> str:
    """A config file: a few real keys (and sometimes unknown ones) with hostile values, or
    sometimes text that is not TOML at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    sections = _sections(cls)
    chosen: dict[str | None, dict[str, object]] = {}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(sections, key=str)))
        keys = sections[section] + ["bogus_key"]
        chosen.setdefault(section, {})[draw(st.sampled_from(keys))] = draw(SCALARS)
    if draw(st.integers(0, 9)) == 0:
        chosen["bogus_section"] = {"x": 1}
    lines = [f"{k} = {_toml_value(v)}" for k, v in chosen.pop(None, {}).items()]
    for section, table in chosen.items():
        lines += [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _load(cls: type, path: Path) -> None:
    """What a command does with a config file before any work: read, resolve, validate."""
    cfg = cls.from_toml(path)
    cfg = cfg.resolve()
    cfg.validate()


@pytest.mark.parametrize("cls", [RunConfig, TrajectoryConfig], ids=lambda c: c.__name__)
def test_config_loader_raises_only_value_errors(cls):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"

        @given(config_texts(cls))
        def check(text):
            path.write_text(text)
            try:
                _load(cls, path)
            except ValueError as err:  # TOMLDecodeError is one; the message must say something
                assert str(err).strip(), f"empty error message for {text!r}"

        check()


# --- the command line -------------------------------------------------------------------

def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _run(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``otcfm argv`` in-process from ``cwd``: (exit code, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse: --help exits 0, a bad flag exits 2
                code = stop.code if isinstance(stop.code, int) else 2
    finally:
        os.chdir(before)
    return code, out.getvalue() + err.getvalue()


def _check_outcome(argv: list[str], code: int, text: str, written: set[Path],
                   allowed: list[Path]) -> None:
    assert code in (0, 2), f"exit {code} for {argv}:\n{text[-2000:]}"
    assert "Traceback" not in text, f"traceback for {argv}:\n{text[-3000:]}"
    if code == 2:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        assert last.startswith(("otcfm", "usage:")) or "error" in last, (argv, text[-1000:])
    # the allowed paths, what they hold, and the folders made to hold them
    stray = [p for p in written
             if not any(p == a or a in p.parents or p in a.parents for a in allowed)]
    assert not stray, f"{argv} wrote outside its run folder / --out: {stray}"


def _typed(kind: type) -> st.SearchStrategy:
    """Mostly values of the flag's own type (so that many command lines get through to
    validation and some all the way), sometimes anything."""
    own = {
        int: st.one_of(st.integers(-3, 3), st.integers(1, 5000),
                       st.sampled_from([2**40, -(2**40)])),
        float: st.one_of(st.floats(-1e3, 1e3),
                         st.sampled_from([0.0, 1e-3, 1e6, math.inf, math.nan])),
        bool: st.booleans(),
    }.get(kind, TEXT)
    return st.one_of(own, own, own, SCALARS)


NAMES = {  # valid registry names a flag takes, beside the hostile text
    "method": MATCHERS.names(), "coupling": COUPLINGS.names(),
    "time_sampler": TIME_SAMPLERS.names(), "source": toy.names(), "target": toy.names(),
    "device": ["cpu", "cuda", "cuda:1", "meta", "foo"], "activation": ["selu", "relu", "nope"],
    "coupling_scope": ["global", "local"],
}


@st.composite
def train_argvs(draw) -> list[str]:
    """``otcfm train ... --print-config``: hostile flag values, parsed and validated, never
    trained (validation must happen before any work, so --print-config sees every error)."""
    argv = ["train", "--print-config"]
    for _ in range(draw(st.integers(1, 5))):
        flag = draw(st.sampled_from([*FLAG_FIELDS, "set", "task", "nproc"]))
        if flag == "set":
            section = draw(st.sampled_from(["optim", "eval", "data", "method", "couplings",
                                            "model", "distributed", "nope"]))
            key = draw(st.sampled_from(["steps", "solver", "lr", "n_val", "ode_steps",
                                        "ot_batch", "name", "sigma", "timeout", "x"]))
            value = _toml_value(draw(SCALARS)) if draw(st.booleans()) else draw(TEXT)
            argv.append(f"--set={section}.{key}={value}")
            continue
        if flag in NAMES and draw(st.booleans()):
            value = draw(st.sampled_from(list(NAMES[flag])))
        elif flag == "task":
            value = draw(st.one_of(st.sampled_from(list(toy.TASKS)), TEXT))
        elif flag == "nproc":
            value = draw(st.integers(-2, 3))
        else:
            section, key = FLAG_FIELDS[flag]
            value = draw(_typed(ConfigType(run_defaults, section, key).kind()))
        argv.append(f"--{flag.replace('_', '-')}={value}")  # = keeps '-5' a value
    return argv


@st.composite
def fit_argvs(draw) -> list[str]:
    """``otcfm trajectory fit ... --print-config``: the time-course flags, hostile values."""
    argv = ["trajectory", "fit", "--print-config"]
    for _ in range(draw(st.integers(1, 5))):
        flag = draw(st.sampled_from(sorted(TRAJECTORY_FLAGS)))
        section, key, _ = TRAJECTORY_FLAGS[flag]
        if flag == "method" and draw(st.booleans()):
            value = draw(st.sampled_from(TRAJECTORY_METHODS))
        else:
            value = draw(_typed(ConfigType(trajectory_defaults, section, key).kind()))
        argv.append(f"--{flag.replace('_', '-')}={value}")
    return argv


@pytest.mark.parametrize(("argvs", "cls"), [(train_argvs, RunConfig),
                                           (fit_argvs, TrajectoryConfig)],
                         ids=["train", "trajectory-fit"])
def test_cli_print_config_fuzz(argvs, cls):
    """``--print-config`` with hostile flags: exit 0 or 2, no traceback, nothing written, and
    what it printed is a valid config that a run can be started from."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()

        @given(argvs())
        def check(argv):
            before = _snapshot(root)
            code, text = _run(argv, work)
            _check_outcome(argv, code, text, _snapshot(root) - before, allowed=[])
            if code == 0:
                printed = work / "printed.toml"
                printed.write_text(text)
                try:
                    _load(cls, printed)
                finally:
                    printed.unlink()

        check()


SAMPLE_VALUES = {  # flag -> values (written --flag=value)
    "--n": st.one_of(st.integers(1, 32), st.integers(-5, 40), st.sampled_from(["x", "1.5"])),
    "--solver": st.sampled_from(["euler", "heun", "rk4", "dopri5", "dopri", "", "foo"]),
    "--ode-steps": st.one_of(st.integers(-3, 8), st.sampled_from(["0", "x"])),
    "--checkpoint": st.sampled_from(["best", "latest", "worst"]),
    "--sde-steps": st.integers(-2, 6),
    "--seed": st.one_of(st.integers(-5, 5), st.sampled_from(["x"])),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny trained run to sample from (a few seconds)."""
    out = tmp_path_factory.mktemp("fuzzruns")
    argv = ["train", "--source", "gaussian", "--target", "8gaussians", "--name", "r",
            "--out", str(out), "--steps", "20", "--batch-size", "32", "--n-train", "128",
            "--n-test", "32", "--val-every", "10", "--checkpoint-every", "10", "--ode-steps",
            "4", "--width", "8", "--depth", "1", "--quiet", "--no-eval",
            "--set", "data.n_val=32", "--set", "couplings.workers=0"]
    assert main(argv) == 0
    return out / "r"


@st.composite
def sample_argvs(draw, run: Path, out_dir: Path) -> list[str]:
    name = draw(st.sampled_from(["s.npy", "s.npz", "s.csv", "s.pt", "s.txt", "sub/s.npy", ""]))
    argv = ["sample", str(run), "--out", str(out_dir / name) if name else str(out_dir)]
    argv.append(f"--n={draw(SAMPLE_VALUES['--n'])}")
    for flag in draw(st.lists(st.sampled_from(sorted(SAMPLE_VALUES)), max_size=3, unique=True)):
        if flag != "--n":  # drawn above, always
            argv.append(f"{flag}={draw(SAMPLE_VALUES[flag])}")
    if draw(st.integers(0, 4)) == 0:
        argv.append("--sde")
    return argv


def _read_samples(path: Path) -> np.ndarray:
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)["samples"].numpy()
    return load_points(path).numpy()


def test_cli_sample_fuzz(tiny_run):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work, outs = root / "work", root / "out"
        work.mkdir()
        outs.mkdir()
        run_files = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file()}

        @given(sample_argvs(tiny_run, outs))
        def check(argv):
            target = Path(argv[3])
            target.unlink(missing_ok=True) if target.is_file() else None
            before = _snapshot(root)
            code, text = _run(argv, work)
            _check_outcome(argv, code, text, _snapshot(root) - before, allowed=[target])
            if code == 0:  # exactly the samples asked for, all finite
                n = int(next(a for a in argv if a.startswith("--n=")).split("=")[1])
                assert n >= 1, f"{argv} accepted --n {n}"
                samples = _read_samples(target)
                assert samples.shape[0] == n and np.isfinite(samples).all(), argv
            # sampling reads a run; it never rewrites the run's files
            now = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file()}
            assert {p: now.get(p) for p in run_files} == run_files, argv

        check()
