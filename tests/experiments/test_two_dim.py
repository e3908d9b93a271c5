"""`otcfm bench two-dim`: quick mode end to end, caching, resume, reflow, method checks.

Oracles: W2 recomputed with scipy's assignment solver on a hand-written Euler loop; a resumed
cell equals one never interrupted; cells run in two processes equal cells run in one.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from otcfm import cli
from otcfm.experiments import two_dim, two_dim_cli
from otcfm.experiments.two_dim import Cell, Protocol, plan_cells, run_cells
from otcfm.experiments.two_dim_report import steps_needed
from otcfm.matchers import MATCHERS
from otcfm.train import loop
from otcfm.train.evaluate import load_run

QUICK_P = Protocol(**two_dim.QUICK)  # what --quick runs: the final EMA weights
TINY = Protocol(steps=40, n_train=600, n_val=100, n_test=200, batch_size=100, val_every=10,
                curve_points=100, euler_steps=(1, 4, 100))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: a second torch thread only spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    """One real --quick run (2 tasks x icfm/otcfm/fm/rf, 1 seed), shared by several tests."""
    root = tmp_path_factory.mktemp("quick")
    argv = ["--quick", "--runs", str(root / "runs"), "--out", str(root / "out")]
    assert two_dim_cli.main(argv) == 0
    records = json.loads((root / "out" / "two_dim.json").read_text())
    return root, argv, records


def test_quick_mode_writes_records_report_and_figures(quick):
    root, _, records = quick
    keys = {"task", "method", "seed", "w2", "npe", "nfe", "train_seconds", "w2_euler",
            "val_curve"}
    for r in records:
        assert keys <= set(r), set(r)
        assert r["w2"] > 0 and r["npe"] >= 0 and r["nfe"] > 0 and r["train_seconds"] > 0
        assert [int(k) for k in r["w2_euler"]] == list(two_dim.EULER_STEPS)
        assert [s for s, _ in r["val_curve"]] == [50, 100, 150, 200]
    cells = {(r["task"], r["method"], r["seed"]) for r in records}
    expected = {("gaussian-8gaussians", m, 42) for m in ("icfm", "otcfm", "fm", "rf")}
    expected |= {("moons-8gaussians", m, 42) for m in ("icfm", "otcfm", "rf")}
    assert cells == expected and len(records) == len(cells)
    page = (root / "out" / "two_dim.md").read_text()
    assert "0.303 ± 0.043" in page  # the published OT-CFM W2 on N -> 8gaussians
    assert "otcfm bench two-dim --quick" in page
    for name in ("w2_euler", "convergence", "trajectories"):
        png = root / "out" / "two_dim" / f"{name}.png"
        assert png.stat().st_size > 5_000
        assert f"](two_dim/{name}.png)" in page


def test_fm_is_skipped_on_the_moons_source(quick):
    root, _, records = quick
    assert not [r for r in records if r["method"] == "fm" and r["task"] == "moons-8gaussians"]
    assert "fm skipped on moons-8gaussians" in (root / "out" / "two_dim.md").read_text()
    cells, notes = plan_cells(["moons-8gaussians", "gaussian-moons"], ["fm"], [42, 43])
    assert cells == [Cell("gaussian-moons", "fm", 42), Cell("gaussian-moons", "fm", 43)]
    assert any("fm skipped on moons-8gaussians" in n for n in notes)
    skip = two_dim.parse_skip(["sbcfm@gaussian-moons,icfm@gaussian-scurve"])
    cells, notes = plan_cells(["gaussian-moons"], ["sbcfm", "icfm"], [42], skip=skip)
    assert cells == [Cell("gaussian-moons", "icfm", 42)] and "(--skip)" in notes[0]
    with pytest.raises(ValueError, match="METHOD@TASK"):
        two_dim.parse_skip(["sbcfm"])


def hand_euler(model, x0, steps):
    """Independent Euler loop; returns endpoints and per-sample path energy (sum |v|^2 dt)."""
    x, energy = x0.clone(), torch.zeros(x0.shape[0])
    with torch.no_grad():
        for k in range(steps):
            v = model(x, torch.full((x.shape[0],), k / steps))
            energy += v.pow(2).sum(1) / steps
            x = x + v / steps
    return x, energy


def exact_w2(a, b):
    """W2 of two equal-size uniform samples = optimal assignment (scipy)."""
    cost = cdist(a.double().numpy(), b.double().numpy(), "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(cost[rows, cols].mean())


def test_record_matches_an_independent_recomputation(quick):
    root, _, records = quick
    rec = next(r for r in records if (r["task"], r["method"]) == ("gaussian-8gaussians", "otcfm"))
    run = load_run(root / "runs" / "gaussian-8gaussians" / "otcfm-seed42", QUICK_P.tested)
    assert run.step == rec["best_step"]
    x0, x1 = run.data.source.test, run.data.target.test
    assert x0.shape[0] == rec["n_test"] == 500
    end, energy = hand_euler(run.model, x0, 100)
    assert rec["w2"] == pytest.approx(exact_w2(end, x1), rel=1e-4)
    w2_ref = exact_w2(x0, x1)
    npe = abs(float(energy.mean()) - w2_ref**2) / w2_ref**2
    assert rec["npe"] == pytest.approx(npe, rel=1e-3, abs=1e-4)
    m = rec["curve_points"]
    one_step, _ = hand_euler(run.model, x0[:m], 1)
    assert rec["w2_euler"]["1"] == pytest.approx(exact_w2(one_step, x1[:m]), rel=1e-4)


def test_rf_trains_on_the_icfm_flow_pairs(quick):
    root, _, records = quick
    cell_dir = root / "runs" / "gaussian-8gaussians"
    teacher = load_run(cell_dir / "icfm-seed42", QUICK_P.tested)
    rf = load_run(cell_dir / "rf-seed42", QUICK_P.tested)
    assert rf.cfg.data.paired and rf.cfg.method.name == "rf" and rf.cfg.method.sigma == 0.0
    assert rf.data.source.train.shape[0] == two_dim.QUICK["n_train"]
    # each training row's target is the I-CFM ODE endpoint of its own source row
    x0, x1 = rf.data.source.train[:64], rf.data.target.train[:64]
    fine, _ = hand_euler(teacher.model, x0, 1_000)
    err = (fine - x1).norm(dim=1)
    assert float(err.max()) < 0.05, float(err.max())
    # the reflow's sources: the teacher's training and validation sources plus fresh ones
    s = rf.data.source
    rf_rows = {tuple(r) for r in torch.cat([s.train, s.val, s.test]).tolist()}
    teacher_rows = {tuple(r) for r in torch.cat([teacher.data.source.train,
                                                 teacher.data.source.val]).tolist()}
    assert teacher_rows < rf_rows
    assert len(rf_rows - teacher_rows) == two_dim.QUICK["n_val"]
    rec = next(r for r in records if (r["task"], r["method"]) == ("gaussian-8gaussians", "rf"))
    assert rec["reflow_seconds"] > 0


def test_second_call_uses_the_cache(quick, monkeypatch, capsys):
    root, argv, _ = quick
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("cell.json")}
    assert len(stamps) == 7

    def no_training(*args, **kwargs):
        raise AssertionError("a cached cell was trained again")

    monkeypatch.setattr(two_dim, "train", no_training)
    remarks = root / "remarks.md"
    remarks.write_text("SB-CFM left out on moons-8gaussians: 100 ms per coupling.\n")
    assert two_dim_cli.main([*argv, "--remarks", str(remarks)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert capsys.readouterr().out.count("(cached)") == 7
    page = (root / "out" / "two_dim.md").read_text()
    assert page.endswith("## Remarks\n\nSB-CFM left out on moons-8gaussians: 100 ms per "
                         "coupling.\n")


def test_report_only_runs_nothing_and_lists_the_missing_cells(quick, monkeypatch, tmp_path):
    root, argv, records = quick

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only trained a cell")

    monkeypatch.setattr(two_dim, "train", no_training)
    out = tmp_path / "report"
    argv = [*argv[:-1], str(out), "--report-only", "--seeds", "2"]
    assert two_dim_cli.main(argv) == 0
    assert json.loads((out / "two_dim.json").read_text()) == records  # seed 43 is missing
    page = (out / "two_dim.md").read_text()
    assert "not run (no cached result; --report-only): gaussian-8gaussians icfm seed 43" in page


def test_an_override_of_another_method_keeps_a_cell_cached(tmp_path):
    approx = replace(TINY, couplings=(("otcfm", "approx"),), sigmas=(("icfm", 0.2),))
    for method in ("sbcfm", "otcfm", "icfm", "rf"):
        cell = Cell("gaussian-moons", method, 42)
        path = cell.run_dir(tmp_path) / "cell.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"w2": 1.0, "protocol": approx.fingerprint()}))
    cached = {m: two_dim.cached_record(Cell("gaussian-moons", m, 42), TINY, tmp_path)
              for m in ("sbcfm", "otcfm", "icfm", "rf")}
    assert cached["sbcfm"] == {"w2": 1.0, "protocol": approx.fingerprint()}
    assert cached["otcfm"] is None  # its own coupling changed
    assert cached["icfm"] is None and cached["rf"] is None  # the teacher's sigma changed
    other = replace(approx, steps=TINY.steps + 1)
    assert two_dim.cached_record(Cell("gaussian-moons", "sbcfm", 42), other, tmp_path) is None


def test_resume_after_a_killed_cell(tmp_path, monkeypatch):
    cell = Cell("gaussian-moons", "icfm", 42)
    original = loop.Trainer.train_step

    def dies_at_step_25(self):
        if self.step == 25:
            raise KeyboardInterrupt  # like a kill: nothing after the step-20 checkpoint
        return original(self)

    monkeypatch.setattr(loop.Trainer, "train_step", dies_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        run_cells([cell], TINY, tmp_path / "killed")
    run_dir = cell.run_dir(tmp_path / "killed")
    assert not (run_dir / "cell.json").exists()
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == 20
    monkeypatch.setattr(loop.Trainer, "train_step", original)
    resumed = run_cells([cell], TINY, tmp_path / "killed")[0]
    straight = run_cells([cell], TINY, tmp_path / "straight")[0]
    assert not resumed.cached and resumed.record["steps"] == 40
    assert [s for s, _ in resumed.record["val_curve"]] == [10, 20, 30, 40]
    a = load_run(run_dir, "latest").model.state_dict()
    b = load_run(cell.run_dir(tmp_path / "straight"), "latest").model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed.record["w2"] == pytest.approx(straight.record["w2"], rel=1e-6)


@pytest.mark.slow  # two spawned processes import torch: ~15 s on a loaded 2-core machine
def test_two_processes_match_one(tmp_path):
    cells = [Cell("gaussian-scurve", "rf", 43), Cell("gaussian-scurve", "icfm", 43)]
    one = run_cells(cells, TINY, tmp_path / "one", jobs=1)
    two = run_cells(cells, TINY, tmp_path / "two", jobs=2)
    assert [r.cell for r in two] == cells
    for a, b in zip(one, two, strict=True):
        assert b.error == "" and a.error == ""
        for key in ("w2", "npe", "nfe"):
            assert b.record[key] == pytest.approx(a.record[key], rel=1e-6), key


def test_method_and_task_validation(capsys):
    with pytest.raises(ValueError, match="valid methods: .*icfm.*otcfm"):
        two_dim.parse_methods("icfm,bogus")
    with pytest.raises(ValueError, match="valid tasks: gaussian-8gaussians"):
        two_dim.parse_tasks("gaussian-moons,8gaussians")
    with pytest.raises(ValueError, match="at least one"):
        two_dim.parse_methods(" , ")
    assert two_dim.parse_methods("otcfm, icfm,otcfm") == ("otcfm", "icfm")
    if "sf2m" not in MATCHERS:  # registered by a later version: then it is a valid method
        with pytest.raises(ValueError, match="'sf2m'.*not registered"):
            two_dim.parse_methods("sf2m")
        assert cli.main(["bench", "two-dim", "--methods", "icfm,sf2m"]) == 2
        assert "sf2m" in capsys.readouterr().err
    with pytest.raises(ValueError, match="METHOD=NAME"):
        two_dim_cli.main(["--coupling", "otcfm", "--runs", "unused"])


def test_cell_config_follows_the_protocol(tmp_path):
    cfg = two_dim.cell_config(Cell("gaussian-moons", "sbcfm", 44), Protocol(), tmp_path)
    assert (cfg.method.sigma, cfg.seed, cfg.optim.steps, cfg.optim.batch_size) == (
        1.0, 44, 20_000, 512)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 1e-5)
    assert (cfg.model.width, cfg.model.depth, cfg.model.activation) == (64, 3, "selu")
    assert (cfg.data.n_train, cfg.data.n_test) == (10_000, 10_000)
    assert cfg.eval.use_best and cfg.eval.ode_steps == 100
    assert cfg.couplings.workers == 1  # entropic OT is coupled in a background thread
    icfm = two_dim.cell_config(Cell("gaussian-moons", "icfm", 44), Protocol(), tmp_path)
    assert icfm.couplings.workers == 0  # nothing to compute ahead for independent pairs
    argv = ["--sigma", "icfm=0.2", "--coupling", "otcfm=approx"]
    args = two_dim_cli.build_parser().parse_args(argv)
    p = two_dim_cli.protocol_from_args(args)
    assert two_dim.cell_config(Cell("gaussian-moons", "icfm", 42), p, tmp_path).method.sigma == 0.2
    assert two_dim.cell_config(Cell("gaussian-moons", "otcfm", 42), p, tmp_path).method.coupling \
        == "approx"
    assert two_dim.cell_config(Cell("gaussian-moons", "otcfm", 42), p, tmp_path).method.sigma \
        == 0.1
    args = two_dim_cli.build_parser().parse_args(["--coupling", "otcfm=exact:sampling=plan"])
    cfg = two_dim.cell_config(Cell("gaussian-moons", "otcfm", 42),
                              two_dim_cli.protocol_from_args(args), tmp_path)
    assert cfg.method.coupling == "exact:sampling=plan"
    for bad, why in (("otcfm=exakt", "valid names"), ("otcfm=exact:foo=1", "foo"),
                     ("icfm=exact", "coupling")):
        args = two_dim_cli.build_parser().parse_args(["--coupling", bad])
        with pytest.raises(ValueError, match=why):
            two_dim_cli.protocol_from_args(args)
    for bad in ("icfm", "icfm=-1", "icfm=x", "nope=0.1"):
        args = two_dim_cli.build_parser().parse_args(["--sigma", bad])
        with pytest.raises(ValueError, match="METHOD=VALUE"):
            two_dim_cli.protocol_from_args(args)


def test_ema_option_reaches_the_run_and_the_cache_key(tmp_path):
    assert cfg_ema(tmp_path, []) == 0.999
    assert cfg_ema(tmp_path, ["--quick"]) == 0.9
    assert cfg_ema(tmp_path, ["--ema", "0"]) == 0.0
    paper = Protocol(ema=0.0, checkpoint="best")
    assert "ema" not in paper.fingerprint()  # cells cached before the option stay valid
    assert Protocol().fingerprint()["ema"] == 0.999
    for bad in (["--ema", "1"], ["--ema", "-0.1"]):
        with pytest.raises(ValueError, match="--ema"):
            two_dim_cli.protocol_from_args(two_dim_cli.build_parser().parse_args(bad))


def test_data_seed_option_fixes_the_data_and_keys_the_cache(tmp_path):
    """--data-seed: every cell draws its sets with that seed; it enters the cache key, and the
    NPE's cached reference W2 is keyed by the data seed, not the cell's."""
    parse = two_dim_cli.build_parser().parse_args
    fixed = two_dim_cli.protocol_from_args(parse(["--data-seed", "5"]))
    assert fixed.data_seed == 5 and fixed.fingerprint()["data_seed"] == 5
    assert "data_seed" not in Protocol().fingerprint()  # cells cached before stay valid
    with pytest.raises(ValueError, match="--data-seed"):
        two_dim_cli.protocol_from_args(parse(["--data-seed", "-1"]))
    cells = [Cell("gaussian-moons", "icfm", s) for s in (42, 43)]
    cfgs = [two_dim.cell_config(c, fixed, tmp_path) for c in cells]
    assert [c.seed for c in cfgs] == [42, 43] and {c.data.seed for c in cfgs} == {5}
    own = two_dim.cell_config(cells[0], Protocol(), tmp_path)
    assert own.data.seed == -1
    small = replace(fixed, n_test=30)
    data = two_dim.load_run_data(two_dim.task_data_config("gaussian-moons", small), 42)
    w2 = two_dim.reference_w2(cells[1], small, tmp_path, data)
    assert (tmp_path / "gaussian-moons" / "w2_source_target-seed5-n30.json").is_file()
    assert two_dim.reference_w2(cells[0], small, tmp_path, data) == w2


def test_checkpoint_option_validates_and_keys_the_cache():
    paper = Protocol(ema=0.0, checkpoint="best")
    assert "checkpoint" not in paper.fingerprint()  # cells cached before it stay valid
    assert Protocol().fingerprint()["checkpoint"] == "ema"
    assert Protocol(ema=0.0, checkpoint="final").fingerprint()["checkpoint"] == "final"
    assert (Protocol().tested, paper.tested) == ("latest", "best")
    for bad in ({"checkpoint": "ema", "ema": 0.0}, {"checkpoint": "final"},
                {"checkpoint": "last"}):
        with pytest.raises(ValueError, match="checkpoint"):
            Protocol(**bad)

    def chosen(argv):
        args = two_dim_cli.build_parser().parse_args(argv)
        p = two_dim_cli.protocol_from_args(args)
        return p.checkpoint, p.ema

    assert chosen([]) == ("ema", 0.999)
    assert chosen(["--ema", "0"]) == ("best", 0.0)  # no EMA: the paper's choice
    assert chosen(["--ema", "0", "--checkpoint", "final"]) == ("final", 0.0)
    assert chosen(["--checkpoint", "best"]) == ("best", 0.999)  # the EMA's best validation
    with pytest.raises(ValueError, match="checkpoint"):
        chosen(["--checkpoint", "final"])


@pytest.mark.parametrize("choice", ["final", "ema"])
def test_final_and_ema_choices_test_the_last_weights(tmp_path, choice):
    """The record's numbers are those of the last step's raw (final) or EMA (ema) weights,
    recomputed here from the checkpoint file with a hand-written Euler loop."""
    p = replace(TINY, checkpoint=choice, ema=0.9 if choice == "ema" else 0.0)
    cell = Cell("gaussian-moons", "otcfm", 42)
    record = two_dim.run_cell(cell, p, tmp_path)
    assert record["best_step"] == p.steps
    state = torch.load(cell.run_dir(tmp_path) / "checkpoints" / "latest.pt", weights_only=True)
    model = loop.build_model(two_dim.cell_config(cell, p, tmp_path).model, (2,))
    model.load_state_dict(state["ema" if choice == "ema" else "model"])
    data = load_run(cell.run_dir(tmp_path)).data
    x = data.source.test.clone()
    with torch.no_grad():
        for k in range(100):
            x = x + model(x, torch.full((x.shape[0],), k / 100)) / 100
    cost = cdist(x.double().numpy(), data.target.test.double().numpy(), "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    assert record["w2"] == pytest.approx(math.sqrt(cost[rows, cols].mean()), rel=1e-4)


def cfg_ema(tmp_path, argv):
    p = two_dim_cli.protocol_from_args(two_dim_cli.build_parser().parse_args(argv))
    return two_dim.cell_config(Cell("gaussian-moons", "otcfm", 42), p, tmp_path).optim.ema_decay


def test_rf_pulls_in_its_icfm_cell():
    cells, notes = plan_cells(["gaussian-moons"], ["rf"], [42])
    assert cells == [Cell("gaussian-moons", "rf", 42), Cell("gaussian-moons", "icfm", 42)]
    assert Cell("gaussian-moons", "rf", 42).depends_on() == cells[1]
    assert notes


def test_torchcfm_option_points_to_the_script(tmp_path, capsys):
    assert two_dim_cli.main(["--torchcfm", "--runs", str(tmp_path)]) == 2
    assert "benchmarks/two_dim_torchcfm.py" in capsys.readouterr().err
    with pytest.raises(ValueError, match="runner"):
        two_dim.run_cell(Cell("gaussian-moons", "otcfm", 42, "torchcfm"), TINY, tmp_path)


def test_the_package_never_imports_torchcfm():
    """Side-by-side adapters live in benchmarks/, outside the installed package."""
    src = Path(two_dim.__file__).resolve().parents[1]
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "torchcfm" for n in names), path


def test_recipe_modules_import_each_other_without_cycles():
    """The experiments modules form an acyclic graph, function-level imports included."""
    pkg = Path(two_dim.__file__).resolve().parent
    graph = {}
    for path in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "otcfm.experiments":
                    deps |= {a.name for a in node.names}
                elif node.module.startswith("otcfm.experiments."):
                    deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names
                         if a.name.startswith("otcfm.experiments.")}
        graph[path.stem] = deps - {path.stem}
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, " -> ".join([*stack, name])
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*stack, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert "two_dim_torchcfm" not in graph


def test_steps_needed():
    assert steps_needed({1: 3.0, 2: 1.3, 4: 1.1, 100: 1.0}) == 4
    assert steps_needed({1: 1.1, 100: 1.0}) == 1
    assert steps_needed({1: 5.0, 100: 1.0}) == 100
    assert math.isclose(np.std([1.0, 3.0]), 1.0)


def test_sf2m_cell_scores_its_bridge_sde(tmp_path):
    """An SF2M cell adds w2_sde: a hand Euler-Maruyama loop with the cell's seed reproduces it."""
    assert two_dim.SIGMA["sf2m"] == 0.1  # the protocol's; sigma 1 makes the SDE differ more
    p = replace(TINY, couplings=(("sf2m", "approx"),), sigmas=(("sf2m", 1.0),))
    [result] = run_cells([Cell("gaussian-8gaussians", "sf2m", 42)], p, tmp_path)
    rec = result.record
    run = load_run(tmp_path / "gaussian-8gaussians" / "sf2m-seed42", p.tested)
    x0, x1 = run.data.source.test, run.data.target.test
    sigma = rec["sigma"]
    assert sigma == 1.0 and rec["coupling"] == "approx"
    noise = torch.Generator().manual_seed(42)
    x = x0.clone()
    with torch.no_grad():
        for k in range(100):
            t = torch.full((x.shape[0],), k / 100)
            drift = run.model(x, t) + 0.5 * sigma**2 * run.model.score(x, t)
            x = x + drift / 100 + sigma * 0.1 * torch.randn(x.shape, generator=noise)
    assert rec["w2_sde"] == pytest.approx(exact_w2(x, x1), rel=1e-4)
    ode_end, _ = hand_euler(run.model, x0, 100)  # w2 stays the probability-flow ODE's
    assert rec["w2"] == pytest.approx(exact_w2(ode_end, x1), rel=1e-4)
    assert rec["w2_sde"] != pytest.approx(rec["w2"], rel=1e-3)


def test_sampling_floor_is_w2_between_two_target_samples(quick):
    root, _, _ = quick
    from otcfm.data import toy
    from otcfm.train.datasets import stream

    path = root / "runs" / "moons-8gaussians" / "w2_floor-n500.json"
    draws = json.loads(path.read_text())["w2"]
    assert len(draws) == two_dim.FLOOR_DRAWS
    for k, value in enumerate(draws):
        g = stream(0, "two-dim-floor", "moons-8gaussians", str(k))
        a, b = toy.sample("8gaussians-r12", 500, g), toy.sample("8gaussians-r12", 500, g)
        assert value == pytest.approx(exact_w2(a, b), rel=1e-6)
    md = (root / "out" / "two_dim.md").read_text()
    assert f"500-point samples of the target is {sum(draws) / len(draws):.3f}" in md


def test_torchcfm_w2_difference_is_paired_by_seed():
    from otcfm.experiments.two_dim_report import _paired_w2

    ours = [{"seed": 42, "w2": 0.30}, {"seed": 43, "w2": 0.50}, {"seed": 44, "w2": 0.40}]
    theirs = [{"seed": 44, "w2": 0.45}, {"seed": 42, "w2": 0.40}, {"seed": 43, "w2": 0.45}]
    # differences -0.10, +0.05, -0.05: mean -0.033, sample std 0.0764, SE 0.0441
    assert _paired_w2(ours, theirs) == "-0.033 ± 0.044"
    assert _paired_w2(ours[:1], theirs) == "-0.100"
    assert _paired_w2(ours, []) == "-"


class _Scaling(torch.nn.Module):
    """v(x, t) = a x: the flow x1 = e^a x0, so q1(x) = p0(e^-a x) e^(-2a) in 2-D."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def forward(self, x, t):
        return self.a * x


@pytest.mark.parametrize("task", ["moons-8gaussians", "gaussian-moons"])
def test_test_nll_matches_the_closed_form_of_a_scaling_flow(task):
    """The cell's NLL against the change of variables written out: the source density (the
    moons law or N(0, I)) at e^-a x, plus 2a; the target's NLL is its own log_prob."""
    source, target = two_dim.toy.task(task)
    a = 0.3
    x1 = two_dim.toy.sample(target, 300, torch.Generator().manual_seed(5))
    got = two_dim.test_nll(_Scaling(a), x1, source, target, tol=1e-8)
    x = x1.double()
    expected = -(two_dim.toy.log_prob(source, math.exp(-a) * x) - 2 * a)
    truth = -two_dim.toy.log_prob(target, x)
    assert got["nll"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert got["nll_target"] == pytest.approx(float(truth.mean()), abs=1e-12)
    assert got["kl"] == pytest.approx(float((expected - truth).mean()), abs=1e-6)
    assert got["kl_se"] == pytest.approx(float((expected - truth).std()) / 300**0.5, rel=1e-4)
    assert got["nll_nfe"] > 0


def test_quick_records_carry_the_test_nll(quick):
    """Every cell has an NLL no lower than the target's own in expectation (KL >= 0 within 4
    standard errors), and the page shows the column."""
    root, _, records = quick
    for r in records:
        assert r["nll"] == pytest.approx(r["nll_target"] + r["kl"], abs=1e-9)
        assert r["kl"] > -4 * r["kl_se"], r
    assert "| test NLL | NLL − target's |" in (root / "out" / "two_dim.md").read_text()


def test_a_new_nll_tolerance_reevaluates_without_retraining(tmp_path, monkeypatch):
    cell = Cell("gaussian-moons", "icfm", 42)
    first = run_cells([cell], TINY, tmp_path)[0].record
    steps = []
    original = loop.Trainer.train_step

    def counted(self):
        steps.append(self.step)
        return original(self)

    monkeypatch.setattr(loop.Trainer, "train_step", counted)
    again = run_cells([cell], replace(TINY, nll_tol=1e-7), tmp_path)[0]
    assert not again.cached and steps == []
    assert again.record["w2"] == first["w2"] and again.record["nll_nfe"] > first["nll_nfe"]
    assert again.record["nll"] == pytest.approx(first["nll"], abs=1e-3)
