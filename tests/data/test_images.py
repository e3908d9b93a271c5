"""Image sets from files: ``otcfm.data.images`` (digits, IDX, CIFAR-10 batches, image folders).

Oracles: tiny files in every format written here (IDX headers packed with struct, CIFAR-10
batches pickled at protocol 2 as the data set's own are, PNG / JPEG written with Pillow); the
loaded pixels equal the written bytes mapped by v / 127.5 - 1 computed in float64, pixel by
pixel at the positions the format documents (CIFAR: channel c, row h, column w at byte
c * 1024 + h * 32 + w); a hostile pickle that plain ``pickle.load`` runs (it writes a marker
file) is refused by the loader and writes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from otcfm.data import (
    ImageSet,
    cifar10,
    digits,
    hflip,
    idx,
    image_folder,
    load_images,
)
from otcfm.data import images as im

RNG = np.random.default_rng(0)


def scaled(pixels: np.ndarray) -> np.ndarray:
    """The documented scaling, in float64: 0 -> -1, 255 -> 1."""
    return pixels.astype(np.float64) / 255.0 * 2.0 - 1.0


def random_pixels(shape: tuple[int, ...]) -> np.ndarray:
    x = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    x.flat[0], x.flat[-1] = 0, 255  # both ends of the range appear
    return x


# --------------------------------------------------------------------------- digits
def test_digits_shape_scaling_and_label_counts():
    from sklearn.datasets import load_digits

    d = digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.float32
    assert d.labels is not None and d.labels.dtype == torch.int64
    # per-class counts of scikit-learn's digits (its documentation: 1,797 images, ~180 a class)
    assert torch.bincount(d.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    raw = load_digits().images  # 0..16
    np.testing.assert_allclose(d.images[:, 0].numpy(), raw / 16.0 * 2.0 - 1.0, rtol=0, atol=1e-7)
    assert float(d.images.min()) == -1.0 and float(d.images.max()) == 1.0
    assert d.classes == tuple("0123456789") and d.num_classes == 10 and d.shape == (1, 8, 8)
    assert d.flips is False  # digits are not mirror-symmetric


@pytest.mark.parametrize(
    "module,call,extra",
    [
        ("sklearn.datasets", digits, "singlecell"),
        ("PIL", lambda: image_folder(Path(__file__).parent), "images"),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, call, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails
    with pytest.raises(ImportError, match=rf"pip install 'otcfm\[{extra}\]'"):
        call()


# --------------------------------------------------------------------------- IDX
def write_idx(path: Path, magic: int, array: np.ndarray, *, dims=None, extra=b"") -> Path:
    dims = array.shape if dims is None else dims
    blob = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    blob += array.astype(np.uint8).tobytes() + extra
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
    return path


def write_idx_pair(folder: Path, split: str, n: int, *, gz: bool) -> tuple[np.ndarray, ...]:
    prefix = {"train": "train", "test": "t10k"}[split]
    ext = ".gz" if gz else ""
    x = random_pixels((n, 28, 28))
    y = RNG.integers(0, 10, size=n).astype(np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", 2051, x)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", 2049, y)
    return x, y


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_pixels_and_labels_equal_what_was_written(tmp_path, gz, split):
    x, y = write_idx_pair(tmp_path, split, 7, gz=gz)
    s = idx(tmp_path, split=split)
    assert s.images.shape == (7, 1, 28, 28) and s.images.dtype == torch.float32
    np.testing.assert_allclose(s.images[:, 0].numpy(), scaled(x), rtol=0, atol=1e-7)
    assert s.images.view(-1)[0] == -1.0 and s.images.view(-1)[-1] == 1.0  # exact ends
    assert s.labels.tolist() == y.tolist()
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot" and len(s.classes) == 10
    assert s.name == f"fashion-mnist:{split}" and s.flips is False


@pytest.mark.parametrize("kind,sub", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_idx_reads_torchvisions_layout(tmp_path, kind, sub):
    x, y = write_idx_pair(tmp_path / sub / "raw", "train", 3, gz=False)
    write_idx_pair(tmp_path / "other", "train", 3, gz=False)  # a decoy elsewhere
    s = idx(tmp_path, kind=kind)
    np.testing.assert_allclose(s.images[:, 0].numpy(), scaled(x), rtol=0, atol=1e-7)
    assert s.labels.tolist() == y.tolist()
    names = im.FASHION_MNIST_CLASSES if kind == "fashion-mnist" else tuple("0123456789")
    assert s.classes == names


def test_idx_defaults_to_debians_folder(tmp_path, monkeypatch):
    x, _ = write_idx_pair(tmp_path, "test", 2, gz=True)
    monkeypatch.setattr(im, "DEBIAN_FASHION_MNIST", tmp_path)
    s = load_images("fashion-mnist", split="test")
    np.testing.assert_allclose(s.images[:, 0].numpy(), scaled(x), rtol=0, atol=1e-7)


def test_idx_wrong_folder_names_the_expected_files(tmp_path):
    (tmp_path / "readme.txt").write_text("no data here")
    with pytest.raises(FileNotFoundError) as err:
        idx(tmp_path, split="test")
    text = str(err.value)
    for part in ("t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]",
                 str(im.DEBIAN_FASHION_MNIST), "FashionMNIST/raw", str(tmp_path)):
        assert part in text
    assert "\n" not in text
    with pytest.raises(FileNotFoundError, match="MNIST has no default folder"):
        idx(kind="mnist")
    with pytest.raises(FileNotFoundError, match=r"not found: .*expected train-images-idx3"):
        idx(tmp_path / "missing")


def test_idx_without_debians_package_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(im, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as err:
        load_images("fashion-mnist")
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text and str(tmp_path / "absent") in text
    assert "train-images-idx3-ubyte[.gz]" in text and "\n" not in text
    with pytest.raises(ValueError, match="split must be one of train, test"):
        idx(tmp_path, split="valid")


def corrupt(case: str, folder: Path) -> str:
    """Write a train pair damaged as ``case``; return the file the error must name."""
    x = random_pixels((4, 28, 28))
    y = np.array([1, 2, 3, 4], dtype=np.uint8)
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    write_idx(labels, 2049, y)
    if case == "magic":  # a labels file where the images should be
        write_idx(images, 2049, x.reshape(-1))
    elif case == "short":
        write_idx(images, 2051, x, dims=(5, 28, 28))
    elif case == "huge":  # a header announcing 1.7 TB: refused after reading what is there
        write_idx(images, 2051, x, dims=(2**31, 28, 28))
    elif case == "trailing":
        write_idx(images, 2051, x, extra=b"\x00")
    elif case == "count":
        write_idx(images, 2051, x)
        write_idx(labels, 2049, y[:3])
    elif case == "label":
        write_idx(images, 2051, x)
        write_idx(labels, 2049, np.array([1, 2, 3, 10]))
    elif case == "gzip":
        write_idx(images, 2051, x)
        labels.unlink()
        labels.with_name(labels.name + ".gz").write_bytes(b"\x1f\x8b not really gzip")
        return labels.name + ".gz"
    return labels.name if case in ("count", "label") else images.name


@pytest.mark.parametrize(
    "case,message",
    [
        ("magic", "magic number 2049"),
        ("short", "announces 5 x 28 x 28 = 3920 bytes of data, the file holds 3136"),
        ("huge", "announces 2147483648 x 28 x 28 = 1683627180032 bytes of data, the file holds"),
        ("trailing", "the file holds more"),
        ("count", "holds 3 labels but"),
        ("label", "labels must be 0..9, found 10"),
        ("gzip", "cannot read the IDX file"),
    ],
)
def test_idx_refuses_damaged_files(tmp_path, case, message):
    name = corrupt(case, tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        idx(tmp_path)
    assert name in str(err.value)


def test_real_fashion_mnist_test_split_when_installed():
    """Debian's dataset-fashion-mnist, when this machine has it: 10,000 test images, 1,000 a
    class, and the first labels of the published test set."""
    if not (im.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"dataset-fashion-mnist is not installed in {im.DEBIAN_FASHION_MNIST}")
    s = idx(split="test")
    assert s.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.labels).tolist() == [1000] * 10
    assert s.labels[:5].tolist() == [9, 2, 1, 1, 6]  # Ankle boot, Pullover, Trouser, ...
    assert float(s.images.min()) == -1.0 and float(s.images.max()) == 1.0


# --------------------------------------------------------------------------- CIFAR-10
def write_batch(path: Path, data: np.ndarray, labels: list[int], **extra) -> None:
    batch = {b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))], **extra}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(folder: Path, n: int = 3, *, meta: bool = True) -> dict[str, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = random_pixels((n, 3072))
        labels = RNG.integers(0, 10, size=n).tolist()
        write_batch(folder / name, data, labels)
        written[name] = (data, labels)
    if meta:
        names = [f"class{k}".encode() for k in range(10)]
        meta_blob = {b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta_blob, protocol=2))
    return written


def cifar_oracle(data: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) from CIFAR rows: channel c, row h, column w at byte c*1024 + h*32 + w."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return scaled(data[:, c * 1024 + h * 32 + w])


@pytest.mark.parametrize("nested", [False, True], ids=["batches-folder", "parent-folder"])
def test_cifar10_pixels_labels_and_order(tmp_path, nested):
    batches = tmp_path / "cifar-10-batches-py"
    written = write_cifar(batches)
    s = cifar10(tmp_path if nested else batches)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert s.images.shape == (15, 3, 32, 32)
    expected = np.concatenate([cifar_oracle(d) for d, _ in train])
    np.testing.assert_allclose(s.images.numpy(), expected, rtol=0, atol=1e-7)
    assert s.labels.tolist() == [v for _, labels in train for v in labels]
    assert s.classes == tuple(f"class{k}" for k in range(10))  # from batches.meta
    assert s.flips is True and s.name == "cifar10:train"
    t = cifar10(batches, split="test")
    data, labels = written["test_batch"]
    np.testing.assert_allclose(t.images.numpy(), cifar_oracle(data), rtol=0, atol=1e-7)
    assert t.labels.tolist() == labels


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as CIFAR-10's own files are (Python 2's cPickle at protocol 2: byte
    strings as BINSTRING, numpy.core.multiarray._reconstruct), assembled opcode by opcode."""

    def string(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b

    def small(k: int) -> bytes:
        return b"K" + bytes([k])

    n, m = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + small(0) + b"\x85"
        + string(b"b") + b"\x87R("  # _reconstruct(ndarray, (0,), b"b"), then its state:
        + small(1) + b"M" + struct.pack("<H", n) + b"M" + struct.pack("<H", m) + b"\x86"
        + b"cnumpy\ndtype\n" + string(b"u1") + small(0) + small(1) + b"\x87R("
        + small(3) + string(b"|") + b"NNN" + (b"J" + struct.pack("<i", -1)) * 2 + small(0)
        + b"tb" + b"\x89" + string(data.tobytes()) + b"tb"
    )
    items = b"".join(small(v) for v in labels)
    return (b"\x80\x02}(" + string(b"data") + array + string(b"labels") + b"](" + items
            + b"e" + string(b"batch_label") + string(b"testing batch 1 of 1") + b"u.")


def test_cifar10_reads_batches_pickled_as_the_published_ones(tmp_path):
    write_cifar(tmp_path)
    data, labels = random_pixels((4, 3072)), [3, 1, 4, 1]
    blob = python2_batch(data, labels)
    plain = pickle.loads(blob, encoding="bytes")  # the blob is what it claims to be
    assert np.array_equal(plain[b"data"], data) and plain[b"labels"] == labels
    (tmp_path / "test_batch").write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's old module name costs no deprecation warning
        s = cifar10(tmp_path, split="test")
    np.testing.assert_allclose(s.images.numpy(), cifar_oracle(data), rtol=0, atol=1e-7)
    assert s.labels.tolist() == labels


def test_cifar10_without_meta_uses_the_published_class_names(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert cifar10(tmp_path, split="test").classes[:2] == ("airplane", "automobile")


def test_cifar10_wrong_folder_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path)
    text = str(err.value)
    for part in ("data_batch_1", "data_batch_5", "batches.meta", "cifar-10-batches-py"):
        assert part in text
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_images(f"cifar10:{tmp_path}", split="test")
    with pytest.raises(FileNotFoundError, match=r"not found: .*expected data_batch_1"):
        cifar10(tmp_path / "absent")


class Hostile:
    """Plain pickle.load runs exec(code) while loading this object."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class CallsNumpy:
    """A numpy function that is not one of the three an array needs."""

    def __reduce__(self):
        return (np.load, ("/nonexistent.npy",))


def test_cifar10_refuses_a_hostile_pickle_and_runs_nothing(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    write_batch(tmp_path / "data_batch_3", random_pixels((2, 3072)), [0, 1], evil=Hostile(code))
    # the file is truly hostile: plain pickle runs it
    pickle.loads((tmp_path / "data_batch_3").read_bytes())
    assert marker.read_text() == "ran"
    marker.unlink()
    refused = r"asks for (__builtin__|builtins)\.exec.*refused, nothing"
    with pytest.raises(ValueError, match=refused) as err:
        cifar10(tmp_path)
    assert "data_batch_3" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,refused",
    [(CallsNumpy(), "numpy.load"), (Hostile("pass"), "(__builtin__|builtins).exec")],
)
def test_cifar10_refuses_every_other_global(tmp_path, payload, refused):
    write_cifar(tmp_path)
    write_batch(tmp_path / "test_batch", random_pixels((1, 3072)), [0], evil=payload)
    with pytest.raises(ValueError, match=f"asks for {refused}"):
        cifar10(tmp_path, split="test")


def test_cifar10_refuses_codecs_other_than_latin1(tmp_path):
    write_cifar(tmp_path)
    # _codecs.encode("text", "rot13"), written by hand at protocol 2
    blob = b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00textX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "test_batch").write_bytes(blob)
    with pytest.raises(ValueError, match="rot13"):
        cifar10(tmp_path, split="test")


@pytest.mark.parametrize(
    "data,labels,message",
    [
        (np.zeros((2, 3072), np.float32), [0, 1], "uint8 \\(N, 3072\\) array"),
        (np.zeros((2, 1024), np.uint8), [0, 1], "uint8 \\(N, 3072\\) array"),
        (np.zeros((2, 3072), np.uint8), [0], "1 labels for 2 images"),
        (np.zeros((2, 3072), np.uint8), [0, 10], "labels must be 0..9"),
    ],
)
def test_cifar10_refuses_malformed_batches(tmp_path, data, labels, message):
    write_cifar(tmp_path)
    write_batch(tmp_path / "test_batch", data, labels)
    with pytest.raises(ValueError, match=message):
        cifar10(tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ValueError, match="not a readable CIFAR-10 python batch"):
        cifar10(tmp_path, split="test")


def test_cifar10_md5_check(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="md5 .* differs from the published") as err:
        cifar10(tmp_path, check_md5=True)
    assert "data_batch_1" in str(err.value)
    # with the files' own md5 as the published one the check passes
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    monkeypatch.setattr(im, "CIFAR10_MD5", sums)
    assert len(cifar10(tmp_path, check_md5=True)) == 15
    (tmp_path / "data_batch_4").write_bytes((tmp_path / "data_batch_4").read_bytes() + b" ")
    with pytest.raises(ValueError, match="data_batch_4: md5"):
        cifar10(tmp_path, check_md5=True)


def test_published_cifar10_md5_values():
    assert set(im.CIFAR10_MD5) == {*(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                                   "batches.meta"}
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in im.CIFAR10_MD5.values())
    assert im.CIFAR10_MD5["data_batch_1"] == "c99cafc152244af753f735de768cd75f"


# --------------------------------------------------------------------------- image folders
Image = pytest.importorskip("PIL.Image")


def save(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path, fmt)


def test_image_folder_with_class_subfolders(tmp_path):
    written = {}
    for cls, count in (("cat", 2), ("ant", 3)):  # sorted: ant = 0, cat = 1
        for i in range(count):
            written[(cls, i)] = random_pixels((5, 6, 3))
            save(tmp_path / cls / f"{i}.png", written[(cls, i)])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    s = image_folder(tmp_path)
    assert s.classes == ("ant", "cat") and s.labels.tolist() == [0, 0, 0, 1, 1]
    assert s.images.shape == (5, 3, 5, 6)
    order = [("ant", 0), ("ant", 1), ("ant", 2), ("cat", 0), ("cat", 1)]
    expected = np.stack([written[k].transpose(2, 0, 1) for k in order])
    np.testing.assert_allclose(s.images.numpy(), scaled(expected), rtol=0, atol=1e-7)
    assert s.flips is False and s.name == tmp_path.name


def test_image_folder_flat_grayscale_and_mixed(tmp_path):
    gray = random_pixels((4, 4, 1))
    save(tmp_path / "a.png", gray)
    s = image_folder(tmp_path)
    assert s.labels is None and s.classes == () and s.images.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(s.images[0, 0].numpy(), scaled(gray[..., 0]), rtol=0, atol=1e-7)
    color = random_pixels((4, 4, 3))
    save(tmp_path / "b.png", color)
    s = image_folder(tmp_path)  # one colour image: all in RGB, the gray one repeated
    assert s.images.shape == (2, 3, 4, 4)
    gray3 = np.repeat(gray, 3, 2).transpose(2, 0, 1)
    np.testing.assert_allclose(s.images[0].numpy(), scaled(gray3), rtol=0, atol=1e-7)
    np.testing.assert_allclose(s.images[1].numpy(), scaled(color.transpose(2, 0, 1)),
                               rtol=0, atol=1e-7)


def test_image_folder_reads_jpeg(tmp_path):
    flat = np.full((8, 8, 3), (200, 40, 90), dtype=np.uint8)  # flat colour: JPEG keeps it
    save(tmp_path / "x.jpg", flat, "JPEG")
    s = image_folder(tmp_path)
    np.testing.assert_allclose(s.images[0].numpy(), scaled(flat.transpose(2, 0, 1)),
                               rtol=0, atol=4 / 127.5)


def test_image_folder_sizes(tmp_path):
    save(tmp_path / "a.png", random_pixels((4, 4, 3)))
    save(tmp_path / "b.png", random_pixels((6, 5, 3)))
    with pytest.raises(ValueError, match=r"differ in size: a.png is 4x4, b.png is 6x5.*size="):
        image_folder(tmp_path)
    s = image_folder(tmp_path, size=(3, 2))
    assert s.images.shape == (2, 3, 3, 2)
    assert float(s.images.min()) >= -1.0 and float(s.images.max()) <= 1.0
    assert load_images(str(tmp_path), size=4).images.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        image_folder(tmp_path, size=0)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no images in .*\.png.*FOLDER/CLASS"):
        image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not found: .*expected PNG/JPEG"):
        image_folder(tmp_path / "absent")
    save(tmp_path / "top.png", random_pixels((4, 4, 3)))
    save(tmp_path / "cls" / "x.png", random_pixels((4, 4, 3)))
    with pytest.raises(ValueError, match="both at its top"):
        image_folder(tmp_path)
    (tmp_path / "top.png").write_bytes(b"\x89PNG but broken")
    (tmp_path / "cls" / "x.png").unlink()
    with pytest.raises(ValueError, match="top.png: not a readable PNG/JPEG image"):
        image_folder(tmp_path)
    (tmp_path / "top.png").unlink()
    Image.fromarray(np.zeros((3, 3), np.uint16) + 1000).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match="deep.png: Pillow mode"):
        image_folder(tmp_path)


# --------------------------------------------------------------------------- the spec grammar
def test_load_images_specs(tmp_path):
    write_idx_pair(tmp_path / "MNIST" / "raw", "train", 2, gz=True)
    s = load_images(f"mnist:{tmp_path}")
    assert s.name == "mnist:train" and s.classes[3] == "3"
    write_cifar(tmp_path / "cifar-10-batches-py", n=1)
    assert load_images(f"cifar10:{tmp_path}", split="test").images.shape == (1, 3, 32, 32)
    assert len(load_images("digits")) == 1797
    for spec, error, message in [
        ("digits", ValueError, "no test split"),
        ("cifar10", ValueError, "needs a folder"),
        ("mnist:", ValueError, "names no folder"),
        (str(tmp_path / "nothing"), FileNotFoundError, "is no folder; expected one of 'digits'"),
    ]:
        with pytest.raises(error, match=message):
            load_images(spec, split="test" if spec == "digits" else "train")
    with pytest.raises(ValueError, match="size applies to a folder of images only"):
        load_images("digits", size=8)
    with pytest.raises(ValueError, match="check_md5 applies to cifar10 only"):
        load_images(f"mnist:{tmp_path}", check_md5=True)


# --------------------------------------------------------------------------- the result type
def test_image_set_checks_its_fields():
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\]"):
        ImageSet(x + 1.5, None, (), "bad")
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\]"):
        ImageSet(x * float("nan"), None, (), "bad")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ImageSet(x, torch.tensor([0, 2]), ("a", "b"), "bad")
    with pytest.raises(ValueError, match="labels must be an int64"):
        ImageSet(x, torch.tensor([0.0, 1.0]), ("a", "b"), "bad")
    with pytest.raises(ValueError, match="float32"):
        ImageSet(x.double(), None, (), "bad")


# --------------------------------------------------------------------------- flips
def test_hflip_flips_each_image_with_probability_p():
    x = torch.randn(4000, 2, 3, 5, generator=torch.Generator().manual_seed(1))
    out = hflip(x, torch.Generator().manual_seed(7))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is itself or its mirror image, exactly
    # Binomial(4000, 1/2): mean 2000, sd 31.6; 6 sd either side
    assert 1810 <= int(flipped.sum()) <= 2190
    assert torch.equal(out, hflip(x, torch.Generator().manual_seed(7)))  # same seed, same flips
    assert not torch.equal(out, hflip(x, torch.Generator().manual_seed(8)))
    assert torch.equal(hflip(x, p=0.0), x) and torch.equal(hflip(x, p=1.0), x.flip(-1))
    few = hflip(x, torch.Generator().manual_seed(7), p=0.1)
    assert 300 <= int((few == x.flip(-1)).flatten(1).all(1).sum()) <= 500  # sd 19
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        hflip(x, p=1.5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        hflip(x[0])
