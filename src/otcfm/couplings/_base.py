"""Shared pieces of the minibatch couplings.

The result type, the base class, the squared Euclidean cost and the samplers that draw index pairs
from a transport plan.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from otcfm._utils import cast, check_cond, check_pair, flat, index_cond

COST_DTYPES = (torch.float32, torch.float64)


class ConvergenceWarning(RuntimeWarning):
    """An OT solver stopped before reaching its tolerance (the message gives the numbers)."""


class ConvergenceError(RuntimeError, ValueError):
    """An OT solver with ``on_fail="raise"`` stopped before reaching its tolerance.

    The message names reg, the error reached, the tolerance and the iteration count, and what
    to change. A ValueError as well: the remedy is a setting (reg, max_iter, tol).
    """


@dataclass(frozen=True)
class Convergence:
    """How an iterative coupling solve ended (:attr:`Pairing.convergence`).

    ``converged``: the solver's stopping rule held before ``max_iter`` ran out.
    ``marginal_error``: L1 distance ``|P 1 - r|_1`` + ``|P^T 1 - c|_1`` between the returned plan's
    marginals and the marginals (r, c) its optimality conditions prescribe: the uniform
    weights for balanced couplings, so it lies in [0, 2] (the plan's mass is 1).
    ``iterations``: solver iterations (all stages). ``tol``: the tolerance of the rule.
    """

    converged: bool
    marginal_error: float
    iterations: int
    tol: float


def check_call(x0: Tensor, x1: Tensor, generator: Any, cond0: Any, cond1: Any) -> None:
    """The checks of every coupling call: the batches, their conditions and the generator."""
    check_inputs(x0, x1)
    check_cond(cond0, x0.shape[0], "cond0")
    check_cond(cond1, x1.shape[0], "cond1")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


class CouplingMemoryError(MemoryError, ValueError):
    """A coupling's cost matrix and solver workspace would not fit in the memory available.

    Raised before allocating; the message gives the sizes and what to do.
    """


@dataclass(frozen=True)
class MemoryNeed:
    """Estimated peak bytes of one coupling call, on the data's device and on the host.

    Estimated peak bytes of one coupling call: on the data's device (the cost matrix and
    what is solved there) and on the host (CPU copies and CPU solvers). On a CPU the two add
    up.
    """

    device: int = 0
    host: int = 0


@dataclass(frozen=True)
class Pairing:
    """Samples of a minibatch coupling q(x0, x1).

    ``x0 = input_x0[i]`` and ``x1 = input_x1[j]``, shape (N, ``*event``), in the input dtype and
    device. ``cond0``/``cond1`` are the per-sample conditions indexed the same way. ``info``
    holds solver diagnostics (cost, iterations, err, seconds, ...); couplings that iterate to
    a tolerance (``Coupling.reports_convergence``) also put ``converged`` (1.0 or 0.0),
    ``marginal_error``, ``iterations`` and ``tol`` there, read as a :class:`Convergence` by
    :attr:`convergence`.
    """

    x0: Tensor
    x1: Tensor
    i: Tensor
    j: Tensor
    cond0: Any = None
    cond1: Any = None
    info: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def gather(cls, x0: Tensor, x1: Tensor, i: Tensor, j: Tensor, *, cond0: Any = None,
               cond1: Any = None, info: Mapping[str, float] | None = None) -> Pairing:
        """The pairing of index pairs (i, j) of the batches x0, x1 and their conditions."""
        return cls(x0=x0[i], x1=x1[j], i=i, j=j, cond0=index_cond(cond0, i),
                   cond1=index_cond(cond1, j), info=dict(info or {}))

    @property
    def convergence(self) -> Convergence | None:
        """How the solve ended, for couplings that report it (None for the others)."""
        info = self.info
        if "converged" not in info:
            return None
        return Convergence(
            converged=bool(info["converged"]),
            marginal_error=float(info["marginal_error"]),
            iterations=int(info["iterations"]),
            tol=float(info["tol"]),
        )


class Coupling(ABC):
    """A minibatch coupling: ``coupling(x0, x1) -> Pairing``.

    ``__call__`` validates the batches and conditions, then asks :meth:`pair` for the index
    pairs. Costs are squared Euclidean distances between flattened samples computed in
    ``cost_dtype``, whatever the data dtype.
    """

    name: ClassVar[str] = "coupling"
    #: True for couplings whose :meth:`pair` always returns ``i = j = arange(B)``: the pairing
    #: then holds the input batches and conditions themselves rather than gathered copies.
    in_order: ClassVar[bool] = False
    #: True for couplings whose pairings carry a :class:`Convergence` (iterative solvers with
    #: a tolerance: the entropic and unbalanced couplings).
    reports_convergence: ClassVar[bool] = False
    #: what would shrink the memory a call needs (an approximate coupling, ...), for errors
    lighter: ClassVar[str] = ""

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
        check_memory(self, x0.shape[0], x1.shape[0], dim=math.prod(x0.shape[1:]),
                     device=x0.device)
        start = time.perf_counter()
        i, j, info = self.pair(x0, x1, generator=generator)
        i = cast(i, device=x0.device, dtype=torch.long)
        j = cast(j, device=x1.device, dtype=torch.long)
        info = {**info, "pairs": int(i.shape[0]), "seconds": time.perf_counter() - start}
        if self.in_order:  # x0[i] would be a copy of x0 (two gathers per call saved)
            return Pairing(x0=x0, x1=x1, i=i, j=j, cond0=cond0, cond1=cond1, info=info)
        return Pairing.gather(x0, x1, i, j, cond0=cond0, cond1=cond1, info=info)

    def memory_need(
        self, n0: int, n1: int, *, dim: int = 0, device: torch.device | str = "cpu"
    ) -> MemoryNeed:
        """Estimated peak memory of coupling n0 x n1 points of ``dim`` features on ``device``.

        Estimated peak memory of coupling n0 x n1 points of ``dim`` features (0: unknown,
        assume the costliest solver) on ``device``: nothing beyond the inputs by default.
        """
        return MemoryNeed()

    def prepare(self) -> None:
        """Load what this coupling's solver needs ahead of its first call (default: nothing).

        The couplings with compiled solvers (:class:`ExactOT`, :class:`ApproxOT`, the entropic
        ones; extra ``fast``) load their kernels here, about a second once per process, so
        that a timed loop started afterwards does not count it in its first batch. Optional:
        the first call loads them otherwise. The results never depend on it.
        """
        return None

    @abstractmethod
    def pair(
        self, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Index pairs ``(i, j)`` (int64, shape (N,)) and diagnostics for validated batches."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- memory
# Below this many bytes a coupling is not checked against the free memory (no system call on
# the per-step path of small batches).
CHECK_MEMORY_FROM = 256 * 2**20
# (limit, usage) files of a cgroup's memory: v2, then v1
CGROUP_MEMORY = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can be allocated now on ``device``; None if unknown.

    CPU: MemAvailable of /proc/meminfo (else free pages, ``SC_AVPHYS_PAGES``), lowered to the
    room left under a cgroup memory limit (containers). CUDA: the driver's free memory plus
    what PyTorch's caching allocator holds unused.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    found = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    for limit, usage in CGROUP_MEMORY:
        try:
            with open(limit) as a, open(usage) as b:
                room = int(a.read().strip()) - int(b.read().strip())
        except (OSError, ValueError):  # no such cgroup file, or "max" (no limit)
            continue
        found = min(found, max(room, 0))
        break
    return found


def check_memory(
    coupling: Coupling,
    n0: int,
    n1: int,
    *,
    dim: int = 0,
    device: torch.device | str = "cpu",
    copies: int = 1,
) -> None:
    """Raise :class:`CouplingMemoryError` if the coupling calls would not fit in memory now.

    Raise :class:`CouplingMemoryError` if ``copies`` calls of ``coupling`` on n0 x n1 points
    at once (:meth:`Coupling.memory_need`) would not fit in the memory available now.

    Needs under :data:`CHECK_MEMORY_FROM` bytes are not checked (no system call).
    """
    device = torch.device(device)
    need = coupling.memory_need(n0, n1, dim=dim, device=device)
    on_device, on_host = need.device * copies, need.host * copies
    if device.type != "cuda":
        on_device, on_host = 0, on_device + on_host
    for where, size in ((device, on_device), (torch.device("cpu"), on_host)):
        if size < CHECK_MEMORY_FROM:
            continue
        free = available_memory(where)
        if free is None or size <= free:
            continue
        times = f" ({copies} at once)" if copies > 1 else ""
        lighter = f" or use {coupling.lighter}" if coupling.lighter else ""
        raise CouplingMemoryError(
            f"the {coupling.name} coupling of {n0} x {n1} points{times} needs about "
            f"{size / 1e9:.3g} GB of {'GPU' if where.type == 'cuda' else 'CPU'} memory (cost "
            f"matrix and solver workspace) but {free / 1e9:.3g} GB is available; couple fewer "
            f"points at once (couplings.ot_batch, --ot-batch){lighter}"
        )


def cost_bytes(dtype: torch.dtype, device: torch.device | str) -> int:
    """Bytes per entry of a cost matrix made by :func:`sq_cost`.

    Float64 work for float32 costs on CUDA, where TF32 matmuls may be on.
    """
    size = torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type == "cuda" and dtype == torch.float32:
        size += 8
    return size


# --------------------------------------------------------------------------- validation
def check_inputs(x0: Tensor, x1: Tensor) -> None:
    """Both batches finite, non-empty, same trailing shape, same device."""
    check_pair(x0, x1, same_batch=False)
    if x0.device != x1.device:
        raise ValueError(f"x0 and x1 must be on the same device, got {x0.device} and {x1.device}")


def check_cost_dtype(dtype: Any) -> torch.dtype:
    if dtype not in COST_DTYPES:
        raise ValueError(f"cost_dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_n_pairs(n_pairs: Any) -> int | None:
    if n_pairs is None:
        return None
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs must be None or an int >= 1, got {n_pairs!r}")
    return n_pairs


def check_max_iter(max_iter: Any, *, allow_none: bool = False) -> int | None:
    if max_iter is None and allow_none:
        return None
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        allowed = "None or an int >= 1" if allow_none else "an int >= 1"
        raise ValueError(f"max_iter must be {allowed}, got {max_iter!r}")
    return max_iter


# --------------------------------------------------------------------------- cost
def require_equal_batches(kind: str, x0: Tensor, x1: Tensor) -> int:
    """Batch size of a one-to-one coupling; unequal batches raise with what to do instead."""
    n0, n1 = x0.shape[0], x1.shape[0]
    if n0 != n1:
        raise ValueError(
            f"{kind} needs batches of the same size, got {n0} and {n1}; slice them to a "
            "common size or use a plan-based coupling (e.g. ExactOT) for unequal batches"
        )
    return n0


def centred(x0: Tensor, x1: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Flattened samples (n0, D) and (n1, D) in ``dtype``, shifted by their joint mean."""
    a = flat(x0).to(dtype)
    b = flat(x1).to(dtype)
    shift = (a.sum(0) + b.sum(0)) / (a.shape[0] + b.shape[0])
    return a - shift, b - shift


def overflow_error(dtype: torch.dtype, a: Tensor, b: Tensor) -> ValueError:
    """The error for a squared-distance cost that does not fit in ``dtype``."""
    return ValueError(
        f"the squared-distance cost overflowed in {dtype} (max |x| = "
        f"{max(float(a.abs().max()), float(b.abs().max())):.3g}); use cost_dtype=torch.float64 "
        "or rescale the data"
    )


def sq_cost(x0: Tensor, x1: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Squared Euclidean cost C_ij = ||x0_i - x1_j||^2 of flattened samples, shape (n0, n1).

    Both batches are first centred on their joint mean (distances are translation invariant),
    which keeps the expanded form ``|a|^2`` + ``|b|^2`` - 2 a.b accurate in float32. On CUDA with
    reduced-precision (TF32) float32 matmuls enabled the product is done in float64.
    """
    work = dtype
    if dtype == torch.float32 and x0.device.type == "cuda" and _cuda_matmul_is_tf32():
        work = torch.float64
    a, b = centred(x0, x1, work)
    # In place on the one (n0, n1) product: peak memory is a single cost matrix.
    cost = (a @ b.T).mul_(-2.0).add_((a * a).sum(1)[:, None]).add_((b * b).sum(1)[None, :])
    cost = cost.clamp_min_(0.0).to(dtype)
    if not bool(torch.isfinite(cost.max())):  # max is NaN or inf iff some entry is
        raise overflow_error(dtype, a, b)
    return cost


def _cuda_matmul_is_tf32() -> bool:
    """Whether float32 CUDA matmuls may run in reduced precision (TF32/bf16)."""
    try:
        prec = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
        if prec is None:  # torch < 2.9: legacy flag only
            return bool(torch.backends.cuda.matmul.allow_tf32)
        if prec == "none":  # inherits the global setting ("none" there means IEEE)
            prec = getattr(torch.backends, "fp32_precision", "none")
        return prec not in ("ieee", "none")
    except RuntimeError:  # torch refuses to read mixed legacy/new flags: assume the worst
        return True


# --------------------------------------------------------------------------- sampling
def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` uniforms in [0, 1) drawn on the generator's device, then moved to ``device``.

    float64 where the device has it (float32 on MPS).
    """
    gen_device = generator.device if generator is not None else torch.device(device)
    dtype = torch.float32 if gen_device.type == "mps" else torch.float64
    u = torch.rand(n, generator=generator, device=gen_device, dtype=dtype)
    return u.to(device)


def _inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Per row of ``weights`` (..., m) >= 0, the index k with cdf[k-1] <= u*total < cdf[k].

    Zero-weight cells are never chosen; a draw that rounds past the end lands on the cell
    where the cumulative weight reaches the row's total (a positive cell: the cdf rose
    there; the last positive one unless later ones are too light to change the sum).
    """
    cdf = weights.cumsum(-1).contiguous()
    total = cdf[..., -1:].contiguous()
    target = (u.to(cdf.dtype).unsqueeze(-1) * total).contiguous()
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    last = torch.searchsorted(cdf, total).squeeze(-1)  # binary search, not a pass over m
    return torch.minimum(idx, last)


def draw_rows(row_weights: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """For every row i draw j ~ w(i, .) / sum w(i, .): pairs (arange(n0), j)."""
    n0 = row_weights.shape[0]
    if not bool((row_weights.sum(1) > 0).all()):
        raise RuntimeError("cannot sample rows: some rows of the plan carry no mass")
    u = uniform(n0, generator, row_weights.device)
    j = _inverse_cdf(row_weights, u)
    return torch.arange(n0, device=row_weights.device), j


def draw_cells(
    plan: Tensor, n: int, *, replace: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` cells (i, j) with probability proportional to ``plan`` (n0, n1) >= 0.

    With replacement: independent draws. Without replacement: successive sampling
    proportional to mass (Gumbel top-k over the positive cells), needs n <= #positive cells;
    the chosen cells are returned sorted by (i, j).
    """
    n1 = plan.shape[1]
    w = plan.reshape(-1)
    if replace:
        cell = _inverse_cdf(w, uniform(n, generator, w.device))
    else:
        support = torch.nonzero(w > 0).squeeze(1)
        if n > support.numel():
            raise ValueError(
                f"cannot draw {n} distinct pairs without replacement: the plan has only "
                f"{support.numel()} non-zero cells; lower n_pairs or use replace=True"
            )
        u = uniform(support.numel(), generator, w.device)
        keys = torch.log(w[support]) - torch.log(-torch.log(u))
        cell = support[torch.topk(keys, n).indices].sort().values
    return cell // n1, cell % n1


def resolve_n_pairs(n_pairs: int | None, default: int) -> int:
    return default if n_pairs is None else n_pairs


def ceil_count(x: float) -> int:
    """ceil(x) robust to float noise just above an integer (0.9 * 100 -> 90)."""
    return max(1, math.ceil(x - 1e-9))
