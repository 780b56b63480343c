"""Request intake: everything done to a request before any part of it is admitted.

Tokenisation of text prompts, compilation of structured-output constraints, and every check
that depends on the model (vocabulary, context length) or on the engine's request limits. A
request that passes can neither fail the shared step on its parameters nor wait forever; one
that fails raises :class:`RequestValidationError` naming the field, and nothing is admitted.
The server runs this off the engine thread (it is thread-safe).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import threading

from xyserve.config import EngineConfig
from xyserve.sampling_params import SamplingParams


class RequestValidationError(ValueError):
    """A request the engine refuses before admitting any part of it; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(RequestValidationError):
    pass


class RequestIntake:
    """Prompts to token ids, constraints compiled, requests checked against the model."""

    def __init__(
        self,
        config: EngineConfig,
        tokenizer,  # noqa: ANN001 - xyserve.tokenizer.Tokenizer or None
        vocab_size: int,
        eos_token_ids: set[int],
        max_model_len: int,
        default_max_tokens: int | None = None,
    ) -> None:
        self.config = config
        # the model generation config's max_new_tokens: max_tokens where a request leaves it
        # unset (None), capped to what the prompt leaves of max_model_len, as vLLM's
        self.default_max_tokens = default_max_tokens
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self._structured = None  # StructuredOutputs, built on first use (imports llguidance)
        self._structured_lock = threading.Lock()
        self._grammar_cache: dict[str, object] = {}  # offline dict constraints, by content

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``prompt``; text the tokenizer cannot take is a RequestValidationError."""
        if self.tokenizer is None:
            raise RequestValidationError(
                "text prompts need a tokenizer (skip_tokenizer_init is set)", "prompt"
            )
        if not isinstance(prompt, str):
            raise RequestValidationError("the prompt must be a string", "prompt")
        try:
            prompt.encode("utf-8")  # lone surrogates (from JSON \ud800 escapes) cannot encode
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        except (UnicodeError, TypeError, ValueError) as e:
            msg = f"the tokenizer cannot encode the text: {e}"
            raise RequestValidationError(msg, "prompt") from None

    def prompt_ids(self, prompt: str | list[int] | dict, add_special_tokens: bool = True) -> tuple:
        """(text or None, token ids) of a prompt given as text, ids, or a vLLM prompt dict.

        A dict takes ``prompt`` and/or ``prompt_token_ids`` only: vLLM's other keys
        (``multi_modal_data``, ``cache_salt``, ...) are not implemented, so they are refused
        rather than dropped.
        """
        if isinstance(prompt, dict):
            unknown = sorted(str(k) for k in set(prompt) - {"prompt", "prompt_token_ids"})
            if unknown:
                raise RequestValidationError(
                    f"prompt dict keys {unknown} are not supported (only 'prompt' and "
                    "'prompt_token_ids')",
                    "prompt",
                )
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._token_list(prompt["prompt_token_ids"])
            if "prompt" not in prompt:
                raise RequestValidationError(
                    "a prompt dict needs 'prompt' or 'prompt_token_ids'", "prompt"
                )
            text = prompt["prompt"]
            return text, self.tokenize(text, add_special_tokens)
        if isinstance(prompt, str):
            return prompt, self.tokenize(prompt, add_special_tokens)
        return None, self._token_list(prompt)

    @staticmethod
    def _token_list(ids: object) -> list[int]:
        """Token ids given as a list (or any sequence but text); ``validate`` checks each id."""
        if isinstance(ids, str | bytes | dict) or not hasattr(ids, "__iter__"):
            raise RequestValidationError(
                f"a prompt is a string, a list of token ids or a dict with 'prompt' or "
                f"'prompt_token_ids', not {type(ids).__name__} (a single prompt of token ids "
                "is a list inside the list of prompts, or {'prompt_token_ids': [...]})",
                "prompt",
            )
        # integers of any integral type (numpy's) are token ids; anything else stays for
        # ``validate`` to refuse
        return [int(t) if isinstance(t, numbers.Integral) else t for t in ids]

    def compile_grammar(self, kind: str, value: object) -> object:
        """A GrammarSpec for SamplingParams.structured; GrammarError (a ValueError) if invalid.

        Thread-safe, so the server compiles off the engine thread.
        """
        if self.tokenizer is None:
            raise RequestValidationError("structured outputs need a tokenizer", "response_format")
        with self._structured_lock:
            if self._structured is None:
                from xyserve.engine.structured import StructuredOutputs

                self._structured = StructuredOutputs(
                    self.tokenizer.hf, self.vocab_size, sorted(self.eos_token_ids)
                )
        return self._structured.compile(kind, value)

    def compiled(self, params: SamplingParams) -> SamplingParams:
        """A copy of ``params``, normalised and checked again, with a dict constraint compiled.

        A copy, checked now: the caller's object is plain and mutable (as vLLM's), and may have
        changed since it was built (a stop string set then, or an invalid value); it is also
        shared by every prompt of an offline batch, so compiled grammars are cached by content.
        """
        if not isinstance(params, SamplingParams):
            raise TypeError(
                f"sampling_params must be SamplingParams objects, not {type(params).__name__}"
            )
        params = dataclasses.replace(params)  # runs __post_init__: normalise and validate
        params = self._compile_structured(params)
        if params.bad_words:
            params.bad_words_token_ids = self.bad_words_token_ids(params.bad_words)
        return params

    def bad_words_token_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word's token ids as it would start the text and, where that tokenizes
        differently, as it would follow a space (vLLM's rule: the spaced form is kept only
        when it is a new token of the same length, so that a word is banned both at the
        start and in the middle of a text)."""
        if self.tokenizer is None:
            raise RequestValidationError("bad_words need a tokenizer", "bad_words")
        out: list[list[int]] = []
        for w in words:
            bare = self.tokenizer.encode(w.lstrip(), add_special_tokens=False)
            spaced = self.tokenizer.encode(" " + w.lstrip(), add_special_tokens=False)
            if not bare:
                raise RequestValidationError(f"bad word {w!r} has no tokens", "bad_words")
            out.append(bare)
            if spaced and spaced[0] != bare[0] and len(spaced) == len(bare):
                out.append(spaced)
        return out

    def check_priority(self, priority: object) -> None:
        """A request's ``priority``: an integer, other than 0 only under the priority policy
        (as vLLM, which refuses it rather than ignore it)."""
        if not isinstance(priority, numbers.Integral) or isinstance(priority, bool):
            raise RequestValidationError(
                f"priority must be an integer, not {priority!r}", "priority"
            )
        if priority and self.config.scheduling_policy != "priority":
            raise RequestValidationError(
                f"priority {priority} needs the priority scheduling policy "
                "(--scheduling-policy priority); this engine serves requests first come, first "
                "served",
                "priority",
            )

    def truncated(
        self, text: str | None, ids: list[int], params: SamplingParams
    ) -> tuple[str | None, list[int]]:
        """The prompt cut to its last ``truncate_prompt_tokens`` tokens (-1: the model's
        maximum context length), as vLLM's; a cut text prompt's text becomes the text of the
        tokens kept."""
        k = params.truncate_prompt_tokens
        if k is None:
            return text, ids
        if k == -1:
            k = self.max_model_len
        if k > self.max_model_len:
            raise RequestValidationError(
                f"truncate_prompt_tokens ({k}) is greater than this model's maximum context "
                f"length ({self.max_model_len})",
                "truncate_prompt_tokens",
            )
        if len(ids) <= k:
            return text, ids
        ids = ids[-k:]
        if self.tokenizer is not None:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        else:
            text = None
        return text, ids

    def _compile_structured(self, params: SamplingParams) -> SamplingParams:
        """``params`` with a dict constraint compiled (cached by content)."""
        spec = params.structured
        if not isinstance(spec, dict):
            return params
        kinds = {"json": "json_schema", "regex": "regex", "choice": "choice",
                 "grammar": "grammar", "json_object": "json_object"}  # fmt: skip
        given = [(k, v) for k, v in spec.items() if v is not None and v is not False]
        if len(given) != 1 or given[0][0] not in kinds:
            raise RequestValidationError(
                f"structured needs exactly one of {', '.join(kinds)}", "structured"
            )
        key, value = given[0]
        if key == "json" and isinstance(value, str):  # a schema as JSON text, as the server's
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise RequestValidationError(
                    f"structured: the JSON schema is not valid JSON: {e}", "structured"
                ) from None
        # Keys in the order given: a schema's property order is the order they are generated in.
        cache_key = json.dumps([key, value], default=str)
        compiled = self._grammar_cache.get(cache_key)
        if compiled is None:
            compiled = self.compile_grammar(kinds[key], value)
            if len(self._grammar_cache) >= 64:
                self._grammar_cache.pop(next(iter(self._grammar_cache)))
            self._grammar_cache[cache_key] = compiled
        return dataclasses.replace(params, structured=compiled)

    def _check_allowed_set(self, params: SamplingParams) -> None:
        """Refuse an ``allowed_token_ids`` set whose every token the sampler must mask: each a
        one-token bad word, or, before ``min_tokens``, one that would end the sequence (EOS,
        a stop id), or one the request's grammar refuses as its first token. Admitted, its
        first step would find no token to sample and fail it there, a 500 for what the
        request said (a grammar instead lets a bad word or an ending token through: see
        ``_sample_row``)."""
        if params.allowed_token_ids is None:
            return
        allowed = set(params.allowed_token_ids)
        # The grammar's mask comes on top of the set: its first mask is known when it is
        # compiled (structured.GrammarSpec), so a set that leaves none of it is refused now.
        # Later masks are not known before the request runs: a set that the grammar runs out
        # of later fails the request in that step.
        first = getattr(params.structured, "first_allowed", None)
        if first is not None and not first[sorted(allowed)].any():
            raise RequestValidationError(
                "no token of allowed_token_ids is one the structured-output constraint allows "
                "first: none could be sampled",
                "allowed_token_ids",
            )
        never = {w[0] for w in params.bad_words_token_ids if len(w) == 1}
        if allowed <= never:
            raise RequestValidationError(
                "every token of allowed_token_ids is a bad word: none could be sampled",
                "allowed_token_ids",
            )
        ending = self.eos_token_ids | set(params.stop_token_ids)
        if params.min_tokens and params.structured is None and allowed <= never | ending:
            raise RequestValidationError(
                f"every token of allowed_token_ids ends the sequence (an end-of-sequence or "
                f"stop token id) or is a bad word, but min_tokens ({params.min_tokens}) holds "
                "those back: none could be sampled",
                "allowed_token_ids",
            )

    def validate(self, ids: list[int], params: SamplingParams) -> int:
        """Every model-dependent check of a request; returns its max_tokens.

        Raises RequestValidationError (or PromptTooLongError) before anything is admitted, so a
        request that passes can neither fail the shared step on its parameters nor wait forever.
        """
        cfg = self.config
        vocab = self.vocab_size
        if not ids:
            raise RequestValidationError("the prompt is empty", "prompt")
        if any(not isinstance(t, int) or not (0 <= t < vocab) for t in ids):
            raise RequestValidationError(f"prompt token ids must be in [0, {vocab})", "prompt")
        if params.n > cfg.max_n:
            raise RequestValidationError(f"n must be at most {cfg.max_n}", "n")
        if params.stop_strings and self.tokenizer is None:  # no text to search: refused
            raise RequestValidationError(
                "stop strings need a tokenizer (skip_tokenizer_init is set)", "stop"
            )
        if len(params.stop_strings) > cfg.max_stop_strings:
            raise RequestValidationError(f"at most {cfg.max_stop_strings} stop strings", "stop")
        if any(t >= vocab for t in params.stop_token_ids):
            raise RequestValidationError(
                f"stop_token_ids must be in [0, {vocab})", "stop_token_ids"
            )
        if any(t >= vocab for t in params.allowed_token_ids or []):
            raise RequestValidationError(
                f"allowed_token_ids must be in [0, {vocab})", "allowed_token_ids"
            )
        if any(not (0 <= t < vocab) for t in params.logit_bias or {}):
            raise RequestValidationError(
                f"logit_bias token ids must be in [0, {vocab})", "logit_bias"
            )
        self._check_allowed_set(params)
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > vocab:
                raise RequestValidationError(f"{name} must be at most {vocab}", name)
        if params.structured is not None and self.tokenizer is None:
            raise RequestValidationError("structured outputs need a tokenizer", "response_format")
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
            if self.default_max_tokens is not None:  # never below the request's min_tokens
                cap = max(self.default_max_tokens, params.min_tokens)
                max_tokens = min(max_tokens, cap)
        if len(ids) + max_tokens > self.max_model_len or max_tokens < 1:
            # with max_tokens unset, only the prompt can be at fault: say nothing of it
            asked = "" if params.max_tokens is None else f" and max_tokens is {max_tokens}"
            raise PromptTooLongError(
                f"this model's maximum context length is {self.max_model_len} tokens; the prompt "
                f"has {len(ids)} tokens{asked}",
                "prompt" if len(ids) >= self.max_model_len else "max_tokens",
            )
        if params.min_tokens > max_tokens:
            # Only reachable with max_tokens unset (SamplingParams checks a given one): the
            # request would end on length before its min_tokens, silently not honoured.
            raise RequestValidationError(
                f"min_tokens is {params.min_tokens}, but the prompt ({len(ids)} tokens) leaves "
                f"at most {max_tokens} of this model's maximum context length of "
                f"{self.max_model_len} tokens",
                "min_tokens",
            )
        return max_tokens
