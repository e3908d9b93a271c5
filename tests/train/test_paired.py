"""Paired training data (``data.paired``): row i of the source file goes with row i of the target.

Oracle: the target rows are a known function of the source rows (a rotation by 90 degrees), so
every split and every training batch must satisfy that relation exactly, and a rectified flow
trained on the pairs must map each x0 to its own partner (not just match the marginal).
"""

from __future__ import annotations

import math

import pytest
import torch

from otcfm.couplings import Independent
from otcfm.data import save_points
from otcfm.train.config import DataConfig, RunConfig
from otcfm.train.datasets import load_run_data
from otcfm.train.evaluate import load_run
from otcfm.train.loop import Trainer, train
from otcfm.train.prefetch import couple_batch

pytestmark = pytest.mark.usefixtures("one_thread")


ROT = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # x -> R x, rotation by +90 degrees


def rotate(x):
    return x @ ROT.T


def pair_files(tmp_path, n=400, n_target=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g)
    x1 = rotate(x0)
    if n_target is not None:
        x1 = torch.randn(n_target, 2, generator=g)
    src, tgt = tmp_path / "x0.npy", tmp_path / "x1.npy"
    save_points(src, x0)
    save_points(tgt, x1)
    return str(src), str(tgt)


def test_paired_splits_keep_rows_together(tmp_path):
    src, tgt = pair_files(tmp_path)
    data = load_run_data(DataConfig(source=src, target=tgt, paired=True), seed=3)
    for split in ("train", "val", "test"):
        x0, x1 = getattr(data.source, split), getattr(data.target, split)
        assert x0.shape == x1.shape
        torch.testing.assert_close(x1, rotate(x0), rtol=0, atol=1e-6)
    assert data.source.train.shape[0] == 400 - 2 * 40


def test_unpaired_files_are_shuffled_independently(tmp_path):
    src, tgt = pair_files(tmp_path)
    data = load_run_data(DataConfig(source=src, target=tgt, paired=False), seed=3)
    err = (data.target.train - rotate(data.source.train)).norm(dim=1)
    assert float(err.mean()) > 0.5  # pairs broken (mean |R a - b| ~ 1.8 for random rows)


def test_paired_row_counts_must_match(tmp_path):
    src, tgt = pair_files(tmp_path, n=400, n_target=390)
    with pytest.raises(ValueError, match=r"400 .* 390"):
        load_run_data(DataConfig(source=src, target=tgt, paired=True), seed=0)


def test_paired_needs_files(tmp_path):
    src, _ = pair_files(tmp_path)
    with pytest.raises(ValueError, match="'8gaussians'"):
        load_run_data(DataConfig(source=src, target="8gaussians", paired=True), seed=0)


def test_couple_batch_draws_the_same_rows(tmp_path):
    x0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    x1 = rotate(x0)
    batch = couple_batch(Independent(), x0, x1, 64, 5, seed=7, paired=True)
    torch.testing.assert_close(batch.pair.x1, rotate(batch.pair.x0), rtol=0, atol=1e-6)
    assert len(set(batch.pair.x0[:, 0].tolist())) == 64  # without replacement
    again = couple_batch(Independent(), x0, x1, 64, 5, seed=7, paired=True)
    assert torch.equal(batch.pair.x0, again.pair.x0)
    with pytest.raises(ValueError, match="same number of rows"):
        couple_batch(Independent(), x0, x1[:200], 64, 0, seed=7, paired=True)


def rf_config(tmp_path, src, tgt, paired, steps=600, name="rf"):
    return RunConfig(name=name, out_dir=str(tmp_path)).override(
        [
            f'data.source="{src}"',
            f'data.target="{tgt}"',
            f"data.paired={'true' if paired else 'false'}",
            "method.name=rf",
            "method.sigma=0.0",
            f"optim.steps={steps}",
            "optim.batch_size=128",
            "eval.val_every=300",
            "eval.checkpoint_every=300",
            "eval.ode_steps=20",
            "model.width=32",
            "model.depth=2",
        ]
    )


def test_trainer_batches_are_pairs(tmp_path):
    src, tgt = pair_files(tmp_path)
    trainer = Trainer(rf_config(tmp_path, src, tgt, paired=True, steps=4), progress=False)
    for k in range(3):
        pair = trainer.couple(k).pair
        torch.testing.assert_close(pair.x1, rotate(pair.x0), rtol=0, atol=1e-6)
    trainer.close()


def test_rectified_flow_learns_the_pairing(tmp_path):
    """Trained on (x0, R x0) the flow sends each x0 to R x0; unpaired it cannot (same marginals)."""
    src, tgt = pair_files(tmp_path, n=2000)
    errors = {}
    for paired in (True, False):
        cfg = rf_config(tmp_path, src, tgt, paired, name=f"rf-{paired}")
        train(cfg, progress=False)
        run = load_run(cfg.run_dir, "latest")
        x0 = run.data.source.test
        with torch.no_grad():
            x = x0.clone()
            for k in range(50):  # Euler on the learned field
                t = torch.full((x.shape[0],), k / 50)
                x = x + run.model(x, t) / 50
        errors[paired] = float((x - rotate(x0)).norm(dim=1).mean())
    # identity map error E|R x - x| = sqrt(2) E|x| = sqrt(pi) ~ 1.77 for x ~ N(0, I_2)
    assert errors[True] < 0.25 * math.sqrt(math.pi), errors
    assert errors[False] > 0.6 * math.sqrt(math.pi), errors
