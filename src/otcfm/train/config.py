"""Run configuration: typed sections, TOML in and out, ``section.key=value`` overrides.

A config is fully resolved before a run starts and written to ``runs/<name>/config.toml``,
so a run can be repeated (or resumed) from that file alone.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from otcfm.train.runfolder import KEEP_CHECKPOINTS, check_run_name


@dataclass
class DataConfig:
    """Where x0 (source) and x1 (target) come from: built-in names or .npy/.npz/.csv files."""

    source: str = "gaussian"
    target: str = "8gaussians"
    n_train: int = 10_000  # points drawn from a built-in distribution (files: all rows)
    n_val: int = 1_000  # held-out points for validation loss and W2
    n_test: int = 2_000  # fresh points for the final evaluation (the paper uses 10,000)
    val_fraction: float = 0.1  # share of a file held out for validation and test
    # Files only: row i of the source file is paired with row i of the target file (e.g. the
    # (x0, ODE(x0)) pairs of reflow); both sides are split alike and batches keep the pairs.
    paired: bool = False


@dataclass
class MethodConfig:
    """The flow matcher: a registry name (``otcfm list``) plus its options.

    Defaults left unset (sigma = -1) are the preset's own (``otcfm.matchers.preset_defaults``),
    written into the config by :meth:`RunConfig.resolve` before a run starts.
    """

    name: str = "otcfm"
    sigma: float = -1.0  # -1 = the preset's default (RunConfig.resolve() writes it in)
    coupling: str = ""  # "" = the method's own; else a name or spec, e.g. "approx:tol=0.001"
    time_sampler: str = "uniform"


@dataclass
class ModelConfig:
    """The vector-field network (the paper's MLP: 3 hidden layers of 64 SELU units)."""

    width: int = 64
    depth: int = 3
    activation: str = "selu"


@dataclass
class OptimConfig:
    """AdamW on the CFM loss; steps count optimizer steps, never epochs."""

    steps: int = 20_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 0.0  # 0 = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999


@dataclass
class CouplingsConfig:
    """How minibatch couplings are produced (results never depend on workers or prefetch).

    ``ot_batch`` points are coupled at once and trained on as ``ot_batch / optim.batch_size``
    consecutive optimizer steps, one chunk of ``batch_size`` pairs each (0 = batch_size).
    ``workers`` background threads couple the next batches while the model trains (0 = couple
    synchronously in the training thread); ``prefetch`` bounds how many coupled batches are
    computed ahead. ``ot_batch`` and ``optim.batch_size`` count points of the global batch,
    summed over all processes.
    """

    workers: int = 1
    prefetch: int = 2
    ot_batch: int = 0
    # under torch.distributed: "global" = couple the global batch once and give every process
    # its share of the pairs; "local" = each process couples its own share (as TorchCFM does)
    scope: str = "global"


@dataclass
class EvalConfig:
    """Validation cadence, checkpointing and the evaluation protocol (docs/reference.md §3)."""

    val_every: int = 1_000
    checkpoint_every: int = 1_000
    solver: str = "euler"
    ode_steps: int = 100
    use_best: bool = True  # evaluate the best-validation checkpoint
    keep_checkpoints: int = KEEP_CHECKPOINTS  # step checkpoints kept (the newest ones)


@dataclass
class DistributedConfig:
    """torch.distributed settings (used when the run is launched on several processes).

    ``backend``: "" = nccl on CUDA devices, gloo on the CPU. ``timeout``: seconds a process
    waits for the others before the run stops with an error (a dead or stuck process).
    """

    backend: str = ""
    timeout: float = 600.0


SCOPES = ("global", "local")


class TomlConfig:
    """Dict and TOML conversions of a run config (a dataclass with ``name`` and ``out_dir``)."""

    name: str
    out_dir: str

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build a config, rejecting unknown sections or keys with the valid ones listed."""
        return build_config(cls, data)

    @classmethod
    def from_toml(cls, path: str | Path) -> Any:
        return cls.from_dict(read_toml(path))

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


@dataclass
class RunConfig(TomlConfig):
    """Everything a training run needs."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 42
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    couplings: CouplingsConfig = field(default_factory=CouplingsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def resolve(self) -> RunConfig:
        """This config with every preset default written in (e.g. the method's sigma).

        Raises ValueError for an unknown method name (the valid ones listed).
        """
        if self.method.sigma != -1:
            return self
        from otcfm.matchers import preset_defaults

        data = self.to_dict()
        data["method"]["sigma"] = float(preset_defaults(self.method.name)["sigma"])
        return RunConfig.from_dict(data)

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply ``section.key=value`` strings (values parsed as TOML, else kept as text)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} must look like section.key=value")
            *path, leaf = key.strip().split(".")
            node = data
            for part in path:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"unknown config section {part!r} in override {item!r}")
                node = node[part]
            node[leaf] = _parse_value(raw.strip())
        return RunConfig.from_dict(data)

    @property
    def ot_batch(self) -> int:
        """Points coupled at once: ``couplings.ot_batch``, or ``optim.batch_size`` when 0."""
        return self.couplings.ot_batch or self.optim.batch_size

    def validate(self) -> RunConfig:
        """Check ranges that no type annotation can express; return self."""
        c, b = self.couplings, self.optim.batch_size
        checks = [
            (self.optim.steps >= 1, f"optim.steps must be >= 1, got {self.optim.steps}"),
            (
                self.optim.batch_size >= 1,
                f"optim.batch_size must be >= 1, got {self.optim.batch_size}",
            ),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (
                0 <= self.optim.ema_decay < 1,
                f"optim.ema_decay must be in [0, 1), got {self.optim.ema_decay}",
            ),
            (
                self.method.sigma >= 0 or self.method.sigma == -1,
                f"method.sigma must be >= 0 (or -1 = the method's default), got "
                f"{self.method.sigma}",
            ),
            (
                c.scope in SCOPES,
                f"couplings.scope must be one of {', '.join(SCOPES)}, got {c.scope!r}",
            ),
            (
                self.distributed.backend in ("", "gloo", "nccl"),
                f"distributed.backend must be '', 'gloo' or 'nccl', got "
                f"{self.distributed.backend!r}",
            ),
            (
                self.distributed.timeout > 0,
                f"distributed.timeout must be > 0 seconds, got {self.distributed.timeout}",
            ),
            (self.data.n_train >= 2, f"data.n_train must be >= 2, got {self.data.n_train}"),
            (self.data.n_val >= 2, f"data.n_val must be >= 2, got {self.data.n_val}"),
            (self.data.n_test >= 2, f"data.n_test must be >= 2, got {self.data.n_test}"),
            (
                0 < self.data.val_fraction < 1,
                f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}",
            ),
            (
                self.model.width >= 1 and self.model.depth >= 1,
                "model.width and model.depth must be >= 1",
            ),
            (c.workers >= 0, f"couplings.workers must be >= 0 (0 = no prefetch), got {c.workers}"),
            (c.prefetch >= 1, f"couplings.prefetch must be >= 1, got {c.prefetch}"),
            (
                c.ot_batch >= 0 and (b < 1 or c.ot_batch % b == 0),
                f"couplings.ot_batch must be 0 (= optim.batch_size) or a positive multiple of "
                f"optim.batch_size {b} (e.g. {b}, {2 * b}, {4 * b}), got {c.ot_batch}",
            ),
            (self.eval.val_every >= 1, f"eval.val_every must be >= 1, got {self.eval.val_every}"),
            (self.eval.checkpoint_every >= 1, "eval.checkpoint_every must be >= 1"),
            (self.eval.ode_steps >= 1, f"eval.ode_steps must be >= 1, got {self.eval.ode_steps}"),
            (
                self.eval.keep_checkpoints >= 1,
                f"eval.keep_checkpoints must be >= 1, got {self.eval.keep_checkpoints}",
            ),
        ]
        check_run_name(self.name)
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"cannot parse config {path}: {err}") from None


def build_config(cls: type, data: Any, section: str | None = None) -> Any:
    """The dataclass ``cls`` from nested dicts (sections are dataclass-valued fields).

    Unknown sections or keys raise ValueError listing the valid ones; values are coerced to
    the type of each field's default.
    """
    where = f"[{section}]" if section else "config"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid keys: {', '.join(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_config(type(default), value, name)
        else:
            kwargs[name] = _coerce(value, default, f"{section}.{name}" if section else name)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Check a value against the type of its default (ints are accepted for floats)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be of type {kind.__name__}, got {value!r}")
    return value


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a two-level dict of scalars as TOML (scalars first, then one table per section)."""
    lines = [f"{k} = {_toml_scalar(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_scalar(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"cannot write {v!r} to TOML")
