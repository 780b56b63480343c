"""Prompt lookup (n-gram) proposals: continue the request as its own text continued before.

The last ``n`` tokens (``prompt_lookup_max`` down to ``prompt_lookup_min``) are searched for
earlier in the request's tokens; the tokens that followed the longest, then most recent, match
are proposed. No model runs, so a proposal costs one vectorised scan of the tokens.

A recent match can end fewer than ``k`` tokens before the end of the text (in periodic text,
one period before it). Its continuation then runs into the suffix itself, and the proposal
goes on copying from what it has just proposed, as an overlapping LZ77 copy does: the text is
assumed to keep repeating with the period the match found. Without this, text repeating with
period 2 could never be proposed more than 2 tokens at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xyserve.engine.request import Request


def propose_ngram(tokens: list[int] | np.ndarray, k: int, min_n: int, max_n: int) -> list[int]:
    """``k`` tokens continuing the longest recent earlier match of the token suffix, or none.

    The continuation is ``tokens[i + 1 :]`` extended by copying from itself (period
    ``len(tokens) - 1 - i``) when it is shorter than ``k``.
    """
    arr = np.asarray(tokens, dtype=np.int64)
    length = arr.shape[0]
    if k < 1 or length < min_n + 1:
        return []
    # Candidate ends: earlier positions i (with a token after them) where tokens[i] == last.
    cand = np.flatnonzero(arr[: length - 1] == arr[length - 1])
    if cand.size == 0:
        return []
    matched = np.ones(cand.size, dtype=np.int64)
    alive = np.ones(cand.size, dtype=bool)
    for n in range(1, max_n):
        back = cand - n
        ok = alive & (back >= 0)
        ok[ok] &= arr[back[ok]] == arr[length - 1 - n]
        matched[ok] += 1
        alive = ok
        if not alive.any():
            break
    best_len = int(matched.max())
    if best_len < min_n:
        return []
    # Among the longest matches, the most recent (the largest end position).
    i = int(cand[np.flatnonzero(matched == best_len)[-1]])
    cont = arr[i + 1 : i + 1 + k]
    if cont.shape[0] < k:  # the match overlaps the suffix: keep repeating its period
        cont = np.resize(cont, k)
    return cont.tolist()


@dataclass
class NgramProposer:
    """The ``ngram`` method: each request's proposal from its own tokens."""

    min_n: int
    max_n: int

    def propose(self, requests: list[Request], caps: dict[str, int]) -> dict[str, list[int]]:
        out = {}
        for r in requests:
            toks = propose_ngram(r.all_token_ids, caps[r.request_id], self.min_n, self.max_n)
            if toks:
                out[r.request_id] = toks
        return out
