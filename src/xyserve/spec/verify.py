"""Acceptance of proposed tokens against the target's logits (the Verify stage's sampling).

A verify stage yields ``k + 1`` logits rows for ``k`` proposed tokens ``d_0 .. d_{k-1}``: row
``i`` is the target's distribution for the token after ``d_{i-1}``. Rows are walked in order:

- **greedy:** ``d_i`` is accepted while it equals the target's argmax; the first mismatch emits
  the argmax instead, so the output is exactly what decoding one token a step would give;
- **sampling** (Leviathan et al. 2023, Chen et al. 2023): ``d_i`` drawn from the draft's ``q`` is
  accepted with probability ``min(1, p(d_i) / q(d_i))``; on rejection a token is drawn from
  ``norm(max(0, p - q))``; when every proposal is accepted a bonus token is drawn from the last
  row. A deterministic proposal (n-gram; a draft's argmax for a greedy or seeded request) has a
  one-hot ``q``: accept with ``p(d_i)``, else a draw from ``p`` with ``d_i`` removed. That is
  done as one draw ``x`` from ``p`` with the request's generator, exactly the draw decoding
  without proposals makes, accepting ``d_i`` when ``x == d_i`` and emitting ``x`` otherwise:
  the same distribution, and a position takes one draw from the generator however many tokens
  were proposed, so a seeded request gives the output it gives without speculation whatever
  the proposal lengths (which timing, the batch and the budget decide). Either way each
  emitted token is distributed exactly as ``p``.

``p`` is the target's distribution after every sampling parameter (min-tokens blocking,
penalties over the tokens so far *including* the accepted proposals, temperature, top-k/p,
min-p), through the sampler's own functions, with the request's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from xyserve.engine.sampler import SampleResult, SampleRow, apply_penalties, filter_logits
from xyserve.kernels.ops import greedy_ids
from xyserve.spec import tree


@dataclass
class VerifyResult:
    token_ids: list[int]  # accepted proposals, then the target's own token (correction/bonus)
    num_accepted: int
    samples: list[SampleResult]  # one per emitted token (logprobs filled when asked)
    path: list[int]  # the accepted proposals' indices in the draft (a prefix for a chain)


def target_logits(logits: torch.Tensor, row: SampleRow) -> torch.Tensor:
    """One row's raw logits with blocking and penalties applied (before temperature)."""
    lg = logits.clone()
    if row.blocked_ids:
        lg[row.blocked_ids] = float("-inf")
    return apply_penalties(lg, row)


def verify_tokens(
    logits: torch.Tensor,
    draft: list[int],
    row: SampleRow,
    min_tokens_blocked: list[int],
    draft_probs: torch.Tensor | None = None,
    tree_parents: tree.Parents | None = None,
    argmax: list[int] | None = None,
) -> VerifyResult:
    """Accept a prefix of ``draft`` (a path of its tree) and emit one more token from the target.

    ``logits``: [len(draft) + 1, V] raw target logits, row 0 for the last real token and row
    ``i + 1`` for proposal ``i``. ``row``: the request before this step (its ``blocked_ids`` are
    ignored: ``min_tokens_blocked`` is applied at each position while fewer than ``min_tokens``
    tokens exist). ``draft_probs``: [len(draft), V] the draft's distributions, or None for a
    deterministic (one-hot) proposer. ``tree_parents``: ``draft`` is a token tree
    (:mod:`xyserve.spec.tree`, its first ``len(draft)`` nodes), greedy requests only; the
    longest path the target's argmax follows is accepted. ``argmax``: the raw rows' argmax
    (first index on ties) where the step computed it already.
    """
    k = len(draft)
    if logits.shape[0] != k + 1:
        raise ValueError(
            f"verify needs {k + 1} logits rows for {k} proposals, got {logits.shape[0]}"
        )
    p = row.params
    if tree_parents is not None and not p.greedy:
        raise ValueError("token trees are verified for greedy requests only")
    plain = (
        p.greedy
        and p.repetition_penalty == 1.0
        and not p.presence_penalty
        and not p.frequency_penalty
        and len(row.output_ids) >= p.min_tokens
    )
    # the engine's argmax (a numba kernel for float32 CPU rows): torch's own goes parallel on
    # its OpenMP pool past 32k elements, which fights the fused step's numba threads for the
    # cores (docs/perf.md, "Panels")
    if not plain:
        argmax = None
    elif argmax is None:
        argmax = greedy_ids(logits)
    emitted: list[int] = []
    path: list[int] = []  # accepted proposals (node indices)
    rows_used: list[int] = []
    cur = -1  # the root: the last real token, logits row 0
    while True:
        r = cur + 1
        rows_used.append(r)
        kids = tree.children(cur, k, tree_parents)
        if argmax is not None:
            tok = argmax[r]
        else:
            outs = row.output_ids + emitted
            blocked = min_tokens_blocked if len(outs) < p.min_tokens else []
            lg = target_logits(logits[r], replace(row, output_ids=outs, blocked_ids=blocked))
            if p.greedy:
                tok = int(lg.argmax())
            else:
                probs = filter_logits(lg, p).softmax(-1)
                nxt = kids[0] if kids else None
                q = None if nxt is None or draft_probs is None else draft_probs[nxt]
                tok = _sample_step(probs, None if nxt is None else draft[nxt], q, row.generator)
        emitted.append(tok)
        match = next((c for c in kids if draft[c] == tok), None)
        if match is None:
            break
        path.append(match)
        cur = match
    samples = _logprob_results(logits, rows_used, emitted, p.logprobs)
    return VerifyResult(emitted, len(path), samples, path)


def _sample_step(
    probs: torch.Tensor, proposed: int | None, q: torch.Tensor | None, gen: torch.Generator | None
) -> int:
    """One position: the proposal if accepted, else a draw from the residual (or ``probs``)."""
    if proposed is None or q is None:
        # the bonus position, or a deterministic proposal: the plain sampler's own draw (the
        # caller accepts the proposal where the draw equals it; see the module docstring)
        return int(torch.multinomial(probs, 1, generator=gen))
    p_d = float(probs[proposed])
    q_d = float(q[proposed])
    ratio = 1.0 if q_d <= 0.0 else min(1.0, p_d / q_d)
    if p_d > 0.0 and float(torch.rand((), generator=gen)) < ratio:
        return proposed
    residual = (probs - q).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p == q up to float: p itself
        residual = probs
    tok = int(torch.multinomial(residual, 1, generator=gen))
    # A residual draw never equals the rejected proposal (its mass is zero there), so the
    # caller's "tok == proposal" test correctly reads it as a rejection.
    return tok


def _logprob_results(
    logits: torch.Tensor, rows: list[int], emitted: list[int], num: int | None
) -> list[SampleResult]:
    """Logprobs of the raw model distribution at each emitted position, as the sampler gives."""
    if num is None:
        return [SampleResult(t, None, [], 0) for t in emitted]
    lp = torch.log_softmax(logits[rows], dim=-1)
    out = []
    for i, tok in enumerate(emitted):
        top: list[tuple[int, float]] = []
        if num:
            vals, ids = torch.topk(lp[i], num)
            top = list(zip(ids.tolist(), vals.tolist()))
        rank = int((lp[i] > lp[i, tok]).sum()) + 1
        out.append(SampleResult(tok, float(lp[i, tok]), top, rank))
    return out
