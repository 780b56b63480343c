"""One EngineConfig: every engine argument, with vLLM's names where they exist."""

from __future__ import annotations

import os
import re
import sys
import typing
from dataclasses import dataclass, fields
from typing import Any

from xyserve.engine.capture_sizes import check_capture_sizes
from xyserve.engine.scheduler import check_knobs, default_reserve
from xyserve.model.config import DTYPE_NAMES
from xyserve.sampling_params import SEED_MAX, SEED_MIN
from xyserve.spec.config import SpeculativeConfig

# The hybrid policy's knobs, with the values that describe what the baseline policy does anyway
# (FCFS, no step-time target): any other value set with the baseline policy is refused, since
# that policy would ignore it.
HYBRID_ONLY: dict[str, tuple] = {
    "num_reserved_decode_tokens": (),
    "max_prefill_chunk_tokens": (),
    "admission_order": ("fcfs",),
    "admission_max_skips": (),
    "partial_prefill_admission": (),
    "tbt_target_ms": (0, None),
    "split_prefill_decode": ("auto", "on"),
}
SPLIT_MODES = ("auto", "on", "off")
# Request limits that only the HTTP server applies (its admission queue, body size and request
# timeout; ``xyserve.server``): the offline ``LLM`` refuses them rather than take them and let
# no request ever be held to them.
SERVER_ONLY_ARGS = ("max_request_body_bytes", "max_waiting_requests", "request_timeout_s")


# The torch dtypes an engine runs in, by the names the engine takes (and vLLM's).
TORCH_DTYPE_NAMES = ("float32", "float16", "bfloat16")
# The kernel backends by name (xyserve.kernels.backend's registry, which imports torch): checked
# here, so a misspelt name is refused before the model loads and the start-up checks run.
ATTENTION_BACKENDS = ("meta", "sdpa", "reference")
GEMM_BACKENDS = ("smooth", "torch")


def dtype_name(value: object) -> str:
    """The engine argument ``dtype`` as the name the engine takes: a string as it is
    (EngineConfig checks it), a torch dtype by its name (``torch.bfloat16``: ``"bfloat16"``), as
    vLLM takes either. Another torch dtype is a ValueError naming those it may be, anything
    else a TypeError: both name ``dtype`` (was "dtype must be str" for torch.bfloat16 too)."""
    if isinstance(value, str):
        return value
    torch = sys.modules.get("torch")  # a torch dtype means torch is loaded: never imported here
    if torch is not None and isinstance(value, torch.dtype):
        for name in TORCH_DTYPE_NAMES:
            if value == getattr(torch, name):
                return name
        raise ValueError(
            f"unsupported dtype {value}; choose auto or one of {', '.join(TORCH_DTYPE_NAMES)} "
            "(a string, or the torch dtype)"
        )
    raise TypeError(f"dtype must be str or a torch dtype (got {value!r})")


@dataclass
class EngineConfig:
    model: str | None = None  # local HF directory or a bundled name; None: the bundled default
    tokenizer: str | None = None  # defaults to the model directory
    max_num_batched_tokens: int = 512  # the token budget of one step
    max_num_seqs: int = 64
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    # auto: float32 on CPU, bfloat16 on GPU. A torch dtype (torch.bfloat16), as vLLM takes, is
    # stored as its name.
    dtype: str = "auto"
    seed: int = 0
    num_kv_blocks: int | None = None  # overrides kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 1 << 30
    scheduler_policy: str = "hybrid"  # hybrid | baseline
    # vLLM's: fcfs, or priority (a request's ``priority``, lower first, then FCFS; a request
    # short of blocks preempts the lowest priority's newest). Under fcfs a priority other than
    # 0 is refused.
    scheduling_policy: str = "fcfs"
    # Budget tokens kept for decode/verify work whenever some waits (default: a quarter).
    num_reserved_decode_tokens: int | None = None
    # Hybrid only: the most prefill tokens of one request per step (None: no cap but the budget).
    max_prefill_chunk_tokens: int | None = None
    # Hybrid only: fcfs | prefix_hit (fewest uncached tokens first, bounded by max skips).
    # Why prefix_hit is the default: docs/perf.md (the simulated ablation).
    admission_order: str = "prefix_hit"
    admission_max_skips: int = 16
    # Hybrid only: may a new prompt start with a partial chunk next to other prefill work?
    partial_prefill_admission: bool = True
    # Hybrid only: SLO-aware step budget; prefill next to decodes is cut to fit this step time
    # (ms) by an online cost model of the steps' timings (None or 0: off). It never binds where
    # steps are shorter, nor where the decodes alone overrun it. It bounds one step, and a decode
    # waits for that step and then its own, so it sits well under a TBT SLO. Why 300:
    # docs/perf.md.
    tbt_target_ms: float | None = 300.0
    # Hybrid only: prefill work and decode/verify tokens in separate steps, in turn, instead of
    # one mixed step (engine.scheduler, "split steps"). auto: where the decodes of a step would
    # take the CPU fused decode call of a float32 model (a decode-only step there costs about
    # what the decodes add to a mixed step, so splitting gives prompts their tokens sooner at
    # no cost to TBT; in bfloat16 on AMX mixing is cheaper: docs/perf.md); on: whenever decodes
    # wait; off: always mixed (the paper's fused step).
    split_prefill_decode: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    # meta/smooth are XY-Serve's meta-kernels; sdpa/torch are the per-stage and vendor
    # baselines (`xyserve bench kernels` times them side by side; figures: docs/perf.md).
    attention_backend: str = "meta"  # meta | sdpa | reference
    gemm_backend: str = "smooth"  # smooth | torch
    # CUDA float32: the meta/smooth Triton kernels' dots may use TF32 (off: exact float32). Torch's
    # own ops follow torch.backends.cuda.matmul.allow_tf32, which the engine leaves as it is.
    allow_tf32: bool = False
    # CUDA graphs of the step loop (vLLM's names): unless enforce_eager, every step of at most
    # the largest capture size tokens (any P/D/V mix without a token tree) is padded to the next
    # capture size and replayed from a graph captured at engine start. CPU never captures.
    enforce_eager: bool = False
    cudagraph_capture_sizes: list[int] | None = None  # None: 1, 2, 4, 8, 16, 24, ... (vLLM's)
    # CPU float32: steps of one new token run the whole forward as one fused numba call
    # (engine.runner_fused). auto: where a check at start finds it faster; on; off. None: the
    # environment variable XYSERVE_CPU_FUSED_DECODE's value, else auto.
    cpu_fused_decode: str | None = None
    # The names the server answers to (vLLM's: one or several; responses and logs use the
    # first). None: the model argument, or the bundled model's name.
    served_model_name: str | list[str] | None = None
    # vLLM's: where the request defaults of sampling come from (temperature, top_p, top_k,
    # min_p, repetition_penalty, and max_new_tokens as max_tokens). auto: the model's
    # generation_config.json; vllm: none (SamplingParams' own defaults); else a folder holding
    # a generation_config.json. A value a request (or SamplingParams) gives always wins.
    generation_config: str = "auto"
    skip_tokenizer_init: bool = False
    disable_progress_bar: bool = False
    # ---- request limits: checked before a request is admitted (server: 400/413/503) ----
    max_request_body_bytes: int = 4 << 20  # larger HTTP bodies get a 413 before parsing
    max_n: int = 128  # sequences per request (OpenAI's bound)
    max_stop_strings: int = 32  # per request (each is searched for after every token)
    # Sequences (prompts x n) that may wait: past it a request gets a 503 + Retry-After, and
    # one with more sequences than this alone gets a 400 (None: no limit).
    max_waiting_requests: int | None = None
    request_timeout_s: float | None = None  # a request running longer is aborted
    # Speculative decoding (vLLM's keys: method, num_speculative_tokens, prompt_lookup_min/max,
    # ...); a dict or a JSON string, validated here. None: no speculation.
    speculative_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.served_model_name, tuple | list):
            names = list(self.served_model_name)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError("served_model_name must be a non-empty name or list of names")
            self.served_model_name = names
        elif self.served_model_name is not None and not isinstance(self.served_model_name, str):
            raise TypeError(f"served_model_name must be str (got {self.served_model_name!r})")
        elif self.served_model_name == "":
            raise ValueError("served_model_name must be a non-empty name or list of names")
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:  # before the model loads
            raise ValueError(
                f"unsupported dtype {self.dtype!r}; choose auto or one of {', '.join(DTYPE_NAMES)}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention_backend {self.attention_backend!r}; "
                f"choose one of {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.gemm_backend not in GEMM_BACKENDS:
            raise ValueError(
                f"unknown gemm_backend {self.gemm_backend!r}; choose one of {', '.join(GEMM_BACKENDS)}"
            )
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be at least 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        check_knobs(
            self.scheduler_policy,
            self.num_reserved_decode_tokens,
            self.max_prefill_chunk_tokens,
            self.admission_order,
            self.admission_max_skips,
            self.scheduling_policy,
        )
        # Optional sizes: None picks the default; a value below 1 is refused, not clamped.
        for name in ("num_kv_blocks", "max_model_len", "max_waiting_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset for the default)")
        for name in (
            "kv_cache_memory_bytes",
            "max_request_body_bytes",
            "max_n",
            "max_stop_strings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if not (
            isinstance(self.seed, int)
            and not isinstance(self.seed, bool)
            and SEED_MIN <= self.seed <= SEED_MAX
        ):
            raise ValueError(
                f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}] (got {self.seed!r})"
            )
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError("request_timeout_s must be positive")
        if self.cpu_fused_decode not in (None, "auto", "on", "off"):
            raise ValueError("cpu_fused_decode must be one of auto, on, off")
        if self.split_prefill_decode not in SPLIT_MODES:
            raise ValueError(f"split_prefill_decode must be one of {', '.join(SPLIT_MODES)}")
        if self.cudagraph_capture_sizes is not None:
            self.cudagraph_capture_sizes = check_capture_sizes(self.cudagraph_capture_sizes)
        if self.tbt_target_ms is not None and not self.tbt_target_ms >= 0:
            raise ValueError("tbt_target_ms must be >= 0 (0: off)")
        if self.speculative_config is not None:  # refused here, before any model loads
            spec = SpeculativeConfig.parse(self.speculative_config)
            self.speculative_config = {
                f.name: getattr(spec, f.name) for f in fields(SpeculativeConfig)
            }
        if self.scheduler_policy == "baseline":  # whole prefills alone: no hybrid knob applies
            set_here = [
                f.name
                for f in fields(self)
                if f.name in HYBRID_ONLY
                and getattr(self, f.name) != f.default
                and getattr(self, f.name) not in HYBRID_ONLY[f.name]
            ]
            if set_here:
                raise ValueError(
                    f"{', '.join(set_here)} apply to scheduler_policy 'hybrid' only "
                    "(the baseline policy runs whole prefills alone, then decode-only steps)"
                )
        if self.num_reserved_decode_tokens is None:
            self.num_reserved_decode_tokens = default_reserve(self.max_num_batched_tokens)

    def _check_types(self) -> None:
        """Every plain field (int, float, bool, str, optional or not) holds a value of its type,
        else a TypeError naming it: a float size failed later without a name (inside the
        first step for the token budget), and a string flag such as "false" read as true."""
        for name in ("model", "tokenizer"):  # a pathlib.Path names a directory as well
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.dtype = dtype_name(self.dtype)
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            args = typing.get_args(hint)
            if value is None and type(None) in args:
                continue
            bases = [a for a in args if a is not type(None)] if args else [hint]
            if len(bases) > 1:  # e.g. a name or a list of names: checked on its own
                continue
            base = bases[0]
            if base is bool:
                ok = isinstance(value, bool)
            elif base is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif base is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            elif base is str:
                ok = isinstance(value, str)
            else:  # lists and dicts are checked by their own code
                continue
            if not ok:
                raise TypeError(f"{f.name} must be {base.__name__} (got {value!r})")

    def scheduler_knobs(self) -> dict[str, object]:
        """The hybrid policy's knobs and the queue's policy, as Scheduler keyword arguments."""
        return {
            "scheduling_policy": self.scheduling_policy,
            "max_prefill_chunk_tokens": self.max_prefill_chunk_tokens,
            "admission_order": self.admission_order,
            "admission_max_skips": self.admission_max_skips,
            "partial_prefill_admission": self.partial_prefill_admission,
            "tbt_target_s": self.tbt_target_ms / 1e3 if self.tbt_target_ms else None,
        }

    def split_decode_rows(self, fused_rows: int | None) -> int | None:
        """The scheduler's ``split_decode_rows`` under ``split_prefill_decode``: auto,
        ``fused_rows`` (the most rows the CPU fused decode call takes; None where there is
        none, as on a GPU or in ``bench serve --simulate``); on, any number of decode tokens;
        off, and the baseline policy (which splits anyway), None."""
        if self.scheduler_policy != "hybrid" or self.split_prefill_decode == "off":
            return None
        if self.split_prefill_decode == "on":
            return self.max_num_batched_tokens
        return fused_rows if fused_rows else None

    def served_model_names(self, default: str) -> list[str]:
        """The names the server answers to: ``served_model_name`` (one or several), else
        ``default``."""
        if self.served_model_name is None:
            return [default]
        if isinstance(self.served_model_name, str):
            return [self.served_model_name]
        return list(self.served_model_name)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
