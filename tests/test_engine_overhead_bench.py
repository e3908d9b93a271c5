"""Smoke test of benchmarks/engine_overhead.py: a tiny run writes a complete record and page.

Only the structure is checked (no timing assertions): every round times every loop, ratios
are engine / plain of the same round, and --report-only re-renders the same page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("engine_overhead")


def test_tiny_run_writes_record_and_page(bench, tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "p.md"
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        args = ["--rounds", "2", "--steps", "5", "--chunk", "2", "--warmup", "2", "--batch", "64"]
        bench.main([*args, "--out", str(out), "--md", str(md)])
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
    rec = json.loads(out.read_text())
    assert rec["settings"]["torch_threads"] == 1 and rec["settings"]["batch"] == 64
    assert rec["loops"][0] == "plain" and "engine_workers0" in rec["loops"]
    assert len(rec["loops"]) == 3 and len(rec["rounds"]) == 2
    assert rec["command"].startswith("python benchmarks/engine_overhead.py --rounds 2")
    for r in rec["rounds"]:
        for name in rec["loops"][1:]:
            ratio = r[name]["median_us"] / r["plain"]["median_us"]
            assert r[f"ratio_{name}"] == pytest.approx(ratio, rel=1e-12)
    assert rec["settings"]["chunk_steps"] == 2 and rec["settings"]["steps_per_block"] == 5
    page = md.read_text()
    assert "engine_workers0" in page and "set_num_threads(1)" in page
    md.unlink()
    bench.main(["--report-only", "--out", str(out), "--md", str(md)])
    assert md.read_text() == page
