"""Tests for otcfm.models.unet: layout (parameter counts by hand), presets, the calling
convention, class conditions with the null class, init, gradients and option checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from otcfm.matchers import matcher
from otcfm.models import MLP, MODELS, UNET_PRESETS, UNet
from otcfm.models.unet import _Attention, timestep_embedding
from otcfm.sampling import Guided, integrate

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: a 2nd thread only spins

# a UNet small enough for many tests: 8x8 -> 4x4, 8 and 16 channels, 4 groups
TINY = {
    "channels": 8,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (4,),
    "num_head_channels": 8,
    "norm_groups": 4,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=gen(seed)).to(dtype)


@torch.no_grad()
def wake(model: nn.Module, seed: int = 1) -> nn.Module:
    """Move every parameter off its init (as training would): the zero-initialised convs would
    otherwise make every output exactly 0."""
    g = gen(seed)
    for p in model.parameters():
        p.add_(0.2 * torch.randn(p.shape, generator=g).to(p.dtype))
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ layout
def test_cifar10_preset_has_the_papers_35_7_m_parameters():
    model = UNet.preset("cifar10")
    n = n_params(model)
    assert abs(n - 35.7e6) <= 0.01 * 35.7e6, n
    assert n == 35_746_307
    assert model.dim == (3, 32, 32) and model.out_channels == 3 and model.dropout == 0.1
    assert model.num_classes is None and model.null_class is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 2 down + 3 up blocks at 16x16 (256 channels: 4 heads of 64), the middle block at 4x4
        ("cifar10", [(4, 256, 16)] * 5 + [(4, 256, 4)]),
        # 1 down + 2 up blocks at 4x4 (64 channels: 2 heads of 32), the middle block at 2x2
        ("digits", [(2, 64, 4)] * 3 + [(2, 64, 2)]),
        # 1 down + 2 up blocks and the middle block, all at 7x7
        ("fashion-mnist", [(2, 64, 7)] * 4),
    ],
)
def test_presets_attend_at_their_resolutions(name, expected):
    model = UNet.preset(name).eval()
    seen: list[tuple[int, int, int]] = []
    for mod in model.modules():
        if isinstance(mod, _Attention):
            mod.register_forward_hook(
                lambda m, args, out: seen.append((m.heads, *args[0].shape[1:3]))
            )
    with torch.no_grad():
        out = model(torch.zeros(1, *model.dim), torch.tensor([0.5]))
    assert out.shape == (1, *model.dim)
    assert sorted(seen) == sorted(expected)


def test_parameter_count_by_hand_for_a_tiny_unet():
    # conv(cin, cout, k), linear, GroupNorm (weight + bias)
    def conv(a, b, k):
        return a * b * k * k + b

    def lin(a, b):
        return a * b + b

    def gn(c):
        return 2 * c

    emb = 32  # 4 * channels

    def res(a, b, scale_shift):
        skip = 0 if a == b else conv(a, b, 1)
        return gn(a) + conv(a, b, 3) + lin(emb, (2 if scale_shift else 1) * b) + gn(b) + conv(
            b, b, 3
        ) + skip

    def attn(c):
        return gn(c) + lin(c, 3 * c) + lin(c, c)

    for scale_shift in (False, True):
        hand = (
            lin(8, emb) + lin(emb, emb)  # time embedding
            + 11 * emb  # 10 classes + the null class
            + conv(1, 8, 3)  # stem
            + res(8, 8, scale_shift) + conv(8, 8, 3)  # level 0 (8x8), conv downsample
            + res(8, 16, scale_shift) + attn(16)  # level 1 (4x4)
            + res(16, 16, scale_shift) + attn(16) + res(16, 16, scale_shift)  # middle
            + res(32, 16, scale_shift) + attn(16)  # up level 1: skips 16, 8
            + res(24, 16, scale_shift) + attn(16) + conv(16, 16, 3)  # conv upsample
            + res(24, 8, scale_shift) + res(16, 8, scale_shift)  # up level 0: skips 8, 8
            + gn(8) + conv(8, 1, 3)  # output
        )
        model = UNet((1, 8, 8), **TINY, num_classes=10, scale_shift_norm=scale_shift)
        assert n_params(model) == hand


def test_small_presets_fit_a_cpu():
    for name, dim in (("digits", (1, 8, 8)), ("fashion-mnist", (1, 28, 28))):
        model = UNet.preset(name)
        assert model.dim == dim
        assert 2e5 <= n_params(model) <= 2e6, (name, n_params(model))


# ------------------------------------------------------------------------------ convention
@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_presets_output_shape_and_dtype(name, dtype):
    model = wake(UNet.preset(name, num_classes=10, generator=gen(0)))
    x = randn(2, *model.dim, dtype=dtype)
    v = model(x, torch.rand(2, generator=gen(1)), y=torch.tensor([3, 10]))
    assert v.shape == x.shape and v.dtype == dtype
    assert torch.isfinite(v.float()).all() and v.float().abs().max() > 0
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_input_matches_float32_input_to_bf16_precision():
    model = wake(UNet((1, 8, 8), **TINY, generator=gen(0)))
    x, t = randn(4, 1, 8, 8), torch.rand(4, generator=gen(1))
    ref = model(x.bfloat16().float(), t)
    out = model(x.bfloat16(), t)
    assert torch.allclose(out.float(), ref, atol=3e-2 * float(ref.detach().abs().max()), rtol=0)


def test_bf16_parameters_with_float32_input():
    model = wake(UNet((1, 8, 8), **TINY, generator=gen(0))).to(torch.bfloat16)
    v = model(randn(3, 1, 8, 8), torch.rand(3))
    assert v.dtype == torch.float32 and v.shape == (3, 1, 8, 8) and torch.isfinite(v).all()


def test_time_forms_are_equivalent_and_rows_are_independent():
    model = wake(UNet((1, 8, 8), **TINY, generator=gen(0)))
    x = randn(5, 1, 8, 8)
    half = model(x, torch.full((5,), 0.5))
    assert torch.equal(model(x, 0.5), half)
    assert torch.equal(model(x, torch.tensor(0.5)), half)
    assert torch.equal(model(x, torch.full((5, 1), 0.5)), half)
    assert (model(x, 0.0) - model(x, 1.0)).abs().max() > 1e-3
    t = torch.linspace(0, 1, 5)
    rows = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(5)])
    assert torch.allclose(model(x, t), rows, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, torch.zeros(4))
    with pytest.raises(TypeError, match="t must be"):
        model(x, "zero")


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    emb = timestep_embedding(t, 8)
    freqs = [10000.0 ** (-k / 4) for k in range(4)]
    for i, ti in enumerate(t.tolist()):
        want = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        assert torch.allclose(emb[i].double(), torch.tensor(want, dtype=torch.float64),
                              atol=1e-6, rtol=0)
    assert timestep_embedding(t, 7).shape == (3, 7)
    assert torch.equal(timestep_embedding(t, 7)[:, 6], torch.zeros(3))


def test_attention_matches_a_naive_softmax_attention():
    block = _Attention(16, 2, groups=4).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(4), dtype=torch.float64))
    x = torch.randn(2, 16, 3, 3, generator=gen(5), dtype=torch.float64)
    h = nn.functional.group_norm(x.reshape(2, 16, 9), 4, block.norm.weight, block.norm.bias)
    qkv = torch.einsum("oc,bct->bot", block.qkv.weight[:, :, 0], h) + block.qkv.bias[:, None]
    q, k, v = qkv.reshape(2, 3, 2, 8, 9).unbind(1)  # (B, heads, 8, 9)
    w = torch.softmax(torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(8), dim=-1)
    a = torch.einsum("bhts,bhds->bhdt", w, v).reshape(2, 16, 9)
    out = torch.einsum("oc,bct->bot", block.proj.weight[:, :, 0], a) + block.proj.bias[:, None]
    want = x + out.reshape(x.shape)
    assert torch.allclose(block(x, torch.zeros(2, 1)), want, atol=1e-10, rtol=1e-10)


def test_wrong_image_shape():
    model = UNet((1, 8, 8), **TINY)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got \(2, 1, 4, 4\)"):
        model(randn(2, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape"):
        model(randn(2, 64), 0.5)


# ------------------------------------------------------------------------------ classes
def test_class_conditioning_and_the_null_class():
    model = wake(UNet((1, 8, 8), **TINY, num_classes=3, generator=gen(0)))
    assert model.num_classes == 3 and model.null_class == 3
    assert model.label_emb.weight.shape == (4, 32)
    x, t = randn(4, 1, 8, 8), torch.rand(4, generator=gen(2))
    outs = [model(x, t, y=torch.full((4,), k)) for k in range(4)]  # 3 = null
    for a in range(4):
        for b in range(a + 1, 4):
            assert (outs[a] - outs[b]).abs().max() > 1e-3
    mixed = model(x, t, y=torch.tensor([0, 3, 1, 3]))
    assert torch.allclose(mixed[1], outs[3][1], atol=1e-5, rtol=0)
    assert torch.allclose(mixed[2], outs[1][2], atol=1e-5, rtol=0)
    assert torch.equal(model(x, t, y=[0, 3, 1, 3]), mixed)  # a list of ints is fine


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_guidance_uses_the_models_null_class(kind):
    # sampling.Guided reads model.null_class; w = 0 is the conditional model, w > 0 mixes in
    # the null-class output: (1 + w) v(x | y) - w v(x | null)
    if kind == "unet":
        model = wake(UNet((1, 8, 8), **TINY, num_classes=3, generator=gen(0)))
    else:
        model = MLP((1, 8, 8), num_classes=3, generator=gen(0)).eval()
    x, t = randn(4, 1, 8, 8), torch.rand(4, generator=gen(2))
    y = torch.tensor([0, 1, 2, 3])
    cond, null = model(x, t, y=y), model(x, t, y=torch.full((4,), 3))
    assert Guided(model, 2.0).null_class == 3
    assert torch.equal(Guided(model, 0.0)(x, t, y=y), cond)
    want = 3.0 * cond - 2.0 * null
    assert torch.allclose(Guided(model, 2.0)(x, t, y=y), want, atol=1e-5, rtol=1e-5)


def test_class_condition_errors():
    model = UNet((1, 8, 8), **TINY, num_classes=3)
    x, t = randn(4, 1, 8, 8), torch.zeros(4)
    with pytest.raises(TypeError, match="UNet has num_classes=3 and needs labels y="):
        model(x, t)
    with pytest.raises(ValueError, match=r"\[0, 3\] \(3 = the null class\), got min 0 max 4"):
        model(x, t, y=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"got min -1"):
        model(x, t, y=torch.tensor([-1, 1, 2, 0]))
    with pytest.raises(ValueError, match="integer label"):
        model(x, t, y=torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model(x, t, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"'z'.*accepted: y"):
        model(x, t, y=torch.zeros(4, dtype=torch.long), z=1)
    with pytest.raises(TypeError, match=r"'y'.*accepted: none"):
        UNet((1, 8, 8), **TINY)(x, t, y=torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------ init, grads
def test_generator_makes_init_reproducible():
    a = UNet((1, 8, 8), **TINY, num_classes=2, generator=gen(7))
    b = UNet((1, 8, 8), **TINY, num_classes=2, generator=gen(7))
    c = UNet((1, 8, 8), **TINY, num_classes=2, generator=gen(8))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                         strict=True))
    # torch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 1 * 3 * 3
    w = a.stem.weight.detach()
    assert 0.9 / 3 <= float(w.abs().max()) <= 1 / 3 + 1e-7
    # a generator on the model's device draws the same numbers as sampling by hand
    g = gen(7)
    assert torch.allclose(a.time_embed[0].weight, (2 * torch.rand((32, 8), generator=g) - 1)
                          / math.sqrt(8), atol=1e-7, rtol=0)


def test_zero_init_output_and_first_gradients():
    # ADM's zero-init: the output conv, each residual block's second conv and each attention
    # projection start at 0, so a fresh network outputs exactly 0 and only the output conv's
    # weight and bias get non-zero gradients on the first backward (all others exactly 0)
    model = UNet.preset("digits", num_classes=10, generator=gen(0))
    x, t = randn(4, 1, 8, 8), torch.rand(4, generator=gen(1))
    y = torch.tensor([0, 10, 3, 3])
    zeroed = {n for n, p in model.named_parameters() if not p.any()}
    assert "out.2.weight" in zeroed and "middle.1.proj.weight" in zeroed
    assert "down.0.0.conv2.weight" in zeroed and "up.0.0.conv2.bias" in zeroed
    assert all(n.endswith(("conv2.weight", "conv2.bias", "proj.weight", "proj.bias",
                           "out.2.weight", "out.2.bias", ".bias")) for n in zeroed)
    v = model(x, t, y=y)
    assert torch.equal(v, torch.zeros_like(x))
    (v - x).pow(2).mean().backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert all(p.grad is not None for p in model.parameters())
    assert moved == {"out.2.weight", "out.2.bias"}


def test_trains_with_the_library_matcher_and_solver():
    # from the zero init, SGD steps with the CFM loss: step 1 moves only the output conv, from
    # step 3 on every parameter gets a gradient; the result integrates with the ODE solver
    model = UNet((1, 8, 8), **TINY, num_classes=3, generator=gen(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fm = matcher("otcfm", sigma=0.0)
    g = gen(1)
    x1, y = torch.randn(8, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    live = []
    for _ in range(3):
        opt.zero_grad()
        loss = fm.loss(model, torch.randn(8, 1, 8, 8, generator=g), x1, generator=g, y=y)
        loss.backward()
        assert loss.shape == () and torch.isfinite(loss)
        live.append({n for n, p in model.named_parameters() if p.grad.any()})
        opt.step()
    names = {n for n, _ in model.named_parameters()}
    assert live[0] == {"out.2.weight", "out.2.bias"}
    assert live[0] < live[1] < live[2] == names
    traj = integrate(model.eval(), torch.randn(8, 1, 8, 8, generator=g), method="euler",
                     steps=2, cond={"y": y})
    assert traj.xs.shape == (3, 8, 1, 8, 8) and traj.nfe == 2
    assert torch.isfinite(traj.xs).all()


def test_gradients_reach_every_parameter_once_off_the_init():
    model = wake(UNet.preset("digits", num_classes=10, generator=gen(0)))
    model.train()
    x, t = randn(8, 1, 8, 8), torch.rand(8, generator=gen(1))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 10])
    (model(x, t, y=y) - x).pow(2).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []
    grad = model.label_emb.weight.grad
    assert grad[[0, 1, 2, 3, 4, 5, 6, 10]].abs().sum(dim=1).min() > 0
    assert grad[[7, 8, 9]].abs().sum() == 0  # labels not in the batch


def test_gradient_matches_finite_differences_float64():
    model = wake(UNet((1, 8, 8), **TINY, num_classes=2, generator=gen(0))).double()
    x = torch.randn(3, 1, 8, 8, generator=gen(1), dtype=torch.float64)
    t = torch.rand(3, generator=gen(2), dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    params = list(model.parameters())
    direction = [torch.randn(p.shape, generator=gen(3), dtype=torch.float64) for p in params]

    def loss() -> torch.Tensor:
        return (model(x, t, y=y) - x).pow(2).mean()

    loss().backward()
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction, strict=True))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        up = float(loss())
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        down = float(loss())
    numeric = (up - down) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert abs(analytic - numeric) <= 1e-6 * abs(analytic)


def test_dropout_only_in_train_mode():
    model = wake(UNet((1, 8, 8), **TINY, dropout=0.5, generator=gen(0)))
    x, t = randn(2, 1, 8, 8), torch.full((2,), 0.3)
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    torch.manual_seed(0)
    assert (model(x, t) - model(x, t)).abs().max() > 1e-4


# ------------------------------------------------------------------------------ options
def test_presets_and_registry():
    assert set(UNET_PRESETS) == {"cifar10", "digits", "fashion-mnist"}
    model = UNet.preset("digits", num_classes=10, channels=64)
    assert model.channels == 64 and model.num_classes == 10
    with pytest.raises(ValueError, match="unknown UNet preset 'cifar'; valid names: cifar10"):
        UNet.preset("cifar")
    built = MODELS.get("unet", dim=(1, 8, 8), **TINY)
    assert isinstance(built, UNet) and "unet" in MODELS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": (8, 8)}, r"dim must be the image shape \(C, H, W\)"),
        ({"dim": (1, 8, 4)}, r"square image"),
        ({"dim": (0, 8, 8)}, r"dim\[0\] must be an integer >= 1, got 0"),
        ({"dim": (1, 6, 6), "channel_mult": (1, 2, 2)}, r"H = 6 must be divisible by .* = 4"),
        ({"channel_mult": ()}, "channel_mult must be a non-empty tuple"),
        ({"channel_mult": (1, 0)}, r"channel_mult\[i\] must be an integer >= 1, got 0"),
        ({"channel_mult": "12"}, "channel_mult must be a non-empty tuple"),
        ({"attention_resolutions": (16,)}, r"attention_resolutions \[16\] are not resolutions "
                                           r"of this network; it has 8, 4"),
        ({"attention_resolutions": 4}, "attention_resolutions must be a tuple of ints"),
        ({"num_res_blocks": 0}, "num_res_blocks must be an integer >= 1"),
        ({"channels": 10}, r"multiples of norm_groups=4; got channel counts \[10\]"),
        ({"num_head_channels": 5}, "num_head_channels=5 must divide the 16 channels"),
        ({"num_head_channels": None, "num_heads": 3}, "num_heads=3 must divide the 16"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, "dropout must be"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ({"num_classes": True}, "num_classes must be an integer >= 1, got True"),
        ({"scale_shift_norm": "yes"}, "scale_shift_norm must be True or False"),
        ({"time_scale": 0}, "time_scale must be a finite number > 0"),
        ({"time_scale": float("inf")}, "time_scale must be a finite number > 0"),
        ({"out_channels": 0}, "out_channels must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    options = {"dim": (1, 8, 8), **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        UNet(**options)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        UNet((1, 8, 8), 8)
