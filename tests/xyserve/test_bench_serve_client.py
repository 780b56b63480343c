"""bench serve's client measures, exactly, against a fake streaming server with a fake clock."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from xyserve.bench.serve_client import RequestResult, measure, send
from xyserve.bench.serve_load import run_load
from xyserve.bench.serve_report import (
    Slo,
    aggregate,
    max_rate_under_slo,
    percentile,
    rate_verdicts,
    settled,
    verdict_lines,
    wilson_interval,
)
from xyserve.bench.serve_workload import BenchRequest


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def chunk(k: int, finish: str | None = None) -> dict:
    toks = [f"token_id:{i}" for i in range(k)]
    lp = {"tokens": toks, "token_logprobs": [0.0] * k, "top_logprobs": [{}] * k}
    choice = {"index": 0, "text": "", "logprobs": lp, "finish_reason": finish}
    return {"id": "x", "choices": [choice]}


class TimedStream(httpx.AsyncByteStream):
    """Yields each event after setting the fake clock to its time."""

    def __init__(self, clock: FakeClock, events: list[tuple[float, bytes]], end: float):
        self.clock, self.events, self.end = clock, events, end

    async def __aiter__(self):
        for t, data in self.events:
            self.clock.t = t
            yield data
        self.clock.t = self.end


def fake_client(clock: FakeClock, events: list[tuple[float, bytes]], end: float, seen=None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        return httpx.Response(200, stream=TimedStream(clock, events, end))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def _send(client: httpx.AsyncClient, clock: FakeClock, out_len: int, **kw) -> RequestResult:
    async with client:
        return await send(
            client,
            "http://127.0.0.1:1/v1/completions",
            "m",
            BenchRequest([5, 6, 7], out_len),
            clock,
            **kw,
        )


def test_ttft_tbt_tpot_e2e_exact_with_a_multi_token_chunk():
    clock = FakeClock()
    # tokens: 1 at 0.5 s, 2 at 0.6 s (one chunk of two), 1 at 0.9 s; usage; done at 1.0 s
    events = [
        (0.5, sse(chunk(1))),
        (0.6, sse(chunk(2))),
        (0.9, sse(chunk(1, "length"))),
        (0.95, sse({"id": "x", "choices": [], "usage": {"completion_tokens": 4}})),
        (0.95, b"data: [DONE]\n\n"),
    ]
    seen: list = []
    res = asyncio.run(_send(fake_client(clock, events, 1.0, seen), clock, 4))
    assert res.ok, res.error
    assert seen[0]["prompt"] == [5, 6, 7] and seen[0]["max_tokens"] == 4
    assert seen[0]["stream"] is True and seen[0]["logprobs"] == 0 and seen[0]["ignore_eos"]
    assert res.chunks == [(0.5, 1), (0.6, 2), (0.9, 1)]
    m = measure(res.start, res.chunks, res.end)
    assert m.ttft == 0.5
    assert m.tbts == pytest.approx([0.1, 0.0, 0.3])  # the chunk's 2nd token: no wait
    assert m.tpot == pytest.approx(0.4 / 3)
    assert m.e2e == 0.95  # the stream ends at [DONE]
    assert m.num_tokens == 4


def test_a_short_stream_an_error_chunk_and_an_http_error_are_failures():
    clock = FakeClock()
    short = asyncio.run(_send(fake_client(clock, [(0.1, sse(chunk(1)))], 0.2), clock, 3))
    assert not short.ok and "got 1 tokens, asked for 3" in short.error

    err = sse({"error": {"message": "boom", "type": "internal_error"}})
    clock = FakeClock()
    res = asyncio.run(_send(fake_client(clock, [(0.1, sse(chunk(1))), (0.2, err)], 0.3), clock, 2))
    assert res.error == "stream error: boom"

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "max_tokens too large"}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(bad))
    res = asyncio.run(_send(client, FakeClock(), 2))
    assert res.error == "HTTP 400: max_tokens too large"

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client = httpx.AsyncClient(transport=httpx.MockTransport(refused))
    res = asyncio.run(_send(client, FakeClock(), 2))
    assert res.error.startswith("ConnectError")


def test_disconnect_after_k_tokens_is_not_a_failure():
    clock = FakeClock()
    events = [(0.1 * i, sse(chunk(1))) for i in range(1, 6)]
    res = asyncio.run(_send(fake_client(clock, events, 1.0), clock, 5, disconnect_after=2))
    assert res.disconnected and res.error is None and not res.ok
    assert res.num_tokens == 2


def result(start: float, chunks: list[tuple[float, int]], end: float, error=None):
    r = RequestResult(3, sum(k for _, k in chunks), start, chunks, end, error)
    return r


def test_goodput_and_percentiles_are_exact():
    slo = Slo(ttft_s=0.5, tbt_s=0.2, tbt_stat="max")
    results = [
        result(0.0, [(0.4, 1), (0.5, 1), (0.6, 1)], 0.6),  # TTFT .4, max TBT .1: good
        result(1.0, [(1.6, 1), (1.7, 1)], 1.7),  # TTFT .6: misses
        result(2.0, [(2.1, 1), (2.5, 1)], 2.5),  # TBT .4: misses
        result(3.0, [(3.2, 2), (3.3, 1)], 4.0),  # TTFT .2, TBTs 0, .1: good
        result(3.5, [], 3.6, error="HTTP 500: x"),  # failed: counted, not measured
    ]
    rep = aggregate("sys", "rate=1", 1.0, results, slo)
    assert rep.num_completed == 4 and rep.num_failed == 1
    assert rep.errors == {"HTTP 500: x": 1}
    assert rep.duration_s == 4.0
    assert rep.achieved_qps == 1.0
    assert rep.goodput == 0.5
    assert rep.slo_attainment == 2 / 5
    assert rep.output_tok_s == 10 / 4
    assert rep.ttft["mean"] == pytest.approx((0.4 + 0.6 + 0.1 + 0.2) / 4)
    tbts = [0.1, 0.1, 0.1, 0.4, 0.0, 0.1]
    assert rep.tbt["mean"] == pytest.approx(sum(tbts) / 6)
    assert rep.tbt["p50"] == pytest.approx(0.1)
    assert rep.tbt["p99"] == pytest.approx(percentile(tbts, 99))
    # with the mean TBT statistic, the third request (one gap of .4) still misses
    assert aggregate("s", "l", 1.0, results, Slo(0.5, 0.2, "mean")).goodput == 0.5


def test_a_repeated_rate_is_judged_on_its_runs_pooled():
    """Runs of one system at one rate (``--sweep 1,1,2,2``) pool their requests: rate 2 with
    one run at 10/10 and one at 6/10 meets 0.8 pooled (16/20), rate 3 with 10/10 and 5/10
    does not (15/20) though one run alone would, and a failed request in any run fails the
    rate; a system's lone runs are judged as before."""
    slo = Slo(ttft_s=0.5, tbt_s=1.0, tbt_stat="max")
    good, late = result(0.0, [(0.1, 1)], 0.1), result(0.0, [(0.9, 1)], 0.9)

    def run(label, rate, n_good, n=10, failed=0):
        results = [good] * n_good + [late] * (n - n_good - failed)
        results += [result(0.0, [], 0.1, error="HTTP 500: x")] * failed
        return aggregate(label, f"rate={rate}", rate, results, slo)

    reports = [
        run("a", 1.0, 10), run("a", 2.0, 10), run("a", 2.0, 6), run("a", 3.0, 10),
        run("a", 3.0, 5), run("b", 1.0, 9), run("b", 1.0, 9, failed=1), run("b", 0.5, 8),
    ]  # fmt: skip
    assert max_rate_under_slo(reports, 0.8) == {"a": 2.0, "b": 0.5}
    assert max_rate_under_slo([run("c", 4.0, 8)], 0.8) == {"c": 4.0}  # exactly the target


def test_wilson_interval_closed_form():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)  # all met: not the empty [1, 1] of the normal approximation
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    for n in range(1, 400):  # the ends are exact at k = 0 and k = n, not off by an ulp
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0


def test_rate_verdicts_say_which_rest_on_too_few_requests():
    """At a bar of 0.9: 100/100 meets clearly, 19/20 meets but its interval reaches under the
    bar, 60/100 fails clearly, 17/20 fails but its interval reaches over it, and a failed
    request fails a rate clearly whatever the others did; a max rate is settled only when its
    own verdict and those of the rates above it are clear."""
    slo = Slo(ttft_s=0.5, tbt_s=1.0, tbt_stat="max")
    good, late = result(0.0, [(0.1, 1)], 0.1), result(0.0, [(0.9, 1)], 0.9)

    def run(label, rate, n_good, n, failed=0):
        results = [good] * n_good + [late] * (n - n_good - failed)
        results += [result(0.0, [], 0.1, error="HTTP 500: x")] * failed
        return aggregate(label, f"rate={rate}", rate, results, slo)

    reports = [
        run("a", 1.0, 50, 50), run("a", 1.0, 50, 50), run("a", 2.0, 19, 20),
        run("a", 3.0, 60, 100), run("b", 1.0, 100, 100), run("b", 2.0, 17, 20),
        run("c", 1.0, 99, 100, failed=1),
    ]  # fmt: skip
    v = {(x.label, x.rate): x for x in rate_verdicts(reports, 0.9)}
    assert (v["a", 1.0].good, v["a", 1.0].counted) == (100, 100)  # the two runs pooled
    assert v["a", 1.0].meets and v["a", 1.0].clear
    assert v["a", 2.0].meets and not v["a", 2.0].clear
    assert not v["a", 3.0].meets and v["a", 3.0].clear
    assert not v["b", 2.0].meets and not v["b", 2.0].clear
    assert not v["c", 1.0].meets and v["c", 1.0].clear
    assert max_rate_under_slo(reports, 0.9) == {"a": 2.0, "b": 1.0, "c": 0.0}
    verdicts = list(v.values())
    assert not settled(verdicts, "a", 2.0)  # 19/20 could be luck
    assert not settled(verdicts, "b", 1.0)  # 17/20 above it could be bad luck
    assert settled(verdicts, "c", 0.0)
    assert settled([v["a", 1.0], v["a", 3.0]], "a", 1.0)
    lines = verdict_lines(verdicts)
    assert len(lines) == 3
    assert "2: 0.95 [" in lines[0] and "of 20 meets?" in lines[0] and "of 100 fails" in lines[0]
    assert "1 failed fails" in lines[2]


def test_rate_verdicts_at_the_bar_and_with_every_request_disconnected():
    """A count exactly at the bar meets it (55 of 100 at 0.55, a product that floating point
    puts an ulp above 55); disconnected requests are not counted, and a rate whose every
    request disconnected has nothing to meet the SLO with, and no clear verdict."""
    slo = Slo(ttft_s=0.5, tbt_s=1.0, tbt_stat="max")
    good, late = result(0.0, [(0.1, 1)], 0.1), result(0.0, [(0.9, 1)], 0.9)
    gone = result(0.0, [(0.1, 1)], 0.1)
    gone.disconnected = True
    reports = [
        aggregate("a", "rate=1", 1.0, [good] * 55 + [late] * 45, slo),
        aggregate("b", "rate=1", 1.0, [good] * 19 + [gone] * 5, slo),
        aggregate("c", "rate=1", 1.0, [gone] * 4, slo),
    ]
    v = {x.label: x for x in rate_verdicts(reports, 0.55)}
    assert v["a"].meets
    assert (v["b"].good, v["b"].counted) == (19, 19) and v["b"].meets
    assert v["c"].counted == 0 and math.isnan(v["c"].attainment)
    assert not v["c"].meets and not v["c"].clear
    assert max_rate_under_slo(reports, 0.55) == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert not settled(list(v.values()), "c", 0.0)
    assert not settled([], "d", 0.0)  # only an infinite rate was run: nothing judged


def test_percentile_matches_linear_interpolation():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert math.isnan(percentile([], 50))


def test_closed_loop_keeps_concurrency_in_flight(monkeypatch):
    """Closed loop with 2 workers: never more than 2 requests in flight, all sent once."""
    inflight, peak, prompts = 0, 0, []

    async def fake_send(client, url, model, req, clock, use_logprobs, leave, **kw):
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        prompts.append(req.prompt_ids[0])
        await asyncio.sleep(0.001)
        inflight -= 1
        return RequestResult(1, 1, 0.0, [(0.1, 1)], 0.1)

    monkeypatch.setattr("xyserve.bench.serve_load.send", fake_send)
    reqs = [BenchRequest([i + 3], 1) for i in range(7)]
    out = asyncio.run(run_load("http://127.0.0.1:1", "m", reqs, concurrency=2, progress=False))
    assert len(out) == 7 and peak == 2 and sorted(prompts) == list(range(3, 10))


def test_plot_of_a_sweep_with_repeated_rates(tmp_path):
    """Repeated rates plot as their median with each run beside it, and the pooled
    attainment panel with its intervals; rates without a finite value are left off it."""
    from xyserve.bench.serve_plot import plot_sweep

    slo = Slo(ttft_s=0.5, tbt_s=1.0, tbt_stat="max")
    good, late = result(0.0, [(0.1, 1)], 0.1), result(0.0, [(0.9, 1)], 0.9)
    reports = [
        aggregate(label, f"rate={rate}", rate, [good] * n + [late] * (10 - n), slo)
        for label, rate, n in [
            ("a", 1.0, 10), ("a", 1.0, 9), ("a", 2.0, 7), ("a", math.inf, 5),
            ("b", 1.0, 8), ("b", 2.0, 4), ("b", 2.0, 6), ("c", 1.0, 10), ("c", 1.0, 10),
            ("c", 2.0, 0),
        ]
    ]  # fmt: skip
    failed = [result(0.0, [], 0.1, error="HTTP 500: x")] * 3  # no latency at all: NaN
    reports += [
        aggregate("d", "rate=1", 1.0, failed, slo),
        aggregate("d", "rate=2", 2.0, [good], slo),
    ]
    out = plot_sweep(reports, tmp_path / "sub" / "sweep.png", "t", bar=0.9)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "event, message",
    [
        (b"data: 5\n\n", "malformed stream: an event that is not a JSON object"),
        (b"data: null\n\n", "malformed stream: an event that is not a JSON object"),
        (b'data: "oops"\n\n', "malformed stream: an event that is not a JSON object"),
        (sse({"choices": 5}), "malformed stream"),
        (sse({"error": "overloaded"}), "stream error: overloaded"),
    ],
)
def test_a_malformed_event_fails_its_request_and_is_not_raised(event, message):
    """These raised TypeError out of send(), which ended the whole run (every result lost)
    instead of counting one failed request."""
    clock = FakeClock()
    client = fake_client(clock, [(0.1, sse(chunk(1))), (0.2, event)], 0.3)
    res = asyncio.run(_send(client, clock, 2))
    assert not res.ok and res.error.startswith(message)


@pytest.mark.timeout(10)
def test_request_timeout_bounds_a_stream_that_never_ends():
    """A loopback server that answers 200 and then sends only SSE comments, every 50 ms, for
    ever: httpx's read timeout never fires, so the run waited for ever; --request-timeout is
    the whole request's deadline, and the request fails as timed out."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"e\r\n: keep-alive\n\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def go() -> list[RequestResult]:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_load(
                f"http://127.0.0.1:{port}", "m", [BenchRequest([5, 6], 2)], arrivals=[0.0],
                progress=False, timeout_s=0.5,
            )  # fmt: skip
        finally:
            server.close()

    (res,) = asyncio.run(go())
    assert not res.ok and res.error.startswith("timed out")
    assert 0.4 < res.end - res.start < 5


def test_max_rate_stops_at_the_first_rate_that_fails():
    """Non-monotone verdicts (noise, or a lucky run): a meets at 1, fails at 2 and meets at
    3; its max rate is 1, not 3, and rests on 1 and 2 alone. b fails at its lowest rate: 0."""
    slo = Slo(ttft_s=0.5, tbt_s=1.0, tbt_stat="max")
    good, late = result(0.0, [(0.1, 1)], 0.1), result(0.0, [(0.9, 1)], 0.9)

    def run(label, rate, n_good, n=40):
        return aggregate(label, f"rate={rate}", rate, [good] * n_good + [late] * (n - n_good), slo)

    reports = [
        run("a", 1.0, 40), run("a", 2.0, 10), run("a", 3.0, 40),
        run("b", 1.0, 10), run("b", 2.0, 40),
    ]  # fmt: skip
    assert max_rate_under_slo(reports, 0.8) == {"a": 1.0, "b": 0.0}
    verdicts = rate_verdicts(reports, 0.8)
    assert settled(verdicts, "a", 1.0) and settled(verdicts, "b", 0.0)
    # a lower rate that meets by too few requests leaves the max rate above it unsettled
    reports = [run("c", 1.0, 9, n=10), run("c", 2.0, 40), run("c", 3.0, 0)]
    verdicts = rate_verdicts(reports, 0.8)
    assert max_rate_under_slo(reports, 0.8) == {"c": 2.0}
    assert not settled(verdicts, "c", 2.0)
