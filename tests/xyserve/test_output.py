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


@pytest.mark.parametrize("skip_special", [True, False])
def test_decode_equals_transformers_decode(request, tmp_path, skip_special: bool) -> None:
    """``Tokenizer.decode`` calls the Rust tokenizer directly where transformers' wrapper would
    add nothing: the text must be transformers' own, for every tokenizer here, and one that
    says it cleans up spaces after decoding must keep the wrapper (whose clean-up, where the
    installed transformers applies it, changes the text; for this BPE fixture transformers 5
    skips it, so only the choice of path is checked there)."""
    import json
    import shutil

    cleaning = tmp_path / "cleaning"
    shutil.copytree(request.getfixturevalue("tiny_llama"), cleaning)
    cfg_path = cleaning / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["clean_up_tokenization_spaces"] = True
    cfg_path.write_text(json.dumps(cfg))
    tokenizers = [*_tokenizers(request), ("cleaning", Tokenizer(cleaning))]
    assert tokenizers[-1][1]._direct is None
    assert any(tok._direct is not None for _, tok in tokenizers)
    for name, tok in tokenizers:
        special = [i for i in (tok.hf.bos_token_id, tok.hf.eos_token_id) if i is not None]
        for ids in [*_sequences(tok, seed=3), special + [5, 6] + special, []]:
            want = tok.hf.decode(ids, skip_special_tokens=skip_special)
            assert tok.decode(ids, skip_special) == want, (name, ids)


def test_decode_keeps_a_tokenizer_class_own_decode(request, tmp_path) -> None:
    """A fast tokenizer class that overrides transformers' decoding (CTC ones group repeated
    ids) keeps transformers' ``decode``: the Rust tokenizer alone would not do what it does."""
    import json
    import shutil

    import transformers

    if not hasattr(transformers, "ParakeetTokenizer"):
        pytest.skip("this transformers has no ParakeetTokenizer")
    model = tmp_path / "ctc"
    shutil.copytree(request.getfixturevalue("tiny_llama"), model)
    cfg_path = model / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["tokenizer_class"] = "ParakeetTokenizer"
    cfg_path.write_text(json.dumps(cfg))
    tok = Tokenizer(model)
    assert type(tok.hf).__name__ == "ParakeetTokenizer"
    ids = tok.encode("aa bb cc", add_special_tokens=False)
    ids = ids + ids[-1:]  # a repeated id, which this class's decode drops
    for skip_special in (True, False):
        want = tok.hf.decode(ids, skip_special_tokens=skip_special)
        assert tok.decode(ids, skip_special) == want
