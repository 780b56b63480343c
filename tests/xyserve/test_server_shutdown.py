"""``xyserve serve --shutdown-timeout`` (vLLM's): on SIGTERM the server stops taking requests,
then aborts those in flight at once (0, the default) or lets them finish for up to the
timeout. Before it, a SIGTERM waited for every open stream with no limit."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest

from xyserve.bench.serve_server import ServerProcess

MAX_TOKENS = 900
# Streams sent at once to a server that runs one at a time (--max-num-seqs 1): the signal
# comes at the first one's first token, so the last has whole streams' time still to run (a
# single stream could end before the abort on a fast machine).
STREAMS = 3


async def _stream(client: httpx.AsyncClient, url: str, first_chunk: asyncio.Event | None):
    """One long completion streamed: (final usage's completion tokens, or None where no usage
    chunk came; whether it ended with [DONE]). ``first_chunk`` is set once this stream's first
    chunk is in."""
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    generated, done = None, False
    try:
        async with client.stream("POST", url, json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and first_chunk is not None:
                        first_chunk.set()
                        first_chunk = None
                    elif not chunk["choices"]:
                        generated = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:  # the connection cut
        pass
    return generated, done


async def _queued(client: httpx.AsyncClient, srv: ServerProcess) -> int:
    """Requests the server holds (running and waiting), from its /metrics."""
    text = (await client.get(f"{srv.base_url}/metrics")).text
    return int(
        sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(("xyserve:num_requests_running", "xyserve:num_requests_waiting"))
        )
    )


async def _streams_across_sigterm(srv: ServerProcess) -> list[tuple[int | None, bool]]:
    """SIGTERM at the first stream's first chunk, once the server holds every stream (else,
    on a loaded machine, the signal could come before the others' requests reached it, and
    they would find no server: not what a drain is tested on)."""
    url = f"{srv.base_url}/v1/completions"
    async with httpx.AsyncClient(timeout=60) as client:
        started = asyncio.Event()
        first = asyncio.create_task(_stream(client, url, started))
        await asyncio.sleep(0.05)  # the first one admitted first
        rest = [asyncio.create_task(_stream(client, url, None)) for _ in range(STREAMS - 1)]
        await asyncio.wait_for(started.wait(), timeout=60)
        for _ in range(600):  # nothing waits forever: 30 s at most
            if await _queued(client, srv) >= STREAMS:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the server never held all {STREAMS} streams")
        srv.proc.send_signal(signal.SIGTERM)
        return [await first] + [await t for t in rest]


@pytest.mark.parametrize("timeout", [None, 120])
def test_sigterm_aborts_or_drains_the_requests_in_flight(tiny_llama: Path, timeout):
    args = ["--served-model-name", "tiny", "--max-model-len", "1024", "--max-num-seqs", "1"]
    if timeout is not None:
        args += ["--shutdown-timeout", str(timeout)]
    srv = ServerProcess(str(tiny_llama), engine_args=args, threads=1, startup_timeout_s=120)
    with srv:
        results = asyncio.run(_streams_across_sigterm(srv))
        rc = srv.proc.wait(timeout=60)  # nothing waits forever
        log = srv.log_tail(40)
        with pytest.raises(httpx.ConnectError):  # no longer listening
            httpx.get(f"{srv.base_url}/health", timeout=5)
    assert rc in (0, -signal.SIGTERM), log
    if timeout is None:  # aborted: the queued streams cut short
        assert results[-1] == (None, False), (results, log)
    else:  # drained: every stream whole, the queued ones included
        assert results == [(MAX_TOKENS, True)] * STREAMS, (results, log)


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_shutdown_timeout_is_a_usage_error(value, capsys):
    from xyserve.server.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--shutdown-timeout", value])
    assert e.value.code == 2 and "--shutdown-timeout" in capsys.readouterr().err
    assert build_parser().parse_args(["--shutdown-timeout", "2.5"]).shutdown_timeout == 2.5
