"""Beam search (offline LLM.beam_search and the server's use_beam_search) against HF
transformers' beam search on the same weights."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import Server, run_server

from xyserve import LLM, BeamSearchParams
from xyserve.beam_search import BeamSearch, BeamSearchSequence, score
from xyserve.config import EngineConfig
from xyserve.outputs import CompletionOutput, Logprob, RequestOutput

PROMPTS = [[5, 17, 40, 41, 99, 7], [12, 13, 14]]


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_num_batched_tokens=64)


@pytest.fixture(scope="module")
def hf(tiny_llama: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()


@pytest.mark.parametrize("width,steps", [(1, 5), (3, 6), (4, 4)])
def test_beams_match_hf_without_eos(llm, hf, width, steps):
    """With no end-of-sequence and no length penalty both keep, each step, the ``width``
    best extensions by cumulative logprob: the same beams, in the same order."""
    params = BeamSearchParams(width, steps, ignore_eos=True, length_penalty=0.0)
    outs = llm.beam_search(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        g = hf.generate(
            torch.tensor([prompt]), num_beams=width, num_return_sequences=width,
            do_sample=False, max_new_tokens=steps, min_new_tokens=steps, length_penalty=0.0,
            early_stopping=True, output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        want = [seq[len(prompt) :].tolist() for seq in g.sequences]
        assert [s.output_token_ids for s in out.sequences] == want
        # (one beam is HF's greedy search: it reports no beam score)
        refs = g.sequences_scores.tolist() if width > 1 else [None]
        for s, ref in zip(out.sequences, refs):
            assert ref is None or s.cum_logprob == pytest.approx(ref, abs=1e-3)
            assert s.tokens == prompt + s.output_token_ids and s.finish_reason == "length"
            assert s.text == llm.get_tokenizer().decode(s.output_token_ids, skip_special_tokens=True)  # fmt: skip
    llm.llm_engine.kv.check_no_leak()


def _out(entries: dict[int, float]) -> RequestOutput:
    lps = {t: Logprob(lp) for t, lp in entries.items()}
    c = CompletionOutput(0, "", [next(iter(entries))], None, [lps])
    return RequestOutput("x", None, [], [c], True)


def test_eos_completes_a_beam_and_scores_rank_the_results():
    """A candidate ending in EOS is set aside; the final ranking divides by the length to the
    length penalty (vLLM's score), so a short complete beam can win or lose by it."""
    eos = {0}
    bs = BeamSearch([[9, 9]], BeamSearchParams(2, 3, length_penalty=1.0), eos)
    bs.advance([_out({0: -0.5, 1: -1.0, 2: -2.0})])  # EOS first: complete at once
    assert [b.output_token_ids for b in bs.prompts[0].live] == [[1], [2]]
    assert [b.output_token_ids for b in bs.prompts[0].done] == [[0]]
    bs.advance([_out({3: -0.1, 4: -3.0}), _out({5: -0.2, 6: -0.3})])
    assert [b.output_token_ids for b in bs.prompts[0].live] == [[1, 3], [2, 5]]
    bs.advance([_out({7: -0.1}), _out({8: -0.1})])
    assert bs.finished
    (res,) = bs.results()
    # scores: [0] -0.5/2, [1,3,7] -1.2/5, [2,5,8] -2.3/5
    assert [s.output_token_ids for s in res.sequences] == [[1, 3, 7], [0]]
    assert [s.finish_reason for s in res.sequences] == ["length", "stop"]
    seq = BeamSearchSequence([9, 9, 0], [0], [], -0.5)
    assert score(seq, eos, 1.0) == pytest.approx(-0.25)
    assert score(seq, eos, 0.0) == pytest.approx(-0.5)


@pytest.mark.parametrize("bad", [dict(beam_width=0, max_tokens=2), dict(beam_width=2, max_tokens=0),
                                 dict(beam_width=2, max_tokens=2, length_penalty=float("nan"))])  # fmt: skip
def test_bad_params(bad):
    with pytest.raises(ValueError):
        BeamSearchParams(**bad)


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(model=str(tiny_llama), served_model_name="tiny", max_model_len=128, device="cpu")  # fmt: skip
    with run_server(config) as srv:
        yield srv


def test_the_server_returns_the_offline_beams(server, llm):
    text = "hello world"
    params = BeamSearchParams(3, 5, ignore_eos=True, length_penalty=0.5)
    (want,) = llm.beam_search(text, params)
    body = {"prompt": text, "n": 3, "max_tokens": 5, "use_beam_search": True, "ignore_eos": True, "length_penalty": 0.5}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [c["text"] for c in got["choices"]] == [s.text for s in want.sequences]
    assert [c["index"] for c in got["choices"]] == [0, 1, 2]
    assert got["usage"]["completion_tokens"] == 15
    chat = {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 3, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2 and r.json()["usage"]["completion_tokens"] == 6
    server.assert_clean()


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"temperature": 0.7}, "temperature"),
        ({"stream": True}, "stream"),
        ({"logprobs": 2}, "logprobs"),
        ({"stop": ["x"]}, "stop"),
        ({"n": 0}, "n"),
        ({"n": 10**6}, "n"),
        ({"max_tokens": 500}, "max_tokens"),
        ({"use_beam_search": False, "length_penalty": 2.0}, "length_penalty"),
    ],
)
def test_the_server_refuses_what_beam_search_would_not_use(server, extra, param):
    body = {"prompt": "hello", "n": 2, "max_tokens": 3, "use_beam_search": True, **extra}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    server.assert_clean()


def test_a_beam_wider_than_the_logprobs_allow_is_refused_by_name(server):
    """Each step reads ``2 x width`` top logprobs and a request may ask for at most 20: a
    width of 11 was accepted by the parameters and failed the first step's request (offline
    a ValueError naming ``logprobs``; on the server, after the request was checked, a 500)."""
    body = {"prompt": "hello", "n": 11, "max_tokens": 2, "use_beam_search": True}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "n" and "beam width" in r.json()["error"]["message"]
    server.assert_clean()
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(11, 2)
    assert BeamSearchParams(10, 2).step_params().logprobs == 20


def _count_adds(server: Server) -> list[str]:
    """The ids of the requests the engine admits from now on (a spy on its add_request; the
    test deletes it, ``del server.engine.add_request``, when done)."""
    added: list[str] = []
    real = server.engine.add_request

    def spy(prompt, params=None, request_id=None, *args, **kwargs):  # noqa: ANN001, ANN202
        added.append(request_id)
        return real(prompt, params, request_id, *args, **kwargs)

    server.engine.add_request = spy
    return added


def test_a_client_that_leaves_stops_the_search_and_frees_everything(server):
    """A beam search whose client disconnects mid-way adds no further step, and its last
    step's requests are aborted: nothing runs on, nothing holds a block."""
    added = _count_adds(server)
    try:
        body = {"prompt": "hello world", "n": 3, "max_tokens": 60, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
        with server.slow_steps(0.05):  # 60 steps: 3 s at least
            with pytest.raises(httpx.ReadTimeout):
                # the client gives up (and closes the connection) after 0.8 s of silence
                httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.8))  # fmt: skip
            assert added, "the search had started"
            server.wait_idle()
            n = len(added)
            time.sleep(0.5)  # a search still running would have added its next step by now
            assert len(added) == n
    finally:
        del server.engine.add_request
    server.assert_clean()


@pytest.fixture(scope="module")
def limited(tiny_llama: Path) -> Iterator[Server]:
    """A server with a waiting limit and a request time limit."""
    config = EngineConfig(
        model=str(tiny_llama), served_model_name="tiny", max_model_len=128, device="cpu",
        max_waiting_requests=4, request_timeout_s=1.0,
    )  # fmt: skip
    with run_server(config) as srv:
        yield srv


def test_a_search_the_waiting_limit_cannot_admit_is_refused_before_it_runs(limited):
    """Two prompts at width 3 run six requests a step from the second step on, past the limit
    of 4: refused whole at once, as any request with more sequences than the limit. It was
    refused only by its second step's add, after the first step had run."""
    added = _count_adds(limited)
    try:
        body = {"prompt": ["hello", "world"], "n": 3, "max_tokens": 4, "use_beam_search": True}
        r = httpx.post(f"{limited.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "prompt"
        assert "can never be admitted" in r.json()["error"]["message"]
        assert added == []  # nothing of it was admitted
        r = httpx.post(f"{limited.url}/v1/completions", json={**body, "n": 2}, timeout=60)
        assert r.status_code == 200, r.text  # 2 x 2 fits
        assert len(r.json()["choices"]) == 4
    finally:
        del limited.engine.add_request
    limited.assert_clean()


def test_the_request_time_limit_bounds_the_whole_search(limited):
    """``--request-timeout-s`` is the request's: each step's requests got a limit of their
    own, so a search of many short steps ran on far past it (and a step past it was a 500)."""
    body = {"prompt": "hello", "n": 2, "max_tokens": 40, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
    with limited.slow_steps(0.1):  # 40 steps: 4 s at least, each well within 1 s
        r = httpx.post(f"{limited.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "request_timeout"
    limited.assert_clean()


def test_fields_sent_with_their_default_value_are_fine(server):
    """Some clients send every field: one at its default asks for nothing, and beam search
    honours it as it is (``"stream": false`` was a 400 saying stream is not used)."""
    defaults = {"stream": False, "logprobs": None, "echo": False, "temperature": None, "stop": None, "seed": None}  # fmt: skip
    body = {"prompt": "hello", "n": 2, "max_tokens": 2, "use_beam_search": True, **defaults}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    chat = {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 2, "use_beam_search": True, "stream": False, "logprobs": False, "tools": None}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200, r.text
    plain = {"prompt": "hello", "max_tokens": 2, "length_penalty": 1.0}  # no beam: nothing asked
    assert httpx.post(f"{server.url}/v1/completions", json=plain, timeout=60).status_code == 200
    server.assert_clean()


def test_a_search_without_max_tokens_runs_to_the_end_of_the_context(server, llm):
    """No max_tokens (chat's default; ``null`` on completions): the search may run to
    max_model_len (128 here), as vLLM's does, rather than being refused or cut short."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "n": 2, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=120)
    assert r.status_code == 200, r.text
    use = r.json()["usage"]
    assert use["completion_tokens"] == 2 * (128 - use["prompt_tokens"])
    text = "hello world"
    body = {"prompt": text, "n": 2, "max_tokens": None, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    room = 128 - r.json()["usage"]["prompt_tokens"]
    (want,) = llm.beam_search(text, BeamSearchParams(2, room, ignore_eos=True))
    assert [c["text"] for c in r.json()["choices"]] == [s.text for s in want.sequences]
    server.assert_clean()


def test_a_search_past_the_context_is_refused_in_the_requests_words(server):
    """As any request's: code context_length_exceeded, and on chat the field the client sent
    (the messages, max_completion_tokens), not the engine's names for them."""
    body = {"prompt": "hello", "n": 2, "max_tokens": 500, "use_beam_search": True}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("max_tokens", "context_length_exceeded")
    chat = {"messages": [{"role": "user", "content": "hi " * 200}], "n": 2, "max_completion_tokens": 2, "use_beam_search": True}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("messages", "context_length_exceeded")
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 500}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    server.assert_clean()
