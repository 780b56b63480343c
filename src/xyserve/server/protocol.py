"""Pydantic models of the OpenAI API subset we serve, plus vLLM's extra sampling fields."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from xyserve.sampling_params import SamplingParams, SamplingParamsError
from xyserve.tokenizer import content_text

# ---- errors ----------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---- requests --------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    # vLLM's: with include_usage, every chunk also carries the usage so far
    continuous_usage_stats: bool = False


class JsonSchemaFormat(BaseModel):
    name: str | None = None
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(BaseModel):
    """vLLM's ``structured_outputs`` field: exactly one constraint."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


# The ``guided_decoding_backend`` values that name the one backend xyserve has (llguidance,
# which vLLM calls "guidance"); vLLM V1 also refuses a request's backend other than its own.
BACKENDS = ("auto", "guidance")

# Fields we accept only with the value that means "off" (any other value is a 400): the
# feature is not implemented, and accepting it silently would be lying to the client.
OFF_VALUES: dict[str, tuple] = {
    "best_of": (None, 1),
    "suffix": (None, ""),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None,),
    "web_search_options": (None,),
}


class FunctionDefinition(BaseModel):
    """A tool's function: OpenAI's name rules, and its arguments' JSON schema."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_object_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """OpenAI's parameters are a JSON Schema of an object (the arguments are a JSON
        object): a schema of another type gave ``arguments`` that are not one (a JSON
        string, say), so it is refused, as OpenAI refuses it."""
        kind = (v or {}).get("type", "object")
        if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
            raise ValueError(f'must be a JSON Schema of type "object", not {kind!r}')
        return v


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the function the reply must call."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolChoiceFunction


class _SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions (OpenAI's, then vLLM's extras).

    Unknown fields are refused (``extra="forbid"``): no parameter is accepted and ignored.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputsParams | None = None
    # vLLM's per-request backend: ours is llguidance, vLLM's "guidance" (see BACKENDS)
    guided_decoding_backend: str | None = None
    # vLLM's: the top-k logprobs of each prompt token (the response's ``prompt_logprobs``)
    prompt_logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = None
    priority: int = 0  # vLLM's: lower first, with --scheduling-policy priority only
    # vLLM's: logprobs name each token "token_id:<id>" (with logprobs; refused without)
    return_tokens_as_token_ids: bool = False
    # vLLM's beam search (server.beam): n is the beam width
    use_beam_search: bool = False
    length_penalty: float = 1.0

    @field_validator("n", "stream", "echo", "logprobs", mode="before", check_fields=False)
    @classmethod
    def _null_is_the_default(cls, v: Any, info: ValidationInfo) -> Any:
        """OpenAI's API declares ``n``, ``stream``, completions' ``echo`` and chat's
        ``logprobs`` nullable (openai-python sends ``null`` for an argument given as None),
        and vLLM takes ``null`` for them: it asks for the default, as leaving the field out."""
        return cls.model_fields[info.field_name].get_default() if v is None else v

    def refused_fields(self) -> list[str]:
        """Fields set to something we do not implement (see OFF_VALUES)."""
        return [
            name
            for name, off in OFF_VALUES.items()
            if name in type(self).model_fields and getattr(self, name) not in off
        ]

    def constraint(self) -> tuple[str, str, Any] | None:
        """(field, kind, value) of the structured-output constraint; ValueError where
        ``response_format`` is wrong, else a SamplingParamsError naming the field (``param``):
        one that is wrong alone, or the second of several constraints."""
        found: list[tuple[str, str, Any]] = []
        rf = self.response_format
        if rf is not None and rf.type != "json_schema" and rf.json_schema is not None:
            raise ValueError(f"response_format.json_schema needs type json_schema, not {rf.type!r}")
        if rf is not None and rf.type == "json_object":
            found.append(("response_format", "json_object", None))
        elif rf is not None and rf.type == "json_schema":
            if rf.json_schema is None or rf.json_schema.json_schema is None:
                raise ValueError("response_format json_schema needs json_schema.schema")
            found.append(("response_format", "json_schema", rf.json_schema.json_schema))
        if self.guided_json is not None:
            found.append(
                ("guided_json", "json_schema", _json_value(self.guided_json, "guided_json"))
            )
        if self.guided_regex is not None:
            found.append(("guided_regex", "regex", self.guided_regex))
        if self.guided_choice is not None:
            found.append(("guided_choice", "choice", self.guided_choice))
        if self.guided_grammar is not None:
            found.append(("guided_grammar", "grammar", self.guided_grammar))
        so = self.structured_outputs
        if so is not None:
            kinds = [
                (
                    "json_schema",
                    _json_value(so.json_, "structured_outputs") if so.json_ is not None else None,
                ),
                ("regex", so.regex),
                ("choice", so.choice),
                ("grammar", so.grammar),
                ("json_object", True if so.json_object else None),
            ]
            set_kinds = [(k, v) for k, v in kinds if v is not None]
            if len(set_kinds) != 1:
                msg = "structured_outputs needs exactly one constraint"
                raise SamplingParamsError("structured_outputs", msg)
            found.append(("structured_outputs", *set_kinds[0]))
        if len(found) > 1:
            # the 400 names a field the request gave (the second: the first to conflict)
            msg = "give at most one of " + ", ".join(f for f, _, _ in found)
            raise SamplingParamsError(found[1][0], msg)
        return found[0] if found else None

    def _sampling_kwargs(self, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's sampling values; one it does not give is taken from ``defaults``
        (the model's generation config, as vLLM's), else left to SamplingParams. Their
        ``max_tokens`` is not taken here (see the engine's ``default_max_tokens``)."""
        defaults = defaults or {}
        kw: dict[str, Any] = dict(
            n=self.n,
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=_logit_bias(self.logit_bias),
            prompt_logprobs=self.prompt_logprobs,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
        )
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ):
            value = getattr(self, name)
            if value is None:
                value = defaults.get(name)
            if value is not None:
                kw[name] = value
        return kw

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats


def _json_value(v: dict[str, Any] | str, field: str) -> Any:
    """A schema given as an object or as JSON text (``field``: the request field, for the 400)."""
    if isinstance(v, str):
        import json

        try:
            return json.loads(v)
        except json.JSONDecodeError as e:
            raise SamplingParamsError(field, f"the JSON schema is not valid JSON: {e}") from None
    return v


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI sends token ids as JSON object keys (strings)."""
    if not bias:
        return None
    out = {}
    for k, v in bias.items():
        try:
            out[int(k)] = v
        except ValueError:
            msg = f"logit_bias keys must be token ids: {k!r}"
            raise SamplingParamsError("logit_bias", msg) from None
    return out


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    @property
    def echo_without_generation(self) -> bool:
        """``echo`` with ``max_tokens`` 0 (OpenAI's way to score a prompt): the prompt comes
        back, with its logprobs if asked, and no completion (the engine samples one token,
        which is not returned, as vLLM does)."""
        return self.echo and self.max_tokens == 0

    def to_sampling_params(self, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Raises SamplingParamsError (with ``.param``) on out-of-range values. ``echo`` with
        ``logprobs`` also asks for the prompt's logprobs, with as many top tokens (vLLM).
        ``defaults``: the model's generation config (a ``max_tokens`` there applies to a
        ``max_tokens: null`` only, since OpenAI's default for completions is 16: the engine
        applies it, where the prompt's length is known)."""
        kw = self._sampling_kwargs(defaults)
        if self.prompt_logprobs is None and self.echo and self.logprobs is not None:
            kw["prompt_logprobs"] = self.logprobs
        max_tokens = 1 if self.echo_without_generation else self.max_tokens
        return SamplingParams(max_tokens=max_tokens, logprobs=self.logprobs, **kw)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    """One part of a message's content. Only text parts are served (others are refused when
    the prompt is rendered); OpenAI requires a text part's ``text``."""

    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = Field(default=None, validate_default=True)

    @field_validator("text")
    @classmethod
    def _text_part_has_text(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("type") == "text":
            raise PydanticCustomError("missing", "Field required")
        return v


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    """A call in an assistant message: in a reply, and as clients send it back."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    # Clients send back the assistant messages they received, with response-only fields
    # (refusal, annotations, audio); those are ignored. function_call is refused (see
    # chat_prompt).
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: Any = None  # the deprecated form of tool_calls: refused
    # An assistant message's thinking, sent back for templates that render it (interleaved
    # thinking): vLLM's ``reasoning``; ``reasoning_content``, its earlier name, is taken too
    reasoning: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return content_text([part.model_dump() for part in self.content])


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    # vLLM's: render the last message open, for the model to continue it
    continue_final_message: bool = False
    # vLLM's: the reply's content starts with the last message's when that is the
    # assistant's (a continued message comes back whole)
    echo: bool = False
    add_special_tokens: bool = False  # vLLM's: the template already holds BOS
    # vLLM's: more variables for the chat template (enable_thinking, say)
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: with --reasoning-parser, whether the reasoning comes back (it is dropped, not
    # moved to the content, when false)
    include_reasoning: bool = True
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    web_search_options: Any = None

    def to_sampling_params(self, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """``defaults``: the model's generation config. Without max_completion_tokens and
        max_tokens, max_tokens stays None: the engine takes the generation config's, capped to
        what the prompt leaves of max_model_len (as vLLM), else all that it leaves."""
        max_tokens = (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return SamplingParams(
            max_tokens=max_tokens, logprobs=logprobs, **self._sampling_kwargs(defaults)
        )


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the chat template."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


# ---- responses -------------------------------------------------------------------------


def unix_time() -> int:
    """Now, in whole seconds: a response's ``created``. A stream reads it once and gives it to
    every chunk (OpenAI: "each chunk has the same timestamp"; vLLM does so too)."""
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        """The counts, with their total."""
        total = prompt_tokens + completion_tokens
        return cls(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total
        )


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """One token's entry in vLLM's ``prompt_logprobs`` (keyed by token id)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's ``prompt_logprobs``: per prompt token, None for the first, else token id -> entry.
PromptLogprobs = list[dict[int, PromptLogprob] | None]


class CompletionStreamChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionChoice(CompletionStreamChoice):
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's, in whole responses only


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=unix_time)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    """OpenAI streams completions as chunks of the whole response's shape (vLLM's
    ``prompt_logprobs`` aside: refused with ``stream``)."""

    choices: list[CompletionStreamChoice]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobEntry] | None = None


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    reasoning: str | None = None  # with --reasoning-parser: vLLM's field (once reasoning_content)
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)  # vLLM's: [] without calls


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=unix_time)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo | None = None
    prompt_logprobs: PromptLogprobs | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of a streamed call: its first names it (id, type, name), the rest add to its
    arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    reasoning: str | None = None  # with --reasoning-parser: vLLM's field (once reasoning_content)
    content: str | None = None
    tool_calls: list[DeltaToolCall] = Field(default_factory=list)  # vLLM's: [] without calls


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=unix_time)
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=unix_time)
    owned_by: str = "xyserve"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
