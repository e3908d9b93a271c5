"""benchmarks/checkpoint_choice.py on the quick budget: the four choices are read off one run
correctly (checked against the run's own checkpoints, validated and tested again here), the
record is cached under the code's hash, and the page renders from the record alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from otcfm.experiments import two_dim
from otcfm.metrics import wasserstein
from otcfm.sampling import integrate
from otcfm.train.checkpoint import load_checkpoint
from otcfm.train.datasets import load_run_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("checkpoint_choice")


@pytest.fixture(scope="module")
def study(bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("choice")
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--quick", "--tasks", "gaussian-moons", "--seeds", "1",
                           "--runs", str(tmp / "runs"), "--out", str(tmp / "cc.json")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return tmp, json.loads((tmp / "cc.json").read_text())


def test_choices_follow_the_runs_own_validation(bench, study):
    tmp, result = study
    (rec,) = result["records"]
    p = bench.protocol(bench.EMA_DECAY, quick=True)
    assert [r["step"] for r in rec["val"]] == list(range(p.val_every, p.steps + 1, p.val_every))
    by_loss = min(rec["val"], key=lambda r: r["val_loss"])["step"]
    by_w2 = min(rec["val"], key=lambda r: r["val_w2"])["step"]
    c = rec["choices"]
    assert (c["final"]["step"], c["ema"]["step"]) == (p.steps, p.steps)
    assert (c["best_val_loss"]["step"], c["best_val_w2"]["step"]) == (by_loss, by_w2)
    # the trainer validated the EMA weights: its best.pt is the EMA's best validation loss
    run = two_dim.Cell("gaussian-moons", "otcfm", two_dim.FIRST_SEED).run_dir(tmp / "runs")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == min(rec["val"], key=lambda r: r["ema_val_loss"])["step"]
    # the raw weights differ from the EMA ones, so the two final choices are two models
    last = load_checkpoint(run / "checkpoints" / f"step-{p.steps:06d}.pt")
    assert any(not torch.equal(last["model"][k], last["ema"][k]) for k in last["model"])


def test_tested_numbers_are_the_checkpoints(bench, study):
    """Independent oracle: rebuild the chosen weights from the checkpoint file and test them
    here with a plain Euler loop (no shared evaluation code)."""
    tmp, result = study
    (rec,) = result["records"]
    p = bench.protocol(bench.EMA_DECAY, quick=True)
    cell = two_dim.Cell("gaussian-moons", "otcfm", two_dim.FIRST_SEED)
    cfg = two_dim.cell_config(cell, p, tmp / "runs")
    data = load_run_data(cfg.data, cell.seed)
    for name, weights in (("best_val_w2", "model"), ("ema", "ema")):
        step = rec["choices"][name]["step"]
        state = load_checkpoint(cell.run_dir(tmp / "runs") / "checkpoints" / f"step-{step:06d}.pt")
        model = bench._model(cfg, (2,), state[weights])
        x = data.source.test.clone()
        with torch.no_grad():
            for k in range(100):
                x = x + model(x, torch.full((x.shape[0],), k / 100)) / 100
        assert rec["choices"][name]["w2"] == pytest.approx(
            wasserstein(x, data.target.test, p=2), rel=1e-4)
        traj = integrate(model, data.source.test, method="euler", steps=100, save="ends")
        assert torch.allclose(traj.x_final, x, atol=1e-5)


def test_cached_by_code_and_rendered_from_record(bench, study, monkeypatch, tmp_path):
    tmp, result = study
    p = bench.protocol(bench.EMA_DECAY, quick=True)
    cell = two_dim.Cell("gaussian-moons", "otcfm", two_dim.FIRST_SEED)
    assert bench.cached(cell, p, tmp / "runs") is not None
    monkeypatch.setattr(bench, "SCRIPT_HASH", "0" * 64)  # a changed line of the script
    assert bench.cached(cell, p, tmp / "runs") is None
    page = bench.render([result])
    assert page.startswith("# Checkpoint choice on the 2-D benchmark")
    assert (tmp / "cc.md").read_text() == page  # the run wrote the same page
    w2 = result["records"][0]["choices"]["ema"]["w2"]
    assert f"{w2:.3f} ± 0.000" in page
    (tmp_path / "r.json").write_text(json.dumps(result))
    assert bench.main(["--render", str(tmp_path / "r.json"), "--page",
                       str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text() == page


def test_page_code_is_outside_the_key(bench):
    """The hash covers the measuring code only: render's source is not part of it."""
    text = (ROOT / "benchmarks" / "checkpoint_choice.py").read_text(encoding="utf-8")
    measuring, page = text.split(bench.PAGE_MARKER)
    assert "def run_cell" in measuring and "def render" in page
    assert hashlib.sha256(measuring.encode()).hexdigest() == bench.SCRIPT_HASH


def test_spread_reuses_the_ema_weights_and_the_protocols_floor(bench, study):
    """The spread's own-test-set W2 of a seed is the study's EMA choice for that seed, and on
    the common set (that seed's own, with one seed) it is the same number."""
    tmp, result = study
    p = bench.protocol(bench.EMA_DECAY, quick=True)
    sp = bench.spread("gaussian-moons", p, tmp / "runs", [two_dim.FIRST_SEED], draws=2)
    (rec,) = result["records"]
    assert sp["own"][0] == pytest.approx(rec["choices"]["ema"]["w2"], rel=1e-9)
    assert sp["common"] == sp["own"]
    assert len(sp["floor"]) == 2 and sp["floor"][0] != sp["floor"][1]
    assert all(0 < w < 1 for w in sp["floor"])  # two samples of the same law: near, not equal
