"""Atomic checkpoints: write to a temporary file in the same folder, then rename over the target.

A run killed mid-write leaves the previous checkpoint intact, so ``--resume`` always finds a
complete file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _replace_atomically(path: str | Path, mode: str, write: Callable[[IO], None]) -> Path:
    """Write through a temporary file in the target folder, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _replace_atomically(path, "wb", lambda handle: torch.save(obj, handle))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    return _replace_atomically(path, "w", lambda handle: handle.write(text))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
