"""Checkpoints: atomic writes of plain values, read back without running any code.

Every file is written to a temporary file in the same folder, then renamed over the target: a
run killed mid-write leaves the previous file intact. :class:`StagedFiles` writes several
files that way and renames them into place only once all of them were written.

A checkpoint holds only tensors, numbers, strings, booleans, None and dicts / lists / tuples
of them (:func:`check_plain`, enforced by :func:`save_atomic`), and :func:`load_checkpoint`
reads it with ``torch.load(..., weights_only=True)``: a file that carries anything else (a
pickle of arbitrary objects can run code when loaded) is refused, never unpickled. Checkpoints
of older otcfm versions that hold other objects are converted once, by the user's explicit
choice, with ``otcfm convert-checkpoint`` (:func:`convert_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CorruptCheckpoint",
    "StagedFiles",
    "UnsafeCheckpoint",
    "check_plain",
    "convert_checkpoint",
    "load_checkpoint",
    "save_atomic",
    "write_text_atomic",
]

# exact types: numpy.float64 is a float subclass that weights_only loading refuses
_PLAIN_TYPES = (bool, int, float, str, type(None), torch.dtype, torch.Size)


def _is_plain_scalar(obj: Any) -> bool:
    return type(obj) in _PLAIN_TYPES or isinstance(obj, torch.Tensor)


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read: truncated, empty or not a checkpoint at all."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds objects other than plain values: refused, never unpickled."""


def _temp_beside(path: Path) -> Path:
    """A new, empty temporary file in ``path``'s folder with ``path``'s suffix.

    Created with the permissions the umask gives a new file (not mkstemp's 0600), so that the
    file it is renamed to is as readable as any other file the user writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _replace_atomically(path: str | Path, mode: str, write: Callable[[IO], None]) -> Path:
    """Write through a temporary file in the target folder, then ``os.replace`` it."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` holds only plain values.

    Raise TypeError unless ``obj`` holds only tensors, numbers, strings, booleans, None
    (and torch dtypes / sizes) in dicts with string or integer keys, lists and tuples; the
    message names the first other value by its key path.
    """
    if _is_plain_scalar(obj):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
        "tensors, numbers, strings and containers of them"
    )


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` plain values (:func:`check_plain`) to ``path`` atomically."""
    check_plain(obj, Path(path).name)
    return _replace_atomically(path, "wb", lambda handle: torch.save(obj, handle))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    return _replace_atomically(path, "w", lambda handle: handle.write(text))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` onto the CPU, without running code.

    FileNotFoundError when missing; :class:`UnsafeCheckpoint` when it holds objects other
    than plain values (nothing of it is unpickled); :class:`CorruptCheckpoint` when it cannot
    be read (truncated, empty, not a checkpoint). Both are ValueErrors with one-line messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "nsupported global" in text or "unsupported GLOBAL" in text:
            raise UnsafeCheckpoint(
                f"{path} holds objects other than tensors, numbers and strings; refusing to "
                "unpickle it (nothing in it was run). If it is an otcfm checkpoint from before "
                f"checkpoints held only plain values and you trust it, convert it once with "
                f"`otcfm convert-checkpoint {path} --i-trust-this-file`"
            ) from None
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or not a checkpoint "
                                "(its contents cannot be read)") from None
    except Exception as err:  # truncated zip archive, empty file, I/O error
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt or truncated ({detail[:120]})"
        ) from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def _to_plain(obj: Any, where: str) -> Any:
    """Convert ``obj`` to plain values that load with ``weights_only=True``.

    ``obj`` with numpy values as tensors / Python numbers, dataclasses as dicts, paths and
    other string-like values as strings; TypeError for anything else.
    """
    import numpy as np

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if _is_plain_scalar(obj):
        return obj
    if isinstance(obj, (bool, int, float, str)):  # subclasses (enums, ...): the plain value
        return next(t for t in (bool, int, float, str) if isinstance(obj, t))(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {(k if type(k) in (str, int) else str(k)): _to_plain(v, f"{where}[{k!r}]")
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items: Iterable[Any] = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        out = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if type(obj) is tuple else out
    raise TypeError(
        f"cannot convert {where}: a {type(obj).__module__}.{type(obj).__qualname__} has no "
        "plain equivalent"
    )


def convert_checkpoint(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite a trusted checkpoint of an older otcfm as plain values.

    ``out``: default in place, atomically. Unpickles ``path`` with ``weights_only=False``, which
    runs whatever code the file carries: call it only on files you trust. Returns the path written.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(f"cannot read checkpoint {path} ({detail[:120]})") from None
    try:
        plain = _to_plain(state, path.name)
    except TypeError as err:
        raise ValueError(f"{err}; {path} was left unchanged") from None
    return save_atomic(plain, path if out is None else Path(out))


class StagedFiles:
    """Files written under temporary names beside their targets, renamed into place together.

    ``staged.path(target)`` gives the temporary file to write ``target`` through (same folder
    and suffix); :meth:`commit` renames every one into place (each rename atomic), in the
    order staged; :meth:`discard` deletes them. As a context manager it commits when the block
    succeeds and discards otherwise, so a failure leaves every target as it was.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, target: str | Path) -> Path:
        """Stage ``target``: the temporary file to write it through."""
        tmp = _temp_beside(Path(target))
        self._staged.append((tmp, Path(target)))
        return tmp

    def write_text(self, text: str, target: str | Path) -> None:
        """Stage ``target`` with the content ``text``."""
        self.path(target).write_text(text)

    def save(self, obj: Any, target: str | Path) -> None:
        """``torch.save`` plain values (:func:`check_plain`) to ``target`` at commit."""
        check_plain(obj, Path(target).name)
        torch.save(obj, self.path(target))

    def commit(self) -> list[Path]:
        """Rename every staged file into place, in order; return the targets written."""
        done = []
        try:
            for tmp, target in self._staged:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
                done.append(target)
        finally:
            self._staged = self._staged[len(done):]
            self.discard()
        return done

    def discard(self) -> None:
        """Delete the staged temporary files."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()
