"""SF2M: the score target against autograd of the conditional log density, the loss terms,
the preset, the DriftScore model, training / evaluation / CLI end to end, and a small
Gaussian-to-Gaussian bridge recovered by the learned SDE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from otcfm.cli import main
from otcfm.couplings import EntropicOT, ExactOT, Independent
from otcfm.matchers import MATCHERS, SF2M, FlowMatcher, SF2MLoss, matcher
from otcfm.models import MLP, MODELS, DriftScore
from otcfm.paths import BrownianBridgePath, LinearPath
from otcfm.sampling import integrate, integrate_sde
from otcfm.train.config import RunConfig
from otcfm.train.evaluate import evaluate_run, load_run, sample_run
from otcfm.train.loop import train


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(shape, dtype=torch.float32, seed=0):
    g = gen(seed)
    return torch.randn(shape, generator=g).to(dtype), (2 + torch.randn(shape, generator=g)).to(
        dtype
    )


class Lin(nn.Module):
    """One linear layer on [flat(x), t]; shaped like x; float32 maths."""

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(d + 1, d)

    def forward(self, x, t):
        assert t.dtype == torch.float32 and t.shape == (x.shape[0],)
        h = self.lin(torch.cat([x.float().flatten(1), t[:, None]], 1))
        return h.reshape(x.shape).to(x.dtype)


def tiny_pair(shape, seed=0) -> DriftScore:
    d = math.prod(shape[1:])
    return DriftScore(Lin(d, seed), Lin(d, seed + 1))


# --------------------------------------------------------------------- score target
def autograd_score(x, x0, x1, t, sigma):
    """grad_x log N(x; t x1 + (1 - t) x0, sigma^2 t (1 - t) I) by autograd (float64)."""
    x = x.detach().double().requires_grad_(True)
    tp = t.double()[:, None]
    mu = tp * x1.double() + (1 - tp) * x0.double()
    std = sigma * torch.sqrt(tp * (1 - tp))
    logp = torch.distributions.Normal(mu, std).log_prob(x).sum()
    (grad,) = torch.autograd.grad(logp, x)
    return grad


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.5])
def test_score_target_is_the_gradient_of_the_conditional_log_density(sigma):
    m = matcher("sf2m", sigma=sigma, coupling="independent")
    x0, x1 = data((256, 3), torch.float64)
    s = m.sample(x0, x1, generator=gen(1))
    ok = (s.t > 1e-3) & (s.t < 1 - 1e-3)
    target = m.score_target(s)[ok].double()
    expected = autograd_score(s.xt, s.x0, s.x1, s.t, sigma)[ok]
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)
    # the path's own score agrees as well
    torch.testing.assert_close(
        m.path.score(s.xt, s.x0, s.x1, s.t.double())[ok], expected, rtol=1e-6, atol=1e-6
    )


def test_loss_terms_against_direct_formulas():
    sigma = 0.8
    m = matcher("sf2m", sigma=sigma)
    x0, x1 = data((64, 2), torch.float64)
    model = tiny_pair((64, 2))
    s = m.sample(x0, x1, generator=gen(2))
    got = m.losses(model, x0, x1, generator=gen(2))
    assert isinstance(got, SF2MLoss)
    score_ref = autograd_score(s.xt, s.x0, s.x1, s.t, sigma)
    with torch.no_grad():
        v, sc = model.drift(s.xt, s.t).double(), model.score(s.xt, s.t).double()
        flow = ((v - s.ut.double()) ** 2).mean()
        lam = 2 * sigma * torch.sqrt(s.t.double() * (1 - s.t.double())) / sigma**2
        score = (lam[:, None] ** 2 * (sc - score_ref) ** 2).mean()
    torch.testing.assert_close(got.flow.double(), flow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.score.double(), score, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.total, got.flow + got.score, rtol=0, atol=0)
    torch.testing.assert_close(m.loss(model, x0, x1, generator=gen(2)), got.total)


def test_score_loss_finite_at_the_endpoints():
    m = SF2M(BrownianBridgePath(1.0), Independent())
    x0, x1 = data((8, 2))
    model = tiny_pair((8, 2))
    for t in (0.0, 1.0):
        s = m.path.sample(x0, x1, torch.full((8,), t))
        out = m._losses(model, s)
        assert bool(torch.isfinite(out.total))


def test_the_minimiser_of_the_score_term_is_the_marginal_score():
    # fixed x0 = 0, x1 = 0: p_t(x | z) = N(0, sigma_t^2) is also the marginal; a model
    # s = c * x has loss minimised at c = -1 / sigma_t^2 (score of the marginal)
    sigma, t = 1.0, 0.3
    m = SF2M(BrownianBridgePath(sigma), Independent())
    zeros = torch.zeros(20_000, 1, dtype=torch.float64)
    s = m.path.sample(zeros, zeros, torch.full((20_000,), t), generator=gen(3))

    class Scaled(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x, t):
            return self.c * x

    var = sigma**2 * t * (1 - t)
    cs = np.linspace(-2.0 / var, 0.0, 81)
    losses = [float(m._losses(DriftScore(Scaled(0.0), Scaled(c)), s).score) for c in cs]
    best = cs[int(np.argmin(losses))]
    assert abs(best - (-1 / var)) <= 2 * (cs[1] - cs[0]) + 0.05 / var


# --------------------------------------------------------------------- preset and contract
def test_preset_couplings_and_errors():
    assert "sf2m" in MATCHERS.names()
    m = matcher("sf2m")
    assert isinstance(m, SF2M) and isinstance(m, FlowMatcher) and m.needs_score
    assert isinstance(m.coupling, ExactOT) and m.sigma == 1.0
    ent = matcher("sf2m", sigma=0.3, coupling="entropic")
    assert isinstance(ent.coupling, EntropicOT) and ent.coupling.reg == pytest.approx(0.18)
    assert isinstance(ent.path, BrownianBridgePath) and ent.path.sigma == 0.3
    assert isinstance(matcher("sf2m", coupling="independent").coupling, Independent)
    assert not matcher("otcfm").needs_score
    with pytest.raises(ValueError, match="sf2m needs sigma > 0"):
        matcher("sf2m", sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        matcher("sf2m", sigma=-1.0)
    with pytest.raises(TypeError, match="BrownianBridgePath"):
        SF2M(LinearPath(0.1))
    with pytest.raises(ValueError, match="sigma > 0"):
        SF2M(BrownianBridgePath(0.0))


def test_model_without_a_score_head_is_refused():
    m = matcher("sf2m")
    x0, x1 = data((8, 2))
    with pytest.raises(TypeError, match="DriftScore"):
        m.loss(MLP(2), x0, x1)


@pytest.mark.parametrize("shape", [(12, 1), (12, 2), (12, 3, 4, 4)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("coupling", ["exact", "entropic"])
def test_contract(shape, dtype, coupling):
    m = matcher("sf2m", sigma=0.5, coupling=coupling)
    x0, x1 = data(shape, dtype)
    model = tiny_pair(shape)
    out = m.losses(model, x0, x1, generator=gen(4))
    for term in (out.total, out.flow, out.score):
        assert term.shape == () and term.dtype == torch.float32 and bool(torch.isfinite(term))
    out.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    again = m.losses(model, x0, x1, generator=gen(4))
    torch.testing.assert_close(again.total, out.total, rtol=0, atol=0)


def test_conditions_reach_both_heads():
    seen = []

    class Cond(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x, t, y):
            seen.append(y)
            return self.w * x

    m = matcher("sf2m", coupling="exact")
    x0, x1 = data((6, 2))
    y = torch.arange(6)
    s = m.sample(x0, x1, generator=gen(5), y=y)
    m.loss(DriftScore(Cond(), Cond()), x0, x1, generator=gen(5), y=y)
    assert len(seen) == 2 and all(torch.equal(v, s.cond["y"]) for v in seen)


# --------------------------------------------------------------------- DriftScore
def test_drift_score_heads():
    model = DriftScore.mlp(2, width=16, generator=gen(0))
    x, t = torch.randn(5, 2, generator=gen(1)), torch.rand(5, generator=gen(2))
    v, s = model(x, t, head="both")
    torch.testing.assert_close(model(x, t), v, rtol=0, atol=0)
    torch.testing.assert_close(model.drift(x, t), v, rtol=0, atol=0)
    torch.testing.assert_close(model.score(x, t), s, rtol=0, atol=0)
    assert not torch.allclose(v, s)  # two networks, two initialisations
    again = DriftScore.mlp(2, width=16, generator=gen(0))
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert set(model.state_dict()) == {
        f"{net}.net.{k}.{w}" for net in ("drift_net", "score_net") for k in (0, 2, 4, 6)
        for w in ("weight", "bias")
    }
    with pytest.raises(ValueError, match="head must be one of drift, score, both"):
        model(x, t, head="velocity")
    with pytest.raises(ValueError, match="two different networks"):
        net = MLP(2)
        DriftScore(net, net)
    with pytest.raises(TypeError, match="nn.Module"):
        DriftScore(MLP(2), lambda x, t: x)


def test_drift_score_registry_and_ode_tools():
    model = MODELS.get("drift_score", dim=(3, 4, 4), width=8)
    assert isinstance(model, DriftScore)
    x = torch.randn(4, 3, 4, 4)
    traj = integrate(model, x, steps=3)
    assert traj.xs.shape == (4, 4, 3, 4, 4) and traj.nfe == 3
    assert model.score(x, torch.rand(4)).shape == x.shape


# --------------------------------------------------------------------- training and CLI
def tiny(tmp_path, name, steps=20, **over) -> RunConfig:
    items = {
        "method.name": '"sf2m"',
        "method.sigma": 0.5,
        "optim.steps": steps,
        "optim.batch_size": 64,
        "data.n_train": 256,
        "data.n_val": 64,
        "data.n_test": 64,
        "eval.val_every": 10,
        "eval.checkpoint_every": 10,
        "eval.ode_steps": 5,
        "model.width": 16,
        "model.depth": 2,
        **over,
    }
    return RunConfig(name=name, out_dir=str(tmp_path)).override(
        [f"{k}={v}" for k, v in items.items()]
    )


@pytest.mark.parametrize("coupling", ["", "entropic"])
def test_train_evaluate_and_sample_an_sf2m_run(tmp_path, coupling):
    cfg = tiny(tmp_path, f"sf2m{coupling}", **{"method.coupling": f'"{coupling}"'})
    result = train(cfg, progress=False)
    assert result.steps == 20 and math.isfinite(result.best_val_loss)
    run = load_run(cfg.run_dir)
    assert isinstance(run.model, DriftScore)
    metrics = evaluate_run(cfg.run_dir, adaptive="", plots=False, sde=True, sde_steps=7)
    for key in ("w2", "npe", "path_energy", "w2_sde", "w1_sde", "mmd_sde"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    assert metrics["nfe"] == 5 and metrics["nfe_sde"] == 7 and metrics["sde_steps"] == 7
    a = sample_run(run, n=16, sde=True, save="ends")
    b = sample_run(run, n=16, sde=True, save="ends")
    torch.testing.assert_close(a.x_final, b.x_final, rtol=0, atol=0)  # seeded from the run
    c = sample_run(run, n=16, sde=True, save="ends", generator=gen(9))
    assert not torch.allclose(a.x_final, c.x_final)
    ode = sample_run(run, n=16, save="ends")
    assert ode.energy is not None and a.energy is None


def test_sde_sampling_refuses_a_run_without_score(tmp_path):
    cfg = tiny(tmp_path, "ot", steps=10, **{"method.name": '"otcfm"', "method.sigma": 0.1})
    train(cfg, progress=False)
    run = load_run(cfg.run_dir)
    assert isinstance(run.model, MLP)
    with pytest.raises(ValueError, match="score network"):
        sample_run(run, n=8, sde=True)


def test_cli_sample_and_evaluate_with_sde(tmp_path, capsys):
    cfg = tiny(tmp_path, "cli", steps=10)
    train(cfg, progress=False)
    out = tmp_path / "s.npy"
    assert main(["sample", str(cfg.run_dir), "--n", "32", "--sde", "--sde-steps", "6",
                 "--seed", "3", "--out", str(out)]) == 0
    assert "SDE, sigma 0.5, NFE 6" in capsys.readouterr().out
    samples = np.load(out)
    assert samples.shape == (32, 2) and np.isfinite(samples).all()
    assert main(["evaluate", str(cfg.run_dir), "--adaptive", "none", "--no-plots", "--sde"]) == 0
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())["test"]
    assert metrics["nfe_sde"] == 5 and "w2_sde" in metrics
    assert main(["sample", str(cfg.run_dir), "--sde-steps", "4", "--out", str(out)]) == 2
    assert "--sde-steps applies to SDE sampling" in capsys.readouterr().err
    # the tapered noise schedule: the same seed, other samples, reported in the metrics
    tapered = tmp_path / "t.npy"
    assert main(["sample", str(cfg.run_dir), "--n", "32", "--sde", "--sde-steps", "6",
                 "--seed", "3", "--diffusion", "tapered", "--out", str(tapered)]) == 0
    assert "SDE, sigma 0.5, tapered diffusion, NFE 6" in capsys.readouterr().out
    assert np.isfinite(np.load(tapered)).all() and not np.allclose(np.load(tapered), samples)
    assert main(["evaluate", str(cfg.run_dir), "--adaptive", "none", "--no-plots", "--sde",
                 "--diffusion", "tapered"]) == 0
    again = json.loads((cfg.run_dir / "metrics.json").read_text())["test"]
    assert again["sde_diffusion"] == "tapered" and metrics["sde_diffusion"] == "constant"
    assert again["w2_sde"] != metrics["w2_sde"] and again["w2"] == metrics["w2"]
    capsys.readouterr()
    for flags, message in ((["--diffusion", "tapered"], "add --sde"),
                           (["--sde", "--diffusion", "linear"],
                            "--diffusion: unknown schedule 'linear' (choose from constant")):
        assert main(["sample", str(cfg.run_dir), *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------- a bridge recovered
STEPS = 800


def test_sf2m_recovers_the_gaussian_bridge_marginals_roughly():
    """N(-a 1, I) -> N(a 1, I) in 2-D, sigma = 1, entropic coupling (reg = 2): the learned SDE
    should follow the closed-form Schrodinger bridge marginals (docs/reference.md §5).

    With a = 1 the competing answers are far apart at t = 1/2: variance 1.059 (bridge) vs
    1.25 (exact OT pairs) vs 0.75 (independent pairs)."""
    a, sigma, d = 1.0, 1.0, 2
    m = matcher("sf2m", sigma=sigma, coupling="entropic")
    model = DriftScore.mlp(d, width=64, generator=gen(0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    g = gen(1)
    # couple 16 batches once (the coupling dominates the cost), then train on them in turn
    pairs = [
        m.coupling(-a + torch.randn(256, d, generator=g), a + torch.randn(256, d, generator=g),
                   generator=g)
        for _ in range(16)
    ]
    for step in range(STEPS):
        loss = m.loss(model, pairs[step % len(pairs)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    n = 20_000
    start = -a + torch.randn(n, d, generator=gen(2))
    traj = integrate_sde(model, start, sigma=sigma, steps=50, generator=gen(3))
    root = math.sqrt(4 + sigma**4)
    for tq, tol_mean, tol_var in ((0.5, 0.1, 0.1), (1.0, 0.1, 0.1)):
        k = int(torch.argmin((traj.ts - tq).abs()))
        x = traj.xs[k].double()
        mean, var = (2 * tq - 1) * a, root * tq * (1 - tq) + (1 - tq) ** 2 + tq**2
        assert float((x.mean(0) - mean).abs().max()) < tol_mean, (tq, x.mean(0))
        assert float((x.var(0) - var).abs().max()) < tol_var, (tq, x.var(0), var)


# --------------------------------------------------------------------- one score convention
class TimeScaled(nn.Module):
    """x -> coef(t) x, coef evaluated in float64: a closed-form linear field."""

    def __init__(self, coef) -> None:
        super().__init__()
        self.coef = coef

    def forward(self, x, t):
        return (self.coef(t.double())[:, None] * x.double()).to(x.dtype)


def gaussian_bridge(a: float, b: float, sigma: float):
    """x0 ~ N(0, a^2 I), x1 ~ N(0, b^2 I) independent, bridged with sigma: p_t = N(0, V(t) I),
    V = (1 - t)^2 a^2 + t^2 b^2 + sigma^2 t (1 - t). Its probability-flow drift is
    V'(t) / (2 V(t)) x and its score -x / V(t) (both in closed form)."""
    def var(t):
        return (1 - t) ** 2 * a**2 + t**2 * b**2 + sigma**2 * t * (1 - t)

    def dvar(t):
        return -2 * (1 - t) * a**2 + 2 * t * b**2 + sigma**2 * (1 - 2 * t)

    drift = TimeScaled(lambda t: dvar(t) / (2 * var(t)))
    score = TimeScaled(lambda t: -1.0 / var(t))
    return var, drift, score


def test_the_documented_score_convention_samples_the_right_marginals():
    # BrownianBridgePath.lambda_t and SF2M say: s learns grad log p_t itself, sampled with
    # dx = [v + (sigma^2 / 2) s] dt + sigma dW. Follow that literally with the exact drift
    # and score of a Gaussian bridge (no training) and compare with its closed-form variance.
    a, b, sigma, d, n = 0.5, 1.0, 1.0, 4, 4_000
    var, drift, score = gaussian_bridge(a, b, sigma)
    model = DriftScore(drift, score)
    # (1) the SF2M loss, as a function of c in s = c * score, is smallest at c = 1 (the
    # other convention would put it at sigma^2 / 2); L(c) is quadratic, so three values fix it
    m = matcher("sf2m", sigma=sigma, coupling="independent")
    x0 = a * torch.randn(n, d, generator=gen(0), dtype=torch.float64)
    x1 = b * torch.randn(n, d, generator=gen(1), dtype=torch.float64)
    losses = []
    for c in (0.0, 1.0, 2.0):
        scaled = DriftScore(drift, TimeScaled(lambda t, c=c: -c / var(t)))
        losses.append(float(m.losses(scaled, x0, x1, generator=gen(2)).score))
    l0, l1, l2 = losses
    c_best = (l2 - 4 * l1 + 3 * l0) / (2 * (l2 - 2 * l1 + l0))
    assert abs(c_best - 1.0) < 0.05, c_best
    # (2) the SDE with that score lands on the bridge's marginals: V(1/2) and V(1) = b^2
    start = a * torch.randn(n, d, generator=gen(3), dtype=torch.float64)
    traj = integrate_sde(model, start, sigma=sigma, steps=200, generator=gen(4))
    assert traj.xs.dtype == torch.float64
    for k, t in ((100, 0.5), (200, 1.0)):
        assert float(traj.ts[k]) == pytest.approx(t)
        got = float(traj.xs[k].var())
        # sampling error: 16,000 values, relative std sqrt(2 / 16,000) ~ 1.1%; Euler-Maruyama
        # bias O(1/200)
        assert abs(got - var(t)) < 0.05 * var(t), (t, got, var(t))
    # the other convention (s = (sigma^2 / 2) * score fed to the same sampler) misses by far
    half = DriftScore(drift, TimeScaled(lambda t: -(sigma**2 / 2) / var(t)))
    wrong = integrate_sde(half, start, sigma=sigma, steps=200, generator=gen(4), save="ends")
    assert float(wrong.x_final.var()) - b**2 > 0.3
