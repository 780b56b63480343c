"""The offline API: ``LLM(model=...).generate(prompts, sampling_params)``, as in vLLM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from tqdm.auto import tqdm

from xyserve.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from xyserve.config import SERVER_ONLY_ARGS, EngineConfig
from xyserve.engine.engine import LLMEngine
from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.tokenizer import content_text, template_messages


class LLM:
    def __init__(self, model: str | None = None, **engine_args) -> None:
        known = {f.name for f in fields(EngineConfig)}
        unknown = sorted(set(engine_args) - known)
        if unknown:
            raise TypeError(f"unknown engine arguments: {unknown}")
        server_only = sorted(set(engine_args) & set(SERVER_ONLY_ARGS))
        if server_only:
            raise TypeError(
                f"engine arguments {server_only} apply to the HTTP server (xyserve serve) only; "
                "the offline LLM would not use them"
            )
        self.llm_engine = LLMEngine(EngineConfig(model=model, **engine_args))

    def get_tokenizer(self):
        """The model's Hugging Face tokenizer (a transformers ``PreTrainedTokenizerBase``), as
        vLLM's ``LLM.get_tokenizer`` returns: ``apply_chat_template(messages, tokenize=False,
        add_generation_prompt=True)`` and ``decode`` take HF's arguments and defaults. None
        with ``skip_tokenizer_init``."""
        tok = self.llm_engine.tokenizer
        return None if tok is None else tok.hf

    def get_default_sampling_params(self) -> SamplingParams:
        """What ``generate``/``chat`` use without ``sampling_params``, as vLLM's: the model's
        generation config defaults (``generation_config``: auto, the model's
        generation_config.json; vllm, none) over SamplingParams' own. With a max_new_tokens
        there, max_tokens is None: that many tokens, capped to what the prompt leaves."""
        defaults = dict(self.llm_engine.default_sampling_params)
        if "max_tokens" in defaults:
            defaults["max_tokens"] = None
        return SamplingParams(**defaults)

    def get_metrics(self) -> list:
        """Every metric of the engine, as vLLM's: ``Counter``, ``Gauge``, ``Histogram`` and
        ``Vector`` objects (xyserve.engine_metrics) with ``name`` (``xyserve:`` where vLLM's
        say ``vllm:``; counters without ``_total``), ``labels`` and values, read from the
        registry the server's ``/metrics`` renders."""
        return self.llm_engine.metrics.snapshot()

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[dict] | dict,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """``priority``: one per prompt (vLLM's; lower first), under
        ``scheduling_policy="priority"`` only."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        if prompts is None:
            raise TypeError("prompts: give a prompt or a list of prompts")
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params = (
            list(sampling_params)
            if isinstance(sampling_params, Sequence)
            else [sampling_params] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError("sampling_params must be one object or one per prompt")
        if not all(isinstance(sp, SamplingParams) for sp in params):
            # a None in the list would otherwise mean the defaults, silently
            raise TypeError("sampling_params must be SamplingParams objects (or one per prompt)")
        if priority is not None:
            if isinstance(priority, str) or not isinstance(priority, Sequence):
                raise TypeError(
                    f"priority must be a list of one value per prompt (got {priority!r})"
                )
            if len(priority) != len(prompts):
                raise ValueError("priority must give one value per prompt")
        return self._run(prompts, params, use_tqdm, priority)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Generate for one conversation (a list of message dicts) or a list of them, each
        rendered with ``chat_template`` (None: the tokenizer's own), as vLLM's ``LLM.chat``;
        ``chat_template_kwargs``: more variables for the template.

        Every conversation is checked and rendered before any is admitted: a bad message or a
        template that fails to render (a ``ValueError`` saying ``cannot apply the chat
        template: ...``, as the server's 400, chained from jinja2's error) refuses the whole
        batch, and nothing of it runs or is counted."""
        tok = self.llm_engine.tokenizer
        if tok is None:
            raise ValueError("chat needs a tokenizer")
        if isinstance(messages, str | dict) or not isinstance(messages, Sequence):
            raise TypeError("messages must be a list of message dicts (or a list of such lists)")
        flags = {
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
        }
        for name, flag in flags.items():  # a string "false" would be read as true
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False (got {flag!r})")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conv in convs:
            _check_messages(conv)
            conv = template_messages(  # content parts as one text, as the server's (and vLLM)
                [
                    {**m, "content": content_text(m["content"] or "", f"messages[{i}].content")}
                    for i, m in enumerate(conv)
                ]
            )
            text = tok.apply_chat_template(
                conv,
                add_generation_prompt,
                chat_template,
                continue_final_message,
                tools,
                chat_template_kwargs,
            )
            # the rendered text is the output's prompt (as vLLM's); the template has put in
            # any special tokens already, so none are added again
            ids = tok.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm)

    def beam_search(
        self,
        prompts: str | Sequence[str] | Sequence[dict] | Sequence[list[int]] | dict,
        params: BeamSearchParams,
        use_tqdm: bool = False,
    ) -> list[BeamSearchOutput]:
        """vLLM's ``LLM.beam_search``: each prompt's ``beam_width`` best continuations, best
        first (xyserve.beam_search). Prompts: text, token ids, or vLLM prompt dicts."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError("params must be a BeamSearchParams")
        eng = self.llm_engine
        one = isinstance(prompts, str | dict) or (
            isinstance(prompts, Sequence) and bool(prompts) and isinstance(prompts[0], int)
        )
        ids = [eng.intake.prompt_ids(p)[1] for p in ([prompts] if one else list(prompts))]
        for p in ids:
            eng.intake.validate(p, SamplingParams(max_tokens=params.max_tokens))
        search = BeamSearch(ids, params, eng.eos_token_ids)
        step = params.step_params()
        bar = tqdm(total=params.max_tokens, desc="Beam search", disable=not use_tqdm)
        while not search.finished:
            reqs = [{"prompt_token_ids": t} for t in search.requests()]
            search.advance(self._run(reqs, [step] * len(reqs), use_tqdm=False))
            bar.update(1)
        bar.close()
        tok = eng.tokenizer
        return search.results(tok.decode if tok is not None else None)

    def _run(self, prompts, params, use_tqdm: bool, priority=None) -> list[RequestOutput]:
        eng = self.llm_engine
        ids: list[str] = []
        results: dict[str, RequestOutput] = {}
        show = use_tqdm and not eng.config.disable_progress_bar and len(prompts) > 1
        bar = tqdm(total=len(prompts), desc="Processed prompts", disable=not show)
        try:  # a bad prompt or parameter withdraws the ones already added: nothing ran
            for i, (p, sp) in enumerate(zip(prompts, params)):
                ids.append(eng.add_request(p, sp, priority=priority[i] if priority else 0))
        except BaseException:
            for rid in ids:  # not aborts: to the metrics these requests never came
                eng.withdraw_request(rid)
            bar.close()
            raise
        try:
            while eng.has_unfinished_requests():
                for out in eng.step():
                    if out.finished:
                        results[out.request_id] = out
                        bar.update(1)
        except BaseException:
            for rid in ids:
                eng.abort_request(rid)
            raise
        finally:
            bar.close()
        # Text prompts keep their text; token prompts get None, as in vLLM.
        return [results[rid] for rid in ids]


def _check_messages(conv: object) -> None:
    """Each message a dict with a string ``role`` and a ``content`` (text, or a list of
    content parts): a message without content was rendered by the template as empty."""
    if isinstance(conv, str | dict) or not isinstance(conv, Sequence):
        raise TypeError("messages must be a list of message dicts (or a list of such lists)")
    for i, m in enumerate(conv):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict, not {type(m).__name__}")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise ValueError(f"messages[{i}].role must be a non-empty string")
        if m.get("content") is None and m.get("tool_calls"):
            continue  # an assistant's calls alone
        if not isinstance(m.get("content"), str | list):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts")
