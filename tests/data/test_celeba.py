"""CelebA reader on folders the tests write in torchvision's layout (the real set is never
fetched): tables, splits, attribute labels, crop and resize, and every malformed input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcfm.data.celeba import CELEBA_SPLITS, celeba, celeba_attributes

PIL = pytest.importorskip("PIL.Image")

NAMES = ("Smiling", "Male", "Eyeglasses")
# (file, values, split, colour of its centre, colour of its border)
ROWS = [
    ("000001.jpg", (1, -1, -1), 0, (200, 40, 40), (0, 0, 0)),
    ("000002.jpg", (-1, 1, -1), 0, (40, 200, 40), (255, 255, 255)),
    ("000003.jpg", (1, 1, 1), 0, (40, 40, 200), (0, 0, 0)),
    ("000004.jpg", (-1, -1, 1), 1, (120, 120, 120), (0, 0, 0)),
    ("000005.jpg", (1, -1, -1), 2, (250, 250, 10), (0, 0, 0)),
]


def write_celeba(root, rows=ROWS, names=NAMES, nested=True, attr_text=None, part_text=None):
    folder = root / "celeba" if nested else root
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    for name, _, _, centre, border in rows:
        pixels = np.empty((218, 178, 3), np.uint8)
        pixels[:] = border
        pixels[39:179, 19:159] = centre  # the centred 140 x 140 square of a 178 x 218 face
        PIL.fromarray(pixels).save(images / name, quality=95)
    lines = [str(len(rows)), " ".join(names)]
    lines += [f"{name}  " + " ".join(f"{v:2d}" for v in values) for name, values, *_ in rows]
    (folder / "list_attr_celeba.txt").write_text(
        attr_text if attr_text is not None else "\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        part_text if part_text is not None
        else "".join(f"{name} {split}\n" for name, _, split, *_ in rows))
    return folder


def test_tables_are_read_as_written(tmp_path):
    folder = write_celeba(tmp_path)
    table = celeba_attributes(tmp_path)
    assert table.folder == folder and table.names == NAMES
    assert table.files == tuple(r[0] for r in ROWS)
    assert table.values.dtype == torch.int8
    assert table.values.tolist() == [list(r[1]) for r in ROWS]
    assert table.split.tolist() == [r[2] for r in ROWS]
    assert table.column("Male").tolist() == [-1, 1, 1, -1, -1]
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Blond'.*Smiling, Male"):
        table.column("Blond")


@pytest.mark.parametrize("nested", [True, False])
def test_split_attribute_crop_and_resize(tmp_path, nested):
    """The training split, labelled by Smiling: the centre square's colour (JPEG, within 4
    levels of 255) fills the resized image, the border is cut away."""
    write_celeba(tmp_path, nested=nested)
    data = celeba(tmp_path, split="train", attribute="Smiling", size=16)
    assert data.images.shape == (3, 3, 16, 16) and data.images.dtype == torch.float32
    assert data.labels.tolist() == [1, 0, 1]
    assert data.classes == ("not Smiling", "Smiling")
    for k, (_, _, _, centre, _) in enumerate(ROWS[:3]):
        expected = torch.tensor(centre, dtype=torch.float32) / 127.5 - 1
        got = data.images[k].mean(dim=(1, 2))
        assert torch.allclose(got, expected, atol=4 / 127.5), (k, got, expected)
    assert [p.name for p in data.files] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert len(celeba(tmp_path, split="all", size=8)) == 5
    assert celeba(tmp_path, split="test", size=8).labels is None
    assert len(celeba(tmp_path, split="train", size=8, limit=2)) == 2
    assert set(CELEBA_SPLITS) == {"train", "valid", "test"}


def test_a_crop_larger_than_the_image_takes_its_smaller_side(tmp_path):
    write_celeba(tmp_path)
    whole = celeba(tmp_path, split="valid", crop=500, size=178)
    assert whole.images.shape == (1, 3, 178, 178)
    # the 178 x 178 square keeps the black border rows above and below the grey centre
    assert float(whole.images[0, :, 0, :].mean()) < -0.9


@pytest.mark.parametrize(
    "attr_text, part_text, match",
    [
        ("x\nA B\n", None, "line 1: expected the number of images"),
        ("1\nA A\nf.jpg 1 1\n", None, "line 2: expected distinct attribute names"),
        ("2\nA\n000001.jpg 1\n", None, "announces 2 images, the table has 1"),
        ("1\nA\n000001.jpg 1 1\n", None, "line 3: expected a file name and 1 values"),
        ("1\nA\n000001.jpg 0\n", None, "line 3: attribute values are -1 or 1, got '0'"),
        ("1\nA\n../secret.jpg 1\n", None, "not a plain image file name"),
        ("1\nA\nsub/000001.jpg 1\n", None, "not a plain image file name"),
        ("1\nA\n000001.jpg 1\n", "000001.jpg 3\n", "split 0, 1 or 2"),
        ("1\nA\n000001.jpg 1\n", "000009.jpg 0\n", "000009.jpg is not in"),
        ("2\nA\n000001.jpg 1\n000002.jpg -1\n", "000001.jpg 0\n", "000002.jpg .* has no split"),
    ],
)
def test_malformed_tables_name_file_and_line(tmp_path, attr_text, part_text, match):
    write_celeba(tmp_path, attr_text=attr_text, part_text=part_text)
    with pytest.raises(ValueError, match=match):
        celeba_attributes(tmp_path)


def test_missing_files_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CelebA in .*list_attr_celeba.txt"):
        celeba(tmp_path)
    folder = write_celeba(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        celeba(tmp_path, split="validation")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        celeba(tmp_path, size=0)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        celeba(tmp_path, limit=0)
    with pytest.raises(ValueError, match="unknown CelebA attribute"):
        celeba(tmp_path, attribute="smiling")
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt is missing"):
        celeba(tmp_path)


def test_a_damaged_image_names_its_file(tmp_path):
    folder = write_celeba(tmp_path)
    (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="000002.jpg: not a readable PNG/JPEG"):
        celeba(tmp_path, split="train")
