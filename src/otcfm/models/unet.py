"""ADM-style UNet velocity field for images.

ADM-style UNet velocity field for images (Dhariwal & Nichol 2021, "Diffusion models beat GANs
on image synthesis"; Nichol & Dhariwal 2021, "Improved denoising diffusion probabilistic
models"), with the library's calling convention ``model(x, t, **cond)`` and t in [0, 1].

Presets live in :data:`UNET_PRESETS` and are built with :meth:`UNet.preset`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import MODELS, batch_times, check_cond, check_labels, positive_int, uniform_

__all__ = ["UNET_PRESETS", "UNet", "timestep_embedding"]

#: Named UNet configurations for :meth:`UNet.preset`. ``cifar10`` is the paper's CIFAR-10 model
#: (docs/reference.md); ``digits`` (8x8, 1 channel) and ``fashion-mnist`` (28x28, 1 channel)
#: are small enough to train on a CPU.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dim": (3, 32, 32),
        "channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "num_heads": 4,
        "num_head_channels": 64,
        "dropout": 0.1,
        "scale_shift_norm": False,
        "time_scale": 1.0,  # the paper feeds t in [0, 1] unscaled
    },
    "digits": {
        "dim": (1, 8, 8),
        "channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (4,),
        "num_head_channels": 32,
        "dropout": 0.0,
    },
    "fashion-mnist": {
        "dim": (1, 28, 28),
        "channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (7,),
        "num_head_channels": 32,
        "dropout": 0.1,
    },
}


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal time embedding (B,) -> (B, dim).

    Sinusoidal embedding (B,) -> (B, dim): ``[cos(t f_k), sin(t f_k)]`` with frequencies
    ``f_k = max_period ** (-k / (dim // 2))``, k = 0 .. dim // 2 - 1 (a zero column pads odd
    dims), computed in float32. The transformer's / ADM's embedding; :class:`UNet` feeds it
    ``time_scale * t``.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32.

    Half-precision inputs are upcast, as ADM's GroupNorm32; float64 stays float64.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        return F.group_norm(
            x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps
        ).to(x.dtype)


def _resample(h: Tensor, how: str | None) -> Tensor:
    if how == "down":
        return F.avg_pool2d(h, kernel_size=2, stride=2)
    if how == "up":
        return F.interpolate(h, scale_factor=2.0, mode="nearest")
    return h


class _ResBlock(nn.Module):
    """Residual block with time and class conditioning.

    GroupNorm, SiLU, conv3x3 -> time/class embedding injected -> GroupNorm, SiLU, dropout,
    conv3x3 (zero-initialised), plus the skip (identity, or a 1x1 conv when the channel count
    changes). With scale-shift norm the embedding gives (scale, shift) and the second norm is
    ``norm(h) * (1 + scale) + shift``; without it the embedding is added before the norm.
    ``resample`` ("up" / "down") resamples both paths (nearest / average pooling) between the
    first activation and conv, as ADM's up/down residual blocks.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        emb_dim: int,
        *,
        dropout: float,
        groups: int,
        scale_shift: bool,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = resample
        self.norm1 = _GroupNorm32(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = _GroupNorm32(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip: nn.Module = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def zero_init(self) -> list[nn.Module]:
        return [self.conv2]

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(x))
        h = self.conv1(_resample(h, self.resample))
        x = _resample(x, self.resample)
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels.

    GroupNorm, 1x1 qkv projection, softmax attention per head (scale 1/sqrt(head channels)), 1x1
    output projection (zero-initialised), residual. The qkv channels are laid out as (q, k, v) x
    heads x head channels.
    """

    def __init__(self, channels: int, heads: int, *, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def zero_init(self) -> list[nn.Module]:
        return [self.proj]

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b, c = x.shape[:2]
        h = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = (z.transpose(-1, -2) for z in qkv.unbind(1))  # (B, heads, T, head channels)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj(out).reshape(x.shape)


class _Resample(nn.Module):
    """Down: conv3x3 stride 2 (or 2x2 average pooling); up: nearest x2 then conv3x3 (or not)."""

    def __init__(self, channels: int, how: str, *, conv: bool) -> None:
        super().__init__()
        self.how = how
        self.conv: nn.Module | None = None
        if conv:
            stride = 2 if how == "down" else 1
            self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.how == "down" and self.conv is not None:
            return self.conv(x)
        h = _resample(x, self.how)
        return h if self.conv is None else self.conv(h)


class _Block(nn.ModuleList):
    """Layers applied in turn, each called as ``layer(h, emb)``."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb)
        return h


def _choice(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@MODELS.register("unet")
class UNet(nn.Module):
    """ADM-style UNet velocity field ``v(x, t[, y])`` for images (B, C, H, W).

    Args:
        dim: the image shape (C, H, W), square (H == W), H divisible by 2 ** (len(channel_mult)-1).
        channels: base channel count (ADM's ``model_channels``); level i has
            ``channels * channel_mult[i]`` channels and runs at resolution H / 2 ** i.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: resolutions (in pixels, e.g. 16 for 16x16) that get a self-attention
            block after each residual block; each must be one the network has (H / 2 ** i).
        num_heads / num_head_channels: heads of each attention block; when ``num_head_channels`` is
            given it wins and the heads are channels / num_head_channels (ADM's rule).
        dropout: in each residual block, before its second conv.
        out_channels: default C (a velocity; no learned variance).
        num_classes: with ``num_classes=K``, ``model(x, t, y=labels)`` takes (B,) integer labels in
            [0, K]; K (``model.null_class``) is the null class, "no condition", used by
            classifier-free guidance. A learned embedding of K + 1 rows is added to the time
            embedding.
        scale_shift_norm: inject the embedding as a scale and shift of the second GroupNorm of each
            residual block (ADM's choice, the default); False adds it before the norm.
        resblock_updown: resample with residual blocks (ADM's BigGAN-style option) instead of
            ``conv_resample`` (conv3x3 stride 2 down, nearest x2 + conv3x3 up; without conv:
            average pooling / nearest only).
        norm_groups: GroupNorm groups (32 in ADM); every level's channel count must be a multiple.
        time_scale: the sinusoidal embedding sees ``time_scale * t``; 1000 maps t in [0, 1] onto
            the range of ADM's 1000 diffusion steps, so its frequencies (1 to 1e-4 per unit) span
            the time axis; ``time_scale=1`` feeds t unscaled.
        generator: parameters drawn from it (PyTorch's default init distributions), so the same
            seed gives the same network; otherwise torch's global RNG.

    Layout (ADM): t -> sinusoidal(channels) -> Linear, SiLU, Linear (4 * channels) [+ class
    embedding] = emb; x -> conv3x3 -> down levels [res blocks (+ attention), downsample] ->
    middle (res block, attention, res block) -> up levels [res blocks on the concatenated skip
    (+ attention), upsample] -> GroupNorm, SiLU, conv3x3 -> velocity. GroupNorm is computed
    in at least float32. Zero-initialised, as in ADM, whatever the generator: the output conv,
    the second conv of every residual block and every attention output projection. So a fresh
    network outputs exactly 0 and, on its first backward, only the output conv's weight and
    bias get non-zero gradients (the others get zeros, not None); the other zero-initialised
    layers get them from the second step and every parameter from the third.
    The network computes in its parameters' dtype and returns x's shape and dtype.
    """

    def __init__(
        self,
        dim: Sequence[int],
        *,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 4,
        num_head_channels: int | None = None,
        dropout: float = 0.0,
        out_channels: int | None = None,
        num_classes: int | None = None,
        scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        norm_groups: int = 32,
        time_scale: float = 1000.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(dim) if isinstance(dim, Sequence) and not isinstance(dim, str) else None
        if shape is None or len(shape) != 3:
            raise ValueError(f"dim must be the image shape (C, H, W), got {dim!r}")
        c, h, w = (positive_int(f"dim[{i}]", d) for i, d in enumerate(shape))
        if h != w:
            raise ValueError(f"dim must be a square image (H == W), got {shape}")
        if (
            not isinstance(channel_mult, Sequence)
            or isinstance(channel_mult, str)
            or len(channel_mult) == 0
        ):
            raise ValueError(
                f"channel_mult must be a non-empty tuple of ints, got {channel_mult!r}"
            )
        mult = tuple(positive_int("channel_mult[i]", m) for m in channel_mult)
        levels = len(mult)
        if h % 2 ** (levels - 1):
            raise ValueError(
                f"dim: H = {h} must be divisible by 2 ** (len(channel_mult) - 1) = "
                f"{2 ** (levels - 1)}"
            )
        self.dim = (c, h, w)
        self.channels = positive_int("channels", channels)
        self.channel_mult = mult
        self.num_res_blocks = positive_int("num_res_blocks", num_res_blocks)
        resolutions = [h // 2**i for i in range(levels)]
        if isinstance(attention_resolutions, (str, int)) or not isinstance(
            attention_resolutions, Sequence
        ):
            raise ValueError(
                f"attention_resolutions must be a tuple of ints, got {attention_resolutions!r}"
            )
        attn = tuple(positive_int("attention_resolutions[i]", r) for r in attention_resolutions)
        missing = sorted(set(attn) - set(resolutions))
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are not resolutions of this network; "
                f"it has {', '.join(map(str, resolutions))}"
            )
        self.attention_resolutions = attn
        self.num_heads = positive_int("num_heads", num_heads)
        self.num_head_channels = (
            None
            if num_head_channels is None
            else positive_int("num_head_channels", num_head_channels)
        )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
            0.0 <= dropout < 1.0
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.out_channels = (
            c if out_channels is None else positive_int("out_channels", out_channels)
        )
        self.num_classes = (
            None if num_classes is None else positive_int("num_classes", num_classes)
        )
        self.null_class = self.num_classes
        self.scale_shift_norm = _choice("scale_shift_norm", scale_shift_norm)
        self.resblock_updown = _choice("resblock_updown", resblock_updown)
        self.conv_resample = _choice("conv_resample", conv_resample)
        self.norm_groups = positive_int("norm_groups", norm_groups)
        bad = sorted({self.channels * m for m in mult} | {self.channels})
        bad = [ch for ch in bad if ch % self.norm_groups]
        if bad:
            raise ValueError(
                f"channels * channel_mult must be multiples of norm_groups={self.norm_groups}; "
                f"got channel counts {bad}"
            )
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (
            math.isfinite(time_scale) and time_scale > 0
        ):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)

        ch = self.channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb: nn.Embedding | None = None
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim)  # + the null class

        def res(cin: int, cout: int, resample: str | None = None) -> _ResBlock:
            return _ResBlock(
                cin,
                cout,
                emb_dim,
                dropout=self.dropout,
                groups=self.norm_groups,
                scale_shift=self.scale_shift_norm,
                resample=resample,
            )

        def attention(cin: int) -> _Attention:
            if self.num_head_channels is None:
                heads = self.num_heads
                if cin % heads:
                    raise ValueError(
                        f"num_heads={heads} must divide the {cin} channels at an attention "
                        "resolution"
                    )
            else:
                if cin % self.num_head_channels:
                    raise ValueError(
                        f"num_head_channels={self.num_head_channels} must divide the {cin} "
                        "channels at an attention resolution"
                    )
                heads = cin // self.num_head_channels
            return _Attention(cin, heads, groups=self.norm_groups)

        def resample(cin: int, how: str) -> nn.Module:
            if self.resblock_updown:
                return res(cin, cin, how)
            return _Resample(cin, how, conv=self.conv_resample)

        self.stem = nn.Conv2d(c, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        for level, m in enumerate(mult):
            for _ in range(self.num_res_blocks):
                block = _Block([res(ch, self.channels * m)])
                ch = self.channels * m
                if resolutions[level] in attn:
                    block.append(attention(ch))
                self.down.append(block)
                skips.append(ch)
            if level != levels - 1:
                self.down.append(_Block([resample(ch, "down")]))
                skips.append(ch)
        self.middle = _Block([res(ch, ch), attention(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(self.num_res_blocks + 1):
                block = _Block([res(ch + skips.pop(), self.channels * m)])
                ch = self.channels * m
                if resolutions[level] in attn:
                    block.append(attention(ch))
                if level and i == self.num_res_blocks:
                    block.append(resample(ch, "up"))
                self.up.append(block)
        self.out = nn.Sequential(
            _GroupNorm32(self.norm_groups, ch),
            nn.SiLU(),
            nn.Conv2d(ch, self.out_channels, 3, padding=1),
        )
        if generator is not None:
            self._init_from(generator)
        self._zero_init()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> UNet:
        """A UNet from :data:`UNET_PRESETS` by name, any option overridden by keyword.

        ``UNet.preset("cifar10", num_classes=10, generator=g)``.

        ``cifar10`` is the paper's CIFAR-10 network (the improved-DDPM / ADM UNet as the paper
        configures it): 32x32x3, 128 channels, channel_mult (1, 2, 2, 2), 2 residual blocks
        per level, attention at 16x16 with heads of 64 channels (4 heads there), dropout 0.1,
        3 output channels (no learned variance), conv resampling, no residual up/down blocks,
        the embedding added before the norm (no scale-shift norm: the paper's code base
        builds it so): 35,746,307 parameters, the paper's 35.7 M. (Scale-shift norm would
        double each residual block's embedding linear: 38.3 M.)

        ``digits`` (1x8x8: 8, 4, 2 pixels) and ``fashion-mnist`` (1x28x28: 28, 14, 7) are small
        CPU networks of the same layout: 32 channels, channel_mult (1, 2, 2), 1 residual block
        per level, attention (2 heads of 32 channels) at 4x4 / 7x7, scale-shift norm;
        1,191,233 parameters (+ 1,408 with ``num_classes=10``), dropout 0 / 0.1. One forward +
        backward at batch 128 on one busy CPU core (torch 2.13) took about 0.2-0.5 s (digits)
        and 2 s (fashion-mnist).
        """
        if not isinstance(name, str) or name not in UNET_PRESETS:
            raise ValueError(
                f"unknown UNet preset {name!r}; valid names: {', '.join(sorted(UNET_PRESETS))}"
            )
        options = {**UNET_PRESETS[name], **overrides}
        return cls(**options)

    @torch.no_grad()
    def _init_from(self, generator: torch.Generator) -> None:
        """Re-draw the parameters with PyTorch's default init from ``generator``.

        PyTorch's default init drawn from ``generator``: conv / linear weights and biases
        U(+-1/sqrt(fan_in)), embeddings N(0, 1); GroupNorm keeps weight 1, bias 0.
        """
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                for p in (mod.weight, mod.bias):
                    p.copy_(uniform_(p.shape, bound, generator).to(p.device))
            elif isinstance(mod, nn.Embedding):
                draw = torch.randn(mod.weight.shape, generator=generator, device=generator.device)
                mod.weight.copy_(draw.to(mod.weight.device))

    @torch.no_grad()
    def _zero_init(self) -> None:
        zeros = [self.out[-1]]
        for mod in self.modules():
            if isinstance(mod, (_ResBlock, _Attention)):
                zeros += mod.zero_init()
        for mod in zeros:
            for p in mod.parameters():
                p.zero_()

    @property
    def accepted_cond(self) -> tuple[str, ...]:
        """Names of the condition keywords ``forward`` accepts."""
        return ("y",) if self.num_classes is not None else ()

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Evaluate the velocity field.

        x: (B, C, H, W) as ``dim``; t: (B,), 0-dim or float in [0, 1] -> velocity, x's shape
        and dtype.
        """
        check_cond(cond, self.accepted_cond, "UNet")
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.dim))}), got {got}")
        batch = x.shape[0]
        dtype = self.stem.weight.dtype
        times = batch_times(t, batch, x.device)
        emb = self.time_embed(timestep_embedding(self.time_scale * times.float(), self.channels)
                              .to(dtype))
        if self.label_emb is not None:
            assert self.num_classes is not None
            y = check_labels(
                cond.get("y"), batch, x.device, num_classes=self.num_classes, owner="UNet"
            )
            emb = emb + self.label_emb(y)
        h = self.stem(x.to(dtype))
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
