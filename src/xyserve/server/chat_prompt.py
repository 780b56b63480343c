"""Chat messages to prompt text: each message checked, then the chat template applied."""

from __future__ import annotations

from typing import Any

from xyserve.server.errors import APIError
from xyserve.server.protocol import ChatMessage
from xyserve.tokenizer import template_messages

# Roles a request may send (OpenAI's, less the deprecated function role).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_messages(body_messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the template takes them; APIError naming the first bad message."""
    messages = []
    for i, m in enumerate(body_messages):
        if m.tool_calls and m.role != "assistant":
            raise APIError("only assistant messages make tool calls", param=f"messages.{i}.role")
        if m.role == "tool" and not m.tool_call_id:
            raise APIError("a tool message needs tool_call_id", param=f"messages.{i}.tool_call_id")
        if m.function_call is not None:
            raise APIError("function calling is not supported", param=f"messages.{i}.function_call")
        if m.role not in CHAT_ROLES:
            raise APIError(
                f"unknown role {m.role!r}; roles are {', '.join(CHAT_ROLES)}",
                param=f"messages.{i}.role",
            )
        if m.content is None and not m.tool_calls:
            raise APIError("content is required", param=f"messages.{i}.content")
        try:
            text = m.text()
        except ValueError as e:
            raise APIError(str(e), param=f"messages.{i}.content") from None
        msg: dict[str, Any] = {"role": m.role, "content": text}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        for key in ("reasoning", "reasoning_content"):  # template_messages gives both names
            thinking = getattr(m, key)
            if thinking is not None and m.role != "assistant":
                raise APIError(
                    "only assistant messages carry reasoning", param=f"messages.{i}.{key}"
                )
            if thinking is not None:
                msg[key] = thinking
        messages.append(msg)
    return template_messages(messages)


def render_chat(
    tok: Any,
    messages: list[dict],
    add_generation_prompt: bool,
    template: str | None,
    continue_final_message: bool = False,
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> str:
    """The prompt text: the tokenizer's own template, or ``template`` (``--chat-template``);
    a template that fails to render is a ``ChatTemplateError``, as in ``LLM.chat``."""
    return tok.apply_chat_template(
        messages, add_generation_prompt, template, continue_final_message, tools, template_kwargs
    )
