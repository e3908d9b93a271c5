"""`otcfm bench translation` and `otcfm translate` on the 8x8 digits with tiny budgets: the
records the issue names, the page, the figures, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")

from otcfm.cli import main as otcfm_main  # noqa: E402
from otcfm.experiments import translation  # noqa: E402

TINY = translation.Protocol(latent=4, ae_width=8, ae_steps=40, ae_batch=64, flow_steps=30,
                            flow_batch=32, flow_width=32, n_test=20)


def test_bench_records_page_and_figures(tmp_path, monkeypatch):
    monkeypatch.setitem(translation.PROTOCOLS, ("digits", True), TINY)
    monkeypatch.setitem(translation.PAIRS, "digits", (("3", "8"),))
    code = translation.main(["--dataset", "digits", "--quick", "--methods", "icfm,otcfm",
                             "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "translation.json").read_text())
    records = report["records"]
    assert [(r["pair"], r["method"]) for r in records] == [
        ("3 -> 8", "icfm"), ("3 -> 8", "otcfm"), ("8 -> 3", "icfm"), ("8 -> 3", "otcfm")]
    for r in records:
        assert {"dataset", "pair", "method", "seed", "mmd", "moved", "target_rate"} <= set(r)
        assert r["dataset"] == "digits" and r["seed"] == 0 and r["n"] == 20
        assert 0.0 <= r["target_rate"] <= 1.0 and r["moved"] > 0
    page = (tmp_path / "out" / "translation.md").read_text()
    assert "| 3 -> 8 | otcfm |" in page and "Does OT-CFM move the codes less" in page
    for figure in report["meta"]["figures"]:
        assert (tmp_path / "out" / figure["path"]).stat().st_size > 1000
    # a second run reads the cached autoencoder and flows back: the same numbers
    again = translation.main(["--dataset", "digits", "--quick", "--methods", "icfm,otcfm",
                              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o2")])
    assert again == 0
    second = json.loads((tmp_path / "o2" / "translation.json").read_text())["records"]
    assert [r["mmd"] for r in second] == [r["mmd"] for r in records]


def test_translate_command_writes_its_record(tmp_path, capsys):
    out = tmp_path / "t"
    code = otcfm_main(["translate", "--data", "digits", "--from", "1", "--to", "7",
                       "--latent", "4", "--ae-steps", "30", "--flow-steps", "20",
                       "--batch-size", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "translation.json").read_text())
    assert record["from"] == "1" and record["to"] == "7" and record["method"] == "otcfm"
    assert (out / "translation.png").is_file() and (out / "otcfm" / "metrics.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--from", "3", "--to", "12"], "unknown class '12' of digits"),
    (["--from", "3", "--to", "3,8"], "--from and --to share a class"),
    (["--from", "3", "--to", "8", "--attribute", "Smiling"], "--attribute applies to celeba"),
])
def test_translate_errors_are_one_line(tmp_path, capsys, argv, message):
    code = translation.translate_main(["--data", "digits", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--flow-steps", "0"], "--flow-steps must be a positive integer, got 0"),
    (["--ae-steps", "-3"], "--ae-steps must be a positive integer, got -3"),
    (["--latent", "0"], "--latent must be a positive integer"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2^63), got -1"),
])
def test_translate_refuses_bad_counts_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        translation.translate_main(["--data", "digits", "--from", "1", "--to", "7", *argv,
                                    "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_translate_help_goes_to_the_recipe(capsys):
    with pytest.raises(SystemExit) as done:
        otcfm_main(["translate", "--help"])
    assert done.value.code == 0 and "--from SOURCE" in capsys.readouterr().out


def test_image_rows_figure(tmp_path):
    import torch

    plot_image_rows = translation.image_rows
    rows = {"input": torch.zeros(5, 1, 8, 8), "otcfm": torch.ones(5, 1, 8, 8) * 0.5}
    path = plot_image_rows(rows, tmp_path / "rows.png", title="3 -> 8")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="same number of images"):
        plot_image_rows({"a": torch.zeros(2, 1, 8, 8), "b": torch.zeros(3, 1, 8, 8)},
                        tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one row"):
        plot_image_rows({}, tmp_path / "y.png")


def test_translate_reads_celeba_by_attribute(tmp_path, capsys):
    """CelebA in torchvision's layout (a folder this test writes: 48 faces, smiling or not):
    the groups are the attribute's absence (0) and presence (1)."""
    import numpy as np

    image_lib = pytest.importorskip("PIL.Image")
    folder = tmp_path / "celeba" / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rows, parts = [], []
    for k in range(48):
        name = f"{k + 1:06d}.jpg"
        smiling = k % 2
        pixels = np.full((218, 178, 3), 60 + 150 * smiling, np.uint8)
        image_lib.fromarray(pixels).save(folder / "img_align_celeba" / name)
        rows.append(f"{name} {1 if smiling else -1}")
        parts.append(f"{name} {0 if k < 40 else 2}")
    (folder / "list_attr_celeba.txt").write_text("48\nSmiling\n" + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    out = tmp_path / "smile"
    code = otcfm_main(["translate", "--data", f"celeba:{tmp_path / 'celeba'}", "--attribute",
                       "Smiling", "--from", "0", "--to", "1", "--latent", "4", "--ae-steps",
                       "10", "--flow-steps", "10", "--batch-size", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "translation.json").read_text())
    assert record["n"] == 4  # the test split's faces without the attribute
    code = translation.translate_main(["--data", f"celeba:{tmp_path / 'celeba'}", "--from",
                                       "0", "--to", "1", "--out", str(tmp_path / "x")])
    assert code == 2 and "celeba needs --attribute" in capsys.readouterr().err


def test_the_page_pairs_the_methods_by_seed():
    meta = {"dataset": "digits", "command": "otcfm bench translation", "machine": "m",
            "date": "d", "wall_seconds": 60.0, "seeds": [0, 1], "protocol": {"latent": 8}}
    moved = {("otcfm", 0): 1.0, ("otcfm", 1): 1.2, ("icfm", 0): 1.5, ("icfm", 1): 1.5}
    square = {("otcfm", 0): 2.0, ("otcfm", 1): 2.6, ("icfm", 0): 2.2, ("icfm", 1): 2.2}
    records = [{"pair": "3 -> 8", "method": m, "seed": s, "mmd": 0.1, "moved": v,
                "moved_sq": square[m, s], "target_rate": 0.5} for (m, s), v in moved.items()]
    page = translation.render({"meta": meta, "records": records})
    # differences -0.5 and -0.3: mean -0.4, standard error 0.1414 / sqrt(2) = 0.1
    assert "paired by seed, OT-CFM minus I-CFM -0.400 ± 0.100" in page
    assert "- 3 -> 8, distance: yes (1.100 ± 0.100 against 1.500 ± 0.000" in page
    # squared: OT-CFM 2.3 ± 0.3 against 2.2: not less; differences -0.2 and +0.4
    assert ("- 3 -> 8, squared distance: NO (2.300 ± 0.300 against 2.200 ± 0.000; paired by "
            "seed, OT-CFM minus I-CFM 0.100 ± 0.300)") in page
    assert "| 3 -> 8 | otcfm | 0.1000 ± 0.0000 | 1.100 ± 0.100 | 2.300 ± 0.300 | 0.500" in page
    old = [{k: v for k, v in r.items() if k != "moved_sq"} for r in records]
    page = translation.render({"meta": meta, "records": old})  # records from before moved_sq
    assert "squared distance:" not in page and "| 1.100 ± 0.100 | - | 0.500" in page
    assert "- Methods: otcfm, icfm. Seeds 0, 1;" in page
