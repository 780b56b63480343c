"""The tokenizer the tiny pair shares: a byte-level BPE trained with ``tokenizers`` on the corpus.

Its special tokens are an end-of-text token (also used for padding) and three chat-role tokens;
the chat template renders each message as ``<|role|>\\n content <|endoftext|>\\n``. Besides
training it, this module writes the HF files that describe it (``tokenizer_config.json``,
``special_tokens_map.json``) and encodes texts into one token stream for training.
"""

from __future__ import annotations

import json
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [EOS_TOKEN, *ROLE_TOKENS]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# The files of a model directory that hold the tokenizer (copied as they are on --resume-target).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens included) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    """``tokenizer_config.json`` for ``PreTrainedTokenizerFast``: special tokens and chat template."""
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ROLE_TOKENS),
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer_files(tok, out_dir: Path, max_pos: int) -> None:
    """Write the three ``TOKENIZER_FILES`` of ``tok`` into ``out_dir``."""
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(max_pos), indent=2) + "\n"
    )
    special = {
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "additional_special_tokens": ROLE_TOKENS,
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def encode_texts(tok, texts: list[str], eos_id: int):
    """Concatenate ``text <|endoftext|>`` for every file into one int64 token stream."""
    import numpy as np

    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)
