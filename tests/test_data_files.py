"""Tests for otcfm.data.files (load/save/resolve) and the minibatch helpers of otcfm.data."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otcfm.data import (
    SUPPORTED_EXTENSIONS,
    DataSpec,
    PointDataset,
    load_points,
    parse_spec,
    resolve_points,
    sample_batch,
    save_points,
    toy,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pts() -> torch.Tensor:
    # awkward float32 values: tiny, huge, negative, many digits
    x = torch.randn(37, 3, generator=gen(1)) * torch.tensor([1e-7, 1.0, 3e8])
    x[0] = torch.tensor([0.1, -2.5, 1 / 3])
    return x


def write(path, text: str):
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", SUPPORTED_EXTENSIONS)
def test_round_trip_is_exact(tmp_path, pts, ext):
    path = save_points(tmp_path / f"points{ext}", pts)
    assert path.exists()
    y = load_points(path)
    assert y.dtype == torch.float32 and y.shape == pts.shape
    assert torch.equal(y, pts)


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_round_trip_float64(tmp_path, ext):
    x = torch.randn(10, 2, dtype=torch.float64, generator=gen(2)) / 7
    y = load_points(save_points(tmp_path / f"p{ext}", x), dtype=torch.float64)
    assert y.dtype == torch.float64
    assert torch.equal(y, x)


def test_save_accepts_numpy_bf16_and_1d(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert torch.equal(load_points(save_points(tmp_path / "a.npy", x)), torch.from_numpy(x))
    flipped = x[::-1]  # negative strides
    assert torch.equal(
        load_points(save_points(tmp_path / "f.csv", flipped)), torch.tensor(flipped.copy())
    )
    b = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    assert torch.equal(load_points(save_points(tmp_path / "b.csv", b)), b.float())
    v = torch.tensor([1.0, 2.0, 3.0])
    assert load_points(save_points(tmp_path / "v.npy", v)).shape == (3, 1)


def test_save_creates_parents_and_overwrites(tmp_path, pts):
    path = tmp_path / "deep" / "er" / "x.npy"
    save_points(path, pts)
    save_points(path, pts[:5])
    assert load_points(path).shape == (5, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.npy"]  # no temp files left


def test_save_with_header_names_and_select_by_name(tmp_path, pts):
    path = save_points(tmp_path / "named.csv", pts, names=["a", "b", "c"])
    assert path.read_text().splitlines()[0] == "a,b,c"
    assert torch.equal(load_points(path), pts)
    assert torch.equal(load_points(path, columns=["c", "a"]), pts[:, [2, 0]])
    assert torch.equal(load_points(path, columns="b"), pts[:, [1]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ["a", "b"]}, "names has 2 entries but x has 3 columns"),
        ({"names": ["a", "b c", "d"]}, "names must be non-numeric"),
        ({"names": ["a", "1", "d"]}, "names must be non-numeric"),
    ],
)
def test_save_bad_names(tmp_path, pts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_points(tmp_path / "x.csv", pts, **kwargs)


def test_save_errors(tmp_path, pts):
    with pytest.raises(ValueError, match=r"unsupported file extension '\.h5'.*\.npy, \.npz"):
        save_points(tmp_path / "x.h5", pts)
    with pytest.raises(ValueError, match="names= only applies to text files"):
        save_points(tmp_path / "x.npy", pts, names=["a", "b", "c"])
    with pytest.raises(ValueError, match="contains 1 NaN or inf"):
        save_points(tmp_path / "x.npy", torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"shape \(n, d\) or \(n,\)"):
        save_points(tmp_path / "x.npy", torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        save_points(tmp_path / "x.npy", [[1.0, 2.0]])
    with pytest.raises(TypeError, match="x must hold numbers"):
        save_points(tmp_path / "x.npy", np.array([["a"]]))
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- text parsing
def test_csv_with_and_without_header(tmp_path):
    expected = torch.tensor([[1.0, 2.0], [3.5, -4.0], [1e-3, 5e2]])
    plain = write(tmp_path / "plain.csv", "1,2\n3.5,-4\n1e-3,5e2\n")
    header = write(tmp_path / "header.csv", "x, y\n1, 2\n3.5, -4\n1e-3, 5e2\n")
    quoted = write(tmp_path / "quoted.csv", '"x","y"\n1,2\n3.5,-4\n0.001,500\n')
    for p in (plain, header, quoted):
        assert torch.equal(load_points(p), expected), p.name
    assert torch.equal(load_points(header, columns=["y"]), expected[:, [1]])
    assert torch.equal(load_points(quoted, columns=["y", "x"]), expected[:, [1, 0]])


def test_whitespace_separated_comments_blank_lines_and_bom(tmp_path):
    text = "\ufeff# a comment\n  x\ty  z\n\n1 2\t3\n  4   5 6  \n# trailing comment\n\n"
    p = write(tmp_path / "w.txt", text)
    assert torch.equal(load_points(p), torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    tsv = write(tmp_path / "w.tsv", "1\t2\n3\t4\n")
    assert torch.equal(load_points(tsv), torch.tensor([[1.0, 2], [3, 4]]))


def test_select_columns_by_index_skips_non_numeric_columns(tmp_path):
    p = write(tmp_path / "mixed.csv", "label,x,y\ncat,1,2\ndog,3,4\n")
    assert torch.equal(load_points(p, columns=[1, 2]), torch.tensor([[1.0, 2], [3, 4]]))
    assert torch.equal(load_points(p, columns=["x", -1]), torch.tensor([[1.0, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"non-numeric value 'cat' at line 2 \(row 0\), column 0"):
        load_points(p)


def test_single_column_text_is_n_by_1(tmp_path):
    p = write(tmp_path / "one.csv", "value\n1\n2\n3\n")
    assert load_points(p).shape == (3, 1)


# --------------------------------------------------------------------------- npy / npz
def test_npz_key_selection(tmp_path):
    a, b = np.ones((4, 2)), np.zeros((5, 3))
    one = tmp_path / "one.npz"
    np.savez(one, only=a)
    assert torch.equal(load_points(one), torch.ones(4, 2))
    two = tmp_path / "two.npz"
    np.savez(two, pcs=a, labels=b)
    assert load_points(two, key="labels").shape == (5, 3)
    with pytest.raises(ValueError, match=r"2 arrays; choose one with key= \(or two.npz:KEY.*'pcs'"):
        load_points(two)
    with pytest.raises(ValueError, match=r"no array 'nope' in archive; keys: 'pcs', 'labels'"):
        load_points(two, key="nope")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match="holds 0 arrays"):
        load_points(empty)


def test_npy_dtypes_1d_and_flatten(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int64).reshape(3, 2))
    assert torch.equal(load_points(tmp_path / "i.npy"), torch.arange(6.0).reshape(3, 2))
    np.save(tmp_path / "v.npy", np.array([1.0, 2.0]))
    assert torch.equal(load_points(tmp_path / "v.npy"), torch.tensor([[1.0], [2.0]]))
    img = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    np.save(tmp_path / "img.npy", img)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 2, 2\).*pass flatten=True"):
        load_points(tmp_path / "img.npy")
    y = load_points(tmp_path / "img.npy", flatten=True)
    assert torch.equal(y, torch.from_numpy(img.reshape(2, 12)))
    np.save(tmp_path / "h.npy", np.ones((2, 2), dtype=np.float16))
    assert load_points(tmp_path / "h.npy", dtype=torch.float64).dtype == torch.float64
    last = load_points(tmp_path / "i.npy", columns=[-1])
    assert torch.equal(last, torch.tensor([[1.0], [3], [5]]))


# --------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("name", ["nothere.csv", "nothere.tsv", "nothere.txt", "nothere.h5"])
def test_missing_file_is_not_found_whatever_its_extension(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=rf"points file not found: .*{name}$"):
        load_points(tmp_path / name)


def test_unknown_extension_lists_supported(tmp_path):
    p = write(tmp_path / "x.json", "[1, 2]")
    with pytest.raises(ValueError, match=r"unsupported file extension '\.json'; supported: \.npy"):
        load_points(p)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_points(tmp_path / "d.npy")


def test_corrupt_npy_and_npz(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match=r"bad\.npy: unreadable or corrupt \.npy file \(no NumPy"):
        load_points(tmp_path / "bad.npy")
    np.save(tmp_path / "ok.npy", np.ones((100, 2)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.npy: unreadable or corrupt \.npy file"):
        load_points(tmp_path / "cut.npy")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: unreadable or corrupt \.npz file"):
        load_points(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello world")
    with pytest.raises(ValueError, match=r"junk\.npz: unreadable .* \(not a zip"):
        load_points(tmp_path / "junk.npz")
    # a truncated array inside a valid zip
    data = (tmp_path / "ok.npy").read_bytes()[:150]
    with zipfile.ZipFile(tmp_path / "trunc.npz", "w") as z:
        z.writestr("x.npy", data)
    with pytest.raises(ValueError, match=r"trunc\.npz: unreadable or corrupt \.npz file"):
        load_points(tmp_path / "trunc.npz")
    # a .npy file named .npz
    np.save(tmp_path / "plain.npy", np.ones((3, 2)))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_points(tmp_path / "plain.npz")


def test_undecodable_text(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x82")
    with pytest.raises(ValueError, match=r"bin\.csv: unreadable text file"):
        load_points(tmp_path / "bin.csv")


def test_non_numeric_arrays(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects"):
        load_points(tmp_path / "obj.npy")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"non-numeric data of dtype <U1"):
        load_points(tmp_path / "str.npy")
    np.save(tmp_path / "c.npy", np.ones((2, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match="complex values"):
        load_points(tmp_path / "c.npy")
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        load_points(tmp_path / "obj.npz")


def test_non_numeric_csv_value_names_line_and_column(tmp_path):
    p = write(tmp_path / "typo.csv", "x,y\n1,2\n3,4o\n5,6\n")
    msg = r"non-numeric value '4o' at line 3 \(row 1\), column 1 \('y'\)"
    with pytest.raises(ValueError, match=msg):
        load_points(p)
    mixed_first = write(tmp_path / "first.csv", "1,abc\n2,3\n")
    with pytest.raises(ValueError, match=r"non-numeric value 'abc' at line 1"):
        load_points(mixed_first)
    blank = write(tmp_path / "blank.csv", "1,\n2,3\n")
    with pytest.raises(ValueError, match=r"non-numeric value '' at line 1"):
        load_points(blank)


def test_ragged_csv(tmp_path):
    p = write(tmp_path / "ragged.csv", "1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="line 2 has 3 field\\(s\\), expected 2"):
        load_points(p)


@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_nan_inf_reports_count_and_first_row(tmp_path, ext):
    x = np.ones((6, 3))
    x[3, 1] = np.nan
    x[4, 0] = np.inf
    x[4, 1] = -np.inf
    p = tmp_path / f"nan{ext}"
    if ext == ".npy":
        np.save(p, x)
        where = "row 3, column 1"
    else:
        p.write_text("a,b,c\n" + "\n".join(",".join(str(v) for v in r) for r in x) + "\n")
        where = r"row 3 \(line 5\), column 1 \('b'\)"
    msg = rf"3 NaN or inf value\(s\) in 2 row\(s\); first at {where}: nan"
    with pytest.raises(ValueError, match=msg):
        load_points(p)
    # only the selected columns are checked; the error names the file's column
    assert torch.equal(load_points(p, columns=[2]), torch.ones(6, 1))
    with pytest.raises(ValueError, match=r"1 NaN or inf value\(s\) in 1 row\(s\); first at row 4"):
        load_points(p, columns=[2, 0])
    label = "column 1 \\('b'\\)" if ext == ".csv" else "column 1"
    with pytest.raises(ValueError, match=rf"first at row 3.*, {label}: nan"):
        load_points(p, columns=[2, 1])


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", "", "empty data"),
        ("comments.csv", "# only\n\n", "empty data"),
        ("header_only.csv", "x,y\n", "a header row and no values"),
    ],
)
def test_empty_text_files(tmp_path, name, content, match):
    with pytest.raises(ValueError, match=match):
        load_points(write(tmp_path / name, content))


def test_empty_and_scalar_arrays(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"empty data \(shape \(0, 2\)\)"):
        load_points(tmp_path / "e.npy")
    np.save(tmp_path / "s.npy", np.float64(3.0))
    with pytest.raises(ValueError, match="single scalar"):
        load_points(tmp_path / "s.npy")


def test_bad_arguments(tmp_path, pts):
    p = save_points(tmp_path / "x.csv", pts)
    q = save_points(tmp_path / "x.npy", pts)
    with pytest.raises(ValueError, match="chosen by name but the file has no header row"):
        load_points(p, columns=["x"])
    with pytest.raises(ValueError, match="chosen by name but the file has no header row"):
        load_points(q, columns=["x"])
    with pytest.raises(ValueError, match=r"column index 3 out of range for 3 column\(s\)"):
        load_points(p, columns=[0, 3])
    with pytest.raises(ValueError, match="selects no column"):
        load_points(q, columns=[])
    with pytest.raises(ValueError, match="no column 'z'; columns: 'a', 'b', 'c'"):
        load_points(save_points(tmp_path / "n.csv", pts, names=list("abc")), columns="z")
    with pytest.raises(TypeError, match="names must be a sequence of column names"):
        save_points(tmp_path / "n.csv", pts, names="abc")
    with pytest.raises(ValueError, match="key='x' only applies to .npz files"):
        load_points(p, key="x")
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        load_points(q, dtype=torch.int64)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load_points(3)


# --------------------------------------------------------------------------- resolve_points
def test_resolve_builtin_distribution():
    x = resolve_points("8gaussians", 100, generator=gen(3))
    assert torch.equal(x, toy.sample("8gaussians", 100, generator=gen(3)))
    assert resolve_points("moons", 4, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="n is required"):
        resolve_points("moons", None)


def test_resolve_file_all_rows_and_seeded_subset(tmp_path, pts):
    p = save_points(tmp_path / "x.npy", pts)
    assert torch.equal(resolve_points(str(p)), pts)
    assert torch.equal(resolve_points(p), pts)
    a = resolve_points(str(p), 10, generator=gen(4))
    b = resolve_points(str(p), 10, generator=gen(4))
    assert torch.equal(a, b) and a.shape == (10, 3)
    rows = {tuple(r.tolist()) for r in pts}
    picked = [tuple(r.tolist()) for r in a]
    assert set(picked) <= rows and len(set(picked)) == 10  # distinct rows of the file
    assert not torch.equal(a, pts[:10])  # random, not the first rows (for this seed)
    with pytest.raises(ValueError, match=r"asked for n=38 points but the file has only 37 rows"):
        resolve_points(str(p), 38)
    with pytest.raises(ValueError, match="n must be a positive integer or None, got 0"):
        resolve_points(str(p), 0)
    assert resolve_points(str(p), np.int64(3), generator=gen(4)).shape == (3, 3)


def test_resolve_npz_key_suffix(tmp_path):
    p = tmp_path / "cells.npz"
    np.savez(p, pcs=np.ones((5, 2)), labels=np.arange(5))
    assert resolve_points(f"{p}:pcs").shape == (5, 2)
    assert resolve_points(f"{p}:labels").shape == (5, 1)


def test_resolve_unknown_spec(tmp_path):
    with pytest.raises(ValueError, match=r"unknown 'mooons'.*8gaussians.*\.npy"):
        resolve_points("mooons", 10)
    for name in ("missing.csv", "missing.tsv", "missing.npz:pcs"):
        with pytest.raises(FileNotFoundError, match=r"points file not found: .*missing\."):
            resolve_points(str(tmp_path / name))
    with pytest.raises(TypeError, match="spec must be"):
        resolve_points(5, 10)


@pytest.mark.parametrize(
    "text, builtin, path, key",
    [
        ("moons", "moons", None, None),
        ("x.tsv", None, "x.tsv", None),
        ("x.txt", None, "x.txt", None),
        ("dir/x", None, "dir/x", None),  # a path separator: a file, not a distribution
        ("cells.npz:pcs", None, "cells.npz", "pcs"),
        ("d/cells.NPZ:X_pca", None, "d/cells.NPZ", "X_pca"),
        ("x.npy:pcs", None, "x.npy:pcs", None),  # keys only for .npz
    ],
)
def test_parse_spec_grammar(text, builtin, path, key):
    spec = parse_spec(text)
    assert (spec.text, spec.builtin, spec.key) == (text, builtin, key)
    assert spec.path == (None if path is None else Path(path))
    assert spec.is_file == (path is not None)


def test_parse_spec_existing_file_wins_over_the_key_grammar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.npz:b").write_text("x")  # a file whose name looks like FILE.npz:KEY
    assert parse_spec("a.npz:b") == DataSpec("a.npz:b", path=Path("a.npz:b"))
    (tmp_path / "noext").write_text("x")  # an existing file without extension
    assert parse_spec("noext").path == Path("noext")
    with pytest.raises(ValueError, match=r"--x0: unknown 'moons': not a file"):
        parse_spec("moons", builtins=(), name="--x0")
    assert parse_spec("synthetic", builtins=("synthetic",)).builtin == "synthetic"


# --------------------------------------------------------------------------- minibatches
def test_sample_batch_without_replacement_and_seeded():
    x = torch.arange(50.0).reshape(25, 2)
    a = sample_batch(x, 25, generator=gen(5))
    assert sorted(a[:, 0].tolist()) == x[:, 0].tolist()  # full batch = a permutation
    b1 = sample_batch(x, 10, generator=gen(6))
    b2 = sample_batch(x, 10, generator=gen(6))
    assert torch.equal(b1, b2)
    assert len(set(b1[:, 0].tolist())) == 10
    assert torch.equal(b1[:, 1], b1[:, 0] + 1)  # whole rows, not mixed
    assert not torch.equal(b1, sample_batch(x, 10, generator=gen(7)))


def test_sample_batch_is_uniform_over_rows():
    n, b, reps = 20, 5, 4000
    g = gen(8)
    x = torch.arange(float(n))[:, None]
    counts = torch.zeros(n)
    for _ in range(reps):
        counts += torch.bincount(sample_batch(x, b, g)[:, 0].long(), minlength=n)
    p = b / n  # each row is in a batch with probability b / n
    se = math.sqrt(p * (1 - p) / reps)
    assert float((counts / reps - p).abs().max()) <= 5 * se


def test_sample_batch_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\]"):
        sample_batch(x, 5)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\]"):
        sample_batch(x, 0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        sample_batch(x, 2.0)
    with pytest.raises(ValueError, match="at least one row"):
        sample_batch(torch.zeros(0, 2), 1)


def test_point_dataset():
    x = torch.arange(30.0).reshape(10, 3)
    ds = PointDataset(x)
    assert len(ds) == 10 and torch.equal(ds[3], x[3])
    assert torch.equal(ds.batch(4, gen(9)), sample_batch(x, 4, gen(9)))
    batches = list(ds.epoch(3, gen(10)))
    assert [len(b) for b in batches] == [3, 3, 3]
    seen = torch.cat(batches)[:, 0].tolist()
    assert len(set(seen)) == 9  # each row at most once per epoch
    full = torch.cat(list(ds.epoch(3, gen(10), drop_last=False)))
    assert sorted(full[:, 0].tolist()) == x[:, 0].tolist()
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        ds.epoch(11)
    with pytest.raises(ValueError, match="is empty"):
        PointDataset(torch.zeros(0, 2))
    d2 = PointDataset.from_spec("moons", 64, gen(11))
    assert d2.x.shape == (64, 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    assert torch.equal(next(iter(loader)), x[:5])
