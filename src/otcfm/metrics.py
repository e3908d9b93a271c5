"""Distribution metrics of the paper.

Distribution metrics of the paper (docs/reference.md §3): exact W1/W2, MMD, path energy, NPE,
the Fréchet distance between feature sets and FID (Inception features of images).

Inputs are torch tensors (any device or dtype, bf16 included) or numpy arrays of shape
(n, ``*event``); trailing dimensions are flattened and 1-D inputs are read as n scalar samples.
Everything is computed in float64 on the CPU and returned as a Python float.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcfm._ot.assignment import auto_solver
from otcfm._ot.auction import exact_assignment

__all__ = [
    "wasserstein", "mmd", "path_energy", "normalized_path_energy", "MMD_BANDWIDTHS",
    "FeatureStats", "feature_stats", "frechet_distance", "frechet_distance_from_stats",
    "load_fid_stats", "save_fid_stats", "load_inception", "inception_features", "fid",
]

MMD_BANDWIDTHS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
_BLOCK = 1 << 22  # entries of one kernel/cost block (32 MiB in float64)
_CDIST_MAX_DIM = 64  # up to this many features, distances from exact differences (scipy cdist)


# --------------------------------------------------------------------------- inputs
def _as_samples(name: str, x: Any) -> np.ndarray:
    """(n, ``*event``) tensor or array -> finite float64 numpy array (n, D)."""
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

    x: (n, ``*event``), y: (m, ``*event``); a, b: optional sample weights (normalised to sum 1),
    uniform by default. Equal sizes with uniform weights have an optimal plan that is a
    permutation: from n = 256 with numba installed (extra ``fast``) it comes from the certified
    auction of ``otcfm._ot.auction``, whose feasible dual bounds the relative gap of W_p^p
    to the optimum by 1e-9 (about 2x to 3x faster than network simplex in 2-D at 1,000 to
    10,000 points, docs/results/exact_solvers.md). Otherwise, and for any batch the auction
    cannot certify: POT's network simplex (``ot.emd2``) on the float64 cost matrix, with its
    iteration cap lifted (``max_iter``, default ``100 n m``); if the solver still reports a
    non-optimal exit a ``RuntimeWarning`` names the code. Needs an n x m float64 cost matrix
    in memory (800 MB at 10,000 x 10,000).

    Examples:
        Translating a sample by c moves it by exactly ``|c|`` in W2:

        >>> import torch
        >>> from otcfm.metrics import wasserstein
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 2, generator=g)
        >>> round(wasserstein(x, x + torch.tensor([3.0, 4.0])), 4)
        5.0
        >>> round(wasserstein(x, x), 4)
        0.0
    """
    p = _check_p(p)
    xa, ya = _pair(x, y)
    n, m = xa.shape[0], ya.shape[0]
    if a is None and b is None and n == m and auto_solver(n, xa.shape[1]) == "auction":
        found = exact_assignment(_cost(xa, ya, p), overwrite=True)
        if found is not None:
            return max(found.cost / n, 0.0) ** (1.0 / p)
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
    """sum_ij k(x_i, y_j) with k = sum_s exp(-``|x - y|^2`` / (2 s^2)), in row blocks."""
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
    """Biased (V-statistic) MMD between samples x (n, ``*event``) and y (m, ``*event``).

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
    """NPE = ``|PE - W2^2|`` / W2^2 (docs/reference.md §3); 0 iff the flow solves dynamic OT."""
    pe_v, w2_v = float(pe), float(w2_squared)
    if not math.isfinite(pe_v) or pe_v < 0:
        raise ValueError(f"pe must be finite and >= 0, got {pe!r}")
    if not math.isfinite(w2_v) or w2_v <= 0:
        raise ValueError(f"w2_squared must be finite and > 0, got {w2_squared!r}")
    return abs(pe_v - w2_v) / w2_v


# --------------------------------------------------------------------------- Fréchet distance
_PSD_RTOL = 1e-5  # eigenvalues below -_PSD_RTOL * (largest |eigenvalue|) mean "not a covariance"
_SYM_RTOL = 1e-6  # asymmetry allowed in a covariance, relative to its largest entry


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean ``mu`` (D,) and covariance ``cov`` (D, D) of a feature set, float64 numpy arrays.

    ``n`` is the number of samples behind them, or None when unknown (a statistics file).
    """

    mu: np.ndarray
    cov: np.ndarray
    n: int | None = None


def _as_float64(name: str, x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_stats(name: str, mu: Any, cov: Any) -> tuple[np.ndarray, np.ndarray]:
    """(D,) mean and (D, D) finite, symmetric covariance -> float64, exactly symmetrised."""
    m, c = _as_float64(f"{name} mean", mu), _as_float64(f"{name} covariance", cov)
    if m.ndim != 1 or m.shape[0] == 0:
        raise ValueError(f"{name} mean must be a non-empty vector (D,), got shape {m.shape}")
    d = m.shape[0]
    if c.shape != (d, d):
        raise ValueError(f"{name} covariance must have shape ({d}, {d}) to match its mean, "
                         f"got {c.shape}")
    if not (np.isfinite(m).all() and np.isfinite(c).all()):
        raise ValueError(f"{name} mean or covariance contains NaN or inf")
    scale = float(np.abs(c).max())
    asym = float(np.abs(c - c.T).max())
    if asym > _SYM_RTOL * scale:
        raise ValueError(f"{name} covariance is not symmetric (max |C - C^T| = {asym:.3g}, "
                         f"max |C| = {scale:.3g})")
    return m, (c + c.T) / 2.0


def _psd_eigh(name: str, c: np.ndarray, *, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigen-decomposition of a symmetric matrix that must be PSD.

    Eigenvalues (ascending; round-off negatives clipped to 0) and, if asked, eigenvectors of
    a symmetric matrix that must be PSD.
    """
    w, v = np.linalg.eigh(c) if vectors else (np.linalg.eigvalsh(c), None)
    top = float(np.abs(w).max())
    if w[0] < -_PSD_RTOL * top:
        raise ValueError(f"{name} covariance is not positive semi-definite (smallest eigenvalue "
                         f"{w[0]:.3g}, largest {w[-1]:.3g})")
    return np.clip(w, 0.0, None), v


def _drop_noise(w: np.ndarray) -> np.ndarray:
    """Eigenvalues below round-off (D eps max|w|, numpy's matrix-rank tolerance) set to 0.

    Their square roots (~1e-8 ``|w|`` each) would otherwise add up to a visible error on
    rank-deficient covariances; a true eigenvalue that small changes the result by no more.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * float(np.abs(w).max())
    return np.where(w > tol, w, 0.0)


def _frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray,
             name_a: str, name_b: str) -> float:
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same feature dimension, got "
                         f"{mu_a.shape[0]} and {mu_b.shape[0]}")
    wa, va = _psd_eigh(name_a, cov_a, vectors=True)
    wb, _ = _psd_eigh(name_b, cov_b, vectors=False)
    assert va is not None
    root_a = (va * np.sqrt(_drop_noise(wa))) @ va.T  # A^{1/2}, symmetric PSD
    inner = root_a @ cov_b @ root_a  # A^{1/2} B A^{1/2}: symmetric PSD, same spectrum as A B
    inner = (inner + inner.T) / 2.0
    cross = float(np.sqrt(_drop_noise(np.linalg.eigvalsh(inner))).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff) + float(wa.sum()) + float(wb.sum()) - 2.0 * cross
    return max(value, 0.0)


def frechet_distance_from_stats(mu_a: Any, cov_a: Any, mu_b: Any, cov_b: Any) -> float:
    """Fréchet distance between the Gaussians N(mu_a, A) and N(mu_b, B), in float64.

    The value computed is::

        d^2 = ||mu_a - mu_b||^2 + tr(A) + tr(B) - 2 tr((A^{1/2} B A^{1/2})^{1/2})

    the squared 2-Wasserstein distance between two Gaussians (Dowson & Landau 1982; FID is
    this distance between Inception features of real and generated images, Heusel et al. 2017,
    "GANs trained by a two time-scale update rule converge to a local Nash equilibrium").
    Returns d^2, the squared distance, as FID reports it. Both square roots come from
    symmetric eigen-decompositions (``numpy.linalg.eigh``) of PSD matrices, never a general
    matrix square root; eigenvalues below round-off (D eps max|eigenvalue|, negatives included)
    are set to 0, so rank-deficient covariances give a finite, accurate value; the result is
    clipped at 0. Means (D,), covariances (D, D): tensors or arrays. A covariance that is not
    symmetric, or has an eigenvalue below -1e-5 times its largest, is refused (ValueError).
    """
    ma, ca = _check_stats("a", mu_a, cov_a)
    mb, cb = _check_stats("b", mu_b, cov_b)
    return _frechet(ma, ca, mb, cb, "a", "b")


def feature_stats(feats: Any) -> FeatureStats:
    """Mean and unbiased covariance of features, in float64.

    Mean and unbiased covariance (ddof = 1, as ``numpy.cov`` and FID's reference statistics)
    of features (n, ``*event``), n >= 2, in float64.
    """
    x = _as_samples("feats", feats)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"feats must hold at least 2 samples for a covariance, got {n}")
    mu = x.mean(axis=0)
    xc = x - mu
    cov = (xc.T @ xc) / (n - 1)
    return FeatureStats(mu=mu, cov=(cov + cov.T) / 2.0, n=n)


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n_a, D) and (n_b, D).

    Each set's mean and unbiased covariance (ddof = 1, see ``feature_stats``) go into
    ``frechet_distance_from_stats`` (its docstring has the formula and its sources):
    ``d^2 = ||mu_a - mu_b||^2 + tr(A) + tr(B) - 2 tr((A^{1/2} B A^{1/2})^{1/2})``, computed in
    float64. Finite and >= 0 also when n < D or features are duplicated (singular covariances).
    Reported as "FD (<which> features)"; it is FID only on the Inception features of ``fid``.
    """
    a, b = feature_stats(feats_a), feature_stats(feats_b)
    return _frechet(a.mu, a.cov, b.mu, b.cov, "feats_a", "feats_b")


# --------------------------------------------------------------------------- FID
FID_STATS_KEYS: tuple[str, str] = ("mu", "sigma")  # clean-fid's and pytorch-fid's .npz keys
_INCEPTION_SIZE = 299  # Inception-v3's input resolution
_STATS_FORMAT = (
    "a .npz with arrays 'mu' (D,) and 'sigma' (D, D), as clean-fid and pytorch-fid write"
)


def load_fid_stats(path: str | os.PathLike[str]) -> FeatureStats:
    """Read reference statistics ``mu`` and ``sigma`` from a .npz file.

    Reference statistics from a .npz holding ``mu`` (D,) and ``sigma`` (D, D) (clean-fid's
    format; pytorch-fid's ``--save-stats`` writes the same keys). Read without pickles.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"FID statistics file {p} not found (expected {_STATS_FORMAT})")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"FID statistics file {p} is not a readable .npz (expected "
                         f"{_STATS_FORMAT}): {_first_line(e)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"FID statistics file {p} holds one array, not {_STATS_FORMAT}")
    with data:
        missing = [k for k in FID_STATS_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"FID statistics file {p} lacks {missing} (has {sorted(data.files)};"
                             f" expected {_STATS_FORMAT})")
        try:
            mu, sigma = data["mu"], data["sigma"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"FID statistics file {p} could not be read (expected "
                             f"{_STATS_FORMAT}): {_first_line(e)}") from None
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise ValueError(f"FID statistics file {p}: 'mu' and 'sigma' must be float arrays, got "
                         f"{mu.dtype} and {sigma.dtype}")
    m, c = _check_stats(f"FID statistics file {p}:", mu, sigma)
    return FeatureStats(mu=m, cov=c)


def save_fid_stats(path: str | os.PathLike[str], stats: FeatureStats, *,
                   overwrite: bool = False) -> Path:
    """Write reference statistics as ``load_fid_stats`` reads them, atomically.

    Write ``stats`` as ``load_fid_stats`` reads them (clean-fid's format: a compressed .npz
    with float64 ``mu`` and ``sigma``), whole or not at all (a temporary file, then a rename).
    An existing file is replaced only with ``overwrite=True`` (FileExistsError otherwise).
    """
    p = Path(path)
    mu, cov = _check_stats(f"stats for {p}:", stats.mu, stats.cov)
    if p.exists() and not overwrite:
        raise FileExistsError(f"FID statistics file {p} exists; pass overwrite=True to replace it")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mu=mu, sigma=cov)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def load_inception(path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
                   ) -> torch.nn.Module:
    """Load a TorchScript feature network.

    The TorchScript feature network at ``path`` (``torch.jit.load``), on ``device``, in eval
    mode. For FID: ``inception-2015-12-05.pt``, the TorchScript Inception-v3 of the standard FID
    code (StyleGAN2-ADA's metrics, clean-fid's legacy_tensorflow mode); otcfm never downloads
    it. Pickled networks (.pkl) are refused: unpickling runs code.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Inception network file {p} not found (expected a TorchScript "
                                "file such as inception-2015-12-05.pt; otcfm never downloads it)")
    try:
        with warnings.catch_warnings():  # recent torch deprecates TorchScript; the FID
            # network exists only in that format, so the notice would only be noise here
            warnings.filterwarnings("ignore", message=".*jit.load.*", category=DeprecationWarning)
            net = torch.jit.load(str(p), map_location=torch.device(device))
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"Inception network file {p} is not a TorchScript archive "
                         f"(torch.jit.load: {_first_line(e)}); expected a file such as "
                         "inception-2015-12-05.pt") from None
    return net.eval()


def _takes_return_features(net: torch.nn.Module) -> bool:
    schema = getattr(getattr(net, "forward", None), "schema", None)
    if schema is not None:  # a TorchScript method
        return any(a.name == "return_features" for a in schema.arguments)
    return "return_features" in inspect.signature(net.forward).parameters


def _image_batches(images: Any, batch_size: int) -> Iterator[torch.Tensor]:
    batches = [images] if isinstance(images, torch.Tensor) else images
    for batch in batches:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"images must be a tensor (n, C, H, W) or an iterable of them, got "
                            f"{type(batch).__name__}")
        if batch.ndim > 0 and batch.shape[0] == 0:
            continue
        yield from torch.split(batch, batch_size)


def _to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] (or uint8 pixels) -> uint8 (B, 3, H, W) in [0, 255]."""
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, C, H, W) with C = 1 or 3, got "
                         f"{tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        pixels = batch
    else:
        x = batch.detach().to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf values")
        # the quantisation of saved images: floor(127.5 x + 128) clipped to [0, 255]
        pixels = (x * 127.5 + 128.0).clamp_(0.0, 255.0).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def _feature_batches(
    images: Any, network: str | os.PathLike[str] | torch.nn.Module, batch_size: int,
    device: str | torch.device,
) -> Iterator[np.ndarray]:
    """(B, D) float64 features of each batch of ``images``, in order (see inception_features)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = torch.device(device)
    net = network if isinstance(network, torch.nn.Module) else load_inception(network,
                                                                              device=dev)
    with_flag = _takes_return_features(net)
    with torch.no_grad():
        for batch in _image_batches(images, batch_size):
            pixels = _to_pixels(batch).to(dev)
            if with_flag:
                feats = net(pixels, return_features=True)
            else:
                x = torch.nn.functional.interpolate(
                    pixels.to(torch.float32), size=(_INCEPTION_SIZE, _INCEPTION_SIZE),
                    mode="bilinear", align_corners=False,
                )
                feats = net(x)
            if not isinstance(feats, torch.Tensor) or feats.shape[0] != pixels.shape[0]:
                raise ValueError("the feature network must return a tensor (B, ...) with one "
                                 f"row per image; got {type(feats).__name__} "
                                 f"{tuple(getattr(feats, 'shape', ()))} for {pixels.shape[0]}")
            out = feats.reshape(feats.shape[0], -1).to("cpu", torch.float64).numpy()
            if not np.isfinite(out).all():
                raise ValueError("the feature network returned NaN or inf features")
            yield out


def inception_features(
    images: Any,
    *,
    network: str | os.PathLike[str] | torch.nn.Module,
    batch_size: int = 200,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features (n, D), float64, of images through a feature network, batched, without grads.

    images: a tensor (n, C, H, W) with values in [-1, 1] (C = 1 is repeated to 3 channels;
    a uint8 tensor is taken as [0, 255] pixels), or an iterable of such batches (e.g. a
    sampler's output, so that 50,000 images need not be in memory at once). Images are
    quantised as when saved: ``floor(127.5 x + 128)`` clipped to [0, 255], uint8.
    network: a TorchScript file (see ``load_inception``; loaded onto ``device``) or a loaded
    module (used where it is), called in one of two forms. If its ``forward`` takes
    ``return_features`` (inception-2015-12-05.pt), it gets the uint8 images at their own
    resolution as ``net(x, return_features=True)``: that network resizes to 299 x 299 itself
    (the paper's FID, clean-fid's legacy_tensorflow mode). Otherwise ``net(x)`` gets float32
    [0, 255] images resized to 299 x 299 (bilinear, align_corners=False); any output (B, ...)
    is flattened to (B, D).
    """
    out = list(_feature_batches(images, network, batch_size, device))
    if not out:
        raise ValueError("images must hold at least one image, got none")
    return np.concatenate(out)


class _MomentSums:
    """Streaming mean and unbiased covariance in float64.

    Sums of x - shift and of their outer products, the shift being the first batch's mean (limits
    cancellation).
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((x.shape[1], x.shape[1]))
        assert self.s1 is not None and self.s2 is not None
        xc = x - self.shift
        self.n += x.shape[0]
        self.s1 += xc.sum(axis=0)
        self.s2 += xc.T @ xc

    def stats(self) -> FeatureStats:
        assert self.shift is not None and self.s1 is not None and self.s2 is not None
        d = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(d, d)) / (self.n - 1)
        return FeatureStats(mu=self.shift + d, cov=(cov + cov.T) / 2.0, n=self.n)


def fid(
    images: Any,
    *,
    inception: str | os.PathLike[str] | torch.nn.Module,
    stats: str | os.PathLike[str] | FeatureStats,
    batch_size: int = 200,
    device: str | torch.device = "cpu",
) -> float:
    """FID (Heusel et al. 2017) of images against reference statistics.

    ``frechet_distance_from_stats`` between the mean and unbiased covariance (ddof = 1) of the
    images' ``inception_features`` and the reference ``mu``, ``sigma`` (``load_fid_stats``: a
    .npz in clean-fid's format). inception: the TorchScript file (or the loaded module); the
    paper's number needs inception-2015-12-05.pt and the reference statistics made with it
    (clean-fid's cifar10 legacy_tensorflow train statistics). Both files are checked before
    any image is processed; the features' moments are accumulated batch by batch in float64
    (no (n, D) array is kept). Returns the FID as a float. Deterministic on the CPU; on CUDA
    up to the kernels' own order.
    """
    ref = stats if isinstance(stats, FeatureStats) else load_fid_stats(stats)
    ref_name = "the reference statistics" if isinstance(stats, FeatureStats) else str(stats)
    dev = torch.device(device)
    net = inception if isinstance(inception, torch.nn.Module) else load_inception(inception,
                                                                                 device=dev)
    sums = _MomentSums()  # streamed: 50,000 x 2048 features are never held at once
    for feats in _feature_batches(images, net, batch_size, dev):
        if feats.shape[1] != ref.mu.shape[0]:
            raise ValueError(f"the network gives {feats.shape[1]}-d features but {ref_name} "
                             f"holds {ref.mu.shape[0]}-d statistics: they come from different "
                             "networks")
        sums.add(feats)
    if sums.n < 2:
        raise ValueError(f"FID needs at least 2 images, got {sums.n}")
    own = sums.stats()
    return _frechet(own.mu, own.cov, ref.mu, ref.cov, "the images' features", ref_name)
