"""``xyserve serve --shutdown-timeout`` (vLLM's): on SIGTERM the server stops taking requests,
then aborts those in flight at once (0, the default) or lets them finish for up to the
timeout. Before it, a SIGTERM waited for every open stream with no limit."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from xyserve.bench.serve_server import ServerProcess

MAX_TOKENS = 900  # long enough to be still streaming when the signal comes


def _stream_across_sigterm(srv: ServerProcess) -> tuple[int, int | None, bool]:
    """A long completion streamed; SIGTERM sent once its first chunk is in. Returns the
    chunks received, the final usage's completion tokens (None: no usage chunk came) and
    whether the stream ended with [DONE]."""
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks, generated, done = 0, None, False
    try:
        with httpx.stream("POST", f"{srv.base_url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    chunks += 1
                    if chunks == 1:
                        srv.proc.send_signal(signal.SIGTERM)
                else:
                    generated = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:  # the connection cut
        pass
    return chunks, generated, done


@pytest.mark.parametrize("timeout", [None, 120])
def test_sigterm_aborts_or_drains_the_requests_in_flight(tiny_llama: Path, timeout):
    args = ["--served-model-name", "tiny", "--max-model-len", "1024"]
    if timeout is not None:
        args += ["--shutdown-timeout", str(timeout)]
    srv = ServerProcess(str(tiny_llama), engine_args=args, threads=1, startup_timeout_s=120)
    with srv:
        chunks, generated, done = _stream_across_sigterm(srv)
        rc = srv.proc.wait(timeout=60)  # nothing waits forever
        log = srv.log_tail(40)
        with pytest.raises(httpx.ConnectError):  # no longer listening
            httpx.get(f"{srv.base_url}/health", timeout=5)
    assert rc in (0, -signal.SIGTERM), log
    if timeout is None:  # aborted: the stream cut short
        assert chunks >= 1 and (generated, done) == (None, False), (chunks, log)
    else:  # drained: the stream whole
        assert (generated, done) == (MAX_TOKENS, True), (chunks, log)


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_shutdown_timeout_is_a_usage_error(value, capsys):
    from xyserve.server.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--shutdown-timeout", value])
    assert e.value.code == 2 and "--shutdown-timeout" in capsys.readouterr().err
    assert build_parser().parse_args(["--shutdown-timeout", "2.5"]).shutdown_timeout == 2.5
