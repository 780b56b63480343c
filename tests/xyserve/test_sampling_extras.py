"""vLLM's extra sampling fields: allowed_token_ids, bad_words, truncate_prompt_tokens, and the
chat template's chat_template_kwargs; offline, over HTTP, and with speculation on."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve import LLM, SamplingParams
from xyserve.config import EngineConfig
from xyserve.engine.sampler import bad_word_bans
from xyserve.sampling_params import SamplingParamsError
from xyserve.server.options import ServerOptions

PROMPTS = ["def add(a, b):", "hello world", "import os\nimport sys\n"]
GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_num_batched_tokens=64, max_model_len=256)


def _ids(llm: LLM, prompts, params) -> list[list[int]]:  # noqa: ANN001
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _vocab(llm: LLM) -> int:
    return llm.llm_engine.model.cfg.vocab_size


# ---- allowed_token_ids ----------------------------------------------------------------------
def test_allowed_token_ids_is_greedy_over_the_set(llm):
    """The oracle is another path to the same distribution: every other token biased by
    -100 (the tiny model's logits span far less than 100, so the greedy picks agree)."""
    vocab = _vocab(llm)
    allowed = sorted(random.Random(0).sample(range(vocab), vocab // 3))
    got = _ids(llm, PROMPTS, SamplingParams(allowed_token_ids=allowed, **GREEDY))
    bias = {t: -100.0 for t in range(vocab) if t not in set(allowed)}
    want = _ids(llm, PROMPTS, SamplingParams(logit_bias=bias, **GREEDY))
    assert got == want
    assert all(set(ids) <= set(allowed) for ids in got)
    free = _ids(llm, PROMPTS, SamplingParams(**GREEDY))
    assert got != free  # the set changed something: the test can tell


def test_allowed_token_ids_holds_sampled_requests_too(llm):
    allowed = [5, 17, 40, 41, 99]
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=30, allowed_token_ids=allowed)
    (ids,) = _ids(llm, [PROMPTS[0]], params)
    assert ids and set(ids) <= set(allowed)
    assert len(set(ids)) > 1


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
        ({"allowed_token_ids": [1.5]}, "allowed_token_ids"),
        ({"allowed_token_ids": "1"}, "allowed_token_ids"),
        ({"bad_words": "word"}, "bad_words"),
        ({"bad_words": ["  "]}, "bad_words"),
        ({"bad_words": [1]}, "bad_words"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": 1.5}, "truncate_prompt_tokens"),
    ],
)
def test_bad_values_name_the_field(kw, param):
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(**kw)
    assert e.value.param == param


def test_model_dependent_refusals(llm):
    with pytest.raises(ValueError, match="allowed_token_ids must be in") as e:
        llm.generate("x", SamplingParams(allowed_token_ids=[_vocab(llm)]), use_tqdm=False)
    assert e.value.param == "allowed_token_ids"
    with pytest.raises(ValueError, match="greater than this model's maximum context") as e:
        llm.generate("x", SamplingParams(truncate_prompt_tokens=257), use_tqdm=False)
    assert e.value.param == "truncate_prompt_tokens"
    assert not llm.llm_engine.groups


# ---- bad_words ------------------------------------------------------------------------------
def test_bad_word_bans_complete_a_word_only():
    words = [[7], [1, 2, 3], [4, 5]]
    assert bad_word_bans(words, []) == [7]
    assert bad_word_bans(words, [9, 1, 2]) == [7, 3]
    assert bad_word_bans(words, [1, 2, 4]) == [7, 5]
    assert bad_word_bans(words, [2, 1]) == [7]


def test_bad_words_tokenize_at_the_start_and_after_a_space(llm):
    tok = llm.get_tokenizer()
    intake = llm.llm_engine.intake
    (word,) = [w for w in ("world", "import", "add") if tok.encode(" " + w, add_special_tokens=False) != tok.encode(w, add_special_tokens=False)][:1]  # fmt: skip
    got = intake.bad_words_token_ids([word])
    assert got[0] == tok.encode(word, add_special_tokens=False)
    spaced = tok.encode(" " + word, add_special_tokens=False)
    assert (spaced in got) == (len(spaced) == len(got[0]))


def test_bad_words_never_appear_and_change_nothing_before(llm):
    """A word the free greedy output writes (its text as two or more tokens, or one) is
    banned: the output runs as before up to where the word would complete, then differs,
    and the word's tokens never appear in it."""
    tok = llm.get_tokenizer()
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    (free,) = _ids(llm, [PROMPTS[2]], params)
    # a word of the free output: the text of two of its tokens, stripped
    word = tok.decode(free[3:5]).strip()
    assert word
    banned = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, bad_words=[word])
    (got,) = _ids(llm, [PROMPTS[2]], banned)
    seqs = llm.llm_engine.intake.bad_words_token_ids([word])
    for seq in seqs:
        n = len(seq)
        assert all(got[i : i + n] != seq for i in range(len(got) - n + 1))
    # where the free output first completes one of the banned sequences
    ends = [i + len(s) - 1 for s in seqs for i in range(len(free)) if free[i : i + len(s)] == s]
    first = min(ends)
    assert got[:first] == free[:first] and got[first] != free[first]


# ---- truncate_prompt_tokens ----------------------------------------------------------------
def test_truncate_prompt_tokens_keeps_the_last_tokens(llm):
    text = "one two three four five six seven eight nine ten eleven twelve"
    full = llm.get_tokenizer().encode(text)
    assert len(full) > 6
    (out,) = llm.generate(text, SamplingParams(truncate_prompt_tokens=6, **GREEDY), use_tqdm=False)
    assert out.prompt_token_ids == full[-6:]
    (ref,) = llm.generate({"prompt_token_ids": full[-6:]}, SamplingParams(**GREEDY), use_tqdm=False)
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    # a prompt no longer than k, and -1 (the maximum context length), keep it whole
    for k in (len(full), -1):
        (same,) = llm.generate(text, SamplingParams(truncate_prompt_tokens=k, **GREEDY), use_tqdm=False)  # fmt: skip
        assert same.prompt_token_ids == full and same.prompt == text


def test_truncation_lets_a_long_prompt_in(llm):
    long = [5 + i % 200 for i in range(300)]  # past max_model_len 256
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate({"prompt_token_ids": long}, SamplingParams(**GREEDY), use_tqdm=False)
    params = SamplingParams(truncate_prompt_tokens=100, **GREEDY)
    (out,) = llm.generate({"prompt_token_ids": long}, params, use_tqdm=False)
    assert out.prompt_token_ids == long[-100:] and len(out.outputs[0].token_ids) == 12


# ---- with speculation on -------------------------------------------------------------------
def test_speculation_skips_requests_whose_logits_are_reshaped(tiny_llama):
    """Verification samples from the target's own distribution: a request with an allowed
    set or bad words is not proposed for, so its output is the one without speculation."""
    spec = {"method": "ngram", "num_speculative_tokens": 4, "adaptive": False}
    fast = LLM(str(tiny_llama), max_num_batched_tokens=64, speculative_config=spec)
    slow = LLM(str(tiny_llama), max_num_batched_tokens=64)
    vocab = _vocab(slow)
    allowed = sorted(random.Random(1).sample(range(vocab), vocab // 4))
    prompt = "a b c a b c a b c a b c a b c"  # n-gram friendly
    for kw in ({"allowed_token_ids": allowed}, {"bad_words": ["b c"]}):
        params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, **kw)
        assert _ids(fast, [prompt], params) == _ids(slow, [prompt], params)
    free = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    assert _ids(fast, [prompt], free) == _ids(slow, [prompt], free)
    assert fast.llm_engine.spec.stats.num_drafts > 0  # proposing happens for plain requests
    fast.llm_engine.kv.check_no_leak()


# ---- chat_template_kwargs -------------------------------------------------------------------
TEMPLATE = (
    "{% if greeting %}{{ greeting }}{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_template_kwargs_reach_the_template(llm):
    params = SamplingParams(max_tokens=1)
    (plain,) = llm.chat(MESSAGES, params, chat_template=TEMPLATE, use_tqdm=False)
    kw = {"greeting": "HELLO "}
    (greeted,) = llm.chat(MESSAGES, params, chat_template=TEMPLATE, chat_template_kwargs=kw, use_tqdm=False)  # fmt: skip
    assert plain.prompt == "<user>hi<assistant>"
    assert greeted.prompt == "HELLO <user>hi<assistant>"
    with pytest.raises(ValueError, match="may not set add_generation_prompt"):
        llm.chat(MESSAGES, params, chat_template_kwargs={"add_generation_prompt": False})


# A template that renders an assistant's thinking the way Qwen3's does (reasoning_content)
THINKING = (
    "{% for m in messages %}<{{ m['role'] }}>"
    "{% if m.reasoning_content %}[{{ m.reasoning_content }}]{% endif %}"
    "{% if m.reasoning %}({{ m.reasoning }}){% endif %}{{ m['content'] }}{% endfor %}"
)


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_an_assistant_messages_thinking_reaches_the_template_under_both_names(llm, key):
    """vLLM reads an assistant message's ``reasoning`` and gives the template both names;
    ``reasoning_content`` (its earlier name, which clients such as Qwen-Agent still send) is
    taken the same way."""
    conv = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", key: "t"},
        {"role": "user", "content": "r"},
    ]
    params = SamplingParams(max_tokens=1)
    (out,) = llm.chat(conv, params, chat_template=THINKING, use_tqdm=False)
    assert out.prompt == "<user>q<assistant>[t](t)a<user>r"


def test_thinking_in_a_message_the_model_did_not_write_is_refused():
    from xyserve.server.chat_prompt import chat_messages
    from xyserve.server.errors import APIError
    from xyserve.server.protocol import ChatMessage

    (msg,) = chat_messages([ChatMessage(role="assistant", content="a", reasoning_content="t")])
    assert (msg["reasoning"], msg["reasoning_content"]) == ("t", "t")
    for key in ("reasoning", "reasoning_content"):
        with pytest.raises(APIError) as e:
            chat_messages([ChatMessage(role="user", content="q", **{key: "t"})])
        assert e.value.info.param == f"messages.0.{key}"


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama), served_model_name="tiny", max_model_len=256, device="cpu"
    )
    with run_server(config, ServerOptions(chat_template=TEMPLATE)) as srv:
        yield srv


def _post(server: Server, path: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=60)


def test_the_server_takes_the_fields(server):
    vocab = server.engine.model.cfg.vocab_size
    allowed = list(range(10, 10 + vocab // 5))
    body = {"prompt": "hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = _post(server, "/v1/completions", {**body, "allowed_token_ids": allowed, "logprobs": 0})
    assert r.status_code == 200, r.text
    toks = r.json()["choices"][0]["logprobs"]["tokens"]
    assert len(toks) == 8
    text = "one two three four five six seven eight"
    r = _post(server, "/v1/completions", {**body, "prompt": text, "truncate_prompt_tokens": 3, "echo": True})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 3
    kept = server.tokenizer.encode(text)[-3:]
    assert r.json()["choices"][0]["text"].startswith(
        server.tokenizer.decode(kept, skip_special_tokens=False)
    )
    r = _post(server, "/v1/completions", {**body, "bad_words": ["x y"]})
    assert r.status_code == 200, r.text
    chat = {"messages": MESSAGES, "max_tokens": 2, "chat_template_kwargs": {"greeting": "HI "}}
    r = _post(server, "/v1/chat/completions", chat)
    assert r.status_code == 200, r.text
    tok = _post(server, "/tokenize", {"messages": MESSAGES, "chat_template_kwargs": {"greeting": "HI "}})  # fmt: skip
    assert tok.json()["tokens"] == server.tokenizer.encode(
        "HI <user>hi<assistant>", add_special_tokens=False
    )
    assert r.json()["usage"]["prompt_tokens"] == tok.json()["count"]
    server.assert_clean()


@pytest.mark.parametrize(
    "path,extra,param",
    [
        ("/v1/completions", {"allowed_token_ids": []}, "allowed_token_ids"),
        ("/v1/completions", {"allowed_token_ids": [10**6]}, "allowed_token_ids"),
        ("/v1/completions", {"bad_words": [""]}, "bad_words"),
        ("/v1/completions", {"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ("/v1/completions", {"truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens"),
        ("/v1/chat/completions", {"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
        ("/v1/chat/completions", {"chat_template_kwargs": {"a b": 1}}, "chat_template_kwargs"),
        # arguments of the installed transformers' apply_chat_template and of the function it
        # renders with, not in the hand-kept list: they failed inside transformers, a 400
        # naming the messages
        (
            "/v1/chat/completions",
            {"chat_template_kwargs": {"sanitize_control_tokens": True}},
            "chat_template_kwargs",
        ),
        (
            "/v1/chat/completions",
            {"chat_template_kwargs": {"conversations": []}},
            "chat_template_kwargs",
        ),
    ],
)
def test_the_server_refuses_bad_values_by_name(server, path, extra, param):
    body = {"prompt": "hello"} if path == "/v1/completions" else {"messages": MESSAGES}
    r = _post(server, path, {**body, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    server.assert_clean()


def test_return_tokens_as_token_ids(server):
    body = {"prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    r = _post(server, "/v1/completions", {**body, "logprobs": 2, "echo": True})
    named = r.json()["choices"][0]["logprobs"]
    r = _post(server, "/v1/completions", {**body, "logprobs": 2, "echo": True, "return_tokens_as_token_ids": True})  # fmt: skip
    lp = r.json()["choices"][0]["logprobs"]
    ids = server.tokenizer.encode("hello") + [
        int(t.removeprefix("token_id:"))
        for t in lp["tokens"][len(server.tokenizer.encode("hello")) :]
    ]
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    assert [int(t.removeprefix("token_id:")) for t in lp["tokens"]] == ids
    assert [server.tokenizer.decode([i], skip_special_tokens=False) for i in ids] == named["tokens"]
    assert all(k.startswith("token_id:") for top in lp["top_logprobs"][1:] for k in top)
    assert lp["token_logprobs"] == named["token_logprobs"]
    chat = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    r = _post(server, "/v1/chat/completions", {**chat, "return_tokens_as_token_ids": True})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for e in content:
        assert e["token"].startswith("token_id:") and bytes(e["bytes"]).decode() == e["token"]
        assert len(e["top_logprobs"]) == 2
        assert all(t["token"].startswith("token_id:") for t in e["top_logprobs"])
    for path, b in (
        ("/v1/completions", body),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2}),
    ):
        r = _post(server, path, {**b, "return_tokens_as_token_ids": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "return_tokens_as_token_ids"
    server.assert_clean()


def test_an_allowed_set_the_sampler_must_mask_whole_is_a_400(server, llm):
    """allowed_token_ids whose every token is held back until min_tokens (EOS, a stop id) or
    is a one-token bad word left no token to sample: the request was admitted and failed in
    its first step, a 500. Now a 400 naming the field, before anything runs; a set with one
    token to spare runs."""
    eos = server.tokenizer.eos_token_id
    word = next(w for w in ("x", "a", "i") if len(server.tokenizer.encode(w, add_special_tokens=False)) == 1)  # fmt: skip
    (wid,) = server.tokenizer.encode(word, add_special_tokens=False)
    body = {"prompt": "hello", "max_tokens": 4, "temperature": 0}
    for extra in (
        {"allowed_token_ids": [eos], "min_tokens": 2},
        {"allowed_token_ids": [eos, 7], "stop_token_ids": [7], "min_tokens": 1},
        {"allowed_token_ids": [wid], "bad_words": [word]},
        {"allowed_token_ids": [eos, wid], "bad_words": [word], "min_tokens": 1},
    ):
        r = _post(server, "/v1/completions", {**body, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == "allowed_token_ids"
    r = _post(server, "/v1/completions", {**body, "allowed_token_ids": [eos, 7], "min_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 2
    with pytest.raises(ValueError, match="allowed_token_ids") as e:
        llm.generate("x", SamplingParams(allowed_token_ids=[eos], min_tokens=1), use_tqdm=False)
    assert e.value.param == "allowed_token_ids" and not llm.llm_engine.groups
    server.assert_clean()


def test_return_tokens_as_token_ids_streamed(server):
    """Streamed too, on both endpoints, every logprob token is named by its id."""
    import json

    def chunks(path: str, payload: dict) -> list[dict]:
        with httpx.stream("POST", f"{server.url}{path}", json=payload, timeout=60) as resp:
            assert resp.status_code == 200
            return [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]

    body = {"prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": True}  # fmt: skip
    got = chunks("/v1/completions", {**body, "logprobs": 2, "return_tokens_as_token_ids": True})
    lps = [c["choices"][0]["logprobs"] for c in got if c["choices"] and c["choices"][0]["logprobs"]]
    toks = [t for lp in lps for t in lp["tokens"]]
    assert len(toks) == 4 and all(t.startswith("token_id:") for t in toks)
    assert all(k.startswith("token_id:") for lp in lps for top in lp["top_logprobs"] for k in top)
    chat = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "ignore_eos": True, "stream": True, "logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True}  # fmt: skip
    got = chunks("/v1/chat/completions", chat)
    entries = [e for c in got if c["choices"] and c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]  # fmt: skip
    assert len(entries) == 3
    for e in entries:
        assert e["token"].startswith("token_id:")
        assert all(t["token"].startswith("token_id:") for t in e["top_logprobs"])
    server.assert_clean()
