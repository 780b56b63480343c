"""The model's tokenizer and chat template, through transformers' AutoTokenizer."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


# What a tokenizer folder may hold, as transformers reads it: the `tokenizers` serialization,
# a SentencePiece model, or a GPT-2-style byte-level BPE's two files (no tokenizer.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json + merges.txt")


def load_hf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer of the folder ``path``, as ``AutoTokenizer`` loads it.

    A folder with only ``vocab.json`` and ``merges.txt`` is a GPT-2-style BPE: where its
    ``tokenizer_config.json`` names a class, or its ``config.json``'s model type maps to one
    that reads those files (Qwen2's), ``AutoTokenizer`` builds it; where neither does (no
    config, or a Llama model type, whose tokenizer wants ``tokenizer.json``), AutoTokenizer
    gives up, and those files are read as what they are, by ``GPT2TokenizerFast``, as
    ``GPT2TokenizerFast.from_pretrained`` would. A folder with none of ``TOKENIZER_FILES``
    is a FileNotFoundError naming it and them (AutoTokenizer's own error names neither)."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    full = (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()
    bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not full and not bpe:
        raise FileNotFoundError(
            f"no tokenizer in {path}: looked for {', '.join(TOKENIZER_FILES[:-1])} "
            f"or {TOKENIZER_FILES[-1]}"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError) as e:  # "Couldn't instantiate the backend tokenizer ..."
        if full or _names_a_class(path):  # HF's own error, as HF would raise it
            raise
        log.debug("AutoTokenizer did not load %s (%s): reading it as a GPT-2 BPE", path, e)
    return GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)


def byte_level_chars() -> list[str]:
    """GPT-2's byte alphabet: the character each byte (by index, 0-255) is written as in a
    byte-level BPE vocabulary. Printable Latin-1 bytes stand for themselves, the others, in
    byte order, for ``chr(256 + i)``."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [chars[b] for b in range(256)]


def _byte_level_decoder(hf: PreTrainedTokenizerBase) -> dict[str, int] | None:
    """GPT-2's byte alphabet, character to byte, where ``hf`` decodes its pieces through it
    (a fast tokenizer whose decoder is ByteLevel, or a sequence holding one); else None."""
    backend = getattr(hf, "backend_tokenizer", None) if hf.is_fast else None
    if backend is None:
        return None
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return None
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    if "ByteLevel" not in kinds:
        return None
    return {ch: b for b, ch in enumerate(byte_level_chars())}


def _names_a_class(path: Path) -> bool:
    """Does the folder's ``tokenizer_config.json`` name a ``tokenizer_class``? (An unreadable
    one is left to AutoTokenizer to report.)"""
    try:
        cfg = json.loads((path / "tokenizer_config.json").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return not isinstance(cfg, dict) or bool(cfg.get("tokenizer_class"))


class Tokenizer:
    """The engine's view of a folder's HF tokenizer (``hf``): encode, a fast decode for the
    per-token detokenizing, and the chat template."""

    def __init__(self, path: str | Path) -> None:
        from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

        self.hf = load_hf_tokenizer(Path(path))
        # Detokenizing runs per generated token (twice, incrementally: ``engine.output``), and
        # transformers' ``decode`` wraps the Rust tokenizer's in Python argument handling that
        # costs more than the decode itself. Where that wrapper would add nothing (a fast
        # tokenizer that does not clean up spaces after decoding), the Rust one is called
        # directly: the same call, the same text. A class that overrides transformers'
        # decoding (CTC tokenizers group repeated ids) keeps its own.
        cls = type(self.hf)
        generic = (
            cls.decode is PreTrainedTokenizerBase.decode
            and getattr(cls, "_decode", None) is PreTrainedTokenizerFast._decode
        )
        backend = getattr(self.hf, "backend_tokenizer", None) if self.hf.is_fast else None
        cleans = getattr(self.hf, "clean_up_tokenization_spaces", False)
        self._direct = backend.decode if generic and backend is not None and not cleans else None

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._direct is not None:
            return self._direct(ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.decode([i], skip_special_tokens=False) for i in ids]

    @functools.cached_property
    def _byte_table(self) -> dict[str, int] | None:
        return _byte_level_decoder(self.hf)

    @functools.cached_property
    def _added_ids(self) -> frozenset[int]:
        """Added tokens (special ones, say): spelled as text, not in the byte alphabet."""
        return frozenset(getattr(self.hf, "added_tokens_decoder", None) or ())

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes token ``token_id`` stands for, where the vocabulary spells them: a
        byte-level BPE's piece (GPT-2's byte alphabet) or a SentencePiece byte token
        (``<0xE6>``); None elsewhere (a word piece's decoded text is then its bytes). A token
        that is part of a UTF-8 character decodes to U+FFFD, whose bytes are not its own:
        OpenAI's chat ``logprobs.bytes`` are there so that a client can join such tokens."""
        piece = self.hf.convert_ids_to_tokens(int(token_id))
        if not isinstance(piece, str):
            return None
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                return None
        table = self._byte_table
        if table is None or token_id in self._added_ids or not all(ch in table for ch in piece):
            return None
        return bytes(table[ch] for ch in piece)

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        template_kwargs: dict | None = None,
    ) -> str:
        """The prompt text of ``messages`` under ``chat_template`` (None: the tokenizer's own).
        ``tools``: function definitions (OpenAI's shape) for templates that show them.
        ``template_kwargs`` (vLLM's ``chat_template_kwargs``): more variables for the template,
        such as ``enable_thinking``; a name this method sets itself is a ValueError.
        ``continue_final_message`` (vLLM's and transformers'): the text ends inside the last
        message, after its content, for the model to continue it (a "prefilled" reply);
        refused with ``add_generation_prompt``, which opens a new message.

        A template that fails to render (a ``raise_exception(...)``, as many HF templates call
        for a role they do not take, a syntax error, an undefined name) is a
        ``ChatTemplateError`` saying so, chained from jinja2's error (or Python's, raised by an
        expression in the template): jinja2's own type is no ValueError and neither its
        message nor Python's says that the template raised it."""
        import jinja2

        if chat_template is None and not getattr(self.hf, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template")
        if continue_final_message and add_generation_prompt:
            raise ValueError(
                "continue_final_message continues the last message; it needs "
                "add_generation_prompt false (that opens a new one)"
            )
        extra = checked_template_kwargs(template_kwargs)
        try:
            return self.hf.apply_chat_template(
                messages,
                chat_template=chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                **extra,
            )
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError) as e:
            # jinja2's own errors, and Python's from an expression in the template
            # (``{{ m['content'] + 1 }}``, ``{{ 1 / 0 }}``, ``messages[5]``)
            raise ChatTemplateError.of(e) from e


# apply_chat_template's own arguments, which chat_template_kwargs may not override
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "chat_template",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "tools",
        "documents",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


@functools.cache
def reserved_template_kwargs() -> frozenset[str]:
    """The names ``chat_template_kwargs`` may not set: RESERVED_TEMPLATE_KWARGS and every named
    argument of the installed transformers' ``apply_chat_template`` and of the function it
    renders with (their lists grow between versions: ``sanitize_control_tokens`` and
    ``conversations`` are missing from the list above, and set through the kwargs they
    failed inside transformers, a 400 naming the messages instead of the field)."""
    import inspect

    names = set(RESERVED_TEMPLATE_KWARGS)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    from transformers import PreTrainedTokenizerBase

    fns = [PreTrainedTokenizerBase.apply_chat_template]
    try:
        from transformers.utils.chat_template_utils import render_jinja_template

        fns.append(render_jinja_template)
    except ImportError:  # an older transformers: its apply_chat_template alone
        pass
    for fn in fns:
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind in named and p.name != "self"}
    return frozenset(names)


def checked_template_kwargs(kwargs: dict | None) -> dict:
    """``chat_template_kwargs`` as a dict of variables for the template; a ValueError where
    one is not a name or sets an argument of ``apply_chat_template`` itself; a TypeError where
    they are not a dict (``dict()`` of a list or a string fails naming no field)."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"chat_template_kwargs must be a dict (got {type(kwargs).__name__})")
    extra = dict(kwargs or {})
    if not all(isinstance(k, str) and k.isidentifier() for k in extra):
        raise ValueError("chat_template_kwargs keys must be names (identifiers)")
    clash = sorted(set(extra) & reserved_template_kwargs())
    if clash:
        raise ValueError(
            f"chat_template_kwargs may not set {', '.join(clash)}: give them as the request's "
            "own fields"
        )
    return extra


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates take them: an assistant's tool calls with their arguments
    as objects where they parse (templates write them with ``tojson``; vLLM does the same),
    no ``content`` of None (a message of calls alone renders as empty), and a message's
    thinking under both ``reasoning`` and ``reasoning_content``, as vLLM passes it (templates
    read one or the other: Qwen3's reads ``reasoning_content``)."""
    out = []
    for m in messages:
        if m.get("content") is None:
            m = {**m, "content": ""}
        thinking = m.get("reasoning")
        if thinking is None:
            thinking = m.get("reasoning_content")
        if thinking is not None:
            m = {**m, "reasoning": thinking, "reasoning_content": thinking}
        calls = m.get("tool_calls")
        if calls:
            m = {**m, "tool_calls": [_call_for_template(c) for c in calls]}
        out.append(m)
    return out


def _call_for_template(call: dict) -> dict:
    fn = dict(call.get("function") or {})
    if isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except ValueError:
            pass
    return {**call, "function": fn}


def content_text(content: str | list, where: str = "content") -> str:
    """A message's content as the text a chat template renders: a string as it is; a list of
    content parts (OpenAI's form, dicts) as their texts joined by newlines, as vLLM renders
    them (parts are separate texts, not pieces of one word). Only text parts are served:
    another type, or a text part without a string ``text``, is a ValueError naming
    ``where``. The server's messages and ``LLM.chat``'s both go through here."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ValueError(f"{where}[{j}]: content parts of type {kind!r} are not supported")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{j}].text: a text part needs its text (a string)")
        texts.append(part["text"])
    return "\n".join(texts)


class ChatTemplateError(ValueError):
    """A chat template that failed to render: ``LLM.chat``'s ValueError and the server's 400,
    in the same words (``cannot apply the chat template: ...``)."""

    @classmethod
    def of(cls, error: Exception) -> ChatTemplateError:
        """The error for jinja2's ``error``: its message, and where a syntax error stands."""
        import jinja2

        where = ""
        if isinstance(error, jinja2.TemplateSyntaxError) and error.lineno:
            where = f" (syntax error at line {error.lineno} of the template)"
        return cls(f"cannot apply the chat template: {error}{where}")
