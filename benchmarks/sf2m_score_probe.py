"""Probe: how SF2M's score network is parameterised, on the Gaussian Schrödinger bridge.

One SF2M-Exact model (the Gaussian-bridge protocol of ``otcfm bench gaussian-sb``: 10,000
points per side, batch 500, AdamW lr 5e-3 / 1e-5, EMA 0.98, MLP 3x128 SELU, sigma 1) trained
by a plain loop, with the score network's output used either

- ``score``: directly as the score s(x, t) (the library's SF2M), or
- ``eps``: as a noise prediction e(x, t) with s = -e / sigma_t (sigma_t = sigma sqrt(t (1 - t)),
  floored at sigma sqrt(0.0025) so that t = 0 and 1 stay finite); the loss is then the plain
  noise regression |e - eps|^2 (times 4 / sigma^4), the same objective in another
  parameterisation;

and a ``constant`` or ``cosine`` learning rate. Prints KL(t=1) of the SDE, of the tapered
SDE and of the ODE (20 steps, 10,000 samples) and the slope fraction of the score at
t = 0, 0.5, 1 (as the page's score check):

    python benchmarks/sf2m_score_probe.py --dim 5 --steps 2000 --output eps --seed 42
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from otcfm.experiments.gaussian_sb import fitted_kl, sb_marginal
from otcfm.matchers import matcher
from otcfm.models import DriftScore
from otcfm.sampling import integrate, integrate_sde

A, SIGMA, BATCH, N = 0.1, 1.0, 500, 10_000


class NoisePrediction(DriftScore):
    """A DriftScore whose score network predicts the noise: s = -e(x, t) / sigma_t."""

    def forward(self, x, t, head="drift", **cond):  # noqa: D102
        if head == "drift":
            return self.drift_net(x, t)
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        sigma_t = SIGMA * (tt * (1 - tt)).clamp_min(0.0025).sqrt()
        score = -self.score_net(x, t) / sigma_t
        return score if head == "score" else (self.drift_net(x, t), score)


def slope(model: DriftScore, dim: int, t: float) -> float:
    """-E[s . (x - m)] v / E|x - m|^2 on samples of q_t (1: the exact score)."""
    m, v = sb_marginal(t, A, SIGMA)
    x = m + math.sqrt(v) * torch.randn(4000, dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s = model.score(x, torch.full((4000,), t)).double()
    return float(-(s * (x - m)).sum() * v / (x - m).pow(2).sum())


def main(argv: list[str] | None = None) -> int:
    """Train one model and print its numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--output", choices=("score", "eps"), default="score")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn(N, args.dim, generator=g) - A
    x1 = torch.randn(N, args.dim, generator=g) + A
    fm = matcher("sf2m", sigma=SIGMA, coupling="exact")
    model = DriftScore.mlp(args.dim, generator=g, width=128, depth=3, activation="selu")
    if args.output == "eps":
        model = NoisePrediction(model.drift_net, model.score_net)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-5)
    ema = copy.deepcopy(model)
    start = time.perf_counter()
    for k in range(args.steps):
        if args.schedule == "cosine":
            opt.param_groups[0]["lr"] = 5e-3 * 0.5 * (1 + math.cos(math.pi * k / args.steps))
        i = torch.randint(0, N, (BATCH,), generator=g)
        j = torch.randint(0, N, (BATCH,), generator=g)
        loss = fm.losses(model, x0[i], x1[j], generator=g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 0.02)
    xt = torch.randn(N, args.dim, generator=torch.Generator().manual_seed(7)) - A
    with torch.no_grad():
        kl = {}
        for name, diffusion in (("sde", "constant"), ("tapered", "tapered")):
            end = integrate_sde(ema, xt, sigma=SIGMA, steps=20, diffusion=diffusion,
                                generator=torch.Generator().manual_seed(3), save="ends")
            kl[name] = fitted_kl(end.x_final, 1.0, A, SIGMA)
        end = integrate(ema, xt, method="euler", steps=20, energy=False, save="ends")
        kl["ode"] = fitted_kl(end.x_final, 1.0, A, SIGMA)
    slopes = " ".join(f"{t:g}: {slope(ema, args.dim, t):.3f}" for t in (0.0, 0.5, 1.0))
    print(f"d={args.dim} steps={args.steps} output={args.output} schedule={args.schedule} "
          f"seed={args.seed} ({time.perf_counter() - start:.0f} s): KL(t=1) SDE "
          f"{kl['sde']:.4f}, tapered {kl['tapered']:.4f}, ODE {kl['ode']:.4f}; score slope "
          f"{slopes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
