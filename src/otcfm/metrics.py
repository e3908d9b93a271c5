"""Distribution metrics of the paper (docs/reference.md §3): exact W1/W2, MMD, path energy, NPE.

Inputs are torch tensors (any device or dtype, bf16 included) or numpy arrays of shape
(n, *event); trailing dimensions are flattened and 1-D inputs are read as n scalar samples.
Everything is computed in float64 on the CPU and returned as a Python float.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["wasserstein", "mmd", "path_energy", "normalized_path_energy", "MMD_BANDWIDTHS"]

MMD_BANDWIDTHS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
_BLOCK = 1 << 22  # entries of one kernel/cost block (32 MiB in float64)
_CDIST_MAX_DIM = 64  # up to this many features, distances from exact differences (scipy cdist)


# --------------------------------------------------------------------------- inputs
def _as_samples(name: str, x: Any) -> np.ndarray:
    """(n, *event) tensor or array -> finite float64 numpy array (n, D)."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    elif isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
        arr = x.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty batch (n, ...), got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {bad} NaN or inf value(s) (shape {arr.shape})")
    return arr


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _as_samples("x", x), _as_samples("y", y)
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(
            f"x and y must have the same number of features per sample, got {xa.shape[1]} "
            f"and {ya.shape[1]}"
        )
    return xa, ya


def _weights(name: str, w: Any, n: int) -> np.ndarray:
    """Uniform if None; otherwise non-negative, finite, length n, normalised to sum 1."""
    if w is None:
        return np.full(n, 1.0 / n)
    if isinstance(w, torch.Tensor):
        w = w.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(w, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have one weight per sample ({n}), got {arr.shape[0]}")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero")
    return arr / arr.sum()


# --------------------------------------------------------------------------- distances
def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, m), float64, >= 0."""
    if x.shape[1] <= _CDIST_MAX_DIM:
        from scipy.spatial.distance import cdist  # scipy.spatial loads slowly

        return cdist(x, y, metric="sqeuclidean")
    shift = np.concatenate([x, y]).mean(axis=0)  # centring limits cancellation in the expansion
    xc, yc = x - shift, y - shift
    d2 = (xc * xc).sum(1)[:, None] + (yc * yc).sum(1)[None, :] - 2.0 * (xc @ yc.T)
    return np.maximum(d2, 0.0)


def _cost(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    d2 = _sq_dists(x, y)
    if p == 2:
        return d2
    return np.sqrt(d2) if p == 1 else np.sqrt(d2) ** p


def wasserstein(
    x: Any, y: Any, p: float = 2, *, a: Any = None, b: Any = None, max_iter: int | None = None
) -> float:
    """Exact p-Wasserstein distance ``(min_pi sum pi_ij |x_i - y_j|^p)^(1/p)`` (Euclidean).

    x: (n, *event), y: (m, *event); a, b: optional sample weights (normalised to sum 1),
    uniform by default. Solved exactly with POT's network simplex (``ot.emd2``) on the float64
    cost matrix, with its iteration cap lifted (``max_iter``, default ``100 n m``); if the solver
    still reports a non-optimal exit a ``RuntimeWarning`` names the code. Needs an n x m
    float64 cost matrix in memory (800 MB at 10,000 x 10,000).
    """
    p = _check_p(p)
    xa, ya = _pair(x, y)
    n, m = xa.shape[0], ya.shape[0]
    wa, wb = _weights("a", a, n), _weights("b", b, m)
    cost = _cost(xa, ya, p)
    iters = max(100 * n * m, 1_000_000) if max_iter is None else int(max_iter)
    import ot  # POT imports scikit-learn and more: load it on first use, not with the module

    with warnings.catch_warnings():  # POT's generic warning is replaced by ours (with numbers)
        warnings.filterwarnings("ignore", message="numItermax reached", category=UserWarning)
        value, log = ot.emd2(wa, wb, cost, numItermax=iters, log=True)
    code = int(log.get("result_code", 1))
    if code != 1:
        warnings.warn(
            f"exact OT solver did not report optimality (result_code={code}: "
            f"{log.get('warning')!r}) for a {n} x {m} problem with numItermax={iters}; "
            f"the returned W{p:g} = {max(float(value), 0.0) ** (1.0 / p):.6g} is not exact "
            "(the unfinished plan may violate the marginals); raise max_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    return max(float(value), 0.0) ** (1.0 / p)


def _check_p(p: Any) -> float:
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise TypeError(f"p must be a number >= 1, got {p!r}") from None
    if not (math.isfinite(v) and v >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    return v


# --------------------------------------------------------------------------- MMD
def _kernel_sum(x: np.ndarray, y: np.ndarray, inv_two_s2: np.ndarray) -> float:
    """sum_ij k(x_i, y_j) with k = sum_s exp(-|x - y|^2 / (2 s^2)), in row blocks."""
    rows = max(1, _BLOCK // max(1, y.shape[0]))
    total = 0.0
    for start in range(0, x.shape[0], rows):
        d2 = _sq_dists(x[start : start + rows], y)
        for g in inv_two_s2:
            total += float(np.exp(-g * d2).sum())
    return total


def mmd(
    x: Any, y: Any, bandwidths: Sequence[float] = MMD_BANDWIDTHS, *, squared: bool = True
) -> float:
    """Biased (V-statistic) MMD between samples x (n, *event) and y (m, *event).

    Kernel: the RBF mixture ``k(u, v) = sum_s exp(-|u - v|^2 / (2 s^2))`` over ``bandwidths``
    (default {0.01, 0.1, 1, 10, 100}; a sum, not a mean, of the kernels). Returns
    ``MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` (all pairs, diagonals included;
    clipped at 0 against round-off), or its square root with ``squared=False``. Computed in
    row blocks, so memory stays small for 10,000 x 10,000.
    """
    xa, ya = _pair(x, y)
    bws = np.asarray(list(bandwidths), dtype=np.float64).reshape(-1)
    if bws.size == 0 or not np.isfinite(bws).all() or (bws <= 0).any():
        raise ValueError(f"bandwidths must be finite and > 0, got {list(bandwidths)}")
    g = 1.0 / (2.0 * bws**2)
    n, m = xa.shape[0], ya.shape[0]
    kxx = _kernel_sum(xa, xa, g) / (n * n)
    kyy = _kernel_sum(ya, ya, g) / (m * m)
    kxy = _kernel_sum(xa, ya, g) / (n * m)
    value = max(kxx + kyy - 2.0 * kxy, 0.0)
    return value if squared else math.sqrt(value)


# --------------------------------------------------------------------------- path energy
def path_energy(trajectory_or_energy: Any) -> float:
    """Mean over samples of the per-sample path energy ``integral ||v||^2 dt``.

    Accepts a ``Trajectory`` (anything with an ``.energy`` attribute) or the (B,) energies.
    """
    e = getattr(trajectory_or_energy, "energy", trajectory_or_energy)
    if e is None:
        raise ValueError("the trajectory carries no energy; integrate with energy=True")
    arr = _as_samples("energy", e).reshape(-1)
    if (arr < 0).any():
        raise ValueError(f"path energies must be >= 0, got min {arr.min():.6g}")
    return float(arr.mean())


def normalized_path_energy(pe: float, w2_squared: float) -> float:
    """NPE = |PE - W2^2| / W2^2 (docs/reference.md §3); 0 iff the flow solves dynamic OT."""
    pe_v, w2_v = float(pe), float(w2_squared)
    if not math.isfinite(pe_v) or pe_v < 0:
        raise ValueError(f"pe must be finite and >= 0, got {pe!r}")
    if not math.isfinite(w2_v) or w2_v <= 0:
        raise ValueError(f"w2_squared must be finite and > 0, got {w2_squared!r}")
    return abs(pe_v - w2_v) / w2_v
