"""The offline API's arguments as a vLLM user passes them: each is honoured or refused by
name before anything runs, never accepted and ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from xyserve import LLM, BeamSearchParams, SamplingParams
from xyserve.sampling_params import SamplingParamsError


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_num_batched_tokens=64, cpu_fused_decode="off")


@pytest.mark.parametrize(
    "arg,value",
    [("request_timeout_s", 1.0), ("max_waiting_requests", 1), ("max_request_body_bytes", 10)],
)
def test_llm_refuses_engine_args_only_the_server_applies(tiny_llama, arg, value):
    """These request limits are applied by the HTTP server alone (its admission, body size and
    timeout): ``LLM(..., request_timeout_s=1.0)`` was accepted and no request ever timed out."""
    with pytest.raises(TypeError, match=arg):
        LLM(str(tiny_llama), cpu_fused_decode="off", **{arg: value})


@pytest.mark.parametrize("ids", [[True], [5, False]])
def test_sampling_params_refuses_bools_as_stop_token_ids(ids):
    """``stop_token_ids=[True]`` was taken as token id 1 (``allowed_token_ids`` and
    ``logit_bias`` already refused a bool for a token id)."""
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(stop_token_ids=ids)
    assert e.value.param == "stop_token_ids"


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(beam_width=True, max_tokens=4), "beam_width"),
        (dict(beam_width=2, max_tokens=True), "max_tokens"),
        (dict(beam_width=2.0, max_tokens=4), "beam_width"),
    ],
)
def test_beam_search_params_refuse_bools_for_counts(kw, name):
    """``BeamSearchParams(beam_width=True, ...)`` was a search of width 1, and
    ``max_tokens=True`` one step, where SamplingParams refuses a bool for a count."""
    with pytest.raises(ValueError, match=name):
        BeamSearchParams(**kw)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(add_generation_prompt="false"), "add_generation_prompt"),
        (dict(add_generation_prompt=None), "add_generation_prompt"),
        (dict(add_generation_prompt=False, continue_final_message="yes"), "continue_final_message"),
    ],
)
def test_chat_refuses_flags_that_are_not_bools(llm, kw, name):
    """``add_generation_prompt="false"`` was read as true (a generation prompt added), and
    ``continue_final_message="yes"`` failed inside transformers with a message about the
    conversation; now a TypeError naming the flag, before anything is rendered or run."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    with pytest.raises(TypeError, match=name):
        llm.chat(msgs, SamplingParams(max_tokens=2), use_tqdm=False, **kw)


def test_generate_refuses_a_priority_that_is_not_one_per_prompt(llm):
    """``priority=0`` (one number for every prompt) was a bare ``object of type 'int' has no
    len()``; now a TypeError naming ``priority``."""
    with pytest.raises(TypeError, match="priority"):
        llm.generate(["a", "b"], SamplingParams(max_tokens=2), use_tqdm=False, priority=0)


@pytest.mark.parametrize("kwargs", [[1], "enable_thinking"])
def test_chat_refuses_template_kwargs_that_are_not_a_dict(llm, kwargs):
    """A list or a string failed in ``dict(...)`` with a message naming no field."""
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(TypeError, match="chat_template_kwargs"):
        llm.chat(msgs, SamplingParams(max_tokens=2), use_tqdm=False, chat_template_kwargs=kwargs)
