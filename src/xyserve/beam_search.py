"""Beam search, as vLLM's ``LLM.beam_search`` and its server's ``use_beam_search`` do it: on
top of the engine, one token a step. Pure Python (no torch).

Each step runs every live beam of every prompt as a request for one token with the top
``2 * beam_width`` logprobs (the prefix cache finds a beam's tokens computed the step
before, so a step computes about one new token per beam); each beam's candidates extend it
by one of those tokens, and a prompt keeps its ``beam_width`` best by cumulative logprob. A
candidate ending in an end-of-sequence token (unless ``ignore_eos``) is set aside as
complete. After ``max_tokens`` steps, or once a prompt has no live beam, its complete and live
beams are ranked by vLLM's score, ``cum_logprob / len(tokens) ** length_penalty`` (``tokens``
the prompt's and the beam's, less a final end-of-sequence token), and the best
``beam_width`` returned.

The stepping is :class:`BeamSearch`, driven by a caller that runs its requests: offline
``LLM.beam_search`` through ``LLM.generate``, the server through its async engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xyserve.outputs import Logprob, RequestOutput
from xyserve.sampling_params import MAX_LOGPROBS, SamplingParams

# Each step asks for a beam's ``2 * beam_width`` most likely tokens, and a request may ask for
# at most MAX_LOGPROBS of them: wider beams are refused when the parameters are made, by name,
# rather than by the first step's request (a ValueError naming ``logprobs``, which the caller
# never gave, and on the server a 500, since the step runs after the request was checked).
MAX_BEAM_WIDTH = MAX_LOGPROBS // 2


@dataclass(frozen=True)
class BeamSearchParams:
    """vLLM's (less ``temperature``, which cannot change which tokens are the most likely)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        def count(v: object) -> bool:  # an int, not a bool (True is no width of 1)
            return isinstance(v, int) and not isinstance(v, bool)

        checks = (
            (
                count(self.beam_width) and 1 <= self.beam_width <= MAX_BEAM_WIDTH,
                "beam_width",
                f"in [1, {MAX_BEAM_WIDTH}] (each step reads 2 x beam_width top logprobs, at "
                f"most {MAX_LOGPROBS})",
            ),
            (count(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "an integer >= 1"),
            (isinstance(self.ignore_eos, bool), "ignore_eos", "True or False"),
            (
                isinstance(self.length_penalty, int | float)
                and not isinstance(self.length_penalty, bool)
                and math.isfinite(self.length_penalty),
                "length_penalty",
                "a finite number",
            ),
        )
        for ok, name, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what} (got {getattr(self, name)!r})")

    def step_params(self) -> SamplingParams:
        """Each step's request: one token, with the top ``2 * beam_width`` logprobs."""
        return SamplingParams(temperature=0.0, max_tokens=1, logprobs=2 * self.beam_width)


@dataclass
class BeamSearchSequence:
    """One beam: ``tokens`` are the prompt's and the beam's (vLLM's), ``output_token_ids`` the
    beam's alone; ``text`` is the beam's text."""

    tokens: list[int]
    output_token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float
    text: str | None = None
    finish_reason: str | None = None  # stop (an end-of-sequence token) | length


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


@dataclass
class _Prompt:
    prompt: list[int]
    live: list[BeamSearchSequence]
    done: list[BeamSearchSequence] = field(default_factory=list)


def score(seq: BeamSearchSequence, eos: set[int], length_penalty: float) -> float:
    """vLLM's beam score: the cumulative logprob over the length of prompt and beam (a final
    end-of-sequence token not counted) to the ``length_penalty``."""
    n = len(seq.tokens) - (1 if seq.tokens and seq.tokens[-1] in eos else 0)
    return seq.cum_logprob / (max(n, 1) ** length_penalty)


class BeamSearch:
    """The beams of several prompts; :meth:`requests` gives the next step's prompts (token
    lists, one per live beam), :meth:`advance` takes their outputs in the same order."""

    def __init__(self, prompts: list[list[int]], params: BeamSearchParams, eos: set[int]):
        self.params, self.eos = params, set(eos)
        self.steps = 0
        self.prompts = [
            _Prompt(list(p), [BeamSearchSequence(list(p), [], [], 0.0)]) for p in prompts
        ]

    @property
    def finished(self) -> bool:
        return self.steps >= self.params.max_tokens or not any(p.live for p in self.prompts)

    def requests(self) -> list[list[int]]:
        return [b.tokens for p in self.prompts for b in p.live]

    def advance(self, outputs: list[RequestOutput]) -> None:
        it = iter(outputs)
        width = self.params.beam_width
        for p in self.prompts:
            candidates = []
            for beam in p.live:
                (c,) = next(it).outputs
                (entry,) = c.logprobs  # the step's one token's top logprobs
                for tid, lp in entry.items():
                    top = {tid: lp}
                    seq = BeamSearchSequence(
                        beam.tokens + [tid],
                        beam.output_token_ids + [tid],
                        beam.logprobs + [top],
                        beam.cum_logprob + lp.logprob,
                    )
                    if tid in self.eos and not self.params.ignore_eos:
                        seq.finish_reason = "stop"
                        p.done.append(seq)
                    else:
                        candidates.append(seq)
            # by cumulative logprob (vLLM's step ranking), ties to the earlier candidate
            candidates.sort(key=lambda s: -s.cum_logprob)
            p.live = candidates[:width]
        self.steps += 1

    def results(self, decode=None) -> list[BeamSearchOutput]:  # noqa: ANN001 - ids -> text
        """Each prompt's best ``beam_width`` beams, best first."""
        out = []
        lp = self.params.length_penalty
        for p in self.prompts:
            for b in p.live:
                b.finish_reason = "length"
            ranked = sorted(p.done + p.live, key=lambda s: -score(s, self.eos, lp))
            best = ranked[: self.params.beam_width]
            if decode is not None:
                for b in best:
                    b.text = decode(b.output_token_ids)
            out.append(BeamSearchOutput(best))
        return out
