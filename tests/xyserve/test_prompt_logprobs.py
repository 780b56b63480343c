"""Prompt logprobs (vLLM's ``prompt_logprobs``, and OpenAI's ``echo`` with ``logprobs``, the way
evaluation harnesses score a text), ``continue_final_message``, chat ``echo`` and
``continuous_usage_stats``, against HF transformers' logits on the same weights."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import Server, run_server

from xyserve import LLM, SamplingParams
from xyserve.config import EngineConfig

MODEL = "tiny"


@pytest.fixture(scope="module")
def hf(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids), V]: row i is the log distribution after ids[: i + 1]."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)


def check_prompt_logprobs(hf, ids: list[int], plp, k: int) -> None:
    ref = hf_logprobs(hf, ids)
    assert len(plp) == len(ids) and plp[0] is None
    for i in range(1, len(ids)):
        entry, row = plp[i], ref[i - 1]
        own = entry[ids[i]]
        assert own.logprob == pytest.approx(float(row[ids[i]]), abs=1e-4)
        assert own.rank == int((row > row[ids[i]]).sum()) + 1
        top = [t for t, lp in entry.items() if lp.rank is not None and lp.rank <= k]
        assert len(top) == k and set(entry) == set(top) | {ids[i]}
        for t in top:  # the k best, each with the reference's logprob
            assert entry[t].logprob == pytest.approx(float(row[t]), abs=1e-4)
            assert entry[t].logprob >= float(row.topk(k).values[-1]) - 1e-4


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_prompt_logprobs_match_hf(tiny_llama: Path, hf, prefix_caching: bool) -> None:
    """Chunked prefills (a budget of 16), prompts whose prefix is cached already (a cached
    token's logits are not kept: the prompt runs whole), n = 2 (the samples share the
    prompt), prompts of one and two tokens."""
    rng = random.Random(0)
    vocab = hf.config.vocab_size
    shared = [rng.randrange(1, vocab) for _ in range(40)]
    prompts = [shared + [rng.randrange(1, vocab) for _ in range(n)] for n in (1, 9, 29)]
    prompts += [[5], [7, 9]]
    llm = LLM(
        str(tiny_llama),
        block_size=4,
        max_num_batched_tokens=16,
        enable_prefix_caching=prefix_caching,
        device="cpu",
    )
    llm.generate([shared + [1, 2]], SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    greedy = SamplingParams(max_tokens=3, temperature=0, n=2)
    plain = llm.generate(prompts, greedy, use_tqdm=False)
    params = SamplingParams(max_tokens=3, temperature=0, n=2, prompt_logprobs=3)
    outs = llm.generate(prompts, params, use_tqdm=False)
    for ids, out, ref in zip(prompts, outs, plain):
        check_prompt_logprobs(hf, ids, out.prompt_logprobs, 3)
        assert [c.token_ids for c in out.outputs] == [c.token_ids for c in ref.outputs]
        assert ref.prompt_logprobs is None
    llm.llm_engine.kv.check_no_leak()


def test_prompt_logprobs_survive_preemption(tiny_llama: Path, hf) -> None:
    """A cache too small for every prompt at once: requests are preempted and recomputed, and
    each prompt's logprobs are still those of its own tokens, once."""
    rng = random.Random(1)
    vocab = hf.config.vocab_size
    prompts = [[rng.randrange(1, vocab) for _ in range(30)] for _ in range(4)]
    llm = LLM(str(tiny_llama), block_size=4, num_kv_blocks=24, device="cpu")
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, prompt_logprobs=0)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    for ids, out in zip(prompts, outs):
        check_prompt_logprobs(hf, ids, out.prompt_logprobs, 0)
    llm.llm_engine.kv.check_no_leak()


def test_samples_do_not_wait_for_a_prompt_recomputed_for_its_logprobs(tiny_llama: Path, hf) -> None:
    """n = 4 with prompt logprobs, the prompt's first blocks cached already: the first sample
    computes its whole prompt (a cached token's logits are not kept), into private twins of
    the cached blocks that no other sample can match. The others were held back until it was
    through, then computed the uncached rest anyway; now the second computes that rest at
    once, beside it, and the last two share the second's blocks."""
    rng = random.Random(2)
    vocab = hf.config.vocab_size
    shared = [rng.randrange(1, vocab) for _ in range(16)]
    prompt = shared + [rng.randrange(1, vocab) for _ in range(32)]
    llm = LLM(
        str(tiny_llama),
        block_size=4,
        max_num_batched_tokens=96,
        admission_order="fcfs",
        device="cpu",
    )
    engine = llm.llm_engine
    greedy = dict(max_tokens=2, temperature=0, ignore_eos=True, n=4)
    llm.generate([shared + [1, 2]], SamplingParams(max_tokens=1), use_tqdm=False)
    first_step: dict[str, int] = {}
    schedule = engine.scheduler.schedule

    def spy():
        out = schedule()
        for st in out.stages:
            first_step.setdefault(st.request.request_id, engine.num_steps)
        return out

    engine.scheduler.schedule = spy
    before = engine.num_computed_prefill_tokens
    params = SamplingParams(**greedy, prompt_logprobs=2)
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    # the first sample's whole prompt and the second's uncached rest; the last two compute
    # only their last prompt token (a decode-like stage, not counted as prefill)
    assert engine.num_computed_prefill_tokens - before == 48 + 32
    rid = out.request_id
    assert first_step[f"{rid}#1"] == first_step[f"{rid}#0"], first_step
    check_prompt_logprobs(hf, prompt, out.prompt_logprobs, 2)
    plain = llm.generate([prompt], SamplingParams(**greedy), use_tqdm=False)[0]
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in plain.outputs]
    llm.llm_engine.kv.check_no_leak()


def test_prompt_logprobs_refused_out_of_range(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=1.5)


# ---- the server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=MODEL,
        max_model_len=256,
        max_num_batched_tokens=32,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv


def post(server: Server, path: str, payload: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def stream(server: Server, path: str, payload: dict) -> list[dict]:
    with httpx.stream(
        "POST", f"{server.url}{path}", json={**payload, "stream": True}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        return [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]


PROMPT = "The quick brown fox jumps over the lazy dog."


def test_echo_with_logprobs_scores_the_prompt(server: Server, hf) -> None:
    """lm-eval's request (echo, logprobs 1, max_tokens 1): the prompt's tokens come first, the
    first without a logprob, each other with HF's; then the completion's one token."""
    ids = server.tokenizer.encode(PROMPT)
    ref = hf_logprobs(hf, ids)
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 1}
    body["temperature"] = 0
    (choice,) = post(server, "/v1/completions", body)["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        assert len(lp["top_logprobs"][i]) in (1, 2)  # the best token, and the prompt's own
    assert lp["token_logprobs"][-1] == pytest.approx(float(ref[-1].max()), abs=1e-4)
    assert "".join(lp["tokens"][: len(ids)]) == PROMPT
    assert lp["text_offset"][:3] == [0, len(lp["tokens"][0]), len("".join(lp["tokens"][:2]))]
    assert choice["text"].startswith(PROMPT) and choice["prompt_logprobs"] is None
    # the same through a stream: the echo with its logprobs first, then the completion
    chunks = stream(server, "/v1/completions", body)
    tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    values = [v for c in chunks for v in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert tokens == lp["tokens"] and values == pytest.approx(lp["token_logprobs"], abs=1e-6)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    server.assert_clean()


def test_echo_without_generation(server: Server) -> None:
    """max_tokens 0 with echo (OpenAI's): the prompt alone comes back, no completion counted."""
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "max_tokens": 0, "logprobs": 0}
    resp = post(server, "/v1/completions", body)
    (choice,) = resp["choices"]
    n = len(server.tokenizer.encode(PROMPT))
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == n
    assert resp["usage"] == {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}
    chunks = stream(server, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == PROMPT
    assert chunks[-1]["usage"]["completion_tokens"] == 0
    server.assert_clean()


def test_prompt_logprobs_field(server: Server, hf) -> None:
    """vLLM's prompt_logprobs: on completions' choices and on the chat response, by token id."""
    ids = server.tokenizer.encode(PROMPT)
    ref = hf_logprobs(hf, ids)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "prompt_logprobs": 2}
    (choice,) = post(server, "/v1/completions", body)["choices"]
    plp = choice["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for i in range(1, len(ids)):
        own = plp[i][str(ids[i])]
        assert own["logprob"] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        assert own["rank"] == int((ref[i - 1] > ref[i - 1, ids[i]]).sum()) + 1
        assert {e["rank"] for e in plp[i].values()} >= {1, 2}
    assert choice["logprobs"] is None
    chat = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    resp = post(server, "/v1/chat/completions", {**chat, "max_tokens": 2, "prompt_logprobs": 0})
    assert resp["prompt_logprobs"][0] is None and len(resp["prompt_logprobs"]) > len(ids)
    server.assert_clean()


def test_continue_final_message_and_chat_echo(server: Server) -> None:
    """The last (assistant) message is continued, not closed: the prompt ends with its text;
    with echo the reply starts with it (vLLM's)."""
    start = "The answer is"
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": start}]
    body = {"model": MODEL, "messages": messages, "add_generation_prompt": False}
    closed = post(server, "/tokenize", body)["tokens"]
    cont = post(server, "/tokenize", {**body, "continue_final_message": True})["tokens"]
    text = server.tokenizer.decode(cont, skip_special_tokens=False)
    assert text.endswith(start) and len(cont) < len(closed)
    chat = {**body, "continue_final_message": True, "max_tokens": 4, "temperature": 0}
    plain = post(server, "/v1/chat/completions", chat)["choices"][0]["message"]["content"]
    echoed = post(server, "/v1/chat/completions", {**chat, "echo": True})
    assert echoed["choices"][0]["message"]["content"] == start + plain
    chunks = stream(server, "/v1/chat/completions", {**chat, "echo": True})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == start + plain
    # echo of a user's message: nothing to prepend (the reply is the assistant's)
    user_last = {"model": MODEL, "messages": messages[:1], "max_tokens": 4, "temperature": 0}
    a = post(server, "/v1/chat/completions", user_last)["choices"][0]["message"]["content"]
    b = post(server, "/v1/chat/completions", {**user_last, "echo": True})
    assert b["choices"][0]["message"]["content"] == a
    server.assert_clean()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats(server: Server, path: str) -> None:
    """Each chunk carries the usage so far; the last one's equals the whole response's."""
    body = {"model": MODEL, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    if path == "/v1/completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    whole = post(server, path, body)["usage"]
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = stream(server, path, {**body, "stream_options": opts})
    assert all(c["usage"] is not None for c in chunks)
    done = [c["usage"]["completion_tokens"] for c in chunks]
    assert done == sorted(done) and chunks[-1]["usage"] == whole
    assert chunks[-2]["usage"] == whole  # the last choice chunk, before the usage-only one
    server.assert_clean()


@pytest.mark.parametrize(
    "path,extra",
    [
        ("/v1/chat/completions", {}),  # the role chunks come before any output
        ("/v1/completions", {"echo": True}),  # so do the echo chunks
        ("/v1/completions", {"prompt": [PROMPT, "A second prompt, longer than the first."]}),
    ],
)
def test_continuous_usage_is_each_choices_own(server: Server, path: str, extra: dict) -> None:
    """As vLLM's: a chunk's usage is its choice's, its prompt's tokens (in every chunk, the
    first ones included) and the tokens that choice has generated so far; the final chunk
    sums them over the choices. (It was the request's total so far, every choice and prompt
    summed, in each chunk.)"""
    max_tokens, n = 3, 2
    body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "n": n}
    if path == "/v1/completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    body.update(extra)
    whole = post(server, path, body)["usage"]
    prompts = body["prompt"] if isinstance(body.get("prompt"), list) else [body.get("prompt")]
    own = [post(server, path, {**body, "n": 1, "prompt": p})["usage"]["prompt_tokens"]
           for p in prompts] if path == "/v1/completions" else [whole["prompt_tokens"]]  # fmt: skip
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = stream(server, path, {**body, "stream_options": opts})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole
    done: dict[int, list[int]] = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        u, i = c["usage"], choice["index"]
        assert u["prompt_tokens"] == own[i // n], (i, u)
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        done.setdefault(i, []).append(u["completion_tokens"])
    assert sorted(done) == list(range(len(own) * n))
    for counts in done.values():
        assert counts == sorted(counts) and counts[-1] == max_tokens, counts
    if extra.get("echo") or path == "/v1/chat/completions":
        assert all(counts[0] == 0 for counts in done.values())  # role or echo chunks first
    assert sum(own) == whole["prompt_tokens"]
    server.assert_clean()


def test_streamed_echo_waits_for_the_whole_prompt_with_n(server: Server) -> None:
    """n = 2 and the prompt cached already: the second sample reads the cached prefix and
    samples long before the first (which computes the whole prompt for its logprobs) is
    through; each choice's echo still carries every prompt token's logprob."""
    ids = [(7 * i) % 250 + 3 for i in range(120)]
    post(server, "/v1/completions", {"model": MODEL, "prompt": ids, "max_tokens": 1})
    body = {"model": MODEL, "prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 2, "n": 2}
    chunks = stream(server, "/v1/completions", body)
    echoes = {}
    for c in chunks:
        (choice,) = c["choices"]
        echoes.setdefault(choice["index"], choice["logprobs"]["token_logprobs"])
    assert sorted(echoes) == [0, 1]
    for values in echoes.values():
        assert len(values) == len(ids)
        assert values[0] is None and None not in values[1:]
    server.assert_clean()
