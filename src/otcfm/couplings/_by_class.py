"""Condition-aware couplings: solve an inner coupling within each class, never across."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from otcfm.couplings._base import (
    Coupling,
    MemoryNeed,
    Pairing,
    check_call,
)

# How per-class diagnostics combine into the batch's (any other key: the mean over classes
# weighted by each class's share of the source batch, right for costs and bounds that are
# means over pairs, e.g. ``cost``, ``pair_cost``, ``gap_bound``, ``mass``).
_WORST_HIGH = frozenset({"marginal_error", "err", "tol", "reg", "eps", "cost_scale"})
_WORST_LOW = frozenset({"converged", "compiled"})
_TOTAL = frozenset({"iterations", "newton_steps", "phases"})


class ByClass(Coupling):
    """Pairs only within a class: ``inner`` solved on each class block of the batch.

    Condition-aware OT for class-conditional flows: source and target samples of class c are
    coupled by ``inner`` (e.g. :class:`ExactOT`) among themselves only, so every pair shares
    its label (``pair.cond1[key]`` is each pair's class, and the flow learned for label c
    moves source mass only to class c). In the coupling spec grammar it is the option
    ``within=KEY`` of any coupling: ``"exact:within=y"``, ``"approx:tol=0.001,within=y"``.

    Labels: ``cond1[key]`` (required) and ``cond0[key]`` are integer tensors of shape (B,).

    - Both sides labelled: every class must have as many source as target samples
      (otherwise ValueError with the counts).
    - Only the target labelled (noise -> data, the usual case): each source sample gets the
      label of a target sample, ``y0 = y1[randperm(B)]`` drawn from ``generator``, so class
      counts match by construction; needs batches of one size. The returned ``cond0`` is the
      caller's, indexed by ``i`` (the assigned labels equal ``cond1[key]`` pair for pair).

    Randomness: the source labels (when assigned), then ``inner`` on each class in
    increasing label order, all from the one ``generator``. ``inner``'s options apply to each
    class block (``n_pairs`` of a plan-sampling coupling is per class).

    The result is one :class:`Pairing` over the whole batch, pairs sorted by ``i`` (a
    one-to-one inner coupling gives ``i = arange(B)`` and a permutation ``j``, as
    :class:`ExactOT` does). ``info`` merges the class solves: costs and bounds that are means
    over pairs (``cost``, ``pair_cost``, ...) as the mean over the whole batch (each class
    weighted by its share of the batch); ``converged`` and ``compiled`` the worst (lowest),
    ``marginal_error``, ``err``, ``tol``, ``reg``, ``eps`` the worst (highest); ``iterations``,
    ``newton_steps``, ``phases`` summed; plus ``classes`` (the number of class blocks). The
    total cost lies between the unconstrained exact OT cost and the within-class independent
    pairing's.
    """

    name = "by_class"

    def __init__(self, inner: Coupling, key: str = "y") -> None:
        if not isinstance(inner, Coupling):
            raise TypeError(f"inner must be a Coupling, got {type(inner).__name__}")
        if isinstance(inner, ByClass):
            raise ValueError("ByClass of a ByClass: give the inner coupling one within= key")
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(
                f"within (the condition that holds the class labels) must be a name such as "
                f"'y', got {key!r}"
            )
        self.inner = inner
        self.key = key
        self.lighter = inner.lighter
        #: the merged info carries the inner coupling's convergence (worst class)
        self.reports_convergence = inner.reports_convergence

    def prepare(self) -> None:
        """The inner coupling's :meth:`~otcfm.couplings.Coupling.prepare`."""
        self.inner.prepare()

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """The inner coupling's need on the whole batch: an upper bound (one class)."""
        return self.inner.memory_need(n0, n1, dim=dim, device=device)

    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        raise TypeError(
            f"ByClass pairs by the class labels: call it with them, "
            f"coupling(x0, x1, cond1={{{self.key!r}: labels}})"
        )

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond0: Any = None,
        cond1: Any = None,
    ) -> Pairing:
        check_call(x0, x1, generator, cond0, cond1)
        start = time.perf_counter()
        y0, y1 = self.labels(cond0, cond1, x0.shape[0], x1.shape[0], generator)
        y0, y1 = y0.to(x0.device), y1.to(x0.device)
        classes = torch.unique(y1).tolist()
        n0 = x0.shape[0]
        parts_i, parts_j, infos, weights = [], [], [], []
        for c in classes:
            rows0 = torch.nonzero(y0 == c).squeeze(1)
            rows1 = torch.nonzero(y1 == c).squeeze(1)
            p = self.inner(x0[rows0], x1[rows1], generator=generator)
            parts_i.append(rows0[p.i.to(rows0.device)])
            parts_j.append(rows1[p.j.to(rows1.device)])
            infos.append(p.info)
            weights.append(rows0.shape[0] / n0)
        i, j = torch.cat(parts_i), torch.cat(parts_j)
        order = torch.argsort(i, stable=True)
        i, j = i[order], j[order]
        info = {**merge_info(infos, weights), "classes": float(len(classes)),
                "pairs": int(i.shape[0]), "seconds": time.perf_counter() - start}
        return Pairing.gather(x0, x1, i, j, cond0=cond0, cond1=cond1, info=info)

    def labels(
        self,
        cond0: Any,
        cond1: Any,
        n0: int,
        n1: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The validated class labels (y0, y1) of the source and target batches.

        The class labels (y0, y1) of the source and target batches, validated; source
        labels assigned as ``y1[randperm(n1)]`` (from ``generator``) when cond0 has none.
        """
        y1 = self._read(cond1, "cond1", n1)
        if y1 is None:
            raise ValueError(
                f"the within={self.key} coupling needs class labels of the target batch, "
                f"cond1[{self.key!r}] (e.g. fm.sample(x0, x1, {self.key}=labels))"
            )
        y0 = self._read(cond0, "cond0", n0)
        if y0 is None:
            if n0 != n1:
                raise ValueError(
                    f"the within={self.key} coupling assigns the target's labels to the source "
                    f"batch and needs batches of one size, got {n0} and {n1}; give source "
                    f"labels cond0[{self.key!r}] or equal batches"
                )
            gen_device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(n1, generator=generator, device=gen_device)
            return y1[perm.to(y1.device)], y1
        v0, c0 = torch.unique(y0.cpu(), return_counts=True)
        v1, c1 = torch.unique(y1.cpu(), return_counts=True)
        if not (torch.equal(v0, v1) and torch.equal(c0, c1)):
            raise ValueError(
                f"the within={self.key} coupling needs as many source as target samples in "
                f"every class, got source {_counts(v0, c0)} and target {_counts(v1, c1)}"
            )
        return y0, y1

    def _read(self, cond: Any, name: str, n: int) -> Tensor | None:
        if not isinstance(cond, Mapping) or self.key not in cond:
            return None
        y = cond[self.key]
        bad_type = not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex()
        if bad_type or y.dtype == torch.bool or y.dim() != 1:
            got = (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor)
                   else type(y).__name__)
            raise ValueError(
                f"class labels {name}[{self.key!r}] must be an integer tensor of shape ({n},), "
                f"got {got}"
            )
        return y

    def __repr__(self) -> str:
        return f"ByClass({self.inner!r}, key={self.key!r})"


def merge_info(infos: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Per-class diagnostics combined into the batch's (see :class:`ByClass`)."""
    out: dict[str, float] = {}
    keys = dict.fromkeys(k for info in infos for k in info if k not in ("pairs", "seconds"))
    for k in keys:
        have = [(float(info[k]), w) for info, w in zip(infos, weights, strict=True) if k in info]
        values = [v for v, _ in have]
        if k in _WORST_HIGH:
            out[k] = max(values)
        elif k in _WORST_LOW:
            out[k] = min(values)
        elif k in _TOTAL:
            out[k] = math.fsum(values)
        else:
            total = math.fsum(w for _, w in have)
            out[k] = math.fsum(v * w for v, w in have) / total
    return out


def _counts(values: Tensor, counts: Tensor) -> str:
    return "{" + ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist(),
                                                        strict=True)) + "}"
