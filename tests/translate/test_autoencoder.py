"""The translation recipe's autoencoder: shapes, seeded weights, training on the engine,
standardised codes, and files that are data (saved and loaded as plain tensors)."""

from __future__ import annotations

import json

import pytest
import torch

from otcfm.translate import (
    AutoEncoder,
    ReconstructionObjective,
    fit_autoencoder,
    load_autoencoder,
    save_autoencoder,
)


def blobs(n=96, size=8, seed=0):
    """Images of one bright square on a dark background, at random places (learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, size, size)
    corner = torch.randint(0, size - 3, (n, 2), generator=g)
    for k, (i, j) in enumerate(corner.tolist()):
        x[k, 0, i:i + 3, j:j + 3] = 1.0
    return x


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 16, 12)])
def test_shapes_range_and_seeded_weights(shape):
    g = torch.Generator().manual_seed(0)
    net = AutoEncoder(shape, latent=5, width=4, generator=g)
    x = torch.rand(3, *shape) * 2 - 1
    z = net.encode(x)
    y = net.decode(z)
    assert z.shape == (3, 5) and y.shape == (3, *shape)
    assert float(y.detach().abs().max()) < 1.0
    again = AutoEncoder(shape, latent=5, width=4, generator=torch.Generator().manual_seed(0))
    pairs = zip(net.parameters(), again.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)


def test_bad_shapes_and_sizes_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        AutoEncoder((1, 10, 8))
    with pytest.raises(ValueError, match="latent must be a positive integer"):
        AutoEncoder((1, 8, 8), latent=0)
    net = AutoEncoder((1, 8, 8), latent=4, width=4)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
        net.encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"expected codes of shape \(B, 4\)"):
        net.decode(torch.zeros(2, 5))


def test_objective_draws_a_function_of_seed_and_step():
    x = blobs()
    net = AutoEncoder((1, 8, 8), latent=4, width=4, generator=torch.Generator().manual_seed(1))
    obj = ReconstructionObjective(x[:80], x[80:], batch_size=16, seed=3)
    assert torch.equal(obj.loss(net, 7), obj.loss(net, 7))
    assert not torch.equal(obj.loss(net, 7), obj.loss(net, 8))
    with pytest.raises(ValueError, match="batch_size must lie in"):
        ReconstructionObjective(x[:80], x[80:], batch_size=81, seed=3)


def test_training_lowers_the_reconstruction_error_and_standardises_codes(tmp_path):
    x = blobs()
    untrained = AutoEncoder((1, 8, 8), latent=6, width=8,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(((untrained(x) - x) ** 2).mean())
    fit = fit_autoencoder(x, latent=6, width=8, steps=300, batch_size=32, lr=3e-3, seed=0)
    assert fit.val_loss < 0.5 * before, (fit.val_loss, before)
    codes = fit.encode(x)
    assert codes.shape == (96, 6)
    # standardised with the training images' statistics: over all images close to 0 and 1
    assert float(codes.mean(0).abs().max()) < 0.5 and 0.5 < float(codes.std(0).mean()) < 1.5
    assert torch.allclose(fit.decode(codes), fit.model(x), atol=1e-5)
    assert fit.record["n_train"] + fit.record["n_val"] == 96

    save_autoencoder(fit, tmp_path)
    back = load_autoencoder(tmp_path)
    assert torch.equal(back.decode(codes), fit.decode(codes))
    assert torch.equal(back.mean, fit.mean) and back.record == fit.record


def test_saved_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no autoencoder was saved"):
        load_autoencoder(tmp_path)
    fit = fit_autoencoder(blobs(), latent=3, width=4, steps=5, batch_size=16)
    save_autoencoder(fit, tmp_path)
    record = json.loads((tmp_path / "autoencoder.json").read_text())
    record["latent"] = 4  # the weights no longer fit the network the record describes
    (tmp_path / "autoencoder.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not fit the network"):
        load_autoencoder(tmp_path)
    (tmp_path / "autoencoder.json").write_text("{}")
    with pytest.raises(ValueError, match="not an autoencoder record"):
        load_autoencoder(tmp_path)
