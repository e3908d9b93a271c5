"""otcfm.likelihood against closed forms (affine flows of Gaussians), brute-force Jacobian traces,
and itself (Hutchinson against exact, repeatability inside dopri5, the round trip to x0)."""

from __future__ import annotations

import math

import pytest
import torch

from otcfm.likelihood import (
    bits_per_dim,
    divergence,
    draw_probes,
    log_likelihood,
    logit_log_det,
)
from otcfm.sampling import integrate


class Affine(torch.nn.Module):
    """v(x, t) = a * x + b elementwise (a, b of the event's shape): x1 = e^a x0 + b (e^a - 1)/a,
    so N(0, I) at t = 0 becomes N(b (e^a - 1) / a, diag(e^{2a})) at t = 1."""

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.rand(shape, generator=g, dtype=torch.float64) - 0.5)
        self.b = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return self.a * x + self.b

    def closed_form(self, x):
        mean = self.b * torch.expm1(self.a) / self.a
        std = torch.exp(self.a)
        z = (x - mean) / std
        per = -0.5 * z.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return per.reshape(x.shape[0], -1).sum(dim=1)


class Nonlinear(torch.nn.Module):
    """A conv net on images whose Jacobian is dense in space and channels."""

    def __init__(self, channels=3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.c1 = torch.nn.Conv2d(channels, 8, 3, padding=1).double()
        self.c2 = torch.nn.Conv2d(8, channels, 3, padding=1).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x, t):
        h = torch.tanh(self.c1(x) + t.view(-1, 1, 1, 1))
        return self.c2(h) * x.mean(dim=(1, 2, 3), keepdim=True).cos()


def samples(shape, n, seed=2):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("shape", [(2,), (3, 8, 8)], ids=["d2", "image"])
def test_exact_log_likelihood_of_an_affine_flow_equals_the_gaussian_closed_form(shape):
    model = Affine(shape)
    x = samples(shape, 5) * 1.5
    out = log_likelihood(model, x, atol=1e-10, rtol=1e-10)
    assert out.logp.shape == (5,) and out.x0.shape == x.shape
    torch.testing.assert_close(out.logp, model.closed_form(x), rtol=0, atol=1e-4)


def test_exact_divergence_on_images_equals_the_brute_force_jacobian_trace():
    model = Nonlinear()
    x = samples((3, 4, 4), 3).requires_grad_(True)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    v = model(x, t)
    got = divergence(v, x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None], t[:1])[0],
                                                 x[i].detach())
        d = x[i].numel()
        want = jac.reshape(d, d).diagonal().sum()
        assert abs(float(got[i] - want)) <= 1e-12 * max(1.0, abs(float(want)))


def test_hutchinson_mean_over_probes_is_within_three_standard_errors_of_exact():
    model = Nonlinear()
    x = samples((3, 4, 4), 4)
    exact = log_likelihood(model, x, solver="rk4", steps=8).logp
    runs = torch.stack([
        log_likelihood(model, x, solver="rk4", steps=8, divergence="hutchinson",
                       generator=torch.Generator().manual_seed(s)).logp
        for s in range(40)
    ])
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(runs.shape[0])
    assert (se > 0).all()  # the estimator does vary
    assert ((mean - exact).abs() <= 3 * se).all(), (mean - exact) / se


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_inside_dopri5_repeats_with_the_same_generator(probe):
    model = Nonlinear()
    x = samples((3, 4, 4), 3)
    a, b = (log_likelihood(model, x, divergence="hutchinson", n_probes=2, probe=probe,
                           generator=torch.Generator().manual_seed(7), atol=1e-6, rtol=1e-6)
            for _ in range(2))
    assert torch.equal(a.logp, b.logp) and a.nfe == b.nfe
    c = log_likelihood(model, x, divergence="hutchinson", n_probes=2, probe=probe,
                       generator=torch.Generator().manual_seed(8), atol=1e-6, rtol=1e-6)
    assert not torch.equal(a.logp, c.logp)


def test_decoding_x0_forward_gives_back_x():
    model = Nonlinear()
    x = samples((3, 4, 4), 3)
    out = log_likelihood(model, x, atol=1e-9, rtol=1e-9)
    back = integrate(model, out.x0, method="dopri5", atol=1e-9, rtol=1e-9, save="ends",
                     energy=False).x_final
    assert float((back - x).abs().max()) < 1e-6


def test_chunks_and_conditions_change_nothing_for_a_fixed_step_solver():
    class Cond(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.sin(x) * (1 + y.view(-1, *[1] * (x.dim() - 1)).to(x.dtype))

    x = samples((2,), 7)
    y = torch.arange(7)
    whole = log_likelihood(Cond(), x, solver="euler", steps=5, y=y, chunk_size=7)
    parts = log_likelihood(Cond(), x, solver="euler", steps=5, y=y, chunk_size=3)
    torch.testing.assert_close(whole.logp, parts.logp, rtol=0, atol=1e-12)
    # the Euler solve of (x, a) by hand: a accumulates -h * div at each step, t from 1 to 0
    z, a, h = x.clone(), torch.zeros(7, dtype=torch.float64), 0.2
    for _ in range(5):
        scale = 1 + y.to(x.dtype)
        div = (torch.cos(z) * scale[:, None]).sum(1)
        z, a = z - h * torch.sin(z) * scale[:, None], a - h * div
    want = -0.5 * z.pow(2).sum(1) - math.log(2 * math.pi) + a
    torch.testing.assert_close(whole.logp, want, rtol=0, atol=1e-12)


def test_a_source_with_log_prob_replaces_the_standard_normal():
    model = Affine((2,))
    x = samples((2,), 4)
    src = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2, dtype=torch.float64),
                                   torch.ones(2, dtype=torch.float64)), 1)
    a = log_likelihood(model, x, atol=1e-9, rtol=1e-9)
    b = log_likelihood(model, x, source=src, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="must return shape"):
        log_likelihood(model, x, source=torch.distributions.Normal(0.0, 1.0))


def test_bits_per_dim_constant_and_logit_log_det():
    d = 3 * 2 * 2
    logp = torch.tensor([0.0, -10.0], dtype=torch.float64)
    bpd = bits_per_dim(logp, (3, 2, 2))
    torch.testing.assert_close(bpd, -logp / (d * math.log(2)) + math.log2(127.5))
    # logit: the derivative of y = logit(a + (1 - 2a)(x + 1)/2) by finite differences
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    alpha, eps = 0.05, 1e-6

    def y(z):
        u = alpha + (1 - 2 * alpha) * (z + 1) / 2
        return torch.log(u) - torch.log1p(-u)

    fd = ((y(x + eps) - y(x - eps)) / (2 * eps)).log().sum()
    assert abs(float(logit_log_det(x, alpha=alpha)[0] - fd)) < 1e-8
    shifted = bits_per_dim(logp, (3, 2, 2), log_det=torch.tensor([1.0, 1.0],
                                                                  dtype=torch.float64))
    torch.testing.assert_close(shifted, bpd - 1 / (d * math.log(2)))


def test_probes_have_identity_second_moment_and_bad_options_are_refused():
    eps = draw_probes((4000, 3), 1, probe="rademacher",
                      generator=torch.Generator().manual_seed(0))[0]
    assert set(eps.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(eps.T @ eps / 4000, torch.eye(3), rtol=0, atol=0.06)
    model, x = Affine((2,)), samples((2,), 2)
    for kwargs, match in [({"divergence": "trace"}, "divergence must be"),
                          ({"solver": "rk5"}, "solver must be"),
                          ({"n_probes": 2}, "apply to divergence='hutchinson'"),
                          ({"divergence": "hutchinson", "n_probes": 0}, "n_probes"),
                          ({"divergence": "hutchinson", "probe": "uniform"}, "probe must be"),
                          ({"source": "laplace"}, "source must be")]:
        with pytest.raises((ValueError, TypeError), match=match):
            log_likelihood(model, x, **kwargs)
