"""Train / validation / test splits of a run's source and target, reproducible from the seed.

Built-in distributions are sampled afresh for each split from independent seeded streams; a
file is shuffled once with the run's seed and cut into train, validation and test rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from otcfm.data import load_points, toy
from otcfm.train.config import DataConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """One side (source or target) of a run: three disjoint sets of points (N, *event)."""

    train: Tensor
    val: Tensor
    test: Tensor


@dataclass(frozen=True)
class RunData:
    source: Splits
    target: Splits

    @property
    def event_shape(self) -> tuple[int, ...]:
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


def is_file_spec(spec: str) -> bool:
    return Path(spec).suffix.lower() in {".npy", ".npz", ".csv"} or Path(spec).exists()


def load_side(spec: str, cfg: DataConfig, seed: int, side: str) -> Splits:
    """Split one side of the data into train / val / test."""
    if is_file_spec(spec):
        points = load_points(spec)
        n = points.shape[0]
        n_hold = max(1, int(round(cfg.val_fraction * n)))
        if n - 2 * n_hold < 2:
            raise ValueError(
                f"{spec} has {n} rows: too few to hold out {n_hold} for validation and "
                f"{n_hold} for test (data.val_fraction = {cfg.val_fraction})"
            )
        # paired files share one permutation, so row i of each split stays a pair
        label = "paired" if cfg.paired else side
        perm = torch.randperm(n, generator=stream(seed, label, "split"))
        points = points[perm]
        return Splits(
            train=points[2 * n_hold :], val=points[:n_hold], test=points[n_hold : 2 * n_hold]
        )
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    drawn = {
        split: toy.sample(spec, sizes[split], generator=stream(seed, side, split))
        for split in SPLITS
    }
    return Splits(**drawn)


def load_run_data(cfg: DataConfig, seed: int) -> RunData:
    if cfg.paired:
        check_paired_specs(cfg)
    source = load_side(cfg.source, cfg, seed, "source")
    target = load_side(cfg.target, cfg, seed, "target")
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
    built_in = [spec for spec in (cfg.source, cfg.target) if not is_file_spec(spec)]
    if built_in:
        raise ValueError(
            f"data.paired = true needs .npy/.npz/.csv files for source and target, got "
            f"built-in distribution(s) {', '.join(map(repr, built_in))}"
        )
