"""Data: toy 2-D distributions, user point clouds from files, and seeded minibatches.

- :mod:`otcfm.data.toy`: named 2-D distributions and the paper's benchmark tasks
  (``toy.sample(name, n, generator=g)``, ``toy.task("gaussian-8gaussians")``).
- :func:`load_points` / :func:`save_points`: (n, d) arrays in .npy, .npz, .csv/.tsv/.txt.
- :func:`resolve_points`: a built-in distribution name or a file path -> points.
- :func:`sample_batch` / :class:`PointDataset`: random minibatches of a fixed point set.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from otcfm._utils import check_tensor
from otcfm.data import toy
from otcfm.data.files import SUPPORTED_EXTENSIONS, load_points, resolve_points, save_points

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "PointDataset",
    "load_points",
    "resolve_points",
    "sample_batch",
    "save_points",
    "toy",
]


def _batch_size(batch_size: int, n: int) -> int:
    if isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    try:
        b = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}") from None
    if not 1 <= b <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the number of points), got {b}")
    return b


def _perm(n: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=device)


def sample_batch(x: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch_size`` rows of ``x`` (n, ...) drawn uniformly without replacement (seeded).

    Returns (batch_size, ...) on ``x``'s device. Successive calls draw independent batches
    (a row may appear in two batches, never twice in one).
    """
    check_tensor("x", x)
    b = _batch_size(batch_size, x.shape[0])
    idx = _perm(x.shape[0], generator)[:b]
    return x[idx.to(x.device)]


@dataclass(frozen=True, eq=False)
class PointDataset:
    """A fixed set of points ``x`` (n, ...) with seeded minibatch sampling.

    Indexable like a ``torch.utils.data.Dataset`` (``len(ds)``, ``ds[i]``).
    """

    x: Tensor

    def __post_init__(self) -> None:
        check_tensor("x", self.x)

    @classmethod
    def from_spec(
        cls, spec: str, n: int | None = None, generator: torch.Generator | None = None
    ) -> PointDataset:
        """Build from a built-in distribution name (``n`` points) or a file (see resolve_points)."""
        return cls(resolve_points(spec, n, generator))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int | slice | Tensor) -> Tensor:
        return self.x[i]

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """One random minibatch, without replacement within it (see :func:`sample_batch`)."""
        return sample_batch(self.x, batch_size, generator)

    def epoch(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = True
    ) -> Iterator[Tensor]:
        """Minibatches covering one random permutation of the points (each row at most once).

        The last short batch is dropped unless ``drop_last=False``.
        """
        b = _batch_size(batch_size, len(self))  # checked now, not at the first next()
        perm = _perm(len(self), generator).to(self.x.device)
        stop = len(self) - len(self) % b if drop_last else len(self)
        return (self.x[perm[start : start + b]] for start in range(0, stop, b))
