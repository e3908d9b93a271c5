"""Data: toy 2-D distributions, user point clouds from files, and seeded minibatches.

- :mod:`otcfm.data.toy`: named 2-D distributions and the paper's benchmark tasks
  (``toy.sample(name, n, generator=g)``, ``toy.task("gaussian-8gaussians")``).
- :func:`load_points` / :func:`save_points`: (n, d) arrays in .npy, .npz, .csv/.tsv/.txt.
- :func:`parse_spec`: the one grammar of data specs (a built-in name, a file, ``FILE.npz:KEY``);
  :func:`resolve_points`: such a spec -> points.
- :mod:`otcfm.data.images`: image sets read from disk, never downloaded (:class:`ImageSet`,
  :func:`digits`, :func:`idx` for (Fashion-)MNIST, :func:`cifar10`, :func:`image_folder`,
  :func:`load_images` for a spec, :func:`hflip`).
- :mod:`otcfm.data.provenance`: records of data files (path, size, SHA-256) and their checks.
- :func:`sample_batch` / :func:`sample_indices` / :class:`PointDataset`: random minibatches of
  a fixed point set, O(batch) per draw.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from otcfm._utils import cast, check_tensor
from otcfm.data import images, toy
from otcfm.data.files import (
    SUPPORTED_EXTENSIONS,
    DataSpec,
    load_points,
    parse_spec,
    resolve_points,
    save_points,
)
from otcfm.data.images import (
    ImageSet,
    cifar10,
    digits,
    hflip,
    idx,
    image_folder,
    load_images,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DataSpec",
    "ImageSet",
    "PointDataset",
    "cifar10",
    "digits",
    "hflip",
    "idx",
    "image_folder",
    "images",
    "load_images",
    "load_points",
    "parse_spec",
    "resolve_points",
    "sample_batch",
    "sample_indices",
    "save_points",
    "toy",
]


def _integer(name: str, value: int) -> int:
    """``value`` as an int; TypeError naming ``name`` for bools and non-integers."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _batch_size(batch_size: int, n: int) -> int:
    b = _integer("batch_size", batch_size)
    if not 1 <= b <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the number of points), got {b}")
    return b


_CPU = torch.device("cpu")


def _perm(n: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else _CPU
    return torch.randperm(n, generator=generator, device=device)


# Above this share of the rows a batch is a prefix of one permutation (O(n) = O(batch) there);
# below it a few more draws than the batch nearly always hold enough distinct indices.
_PERM_FRACTION = 0.25


def sample_indices(n: int, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch_size`` distinct indices in [0, n), uniformly at random, in random order (seeded).

    Every ordered choice of ``batch_size`` distinct indices is equally likely. A batch of at
    most a quarter of ``n`` costs O(batch_size log batch_size) whatever ``n``: it is the first
    ``batch_size`` distinct values of a stream of independent uniform draws (drawn a little
    ahead, about 2 batch_size^2 / n + 16 extra, and extended in the rare case that is not
    enough). A larger batch is the first ``batch_size`` entries of a random permutation.
    Returns an int64 (batch_size,) tensor on the generator's device (CPU without one).
    """
    n = _integer("n", n)
    if n < 1:
        raise ValueError(f"n must be >= 1 (the number of rows to draw from), got {n}")
    b = _batch_size(batch_size, n)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return _draw_indices(n, b, generator)


def _draw_indices(n: int, b: int, generator: torch.Generator | None) -> Tensor:
    """:func:`sample_indices` for arguments already checked.

    :func:`sample_indices` for arguments already checked (ints 1 <= b <= n, a Generator or
    None): the same indices for the same generator state, without the checks (per-step use).
    """
    if b > _PERM_FRACTION * n:
        return _perm(n, generator)[:b]
    device = generator.device if generator is not None else _CPU
    ahead = _lookahead(b, n)
    stream = torch.randint(n, (b + ahead,), generator=generator, device=device)
    while True:
        distinct = _first_occurrences(stream, n)
        if distinct.shape[0] >= b:
            return distinct if distinct.shape[0] == b else distinct[:b]
        size = (b - distinct.shape[0] + ahead,)
        stream = torch.cat((distinct, torch.randint(n, size, generator=generator, device=device)))


def _draw_indices_many(
    ns: tuple[int, ...], b: int, generator: Callable[[int], torch.Generator], items: range
) -> dict[int, tuple[Tensor, ...]]:
    """Draw the indices of :func:`sample_indices` for many items together.

    ``{k: tuple(_draw_indices(n, b, generator(k)) for n in ns) for k in items}``: the same
    indices, drawn for many items together (arguments checked: 1 <= b <= every n).

    One draw of distinct indices is a dozen operations on arrays of a few hundred values, so
    it costs mostly per-call overhead; here each item's generator still draws its own values
    (in the same order), but the first-occurrence pass runs once over all items' streams.
    ``generator(k)`` must return a fresh CPU generator in the same state at every call: the
    rare item whose stream holds fewer than b distinct values (the one-at-a-time draw then
    extends its stream) is drawn again one at a time from a fresh generator.
    """
    keys = list(items)
    lengths = [0 if b > _PERM_FRACTION * n else b + _lookahead(b, n) for n in ns]
    drawn: list[list[Tensor]] = [[] for _ in ns]  # per side: each item's stream or prefix
    for k in keys:
        g = generator(k)
        for side, (n, m) in enumerate(zip(ns, lengths, strict=True)):
            drawn[side].append(torch.randint(n, (m,), generator=g) if m else _perm(n, g)[:b])
    # one pass over the streams of all sides of one length: rows side-major, (S K, m)
    groups: dict[int, list[int]] = {}
    for side, m in enumerate(lengths):
        if m:  # (permutation prefixes are distinct already)
            groups.setdefault(m, []).append(side)
    ok = np.ones(len(keys), dtype=bool)  # items whose streams all hold b distinct values
    kept = []
    for sides in groups.values():
        values = torch.stack([x for side in sides for x in drawn[side]]).numpy()
        first = _first_mask_rows(values, max(ns[side] for side in sides))
        count = np.cumsum(first, axis=1)
        ok &= (count[:, -1] >= b).reshape(len(sides), -1).all(0)
        kept.append((sides, values, first & (count <= b)))  # the first b distinct per row
    for sides, values, keep in kept:
        keep &= np.tile(ok, len(sides))[:, None]  # b per row kept, none in the others
        rows = iter(torch.from_numpy(values[keep].reshape(-1, b)).unbind(0))
        good = ok.tolist()
        for side in sides:
            drawn[side] = [next(rows) if g else x for x, g in zip(drawn[side], good, strict=True)]
    out = dict(zip(keys, zip(*drawn, strict=True), strict=True))
    for pos in np.flatnonzero(~ok).tolist():  # again, one at a time, from a fresh generator
        g = generator(keys[pos])
        out[keys[pos]] = tuple(_draw_indices(n, b, g) for n in ns)
    return out


def _first_mask_rows(values: np.ndarray, n: int) -> np.ndarray:
    """Mark where each value of ``values`` appears for the first time in its row.

    Per row of ``values`` (K, m) in [0, n): where a value appears for the first time in
    its row (bool (K, m)).
    """
    # stable: among equal values the earliest comes first in ``order`` and is the one kept
    keys = values.astype(np.uint16) if n <= 2**16 else values
    order = np.argsort(keys, axis=1, kind="stable")
    order += np.arange(0, values.size, values.shape[1])[:, None]  # positions in the flat array
    ranked = values.reshape(-1)[order]
    new = np.empty(values.shape, dtype=bool)
    new[:, :1] = True
    np.not_equal(ranked[:, 1:], ranked[:, :-1], out=new[:, 1:])
    first = np.empty(values.size, dtype=bool)
    first[order] = new
    return first.reshape(values.shape)


def _lookahead(b: int, n: int) -> int:
    """Draws beyond ``b``: about twice the expected number of repeats among b draws, plus 16."""
    return 2 * b * b // n + 16


def _first_occurrences(values: Tensor, n: int) -> Tensor:
    """The entries of ``values`` (m,) in [0, n) that are not repeats of earlier ones, in order."""
    if values.device.type == "cpu":  # numpy radix-sorts 16-bit keys: no O(m log m) compares
        return torch.from_numpy(_first_occurrences_numpy(values.numpy(), n))
    return _first_occurrences_torch(values)


def _first_occurrences_torch(values: Tensor) -> Tensor:
    ranked, order = torch.sort(values, stable=True)  # equal values keep their order
    new = torch.ones_like(values, dtype=torch.bool)  # per rank: differs from the one before
    torch.ne(ranked[1:], ranked[:-1], out=new[1:])
    return values.masked_select(torch.empty_like(new).scatter_(0, order, new))


def _first_occurrences_numpy(values: np.ndarray, n: int) -> np.ndarray:
    order = _stable_order(values, n)
    ranked = values[order]
    new = np.empty(values.shape[0], dtype=bool)
    new[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
    first = np.empty_like(new)
    first[order] = new
    return values[first]


def _stable_order(values: np.ndarray, n: int) -> np.ndarray:
    """Stable argsort of int64 ``values`` in [0, n): least significant 16-bit digit first."""
    if n > 2**32:
        return np.argsort(values, kind="stable")
    order = np.argsort(values.astype(np.uint16), kind="stable")  # the low 16 bits
    if n > 2**16:
        high = (values[order] >> 16).astype(np.uint16)
        order = order[np.argsort(high, kind="stable")]
    return order


def sample_batch(x: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch_size`` rows of ``x`` (n, ...) drawn uniformly without replacement (seeded).

    Returns (batch_size, ...) on ``x``'s device. Successive calls draw independent batches
    (a row may appear in two batches, never twice in one); the rows are chosen by
    :func:`sample_indices`, so a draw costs O(batch_size), not O(n). ``x`` is not scanned for
    NaN or inf here (that would cost O(n) per draw): check a data set once when it is loaded
    (:func:`load_points`, :class:`PointDataset` and the couplings of the drawn batch do).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have at least one row, got shape {tuple(x.shape)}")
    idx = sample_indices(x.shape[0], batch_size, generator)
    return x.index_select(0, cast(idx, device=x.device))


@dataclass(frozen=True, eq=False)
class PointDataset:
    """A fixed set of points ``x`` (n, ...) with seeded minibatch sampling.

    Indexable like a ``torch.utils.data.Dataset`` (``len(ds)``, ``ds[i]``).
    """

    x: Tensor

    def __post_init__(self) -> None:
        check_tensor("x", self.x)

    @classmethod
    def from_spec(
        cls, spec: str, n: int | None = None, generator: torch.Generator | None = None
    ) -> PointDataset:
        """Build from a built-in distribution name (``n`` points) or a file (see resolve_points)."""
        return cls(resolve_points(spec, n, generator))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int | slice | Tensor) -> Tensor:
        return self.x[i]

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """One random minibatch, without replacement within it (see :func:`sample_batch`)."""
        return sample_batch(self.x, batch_size, generator)

    def epoch(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = True
    ) -> Iterator[Tensor]:
        """Minibatches covering one random permutation of the points (each row at most once).

        The last short batch is dropped unless ``drop_last=False``.
        """
        b = _batch_size(batch_size, len(self))  # checked now, not at the first next()
        perm = _perm(len(self), generator).to(self.x.device)
        stop = len(self) - len(self) % b if drop_last else len(self)
        return (self.x[perm[start : start + b]] for start in range(0, stop, b))
