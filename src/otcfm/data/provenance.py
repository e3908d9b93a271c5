"""What data a result was computed from: absolute path, size and SHA-256 of every data file.

A :class:`DataRecord` maps each input (named by its config key, e.g. ``data.source``) to a
:class:`FileRecord` (a file, hashed) or to the name of a built-in distribution (no file, no
hash), and may hold the event shape of one point. Training runs write it as ``data.json``
beside ``config.toml`` (see :mod:`otcfm.train.datasets`); before using the data again,
:meth:`FileRecord.locate` finds the file (at its recorded path, or by its recorded name under
a ``data_root`` folder when it moved) and refuses it when its size or SHA-256 changed.

Hashes are computed in 1 MiB chunks, so a file of any size is hashed in constant memory.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataRecord", "FileRecord", "sha256_file"]

CHUNK = 1 << 20
FORMAT = 1  # data.json's "format": bumped when its layout changes


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """The SHA-256 of a file's bytes (hex), read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """One data file as it was read: path, size, SHA-256 and ``.npz`` key.

    One data file as it was read: absolute ``path``, ``size`` in bytes, ``sha256`` (hex)
    and the ``.npz`` array ``key`` it was read with (None: the file as a whole).
    """

    path: str
    size: int
    sha256: str
    key: str | None = None

    @classmethod
    def of(cls, path: str | os.PathLike, key: str | None = None) -> FileRecord:
        """Record the file at ``path`` now.

        Made absolute against the working directory, symbolic links kept as written.
        """
        p = os.path.abspath(os.path.expanduser(os.fspath(path)))
        return cls(p, os.stat(p).st_size, sha256_file(p), key)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``key`` only when the file was read with one)."""
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.key is not None:
            out["key"] = self.key
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FileRecord:
        """Read a record written by :meth:`to_dict`; ValueError naming ``where`` if malformed."""
        try:
            path, size, sha = data["path"], data["size"], data["sha256"]
            key = data.get("key")
            ok = (isinstance(path, str) and os.path.isabs(path) and isinstance(sha, str)
                  and len(sha) == 64 and (key is None or isinstance(key, str)))
            size = operator.index(size)
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"{where}: not a file record (path, size, sha256): {data!r}")
        return cls(path, size, sha, key)

    @property
    def name(self) -> str:
        """The file's name (the last part of its recorded path)."""
        return Path(self.path).name

    def locate(
        self,
        what: str,
        *,
        data_root: str | os.PathLike | None = None,
        allow_changed: bool = False,
    ) -> Path:
        """The path to read this file from, checked against the record.

        Without ``data_root``: the recorded path. With it: the file of the recorded name
        directly in ``data_root`` (never a path below or above it; a symbolic link must lead
        to a file inside it). Its size and SHA-256 must equal the recorded ones; a changed
        file is refused (ValueError naming the file, both sizes or both hash prefixes, and
        ``--allow-changed-data``), or with ``allow_changed`` used with a warning. ``what``
        names the input in messages (e.g. ``data.source``).
        """
        recorded = Path(self.path)
        if data_root is None:
            path = recorded
            if not path.is_file():
                raise FileNotFoundError(
                    f"{what}: data file not found: {recorded}; if it moved, pass --data-root "
                    f"DIR, a folder holding {self.name}"
                )
        else:
            path = self._under(Path(data_root).expanduser(), what)
        size = path.stat().st_size
        if size != self.size:
            change = f"recorded {self.size} bytes, now {size} bytes"
        else:
            digest = sha256_file(path)
            if digest == self.sha256:
                return path
            change = f"recorded sha256 {self.sha256[:12]}..., now {digest[:12]}... ({size} bytes)"
        message = f"{what}: {path} changed since the run was trained ({change})"
        if not allow_changed:
            raise ValueError(f"{message}; pass --allow-changed-data to use it anyway")
        warnings.warn(f"{message}; used anyway (--allow-changed-data)", stacklevel=2)
        return path

    def _under(self, root: Path, what: str) -> Path:
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {root}: no such folder")
        if self.name in ("", ".", ".."):
            raise ValueError(f"{what}: recorded path {self.path} has no file name to look up")
        path = root / self.name
        if not path.is_file():
            raise FileNotFoundError(
                f"{what}: {self.name} not found in --data-root {root} (recorded at {self.path})"
            )
        real, top = path.resolve(), root.resolve()
        if real.parent != top and top not in real.parents:
            raise ValueError(
                f"{what}: {path} is a link to {real}, outside --data-root {root}; copy the "
                "file into the folder instead"
            )
        return path


@dataclass(frozen=True)
class DataRecord:
    """The inputs of a run: the files and built-in distributions it read.

    The inputs of a run: ``inputs`` maps a config key (``data.source``, ``data.path``, ...)
    to a :class:`FileRecord` or a built-in distribution's name; ``event_shape``: the shape of
    one point the model takes (None: not recorded).
    """

    inputs: Mapping[str, FileRecord | str]
    event_shape: tuple[int, ...] | None = None

    def to_json(self) -> str:
        """The record as the text of a run's ``data.json``."""
        inputs = {
            k: {"builtin": v} if isinstance(v, str) else v.to_dict() for k, v in self.inputs.items()
        }
        data: dict[str, Any] = {"format": FORMAT, "inputs": inputs}
        if self.event_shape is not None:
            data["event_shape"] = list(self.event_shape)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> DataRecord:
        """Parse a record written by :meth:`to_json`; ValueError naming ``where`` otherwise."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a data record ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
            raise ValueError(f"{where}: not a data record (no inputs)")
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{where}: data record format {data.get('format')!r}; this version reads "
                f"format {FORMAT}"
            )
        inputs: dict[str, FileRecord | str] = {}
        for key, entry in data["inputs"].items():
            if isinstance(entry, dict) and isinstance(entry.get("builtin"), str):
                inputs[key] = entry["builtin"]
            elif isinstance(entry, dict):
                inputs[key] = FileRecord.from_dict(entry, f"{where} ({key})")
            else:
                raise ValueError(f"{where}: input {key!r} is not a record: {entry!r}")
        shape = data.get("event_shape")
        if shape is not None:
            if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
            ):
                raise ValueError(f"{where}: event_shape must be a list of positive ints")
            shape = tuple(shape)
        return cls(inputs, shape)
