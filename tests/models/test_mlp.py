"""Tests for otcfm.models.mlp: calling convention, shapes/dtypes, parameter count, conditioning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otcfm.models import ACTIVATIONS, MLP, MODELS

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: a 2nd thread only spins

SHAPES = [(5, 1), (5, 2), (5, 3, 4, 4)]


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_output_shape_and_dtype(shape, dtype):
    model = MLP(shape[1:])
    x = randn(*shape, dtype=dtype)
    t = torch.rand(shape[0])
    v = model(x, t)
    assert v.shape == x.shape
    assert v.dtype == dtype
    assert torch.isfinite(v.float()).all()
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_input_matches_float32_input_to_bf16_precision():
    model = MLP(2, generator=torch.Generator().manual_seed(0))
    x = randn(16, 2)
    t = torch.rand(16, generator=torch.Generator().manual_seed(1))
    ref = model(x.bfloat16().float(), t)
    out = model(x.bfloat16(), t)
    assert torch.allclose(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_dim_as_int_or_event_shape():
    a = MLP(48, generator=torch.Generator().manual_seed(3))
    b = MLP((3, 4, 4), generator=torch.Generator().manual_seed(3))
    x = randn(4, 3, 4, 4)
    t = torch.full((4,), 0.5)
    assert torch.equal(a(x, t), b(x, t))
    assert a(x, t).shape == x.shape


def test_parameter_count_default_2d_mlp():
    # paper: in = 2 + 1 (time) -> 64 -> 64 -> 64 -> 2, SELU
    model = MLP(2)
    hand = (3 * 64 + 64) + (64 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2)
    assert hand == 8706
    assert sum(p.numel() for p in model.parameters()) == hand
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 64), (64, 64), (64, 64),
                                                                  (64, 2)]
    assert sum(isinstance(m, nn.SELU) for m in model.modules()) == 3


def test_parameter_count_without_time_and_custom_size():
    model = MLP(5, width=32, depth=2, time_input=False, out_dim=7)
    hand = (5 * 32 + 32) + (32 * 32 + 32) + (32 * 7 + 7)
    assert sum(p.numel() for p in model.parameters()) == hand
    v = model(randn(4, 5), torch.zeros(4))
    assert v.shape == (4, 7)


def test_time_is_used_and_scalar_times_broadcast():
    model = MLP(2, generator=torch.Generator().manual_seed(0))
    x = randn(6, 2)
    v0 = model(x, torch.zeros(6))
    v1 = model(x, torch.ones(6))
    assert (v0 - v1).abs().max() > 1e-4
    half = model(x, torch.full((6,), 0.5))
    assert torch.equal(model(x, 0.5), half)
    assert torch.equal(model(x, torch.tensor(0.5)), half)
    assert torch.equal(model(x, torch.full((6, 1), 0.5)), half)
    # per-sample times: row i only depends on t_i
    t = torch.linspace(0, 1, 6)
    rows = torch.stack([model(x[i : i + 1], t[i : i + 1])[0] for i in range(6)])
    assert torch.allclose(model(x, t), rows, atol=1e-6, rtol=0)


def test_time_input_false_ignores_t():
    model = MLP(2, time_input=False)
    x = randn(6, 2)
    assert torch.equal(model(x, torch.zeros(6)), model(x, torch.ones(6)))


def test_bad_time_shape():
    model = MLP(2)
    with pytest.raises(ValueError, match="t must have shape"):
        model(randn(6, 2), torch.zeros(5))
    with pytest.raises(TypeError, match="t must be"):
        model(randn(6, 2), "zero")


def test_wrong_feature_count():
    with pytest.raises(ValueError, match="dim=2"):
        MLP(2)(randn(4, 3), torch.zeros(4))


def test_class_conditioning_changes_output():
    model = MLP(2, num_classes=4, generator=torch.Generator().manual_seed(0))
    x = randn(8, 2)
    t = torch.rand(8, generator=torch.Generator().manual_seed(2))
    y0 = torch.zeros(8, dtype=torch.long)
    y1 = torch.full((8,), 3)
    v0, v1 = model(x, t, y=y0), model(x, t, y=y1)
    assert v0.shape == x.shape
    assert (v0 - v1).abs().max() > 1e-4
    assert torch.equal(model(x, t, y=y0), v0)
    # label embedding: 4 classes + the null class, 16 each
    hand = (2 + 1 + 16) * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 2 + 2 + 5 * 16
    assert sum(p.numel() for p in model.parameters()) == hand
    # gradients reach the label embedding
    model(x, t, y=y1).pow(2).sum().backward()
    assert model.label_emb.weight.grad[3].abs().sum() > 0
    assert model.label_emb.weight.grad[1].abs().sum() == 0


def test_class_conditioning_errors():
    model = MLP(2, num_classes=3)
    x, t = randn(4, 2), torch.zeros(4)
    with pytest.raises(TypeError, match="needs labels"):
        model(x, t)
    with pytest.raises(ValueError, match=r"\[0, 3\] \(3 = the null class\), got min 0 max 4"):
        model(x, t, y=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"got min -1 max 2"):
        model(x, t, y=torch.tensor([-1, 1, 2, 0]))
    with pytest.raises(ValueError, match="integer label"):
        model(x, t, y=torch.zeros(4))
    with pytest.raises(ValueError, match="integer label"):
        model(x, t, y=torch.zeros(3, dtype=torch.long))


def test_null_class_row():
    # num_classes=K: K + 1 embedding rows, label K is "no condition" and gets its own row
    model = MLP(2, num_classes=3, generator=torch.Generator().manual_seed(5))
    assert model.num_classes == 3 and model.null_class == 3
    assert model.label_emb.weight.shape == (4, 16)
    assert MLP(2).null_class is None
    x, t = randn(4, 2), torch.rand(4, generator=torch.Generator().manual_seed(1))
    v_null = model(x, t, y=torch.full((4,), 3))
    for k in range(3):
        assert (model(x, t, y=torch.full((4,), k)) - v_null).abs().max() > 1e-4
    model(x, t, y=torch.full((4,), 3)).sum().backward()
    grad = model.label_emb.weight.grad
    assert grad[3].abs().sum() > 0 and grad[:3].abs().sum() == 0


def test_null_class_row_drawn_last_keeps_the_other_weights():
    # replay the generator: the class rows are its first draws and the Linear layers' the next
    # (as before the null class existed); the null row comes after all of them
    g = torch.Generator().manual_seed(11)
    classes = torch.randn((3, 16), generator=g)
    linears = []
    for fan_in, fan_out in ((19, 64), (64, 64), (64, 64), (64, 2)):
        bound = fan_in**-0.5
        w = (2 * torch.rand((fan_out, fan_in), generator=g) - 1) * bound
        b = (2 * torch.rand((fan_out,), generator=g) - 1) * bound
        linears.append((w, b))
    null = torch.randn((16,), generator=g)
    model = MLP(2, num_classes=3, generator=torch.Generator().manual_seed(11))
    emb = model.label_emb.weight.detach()
    assert torch.equal(emb[:3], classes)
    assert torch.equal(emb[3], null)
    got = [m for m in model.net if isinstance(m, nn.Linear)]
    for mod, (w, b) in zip(got, linears, strict=True):
        assert torch.allclose(mod.weight.detach(), w, atol=1e-7, rtol=0)
        assert torch.allclose(mod.bias.detach(), b, atol=1e-7, rtol=0)


def test_unexpected_cond_key():
    with pytest.raises(TypeError, match=r"'label'.*accepted: none"):
        MLP(2)(randn(4, 2), torch.zeros(4), label=torch.zeros(4))
    with pytest.raises(TypeError, match=r"'z'.*accepted: y"):
        MLP(2, num_classes=2)(randn(4, 2), torch.zeros(4), y=torch.zeros(4, dtype=torch.long),
                              z=1)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(name):
    model = MLP(3, activation=name)
    assert sum(isinstance(m, ACTIVATIONS[name]) for m in model.modules()) == 3
    assert model(randn(2, 3), torch.zeros(2)).shape == (2, 3)


def test_bad_activation_and_sizes():
    with pytest.raises(ValueError, match="selu"):
        MLP(2, activation="swish")
    for kwargs in ({"dim": 0}, {"dim": 2, "width": 0}, {"dim": 2, "depth": 0},
                   {"dim": (3, 0)}, {"dim": 2, "num_classes": 0}, {"dim": 2.5}):
        with pytest.raises(ValueError):
            MLP(**kwargs)


def test_generator_makes_init_reproducible():
    a = MLP(2, num_classes=3, generator=torch.Generator().manual_seed(7))
    b = MLP(2, num_classes=3, generator=torch.Generator().manual_seed(7))
    c = MLP(2, num_classes=3, generator=torch.Generator().manual_seed(8))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                         strict=True))
    # same distribution as torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = a.net[0].weight.detach()
    bound = (1 / 19) ** 0.5  # fan_in = 2 + 1 (time) + 16 (label embedding)
    assert a.net[0].in_features == 19
    assert bound * 0.95 <= float(w.abs().max()) <= bound + 1e-7
    assert abs(float(w.mean())) < 0.1 * bound


def test_bf16_parameters_with_float32_input():
    model = MLP(2).to(torch.bfloat16)
    v = model(randn(4, 2), torch.zeros(4))
    assert v.dtype == torch.float32 and v.shape == (4, 2)


def test_gradients_flow_to_every_parameter():
    model = MLP(2)
    model(randn(8, 2), torch.rand(8)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_registry():
    assert "mlp" in MODELS
    model = MODELS.get("mlp", dim=2, width=16)
    assert isinstance(model, MLP) and model.width == 16
    with pytest.raises(ValueError, match="mlp"):
        MODELS.get("unet3000", dim=2)
