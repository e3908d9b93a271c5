"""The feature networks of the image benchmarks: trained deterministically, stored with a
record that the loader checks, and as accurate on held-out images as the record says."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from otcfm.data.images import DEBIAN_FASHION_MNIST, ImageSet, digits, idx
from otcfm.experiments.feature_nets import (
    FEATURE_DIM,
    STORE,
    FeatureNet,
    _split,
    accuracy,
    load_feature_net,
    train_feature_net,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    data = digits()
    return ImageSet(data.images[:300], data.labels[:300], data.classes, "digits")


def test_the_same_seed_trains_the_same_network(small):
    a, rec_a = train_feature_net(small, steps=15, batch_size=32, seed=3)
    b, _ = train_feature_net(small, steps=15, batch_size=32, seed=3)
    c, _ = train_feature_net(small, steps=15, batch_size=32, seed=4)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(),
                                                     strict=True))
    assert rec_a["n_train"] + rec_a["n_heldout"] == 300 and 0 <= rec_a["heldout_accuracy"] <= 1


def test_features_for_any_image_size():
    net = FeatureNet(1, 10, generator=torch.Generator().manual_seed(0))
    for size in (8, 28):
        x = torch.rand(5, 1, size, size) * 2 - 1
        assert net.features(x).shape == (5, FEATURE_DIM) and net(x).shape == (5, 10)


def test_the_committed_digits_network_matches_its_record():
    """The held-out accuracy recomputed from the committed weights on the record's split is
    the record's number (an independent evaluation of the stored file)."""
    net, record = load_feature_net("digits")
    data = digits()
    _, held = _split(len(data), record["seed"])
    assert held.shape[0] == record["n_heldout"]
    acc = accuracy(net, data.images[held], data.labels[held])
    assert acc == pytest.approx(record["heldout_accuracy"], abs=1e-12)
    assert acc > 0.9


def test_changed_or_missing_weights_are_refused(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(STORE, store)
    state = torch.load(store / "digits.pt", weights_only=True)
    state["head.bias"] = state["head.bias"] + 1e-3
    torch.save(state, store / "digits.pt")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_feature_net("digits", store)
    with pytest.raises(FileNotFoundError, match="python -m otcfm.experiments.feature_nets"):
        load_feature_net("digits", tmp_path / "empty")
    with pytest.raises(ValueError, match="no feature network for 'cifar'"):
        load_feature_net("cifar")


@pytest.mark.skipif(not (STORE / "fashion-mnist.json").is_file(), reason="not trained")
def test_the_committed_fashion_mnist_network_matches_its_record():
    record = json.loads((STORE / "fashion-mnist.json").read_text())
    assert record["heldout_accuracy"] > 0.8
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    net, _ = load_feature_net("fashion-mnist")
    test = idx(split="test")  # images the network never saw
    assert accuracy(net, test.images, test.labels) > 0.8


def test_feature_distance_is_the_frechet_distance_of_the_features():
    """FD between two halves of digits is small against FD between digits and noise, and is
    frechet_distance of the features computed directly (float64)."""
    from otcfm.experiments.feature_nets import feature_distance, features
    from otcfm.metrics import frechet_distance

    net, _ = load_feature_net("digits")
    images = digits().images
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = images[perm[:800]], images[perm[800:1600]]
    noise = torch.rand(800, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    same, other = feature_distance(net, a, b), feature_distance(net, a, noise)
    assert 0 <= same < 0.1 * other
    fa, fb = features(net, a), features(net, b)
    assert fa.dtype == torch.float64 and fa.shape == (800, FEATURE_DIM)
    assert same == pytest.approx(frechet_distance(fa, fb), rel=1e-12)
