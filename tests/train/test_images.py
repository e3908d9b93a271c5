"""The image objective in the engine: its documented draws, resume, classes, flips, logs."""

from __future__ import annotations

import csv

import pytest
import torch

from otcfm.data import sample_indices
from otcfm.data.images import ImageSet, digits, hflip
from otcfm.matchers import matcher
from otcfm.models import UNet
from otcfm.train.datasets import stream
from otcfm.train.images import ImageObjective
from otcfm.train.loop import Engine, LoopSettings
from otcfm.train.runfolder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    d = digits()
    return ImageSet(d.images[:400], d.labels[:400], d.classes, "digits")


def small_unet(seed=0, num_classes=None):
    return UNet((1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(), num_classes=num_classes, norm_groups=8,
                generator=torch.Generator().manual_seed(seed))


def test_a_step_is_the_documented_draws(data):
    """loss(step) equals the CFM loss recomputed from the module doc's draw order: indices,
    noise, then the coupling's and the path's draws, all from stream(seed, 'images', 'step',
    s); the held-out images are the split of the seed, never a training image."""
    fm = matcher("otcfm")
    obj = ImageObjective(data, fm, batch_size=32, seed=5, n_val=50)
    net = small_unet()
    g = stream(5, "images", "step", "7")
    perm = torch.randperm(400, generator=stream(5, "images", "split"))
    train = data.images[perm[50:]]
    x1 = train[sample_indices(350, 32, generator=g)]
    x0 = torch.randn(x1.shape, generator=g)
    expected = fm.loss(net, x0, x1, generator=g)
    assert float(obj.loss(net, 7).detach()) == pytest.approx(float(expected.detach()),
                                                             rel=1e-6)
    # the split: held-out images are the first n_val of the seed's permutation, never trained on
    assert torch.equal(obj.val_images, data.images[perm[:50]])
    assert torch.equal(obj.train_images, train)


def test_resume_equals_never_stopping_and_the_log(data, tmp_path):
    def make(folder=None):
        obj = ImageObjective(data, matcher("otcfm", coupling="exact:within=y"), batch_size=40,
                             seed=1, n_val=40, conditional=True)
        net = small_unet(num_classes=10)
        return Engine(obj, net, LoopSettings(steps=6, lr=2e-3, warmup=2, ema_decay=0.9,
                                             log_every=3), folder=folder)
    straight = make(RunFolder(tmp_path / "run", fields=("step", "loss", "val_loss",
                                                        "seconds")))
    straight.run()
    first = make()
    first.run(until=3)
    second = make()
    second.load_state_dict(first.state_dict())
    second.run()
    for p, q in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert all(0 <= float(r["coupling_share"]) <= 1 for r in rows)


def test_class_aware_pairs_stay_within_a_class_and_labels_reach_the_model(data):
    """exact:within=y: the noise gets the targets' labels, so every pair's source label is
    its image's label; the model is called with y = the images' labels."""
    obj = ImageObjective(data, matcher("otcfm", coupling="exact:within=y"), batch_size=60,
                         seed=2, n_val=40, conditional=True)
    pair, _ = obj.pair(0)
    _, x1, cond, _ = obj.batch(0)
    y = cond["y"]
    # each pair's target is one of the batch's images, with its label carried along
    assert torch.equal(pair.cond1["y"], y[pair.j])
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen.append(y)
            return torch.zeros_like(x)

    obj.loss(Spy(), 0)
    assert torch.equal(seen[0].sort().values, y.sort().values)
    with pytest.raises(ValueError, match="no class labels"):
        ImageObjective(ImageSet(data.images, None, (), "x"), matcher("icfm"), batch_size=8,
                       seed=0, conditional=True)


def test_flips_follow_the_data_set_unless_asked(data):
    """Digits are not flipped by default; with flips=True the batch's images are the same
    draw, mirrored where hflip says so (the next draws of the same generator)."""
    plain = ImageObjective(data, matcher("icfm"), batch_size=64, seed=3, n_val=40)
    flipped = ImageObjective(data, matcher("icfm"), batch_size=64, seed=3, n_val=40,
                             flips=True)
    assert plain.flips is False and flipped.flips is True
    a, b = plain.batch(4)[1], flipped.batch(4)[1]
    g = stream(3, "images", "step", "4")
    sample_indices(360, 64, generator=g)
    assert torch.equal(b, hflip(a, g))
    assert not torch.equal(a, b)


def test_training_lowers_the_validation_loss(data):
    obj = ImageObjective(data, matcher("icfm"), batch_size=64, seed=0, n_val=100)
    engine = Engine(obj, small_unet(), LoopSettings(steps=60, lr=3e-3, log_every=60))
    before = obj.validate(engine.model.eval())["val_loss"]
    engine.run()
    after = engine.history[-1]["val_loss"]
    assert after < 0.8 * before, (before, after)


def test_samples_and_their_grid(data, tmp_path):
    """sample(): deterministic from the generator, guidance w = 0 is the conditional model;
    image_grid puts image k at row k // nrow, column k % nrow (pixels mapped to [0, 1])."""
    from otcfm.plots import image_grid, plot_image_grids

    obj = ImageObjective(data, matcher("icfm"), batch_size=16, seed=0, n_val=40,
                         conditional=True)
    net = small_unet(num_classes=10)
    with torch.no_grad():
        for p in net.parameters():  # a non-zero field (the fresh UNet outputs exactly 0)
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    y = torch.arange(6) % 10
    a = obj.sample(net, 6, steps=3, generator=torch.Generator().manual_seed(4), y=y)
    b = obj.sample(net, 6, steps=3, generator=torch.Generator().manual_seed(4), y=y)
    c = obj.sample(net, 6, steps=3, generator=torch.Generator().manual_seed(4), y=y,
                   guidance=2.0)
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="guidance needs class labels"):
        obj.sample(net, 2, guidance=1.0)
    images = torch.linspace(-1, 1, 5 * 2 * 3 * 4).reshape(5, 2, 3, 4)
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2, 3 * 4 + 1, 2 * 5 + 1)
    for k in range(5):
        top, left = 1 + (k // 2) * 4, 1 + (k % 2) * 5
        torch.testing.assert_close(grid[:, top:top + 3, left:left + 4], (images[k] + 1) / 2)
    assert float(grid[:, 0].min()) == 1.0  # the padding is white
    out = plot_image_grids({"3 steps": a, "guided": c}, tmp_path / "grid.png")
    assert out.is_file() and out.stat().st_size > 1000


def test_the_coupling_loads_its_solver_when_the_objective_is_built(data, monkeypatch):
    """The image objective calls its coupling's prepare() once, before any step (so a run's
    clock does not count the compiled solver's loading); a ByClass coupling passes it on."""
    from otcfm.couplings import ExactOT

    calls = []
    monkeypatch.setattr(ExactOT, "prepare", lambda self: calls.append(type(self).__name__))
    ImageObjective(data, matcher("otcfm", coupling="exact:within=y"), batch_size=40, seed=1,
                   n_val=40, conditional=True)
    assert calls == ["ExactOT"]
