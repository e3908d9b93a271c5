"""Time-course snapshots: populations of cells observed at times t_0 < t_1 < ... < t_K.

Cells are measured destructively, so a time course is a set of unpaired populations (no cell
is seen twice). :class:`TimeSeries` holds them as one feature matrix (N, d) with a time label
per row. Reading and writing files (.h5ad, .npz, .csv) is :mod:`otcfm.data.timeseries_files`;
the representation the models see (PCA, standardisation) is :mod:`otcfm.data.preprocess`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from otcfm._utils import check_tensor

__all__ = ["TimeSeries"]



# --------------------------------------------------------------------------- the data model
@dataclass(frozen=True, eq=False)
class TimeSeries:
    """Populations observed at increasing times.

    Attributes:
        x: (N, d) float32 features of every cell.
        labels: (N,) int64 time index of each cell, in [0, K].
        times: the K + 1 observation times, strictly increasing (e.g. days).
        time_names: a display name per time (the labels found in the file).
        feature_names: a name per feature column, or None.

    ``at(k)`` is the population at ``times[k]``. Models use the *index* time: time ``k`` is
    ``times[k]``; :meth:`to_index` / :meth:`from_index` convert piecewise-linearly.
    """

    x: Tensor
    labels: Tensor
    times: tuple[float, ...]
    time_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = check_tensor("x", self.x)
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(
                f"x must be a floating (N, d) matrix of features, got {x.dtype} "
                f"shape {tuple(x.shape)}"
            )
        object.__setattr__(self, "x", x.to(torch.float32).contiguous())
        labels = self.labels
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.shape != (x.shape[0],):
            raise ValueError(
                f"labels must hold one integer time index per cell, shape ({x.shape[0]},), "
                f"got dtype {labels.dtype} shape {tuple(labels.shape)}"
            )
        times = tuple(float(t) for t in self.times)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "labels", labels.to(torch.long).contiguous())
        _check_times(times)
        k = len(times)
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= k:
            raise ValueError(
                f"labels must lie in [0, {k}) (one index per time), got min "
                f"{int(self.labels.min())} max {int(self.labels.max())}"
            )
        counts = torch.bincount(self.labels, minlength=k)
        empty = [times[i] for i in range(k) if int(counts[i]) == 0]
        if empty:
            raise ValueError(f"no cells at time(s) {empty}; every time needs a population")
        names = self.time_names
        if names is None:
            names = tuple(f"{t:g}" for t in times)
        if len(names) != k:
            raise ValueError(f"time_names needs {k} entries (one per time), got {len(names)}")
        object.__setattr__(self, "time_names", tuple(str(n) for n in names))
        if self.feature_names is not None:
            fn = tuple(str(n) for n in self.feature_names)
            if len(fn) != x.shape[1]:
                raise ValueError(
                    f"feature_names needs {x.shape[1]} entries (one per column), got {len(fn)}"
                )
            object.__setattr__(self, "feature_names", fn)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_populations(
        cls, populations: Sequence[Tensor], times: Sequence[float] | None = None, **kw: Any
    ) -> TimeSeries:
        """Stack populations [(n_k, d), ...] observed at ``times`` (default 0, 1, ..., K)."""
        pops = list(populations)
        if len(pops) < 2:
            raise ValueError(f"a time series needs at least 2 populations, got {len(pops)}")
        for k, p in enumerate(pops):
            check_tensor(f"populations[{k}]", p)
        times = list(range(len(pops))) if times is None else list(times)
        if len(times) != len(pops):
            raise ValueError(f"got {len(pops)} populations but {len(times)} times")
        labels = torch.cat([torch.full((p.shape[0],), k, dtype=torch.long) for k, p in
                            enumerate(pops)])
        return cls(torch.cat([p.float() for p in pops]), labels, tuple(times), **kw)

    # ------------------------------------------------------------------ views
    @property
    def dim(self) -> int:
        """Number of features per cell."""
        return int(self.x.shape[1])

    @property
    def n_times(self) -> int:
        """Number of observation times."""
        return len(self.times)

    @property
    def counts(self) -> tuple[int, ...]:
        """Cells per time."""
        return tuple(int(c) for c in torch.bincount(self.labels, minlength=self.n_times))

    def at(self, k: int) -> Tensor:
        """(n_k, d) population at ``times[k]`` (negative k counts from the end)."""
        if isinstance(k, bool) or not isinstance(k, int) or not -self.n_times <= k < self.n_times:
            raise IndexError(f"time index must be an int in [0, {self.n_times}), got {k!r}")
        return self.x[self.labels == (k % self.n_times)]

    def populations(self) -> list[Tensor]:
        """The cells of every observation time, in time order (one (n_k, d) tensor each)."""
        return [self.at(k) for k in range(self.n_times)]

    def map(self, fn: Callable[[Tensor], Tensor], feature_names: Any = None) -> TimeSeries:
        """The same cells with features ``fn(x)`` (e.g. a fitted preprocessor's transform)."""
        return TimeSeries(fn(self.x), self.labels, self.times, self.time_names, feature_names)

    def to_index(self, t: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Observation time(s) -> index time (piecewise linear; exact at the observed times).

        Times outside [times[0], times[-1]] extrapolate with the nearest interval's slope.
        """
        return _piecewise(np.asarray(t, dtype=np.float64), np.asarray(self.times),
                          np.arange(self.n_times, dtype=np.float64))

    def from_index(self, tau: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Index time(s) -> observation time (inverse of :meth:`to_index`)."""
        return _piecewise(np.asarray(tau, dtype=np.float64),
                          np.arange(self.n_times, dtype=np.float64), np.asarray(self.times))

    def __repr__(self) -> str:
        return (
            f"TimeSeries(cells={self.x.shape[0]}, dim={self.dim}, times={list(self.times)}, "
            f"counts={list(self.counts)})"
        )


def _piecewise(v: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through (xp, fp), extended linearly; keeps v's shape."""
    shape = v.shape
    v = np.atleast_1d(v).astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"times must be finite, got {v.tolist()}")
    out = np.interp(v, xp, fp)
    lo, hi = v < xp[0], v > xp[-1]
    out[lo] = fp[0] + (v[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[hi] = fp[-1] + (v[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out.reshape(shape)


def _check_times(times: tuple[float, ...]) -> None:
    if len(times) < 2:
        raise ValueError(
            f"a time series needs at least 2 time points, got {len(times)} ({list(times)})"
        )
    if not all(math.isfinite(t) for t in times):
        raise ValueError(f"times must be finite, got {list(times)}")
    if any(b <= a for a, b in zip(times[:-1], times[1:], strict=True)):
        raise ValueError(f"times must be strictly increasing, got {list(times)}")


