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
def bench(benchmark_module):
    return benchmark_module("couplings")


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
    return json.loads((out / "r.json").read_text())["records"], (out / "p.md").read_text()


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


# --------------------------------------------------------------------- two_dim_torchcfm.py
class _FakeCFM:
    """Stands in for TorchCFM's I-CFM matcher when it is not installed: the same maths
    (x_t = t x1 + (1 - t) x0 + sigma eps, u_t = x1 - x0), drawn from the global RNGs."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def pair(self, x0, x1):
        return x0, x1

    def sample_location_and_conditional_flow(self, x0, x1):
        x0, x1 = self.pair(x0, x1)
        t = torch.rand(x0.shape[0])
        eps = torch.randn_like(x0)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0 + self.sigma * eps
        return t, xt, x1 - x0


class _FakeOTCFM(_FakeCFM):
    def pair(self, x0, x1):  # a random permutation from numpy's global RNG: not OT
        return x0, x1[torch.as_tensor(np.random.permutation(x1.shape[0]))]


@pytest.fixture()
def side_by_side(monkeypatch):
    try:
        import torchcfm  # noqa: F401
    except ImportError:
        fake = type(sys)("torchcfm")
        fake.ConditionalFlowMatcher = _FakeCFM
        fake.ExactOptimalTransportConditionalFlowMatcher = _FakeOTCFM
        monkeypatch.setitem(sys.modules, "torchcfm", fake)
    spec = importlib.util.spec_from_file_location(
        "bench_two_dim_torchcfm", ROOT / "benchmarks" / "two_dim_torchcfm.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mod
    torch.set_num_threads(threads)
    sys.modules.pop(spec.name, None)


TINY_2D = ["--tasks", "gaussian-moons", "--methods", "icfm", "--seeds", "1", "--steps", "40",
           "--n-train", "600", "--n-val", "100", "--n-test", "200", "--batch-size", "100",
           "--val-every", "10", "--curve-points", "100"]


def test_two_dim_torchcfm_script_writes_both_libraries_side_by_side(side_by_side, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = [*TINY_2D, "--runs", str(runs), "--out", str(out)]
    assert side_by_side.main(argv) == 0
    ours = json.loads((out / "two_dim.json").read_text())
    theirs = json.loads((out / "two_dim_torchcfm.json").read_text())
    assert [(r["task"], r["method"], r["seed"]) for r in ours] == [("gaussian-moons", "icfm", 42)]
    [rec] = theirs
    assert rec["library"] == "torchcfm" and rec["steps"] == 40
    assert [s for s, _ in rec["val_curve"]] == [10, 20, 30, 40]
    # same data, initial weights, optimizer and budget, other draws of t and noise: close
    assert rec["w2"] == pytest.approx(ours[0]["w2"], rel=0.5)
    page = (out / "two_dim.md").read_text()
    assert "## Side by side with TorchCFM" in page
    assert "Command: `python benchmarks/two_dim_torchcfm.py --tasks gaussian-moons" in page
    # cached: a second run trains nothing and writes the same records
    assert side_by_side.main([*argv, "--report-only"]) == 0
    assert json.loads((out / "two_dim_torchcfm.json").read_text()) == theirs
    # seeded from the cell: a fresh run folder gives the same TorchCFM cell
    again = tmp_path / "again"
    assert side_by_side.main([*TINY_2D, "--runs", str(again), "--out", str(again)]) == 0
    [rec2] = json.loads((again / "two_dim_torchcfm.json").read_text())
    assert rec2["w2"] == pytest.approx(rec["w2"], rel=1e-6)
    # the TorchCFM runner seeds the global RNGs it needs and puts them back
    cell = side_by_side.Cell("gaussian-moons", "icfm", 43, "torchcfm")
    p = side_by_side.two_dim_cli.protocol_from_args(
        side_by_side.two_dim_cli.build_parser().parse_args(TINY_2D))
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    side_by_side.run_any_cell(cell, p, tmp_path / "rng")
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng, strict=True))


def test_two_dim_torchcfm_script_errors(side_by_side, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--ema"):
        side_by_side.main(["--ema", "0.9", "--runs", str(tmp_path)])
    with pytest.raises(ValueError, match="covers icfm, otcfm"):
        side_by_side.torchcfm_matcher("sbcfm", 1.0)
    cells = side_by_side.torchcfm_cells(["gaussian-moons"], ["icfm", "rf", "otcfm"], [42])
    assert [(c.method, c.library) for c in cells] == [("icfm", "torchcfm"), ("otcfm", "torchcfm")]
    monkeypatch.setitem(sys.modules, "torchcfm", None)
    with pytest.raises(ImportError, match=r"otcfm\[bench\]"):
        side_by_side.require_torchcfm()


def test_entropic_records_say_how_the_solve_ended(tiny_run):
    records, _ = tiny_run
    rows = [r for r in records if r["kind"] == "plan" and r["solver"].startswith("EntropicOT")]
    assert len(rows) == 4  # 2 batch sizes x 2 dimensions on the tiny grid
    for rec in rows:
        assert rec["converged"] is True and 0.0 <= rec["marginal_error"] <= rec["tol"], rec
        assert rec["iterations"] >= 1 and rec["gap"] > 0.0  # the entropic blur costs a little
    exact = [r for r in records if r["kind"] == "plan" and r["solver"] == "ExactOT()"]
    assert all("converged" not in r for r in exact)  # only couplings that report it


def test_entropic_part_records_every_solver_with_its_marginal_error(bench, tmp_path):
    """--parts entropic on the tiny grid: for each case, ours now, ours dense, ours before and
    POT's log-domain Sinkhorn, each with the L1 marginal error of the plan it returned; ours
    converge to the tolerance both ways (the same fixed point), the page has the table."""
    threads = torch.get_num_threads()
    try:
        bench.main(["--grid", "tiny", "--parts", "entropic", "--repeats", "1",
                    "--out", str(tmp_path / "e.json"), "--md", str(tmp_path / "e.md")])
    finally:
        torch.set_num_threads(threads)
    records = json.loads((tmp_path / "e.json").read_text())["records"]
    assert {(r["case"], r["B"]) for r in records} == {("moons-8gaussians", 32), ("cells", 32)}
    for r in records:
        assert set(r) >= KEYS and r["kind"] == "entropic" and r["seconds"] > 0
        assert r["reg"] == (0.02 if r["case"] == "cells" else 2.0)
        assert 0 <= r["marginal_error"] < 2 and r["converged"] == (r["marginal_error"] <= 1e-6
                                                                   or r["library"] == "otcfm")
    ours = [r for r in records if r["library"] == "otcfm"]
    assert len(ours) == 6 and all(r["converged"] and r["marginal_error"] <= r["tol"]
                                  for r in ours)
    dense = [r for r in ours if "dense" in r["solver"] or "before" in r["solver"]]
    assert len(dense) == 4 and not any(r["sparse"] for r in dense)
    assert all(r["newton_steps"] > 0 for r in dense)  # small reg: the Newton polish ran
    page = (tmp_path / "e.md").read_text()
    assert page.startswith("# Entropic couplings: one solve, ours against POT")
    assert "| moons-8gaussians | 32 | 2 |" in page and "ratio to ot.bregman.sinkhorn_log" in page
