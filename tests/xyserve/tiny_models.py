"""Tiny random HF models with a locally trained tokenizer, built in the test session (no network)."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "import os\nimport sys\nprint(os.getcwd(), sys.argv)\n",
    "Hello world! Serving language models token by token, under a fixed budget.\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
] * 20


def train_bpe(vocab_size: int = 300):
    """A byte-level BPE (a ``tokenizers.Tokenizer``) trained on a small local corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_tokenizer(path: Path, vocab_size: int = 300) -> int:
    """Train a byte-level BPE on a small local corpus; return its vocabulary size."""
    tok = train_bpe(vocab_size)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "bos_token": None,
                "model_max_length": 1024,
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    return tok.get_vocab_size()


def build_model(
    path: Path,
    arch: str = "llama",
    with_tokenizer: bool = True,
    seed: int = 0,
    **overrides,
) -> Path:
    """Save a tiny random ``LlamaForCausalLM``/``Qwen2ForCausalLM``/``Qwen3ForCausalLM`` to path."""
    import torch
    import transformers

    vocab = write_tokenizer(path) if with_tokenizer else 320
    eos = 0 if with_tokenizer else None
    kw = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,  # peaked logits: greedy ties are unlikely
        eos_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**kw)).eval()
    model.save_pretrained(str(path))
    return path
