"""A small convolutional autoencoder whose latent space the translation flows live in.

The paper translates CelebA images in the 128-d latent space of a VAE (Tong et al. 2024,
§5.4). Here a deterministic autoencoder is trained by the library's engine
(:class:`otcfm.train.loop.Engine`, objective :class:`ReconstructionObjective`) on the images
of both groups; its latents are then standardised per coordinate with the training
latents' mean and standard deviation (:class:`AutoEncoderFit`), so that a flow's sigma and
the metrics' kernel bandwidths mean the same on every data set.

Files: :func:`save_autoencoder` writes plain tensors (``torch.save`` of a dict of tensors)
and a JSON record; :func:`load_autoencoder` reads them back with ``weights_only=True`` and
checks the shapes against the record: a file of the user's is data, never code.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otcfm.models._common import uniform_
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.datasets import stream
from otcfm.train.loop import Engine, LoopSettings

__all__ = [
    "AutoEncoder",
    "AutoEncoderFit",
    "ReconstructionObjective",
    "fit_autoencoder",
    "load_autoencoder",
    "save_autoencoder",
]

LATENT = 16  # latent size of the recipes (Fashion-MNIST and digits; the paper's CelebA VAE: 128)
WIDTH = 32  # channels of the first convolution (doubled after the first downsampling)
WEIGHTS, RECORD = "autoencoder.pt", "autoencoder.json"


class AutoEncoder(nn.Module):
    """Small convolutional autoencoder for images in [-1, 1].

    conv 3x3 (w) -> conv 4x4 stride 2 (2w) -> conv 4x4 stride 2 (2w) -> linear (latent),
    SiLU between; the decoder mirrors it with transposed convolutions and ends in tanh, so
    images come back in (-1, 1).

    ``shape``: (C, H, W) of the images, H and W multiples of 4 (8x8 digits, 28x28
    Fashion-MNIST, 64x64 CelebA). Parameters are drawn from ``generator`` (PyTorch's default
    fan-in bounds), so a seed fixes the network.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        latent: int = LATENT,
        width: int = WIDTH,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be (channels, height, width), got {shape!r}")
        c, h, w = (int(s) for s in shape)
        if h % 4 or w % 4:
            raise ValueError(f"image height and width must be multiples of 4, got {h}x{w}")
        for name, value in (("latent", latent), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.shape, self.latent, self.width = (c, h, w), latent, width
        self._inner = (2 * width, h // 4, w // 4)
        flat = math.prod(self._inner)
        self.down = nn.ModuleList([
            nn.Conv2d(c, width, 3, padding=1),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1),
        ])
        self.to_latent = nn.Linear(flat, latent)
        self.from_latent = nn.Linear(latent, flat)
        self.up = nn.ModuleList([
            nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.Conv2d(width, c, 3, padding=1),
        ])
        if generator is not None:
            with torch.no_grad():
                for p in self.parameters():
                    fan_in = p.shape[1] * p[0][0].numel() if p.dim() > 1 else p.shape[0]
                    bound = 1.0 / math.sqrt(fan_in)
                    p.copy_(uniform_(p.shape, bound, generator))

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, latent) codes."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        h = x
        for conv in self.down:
            h = F.silu(conv(h))
        return self.to_latent(h.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent) codes -> (B, C, H, W) images in (-1, 1)."""
        if z.dim() != 2 or z.shape[1] != self.latent:
            raise ValueError(f"expected codes of shape (B, {self.latent}), got {tuple(z.shape)}")
        h = F.silu(self.from_latent(z)).view(-1, *self._inner)
        for conv in self.up[:-1]:
            h = F.silu(conv(h))
        return torch.tanh(self.up[-1](h))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x``: decode its latent code."""
        return self.decode(self.encode(x))


class ReconstructionObjective:
    """The engine's objective for an autoencoder: mean squared reconstruction error.

    The engine's objective for an autoencoder: mean squared reconstruction error of a batch
    of ``batch_size`` training images drawn at step s from ``stream(seed, "autoencoder",
    s)`` (resuming equals never stopping); ``val_loss`` on the whole validation set.
    """

    metrics = ("val_loss",)
    needs_score = False

    def __init__(self, train: Tensor, val: Tensor, *, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        if batch_size < 1 or batch_size > train.shape[0]:
            raise ValueError(f"batch_size must lie in [1, {train.shape[0]}] (training images), "
                             f"got {batch_size}")
        self.train, self.val = train, val
        self.batch_size, self.seed = batch_size, seed
        self.device = torch.device(device)
        self.event_shape = tuple(train.shape[1:])

    def loss(self, net: nn.Module, step: int) -> Tensor:
        """Mean squared reconstruction error of step ``step``'s batch."""
        g = stream(self.seed, "autoencoder", str(step))
        x = self.train[torch.randint(self.train.shape[0], (self.batch_size,), generator=g)]
        x = x.to(self.device)
        return F.mse_loss(net(x), x)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Mean squared error per pixel of ``model`` on the held-out images."""
        total = 0.0
        for k in range(0, self.val.shape[0], 512):
            x = self.val[k:k + 512].to(self.device)
            total += float(F.mse_loss(model(x), x, reduction="sum"))
        return {"val_loss": total / self.val.numel()}

    def state(self) -> dict[str, Any]:
        """No state beyond the engine's: an empty dict."""
        return {}

    def close(self) -> None:
        """Release nothing: the objective holds no threads or files."""
        pass


@dataclass(frozen=True, eq=False)
class AutoEncoderFit:
    """A trained autoencoder and the standardisation of its latents.

    :meth:`encode` gives (encoder(x) - mean) / std, :meth:`decode` inverts it. ``val_loss``: mean
    squared error per pixel on the held-out images; ``record``: how it was trained.
    """

    model: AutoEncoder
    mean: Tensor
    std: Tensor
    val_loss: float
    record: dict[str, Any]

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 1024) -> Tensor:
        """(N, C, H, W) images -> (N, latent) standardised codes (float32)."""
        self.model.eval()
        codes = torch.cat([self.model.encode(images[k:k + batch_size])
                           for k in range(0, images.shape[0], batch_size)])
        return (codes - self.mean) / self.std

    @torch.no_grad()
    def decode(self, codes: Tensor, batch_size: int = 1024) -> Tensor:
        """(N, latent) standardised codes -> (N, C, H, W) images in (-1, 1)."""
        self.model.eval()
        z = codes.to(torch.float32) * self.std + self.mean
        return torch.cat([self.model.decode(z[k:k + batch_size])
                          for k in range(0, z.shape[0], batch_size)])


def fit_autoencoder(
    images: Tensor,
    *,
    latent: int = LATENT,
    width: int = WIDTH,
    steps: int = 3_000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.1,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> AutoEncoderFit:
    """Train an :class:`AutoEncoder` on ``images`` with the engine.

    Train an :class:`AutoEncoder` on ``images`` (N, C, H, W) in [-1, 1] with the engine
    (AdamW, ``steps`` optimizer steps); a random ``val_fraction`` of the images (from
    ``stream(seed, "autoencoder", "split")``) is held out for ``val_loss``. The latent mean
    and standard deviation come from the training images.
    """
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"images must be (N, C, H, W) with N >= 2, got {tuple(images.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    n = images.shape[0]
    perm = torch.randperm(n, generator=stream(seed, "autoencoder", "split"))
    n_val = max(1, round(val_fraction * n))
    train, val = images[perm[n_val:]], images[perm[:n_val]]
    model = AutoEncoder(tuple(images.shape[1:]), latent, width,
                        generator=stream(seed, "autoencoder", "init")).to(device)
    objective = ReconstructionObjective(train, val, batch_size=min(batch_size, train.shape[0]),
                                        seed=seed, device=device)
    settings = LoopSettings(steps=steps, lr=lr, log_every=max(1, steps // 10),
                            checkpoint_every=0)
    engine = Engine(objective, model, settings, device=device, progress=progress,
                    desc="autoencoder")
    start = time.perf_counter()
    engine.run()
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encode(train[k:k + 1024].to(device))
                           for k in range(0, train.shape[0], 1024)])
    mean, std = codes.mean(0), codes.std(0).clamp_min(1e-6)
    val_loss = objective.validate(model)["val_loss"]
    record = {
        "shape": list(model.shape), "latent": latent, "width": width, "steps": steps,
        "batch_size": objective.batch_size, "lr": lr, "seed": seed, "n_train": int(train.shape[0]),
        "n_val": int(n_val), "val_mse": val_loss, "train_seconds": time.perf_counter() - start,
    }
    return AutoEncoderFit(model, mean.cpu(), std.cpu(), val_loss, record)


def save_autoencoder(fit: AutoEncoderFit, folder: str | Path) -> Path:
    """Write an autoencoder's weights and record to ``folder``; return the folder.

    Write ``folder/autoencoder.pt`` (the weights and the latent mean and std, plain
    tensors) and ``folder/autoencoder.json`` (the record); returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v.detach().cpu() for k, v in fit.model.state_dict().items()}
    state.update(mean=fit.mean, std=fit.std)
    tmp = folder / (WEIGHTS + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / WEIGHTS)
    write_text_atomic(json.dumps(fit.record, indent=2) + "\n", folder / RECORD)
    return folder


def load_autoencoder(folder: str | Path) -> AutoEncoderFit:
    """Read what :func:`save_autoencoder` wrote.

    ``weights_only=True``: tensors only. A missing file is a FileNotFoundError, weights that do not
    fit the record a ValueError.
    """
    folder = Path(folder)
    weights, record_path = folder / WEIGHTS, folder / RECORD
    for path in (weights, record_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: no autoencoder was saved in {folder}")
    record = json.loads(record_path.read_text())
    try:
        shape = tuple(int(s) for s in record["shape"])
        model = AutoEncoder(shape, int(record["latent"]), int(record["width"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{record_path}: not an autoencoder record ({err})") from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"mean", "std"} <= state.keys():
        raise ValueError(f"{weights}: expected the weights and the latent mean and std")
    params = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(params)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not fit the network of {record_path}: {err}") from None
    mean, std = state["mean"], state["std"]
    if mean.shape != (model.latent,) or std.shape != (model.latent,):
        raise ValueError(f"{weights}: latent mean and std must have {model.latent} entries")
    return AutoEncoderFit(model.eval(), mean, std, float(record.get("val_mse", math.nan)),
                          record)
