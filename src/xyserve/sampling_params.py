"""Sampling parameters, with vLLM's names and defaults. Pure Python (no torch).

``validate`` holds every check that needs no model; the engine adds the model-dependent ones
(vocabulary, context length, configured limits) before it admits a request.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

# torch.Generator seeds are 64-bit; child i of a request is seeded with seed + i.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1

# The type of every field that is not free-form (stop, stop_token_ids, logit_bias and
# structured are checked on their own): checked before anything compares or uses a value, so
# that a float n or top_k, or a string flag, is refused by name rather than failing inside a
# step (or, for a string ignore_eos, being read as true).
INT_FIELDS = ("n", "top_k", "min_tokens")
OPTIONAL_INT_FIELDS = (
    "seed",
    "max_tokens",
    "logprobs",
    "prompt_logprobs",
    "truncate_prompt_tokens",
)
REAL_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output")

# The most top logprobs a request may ask for, per token (``logprobs``, ``prompt_logprobs``),
# as vLLM's default ``max_logprobs``; beam search's step requests are bound by it too.
MAX_LOGPROBS = 20


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _py_real(v: numbers.Real) -> int | float:
    """A Python int or float for a number of another real type (numpy's)."""
    return v if type(v) in (int, float) else float(v)  # numpy's float64 is a float subclass


@dataclass(frozen=True)
class StructuredOutputsParams:
    """vLLM's ``StructuredOutputsParams`` (``SamplingParams(structured_outputs=...)``): exactly
    one constraint. Only the fields xyserve honours exist here, so vLLM's tuning fields
    (``disable_fallback``, ``whitespace_pattern``, ``structural_tag``, ...) are refused as
    unknown arguments rather than taken and not applied."""

    json: dict | str | None = None  # a JSON schema, as a dict or JSON text
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # Lark, or GBNF (``root ::= ...``)
    json_object: bool | None = None

    def to_dict(self) -> dict:
        """The fields given, as ``SamplingParams.structured`` takes them."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    # None: up to max_model_len, capped to the generation config's max_new_tokens where it has
    # one (engine.intake; vLLM leaves a given None uncapped)
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs per generated token (plus the sampled one)
    # top-k logprobs per prompt token (plus the prompt's own token), of the raw model
    # distribution, as vLLM's: RequestOutput.prompt_logprobs, None for the first token. The
    # request's prefill then reads no cached prefix (a cached token's logits are not kept).
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # OpenAI's logit_bias: token id -> bias in [-100, 100], added to the logits before sampling.
    logit_bias: dict[int, float] | None = None
    # A structured-output constraint: vLLM's structured_outputs fields as a dict with exactly
    # one of json (a schema: a dict or JSON text), regex, choice, grammar (Lark) or json_object (True), compiled by
    # the engine; or an already compiled xyserve.engine.structured.GrammarSpec.
    structured: dict | object | None = None
    # vLLM's keyword for the same: a StructuredOutputsParams (or its fields as a dict), moved
    # into ``structured`` (giving both is refused)
    structured_outputs: StructuredOutputsParams | dict | None = None
    # vLLM's: only these token ids may be sampled (a mask over the vocabulary)
    allowed_token_ids: list[int] | None = None
    # vLLM's: words never generated. Each is tokenized at admission as it would start the
    # text and as it would follow a space; once the output ends with all of a word's tokens
    # but its last, that last one is masked (a one-token word is always masked).
    bad_words: list[str] | None = None
    # vLLM's: keep only the last k prompt tokens (left truncation); -1: the model's maximum
    # context length
    truncate_prompt_tokens: int | None = None
    _stop_list: list[str] = field(default_factory=list, init=False, repr=False)
    # bad_words as token id sequences, set by the engine at admission (it has the tokenizer)
    bad_words_token_ids: list[list[int]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._take_structured_outputs()
        self._check_types()
        if self.top_k == -1:
            self.top_k = 0
        self._stop_list = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = dict(self.logit_bias) if self.logit_bias else None
        self.validate()

    def _take_structured_outputs(self) -> None:
        so = self.structured_outputs
        if so is None:
            return
        if self.structured is not None:
            raise SamplingParamsError(
                "structured_outputs",
                "structured_outputs: give it or structured (the same constraint), not both",
            )
        if not isinstance(so, (StructuredOutputsParams, dict)):
            raise SamplingParamsError(
                "structured_outputs",
                f"structured_outputs: must be a StructuredOutputsParams or a dict (got {so!r})",
            )
        self.structured = so.to_dict() if isinstance(so, StructuredOutputsParams) else dict(so)
        self.structured_outputs = None

    def _check_types(self) -> None:
        """Refuse, naming the field, a value of a type the field cannot take; numbers of any
        integral or real type (numpy's too) become Python ints and floats."""

        def bad(name: str, what: str) -> SamplingParamsError:
            value = getattr(self, name)
            return SamplingParamsError(name, f"{name}: must be {what} (got {value!r})")

        for name in INT_FIELDS + OPTIONAL_INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_INT_FIELDS:
                continue
            if not _is_int(value):
                raise bad(name, "an integer")
            setattr(self, name, int(value))
        for name in REAL_FIELDS:
            value = getattr(self, name)
            if not _is_real(value):
                raise bad(name, "a number")
            setattr(self, name, _py_real(value))
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if self.stop is not None and not isinstance(self.stop, str | list | tuple):
            raise bad("stop", "a string or a list of strings")
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, list | tuple):
            raise bad("stop_token_ids", "a list of token ids")
        if self.stop_token_ids is not None:  # anything but an integer stays for validate
            self.stop_token_ids = [int(t) if _is_int(t) else t for t in self.stop_token_ids]
        if self.allowed_token_ids is not None:
            if not isinstance(self.allowed_token_ids, list | tuple) or not all(
                _is_int(t) for t in self.allowed_token_ids
            ):
                raise bad("allowed_token_ids", "a list of token ids")
            self.allowed_token_ids = [int(t) for t in self.allowed_token_ids]
        if self.bad_words is not None:
            if not isinstance(self.bad_words, list | tuple) or not all(
                isinstance(w, str) for w in self.bad_words
            ):
                raise bad("bad_words", "a list of strings")
            self.bad_words = list(self.bad_words)
        if self.logit_bias is not None and not (
            isinstance(self.logit_bias, dict)
            and all(_is_int(t) and _is_real(b) for t, b in self.logit_bias.items())
        ):
            raise bad("logit_bias", "a dict of int token ids to numbers")
        if self.logit_bias is not None:
            self.logit_bias = {int(t): _py_real(b) for t, b in self.logit_bias.items()}
        if not (
            self.structured is None
            or isinstance(self.structured, dict)
            or hasattr(self.structured, "new_matcher")  # a compiled GrammarSpec
        ):
            raise bad("structured", "a dict (one of json, regex, choice, grammar, json_object)")

    @property
    def stop_strings(self) -> list[str]:
        return self._stop_list

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def reshapes_logits(self) -> bool:
        """Whether the request changes the logits before sampling beyond penalties and
        top-k/p (logit bias, an allowed set, bad words): speculative verification samples
        from the target's distribution without these, so such requests are not proposed for."""
        return bool(self.logit_bias or self.allowed_token_ids is not None or self.bad_words)

    def validate(self) -> None:
        """Raise ValueError naming the field, as the server turns it into an HTTP 400.

        Comparisons are written so that NaN fails them; infinities are refused explicitly.
        """
        fin = math.isfinite
        seed_ok = self.seed is None or SEED_MIN <= self.seed <= SEED_MAX - (self.n - 1)
        checks = [
            (self.n >= 1, "n", "n must be at least 1"),
            (
                fin(self.temperature) and self.temperature >= 0,
                "temperature",
                "must be finite, >= 0",
            ),
            (0 < self.top_p <= 1, "top_p", "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "top_k must be -1 (disabled) or positive"),
            (0 <= self.min_p <= 1, "min_p", "min_p must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            # Dividing logits by a tiny penalty overflows them to inf: keep it within 100x.
            (
                0.01 <= self.repetition_penalty <= 100,
                "repetition_penalty",
                "must be in [0.01, 100]",
            ),
            (seed_ok, "seed", f"seed + n - 1 must be within [{SEED_MIN}, {SEED_MAX}]"),
            (
                all(isinstance(s, str) and s for s in self._stop_list),
                "stop",
                "stop strings must be non-empty",
            ),
            (
                all(_is_int(t) and t >= 0 for t in self.stop_token_ids),  # a bool is no id
                "stop_token_ids",
                "must be non-negative integer token ids",
            ),
            (
                all(
                    isinstance(v, int | float) and -100 <= v <= 100
                    for v in (self.logit_bias or {}).values()
                ),
                "logit_bias",
                "biases must be in [-100, 100]",
            ),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (self.min_tokens >= 0, "min_tokens", "must be non-negative"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens",
                "must not exceed max_tokens",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                "logprobs",
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                "prompt_logprobs",
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
            (
                self.allowed_token_ids is None
                or (self.allowed_token_ids and min(self.allowed_token_ids) >= 0),
                "allowed_token_ids",
                "must be a non-empty list of non-negative token ids",
            ),
            (
                all(w.strip() for w in self.bad_words or []),
                "bad_words",
                "bad words must not be empty or blank",
            ),
            (
                self.truncate_prompt_tokens is None
                or self.truncate_prompt_tokens == -1
                or self.truncate_prompt_tokens >= 1,
                "truncate_prompt_tokens",
                "must be -1 (the model's maximum context length) or at least 1",
            ),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise SamplingParamsError(name, f"{name}: {msg} (got {getattr(self, name)!r})")


class SamplingParamsError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
