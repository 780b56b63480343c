"""Structured outputs: grammars compiled with llguidance, one matcher per sequence.

llguidance was chosen over xgrammar because its PyPI wheel depends on nothing (xgrammar
requires torch, and pip would replace the CPU torch build here), and vLLM ships it as a
structured-output backend too. Token masks are filled for all constrained rows of a step at
once (``fill_masks``) and applied to the logits in one batched op by the sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

# kind -> the llguidance format it compiles with; kinds are the request fields' meanings.
KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")


class GrammarError(ValueError):
    """A grammar or schema that does not compile; the server answers 400."""


class Matcher:
    """The grammar state of one sequence."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        from llguidance import LLMatcher

        self._m = LLMatcher(tokenizer, grammar)

    @classmethod
    def copy_of(cls, other: Matcher) -> Matcher:
        """A matcher in ``other``'s state, sharing the lexer ``other`` has built so far."""
        m = cls.__new__(cls)
        m._m = other._m.deep_copy()
        return m

    @property
    def raw(self) -> Any:
        return self._m

    def advance(self, token_id: int) -> None:
        """Consume the sampled token; a token the grammar refuses is this request's error."""
        if not self._m.consume_token(token_id):
            why = _brief(self._m.get_error())
            raise GrammarError(f"token {token_id} refused by the grammar: {why}")

    def is_finished(self) -> bool:
        """Nothing may follow (the grammar ended, or only EOS could come next and came)."""
        return self._m.is_stopped()

    def error(self) -> str | None:
        return _brief(self._m.get_error()) if self._m.is_error() else None


# llguidance's errors can carry its whole parser state (megabytes for a large grammar): a
# client's error message keeps its first part.
ERROR_CHARS = 500


def _brief(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + " ... (cut)"


@dataclass(frozen=True)
class GrammarSpec:
    """A compiled constraint, shared by the ``n`` sequences of a request."""

    kind: str
    grammar: str  # llguidance's grammar definition (JSON text)
    tokenizer: Any  # llguidance.LLTokenizer
    # A matcher in the start state whose first mask was computed when the constraint was
    # compiled: llguidance builds its lexer lazily, on the first masks, which for a large
    # grammar takes seconds; copies share what it built, so that work is done off the
    # engine's step.
    start: Matcher | None = field(default=None, compare=False, repr=False)
    # [vocab_size] bool: the tokens the grammar allows first (``start``'s first mask), so that
    # admission can refuse a request whose other masks leave none of them (allowed_token_ids).
    first_allowed: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def new_matcher(self) -> Matcher:
        if self.start is not None:
            return Matcher.copy_of(self.start)
        return Matcher(self.tokenizer, self.grammar)


class StructuredOutputs:
    """Compiles request constraints against one model's tokenizer."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids or None
        )

    def compile(self, kind: str, value: Any) -> GrammarSpec:
        """``value``: a JSON schema (dict), a regex or grammar (str: Lark or GBNF), or choices
        (list[str])."""
        from llguidance import LLMatcher

        # Compact JSON: flexible whitespace lets a sampler wander through blanks forever.
        compact = {"whitespace_flexible": False}
        try:
            if kind == "json_schema":
                if not isinstance(value, dict):
                    raise GrammarError("the JSON schema must be an object")
                grammar = LLMatcher.grammar_from_json_schema(json.dumps(value), defaults=compact)
            elif kind == "json_object":
                grammar = LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=compact)
            elif kind == "regex":
                grammar = LLMatcher.grammar_from_regex(_text(value, "regex"))
            elif kind == "choice":
                # a list, not any iterable: a string's choices would be its characters
                listed = isinstance(value, list | tuple) and value
                if not listed or not all(isinstance(c, str) for c in value):
                    raise GrammarError("choices must be a non-empty list of strings")
                alts = " | ".join(json.dumps(c) for c in value)
                grammar = LLMatcher.grammar_from_lark(f"start: {alts}")
            elif kind == "grammar":
                # Lark, or GBNF (``root ::= ...``, llama.cpp's, which vLLM's examples of
                # guided_grammar use): vLLM takes both, its llguidance backend through this
                # same conversion
                from llguidance.gbnf_to_lark import any_to_lark

                grammar = LLMatcher.grammar_from_lark(any_to_lark(_text(value, "grammar")))
            else:
                raise GrammarError(f"unknown constraint kind {kind!r}")
        except GrammarError:
            raise
        except Exception as e:  # llguidance raises plain ValueError/TypeError on bad input
            raise GrammarError(f"invalid {kind}: {e}") from None
        err = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if err:
            raise GrammarError(f"invalid {kind}: {err}")
        start = Matcher(self.tokenizer, grammar)
        first_allowed = fill_masks([start], self.vocab_size)[0]
        if start.error() is not None:
            raise GrammarError(f"invalid {kind}: {start.error()}")
        return GrammarSpec(kind, grammar, self.tokenizer, start, first_allowed)


def _text(value: Any, kind: str) -> str:
    """A regex's or grammar's text; anything else is refused rather than written out with
    ``str`` (a list ``["a"]`` would be the character class ``['a']``)."""
    if not isinstance(value, str):
        raise GrammarError(f"a {kind} must be a string, not {type(value).__name__}")
    return value


def fill_masks(matchers: list[Matcher], vocab_size: int) -> torch.Tensor:
    """[len(matchers), vocab_size] bool: the tokens each matcher allows next."""
    import llguidance.torch as lt

    bits = lt.allocate_token_bitmask(len(matchers), vocab_size)
    for i, m in enumerate(matchers):
        lt.fill_next_token_bitmask(m.raw, bits, i)
    # Unpack the int32 words into bits, little-endian within each word, as llguidance packs.
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)
    return allowed[:, :vocab_size]
