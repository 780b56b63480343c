"""On a CUDA GPU: steps replayed from captured CUDA graphs give the logits of the same steps run
eagerly and unpadded, and an engine with graphs emits the tokens of one with ``enforce_eager``.

A capture fails on any device sync inside the forward (CUDA refuses a sync while a stream
captures), so an engine that starts with graphs at all has a sync-free forward. Skipped without
CUDA.
"""

from __future__ import annotations

import pytest
import torch
from test_step_graphs import ENGINE, _prompts, _unpadded_logits

from xyserve import LLM, SamplingParams
from xyserve.engine.runner import ModelRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SIZES = [1, 2, 4, 8, 16]


@pytest.mark.parametrize("gemm", ["smooth-triton", "smooth", "torch"])
def test_replayed_steps_give_the_eager_logits(tiny_llama, monkeypatch, request, gemm):
    """``smooth-triton``: SmoothGEMM with its untuned buckets on the Triton tiles (``smooth``
    alone puts them on cuBLAS)."""
    if gemm == "smooth-triton":
        request.getfixturevalue("triton_gemm_tiles")
    backend = gemm.removesuffix("-triton")
    args = {**ENGINE, "device": "cuda", "dtype": "float32", "gemm_backend": backend}
    llm = LLM(str(tiny_llama), cudagraph_capture_sizes=SIZES, **args)
    runner = llm.llm_engine.runner
    assert runner.graphs is not None and sorted(runner.graphs.graphs) == SIZES
    counts = {"replayed": 0, "eager": 0}
    real = ModelRunner.execute

    def execute(self, out, block_tables):
        want = _unpadded_logits(self, out, block_tables)
        size = self.graphs.size_for(self.build_table(out, block_tables))
        got = real(self, out, block_tables)
        torch.testing.assert_close(got.logits, want.cpu(), atol=1e-4, rtol=1e-4)
        counts["eager" if size is None else "replayed"] += 1
        return got

    monkeypatch.setattr(ModelRunner, "execute", execute)
    params = [SamplingParams(temperature=0, max_tokens=12 - i, ignore_eos=True) for i in range(5)]
    prompts = [{"prompt_token_ids": p} for p in _prompts()]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert counts["replayed"] > 0 and counts["eager"] > 0
    monkeypatch.setattr(ModelRunner, "execute", real)
    eager = LLM(str(tiny_llama), enforce_eager=True, **args)
    assert eager.llm_engine.runner.graphs is None
    want = eager.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in want]
