"""Token sampling: logit bias, allowed-token sets, bad words, grammar masks, penalties, temperature, top-k/p, min-p, logprobs.

Each row is one request's sequence. Work shared by the batch (grammar masks, logit bias,
greedy argmax) is batched; per-row work runs row by row and a failure there (say, a
distribution with no finite logit left) becomes that row's ``SampleResult.error``, so the
other requests of the step are sampled as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xyserve.kernels.ops import greedy_ids
from xyserve.sampling_params import SamplingParams


@dataclass
class SampleRow:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None  # per-request, seeded: reproducible whatever the batch
    blocked_ids: list[int]  # ids masked out (EOS/stop ids before min_tokens; bad_words' bans)
    matcher: Any = None  # structured.Matcher: the grammar's allowed tokens, or None


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None  # None unless the request asked for logprobs
    top_logprobs: list[tuple[int, float]]  # (token id, logprob), best first
    rank: int
    error: str | None = None  # this row could not be sampled; the others are unaffected


def apply_penalties(logits: torch.Tensor, row: SampleRow) -> torch.Tensor:
    p = row.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.long)
        if seen.numel():
            vals = logits[seen]
            logits[seen] = torch.where(
                vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
            )
    if (p.presence_penalty or p.frequency_penalty) and row.output_ids:
        counts = torch.bincount(
            torch.tensor(row.output_ids, dtype=torch.long), minlength=logits.numel()
        ).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / top-p / min-p set to -inf."""
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, idx = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the token crossing top_p
        logits = logits.masked_fill(remove.scatter(0, idx, remove), float("-inf"))
    return logits


def bad_word_bans(words: list[list[int]], output_ids: list[int]) -> list[int]:
    """The token ids that would complete a bad word now: each word's last token where the
    output ends with all of its tokens but that one (a one-token word: always)."""
    n = len(output_ids)
    return [w[-1] for w in words if len(w) - 1 <= n and output_ids[n - len(w) + 1 :] == w[:-1]]


def apply_constraints(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Logit bias, allowed-token sets and grammar masks, batched over the rows that have them.

    Returns ``logits`` itself when no row is constrained, else a modified copy (the raw
    logits stay untouched for logprobs, which report the model's own distribution).
    """
    biased = [i for i, r in enumerate(rows) if r.params.logit_bias]
    masked = [i for i, r in enumerate(rows) if r.matcher is not None]
    allowed = [i for i, r in enumerate(rows) if r.params.allowed_token_ids is not None]
    if not biased and not masked and not allowed:
        return logits
    logits = logits.clone()
    for i in allowed:  # everything outside the set to -inf (bias cannot bring it back)
        keep = torch.tensor(rows[i].params.allowed_token_ids, dtype=torch.long)
        row = torch.full_like(logits[i], float("-inf"))
        row[keep] = logits[i, keep]
        logits[i] = row
    if biased:
        idx_r, idx_t, vals = [], [], []
        for i in biased:
            for tid, b in rows[i].params.logit_bias.items():
                idx_r.append(i)
                idx_t.append(tid)
                vals.append(b)
        logits.index_put_(
            (torch.tensor(idx_r), torch.tensor(idx_t)),
            torch.tensor(vals, dtype=logits.dtype),
            accumulate=True,
        )
    if masked:
        from xyserve.engine.structured import fill_masks

        allowed = fill_masks([rows[i].matcher for i in masked], logits.shape[1])
        sub = torch.tensor(masked)
        logits[sub] = logits[sub].masked_fill(~allowed, float("-inf"))
    return logits


def _sample_row(lg: torch.Tensor, row: SampleRow) -> int:
    """One row's token from its (constrained, unpenalised) logits; raises if none is possible."""
    p = row.params
    lg = lg.clone()
    if row.blocked_ids:
        held = lg[row.blocked_ids]
        lg[row.blocked_ids] = float("-inf")
        if row.matcher is not None and not torch.isfinite(lg).any():
            # the grammar allows only tokens that min_tokens holds back (a stop id it needs)
            # or bad_words bans: the grammar wins, as where it completes short of min_tokens
            lg[row.blocked_ids] = held
    lg = apply_penalties(lg, row)
    if not torch.isfinite(lg).any():
        raise ValueError("no token is allowed (every logit is -inf after masks and penalties)")
    if p.greedy:
        return int(lg.argmax())
    probs = filter_logits(lg, p).softmax(-1)
    if not torch.isfinite(probs).all():
        raise ValueError("the sampling distribution is not finite")
    return int(torch.multinomial(probs, 1, generator=row.generator))


def sample(
    logits: torch.Tensor, rows: list[SampleRow], argmax: list[int] | None = None
) -> list[SampleResult]:
    """``logits``: [R, V] float32 raw model logits, one row per request that samples;
    ``argmax``: their argmax (first index on ties) where the step has it already."""
    # Logprobs (of the raw model distribution, as vLLM) only when some request asks for them.
    want = any(r.params.logprobs is not None for r in rows)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want else None
    constrained = apply_constraints(logits, rows)
    greedy = argmax if argmax is not None and constrained is logits else greedy_ids(constrained)
    results = []
    for i, row in enumerate(rows):
        p = row.params
        simple = p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
        if p.greedy and simple and not row.blocked_ids and row.matcher is None:
            tok = greedy[i]
        else:
            try:
                tok = _sample_row(constrained[i], row)
            except (ValueError, RuntimeError) as e:  # this request's numbers, not the batch's
                results.append(SampleResult(-1, None, [], 0, error=f"sampling failed: {e}"))
                continue
        top: list[tuple[int, float]] = []
        rank, logprob = 0, None
        if p.logprobs is not None:
            lp = raw_logprobs[i]
            if p.logprobs:
                vals, ids = torch.topk(lp, p.logprobs)
                top = list(zip(ids.tolist(), vals.tolist()))
            rank = int((lp > lp[tok]).sum()) + 1
            logprob = float(lp[tok])
        results.append(SampleResult(tok, logprob, top, rank))
    return results
