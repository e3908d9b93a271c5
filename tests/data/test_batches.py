"""Seeded minibatches of a point set: ``otcfm.data.sample_indices`` / ``sample_batch``.

Oracles: a batch holds distinct indices; every index, and every ordered pair of indices at
the first two positions, is equally likely (Pearson chi-square against the uniform law, with
the 0.999 quantile of the chi-square distribution as the threshold; the same statistic
rejects a deliberately biased sampler, so the test has power); same seed, same batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import otcfm.data as data
from otcfm.data import PointDataset, sample_batch, sample_indices


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi_square(counts: np.ndarray) -> tuple[float, float]:
    """Pearson statistic of ``counts`` against equal cells, and its 0.999 chi-square quantile.

    The cells of a batch without replacement are negatively correlated, which only lowers the
    statistic's mean ((1 - b / n) times that of the chi-square law), so the threshold is
    conservative for a correct sampler.
    """
    expected = counts.sum() / counts.size
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, float(stats.chi2.ppf(0.999, counts.size - 1))


@pytest.fixture(params=["lookahead", "redraw"])
def mode(request, monkeypatch):
    """Both code paths of the small-batch sampler: enough draws at once, or drawn again."""
    if request.param == "redraw":  # no draws ahead: every repeat forces another round
        monkeypatch.setattr(data, "_lookahead", lambda b, n: 0)
    return request.param


@pytest.mark.parametrize(
    ("n", "b"), [(10_000, 512), (40, 10), (7, 1), (1000, 250), (2**16 + 3, 300), (2**20, 700)]
)
def test_indices_are_distinct_and_in_range(n, b, mode):
    g = gen(0)
    for _ in range(200):
        idx = sample_indices(n, b, g)
        assert idx.dtype == torch.int64 and idx.shape == (b,)
        assert int(idx.min()) >= 0 and int(idx.max()) < n
        assert torch.unique(idx).numel() == b


@pytest.mark.parametrize("n", [5, 2**16, 2**16 + 1, 3 * 2**20, 2**32, 2**32 + 7, 2**50])
def test_first_occurrences_match_a_python_oracle(n):
    # dict.fromkeys keeps the first occurrence of each key, in order: the reference
    g = gen(10)
    for m in (1, 2, 40, 600):
        values = torch.randint(min(n, 60), (m,), generator=g)  # many repeats
        values = values * (n // 60 if n > 60 else 1) + (n - 1) % 3 * (n > 60)
        values = values.clamp_max(n - 1)
        want = list(dict.fromkeys(values.tolist()))
        assert data._first_occurrences(values, n).tolist() == want
        assert data._first_occurrences_torch(values).tolist() == want  # the non-CPU path
        spread = torch.randint(n, (m,), generator=g)  # all digits in play
        want = list(dict.fromkeys(spread.tolist()))
        assert data._first_occurrences(spread, n).tolist() == want
        assert data._first_occurrences_torch(spread).tolist() == want


def test_redraw_rounds_happen_and_keep_the_batch_distinct(monkeypatch):
    calls = []
    original = data._first_occurrences

    def counted(values, n):
        calls.append(values.numel())
        return original(values, n)

    monkeypatch.setattr(data, "_lookahead", lambda b, n: 0)
    monkeypatch.setattr(data, "_first_occurrences", counted)
    idx = sample_indices(100, 25, gen(1))
    assert len(calls) > 1  # 25 draws from 100 repeat with probability 1 - 0.04 at this seed
    assert torch.unique(idx).numel() == 25


@pytest.mark.parametrize(("n", "b", "reps"), [(50, 12, 4000), (1000, 64, 3000)])
def test_each_index_is_equally_likely(n, b, reps, mode):
    g = gen(2)
    counts = np.zeros(n)
    for _ in range(reps):
        counts += np.bincount(sample_indices(n, b, g).numpy(), minlength=n)
    stat, threshold = chi_square(counts)
    assert stat <= threshold, (stat, threshold)


def test_ordered_pairs_and_positions_are_uniform(mode):
    # n = 12, b = 3: every ordered pair (idx[0], idx[1]) of distinct indices, 132 cells,
    # and the marginal of the last position must be uniform (order is random too).
    n, b, reps = 12, 3, 20_000
    g = gen(3)
    draws = np.stack([sample_indices(n, b, g).numpy() for _ in range(reps)])
    pair_counts = np.zeros((n, n))
    np.add.at(pair_counts, (draws[:, 0], draws[:, 1]), 1)
    assert np.all(np.diag(pair_counts) == 0)
    cells = pair_counts[~np.eye(n, dtype=bool)]
    stat, threshold = chi_square(cells)
    assert stat <= threshold, (stat, threshold)
    stat, threshold = chi_square(np.bincount(draws[:, -1], minlength=n).astype(float))
    assert stat <= threshold, (stat, threshold)


def test_chi_square_rejects_a_biased_sampler():
    # The statistic above has power: a sampler that fills repeats with the smallest unused
    # index (distinct, but biased towards low indices) fails it at the same sizes.
    n, b, reps = 50, 12, 4000
    g = gen(2)
    counts = np.zeros(n)
    for _ in range(reps):
        raw = torch.randint(n, (b,), generator=g).tolist()
        seen: list[int] = []
        for i in raw:
            seen.append(i if i not in seen else min(set(range(n)) - set(seen)))
        counts += np.bincount(seen, minlength=n)
    stat, threshold = chi_square(counts)
    assert stat > threshold, (stat, threshold)


def test_same_seed_same_batch_and_seeds_differ():
    for n, b in [(10_000, 512), (20, 20), (9, 3)]:
        assert torch.equal(sample_indices(n, b, gen(4)), sample_indices(n, b, gen(4)))
    assert not torch.equal(sample_indices(10_000, 512, gen(4)), sample_indices(10_000, 512, gen(5)))
    x = torch.randn(300, 3)
    assert torch.equal(sample_batch(x, 40, gen(6)), x[sample_indices(300, 40, gen(6))])


def test_full_batch_is_a_permutation():
    for n in (1, 2, 17, 1000):
        idx = sample_indices(n, n, gen(n))
        assert sorted(idx.tolist()) == list(range(n))
    large = sample_indices(100, 60, gen(7))  # over a quarter of n: a permutation's prefix
    assert torch.unique(large).numel() == 60


def test_cost_does_not_grow_with_n():
    # A permutation of 2^40 indices could not even be allocated; a batch of them is drawn.
    n = 2**40
    idx = sample_indices(n, 8, gen(8))
    assert idx.shape == (8,) and torch.unique(idx).numel() == 8
    assert int(idx.min()) >= 0 and int(idx.max()) < n


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\].*got 5"):
        sample_indices(4, 5)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\].*got 0"):
        sample_indices(4, 0)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\].*got -1"):
        sample_batch(torch.zeros(4, 2), -1)
    with pytest.raises(TypeError, match="batch_size must be an integer, got 2.0"):
        sample_indices(4, 2.0)
    with pytest.raises(TypeError, match="batch_size must be an integer, got True"):
        sample_indices(4, True)
    with pytest.raises(ValueError, match="n must be >= 1.*got 0"):
        sample_indices(0, 1)
    with pytest.raises(TypeError, match="n must be an integer, got 3.5"):
        sample_indices(3.5, 1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        sample_indices(10, 2, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        sample_batch([[1.0]], 1)
    with pytest.raises(ValueError, match=r"x must have at least one row, got shape \(0, 2\)"):
        sample_batch(torch.zeros(0, 2), 1)
    with pytest.raises(ValueError, match=r"x must have at least one row, got shape \(\)"):
        sample_batch(torch.tensor(1.0), 1)


def test_data_sets_are_checked_for_nan_once_when_loaded(tmp_path):
    # sample_batch no longer scans all of x per draw; loading and the coupling check instead.
    from otcfm.couplings import Independent
    from otcfm.data import load_points
    from otcfm.train.config import DataConfig
    from otcfm.train.datasets import load_run_data

    bad = np.random.default_rng(0).normal(size=(50, 2))
    bad[7, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        load_points(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="NaN or inf"):
        load_run_data(DataConfig(source="gaussian", target=str(tmp_path / "bad.npy")), seed=0)
    x = torch.zeros(6, 2)
    x[2, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        PointDataset(x)
    drawn = sample_batch(x, 6, gen(9))  # every row, the inf one included
    with pytest.raises(ValueError, match="x0 contains 1 NaN or inf"):
        Independent()(drawn, torch.zeros(6, 2))


@pytest.mark.parametrize(
    ("ns", "b"),
    [
        ((10_000, 10_000), 512),  # one pass over both sides
        ((10_000, 7_000), 300),  # sides of different lengths
        ((40,), 10),
        ((1000, 30), 10),  # a permutation prefix beside a stream
        ((2**16 + 3, 2**20), 300),  # values past 16 bits
    ],
)
def test_many_draws_equal_draws_one_at_a_time(ns, b, mode):
    """The batched draw of the training pipeline: the same indices, item by item (in the
    "redraw" mode nearly every item falls back to the one-at-a-time path)."""

    def make(k: int) -> torch.Generator:
        return gen(1000 + k)

    got = data._draw_indices_many(ns, b, make, range(3, 23))
    assert list(got) == list(range(3, 23))
    for k, rows in got.items():
        g = make(k)
        want = [sample_indices(n, b, g) for n in ns]
        assert len(rows) == len(ns)
        for a, w in zip(rows, want, strict=True):
            assert a.dtype == torch.int64 and torch.equal(a, w)
