"""Sampling: seeds, top-k/top-p/min-p, penalties, stops, n, logprobs."""

from __future__ import annotations

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.engine.sampler import SampleRow, apply_penalties, filter_logits, sample
from xyserve.sampling_params import SamplingParamsError

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def draws(params: SamplingParams, logits: torch.Tensor, n: int = 400) -> set[int]:
    gen = torch.Generator().manual_seed(0)
    row = SampleRow(params, [], [], gen, [])
    return {sample(logits[None], [row])[0].token_id for _ in range(n)}


def test_filters_keep_the_specified_tokens():
    logits = PROBS.log()
    assert draws(SamplingParams(temperature=1.0), logits) == {0, 1, 2, 3}
    assert draws(SamplingParams(temperature=1.0, top_k=2), logits) == {0, 1}
    assert draws(SamplingParams(temperature=1.0, top_p=0.7), logits) == {0, 1}
    assert draws(SamplingParams(temperature=1.0, top_p=0.85), logits) == {0, 1, 2}
    assert draws(SamplingParams(temperature=1.0, min_p=0.4), logits) == {0, 1}
    assert draws(SamplingParams(temperature=0.0), logits) == {0}


def test_a_steps_own_argmax_serves_plain_greedy_rows_only():
    """``sample(..., argmax)``: the step's argmax (the CPU fused call's) stands for unconstrained
    greedy rows; a row with a penalty, or any logit bias in the batch, is scanned again."""
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    greedy = SampleRow(SamplingParams(temperature=0), [], [], None, [])
    given = [2, 1]  # not the logits' argmax: shows which rows read it
    assert [r.token_id for r in sample(logits, [greedy, greedy], given)] == [2, 1]
    assert [r.token_id for r in sample(logits, [greedy, greedy])] == [1, 0]
    penalised = SampleRow(SamplingParams(temperature=0, repetition_penalty=1.5), [], [], None, [])
    assert [r.token_id for r in sample(logits, [greedy, penalised], given)] == [2, 0]
    biased = SampleRow(SamplingParams(temperature=0, logit_bias={2: 0.5}), [], [], None, [])
    assert [r.token_id for r in sample(logits, [greedy, biased], given)] == [1, 0]


def test_temperature_sharpens():
    p = filter_logits(PROBS.log(), SamplingParams(temperature=0.5)).softmax(-1)
    want = PROBS**2 / (PROBS**2).sum()
    torch.testing.assert_close(p, want)


def test_penalties_follow_their_definitions():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    row = SampleRow(SamplingParams(repetition_penalty=2.0), [0], [1], None, [])
    torch.testing.assert_close(
        apply_penalties(logits.clone(), row), torch.tensor([1.0, -4.0, 1.0, 0.5])
    )
    row = SampleRow(
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), [3], [2, 2, 1], None, []
    )
    torch.testing.assert_close(
        apply_penalties(logits.clone(), row), torch.tensor([2.0, -2.75, -0.25, 0.5])
    )


def test_blocked_ids_and_logprobs():
    logits = PROBS.log()
    row = SampleRow(SamplingParams(temperature=0, logprobs=2), [], [], None, [0])
    res = sample(logits[None], [row])[0]
    assert res.token_id == 1 and res.rank == 2
    assert [t for t, _ in res.top_logprobs] == [0, 1]
    assert res.logprob == pytest.approx(float(PROBS[1].log()), abs=1e-5)


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"n": 0}, "n"),
    ],
)
def test_invalid_params_name_the_field(kw, param):
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(**kw)
    assert e.value.param == param


@pytest.mark.parametrize(
    "kw,param",
    [
        # Values of the wrong type were accepted: a float top_k or n then raised a bare
        # TypeError inside the step or admission, a float max_tokens ran one token more, a
        # string ignore_eos was truthy, and string logit_bias keys failed intake unnamed.
        ({"n": 2.0}, "n"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"min_tokens": 1.5}, "min_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": None}, "top_p"),
        ({"presence_penalty": None}, "presence_penalty"),
        ({"ignore_eos": "no"}, "ignore_eos"),
        ({"skip_special_tokens": 0}, "skip_special_tokens"),
        ({"include_stop_str_in_output": None}, "include_stop_str_in_output"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"stop": 5}, "stop"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"structured": "json"}, "structured"),  # was an AttributeError at admission
    ],
)
def test_values_of_the_wrong_type_name_the_field(kw, param):
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(**kw)
    assert e.value.param == param


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), max_num_batched_tokens=64)


def test_seeded_runs_are_reproducible_in_any_batch(llm):
    sp = SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate("def add(a, b):", sp, use_tqdm=False)[0].outputs[0].token_ids
    other = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    mixed = llm.generate(["hello", "def add(a, b):", "import os"], [other, sp, other])
    assert mixed[1].outputs[0].token_ids == alone
    diff = llm.generate("def add(a, b):", SamplingParams(temperature=1.0, seed=99, max_tokens=12))
    assert diff[0].outputs[0].token_ids != alone


def test_stop_strings_stop_ids_and_lengths(llm):
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    base = llm.generate("The quick brown", greedy)[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 20
    stop = base.text[5:8]
    cut = llm.generate(
        "The quick brown", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=stop)
    )[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == base.text[: base.text.index(stop)]
    tok = base.token_ids[3]
    first = base.token_ids.index(tok)
    by_id = llm.generate(
        "The quick brown",
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[tok]),
    )[0].outputs[0]
    assert by_id.token_ids == base.token_ids[: first + 1] and by_id.stop_reason == tok


def test_min_tokens_blocks_stop_ids_and_eos(llm):
    base = llm.generate("hello", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    tok = base[0].outputs[0].token_ids[0]
    early = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[tok])
    assert llm.generate("hello", early)[0].outputs[0].token_ids == [tok]
    late = SamplingParams(temperature=0, max_tokens=10, min_tokens=4, stop_token_ids=[tok])
    ids = llm.generate("hello", late)[0].outputs[0].token_ids
    assert len(ids) >= 4 and tok not in ids[:4]
    eos = next(iter(llm.llm_engine.eos_token_ids))
    as_eos = SamplingParams(temperature=0, max_tokens=10, min_tokens=4)
    llm.llm_engine.eos_token_ids.add(tok)  # make the greedy first token an EOS
    try:
        ids = llm.generate("hello", as_eos)[0].outputs[0].token_ids
        assert len(ids) >= 4 and tok not in ids[:4]
        ignore = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
        assert len(llm.generate("hello", ignore)[0].outputs[0].token_ids) == 10
        stop_now = SamplingParams(temperature=0, max_tokens=10)
        assert llm.generate("hello", stop_now)[0].outputs[0].finish_reason == "stop"
    finally:
        llm.llm_engine.eos_token_ids.discard(tok)
        llm.llm_engine.eos_token_ids.add(eos)


def test_min_tokens_holds_back_stop_strings_as_it_holds_stop_ids(llm):
    """As in vLLM: a stop string counts only where it ends in the text of a token after the
    first ``min_tokens`` (a stop id can come at the earliest as token ``min_tokens + 1``)."""
    (tok,) = llm.get_tokenizer().encode("a", add_special_tokens=False)
    # the bias makes every token ``a``; the stop string is that token's text
    forced = dict(temperature=0, max_tokens=10, ignore_eos=True, logit_bias={tok: 100}, stop="a")
    for min_tokens in (0, 1, 3):
        out = llm.generate("hello", SamplingParams(**forced, min_tokens=min_tokens))[0].outputs[0]
        assert out.token_ids == [tok] * (min_tokens + 1), min_tokens
        assert out.text == "a" * min_tokens and out.stop_reason == "a"


def test_n_and_logprobs(llm):
    sp = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, logprobs=3, ignore_eos=True)
    out = llm.generate("import os", sp)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    for o in out.outputs:
        assert len(o.logprobs) == len(o.token_ids) == 6
        for tok, entry in zip(o.token_ids, o.logprobs):
            assert tok in entry
            assert len(entry) in (3, 4)
        assert o.cumulative_logprob == pytest.approx(
            sum(e[t].logprob for t, e in zip(o.token_ids, o.logprobs)), abs=1e-4
        )


def test_chat_applies_template(llm):
    tok = llm.get_tokenizer()  # the HF tokenizer, as vLLM's: HF's arguments and defaults
    msgs = [{"role": "user", "content": "hi"}]
    out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=3))[0]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    want = tok.encode(text, add_special_tokens=False)
    assert out.prompt_token_ids == want
    assert "<|assistant|>" in tok.decode(want)
    assert out.prompt == text  # the rendered prompt, as vLLM's


def test_params_changed_after_construction_are_honoured_or_refused(llm):
    """vLLM's SamplingParams are plain mutable objects; one changed after construction is
    normalised and checked again when a request is added: a stop string set then was
    silently ignored, and an invalid value went unchecked into the step."""
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    base = llm.generate("The quick brown", greedy)[0].outputs[0]
    sp = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    sp.stop = base.text[5:8]
    cut = llm.generate("The quick brown", sp)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.text == base.text[: base.text.index(sp.stop)]
    assert sp.stop == base.text[5:8]  # the caller's object is left as it was set
    sp.stop, sp.top_k, sp.temperature = None, -1, 1.0  # -1: disabled, as at construction
    assert len(llm.generate("The quick brown", sp)[0].outputs[0].token_ids) == 20
    sp.temperature = -1.0
    with pytest.raises(SamplingParamsError, match="temperature"):
        llm.generate("The quick brown", sp)
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "prompts,match",
    [
        ([5, 6, 7], "prompt_token_ids"),  # a flat list: each int taken as a prompt
        ({"text": "hi"}, "prompt"),  # neither key: was a bare KeyError
        ({"prompt": "hi", "multi_modal_data": {"image": 1}}, "multi_modal_data"),  # was ignored
        (None, "prompt"),
    ],
)
def test_malformed_prompts_are_refused_by_name(llm, prompts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        llm.generate(prompts, SamplingParams(max_tokens=2))
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize("params", [{"temperature": 0}, [None], [SamplingParams(), "greedy"]])
def test_sampling_params_of_another_type_are_refused(llm, params):
    with pytest.raises(TypeError, match="SamplingParams"):
        llm.generate(["a"] * (len(params) if isinstance(params, list) else 1), params)
    assert not llm.llm_engine.has_unfinished_requests()


def test_a_refused_batch_leaves_the_metrics_as_they_were(llm):
    """A batch refused part-way (a bad second prompt) never ran: the prompts added before it
    are withdrawn, not counted as prompt tokens and aborted requests."""
    eng = llm.llm_engine
    before = (eng.num_prompt_tokens, eng.num_aborted_requests)
    with pytest.raises(ValueError, match="prompt token ids"):
        llm.generate(["hello", {"prompt_token_ids": [10**6]}], SamplingParams(max_tokens=2))
    assert not eng.has_unfinished_requests()
    assert (eng.num_prompt_tokens, eng.num_aborted_requests) == before
    (prompt,) = [m for m in llm.get_metrics() if m.name == "xyserve:prompt_tokens"]
    assert prompt.value == before[0]


@pytest.mark.parametrize(
    "messages,match",
    [
        ([{"role": "user"}], "content"),  # was rendered as an empty message
        ([{"content": "hi"}], "role"),
        ([{"role": "user", "content": 5}], "content"),
        ("hi", "messages"),
        (["hi"], "messages"),
    ],
)
def test_chat_messages_of_the_wrong_shape_are_refused(llm, messages, match):
    with pytest.raises((ValueError, TypeError), match=match):
        llm.chat(messages, SamplingParams(max_tokens=2))


NO_SYSTEM_TEMPLATE = (  # as many HF templates refuse a role they do not take
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('system messages are not supported') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
)


@pytest.mark.parametrize(
    "template,message",
    [
        (NO_SYSTEM_TEMPLATE, "system messages are not supported"),
        (
            "{% for m in messages %}\n{{ m['content'] }",
            "unexpected '}' (syntax error at line 2 of the template)",
        ),
        (  # Python's error from an expression in the template (the server made it a 400)
            "{{ messages[0]['content'] + 1 }}",
            'can only concatenate str (not "int") to str',
        ),
    ],
    ids=["raise_exception", "syntax-error", "python-error"],
)
def test_a_chat_template_that_fails_refuses_the_whole_batch(llm, monkeypatch, template, message):
    """A template's jinja2 TemplateError came out of LLM.chat as it was (no ValueError, no word
    of the template; the server's 400 said both): now a ValueError in the server's words,
    chained from jinja2's. A batch whose last conversation fails admits none: nothing runs,
    nothing is counted. The same whether the template is passed or the tokenizer's own."""
    import jinja2

    eng = llm.llm_engine
    user = [{"role": "user", "content": "hi"}]
    convs = [user, user, [{"role": "system", "content": "be brief"}, *user]]
    before = (llm.get_metrics(), eng.num_aborted_requests)
    with monkeypatch.context() as mp:
        mp.setattr(llm.get_tokenizer(), "chat_template", template)
        with pytest.raises(ValueError) as e:
            llm.chat(convs, SamplingParams(max_tokens=2))
    assert str(e.value) == f"cannot apply the chat template: {message}"
    assert isinstance(e.value.__cause__, (jinja2.TemplateError, TypeError))
    assert not eng.has_unfinished_requests()
    assert (llm.get_metrics(), eng.num_aborted_requests) == before
    with pytest.raises(ValueError, match="cannot apply the chat template"):
        llm.chat(convs, SamplingParams(max_tokens=2), chat_template=template)
    assert not eng.has_unfinished_requests()
    assert (llm.get_metrics(), eng.num_aborted_requests) == before
    out = llm.chat(user, SamplingParams(max_tokens=2), chat_template=NO_SYSTEM_TEMPLATE)[0]
    assert out.prompt == "[user] hi\n"  # a passed template is used


def test_chat_content_parts_render_as_the_server_renders_them(llm):
    """LLM.chat passed a list of content parts to the template as it was: a template that
    adds strings failed on it, and others would print the list. Text parts are now joined by
    newlines, as the server and vLLM render them; another part type is refused, named."""
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]
    p = SamplingParams(max_tokens=2)
    as_parts = llm.chat([{"role": "user", "content": parts}], p)[0].prompt
    assert as_parts == llm.chat([{"role": "user", "content": "Say\nhello"}], p)[0].prompt
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[0\].*'image_url'"):
        llm.chat([{"role": "user", "content": image}], p)
    with pytest.raises(ValueError, match=r"content\[0\]\.text"):
        llm.chat([{"role": "user", "content": [{"type": "text"}]}], p)


def test_stop_strings_without_a_tokenizer_are_refused(tiny_llama):
    """Without a tokenizer there is no text to search: stop strings were silently ignored."""
    llm = LLM(str(tiny_llama), skip_tokenizer_init=True, cpu_fused_decode="off")
    with pytest.raises(ValueError, match="stop"):
        llm.generate([[5, 6]], SamplingParams(max_tokens=2, stop="a"))
    ok = llm.generate([[5, 6]], SamplingParams(max_tokens=2, stop_token_ids=[7]))
    assert ok[0].outputs[0].token_ids


def test_numpy_token_ids_are_token_ids(llm):
    """numpy integers were refused with 'prompt token ids must be in [0, V)', in range."""
    np = pytest.importorskip("numpy")
    sp = SamplingParams(temperature=0, max_tokens=3)
    want = llm.generate({"prompt_token_ids": [5, 6, 7]}, sp)[0].outputs[0].token_ids
    got = llm.generate({"prompt_token_ids": np.array([5, 6, 7])}, sp)[0]
    assert got.outputs[0].token_ids == want and got.prompt_token_ids == [5, 6, 7]
    assert all(type(t) is int for t in got.prompt_token_ids)


def test_numpy_numbers_in_stop_token_ids_and_logit_bias(llm):
    """numpy scalars in stop_token_ids and logit_bias were refused ('must be non-negative
    token ids', 'biases must be in [-100, 100]') though in range; they are Python numbers
    once accepted, and act as the same values given as Python numbers."""
    np = pytest.importorskip("numpy")
    sp = SamplingParams(
        stop_token_ids=[np.int64(5)],
        logit_bias={np.int32(6): np.float32(1.5), 7: np.float64(-2.0)},
        temperature=np.float32(0.5),
    )
    assert sp.stop_token_ids == [5] and type(sp.stop_token_ids[0]) is int
    assert sp.logit_bias == {6: 1.5, 7: -2.0}
    assert all(type(t) is int and type(b) is float for t, b in sp.logit_bias.items())
    assert type(sp.temperature) is float
    with pytest.raises(SamplingParamsError, match="logit_bias"):
        SamplingParams(logit_bias={5: np.float32(101)})
    with pytest.raises(SamplingParamsError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[np.int64(-1)])
    greedy = dict(temperature=0, max_tokens=4, ignore_eos=True)
    want = llm.generate([[5, 6]], SamplingParams(logit_bias={9: 100.0}, **greedy))[0]
    got = llm.generate(
        [[5, 6]], SamplingParams(logit_bias={np.int64(9): np.float32(100)}, **greedy)
    )[0]
    assert got.outputs[0].token_ids == want.outputs[0].token_ids == [9, 9, 9, 9]
