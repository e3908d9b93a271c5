"""A user's own point clouds: load and save (n, d) arrays from .npy, .npz and text files.

Supported extensions: ``.npy``, ``.npz`` (one array chosen by ``key``), and the text formats
``.csv``, ``.tsv``, ``.txt`` (values separated by commas if the first data line has a comma,
otherwise by whitespace; blank lines and lines starting with ``#`` are skipped; an optional
header row of column names is recognised when none of its fields is a number).

Rules for loaded data (every violation is a ``ValueError`` naming the file and the reason; a
missing file is a ``FileNotFoundError``):

- values must be real numbers (integers and bools are converted), no NaN or inf: the error
  counts them and names the first bad row (0-based data row; for text files also the line);
- a 1-D array of n values is read as n points in 1-D, shape (n, 1);
- arrays with more than 2 dimensions, (n, a, b, ...), are refused unless ``flatten=True``,
  which gives (n, a * b * ...);
- at least one row and one column; ``columns=`` selects columns by index (any format) or by
  header name (text files with a header); other columns of a text file may be non-numeric.
"""

from __future__ import annotations

import csv
import operator
import os
import re
import uuid
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from otcfm._utils import check_tensor
from otcfm.data.toy import DISTRIBUTIONS, sample

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DataSpec",
    "load_points",
    "parse_spec",
    "resolve_points",
    "save_points",
]

TEXT_EXTENSIONS = (".csv", ".tsv", ".txt")
SUPPORTED_EXTENSIONS = (".npy", ".npz", *TEXT_EXTENSIONS)

Columns = int | str | Sequence[int | str] | None
_NPZ_KEY = re.compile(r"^(?P<path>.+\.npz):(?P<key>[^:/\\]+)$", re.IGNORECASE)


# --------------------------------------------------------------------------- loading
def load_points(
    path: str | os.PathLike,
    key: str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    columns: Columns = None,
    flatten: bool = False,
) -> Tensor:
    """Load a point cloud as a tensor of shape (n, d) and the given floating ``dtype``.

    ``key`` picks the array of an ``.npz`` archive (optional when it holds exactly one);
    ``columns`` picks columns by index or header name; ``flatten`` reshapes (n, a, b, ...)
    arrays to (n, a * b * ...). See the module docstring for the accepted formats and errors.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    p = _existing_file(path)
    ext = p.suffix.lower()
    if key is not None and ext != ".npz":
        raise ValueError(f"{p}: key={key!r} only applies to .npz files, not {ext!r}")
    names: list[str] | None = None
    lines: list[int] | None = None
    if ext in TEXT_EXTENSIONS:
        arr, names, lines, idx = _read_text(p, columns)  # columns applied while parsing
    else:
        arr = _as_matrix(p, _read_npy(p) if ext == ".npy" else _read_npz(p, key), flatten)
        idx = list(range(arr.shape[1]))
        if columns is not None:
            idx = _column_indices(p, columns, arr.shape[1], None)
            arr = arr[:, idx]
    _check_finite(p, arr, lines, idx, names)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)


def _supported_path(path: str | os.PathLike) -> tuple[Path, str]:
    """The expanded path and its lower-case extension; unsupported extensions raise."""
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"{p}: unsupported file extension {p.suffix!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return p, ext


def _existing_file(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not Path(path).expanduser().exists():  # whatever the extension
        raise FileNotFoundError(f"points file not found: {Path(path).expanduser()}")
    p, _ = _supported_path(path)
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file")
    return p


def _read_npy(p: Path) -> np.ndarray:
    try:
        with open(p, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise ValueError(f"{p}: unreadable or corrupt .npy file (no NumPy header)")
        return np.load(p, allow_pickle=False)
    except ValueError as e:
        if "Object arrays" in str(e):
            raise ValueError(f"{p}: holds Python objects, not a numeric array") from None
        if str(e).startswith(str(p)):
            raise
        raise ValueError(f"{p}: unreadable or corrupt .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{p}: unreadable or corrupt .npy file ({e})") from None


def _read_npz(p: Path, key: str | None) -> np.ndarray:
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
        if head == b"\x93NUMPY":
            raise ValueError(f"{p}: not an .npz archive (it holds a single .npy array)")
        if not head.startswith(b"PK"):
            raise ValueError(f"{p}: unreadable or corrupt .npz file (not a zip archive)")
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.files)
            if key is None:
                if len(keys) != 1:
                    listed = ", ".join(repr(k) for k in keys) or "none"
                    raise ValueError(
                        f"{p}: archive holds {len(keys)} arrays; choose one with key= (or "
                        f"{p.name}:KEY as a spec), keys: {listed}"
                    )
                key = keys[0]
            if key not in keys:
                raise ValueError(
                    f"{p}: no array {key!r} in archive; keys: {', '.join(map(repr, keys))}"
                )
            return archive[key]
    except ValueError as e:
        if "Object arrays" in str(e):
            raise ValueError(f"{p}: array {key!r} holds Python objects, not numbers") from None
        if str(e).startswith(str(p)):
            raise
        raise ValueError(f"{p}: unreadable or corrupt .npz file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{p}: unreadable or corrupt .npz file ({e})") from None


def _as_matrix(p: Path, arr: np.ndarray, flatten: bool) -> np.ndarray:
    """Check the dtype and rank; return a float (n, d) array (1-D -> (n, 1))."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{p}: expected a numeric array, got {type(arr).__name__}")
    if arr.dtype.names is not None or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise ValueError(f"{p}: non-numeric data of dtype {arr.dtype}; expected real numbers")
    if np.iscomplexobj(arr):
        raise ValueError(f"{p}: complex values (dtype {arr.dtype}); expected real numbers")
    if arr.ndim == 0:
        raise ValueError(f"{p}: holds a single scalar; expected an (n, d) array of points")
    if arr.size == 0:
        raise ValueError(f"{p}: empty data (shape {arr.shape})")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        if not flatten:
            raise ValueError(
                f"{p}: array of shape {arr.shape} has more than 2 dimensions; "
                "pass flatten=True to read it as (n, prod(rest))"
            )
        arr = arr.reshape(arr.shape[0], -1)
    if arr.dtype.kind in "biu" or arr.dtype == np.float16:
        arr = arr.astype(np.float64 if arr.dtype.kind in "iu" else np.float32)
    return arr


def _check_finite(
    p: Path, arr: np.ndarray, lines: list[int] | None, idx: list[int], names: list[str] | None
) -> None:
    """Raise if ``arr`` has NaN/inf: count, rows, and the first one's row/line/file column."""
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count == 0:
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    where = f"row {row}" + (f" (line {lines[row]})" if lines is not None else "")
    raise ValueError(
        f"{p}: {count} NaN or inf value(s) in {int(bad.any(axis=1).sum())} row(s); "
        f"first at {where}, {_column_label(idx[col], names)}: {arr[row, col]}"
    )


def _column_label(j: int, names: list[str] | None) -> str:
    return f"column {j}" + (f" ({names[j]!r})" if names is not None else "")


def _column_indices(p: Path, columns: Columns, width: int, names: list[str] | None) -> list[int]:
    """Resolve ``columns`` (index, name or a sequence of them) to indices in [0, width)."""
    items = [columns] if isinstance(columns, (int, str)) else list(columns)  # type: ignore[arg-type]
    if not items:
        raise ValueError(f"{p}: columns= selects no column")
    out = []
    for c in items:
        if isinstance(c, str):
            if names is None:
                raise ValueError(
                    f"{p}: column {c!r} chosen by name but the file has no header row; "
                    "choose columns by index"
                )
            if c not in names:
                raise ValueError(f"{p}: no column {c!r}; columns: {', '.join(map(repr, names))}")
            out.append(names.index(c))
            continue
        try:
            i = operator.index(c)
        except TypeError:
            raise TypeError(f"columns must be ints or names, got {c!r}") from None
        if not -width <= i < width or isinstance(c, bool):
            raise ValueError(f"{p}: column index {c!r} out of range for {width} column(s)")
        out.append(i % width)
    return out


# --------------------------------------------------------------------------- text files
def _read_text(
    p: Path, columns: Columns
) -> tuple[np.ndarray, list[str] | None, list[int], list[int]]:
    """Parse a delimited text file.

    Returns (values (n, k) float64, header names or None, line number of each row, the file
    column of each of the k columns).
    """
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{p}: unreadable text file ({e})") from None
    lines = [
        (i + 1, s)
        for i, s in enumerate(text.splitlines())
        if s.strip() and not s.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{p}: empty data (no non-blank lines)")
    comma = "," in lines[0][1]
    rows = [_split(s, comma) for _, s in lines]
    names = None
    if not any(_is_number(f) for f in rows[0]):
        names = rows[0]
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise ValueError(f"{p}: empty data (a header row and no values)")
    width = len(names) if names is not None else len(rows[0])
    for (lineno, _), r in zip(lines, rows, strict=True):
        if len(r) != width:
            raise ValueError(f"{p}: line {lineno} has {len(r)} field(s), expected {width}")
    idx = list(range(width)) if columns is None else _column_indices(p, columns, width, names)
    table = [[r[j] for j in idx] for r in rows]
    try:
        arr = np.array(table, dtype=np.float64)
    except ValueError:
        _raise_non_numeric(p, table, [n for n, _ in lines], idx, names)
        raise  # pragma: no cover - _raise_non_numeric always raises
    return arr, names, [n for n, _ in lines], idx


def _split(line: str, comma: bool) -> list[str]:
    if not comma:
        return line.split()
    fields = next(csv.reader([line])) if '"' in line else line.split(",")
    return [f.strip() for f in fields]


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _raise_non_numeric(p, table, linenos, idx, names) -> None:
    for r, (row, lineno) in enumerate(zip(table, linenos, strict=True)):
        for c, field in enumerate(row):
            if not _is_number(field):
                raise ValueError(
                    f"{p}: non-numeric value {field!r} at line {lineno} (row {r}), "
                    f"{_column_label(idx[c], names)}; "
                    "choose numeric columns with columns="
                )
    raise ValueError(f"{p}: could not parse values as numbers")


# --------------------------------------------------------------------------- saving
def save_points(
    path: str | os.PathLike,
    x: Tensor | np.ndarray,
    *,
    key: str = "x",
    names: Sequence[str] | None = None,
) -> Path:
    """Write points (n, d) (or (n,) as (n, 1)) so :func:`load_points` reads them back exactly.

    ``.npy``/``.npz`` keep the dtype (bf16 is stored as float32; ``key`` names the .npz array);
    text files (comma-separated ``.csv``, tab ``.tsv``, space ``.txt``) use shortest round-trip
    decimals and an optional header of column ``names``. Parent folders are created and the
    file is replaced atomically. Returns the path written.
    """
    p, ext = _supported_path(path)
    arr = _to_numpy(x)
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of column names, not the string {names!r}")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != arr.shape[1]:
            raise ValueError(f"names has {len(names)} entries but x has {arr.shape[1]} columns")
        if any(_is_number(n) or not n or re.search(r'[\s,"#]', n) for n in names):
            raise ValueError(
                f"names must be non-numeric and contain no spaces, commas, quotes or '#': {names}"
            )
    if names is not None and ext not in TEXT_EXTENSIONS:
        raise ValueError(f"{p}: names= only applies to text files {TEXT_EXTENSIONS}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:  # normal permissions (umask), unlike mkstemp's 0600
            if ext == ".npy":
                np.save(fh, arr, allow_pickle=False)
            elif ext == ".npz":
                np.savez(fh, **{key: arr})
            else:
                fh.write(_format_text(arr, names, ext).encode("utf-8"))
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"x must hold numbers, got a numpy array of dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    check_tensor("x", x)
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"x must have shape (n, d) or (n,), got {tuple(x.shape)}; flatten it")
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    elif x.dtype == torch.bool:
        x = x.to(torch.uint8)
    elif x.is_complex():
        raise ValueError(f"x must be real, got dtype {x.dtype}")
    return x.detach().cpu().numpy()


def _format_text(arr: np.ndarray, names: list[str] | None, ext: str) -> str:
    sep = {".csv": ",", ".tsv": "\t", ".txt": " "}[ext]
    out = [sep.join(names)] if names is not None else []
    out.extend(sep.join(str(v) for v in row) for row in arr)  # numpy str: shortest round trip
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class DataSpec:
    """A data spec as the user wrote it, parsed by :func:`parse_spec`.

    A data spec as the user wrote it (``text``), parsed by :func:`parse_spec`: either a
    built-in name (``builtin``) or a file (``path``, relative to the working directory unless
    written absolute; ``key``: the array of an ``.npz`` archive given as ``FILE.npz:KEY``).
    """

    text: str
    builtin: str | None = None
    path: Path | None = None
    key: str | None = None

    @property
    def is_file(self) -> bool:
        """Whether the spec names a file (rather than a built-in distribution)."""
        return self.path is not None


def parse_spec(
    spec: str | os.PathLike | DataSpec,
    builtins: Collection[str] | None = None,
    *,
    name: str = "spec",
) -> DataSpec:
    """The one grammar of data specs (``--source``, ``--target``, ``--x0``, ``data.path``, ...).

    In order: a name in ``builtins`` (default: the distributions of
    :data:`otcfm.data.toy.DISTRIBUTIONS`) is built in; ``FILE.npz:KEY`` (when no file of that
    whole name exists) is array KEY of an archive; anything that exists, has an extension or
    holds a path separator is a file (existing or not: loading a missing one raises
    ``FileNotFoundError`` "... not found: PATH", whatever its extension). Any other word is
    an unknown built-in (ValueError naming ``name`` and listing the built-ins). Nothing is
    read here.
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"{name} must be a name or a path, got {type(spec).__name__}")
    text = os.fspath(spec)
    names = DISTRIBUTIONS.names() if builtins is None else list(builtins)
    if isinstance(spec, str) and text in names:
        return DataSpec(text, builtin=text)
    path = Path(text).expanduser()
    m = _NPZ_KEY.match(text)
    if m is not None and not path.exists():
        return DataSpec(text, path=Path(m["path"]).expanduser(), key=m["key"])
    if path.exists() or path.suffix or any(sep in text for sep in {"/", os.sep}):
        return DataSpec(text, path=path)
    known = f"a built-in ({', '.join(names)}) nor " if names else ""
    raise ValueError(
        f"{name}: unknown {text!r}: not {known}a file (a path with an extension: "
        f"{', '.join(SUPPORTED_EXTENSIONS)}, or FILE.npz:KEY)"
    )


def resolve_points(
    spec: str | os.PathLike | DataSpec,
    n: int | None = None,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Points from a spec (:func:`parse_spec`): a built-in 2-D distribution name or a file.

    - a name of :data:`otcfm.data.toy.DISTRIBUTIONS`: draws ``n`` points (``n`` required);
    - a file path (``"cells.npz:pcs"`` picks array ``pcs`` of an archive): loads it; with ``n``
      set, returns ``n`` rows drawn without replacement using ``generator`` (ValueError if the
      file has fewer rows); with ``n=None`` all rows in file order.
    """
    parsed = parse_spec(spec)
    if parsed.builtin is not None:
        if n is None:
            raise ValueError(f"n is required to sample the built-in distribution {spec!r}")
        return sample(parsed.builtin, n, generator=generator).to(dtype)
    assert parsed.path is not None
    path, key = parsed.path, parsed.key
    x = load_points(path, key=key, dtype=dtype)
    if n is None:
        return x
    try:
        count = operator.index(n) if not isinstance(n, bool) else 0
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    n = count
    if n > x.shape[0]:
        raise ValueError(f"{path}: asked for n={n} points but the file has only {x.shape[0]} rows")
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(x.shape[0], generator=generator, device=device)[:n]
    return x[idx.cpu()]
