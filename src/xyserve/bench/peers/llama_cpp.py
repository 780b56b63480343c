"""llama.cpp as a peer in ``bench offline``: the same weights (``gguf_export``), the same token
ids, greedy, through llama-cpp-python's low-level API (the optional ``llama-cpp`` extra).

Batched like xyserve: one ``seq_id`` per request, every prompt of a wave in one ``llama_batch``
(logits only at each prompt's last token), then one token per sequence per decode call; waves
of ``batch_size`` requests, each sequence leaving the decode calls at its own output length
(the workloads' lengths differ: decoding all to the longest would time extra tokens).
``n_threads`` and ``n_threads_batch`` are torch's thread count, K/V are F32
(``kv_dtype``: BF16 beside a BF16 GGUF, as xyserve's bfloat16 engine keeps them) and
flash attention is off by default: llama.cpp's CPU flash attention computes in F16 even with
F32 K/V, which flips near-ties of random-weight models, so the exact configuration is the one
whose greedy tokens are compared with HF's; ``flash_attn=True`` is the fast one.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_QUIET = None  # llama.cpp's log callback, kept alive for as long as llama.cpp may call it


def _silence(lc) -> None:
    """llama.cpp logs every tensor it loads to stderr; the bench prints its own report."""
    global _QUIET
    if _QUIET is None:
        _QUIET = lc.llama_log_callback(lambda level, text, user: None)
        lc.llama_log_set(_QUIET, ctypes.c_void_p(0))


# ggml's type ids for the K/V cache (llama-cpp-python names F32 and F16 only; BF16 is 30)
KV_TYPES = {"float32": 0, "float16": 1, "bfloat16": 30}


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCpp:
    """One llama.cpp model and context sized for ``max_seqs`` sequences of ``max_len`` tokens."""

    def __init__(
        self,
        gguf: str | Path,
        max_seqs: int,
        max_len: int,
        threads: int,
        flash_attn: bool = False,
        kv_dtype: str = "float32",
    ) -> None:
        import llama_cpp as lc

        self.lc = lc
        _silence(lc)
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        per_seq = -(-max_len // 256) * 256
        self.max_tokens = max_seqs * per_seq
        cp = lc.llama_context_default_params()
        cp.n_ctx = self.max_tokens
        cp.n_batch = self.max_tokens
        cp.n_ubatch = min(512, self.max_tokens)
        cp.n_seq_max = max_seqs
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.type_k = cp.type_v = KV_TYPES[kv_dtype]
        if hasattr(cp, "flash_attn_type"):
            cp.flash_attn_type = 1 if flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_{ENABLED,DISABLED}
        else:  # pragma: no cover - older llama-cpp-python
            cp.flash_attn = flash_attn
        if hasattr(cp, "kv_unified"):
            cp.kv_unified = False  # faster for many sequences (one KV stream each)
        cp.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = lc.llama_batch_init(self.max_tokens, 0, max_seqs)

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants logits) items."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(items)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)
        )

    def greedy(
        self, prompts: Sequence[Sequence[int]], new_tokens: int | Sequence[int]
    ) -> list[list[int]]:
        """Greedy continuations for prompts decoded side by side: ``new_tokens`` tokens each,
        or per prompt (a list); a sequence leaves the decode calls once it has its tokens,
        as a request leaves xyserve's batch, so that no system is timed on extra tokens."""
        wants = [new_tokens] * len(prompts) if isinstance(new_tokens, int) else list(new_tokens)
        if len(wants) != len(prompts):
            raise ValueError(f"{len(wants)} token counts for {len(prompts)} prompts")
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        items, last = [], []
        for s, p in enumerate(prompts):
            items += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
            last.append(len(items) - 1)
        self._decode(items)
        outs = [[int(np.argmax(self._logits(i)))] for i in last]
        for step in range(1, max(wants, default=0)):
            live = [s for s, o in enumerate(outs) if len(o) < wants[s]]
            self._decode([(outs[s][-1], len(prompts[s]) + step - 1, s, True) for s in live])
            for i, s in enumerate(live):  # logits by the item's place in this batch
                outs[s].append(int(np.argmax(self._logits(i))))
        return outs


def run_llama_cpp(
    gguf: str | Path,
    prompts: list[list[int]],
    output_lens: list[int],
    batch_size: int,
    threads: int,
    kv_dtype: str = "float32",
) -> float:
    """Seconds to generate every request's output, in waves of ``batch_size`` (load excluded)."""
    max_len = max(len(p) + o for p, o in zip(prompts, output_lens))
    llm = LlamaCpp(gguf, min(batch_size, len(prompts)), max_len, threads, kv_dtype=kv_dtype)
    try:
        llm.greedy([prompts[0][:4]], 2)  # warm-up: first-call set-up out of the timing
        t = time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            wave = prompts[i : i + batch_size]
            llm.greedy(wave, output_lens[i : i + batch_size])
        return time.perf_counter() - t
    finally:
        llm.close()
