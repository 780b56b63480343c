from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def gemm_table_cache(tmp_path_factory):
    """Tables tuned at first start go to a temporary cache folder, and engines on models
    without a table run on defaults (tests that want the quick tune turn it back on)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XYSERVE_CACHE_DIR", str(tmp_path_factory.mktemp("xyserve-cache")))
    mp.setenv("XYSERVE_GEMM_AUTOTUNE", "off")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Kernel tests on tiny ops: one thread avoids OpenMP barrier stalls on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def triton_gemm_tiles(monkeypatch):
    """Buckets no table tunes run the Triton default tiles instead of the vendor GEMM, so an
    engine on CUDA without a tuned table exercises SmoothGEMM's kernel."""
    from xyserve.plan import gemm_table

    monkeypatch.setattr(
        gemm_table, "untuned_config", lambda pm, device: gemm_table.default_config(pm)
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama with a trained BPE tokenizer and a chat template."""
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tie_word_embeddings=True)


@pytest.fixture
def first_logits(monkeypatch) -> dict[tuple[int, ...], torch.Tensor]:
    """The logits each request's first token was sampled from, keyed by its prompt ids.

    A spy on the engine's call to the sampler (the engine has no test hook): a row whose
    request has no output token yet is the first-token row of that prompt.
    """
    from xyserve.engine import engine as engine_module

    seen: dict[tuple[int, ...], torch.Tensor] = {}
    real = engine_module.sample

    def spy(logits, rows, *args, **kwargs):
        for lg, row in zip(logits, rows):
            if not row.output_ids:
                seen.setdefault(tuple(row.prompt_ids), lg.clone())
        return real(logits, rows, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample", spy)
    return seen
