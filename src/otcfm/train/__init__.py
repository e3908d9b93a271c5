"""Training: the loop, configs, checkpoints and evaluation of runs."""

from otcfm.train.config import RunConfig
from otcfm.train.loop import Trainer, TrainResult, build_matcher, build_model, train

__all__ = ["RunConfig", "Trainer", "TrainResult", "build_matcher", "build_model", "train"]
