"""Compiled candidate-list kernels of the certified exact auction (numba, extra ``fast``).

Prices only rise during an auction (bids raise them; pruning leaves them). So if, when row
i was last scanned in full, every column outside its list had C_ij + p_j >= thr_i, this
still holds: the list's best and second best are the row's whenever the list's second best
is <= thr_i. A bid then costs O(K) instead of O(n); a row is rescanned (O(n)) only when its
list no longer decides. Float64 costs and prices (the certified solver's); see
``otcfm._ot.auction`` for where they run and ``auction_kernels`` for the full-row kernels
they stand in for.
"""

from __future__ import annotations

import numpy as np

from otcfm._ot.auction_kernels import (
    _add,
    _award,
    _bellman_ford,
    _free_rows,
    _jit,
    _keep,
    _min_bits,
)


@_jit()
def _count_below(vals, t):  # pragma: no cover - compiled
    c = 0
    for j in range(vals.shape[0]):
        c += 1 if vals[j] < t else 0
    return c


@_jit()
def _k_least(row, p, cand_i, cost_i):  # pragma: no cover - compiled
    """The K least row_j + p_j into the list (K = its length); returns the (K+1)-th least."""
    k = cand_i.shape[0]
    best = np.full(k + 1, np.inf)
    where = np.zeros(k + 1, np.int64)
    top = np.inf
    for j in range(row.shape[0]):
        v = row[j] + p[j]
        if v < top:
            b = k
            while b > 0 and best[b - 1] > v:
                best[b] = best[b - 1]
                where[b] = where[b - 1]
                b -= 1
            best[b] = v
            where[b] = j
            top = best[k]
    for a in range(k):
        cand_i[a] = where[a]
        cost_i[a] = row[where[a]]
    return top


@_jit()
def rescan(row, p, cand_i, cost_i, buf, win, i):  # pragma: no cover - compiled
    """Refill row i's list with the columns of least row_j + p_j (float64); (count, thr).

    The list holds every column with row_j + p_j < thr, between K / 4 (at least 2) and K
    of them (K = ``cand_i.shape[0]``), in column order; ``cost_i`` receives their costs
    row_j (read contiguously by the bids). So every column left out has row_j + p_j >= thr
    (inf when K >= n: the list is the row). The values go to ``buf`` (n,); thr = min + w
    with w adjusted from row i's last (``win[i]``, else the last of any row, ``win[n]``)
    until the count (a vectorized pass) is in range.
    """
    n = row.shape[0]
    k = cand_i.shape[0]
    if k >= n:
        for j in range(n):
            cand_i[j] = j
            cost_i[j] = row[j]
        return n, np.inf
    _add(row, p, buf)
    vals = buf[:n]
    word = np.empty(1, np.int64)
    word[0] = _min_bits(vals.view(np.int64), np.iinfo(np.int64).max)  # values >= 0
    lo = word.view(np.float64)[0]
    w = win[i] if win[i] > 0.0 else win[n]
    if not w > 0.0:
        w = 1e-12 * (abs(lo) + 1.0)
    least = max(2, k // 4)
    t = lo + w
    c = _count_below(vals, t)
    grow, shrink = 2.0, 0.5
    for _ in range(40):
        if c < least:
            w *= grow
            shrink = 0.5 * (1.0 + shrink)  # overshooting: finer steps back
        elif c > k:
            w *= shrink
            grow = 0.5 * (1.0 + grow)
        else:
            break
        t = lo + w
        c = _count_below(vals, t)
    if c < least or c > k:  # ties wider than the list: the K least, sorted
        return k, _k_least(row, p, cand_i, cost_i)
    win[i] = w
    win[n] = w
    m = 0
    for j in range(n):
        if vals[j] < t:
            cand_i[m] = j
            cost_i[m] = row[j]
            m += 1
    return m, t


@_jit()
def _list_top2(p, cand_i, cost_i, m):  # pragma: no cover - compiled
    best = np.inf
    second = np.inf
    j1 = -1
    for a in range(m):
        j = cand_i[a]
        v = cost_i[a] + p[j]
        if v < best or (v == best and j < j1):
            second = best
            best = v
            j1 = j
        elif v < second:
            second = v
    return j1, best, second


@_jit()
def top2(row, p, cand_i, cost_i, cnt, thr, i, buf, win):  # pragma: no cover - compiled
    """(j1, best, second) of row_j + p_j over all columns, from row i's list."""
    j1, best, second = _list_top2(p, cand_i, cost_i, cnt[i])
    if second > thr[i]:
        cnt[i], thr[i] = rescan(row, p, cand_i, cost_i, buf, win, i)
        j1, best, second = _list_top2(p, cand_i, cost_i, cnt[i])
    return j1, best, second


@_jit()
def bid_lists(
    C, p, eps, owner, assigned, max_bids, cand, cand_c, cnt, thr, win
):  # pragma: no cover - compiled
    """``bid`` with the row minima taken from candidate lists (see ``rescan``; float64)."""
    buf = np.empty_like(p)
    free, nf = _free_rows(assigned)
    value = np.empty_like(p[:1])
    value[0] = eps
    step = value[0]
    bids = 0
    while nf > 0 and bids < max_bids:
        nf -= 1
        i = free[nf]
        j1, best, second = top2(C[i], p, cand[i], cand_c[i], cnt, thr, i, buf, win)
        if second == np.inf:  # a single column
            second = best
        nf = _award(p, j1, best, second, step, owner, assigned, i, free, nf)
        bids += 1
    return bids


@_jit()
def prune_lists(C, p, owner, assigned, eps, cand, cand_c, cnt, thr, win):  # pragma: no cover
    """``prune`` with the row minima taken from candidate lists (float64)."""
    n = C.shape[0]
    buf = np.empty_like(p)
    kept = 0
    for i in range(n):
        a = assigned[i]
        if a < 0:
            continue
        _, best, _ = top2(C[i], p, cand[i], cand_c[i], cnt, thr, i, buf, win)
        kept += _keep(i, a, C[i, a] + p[a] - best, eps, assigned, owner)
    return kept


@_jit()
def tighten_lists(
    C, p, assigned, owner, slack, max_scans, d, cand, cand_c, cnt, thr
):  # pragma: no cover - compiled
    """``tighten`` over the arcs of the candidate lists only.

    The corrected prices q = p - d >= p only rise, so a column outside row i's list still
    has C_ij + q_j >= thr_i; a result is returned (passes) only when every row's own column
    also has C_ik + q_k <= thr_i, so the correction holds over every arc. -1: no convergence
    (as ``tighten``); -2: converged, but some row's own column is above its list's bound (the
    caller runs the full ``tighten``).
    """
    sweep = _bellman_ford(C, p, assigned, owner, slack, max_scans, d, cand, cand_c, cnt, True)
    if sweep < 0:
        return -1
    n = C.shape[0]
    for i in range(n):
        a = assigned[i]
        if C[i, a] + (p[a] - d[a]) > thr[i]:
            return -2
    return sweep
