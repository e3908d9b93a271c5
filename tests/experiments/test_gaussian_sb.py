"""`otcfm bench gaussian-sb`: the closed-form bridge marginals against Monte Carlo, the KL
against torch.distributions, an exact model scored at the sampling floor, and a quick run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from otcfm.couplings import EntropicOT
from otcfm.experiments.gaussian_sb import (
    Cell,
    Protocol,
    fitted_kl,
    gaussian_kl,
    kl_curve,
    sample_cell,
    sb_marginal,
    score_check,
)
from otcfm.experiments.gaussian_sb_cli import main
from otcfm.experiments.gaussian_sb_report import PROBES_FILE, fmt, kl_floor
from otcfm.models import DriftScore


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------- q_t vs Monte Carlo
def quantile_grid(n: int, shift: float) -> torch.Tensor:
    """n points at the normal quantiles (k + 1/2) / n, shifted: an empirical N(shift, ~1)
    with (almost) no sampling error in its moments."""
    q = norm.ppf((np.arange(n) + 0.5) / n)
    return torch.tensor(q / q.std() + shift, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_bridge_marginal_formula_against_monte_carlo(sigma):
    """Build the bridge from its definition: the entropic OT plan (reg = 2 sigma^2) between
    the two Gaussians (here 1-D: isotropic Gaussians factorise), then Brownian bridges of
    sigma W between the pairs. Its moments at time t must be those of q_t."""
    a, n = 0.7, 1500
    x0, x1 = quantile_grid(n, -a), quantile_grid(n, a)
    plan = EntropicOT(reg=2 * sigma**2, cost_dtype=torch.float64, tol=1e-9).plan(x0, x1)
    for t in (0.25, 0.5, 0.75, 1.0):
        mid = (1 - t) * x0 + t * x1.T  # (n, n) bridge means of every pair
        mean = float((plan * mid).sum())
        second = float((plan * mid**2).sum()) + sigma**2 * t * (1 - t)
        var = second - mean**2
        m_ref, v_ref = sb_marginal(t, a, sigma)
        # the quantile grids leave ~1e-5 relative error (seen: <= 9e-6)
        assert abs(mean - m_ref) < 1e-4, (t, mean, m_ref)
        assert abs(var - v_ref) < 1e-3 * v_ref, (t, var, v_ref)
    # the formula is not what the other couplings give (the test can tell them apart)
    t = 0.5
    v_ref = sb_marginal(t, a, sigma)[1]
    v_indep = (1 - t) ** 2 + t**2 + sigma**2 * t * (1 - t)
    v_shift = 1 + sigma**2 * t * (1 - t)  # exact OT: x1 = x0 + 2a
    assert min(abs(v_ref - v_indep), abs(v_ref - v_shift)) > 0.05


def test_sb_marginal_endpoints_and_errors():
    assert sb_marginal(0.0, 0.1, 1.0) == (-0.1, 1.0)
    assert sb_marginal(1.0, 0.1, 1.0) == (0.1, 1.0)
    assert sb_marginal(0.5, 0.1, 1.0)[1] == pytest.approx(0.5 + 0.25 * math.sqrt(5))
    with pytest.raises(ValueError, match="t must be in"):
        sb_marginal(1.5, 0.1, 1.0)


# --------------------------------------------------------------------- KL
def test_gaussian_kl_matches_torch_distributions():
    g = gen(0)
    d = 6
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    mq, vq = 0.3, 1.7
    p = torch.distributions.MultivariateNormal(mean, cov)
    q = torch.distributions.MultivariateNormal(
        torch.full((d,), mq, dtype=torch.float64), vq * torch.eye(d, dtype=torch.float64)
    )
    ref = float(torch.distributions.kl_divergence(p, q))
    got = gaussian_kl(mean, cov, torch.full((d,), mq, dtype=torch.float64), vq)
    assert got == pytest.approx(ref, rel=1e-10)
    assert gaussian_kl(torch.zeros(3), torch.eye(3), torch.zeros(3), 1.0) == pytest.approx(0.0)


def test_fitted_kl_of_exact_samples_is_the_sampling_floor():
    d, n, reps = 5, 400, 200
    g = gen(1)
    kls = []
    for _ in range(reps):
        m, v = sb_marginal(0.3, 0.1, 1.0)
        x = m + math.sqrt(v) * torch.randn(n, d, generator=g, dtype=torch.float64)
        kls.append(fitted_kl(x, 0.3, 0.1, 1.0))
    # E KL ~ d (d + 3) / (4 n) = 0.025; the std of the mean over 200 reps is ~5% of it
    assert np.mean(kls) == pytest.approx(kl_floor(d, n), rel=0.15)


# --------------------------------------------------------------------- an exact model
class Exact(nn.Module):
    """The closed-form probability-flow velocity (head 0) or score (head 1) of q_t."""

    def __init__(self, a: float, sigma: float, score: bool) -> None:
        super().__init__()
        self.a, self.root, self.score_head = a, math.sqrt(4 + sigma**4), score

    def forward(self, x, t):
        t = t.to(x.dtype)[:, None]
        m = (2 * t - 1) * self.a
        v = self.root * t * (1 - t) + (1 - t) ** 2 + t**2
        if self.score_head:
            return -(x - m) / v
        dv = self.root * (1 - 2 * t) - 2 * (1 - t) + 2 * t
        return 2 * self.a + dv / (2 * v) * (x - m)


@pytest.mark.parametrize(("sampler", "diffusion"),
                         [("ode", "constant"), ("sde", "constant"), ("sde", "tapered")])
def test_exact_model_scores_near_the_floor(sampler, diffusion):
    """The bench's sampling and KL pipeline on the true drift and score: every time of the
    grid is at the sampling floor up to the 20-step Euler(-Maruyama) error, for either
    diffusion schedule of the SDE."""
    p = Protocol(n_test=10_000)
    d = 5
    model = DriftScore(Exact(p.a, p.sigma, False), Exact(p.a, p.sigma, True))
    x0 = torch.randn(p.n_test, d, generator=gen(2)) - p.a
    cell = Cell("sf2m" if sampler == "sde" else "sbcfm", "exact", d, 42)
    kl = kl_curve(sample_cell(model, x0, cell, p, sampler, diffusion), p)
    assert len(kl) == 21
    floor = kl_floor(d, p.n_test)
    assert max(kl) < 2.5 * floor, kl  # seen: <= 1.6 x floor (0.001 at d = 5)
    # the wrong sign of the score term would be far off
    flipped = DriftScore(Exact(p.a, p.sigma, False), _Neg(Exact(p.a, p.sigma, True)))
    if sampler == "sde":
        bad = kl_curve(sample_cell(flipped, x0, cell, p, sampler, diffusion), p)
        assert bad[-1] > 0.5  # seen: 4.3 (constant), 1.9 (tapered: less noise to undo)


def test_score_check_is_one_for_the_exact_score_and_sees_a_shrunk_one():
    """The slope fraction of the exact score is 1 and its error 0 at every t; a score shrunk
    by 0.9 scores 0.9 and error 0.01 (exactly: the check is linear in s)."""
    p = Protocol()
    exact = DriftScore(Exact(p.a, p.sigma, False), Exact(p.a, p.sigma, True))

    class Shrunk(nn.Module):
        def forward(self, x, t):
            return 0.9 * Exact(p.a, p.sigma, True)(x, t)

    shrunk = DriftScore(Exact(p.a, p.sigma, False), Shrunk())
    for t in (0.0, 0.3, 1.0):
        slope, error = score_check(exact, t, 5, p, gen(4))
        assert slope == pytest.approx(1.0, abs=1e-6) and error < 1e-12
        slope, error = score_check(shrunk, t, 5, p, gen(4))
        assert slope == pytest.approx(0.9, abs=1e-6) and error == pytest.approx(0.01, rel=1e-5)


class _Neg(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return -self.inner(x, t)


# --------------------------------------------------------------------- the command
def test_quick_bench_writes_records_page_and_figure_then_caches(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--quick", "--dims", "2", "--runs", str(runs), "--out", str(out)]
    assert main(argv) == 0
    records = json.loads((out / "gaussian_sb.json").read_text())
    assert len(records) == 4
    assert {(r["method"], r["coupling"]) for r in records} == {
        ("sbcfm", "exact"), ("sbcfm", "entropic"), ("sf2m", "exact"), ("sf2m", "entropic")
    }
    for r in records:
        assert list(r)[:6] == ["method", "coupling", "dim", "seed", "kl_t1", "kl_mean"]
        assert r["dim"] == 2 and r["seed"] == 42 and len(r["kl_t"]) == 11
        assert r["kl_t1"] == r["kl_t"][-1] and r["kl_mean"] == pytest.approx(np.mean(r["kl_t"]))
        assert 0 <= r["kl_t1"] < 1 and r["train_seconds"] > 0
        assert r["best_step"] == r["steps"] == 60  # the final (EMA) weights are tested
    page = (out / "gaussian_sb.md").read_text()
    assert "the final EMA weights tested" in page
    assert "SB-CFM, paper" in page and "otcfm bench gaussian-sb --quick" in page
    assert (out / "gaussian_sb" / "kl_vs_t.png").stat().st_size > 5_000
    for r in records:  # SF2M cells check their score and the tapered SDE at every grid time
        assert (len(r.get("score_slope_t", [])) == 11) is (r["method"] == "sf2m")
        assert (len(r.get("kl_tapered_t", [])) == 11) is (r["method"] == "sf2m")
        if r["method"] == "sf2m":
            assert r["kl_tapered_t1"] == r["kl_tapered_t"][-1] != r["kl_t1"]
    assert "## SF2M's learned score against the exact one" in page
    assert "## SF2M's SDE with a diffusion that vanishes at the snapshots" in page
    assert "Tapered SDE minus the same models' ODE" in page
    assert (out / "gaussian_sb" / "score_vs_t.png").stat().st_size > 5_000
    capsys.readouterr()
    assert main(argv) == 0  # every cell cached now
    assert capsys.readouterr().out.count("(cached)") == 4
    again = json.loads((out / "gaussian_sb.json").read_text())
    assert [r["kl_t1"] for r in again] == [r["kl_t1"] for r in records]


def test_report_only_rewrites_the_page_from_the_records(tmp_path, capsys):
    """--report-only trains nothing: the page is rebuilt from gaussian_sb.json and
    gaussian_sb_run.json alone (the run folder is deleted first), and probe numbers appear
    only through the probes record."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(["--quick", "--dims", "2", "--seeds", "1", "--methods", "sbcfm",
                 "--couplings", "exact", "--runs", str(runs), "--out", str(out)]) == 0
    first = (out / "gaussian_sb.md").read_text()
    records = json.loads((out / "gaussian_sb.json").read_text())
    for path in sorted(runs.rglob("*"), reverse=True):  # nothing cached may be used
        path.unlink() if path.is_file() else path.rmdir()
    probes = {"probes": {"sbcfm_budget": {
        "command": "otcfm bench gaussian-sb --steps N", "date": "2000-01-02",
        "source": "a test", "kl_t1_by_steps": {"1000": [0.1234, 0.0042]},
        "best_seed_kl_t1_at_5000": 0.0777}}}
    (out / PROBES_FILE).write_text(json.dumps(probes))
    assert main(["--report-only", "--out", str(out)]) == 0
    page = (out / "gaussian_sb.md").read_text()
    assert not runs.exists() or not any(runs.iterdir())
    assert "Rendered from gaussian_sb.json" in page
    assert "0.1234 ± 0.0042 at N = 1,000" in page and "0.0777" in page
    assert "transcribed" in page and "2000-01-02" in page
    # every other line of the page is the one the run wrote
    kept = [line for line in first.splitlines() if line not in page.splitlines()]
    assert kept == [], kept
    assert fmt(records[0]['kl_t1'], 0.0) in page
    with pytest.raises(ValueError, match="gaussian_sb.json"):
        main(["--report-only", "--out", str(tmp_path / "empty")])


def test_bad_arguments(tmp_path):
    base = ["--quick", "--runs", str(tmp_path)]
    with pytest.raises(ValueError, match="--dims must be comma-separated integers"):
        main([*base, "--dims", "2,x"])
    with pytest.raises(ValueError, match="valid: sbcfm, sf2m"):
        main([*base, "--methods", "otcfm"])
    with pytest.raises(ValueError, match="--sigma must be > 0"):
        main([*base, "--sigma", "0"])


def test_score_drift_error_closed_form():
    """(g^2 / 2) sqrt(error / v_t): with sigma 1, a relative error 0.04 at t = 0 (v = 1) is a
    drift error 0.1 for the constant g and 0 for the tapered one; at t = 1/2 both are
    sqrt(0.04 / v) / 2 (the tapered g equals sigma there)."""
    from otcfm.experiments.gaussian_sb_report import score_drift_error

    times = [0.0, 0.5, 1.0]
    v_half = sb_marginal(0.5, 0.1, 1.0)[1]
    const = score_drift_error([0.04] * 3, times, 0.1, 1.0, "constant")
    taper = score_drift_error([0.04] * 3, times, 0.1, 1.0, "tapered")
    np.testing.assert_allclose(const, [0.1, 0.1 / math.sqrt(v_half), 0.1], rtol=1e-12)
    np.testing.assert_allclose(taper, [0.0, 0.1 / math.sqrt(v_half), 0.0], rtol=1e-12,
                               atol=1e-15)


def test_page_links_a_run_at_another_budget_kept_below_it(tmp_path):
    """A run of the bench written to OUT/gaussian_sb/NAME/ gets one line on OUT's page, its
    numbers read from its own records."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    sub = out / "gaussian_sb" / "longer"
    common = ["--quick", "--dims", "5", "--seeds", "1", "--methods", "sf2m", "--couplings",
              "exact"]
    assert main([*common, "--steps", "80", "--runs", str(runs / "a"), "--out", str(sub)]) == 0
    assert main([*common, "--runs", str(runs / "b"), "--out", str(out)]) == 0
    page = (out / "gaussian_sb.md").read_text()
    (rec,) = json.loads((sub / "gaussian_sb.json").read_text())
    line = next(x for x in page.splitlines() if x.startswith("- The same bench at 80 steps"))
    assert "[page](gaussian_sb/longer/gaussian_sb.md)" in line
    assert f"is {fmt(rec['kl_t1'])} with the constant noise" in line
    assert f"{fmt(rec['kl_tapered_t1'])} with the tapered one" in line


def test_the_learning_rate_schedule_reaches_the_runs_and_the_cache_key(tmp_path):
    """The protocol's schedule (cosine by default, --schedule constant) is the run config's
    optim.schedule, and cells under another schedule are not reused from the cache."""
    from otcfm.experiments.gaussian_sb import cell_config, write_data
    from otcfm.experiments.gaussian_sb_cli import build_parser, protocol_from_args

    cosine = protocol_from_args(build_parser().parse_args([]))
    constant = protocol_from_args(build_parser().parse_args(["--schedule", "constant"]))
    assert (cosine.schedule, constant.schedule) == ("cosine", "constant")
    cell = Cell("sf2m", "exact", 2, 42)
    for p in (cosine, constant):
        cfg = cell_config(cell, p, tmp_path, write_data(tmp_path, 2, 42, p))
        assert cfg.optim.schedule == p.schedule and cfg.optim.steps == p.steps
    assert cosine.fingerprint() != constant.fingerprint()
    best = protocol_from_args(build_parser().parse_args(["--checkpoint", "best"]))
    assert (cosine.checkpoint, best.checkpoint) == ("final", "best")
    assert best.fingerprint() != cosine.fingerprint()
    for bad in (["--schedule", "linear"], ["--checkpoint", "ema"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)


def test_the_page_compares_the_score_with_its_constant_rate_baseline(tmp_path):
    """A constant-rate run of the same protocol kept in OUT/gaussian_sb/NAME/ is the "before"
    of the score comparison: its slope fractions and KL beside the cosine run's, on the page
    and (dotted) in the redrawn figure; a run that differs in anything else is not."""
    out = tmp_path / "out"
    base = ["--quick", "--dims", "2", "--seeds", "1", "--methods", "sf2m", "--couplings",
            "exact"]
    assert main([*base, "--runs", str(tmp_path / "a"), "--out", str(out)]) == 0
    assert "Before and after" not in (out / "gaussian_sb.md").read_text()
    other = out / "gaussian_sb" / "other"  # another budget: not a baseline
    assert main([*base, "--steps", "7", "--schedule", "constant", "--runs",
                 str(tmp_path / "b"), "--out", str(other)]) == 0
    main(["--report-only", "--out", str(out)])
    assert "Before and after" not in (out / "gaussian_sb.md").read_text()
    before = out / "gaussian_sb" / "constant"
    assert main([*base, "--schedule", "constant", "--runs", str(tmp_path / "c"), "--out",
                 str(before)]) == 0
    figure = out / "gaussian_sb" / "score_vs_t.png"
    figure.unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    page = (out / "gaussian_sb.md").read_text()
    assert "Before and after" in page and "](gaussian_sb/constant/gaussian_sb.md)" in page
    old = json.loads((before / "gaussian_sb.json").read_text())[0]
    new = json.loads((out / "gaussian_sb.json").read_text())[0]
    for label, r in (("constant", old), ("cosine", new)):
        row = [line for line in page.splitlines() if line.startswith(f"| {label} | exact | 2 |")]
        assert len(row) == 1 and row[0].endswith(f"| {fmt(r['kl_t1'], 0.0)} |"), row
        assert fmt(r["score_slope_t"][0], 0.0) in row[0]
    assert old["kl_t1"] != new["kl_t1"]
    assert figure.stat().st_size > 5_000  # redrawn by --report-only
    assert "learning rate decayed to 0 by a cosine over the steps" in page


def test_exact_bridge_kl_matches_the_general_gaussian_kl():
    """The exact coupling's own bridge N((2t-1) a 1, (1 + sigma^2 t(1-t)) I) against q_t: the
    closed form equals gaussian_kl with that mean and covariance, and is 0 at t = 0 and 1."""
    from otcfm.experiments.gaussian_sb_report import exact_bridge_kl

    a, sigma, d = 0.1, 1.0, 5
    for t in (0.0, 0.3, 0.5, 1.0):
        m, v = sb_marginal(t, a, sigma)
        cov = (1 + sigma**2 * t * (1 - t)) * torch.eye(d, dtype=torch.float64)
        mean = torch.full((d,), (2 * t - 1) * a, dtype=torch.float64)
        want = gaussian_kl(mean, cov, torch.full((d,), m, dtype=torch.float64), v)
        assert exact_bridge_kl(t, d, a, sigma) == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert exact_bridge_kl(0.0, d, a, sigma) == 0.0 == exact_bridge_kl(1.0, d, a, sigma)
