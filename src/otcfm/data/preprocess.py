"""The cells' representation: PCA to k dims and/or per-feature standardisation.

:func:`fit_preprocessor` fits it with scikit-learn (extra ``singlecell``) and returns a
:class:`Preprocessor`: a plain affine map stored as tensors, serialisable with ``to_dict`` /
``from_dict``, whose ``inverse_transform`` maps model predictions back to the original
feature space (docs/reference.md §6: 5 PCs, whitened).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from otcfm._utils import check_tensor

__all__ = ["Preprocessor", "fit_preprocessor"]

_EXTRA = "pip install 'otcfm[singlecell]'"


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """A fitted affine map ``z = ((x - mean) @ components.T - center) / scale``.

    mean: (D,) input centre; components: (k, D) orthonormal PCA rows (or a column selection);
    center, scale: (k,) standardisation of the projected features. ``inverse_transform``
    maps back to the D input features (into the span of the components when k < D).
    """

    mean: Tensor
    components: Tensor
    center: Tensor
    scale: Tensor
    description: str = ""

    def __post_init__(self) -> None:
        comp = self.components
        k, d = comp.shape
        if self.mean.shape != (d,) or self.center.shape != (k,) or self.scale.shape != (k,):
            raise ValueError(
                f"inconsistent preprocessor shapes: mean {tuple(self.mean.shape)}, components "
                f"{tuple(comp.shape)}, center {tuple(self.center.shape)}, scale "
                f"{tuple(self.scale.shape)}"
            )
        if not bool((self.scale > 0).all()):
            raise ValueError("preprocessor scales must be > 0")

    @property
    def in_dim(self) -> int:
        """Number of input features D (columns of ``components``)."""
        return int(self.components.shape[1])

    @property
    def out_dim(self) -> int:
        """Number of output features k (rows of ``components``)."""
        return int(self.components.shape[0])

    def transform(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, k) float32."""
        x = self._check(x, self.in_dim, "transform")
        z = (x.double() - self.mean.double()) @ self.components.double().T
        return ((z - self.center.double()) / self.scale.double()).float()

    def inverse_transform(self, z: Tensor) -> Tensor:
        """(N, k) -> (N, D) float32, back in the original features."""
        z = self._check(z, self.out_dim, "inverse_transform")
        y = z.double() * self.scale.double() + self.center.double()
        return (y @ self.components.double() + self.mean.double()).float()

    def _check(self, x: Tensor, d: int, what: str) -> Tensor:
        check_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"{what} expects (N, {d}) features, got shape {tuple(x.shape)}")
        return x

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and a string: JSON- and torch.save-friendly."""
        return {
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor from the dict of its state; ValueError if a key is missing."""
        keys = ("mean", "components", "center", "scale")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"preprocessor state lacks {missing}")
        kw = {k: torch.as_tensor(d[k], dtype=torch.float64) for k in keys}
        if kw["components"].dim() != 2:
            raise ValueError("preprocessor components must be a (k, D) matrix")
        return cls(**kw, description=str(d.get("description", "")))


def fit_preprocessor(
    x: Tensor, *, dims: int | None = 5, pca: bool = True, standardize: bool = True
) -> Preprocessor:
    """Fit the paper's representation on all cells ``x`` (N, D) (docs/reference.md §6).

    dims: features kept: the first ``dims`` principal components (``pca=True``, scikit-learn
        PCA) or the first ``dims`` columns as they are (``pca=False``, e.g. TrajectoryNet's
        ``pcs``); None keeps all D.
    standardize: then scale each kept feature to mean 0, variance 1 (scikit-learn
        StandardScaler, the paper's "whitening").
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError(f"preprocessing needs scikit-learn: {_EXTRA}") from None
    check_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    n, d = x.shape
    k = d if dims is None else int(dims)
    if isinstance(dims, bool) or not 1 <= k <= d:
        raise ValueError(f"dims must be an int in [1, {d}] (the number of features) or None, "
                         f"got {dims!r}")
    if pca and k > n:
        raise ValueError(f"dims={k} principal components need at least {k} cells, got {n}")
    arr = x.detach().cpu().double().numpy()
    if pca:
        model = PCA(n_components=k, svd_solver="full").fit(arr)
        mean = torch.from_numpy(model.mean_.copy())
        comp = torch.from_numpy(model.components_.copy())
        what = f"PCA to {k} of {d} features"
    else:
        mean = torch.zeros(d, dtype=torch.float64)
        comp = torch.eye(d, dtype=torch.float64)[:k]
        what = f"first {k} of {d} features"
    proj = (arr - mean.numpy()) @ comp.numpy().T
    if standardize:
        scaler = StandardScaler().fit(proj)
        center = torch.from_numpy(scaler.mean_.copy())
        scale = torch.from_numpy(np.where(scaler.scale_ > 0, scaler.scale_, 1.0))
        what += ", standardised (StandardScaler)"
    else:
        center, scale = torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64)
    return Preprocessor(mean, comp, center, scale, what)
