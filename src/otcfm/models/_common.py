"""Helpers shared by the networks: the model registry, option checks, times and labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._utils import Registry

MODELS: Registry[nn.Module] = Registry("model")


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def uniform_(shape: torch.Size, bound: float, generator: torch.Generator) -> Tensor:
    """U(-bound, bound) draws of ``shape`` from ``generator`` (on the generator's device)."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (2.0 * u - 1.0) * bound


def batch_times(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Times as a (B,) tensor: a float or 0-dim tensor is broadcast; (B,) or (B, 1) kept."""
    if not isinstance(t, Tensor):
        try:
            return torch.full((batch,), float(t), device=device)
        except (TypeError, ValueError):
            raise TypeError(f"t must be a tensor or a number, got {type(t).__name__}") from None
    if t.numel() == 1 and t.dim() <= 1 and batch != 1:
        return t.reshape(()).to(device).expand(batch)
    if t.numel() != batch or t.dim() > 2 or (t.dim() == 2 and t.shape[1] != 1):
        raise ValueError(f"t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
    return t.reshape(batch).to(device)


def check_labels(
    y: Any, batch: int, device: torch.device, *, num_classes: int, owner: str
) -> Tensor:
    """Validate class labels as a (B,) long tensor in [0, num_classes].

    Class labels as a (B,) long tensor in [0, num_classes]; ``num_classes`` is the null class
    ("no condition", used by classifier-free guidance). ``owner`` names the model in errors.
    """
    if y is None:
        raise TypeError(f"this {owner} has num_classes={num_classes} and needs labels y=")
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.shape != (batch,):
        raise ValueError(
            f"y must hold one integer label per sample, shape ({batch},), "
            f"got dtype {y.dtype} shape {tuple(y.shape)}"
        )
    if bool(((y < 0) | (y > num_classes)).any()):
        raise ValueError(
            f"labels y must lie in [0, {num_classes}] ({num_classes} = the null class), "
            f"got min {int(y.min())} max {int(y.max())}"
        )
    return y.long()


def check_cond(cond: dict[str, Any], accepted: tuple[str, ...], owner: str) -> None:
    """TypeError when ``cond`` holds keywords the model does not take."""
    unexpected = sorted(set(cond) - set(accepted))
    if unexpected:
        names = ", ".join(accepted) or "none"
        raise TypeError(f"{owner} got unexpected condition(s) {unexpected}; accepted: {names}")
