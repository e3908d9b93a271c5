"""Smoke test of benchmarks/distributed.py: the coupling grid, the gap summary and the page on
a tiny grid, and one 2-process steps job through the script's worker mode (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("distributed")


@pytest.fixture(scope="module")
def grid(bench):
    threads = torch.get_num_threads()
    try:
        return bench.coupling_grid([16, 32], [2, 5], [2, 4], 2, solvers=("exact",))
    finally:
        torch.set_num_threads(threads)


def test_local_pairs_never_beat_the_global_exact_pairing(bench, grid):
    solves = [r for r in grid if "skipped" not in r]
    # per cell and batch: 1 global solve and W local ones for each W
    assert len(solves) == 2 * 2 * 2 * (1 + 2 + 4)
    gaps = bench.coupling_gaps(grid)
    assert {(g["d"], g["B"], g["world"]) for g in gaps} == {
        (d, b, w) for d in (2, 5) for b in (16, 32) for w in (2, 4)
    }
    for g in gaps:
        assert g["seeds"] == 2
        # the global pairing is optimal on the matrix both are costed on: gap >= 0
        assert g["relative_min"] >= -1e-9, g
        assert g["of_independent_min"] >= -1e-9, g
        assert g["relative_max"] < 10.0, g  # a union of pairings, not garbage
    for r in solves:
        if r["scope"] == "global":
            assert r["independent_cost"] > r["cost"] > 0.0


def test_page_lists_every_measured_row(bench, grid, tmp_path):
    steps = bench.steps_job("icfm", "", "global", 2, steps=3, warmup=2, device="cpu",
                            tmp=tmp_path)
    assert steps["processes"] == 2 and len(steps["rank_seconds"]) == 2
    assert steps["steps_per_second"] > 0.0
    data = {
        "command": "python benchmarks/distributed.py --test", "date": "today", "device": "cpu",
        "machine": bench.machine("cpu"),
        "settings": {"seeds": 2, "steps": 3, "exact_steps": 3, "warmup": 2, "max_seconds": 60.0,
                     "high_d_target": list(bench.HIGH_D_TARGET)},
        "records": [steps, *grid],
    }
    out = tmp_path / "d.json"
    out.write_text(json.dumps(data))
    md = tmp_path / "d.md"
    bench.main(["--report-only", "--out", str(out), "--gpu-out", str(tmp_path / "none.json"),
                "--md", str(md)])
    page = md.read_text()
    assert "| icfm | independent | 2 | global |" in page
    for r in bench.coupling_times(grid):
        assert f"| {r['d']} | {r['B']} | {r['solver']} | {r['world']} |" in page
    for g in bench.coupling_gaps(grid):
        assert f"| {g['d']} | {g['B']} | {g['world']} | {g['seeds']} |" in page
    assert "## GPU" in page and "Not run yet" in page
