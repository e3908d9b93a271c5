"""Tests for otcfm.time_samplers: range, dtype, distribution (KS), reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from otcfm.time_samplers import (
    TIME_SAMPLERS,
    BetaTime,
    LogitNormalTime,
    StratifiedUniformTime,
    TimeSampler,
    UniformTime,
)

SAMPLERS = [
    UniformTime(),
    StratifiedUniformTime(),
    LogitNormalTime(),
    LogitNormalTime(mean=-0.5, std=2.0),
    BetaTime(2.0, 5.0),
    BetaTime(0.5, 0.5),
    BetaTime(0.05, 3.0),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_range_shape_dtype(sampler, n):
    t = sampler(n, generator=_gen(0))
    assert t.shape == (n,) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert bool(torch.isfinite(t).all()) and bool(((t >= 0) & (t <= 1)).all())


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_seeded_reproducibility(sampler):
    a = sampler(64, generator=_gen(5))
    b = sampler(64, generator=_gen(5))
    c = sampler(64, generator=_gen(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # without a generator the global torch RNG is used (and still works)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        d = sampler(16)
        torch.manual_seed(3)
        torch.testing.assert_close(d, sampler(16), rtol=0, atol=0)


KS_CASES = [
    (UniformTime(), stats.uniform().cdf, lambda t: t),
    (LogitNormalTime(), stats.norm(0.0, 1.0).cdf, lambda t: torch.logit(t.double())),
    (LogitNormalTime(0.7, 0.5), stats.norm(0.7, 0.5).cdf, lambda t: torch.logit(t.double())),
    (BetaTime(2.0, 5.0), stats.beta(2.0, 5.0).cdf, lambda t: t),
    (BetaTime(0.5, 0.5), stats.beta(0.5, 0.5).cdf, lambda t: t),
]


@pytest.mark.parametrize(
    ("sampler", "cdf", "transform"),
    KS_CASES,
    ids=["uniform", "logit_normal", "logit_normal_0.7_0.5", "beta_2_5", "beta_0.5_0.5"],
)
def test_kolmogorov_smirnov(sampler, cdf, transform):
    t = sampler(20_000, generator=_gen(1))
    result = stats.kstest(transform(t).numpy(), cdf)
    assert result.pvalue > 1e-4, result


def test_stratified_one_per_stratum_and_uniform_marginal():
    n = 50
    t = StratifiedUniformTime()(n, generator=_gen(2)).double()
    strata = torch.floor(torch.sort(t).values * n).long()
    assert torch.equal(strata, torch.arange(n))
    # shuffled: the first entry over many batches is U[0, 1)
    g = _gen(3)
    first = torch.stack([StratifiedUniformTime()(n, generator=g)[0] for _ in range(3000)])
    assert stats.kstest(first.numpy(), stats.uniform().cdf).pvalue > 1e-4
    # and the position of the smallest is spread over the batch (not always index 0)
    pos = {int(StratifiedUniformTime()(n, generator=g).argmin()) for _ in range(40)}
    assert len(pos) > 10


def test_stratified_lowers_variance_of_a_batch_mean():
    """Mean of f(t) = t^2 over a batch: stratified estimator is much less variable."""
    g = _gen(4)
    uni = torch.stack([(UniformTime()(32, generator=g) ** 2).mean() for _ in range(500)])
    stratified = StratifiedUniformTime()
    strat = torch.stack([(stratified(32, generator=g) ** 2).mean() for _ in range(500)])
    assert abs(float(strat.mean()) - 1 / 3) < 1e-3
    assert float(strat.var()) < 0.05 * float(uni.var())


def test_device_argument_and_registry():
    t = UniformTime()(4, generator=_gen(0), device="cpu")
    assert t.device == torch.device("cpu")
    assert TIME_SAMPLERS.names() == ["beta", "logit_normal", "stratified", "uniform"]
    assert TIME_SAMPLERS.get("logit_normal", mean=0.2) == LogitNormalTime(0.2, 1.0)
    for name in TIME_SAMPLERS:
        assert isinstance(TIME_SAMPLERS.get(name), TimeSampler)
    assert "std=2.0" in repr(LogitNormalTime(std=2.0))
    with pytest.raises(ValueError, match="valid names"):
        TIME_SAMPLERS.get("cosine")


def test_beta_with_tiny_concentrations_stays_in_range():
    t = BetaTime(0.01, 0.01)(5000, generator=_gen(9))
    assert bool(((t >= 0) & (t <= 1)).all())
    assert math.isclose(float((t > 0.5).double().mean()), 0.5, abs_tol=0.05)


@pytest.mark.parametrize(
    ("factory", "err"),
    [
        (lambda: LogitNormalTime(std=0.0), ValueError),
        (lambda: LogitNormalTime(std=-1.0), ValueError),
        (lambda: LogitNormalTime(mean=float("nan")), ValueError),
        (lambda: LogitNormalTime(mean="a"), TypeError),
        (lambda: BetaTime(0.0, 1.0), ValueError),
        (lambda: BetaTime(1.0, float("inf")), ValueError),
        (lambda: BetaTime(-2.0, 1.0), ValueError),
    ],
)
def test_bad_parameters_raise(factory, err):
    with pytest.raises(err):
        factory()


@pytest.mark.parametrize(
    ("n", "err"),
    [(0, ValueError), (-3, ValueError), (True, ValueError), (2.5, TypeError), ("4", TypeError)],
)
def test_bad_n_raises(n, err):
    with pytest.raises(err, match="n must"):
        UniformTime()(n)
