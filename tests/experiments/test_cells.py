"""The shared cell runner: cache first, costliest first, dependencies, failures kept apart;
the code fingerprint of the cache keys."""

from __future__ import annotations

import json

import pytest
import torch

from otcfm.experiments import _cells
from otcfm.experiments._cells import CellProgress, run_cells


def test_cached_cells_are_not_run_and_results_keep_the_given_order():
    ran = []

    def run(cell):
        ran.append(cell)
        return {"value": cell * 10, "threads": torch.get_num_threads()}

    cache = {2: {"value": -2}}
    results = run_cells([1, 2, 3], run, cache.get, cost=lambda c: c)
    assert ran == [3, 1]  # costliest first, the cached cell never
    assert [r.cell for r in results] == [1, 2, 3]
    assert [r.record["value"] for r in results] == [10, -2, 30]
    assert [r.cached for r in results] == [False, True, False]
    assert all(r.record["threads"] == 1 for r in results if not r.cached)


def test_a_failure_is_recorded_and_its_dependents_do_not_run():
    ran = []

    def run(cell):
        ran.append(cell)
        if cell == "teacher":
            raise RuntimeError("diverged")
        return {"cell": cell}

    seen = []
    results = run_cells(
        ["student", "teacher", "other"], run, lambda c: None,
        cost=lambda c: 0 if c == "student" else 1,
        depends_on=lambda c: "teacher" if c == "student" else None,
        on_done=lambda r: seen.append(r.cell),
    )
    by_cell = {r.cell: r for r in results}
    assert ran == ["teacher", "other"]
    assert by_cell["teacher"].record is None
    assert by_cell["teacher"].error == "RuntimeError: diverged"
    assert by_cell["student"].record is None and "needs teacher" in by_cell["student"].error
    assert by_cell["other"].record == {"cell": "other"}
    assert sorted(seen) == ["other", "student", "teacher"]


def test_a_dependency_waits_for_its_cell_even_when_listed_later():
    order = []
    results = run_cells(
        ["rf", "icfm"], lambda c: order.append(c) or {"c": c}, lambda c: None,
        cost=lambda c: 9 if c == "rf" else 1, depends_on=lambda c: "icfm" if c == "rf" else None,
    )
    assert order == ["icfm", "rf"] and all(r.record for r in results)


def test_progress_prints_one_line_per_finished_cell_with_counts():
    lines = []
    progress = CellProgress(3, lambda r: "FAILED" if r.record is None else f"v={r.record['v']}",
                            write=lines.append)
    run_cells([1, 2, 3], lambda c: {"v": c} if c != 2 else 1 / 0, {3: {"v": 30}}.get,
              on_done=progress)
    progress.close()
    assert [line.split("] ", 1)[1] for line in lines] == ["3: v=30", "1: v=1", "2: FAILED"]
    assert [line.split(",")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]


def _fail_on_two(cell: int) -> dict:
    if cell == 2:
        raise ValueError(f"bad cell {cell}")
    return {"cell": cell}


def test_fail_fast_raises_the_first_error_and_runs_nothing_after_it():
    ran = []

    def run(cell):
        ran.append(cell)
        return _fail_on_two(cell)

    seen = []
    try:
        run_cells([1, 2, 3], run, lambda c: None, fail_fast=True,
                  on_done=lambda r: seen.append(r.cell))
    except ValueError as err:
        assert str(err) == "bad cell 2"
    else:
        raise AssertionError("fail_fast did not raise")
    assert ran == [1, 2] and seen == [1]
    # in worker processes the worker's exception comes back with its type and message
    try:
        run_cells([1, 2, 3], _fail_on_two, lambda c: None, jobs=2, fail_fast=True)
    except ValueError as err:
        assert "bad cell 2" in str(err)
    else:
        raise AssertionError("fail_fast did not raise in the pool")


def _with_changed_line(monkeypatch, tmp_path, module: str) -> None:
    """Make ``module``'s source, as the fingerprint reads it, differ by one appended line."""
    original = _cells._source
    path = original(module)
    changed = tmp_path / path.name
    changed.write_text(path.read_text() + "\n# a changed line\n")
    monkeypatch.setattr(_cells, "_source", lambda m: changed if m == module else original(m))


def test_a_changed_line_of_a_dependency_changes_the_code_fingerprint(monkeypatch, tmp_path):
    """The 2-D cells depend on otcfm.paths (through the matchers) and on the models package's
    relatively imported MLP; not on the page generator."""
    fingerprint = _cells.code_fingerprint.__wrapped__
    before = fingerprint("otcfm.experiments.two_dim")
    assert before == _cells.code_fingerprint("otcfm.experiments.two_dim")
    for module, changes in (("otcfm.paths", True), ("otcfm.models.mlp", True),
                            ("otcfm.experiments.two_dim_report", False)):
        with monkeypatch.context() as m:
            _with_changed_line(m, tmp_path, module)
            after = fingerprint("otcfm.experiments.two_dim")
        assert (after["code"] != before["code"]) is changes, module
        assert after["version"] == before["version"] and after["modules"] == before["modules"]
    with pytest.raises(ValueError, match="not a module"):
        fingerprint("numpy")


def test_a_cached_cell_goes_stale_when_its_code_changes(monkeypatch, tmp_path):
    from otcfm.experiments import two_dim
    from otcfm.experiments.two_dim import Cell, Protocol

    p = Protocol(steps=5)
    cell = Cell("gaussian-moons", "icfm", 42)
    path = cell.run_dir(tmp_path) / "cell.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"w2": 1.0, "protocol": p.fingerprint()}))
    assert two_dim.cached_record(cell, p, tmp_path) == {"w2": 1.0, "protocol": p.fingerprint()}
    stale = {**_cells.code_fingerprint("otcfm.experiments.two_dim"), "code": "0" * 16}
    monkeypatch.setattr(_cells, "code_fingerprint", lambda module: stale)
    assert two_dim.cached_record(cell, p, tmp_path) is None
