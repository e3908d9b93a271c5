"""Image runs end to end through the config, the Trainer and the CLI: data.target an image set,
the [images] section, sample grids, data records, evaluation (FD, class accuracy, FID) and
sampling with classes and guidance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from otcfm.cli import main
from otcfm.data.images import is_image_spec, load_images, with_folder
from otcfm.metrics import fid, frechet_distance
from otcfm.sampling import integrate
from otcfm.train.config import ConfigError, RunConfig
from otcfm.train.datasets import check_image_files, read_data_record, record_image_data
from otcfm.train.evaluate_images import (
    evaluate_image_run,
    from_pixels,
    load_image_run,
    sample_images,
    to_pixels,
)
from otcfm.train.images import ImageObjective
from otcfm.train.loop import Trainer, image_matcher, train
from tests.data.test_images import write_idx_pair
from tests.test_fid import FlagNet, scripted, write_stats

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


def digits_cfg(tmp_path: Path, *extra: str, steps: int = 6) -> RunConfig:
    """Class-conditional OT-CFM within classes on digits with a small MLP: seconds on a CPU."""
    return RunConfig().override([
        "name=\"d\"", f"out_dir=\"{tmp_path}\"", "data.target=\"digits\"", "data.n_val=100",
        "data.n_test=50", "method.coupling=\"exact:within=y\"", "model.width=32",
        "model.depth=2", f"optim.steps={steps}", "optim.batch_size=32", "eval.val_every=3",
        "eval.checkpoint_every=3", "eval.ode_steps=4", "images.conditional=true",
        "images.grid_every=3", "images.grid_size=20", "images.grid_steps=2", *extra,
    ])


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "cifar10"])
def test_the_committed_configs_validate_and_resolve_their_unet(name):
    cfg = RunConfig.from_toml(CONFIGS / f"{name}.toml").resolve()
    assert cfg.is_image_run and cfg.model.arch == "unet" and cfg.model.preset == name
    assert cfg.model.channels > 0 and cfg.model.dropout >= 0  # the preset's, written in
    if name == "cifar10":  # the paper's recipe
        o = cfg.optim
        assert (o.batch_size, o.lr, o.warmup, o.grad_clip, o.ema_decay, o.steps) == (
            128, 2e-4, 5000, 1.0, 0.9999, 400_000)
        assert cfg.method.sigma == 0.0 and cfg.images.flips == "on"
        assert (cfg.model.channels, cfg.model.dropout) == (128, 0.1)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.arch=\"unet\""], "model.arch"),  # points
        (["images.conditional=true"], "images.conditional"),  # points
        (["data.target=\"digits\"", "method.coupling=\"exact:within=y\""], "method.coupling"),
        (["data.target=\"digits\"", "data.source=\"moons\""], "data.source"),
        (["data.target=\"digits\"", "model.arch=\"unet\"", "model.preset=\"mnist\""],
         "model.preset"),
        (["data.target=\"digits\"", "images.flips=\"maybe\""], "images.flips"),
        (["data.target=\"digits\"", "images.cond_dropout=1.0"], "images.cond_dropout"),
        (["data.target=\"digits\"", "model.arch=\"resnet\""], "model.arch"),
    ],
)
def test_image_settings_that_cannot_work_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        RunConfig().override(overrides).validate()
    assert err.value.key == key and key in str(err.value)


def test_image_specs_and_folders(tmp_path):
    assert is_image_spec("digits") and is_image_spec("cifar10:/x") and is_image_spec(tmp_path)
    assert not is_image_spec("moons") and not is_image_spec("points.npy")
    assert with_folder("cifar10", tmp_path) == f"cifar10:{tmp_path}"
    for bad in ("digits", "cifar10:/a", "moons"):
        with pytest.raises(ValueError):
            with_folder(bad, tmp_path)


def test_train_data_root_sets_the_folder_of_a_named_set(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS / "cifar10.toml"), "--data-root",
                 str(tmp_path), "--device", "cpu", "--print-config"]) == 0
    assert f'target = "cifar10:{tmp_path}"' in capsys.readouterr().out
    assert main(["train", "--task", "moons-8gaussians", "--data-root", str(tmp_path),
                 "--print-config"]) == 2
    assert "--data-root applies to image sets" in capsys.readouterr().err


# --------------------------------------------------------------------------- training
def test_a_conditional_digits_run_writes_grids_log_and_its_data_record(tmp_path):
    result = train(digits_cfg(tmp_path), progress=False)
    run = tmp_path / "d"
    assert result.steps == 6
    grids = sorted(p.name for p in (run / "samples").glob("step-*.png"))
    assert grids == ["step-3.png", "step-6.png"]
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "loss", "val_loss"] and "coupling_share" in header
    record = read_data_record(run)
    assert record.inputs == {"data.source": "gaussian", "data.target": "digits"}
    assert record.event_shape == (1, 8, 8)
    loaded = load_image_run(run)
    assert loaded.conditional and loaded.classes == tuple("0123456789")


def test_a_resumed_image_run_equals_one_that_never_stopped(tmp_path):
    one = train(digits_cfg(tmp_path / "a"), progress=False)
    train(digits_cfg(tmp_path / "b", steps=3), progress=False)
    two = train(digits_cfg(tmp_path / "b"), resume=True, progress=False)
    assert [r["loss"] for r in one.history] == [r["loss"] for r in two.history]
    a = torch.load(tmp_path / "a/d/checkpoints/latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/d/checkpoints/latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_process_shares_of_an_image_batch_average_to_its_loss():
    """Under torch.distributed each process trains on its share of the same global batch:
    the mean of the shares' losses (what DDP's gradient average optimises) is the loss of the
    whole batch."""
    data = load_images("digits")
    cfg = RunConfig().override(["data.target=\"digits\"", "images.conditional=true",
                                "method.coupling=\"exact:within=y\""]).resolve()
    model = lambda x, t, y: x * t.view(-1, 1, 1, 1) + y.view(-1, 1, 1, 1) * 0.01  # noqa: E731
    kw = {"batch_size": 64, "seed": 3, "n_val": 100, "conditional": True}
    whole = ImageObjective(data, image_matcher(cfg, 10), **kw).loss(model, 5)
    shares = [ImageObjective(data, image_matcher(cfg, 10), rank=r, world=2, **kw).loss(model, 5)
              for r in range(2)]
    assert torch.allclose((shares[0] + shares[1]) / 2, whole, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ImageObjective(data, image_matcher(cfg, 10), rank=0, world=3, **kw)


def test_conditional_training_needs_labels(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i in range(40):
        Image.fromarray(np.full((8, 8), i * 6, np.uint8)).save(folder / f"{i:02d}.png")
    cfg = digits_cfg(tmp_path, f"data.target=\"{folder}\"", "data.n_val=10",
                     "method.coupling=\"exact\"", "optim.batch_size=8")
    with pytest.raises(ConfigError, match="no class labels"):
        Trainer(cfg, progress=False)


# --------------------------------------------------------------------------- data records
def test_idx_runs_record_their_files_and_refuse_changed_ones(tmp_path):
    write_idx_pair(tmp_path, "train", 12, gz=True)
    cfg = RunConfig().override([f"data.target=\"fashion-mnist:{tmp_path}\""]).data
    images = load_images(cfg.target)
    record = record_image_data(cfg, images)
    names = sorted(k for k in record.inputs if k.startswith("data.target/"))
    assert names == ["data.target/train-images-idx3-ubyte.gz",
                     "data.target/train-labels-idx1-ubyte.gz"]
    check_image_files(record, images)  # unchanged: accepted
    write_idx_pair(tmp_path, "train", 12, gz=True)  # other random pixels
    with pytest.raises(ValueError, match="differs from the file the run was trained on"):
        check_image_files(record, load_images(cfg.target))
    with pytest.warns(UserWarning, match="used anyway"):
        check_image_files(record, load_images(cfg.target), allow_changed_data=True)


# --------------------------------------------------------------------------- evaluation
class RecordingScorer:
    """A scorer whose distance is the Fréchet distance of raw pixels (an oracle computed
    independently below) and whose accuracy is the share of labels equal to 0."""

    name = "pixels"

    def distance(self, samples, reference):
        self.samples = samples
        return frechet_distance(samples.flatten(1).double().numpy(),
                                reference.flatten(1).double().numpy())

    def accuracy(self, samples, labels):
        self.labels = labels
        return float((labels == 0).float().mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    train(digits_cfg(tmp), progress=False)
    return tmp / "d"


def test_evaluate_scores_the_samples_it_draws(trained, tmp_path):
    inception = tmp_path / "flag.pt"
    scripted(FlagNet).save(str(inception))
    ref = torch.rand(30, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        feats = scripted(FlagNet)(to_pixels(ref), return_features=True).double().numpy()
    stats = tmp_path / "stats.npz"
    write_stats(stats, feats)
    scorer = RecordingScorer()
    m = evaluate_image_run(trained, n=25, solver="euler", steps=3, scorer=scorer,
                           inception=inception, fid_stats=stats, batch_size=10)
    again = sample_images(load_image_run(trained), 25, solver="euler", steps=3)
    assert torch.equal(to_pixels(scorer.samples), again.pixels)  # the same draws, quantised
    digits = load_images("digits").images
    assert m["fd"] == pytest.approx(RecordingScorer().distance(from_pixels(again.pixels),
                                                               digits), rel=1e-12)
    assert m["fid"] == pytest.approx(fid(again.pixels, inception=inception, stats=stats),
                                     rel=1e-9)
    assert m["nfe"] == 3 and m["n"] == 25 and m["fd_features"] == "pixels"
    assert torch.equal(scorer.labels, torch.arange(25) % 10)  # the classes in turn
    assert m["accuracy"] == pytest.approx(3 / 25)
    saved = json.loads((trained / "metrics.json").read_text())["test"]
    assert saved["fd"] == m["fd"]
    assert (trained / "samples" / "eval.png").is_file()
    assert "| fd |" in (trained / "report.md").read_text()


def test_an_adaptive_solver_reports_its_measured_nfe(trained):
    run = load_image_run(trained)
    drawn = sample_images(run, 10, solver="dopri5", tol=1e-3,
                          generator=torch.Generator().manual_seed(0))
    x0 = torch.randn((10, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    traj = integrate(run.model, x0, method="dopri5", atol=1e-3, rtol=1e-3, save="ends",
                     energy=False, cond={"y": torch.arange(10)})
    assert drawn.nfe == traj.nfe > 6 and torch.equal(drawn.pixels, to_pixels(traj.x_final))


def test_guidance_zero_is_the_conditional_model_and_w_changes_samples(trained):
    run = load_image_run(trained)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    plain = sample_images(run, 10, steps=3, generator=g())
    zero = sample_images(run, 10, steps=3, generator=g(), guidance=0.0)
    two = sample_images(run, 10, steps=3, generator=g(), guidance=2.0)
    assert torch.equal(plain.pixels, zero.pixels) and not torch.equal(plain.pixels, two.pixels)


# --------------------------------------------------------------------------- the CLI
def test_sample_writes_classes_as_png_npz_and_pt(trained, tmp_path, capsys):
    assert main(["sample", str(trained), "--class", "3", "--guidance", "1", "--n", "6",
                 "--ode-steps", "2", "--out", str(tmp_path / "threes.npz")]) == 0
    out = capsys.readouterr().out
    assert "class 3" in out and "guidance 1" in out and "NFE 2" in out
    data = np.load(tmp_path / "threes.npz")
    assert data["images"].shape == (6, 1, 8, 8) and data["images"].dtype == np.uint8
    assert (data["labels"] == 3).all()
    assert main(["sample", str(trained), "--class", "none", "--n", "4", "--ode-steps", "2",
                 "--out", str(tmp_path / "u.pt")]) == 0
    saved = torch.load(tmp_path / "u.pt", weights_only=True)
    assert (saved["labels"] == 10).all() and saved["images"].shape == (4, 1, 8, 8)
    assert main(["sample", str(trained), "--n", "20", "--ode-steps", "2", "--out",
                 str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "Sneaker"], "not a class of d"),
        (["--class", "12"], "not a class of d"),
        (["--class", "12"], "name: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9;"),  # digits named once
        (["--sde"], "apply to point-cloud runs"),
        (["--guidance", "-1"], "guidance must be finite and >= 0"),
        (["--solver", "rk5"], "unknown solver"),
    ],
)
def test_sample_refuses_what_an_image_run_cannot_do(trained, tmp_path, capsys, argv, message):
    assert main(["sample", str(trained), "--n", "2", "--out", str(tmp_path / "x.png"),
                 *argv]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_refuses_half_the_fid_files_and_image_flags_on_point_runs(trained, tmp_path,
                                                                            capsys):
    assert main(["evaluate", str(trained), "--fid", "--inception", str(tmp_path / "x.pt")]) == 2
    assert "--fid needs --inception FILE" in capsys.readouterr().err
    assert main(["evaluate", str(trained), "--fid", "--inception", str(tmp_path / "x.pt"),
                 "--fid-stats", str(tmp_path / "s.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    points = tmp_path / "p"
    assert main(["train", "--task", "moons-8gaussians", "--steps", "2", "--n-train", "64",
                 "--batch-size", "16", "--out", str(points), "--name", "r", "--no-eval",
                 "--quiet", "--val-every", "1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(points / "r"), "--guidance", "2"]) == 2
    assert "--guidance applies to image runs" in capsys.readouterr().err
    assert main(["sample", str(points / "r"), "--class", "1", "--out",
                 str(tmp_path / "s.npy")]) == 2
    assert "--class applies to image runs" in capsys.readouterr().err


def test_two_processes_train_an_image_run_like_one(tmp_path, ranks):
    """Class-conditional OT-CFM within classes on digits, 2 gloo processes against 1: the
    same weights (each process trains on its share of the same global batch)."""
    cfgs = [digits_cfg(tmp_path / f"w{w}", "images.grid_every=0", "optim.lr=0.01")
            for w in (1, 2)]
    for world, cfg in zip((1, 2), cfgs, strict=True):
        ranks(cfg, tmp_path, world=world)
    a, b = (torch.load(c.run_dir / "checkpoints" / "latest.pt", weights_only=True)["model"]
            for c in cfgs)
    init = digits_cfg(tmp_path / "init", "images.grid_every=0", steps=1)
    train(init, progress=False)
    first = torch.load(init.run_dir / "checkpoints" / "latest.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert max(float((a[k] - first[k]).abs().max()) for k in a) > 1e-3  # it trained


def test_sf2m_on_images_gets_a_score_network_or_is_refused_before_any_folder(tmp_path):
    """SF2M on an image set with the MLP trains a drift-and-score model (it used to fail at its
    first step, after writing the run folder); with the UNet, which has no score head, it is
    refused before the run folder exists."""
    from otcfm.models import DriftScore

    mlp = RunConfig().override([
        "name=\"s\"", f"out_dir=\"{tmp_path}\"", "data.target=\"digits\"", "data.n_val=100",
        "data.n_test=50", "method.name=\"sf2m\"", "model.width=16", "model.depth=2",
        "optim.steps=2", "optim.batch_size=32", "eval.val_every=2",
        "eval.checkpoint_every=2"]).validate()
    result = train(mlp, progress=False)
    run = load_image_run(result.run_dir, "latest")
    assert result.steps == 2 and isinstance(run.model, DriftScore)
    drawn = sample_images(run, 3, solver="euler", steps=2)  # the drift's ODE
    assert drawn.pixels.shape == (3, 1, 8, 8) and drawn.pixels.dtype == torch.uint8
    unet = RunConfig().override([
        "name=\"u\"", f"out_dir=\"{tmp_path}\"", "data.target=\"digits\"",
        "method.name=\"sf2m\"", "model.arch=\"unet\"", "optim.batch_size=32"]).validate()
    with pytest.raises(ValueError, match="model.arch 'unet' has no score network"):
        train(unet, progress=False)
    assert not (tmp_path / "u").exists()
