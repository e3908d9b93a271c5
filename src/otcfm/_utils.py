"""Small helpers shared by the core modules (validation, registries, tensor plumbing).

Core modules (paths, couplings, sampling, models, metrics) import only this module from
the package, never each other.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


# --------------------------------------------------------------------------- validation
def check_tensor(name: str, x: Any, *, min_dim: int = 1) -> Tensor:
    """Raise a clear error unless ``x`` is a non-empty, finite tensor with >= ``min_dim`` dims."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    # A finite sum implies finite entries (NaN and inf propagate): one reduction and one
    # scalar read per call; the element-wise count runs only when the sum is not finite (or
    # overflowed).
    if (x.is_floating_point() or x.is_complex()) and not cmath.isfinite(x.sum().item()):
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name} contains {bad} NaN or inf value(s) (shape {tuple(x.shape)})")
    return x


def check_pair(x0: Tensor, x1: Tensor, *, same_batch: bool = True) -> None:
    """Check two batches of samples: finite, non-empty, same trailing (event) shape."""
    check_tensor("x0", x0)
    check_tensor("x1", x1)
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            "x0 and x1 must share their trailing shape, "
            f"got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    if same_batch and x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"x0 and x1 must have the same batch size, got {x0.shape[0]} and {x1.shape[0]}"
        )


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``float(value)``; raise if it is not finite and > 0 (or >= 0 with allow_zero)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


# --------------------------------------------------------------------------- registries
class Registry(Generic[T]):
    """A name -> factory table with helpful errors: ``reg.get("otcfm", sigma=0.1)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def factory(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        return self._items[name]

    def get(self, name: str, **kwargs: Any) -> T:
        return self.factory(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# --------------------------------------------------------------------------- tensor plumbing
def cast(
    x: Tensor, *, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> Tensor:
    """``x.to(device=device, dtype=dtype)``, without the call when nothing would change.

    A no-op ``.to`` still costs microseconds of argument parsing: this matters in per-step code.
    """
    if (dtype is None or x.dtype == dtype) and (device is None or x.device == device):
        return x
    return x.to(device=device, dtype=dtype)


def pad_t(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times (B,) to (B, 1, ..., 1) so they broadcast against ``x``."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def flat(x: Tensor) -> Tensor:
    """Flatten a batch (B, ...) to (B, D)."""
    return x.reshape(x.shape[0], -1)


def index_cond(cond: Any, idx: Tensor) -> Any:
    """Index per-sample conditions along the batch: tensors, lists and (nested) dicts of them."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[idx.to(cond.device)]
    if isinstance(cond, Mapping):
        return {k: index_cond(v, idx) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        ids = idx.tolist()
        return type(cond)(cond[i] for i in ids)
    raise TypeError(
        f"per-sample conditions must be tensors, lists or dicts of them, got {type(cond).__name__}"
    )


def check_cond(cond: Any, batch: int, name: str = "cond") -> None:
    """Check every leaf of a condition has ``batch`` rows."""
    if cond is None:
        return
    if isinstance(cond, Tensor):
        if cond.dim() == 0 or cond.shape[0] != batch:
            raise ValueError(
                f"{name} must have one row per sample ({batch}), got shape {tuple(cond.shape)}"
            )
        return
    if isinstance(cond, Mapping):
        for k, v in cond.items():
            check_cond(v, batch, f"{name}[{k!r}]")
        return
    if isinstance(cond, (list, tuple)):
        if len(cond) != batch:
            raise ValueError(f"{name} must have one entry per sample ({batch}), got {len(cond)}")
        return
    raise TypeError(f"{name} must be a tensor, list or dict of them, got {type(cond).__name__}")


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator`` (float32 then cast)."""
    noise = torch.randn(
        x.shape, generator=generator, device=_gen_device(generator, x), dtype=torch.float32
    )
    return noise.to(device=x.device, dtype=x.dtype)


def _gen_device(generator: torch.Generator | None, x: Tensor) -> torch.device:
    return generator.device if generator is not None else x.device
