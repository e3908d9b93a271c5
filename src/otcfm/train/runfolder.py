"""The files of a run folder, written by one class for every kind of run.

``<run_dir>/``: ``config.toml`` (the fully resolved config), ``data.json`` (the record of the
run's data: absolute path, size and SHA-256 of every data file, built-ins by name, the event
shape; see :mod:`otcfm.train.datasets`), ``log.csv`` (one row per logged
step, rewritten whole from the run's history so a resume never duplicates rows),
``metrics.json`` (sections merged in: ``train``, ``eval``, ...) and ``checkpoints/latest.pt``,
``checkpoints/best.pt``. Every file is written atomically (temporary file + rename, see
:mod:`otcfm.train.checkpoint`): a run killed mid-write leaves the previous version intact.

Under torch.distributed every process holds a :class:`RunFolder` and calls it alike; only the
process of rank 0 writes (the others' calls do nothing), so the files are written once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from otcfm.train.checkpoint import save_atomic, write_text_atomic

__all__ = ["RunFolder"]


class RunFolder:
    """Writes the files of the run in ``path``; ``fields``: the columns of log.csv.

    ``rank``: this process's rank; only rank 0 writes (:attr:`writes`).
    """

    def __init__(self, path: str | Path, *, fields: Sequence[str] = ("step", "loss"),
                 rank: int = 0) -> None:
        if not fields:
            raise ValueError("fields must name at least one log.csv column")
        self.path = Path(path)
        self.fields = tuple(fields)
        self.rank = int(rank)

    @property
    def writes(self) -> bool:
        """Whether this process writes the files (rank 0)."""
        return self.rank == 0

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def start(
        self, config_toml: str | None = None, files: Mapping[str, str] | None = None
    ) -> None:
        """Create the folder and write ``config.toml`` (when given) and the text ``files``
        (name -> content, e.g. ``data.json``)."""
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            if config_toml is not None:
                write_text_atomic(config_toml, self.path / "config.toml")
            for name, text in (files or {}).items():
                write_text_atomic(text, self.path / name)

    def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rewrite ``log.csv`` from all rows so far (each must hold every field)."""
        if not self.writes:
            return
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in self.fields})
        write_text_atomic(out.getvalue(), self.path / "log.csv")

    def merge_metrics(self, update: Mapping[str, Any]) -> None:
        """Merge ``update`` (top-level sections replace those of the same name) into
        ``metrics.json``."""
        if not self.writes:
            return
        path = self.path / "metrics.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(update)
        write_text_atomic(json.dumps(data, indent=2, default=float) + "\n", path)

    def save(self, name: str, state: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
             ) -> Path | None:
        """Save a checkpoint as ``checkpoints/<name>``; ``state`` may be a callable, called
        only on the writing process. Returns the path written (None on other ranks)."""
        if not self.writes:
            return None
        return save_atomic(dict(state() if callable(state) else state), self.checkpoints / name)
