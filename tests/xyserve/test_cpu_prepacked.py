"""oneDNN on prepacked weights (``kernels.cpu.prepacked``) against plain ``F.linear``."""

from __future__ import annotations

import pytest
import torch

from xyserve.kernels.cpu import prepacked

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("m", [1, 2, 5, 8, 17, 33, 64, 129])
def test_prepacked_linear_equals_f_linear(m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    w, b = torch.randn(96, 80, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(m, 80, generator=gen)
    torch.testing.assert_close(prepacked.linear(x, w, None), torch.nn.functional.linear(x, w))
    torch.testing.assert_close(prepacked.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    xt = torch.randn(80, m, generator=gen).t()  # a swapped GEMM's column-major output
    torch.testing.assert_close(prepacked.linear(xt, w, b), torch.nn.functional.linear(xt, w, b))


@pytest.mark.skipif(
    not prepacked.available(torch.bfloat16), reason="no native bfloat16 (AVX-512 BF16 or AMX)"
)
@pytest.mark.parametrize("m", [1, 5, 33, 129])
def test_prepacked_bfloat16_matches_f_linear(m: int) -> None:
    """bfloat16 weights packed for oneDNN's AMX / AVX-512 BF16 kernels: the same products as
    ``F.linear`` in bfloat16, up to the output's bfloat16 rounding (float32 sums in either)."""
    gen = torch.Generator().manual_seed(m)
    w = torch.randn(96, 80, generator=gen).bfloat16()
    b = torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(m, 80, generator=gen).bfloat16()
    got = prepacked.linear(x, w, b)
    assert got.dtype == torch.bfloat16 and hasattr(w, "_xyserve_dnnl_packed")
    exact = x.double() @ w.double().t() + b.double()
    # one bfloat16 rounding of the output (2^-8 relative), whichever way the sums went
    torch.testing.assert_close(got.double(), exact, rtol=2**-7, atol=1e-2)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), rtol=2**-7, atol=1e-2)


def test_one_pack_per_weight_until_its_storage_changes() -> None:
    w = torch.randn(32, 16)
    first = prepacked.packed(w)
    assert prepacked.packed(w) is first  # reused: packed once, outside the steps
    other = torch.randn(32, 16)
    w.set_(other)  # re-pointed: the old pack must not be used
    again = prepacked.packed(w)
    assert again is not first
    x = torch.randn(3, 16)
    torch.testing.assert_close(prepacked.linear(x, w, None), x @ other.t())


def test_a_weight_written_in_place_is_packed_again() -> None:
    """The pack is a copy: a weight updated in place (same storage, new values) must not be
    multiplied through its old pack."""
    w, new = torch.randn(32, 16), torch.randn(32, 16)
    x = torch.randn(3, 16)
    torch.testing.assert_close(prepacked.linear(x, w, None), x @ w.t())
    with torch.no_grad():
        w.copy_(new)
    torch.testing.assert_close(prepacked.linear(x, w, None), x @ new.t())
    first = prepacked.packed(w)
    assert prepacked.packed(w) is first  # unchanged since: still packed once


def test_other_dtypes_take_f_linear() -> None:
    w, x = torch.randn(8, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(prepacked.linear(x, w, None), x @ w.t())
    assert not hasattr(w, "_xyserve_dnnl_packed")


def test_the_engine_packs_each_weight_once(tiny_llama, tmp_path, monkeypatch) -> None:
    """A table naming ``dnnl`` everywhere: each linear weight is packed at its first use and
    then reused by every later step (the pack is one more copy of the weight, made once)."""
    from test_oracle import with_table

    from xyserve import LLM, SamplingParams

    packs = []
    real = prepacked._reorder
    monkeypatch.setattr(prepacked, "_reorder", lambda w: packs.append(w.shape) or real(w))
    path = with_table(tiny_llama, tmp_path, "dnnl", 64)
    llm = LLM(str(path), max_num_batched_tokens=64, skip_tokenizer_init=True)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = LLM(str(tiny_llama), max_num_batched_tokens=64, gemm_backend="torch")
    prompts = [{"prompt_token_ids": [3, 4, 5, 6]}, {"prompt_token_ids": [9, 8, 7]}]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    ref = [o.outputs[0].token_ids for o in want.generate(prompts, params, use_tqdm=False)]
    assert got == ref
    cfg = llm.llm_engine.model.cfg
    assert 0 < len(packs) <= 4 * cfg.num_layers + 1  # qkv, o, gate_up, down per layer, lm_head
