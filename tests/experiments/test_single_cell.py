"""`otcfm bench single-cell`: the quick synthetic run writes records, a report and figures;
a real-format file gets the paper's numbers beside; the summary statistics are right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from otcfm.experiments.single_cell import main, parse_methods, published_set
from otcfm.experiments.single_cell_report import BASELINE, _verdict, summarize

pytest.importorskip("sklearn")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_synthetic_bench(tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["--data", "synthetic", "--seeds", "2", "--out", str(out), "--quick",
               "--steps", "15", "--n-cells", "60", "--left-out", "2",
               "--methods", "otcfm,icfm,sbcfm,sbcfm:0.1,sf2m:0.3"])
    assert rc == 0
    report = json.loads((out / "single_cell.json").read_text())
    records = report["records"]
    keys = {(r["method"], r["left_out"], r["seed"]) for r in records}
    methods = ("otcfm", "icfm", "sbcfm", "sbcfm:0.1", "sf2m:0.3", "sf2m-sde:0.3",
               "sf2m-sde-tapered:0.3", BASELINE)
    assert keys == {(m, 2, s) for m in methods for s in (42, 43)}
    sigma = {r["method"]: r.get("sigma") for r in records}
    assert sigma == {"otcfm": 0.1, "icfm": 0.1, "sbcfm": 1.0, "sbcfm:0.1": 0.1, "sf2m:0.3": 0.3,
                     "sf2m-sde:0.3": 0.3, "sf2m-sde-tapered:0.3": 0.3, BASELINE: None}
    ode = {r["seed"]: r["w1"] for r in records if r["method"] == "sf2m:0.3"}
    sde = {r["seed"]: r["w1"] for r in records if r["method"] == "sf2m-sde:0.3"}
    tapered = {r["seed"]: r["w1"] for r in records if r["method"] == "sf2m-sde-tapered:0.3"}
    assert all(len({ode[s], sde[s], tapered[s]}) == 3 for s in ode)  # the same fit, 3 samplers
    assert list(report["summary"]) == list(methods)
    for r in records:
        assert r["w1"] > 0 and r["mmd"] >= 0 and r["w1_truth"] > 0 and r["time"] == "2"
    assert report["data"]["dim"] == 5 and report["data"]["counts"] == [60] * 5
    md = (out / "single_cell.md").read_text()
    for text in ("| OT-CFM |", "| I-CFM |", "| SB-CFM |", "| SB-CFM (σ=0.1) |",
                 "| SF2M (ODE) (σ=0.3) |", "| SF2M (SDE) (σ=0.3) |",
                 "| SF2M (SDE, tapered g) (σ=0.3) |",
                 "- SF2M (SDE, tapered g) (σ=0.3) against the same fits' ODE: W1 ",
                 "linear interp. (OT)",
                 "W1 (fresh ground truth)", "Command: `otcfm bench single-cell", "t=2"):
        assert text in md, text
    for fig in ("time_course.png", "w1_per_time.png"):
        assert (out / "single_cell" / fig).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "OT-CFM: W1" in printed
    fits = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(fits) == 10 and fits[-1].startswith("[10/10, ")  # one line per finished fit
    assert any("] SB-CFM (σ=0.1) seed 43, time 2 held out: W1 " in line for line in fits)


def test_real_format_file_gets_published_numbers(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4.0), 30)
    pcs = rng.normal(size=(120, 8)) + labels[:, None]
    path = tmp_path / "eb_velocity_v5.npz"
    np.savez(path, pcs=pcs, sample_labels=labels)
    out = tmp_path / "eb"
    rc = main(["--data", str(path), "--seeds", "1", "--out", str(out), "--quick", "--steps",
               "5", "--methods", "otcfm", "--no-pca"])
    assert rc == 0
    md = (out / "single_cell.md").read_text()
    assert "published W1 (EB)" in md and "0.790 ± 0.068" in md
    report = json.loads((out / "single_cell.json").read_text())
    assert report["left_outs"] == [1, 2] and "w1_truth" not in report["records"][0]
    assert "first 5 of 8 features" in report["data"]["preprocessing"]


def test_published_set_detection():
    assert published_set("data/eb_velocity_v5.npz", None) == "eb"
    assert published_set("op_cite_inputs_0.h5ad", None) == "cite"
    assert published_set("op_train_multi_targets.h5ad", None) == "multi"
    assert published_set("mine.csv", None) is None
    assert published_set("eb.npz", "none") is None
    assert published_set("x.csv", "cite") == "cite"


def test_summary_is_the_seed_spread_of_left_out_averages():
    recs = [{"method": "otcfm", "left_out": k, "seed": s, "w1": w, "mmd": 0.0}
            for (k, s, w) in [(1, 0, 1.0), (2, 0, 3.0), (1, 1, 2.0), (2, 1, 6.0)]]
    w1 = summarize(recs)["otcfm"]["w1"]
    # per-seed averages 2.0 and 4.0 -> mean 3, population std 1
    assert w1["mean"] == pytest.approx(3.0) and w1["std"] == pytest.approx(1.0)
    assert w1["per_left_out"] == {"1": [1.0, 2.0], "2": [3.0, 6.0]}
    assert w1["per_seed"] == {"0": 2.0, "1": 4.0}


def test_verdict_pairs_the_seeds():
    # per-seed W1: OT-CFM 1.0, 2.0, 3.0; "b" 1.1, 2.3, 3.2 -> differences -0.1, -0.3, -0.2:
    # mean -0.2, sample std 0.1, standard error 0.1 / sqrt(3) = 0.058 -> outside 2 SE
    # "c" 0.9, 2.2, 3.0 -> +0.1, -0.2, 0.0: mean -0.033, SE 0.088 -> within the noise
    table = {"otcfm": (1.0, 2.0, 3.0), "b": (1.1, 2.3, 3.2), "c": (0.9, 2.2, 3.0)}
    recs = [{"method": m, "left_out": 1, "seed": s, "w1": w, "mmd": 0.0}
            for m, ws in table.items() for s, w in enumerate(ws)]
    lines = _verdict(summarize(recs), synthetic=False).splitlines()
    assert lines[0] == ("- OT-CFM's mean W1 (2.000) is lower than b's (2.200); paired over 3 "
                        "seeds, OT-CFM minus it is -0.200 ± 0.058 (standard error), outside "
                        "the seed noise.")
    assert lines[1].startswith("- OT-CFM's mean W1 (2.000) is lower than c's (2.033)")
    assert lines[1].endswith("-0.033 ± 0.088 (standard error), within the seed noise.")


def test_method_entries():
    assert parse_methods("otcfm,sbcfm", None) == {"otcfm": ("otcfm", 0.1),
                                                  "sbcfm": ("sbcfm", 1.0)}
    assert parse_methods("icfm,sbcfm:0.5", 0.2) == {"icfm": ("icfm", 0.2),
                                                    "sbcfm:0.5": ("sbcfm", 0.5)}
    for bad in ("fm", "sbcfm:x", "otcfm:-1", ""):
        with pytest.raises(ValueError):
            parse_methods(bad, None)


def test_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--methods", "fm", "--quick"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--left-out", "4", "--quick"]) == 2
    assert "not in the intermediate time indices" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "none.h5ad"), "--out", str(tmp_path)]) == 2
