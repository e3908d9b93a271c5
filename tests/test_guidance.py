"""Classifier-free guidance: condition dropout in FlowMatcher (training side) and the guided
field sampling.Guided (sampling side), checked on a linear toy model with a closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from otcfm.couplings import Independent
from otcfm.matchers import FlowMatcher, matcher
from otcfm.paths import LinearPath
from otcfm.sampling import Guided, integrate

K, D = 4, 3


class LinearToy(nn.Module):
    """v(x, t | y) = A x + b t + E[y], labels in [0, K] (K = null), counting its calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64))
        self.E = nn.Parameter(torch.randn(K + 1, D, generator=g, dtype=torch.float64))
        self.num_classes, self.null_class = K, K
        self.calls: list[dict] = []

    def forward(self, x, t, *, y, **extra):
        self.calls.append({"n": x.shape[0], "y": y.clone(), **extra})
        return x @ self.A.T + t[:, None] * self.b + self.E[y]


def closed_form(m: LinearToy, x, t, y):
    """The same field written out, in float64 (the oracle)."""
    with torch.no_grad():
        return x @ m.A.T + t[:, None] * m.b + m.E[y]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(n: int, seed: int = 0):
    g = gen(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=g)
    return x, t, y


# --------------------------------------------------------------------------- Guided
def test_scale_zero_is_the_conditional_model_exactly():
    m = LinearToy()
    x, t, y = data(9)
    with torch.no_grad():
        assert torch.equal(Guided(m, 0.0)(x, t, y=y), m(x, t, y=y))
    assert [c["n"] for c in m.calls] == [9, 9]  # one plain call each, no doubled batch


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_guided_field_equals_the_formula_in_one_batched_call(w):
    m = LinearToy(seed=1)
    x, t, y = data(11, seed=2)
    with torch.no_grad():
        v = Guided(m, w)(x, t, y=y)
    want = (1 + w) * closed_form(m, x, t, y) - w * closed_form(m, x, t, torch.full_like(y, K))
    torch.testing.assert_close(v, want, rtol=1e-12, atol=1e-12)
    assert len(m.calls) == 1 and m.calls[0]["n"] == 22
    assert torch.equal(m.calls[0]["y"], torch.cat([y, torch.full_like(y, K)]))


def test_null_class_read_from_the_model_or_given():
    m = LinearToy()
    assert Guided(m, 1.0).null_class == K
    x, t, y = data(5)
    with torch.no_grad():
        Guided(m, 1.0, null_class=2)(x, t, y=y)
    assert torch.equal(m.calls[-1]["y"][5:], torch.full((5,), 2))


def test_other_conditions_reach_both_halves():
    m = LinearToy()
    x, t, y = data(6)
    feat = torch.arange(12.0).reshape(6, 2)
    with torch.no_grad():
        Guided(m, 2.0)(x, t, y=y, feat=feat, mode="fast")
    call = m.calls[-1]
    assert torch.equal(call["feat"], torch.cat([feat, feat])) and call["mode"] == "fast"


def test_integrate_with_guidance_matches_hand_written_euler():
    m = LinearToy(seed=3)
    x0, _, y = data(8, seed=4)
    w, steps = 1.5, 4
    traj = integrate(Guided(m, w), x0, method="euler", steps=steps, cond={"y": y}, energy=False)
    assert traj.nfe == steps and len(m.calls) == steps
    x, dt = x0.clone(), 1.0 / steps
    null = torch.full_like(y, K)
    for k in range(steps):
        t = torch.full((8,), k * dt, dtype=torch.float64)
        x = x + dt * ((1 + w) * closed_form(m, x, t, y) - w * closed_form(m, x, t, null))
    torch.testing.assert_close(traj.x_final, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("w", [-0.5, math.nan, math.inf])
def test_bad_scale_refused(w):
    with pytest.raises(ValueError, match="guidance scale must be finite and >= 0"):
        Guided(LinearToy(), w)


def test_guided_errors():
    with pytest.raises(TypeError, match="guidance scale must be a number"):
        Guided(LinearToy(), "big")
    with pytest.raises(ValueError, match="null_class=K"):
        Guided(lambda x, t, **c: x, 1.0)
    with pytest.raises(ValueError, match="null_class must be an int >= 0"):
        Guided(LinearToy(), 1.0, null_class=-1)
    x, t, y = data(4)
    g = Guided(LinearToy(), 1.0)
    with pytest.raises(ValueError, match=r"class labels y= as an integer tensor of shape \(4,\)"):
        g(x, t)
    with pytest.raises(ValueError, match="integer tensor"):
        g(x, t, y=y.double())


# --------------------------------------------------------------------------- dropout
def fm_with(p: float, null_class: int | None = K) -> FlowMatcher:
    return FlowMatcher(LinearPath(0.1), Independent(), cond_dropout=p, null_class=null_class)


def test_dropout_replaces_labels_by_the_null_class_at_rate_p():
    n, p = 20_000, 0.3
    x0, x1 = torch.randn(n, D, generator=gen(1)), torch.randn(n, D, generator=gen(2))
    y = torch.randint(0, K, (n,), generator=gen(3))
    s = fm_with(p).sample(x0, x1, generator=gen(4), y=y)
    dropped = s.cond["y"] == K
    assert torch.equal(s.cond["y"][~dropped], y[~dropped])  # the rest kept as they were
    # binomial rate: 5 standard errors
    assert abs(dropped.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_dropout_draws_after_the_path_and_changes_nothing_else():
    x0, x1 = torch.randn(64, D, generator=gen(1)), torch.randn(64, D, generator=gen(2))
    y = torch.randint(0, K, (64,), generator=gen(3))
    g = gen(5)
    plain = fm_with(0.0).sample(x0, x1, generator=g, y=y)
    u = torch.rand(64, generator=g, dtype=torch.float64)  # the next draw: the dropout mask
    s = fm_with(0.25).sample(x0, x1, generator=gen(5), y=y)
    for name in ("t", "x0", "x1", "xt", "ut", "noise"):
        assert torch.equal(getattr(s, name), getattr(plain, name))
    assert torch.equal(plain.cond["y"], y)
    assert torch.equal(s.cond["y"], torch.where(u < 0.25, torch.full_like(y, K), y))
    # the training pipeline's route draws the same
    fm = fm_with(0.25)
    pair = fm.coupling(x0, x1, generator=gen(6), cond1={"y": y})
    fast = fm._sample_pairing(pair, gen(7))
    public = fm.sample(pair, generator=gen(7))
    assert torch.equal(fast.cond["y"], public.cond["y"]) and torch.equal(fast.xt, public.xt)


def test_dropout_reaches_the_model_in_the_loss():
    m = LinearToy()
    x0, x1 = torch.randn(200, D, dtype=torch.float64), torch.randn(200, D, dtype=torch.float64)
    y = torch.randint(0, K, (200,), generator=gen(8))
    fm_with(1.0).loss(m, x0, x1, generator=gen(9), y=y)
    assert torch.equal(m.calls[-1]["y"], torch.full((200,), K))


def test_matcher_presets_take_dropout_options():
    fm = matcher("otcfm", cond_dropout=0.1, null_class=10, coupling="exact:within=y")
    assert fm.cond_dropout == 0.1 and fm.null_class == 10
    assert matcher("icfm").cond_dropout == 0.0 and matcher("icfm").null_class is None
    assert "cond_dropout=0.1" in repr(fm)
    with pytest.raises(ValueError, match="needs null_class"):
        matcher("icfm", cond_dropout=0.1)
    with pytest.raises(TypeError, match="unknown keyword"):
        matcher("icfm", dropout=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cond_dropout": -0.1}, "cond_dropout must be finite and >= 0"),
        ({"cond_dropout": 1.5}, r"cond_dropout must be a probability in \[0, 1\]"),
        ({"cond_dropout": True}, r"cond_dropout must be a probability in \[0, 1\]"),
        ({"cond_dropout": math.nan}, "cond_dropout must be finite"),
        ({"cond_dropout": 0.1, "null_class": -1}, "null_class must be None or an int >= 0"),
        ({"cond_dropout": 0.1, "null_class": True}, "null_class must be None or an int >= 0"),
        ({"cond_dropout": 0.1, "null_class": 2.0}, "null_class must be None or an int >= 0"),
        ({"cond_dropout": 0.1, "null_class": 3, "cond_key": "a b"}, "cond_key"),
    ],
)
def test_dropout_options_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMatcher(LinearPath(0.1), **kwargs)


def test_dropout_needs_integer_labels():
    x0, x1 = torch.randn(8, D), torch.randn(8, D)
    fm = fm_with(0.5)
    with pytest.raises(ValueError, match=r"class labels y= \(e.g. fm.sample"):
        fm.sample(x0, x1, generator=gen(0))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        fm.sample(x0, x1, generator=gen(0), y=torch.zeros(8))
