"""benchmarks/sf2m_score_probe.py: the noise-prediction parameterisation is what it says, and
the probe runs end to end on a tiny budget."""

from __future__ import annotations

import math
import re

import pytest
import torch

from otcfm.matchers import matcher
from otcfm.models import DriftScore


@pytest.fixture(scope="module")
def probe(benchmark_module):
    return benchmark_module("sf2m_score_probe")


def test_noise_prediction_score_and_loss(probe):
    g = torch.Generator().manual_seed(0)
    base = DriftScore.mlp(3, generator=g, width=16, depth=2)
    model = probe.NoisePrediction(base.drift_net, base.score_net)
    x, t = torch.randn(64, 3, generator=g), torch.rand(64, generator=g)
    e = base.score_net(x, t)
    sigma_t = (t * (1 - t)).clamp_min(0.0025).sqrt()[:, None]
    torch.testing.assert_close(model.score(x, t), -e / sigma_t)
    fm = matcher("sf2m", sigma=1.0, coupling="independent")
    s = fm.sample(torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g),
                  generator=torch.Generator().manual_seed(1))
    inner = (s.t * (1 - s.t) >= 0.0025)  # away from the floor, sigma_t s = -e exactly
    residual = fm.score_residual(model.score(s.xt, s.t), s)
    e = base.score_net(s.xt, s.t)
    torch.testing.assert_close(residual[inner], 2.0 * (s.noise - e)[inner], rtol=1e-5,
                               atol=1e-5)


def test_probe_prints_its_numbers(probe, capsys):
    threads = torch.get_num_threads()
    try:
        assert probe.main(["--dim", "2", "--steps", "3", "--output", "eps", "--seed", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    line = capsys.readouterr().out
    kls = re.findall(r"(?:SDE|tapered|ODE) ([0-9.]+)", line)
    assert len(kls) == 3 and all(math.isfinite(float(v)) for v in kls), line
