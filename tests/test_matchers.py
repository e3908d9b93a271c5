"""Tests for otcfm.matchers: the contract over every preset, conditions, OT pairing, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from otcfm.couplings import (
    ApproxOT,
    EntropicOT,
    ExactOT,
    Independent,
    Pairing,
    coupling,
    coupling_spec,
)
from otcfm.matchers import MATCHERS, FlowMatcher, matcher
from otcfm.paths import (
    BrownianBridgePath,
    GaussianTargetPath,
    LinearPath,
    PathSample,
    TrigPath,
)
from otcfm.time_samplers import LogitNormalTime, StratifiedUniformTime, UniformTime

NAMES = ["fm", "icfm", "otcfm", "rf", "sbcfm", "vpcfm"]
SHAPES = [(12, 1), (12, 2), (12, 3, 4, 4)]
DTYPES = [torch.float32, torch.bfloat16]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(shape, dtype=torch.float32, seed=0):
    g = _gen(seed)
    x0 = torch.randn(shape, generator=g)
    x1 = 3.0 + 0.5 * torch.randn(shape, generator=g)
    return x0.to(dtype), x1.to(dtype)


class TinyModel(nn.Module):
    """Flattens x, concatenates t (and an optional class embedding), one linear layer."""

    def __init__(self, event_shape, n_classes: int = 0) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        d = math.prod(self.event_shape)
        self.lin = nn.Linear(d + 1, d)
        self.emb = nn.Embedding(n_classes, d) if n_classes else None
        self.seen: dict = {}

    def forward(self, x, t, **cond):
        self.seen = {"x": x, "t": t, **cond}
        assert t.dtype == torch.float32 and t.shape == (x.shape[0],)
        h = self.lin(torch.cat([x.float().flatten(1), t[:, None]], 1))
        if self.emb is not None:
            h = h + self.emb(cond["y"])
        return h.reshape(x.shape).to(x.dtype)


def test_registry_lists_every_preset():
    # sf2m needs a model with a score head; its contract is tested in test_sf2m.py
    assert MATCHERS.names() == sorted([*NAMES, "sf2m"])


# --------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contract(name, shape, dtype):
    m = matcher(name)
    assert isinstance(m, FlowMatcher) and m.name == name
    x0, x1 = _data(shape, dtype)
    b = shape[0]
    s = m.sample(x0, x1, generator=_gen(1))
    assert isinstance(s, PathSample)
    assert s.t.shape == (b,) and s.t.dtype == torch.float32
    assert bool(((s.t >= 0) & (s.t <= 1)).all())
    for field in ("x0", "x1", "xt", "ut", "noise"):
        value = getattr(s, field)
        assert value.shape == shape and value.dtype == dtype, field
        assert bool(torch.isfinite(value).all()), field
    assert s.cond is None

    model = TinyModel(shape[1:])
    loss = m.loss(model, x0, x1, generator=_gen(2))
    assert loss.shape == () and loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert float(p.grad.abs().sum()) > 0

    # same seed, same sample (coupling, t and noise all from the generator)
    a, c = m.sample(x0, x1, generator=_gen(7)), m.sample(x0, x1, generator=_gen(7))
    for field in ("t", "x0", "x1", "xt", "ut", "noise"):
        torch.testing.assert_close(getattr(a, field), getattr(c, field), rtol=0, atol=0)
    d = m.sample(x0, x1, generator=_gen(8))
    assert not torch.equal(a.t, d.t)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_mse_of_the_sample(name):
    m = matcher(name)
    x0, x1 = _data((10, 2))
    model = TinyModel((2,))
    s = m.sample(x0, x1, generator=_gen(3))
    with torch.no_grad():
        expected = ((model(s.xt, s.t) - s.ut) ** 2).mean()
        got = m.loss(model, x0, x1, generator=_gen(3))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.seen["x"], s.xt)


# --------------------------------------------------------------------- conditions
def _labelled(shape, seed=0):
    """x1 whose row k is recognisable: labels y = k are a deterministic function of the row."""
    x0, x1 = _data(shape, seed=seed)
    b = shape[0]
    x1 = x1.clone()
    x1.view(b, -1)[:, 0] = torch.arange(b, dtype=x1.dtype) * 0.25
    return x0, x1


def _label_of(x1_rows):
    return torch.round(x1_rows.flatten(1)[:, 0].float() / 0.25).long()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(16, 2), (16, 3, 4, 4)], ids=str)
def test_conditions_follow_the_pairing(name, shape):
    x0, x1 = _labelled(shape, seed=4)
    b = shape[0]
    y = torch.arange(b)
    names = [f"cell{k}" for k in range(b)]
    meta = {"id": y.clone() * 10, "info": {"name": names}}
    s = matcher(name).sample(x0, x1, generator=_gen(5), y=y, meta=meta)
    assert set(s.cond) == {"y", "meta"}
    torch.testing.assert_close(s.cond["y"], _label_of(s.x1), rtol=0, atol=0)
    torch.testing.assert_close(s.cond["meta"]["id"], 10 * _label_of(s.x1), rtol=0, atol=0)
    assert s.cond["meta"]["info"]["name"] == [f"cell{k}" for k in _label_of(s.x1).tolist()]
    # and the model receives them, aligned with xt
    model = TinyModel(shape[1:], n_classes=b)
    m = matcher(name)
    m.loss(model, x0, x1, generator=_gen(6), y=y).backward()
    s = m.sample(x0, x1, generator=_gen(6), y=y)
    torch.testing.assert_close(model.seen["y"], s.cond["y"], rtol=0, atol=0)
    assert model.emb.weight.grad is not None


def test_otcfm_conditions_are_reordered():
    """With an OT coupling the labels really move (not the identity pairing)."""
    x0, x1 = _labelled((32, 2), seed=7)
    s = matcher("otcfm").sample(x0, x1, generator=_gen(0), y=torch.arange(32))
    assert not torch.equal(s.cond["y"], torch.arange(32))
    torch.testing.assert_close(s.cond["y"], _label_of(s.x1), rtol=0, atol=0)


# --------------------------------------------------------------------- OT pairing
def _cost(a, b):
    return float(((a.double() - b.double()) ** 2).flatten(1).sum(1).sum())


@pytest.mark.parametrize("shape", [(24, 2), (20, 3, 4, 4)], ids=str)
def test_otcfm_pairs_are_an_optimal_permutation(shape):
    x0, x1 = _labelled(shape, seed=8)
    b = shape[0]
    s = matcher("otcfm").sample(x0, x1, generator=_gen(9))
    # x1 rows: a permutation of the input rows
    j = _label_of(s.x1)
    assert sorted(j.tolist()) == list(range(b))
    torch.testing.assert_close(s.x1, x1[j], rtol=0, atol=0)
    # x0 rows: a permutation too
    match = (s.x0.flatten(1)[:, None, :] == x0.flatten(1)[None, :, :]).all(-1)
    assert bool((match.sum(1) == 1).all()) and bool((match.sum(0) == 1).all())
    # lower than the identity pairing, and equal to the optimal assignment cost
    cost = ((x0.flatten(1)[:, None].double() - x1.flatten(1)[None].double()) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost.numpy())
    best = float(cost.numpy()[rows, cols].sum())
    assert _cost(s.x0, s.x1) < _cost(x0, x1)
    assert math.isclose(_cost(s.x0, s.x1), best, rel_tol=1e-6)


def test_otcfm_targets_have_lower_variance_than_icfm():
    """The paper's claim: OT pairing lowers the variance of the regression target u = x1 - x0.

    x0 ~ N(0, I), x1 ~ N(3, 0.25 I): independent pairs give Var u = 1.25 per coordinate, the
    OT map x1 = 3 + x0 / 2 gives 0.25 (a minibatch plan lands close to it).
    """
    x0, x1 = _data((128, 2), seed=10)
    ot = matcher("otcfm", sigma=0.0).sample(x0, x1, generator=_gen(0))
    ind = matcher("icfm", sigma=0.0).sample(x0, x1, generator=_gen(0))
    var_ot, var_ind = float(ot.ut.var(0).sum()), float(ind.ut.var(0).sum())
    assert math.isclose(var_ind, 2.5, rel_tol=0.25)
    assert var_ot < 0.4 * var_ind


# --------------------------------------------------------------------- presets
def test_preset_parts_and_defaults():
    m = matcher("icfm")
    assert m.path == LinearPath(0.1) and isinstance(m.coupling, Independent)
    assert m.time_sampler == UniformTime()
    m = matcher("otcfm", sigma=0.0)
    assert m.path == LinearPath(0.0) and isinstance(m.coupling, ExactOT)
    m = matcher("sbcfm")
    assert m.path == BrownianBridgePath(1.0) and isinstance(m.coupling, EntropicOT)
    assert math.isclose(m.coupling.reg, 2.0)
    assert math.isclose(matcher("sbcfm", sigma=0.5).coupling.reg, 0.5)
    assert math.isclose(matcher("sbcfm", sigma=0.5, coupling="entropic").coupling.reg, 0.5)
    assert isinstance(matcher("sbcfm", coupling="exact").coupling, ExactOT)
    assert isinstance(matcher("sbcfm", sigma=0.0, coupling="exact").coupling, ExactOT)
    custom = EntropicOT(reg=0.3)
    assert matcher("sbcfm", coupling=custom).coupling is custom
    assert matcher("fm").path == GaussianTargetPath(sigma_min=0.1)
    assert isinstance(matcher("fm").coupling, Independent)
    assert matcher("vpcfm").path == TrigPath(0.1)
    assert isinstance(matcher("vpcfm", coupling="exact").coupling, ExactOT)
    exact = ExactOT()
    assert matcher("otcfm", coupling=exact).coupling is exact


def test_coupling_spec_reads_options_as_literals():
    assert coupling_spec("exact") == ("exact", {})
    name, kw = coupling_spec("exact: sampling=plan, replace=False,n_pairs=None ,x=1e-3,y=7,z='a b'")
    assert name == "exact"
    assert kw == {"sampling": "plan", "replace": False, "n_pairs": None, "x": 1e-3, "y": 7,
                  "z": "a b"}
    assert type(kw["y"]) is int


@pytest.mark.parametrize("bad", ["exact:", "exact:sampling", "exact:=plan", "exact:a=",
                                 "exact:a=1,a=2", "exact:1a=2"])
def test_coupling_spec_rejects_malformed_options(bad):
    with pytest.raises(ValueError, match="key=value"):
        coupling_spec(bad)


def test_coupling_spec_unknown_name_or_option():
    with pytest.raises(ValueError, match="valid names"):
        coupling_spec("exakt:tol=1")
    with pytest.raises(TypeError, match="frobnicate.*key=value"):
        matcher("otcfm", coupling="exact:frobnicate=1")


def test_coupling_by_spec_equals_the_instance():
    x0, x1 = _data((32, 2))
    by_spec = coupling("exact:sampling=plan,replace=True")
    direct = ExactOT(sampling="plan", replace=True)
    a, b = by_spec(x0, x1, generator=_gen(3)), direct(x0, x1, generator=_gen(3))
    assert torch.equal(a.i, b.i) and torch.equal(a.j, b.j)
    assert coupling("approx:tol=0.001", tol=0.002).tol == 0.002  # keywords win
    m = matcher("otcfm", coupling="approx:tol=0.001")
    assert isinstance(m.coupling, ApproxOT) and m.coupling.tol == 0.001


@pytest.mark.parametrize("name", ["sbcfm", "sf2m"])
def test_entropic_spec_keeps_the_bridge_reg(name):
    m = matcher(name, sigma=0.5, coupling="entropic:tol=1e-4")
    assert isinstance(m.coupling, EntropicOT)
    assert math.isclose(m.coupling.reg, 0.5) and m.coupling.tol == 1e-4
    assert math.isclose(matcher(name, sigma=0.5, coupling="entropic:reg=0.3").coupling.reg, 0.3)


def test_sbcfm_zero_sigma_with_explicit_entropic_reg():
    assert math.isclose(matcher("sbcfm", sigma=0.0, coupling="entropic:reg=0.3").coupling.reg, 0.3)


def test_time_sampler_by_name_or_instance():
    assert matcher("icfm", time_sampler="stratified").time_sampler == StratifiedUniformTime()
    ts = LogitNormalTime(0.0, 2.0)
    m = matcher("icfm", time_sampler=ts)
    assert m.time_sampler is ts
    # Independent pairs in order and draws nothing, so t is the sampler's first draw
    s = m.sample(*_data((8, 2)), generator=_gen(0))
    torch.testing.assert_close(s.t, ts(8, generator=_gen(0)), rtol=0, atol=0)


def test_custom_flow_matcher_and_repr():
    m = FlowMatcher(TrigPath(0.2))
    assert isinstance(m.coupling, Independent) and m.time_sampler == UniformTime()
    assert m.name == "custom"
    r = repr(matcher("otcfm", sigma=0.2))
    assert r.startswith("FlowMatcher(name='otcfm'") and "LinearPath(sigma=0.2)" in r
    assert "ExactOT" in r and "UniformTime()" in r


# --------------------------------------------------------------------- errors
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="otcfm") as info:
        matcher("ot-cfm")
    assert all(n in str(info.value) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwarg_is_named(name):
    with pytest.raises(TypeError, match="sigmaa"):
        matcher(name, sigmaa=0.1)


@pytest.mark.parametrize("name", ["icfm", "fm"])
def test_coupling_not_accepted_where_meaningless(name):
    with pytest.raises(TypeError, match="coupling"):
        matcher(name, coupling="exact")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_bad_sigma(name, sigma):
    with pytest.raises(ValueError, match="sigma"):
        matcher(name, sigma=sigma)


def test_sbcfm_zero_sigma_needs_a_coupling():
    with pytest.raises(ValueError, match="sigma > 0"):
        matcher("sbcfm", sigma=0.0)


def test_bad_parts():
    with pytest.raises(TypeError, match="time_sampler"):
        matcher("icfm", time_sampler=0.5)
    with pytest.raises(ValueError, match="valid names"):
        matcher("icfm", time_sampler="cosine")
    with pytest.raises(ValueError, match="valid names"):
        matcher("otcfm", coupling="magic")
    with pytest.raises(TypeError, match="coupling"):
        matcher("otcfm", coupling=3)
    with pytest.raises(TypeError, match="pass an instance"):
        matcher("otcfm", coupling="unbalanced")
    with pytest.raises(TypeError, match="path"):
        FlowMatcher("linear")
    with pytest.raises(TypeError, match="time_sampler"):
        FlowMatcher(LinearPath(), time_sampler="uniform")


@pytest.mark.parametrize("name", NAMES)
def test_bad_data(name):
    m = matcher(name)
    x0, x1 = _data((8, 2))
    bad = x1.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.sample(x0, bad)
    with pytest.raises(ValueError, match="NaN"):
        m.loss(TinyModel((2,)), bad, x1)
    with pytest.raises(ValueError, match="trailing shape"):
        m.sample(x0, x1[:, :1])
    with pytest.raises(ValueError, match="one row per sample"):
        m.sample(x0, x1, y=torch.arange(7))
    with pytest.raises(ValueError, match="model output"):
        m.loss(lambda x, t: x[:, :1], x0, x1)


def test_fm_warns_for_a_non_gaussian_source():
    x0 = 4.0 + torch.randn(128, 2, generator=_gen(0))
    x1 = torch.randn(128, 2, generator=_gen(1))
    with pytest.warns(RuntimeWarning, match="standard normal"):
        matcher("fm").sample(x0, x1, generator=_gen(2))


def test_no_global_rng_use():
    """Seeded sampling neither depends on nor advances the global torch / numpy RNGs."""
    x0, x1 = _data((16, 2))
    np_state = np.random.get_state()
    with torch.random.fork_rng():
        for name in NAMES:
            torch.manual_seed(0)
            a = matcher(name).sample(x0, x1, generator=_gen(11))
            torch.manual_seed(123)
            np.random.seed(123)
            before_t, before_np = torch.get_rng_state(), np.random.get_state()[1].copy()
            b = matcher(name).sample(x0, x1, generator=_gen(11))
            torch.testing.assert_close(a.xt, b.xt, rtol=0, atol=0)
            assert torch.equal(torch.get_rng_state(), before_t), name
            assert np.array_equal(np.random.get_state()[1], before_np), name
    np.random.set_state(np_state)


# ---------------------------------------------------------------------- the pipeline's route
@pytest.mark.parametrize("name", sorted(MATCHERS.names()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sampling_a_library_pairing_without_checks_draws_the_same_sample(name, dtype):
    """The training pipeline's unchecked route equals the public ``sample(pair)``."""
    fm = matcher(name)
    x0, x1 = _data((12, 3), dtype)
    pair = fm.coupling(x0, x1, generator=_gen(1), cond1={"y": torch.arange(12)})
    want = fm.sample(pair, generator=_gen(2))
    got = fm._sample_pairing(pair, _gen(2))
    for field in ("t", "x0", "x1", "xt", "ut", "noise"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert torch.equal(got.cond["y"], want.cond["y"])


def test_a_matcher_that_samples_its_own_way_keeps_its_sample_on_the_pipeline_route():
    class Shifted(FlowMatcher):
        def sample(self, x0, x1=None, generator=None, **cond):
            s = super().sample(x0, x1, generator=generator, **cond)
            return PathSample(s.t, s.x0, s.x1, s.xt + 1, s.ut, s.noise, s.cond)

    fm = Shifted(LinearPath(0.1))
    x0, x1 = _data((12, 2))
    pair = fm.coupling(x0, x1)
    assert torch.equal(fm._sample_pairing(pair, _gen(3)).xt, fm.sample(pair, generator=_gen(3)).xt)


def test_public_sample_of_a_pairing_still_checks_the_points():
    fm = matcher("icfm")
    x0, x1 = _data((12, 2))
    pair = Independent()(x0, x1)
    x1[3, 0] = float("nan")  # the pairing holds x1 itself: spoiled after it was made
    with pytest.raises(ValueError, match="NaN or inf"):
        fm.sample(pair, generator=_gen(0))
    with pytest.raises(ValueError, match="shape"):
        fm.sample(Pairing(x0=x0, x1=x1[:6], i=pair.i, j=pair.j), generator=_gen(0))
