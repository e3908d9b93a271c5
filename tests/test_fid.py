"""FID plumbing of otcfm.metrics with tiny TorchScript networks written here (the real Inception
file cannot be downloaded): features, statistics files, the two calling forms, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from otcfm.metrics import (
    FeatureStats,
    feature_stats,
    fid,
    inception_features,
    load_fid_stats,
    load_inception,
    save_fid_stats,
)

# the test networks are TorchScript, as the FID network is; recent torch deprecates the format
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


class FlagNet(torch.nn.Module):
    """The calling form of inception-2015-12-05.pt: uint8 images of any size, and
    ``return_features=True`` for the pool features (here 16 of them)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise ValueError("FlagNet takes uint8 images")
        h = torch.tanh(self.conv(img.to(torch.float32) / 128.0 - 1.0))
        feats = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        if return_features:
            return feats
        return feats.sum(dim=1)


class PlainNet(torch.nn.Module):
    """A feature network without ``return_features``: float [0, 255] images of 299 x 299,
    output (B, 4, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 299 or x.shape[3] != 299 or x.dtype != torch.float32:
            raise ValueError("PlainNet takes float32 299 x 299 images")
        h = torch.tanh(self.conv(x / 255.0))
        return h.mean(dim=(2, 3))[:, :, None, None]


class PixelNet(torch.nn.Module):
    """Returns the pixels it was given: shows exactly what a network receives."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.to(torch.float32).flatten(1)


def scripted(cls, seed=0):
    net = cls()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return torch.jit.script(net.eval())


@pytest.fixture
def flag_net(tmp_path):
    path = tmp_path / "flag.pt"
    scripted(FlagNet).save(str(path))
    return path


def images(n, seed, size=8, channels=3, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def pixels_oracle(x):
    """[-1, 1] -> uint8 as saved images are quantised: floor(127.5 x + 128), clipped."""
    return np.clip(np.floor(x.double().numpy() * 127.5 + 128.0), 0, 255).astype(np.uint8)


def fd_oracle(fa, mu_b, cov_b):
    mu_a, cov_a = fa.mean(0), np.cov(fa, rowvar=False)
    cross = np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def write_stats(path, feats, *, compressed=True, dtype=np.float64):
    mu, sigma = feats.mean(0).astype(dtype), np.cov(feats, rowvar=False).astype(dtype)
    (np.savez_compressed if compressed else np.savez)(path, mu=mu, sigma=sigma)
    return mu.astype(np.float64), sigma.astype(np.float64)


def direct_features(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(pixels_oracle(x)), return_features=True).double().numpy()


# clean-fid writes np.savez_compressed(mu=, sigma=) in float64; pytorch-fid's --save-stats the
# same keys; files written by others may hold float32 or be uncompressed
@pytest.mark.parametrize(("compressed", "dtype"), [(True, np.float64), (False, np.float32)])
def test_fid_equals_frechet_distance_of_the_networks_features(flag_net, tmp_path, compressed,
                                                              dtype):
    net = torch.jit.load(str(flag_net))
    ref = direct_features(net, images(120, seed=1, shift=0.4))
    mu, sigma = write_stats(tmp_path / "ref.npz", ref, compressed=compressed, dtype=dtype)
    x = images(60, seed=2)
    expected = fd_oracle(direct_features(net, x), mu, sigma)
    assert expected > 0.05  # the two image sets differ: a real distance is compared
    got = fid(x, inception=flag_net, stats=tmp_path / "ref.npz", batch_size=16)
    assert got == pytest.approx(expected, rel=1e-6)
    loaded = load_fid_stats(tmp_path / "ref.npz")
    assert loaded.n is None and np.array_equal(loaded.mu, mu) and np.allclose(loaded.cov, sigma)


def test_batches_iterables_and_repeats_agree(flag_net, tmp_path):
    net = load_inception(flag_net)
    write_stats(tmp_path / "ref.npz", direct_features(net, images(80, seed=3, shift=-0.3)))
    x = images(45, seed=4)
    kw = {"inception": net, "stats": tmp_path / "ref.npz"}
    whole = fid(x, batch_size=200, **kw)
    assert fid(x, batch_size=200, **kw) == whole  # deterministic
    assert fid(x, batch_size=7, **kw) == pytest.approx(whole, rel=1e-6)
    assert fid(iter(torch.split(x, 10)), **kw) == pytest.approx(whole, rel=1e-6)
    # stats given as FeatureStats, and the network as its path, change nothing
    st = load_fid_stats(tmp_path / "ref.npz")
    assert fid(x, inception=flag_net, stats=st) == pytest.approx(whole, rel=1e-12)


def test_networks_receive_quantised_uint8_pixels_at_their_own_size():
    x = torch.tensor([-1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, 1.7, -3.0, 0.25, 0.3, 0.9])
    x = x.reshape(1, 3, 2, 2)
    feats = inception_features(x, network=scripted(PixelNet))
    assert feats.shape == (1, 12)
    expected = pixels_oracle(x).reshape(1, -1).astype(np.float64)
    assert np.array_equal(feats, expected)
    assert expected[0, 0] == 0 and expected[0, 3] == 128 and expected[0, 6] == 255
    # gray images are repeated over 3 channels; uint8 tensors are taken as pixels
    gray = images(4, seed=5, channels=1, size=3)
    f_gray = inception_features(gray, network=scripted(PixelNet))
    f_rgb = inception_features(gray.expand(-1, 3, -1, -1), network=scripted(PixelNet))
    assert np.array_equal(f_gray, f_rgb)
    u8 = torch.from_numpy(pixels_oracle(gray))
    assert np.array_equal(inception_features(u8, network=scripted(PixelNet)), f_gray)


def test_network_without_return_features_gets_299_bilinear(tmp_path):
    path = tmp_path / "plain.pt"
    scripted(PlainNet, seed=1).save(str(path))
    x = images(6, seed=6)
    feats = inception_features(x, network=path, batch_size=4)
    assert feats.shape == (6, 4)
    net = torch.jit.load(str(path))
    up = torch.nn.functional.interpolate(torch.from_numpy(pixels_oracle(x)).float(),
                                         size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = net(up).reshape(6, 4).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-7)


def test_missing_or_malformed_inception_file(tmp_path):
    x = images(4, seed=7)
    with pytest.raises(FileNotFoundError, match="nope.pt.*never downloads"):
        inception_features(x, network=tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="garbage.pt is not a TorchScript archive"):
        load_inception(bad)
    state = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2)}, state)  # a checkpoint, not TorchScript
    with pytest.raises(ValueError, match="state.pt is not a TorchScript archive"):
        load_inception(state)


def test_missing_or_malformed_stats_file(flag_net, tmp_path):
    x = images(4, seed=8)
    bad_images = torch.full((4, 3, 8, 8), float("nan"))
    # the files are checked before any image is looked at
    with pytest.raises(FileNotFoundError, match="missing.npz.*'mu'.*'sigma'"):
        fid(bad_images, inception=flag_net, stats=tmp_path / "missing.npz")
    np.savez(tmp_path / "keys.npz", mean=np.zeros(16), cov=np.eye(16))
    with pytest.raises(ValueError, match=r"keys.npz lacks \['mu', 'sigma'\] \(has \['cov', "):
        fid(x, inception=flag_net, stats=tmp_path / "keys.npz")
    (tmp_path / "text.npz").write_text("mu,sigma\n1,2\n")
    with pytest.raises(ValueError, match="text.npz is not a readable .npz"):
        load_fid_stats(tmp_path / "text.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="one.npy holds one array"):
        load_fid_stats(tmp_path / "one.npy")
    np.savez(tmp_path / "obj.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="obj.npz could not be read"):
        load_fid_stats(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(16), sigma=np.eye(15))
    with pytest.raises(ValueError, match=r"shape.npz.*shape \(16, 16\)"):
        load_fid_stats(tmp_path / "shape.npz")
    np.savez(tmp_path / "dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="16-d features but .*dim.npz holds 2048-d"):
        fid(x, inception=flag_net, stats=tmp_path / "dim.npz")
    np.savez(tmp_path / "neg.npz", mu=np.zeros(16), sigma=-np.eye(16))
    with pytest.raises(ValueError, match="neg.npz covariance is not positive semi-definite"):
        fid(x, inception=flag_net, stats=tmp_path / "neg.npz")


def test_bad_images(flag_net, tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(16), sigma=np.eye(16))
    kw = {"inception": flag_net, "stats": tmp_path / "ref.npz"}
    with pytest.raises(ValueError, match="at least 2 images"):
        fid(images(1, seed=9), **kw)
    with pytest.raises(ValueError, match="NaN"):
        fid(torch.full((3, 3, 8, 8), float("inf")), **kw)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        fid(torch.zeros(3, 2, 8, 8), **kw)
    with pytest.raises(ValueError, match="at least 2 images, got 0"):
        fid(torch.zeros(0, 3, 8, 8), **kw)
    with pytest.raises(ValueError, match="at least one image"):
        inception_features([], network=flag_net)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fid(images(3, seed=9), batch_size=0, **kw)
    assert isinstance(load_fid_stats(tmp_path / "ref.npz"), FeatureStats)


def test_saved_statistics_round_trip_in_clean_fid_format(flag_net, tmp_path):
    feats = inception_features(images(30, seed=10), network=flag_net)
    st = feature_stats(feats)
    path = save_fid_stats(tmp_path / "mine.npz", st)
    with np.load(path, allow_pickle=False) as z:  # the keys and dtypes clean-fid reads
        assert sorted(z.files) == ["mu", "sigma"] and z["sigma"].dtype == np.float64
        assert np.array_equal(z["mu"], feats.mean(0))
        np.testing.assert_allclose(z["sigma"], np.cov(feats, rowvar=False), rtol=1e-12,
                                   atol=1e-15)
    back = load_fid_stats(path)
    assert np.array_equal(back.mu, st.mu) and np.array_equal(back.cov, st.cov)
    with pytest.raises(FileExistsError, match="mine.npz exists"):
        save_fid_stats(path, st)
    save_fid_stats(path, FeatureStats(mu=st.mu + 1, cov=st.cov), overwrite=True)
    assert np.array_equal(load_fid_stats(path).mu, st.mu + 1)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["flag.pt", "mine.npz"]


def test_streamed_statistics_of_features_with_a_large_mean(tmp_path):
    # fid accumulates the moments batch by batch: bright images (pixels ~ 240-255, mean far
    # from 0 compared with the spread) in batches of 3 give the statistics numpy computes
    # from all features at once
    g = torch.Generator().manual_seed(11)
    x = 1.0 - 0.12 * torch.rand(40, 3, 2, 2, generator=g)
    ref = 1.0 - 0.08 * torch.rand(50, 3, 2, 2, generator=g)
    pix = pixels_oracle(x).reshape(40, -1).astype(np.float64)
    mu, sigma = write_stats(tmp_path / "ref.npz",
                            pixels_oracle(ref).reshape(50, -1).astype(np.float64))
    expected = fd_oracle(pix, mu, sigma)
    got = fid(x, inception=scripted(PixelNet), stats=tmp_path / "ref.npz", batch_size=3)
    assert expected > 1.0 and got == pytest.approx(expected, rel=1e-9)
