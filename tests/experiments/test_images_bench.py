"""`otcfm bench images`: a tiny protocol runs end to end and writes one record per
evaluation; cached cells are keyed by the protocol's fingerprint; the page renders from the
records alone; command-line mistakes are one line and exit 2."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from otcfm.experiments import images, images_report
from otcfm.experiments._cells import CellResult
from otcfm.experiments.images import Cell, Protocol, cached_record, run_cells
from otcfm.experiments.images_cli import main

pytest.importorskip("sklearn")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Protocol(dataset="digits", steps=20, width=32, depth=2, n_val=100, n_samples=200,
                euler_steps=(1, 2, 100), tol=1e-3, guidance=(0.0, 1.0), sweep_steps=4,
                sweep_samples=100, log_every=10, nll_images=20)
REQUIRED = {"dataset", "method", "coupling", "seed", "solver", "steps", "nfe", "fd",
            "train_seconds", "fingerprint"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cells = [Cell("digits", "otcfm", 0), Cell("digits", "otcfm-cond", 0)]
    results = run_cells(cells, TINY, runs)
    return runs, results


def test_tiny_protocol_writes_records_with_the_required_keys(tiny_run, tmp_path):
    runs, results = tiny_run
    assert [r.error for r in results] == ["", ""]
    meta = {"command": "otcfm bench images --dataset digits (test)", "wall_seconds": 1.0,
            "cached_cells": 0, "date": "2026-12-02 00:00 UTC", "machine": "test", "jobs": 1,
            "quick": True, "seeds": [0], "methods": ["otcfm", "otcfm-cond"],
            "protocol": {**TINY.fingerprint(), "euler_steps": [1, 2, 100]}, "failed": []}
    out = tmp_path / "out"
    written = images_report.write_outputs(results, out, meta, runs)
    data = json.loads((out / "images.json").read_text())
    records = data["records"]
    # otcfm: 3 Euler counts + dopri5; otcfm-cond: that at w = 0 and (if chosen) at w = 1
    plain = [r for r in records if r["method"] == "otcfm"]
    cond = [r for r in records if r["method"] == "otcfm-cond"]
    assert len(plain) == 4 and len(cond) in (4, 8)
    for r in records:
        assert set(r) >= REQUIRED, set(REQUIRED) - set(r)
        assert r["fd"] >= 0 and r["nfe"] >= 1
        assert r["nfe"] == r["steps"] if r["solver"] == "euler" else r["steps"] is None
    for r in cond:
        assert 0 <= r["accuracy"] <= 1 and r["guidance"] in (0.0, 1.0)
    assert {r["coupling"] for r in cond} == {"exact:within=y"}
    cell = next(c for c in data["cells"] if c["method"] == "otcfm-cond")
    assert set(cell["guidance_sweep"]) == {"0.0", "1.0"}
    assert 0 < cell["coupling_share_mean"] <= 1  # exact OT within classes takes its share
    assert "coupling share" in (out / "images.md").read_text()
    assert data["real_fd"]["digits"]["n"] == 200 and data["real_fd"]["digits"]["fd"] > 0
    page = (out / "images.md").read_text()
    assert page == images_report.render_page(out)
    assert "Real images for scale: 200 training images score FD (digits features)" in page
    for text in ("FD (digits features)", "not FID", "| OT-CFM (exact) |", "OT-CFM cond., w = 0",
                 "Guidance sweep", "FD reference: 500 of the 1,797 digits", "Euler 100"):
        assert text in page, text
    assert (out / "images" / "digits_fd_nfe.png").stat().st_size > 1000
    # bits/dim: the likelihood of the reference images, recomputed from the saved EMA weights
    lik = cell["likelihood"]
    assert lik["nll_n"] == 20 and lik["nll_divergence"] == "hutchinson"
    model = images.build(Cell("digits", "otcfm-cond", 0), TINY, images.load_split("digits")
                         .train)[1]
    model.load_state_dict(torch.load(runs / "digits" / "otcfm-cond-seed0" / "model.pt",
                                     weights_only=True))
    again = images.likelihood(model.eval(), images.load_split("digits").reference[:20], TINY,
                              0, 10, 17)
    assert lik["levels"] == 17  # digits' pixels take the values 0..16
    assert again["bits_per_dim"] == pytest.approx(lik["bits_per_dim"], rel=1e-9)
    assert "Bits per dimension of 20 reference images" in page
    assert (out / "images" / "digits_otcfm-cond.png") in written


def test_fingerprint_changes_with_the_settings_and_keys_the_cache(tiny_run):
    runs, _ = tiny_run
    assert TINY.fingerprint() == replace(TINY).fingerprint()
    for change in ({"steps": 21}, {"sigma": 0.1}, {"euler_steps": (1, 2)}, {"ema": 0.9},
                   {"guidance": (0.0, 2.0)}, {"n_samples": 201}):
        other = replace(TINY, **change)
        assert other.fingerprint() != TINY.fingerprint(), change
        assert other.digest() != TINY.digest()
        assert cached_record(Cell("digits", "otcfm", 0), other, runs) is None
    assert cached_record(Cell("digits", "otcfm", 0), TINY, runs) is not None
    assert cached_record(Cell("digits", "otcfm", 1), TINY, runs) is None


def test_page_renders_from_records_and_computes_the_acceptance(tmp_path):
    """Synthetic records (no training): the acceptance line is computed from them."""
    records = []
    fds = {("otcfm", 2): [3.0, 3.2, 3.1], ("icfm", 2): [8.0, 8.4, 7.9],
           ("otcfm", 100): [2.5, 2.6, 2.4], ("icfm", 100): [2.3, 2.4, 2.2]}
    for (method, steps), values in fds.items():
        for seed, fd in enumerate(values):
            records.append({"dataset": "digits", "method": method, "coupling": "x",
                            "seed": seed, "solver": "euler", "steps": steps, "nfe": steps,
                            "fd": fd, "train_seconds": 1.0, "fingerprint": "f"})
    cells = [{"dataset": "digits", "method": m, "seed": s, "train_seconds": 1.0,
              "eval_seconds": 1.0, "reference": "test reference", "feature_net_accuracy": 0.9}
             for m in ("otcfm", "icfm") for s in range(3)]
    meta = {"command": "c", "wall_seconds": 60.0, "cached_cells": 0,
            "date": "2026-12-02 00:00 UTC", "machine": "m", "jobs": 1, "quick": False,
            "seeds": [0, 1, 2], "methods": ["otcfm", "icfm"], "failed": [],
            "protocol": {**TINY.fingerprint()}}
    (tmp_path / "images.json").write_text(json.dumps(
        {"runs": {"digits": meta}, "cells": cells, "records": records}))
    page = images_report.render_page(tmp_path)
    acc = images_report.acceptance(records, "digits")
    assert acc is not None and acc["pass_2"] and acc["pass_100"]
    assert acc[2]["diff"] == pytest.approx(8.1 - 3.1)
    assert "**pass**" in page and "**fail**" not in page
    assert "| I-CFM | " in page and "8.10 ± 0.15" in page
    block = images_report.readme_section(tmp_path)
    assert block.startswith(images_report.README_START)
    assert block.endswith(images_report.README_END)
    assert "Euler 2 3.10 ± 0.06" in block
    # a failing case reads "fail"
    for r in records:
        if r["method"] == "otcfm" and r["steps"] == 2:
            r["fd"] += 5.0
    assert not images_report.acceptance(records, "digits")["pass_2"]


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--dataset", "digits", "--methods", "icfm,nope"], "unknown method(s) nope"),
    (["--dataset", "digits", "--seeds", "a,b"], "--seeds must be"),
    (["--methods", "icfm"], "the following arguments are required: --dataset"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    try:
        rc = main([*argv, "--runs", str(tmp_path / "r")])
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err


def test_cells_and_methods_cover_the_issue():
    assert set(images.METHODS) == {"icfm", "otcfm", "otcfm-approx", "fm", "otcfm-cond"}
    assert images.EULER_STEPS == (1, 2, 4, 8, 16, 32, 100)
    assert images.protocol_for("digits").dataset == "digits"
    with pytest.raises(ValueError, match="unknown dataset"):
        Protocol(dataset="cifar10")
    assert isinstance(CellResult(None, None), CellResult)


def test_report_only_runs_nothing_and_names_what_is_missing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--dataset", "digits", "--quick", "--report-only", "--runs",
               str(tmp_path / "runs"), "--out", str(out)])
    assert rc == 0
    assert "0 of 5 cells cached" in capsys.readouterr().out
    data = json.loads((out / "images.json").read_text())
    assert data["records"] == [] and len(data["runs"]["digits"]["missing"]) == 5
    assert "No finished cell." in (out / "images.md").read_text()
    assert not (tmp_path / "runs").exists()
