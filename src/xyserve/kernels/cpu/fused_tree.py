"""Greedy token trees of the fused draft in one numba call: every level's pass, and the choice
of each level's children and frontier, with no Python between the passes.

The tree grows as ``spec.draft``'s pass-by-pass loop grows it (which stays the reference):

- the call's rows are a causal catch-up pass; output row ``i`` is request ``i``'s last token,
  whose logits give the root's children, the draft's top ``branching[0]`` tokens;
- before pass ``l`` (``l = 1, 2, ...`` while ``l < levels[i]``) the frontier is the newest
  level's nodes, or their ``beam`` best by path score (ties: the earlier node), in node order;
  each frontier node runs as one row at position ``base + depth``, its K/V written to the slot
  of position ``base + r`` (``r``: how many nodes of the request ran before it; ``base``: the
  position after the request's last token), seeing the table's positions below ``base`` and
  its ancestors' slots (its own included);
- each node's children are the draft's top ``branching[level]`` tokens after it (ties: the
  lower index of the packed vocabulary: the lower token id, or with a token map the one the map
  lists first), with the path's log-probability as score when ``dynamic`` (scores stay 0
  for a static tree, and a one-child level takes the argmax).

The caller allocates the slots (``base + r`` for every node that may run) and picks the
proposed nodes from the candidates (a dynamic tree keeps its ``nodes`` best).
"""

from __future__ import annotations

import numpy as np

from xyserve.kernels.cpu import exp
from xyserve.kernels.cpu import fused_forward as ff
from xyserve.kernels.cpu.cache import depends_on
from xyserve.kernels.cpu.exp import exp_parts

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def top_b(values, b, out):  # pragma: no cover - compiled
    """``out[:b]``: indices of the ``b`` largest values, largest first, ties by lower index
    (NaN never chosen; where fewer than ``b`` numbers exist, as in a broken draft's NaN
    row, the rest are the lowest unchosen ids: valid tokens, which the target rejects). One
    pass keeping the best ``b`` so far sorted: a value enters only if strictly larger than
    the ``b``-th, so an equal later index never displaces an earlier one."""
    best = np.full(b, -np.inf, np.float32)
    for j in range(b):
        out[j] = -1
    for v in range(values.shape[0]):
        x = values[v]
        if not x > best[b - 1] and out[b - 1] >= 0:
            continue
        if x != x:  # NaN
            continue
        j = b - 1
        while j > 0 and (out[j - 1] < 0 or x > best[j - 1]):
            best[j] = best[j - 1]
            out[j] = out[j - 1]
            j -= 1
        best[j] = x
        out[j] = v
    cand = 0
    for j in range(b):
        if out[j] >= 0:
            continue
        while cand in out[:b]:
            cand += 1
        out[j] = cand


def log_softmax_at(values, idx, b, out):  # pragma: no cover - compiled
    """``out[:b]``: log-softmax of ``values`` at ``idx[:b]`` (float32 sums, ``exp_parts``'s
    exp, so both passes vectorize)."""
    n = values.shape[0]
    m = values[0]
    for v in range(1, n):
        m = max(m, values[v])
    parts = np.empty(n, np.float32)
    bits = np.empty(n, np.int32)  # 2**k of each value, as float bits
    for v in range(n):
        p, k = exp_parts(values[v] - m)
        parts[v] = p
        bits[v] = (k + 127) << 23
    pow2 = bits.view(np.float32)
    s = np.float32(0.0)
    for v in range(n):
        s += parts[v] * pow2[v]
    lse = np.float64(m) + np.log(np.float64(s))
    for j in range(b):
        out[j] = np.float64(values[idx[j]]) - lse


def _expand(i, node, level, row, am, branching, dynamic, tokens, parents, depth, score, count):
    """Request ``i``'s candidates gain node ``node``'s children (``-1``: the root's)."""
    b = branching[level]
    idx = np.empty(b, np.int64)
    vals = np.zeros(b, np.float64)
    if b == 1 and not dynamic:
        idx[0] = am
    else:
        top_b_c(row, b, idx)
    if dynamic:
        log_softmax_at_c(row, idx, b, vals)
    base_score = 0.0 if node < 0 else score[i, node]
    for j in range(b):
        c = count[i]
        tokens[i, c] = idx[j]
        parents[i, c] = node
        depth[i, c] = level
        score[i, c] = base_score + vals[j]
        count[i] = c + 1


def _frontier(i, d, beam, depth, score, count, out):
    """The nodes of depth ``d`` that run next (all, or the ``beam`` best), in node order;
    returns how many were written to ``out``."""
    n = 0
    for c in range(count[i]):
        if depth[i, c] == d:
            out[n] = c
            n += 1
    if beam <= 0 or n <= beam:
        return n
    picked = np.empty(beam, np.int64)
    chosen = np.zeros(n, np.bool_)
    for j in range(beam):
        best = -1
        for f in range(n):
            if chosen[f]:
                continue
            if best < 0 or score[i, out[f]] > score[i, out[best]]:
                best = f
        chosen[best] = True
        picked[j] = out[best]
    picked.sort()
    for j in range(beam):
        out[j] = picked[j]
    return beam


def _greedy_tree(
    rows,
    levels,
    branching,
    beam,
    dynamic,
    weights,
    k_cache,
    v_cache,
    num_heads,
    eps,
    tokens,
    parents,
    depth,
    score,
    count,
):  # pragma: no cover - compiled
    """See the module docstring. ``tokens``, ``parents``, ``depth``, ``score`` [S, C]: the
    candidates of each request in creation order (``count[i]`` of them)."""
    pos, table_of, tables, out_rows = rows[1], rows[3], rows[4], rows[8]
    sel = out_rows.shape[0]
    bs = k_cache.shape[2]
    vocab = ff._head_width_c(weights)
    cap = tokens.shape[1]
    logits = np.empty((sel, vocab), np.float32)
    argmax = np.empty(sel, np.int64)
    ff._serial_c(rows, weights, k_cache, v_cache, num_heads, eps, logits, argmax)
    base = np.empty(sel, np.int64)
    tab = np.empty(sel, np.int64)
    run_slot = np.full((sel, cap), -1, np.int64)
    num_run = np.zeros(sel, np.int64)
    for i in range(sel):
        base[i] = pos[out_rows[i]] + 1
        tab[i] = table_of[out_rows[i]]
        count[i] = 0
        _expand_c(i, -1, 0, logits[i], argmax[i], branching, dynamic, tokens, parents, depth,
                  score, count)  # fmt: skip
    front = np.empty((sel, cap), np.int64)
    num_front = np.zeros(sel, np.int64)
    for lv in range(1, branching.shape[0]):
        total = 0
        n_extra = 0
        for i in range(sel):
            num_front[i] = 0
            if lv < levels[i]:
                num_front[i] = _frontier_c(i, lv - 1, beam, depth, score, count, front[i])
                total += num_front[i]
                n_extra += num_front[i] * lv  # each node sees lv slots: its path
        if total == 0:
            break
        r_ids = np.empty(total, np.int64)
        r_pos = np.empty(total, np.int64)
        r_slots = np.empty(total, np.int64)
        r_table = np.empty(total, np.int64)
        r_ctx = np.empty(total, np.int64)
        r_off = np.zeros(total + 1, np.int64)
        r_extra = np.empty(n_extra, np.int64)
        j = 0
        e = 0
        for i in range(sel):
            for f in range(num_front[i]):
                node = front[i, f]
                run_slot[i, node] = num_run[i]
                num_run[i] += 1
                d = depth[i, node]
                a = node
                for k in range(d, -1, -1):  # the path, root-most first, the node last
                    p = base[i] + run_slot[i, a]
                    r_extra[e + k] = tables[tab[i], p // bs] * bs + p % bs
                    a = parents[i, a]
                r_ids[j] = tokens[i, node]
                r_pos[j] = base[i] + d
                r_slots[j] = r_extra[e + d]
                r_table[j] = tab[i]
                r_ctx[j] = base[i]
                e += d + 1
                r_off[j + 1] = e
                j += 1
        r_logits = np.empty((total, vocab), np.float32)
        r_argmax = np.empty(total, np.int64)
        node_rows = (r_ids, r_pos, r_slots, r_table, tables, r_ctx, r_off, r_extra,
                     np.arange(total))  # fmt: skip
        ff._serial_c(node_rows, weights, k_cache, v_cache, num_heads, eps, r_logits, r_argmax)
        j = 0
        for i in range(sel):
            for f in range(num_front[i]):
                _expand_c(i, front[i, f], lv, r_logits[j], r_argmax[j], branching, dynamic,
                          tokens, parents, depth, score, count)  # fmt: skip
                j += 1


if njit is not None:
    _opts = {"fastmath": False, "cache": True, "nogil": True, "error_model": "numpy"}
    # top_b without fastmath, which would assume no NaN; the reference loop calls these
    # same compilations, so its ranks and scores are the kernel's.
    top_b_c = njit(**_opts)(top_b)
    log_softmax_at_c = depends_on(exp)(njit(**{**_opts, "fastmath": True})(log_softmax_at))
    _expand_c = njit(**_opts)(_expand)
    _frontier_c = njit(**_opts)(_frontier)
    _greedy_tree_c = depends_on(ff, exp, *ff.DEPENDS)(njit(**_opts)(_greedy_tree))


def max_runs(branching: tuple[int, ...], beam: int | None, levels: int) -> int:
    """The most nodes that run through the draft (one K/V slot each): every level's frontier
    but the last level's."""
    total, front = 0, 1
    for b in branching[: levels - 1]:
        front *= b
        if beam is not None:
            front = min(front, beam)
        total += front
    return total


def greedy_tree(
    w: ff.PackedWeights,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    rows: ff.Rows,
    levels: np.ndarray,
    branching: tuple[int, ...],
    beam: int | None,
    dynamic: bool,
    capacity: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every request's tree candidates in one call (module docstring): ``tokens``,
    ``parents``, ``depth``, ``score`` [S, C] and ``count`` [S]; ``capacity``: the most
    candidates a request's tree can have (``spec.tree.max_candidates``)."""
    if w.amx:
        raise ValueError("tree candidates run the serial pass over FMA panels: pack without AMX")
    sel = rows.out_rows.shape[0]
    cap = max(1, capacity)
    tokens = np.zeros((sel, cap), np.int64)
    parents = np.zeros((sel, cap), np.int64)
    depth = np.zeros((sel, cap), np.int64)
    score = np.zeros((sel, cap), np.float64)
    count = np.zeros(sel, np.int64)
    _greedy_tree_c(
        ff._row_tuple(rows), levels, np.asarray(branching, np.int64), beam or 0, dynamic,
        ff._weight_tuple(w), k_cache, v_cache, w.num_heads, w.eps, tokens, parents, depth, score,
        count,
    )  # fmt: skip
    return tokens, parents, depth, score, count
