"""The files of a run folder, written by one class for every kind of run.

``<run_dir>/``:

- ``config.toml``: the fully resolved config;
- ``data.json``: the record of the run's data (absolute path, size and SHA-256 of every data
  file, built-ins by name, the event shape; see :mod:`otcfm.train.datasets`);
- ``log.csv``: one row per logged step, rewritten whole from the run's history so a resume
  never duplicates rows;
- ``metrics.json``: sections merged in (``train``, ``eval``, ``test``, ...);
- ``checkpoints/step-000500.pt``: the last ``keep`` checkpoints (``eval.keep_checkpoints``,
  default :data:`KEEP_CHECKPOINTS`), named by their optimizer step; ``checkpoints/latest.pt``:
  the newest of them (a hard link, or a copy where the file system has none);
  ``checkpoints/best.pt``: the one of the best validation loss;
- ``.lock``: held by the one process writing the folder (see below).

Every file is written atomically (temporary file + rename, see :mod:`otcfm.train.checkpoint`):
a run killed mid-write leaves the previous version intact. A checkpoint that cannot be read
(truncated, say, by a full disk or a bad copy) is reported by name and the newest readable one
is used instead (:func:`newest_checkpoint`).

One writer at a time: :meth:`RunFolder.open` takes an operating-system lock on ``.lock``
(``fcntl.flock``; released by the system when the process ends, however it ends) and records
the holder's pid, host and start time in it; a second writer is refused with a one-line
FileExistsError naming the holder. A lock file still naming a holder that ended without
releasing it (killed) is taken over with a warning. A fresh run (``resume=False``) is refused
in a folder that already holds one.

Under torch.distributed every process holds a :class:`RunFolder` and calls it alike; only the
process of rank 0 writes (and locks; the others' calls do nothing), so the files are written
once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

from otcfm.train.checkpoint import (
    CorruptCheckpoint,
    load_checkpoint,
    save_atomic,
    write_text_atomic,
)

__all__ = [
    "KEEP_CHECKPOINTS",
    "RunFolder",
    "check_run_name",
    "newest_checkpoint",
]

log = logging.getLogger("otcfm.train")

KEEP_CHECKPOINTS = 3
"""Default number of step checkpoints a run keeps (``eval.keep_checkpoints``)."""

LOCK_NAME = ".lock"
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def check_run_name(name: str) -> str:
    """Check that ``name`` is one folder name.

    ``name`` when it is one folder name (the run folder under the output folder); else a
    ValueError naming the ``name`` key / ``--name`` flag. Refused: empty names, ``.``,
    ``..``, path separators, absolute paths, drive letters and control characters.
    """
    bad = (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\"))
        or any(ord(c) < 32 for c in name)
        or bool(PureWindowsPath(name).drive)
    )
    if bad:
        raise ValueError(
            f"name (--name) must be a single folder name under out_dir (--out), without "
            f"'/', '\\' or '..'; got {name!r}"
        )
    return name


def step_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """The ``step-N.pt`` files of a checkpoints folder, newest (highest step) first."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir()
             if (m := _STEP_FILE.fullmatch(p.name))]
    return sorted(found, reverse=True)


def newest_checkpoint(
    checkpoints: str | Path, *, set_aside: bool = False
) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of a checkpoints folder and its path.

    The newest readable checkpoint of a checkpoints folder and its path (None: there is
    none): ``latest.pt``, then the ``step-N.pt`` files from the highest step down.

    A corrupt one (:class:`~otcfm.train.checkpoint.CorruptCheckpoint`) is reported by name
    (a warning) and the next one tried; with ``set_aside`` (the folder's writer, about to
    continue the run) it is renamed to ``<name>.corrupt`` so that the run's new checkpoints
    never mix with it. When every checkpoint is corrupt: CorruptCheckpoint naming them. A
    checkpoint holding objects other than plain values
    (:class:`~otcfm.train.checkpoint.UnsafeCheckpoint`) is an error, never skipped.
    """
    checkpoints = Path(checkpoints)
    candidates = [checkpoints / "latest.pt"] + [p for _, p in step_checkpoints(checkpoints)]
    candidates = [p for p in candidates if p.is_file()]
    bad: list[Path] = []
    bad_files: set[tuple[int, int]] = set()
    for path in candidates:
        stat = path.stat()
        same_file = (stat.st_dev, stat.st_ino)
        if same_file in bad_files:  # latest.pt is a link to the newest step file
            bad.append(path)
        else:
            try:
                return load_checkpoint(path), path
            except CorruptCheckpoint as err:
                bad.append(path)
                bad_files.add(same_file)
                rest = "; trying the previous checkpoint" if path != candidates[-1] else ""
                log.warning("%s%s", err, rest)
        if set_aside:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("renamed %s to %s", path, aside.name)
    if bad:
        raise CorruptCheckpoint(
            f"no readable checkpoint in {checkpoints}: {', '.join(p.name for p in bad)} "
            "cannot be read"
        )
    return None


class _Lock:
    """An exclusive operating-system lock on a file, released when the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: Path) -> dict[str, Any] | None:
        """Take the lock; FileExistsError naming the holder when another process has it.

        Returns the record of a previous holder that ended without releasing it (or None).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = _read_record(fd, patience=0.5)
                raise FileExistsError(
                    f"{what} is in use by another otcfm process ({_describe(holder)}); wait "
                    "for it to end, or choose another --name"
                )
            stale = _read_record(fd)
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
        finally:
            _unlock(fd)
            os.close(fd)


if sys.platform == "win32":  # pragma: no cover - no Windows runner
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as err:  # a file system without locks (ENOLCK, EOPNOTSUPP, ...)
            log.warning("file locks are not supported here (%s); nothing stops a second "
                        "writer of this run folder", err)
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_record(fd: int, patience: float = 0.0) -> dict[str, Any] | None:
    """The holder record in a lock file (None: empty).

    A holder that has just taken the lock may not have written it yet: wait up to ``patience``
    seconds for it.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {"pid": "?", "host": "?", "started": "?"}
    return record if isinstance(record, dict) else None


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "pid unknown"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, since "
            f"{record.get('started', '?')}")


class RunFolder:
    """Writes the files of the run in ``path``.

    ``fields``: the columns of log.csv; ``keep``: how many step checkpoints to keep (>= 1).

    ``rank``: this process's rank; only rank 0 writes (:attr:`writes`).
    """

    def __init__(self, path: str | Path, *, fields: Sequence[str] = ("step", "loss"),
                 rank: int = 0, keep: int = KEEP_CHECKPOINTS) -> None:
        if not fields:
            raise ValueError("fields must name at least one log.csv column")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"eval.keep_checkpoints must be an integer >= 1, got {keep!r}")
        self.path = Path(path)
        self.fields = tuple(fields)
        self.rank = int(rank)
        self.keep = keep
        self._lock = _Lock(self.path / LOCK_NAME)

    def add_fields(self, names: Sequence[str]) -> None:
        """Add log.csv columns (those not there yet), before ``seconds`` when it is one."""
        new = tuple(n for n in names if n not in self.fields)
        at = self.fields.index("seconds") if "seconds" in self.fields else len(self.fields)
        self.fields = (*self.fields[:at], *new, *self.fields[at:])

    @property
    def writes(self) -> bool:
        """Whether this process writes the files (rank 0)."""
        return self.rank == 0

    @property
    def checkpoints(self) -> Path:
        """The run's ``checkpoints`` folder."""
        return self.path / "checkpoints"

    # ------------------------------------------------------------------ the writer's lock
    def holds_run(self) -> bool:
        """Whether the folder holds a run (a config.toml or a checkpoint)."""
        return (self.path / "config.toml").is_file() or (
            self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))
        )

    def open(self, *, resume: bool = False) -> bool:
        """Become the folder's writer.

        Create it, take its lock (FileExistsError naming the holder when another process has it)
        and, unless ``resume``, refuse a folder that already holds a run (FileExistsError naming
        --resume and --name).

        Returns whether this call took the lock (False: this object holds it already, or this
        process does not write). :meth:`close` releases it.
        """
        if not self.writes or self._lock.held:
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        stale = self._lock.acquire(self.path)
        if stale:
            log.warning("%s: took over the lock of %s, which ended without releasing it",
                        self.path, _describe(stale))
        if not resume and self.holds_run():
            self.close()
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose "
                "another --name"
            )
        return True

    def close(self) -> None:
        """Release the lock (if this object holds it)."""
        self._lock.release()

    @contextlib.contextmanager
    def writing(self, *, resume: bool = True) -> Iterator[RunFolder]:
        """Hold the folder's lock for a ``with`` block.

        ``with folder.writing():`` the lock for the block (:meth:`open`, then :meth:`close`
        when this call took it).
        """
        took = self.open(resume=resume)
        try:
            yield self
        finally:
            if took:
                self.close()

    # ------------------------------------------------------------------ files
    def start(
        self, config_toml: str | None = None, files: Mapping[str, str] | None = None
    ) -> None:
        """Create the folder and write the run's starting files.

        Create the folder and write ``config.toml`` (when given) and the text ``files``
        (name -> content, e.g. ``data.json``).
        """
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
        """Merge ``update`` into ``metrics.json``.

        Merge ``update`` (top-level sections replace those of the same name) into
        ``metrics.json``.
        """
        if not self.writes:
            return
        path = self.path / "metrics.json"
        write_text_atomic(merged_metrics(path, update), path)

    def save_grid(self, step: int, images: Any, nrow: int | None = None) -> Path | None:
        """Write a grid of sample images as ``samples/step-N.png``.

        Write a grid of sample images (N, C, H, W) in [-1, 1] as ``samples/step-N.png``
        (:func:`otcfm.plots.save_image_grid`). Returns the path (None on other ranks).
        """
        if not self.writes:
            return None
        from otcfm.plots import save_image_grid

        return save_image_grid(images, self.path / "samples" / f"step-{step}.png", nrow)

    def save(self, name: str, state: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
             ) -> Path | None:
        """Save a checkpoint as ``checkpoints/<name>``.

        ``state`` may be a callable, called only on the writing process. Returns the path written
        (None on other ranks).
        """
        if not self.writes:
            return None
        return save_atomic(dict(state() if callable(state) else state), self.checkpoints / name)

    def save_checkpoint(
        self, step: int, state: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
    ) -> Path | None:
        """Save the checkpoint of ``step`` and rotate the step checkpoints.

        Save the checkpoint of ``step`` as ``checkpoints/step-<step>.pt``, make it
        ``latest.pt`` and delete the step checkpoints beyond the newest ``keep``.
        Returns the step file (None on other ranks).
        """
        path = self.save(f"step-{step:06d}.pt", state)
        if path is None:
            return None
        latest = self.checkpoints / "latest.pt"
        link = self.checkpoints / f".latest.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, link)
        os.replace(link, latest)
        for _, old in step_checkpoints(self.checkpoints)[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint and its path.

        The newest readable checkpoint and its path (None: none yet), see
        :func:`newest_checkpoint`; the writer (holding the lock) sets corrupt ones aside.
        """
        return newest_checkpoint(self.checkpoints, set_aside=self._lock.held)


def merged_metrics(path: Path, update: Mapping[str, Any]) -> str:
    """The text of ``metrics.json`` at ``path`` with the sections of ``update`` merged in."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(update)
    return json.dumps(data, indent=2, default=float) + "\n"
