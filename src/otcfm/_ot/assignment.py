"""Exact solvers of the square assignment problem.

Exact solvers of the square assignment problem min_j sum_i C[i, j(i)] (equal uniform
batches of exact OT: an optimal vertex of the Birkhoff polytope is a permutation).

Registered solvers (all exact, no iteration cap):

- ``"emd"``: POT's network simplex with unit supplies (fastest on low-dimensional,
  highly degenerate point-cloud costs).
- ``"scipy"``: scipy's ``linear_sum_assignment`` (shortest augmenting path); always present,
  the fallback of every other solver.
- ``"lap"``: Jonker-Volgenant from the optional package ``lap`` (extra ``fast``); fastest on
  high-dimensional costs, very slow on 2-D ones.
- ``"lapjv"``: Jonker-Volgenant from the optional package ``lapjv`` (float64 mode).
- ``"auction"``: our compiled float64 auction with eps-scaling, its prices then corrected by
  shortest paths; every answer is certified by a feasible dual to a relative gap of at most
  1e-9 (``otcfm._ot.auction.exact_assignment``), else network simplex solves it.
  Needs numba (extra ``fast``).

``"auto"`` picks by batch size and feature dimension from the measurements in
docs/results/exact_solvers.md (see :func:`auto_solver`).
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable

import numpy as np

SolverFn = Callable[[np.ndarray], "np.ndarray | None"]

# The rule of "auto", from docs/results/exact_solvers.md (median seconds, 1 thread, each solve
# after a warm-up of the same code paths):
# - Our certified auction ("auction", numba) is the fastest measured from B = 96 at d = 2 and,
#   at d = 64 and 784, from B = 512 there; at B = 256 Jonker-Volgenant (``lap``) is a little
#   faster on a given float64 cost, but ExactOT's auction builds its cost in its own kernel
#   and measured as fast or faster than ExactOT with ``lap`` (docs/results/performance.md),
#   so the auction from 256 there. Its lead grows with B (d = 2, B = 4096: about 7x over
#   network simplex).
# - Below those sizes, d > 8: ``lap`` when installed. Otherwise scipy's linear_sum_assignment
#   under B = 96 and network simplex from there (at d = 2 the Jonker-Volgenant codes degrade
#   on these degenerate costs; at d > 8 without ``lap`` scipy and network simplex are within
#   30% of each other, network simplex ahead from B = 2048).
_AUCTION_MIN_N = 96  # smallest B given to the auction
_AUCTION_MIN_N_JV = 256  # ... at d > 8 when ``lap`` is installed
_SCIPY_MAX_N = 96  # scipy below this B (unless the auction or lap)
_SIMPLEX_MAX_DIM = 8


@functools.cache
def _module(name: str):
    """The optional package ``name``, or None; looked up once (a miss searches every path)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _solve_emd(cost: np.ndarray) -> np.ndarray | None:
    import ot  # POT imports scikit-learn and more: load it on first use, not with the package

    n = cost.shape[0]
    ones = np.ones(n)
    plan, log = ot.emd(ones, ones, cost, numItermax=sys.maxsize, log=True)
    rows, cols = np.nonzero(plan)
    if (
        log["result_code"] != 1
        or not np.array_equal(rows, np.arange(n))
        or not bool((plan[rows, cols] == 1.0).all())
    ):
        return None  # fractional or non-optimal vertex: let the caller fall back
    return cols


def _solve_auction(cost: np.ndarray) -> np.ndarray | None:
    if _module("numba") is None:
        return None
    from otcfm._ot.auction import exact_assignment

    found = exact_assignment(np.ascontiguousarray(cost, dtype=np.float64))
    return _solve_emd(cost) if found is None else found.cols


def _solve_scipy(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # scipy.optimize loads slowly

    rows, cols = linear_sum_assignment(cost)
    out = np.empty(cost.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def _solve_lap(cost: np.ndarray) -> np.ndarray | None:
    lap = _module("lap")
    if lap is None:
        return None
    _, x, _ = lap.lapjv(np.ascontiguousarray(cost, dtype=np.float64))
    return x


def _solve_lapjv(cost: np.ndarray) -> np.ndarray | None:
    lapjv = _module("lapjv")
    if lapjv is None:
        return None
    return lapjv.lapjv(np.ascontiguousarray(cost, dtype=np.float64), force_doubles=True)[0]


SOLVERS: dict[str, SolverFn] = {
    "emd": _solve_emd,
    "scipy": _solve_scipy,
    "lap": _solve_lap,
    "lapjv": _solve_lapjv,
    "auction": _solve_auction,
}
_PACKAGES = {"lap": "lap", "lapjv": "lapjv", "auction": "numba"}
SOLVER_NAMES = ("auto", *SOLVERS)


def available_solvers() -> tuple[str, ...]:
    """Registered solvers whose package is importable (``emd`` and ``scipy`` always are)."""
    return tuple(s for s in SOLVERS if s not in _PACKAGES or _module(_PACKAGES[s]) is not None)


def auto_solver(n: int, dim: int) -> str:
    """Fastest measured exact solver for an n x n cost of ``dim``-feature points.

    The certified auction (numba installed) from n = 96, or at d > 8 with ``lap`` installed
    from n = 256. Below: d > 8 with ``lap`` installed, ``lap`` (JV); otherwise scipy under
    n = 96 and network simplex from there (see the measurements cited above
    ``_AUCTION_MIN_N``).
    """
    available = available_solvers()
    high = dim > _SIMPLEX_MAX_DIM
    jv = high and "lap" in available
    if "auction" in available and n >= (_AUCTION_MIN_N_JV if jv else _AUCTION_MIN_N):
        return "auction"
    if jv:
        return "lap"
    return "scipy" if n < _SCIPY_MAX_N else "emd"


def check_solver(solver: str) -> str:
    if not isinstance(solver, str) or solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {list(SOLVER_NAMES)}, got {solver!r}")
    if solver in _PACKAGES and _module(_PACKAGES[solver]) is None:
        warnings.warn(
            f"solver={solver!r} needs the optional package {_PACKAGES[solver]!r} "
            "(pip install 'otcfm[fast]'); falling back to solver='auto'",
            RuntimeWarning,
            stacklevel=3,
        )
        return "auto"
    return solver


def _is_permutation(j: np.ndarray | None, n: int) -> bool:
    return j is not None and j.shape == (n,) and np.array_equal(np.sort(j), np.arange(n))


def solve(cost: np.ndarray, solver: str = "auto", *, dim: int = 0, check: bool = True):
    """Column j[i] matched to row i by an optimal assignment of a square float64 ``cost``.

    ``solver="auto"`` uses :func:`auto_solver` with ``dim`` features. With ``check``, an
    answer that is not a permutation (or a solver that is missing) falls back to scipy.
    Returns int64 (n,).
    """
    n = cost.shape[0]
    if solver == "auto":
        solver = auto_solver(n, dim)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVER_NAMES)}, got {solver!r}")
    j = SOLVERS[solver](cost)
    if check and not _is_permutation(j, n):
        j = _solve_scipy(cost)
    return np.asarray(j, dtype=np.int64)
