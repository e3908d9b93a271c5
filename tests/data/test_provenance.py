"""Data records (otcfm.data.provenance): hashes against hashlib, and the checks that find a
recorded file, refuse a changed one and never leave a --data-root folder."""

from __future__ import annotations

import hashlib
import os

import pytest

from otcfm.data.provenance import DataRecord, FileRecord, sha256_file


def oracle(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data" / "points.csv"
    path.parent.mkdir()
    path.write_bytes(b"1,2\n3,4\n5,6\n" * 1000)
    return path


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_sha256_in_chunks_equals_hashlib(data, chunk):
    assert sha256_file(data, chunk=chunk) == oracle(data)


def test_sha256_of_an_empty_file(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_record_of_a_relative_path_is_absolute(data, monkeypatch):
    monkeypatch.chdir(data.parent.parent)
    rec = FileRecord.of("data/points.csv", key=None)
    assert rec.path == str(data) and os.path.isabs(rec.path)
    assert rec.size == data.stat().st_size == 12_000
    assert rec.sha256 == oracle(data)
    assert rec.name == "points.csv"


def test_locate_an_unchanged_file(data):
    assert FileRecord.of(data).locate("data.source") == data


@pytest.mark.parametrize("same_size", [True, False])
def test_a_changed_file_is_refused_unless_allowed(data, same_size):
    rec = FileRecord.of(data)
    raw = data.read_bytes()
    data.write_bytes(b"9" + raw[1:] if same_size else raw + b"7,8\n")
    if same_size:  # same size: the hash prefixes tell the difference
        match = (rf"data\.source: .*points\.csv changed since the run was trained \(recorded "
                 rf"sha256 {rec.sha256[:12]}\.\.\., now {oracle(data)[:12]}\.\.\. \(12000 bytes\)\)"
                 r"; pass --allow-changed-data")
    else:
        match = r"recorded 12000 bytes, now 12004 bytes\); pass --allow-changed-data"
    with pytest.raises(ValueError, match=match):
        rec.locate("data.source")
    with pytest.warns(UserWarning, match="changed since the run was trained.*used anyway"):
        assert rec.locate("data.source", allow_changed=True) == data


def test_a_missing_file_names_the_path_and_suggests_data_root(data):
    rec = FileRecord.of(data)
    data.unlink()
    with pytest.raises(FileNotFoundError, match=rf"data file not found: {data}; if it moved, "
                       r"pass --data-root DIR, a folder holding points\.csv"):
        rec.locate("data.source")


def test_data_root_finds_a_moved_file_by_name_and_still_checks_it(data, tmp_path):
    rec = FileRecord.of(data)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    data.rename(moved / "points.csv")
    assert rec.locate("data.source", data_root=moved) == moved / "points.csv"
    (moved / "points.csv").write_bytes(b"0")
    with pytest.raises(ValueError, match="changed since the run was trained"):
        rec.locate("data.source", data_root=moved)
    with pytest.raises(FileNotFoundError, match=r"points\.csv not found in --data-root"):
        rec.locate("data.source", data_root=tmp_path)  # only directly in DIR, not below it
    with pytest.raises(FileNotFoundError, match="--data-root .*nowhere: no such folder"):
        rec.locate("data.source", data_root=tmp_path / "nowhere")


def test_data_root_cannot_be_escaped(data, tmp_path):
    rec = FileRecord.of(data)
    root = tmp_path / "root"
    root.mkdir()
    (root / "points.csv").symlink_to(data)  # a link leading out of DIR: refused
    with pytest.raises(ValueError, match=r"is a link to .*outside --data-root"):
        rec.locate("data.source", data_root=root)
    sneaky = FileRecord(str(tmp_path / "root" / ".."), rec.size, rec.sha256)
    with pytest.raises(ValueError, match="has no file name to look up"):
        sneaky.locate("data.source", data_root=root)
    inside = root / "sub"
    inside.mkdir()
    (inside / "p.csv").write_bytes(data.read_bytes())
    (root / "p.csv").symlink_to(inside / "p.csv")  # a link within DIR is fine
    ok = FileRecord("/old/p.csv", rec.size, rec.sha256)
    assert ok.locate("data.source", data_root=root) == root / "p.csv"


def test_record_json_round_trip_and_bad_files(data):
    rec = DataRecord({"data.source": FileRecord.of(data, key="pcs"), "data.target": "moons"},
                     (2,))
    assert DataRecord.from_json(rec.to_json(), "data.json") == rec
    for text, match in [
        ("{", "not a data record"),
        ('{"format": 1}', "no inputs"),
        ('{"format": 9, "inputs": {}}', "format 9"),
        ('{"format": 1, "inputs": {"data.source": {"path": "rel.csv"}}}', "not a file record"),
        ('{"format": 1, "inputs": {"data.source": 3}}', "is not a record"),
        ('{"format": 1, "inputs": {}, "event_shape": [0]}', "event_shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            DataRecord.from_json(text, "data.json")
