"""Image sets read from files on disk, never downloaded: digits, (Fashion-)MNIST, CIFAR-10, folders.

Every loader returns an :class:`ImageSet`: ``images`` (N, C, H, W) float32 scaled to [-1, 1]
(a pixel value v of 0..255 becomes v / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly), ``labels``
(N,) int64 in [0, K) or None, the K class names and a name.

- :func:`digits`: scikit-learn's 8x8 digits (1,797 images, 10 classes), shipped inside the
  scikit-learn wheel (``pip install 'otcfm[singlecell]'``); values 0..16 become v / 8 - 1.
- :func:`idx`: MNIST / Fashion-MNIST IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...`` for the test split), gzip-compressed or raw.
  Fashion-MNIST defaults to the folder where Debian's ``dataset-fashion-mnist`` package
  installs it (:data:`DEBIAN_FASHION_MNIST`); torchvision's ``ROOT/FashionMNIST/raw`` and
  ``ROOT/MNIST/raw`` layouts work too.
- :func:`cifar10`: the python batches of CIFAR-10 (``cifar-10-batches-py/``: ``data_batch_1``
  .. ``data_batch_5``, ``test_batch``, ``batches.meta``). They are pickles; they are read by an
  unpickler that admits only what a CIFAR batch holds (dicts, lists, numbers, strings and numpy
  uint8 arrays) and refuses every other global before anything runs. ``check_md5=True``
  compares each file with the md5 published with the data set.
- :func:`image_folder`: PNG / JPEG files in a folder, or in class subfolders (labels from the
  sorted subfolder names), read with Pillow (``pip install 'otcfm[images]'``).
- :func:`load_images`: the one grammar of image specs (:data:`IMAGE_SPECS`).
- :func:`hflip`: random horizontal flips drawn from a ``torch.Generator``.

Horizontal flips are an augmentation only where a mirrored image is as likely as the image
itself: the CIFAR-10 recipe of the paper flips (``ImageSet.flips`` is True there); digits and
MNIST are not mirror-symmetric (a flipped 2 is no digit), and Fashion-MNIST's shoes all point
the same way, so flips are off for them and for a user's folder (``flips`` False).

Errors: a folder without the expected files is a ``FileNotFoundError`` naming the file names
and layouts looked for; a file that is damaged or of another format is a ``ValueError`` naming
the file and the reason. Files are data: nothing in them is ever run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SPECS",
    "MNIST_CLASSES",
    "NAMED_SETS",
    "ImageSet",
    "cifar10",
    "digits",
    "hflip",
    "idx",
    "image_folder",
    "is_image_spec",
    "load_images",
    "with_folder",
]

# where Debian's package dataset-fashion-mnist installs the four IDX .gz files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# md5 of each file of cifar-10-batches-py as published with the data set
# (https://www.cs.toronto.edu/~kriz/cifar.html; the same values are in torchvision's docs)
#: MD5 of each file of ``cifar-10-batches-py``, checked before the file is read.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

IMAGE_SPECS = (
    "'digits' (scikit-learn's 8x8 digits), 'fashion-mnist' (Debian's dataset-fashion-mnist "
    f"in {DEBIAN_FASHION_MNIST}), 'fashion-mnist:DIR', 'mnist:DIR' (IDX files, or "
    "torchvision's DIR/FashionMNIST/raw and DIR/MNIST/raw), 'cifar10:DIR' (DIR or "
    "DIR/cifar-10-batches-py holding CIFAR-10's python batches), or a folder of PNG/JPEG "
    "images (optionally in one subfolder per class)"
)

SPLITS = ("train", "test")
IDX_KINDS = ("fashion-mnist", "mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------- the result
@dataclass(frozen=True, eq=False)
class ImageSet:
    """A set of N images with optional class labels.

    ``images``: (N, C, H, W) float32 in [-1, 1]. ``labels``: (N,) int64 in [0, K) or None.
    ``classes``: the K class names (label k is ``classes[k]``; empty when unlabelled).
    ``name``: where the set came from. ``flips``: whether random horizontal flips
    (:func:`hflip`) suit the set, the recipes' default (see the module's docstring).
    ``files``: the files the images and labels were read from, in reading order (empty for
    data shipped inside a package: digits), for a run's record of its data. ``levels``: how
    many evenly spaced values a pixel can take (256 for 8-bit images, 17 for the digits'
    0..16), which fixes the dequantization of bits per dimension.
    """

    images: Tensor
    labels: Tensor | None
    classes: tuple[str, ...]
    name: str
    flips: bool = False
    files: tuple[Path, ...] = ()
    levels: int = 256

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images must be a float32 (N, C, H, W) tensor, got {got}")
        if x.numel() == 0:
            raise ValueError(f"images is empty (shape {tuple(x.shape)})")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {self.levels!r}")
        lo, hi = torch.aminmax(x)
        if not (float(lo) >= -1.0 and float(hi) <= 1.0):  # also False for NaN
            raise ValueError(f"images must lie in [-1, 1], got [{float(lo)}, {float(hi)}]")
        if not isinstance(self.classes, tuple) or not all(
            isinstance(c, str) for c in self.classes
        ):
            raise TypeError(f"classes must be a tuple of str, got {self.classes!r}")
        y = self.labels
        if y is None:
            return
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels must be an int64 ({x.shape[0]},) tensor, got {got}")
        k = len(self.classes)
        if k == 0 or int(y.min()) < 0 or int(y.max()) >= k:
            raise ValueError(
                f"labels must lie in [0, {k}) (one per class name), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """K, the number of class names (0 when unlabelled)."""
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def _from_uint8(pixels: np.ndarray) -> Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1]: v / 127.5 - 1 (0 -> -1, 255 -> 1 exactly)."""
    pixels = np.ascontiguousarray(pixels)
    if not pixels.flags.writeable:  # e.g. read with np.frombuffer: torch wants its own copy
        pixels = pixels.copy()
    return torch.from_numpy(pixels).to(torch.float32).div_(127.5).sub_(1.0)


def _labels(values: np.ndarray | Sequence[int]) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _folder(folder: str | os.PathLike, what: str, expected: str) -> Path:
    """``folder`` as a Path; FileNotFoundError naming what it should hold unless it is one."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        kind = "is not a folder" if path.exists() else "not found"
        raise FileNotFoundError(f"{what} folder {kind}: {path}; expected {expected}")
    return path


# --------------------------------------------------------------------------- digits
def digits() -> ImageSet:
    """scikit-learn's 8x8 handwritten digits: 1,797 images (1, 8, 8), labels 0..9.

    Pixel values 0..16 become v / 8 - 1 (0 -> -1, 16 -> 1). The data ship inside the
    scikit-learn wheel (``pip install 'otcfm[singlecell]'``); nothing is downloaded. One set,
    no train/test split; ``flips`` is False (digits are not mirror-symmetric).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("digits() needs scikit-learn: pip install 'otcfm[singlecell]'") from None
    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)
    if pixels.min() < 0 or pixels.max() > 16 or not np.array_equal(pixels, np.round(pixels)):
        raise ValueError("scikit-learn's digits are not integers in 0..16 (unexpected release)")
    images = torch.from_numpy(pixels[:, None]).to(torch.float32).div_(8.0).sub_(1.0)
    return ImageSet(images, _labels(bunch.target), MNIST_CLASSES, "digits", levels=17)


# --------------------------------------------------------------------------- IDX files
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: ubyte data, 3 dims / 1 dim
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_KIND_NAME = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}


def idx(
    folder: str | os.PathLike | None = None,
    *,
    split: str = "train",
    kind: str = "fashion-mnist",
) -> ImageSet:
    """MNIST or Fashion-MNIST from IDX files: (N, 1, 28, 28) images, labels 0..9.

    ``folder`` holds ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
    (``split="train"``, 60,000 images) or ``t10k-images-idx3-ubyte[.gz]`` and
    ``t10k-labels-idx1-ubyte[.gz]`` (``split="test"``, 10,000), gzip-compressed or raw (raw is
    read when both are there); ``FOLDER/FashionMNIST/raw`` or ``FOLDER/MNIST/raw``
    (torchvision's layout) and ``FOLDER/raw`` are looked in too. Fashion-MNIST's default folder
    is :data:`DEBIAN_FASHION_MNIST` (``apt-get install dataset-fashion-mnist``); MNIST has
    none. The IDX header is checked (magic number 2051 / 2049, unsigned bytes, the dimensions
    against the data's length, as many labels as images, labels 0..9).
    """
    _check_choice("split", split, SPLITS)
    _check_choice("kind", kind, IDX_KINDS)
    name = _KIND_NAME[kind]
    if folder is None:
        if kind != "fashion-mnist":
            raise FileNotFoundError(
                f"MNIST has no default folder: give the folder holding its IDX files "
                f"({_expected_idx(split)}), e.g. 'mnist:DIR'"
            )
        folder = DEBIAN_FASHION_MNIST
    hint = (
        f"apt-get install dataset-fashion-mnist puts them in {DEBIAN_FASHION_MNIST}; "
        if kind == "fashion-mnist"
        else ""
    )
    expected = (
        f"{_expected_idx(split)} ({hint}torchvision's layout ROOT/{_TORCHVISION_DIR[kind]}/raw "
        "also works)"
    )
    root = _folder(folder, f"{name} IDX", expected)
    prefix = _IDX_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for where in (root, root / _TORCHVISION_DIR[kind] / "raw", root / "raw"):
        found = [_raw_or_gz(where / stem) for stem in stems]
        if all(p is not None for p in found):
            images_path, labels_path = found
            break
    else:
        raise FileNotFoundError(f"no {name} IDX files in {root}: expected {expected}")
    pixels = _read_idx(images_path, _IDX_IMAGES, 3)
    labels = _read_idx(labels_path, _IDX_LABELS, 1)
    if labels.shape[0] != pixels.shape[0]:
        raise ValueError(
            f"{labels_path} holds {labels.shape[0]} labels but {images_path} holds "
            f"{pixels.shape[0]} images: the two files must come from the same split"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    classes = FASHION_MNIST_CLASSES if kind == "fashion-mnist" else MNIST_CLASSES
    return ImageSet(
        _from_uint8(pixels[:, None]), _labels(labels), classes, f"{kind}:{split}",
        files=(images_path, labels_path),
    )


def _expected_idx(split: str) -> str:
    prefix = _IDX_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"


def _raw_or_gz(stem: Path) -> Path | None:
    for path in (stem, stem.with_name(stem.name + ".gz")):
        if path.is_file():
            return path
    return None


def _read_at_most(f: Any, n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, in chunks: memory follows the data, not a header's claim."""
    chunks = []
    while n > 0 and (chunk := f.read(min(n, 1 << 24))):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """The uint8 array of one IDX file (raw or .gz), its header checked."""
    what = "image" if ndim == 3 else "label"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise ValueError(f"{path}: not an IDX file (it must start with bytes 00 00)")
            found = struct.unpack(">I", head)[0]
            if found != magic:
                raise ValueError(
                    f"{path}: IDX magic number {found} (0x{found:08x}), expected {magic} "
                    f"(0x{magic:08x}: unsigned bytes in {ndim} dimension(s), an IDX {what} file)"
                )
            raw = f.read(4 * ndim)
            if len(raw) != 4 * ndim:
                raise ValueError(f"{path}: IDX header cut short ({ndim} dimension(s) expected)")
            dims = struct.unpack(f">{ndim}I", raw)
            if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
                raise ValueError(f"{path}: IDX images of size {dims[1]}x{dims[2]}")
            count = math.prod(dims)
            data = _read_at_most(f, count + 1)  # one byte more: trailing data is an error too
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the IDX file ({err})") from None
    if len(data) != count:
        size = "more" if len(data) > count else f"{len(data)}"
        raise ValueError(
            f"{path}: the IDX header announces {' x '.join(map(str, dims))} = {count} bytes "
            f"of data, the file holds {size}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


# --------------------------------------------------------------------------- CIFAR-10
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_META = "batches.meta"


def cifar10(
    folder: str | os.PathLike, *, split: str = "train", check_md5: bool = False
) -> ImageSet:
    """CIFAR-10 from its python batches: (N, 3, 32, 32) images, labels 0..9.

    ``folder`` is ``cifar-10-batches-py`` (the folder in ``cifar-10-python.tar.gz``) or the
    folder holding it; ``split="train"`` reads ``data_batch_1`` .. ``data_batch_5`` in order
    (50,000 images), ``split="test"`` reads ``test_batch`` (10,000). Class names come from
    ``batches.meta`` when present (else :data:`CIFAR10_CLASSES`). The batches are pickles:
    they are read by an unpickler that admits no global but the three numpy functions that
    rebuild a uint8 array, so a file asking for anything else is refused before anything in
    it runs. ``check_md5=True`` compares each file read with :data:`CIFAR10_MD5`, the md5
    published with the data set. ``flips`` is True (the paper's CIFAR-10 recipe flips).
    """
    _check_choice("split", split, SPLITS)
    names = _CIFAR_FILES[split]
    expected = (
        f"{', '.join(names)} (and {_CIFAR_META}) in it or in its subfolder {_CIFAR_DIR}, the "
        "folder that cifar-10-python.tar.gz unpacks to"
    )
    root = _folder(folder, "CIFAR-10", expected)
    for where in (root, root / _CIFAR_DIR):
        if all((where / n).is_file() for n in names):
            break
    else:
        raise FileNotFoundError(f"no CIFAR-10 python batches in {root}: expected {expected}")
    meta_path = where / _CIFAR_META
    if check_md5:
        for n in (*names, _CIFAR_META) if meta_path.is_file() else names:
            _check_md5(where / n, CIFAR10_MD5[n])
    classes = _cifar_classes(meta_path) if meta_path.is_file() else CIFAR10_CLASSES
    pixels, labels = [], []
    for n in names:
        x, y = _cifar_batch(where / n, len(classes))
        pixels.append(x)
        labels.append(y)
    x = np.concatenate(pixels).reshape(-1, 3, 32, 32)  # rows: 1024 red, green, blue; row-major
    read = tuple(where / n for n in names) + ((meta_path,) if meta_path.is_file() else ())
    return ImageSet(
        _from_uint8(x), _labels(np.concatenate(labels)), classes, f"cifar10:{split}", flips=True,
        files=read,
    )


def _check_md5(path: Path, expected: str) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{path}: md5 {digest.hexdigest()} differs from the published {expected} (a "
            "damaged or altered file, or not CIFAR-10's python version); check_md5=False "
            "skips the check"
        )


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a class or function that a CIFAR-10 batch never holds."""


def _reconstruct_fn() -> Any:
    """Numpy's array-rebuilding function (numpy.core / numpy._core, whatever the release)."""
    return np.ndarray((0,), np.uint8).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes, and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedGlobal(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that admits only the globals a CIFAR-10 batch needs.

    Admits only the globals a CIFAR-10 batch needs to rebuild its numpy uint8 arrays:
    ``numpy.core.multiarray._reconstruct`` (or ``numpy._core``), ``numpy.ndarray``,
    ``numpy.dtype``, and ``_codecs.encode`` for latin-1 text only (how Python 3 writes bytes
    at protocol 2). Every other global is refused before it is looked up, let alone called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct_fn()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise RefusedGlobal(f"{module}.{name}")


def _unpickle(path: Path) -> Any:
    try:
        # from memory: a length in the pickle cannot make the reader allocate beyond the file
        return _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except RefusedGlobal as err:
        raise ValueError(
            f"{path}: the pickle asks for {err}, which a CIFAR-10 batch never holds; refused, "
            "nothing in the file was run"
        ) from None
    except Exception as err:  # any malformed pickle: truncated, wrong opcodes, bad args
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(err).__name__}: {err})"
        ) from None


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(_unpickle(path), path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != 3 * 32 * 32
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else repr(type(data))
        raise ValueError(f"{path}: key b'data' must be a uint8 (N, 3072) array, got {got}")
    if not isinstance(labels, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels
    ):
        raise ValueError(f"{path}: key b'labels' must be a list of integers")
    if len(labels) != data.shape[0]:
        raise ValueError(
            f"{path}: {len(labels)} labels for {data.shape[0]} images (b'labels', b'data')"
        )
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{path}: labels must be 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return data, y


def _cifar_classes(path: Path) -> tuple[str, ...]:
    names = _str_keys(_unpickle(path), path).get("label_names")
    if not isinstance(names, list) or not names or not all(
        isinstance(n, bytes | str) for n in names
    ):
        raise ValueError(f"{path}: key b'label_names' must be a list of class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


# --------------------------------------------------------------------------- image folders
_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def image_folder(
    folder: str | os.PathLike, *, size: int | tuple[int, int] | None = None
) -> ImageSet:
    """PNG / JPEG images (``.png``, ``.jpg``, ``.jpeg``) from a folder, read with Pillow.

    Layouts: images directly in ``folder`` (unlabelled), or one subfolder per class
    (``folder/CLASS/*.png``; labels are the indices of the sorted names of the subfolders that
    hold images), not both. Names starting with ``.`` and other files are skipped; files are
    read in sorted order. 8-bit grayscale images give 1 channel; when any image is in colour,
    all give 3 (RGB; an alpha channel is dropped). Without ``size`` every image must have the
    same size; ``size=S`` or ``size=(H, W)`` resizes each (bicubic, the aspect ratio is not
    kept). ``flips`` is False: pass the images to :func:`hflip` where mirrored images fit.
    """
    expected = (
        f"PNG/JPEG files ({', '.join(IMAGE_EXTENSIONS)}) in it, or in one subfolder per class "
        "(FOLDER/CLASS/IMAGE.png)"
    )
    root = _folder(folder, "image", expected)
    shape = _size(size)
    image_lib = _pillow()
    top = _image_files(root)
    subdirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    groups = [(d.name, files) for d in subdirs if (files := _image_files(d))]
    if top and groups:
        raise ValueError(
            f"{root} holds images both at its top ({top[0].name}, ...) and in class subfolders "
            f"({groups[0][0]}/, ...): use one layout"
        )
    if not top and not groups:
        raise FileNotFoundError(f"no images in {root}: expected {expected}")
    files = top if top else [f for _, fs in groups for f in fs]
    arrays = [_read_image(image_lib, f, shape) for f in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        first = arrays[0].shape[:2]
        odd = next(i for i, a in enumerate(arrays) if a.shape[:2] != first)
        raise ValueError(
            f"images in {root} differ in size: {files[0].name} is {first[0]}x{first[1]}, "
            f"{files[odd].relative_to(root)} is {arrays[odd].shape[0]}x{arrays[odd].shape[1]} "
            "(height x width); pass size= to resize them all"
        )
    channels = max(a.shape[2] for a in arrays)
    pixels = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays])
    images = _from_uint8(pixels.transpose(0, 3, 1, 2))
    if top:
        return ImageSet(images, None, (), root.name, files=tuple(files))
    labels = np.repeat(np.arange(len(groups)), [len(fs) for _, fs in groups])
    return ImageSet(images, _labels(labels), tuple(n for n, _ in groups), root.name,
                    files=tuple(files))


def _size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if not isinstance(size, tuple | list) else tuple(size)
    if len(hw) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw
    ):
        raise ValueError(f"size must be a positive integer or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image_folder() needs Pillow: pip install 'otcfm[images]'") from None
    return Image


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _read_image(image_lib: Any, path: Path, shape: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 1) or (H, W, 3) uint8 pixels of one PNG / JPEG file."""
    try:
        with image_lib.open(path, formats=("PNG", "JPEG")) as im:
            im.load()
            if im.mode in _GRAY_MODES:
                im = im.convert("L")
            elif im.mode in _COLOR_MODES:
                im = im.convert("RGB")
            else:
                raise ValueError(
                    f"{path}: Pillow mode {im.mode!r} (not 8-bit grayscale or colour) is not "
                    "supported; save it as 8-bit"
                )
            if shape is not None and (im.height, im.width) != shape:
                im = im.resize((shape[1], shape[0]), image_lib.Resampling.BICUBIC)
            pixels = np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as err:  # unreadable, truncated, not PNG/JPEG, decompression bomb
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({err})") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


# --------------------------------------------------------------------------- one grammar
#: the named image sets of :func:`load_images` (the part of a spec before ``:``)
NAMED_SETS = ("digits", *IDX_KINDS, "cifar10")


def is_image_spec(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names an image set of :func:`load_images` (nothing is read).

    A named set (``digits``, ``fashion-mnist[:DIR]``, ``mnist:DIR``, ``cifar10:DIR``) or an existing
    folder. Point-cloud specs (built-in distributions and files) are not.
    """
    text = os.fspath(spec)
    return text.partition(":")[0] in NAMED_SETS or Path(text).expanduser().is_dir()


def with_folder(spec: str, folder: str | os.PathLike) -> str:
    """The spec of a named image set read from ``folder``.

    ``cifar10`` -> ``cifar10:DIR`` (``--data-root DIR`` of ``otcfm train``). ValueError for digits
    (no folder), for a spec that already names its folder, and for a folder spec.
    """
    kind, sep, rest = spec.partition(":")
    if kind not in NAMED_SETS or kind == "digits":
        raise ValueError(f"image spec {spec!r} reads no named data set from a folder "
                         f"({', '.join(n for n in NAMED_SETS if n != 'digits')} do)")
    if sep:
        raise ValueError(f"image spec {spec!r} already names its folder {rest!r}")
    return f"{kind}:{os.fspath(folder)}"


def load_images(
    spec: str | os.PathLike,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    check_md5: bool = False,
) -> ImageSet:
    """An image set from a spec: one of :data:`IMAGE_SPECS`.

    A named spec wins over a folder of the same name (write ``./digits`` for the folder).
    ``split`` ("train" or "test") applies to the IDX and CIFAR-10 sets (digits are one set:
    "train" only); ``size`` only to a folder of images; ``check_md5`` only to CIFAR-10.
    """
    _check_choice("split", split, SPLITS)
    text = os.fspath(spec)
    if not isinstance(text, str) or not text:
        raise ValueError(f"image spec must be a non-empty string: one of {IMAGE_SPECS}")
    kind, sep, rest = text.partition(":")
    named = kind in NAMED_SETS
    if named and sep and not rest:
        raise ValueError(f"image spec {text!r} names no folder after ':'")
    if named and size is not None:
        raise ValueError(f"size applies to a folder of images only, not to {kind!r}")
    if named and check_md5 and kind != "cifar10":
        raise ValueError(f"check_md5 applies to cifar10 only, not to {kind!r}")
    if kind == "digits":
        if sep:
            raise ValueError("image spec 'digits' takes no folder (scikit-learn ships the data)")
        if split != "train":
            raise ValueError("digits have no test split: the 1,797 images are one set")
        return digits()
    if kind in IDX_KINDS:
        return idx(rest or None, split=split, kind=kind)
    if kind == "cifar10":
        if not sep:
            raise ValueError("image spec 'cifar10' needs a folder: 'cifar10:DIR'")
        return cifar10(rest, split=split, check_md5=check_md5)
    if check_md5:
        raise ValueError("check_md5 applies to cifar10 only, not to a folder of images")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"image spec {text!r} is no folder; expected one of {IMAGE_SPECS}")
    if split != "train":
        raise ValueError("a folder of images has no test split: give the test folder instead")
    return image_folder(path, size=size)


# --------------------------------------------------------------------------- augmentation
def hflip(images: Tensor, generator: torch.Generator | None = None, *, p: float = 0.5) -> Tensor:
    """Each image of ``images`` (N, C, H, W) mirrored left-right with probability ``p``.

    The N coin flips are one ``torch.rand`` draw from ``generator`` (on its device): same
    seed, same flips. Returns a new tensor; ``images`` is not changed. Use it only where a
    mirrored image is as likely as the image (``ImageSet.flips``): not for digits.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be an (N, C, H, W) tensor, got {got}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    device = generator.device if generator is not None else images.device
    coin = torch.rand(images.shape[0], generator=generator, device=device) < p
    return torch.where(coin.to(images.device)[:, None, None, None], images.flip(-1), images)

