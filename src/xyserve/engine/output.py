"""Per-request output processing: logprob entries, detokenisation, stop checks, n>1 fan-out.

Everything here works on one request (one ``Group`` of ``n`` children) at a time, so the
engine can fail exactly the request whose processing raised and carry on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from xyserve.engine.request import Request
from xyserve.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from xyserve.sampling_params import SamplingParams


@dataclass
class Child:
    """One of the ``n`` sequences of a request: its detokenized text and logprobs."""

    request: Request
    index: int
    generator: torch.Generator | None
    text: str = ""
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    matcher: Any = None  # the structured-output matcher, when the request has a grammar
    # Incremental detokenisation: text is final up to output token ``read_offset``; decoding
    # restarts at ``prefix_offset`` so that tokenizers that strip a leading space decode the
    # window as they decode the whole text.
    prefix_offset: int = 0
    read_offset: int = 0
    counted: bool = False  # its finish is in the metrics


@dataclass
class Group:
    """A request as the client sees it: one prompt, ``n`` children."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Child] = field(default_factory=list)
    metrics: RequestMetrics | None = None
    error: str | None = None  # set when processing this request failed; it is then finished
    # SamplingParams.prompt_logprobs: an entry per prompt token (None until its position has
    # run; the first token's stays None)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or all(c.finish_reason is not None for c in self.children)


class OutputProcessor:
    """Turns sampled tokens into text, logprobs and finish reasons for one child at a time."""

    def __init__(self, tokenizer: Any, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def record_prompt_logprobs(self, group: Group, first: int, logits: torch.Tensor) -> None:
        """The prompt logprobs that ``logits`` (the raw logits of prompt positions ``first``,
        ``first`` + 1, ...) give: the entry of each next prompt token, with the top-k."""
        k = group.params.prompt_logprobs
        lp = torch.log_softmax(logits.float(), dim=-1)
        n = lp.shape[0]
        targets = torch.tensor(group.prompt_token_ids[first + 1 : first + 1 + n])
        own = lp.gather(1, targets[:, None])
        ranks = ((lp > own).sum(-1) + 1).tolist()
        top_vals, top_ids = torch.topk(lp, k) if k else (None, None)
        for i in range(n):
            tid = int(targets[i])
            entry = {}
            if k:
                for rank, (t, v) in enumerate(zip(top_ids[i].tolist(), top_vals[i].tolist()), 1):
                    entry[t] = Logprob(v, rank)
            entry[tid] = Logprob(float(own[i]), ranks[i])
            self._decode_entry(entry)
            group.prompt_logprobs[first + 1 + i] = entry

    def _decode_entry(self, entry: dict[int, Logprob]) -> None:
        if self.tokenizer is not None:
            for tid, lp in entry.items():
                lp.decoded_token = self.tokenizer.decode([tid], skip_special_tokens=False)

    def record_logprobs(self, child: Child, res: Any) -> None:
        """Append the sampled token's logprob entry (``res`` is a sampler SampleResult)."""
        if child.logprobs is None:
            return
        child.cumulative_logprob += res.logprob
        entry = {tid: Logprob(lp) for tid, lp in res.top_logprobs}
        entry[res.token_id] = Logprob(res.logprob, res.rank)
        self._decode_entry(entry)
        for rank, (tid, _) in enumerate(res.top_logprobs, start=1):
            entry[tid].rank = rank
        child.logprobs.append(entry)

    def finish_reason(self, group: Group, child: Child) -> tuple[str | None, int | str | None]:
        """Detokenize the child's new token; return (finish reason, stop reason) if it ends."""
        r = child.request
        p = group.params
        tok = r.output_token_ids[-1]
        reason, stop_reason = None, None
        if tok in p.stop_token_ids and len(r.output_token_ids) > p.min_tokens - 1:
            reason, stop_reason = "stop", tok
        elif not p.ignore_eos and tok in self.eos_token_ids:
            if len(r.output_token_ids) >= p.min_tokens:
                reason = "stop"
        # As in vLLM: the token that stopped the sequence (a stop id or EOS) stays in the
        # token ids, but its text only with include_stop_str_in_output.
        drop_stop_token = reason is not None and not p.include_stop_str_in_output
        if self.tokenizer is not None:
            prev = len(child.text)
            child.text += self.decode_delta(child, p.skip_special_tokens)
            # As vLLM: a stop string counts where it ends in the text of a token after the
            # first min_tokens, the earliest a stop id or EOS may come too.
            if reason is None and p.stop_strings and len(r.output_token_ids) > p.min_tokens:
                hit = find_stop(child.text, p.stop_strings, prev)
                if hit is not None:
                    pos, s = hit
                    child.text = child.text[: pos + (len(s) if p.include_stop_str_in_output else 0)]
                    reason, stop_reason = "stop", s
        if reason is None and child.matcher is not None and child.matcher.is_finished():
            reason = "stop"  # the grammar is complete: nothing more may follow
        if reason is None and (
            len(r.output_token_ids) >= r.max_tokens or r.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is not None and self.tokenizer is not None and not isinstance(stop_reason, str):
            # Once per sequence: the exact text, including a trailing partial character that
            # the incremental decoder holds back.
            ids = r.output_token_ids[:-1] if drop_stop_token else r.output_token_ids
            child.text = self.tokenizer.decode(ids, p.skip_special_tokens)
        return reason, stop_reason

    def decode_delta(self, child: Child, skip_special_tokens: bool) -> str:
        """The text the newest tokens add, decoding a few tokens rather than the whole output
        (vLLM's incremental detokenisation); "" while the tail is an incomplete character."""
        ids = child.request.output_token_ids
        dec = self.tokenizer.decode
        prefix = dec(ids[child.prefix_offset : child.read_offset], skip_special_tokens)
        text = dec(ids[child.prefix_offset :], skip_special_tokens)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            child.prefix_offset, child.read_offset = child.read_offset, len(ids)
            return text[len(prefix) :]
        return ""

    @staticmethod
    def make_output(group: Group) -> RequestOutput:
        outs = [
            CompletionOutput(
                index=c.index,
                text=c.text,
                token_ids=list(c.request.output_token_ids),
                cumulative_logprob=c.cumulative_logprob if c.logprobs is not None else None,
                logprobs=list(c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason,
                stop_reason=c.request.stop_reason,
            )
            for c in group.children
        ]
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            outputs=outs,
            finished=group.finished,
            metrics=group.metrics,
            num_cached_tokens=group.metrics.num_cached_tokens if group.metrics else 0,
            error=group.error,
            prompt_logprobs=list(group.prompt_logprobs)
            if group.prompt_logprobs is not None
            else None,
        )


def find_stop(text: str, stops: list[str], prev_len: int) -> tuple[int, str] | None:
    """The first stop string that ends after ``prev_len`` (the text already checked)."""
    best = None
    for s in stops:
        start = max(0, prev_len - len(s) + 1)
        pos = text.find(s, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best
