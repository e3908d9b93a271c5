"""Run configuration: typed sections, TOML in and out, ``section.key=value`` overrides.

A config is fully resolved before a run starts and written to ``runs/<name>/config.toml``,
so a run can be repeated (or resumed) from that file alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from otcfm.train.runfolder import KEEP_CHECKPOINTS, check_run_name

# torch.device types the engine trains on
DEVICE_TYPES = ("cpu", "cuda", "mps")


class ConfigError(ValueError):
    """A config value that is not allowed; ``key`` is its dotted name (``optim.steps``).

    The message names the key and the problem in one line; the command line adds the flag
    that sets the key (``optim.steps (--steps) must be a positive integer, got 0``).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_count(key: str, value: Any, low: int = 1, note: str = "") -> None:
    """ConfigError unless ``value`` is an int >= ``low`` (1: a positive integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        need = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(key, f"{key} must be {need}{note}, got {value!r}")


def check_number(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    note: str = "",
) -> None:
    """Raise ConfigError unless ``value`` is a finite real in [low, high].

    ConfigError unless ``value`` is a finite real in the interval [low, high] (a bound is
    left out when None; ``open_low``/``open_high`` exclude it).
    """
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or (value > low if open_low else value >= low))
        and (high is None or (value < high if open_high else value <= high))
    )
    if not ok:
        need = "a finite number"
        if low is not None and high is not None:
            need += f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        elif low is not None:
            need += f" {'>' if open_low else '>='} {low:g}"
        elif high is not None:
            need += f" {'<' if open_high else '<='} {high:g}"
        raise ConfigError(key, f"{key} must be {need}{note}, got {value!r}")


def check_choice(key: str, value: Any, choices: Any, what: str) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (names listed in the message)."""
    names = list(choices)
    if not isinstance(value, str) or value not in names:
        shown = ", ".join(str(n) if n else repr(n) for n in names)
        raise ConfigError(key, f"{key}: unknown {what} {value!r} (choose from {shown})")


def check_seed(key: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is an integer seed in [0, 2^63)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ConfigError(key, f"{key} must be an integer in [0, 2^63), got {value!r}")


def check_name(key: str, value: Any) -> None:
    """A run name: one folder under the output folder (:func:`check_run_name`)."""
    try:
        check_run_name(value)
    except ValueError as err:
        raise ConfigError(key, str(err)) from None


def check_device(key: str, value: Any) -> None:
    """Check the syntax of a torch device string.

    The syntax of a torch device string (whether this machine has it: see
    :func:`check_device_available`).
    """
    import torch

    try:
        ok = isinstance(value, str) and torch.device(value).type in DEVICE_TYPES
    except RuntimeError:
        ok = False
    if not ok:
        raise ConfigError(
            key, f"{key}: {value!r} is not a device (use cpu, cuda, cuda:N or mps)"
        )


def check_device_available(device: str, key: str = "device") -> None:
    """ConfigError unless this machine has ``device`` (CUDA and MPS are checked)."""
    import torch

    check_device(key, device)
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise ConfigError(
                key, f"{key} {device!r}: CUDA is not available on this machine ({why}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if d.index is not None and d.index >= count:
            raise ConfigError(
                key, f"{key} {device!r}: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(key, f"{key} {device!r}: MPS is not available on this machine")


def check_folder(path: str | Path, what: str) -> None:
    """Check that ``path`` is a folder or can be made one.

    ``path`` is a folder or can be made one: nothing along it is a file, and the first
    existing folder on it is writable (NotADirectoryError / PermissionError naming ``what``).
    """
    path = Path(path)
    _check_along(path, (path, *path.parents), what)


def check_output_file(path: str | Path, what: str, suffixes: tuple[str, ...]) -> None:
    """An output file: not a folder, one of ``suffixes``, its folder can be made."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{what} {path}: the extension must be one of {', '.join(suffixes)}"
            + (f", not {path.suffix!r}" if path.suffix else "")
        )
    _check_along(path, path.parents, what)


def _check_along(path: Path, parts: Any, what: str) -> None:
    for part in parts:
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is inside {part}, a file"
                raise NotADirectoryError(f"{what} {path} {where}, not a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} {path}: no permission to write in {part}")
            return


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every key whose value differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (list(old) + list(new)).index(k)):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


@dataclass
class DataConfig:
    """Where x0 (source) and x1 (target) come from.

    Built-in names, .npy/.npz/.csv/.tsv/.txt files or ``FILE.npz:KEY`` (the grammar of
    :func:`otcfm.data.parse_spec`).
    """

    source: str = "gaussian"
    target: str = "8gaussians"
    n_train: int = 10_000  # points drawn from a built-in distribution (files: all rows)
    n_val: int = 1_000  # held-out points for validation loss and W2
    n_test: int = 2_000  # fresh points for the final evaluation (the paper uses 10,000)
    val_fraction: float = 0.1  # share of a file held out for validation and test
    # The seed that draws built-in points and shuffles a file's rows into the splits; -1 = the
    # run's seed. Set it to keep one data set across runs whose seeds differ (seeds then vary
    # only the initial weights, minibatches, times and noise).
    seed: int = -1
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

    def matcher_kwargs(self) -> dict[str, Any]:
        """The keywords of ``otcfm.matchers.matcher(name, ...)`` this section sets."""
        kwargs: dict[str, Any] = {"time_sampler": self.time_sampler}
        if self.sigma != -1:
            kwargs["sigma"] = self.sigma
        if self.coupling:
            kwargs["coupling"] = self.coupling
        return kwargs

    def validate(self, section: str = "method") -> None:
        """Registry names and values, each error naming its key (``method.coupling: ...``).

        The matcher is built once to check what only it knows (e.g. an option of the
        coupling spec, or sigma = 0 where the method's path needs noise).
        """
        from otcfm.couplings import coupling_spec
        from otcfm.matchers import MATCHERS, matcher
        from otcfm.time_samplers import TIME_SAMPLERS

        check_choice(f"{section}.name", self.name, MATCHERS.names(), "method")
        check_choice(f"{section}.time_sampler", self.time_sampler, TIME_SAMPLERS.names(),
                     "time sampler")
        key = f"{section}.sigma"
        if self.sigma != -1:
            check_number(key, self.sigma, low=0, note=" (or -1 = the method's default)")
        kwargs = self.matcher_kwargs()
        kwargs.pop("coupling", None)
        try:
            matcher(self.name, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(key, f"{key} {self.sigma:g}: {err}") from None
        if self.coupling:
            key = f"{section}.coupling"
            if not isinstance(self.coupling, str):
                raise ConfigError(key, f"{key} must be a coupling name or spec")
            try:
                coupling_spec(self.coupling)
                matcher(self.name, **self.matcher_kwargs())
            except (ValueError, TypeError, ImportError) as err:
                raise ConfigError(key, f"{key} {self.coupling!r}: {err}") from None


@dataclass
class ModelConfig:
    """The vector-field network.

    ``arch = "mlp"`` (the paper's MLP for points: 3 hidden layers of 64 SELU units; on images it
    sees the flattened pixels) or ``"unet"`` (images only: the ADM-style UNet of ``preset``, see
    ``otcfm.models.UNET_PRESETS``).
    """

    arch: str = "mlp"
    width: int = 64  # mlp: hidden units
    depth: int = 3  # mlp: hidden layers
    activation: str = "selu"  # mlp
    preset: str = ""  # unet: "" = the preset named like the data set (digits, cifar10, ...)
    channels: int = 0  # unet: base channels; 0 = the preset's
    dropout: float = -1.0  # unet: dropout of its residual blocks; -1 = the preset's


ARCHS = ("mlp", "unet")
FLIPS = ("auto", "on", "off")


@dataclass
class ImagesConfig:
    """Image runs (``data.target`` names an image set, from noise ``data.source = "gaussian"``).

    ``conditional``: train on the class labels (``model(x, t, y=label)``); ``cond_dropout``
    of them are replaced by the null class in training, for classifier-free guidance (Ho &
    Salimans' default 0.1); a coupling spec with ``within=y`` pairs only within a class.
    ``flips``: random horizontal flips of the training images ("auto": the data set's own
    choice, on for CIFAR-10 only). Every ``grid_every`` steps (0: only at the end) a grid of
    ``grid_size`` samples of the eval weights, ``grid_steps`` Euler steps from a fixed noise,
    is written to ``samples/step-N.png`` (a conditional run: classes in turn).
    """

    conditional: bool = False
    cond_dropout: float = 0.1
    flips: str = "auto"
    grid_every: int = 1_000
    grid_size: int = 64
    grid_steps: int = 100


#: learning-rate schedules after the warm-up (otcfm.train.loop.LoopSettings.lr_at)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """AdamW on the CFM loss; steps count optimizer steps, never epochs."""

    steps: int = 20_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 0.0  # 0 = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    warmup: int = 0  # steps of linear learning-rate warmup; 0 = off (CIFAR-10 recipe: 5000)
    schedule: str = LR_SCHEDULES[0]  # after the warmup: "constant" or "cosine" (decay to 0)
    bf16: bool = False  # the forward pass under bfloat16 autocast (weights stay float32)


@dataclass
class CouplingsConfig:
    """How minibatch couplings are produced (results never depend on workers or prefetch).

    ``ot_batch`` points are coupled at once and trained on as ``ot_batch / optim.batch_size``
    consecutive optimizer steps, one chunk of ``batch_size`` pairs each (0 = batch_size).
    ``workers`` background threads couple the next batches while the model trains (0 = couple
    synchronously in the training thread); ``prefetch`` bounds how many coupled batches are
    computed ahead, counting those made and not yet used: keep it above ``workers``, or a
    worker waits whenever a made batch does (the default 4 leaves two workers a batch each
    in hand). ``ot_batch`` and ``optim.batch_size`` count points of the global batch, summed
    over all processes.
    """

    workers: int = 1
    prefetch: int = 4
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
        """The run folder: ``out_dir / name``."""
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The config as nested dicts."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build a config, rejecting unknown sections or keys with the valid ones listed."""
        return build_config(cls, data)

    @classmethod
    def from_toml(cls, path: str | Path) -> Any:
        """Read and validate a config file; errors name the file and the key."""
        try:
            return cls.from_dict(read_toml(path)).validate()
        except ConfigError as err:
            raise ConfigError(err.key, f"{path}: {err}") from None

    def validate(self) -> Any:
        """Check every value and return the config (subclasses implement it)."""
        raise NotImplementedError

    def to_toml(self) -> str:
        """The config as TOML text (as written to a run's ``config.toml``)."""
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
    images: ImagesConfig = field(default_factory=ImagesConfig)

    @property
    def is_image_run(self) -> bool:
        """Whether ``data.target`` names an image set.

        Whether ``data.target`` names an image set (see
        :func:`otcfm.data.images.is_image_spec`): the run trains noise -> images
        (:class:`~otcfm.train.images.ImageObjective`).
        """
        from otcfm.data.images import is_image_spec

        return isinstance(self.data.target, str) and bool(self.data.target) and is_image_spec(
            self.data.target)

    def resolve(self) -> RunConfig:
        """This config, validated, with every preset default written in (e.g. the method's sigma).

        Raises :class:`ConfigError` naming the key of a bad value.
        """
        self.validate()
        data = self.to_dict()
        if self.method.sigma == -1:
            from otcfm.matchers import preset_defaults

            data["method"]["sigma"] = float(preset_defaults(self.method.name)["sigma"])
        m = data["model"]
        if m["arch"] == "unet":  # the UNet's preset, channels and dropout written in
            from otcfm.models import UNET_PRESETS

            m["preset"] = m["preset"] or self.data.target.partition(":")[0]
            preset = UNET_PRESETS[m["preset"]]
            m["channels"] = m["channels"] or int(preset["channels"])
            m["dropout"] = float(preset["dropout"]) if m["dropout"] == -1 else m["dropout"]
        return self if data == self.to_dict() else RunConfig.from_dict(data)

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply ``section.key=value`` strings (values parsed as TOML, else kept as text)."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), assignments))

    @property
    def ot_batch(self) -> int:
        """Points coupled at once: ``couplings.ot_batch``, or ``optim.batch_size`` when 0."""
        return self.couplings.ot_batch or self.optim.batch_size

    def validate(self) -> RunConfig:
        """Check every value before any work; return self.

        Check every value before any work: registry names (method, coupling, time sampler,
        solver, activation, device, backend) and ranges; return self.

        Raises :class:`ConfigError` (a ValueError) naming the key, e.g. ``eval.solver:
        unknown solver 'dopri' (choose from ...)`` or ``optim.steps must be a positive
        integer, got 0``. Whether this machine has the device is checked separately
        (:func:`check_device_available`): a run trained on a GPU is still read on a CPU.
        """
        from otcfm.models import ACTIVATIONS
        from otcfm.sampling import SOLVERS

        check_name("name", self.name)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ConfigError("out_dir", f"out_dir must be a folder, got {self.out_dir!r}")
        check_seed("seed", self.seed)
        check_device("device", self.device)

        d = self.data
        for key in ("source", "target"):
            value = getattr(d, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"data.{key}", f"data.{key} must name a distribution or a "
                                  f"file, got {value!r}")
        for key in ("n_train", "n_val", "n_test"):
            check_count(f"data.{key}", getattr(d, key), low=2)
        check_number("data.val_fraction", d.val_fraction, low=0, high=1, open_low=True,
                     open_high=True)
        if d.seed != -1:
            check_seed("data.seed", d.seed)

        self.method.validate("method")

        m = self.model
        check_choice("model.arch", m.arch, ARCHS, "architecture")
        check_count("model.width", m.width)
        check_count("model.depth", m.depth)
        check_choice("model.activation", m.activation, sorted(ACTIVATIONS), "activation")
        check_count("model.channels", m.channels, low=0, note=" (0 = the preset's)")
        if m.dropout != -1:
            check_number("model.dropout", m.dropout, low=0, high=1, open_high=True,
                         note=" (or -1 = the preset's)")
        self._validate_images()

        o = self.optim
        check_count("optim.steps", o.steps)
        check_count("optim.batch_size", o.batch_size)
        check_number("optim.lr", o.lr, low=0, open_low=True)
        check_number("optim.weight_decay", o.weight_decay, low=0)
        check_number("optim.grad_clip", o.grad_clip, low=0, note=" (0 = off)")
        check_count("optim.warmup", o.warmup, low=0, note=" (0 = off)")
        check_choice("optim.schedule", o.schedule, LR_SCHEDULES, "learning-rate schedule")
        check_number("optim.ema_decay", o.ema_decay, low=0, high=1, open_high=True,
                     note=" (0 = off)")

        c, b = self.couplings, o.batch_size
        check_count("couplings.workers", c.workers, low=0, note=" (0 = couple in the training "
                    "thread)")
        check_count("couplings.prefetch", c.prefetch)
        if isinstance(c.ot_batch, bool) or not isinstance(c.ot_batch, int) or c.ot_batch < 0 or (
            c.ot_batch % b
        ):
            raise ConfigError(
                "couplings.ot_batch",
                f"couplings.ot_batch must be 0 (= optim.batch_size) or a positive multiple of "
                f"optim.batch_size {b} (e.g. {b}, {2 * b}, {4 * b}), got {c.ot_batch!r}",
            )
        check_choice("couplings.scope", c.scope, SCOPES, "scope")

        e = self.eval
        check_count("eval.val_every", e.val_every)
        check_count("eval.checkpoint_every", e.checkpoint_every)
        check_choice("eval.solver", e.solver, SOLVERS, "solver")
        check_count("eval.ode_steps", e.ode_steps)
        check_count("eval.keep_checkpoints", e.keep_checkpoints)

        # '' = nccl on CUDA devices, gloo on the CPU
        check_choice("distributed.backend", self.distributed.backend, ("", "gloo", "nccl"),
                     "backend")
        check_number("distributed.timeout", self.distributed.timeout, low=0, open_low=True,
                     note=" seconds")
        return self

    def _validate_images(self) -> None:
        """The [images] section, and what an image run needs of the others."""
        from otcfm.couplings import coupling_spec
        from otcfm.models import UNET_PRESETS

        im, m = self.images, self.model
        check_number("images.cond_dropout", im.cond_dropout, low=0, high=1, open_high=True)
        check_choice("images.flips", im.flips, FLIPS, "flips setting")
        check_count("images.grid_every", im.grid_every, low=0, note=" (0 = at the end only)")
        check_count("images.grid_size", im.grid_size)
        check_count("images.grid_steps", im.grid_steps)
        if m.preset:
            check_choice("model.preset", m.preset, sorted(UNET_PRESETS), "UNet preset")
        within = bool(self.method.coupling) and "within" in coupling_spec(
            self.method.coupling)[1]
        if within and not im.conditional:
            raise ConfigError("method.coupling", f"method.coupling {self.method.coupling!r} "
                              "pairs within classes: it needs images.conditional = true")
        if not self.is_image_run:
            if m.arch == "unet":
                raise ConfigError("model.arch", f"model.arch 'unet' needs images: data.target "
                                  f"{self.data.target!r} is not an image set")
            if im.conditional:
                raise ConfigError("images.conditional", "images.conditional needs images: "
                                  f"data.target {self.data.target!r} is not an image set")
            return
        if self.data.source != "gaussian":
            raise ConfigError("data.source", f"data.source must be 'gaussian' for images "
                              f"(data.target {self.data.target!r}): image runs start from "
                              f"noise, got {self.data.source!r}")
        if self.data.paired:
            raise ConfigError("data.paired", "data.paired applies to point files, not images")
        if self.data.seed != -1:
            raise ConfigError("data.seed", "data.seed applies to point data: an image run "
                              "holds out its validation images with the run's seed")
        default = CouplingsConfig()
        for key in ("workers", "prefetch", "ot_batch", "scope"):
            if getattr(self.couplings, key) != getattr(default, key):
                raise ConfigError(f"couplings.{key}", f"couplings.{key} applies to point runs: "
                                  "an image run couples each batch inside its training step "
                                  f"(data.target {self.data.target!r}); leave it at "
                                  f"{getattr(default, key)!r}")
        if m.arch == "unet" and not m.preset:
            kind = self.data.target.partition(":")[0]
            if kind not in UNET_PRESETS:
                raise ConfigError("model.preset", f"model.preset: the UNet needs a preset for "
                                  f"{self.data.target!r} (choose from "
                                  f"{', '.join(sorted(UNET_PRESETS))})")


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``data`` (a config as nested dicts) with ``section.key=value`` strings applied in place.

    Values are parsed as TOML, else kept as text; an unknown section is refused here, an
    unknown key when the config is built from ``data``.
    """
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
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a folder, not a TOML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"cannot parse config {path}: not a UTF-8 text (TOML) file") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"cannot parse config {path}: {err}") from None


def build_config(cls: type, data: Any, section: str | None = None) -> Any:
    """The dataclass ``cls`` from nested dicts (sections are dataclass-valued fields).

    Unknown sections or keys raise ValueError listing the valid ones; values are coerced to
    the type of each field's default.
    """
    where = f"[{section}]" if section else "config"
    if not isinstance(data, dict):
        raise ConfigError(section or "config", f"{where} must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        first = unknown[0]
        close = difflib.get_close_matches(str(first), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        key = f"{section}.{first}" if section else str(first)
        raise ConfigError(
            key,
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}{hint}; "
            f"valid keys: {', '.join(known)}",
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
    if isinstance(value, dict) and kind is not dict:
        raise ConfigError(name, f"{name} is a value, not a table [{name}]")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(name, f"{name} must be of type {kind.__name__}, got {value!r}")
    return value


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a two-level dict of scalars as TOML (scalars first, then one table per section)."""
    lines = [f"{k} = {_toml_scalar(v, k)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_scalar(v, f'{section}.{k}')}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml_scalar(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):  # undecodable bytes of a command line
            raise ConfigError(key, f"{key}: {v!r} is not valid Unicode (bytes that are not UTF-8?)")
        return '"' + "".join(_toml_char(c) for c in v) + '"'
    raise TypeError(f"{key}: cannot write {v!r} to TOML")


def _toml_char(c: str) -> str:
    """Escape one character of a TOML basic string.

    One character of a TOML basic string: quotes, backslashes and control characters
    escaped, so that any text reads back as itself.
    """
    if c in '"\\':
        return "\\" + c
    code = ord(c)
    return f"\\u{code:04x}" if code < 0x20 or code == 0x7F else c
