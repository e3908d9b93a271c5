"""The fully connected velocity field :class:`MLP` and the SF2M pair :class:`DriftScore`.

:class:`MLP` is the paper's network for 2-D and single-cell tasks (3 hidden layers of width 64,
SELU, time concatenated to the input; docs/reference.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._common import MODELS, batch_times, check_cond, check_labels, positive_int, uniform_

__all__ = ["ACTIVATIONS", "HEADS", "MLP", "MODELS", "DriftScore", "get_activation"]

#: Activation modules by name (factories: each call builds a fresh module).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "selu": nn.SELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

def get_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; valid names: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]()


def _event_size(dim: int | Sequence[int]) -> int:
    if isinstance(dim, int) and not isinstance(dim, bool):
        return positive_int("dim", dim)
    if isinstance(dim, Sequence) and len(dim) > 0:
        return math.prod(positive_int("dim[i]", d) for d in dim)
    raise ValueError(f"dim must be a positive int or a non-empty sequence of them, got {dim!r}")


@MODELS.register("mlp")
class MLP(nn.Module):
    """Fully connected velocity field ``v(x, t[, y])``.

    Args:
        dim: event size D, or the event shape (e.g. ``(3, 4, 4)``; D = its product).
        width, depth: hidden width and number of hidden layers (paper: 64 and 3).
        activation: name from :data:`ACTIVATIONS`.
        time_input: concatenate t to the flattened input (paper: yes); if False, t is ignored.
        out_dim: output size; default D, in which case the output takes x's shape, otherwise it is
            (B, out_dim).
        num_classes, label_dim: with ``num_classes=K``, ``model(x, t, y=labels)`` (labels: (B,)
            integers in [0, K]) concatenates a learned ``label_dim``-dim label embedding of K + 1
            rows; label K (``model.null_class``) is the null class, "no condition", which
            classifier-free guidance trains and samples with. (Checkpoints saved before the null
            class existed hold a K-row ``label_emb.weight`` and no longer load.)
        generator: if given, parameters are initialised from it (PyTorch's default init
            distributions), so the same seed gives the same network; otherwise torch's global RNG.
            The null-class row is drawn last, so the other weights are those a K-class MLP without
            a null class drew from the same seed.

    Input layout: ``[flat(x), t, emb(y)]`` -> (Linear, activation) x depth -> Linear.
    The network computes in its parameters' dtype and returns x's dtype, so bf16 inputs work
    with float32 parameters.
    """

    def __init__(
        self,
        dim: int | Sequence[int],
        width: int = 64,
        depth: int = 3,
        activation: str = "selu",
        time_input: bool = True,
        out_dim: int | None = None,
        num_classes: int | None = None,
        label_dim: int = 16,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dim = _event_size(dim)
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        self.time_input = bool(time_input)
        self.out_dim = self.dim if out_dim is None else positive_int("out_dim", out_dim)
        self.num_classes = (
            None if num_classes is None else positive_int("num_classes", num_classes)
        )
        self.null_class = self.num_classes
        self.label_emb: nn.Embedding | None = None
        in_dim = self.dim + int(self.time_input)
        if self.num_classes is not None:
            # K classes + the null class (row K)
            rows = self.num_classes + 1
            self.label_emb = nn.Embedding(rows, positive_int("label_dim", label_dim))
            in_dim += label_dim
        layers: list[nn.Module] = []
        for k in range(self.depth):
            fan_in = in_dim if k == 0 else self.width
            layers += [nn.Linear(fan_in, self.width), get_activation(activation)]
        layers.append(nn.Linear(self.width, self.out_dim))
        self.net = nn.Sequential(*layers)
        if generator is not None:
            self._init_from(generator)

    @torch.no_grad()
    def _init_from(self, generator: torch.Generator) -> None:
        """Re-draw the parameters with PyTorch's default init from ``generator``.

        PyTorch's default init, drawn from ``generator``: Linear U(+-1/sqrt(fan_in)), N(0,1)
        embeddings (the class rows first, the null-class row after everything else).
        """
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                bound = 1.0 / math.sqrt(mod.in_features)
                for w in (mod.weight, mod.bias):
                    w.copy_(uniform_(w.shape, bound, generator).to(w.device))
            elif isinstance(mod, nn.Embedding):
                classes = mod.weight[:-1]
                draw = torch.randn(classes.shape, generator=generator, device=generator.device)
                classes.copy_(draw.to(classes.device))
        if self.label_emb is not None:
            null = self.label_emb.weight[-1]
            null.copy_(torch.randn(null.shape, generator=generator, device=generator.device))

    @property
    def accepted_cond(self) -> tuple[str, ...]:
        """Names of the condition keywords ``forward`` accepts."""
        return ("y",) if self.num_classes is not None else ()

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """x: (B, ``*event``) with prod(event) = dim; t: (B,), 0-dim or float -> velocity."""
        check_cond(cond, self.accepted_cond, "MLP")
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"x must be a batched tensor (B, ...), got {type(x).__name__}")
        batch = x.shape[0]
        h = x.reshape(batch, -1)
        if h.shape[1] != self.dim:
            raise ValueError(
                f"x has {h.shape[1]} features per sample (shape {tuple(x.shape)}), "
                f"the model expects dim={self.dim}"
            )
        param = next(self.parameters())
        parts = [h.to(param.dtype)]
        if self.time_input:
            parts.append(batch_times(t, batch, x.device).to(param.dtype)[:, None])
        if self.label_emb is not None:
            parts.append(self.label_emb(self._labels(cond.get("y"), batch, x.device)))
        out = self.net(torch.cat(parts, dim=1))
        if self.out_dim == self.dim:
            out = out.reshape(x.shape)
        return out.to(x.dtype)

    def _labels(self, y: Any, batch: int, device: torch.device) -> Tensor:
        assert self.num_classes is not None
        return check_labels(y, batch, device, num_classes=self.num_classes, owner="MLP")


# --------------------------------------------------------------------------- drift + score
HEADS: tuple[str, ...] = ("drift", "score", "both")


class DriftScore(nn.Module):
    """A drift network and a score network side by side, for SF2M and SDE sampling.

    ``model(x, t, **cond)`` is the drift v(x, t) (the probability-flow velocity), so every
    ODE tool (``integrate``, metrics, plots) works on it unchanged; ``model.score(x, t)`` is
    the score s(x, t) ~ grad_x log p_t(x), and ``model(x, t, head="both")`` returns the pair
    ``(v, s)`` in one call (the form a loss takes, so that wrappers such as DDP see one
    forward pass). The two networks share nothing.

    drift, score: modules with the library's convention ``net(x, t, **cond) -> (B, *event)``.
    Build the usual pair of MLPs with :meth:`mlp`.
    """

    def __init__(self, drift: nn.Module, score: nn.Module) -> None:
        super().__init__()
        for name, net in (("drift", drift), ("score", score)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        if drift is score:
            raise ValueError("drift and score must be two different networks")
        self.drift_net = drift
        self.score_net = score

    @classmethod
    def mlp(
        cls, dim: int | Sequence[int], generator: torch.Generator | None = None, **kwargs: Any
    ) -> DriftScore:
        """Two :class:`MLP` of the same architecture, a drift and a score.

        Two :class:`MLP` of the same architecture (``kwargs`` as for MLP), the drift's
        parameters drawn first from ``generator`` when given.
        """
        return cls(MLP(dim, generator=generator, **kwargs), MLP(dim, generator=generator, **kwargs))

    @property
    def accepted_cond(self) -> tuple[str, ...]:
        """Condition keywords of the drift network (empty when it does not say)."""
        return tuple(getattr(self.drift_net, "accepted_cond", ()))

    def forward(
        self, x: Tensor, t: Tensor | float, head: str = "drift", **cond: Any
    ) -> Tensor | tuple[Tensor, Tensor]:
        """head="drift" -> v (B, ``*event``); "score" -> s; "both" -> the tuple (v, s)."""
        if head == "drift":
            return self.drift_net(x, t, **cond)
        if head == "score":
            return self.score_net(x, t, **cond)
        if head == "both":
            return self.drift_net(x, t, **cond), self.score_net(x, t, **cond)
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")

    def drift(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """The drift / probability-flow velocity v(x, t); same as ``model(x, t)``."""
        return self(x, t, head="drift", **cond)

    def score(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """The score s(x, t) ~ grad_x log p_t(x), shaped like x."""
        return self(x, t, head="score", **cond)


@MODELS.register("drift_score")
def _drift_score(dim: int | Sequence[int], **kwargs: Any) -> DriftScore:
    """``MODELS.get("drift_score", dim=2, width=64)``: two MLPs (see :meth:`DriftScore.mlp`)."""
    return DriftScore.mlp(dim, **kwargs)
