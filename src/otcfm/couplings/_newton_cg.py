"""The Newton step of the entropic dual by conjugate gradients, matrix-free.

The balanced semi-dual's Hessian (in f, columns kept exact) is

    H = (diag(P 1) - P diag(1/b) P^T) / eps,

a weighted graph Laplacian over the rows (PSD, null vector 1). A Newton step solves
H d = grad with grad summing to 0; the products with H need only P and P^T.

- Jacobi-preconditioned conjugate gradients to a relative residual of ``CG_RTOL``.
- A float64 plan is solved in float32 first (half the memory traffic of the two products),
  then float64 iterations start from that solution and stop at once when its float64
  residual is within tolerance. Float32 is skipped where H's diagonal
  P 1 - P^2 (1/b) cancels too many of its 7 digits (a row with nearly all its mass in one
  column, as near a permutation, where float32 iterates stall or diverge), and gives up
  after ``CG_LOW_MAX_ITER`` iterations.
- Recycling (:class:`Recycled`): a clustered plan (k well-separated groups of rows) gives H
  k - 1 small eigenvalues apart from the rest, and each costs conjugate gradients extra
  iterations. The directions of one step's solve span a Krylov space in which those
  eigenvectors converge first, so the ``CG_RECYCLE`` Ritz vectors of the smallest Ritz
  values (Rayleigh-Ritz of H against the Jacobi diagonal on the directions, whose products
  with H the solve has already formed) deflate the next Newton steps' solves (deflated CG:
  Saad, Yeung, Erhel, Guyomarc'h, SIAM J. Sci. Comput. 21(5), 2000). On the 2-D tasks'
  moons->8gaussians plans at reg 2 this took the second and third steps from 18 and 29
  iterations to 10 and 9.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

CG_RTOL = 1e-3  # relative residual at which the conjugate-gradient Newton step stops
CG_MAX_ITER = 200  # most conjugate-gradient iterations per Newton step
CG_LOW_MAX_ITER = 60  # most float32 iterations before float64 takes the step over
CG_LOW_SPREAD = 1e-3  # least (P 1 - P^2 (1 / b)) / P 1 over rows for the float32 solve
CG_RECYCLE = 8  # Ritz vectors of one step's solve kept to deflate the next steps' solves


@dataclass
class Recycled:
    """The deflation space one Newton step's solve leaves to the next ones (None at first)."""

    vectors: Tensor | None = None  # (k, n), rows of unit norm, orthogonal to 1
    iterations: list[int] = field(default_factory=list)  # of each solve that used the space


def cg_step(plan: Tensor, b: Tensor, eps: float, grad: Tensor,
            recycled: Recycled | None = None) -> Tensor:
    """H^+ grad (mean 0) by Jacobi-preconditioned conjugate gradients (see the module doc).

    An inexact step only costs the Newton iteration its quadratic rate: the caller's Armijo
    test on the exact objective accepts or refuses it. ``recycled``: the space the previous
    steps of the same Newton solve left (updated here).
    """
    rows = plan.sum(1)
    inv_b = 1.0 / b
    spread = rows - (plan * plan) @ inv_b  # H's diagonal times eps; 0 for a one-column row
    diag = spread.clamp_min(float(rows.max()) * 1e-12) / eps
    x = None
    if plan.dtype == torch.float64 and float((spread / rows).min()) >= CG_LOW_SPREAD:
        low = [t.float() for t in (plan, rows, inv_b, diag, grad)]
        x = _pcg(*low, eps, None, CG_LOW_MAX_ITER, recycled=recycled)
        x = None if x is None else x.to(grad.dtype)
        recycled = None  # the float32 solve had the space (and renewed it if it converged)
    x = _pcg(plan, rows, inv_b, diag, grad, eps, x, CG_MAX_ITER, give_up=False,
             recycled=recycled)
    return x - x.mean()


def _pcg(plan: Tensor, rows: Tensor, inv_b: Tensor, diag: Tensor, rhs: Tensor, eps: float,
         x: Tensor | None, max_iter: int, give_up: bool = True,
         recycled: Recycled | None = None) -> Tensor | None:
    """Jacobi-preconditioned CG for H x = rhs from ``x`` (None: zero), deflated by ``recycled``.

    Stops at a relative residual of ``CG_RTOL``; after ``max_iter`` iterations returns None
    if ``give_up``, else the last iterate. Started from zero, it leaves the Ritz vectors of
    its directions in ``recycled`` (when given).
    """
    rows, inv_b, inv_diag = rows / eps, inv_b / eps, 1.0 / diag

    def apply(d: Tensor) -> Tensor:  # one matrix read twice: P (diag(1/b) (P^T d)), over eps
        return (rows * d).sub_(plan @ (plan.T @ d).mul_(inv_b))

    def apply_rows(wt: Tensor) -> Tensor:  # the same for k row vectors at once: (k, n)
        # as (k, n) @ (n, n) products: torch's thin GEMMs are about 6x faster this way round
        return (wt * rows).sub_(((wt @ plan).mul_(inv_b)) @ plan.T)

    # scalars as Python floats and in-place updates: at n = 512 the loop's small tensor ops
    # cost as much as its two matrix-vector products
    stop = (CG_RTOL * float(rhs.norm())) ** 2
    if x is None:
        x, r = torch.zeros_like(rhs), rhs.clone()
    else:
        x, r = x.clone(), rhs - apply(x)
        recycled = None  # a continuation: nothing to deflate or record
    if float(r @ r) <= stop:
        return x
    deflate = None
    w = None if recycled is None or recycled.vectors is None else recycled.vectors.to(rhs.dtype)
    if w is not None:
        aw = apply_rows(w)
        e = w @ aw.T  # W^T H W, SPD if W avoids 1
        chol, info = torch.linalg.cholesky_ex(0.5 * (e + e.T))
        if int(info) == 0:  # start from the solution on span W
            deflate = (w, aw, torch.cholesky_inverse(chol))
            c = deflate[2] @ (w @ r)
            x.add_(c @ w)
            r.sub_(c @ aw)

    def project(z: Tensor) -> Tensor:  # z made H-orthogonal to W
        if deflate is None:
            return z
        w_, aw_, e_inv = deflate
        return z.sub_((e_inv @ (aw_ @ z)) @ w_)

    record = recycled is not None and deflate is None
    directions: list[Tensor] = []
    products: list[Tensor] = []
    z = r * inv_diag
    p = project(z.clone())
    rz = float(r @ z)
    for it in range(1, max_iter + 1):
        hp = apply(p)
        if record:
            directions.append(p.clone())
            products.append(hp)
        alpha = rz / float(p @ hp)
        x.add_(p, alpha=alpha)
        r.add_(hp, alpha=-alpha)
        if float(r @ r) <= stop:
            if recycled is not None:
                recycled.iterations.append(it)
            if record:
                recycled.vectors = _ritz(directions, products, diag)
            return x
        z = r * inv_diag
        rz, rz_old = float(r @ z), rz
        p = project(p.mul_(rz / rz_old).add_(z))
    return None if give_up else x


def _ritz(directions: list[Tensor], products: list[Tensor], diag: Tensor) -> Tensor | None:
    """The ``CG_RECYCLE`` Ritz vectors of the smallest Ritz values of H x = lambda D x.

    Rayleigh-Ritz on the span of the solve's directions p_j (H p_j already formed), D the
    Jacobi diagonal; the directions are first made orthogonal to H's null vector 1. None
    when the directions are too few or numerically dependent.
    """
    k = min(CG_RECYCLE, len(directions) // 2)
    if k < 1:
        return None
    p = torch.stack(directions)  # (m, n)
    p = p - p.mean(1, keepdim=True)
    a = p @ torch.stack(products).T
    d = (p * diag) @ p.T
    chol, info = torch.linalg.cholesky_ex(0.5 * (d + d.T))
    if int(info) != 0:
        return None
    eye = torch.eye(len(directions), dtype=p.dtype, device=p.device)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1, D = L L^T
    _, vecs = torch.linalg.eigh(inv @ (0.5 * (a + a.T)) @ inv.T)
    w = (vecs[:, :k].T @ inv) @ p  # (k, n): the Ritz vectors L^-T s as rows
    return w / w.norm(dim=1, keepdim=True)
