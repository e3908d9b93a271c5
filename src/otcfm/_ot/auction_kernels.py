"""Compiled auction kernels for ApproxOT on CPU (numba, extra ``fast``).

Every kernel takes a cost matrix C (n, n) with non-negative entries (row minima subtracted)
and non-negative column prices p (n,) of the same float type: float32 (ApproxOT) or float64
(the certified exact solver). Then every C_ij + p_j >= 0, and non-negative IEEE floats order
exactly like their bit patterns read as integers of the same width: row minima are taken as
integer minima, which vectorize (float minima do not, for NaN semantics). The kernels that
compare bits take ``top``, a one-element array of that integer type holding its largest value
(see :func:`top_bits`): it fixes the width when numba compiles them and exceeds the bits of
every finite non-negative float.

The kernels release the GIL, so coupling threads run beside the training thread. Without
numba the same functions run as plain Python (correct, slow: tests of small cases only).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised when the `fast` extra is missing
    numba = None

_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


# one array per type, shared by every call (never written; numba compiles a read-only array
# as another type)
_TOP = {k: np.array([np.iinfo(v).max], v) for k, v in _INT.items()}


def top_bits(dtype) -> np.ndarray:
    """The ``top`` argument of the kernels for costs of float ``dtype`` (float32 or float64).

    One array per type, shared by every call (callers never write it): building it per call
    cost a sizeable share of a small solve's Python time.
    """
    return _TOP[np.dtype(dtype)]


def available() -> bool:
    """Whether the compiled kernels are in use (numba importable)."""
    return numba is not None


def _jit(fastmath: bool = False):
    if numba is None:  # pragma: no cover
        return lambda f: f
    return numba.njit(nogil=True, cache=True, fastmath=fastmath)


@_jit(fastmath=True)
def _add(row, p, out):  # pragma: no cover - compiled
    for j in range(row.shape[0]):
        out[j] = row[j] + p[j]


@_jit()
def _min_bits(bits, big):  # pragma: no cover - compiled
    m = big
    for j in range(bits.shape[0]):
        x = bits[j]
        m = x if x < m else m
    return m


@_jit()
def _first(bits, m):  # pragma: no cover - compiled
    n = bits.shape[0]
    k = n
    for j in range(n):
        c = j if bits[j] == m else n
        k = c if c < k else k
    return k


@_jit()
def _row_min(row, p, buf, bits, big):  # pragma: no cover - compiled
    """min_j row_j + p_j and its first argmin; leaves row + p in buf."""
    _add(row, p, buf)
    j = _first(bits, _min_bits(bits, big))
    return j, buf[j]


@_jit()
def bid(C, p, eps, owner, assigned, max_bids, top):  # pragma: no cover - compiled
    """Gauss-Seidel forward auction at this eps until every row is assigned (in place).

    A free row i bids for j1 = argmin_j C_ij + p_j, raising p_j1 by (second best - best) + eps
    and evicting j1's owner. Returns the number of bids (at most ``max_bids``).
    """
    big = top[0]
    buf = np.empty_like(p)
    bits = buf.view(top.dtype)
    free, nf = _free_rows(assigned)
    value = np.empty_like(p[:1])  # eps in p's type, then a minimum's bits as its value
    value[0] = eps
    step = value[0]
    word = value.view(top.dtype)
    bids = 0
    while nf > 0 and bids < max_bids:
        nf -= 1
        i = free[nf]
        j1, best = _row_min(C[i], p, buf, bits, big)
        bits[j1] = big
        word[0] = _min_bits(bits, big)
        nf = _award(p, j1, best, value[0], step, owner, assigned, i, free, nf)
        bids += 1
    return bids


@_jit()
def _free_rows(assigned):  # pragma: no cover - compiled
    """The unassigned rows as a stack (the lowest on top), and their number."""
    n = assigned.shape[0]
    free = np.empty(n, np.int64)
    nf = 0
    for i in range(n - 1, -1, -1):
        if assigned[i] < 0:
            free[nf] = i
            nf += 1
    return free, nf


@_jit()
def _award(p, j1, best, second, step, owner, assigned, i, free, nf):  # pragma: no cover
    """Row i takes column j1 at price + (second - best) + eps; its owner joins the free."""
    p[j1] += second - best + step
    prev = owner[j1]
    owner[j1] = i
    assigned[i] = j1
    if prev >= 0:
        assigned[prev] = -1
        free[nf] = prev
        nf += 1
    return nf


@_jit()
def prune(C, p, owner, assigned, eps, top):  # pragma: no cover - compiled
    """Unassign the rows whose column is not within eps of their best (in place).

    Returns the number of rows kept: they satisfy eps-complementary slackness at the new eps.
    """
    n = C.shape[0]
    big = top[0]
    buf = np.empty_like(p)
    bits = buf.view(top.dtype)
    kept = 0
    for i in range(n):
        a = assigned[i]
        if a < 0:
            continue
        _, best = _row_min(C[i], p, buf, bits, big)
        kept += _keep(i, a, buf[a] - best, eps, assigned, owner)
    return kept


@_jit()
def _keep(i, a, slack, eps, assigned, owner):  # pragma: no cover - compiled
    """1 if row i stays on column a (its slack within eps), else 0 and both are freed."""
    if slack <= eps:
        return 1
    assigned[i] = -1
    owner[a] = -1
    return 0


@_jit()
def dual_value(C, p, top):  # pragma: no cover - compiled
    """sum_i u_i + sum_j v_j for u_i = min_j (C_ij + p_j), v_j = min_i (C_ij - u_i).

    u_i + v_j <= C_ij, so this is a lower bound on the optimal assignment cost (weak
    duality), before float rounding (the caller subtracts a rounding slack). One pass.
    """
    n = C.shape[0]
    big = top[0]
    buf = np.empty_like(p)
    bits = buf.view(top.dtype)
    v = np.empty_like(p)
    v[:] = np.inf
    total = 0.0
    for i in range(n):
        row = C[i]
        _, u = _row_min(row, p, buf, bits, big)
        total += np.float64(u)
        for j in range(n):
            x = row[j] - u
            v[j] = x if x < v[j] else v[j]
    for j in range(n):
        total += np.float64(v[j])
    return total


@_jit()
def extend_prices(C, cols, p_cols, p, top):  # pragma: no cover - compiled
    """Prices for all columns from prices on a subset of them (a c-transform pair).

    f_i = min_k C[i, cols_k] + p_cols_k over the subset, then p_j = max_i f_i - C_ij, so
    f_i - p_j <= C_ij for every pair. Writes p (n,), returns sum f - sum p: a lower bound
    on the optimal assignment cost (before rounding).
    """
    n = C.shape[0]
    buf = np.empty_like(p_cols)
    bits = buf.view(top.dtype)
    big = top[0]
    for j in range(n):
        p[j] = -np.inf
    total = 0.0
    for i in range(n):
        row = C[i]
        for k in range(cols.shape[0]):
            buf[k] = row[cols[k]] + p_cols[k]
        f = buf[_first(bits, _min_bits(bits, big))]
        total += np.float64(f)
        for j in range(n):
            x = f - row[j]
            p[j] = x if x > p[j] else p[j]
    for j in range(n):
        total -= np.float64(p[j])
    return total


@_jit(fastmath=True)
def _sum64(row):  # pragma: no cover - compiled
    s = 0.0
    for j in range(row.shape[0]):
        s += np.float64(row[j])
    return s


@_jit(fastmath=True)
def _sub(row, x):  # pragma: no cover - compiled
    for j in range(row.shape[0]):
        row[j] -= x


@_jit()
def _max_bits(bits):  # pragma: no cover - compiled
    m = bits[0]
    for j in range(bits.shape[0]):
        x = bits[j]
        m = x if x > m else m
    return m


@_jit()
def _reduce_row(row, bits, big):  # pragma: no cover - compiled
    """Subtract the row's minimum in place; returns (minimum, sum after, max bits after)."""
    lo = row[_first(bits, _min_bits(bits, big))]
    _sub(row, lo)
    return lo, _sum64(row), _max_bits(bits)


@_jit(fastmath=True)
def _sq_dist_row(row, na_i, nb):  # pragma: no cover - compiled
    two = np.float32(2.0)
    zero = np.float32(0.0)
    for j in range(row.shape[0]):
        x = na_i + nb[j] - two * row[j]
        row[j] = x if x > zero else zero


@_jit()
def _reduce_all(C, G, na, nb, top):  # pragma: no cover - compiled
    bits = C.view(top.dtype)
    big = top[0]
    shift = 0.0
    total = 0.0
    word = np.zeros_like(top)  # the largest bits so far, then read as a float
    for i in range(C.shape[0]):
        if G:
            _sq_dist_row(C[i], na[i], nb)
        lo, s, m = _reduce_row(C[i], bits[i], big)
        shift += np.float64(lo)
        total += s
        word[0] = m if m > word[0] else word[0]
    return shift, total, word.view(C.dtype)[0]


@_jit()
def reduce_rows(C, top):  # pragma: no cover - compiled
    """Subtract each row's minimum from C in place and summarise the reduced matrix.

    Subtract each row's minimum in place (C >= 0); returns (sum of the minima, sum, max)
    of the reduced matrix, sums in float64. One pass over C.
    """
    empty = np.empty(0, C.dtype)
    return _reduce_all(C, False, empty, empty, top)


@_jit()
def sq_cost_reduced(G, na, nb, top):  # pragma: no cover - compiled
    """Squared distances from a float32 Gram matrix, row-reduced, in place, in one pass.

    G_ij = a_i . b_j becomes max(``|a_i|^2`` + ``|b_j|^2`` - 2 G_ij, 0) minus its row's minimum.
    Returns (sum of the row minima, sum, max) of the reduced matrix, as ``reduce_rows``.
    """
    return _reduce_all(G, True, na, nb, top)


@_jit()
def gather(C, rows, cols):  # pragma: no cover - compiled
    """C[rows][:, cols] as a new contiguous matrix."""
    out = np.empty((rows.shape[0], cols.shape[0]), C.dtype)
    for a in range(rows.shape[0]):
        src = C[rows[a]]
        dst = out[a]
        for b in range(cols.shape[0]):
            dst[b] = src[cols[b]]
    return out


@_jit()
def tighten(C, p, assigned, owner, slack, max_scans, d):  # pragma: no cover - compiled
    """Shortest-path correction of the prices towards exact complementary slackness.

    Shortest-path correction d (n,) <= 0 of the prices towards exact complementary slackness
    of the complete assignment ``assigned`` (Bellman-Ford on the columns, in place on d = 0).

    The arc from column k = assigned[i] to column j weighs w_ij = (C_ij + p_j) -
    (C_ik + p_k), at least -eps after an auction phase at eps. If the distances converge,
    q = p - d satisfies C_ij + q_j >= C_ik + q_k for every row i and column j: each row's
    column is its cheapest, so the assignment is optimal and q certifies it (the caller checks
    this with ``dual_value``). A negative cycle (an assignment that is not optimal) never
    converges: the search gives up (returns -1) once it has scanned ``max_scans`` rows, or as
    soon as the rows to rescan stop shrinking (after the first pass: fewer than 3/4 of those
    of the first; later: at most twice the fewest so far, plus 16). Returns the number of
    passes otherwise. Only rows whose column's distance
    changed are scanned again; an improvement under ``slack`` (float rounding) is not one, so
    that cycles of zero weight cannot turn over forever.
    """
    return _bellman_ford(C, p, assigned, owner, slack, max_scans, d, np.zeros((0, 0), np.int64),
                         np.zeros((0, 0), C.dtype), np.zeros(0, np.int64), False)


@_jit()
def _relax(base, row, p, d, owner, nxt, slack, cols, costs, m, lists):  # pragma: no cover
    """Relax the arcs of one row (all columns, or its list's m); returns rows newly marked."""
    count = 0
    for b in range(m if lists else row.shape[0]):
        j = cols[b] if lists else b
        x = base + ((costs[b] if lists else row[j]) + p[j])
        if x < d[j]:
            d[j] = x - slack
            r = owner[j]
            count += 0 if nxt[r] else 1
            nxt[r] = True
    return count


@_jit()
def _bellman_ford(
    C, p, assigned, owner, slack, max_scans, d, cand, cand_c, cnt, lists
):  # pragma: no cover - compiled
    """The passes of ``tighten`` (over every arc, or the lists' arcs); passes or -1."""
    n = C.shape[0]
    active = np.ones(n, np.bool_)
    first = n
    fewest = n
    sweep = 0
    scans = 0
    while True:
        count = 0
        nxt = np.zeros(n, np.bool_)
        for i in range(n):
            if not active[i]:
                continue
            scans += 1
            if scans > max_scans:
                return -1
            k = assigned[i]
            row = C[i]
            base = d[k] - (row[k] + p[k]) + slack
            if lists:
                count += _relax(base, row, p, d, owner, nxt, slack, cand[i], cand_c[i], cnt[i],
                                True)
            else:
                count += _relax(base, row, p, d, owner, nxt, slack, owner, row, 0, False)
        sweep += 1
        if count == 0:
            return sweep
        if sweep == 1:
            first = count
        elif (sweep == 2 and 4 * count > 3 * first) or count > 2 * fewest + 16:
            return -1
        fewest = min(fewest, count)
        active = nxt


@_jit()
def _sq_row32(g, na_i, nb, out):  # pragma: no cover - compiled
    """Row of squared distances in float32 IEEE arithmetic, stored as float64.

    (g_j * -2 + ``|a_i|^2``) + ``|b_j|^2``, clamped at 0 (NaN kept): the operations and order
    of ``otcfm.couplings.sq_cost`` in float32, so the values are bitwise the same.
    """
    m2 = np.float32(-2.0)
    zero = np.float32(0.0)
    for j in range(g.shape[0]):
        x = (g[j] * m2 + na_i) + nb[j]
        out[j] = np.float64(zero if x < zero else x)


@_jit(fastmath={"reassoc", "nsz"})
def _shift_row64(out, lo):  # pragma: no cover - compiled
    """Subtract lo from the row in place; returns (sum, max) after (NaN/inf propagate)."""
    s = 0.0
    m = 0.0
    for j in range(out.shape[0]):
        x = out[j] - lo
        out[j] = x
        s += x
        m = x if x > m else m
    return s, m


@_jit()
def sq_cost_reduced64(G, na, nb, out, lo):  # pragma: no cover - compiled
    """float64 row-reduced squared distances from a float32 Gram matrix, in one pass.

    ``out`` (n0, n1) float64 receives C_ij - lo_i, with C the float32 squared distances of
    ``otcfm.couplings.sq_cost`` (bitwise) and ``lo`` (n0,) their row minima. Returns (sum of
    the row minima, sum, max) of the reduced matrix; a non-finite entry makes the sum NaN
    or inf.
    """
    offset = 0.0
    total = 0.0
    cmax = 0.0
    bits = out.view(np.int64)
    big = np.iinfo(np.int64).max
    for i in range(G.shape[0]):
        _sq_row32(G[i], na[i], nb, out[i])
        # entries >= 0 or NaN: the least bits are the least value (NaN above inf)
        lo[i] = out[i, _first(bits[i], _min_bits(bits[i], big))]
        s, m = _shift_row64(out[i], lo[i])
        offset += lo[i]
        total += s
        cmax = m if m > cmax else cmax
    return offset, total, cmax
