"""Entropic OT near a permutation: Sinkhorn-Newton on a truncated support (numba, float64).

When the regularization is small against the costs (SB-CFM on the 2-D tasks at reg 2 against
squared distances up to about 1,100; reg 0.02 on standardized latents or cells), the
balanced entropic plan between uniform weights a = 1/n, b = 1/n,

    log P_ij = log a_i + log b_j + (f_i + g_j - C_ij) / eps,

puts almost all of its mass where the optimal assignment's reduced costs
r_ij = C_ij - f0_i - g0_j are small ((f0, g0): the assignment's exact duals, r >= 0 and r = 0
on the assignment). So the solve starts at those duals and works on the deviations
F = f - f0, G = g - g0 over the support r_ij <= ``TRUNCATE`` eps (compressed rows, and the
same entries by columns): log-domain Sinkhorn updates, then, where they crawl, Newton steps
on the concave semi-dual in F (columns kept exact), the step solved by Jacobi-preconditioned
conjugate gradients with the sparse plan and accepted by an Armijo test. An entry left out
weighs at most a_i b_j exp((F_i + G_j) / eps - TRUNCATE); once max F + max G could lift one
above ``exp(-KEEP)`` of that, the support is rebuilt around the current potentials.

The caller forms the dense plan from the final potentials and measures its marginal error
itself: the truncation never goes unreported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from otcfm._ot.auction_kernels import _jit

TRUNCATE = 40.0  # support: reduced cost r_ij <= TRUNCATE * eps (left out: weight <= e^-40)
KEEP = 30.0  # rebuild the support once a left-out entry could reach e^-KEEP of a_i b_j
SINKHORN_CHUNK = 20  # Sinkhorn iterations between Newton attempts
NEWTON_STEPS = 30  # most Newton steps per attempt
CG_RTOL = 1e-4  # relative residual of the conjugate-gradient Newton step
CG_MAX_ITER = 500
STEP_EPS = 10.0  # a Newton step moves no potential by more than this many eps
DENSE_MAX_N = 2048  # largest n whose Newton steps may form H densely (n^2 floats, n^3 / 3)
DAMPING = (0.0, 1e-6, 1e-3)  # Levenberg-Marquardt damping of the formed steps, relative
MIN_STEP = 1e-3  # smallest step fraction the line search tries


@dataclass(frozen=True)
class SparseSinkhornResult:
    """Potentials (f, g) of the entropic plan, and how they were reached."""

    f: np.ndarray  # (n0,)
    g: np.ndarray  # (n1,)
    iterations: int  # Sinkhorn iterations plus Newton steps
    newton_steps: int
    err: float  # L1 row-marginal error on the support at the end (columns exact there)
    nnz: int  # entries of the last support
    rebuilds: int  # supports built


@_jit()
def _count(C, f0, g0, cut):  # pragma: no cover - compiled
    """Number of entries with C - f0 - g0 <= cut."""
    c = 0
    for i in range(C.shape[0]):
        row = C[i]
        fi = f0[i]
        for j in range(C.shape[1]):
            c += 1 if row[j] - fi - g0[j] <= cut else 0
    return c


@_jit()
def _support(C, f0, g0, cut):  # pragma: no cover - compiled
    """Entries with r = C - f0 - g0 <= cut by rows (indptr, indices, r) and by columns."""
    n0, n1 = C.shape
    indptr = np.zeros(n0 + 1, np.int64)
    for i in range(n0):
        c = 0
        row = C[i]
        fi = f0[i]
        for j in range(n1):
            c += 1 if row[j] - fi - g0[j] <= cut else 0
        indptr[i + 1] = indptr[i] + c
    nnz = indptr[n0]
    idx = np.empty(nnz, np.int64)
    r = np.empty(nnz)
    ccount = np.zeros(n1 + 1, np.int64)
    for i in range(n0):
        k = indptr[i]
        row = C[i]
        fi = f0[i]
        for j in range(n1):
            x = row[j] - fi - g0[j]
            if x <= cut:
                idx[k] = j
                r[k] = x
                ccount[j + 1] += 1
                k += 1
    cptr = np.zeros(n1 + 1, np.int64)
    for j in range(n1):
        cptr[j + 1] = cptr[j] + ccount[j + 1]
    fill = cptr[:-1].copy()
    crow = np.empty(nnz, np.int64)
    cpos = np.empty(nnz, np.int64)
    for i in range(n0):
        for k in range(indptr[i], indptr[i + 1]):
            j = idx[k]
            crow[fill[j]] = i
            cpos[fill[j]] = k
            fill[j] += 1
    return indptr, idx, r, cptr, crow, cpos


@_jit()
def _update_rows(indptr, idx, r, G, lb, eps, F, la):  # pragma: no cover - compiled
    """F_i = -eps LSE_j(lb + (G_j - r_ij) / eps): rows exact; returns their error before.

    The L1 row error sum_i a_i |exp((F_i - F_i new) / eps) - 1| of the potentials before the
    update.
    """
    err = 0.0
    a = math.exp(la)
    for i in range(indptr.shape[0] - 1):
        m = -np.inf
        for k in range(indptr[i], indptr[i + 1]):
            z = (G[idx[k]] - r[k]) / eps
            m = z if z > m else m
        if m == -np.inf:
            continue  # an empty row: nothing to balance (the dense check will say so)
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += math.exp((G[idx[k]] - r[k]) / eps - m)
        new = -eps * (lb + m + math.log(s))
        err += a * abs(math.exp((F[i] - new) / eps) - 1.0)
        F[i] = new
    return err


@_jit()
def _col_lse(cptr, crow, cpos, r, F, eps, j):  # pragma: no cover - compiled
    """LSE_i((F_i - r_ij) / eps) over column j's support (-inf when it is empty)."""
    m = -np.inf
    for t in range(cptr[j], cptr[j + 1]):
        z = (F[crow[t]] - r[cpos[t]]) / eps
        m = z if z > m else m
    if m == -np.inf:
        return m
    s = 0.0
    for t in range(cptr[j], cptr[j + 1]):
        s += math.exp((F[crow[t]] - r[cpos[t]]) / eps - m)
    return m + math.log(s)


@_jit()
def _update_cols(cptr, crow, cpos, r, F, la, eps, G):  # pragma: no cover - compiled
    """G_j = -eps LSE_i(la + (F_i - r_ij) / eps) (columns exact)."""
    for j in range(cptr.shape[0] - 1):
        lse = _col_lse(cptr, crow, cpos, r, F, eps, j)
        if lse > -np.inf:
            G[j] = -eps * (la + lse)


@_jit()
def _plan_values(indptr, idx, r, F, G, la, lb, eps, p, rows):  # pragma: no cover
    """p_k = P_ij on the support, rows its row sums; returns their L1 error to a."""
    err = 0.0
    a = math.exp(la)
    for i in range(indptr.shape[0] - 1):
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            v = math.exp(la + lb + (F[i] + G[idx[k]] - r[k]) / eps)
            p[k] = v
            s += v
        rows[i] = s
        err += abs(s - a)
    return err


@_jit()
def _semi_dual(cptr, crow, cpos, r, F, la, lb, eps, a_dot_f):  # pragma: no cover - compiled
    """Phi(F) = <a, F> + <b, G(F)>, with G(F) the exact-column potentials."""
    total = a_dot_f
    b = math.exp(lb)
    for j in range(cptr.shape[0] - 1):
        lse = _col_lse(cptr, crow, cpos, r, F, eps, j)
        if lse > -np.inf:
            total += b * (-eps * (la + lse))
    return total


@_jit()
def _cg(indptr, idx, p, rows, inv_b, eps, grad, rtol, max_iter):  # pragma: no cover
    """Solve H d = grad by Jacobi-preconditioned conjugate gradients (sparse plan p).

    H = (diag(rows) - P diag(1/b) P^T) / eps; d has mean 0 (H's null vector is 1).
    """
    n0 = rows.shape[0]
    n1 = inv_b.shape[0]
    diag = np.zeros(n0)
    for i in range(n0):
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += p[k] * p[k] * inv_b[idx[k]]
        diag[i] = max(rows[i] - s, rows[i] * 1e-12) / eps
    x = np.zeros(n0)
    res = grad.copy()
    z = res / diag
    d = z.copy()
    rz = res @ z
    stop = rtol * math.sqrt(res @ res)
    col = np.zeros(n1)
    hd = np.zeros(n0)
    for _ in range(max_iter):
        col[:] = 0.0
        for i in range(n0):
            di = d[i]
            for k in range(indptr[i], indptr[i + 1]):
                col[idx[k]] += p[k] * di
        for j in range(n1):
            col[j] *= inv_b[j]
        for i in range(n0):
            s = 0.0
            for k in range(indptr[i], indptr[i + 1]):
                s += p[k] * col[idx[k]]
            hd[i] = (rows[i] * d[i] - s) / eps
        dhd = d @ hd
        if not dhd > 0.0:
            break
        alpha = rz / dhd
        x += alpha * d
        res -= alpha * hd
        if math.sqrt(res @ res) <= stop:
            break
        z = res / diag
        rz_new = res @ z
        d = z + (rz_new / rz) * d
        rz = rz_new
    return x - x.mean()


def sparse_sinkhorn(
    cost: np.ndarray,
    eps: float,
    f0: np.ndarray,
    g0: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    max_row: float = math.inf,
) -> SparseSinkhornResult | None:
    """Balanced entropic OT between uniform weights on ``cost`` (n0, n1), float64, C-order.

    From dual potentials ``f0``, ``g0`` with f0_i + g0_j <= C_ij (see the module doc).

    Stops when the L1 row-marginal error on the support is below ``tol`` (columns exact), or
    after ``max_iter`` Sinkhorn iterations plus Newton steps. None when the first support
    holds more than ``max_row`` entries per row on average (then it is no cheaper than the
    dense plan).
    """
    n0, n1 = cost.shape
    la, lb = -math.log(n0), -math.log(n1)
    f0, g0 = f0.astype(np.float64).copy(), g0.astype(np.float64).copy()
    F, G = np.zeros(n0), np.zeros(n1)
    inv_b = np.full(n1, float(n1))
    if _count(cost, f0, g0, TRUNCATE * eps) > max_row * n0:
        return None
    sup = _support(cost, f0, g0, TRUNCATE * eps)
    rebuilds, it, steps, err = 1, 0, 0, math.inf
    _update_cols(sup[3], sup[4], sup[5], sup[2], F, la, eps, G)
    while True:
        if (F.max() + G.max()) / eps > TRUNCATE - KEEP:  # left-out entries may matter now
            f0 += F
            g0 += G
            F[:], G[:] = 0.0, 0.0
            sup = _support(cost, f0, g0, TRUNCATE * eps)
            rebuilds += 1
            _update_cols(sup[3], sup[4], sup[5], sup[2], F, la, eps, G)
            err = math.inf
        if err < tol or it >= max_iter:
            break
        # Sinkhorn for a chunk (each update makes one side exact)
        for _ in range(min(SINKHORN_CHUNK, max_iter - it)):
            err = _update_rows(sup[0], sup[1], sup[2], G, lb, eps, F, la)
            _update_cols(sup[3], sup[4], sup[5], sup[2], F, la, eps, G)
            it += 1
            if err < tol:
                break
        if err < tol or it >= max_iter:
            continue  # the support's validity is checked before leaving
        done, err = _newton(sup, F, G, la, lb, eps, inv_b, tol, min(NEWTON_STEPS, max_iter - it))
        it, steps = it + done, steps + done
    p = np.empty(sup[1].shape[0])
    err = _plan_values(sup[0], sup[1], sup[2], F, G, la, lb, eps, p, np.empty(n0))
    return SparseSinkhornResult(f0 + F, g0 + G, it, steps, err, int(sup[1].shape[0]), rebuilds)


def _newton(sup, F, G, la, lb, eps, inv_b, tol, max_steps) -> tuple[int, float]:
    """Newton ascent on the semi-dual in F (capped step, backtracking Armijo); updates F, G.

    Each step tries the conjugate-gradient solve of H d = grad, then (n <= ``DENSE_MAX_N``)
    solves with H formed from the sparse plan: Cholesky with H's null vector 1 shifted away,
    undamped then Levenberg-Marquardt damped (``DAMPING``), where weakly linked clusters of
    the plan leave H too ill-conditioned for the iterative solve. Returns (steps taken, row
    error at the end); stops at the first step no candidate of which passes.
    """
    indptr, idx, r, cptr, crow, cpos = sup
    n0 = F.shape[0]
    a = math.exp(la)
    p = np.empty(idx.shape[0])
    rows = np.empty(n0)
    err = _plan_values(indptr, idx, r, F, G, la, lb, eps, p, rows)
    phi = _semi_dual(cptr, crow, cpos, r, F, la, lb, eps, a * F.sum())

    def accept(d: np.ndarray, grad: np.ndarray):
        slope = float(grad @ d)
        if not slope > 0.0:
            return None
        # at most STEP_EPS eps per potential (the model is local; the support's validity
        # allows TRUNCATE - KEEP eps of drift), then backtracking
        t = min(1.0, STEP_EPS * eps / float(np.abs(d).max()))
        while t >= MIN_STEP:
            trial = F + t * d
            value = _semi_dual(cptr, crow, cpos, r, trial, la, lb, eps, a * trial.sum())
            if value - phi >= 1e-4 * t * slope:
                return trial, value
            t *= 0.25
        return None

    step = 0
    for step in range(max_steps + 1):
        if err < tol or step == max_steps:
            break
        grad = a - rows
        found = accept(_cg(indptr, idx, p, rows, inv_b, eps, grad, CG_RTOL, CG_MAX_ITER), grad)
        if found is None and n0 <= DENSE_MAX_N:
            for d in _dense_steps(indptr, idx, p, rows, inv_b, eps, grad):
                found = accept(d, grad)
                if found is not None:
                    break
        if found is None:
            break
        F[:], phi = found
        _update_cols(cptr, crow, cpos, r, F, la, eps, G)
        err = _plan_values(indptr, idx, r, F, G, la, lb, eps, p, rows)
    return step, err


def _dense_steps(indptr, idx, p, rows, inv_b, eps, grad):
    """Newton steps from H = (diag(rows) - P diag(1/b) P^T) / eps formed densely."""
    n0, n1 = rows.shape[0], inv_b.shape[0]
    plan = np.zeros((n0, n1))
    plan[np.repeat(np.arange(n0), np.diff(indptr)), idx] = p
    hess = -(plan * inv_b[None, :]) @ plan.T
    hess[np.diag_indices(n0)] += rows
    hess /= eps
    scale = float(hess.diagonal().max())
    shifted = hess + scale / n0  # + (scale / n) 1 1^T: the null vector 1 gets an eigenvalue
    for damping in DAMPING:
        try:
            chol = np.linalg.cholesky(shifted + damping * scale * np.eye(n0))
        except np.linalg.LinAlgError:
            continue
        d = np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
        yield d - d.mean()
