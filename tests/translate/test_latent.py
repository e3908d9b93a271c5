"""Translation by a latent flow: groups of classes, the scores against closed forms, and one
small end-to-end run on the 8x8 digits (train, resume, refuse foreign codes)."""

from __future__ import annotations

import math

import pytest
import torch

from otcfm.data.images import ImageSet
from otcfm.translate import (
    FlowSpec,
    class_indices,
    fit_autoencoder,
    group_images,
    translate,
    translation_scores,
)


def labelled(n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.arange(n) % 4
    return ImageSet(images, labels, ("a", "b", "c", "d"), "toy")


def test_groups_by_name_or_index_and_their_errors():
    data = labelled()
    assert class_indices(data, ["b", 3]) == (1, 3)
    assert class_indices(data, ["2"]) == (2,)
    assert group_images(data, (1, 3)).shape == (20, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown class 'e' of toy; its classes: a, b, c, d"):
        class_indices(data, ["e"])
    with pytest.raises(ValueError, match="at least one class"):
        class_indices(data, [])
    with pytest.raises(ValueError, match="listed twice"):
        class_indices(data, ["a", 0])
    few = ImageSet(data.images[:4], torch.tensor([0, 0, 1, 1]), ("a", "b", "c"), "few")
    with pytest.raises(ValueError, match="no images of c in few"):
        group_images(few, (2,))
    with pytest.raises(ValueError, match="no class labels"):
        class_indices(ImageSet(data.images, None, (), "bare"), ["a"])


def test_scores_against_closed_forms():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g)
    shift = torch.tensor([3.0, 0.0, 4.0])
    same = translation_scores(x, x, x)
    assert same["moved"] == 0.0 and same["mmd"] == pytest.approx(0.0, abs=1e-12)
    moved = translation_scores(x, x + shift, x + shift)
    assert moved["moved"] == pytest.approx(5.0, rel=1e-6) and moved["moved_se"] < 1e-6
    assert moved["moved_sq"] == pytest.approx(25.0, rel=1e-6) and moved["moved_sq_se"] < 1e-5
    scaled = translation_scores(x, 2.0 * x, x)  # |x|^2 averaged: the sample's own moments
    assert scaled["moved_sq"] == pytest.approx(float(x.double().pow(2).sum(1).mean()), rel=1e-9)
    assert scaled["moved_sq_se"] == pytest.approx(
        float(x.double().pow(2).sum(1).std() / math.sqrt(200)), rel=1e-9)
    assert translation_scores(x, x, x + shift)["mmd"] > 0.1

    def classifier(images):  # class = sign of the mean pixel: 1 if bright, else 0
        bright = images.flatten(1).mean(1) > 0
        return torch.stack([(~bright).float(), bright.float()], 1)

    images = torch.cat([torch.ones(3, 1, 4, 4), -torch.ones(1, 1, 4, 4)])
    rate = translation_scores(x[:4], x[:4], x, images=images, classifier=classifier,
                              target_classes=[1])["target_rate"]
    assert rate == 0.75
    with pytest.raises(ValueError, match="needs the decoded images and the target classes"):
        translation_scores(x, x, x, classifier=classifier)
    with pytest.raises(ValueError, match="differ in shape"):
        translation_scores(x, x[:10], x)


def test_digits_end_to_end_resume_and_foreign_codes(tmp_path):
    pytest.importorskip("sklearn")
    from otcfm.data.images import digits

    data = digits()
    three, eight = group_images(data, class_indices(data, ["3"])), group_images(
        data, class_indices(data, ["8"]))
    fit = fit_autoencoder(torch.cat([three, eight]), latent=4, width=8, steps=60,
                          batch_size=64, seed=0)
    spec = FlowSpec(method="otcfm", steps=40, batch_size=32, width=32, seed=0)
    run = translate(fit, three[30:], eight[30:], three[:30], eight[:30], spec, tmp_path)
    assert run.mapped.shape == (30, 4) and run.images.shape == (30, 1, 8, 8)
    assert run.run_dir == tmp_path / "otcfm" and (run.run_dir / "metrics.json").is_file()
    assert math.isfinite(run.scores["mmd"]) and run.scores["moved"] > 0
    again = translate(fit, three[30:], eight[30:], three[:30], eight[:30], spec, tmp_path)
    assert torch.equal(again.mapped, run.mapped)  # the finished run is read back, not retrained
    other = fit_autoencoder(torch.cat([three, eight]), latent=4, width=8, steps=5,
                            batch_size=64, seed=1)
    with pytest.raises(ValueError, match="holds other codes than this autoencoder gives"):
        translate(other, three[30:], eight[30:], three[:30], eight[:30], spec, tmp_path)
