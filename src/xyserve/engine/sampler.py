"""Token sampling: penalties, temperature, top-k, top-p, min-p, per-request seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xyserve.kernels.cpu_argmax import greedy_ids
from xyserve.sampling_params import SamplingParams


@dataclass
class SampleRow:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None  # per-request, seeded: reproducible whatever the batch
    blocked_ids: list[int]  # ids masked out (EOS/stop ids before min_tokens)


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None  # None unless the request asked for logprobs
    top_logprobs: list[tuple[int, float]]  # (token id, logprob), best first
    rank: int


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


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> list[SampleResult]:
    """``logits``: [R, V] float32 raw model logits, one row per request that samples."""
    # Logprobs (of the raw model distribution, as vLLM) only when some request asks for them.
    want = any(r.params.logprobs is not None for r in rows)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want else None
    greedy = greedy_ids(logits)
    results = []
    for i, row in enumerate(rows):
        p = row.params
        simple = p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
        if p.greedy and simple and not row.blocked_ids:
            tok = greedy[i]
        else:
            lg = logits[i].clone()
            if row.blocked_ids:
                lg[row.blocked_ids] = float("-inf")
            lg = apply_penalties(lg, row)
            if p.greedy:
                tok = int(lg.argmax())
            else:
                probs = filter_logits(lg, p).softmax(-1)
                tok = int(torch.multinomial(probs, 1, generator=row.generator))
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
