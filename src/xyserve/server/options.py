"""Options of the HTTP server itself (the engine's are in EngineConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerOptions:
    api_key: str | None = None  # when set, every route but the probes (middleware.OPEN) needs it
    allowed_origins: list[str] = field(default_factory=list)  # CORS; empty: no CORS headers
    chat_template: str | None = None  # overrides the tokenizer's template
    disable_log_requests: bool = False
    # vLLM's: tool_choice "auto" (the default with tools) reads the model's calls with
    # ``tool_call_parser`` (``server.tool_parsers.TOOL_PARSERS``); off, "auto" is a 400
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    # vLLM's: a reasoning model's <think>...</think> as the message's reasoning
    # (``server.reasoning.REASONING_PARSERS``); None: the reply is all content
    reasoning_parser: str | None = None

    def __post_init__(self) -> None:
        from xyserve.server.reasoning import REASONING_PARSERS
        from xyserve.server.tool_parsers import TOOL_PARSERS

        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(
                f"--reasoning-parser {self.reasoning_parser!r}: the parsers are "
                + ", ".join(REASONING_PARSERS)
            )

        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_PARSERS:
            raise ValueError(
                f"--tool-call-parser {self.tool_call_parser!r}: the parsers are "
                + ", ".join(TOOL_PARSERS)
            )
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")

    @staticmethod
    def load_chat_template(value: str | None) -> str | None:
        """``--chat-template``: a file path, or the Jinja template itself; compiled here, so
        that a template with a syntax error stops the server at start instead of failing
        every chat request with a 400."""
        if value is None:
            return None
        p = Path(value)
        template = None
        try:
            if p.is_file():
                template = p.read_text()
        except OSError:  # a long inline template is not a valid path
            pass
        if template is None and "{" not in value:
            raise ValueError(f"--chat-template: no such file, nor a Jinja template: {value!r}")
        template = value if template is None else template
        _compile_chat_template(template)
        return template


def _compile_chat_template(template: str) -> None:
    """Compile ``template`` as ``apply_chat_template`` will (transformers' sandboxed
    environment and extensions); a syntax error is a ValueError naming ``--chat-template``."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_
    except ImportError:  # a transformers without it: jinja2 with the extension templates use
        compile_ = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).from_string
    try:
        compile_(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(
            f"--chat-template: not a valid Jinja template: {e.message} (line {e.lineno})"
        ) from None
