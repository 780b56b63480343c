"""Peer servers for ``bench serve``: other OpenAI-compatible servers started on the same model.

``hf``: HF transformers' own server (``transformers serve MODEL``, continuous batching on by
default), on the CPU in float32 with the same thread count as xyserve's servers. It takes
prompts as text only and streams no logprobs, so its requests carry their prompts as text
(each token id as the model's tokenizer decodes it) and the client counts one token per
non-empty chunk.

The random-weight models ``bench serve`` builds get a word-level tokenizer whose word for id
``i`` is ``t<i>``, so a prompt's text tokenizes back to exactly its ids: a peer that takes text
sees the same prompts, of the same lengths, as xyserve's servers that take ids. A real
checkpoint's tokenizer need not round-trip every id sequence; :class:`TextPrompts` measures
how far the lengths move and says so.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

PEERS = ("hf",)


def peer_command(name: str, model: str, port: int, extra: str = "") -> list[str]:
    """The command line that serves ``model`` on 127.0.0.1:``port`` as peer ``name``."""
    if name != "hf":
        raise ValueError(f"unknown peer {name!r}: expected one of {', '.join(PEERS)}")
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    cmd += shlex.split(extra) if extra else ["--continuous-batching"]
    return cmd


def write_id_tokenizer(out: Path, vocab_size: int) -> None:
    """A tokenizer for ``out`` whose word for id ``i`` is ``t<i>`` (id 0: ``<unk>``), split on
    whitespace: ``decode(ids)`` tokenizes back to ``ids`` for any ids in 1 .. vocab_size - 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"t{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(out))


@dataclass
class TextPrompts:
    """Token-id prompts as text through a model directory's tokenizer."""

    model_dir: str

    def __post_init__(self) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"a peer that takes text prompts needs a tokenizer in {self.model_dir}: {e}"
            ) from None

    def texts(self, prompts: list[list[int]]) -> tuple[list[str], float]:
        """Each prompt's text, and the mean relative change of its length when the text is
        tokenized again (0.0: every prompt round-trips to its length)."""
        out, drift = [], 0.0
        for ids in prompts:
            text = self.tok.decode(ids)
            back = self.tok(text, add_special_tokens=False)["input_ids"]
            drift += abs(len(back) - len(ids)) / max(1, len(ids))
            out.append(text)
        return out, drift / max(1, len(prompts))
