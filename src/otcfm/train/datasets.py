"""Train / validation / test splits of a run's source and target, and its data record.

Train / validation / test splits of a run's source and target, reproducible from the seed,
and the run's record of its data.

Built-in distributions are sampled afresh for each split from independent seeded streams; a
file is shuffled once with the run's seed and cut into train, validation and test rows.

A run records its data in ``data.json`` beside ``config.toml`` (written when training starts,
see :class:`~otcfm.data.provenance.DataRecord`): for ``data.source`` and ``data.target`` the
absolute path, size and SHA-256 of the file (and the ``.npz`` key), or the built-in
distribution's name, and the event shape of one point (so the model can be rebuilt without
the data). :func:`load_run_data` given that record reads each file from its recorded path
(or by name under ``data_root``) and refuses a file whose size or hash changed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from otcfm.data import load_points, toy
from otcfm.data.files import DataSpec, parse_spec
from otcfm.data.images import ImageSet
from otcfm.data.provenance import DataRecord, FileRecord
from otcfm.train.config import DataConfig

SPLITS = ("train", "val", "test")
SIDES = ("source", "target")


@dataclass(frozen=True)
class Splits:
    """One side (source or target) of a run: three disjoint sets of points (N, ``*event``)."""

    train: Tensor
    val: Tensor
    test: Tensor


@dataclass(frozen=True)
class RunData:
    """The split source and target data of a run."""

    source: Splits
    target: Splits

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one source point."""
        return tuple(self.source.train.shape[1:])


def stream(seed: int, *labels: str) -> torch.Generator:
    """A torch.Generator for one named purpose, derived from the run seed (no global RNG).

    Its seed is a polynomial hash of the bytes of ``"seed/label/.../label"``. The hash of all
    but the last label is cached (per step only the step number changes), so a call hashes a
    few bytes in Python.
    """
    if not labels:
        return torch.Generator().manual_seed(_digest(0, str(seed)))
    head = _prefix_digest(str(seed), labels[:-1])
    return torch.Generator().manual_seed(_digest(head, "/" + labels[-1]))


_HASH_BASE, _HASH_MOD = 1_000_003, 2**61 - 1


def _digest(digest: int, text: str) -> int:
    """Continue the hash ``digest`` over the UTF-8 bytes of ``text``."""
    for ch in text.encode():
        digest = (digest * _HASH_BASE + ch) % _HASH_MOD
    return digest


@functools.lru_cache(maxsize=256)
def _prefix_digest(seed: str, labels: tuple[str, ...]) -> int:
    return _digest(0, "/".join((seed, *labels)))


DATA_RECORD = "data.json"  # the run folder's record of its data files (DataRecord)


def data_specs(cfg: DataConfig) -> dict[str, DataSpec]:
    """The parsed ``data.source`` and ``data.target`` (one grammar: :func:`parse_spec`)."""
    return {side: parse_spec(getattr(cfg, side), name=f"data.{side}") for side in SIDES}


def record_run_data(cfg: DataConfig, event_shape: tuple[int, ...]) -> DataRecord:
    """The record of a run's data as it is now.

    Every file's absolute path (relative paths are taken against the working directory), size and
    SHA-256; built-ins by name.
    """
    inputs: dict[str, FileRecord | str] = {}
    for side, spec in data_specs(cfg).items():
        if spec.path is not None:
            inputs[f"data.{side}"] = FileRecord.of(spec.path, spec.key)
        else:
            inputs[f"data.{side}"] = str(spec.builtin)
    return DataRecord(inputs, tuple(event_shape))


def record_image_data(cfg: DataConfig, images: ImageSet) -> DataRecord:
    """The record of an image run's data.

    ``data.target`` is its image spec (e.g. ``fashion-mnist``), and every file the images were read
    from is hashed under ``data.target/NAME`` (none for digits, which ship inside scikit-learn).
    """
    inputs: dict[str, FileRecord | str] = {"data.source": cfg.source, "data.target": cfg.target}
    for path in images.files:
        inputs[f"data.target/{Path(path).name}"] = FileRecord.of(path)
    return DataRecord(inputs, tuple(images.shape))


def check_image_files(
    record: DataRecord, images: ImageSet, *, allow_changed_data: bool = False
) -> None:
    """Refuse image files that differ from a run's record.

    By name: the files of a data set read from another folder, ``--data-root``, must be the same
    bytes. With ``allow_changed_data`` a difference is only a warning.
    """
    recorded = {k.partition("/")[2]: v for k, v in record.inputs.items()
                if k.startswith("data.target/") and isinstance(v, FileRecord)}
    for path in images.files:
        was = recorded.get(Path(path).name)
        if was is None:
            continue
        now = FileRecord.of(path)
        if now.sha256 != was.sha256:
            message = (f"data.target: {path} differs from the file the run was trained on "
                       f"(recorded sha256 {was.sha256[:12]}..., now {now.sha256[:12]}...)")
            if not allow_changed_data:
                raise ValueError(f"{message}; pass --allow-changed-data to use it anyway")
            warnings.warn(f"{message}; used anyway (--allow-changed-data)", stacklevel=2)


def read_data_record(run_dir: str | Path) -> DataRecord | None:
    """The run folder's ``data.json`` (None for a run written before runs recorded data)."""
    path = Path(run_dir) / DATA_RECORD
    if not path.is_file():
        return None
    return DataRecord.from_json(path.read_text(), str(path))


def check_same_data(run_dir: str | Path, record: DataRecord | None) -> None:
    """Refuse to continue the run in ``run_dir`` when its data differ from its record.

    A file whose SHA-256 (or .npz key) changed, or another built-in (a run without a record, or no
    ``record`` given: nothing to compare).
    """
    old = read_data_record(run_dir)
    if old is None or record is None:
        return
    for key, now in record.inputs.items():
        was = old.inputs.get(key)
        if isinstance(now, FileRecord) and isinstance(was, FileRecord):
            same = (now.sha256, now.key) == (was.sha256, was.key)
        else:
            same = now == was
        if not same:
            raise ValueError(
                f"cannot resume {run_dir}: {key} is not the data it was trained on "
                f"(recorded {_describe(was)}, now {_describe(now)})"
            )


def _describe(entry: FileRecord | str | None) -> str:
    if entry is None:
        return "nothing"
    if isinstance(entry, str):
        return f"built-in {entry!r}"
    key = f":{entry.key}" if entry.key else ""
    return f"{entry.path}{key}, {entry.size} bytes, sha256 {entry.sha256[:12]}..."


def recorded_file(
    record: DataRecord, key: str, spec: DataSpec, *, data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> tuple[Path, str | None]:
    """Where to read the input ``key`` of a recorded run, checked against its record.

    Where to read the input ``key`` (e.g. ``data.source``) of a recorded run, checked
    against its record (see :meth:`FileRecord.locate`); returns (path, npz key).
    """
    entry = record.inputs.get(key)
    if not isinstance(entry, FileRecord):
        was = "not recorded" if entry is None else f"recorded as built-in {entry!r}"
        raise ValueError(f"{key} = {spec.text!r} is a file but the run's data.json has it {was}")
    path = entry.locate(key, data_root=data_root, allow_changed=allow_changed_data)
    return path, entry.key


def split_points(points: Tensor, cfg: DataConfig, seed: int, side: str, what: str) -> Splits:
    """Shuffle a file's rows with the run's seed and cut them into train / val / test."""
    n = points.shape[0]
    n_hold = max(1, int(round(cfg.val_fraction * n)))
    if n - 2 * n_hold < 2:
        raise ValueError(
            f"{what} has {n} rows: too few to hold out {n_hold} for validation and "
            f"{n_hold} for test (data.val_fraction = {cfg.val_fraction})"
        )
    # paired files share one permutation, so row i of each split stays a pair
    label = "paired" if cfg.paired else side
    perm = torch.randperm(n, generator=stream(seed, label, "split"))
    points = points[perm]
    return Splits(
        train=points[2 * n_hold :], val=points[:n_hold], test=points[n_hold : 2 * n_hold]
    )


def load_side(
    spec: str | DataSpec, cfg: DataConfig, seed: int, side: str, *,
    record: DataRecord | None = None, data_root: str | Path | None = None,
    allow_changed_data: bool = False,
) -> Splits:
    """Split one side of the data into train / val / test.

    With the ``record`` of a trained run a file is read from its recorded path (or by name
    under ``data_root``) and must match its recorded size and SHA-256.
    """
    spec = parse_spec(spec, name=f"data.{side}")
    if spec.path is not None:
        path, key = spec.path, spec.key
        if record is not None:
            path, key = recorded_file(record, f"data.{side}", spec, data_root=data_root,
                                      allow_changed_data=allow_changed_data)
        try:
            points = load_points(path, key=key)
        except (ValueError, FileNotFoundError) as err:  # name the config key too
            raise type(err)(f"data.{side}: {err}") from None
        return split_points(points, cfg, seed, side, spec.text)
    if record is not None and record.inputs.get(f"data.{side}", spec.builtin) != spec.builtin:
        raise ValueError(
            f"data.{side} = {spec.builtin!r} but the run's data.json recorded "
            f"{record.inputs[f'data.{side}']!r}"
        )
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    drawn = {
        split: toy.sample(str(spec.builtin), sizes[split], generator=stream(seed, side, split))
        for split in SPLITS
    }
    return Splits(**drawn)


def data_seed(cfg: DataConfig, seed: int) -> int:
    """The seed that draws a run's data: ``data.seed`` when set (not -1), else the run's."""
    return seed if cfg.seed == -1 else cfg.seed


def load_run_data(
    cfg: DataConfig, seed: int, *, record: DataRecord | None = None,
    data_root: str | Path | None = None, allow_changed_data: bool = False,
) -> RunData:
    """Load both sides of a run's data, split.

    Both sides of a run's data, split, drawn or shuffled with ``cfg.seed`` when it is set
    (not -1), else with the run's ``seed``; with a ``record`` (a trained run's data.json) every
    file is checked against it first (see :func:`load_side`).
    """
    seed = data_seed(cfg, seed)
    if cfg.paired:
        check_paired_specs(cfg)
    specs = data_specs(cfg)
    kw = {"record": record, "data_root": data_root, "allow_changed_data": allow_changed_data}
    source = load_side(specs["source"], cfg, seed, "source", **kw)
    target = load_side(specs["target"], cfg, seed, "target", **kw)
    if source.train.shape[1:] != target.train.shape[1:]:
        raise ValueError(
            f"source and target points must have the same dimension, got "
            f"{tuple(source.train.shape[1:])} ({cfg.source}) and "
            f"{tuple(target.train.shape[1:])} ({cfg.target})"
        )
    for side, splits in (("source", source), ("target", target)):
        if splits.train.shape[0] < 2:
            raise ValueError(f"the {side} training set needs at least 2 points")
    if cfg.paired:
        rows = [sum(s.shape[0] for s in (x.train, x.val, x.test)) for x in (source, target)]
        if rows[0] != rows[1]:
            raise ValueError(
                f"data.paired needs as many source rows as target rows (row i pairs with row "
                f"i), got {rows[0]} in {cfg.source} and {rows[1]} in {cfg.target}"
            )
    return RunData(source=source, target=target)


def check_paired_specs(cfg: DataConfig) -> None:
    """Paired data must come from two files (built-in distributions have no row order)."""
    built_in = [spec.text for spec in data_specs(cfg).values() if not spec.is_file]
    if built_in:
        raise ValueError(
            f"data.paired = true needs files for source and target, got "
            f"built-in distribution(s) {', '.join(map(repr, built_in))}"
        )
