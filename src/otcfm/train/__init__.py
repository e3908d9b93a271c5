"""Training: the engine, configs, run folders, checkpoints and evaluation of runs.

Training: the one engine (pluggable objectives), configs, run folders, checkpoints and
evaluation of runs.
"""

from otcfm.train.config import RunConfig
from otcfm.train.images import ImageObjective
from otcfm.train.loop import (
    Engine,
    LoopSettings,
    Trainer,
    TrainResult,
    build_matcher,
    build_model,
    train,
)
from otcfm.train.objectives import Objective, PairObjective
from otcfm.train.runfolder import RunFolder

__all__ = [
    "Engine",
    "ImageObjective",
    "LoopSettings",
    "Objective",
    "PairObjective",
    "RunConfig",
    "RunFolder",
    "Trainer",
    "TrainResult",
    "build_matcher",
    "build_model",
    "train",
]
