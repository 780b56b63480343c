"""``xyserve serve [MODEL] --host --port ...``: every EngineConfig field is a --kebab-case flag.

The flags are generated from the dataclass, so a new engine argument is a server flag at once,
as in vLLM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import types
import typing
from typing import Any

from xyserve.config import EngineConfig
from xyserve.server.options import ServerOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _base_type(annotation: Any) -> type:
    """``int | None`` -> int; ``bool`` -> bool; ``str | list[str]`` -> str."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
        if len(non_none) == 2 and str in non_none and list[str] in non_none:
            return str
        raise TypeError(f"unsupported annotation {annotation!r}")
    return annotation


# Sizes that take vLLM's human-readable forms (``--max-model-len 32k``).
HUMAN_READABLE_INTS = ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_readable_int(text: str) -> int:
    """An integer, or one with vLLM's suffixes: lowercase decimal (``25.6k`` = 25600, ``2m``),
    uppercase binary (``32K`` = 32768, ``1G``; whole numbers only)."""
    value = text.strip()
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if m is None:
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid integer {text!r} (an integer, or with a suffix: 32k = 32000, 32K = 32768)"
            ) from None
    number, suffix = m.groups()
    if suffix in _DECIMAL:
        return int(float(number) * _DECIMAL[suffix])
    if "." in number:
        raise argparse.ArgumentTypeError(
            f"invalid integer {text!r}: binary suffixes take whole numbers "
            f"(did you mean {number}{suffix.lower()}?)"
        )
    return int(number) * _BINARY[suffix]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineConfig field; booleans get --flag/--no-flag."""
    hints = typing.get_type_hints(EngineConfig)
    group = parser.add_argument_group("engine arguments (EngineConfig)")
    for f in dataclasses.fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"EngineConfig.{f.name} (default: {default})"
        if dict in (typ, typing.get_origin(typ)):  # e.g. --speculative-config '<json>'
            typ = _json_object
        if f.name in HUMAN_READABLE_INTS:
            typ = human_readable_int
            help_text += "; 32k = 32000, 32K = 32768"
        if f.name == "served_model_name":  # one name or several, as vLLM's
            group.add_argument(
                flag, dest=f.name, nargs="+", default=default, metavar="NAME", help=help_text
            )
        elif typing.get_origin(typ) is list:  # e.g. --cudagraph-capture-sizes 1 2 4 8
            (item,) = typing.get_args(typ)
            group.add_argument(
                flag, dest=f.name, type=item, nargs="+", default=default, help=help_text
            )
        elif typ is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xyserve serve",
        description="Serve a model with an OpenAI-compatible HTTP API.",
        # No prefixes: ``--enable-prefix`` set --enable-prefix-caching, and a flag of vLLM's
        # that xyserve lacks would be taken for any of ours that it begins.
        allow_abbrev=False,
    )
    p.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a local HF model directory or a bundled model name (default: the bundled model)",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"(default: {DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"(default: {DEFAULT_PORT})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--api-key",
        default=os.environ.get("XYSERVE_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $XYSERVE_API_KEY); "
        "/health, /ping, /version and /metrics stay open",
    )
    p.add_argument(
        "--allowed-origins",
        default=None,
        help="CORS origins: a JSON list ('[\"https://a.example\"]') or comma-separated",
    )
    p.add_argument("--chat-template", default=None, help="a Jinja file, or the template itself")
    p.add_argument("--disable-log-requests", action="store_true", help="no log line per request")
    p.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='tool_choice "auto" (the default with tools): the model\'s calls are read by '
        "--tool-call-parser",
    )
    p.add_argument(
        "--tool-call-parser",
        default=None,
        help="how the model writes its tool calls: hermes (<tool_call>{...}</tool_call>), "
        "llama3_json, mistral or pythonic (xyserve.server.tool_parsers)",
    )
    p.add_argument(
        "--reasoning-parser",
        default=None,
        help="a reasoning model's <think>...</think> as the chat message's reasoning: "
        "deepseek_r1 (reasoning from the reply's start, as DeepSeek-R1 and Qwen3 2507 thinking "
        "models write it) or qwen3 (only where the reply opens with <think>)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, as vLLM's: stop taking requests and abort those in flight "
        "at once (0, the default), or let them finish for up to SECONDS first",
    )
    add_engine_args(p)
    return p


def _seconds(value: str) -> float:
    """A duration of at least 0 seconds."""
    seconds = float(value)
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be at least 0 (got {value})")
    return seconds


def _port(value: str) -> int:
    """A TCP port number (0: any free port); out of range is a usage error, not bind()'s
    OverflowError."""
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (got {port})")
    return port


def _origins(value: str | None) -> list[str]:
    if not value:
        return []
    if value.lstrip().startswith("["):
        origins = json.loads(value)
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ValueError("--allowed-origins must be a JSON list of strings")
        return origins
    return [o.strip() for o in value.split(",") if o.strip()]


def server_options(ns: argparse.Namespace) -> ServerOptions:
    """The ServerOptions of parsed arguments; ValueError on a bad value."""
    try:
        origins = _origins(ns.allowed_origins)
    except json.JSONDecodeError as e:
        raise ValueError(f"--allowed-origins: {e}") from None
    return ServerOptions(
        api_key=ns.api_key or None,
        allowed_origins=origins,
        chat_template=ServerOptions.load_chat_template(ns.chat_template),
        disable_log_requests=ns.disable_log_requests,
        enable_auto_tool_choice=ns.enable_auto_tool_choice,
        tool_call_parser=ns.tool_call_parser,
        reasoning_parser=ns.reasoning_parser,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a busy port is reported before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def dashed_flags(argv: list[str]) -> list[str]:
    """``--max_model_len 8k`` as ``--max-model-len 8k``: vLLM takes either spelling of a flag.
    Values (``--served-model-name my_model``) and anything after ``--`` are left as they are."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            arg = "--" + key[2:].replace("_", "-") + eq + value
        out.append(arg)
    return out


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EngineConfig]:
    """Parse the command line into the server's options and an EngineConfig."""
    parser = build_parser()
    ns = parser.parse_args(dashed_flags(sys.argv[1:] if argv is None else argv))
    if ns.model_tag is not None:
        if ns.model is not None and ns.model != ns.model_tag:
            parser.error(f"MODEL {ns.model_tag!r} and --model {ns.model!r} disagree")
        ns.model = ns.model_tag
    kwargs = {name: getattr(ns, name) for name in EngineConfig.field_names()}
    try:
        config = EngineConfig(**kwargs)
    except ValueError as e:
        parser.error(str(e))
    return ns, config


def main(argv: list[str] | None = None) -> int:
    ns, config = parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return _serve(ns, config)
    except KeyboardInterrupt:  # Ctrl-C before the server runs (imports, the model's load)
        print("xyserve serve: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def _serve(ns: argparse.Namespace, config: EngineConfig) -> int:
    """Bind, load the model, serve until a signal; the socket is closed however it ends."""
    import uvicorn

    from xyserve.server.app import create_app
    from xyserve.server.async_engine import AsyncLLM

    log = logging.getLogger("xyserve")
    try:
        options = server_options(ns)
        sock = bind_socket(ns.host, ns.port)
    except (OSError, ValueError) as e:
        print(f"xyserve serve: error: {e}", file=sys.stderr)
        return 2
    try:
        log.info("loading model %s (dtype=%s, device=%s)", config.model or "(bundled default)",
                 config.dtype, config.device)  # fmt: skip
        try:
            llm = AsyncLLM.from_config(config)
        except (FileNotFoundError, ValueError) as e:  # a bad model path or argument: no traceback
            print(f"xyserve serve: error: {e}", file=sys.stderr)
            return 2
        app = create_app(llm, options=options)
        log.info(
            "serving %s on http://%s:%d/v1 (api key: %s, cors origins: %s, request logs: %s)",
            llm.model_name,
            ns.host,
            sock.getsockname()[1],  # the port bound: with --port 0, the one the system chose
            "required" if options.api_key else "none",
            options.allowed_origins or "none",
            "off" if options.disable_log_requests else "on",
        )
        # uvicorn's graceful shutdown: the listening socket closed, then open requests given
        # the timeout to finish before their tasks are cancelled; None would wait for them
        # without end
        limit = ns.shutdown_timeout
        config = uvicorn.Config(app, log_level=ns.log_level, timeout_graceful_shutdown=limit)
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C after a graceful shutdown, as uvicorn.run does
            pass
        return 0
    finally:
        sock.close()
