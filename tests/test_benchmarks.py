"""Smoke test of benchmarks/couplings.py on its tiny grid (in-process, a few seconds)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"kind", "library", "solver", "B", "d", "seconds", "gap"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_couplings", ROOT / "benchmarks" / "couplings.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    try:  # the benchmark seeds the global RNGs (TorchCFM draws from them): restore them
        bench.main(["--grid", "tiny", "--out", str(out / "r.json"), "--md", str(out / "p.md")])
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        np.random.set_state(np_rng)
    return json.loads((out / "r.json").read_text()), (out / "p.md").read_text()


def test_tiny_grid_writes_records_with_the_agreed_keys(tiny_run, bench):
    records, _ = tiny_run
    assert records
    for rec in records:
        assert set(rec) >= KEYS, rec
        assert rec["kind"] in ("plan", "step", "memory")
    assert {r["kind"] for r in records} == {"plan", "step", "memory"}
    libs = {r["library"] for r in records}
    assert "otcfm" in libs
    assert ("torchcfm" in libs) == (bench.torchcfm is not None)
    for rec in records:
        if rec.get("skipped") is None:
            assert rec["seconds"] is not None and rec["seconds"] >= 0.0


def test_exact_ot_has_zero_gap_against_the_reference(tiny_run):
    records, _ = tiny_run
    exact = [r for r in records if r["kind"] == "plan" and r["solver"] == "ExactOT()"]
    assert len(exact) == 4  # 2 batch sizes x 2 dimensions on the tiny grid
    for rec in exact:
        assert abs(rec["gap"]) <= 1e-9, rec
        assert rec["distinct"] == pytest.approx(1.0, abs=0.0)


def test_torchcfm_plan_is_optimal_below_its_cap(tiny_run, bench):
    if bench.torchcfm is None:
        pytest.skip("torchcfm is not installed")
    records, _ = tiny_run
    rows = [r for r in records if r["kind"] == "plan" and r["library"] == "torchcfm"]
    assert rows
    for rec in rows:
        assert abs(rec["plan_gap"]) <= 1e-9, rec  # tiny batches: the capped simplex finishes
        assert rec["distinct"] < 1.0  # pairs drawn with replacement drop some sources


def test_markdown_report_has_the_tables_and_command(tiny_run):
    _, md = tiny_run
    assert "--grid tiny" in md
    for title in ("Plan time and coupling gap", "Training step", "Peak memory"):
        assert title in md


@pytest.mark.parametrize("d", [2, 8])
def test_reference_matches_brute_force(bench, d):
    x0, x1 = bench.make_batch(6, d, seed=3)
    cost = bench.cost64(x0, x1)
    direct = ((x0.double()[:, None] - x1.double()[None]) ** 2).sum(-1).numpy()
    np.testing.assert_allclose(cost, direct, rtol=1e-10, atol=1e-9)
    best = min(direct[np.arange(6), list(p)].mean() for p in itertools.permutations(range(6)))
    opt, _ = bench.reference(cost, d)
    assert opt == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_gap_is_zero_at_optimum_and_one_at_independent(bench):
    assert bench.gap(2.0, 2.0, 5.0) == pytest.approx(0.0, abs=1e-15)
    assert bench.gap(5.0, 2.0, 5.0) == pytest.approx(1.0, abs=1e-15)


def test_unknown_part_is_refused(bench):
    with pytest.raises(SystemExit, match="unknown --parts"):
        bench.main(["--grid", "tiny", "--parts", "plan,bogus"])
