"""CelebA from a user's copy on disk (torchvision's layout), never downloaded.

``ROOT/celeba/`` (torchvision's ``root``) or ``ROOT`` itself holds:

- ``img_align_celeba/``: the aligned face images (``000001.jpg``, ...; 178 x 218 in the
  published set);
- ``list_attr_celeba.txt``: line 1 the number of images N, line 2 the attribute names
  (40 in the published set), then one line per image: its file name and one value in
  {-1, 1} per attribute;
- ``list_eval_partition.txt``: one line per image: its file name and its split (0 train,
  1 valid, 2 test).

:func:`celeba_attributes` reads the two tables (no image); :func:`celeba` reads the images
of one split, centre-cropped to a square and resized, labelled by one attribute: the
attribute groups of the paper's unpaired translation experiment (Tong et al. 2024, §5.4).

Files are data: the file names in the tables are checked to be plain names inside
``img_align_celeba/`` (no folder part, nothing that could leave it) before any is opened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from otcfm.data.images import ImageSet, _from_uint8, _labels, _pillow, _read_image

__all__ = ["CELEBA_SPLITS", "CelebAAttributes", "celeba", "celeba_attributes"]

#: The values of the partition column of ``list_eval_partition.txt``, by split name.
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
CROP = 140  # side of the centred square cut from each 178 x 218 face before resizing
SIZE = 64  # side of the images returned by celeba()
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.(jpg|jpeg|png)", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class CelebAAttributes:
    """The tables of a CelebA folder.

    ``files`` (N image names), ``names`` (the A attribute names), ``values`` (N, A) int8 in {-1, 1},
    ``split`` (N,) int64 (0 train, 1 valid, 2 test), and ``folder`` (the folder holding
    ``img_align_celeba/``).
    """

    files: tuple[str, ...]
    names: tuple[str, ...]
    values: Tensor
    split: Tensor
    folder: Path

    def column(self, attribute: str) -> Tensor:
        """The (N,) values in {-1, 1} of one attribute; ValueError naming the known ones."""
        if attribute not in self.names:
            raise ValueError(
                f"unknown CelebA attribute {attribute!r}; known: {', '.join(self.names)}"
            )
        return self.values[:, self.names.index(attribute)]


def _celeba_folder(root: str | os.PathLike) -> Path:
    base = Path(root).expanduser()
    for folder in (base / "celeba", base):
        if (folder / ATTRIBUTES).is_file():
            return folder
    raise FileNotFoundError(
        f"no CelebA in {base}: expected {ATTRIBUTES}, {PARTITION} and {IMAGES}/ in "
        f"{base / 'celeba'} (torchvision's layout) or in {base}"
    )


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (CelebA's {path.name})")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not an ASCII text table ({err})") from None
    return text.splitlines()


def _file_name(path: Path, line: int, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{path}, line {line}: {name!r} is not a plain image file name (letters, digits, "
            "'_', '-', '.', ending in .jpg/.jpeg/.png, no folder part)"
        )
    return name


def celeba_attributes(root: str | os.PathLike) -> CelebAAttributes:
    """Read the attribute and partition tables of a CelebA folder.

    Read ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` (see the module's
    docstring); ValueError naming the file and line of anything malformed.
    """
    folder = _celeba_folder(root)
    path = folder / ATTRIBUTES
    lines = _lines(path)
    if len(lines) < 2:
        raise ValueError(f"{path}: expected the image count and the attribute names first")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}, line 1: expected the number of images, got "
                         f"{lines[0][:40]!r}") from None
    names = tuple(lines[1].split())
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}, line 2: expected distinct attribute names, got {lines[1]!r}")
    rows = [(k + 3, line.split()) for k, line in enumerate(lines[2:]) if line.strip()]
    if len(rows) != count:
        raise ValueError(f"{path}: line 1 announces {count} images, the table has {len(rows)}")
    files, values = [], np.empty((count, len(names)), np.int8)
    for r, (line, parts) in enumerate(rows):
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}, line {line}: expected a file name and {len(names)} "
                             f"values, got {len(parts)} fields")
        files.append(_file_name(path, line, parts[0]))
        if any(v not in ("1", "-1") for v in parts[1:]):
            bad = next(v for v in parts[1:] if v not in ("1", "-1"))
            raise ValueError(f"{path}, line {line}: attribute values are -1 or 1, got {bad!r}")
        values[r] = np.array(parts[1:], dtype=np.int8)
    if len(set(files)) != len(files):
        raise ValueError(f"{path}: an image file is listed twice")
    split = _partition(folder / PARTITION, files)
    return CelebAAttributes(tuple(files), names, torch.from_numpy(values), split, folder)


def _partition(path: Path, files: list[str]) -> Tensor:
    where = {name: k for k, name in enumerate(files)}
    split = np.full(len(files), -1, np.int64)
    for line, text in enumerate(_lines(path), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {line}: expected a file name and its split "
                             f"0, 1 or 2, got {text[:60]!r}")
        k = where.get(_file_name(path, line, parts[0]))
        if k is None:
            raise ValueError(f"{path}, line {line}: {parts[0]} is not in {ATTRIBUTES}")
        split[k] = int(parts[1])
    if (split < 0).any():
        missing = files[int(np.flatnonzero(split < 0)[0])]
        raise ValueError(f"{path}: {missing} (and maybe more) has no split")
    return torch.from_numpy(split)


def celeba(
    root: str | os.PathLike,
    *,
    split: str = "train",
    attribute: str | None = None,
    size: int = SIZE,
    crop: int = CROP,
    limit: int | None = None,
) -> ImageSet:
    """The images of one ``split`` ("train", "valid", "test" or "all") of a CelebA folder.

    Each image is cut to the centred ``crop`` x ``crop`` square (at most its smaller side)
    and resized to ``size`` x ``size`` (bicubic), RGB in [-1, 1]. ``attribute``: label by
    it, 1 where the image has it and 0 where not (classes ``("not ATTR", "ATTR")``);
    without it the set is unlabelled. ``limit``: the first that many images of the split,
    in the table's order (a full split is about 160,000 images).
    """
    if split != "all" and split not in CELEBA_SPLITS:
        raise ValueError(f"split must be one of {[*CELEBA_SPLITS, 'all']}, got {split!r}")
    for name, value in (("size", size), ("crop", crop), ("limit", limit)):
        if value is None and name == "limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    table = celeba_attributes(root)
    column = table.column(attribute) if attribute is not None else None
    keep = np.arange(len(table.files)) if split == "all" else np.flatnonzero(
        table.split.numpy() == CELEBA_SPLITS[split])
    if limit is not None:
        keep = keep[:limit]
    if keep.size == 0:
        raise ValueError(f"no CelebA images in split {split!r} of {table.folder}")
    images = table.folder / IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"{images} is missing (CelebA's aligned images)")
    image_lib = _pillow()
    paths = [images / table.files[k] for k in keep]
    pixels = np.stack([_square(_read_image(image_lib, p, None), crop, size, image_lib)
                       for p in paths])
    data = _from_uint8(pixels.transpose(0, 3, 1, 2))
    if column is None:
        return ImageSet(data, None, (), f"celeba-{split}", files=tuple(paths))
    labels = (column[torch.from_numpy(keep)] > 0).long().numpy()
    return ImageSet(data, _labels(labels), (f"not {attribute}", attribute),
                    f"celeba-{split}-{attribute}", files=tuple(paths))


def _square(pixels: np.ndarray, crop: int, size: int, image_lib) -> np.ndarray:
    """The centred square of side min(crop, H, W), resized to size x size, RGB uint8."""
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    h, w = pixels.shape[:2]
    side = min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    image = image_lib.fromarray(np.ascontiguousarray(square))
    return np.asarray(image.resize((size, size), image_lib.Resampling.BICUBIC), dtype=np.uint8)
