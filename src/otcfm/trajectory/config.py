"""Configuration of a trajectory-inference run: typed sections, TOML in and out.

The run folder's ``config.toml`` holds everything needed to rebuild the data, the model and
the training stream (``otcfm trajectory fit --config FILE`` repeats a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otcfm.train.config import (
    ConfigError,
    TomlConfig,
    build_config,
    check_choice,
    check_count,
    check_device,
    check_name,
    check_number,
    check_seed,
)
from otcfm.train.runfolder import KEEP_CHECKPOINTS

METHODS = ("otcfm", "icfm", "sbcfm", "sf2m")


@dataclass
class DataSection:
    """Where the populations come from and how they are represented."""

    path: str = "synthetic"  # "synthetic" or a .h5ad / .npz / .csv / .tsv file
    time_key: str = ""  # "" = the format's default (day/time/..., sample_labels, time)
    # text time labels from first to last, comma-separated ("early,mid,late"); "" = numeric
    # labels (sorted by value) or an .h5ad ordered category
    time_order: str = ""
    obsm_key: str = ""  # .h5ad: features from obsm[KEY] instead of X
    npz_key: str = "pcs"  # .npz: the feature array
    dims: int = 5  # features kept (0 = all)
    pca: bool = True  # PCA to `dims` (False: keep the first `dims` columns)
    standardize: bool = True  # StandardScaler on all cells (the paper's whitening)
    n_cells: int = 1000  # synthetic: cells per time point
    obs_dim: int = 20  # synthetic: observed features
    data_seed: int = 0  # synthetic: the snapshot draw

    @property
    def time_labels(self) -> list[str] | None:
        """``time_order`` as a list of labels (None when unset)."""
        if not self.time_order.strip():
            return None
        return [label.strip() for label in self.time_order.split(",")]


@dataclass
class MethodSection:
    """``[method]``: the flow matcher and its sigma (-1: the preset's default)."""

    name: str = "otcfm"  # otcfm, icfm, sbcfm or sf2m
    sigma: float = -1.0  # -1 = the method preset's default, written in by validate()


@dataclass
class ModelSection:
    """``[model]``: the MLP's width, depth and activation."""

    width: int = 64
    depth: int = 3
    activation: str = "selu"


@dataclass
class OptimSection:
    """``[optim]``: AdamW steps, batch size per time point, learning rate and weight decay."""

    steps: int = 5_000
    batch_size: int = 128  # cells drawn per time point and interval
    lr: float = 1e-3
    weight_decay: float = 1e-5


@dataclass
class EvalSection:
    """``[eval]``: the held-out time, ODE steps, logging and checkpoint cadence."""

    left_out: int = -1  # index of the held-out time point (-1 = none)
    ode_steps: int = 100  # Euler steps per unit of index time
    log_every: int = 100
    checkpoint_every: int = 1_000
    keep_checkpoints: int = KEEP_CHECKPOINTS  # step checkpoints kept (the newest ones)


@dataclass
class TrajectoryConfig(TomlConfig):
    """The config of ``otcfm trajectory fit``: run name, seed, device and one field per section."""

    name: str = "trajectory"
    out_dir: str = "runs"
    seed: int = 42
    device: str = "cpu"
    data: DataSection = field(default_factory=DataSection)
    method: MethodSection = field(default_factory=MethodSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoryConfig:
        """Build and validate a config; unknown sections or keys raise with the valid ones."""
        return build_config(cls, data).validate()

    def validate(self) -> TrajectoryConfig:
        """Check every value, then :meth:`resolve`.

        Check every value (:class:`ConfigError`, a ValueError naming the key), then
        :meth:`resolve`. Whether the data has ``data.dims`` features is checked when it is
        loaded.
        """
        from otcfm.models import ACTIVATIONS

        check_name("name", self.name)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ConfigError("out_dir", f"out_dir must be a folder, got {self.out_dir!r}")
        check_seed("seed", self.seed)
        check_device("device", self.device)
        d, o, e = self.data, self.optim, self.eval
        if not isinstance(d.path, str) or not d.path.strip():
            raise ConfigError("data.path", f"data.path must be 'synthetic' or a file, got "
                              f"{d.path!r}")
        check_count("data.dims", d.dims, low=0, note=" (0 = all features)")
        check_count("data.n_cells", d.n_cells, low=2)
        check_count("data.obs_dim", d.obs_dim, low=3)
        if d.path == "synthetic" and d.dims > d.obs_dim:
            raise ConfigError("data.dims", f"data.dims {d.dims} exceeds the {d.obs_dim} "
                              f"features of the synthetic data (data.obs_dim)")
        check_seed("data.data_seed", d.data_seed)
        labels = d.time_labels
        if labels is not None and not (all(labels) and len(set(labels)) == len(labels)):
            raise ConfigError("data.time_order", f"data.time_order must list distinct, "
                              f"non-empty labels separated by commas, got {d.time_order!r}")
        check_choice("method.name", self.method.name, METHODS, "method")
        if self.method.sigma != -1:
            check_number("method.sigma", self.method.sigma, low=0,
                         note=" (or -1 = the method's default)")
        check_count("model.width", self.model.width)
        check_count("model.depth", self.model.depth)
        check_choice("model.activation", self.model.activation, sorted(ACTIVATIONS),
                     "activation")
        check_count("optim.steps", o.steps)
        check_count("optim.batch_size", o.batch_size, low=2)
        check_number("optim.lr", o.lr, low=0, open_low=True)
        check_number("optim.weight_decay", o.weight_decay, low=0)
        if isinstance(e.left_out, bool) or not isinstance(e.left_out, int) or e.left_out < -1:
            raise ConfigError("eval.left_out", f"eval.left_out must be -1 (none) or a time "
                              f"index, got {e.left_out!r}")
        check_count("eval.ode_steps", e.ode_steps)
        check_count("eval.log_every", e.log_every)
        check_count("eval.checkpoint_every", e.checkpoint_every)
        check_count("eval.keep_checkpoints", e.keep_checkpoints)
        return self.resolve()

    def resolve(self) -> TrajectoryConfig:
        """Write in the defaults left unset.

        Sigma -1 becomes the method preset's sigma (``otcfm.matchers.preset_defaults``), so the
        saved config records the sigma used.
        """
        if self.method.sigma == -1:
            from otcfm.matchers import preset_defaults

            self.method.sigma = float(preset_defaults(self.method.name)["sigma"])
        return self
