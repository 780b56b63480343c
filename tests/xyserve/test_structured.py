"""Structured outputs: the batched token masks against llguidance's per-token check, and the
offline API's dict constraints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xyserve.engine.structured import GrammarError, StructuredOutputs, fill_masks
from xyserve.llm import LLM
from xyserve.sampling_params import SamplingParams, StructuredOutputsParams
from xyserve.tokenizer import Tokenizer


def test_batched_masks_match_per_token_validation(tiny_llama: Path) -> None:
    tok = Tokenizer(tiny_llama)
    vocab = 300
    so = StructuredOutputs(tok.hf, vocab, [0])
    specs = [
        so.compile("json_schema", {"type": "object", "properties": {"a": {"type": "integer"}}}),
        so.compile("regex", "[a-c]+x"),
        so.compile("choice", ["yes", "no"]),
    ]
    matchers = [s.new_matcher() for s in specs]
    g = torch.Generator().manual_seed(0)
    for _ in range(6):  # walk each matcher through a few allowed tokens
        allowed = fill_masks(matchers, vocab)
        for row, m in enumerate(matchers):
            if m.is_finished():  # the engine ends the sequence here: no mask is used
                continue
            ref = [m.raw.validate_tokens([t]) == 1 for t in range(vocab)]
            assert allowed[row].tolist() == ref
        for row, m in enumerate(matchers):
            ids = allowed[row].nonzero().flatten()
            if ids.numel() and not m.is_finished():
                m.advance(int(ids[torch.randint(0, ids.numel(), (1,), generator=g)]))
    with pytest.raises(GrammarError):
        so.compile("json_schema", {"type": "bogus"})
    with pytest.raises(GrammarError):
        so.compile("choice", [])


def test_offline_dict_constraints(tiny_llama: Path) -> None:
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    params = [
        SamplingParams(
            temperature=1.0, seed=1, max_tokens=40, structured={"choice": ["on", "off"]}
        ),
        SamplingParams(temperature=1.0, seed=2, max_tokens=40, structured={"json": schema}),
    ]
    outs = llm.generate(["Hello", "World"], params, use_tqdm=False)
    assert outs[0].outputs[0].text in ("on", "off")
    assert 0 <= json.loads(outs[1].outputs[0].text)["n"] <= 9
    assert params[0].structured == {"choice": ["on", "off"]}  # the caller's object is untouched
    with pytest.raises(ValueError, match="exactly one"):
        llm.generate("x", SamplingParams(structured={"regex": "a", "choice": ["b"]}))
    llm.llm_engine.kv.check_no_leak()


def test_vllms_structured_outputs_keyword_is_the_same_constraint(tiny_llama: Path) -> None:
    """A vLLM script's ``SamplingParams(structured_outputs=StructuredOutputsParams(...))`` was a
    TypeError (only ``structured=`` existed). It is the same constraint; giving both, another
    type, or one of vLLM's tuning fields xyserve does not apply, is refused."""
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    for so in (StructuredOutputsParams(choice=["on", "off"]), {"choice": ["on", "off"]}):
        sp = SamplingParams(temperature=1.0, seed=1, max_tokens=40, structured_outputs=so)
        assert sp.structured == {"choice": ["on", "off"]} and sp.structured_outputs is None
        out = llm.generate("Hello", sp, use_tqdm=False)
        assert out[0].outputs[0].text in ("on", "off")
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(structured={"regex": "a"}, structured_outputs={"regex": "b"})
    with pytest.raises(ValueError, match="StructuredOutputsParams or a dict"):
        SamplingParams(structured_outputs="a|b")
    with pytest.raises(TypeError, match="whitespace_pattern"):
        StructuredOutputsParams(json={}, whitespace_pattern=" ")
    llm.llm_engine.kv.check_no_leak()


def test_offline_json_schema_as_text(tiny_llama: Path) -> None:
    """A schema given as JSON text is parsed, as the server's guided_json and vLLM's offline
    API take it; text that is not JSON is refused naming the field."""
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    sp = SamplingParams(
        temperature=1.0, seed=3, max_tokens=40, structured={"json": json.dumps(schema)}
    )
    out = llm.generate("Hello", sp, use_tqdm=False)[0].outputs[0]
    assert 0 <= json.loads(out.text)["n"] <= 9
    with pytest.raises(ValueError, match="structured.*not valid JSON") as e:
        llm.generate("x", SamplingParams(structured={"json": "{not json"}), use_tqdm=False)
    assert e.value.param == "structured"
    llm.llm_engine.kv.check_no_leak()


def test_schemas_differing_only_in_property_order_are_compiled_apart(tiny_llama: Path) -> None:
    """Property order is part of a JSON schema's meaning for generation (the properties come
    out in that order): a schema must not be served the grammar of an earlier request whose
    schema lists the same properties in another order."""
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    props = {"zz": {"type": "boolean"}, "aa": {"type": "boolean"}}
    for order in (["zz", "aa"], ["aa", "zz"]):
        schema = {
            "type": "object",
            "properties": {k: props[k] for k in order},
            "required": ["zz", "aa"],
            "additionalProperties": False,
        }
        sp = SamplingParams(temperature=0, max_tokens=40, structured={"json": schema})
        out = llm.generate("Hello", sp, use_tqdm=False)[0].outputs[0]
        assert out.finish_reason == "stop", out
        assert list(json.loads(out.text)) == order


def test_a_grammars_first_mask_is_built_when_it_is_compiled(tiny_llama: Path, monkeypatch) -> None:
    """llguidance builds a grammar's lexer on its first masks, seconds for a large one: that
    is done when the constraint is compiled (off the engine thread on the server), not in the
    step that samples the request's first token, where it stalled every request of the step.
    The matchers of a request are copies of that start state (no new llguidance matcher is
    built for them), each moving on its own."""
    import llguidance

    tok = Tokenizer(tiny_llama)
    vocab = 300
    so = StructuredOutputs(tok.hf, vocab, [0])
    spec = so.compile("regex", "a{30000}")

    def built_again(*args, **kwargs):
        raise AssertionError("a request's matcher was built afresh, not copied")

    monkeypatch.setattr(llguidance, "LLMatcher", built_again)
    first, second = spec.new_matcher(), spec.new_matcher()
    allowed = fill_masks([first], vocab)
    (a,) = tok.encode("a", add_special_tokens=False)
    assert allowed[0, a]
    first.advance(a)
    assert not first.is_finished() and fill_masks([second], vocab).equal(allowed)


def test_a_grammar_failing_inside_a_step_fails_its_request_with_a_short_message(
    tiny_llama: Path,
) -> None:
    """A regex too large for the grammar's lexer compiles, then fails on its first token:
    that request ends with an error whose grammar part is cut to ``ERROR_CHARS`` (llguidance
    appends its parser state to the reason), and the other request of the step is unharmed."""
    from xyserve.engine.structured import ERROR_CHARS

    llm = LLM(str(tiny_llama), device="cpu")
    bad = SamplingParams(max_tokens=4, structured={"regex": "a{400000}"})
    good = SamplingParams(max_tokens=4, temperature=0)
    try:
        outs = llm.generate(["hi", "hello"], [bad, good], use_tqdm=False)
    except ValueError:  # a library that refuses it when compiling is as good
        return
    error = outs[0].error
    assert error is not None and "refused by the grammar: lexer error" in error
    why = error.split("refused by the grammar: ", 1)[1]
    assert len(why) <= ERROR_CHARS + len(" ... (cut)")
    assert outs[1].error is None and len(outs[1].outputs[0].token_ids) == 4


def test_a_grammar_needing_a_token_min_tokens_holds_back_wins(tiny_llama: Path) -> None:
    """min_tokens holds stop ids (and EOS) back; where the grammar allows only such a token,
    nothing was left and the request failed ("no token is allowed"; found by test_feature_soak
    with the choice "no" and 'o' as a stop id). The grammar wins, as where it completes short
    of min_tokens: the token comes, and it stops the sequence as a stop id does."""
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    (z,) = llm.get_tokenizer().encode("z", add_special_tokens=False)
    for min_tokens in (2, 5):
        sp = SamplingParams(
            temperature=0, max_tokens=8, min_tokens=min_tokens, stop_token_ids=[z],
            structured={"choice": ["qz"]},
        )  # fmt: skip
        out = llm.generate("Hello", sp, use_tqdm=False)[0]
        assert out.error is None, out.error
        c = out.outputs[0]
        assert len(c.token_ids) == 2 and c.token_ids[-1] == z and c.finish_reason == "stop"
    llm.llm_engine.kv.check_no_leak()


def test_allowed_token_ids_the_grammar_refuses_at_its_start_are_refused(tiny_llama: Path) -> None:
    """An allowed_token_ids set with no token the grammar allows first left the sampler
    nothing: the request failed in its first step. It is refused at admission, as a set the
    other masks leave empty is; a set with such a token runs."""
    llm = LLM(str(tiny_llama), device="cpu", max_model_len=128)
    tok = llm.get_tokenizer()
    (brace,) = tok.encode("{", add_special_tokens=False)
    (x,) = tok.encode("x", add_special_tokens=False)
    schema = {"type": "object"}
    sp = SamplingParams(max_tokens=1, allowed_token_ids=[x], structured={"json": schema})
    with pytest.raises(ValueError, match="allowed_token_ids"):
        llm.generate("Hello", sp, use_tqdm=False)
    sp = SamplingParams(max_tokens=1, allowed_token_ids=[x, brace], structured={"json": schema})
    out = llm.generate("Hello", sp, use_tqdm=False)[0]
    assert out.error is None and out.outputs[0].token_ids == [brace]
    llm.llm_engine.kv.check_no_leak()


GBNF = """
root ::= answer " " number
answer ::= "yes" | "no"
number ::= [1-9] [0-9]?
"""


def test_a_grammar_in_gbnf_is_taken_as_vllm_takes_it(tiny_llama: Path) -> None:
    """vLLM's guided_grammar takes Lark or GBNF (``root ::= ...``, its documentation's
    examples); a GBNF grammar was refused as invalid Lark (the server compiles through the
    same path: test_server_isolation's test_json_object_regex_choice)."""
    import re

    llm = LLM(str(tiny_llama), device="cpu", max_model_len=128)
    sp = SamplingParams(max_tokens=10, temperature=1.0, seed=0, structured={"grammar": GBNF})
    outs = llm.generate(["Hello", "Hi"], sp, use_tqdm=False)
    for out in outs:
        (c,) = out.outputs
        assert c.finish_reason == "stop" and re.fullmatch(r"(yes|no) [1-9][0-9]?", c.text), c
    with pytest.raises(ValueError, match="invalid grammar"):
        llm.generate("Hello", SamplingParams(structured={"grammar": "root ::= ::="}))


@pytest.mark.parametrize(
    ("kind", "value"),
    [("choice", "yes"), ("choice", {"yes": 1}), ("regex", ["a"]), ("grammar", 5)],
)
def test_a_constraint_of_the_wrong_type_is_refused(tiny_llama: Path, kind, value) -> None:
    """Offline, ``structured`` is a plain dict: a choice given as a string held the output to
    one of its characters, and a regex given as a list to the character class its ``str``
    wrote (``['a']``). They are refused, as the server's request model refuses them."""
    tok = Tokenizer(tiny_llama)
    so = StructuredOutputs(tok.hf, 300, [0])
    with pytest.raises(GrammarError, match="must be"):
        so.compile(kind, value)


def test_a_grammar_wins_over_bad_words_it_cannot_avoid(tiny_llama: Path) -> None:
    """Where the grammar's only way on is a token ``bad_words`` bans, the grammar wins (as it
    does over ``min_tokens``), rather than the request failing with no token allowed."""
    llm = LLM(model=str(tiny_llama), device="cpu", max_model_len=128)
    sp = SamplingParams(
        temperature=0, max_tokens=8, structured={"choice": ["ab"]}, bad_words=["ab"]
    )
    out = llm.generate("Hello", sp, use_tqdm=False)[0].outputs[0]
    assert (out.text, out.finish_reason) == ("ab", "stop")
    llm.llm_engine.kv.check_no_leak()
