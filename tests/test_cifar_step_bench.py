"""Smoke test of benchmarks/cifar_step.py (the GPU script) on the CPU with the digits preset:
every method is timed and recorded; no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("cifar_step")


def test_a_cpu_run_records_every_method(bench, tmp_path):
    out = tmp_path / "step.json"
    assert bench.main(["--device", "cpu", "--preset", "digits", "--data", "digits",
                       "--batch-size", "16", "--steps", "2", "--warmup-steps", "1",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == "digits" and record["bf16"] is False
    assert [r["method"] for r in record["records"]] == list(bench.METHODS)
    for r in record["records"]:
        assert r["steps"] == 2 and r["steps_per_second"] > 0 and 0 <= r["coupling_share"] <= 1
        assert r["peak_memory_mib"] is None and r["parameters"] > 1e6


def test_bad_arguments(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "nope", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):  # digits images do not fit the cifar10 preset
        bench.main(["--device", "cpu", "--data", "digits", "--out", str(tmp_path / "x.json")])
