"""The model's tokenizer and chat template, through transformers' AutoTokenizer."""

from __future__ import annotations

from pathlib import Path


class Tokenizer:
    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

        path = Path(path)
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
            raise FileNotFoundError(f"missing file: {path / 'tokenizer.json'}")
        self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # Detokenizing runs per generated token (twice, incrementally: ``engine.output``), and
        # transformers' ``decode`` wraps the Rust tokenizer's in Python argument handling that
        # costs more than the decode itself. Where that wrapper would add nothing (a fast
        # tokenizer that does not clean up spaces after decoding), the Rust one is called
        # directly: the same call, the same text. A class that overrides transformers'
        # decoding (CTC tokenizers group repeated ids) keeps its own.
        cls = type(self.hf)
        generic = (
            cls.decode is PreTrainedTokenizerBase.decode
            and getattr(cls, "_decode", None) is PreTrainedTokenizerFast._decode
        )
        backend = getattr(self.hf, "backend_tokenizer", None) if self.hf.is_fast else None
        cleans = getattr(self.hf, "clean_up_tokenization_spaces", False)
        self._direct = backend.decode if generic and backend is not None and not cleans else None

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._direct is not None:
            return self._direct(ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.decode([i], skip_special_tokens=False) for i in ids]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not getattr(self.hf, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template")
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
