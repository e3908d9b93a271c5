"""The one training engine and its objectives, against plain PyTorch loops written out here.

Oracles: (1) the time-series objective on the engine (and the Fitter facade over it) gives the
weights of the multi-marginal loop written plainly (AdamW on multimarginal_loss, one
generator per step); (2) the pair objective on the engine gives the weights of a plain loop
over coupled batches and an explicit squared error; (3) with a toy objective on points of
shape (2, 3, 4): gradient clipping and the EMA equal their textbook formulas, the log and
checkpoint cadence, best-by-val_loss, a non-finite loss, and resume equal to never stopping.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from otcfm.couplings import ConvergenceError, ConvergenceWarning
from otcfm.data.timeseries import TimeSeries
from otcfm.models import MLP
from otcfm.train.config import RunConfig
from otcfm.train.datasets import load_run_data, stream
from otcfm.train.loop import LOG_FIELDS, Engine, LoopSettings, Trainer
from otcfm.train.loop import build_matcher as build_pair_matcher
from otcfm.train.objectives import COUPLING_FIELDS, Objective, PairObjective
from otcfm.train.prefetch import chunks, couple_batch
from otcfm.train.runfolder import RunFolder
from otcfm.trajectory.fit import (
    FitSpec,
    Fitter,
    TimeSeriesObjective,
    build_matcher,
    intervals,
    multimarginal_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def series(n=48, times=4, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TimeSeries.from_populations(
        [torch.randn(n, dim, generator=g) + k for k in range(times)]
    )


def same(a: nn.Module, b: nn.Module) -> None:
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), k


# ------------------------------------------------------------------ time series
@pytest.mark.parametrize("method", ["otcfm", "sbcfm"])
def test_time_series_engine_equals_the_plain_multimarginal_loop(method):
    ts, steps = series(), 15
    spec = FitSpec(method=method, left_out=1, steps=steps, batch_size=16, width=16, depth=2,
                   seed=5)
    # the plain loop
    model = MLP(ts.dim, width=16, depth=2, activation="selu",
                generator=stream(5, "trajectory", "init"))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    fm, pops, pairs = build_matcher(method, spec.sigma), ts.populations(), intervals(4, 1)
    losses = []
    for step in range(steps):
        g = stream(5, "trajectory", "step", str(step))
        loss = multimarginal_loss(model, fm, pops, pairs, 16, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the facade and the bare engine
    fit = Fitter(ts, spec).run(log_every=5)
    same(fit.model, model)
    assert [s for s, _ in fit.history] == [5, 10, 15]
    assert fit.history[1][1] == pytest.approx(sum(losses[5:10]) / 5, rel=1e-12)
    objective = TimeSeriesObjective(ts, spec)
    net = MLP(ts.dim, width=16, depth=2, generator=stream(5, "trajectory", "init"))
    engine = Engine(objective, net, LoopSettings(steps=steps, lr=spec.lr,
                                                 weight_decay=spec.weight_decay))
    engine.run()
    same(engine.model, model)
    assert engine.model is net and fit.model.training is False


def test_objectives_follow_the_protocol(tmp_path):
    ts = series()
    assert isinstance(TimeSeriesObjective(ts, FitSpec()), Objective)
    objective = TimeSeriesObjective(ts, FitSpec(left_out=2, seed=1))
    assert objective.event_shape == (3,) and objective.validate(nn.Identity()) is None
    assert objective.state()["dim"] == 3 and objective.state()["spec"]["left_out"] == 2
    trainer = Trainer(tiny(tmp_path), progress=False)
    try:
        assert isinstance(trainer.objective, PairObjective)
        assert isinstance(trainer.objective, Objective)
        assert trainer.objective.event_shape == (2,)
    finally:
        trainer.close()


def test_objectives_load_the_compiled_solvers_before_the_clock(tmp_path, monkeypatch):
    """Each objective asks its coupling to load its solver once, when it is built (before the
    engine's clock starts); the pair objective also loads the exact W2 of its validation."""
    from otcfm.couplings import ExactOT
    from otcfm.train import objectives

    calls, loaded = [], []
    monkeypatch.setattr(ExactOT, "prepare", lambda self: calls.append(type(self).__name__))
    monkeypatch.setattr(objectives, "load_kernels", lambda *paths: loaded.append(paths))
    TimeSeriesObjective(series(), FitSpec(method="otcfm"))
    assert calls == ["ExactOT"]
    trainer = Trainer(tiny(tmp_path), progress=False)
    try:
        assert calls == ["ExactOT"] * 2 and loaded == [("exact",)]
        assert trainer.step == 0 and trainer.train_seconds == 0.0
    finally:
        trainer.close()


# ------------------------------------------------------------------ pairs
def tiny(tmp_path, **over) -> RunConfig:
    return RunConfig(name="pairs", out_dir=str(tmp_path)).override([
        "optim.steps=6", "optim.batch_size=32", "couplings.ot_batch=64", "data.n_train=128",
        "data.n_val=32", "data.n_test=32", "eval.val_every=3", "eval.ode_steps=3",
        "model.width=16", "model.depth=2", "method.name='otcfm'",
        *[f"{k}={v}" for k, v in over.items()],
    ])


def test_pair_engine_equals_a_plain_loop_over_coupled_batches(tmp_path):
    cfg = tiny(tmp_path).resolve()
    trainer = Trainer(cfg, progress=False)
    result = trainer.run()
    data, fm = trainer.data, trainer.matcher
    model = MLP(2, width=16, depth=2, activation=cfg.model.activation,
                generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay)
    for step in range(6):
        batch = couple_batch(fm.coupling, data.source.train, data.target.train, 64, step // 2,
                             seed=cfg.seed)
        pair = chunks(batch.pair, 32)[step % 2]
        s = fm.sample(pair, generator=stream(cfg.seed, "step", "0", str(step)))
        loss = ((model(s.xt, s.t) - s.ut) ** 2).sum(dim=1).mean() / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, q in zip(trainer.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert [r["step"] for r in result.history] == [3, 6]
    assert set(result.history[0]) == {"step", "loss", "val_loss", "val_w2", "seconds"}


def test_coupling_convergence_is_logged_per_row(tmp_path):
    # sbcfm's entropic coupling: 2 steps per coupled batch of 64, a row every 3 steps
    cfg = tiny(tmp_path, **{"method.name": "'sbcfm'"}).resolve()
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    rows = list(csv.DictReader((cfg.run_dir / "log.csv").open()))
    assert list(rows[0]) == ["step", "loss", "val_loss", "val_w2", *COUPLING_FIELDS, "seconds"]
    # steps 0-2 use coupled batches 0 and 1, steps 3-5 batches 1 (already solved) and 2
    assert [int(r["coupling_calls"]) for r in rows] == [2, 1]
    for r in rows:
        assert float(r["coupling_converged"]) == 1.0
        assert 0.0 <= float(r["coupling_marginal_error_max"]) <= 1e-6
    # the bookkeeping (count, max, reset per row) against the batches solved again here
    fm, data = trainer.matcher, trainer.data
    errors = [
        couple_batch(fm.coupling, data.source.train, data.target.train, 64, index,
                     seed=cfg.seed).pair.convergence.marginal_error
        for index in range(3)
    ]
    logged = [float(r["coupling_marginal_error_max"]) for r in rows]
    assert logged == pytest.approx([max(errors[:2]), errors[2]], rel=1e-12)


def test_unconverged_couplings_are_logged_and_raise_on_request(tmp_path):
    spec = "'entropic:reg=0.001,max_iter=2'"
    cfg = tiny(tmp_path, **{"method.name": "'sbcfm'", "method.coupling": spec}).resolve()
    with pytest.warns(ConvergenceWarning, match="reg=0.001, 2 iterations"):
        Trainer(cfg, progress=False).run()
    rows = list(csv.DictReader((cfg.run_dir / "log.csv").open()))
    assert [float(r["coupling_converged"]) for r in rows] == [0.0, 0.0]
    assert all(float(r["coupling_marginal_error_max"]) > 1e-3 for r in rows)
    # on_fail=raise in the coupling spec stops the run with the numbers
    spec = "'entropic:reg=0.001,max_iter=2,on_fail=raise'"
    cfg = tiny(tmp_path / "raise", **{"method.name": "'sbcfm'", "method.coupling": spec})
    with pytest.raises(ConvergenceError, match=r"reg=0.001, 2 iterations .* > tol"):
        Trainer(cfg.resolve(), progress=False).run()


def test_coupling_columns_sum_the_solves_of_every_process(tmp_path, ranks):
    # 2 processes take turns solving the global batches: rank 0 batches 0 and 2, rank 1
    # batch 1; each row counts the solves of both, as one process would
    cfg = tiny(tmp_path, **{"method.name": "'sbcfm'"}).resolve()
    ranks(cfg, tmp_path, world=2)
    rows = list(csv.DictReader((cfg.run_dir / "log.csv").open()))
    assert [int(r["coupling_calls"]) for r in rows] == [2, 1]
    assert all(float(r["coupling_converged"]) == 1.0 for r in rows)
    data = load_run_data(cfg.data, cfg.seed)
    coupling = build_pair_matcher(cfg.method).coupling
    errors = [
        couple_batch(coupling, data.source.train, data.target.train, 64, index,
                     seed=cfg.seed).pair.convergence.marginal_error
        for index in range(3)
    ]
    logged = [float(r["coupling_marginal_error_max"]) for r in rows]
    assert logged == pytest.approx([max(errors[:2]), errors[2]], rel=1e-9)


def test_couplings_without_a_tolerance_log_no_convergence_columns(tmp_path):
    cfg = tiny(tmp_path).resolve()  # otcfm: exact OT
    trainer = Trainer(cfg, progress=False)
    assert trainer.objective.log_fields == () and trainer.objective.coupling_log() == {}
    assert trainer.folder.fields == LOG_FIELDS


# ------------------------------------------------------------------ the loop itself
class Toy:
    """Regress a fixed linear map on points of shape (2, 3, 4): loss at step s is the mean
    squared error on 8 points from stream(seed, "toy", s); val_loss follows ``val``."""

    event_shape = (2, 3, 4)
    needs_score = False
    metrics = ("val_loss",)

    def __init__(self, val=(), scale=1.0):
        self.weight = torch.randn(24, 24, generator=torch.Generator().manual_seed(1))
        self.val, self.calls, self.closed, self.scale = list(val), 0, 0, scale

    def batch(self, step):
        x = torch.randn(8, *self.event_shape, generator=stream(3, "toy", str(step)))
        return x, (x.flatten(1) @ self.weight).view_as(x) * self.scale

    def loss(self, net, step):
        x, y = self.batch(step)
        return (net(x) - y).pow(2).mean()

    def validate(self, model):
        self.calls += 1
        assert not model.training
        return {"val_loss": self.val.pop(0) if self.val else 0.0}

    def state(self):
        return {"toy": True}

    def close(self):
        self.closed += 1


class Flat(nn.Module):
    """x -> W flat(x) + b, reshaped back: a network for any event shape."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(24, 24, generator=g) * 0.1)
        self.bias = nn.Parameter(torch.zeros(24))

    def forward(self, x):
        return (x.flatten(1) @ self.weight.T + self.bias).view_as(x)


def test_clipping_and_ema_equal_their_formulas():
    clip, decay, lr, steps = 0.5, 0.9, 1e-2, 7
    engine = Engine(Toy(), Flat(), LoopSettings(steps=steps, lr=lr, grad_clip=clip,
                                                ema_decay=decay))
    engine.run()
    model, toy = Flat(), Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    shadow = [p.detach().clone() for p in model.parameters()]
    clipped = 0
    for step in range(steps):
        opt.zero_grad()
        toy.loss(model, step).backward()
        grads = [p.grad for p in model.parameters()]
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        if norm > clip:
            clipped += 1
            for g in grads:
                g.mul_(clip / norm)
        opt.step()
        shadow = [decay * s + (1 - decay) * p.detach() for s, p in zip(shadow, model.parameters(),
                                                                       strict=True)]
    assert clipped == steps  # the clip is active, so the test can tell it from no clip
    for p, q in zip(engine.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    for p, q in zip(engine.eval_model().parameters(), shadow, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_cadence_best_checkpoint_and_files(tmp_path):
    toy = Toy(val=[3.0, 1.0, 2.0, 0.5])
    folder = RunFolder(tmp_path / "run", fields=("step", "loss", "val_loss", "seconds"))
    engine = Engine(toy, Flat(), LoopSettings(steps=10, log_every=3, checkpoint_every=4),
                    folder=folder, config_toml="name = 'toy'\n")
    seen = []
    engine.run(callback=lambda e: seen.append(e.step))
    assert [r["step"] for r in engine.history] == [3, 6, 9, 10]
    assert toy.calls == 4 and seen == [4, 8, 10]
    assert engine.best_step == 10 and engine.best_val_loss == 0.5
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert best["toy"] and latest["step"] == 10 and best["step"] == 10
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,val_loss,seconds" and len(lines) == 5
    assert (tmp_path / "run" / "config.toml").read_text() == "name = 'toy'\n"
    assert toy.closed >= 1


def test_best_checkpoint_keeps_the_lowest_val_loss(tmp_path):
    folder = RunFolder(tmp_path, fields=("step", "loss", "val_loss", "seconds"))
    engine = Engine(Toy(val=[2.0, 1.0, 4.0]), Flat(), LoopSettings(steps=3, log_every=1),
                    folder=folder)
    engine.run()
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 2 and best["best_val_loss"] == 1.0


def test_a_non_finite_loss_stops_with_the_step():
    engine = Engine(Toy(scale=float("nan")), Flat(), LoopSettings(steps=3))
    with pytest.raises(FloatingPointError, match="at step 0"):
        engine.run()


class NanFrom(Toy):
    """Toy whose loss is NaN from step ``bad`` on (a run that diverges)."""

    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def loss(self, net, step):
        loss = super().loss(net, step)
        return loss * float("nan") if step >= self.bad else loss


def test_a_non_finite_loss_keeps_the_last_checkpoint(tmp_path):
    """The error is a ValueError (a setting to change) naming the step, the learning rate
    and the checkpoint kept, which holds the weights of a run that never diverged."""
    from otcfm.train.loop import NonFiniteLoss

    settings = LoopSettings(steps=6, lr=1e-2, log_every=1, checkpoint_every=2)
    engine = Engine(NanFrom(3), Flat(), settings, folder=RunFolder(tmp_path))
    with pytest.raises(NonFiniteLoss) as caught:
        engine.run()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FloatingPointError)
    text = str(caught.value)
    assert "training loss is nan at step 3" in text and "--lr, now 0.01" in text
    assert "grad_clip" in text and "keeps its checkpoint of step 2 (a lower --lr needs " \
        "another --name)" in text
    kept = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    healthy = Engine(Toy(), Flat(), LoopSettings(steps=2, lr=1e-2))
    healthy.run()
    assert kept["step"] == 2
    for key, value in healthy.model.state_dict().items():
        assert torch.equal(kept["model"][key], value), key
    fresh = Engine(NanFrom(0), Flat(), settings, folder=RunFolder(tmp_path / "new"))
    with pytest.raises(NonFiniteLoss, match="no checkpoint was written"):
        fresh.run()


def test_resume_equals_never_stopping():
    def make():
        return Engine(Toy(), Flat(), LoopSettings(steps=8, lr=1e-2, ema_decay=0.5,
                                                  log_every=2))
    straight = make()
    straight.run()
    first = make()
    first.run(until=5)
    second = make()
    second.load_state_dict(first.state_dict())
    second.run()
    same(straight.model, second.model)
    same(straight.eval_model(), second.eval_model())
    assert [r["step"] for r in second.history] == [2, 4, 5, 6, 8]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="steps"):
        LoopSettings(steps=0)
    with pytest.raises(ValueError, match="grad_clip"):
        LoopSettings(steps=1, grad_clip=-1.0)


def _follows_rates_and_resumes(settings: LoopSettings, rates: list[float], stop: int) -> None:
    """The engine's weights equal a plain AdamW loop given ``rates`` step by step, and a run
    stopped after ``stop`` steps resumes on the same schedule."""
    engine = Engine(Toy(), Flat(), settings)
    engine.run()
    model, toy = Flat(), Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    for step in range(settings.steps):
        opt.zero_grad()
        toy.loss(model, step).backward()
        opt.param_groups[0]["lr"] = rates[step]
        opt.step()
    for p, q in zip(engine.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    first = Engine(Toy(), Flat(), settings)
    first.run(until=stop)
    second = Engine(Toy(), Flat(), settings)
    second.load_state_dict(first.state_dict())
    second.run()
    same(engine.model, second.model)


def test_warmup_rises_linearly_then_holds_and_resumes_alike():
    """warmup=4, lr 0.01: steps 0-3 use 0.0025, 0.005, 0.0075, 0.01, then 0.01; the weights
    equal a plain AdamW loop given those rates, and a run stopped inside the warmup resumes on
    the same schedule."""
    lr, steps = 1e-2, 7
    rates = [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01]
    settings = LoopSettings(steps=steps, lr=lr, warmup=4, log_every=2)
    assert [settings.lr_at(s) for s in range(steps)] == pytest.approx(rates, rel=1e-12)
    _follows_rates_and_resumes(settings, rates, stop=2)
    with pytest.raises(ValueError, match="warmup"):
        LoopSettings(steps=1, warmup=-1)


def test_bf16_runs_the_loss_under_autocast_and_keeps_float32_weights():
    """bf16=True: the forward pass in bfloat16 (so the weights differ from a float32 run),
    equal to a plain loop under the same autocast; parameters and EMA stay float32."""
    lr, steps = 1e-2, 4
    engine = Engine(Toy(), Flat(), LoopSettings(steps=steps, lr=lr, bf16=True, ema_decay=0.5))
    engine.run()
    model, toy = Flat(), Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = toy.loss(model, step)
        loss.backward()
        opt.step()
    plain = Engine(Toy(), Flat(), LoopSettings(steps=steps, lr=lr))
    plain.run()
    for p, q, r in zip(engine.model.parameters(), model.parameters(), plain.model.parameters(),
                       strict=True):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        assert not torch.equal(p, r)
    assert all(p.dtype == torch.float32 for p in engine.eval_model().parameters())


def test_cosine_schedule_follows_its_formula_after_the_warmup():
    """schedule="cosine", warmup 2, 6 steps, lr 0.01: steps 0-1 warm up (0.005, 0.01), then
    0.01 (1 + cos(pi k / 4)) / 2 for k = 0..3; the weights equal a plain AdamW loop given those
    rates, and a run stopped half-way resumes on the same schedule."""
    lr, steps = 1e-2, 6
    rates = [0.005, 0.01] + [0.005 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    settings = LoopSettings(steps=steps, lr=lr, warmup=2, schedule="cosine", log_every=2)
    assert [settings.lr_at(s) for s in range(steps)] == pytest.approx(rates, rel=1e-12)
    assert rates[-1] == pytest.approx(0.01 * (1 - math.sqrt(0.5)) / 2, rel=1e-12)
    _follows_rates_and_resumes(settings, rates, stop=3)
    plain = LoopSettings(steps=5, lr=lr, schedule="cosine")
    assert plain.lr_at(0) == lr
    assert plain.lr_at(4) == pytest.approx(lr * (1 + math.cos(0.8 * math.pi)) / 2)
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        LoopSettings(steps=1, schedule="linear")
