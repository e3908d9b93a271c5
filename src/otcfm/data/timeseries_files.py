"""Time-course files: load and save :class:`~otcfm.data.timeseries.TimeSeries`.

- ``.h5ad`` (AnnData, extra ``singlecell``): time from an ``obs`` column, features from ``X``
  or an ``obsm`` embedding (e.g. ``X_pca``);
- ``.npz`` in TrajectoryNet's layout: ``pcs`` (N, d) and ``sample_labels`` (N,);
- ``.csv`` / ``.tsv``: a header row, a time column and feature columns.

Time labels may be numbers or names. Bad files (no time column, a single time point, NaN
values) raise errors that name the file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from otcfm._utils import check_tensor
from otcfm.data.files import load_points
from otcfm.data.timeseries import TimeSeries

__all__ = [
    "TIME_KEYS",
    "load_timeseries",
    "save_populations",
    "save_timeseries",
]

TIMESERIES_EXTENSIONS = (".h5ad", ".npz", ".csv", ".tsv")
# obs columns tried, in order, when load_timeseries gets no time_key for an .h5ad file
TIME_KEYS = ("day", "time", "timepoint", "sample_labels")
_EXTRA = "pip install 'otcfm[singlecell]'"


# --------------------------------------------------------------------------- time labels
def _time_labels(
    source: str, values: np.ndarray, order: Sequence[Any] | None, strict: bool = True
) -> tuple[Tensor, tuple[float, ...], tuple[str, ...]]:
    """Raw per-cell time values -> (index labels, sorted times, display names).

    Numbers (or strings that all parse as numbers) are sorted by value. Other labels need
    ``order``: the labels from first to last, which then get times 0, 1, ... (or their own
    values when every label in ``order`` is a number). Every label of the data must be in
    ``order``, and (``strict``) every label of ``order`` in the data.
    """
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{source}: no cells")
    if order is not None:
        return _ordered_labels(source, values, list(order), strict)
    numeric = _as_numbers(values)
    if numeric is None:
        uniq = sorted({str(v) for v in values})
        raise ValueError(
            f"{source}: time labels are not numbers ({', '.join(map(repr, uniq[:6]))}"
            f"{', ...' if len(uniq) > 6 else ''}); list them from first to last with "
            "--time-order FIRST,SECOND,... (config key data.time_order; time_order= in "
            "load_timeseries)"
        )
    bad = ~np.isfinite(numeric)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{source}: {int(bad.sum())} NaN or inf time value(s); first at row {row}: "
            f"{values[row]!r}"
        )
    times, labels = np.unique(numeric, return_inverse=True)
    if times.size < 2:
        raise ValueError(
            f"{source}: a single time point ({times[0]:g}) in {values.size} cells; trajectory "
            "inference needs at least 2 (ideally >= 3) time points"
        )
    names = tuple(f"{t:g}" for t in times)
    return torch.from_numpy(labels.reshape(-1).astype(np.int64)), tuple(times.tolist()), names


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    try:
        return np.array([float(str(v).strip()) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _ordered_labels(
    source: str, values: np.ndarray, order: list[Any], strict: bool
) -> tuple[Tensor, tuple[float, ...], tuple[str, ...]]:
    names = [str(o) for o in order]
    if len(set(names)) != len(names):
        raise ValueError(f"time_order has repeated labels: {names}")
    index = {n: k for k, n in enumerate(names)}
    text = np.array([str(v) for v in values])
    found = set(text.tolist())
    unknown = sorted(found - set(names))
    absent = [n for n in names if n not in found] if strict else []
    if unknown or absent:
        problems = [f"label(s) {unknown[:6]} of the data are not in it"] if unknown else []
        problems += [f"{absent[:6]} occur in no cell"] if absent else []
        raise ValueError(
            f"{source}: time_order {names} does not match the time labels: "
            f"{'; '.join(problems)} (labels present: {sorted(found)[:12]})"
        )
    labels = np.array([index[v] for v in text], dtype=np.int64)
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise ValueError(f"{source}: a single time point ({names[present[0]]!r}); need >= 2")
    numeric = _as_numbers(np.array(names))
    times = numeric if numeric is not None else np.arange(len(names), dtype=np.float64)
    # keep only the labels that occur, in order
    remap = {old: new for new, old in enumerate(present)}
    labels = np.array([remap[v] for v in labels], dtype=np.int64)
    return (
        torch.from_numpy(labels),
        tuple(float(times[k]) for k in present),
        tuple(names[k] for k in present),
    )


# --------------------------------------------------------------------------- loaders
def load_timeseries(
    path: str | os.PathLike,
    *,
    time_key: str | None = None,
    obsm_key: str | None = None,
    npz_key: str = "pcs",
    columns: Sequence[str] | None = None,
    time_order: Sequence[Any] | None = None,
) -> TimeSeries:
    """Load populations at several times from ``.h5ad``, ``.npz`` or ``.csv``/``.tsv``.

    Args:
        path: the file to read: ``.h5ad``, ``.npz``, ``.csv`` or ``.tsv``.
        time_key: where the time of each cell is: an ``obs`` column (.h5ad; default the first
            of :data:`TIME_KEYS` present), an array of the archive (.npz; default
            ``sample_labels``) or a header name (.csv; default ``time``).
        obsm_key: (.h5ad) features from ``adata.obsm[obsm_key]`` instead of ``adata.X``
            (then X is never loaded). ``X`` is read as a dense matrix: for large gene
            matrices pass a precomputed embedding such as ``X_pca``.
        npz_key: (.npz) the feature array (TrajectoryNet: ``pcs``).
        columns: (.csv) feature columns by header name; default every other column.
        time_order: labels from first to last, for non-numeric time labels ("early", ...);
            it must list exactly the labels present.

    Errors (ValueError naming the file): missing time column or key, a single time point,
    NaN/inf in features or times, mismatched lengths, non-numeric features.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if not p.exists():  # whatever the extension
        raise FileNotFoundError(f"time-series file not found: {p}")
    if ext not in TIMESERIES_EXTENSIONS:
        raise ValueError(
            f"{p}: unsupported extension {p.suffix!r} for a time series; supported: "
            f"{', '.join(TIMESERIES_EXTENSIONS)}"
        )
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file")
    if obsm_key is not None and ext != ".h5ad":
        raise ValueError(f"{p}: obsm_key only applies to .h5ad files")
    if ext == ".h5ad":
        return _load_h5ad(p, time_key, obsm_key, time_order)
    if ext == ".npz":
        return _load_npz(p, time_key or "sample_labels", npz_key, time_order)
    return _load_text(p, time_key or "time", columns, time_order)


def _build(
    p: Path, x: Any, raw_times: np.ndarray, time_order: Sequence[Any] | None,
    feature_names: Sequence[str] | None = None, strict: bool = True,
) -> TimeSeries:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{p}: features must be a non-empty (cells, features) matrix, got "
                         f"shape {tuple(x.shape)}")
    if raw_times.reshape(-1).shape[0] != x.shape[0]:
        raise ValueError(
            f"{p}: {raw_times.reshape(-1).shape[0]} time labels for {x.shape[0]} cells; "
            "need one per cell"
        )
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row, col = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{p}: {int(bad.sum())} NaN or inf feature value(s) in "
            f"{int(bad.any(1).sum())} cell(s); first at cell {row}, feature {col}"
        )
    labels, times, names = _time_labels(str(p), raw_times, time_order, strict)
    return TimeSeries(x, labels, times, names, feature_names)


def _load_npz(p: Path, time_key: str, npz_key: str, order: Sequence[Any] | None) -> TimeSeries:
    x = load_points(p, key=npz_key)  # checks the archive, the key and NaN/inf
    with np.load(p, allow_pickle=False) as archive:
        if time_key not in archive.files:
            raise ValueError(
                f"{p}: no time array {time_key!r}; keys: {', '.join(map(repr, archive.files))}"
                " (pass time_key=)"
            )
        raw = archive[time_key]
    if raw.ndim == 2 and 1 in raw.shape:
        raw = raw.reshape(-1)
    if raw.ndim != 1:
        raise ValueError(f"{p}: time array {time_key!r} must be 1-D, got shape {raw.shape}")
    return _build(p, x.numpy(), raw, order)


def _load_text(
    p: Path, time_key: str, columns: Sequence[str] | None, order: Sequence[Any] | None
) -> TimeSeries:
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    header, times, lines = _read_time_column(p, time_key, delimiter)
    if columns is None:
        columns = [h for h in header if h != time_key]
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{p}: no column(s) {missing}; header: {header}")
        if time_key in columns:
            raise ValueError(f"{p}: the time column {time_key!r} cannot also be a feature")
    if not columns:
        raise ValueError(f"{p}: no feature columns besides the time column {time_key!r}")
    x = load_points(p, columns=columns)
    if x.shape[0] != len(times):  # pragma: no cover - both read the same data rows
        raise ValueError(f"{p}: read {x.shape[0]} feature rows but {len(times)} time values")
    return _build(p, x.numpy(), np.array(times, dtype=object), order, columns)


def _read_time_column(p: Path, time_key: str, delimiter: str) -> tuple[list[str], list, list]:
    """Header and the time column's values (numbers where they parse) of a text table."""
    header: list[str] | None = None
    values: list[Any] = []
    lines: list[int] = []
    with open(p, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter=delimiter), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            row = [c.strip() for c in row]
            if header is None:
                header = row
                if _all_numbers(row):
                    raise ValueError(
                        f"{p}: the first line has no column names; a time-series table needs a "
                        f"header with a time column ({time_key!r}) and feature names"
                    )
                if time_key not in header:
                    raise ValueError(
                        f"{p}: no time column {time_key!r}; columns: {header} (name the time "
                        "column: --time-key, or time_key= in Python)"
                    )
                col = header.index(time_key)
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{p}: line {lineno} has {len(row)} fields, the header has {len(header)}"
                )
            cell = row[col]
            if cell == "":
                raise ValueError(f"{p}: empty time value at line {lineno}")
            values.append(cell)
            lines.append(lineno)
    if header is None or not values:
        raise ValueError(f"{p}: no data rows")
    return header, values, lines


def _all_numbers(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def _load_h5ad(
    p: Path, time_key: str | None, obsm_key: str | None, order: Sequence[Any] | None
) -> TimeSeries:
    try:
        import anndata
    except ImportError:
        raise ImportError(f"reading .h5ad files needs anndata: {_EXTRA}") from None
    try:  # an obsm embedding is read without loading X (which may be a large gene matrix)
        adata = anndata.read_h5ad(p, backed="r" if obsm_key is not None else None)
    except Exception as err:  # corrupt or not HDF5
        raise ValueError(f"{p}: cannot read as AnnData ({type(err).__name__}: {err})") from None
    try:
        return _from_anndata(p, adata, time_key, obsm_key, order)
    finally:
        if getattr(adata, "isbacked", False):
            adata.file.close()


def _from_anndata(
    p: Path, adata: Any, time_key: str | None, obsm_key: str | None, order: Sequence[Any] | None
) -> TimeSeries:
    obs_cols = [str(c) for c in adata.obs.columns]
    if time_key is None:
        found = [k for k in TIME_KEYS if k in obs_cols]
        if not found:
            raise ValueError(
                f"{p}: no time column found among obs columns {obs_cols} (tried "
                f"{list(TIME_KEYS)}); name it: --time-key, or time_key= in Python"
            )
        time_key = found[0]
    if time_key not in obs_cols:
        raise ValueError(f"{p}: no obs column {time_key!r}; obs columns: {obs_cols}")
    series = adata.obs[time_key]
    strict = True
    if order is None and hasattr(series, "cat") and series.cat.ordered:
        order, strict = list(series.cat.categories), False  # unused categories may remain
    raw = np.asarray(series.astype(object) if hasattr(series, "cat") else series)
    if obsm_key is not None:
        keys = [str(k) for k in adata.obsm]
        if obsm_key not in keys:
            raise ValueError(f"{p}: no obsm embedding {obsm_key!r}; obsm keys: {keys}")
        x, names = adata.obsm[obsm_key], None
    else:
        x, names = adata.X, [str(v) for v in adata.var_names]
    if x is None:
        raise ValueError(f"{p}: adata.X is empty; pass obsm_key= (obsm keys: "
                         f"{list(adata.obsm.keys())})")
    if hasattr(x, "toarray"):  # scipy sparse
        x = x.toarray()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{p}: features must be 2-D, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{p}: non-numeric features of dtype {x.dtype}")
    return _build(p, x, raw, order, names, strict)


def save_timeseries(ts: TimeSeries, path: str | os.PathLike) -> Path:
    """Write ``ts`` as .npz (``pcs``, ``sample_labels`` = the times) or .csv/.tsv.

    :func:`load_timeseries` reads the file back to the same populations and times.
    """
    if not isinstance(ts, TimeSeries):
        raise TypeError(f"ts must be a TimeSeries, got {type(ts).__name__}")
    return save_populations(path, ts.populations(), ts.times, ts.feature_names)


def save_populations(
    path: str | os.PathLike,
    populations: Sequence[Tensor],
    times: Sequence[float],
    feature_names: Sequence[str] | None = None,
) -> Path:
    """Write populations at ``times`` in the layout of :func:`save_timeseries`.

    Write populations [(n_k, d), ...] at ``times`` (one or more) in the layout of
    :func:`save_timeseries`: .npz (``pcs``, ``sample_labels``) or .csv/.tsv (``time`` column
    first, then the features).
    """
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in (".npz", ".csv", ".tsv"):
        raise ValueError(f"{p}: save a time series as .npz, .csv or .tsv, not {p.suffix!r}")
    pops = [check_tensor(f"populations[{k}]", x) for k, x in enumerate(populations)]
    if len(pops) != len(times) or not pops:
        raise ValueError(f"need one time per population, got {len(pops)} and {len(times)}")
    dims = {int(x.reshape(x.shape[0], -1).shape[1]) for x in pops}
    if len(dims) != 1:
        raise ValueError(f"populations must share their number of features, got {sorted(dims)}")
    x = torch.cat([q.reshape(q.shape[0], -1).float() for q in pops]).numpy()
    t = np.concatenate([np.full(q.shape[0], float(tk)) for q, tk in zip(pops, times,
                                                                        strict=True)])
    p.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".npz":
        np.savez(p, pcs=x, sample_labels=t)
        return p
    names = list(feature_names or [f"x{j}" for j in range(x.shape[1])])
    if len(names) != x.shape[1]:
        raise ValueError(f"feature_names needs {x.shape[1]} entries, got {len(names)}")
    if "time" in names:
        raise ValueError("a feature is named 'time', which the CSV uses for the time column")
    with open(p, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t" if ext == ".tsv" else ",")
        writer.writerow(["time", *names])
        for tv, row in zip(t.tolist(), x.tolist(), strict=True):
            writer.writerow([repr(tv), *(repr(v) for v in row)])
    return p
