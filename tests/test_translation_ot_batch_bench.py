"""benchmarks/translation_ot_batch.py: the flow configs it trains and the page from a record
(paired differences recomputed here by hand)."""

from __future__ import annotations

import pytest

from otcfm.translate.latent import FlowSpec


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("translation_ot_batch")


def test_flow_configs_differ_from_the_benchmarks_only_in_the_ot_batch(bench, tmp_path):
    kw = dict(method="otcfm", steps=100, batch_size=32, width=16, seed=3)
    base = FlowSpec(**kw).config(tmp_path / "s.npy", tmp_path / "t.npy", tmp_path)
    same = bench.BatchedSpec(**kw).config(tmp_path / "s.npy", tmp_path / "t.npy", tmp_path)
    big = bench.BatchedSpec(**kw, ot_batch=128).config(tmp_path / "s.npy", tmp_path / "t.npy",
                                                       tmp_path)
    assert same.to_dict() == base.to_dict()  # the protocol's batch: the benchmark's own flow
    assert big.name == "otcfm-ob128" and big.ot_batch == 128 and same.ot_batch == 32
    assert {k: v for k, v in big.to_dict().items() if k not in ("name", "couplings")} == {
        k: v for k, v in base.to_dict().items() if k not in ("name", "couplings")}


def test_page_pairs_each_ot_cfm_row_with_i_cfm_by_seed(bench):
    def row(seed, method, ob, moved, sq):
        return {"seed": seed, "pair": "A -> B", "method": method, "ot_batch": ob,
                "moved": moved, "moved_sq": sq, "mmd": 0.01, "target_rate": 0.9,
                "flow_train_seconds": 40.0}

    record = {
        "meta": {"command": "python benchmarks/translation_ot_batch.py --seeds 0,1",
                 "machine": "CPU, 2 logical CPUs", "date": "2026-12-04 05:00 UTC",
                 "wall_seconds": 600.0, "dataset": "fashion-mnist",
                 "protocol": {"latent": 16, "flow_steps": 5000, "flow_batch": 256,
                              "flow_width": 256, "n_test": 1000}},
        "records": [row(0, "icfm", 256, 4.0, 19.0), row(1, "icfm", 256, 4.4, 21.0),
                    row(0, "otcfm", 256, 4.1, 18.0), row(1, "otcfm", 256, 4.3, 20.0),
                    row(0, "otcfm", 2048, 3.9, 17.5), row(1, "otcfm", 2048, 4.1, 19.5)],
    }
    page = bench.render(record)
    lines = {ln.split(" | ")[0] + " " + ln.split(" | ")[1]: ln for ln in page.splitlines()
             if ln.startswith("| otcfm") or ln.startswith("| icfm")}
    # OT-CFM at 256 minus I-CFM per seed: +0.1, -0.1 -> mean 0.000, se 0.100
    assert "| 0.000 ± 0.100 | -1.000 ± 0.000 |" in lines["| otcfm 256"]
    # at 2048: -0.1, -0.3 -> mean -0.200, se 0.100; squared: -1.5, -1.5
    assert "| -0.200 ± 0.100 | -1.500 ± 0.000 |" in lines["| otcfm 2048"]
    assert "| 4.200 ± 0.200 | 20.000 ± 1.000 | 0.0100 ± 0.0000 |" in lines["| icfm 256"]
    assert "## A -> B" in page and "seeds 0, 1" in page
