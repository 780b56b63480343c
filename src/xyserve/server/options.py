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
    # vLLM's: a reasoning model's <think>...</think> as the message's reasoning_content
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
        """``--chat-template``: a file path, or the Jinja template itself."""
        if value is None:
            return None
        p = Path(value)
        try:
            if p.is_file():
                return p.read_text()
        except OSError:  # a long inline template is not a valid path
            pass
        if "{" not in value:
            raise ValueError(f"--chat-template: no such file, nor a Jinja template: {value!r}")
        return value
