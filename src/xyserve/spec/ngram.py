"""Prompt lookup (n-gram) proposals: continue the request as its own text continued before.

The last ``n`` tokens (``prompt_lookup_max`` down to ``prompt_lookup_min``) are searched for
earlier in the request's tokens; the tokens that followed the longest, then most recent, match
are proposed. No model runs, so a proposal costs one scan of the tokens backwards from the
end, compiled with numba where it is installed (a loop in Python otherwise), over an array the
proposer keeps per request and appends each step's new tokens to: at batch 1 on a small model
a step is short enough that converting the whole token list and scanning it with array
operations each step was a visible share of it (docs/perf.md, "Host work per step at batch 1").

A recent match can end fewer than ``k`` tokens before the end of the text (in periodic text,
one period before it). Its continuation then runs into the suffix itself, and the proposal
goes on copying from what it has just proposed, as an overlapping LZ77 copy does: the text is
assumed to keep repeating with the period the match found. Without this, text repeating with
period 2 could never be proposed more than 2 tokens at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xyserve.engine.request import Request

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def _longest_match(arr: np.ndarray, length: int, min_n: int, max_n: int) -> int:
    """The end position ``i`` (< length - 1) of the longest, then most recent, earlier match
    of the last ``min_n .. max_n`` tokens of ``arr[:length]``; -1 where none is ``min_n``
    long. A scan from the end that stops at the first match of ``max_n``: one pass, no
    arrays."""
    last = arr[length - 1]
    best_i, best_n = -1, 0
    for i in range(length - 2, -1, -1):
        if arr[i] != last:
            continue
        n = 1
        while n < max_n and i - n >= 0 and arr[i - n] == arr[length - 1 - n]:
            n += 1
        if n > best_n:
            best_i, best_n = i, n
            if n == max_n:
                break
    return best_i if best_n >= min_n else -1


if njit is not None:
    _longest_match = njit(cache=True, nogil=True)(_longest_match)


def propose_ngram(tokens: list[int] | np.ndarray, k: int, min_n: int, max_n: int) -> list[int]:
    """``k`` tokens continuing the longest recent earlier match of the token suffix, or none.

    The continuation is ``tokens[i + 1 :]`` extended by copying from itself (period
    ``len(tokens) - 1 - i``) when it is shorter than ``k``.
    """
    arr = np.asarray(tokens, dtype=np.int64)
    return _continue(arr, arr.shape[0], k, min_n, max_n)


def _continue(arr: np.ndarray, length: int, k: int, min_n: int, max_n: int) -> list[int]:
    """:func:`propose_ngram` of ``arr[:length]``."""
    if k < 1 or length < min_n + 1:
        return []
    i = int(_longest_match(arr, length, min_n, max_n))
    if i < 0:
        return []
    cont = arr[i + 1 : min(i + 1 + k, length)]
    if cont.shape[0] < k:  # the match overlaps the suffix: keep repeating its period
        cont = np.resize(cont, k)
    return cont.tolist()


@dataclass
class _Tokens:
    """One request's tokens as an int64 array, appended to as the request grows (a request's
    tokens only grow: its prompt, then the outputs it has accepted). ``request`` is the request
    it was built for: an id may be reused by a new request once the old one has finished."""

    request: Request
    arr: np.ndarray
    length: int


@dataclass
class NgramProposer:
    """The ``ngram`` method: each request's proposal from its own tokens."""

    min_n: int
    max_n: int
    _tokens: dict[str, _Tokens] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Compile the scan (or load it from numba's cache) now, at engine start: compiled at
        # the first proposal instead, it would stall that step, and the adaptive controller,
        # which times the proposer's calls, would take proposing for that dear and stop.
        _longest_match(np.zeros(2, np.int64), 2, 1, 1)

    def propose(self, requests: list[Request], caps: dict[str, int]) -> dict[str, list[int]]:
        out = {}
        for r in requests:
            t = self._sync(r)
            toks = _continue(t.arr, t.length, caps[r.request_id], self.min_n, self.max_n)
            if toks:
                out[r.request_id] = toks
        return out

    def release_except(self, live: set[str]) -> None:
        """Forget the token arrays of requests that are no longer running."""
        for rid in [rid for rid in self._tokens if rid not in live]:
            del self._tokens[rid]

    def _sync(self, r: Request) -> _Tokens:
        """``r``'s tokens as an array: the one kept from its last proposal with the tokens
        since appended, or a new one where that one is not ``r``'s (a new request, also one
        under a finished request's id) or no longer a prefix of its tokens (checked at the
        kept array's last token)."""
        prompt, output = r.prompt_token_ids, r.output_token_ids
        total = len(prompt) + len(output)
        t = self._tokens.get(r.request_id)
        if t is None or t.request is not r or not 0 < t.length <= total:
            return self._build(r, total)
        at = t.length - 1
        if (prompt[at] if at < len(prompt) else output[at - len(prompt)]) != t.arr[at]:
            return self._build(r, total)
        if total > t.arr.shape[0]:
            grown = np.empty(2 * total, np.int64)
            grown[: t.length] = t.arr[: t.length]
            t.arr = grown
        if total > t.length:
            t.arr[t.length : total] = output[t.length - len(prompt) :]
            t.length = total
        return t

    def _build(self, r: Request, total: int) -> _Tokens:
        """A new array of ``r``'s ``total`` tokens, with room to grow, kept under its id."""
        arr = np.empty(max(16, 2 * total), np.int64)
        arr[: len(r.prompt_token_ids)] = r.prompt_token_ids
        arr[len(r.prompt_token_ids) : total] = r.output_token_ids
        t = self._tokens[r.request_id] = _Tokens(r, arr, total)
        return t
