"""Multi-marginal training: intervals, the skip pair's time and target, determinism, resume,
and recovery of a known flow (populations translating at constant speed)."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from otcfm.data.timeseries import TimeSeries
from otcfm.metrics import wasserstein
from otcfm.train.datasets import stream
from otcfm.train.runfolder import RunFolder
from otcfm.trajectory import (
    FitSpec,
    Fitter,
    build_matcher,
    fit_flow,
    intervals,
    multimarginal_loss,
    predict_left_out,
)

SPEED = torch.tensor([2.0, -1.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def translating(n=256, times=5, seed=0, shared=False):
    """Populations N(0, I) + k * SPEED at k = 0..times-1 (fresh cells each time, or the same
    cells moved when ``shared``)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 2, generator=g)
    pops = [(base if shared else torch.randn(n, 2, generator=g)) + k * SPEED
            for k in range(times)]
    return TimeSeries.from_populations(pops)


class Recorder(nn.Module):
    """Returns a constant velocity and records the network times it was asked about."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity
        self.taus = []

    def forward(self, x, t):
        self.taus.append(t.detach().clone())
        return self.velocity.expand_as(x).clone()


def test_intervals_with_and_without_a_left_out_time():
    assert intervals(5) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert intervals(5, 2) == [(0, 1), (1, 3), (3, 4)]
    assert intervals(3, 1) == [(0, 2)]
    for bad in (0, 4, 5, -1):
        with pytest.raises(ValueError, match="intermediate time index"):
            intervals(5, bad)


def test_skip_pair_uses_time_2t_plus_k_minus_1_and_half_the_target():
    """For cells translating at constant speed, the true velocity in index time is SPEED on
    every interval. With exact OT and sigma = 0 the skip pair's conditional field is 2 SPEED,
    so only the target u / 2 makes the true velocity a zero-loss solution."""
    ts = translating(n=64, shared=True)
    pops = ts.populations()
    fm = build_matcher("otcfm", 0.0)
    model = Recorder(SPEED)
    g = torch.Generator().manual_seed(0)
    loss = multimarginal_loss(model, fm, pops, intervals(5, 2), 64, g)
    assert float(loss) == pytest.approx(0.0, abs=1e-10)
    taus = model.taus[0]
    first, skip, last = taus[:64], taus[64:128], taus[128:]
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert float(skip.min()) >= 1 and float(skip.max()) <= 3
    assert float(skip.max() - skip.min()) > 1.5  # spans the whole skip interval
    assert float(last.min()) >= 3 and float(last.max()) <= 4
    # a velocity twice too large (no u/2) is penalised on the skip pair only
    wrong = multimarginal_loss(Recorder(2 * SPEED), fm, pops, intervals(5, 2), 64, g)
    assert float(wrong) == pytest.approx(float(SPEED.pow(2).mean()), rel=1e-6)


def test_same_seed_same_fit_and_resume_equals_uninterrupted():
    ts = translating(n=64)
    spec = FitSpec(steps=12, width=16, depth=2, left_out=2, seed=3)
    a = fit_flow(ts, spec)
    b = fit_flow(ts, spec)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    first = Fitter(ts, spec)
    first.run(until=5)
    state = first.state_dict()
    second = Fitter(ts, spec)
    second.load_state_dict(state)
    resumed = second.run()
    for p, q in zip(a.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert resumed.history[-1][0] == 12


@pytest.mark.parametrize("method", ["icfm", "sbcfm"])
def test_other_methods_train(method):
    fit = fit_flow(translating(n=64), FitSpec(method=method, steps=5, width=16, depth=2))
    assert all(torch.isfinite(torch.tensor(v)) for _, v in fit.history)


def test_recovers_a_translating_population_at_the_left_out_time():
    """Held-out time 2 of populations moving at constant speed: the pushed cells of time 1
    land on the truth (W1 to a fresh sample near the sampling floor), far from where they
    started (|SPEED| = 2.24)."""
    ts = translating(n=256)
    fit = fit_flow(ts, FitSpec(method="otcfm", left_out=2, steps=300, batch_size=64, width=32,
                               depth=2, seed=0))
    pred = predict_left_out(fit.model, ts, 2, steps_per_unit=20)
    fresh = torch.randn(256, 2, generator=torch.Generator().manual_seed(99)) + 2 * SPEED
    floor = wasserstein(ts.at(2), fresh, p=1)  # two samples of the same law
    moved = wasserstein(pred, fresh, p=1)
    assert moved < floor + 0.25
    assert wasserstein(ts.at(1), fresh, p=1) > 2.0
    torch.testing.assert_close(pred.mean(0), 2 * SPEED, atol=0.25, rtol=0)


def test_default_sigma_per_method():
    assert FitSpec(method="otcfm").sigma == 0.1
    assert FitSpec(method="icfm").sigma == 0.1
    assert FitSpec(method="sbcfm").sigma == 1.0  # reg 2 sigma^2 = 2, the sbcfm preset
    assert FitSpec(method="sbcfm", sigma=0.3).sigma == 0.3
    assert build_matcher("sbcfm", 0.3).coupling.reg == pytest.approx(0.18)


def test_spec_validation():
    with pytest.raises(ValueError, match="method must be one of"):
        FitSpec(method="fm")
    with pytest.raises(ValueError, match="batch_size"):
        FitSpec(batch_size=1)
    with pytest.raises(ValueError, match="sigma"):
        FitSpec(sigma=-1.0)
    with pytest.raises(ValueError, match="intermediate time index"):
        Fitter(translating(n=8), FitSpec(left_out=4))
    with pytest.raises(TypeError, match="TimeSeries"):
        Fitter(torch.zeros(3, 2), FitSpec())


def test_an_entropic_fit_logs_its_couplings_convergence(tmp_path):
    """SB-CFM pairs each interval with an entropic plan: every log row counts the solves since
    the previous row (intervals x steps), the fraction that converged and the worst marginal
    error, checked here against the plans solved again outside the fit; exact OT logs none."""
    ts = translating(n=64)
    spec = FitSpec(method="sbcfm", steps=6, width=16, depth=2, left_out=2, seed=3)
    folder = RunFolder(tmp_path / "sb", fields=("step", "loss", "seconds"))
    fitter = Fitter(ts, spec, folder=folder)
    fitter.run(log_every=3)
    rows = list(csv.DictReader((tmp_path / "sb" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [3, 6]
    n_intervals = len(intervals(ts.n_times, 2))
    assert [int(r["coupling_calls"]) for r in rows] == [3 * n_intervals] * 2
    # the oracle: the same plans, solved again with each step's draws
    again = Fitter(ts, spec)
    errors = []
    for step in range(1, 7):
        pairs = []
        multimarginal_loss(again.model, again.matcher, again.populations, again.pairs,
                           spec.batch_size, stream(spec.seed, "trajectory", "step", str(step)),
                           on_pair=pairs.append)
        errors.append(max(p.convergence.marginal_error for p in pairs))
    worst = [max(errors[:3]), max(errors[3:])]
    assert [float(r["coupling_marginal_error_max"]) for r in rows] == pytest.approx(worst)
    assert all(0 <= float(r["coupling_converged"]) <= 1 for r in rows)

    exact = RunFolder(tmp_path / "ot", fields=("step", "loss", "seconds"))
    Fitter(ts, FitSpec(method="otcfm", steps=3, width=16, depth=2), folder=exact).run()
    header = (tmp_path / "ot" / "log.csv").read_text().splitlines()[0]
    assert header == "step,loss,seconds"


def test_sf2m_fits_a_drift_and_a_score_and_its_sde_lands_on_the_left_out_time():
    """SF2M on populations translating at constant speed: the ODE and the SDE (sigma 0.3)
    predictions of the held-out time land near the truth; the score term is in the loss."""
    from otcfm.trajectory import SDE

    ts = translating(n=256)
    fit = fit_flow(ts, FitSpec(method="sf2m", sigma=0.3, left_out=2, steps=300, batch_size=64,
                               width=32, depth=2, seed=0))
    assert callable(getattr(fit.model, "score", None))
    fresh = torch.randn(256, 2, generator=torch.Generator().manual_seed(99)) + 2 * SPEED
    floor = wasserstein(ts.at(2), fresh, p=1)
    for sde in (None, SDE(0.3, torch.Generator().manual_seed(5))):
        pred = predict_left_out(fit.model, ts, 2, steps_per_unit=20, sde=sde)
        assert wasserstein(pred, fresh, p=1) < floor + 0.3, sde
        torch.testing.assert_close(pred.mean(0), 2 * SPEED, atol=0.3, rtol=0)


def test_sf2m_skip_interval_is_the_bridge_of_sigma_sqrt_span():
    """The reference process is sigma W in index time: the skip pair (span 2) samples the
    bridge of sigma sqrt(2) (its xt noise has twice the variance of a unit interval's)."""
    from otcfm.trajectory.fit import _for_span

    fm = build_matcher("sf2m", 0.5)
    assert _for_span(fm, 1.0) is fm
    wide = _for_span(fm, 2.0)
    assert wide.sigma == pytest.approx(0.5 * 2**0.5) and wide.coupling is fm.coupling
    assert _for_span(build_matcher("sbcfm", 0.5), 2.0).path.sigma == 0.5  # unchanged
