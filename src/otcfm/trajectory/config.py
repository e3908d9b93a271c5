"""Configuration of a trajectory-inference run: typed sections, TOML in and out.

The run folder's ``config.toml`` holds everything needed to rebuild the data, the model and
the training stream (``otcfm trajectory fit --config FILE`` repeats a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otcfm.train.config import TomlConfig, build_config
from otcfm.train.runfolder import KEEP_CHECKPOINTS, check_run_name

METHODS = ("otcfm", "icfm", "sbcfm")


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
    name: str = "otcfm"  # otcfm, icfm or sbcfm
    sigma: float = -1.0  # -1 = the method preset's default, written in by validate()


@dataclass
class ModelSection:
    width: int = 64
    depth: int = 3
    activation: str = "selu"


@dataclass
class OptimSection:
    steps: int = 5_000
    batch_size: int = 128  # cells drawn per time point and interval
    lr: float = 1e-3
    weight_decay: float = 1e-5


@dataclass
class EvalSection:
    left_out: int = -1  # index of the held-out time point (-1 = none)
    ode_steps: int = 100  # Euler steps per unit of index time
    log_every: int = 100
    checkpoint_every: int = 1_000
    keep_checkpoints: int = KEEP_CHECKPOINTS  # step checkpoints kept (the newest ones)


@dataclass
class TrajectoryConfig(TomlConfig):
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
        """Check every value (ValueError naming the bad one), then :meth:`resolve`."""
        o, e, d = self.optim, self.eval, self.data
        checks = [
            (self.method.name in METHODS,
             f"method.name must be one of {', '.join(METHODS)}, got {self.method.name!r}"),
            (self.method.sigma >= 0 or self.method.sigma == -1,
             f"method.sigma must be >= 0 (or -1 = the method's default), got "
             f"{self.method.sigma}"),
            (o.steps >= 1, f"optim.steps must be >= 1, got {o.steps}"),
            (o.batch_size >= 2, f"optim.batch_size must be >= 2, got {o.batch_size}"),
            (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
            (e.left_out >= -1, f"eval.left_out must be -1 (none) or a time index, got "
                               f"{e.left_out}"),
            (e.ode_steps >= 1, f"eval.ode_steps must be >= 1, got {e.ode_steps}"),
            (e.log_every >= 1 and e.checkpoint_every >= 1,
             "eval.log_every and eval.checkpoint_every must be >= 1"),
            (d.dims >= 0, f"data.dims must be >= 0 (0 = all features), got {d.dims}"),
            (d.n_cells >= 2, f"data.n_cells must be >= 2, got {d.n_cells}"),
            (d.obs_dim >= 3, f"data.obs_dim must be >= 3, got {d.obs_dim}"),
            (d.time_labels is None or (all(d.time_labels)
                                       and len(set(d.time_labels)) == len(d.time_labels)),
             f"data.time_order must list distinct, non-empty labels separated by commas, got "
             f"{d.time_order!r}"),
            (e.keep_checkpoints >= 1,
             f"eval.keep_checkpoints must be >= 1, got {e.keep_checkpoints}"),
        ]
        check_run_name(self.name)
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self.resolve()

    def resolve(self) -> TrajectoryConfig:
        """Write in the defaults left unset: sigma -1 becomes the method preset's sigma
        (``otcfm.matchers.preset_defaults``), so the saved config records the sigma used."""
        if self.method.sigma == -1:
            from otcfm.matchers import preset_defaults

            self.method.sigma = float(preset_defaults(self.method.name)["sigma"])
        return self
