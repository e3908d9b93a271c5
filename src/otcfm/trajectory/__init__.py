"""Trajectory inference from time-course snapshots.

See Tong et al. 2024, single-cell trajectory inference.

- :func:`fit_flow` / :class:`Fitter`: one time-conditioned flow through populations at times
  0..K (index time), multi-marginal OT-CFM / I-CFM / SB-CFM, optional left-out time.
- :func:`push`, :func:`predict_at`, :func:`trajectories`: populations at any time and paths
  of individual cells; :func:`evaluate_left_out`, :func:`interpolation_baseline`: the
  leave-one-out protocol and its model-free baseline.
- :mod:`otcfm.trajectory.run`: run folders; :mod:`otcfm.trajectory.cli`:
  ``otcfm trajectory fit | predict | evaluate``.
"""

from otcfm.trajectory.fit import (
    FitSpec,
    Fitter,
    FlowFit,
    build_matcher,
    fit_flow,
    intervals,
    multimarginal_loss,
)
from otcfm.trajectory.predict import (
    SDE,
    Score,
    evaluate_intervals,
    evaluate_left_out,
    interpolation_baseline,
    predict_at,
    predict_left_out,
    push,
    score,
    trajectories,
)

__all__ = [
    "FitSpec",
    "Fitter",
    "FlowFit",
    "SDE",
    "Score",
    "build_matcher",
    "evaluate_intervals",
    "evaluate_left_out",
    "fit_flow",
    "interpolation_baseline",
    "intervals",
    "multimarginal_loss",
    "predict_at",
    "predict_left_out",
    "push",
    "score",
    "trajectories",
]
