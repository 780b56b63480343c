"""Incremental detokenisation (engine/output.py) against the slow reference: decoding the
whole output after every token."""

from __future__ import annotations

import pytest
import torch

from xyserve.engine.output import Child, OutputProcessor
from xyserve.engine.request import Request
from xyserve.tokenizer import Tokenizer

TEXTS = ["Hello world! 你好, мир 🚀🎉 ok", "def add(a, b):\n    return a + b  # ✓", "é è ê ﬁ ☃"]


def _tokenizers(request) -> list[tuple[str, Tokenizer]]:  # noqa: ANN001
    from xyserve.models import resolve_model

    out = [
        ("tiny-llama", Tokenizer(request.getfixturevalue("tiny_llama"))),
        ("tiny-qwen2", Tokenizer(request.getfixturevalue("tiny_qwen2"))),
    ]
    try:
        out.append(("xy-tiny", Tokenizer(resolve_model(None))))
    except FileNotFoundError:  # the bundled model is not installed
        pass
    return out


def _sequences(tok: Tokenizer, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    vocab = tok.vocab_size
    seqs = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    seqs += [torch.randint(0, vocab, (60,), generator=g).tolist() for _ in range(6)]
    return seqs


@pytest.mark.parametrize("skip_special", [True, False])
def test_incremental_text_matches_full_decode(request, skip_special: bool) -> None:
    for name, tok in _tokenizers(request):
        proc = OutputProcessor(tok, set(), 1 << 20)
        for ids in _sequences(tok, seed=len(name)):
            child = Child(Request("r", [1], len(ids)), 0, None)
            text = ""
            for k in range(1, len(ids) + 1):
                child.request.output_token_ids = ids[:k]
                text += proc.decode_delta(child, skip_special)
                full = tok.decode(ids[:k], skip_special)
                if full.endswith("\ufffd"):  # an incomplete character: held back
                    assert full.startswith(text), (name, ids[:k])
                else:
                    assert text == full, (name, ids[:k])
